"""Tests for the full-covariance posterior (seed §2): ``CholeskyHead`` and the VAE built on it.

Every claim of ``derivations/02-full-covariance.md`` has a test here:

* the hand backward pass of the head, and of the whole full-covariance loss, agree with finite
  differences (``scratchvae.gradcheck.check_grads`` as it stands, every entry of every array,
  relative error <= 1e-6, float64, both diagonal activations);
* extreme pre-activations stay finite;
* z = mu + L eps has mean mu and covariance L L^T (tolerances from the sample size);
* var = diag(L L^T), logdet = log det(L L^T), the strictly-lower entries are packed row by row,
  and a positive diagonal makes L the unique Cholesky factor;
* the closed-form KL agrees with a Monte Carlo estimate, log q(z|x) with the textbook
  multivariate-normal density, the entropy with SciPy's;
* with no off-diagonal entries the head *is* the diagonal head (outputs and gradients), one floor
  up the full-covariance VAE is the mean-field VAE;
* the head runs on ``array_api_strict`` on a non-default device (array API only, no hidden
  host transfer).

Hypothesis draws shapes and a seed, the values come from that seed; the number of examples comes
from the active profile (``tests/conftest.py``).  Monte Carlo checks use fixed seeds and a
tolerance of 5 standard errors computed from the sample size.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from scipy import stats

from scratchvae.distributions import (CholeskyHead, DiagGaussianHead, kl_std_normal,
                                      kl_std_normal_backward, log_q, log_std_normal)
from scratchvae.gradcheck import check_grads
from scratchvae.models.vae import VAE, VAEConfig

RTOL = 1e-6            # the house tolerance for float64 gradient checks
EPS64 = float(np.finfo(np.float64).eps)
N_SE = 5.0             # Monte Carlo checks: |estimate - truth| <= 5 standard errors
DIAGS = ("softplus", "exp")
EVERY_ENTRY = 10**6    # check_grads: compare every entry, never a random direction
seeds = st.integers(0, 2**31 - 1)


# --------------------------------------------------------------------------- helpers
def random_h(rng, B, head, scale=1.0):
    """A head input (B, n_out) of N(0, scale^2) pre-activations."""
    return rng.standard_normal((B, head.n_out())) * scale


def upstream(rng, S, B, J, present=(True, True, True, True)):
    """Random upstream gradients for (z, mu, var, logdet); ``None`` where not present."""
    shapes = [(S, B, J), (B, J), (B, J), (B,)]
    return [rng.standard_normal(s) if p else None for s, p in zip(shapes, present)]


def on(b, arrays):
    return [None if a is None else b.asarray(a) for a in arrays]


def weighted_sum(b, z, post, ups):
    """f = <dz, z> + <dmu, mu> + <dvar, var> + <dlogdet, logdet>: its gradient w.r.t. the head
    input is exactly what ``backward(dz, dmu, dvar, dlogdet)`` must return."""
    xp = b.xp
    total = None
    for arr, u in zip((z, post.mu, post.var, post.logdet), ups):
        if u is not None:
            t = xp.sum(arr * u)
            total = t if total is None else total + t
    return 0.0 if total is None else total


def assert_ok(res):
    assert res.ok(RTOL), f"max relative error {res.max_rel_err:.3e} at {res.worst}"


def L_by_hand(h, J, diag, floor=1e-5):
    """Reference (mu, L) from the packed head output, by explicit loops, in the packing order of
    02-full-covariance.md#packing: (1,0), (2,0), (2,1), (3,0), ... (row by row)."""
    h = np.asarray(h)
    B = h.shape[0]
    mu, d, o = h[:, :J], h[:, J:2 * J], h[:, 2 * J:]
    dg = np.logaddexp(0.0, d) + floor if diag == "softplus" else np.exp(d)
    L = np.zeros((B, J, J))
    for bi in range(B):
        t = 0
        for j in range(J):
            L[bi, j, j] = dg[bi, j]
            for k in range(j):
                L[bi, j, k] = o[bi, t]
                t += 1
    return mu, L


