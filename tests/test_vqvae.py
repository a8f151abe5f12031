"""Tests for the vector quantiser (scratchvae/quantize.py) and the VQ-VAE (models/vqvae.py).

Gradient checks run in float64 and compare the hand-written backward pass with central
differences (relative error <= 1e-6).  The straight-through estimator is not the derivative of
the quantised forward pass, so it is checked as the exact derivative of the surrogate in which
the assignment k and the offset sg[e_k - z_e] are frozen (derivations/04-vqvae.md, 4.3); the
codebook and commitment terms are checked separately, with k recomputed at every perturbed
point, behind a guard that skips examples whose nearest / second-nearest gap is too small for
the finite-difference step.
"""
import ast
import importlib.util
import json
import math
import pathlib

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from scratchvae import quantize as Q
from scratchvae.backend import Backend
from scratchvae.gradcheck import check_function, check_grads
from scratchvae.models.vqvae import VQVAE, VQVAEConfig
from scratchvae.plots import vq_figures
from scratchvae.train import TrainConfig, fit, load_checkpoint, restore, save_checkpoint

B64 = Backend("numpy", "float64")
RTOL = 1e-6
H = 5e-4            # the finite-difference step (five-point stencil: points up to 2H away)
# example counts come from the hypothesis profile loaded in conftest.py ("fast", "dev", "ci")
SETTINGS = dict(suppress_health_check=[HealthCheck.filter_too_much, HealthCheck.too_slow])


def far_from_ties(b, z, E, delta=2 * H):
    """The tie guard: True when no stencil point can change an assignment.

    Moving z_n or e_k by at most ``delta`` (in norm) changes ||z_n - e_k||^2 by at most
    2 R delta + delta^2, R = max ||z_n - e_k||; the nearest and the second-nearest distances can
    move towards each other, so the assignment is safe when the gap exceeds twice that."""
    if E.shape[0] < 2:
        return True
    gap = float(np.min(b.to_numpy(Q.nearest_gap(b, z, E))))
    R = float(np.sqrt(np.max(b.to_numpy(Q.sq_distances(b, z, E)))))
    return gap > 2.0 * (2.0 * R * delta + delta * delta)


def host(a):
    return B64.to_numpy(a)


def rand(rng, *shape):
    return B64.asarray(rng.standard_normal(shape))


# =========================================================================== assignment
@settings(**SETTINGS)
@given(seed=st.integers(0, 2**31 - 1), N=st.integers(1, 12), K=st.integers(1, 7),
       J=st.integers(1, 4), strict=st.booleans())
def test_nearest_matches_brute_force_and_breaks_ties_low(seed, N, K, J, strict):
    # small integers: every distance is exact in float64, so ties are real ties
    rng = np.random.default_rng(seed)
    E = rng.integers(-2, 3, size=(K, J)).astype(np.float64)
    if K > 1:
        E[-1] = E[rng.integers(0, K - 1)]                  # a duplicate code: a guaranteed tie
    z = rng.integers(-2, 3, size=(N, J)).astype(np.float64)
    d = ((z[:, None, :] - E[None, :, :]) ** 2).sum(-1)      # (N, K) by explicit differences
    ref = np.array([np.flatnonzero(row == row.min())[0] for row in d])   # lowest tied index
    b = Backend("strict", "float64", device_name="device1") if strict else B64
    k = b.to_numpy(Q.nearest(b, b.asarray(z), b.asarray(E)))
    np.testing.assert_array_equal(k, ref)
    np.testing.assert_allclose(b.to_numpy(Q.sq_distances(b, b.asarray(z), b.asarray(E))), d,
                               atol=1e-12)


def test_nearest_gap_is_second_minus_first():
    z = B64.asarray([[0.0, 0.0], [1.0, 0.0]])
    E = B64.asarray([[0.0, 0.0], [3.0, 0.0], [0.0, -2.0]])
    np.testing.assert_allclose(host(Q.nearest_gap(B64, z, E)), [4.0, 3.0])  # d: 0 9 4, 1 4 5


# =========================================================================== gradients
def _quantiser_problem(seed, N, K, J):
    rng = np.random.default_rng(seed)
    z_e, E, G = rand(rng, N, J), rand(rng, K, J), rand(rng, N, J)
    return z_e, E, G, far_from_ties(B64, z_e, E)