def mvn_logpdf_np(z, mu, Sigma):
    """log N(z | mu, Sigma) with np.linalg, no Cholesky:
    -1/2 (J log 2pi + log|Sigma| + r^T Sigma^-1 r)."""
    J = mu.shape[-1]
    sign, logdet = np.linalg.slogdet(Sigma)
    assert sign > 0
    r = z - mu
    return -0.5 * (J * math.log(2 * math.pi) + logdet + r @ np.linalg.solve(Sigma, r))


# --------------------------------------------------------------------------- gradients
@given(J=st.integers(1, 4), B=st.integers(1, 3), S=st.integers(1, 3),
       diag=st.sampled_from(DIAGS), present=st.tuples(*[st.booleans()] * 4), seed=seeds)
def test_cholesky_head_grad(b64, J, B, S, diag, present, seed):
    """[02#the-backward-pass-of-the-head] dh from random upstream (dz, dmu, dvar, dlogdet), each
    possibly absent, against finite differences of f = sum of upstream-weighted outputs."""
    rng = np.random.default_rng(seed)
    head = CholeskyHead(J, diag=diag)
    h = b64.asarray(random_h(rng, B, head))
    eps = b64.asarray(rng.standard_normal((S, B, J)))
    ups = on(b64, upstream(rng, S, B, J, present))

    def f(p):
        z, post, _ = head.forward(b64, p["h"], eps)
        return weighted_sum(b64, z, post, ups)

    _, _, cache = head.forward(b64, h, eps)
    dh = head.backward(b64, *ups, cache)
    assert dh.shape == h.shape
    res = check_grads(b64, f, {"h": h}, {"h": dh}, full_max=EVERY_ENTRY, name="cholesky head")
    assert res.n_checks == h.size
    assert_ok(res)


def fullcov_model(b, J, S, lik, diag, D=4, hidden=(5,), act="tanh"):
    cfg = VAEConfig(D=D, latent_dim=J, hidden=hidden, act=act, likelihood=lik,
                    posterior="cholesky", n_samples=S)
    model = VAE(cfg, b)
    assert isinstance(model.head, CholeskyHead)
    if diag != model.head.diag:
        model.head = CholeskyHead(J, diag=diag)   # same n_out, so the encoder is unchanged
    return model


@given(J=st.integers(1, 3), B=st.integers(1, 3), S=st.integers(1, 2),
       diag=st.sampled_from(DIAGS), lik=st.sampled_from(("bernoulli", "gaussian")), seed=seeds)
def test_fullcov_vae_loss_grad(b64, J, B, S, diag, lik, seed):
    """The whole negative ELBO of a full-covariance VAE (encoder, Cholesky head, decoder,
    likelihood, closed-form KL): every parameter entry against finite differences.  The MLPs use
    tanh so that no ReLU kink sits inside a difference stencil (ReLU MLPs: test_blocks)."""
    rng = np.random.default_rng(seed)
    model = fullcov_model(b64, J, S, lik, diag)
    params = model.init_params(b64.rng(seed, "init"))
    x = rng.random((B, 4)) if lik == "bernoulli" else rng.standard_normal((B, 4))
    x = b64.asarray(x)
    noise = model.sample_noise(b64.rng(seed, "noise"), B)
    _, grads, _ = model.loss_and_grads(params, x, noise)
    assert set(grads) == set(params)
    res = check_grads(b64, lambda p: model.loss(p, x, noise), params, grads,
                      full_max=EVERY_ENTRY, name="fullcov loss")
    assert res.n_checks == sum(int(np.prod(v.shape)) for v in params.values())
    assert_ok(res)


def test_extreme_preactivations_stay_finite(b64):
    """[02#output-activations] Softplus diagonal, every pre-activation at +-50: z, var, logdet,
    KL and all gradients are finite, the diagonal of L never drops below the floor, and the
    gradients still agree with finite differences."""
    rng = np.random.default_rng(0)
    J, B, S = 4, 6, 3
    head = CholeskyHead(J, diag="softplus")
    h = 50.0 * np.sign(rng.standard_normal((B, head.n_out())))
    h[0], h[1] = 50.0, -50.0                          # an all-large and an all-small row
    h = b64.asarray(h)
    eps = b64.asarray(rng.standard_normal((S, B, J)))
    z, post, cache = head.forward(b64, h, eps)
    kl = kl_std_normal(b64, post)
    for name, a in {"z": z, "var": post.var, "logdet": post.logdet, "kl": kl}.items():
        assert np.all(np.isfinite(a)), name
    _, _, diag, _ = head.build_L(b64, h)
    assert np.all(diag >= head.floor)
    # row 1: diag = softplus(-50) + floor = floor (to rounding): logdet = 2 J log(floor)
    np.testing.assert_allclose(post.logdet[1], 2 * J * math.log(head.floor), rtol=1e-12)
    # row 0: diag = 50 + floor, off-diagonals 50: var_j = (j + 1) 50^2 to rounding
    np.testing.assert_allclose(post.var[0], 2500.0 * np.arange(1, J + 1), rtol=1e-6)
    # gradients of the ELBO-like scalar <dz, z> + sum KL
    dz = b64.asarray(rng.standard_normal((S, B, J)))
    dmu, dvar, dlogdet = kl_std_normal_backward(b64, b64.ones((B,)), post)
    dh = head.backward(b64, dz, dmu, dvar, dlogdet, cache)
    assert np.all(np.isfinite(dh))
    # d/dd_j of everything = dL_jj sigmoid(d_j): at d = -50, sigmoid ~ 2e-22, so ~ 1e5 * 2e-22
    assert np.all(np.abs(dh[1, J:2 * J]) < 1e-10)

    def f(p):
        zz, pp, _ = head.forward(b64, p["h"], eps)
        return b64.xp.sum(zz * dz) + b64.xp.sum(kl_std_normal(b64, pp))

    assert_ok(check_grads(b64, f, {"h": h}, {"h": dh}, full_max=EVERY_ENTRY))


# --------------------------------------------------------------------------- sampling
@pytest.mark.parametrize("diag", DIAGS)
@pytest.mark.parametrize("seed", [1, 2])
def test_sample_mean_and_covariance(b64, diag, seed):
    """[02#sampling] z = mu + L eps ~ N(mu, L L^T): the sample mean is within 5 standard errors
    sqrt(Sigma_jj / n) of mu and every sample covariance entry within 5 standard errors
    sqrt((Sigma_ii Sigma_jj + Sigma_ij^2) / n) of Sigma_ij = (L L^T)_ij."""
    rng = np.random.default_rng(seed)
    J, n = 3, 200_000
    head = CholeskyHead(J, diag=diag)
    h = rng.standard_normal((1, head.n_out()))
    h[:, 2 * J:] = rng.uniform(0.6, 1.2, size=(1, head.T)) * rng.choice([-1, 1], size=(1, head.T))
    h = b64.asarray(h)
    mu, L = L_by_hand(h, J, diag)
    mu, L = mu[0], L[0]
    Sigma = L @ L.T
    # the test must tell L L^T from L^T L (a transposed sampler) by many standard errors
    assert np.max(np.abs(Sigma - L.T @ L)) > 0.3
    eps = b64.asarray(rng.standard_normal((n, 1, J)))
    z, _, _ = head.forward(b64, h, eps)
    z = b64.to_numpy(z)[:, 0, :]
    m = z.mean(axis=0)
    se_mean = np.sqrt(np.diag(Sigma) / n)
    assert np.all(np.abs(m - mu) <= N_SE * se_mean), (m, mu, se_mean)
    C = np.cov(z, rowvar=False)
    # Var(z_i z_j) = Sigma_ii Sigma_jj + Sigma_ij^2 for a centred Gaussian (Isserlis)
    se_cov = np.sqrt((np.outer(np.diag(Sigma), np.diag(Sigma)) + Sigma ** 2) / n)
    assert np.all(np.abs(C - Sigma) <= N_SE * se_cov), (C, Sigma, se_cov)