@settings(**SETTINGS)
@given(seed=st.integers(0, 2**31 - 1), N=st.integers(1, 8), K=st.integers(2, 6),
       J=st.integers(1, 4), beta=st.floats(0.05, 2.0), w_cb=st.sampled_from([0.0, 1.0]))
def test_straight_through_is_exact_gradient_of_frozen_surrogate(seed, N, K, J, beta, w_cb):
    """f = <G, z_q> + w_cb codebook + beta commit with k, sg[e_k - z_e], sg[z_e], sg[e_k]
    frozen at the base point: the hand-written (z_e, E) gradient is its exact derivative."""
    B = max(1, N // 2)
    z_e0, E0, G, safe = _quantiser_problem(seed, N, K, J)
    assume(safe)
    xp = B64.xp
    z_q, (k0, e_k) = Q.quantize_forward(B64, z_e0, E0)
    offset0 = e_k - z_e0
    e_k0 = e_k

    def f(p):
        z_e, E = p["z_e"], p["E"]
        zq, (_, ek) = Q.quantize_forward(B64, z_e, E, k=k0, offset=offset0)
        cb, _, _ = Q.vq_losses(B64, z_e0, ek, B)          # sg on z_e
        _, cm, _ = Q.vq_losses(B64, z_e, e_k0, B)         # sg on e_k
        return xp.sum(G * zq) + w_cb * cb + beta * cm

    # the hand-written backward pass
    _, _, cache = Q.vq_losses(B64, z_e0, e_k, B)
    dz_vq, de_k = Q.vq_losses_backward(B64, w_cb, beta, cache)
    dz_e = Q.quantize_backward(B64, G, None) + dz_vq
    dE = Q.codebook_grad(B64, B64.one_hot(k0, K), de_k)
    r = check_function(B64, f, {"z_e": z_e0, "E": E0}, {"z_e": dz_e, "E": dE}, h=H)
    assert r.ok(RTOL), (r.max_rel_err, r.worst)
    # the surrogate takes the forward value of the quantised pass at the base point
    np.testing.assert_allclose(host(z_q), host(e_k), atol=1e-15)


@settings(**SETTINGS)
@given(seed=st.integers(0, 2**31 - 1), N=st.integers(1, 8), K=st.integers(2, 6),
       J=st.integers(1, 4))
def test_codebook_term_moves_only_the_codebook(seed, N, K, J):
    """codebook = (1/B) sum ||sg[z_e] - e_k||^2: its z_e gradient is exactly zero and its E
    gradient (one-hot matmul) matches finite differences with k recomputed at every point."""
    B = max(1, N // 2)
    z_e0, E0, _, safe = _quantiser_problem(seed, N, K, J)
    assume(safe)
    xp = B64.xp

    def f(p):     # k re-assigned at the perturbed codebook: the guard keeps it unchanged
        k = Q.nearest(B64, z_e0, p["E"])
        return Q.vq_losses(B64, z_e0, xp.take(p["E"], k, axis=0), B)[0]

    k = Q.nearest(B64, z_e0, E0)
    _, _, cache = Q.vq_losses(B64, z_e0, xp.take(E0, k, axis=0), B)
    dz_e, de_k = Q.vq_losses_backward(B64, 1.0, 0.0, cache)
    assert np.all(host(dz_e) == 0.0)
    dE = Q.codebook_grad(B64, B64.one_hot(k, K), de_k)
    r = check_function(B64, f, {"E": E0}, {"E": dE}, h=H)
    assert r.ok(RTOL), (r.max_rel_err, r.worst)
    # codes no row chose get exactly zero gradient
    unused = np.setdiff1d(np.arange(K), host(k))
    assert np.all(host(dE)[unused] == 0.0)


@settings(**SETTINGS)
@given(seed=st.integers(0, 2**31 - 1), N=st.integers(1, 8), K=st.integers(2, 6),
       J=st.integers(1, 4), beta=st.floats(0.05, 3.0))
def test_commitment_term_moves_only_the_encoder_and_carries_beta(seed, N, K, J, beta):
    """beta * commit = beta (1/B) sum ||z_e - sg[e_k]||^2: its codebook gradient is exactly zero,
    its z_e gradient matches finite differences of beta * commit (k recomputed), so beta sits on
    this term and on no other."""
    B = max(1, N // 2)
    z_e0, E0, _, safe = _quantiser_problem(seed, N, K, J)
    assume(safe)
    xp = B64.xp

    def f(p):
        k = Q.nearest(B64, p["z_e"], E0)
        return beta * Q.vq_losses(B64, p["z_e"], xp.take(E0, k, axis=0), B)[1]

    k = Q.nearest(B64, z_e0, E0)
    _, _, cache = Q.vq_losses(B64, z_e0, xp.take(E0, k, axis=0), B)
    dz_e, de_k = Q.vq_losses_backward(B64, 0.0, beta, cache)
    assert np.all(host(de_k) == 0.0)
    r = check_function(B64, f, {"z_e": z_e0}, {"z_e": dz_e}, h=H)
    assert r.ok(RTOL), (r.max_rel_err, r.worst)
    # and beta is not on the codebook term: its gradient does not change with beta
    _, de_1 = Q.vq_losses_backward(B64, 1.0, 1.0, cache)
    _, de_b = Q.vq_losses_backward(B64, 1.0, beta, cache)
    np.testing.assert_array_equal(host(de_1), host(de_b))


def small_model(update="ema", likelihood="bernoulli", beta=0.25, b=B64, **kw):
    cfg = VQVAEConfig(D=6, latent_dim=3, codes_per_input=2, codebook_size=5, hidden=(5, 4),
                      act="tanh", likelihood=likelihood, beta=beta, codebook_update=update, **kw)
    return VQVAE(cfg, b)


def _model_problem(model, seed, B):
    b = model.b
    rng = b.rng("test", seed)
    params = model.init_params(rng)
    # codes at the scale of the encoder outputs, so that several codes are in play
    params["codebook.E"] = rng.normal((model.K, model.J))
    x = rng.uniform((B, model.cfg.D))
    z_e, _ = model._encode(params, x)
    return params, x, far_from_ties(b, z_e, params["codebook.E"])


@settings(**SETTINGS)
@given(seed=st.integers(0, 2**31 - 1), update=st.sampled_from(["ema", "grad"]),
       likelihood=st.sampled_from(["bernoulli", "gaussian"]), beta=st.floats(0.05, 2.0),
       B=st.integers(1, 4))
def test_model_gradients_match_the_straight_through_surrogate(seed, update, likelihood, beta, B):
    model = small_model(update, likelihood, beta)
    params, x, safe = _model_problem(model, seed, B)
    assume(safe)
    loss, grads, aux = model.loss_and_grads(params, x, model.sample_noise(None, B))
    f = model.surrogate_fn(params, x)
    # the surrogate and the true objective agree in value at the frozen point
    assert abs(float(f(params)) - float(loss)) <= 1e-12 * max(1.0, abs(float(loss)))
    assert abs(float(model.loss(params, x, {})) - float(loss)) == 0.0
    r = check_grads(B64, f, params, grads, h=H, full_max=40)
    assert r.ok(RTOL), (r.max_rel_err, r.worst)
    # the codebook gets a gradient only when it is learned by gradient; EMA state never does
    assert ("codebook.E" in grads) == (update == "grad")
    assert not any(k.startswith("codebook.") and k != "codebook.E" for k in grads)
    # the loss is assembled as documented
    w = 1.0 if update == "grad" else 0.0
    total = float(aux["recon"]) + w * float(aux["codebook"]) + beta * float(aux["commit"])
    assert abs(total - float(loss)) <= 1e-12 * max(1.0, abs(total))


@given(seed=st.integers(0, 2**31 - 1), B=st.integers(1, 5),
       update=st.sampled_from(["ema", "grad"]))
def test_loss_terms_follow_the_stated_normalisation(seed, B, update):
    """Mean over the batch, sums over the M vectors and J coordinates (and the D pixels),
    recomputed on the host from the codes and encoder outputs."""
    model = small_model(update, beta=0.7)
    params, x, _ = _model_problem(model, seed, B)
    loss, _, aux = model.loss_and_grads(params, x)
    k, z_e = model.encode(params, x)                       # (B, M), (B, M, J)
    e = host(params["codebook.E"])[host(k)]                # (B, M, J)
    sq = ((host(z_e) - e) ** 2).sum(axis=(1, 2)).mean()
    assert abs(float(aux["codebook"]) - sq) <= 1e-12 * max(1.0, sq)
    assert abs(float(aux["commit"]) - sq) <= 1e-12 * max(1.0, sq)
    logits = host(model.decoder.forward(B64, params, model.codes_to_z(params, k))[0])
    xh = host(x)
    nll = (np.logaddexp(0.0, logits) - xh * logits).sum(axis=1).mean()
    assert abs(float(aux["recon"]) - nll) <= 1e-12 * max(1.0, nll)
    w = 1.0 if update == "grad" else 0.0
    assert abs(float(loss) - (nll + w * sq + 0.7 * sq)) <= 1e-12 * max(1.0, nll)
    counts = np.bincount(host(k).ravel(), minlength=model.K)
    p = counts[counts > 0] / counts.sum()
    assert abs(float(aux["perplexity"]) - np.exp(-(p * np.log(p)).sum())) < 1e-9
    assert float(aux["usage"]) == (counts > 0).mean()


@settings(**SETTINGS)
@given(seed=st.integers(0, 2**31 - 1), B=st.integers(1, 4))
def test_beta_changes_only_the_encoder_gradient(seed, B):
    lo, hi = small_model("grad", beta=0.1), small_model("grad", beta=1.7)
    params, x, safe = _model_problem(lo, seed, B)
    assume(safe)
    _, g_lo, a_lo = lo.loss_and_grads(params, x)
    _, g_hi, a_hi = hi.loss_and_grads(params, x)
    for k in g_lo:
        if not k.startswith("encoder."):                   # decoder and codebook: no beta
            np.testing.assert_array_equal(host(g_lo[k]), host(g_hi[k]), err_msg=k)
    # the encoder's commitment gradient scales with beta: (g_hi - g_lo) / (1.7 - 0.1) is the
    # gradient of commit alone, the same whatever pair of betas produced it
    mid = small_model("grad", beta=0.6)
    _, g_mid, _ = mid.loss_and_grads(params, x)
    for k in g_lo:
        if k.startswith("encoder."):
            np.testing.assert_allclose((host(g_hi[k]) - host(g_lo[k])) / 1.6,
                                       (host(g_mid[k]) - host(g_lo[k])) / 0.5, rtol=1e-9,
                                       atol=1e-12)


# =========================================================================== EMA and k-means
def lloyd_reference(z, E):
    d = ((z[:, None, :] - E[None, :, :]) ** 2).sum(-1)
    k = d.argmin(1)
    out = E.copy()
    for j in range(E.shape[0]):
        if np.any(k == j):
            out[j] = z[k == j].mean(0)
    return out


@settings(**SETTINGS)
@given(seed=st.integers(0, 2**31 - 1), N=st.integers(1, 20), K=st.integers(1, 6),
       J=st.integers(1, 4))
def test_ema_with_decay_0_and_no_smoothing_is_one_lloyd_step(seed, N, K, J):
    rng = np.random.default_rng(seed)
    z, E = rng.standard_normal((N, J)), rng.standard_normal((K, J))
    # whatever the old statistics, decay 0 forgets them
    state = {"E": B64.asarray(E), "count": B64.asarray(rng.random(K) * 5),
             "sum": B64.asarray(rng.standard_normal((K, J)))}
    k = Q.nearest(B64, B64.asarray(z), B64.asarray(E))
    new = Q.ema_update(B64, state, B64.asarray(z), k, decay=0.0, eps=0.0)
    ref = lloyd_reference(z, E)
    np.testing.assert_allclose(host(new["E"]), ref, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(host(Q.lloyd_step(B64, B64.asarray(z), B64.asarray(E))), ref,
                               rtol=1e-12, atol=1e-12)


@settings(**SETTINGS)
@given(seed=st.integers(0, 2**31 - 1), steps=st.integers(1, 12),
       decay=st.one_of(st.just(0.0), st.floats(1e-3, 0.999)),
       K=st.integers(2, 5))
def test_ema_without_debiasing_is_the_decay_weighted_centroid(seed, steps, decay, K):
    """From the zero state, with eps = 0, e_k after t steps is exactly
    sum_s w_s s_k(s) / sum_s w_s n_k(s), w_s = decay^(t-s): the (1 - decay^t) bias of both
    averages cancels, so no debiasing is needed.  A code never chosen keeps its vector."""
    rng = np.random.default_rng(seed)
    J = 2
    E0 = rng.standard_normal((K, J))
    E0[-1] = 100.0                                         # far away: never chosen
    state = {"E": B64.asarray(E0), "count": B64.zeros((K,)), "sum": B64.zeros((K, J))}
    num, den = np.zeros((K, J)), np.zeros(K)
    ever = np.zeros(K, dtype=bool)
    for s in range(steps):
        z = rng.standard_normal((7, J))
        k = rng.integers(0, K - 1, size=7)                 # arbitrary assignments, never K-1
        state = Q.ema_update(B64, state, B64.asarray(z), B64.asindex(k), decay, 0.0)
        num *= decay
        den *= decay
        for i in range(7):
            num[k[i]] += z[i]
            den[k[i]] += 1
            ever[k[i]] = True
    E = host(state["E"])
    seen = den > 0                                         # (decay 0 forgets earlier steps)
    np.testing.assert_allclose(E[seen], num[seen] / den[seen][:, None], rtol=1e-9, atol=1e-12)
    np.testing.assert_array_equal(E[~ever], E0[~ever])     # never chosen: unchanged
    assert not ever[-1]
    # Laplace smoothing with eps > 0 moves used codes by at most O(eps) relative
    st2 = Q.ema_update(B64, state, B64.asarray(np.zeros((1, J))), B64.asindex([0]), 0.5, 1e-5)
    assert np.all(np.isfinite(host(st2["E"])))


@settings(**SETTINGS)
@given(seed=st.integers(0, 2**31 - 1), N=st.integers(2, 30), K=st.integers(1, 6))
def test_kmeans_distortion_never_increases(seed, N, K):
    rng = np.random.default_rng(seed)
    z = B64.asarray(rng.standard_normal((N, 2)))
    E = Q.sample_rows(B64, z, B64.asarray(rng.random(N)), K)
    d = float(Q.distortion(B64, z, E))
    for _ in range(5):
        E = Q.lloyd_step(B64, z, E)
        d_new = float(Q.distortion(B64, z, E))
        assert d_new <= d + 1e-12
        d = d_new
    # kmeans_init = Lloyd steps from distinct data rows: never worse than those rows
    u = B64.asarray(rng.random(N))
    start = float(Q.distortion(B64, z, Q.sample_rows(B64, z, u, K)))
    assert float(Q.distortion(B64, z, Q.kmeans_init(B64, z, K, u, iters=20))) <= start + 1e-12


def test_sample_rows_are_distinct_rows_of_z():
    rng = np.random.default_rng(0)
    z = rng.standard_normal((9, 3))
    rows = host(Q.sample_rows(B64, B64.asarray(z), B64.asarray(rng.random(9)), 6))
    idx = [int(np.flatnonzero((z == r).all(1))[0]) for r in rows]
    assert len(set(idx)) == 6


# =========================================================================== usage metrics
@given(K=st.integers(1, 50), c=st.integers(1, 1000), j=st.integers(0, 49))
def test_perplexity_is_1_for_one_code_and_K_for_uniform_usage(K, c, j):
    one = np.zeros(K)
    one[j % K] = c
    ppl, usage, dead = Q.usage_stats(B64, B64.asarray(one))
    assert abs(float(ppl) - 1.0) < 1e-12
    assert abs(float(usage) - 1.0 / K) < 1e-12 and float(dead) == K - 1
    ppl, usage, dead = Q.usage_stats(B64, B64.asarray(np.full(K, float(c))))
    assert abs(float(ppl) - K) < 1e-9 * K
    assert float(usage) == 1.0 and float(dead) == 0.0
    # uniform over a subset of u codes: perplexity u
    u = 1 + j % K
    sub = np.zeros(K)
    sub[:u] = c
    assert abs(float(Q.perplexity(B64, B64.asarray(sub))) - u) < 1e-9 * u


def test_restart_replaces_only_dead_codes_with_encoder_outputs():
    rng = np.random.default_rng(1)
    E = rng.standard_normal((6, 3))
    z = rng.standard_normal((10, 3))
    unused = np.array([0, 5, 12, 3, 20, 0], dtype=np.float64)
    E_new, dead = Q.restart_dead_codes(B64, B64.asarray(E), B64.asarray(unused),
                                       B64.asarray(z), B64.asarray(rng.random(10)), 5)
    E_new, dead = host(E_new), host(dead)
    np.testing.assert_array_equal(dead, unused >= 5)
    np.testing.assert_array_equal(E_new[~dead], E[~dead])
    for r in E_new[dead]:
        assert (z == r).all(1).any()                        # re-seeded at an encoder output
    assert len({tuple(r) for r in E_new[dead]}) == dead.sum()   # at distinct ones


def test_post_step_counts_unused_steps_and_restarts_dead_codes():
    model = small_model("ema", dead_after=3, restart_every=1)
    rng = B64.rng("post", 0)
    params = model.init_params(rng)
    E = rng.normal((5, 3))
    params["codebook.E"] = B64.asarray(np.concatenate([host(E)[:4], np.full((1, 3), 1e3)]))
    x = rng.uniform((4, 6))
    for step in range(2):
        _, _, aux = model.loss_and_grads(params, x)
        model.post_step(params, aux, step)
    unused = host(params["codebook.unused"])
    assert unused[4] == 2.0                                 # the far code: never chosen
    assert np.all(host(params["codebook.E"])[4] == 1e3)     # never chosen: kept (not 0)
    _, _, aux = model.loss_and_grads(params, x)
    model.post_step(params, aux, 2)                         # third unused step: restarted
    E_after = host(params["codebook.E"])
    z = host(aux["_z_e"])
    assert (z == E_after[4]).all(1).any()
    assert host(params["codebook.unused"])[4] == 0.0
    assert host(params["codebook.ema_count"])[4] == 0.0


# =========================================================================== backends and training
def test_strict_backend_trains_without_hidden_transfers():
    """array-api-strict on a non-default device: any non-standard call or implicit host
    transfer in the loss, backward, EMA, restarts or k-means initialisation raises."""
    b = Backend("strict", "float64", device_name="device1")
    rng = np.random.default_rng(0)
    # 24 = 3 full batches: fit's minibatch slice must stay in bounds under array-api-strict
    X = b.asarray((rng.random((24, 6)) < 0.4).astype(np.float64))
    for update in ("ema", "grad"):
        model = small_model(update, b=b, dead_after=2, restart_every=2, kmeans_init=True)
        params = model.init_params(b.rng("init"))
        params, _, step, hist = fit(model, params, X, TrainConfig(epochs=3, batch_size=8),
                                    progress=False)
        assert step == 9 and np.isfinite(hist[-1]["loss"])
        assert {"recon", "codebook", "commit", "perplexity", "usage"} <= set(hist[-1])
        ev = model.evaluate(params, X, batch=10)        # a partial last batch
        assert np.isfinite(ev["recon"]) and 0.0 < ev["usage"] <= 1.0


def test_checkpoint_round_trip_keeps_codebook_state(tmp_path):
    model = small_model("ema")
    rng = np.random.default_rng(0)
    X = B64.asarray(rng.random((16, 6)))
    params = model.init_params(B64.rng("init"))
    params, opt, step, hist = fit(model, params, X, TrainConfig(epochs=2, batch_size=8),
                                  progress=False)
    path = tmp_path / "ck.npz"
    save_checkpoint(path, B64, params, opt, step, {"model_config": model.cfg.to_dict()}, hist)
    ph, oh, info = load_checkpoint(path)
    p2, _ = restore(model, ph, oh, info, TrainConfig())
    for k in ("codebook.E", "codebook.ema_count", "codebook.ema_sum", "codebook.unused"):
        np.testing.assert_array_equal(host(p2[k]), host(params[k]))
    assert host(params["codebook.ema_count"]).sum() > 0


@pytest.fixture(scope="module")
def digits_run():
    from scratchvae.data import load_dataset

    ds = load_dataset("digits")
    b = Backend("numpy", "float32", seed=0)
    cfg = VQVAEConfig(D=ds.D, latent_dim=4, codes_per_input=4, codebook_size=32, hidden=(64,),
                      codebook_update="ema", restart=True, dead_after=20)
    model = VQVAE(cfg, b)
    params = model.init_params(b.rng("init"))
    Xt = b.asarray(ds.x_test)
    before = model.evaluate(params, Xt)
    params, _, _, history = fit(model, params, b.asarray(ds.x_train),
                                TrainConfig(epochs=12, batch_size=64), progress=False)
    return ds, model, params, history, before, model.evaluate(params, Xt)


def test_digits_training_improves_reconstruction_and_uses_the_codebook(digits_run):
    ds, model, params, history, before, after = digits_run
    assert after["recon"] < 0.6 * before["recon"], (before["recon"], after["recon"])
    assert after["recon_mse"] < 0.5 * before["recon_mse"]
    assert after["usage"] >= 0.75, after
    assert after["perplexity"] > 0.5 * model.K, after
    assert after["dead_codes"] == round(model.K * (1 - after["usage"]))
    assert after["bits_per_dim"] == 4 * math.log2(32) / ds.D
    assert after["nll_bound"] == after["recon"] + 4 * math.log(32)   # KL = M log K
    assert history[-1]["recon"] < history[0]["recon"]


def test_vq_figures_are_written(digits_run, tmp_path):
    ds, model, params, history, _, _ = digits_run
    paths = vq_figures(model, params, ds, history, tmp_path)
    names = sorted(p.rsplit("/", 1)[-1] for p in paths)
    assert names == ["vq_perplexity.png", "vq_reconstructions.png", "vq_samples.png",
                     "vq_usage.png"]
    for p in paths:
        with open(p, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_config_round_trip_and_validation():
    cfg = VQVAEConfig(D=64, hidden=(32, 16))
    d = cfg.to_dict()
    assert d["hidden"] == [32, 16] and d["codebook_update"] == "ema" and d["beta"] == 0.25
    d["hidden"] = tuple(d["hidden"])
    assert VQVAEConfig(**d) == cfg
    with pytest.raises(ValueError):
        VQVAE(VQVAEConfig(D=4, codebook_update="sgd"), B64)
    with pytest.raises(ValueError):
        VQVAE(VQVAEConfig(D=4, decay=1.0), B64)


# =========================================================================== scripts and floors
ROOT = pathlib.Path(__file__).resolve().parents[1]


def _load_script(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _numbers(obj):
    if isinstance(obj, dict):
        for v in obj.values():
            yield from _numbers(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _numbers(v)
    elif isinstance(obj, (int, float)) and not isinstance(obj, bool):
        yield obj


def test_update_compare_script_writes_the_figure_and_four_finite_variants(tmp_path, capsys):
    script = _load_script("vq_update_compare")
    res = script.main(["--epochs", "1", "--limit", "64", "--codebook-size", "16",
                       "--latent-dim", "4", "--out", str(tmp_path)])
    printed = json.loads(capsys.readouterr().out)
    fig = tmp_path / "vq_update_compare.png"
    assert printed["figure"] == res["figure"] == str(fig)
    with open(fig, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    variants = {k: v for k, v in printed.items() if k != "figure"}
    assert set(variants) == {"ema + restarts", "ema, no restarts", "grad + restarts",
                             "grad, no restarts"}
    for label, r in variants.items():
        update, restart = script.VARIANTS[label]
        assert r["config"]["codebook_update"] == update and r["config"]["restart"] == restart
        assert r["config"]["codebook_size"] == 16 and r["config"]["latent_dim"] == 4
        assert r["steps"] == 1                          # 64 images, batch 128, one epoch
        assert set(r) >= {"test_before", "test", "train", "first_epoch", "last_epoch"}
        nums = list(_numbers(r))
        assert nums and all(math.isfinite(v) for v in nums), label
    # restarts cannot fire before dead_after steps, and each variant draws its own keyed noise
    assert variants["ema + restarts"] == {**variants["ema, no restarts"],
                                          "config": variants["ema + restarts"]["config"]}


FORBIDDEN_UPWARD = {"train", "plots", "data", "experiment", "cli", "kl", "metrics", "cluster",
                    "estimators", "optim"}


def _package_imports(path: pathlib.Path) -> set:
    """Top-level ``scratchvae`` modules that ``path`` (a file of scratchvae/models/) imports,
    at module level or inside functions, relatively or absolutely."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "scratchvae" and len(parts) > 1:
                    found.add(parts[1])
        elif isinstance(node, ast.ImportFrom):
            if node.level == 1:
                continue                                  # a sibling in models/
            if node.level >= 2:
                parts = (node.module or "").split(".")
            elif (node.module or "").split(".")[0] == "scratchvae":
                parts = node.module.split(".")[1:]
            else:
                continue                                  # not the package
            if parts and parts[0]:
                found.add(parts[0])
            else:                                         # from .. import x / from scratchvae import x
                found.update(alias.name for alias in node.names)
    return found


def test_models_floor_imports_nothing_upward():
    files = sorted((ROOT / "scratchvae" / "models").glob("*.py"))
    assert any(f.name == "vqvae.py" for f in files)
    upward = {f.name: sorted(_package_imports(f) & FORBIDDEN_UPWARD) for f in files}
    assert not any(upward.values()), upward
    assert {"quantize", "distributions", "nn"} <= _package_imports(
        ROOT / "scratchvae" / "models" / "vqvae.py")   # the parser sees the real imports