@given(J=st.integers(1, 5), B=st.integers(1, 3), diag=st.sampled_from(DIAGS), seed=seeds)
def test_build_L_packing_and_summary(b64, J, B, diag, seed):
    """[02#packing] L is lower triangular, the packed entries fill it row by row, the diagonal
    is positive; [02#sampling] z_j = mu_j + sum_k L_jk eps_k; [02#summary] var = diag(L L^T) =
    sum_k L_jk^2 and logdet = 2 sum_j log L_jj = log det(L L^T)."""
    rng = np.random.default_rng(seed)
    head = CholeskyHead(J, diag=diag)
    assert head.n_out() == 2 * J + J * (J - 1) // 2
    h = b64.asarray(random_h(rng, B, head))
    mu_ref, L_ref = L_by_hand(h, J, diag)
    mu, L, dg, _ = head.build_L(b64, h)
    np.testing.assert_array_equal(mu, mu_ref)
    np.testing.assert_allclose(L, L_ref, rtol=1e-15, atol=0)
    assert np.all(np.triu(L, 1) == 0) and np.all(dg > 0)
    eps = rng.standard_normal((2, B, J))
    z, post, _ = head.forward(b64, h, b64.asarray(eps))
    np.testing.assert_allclose(z, mu_ref + np.einsum("bjk,sbk->sbj", L_ref, eps),
                               rtol=1e-13, atol=1e-13)
    Sigma = L_ref @ np.transpose(L_ref, (0, 2, 1))
    np.testing.assert_allclose(post.var, np.diagonal(Sigma, axis1=1, axis2=2), rtol=1e-13)
    sign, ld = np.linalg.slogdet(Sigma)
    assert np.all(sign > 0)
    np.testing.assert_allclose(post.logdet, ld, rtol=1e-10, atol=1e-10)


def test_column_sign_flip_gives_same_sigma(b64):
    """[02#positive-diagonal] Without a sign constraint L is not identifiable: flipping the
    sign of any column of L leaves Sigma = L L^T unchanged.  With a positive diagonal the factor
    is unique: NumPy's Cholesky factor of Sigma is the head's L."""
    rng = np.random.default_rng(3)
    J = 4
    head = CholeskyHead(J, diag="softplus")
    _, L, _, _ = head.build_L(b64, b64.asarray(random_h(rng, 1, head)))
    L = b64.to_numpy(L)[0]
    Sigma = L @ L.T
    for k in range(J):
        Lf = L.copy()
        Lf[:, k] *= -1.0
        assert np.max(np.abs(Lf - L)) > 0.1
        np.testing.assert_allclose(Lf @ Lf.T, Sigma, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(np.linalg.cholesky(Sigma), L, rtol=1e-10, atol=1e-12)


# --------------------------------------------------------------------------- closed forms
@pytest.mark.parametrize("diag", DIAGS)
def test_fullcov_kl_vs_monte_carlo(b64, diag):
    """[02#kl] KL(N(mu, L L^T) || N(0, I)) = 1/2 (||L||_F^2 + ||mu||^2 - J - 2 sum log L_jj):
    ``kl_std_normal`` equals that formula, and the mean of log q(z) - log p(z) over n draws is
    within 5 standard errors (sample standard deviation of the summand / sqrt(n)) of it."""
    rng = np.random.default_rng(11 if diag == "softplus" else 12)
    J, B, n = 3, 4, 50_000
    head = CholeskyHead(J, diag=diag)
    h = b64.asarray(random_h(rng, B, head, scale=0.7))
    eps = b64.asarray(rng.standard_normal((n, B, J)))
    z, post, _ = head.forward(b64, h, eps)
    kl = kl_std_normal(b64, post)
    mu, L = L_by_hand(h, J, diag)
    kl_formula = 0.5 * (np.sum(L * L, axis=(1, 2)) + np.sum(mu * mu, axis=1) - J
                        - 2 * np.sum(np.log(np.diagonal(L, axis1=1, axis2=2)), axis=1))
    np.testing.assert_allclose(kl, kl_formula, rtol=1e-12)
    # log_q is itself checked against the textbook density in test_log_q_matches_mvn_logpdf
    diffs = log_q(b64, post, eps) - log_std_normal(b64, z)                   # (n, B)
    est = diffs.mean(axis=0)
    se = diffs.std(axis=0, ddof=1) / math.sqrt(n)
    assert np.all(np.abs(est - kl) <= N_SE * se), (est, kl, se)
    assert np.all(kl > 0)


@given(J=st.integers(1, 5), B=st.integers(1, 3), S=st.integers(1, 3),
       diag=st.sampled_from(DIAGS), seed=seeds)
def test_log_q_matches_mvn_logpdf(b64, J, B, S, diag, seed):
    """[02#log-q] log q(z|x) = -1/2 (J log 2pi + log det Sigma + ||eps||^2) at z = mu + L eps is
    the multivariate-normal log-density at z (SciPy's, and np.linalg with a solve) to 1e-10;
    [02#entropy] H[q] = 1/2 (J (1 + log 2pi) + log det Sigma) is SciPy's entropy."""
    rng = np.random.default_rng(seed)
    head = CholeskyHead(J, diag=diag)
    h = b64.asarray(random_h(rng, B, head, scale=0.5))
    eps = b64.asarray(rng.standard_normal((S, B, J)))
    z, post, _ = head.forward(b64, h, eps)
    lq = log_q(b64, post, eps)
    assert lq.shape == (S, B)
    mu, L = L_by_hand(h, J, diag)
    for bi in range(B):
        Sigma = L[bi] @ L[bi].T
        ref = stats.multivariate_normal(mean=mu[bi], cov=Sigma)
        for s in range(S):
            np.testing.assert_allclose(lq[s, bi], ref.logpdf(z[s, bi]), rtol=0, atol=1e-10)
            np.testing.assert_allclose(lq[s, bi], mvn_logpdf_np(z[s, bi], mu[bi], Sigma),
                                       rtol=0, atol=1e-10)
        entropy = 0.5 * (J * (1.0 + math.log(2 * math.pi)) + post.logdet[bi])
        np.testing.assert_allclose(entropy, ref.entropy(), rtol=0, atol=1e-10)


# --------------------------------------------------------------------------- diagonal case
@given(J=st.integers(1, 4), B=st.integers(1, 3), S=st.integers(1, 3), seed=seeds)
@example(J=1, B=2, S=2, seed=0)
@example(J=1, B=1, S=1, seed=1)
def test_cholesky_matches_diag_head(b64, J, B, S, seed):
    """[02#diagonal-special-case] With every off-diagonal entry zero, CholeskyHead(diag="exp")
    fed d = logvar / 2 is the diagonal head: the same z, var, logdet, KL and log q; and its
    gradients are the diagonal head's after the chain rule dlogvar = dd / 2.  (J = 1 has no
    off-diagonal entry at all.)"""
    rng = np.random.default_rng(seed)
    dhead, chead = DiagGaussianHead(J), CholeskyHead(J, diag="exp")
    mu = rng.standard_normal((B, J))
    logvar = rng.standard_normal((B, J))
    h_diag = b64.asarray(np.concatenate([mu, logvar], axis=1))
    h_chol = b64.asarray(np.concatenate([mu, logvar / 2, np.zeros((B, chead.T))], axis=1))
    eps = b64.asarray(rng.standard_normal((S, B, J)))
    z1, p1, c1 = dhead.forward(b64, h_diag, eps)
    z2, p2, c2 = chead.forward(b64, h_chol, eps)
    np.testing.assert_array_equal(z2, z1)           # adding exact zeros changes no bit
    np.testing.assert_array_equal(p2.mu, p1.mu)
    np.testing.assert_array_equal(p2.var, p1.var)
    # logdet: 2 sum log(exp(logvar / 2)) vs sum logvar -- equal up to the rounding of exp and log
    # (a few ulp of each |logvar_j| <= ~5)
    np.testing.assert_allclose(p2.logdet, p1.logdet, rtol=0, atol=32 * J * EPS64 * 5)
    kl1, kl2 = kl_std_normal(b64, p1), kl_std_normal(b64, p2)
    np.testing.assert_allclose(kl2, kl1, rtol=0, atol=32 * J * EPS64 * 5)
    np.testing.assert_allclose(log_q(b64, p2, eps), log_q(b64, p1, eps), rtol=0,
                               atol=32 * J * EPS64 * 5)
    # upstream: random ones for all four outputs plus the KL's, as the VAE sends
    ups = upstream(rng, S, B, J)
    kmu, kvar, kld = kl_std_normal_backward(b64, b64.asarray(rng.standard_normal(B)), p1)
    ups = on(b64, [ups[0], ups[1] + kmu, ups[2] + kvar, ups[3] + kld])
    g1 = dhead.backward(b64, *ups, c1)
    g2 = chead.backward(b64, *ups, c2)
    assert g2.shape == (B, chead.n_out())
    np.testing.assert_allclose(g2[:, :J], g1[:, :J], rtol=1e-14, atol=1e-14)            # dmu
    np.testing.assert_allclose(g2[:, J:2 * J] / 2, g1[:, J:], rtol=1e-13, atol=1e-14)   # dlogvar


@pytest.mark.parametrize("J", [1, 3])
@pytest.mark.parametrize("lik", ["bernoulli", "gaussian"])
def test_cholesky_vae_matches_diag_vae(b64, J, lik):
    """[02#diagonal-special-case] One floor up: a full-covariance VAE (exp diagonal) whose
    encoder's last layer is the mean-field VAE's with the log-variance columns halved and zero
    columns for the off-diagonal entries has the same loss and the same gradient for every shared
    parameter (the halved columns' gradients are twice the log-variance columns')."""
    S, B, D = 2, 3, 5
    rng = np.random.default_rng(J)
    cfg = dict(D=D, latent_dim=J, hidden=(6,), act="relu", likelihood=lik, n_samples=S)
    vd = VAE(VAEConfig(posterior="diag", **cfg), b64)
    vc = VAE(VAEConfig(posterior="cholesky", **cfg), b64)
    vc.head = CholeskyHead(J, diag="exp")
    pd = vd.init_params(b64.rng(5))
    last = f"encoder.{vd.encoder.n_layers - 1}"
    pc = dict(pd)
    for k in ("W", "b"):
        a = b64.to_numpy(pd[f"{last}.{k}"])
        pad = np.zeros(a.shape[:-1] + (vc.head.T,))
        pc[f"{last}.{k}"] = b64.asarray(np.concatenate([a[..., :J], a[..., J:] / 2, pad], axis=-1))
    x = b64.asarray(rng.random((B, D)))
    noise = vd.sample_noise(b64.rng(6), B)
    l1, g1, _ = vd.loss_and_grads(pd, x, noise)
    l2, g2, _ = vc.loss_and_grads(pc, x, noise)
    np.testing.assert_allclose(l2, l1, rtol=1e-13)
    assert set(g2) == set(g1)
    for k in pd:
        a, c = b64.to_numpy(g1[k]), b64.to_numpy(g2[k])
        if k.startswith(last):
            np.testing.assert_allclose(c[..., :J], a[..., :J], rtol=1e-10, atol=1e-13)
            np.testing.assert_allclose(c[..., J:2 * J] / 2, a[..., J:], rtol=1e-10, atol=1e-13)
        else:
            np.testing.assert_allclose(c, a, rtol=1e-10, atol=1e-13, err_msg=k)


# --------------------------------------------------------------------------- array API only
@pytest.mark.parametrize("diag", DIAGS)
def test_cholesky_head_strict_backend(strict64, b64, diag):
    """[02#packing] The head's forward and backward run on array_api_strict on a non-default
    device (any non-standard call or hidden host transfer raises), stay on that device, agree
    with NumPy to rounding, and pass the finite-difference check there."""
    sb = strict64
    rng = np.random.default_rng(7)
    J, B, S = 3, 2, 2
    head = CholeskyHead(J, diag=diag)
    h_np = random_h(rng, B, head)
    eps_np = rng.standard_normal((S, B, J))
    ups_np = upstream(rng, S, B, J)
    out = {}
    for b in (sb, b64):
        h, eps, ups = b.asarray(h_np), b.asarray(eps_np), on(b, ups_np)
        z, post, cache = head.forward(b, h, eps)
        kl = kl_std_normal(b, post)
        dh = head.backward(b, *ups, cache)
        if b is sb:
            for a in (z, post.var, post.logdet, kl, dh):
                assert a.device == sb.device
        out[b.name] = [b.to_numpy(a) for a in (z, post.var, post.logdet, kl, dh)]
    for a, c in zip(out["strict"], out["numpy"]):
        np.testing.assert_allclose(a, c, rtol=1e-13, atol=1e-14)

    h, eps, ups = sb.asarray(h_np), sb.asarray(eps_np), on(sb, ups_np)

    def f(p):
        z, post, _ = head.forward(sb, p["h"], eps)
        return weighted_sum(sb, z, post, ups)

    _, _, cache = head.forward(sb, h, eps)
    dh = head.backward(sb, *ups, cache)
    assert_ok(check_grads(sb, f, {"h": h}, {"h": dh}, full_max=EVERY_ENTRY))
