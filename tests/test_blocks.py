"""Gradient checks of every building block and of the whole VAE loss (float64, central
differences, relative error <= 1e-6), plus tests of the mathematics the gradients rest on.

Each block is checked through the scalar  f = <v, forward(inputs)>  with a random upstream
gradient v, so the hand-written backward(v) must equal the finite-difference gradient of f.
"""
import math

import numpy as np
import pytest
from hypothesis import assume, given, strategies as st

from scratchvae import nn
from scratchvae.distributions import (Bernoulli, DiagGaussianHead, Gaussian, Posterior,
                                      kl_std_normal, kl_std_normal_backward, log_q)
from scratchvae.gradcheck import check_grads
from scratchvae.models.vae import VAE, VAEConfig

RTOL = 1e-6
dims = st.integers(1, 5)
seeds = st.integers(0, 2**31 - 1)


def host(rng, *shape):
    return rng.standard_normal(shape)


def assert_ok(res):
    assert res.ok(RTOL), f"max relative error {res.max_rel_err:.3e} at {res.worst}"


@given(N=dims, I=dims, O=dims, seed=seeds)
def test_linear_grad(b64, N, I, O, seed):
    rng = np.random.default_rng(seed)
    xp = b64.xp
    inp = {"x": b64.asarray(host(rng, N, I)), "W": b64.asarray(host(rng, I, O)),
           "b": b64.asarray(host(rng, O))}
    v = b64.asarray(host(rng, N, O))
    f = lambda p: xp.sum(v * nn.linear_forward(p["x"], p["W"], p["b"])[0])
    _, cache = nn.linear_forward(inp["x"], inp["W"], inp["b"])
    dx, dW, db = nn.linear_backward(xp, v, cache)
    assert_ok(check_grads(b64, f, inp, {"x": dx, "W": dW, "b": db}))


@pytest.mark.parametrize("act", ["relu", "tanh", "softplus", "sigmoid"])
@given(N=dims, D=dims, seed=seeds, scale=st.sampled_from([0.1, 1.0, 5.0]))
def test_activation_grad(b64, act, N, D, seed, scale):
    rng = np.random.default_rng(seed)
    x = host(rng, N, D) * scale
    if act == "relu":
        assume(np.min(np.abs(x)) > 1e-2)          # a margin from the kink at 0
    if act in ("tanh", "sigmoid", "softplus"):
        # deep in saturation the derivative (< 1e-3) is below what a central difference of an
        # O(1) function resolves at 1e-6 relative error; the forward pass is tested there below
        assume(np.max(np.abs(x)) < 4.0)
    fwd, bwd = nn.ACTIVATIONS[act]
    v = b64.asarray(host(rng, N, D))
    xd = b64.asarray(x)
    f = lambda p: b64.xp.sum(v * fwd(b64, p["x"])[0])
    _, cache = fwd(b64, xd)
    assert_ok(check_grads(b64, f, {"x": xd}, {"x": bwd(b64, v, cache)}))


def test_activation_forward_extremes(b64):
    """Saturated activations stay finite and exact at |x| = 1e4."""
    x = b64.asarray([-1e4, -50.0, 0.0, 50.0, 1e4])
    np.testing.assert_allclose(b64.to_numpy(b64.sigmoid(x)), [0, 1.9287498479639178e-22, 0.5, 1, 1],
                               rtol=1e-12, atol=0)
    np.testing.assert_allclose(b64.to_numpy(b64.softplus(x)), [0, 1.9287498479639178e-22,
                               math.log(2), 50.0, 1e4], rtol=1e-12)
    for act in ("tanh", "sigmoid", "softplus"):
        fwd, bwd = nn.ACTIVATIONS[act]
        y, c = fwd(b64, x)
        assert np.all(np.isfinite(b64.to_numpy(bwd(b64, b64.xp.ones_like(x), c))))


@given(sizes=st.lists(st.integers(1, 5), min_size=2, max_size=4), N=dims, seed=seeds,
       act=st.sampled_from(["relu", "tanh", "softplus"]))
def test_mlp_grad(b64, sizes, N, seed, act):
    mlp = nn.MLP("m", sizes, act)
    params = mlp.init(b64, b64.rng("mlp", seed))
    rng = np.random.default_rng(seed)
    x = b64.asarray(host(rng, N, sizes[0]))
    v = b64.asarray(host(rng, N, sizes[-1]))
    out, caches = mlp.forward(b64, params, x)
    if act == "relu":      # keep every pre-activation away from the kink
        h = x
        for i in range(mlp.n_layers - 1):
            h = h @ params[f"m.{i}.W"] + params[f"m.{i}.b"]
            assume(float(b64.xp.min(b64.xp.abs(h))) > 1e-2)
            h = b64.xp.maximum(h, 0.0)
    dx, grads = mlp.backward(b64, v, caches)
    allp = dict(params, x=x)
    grads = dict(grads, x=dx)
    f = lambda p: b64.xp.sum(v * mlp.forward(b64, p, p["x"])[0])
    assert_ok(check_grads(b64, f, allp, grads))


def _lik_check(b64, lik, x, out, dll):
    """f = sum(dll * ll): random-sign weights make f cancel, so its round-off is that of the
    terms, sum |dll * ll| (the check's ``magnitude``)."""
    ll, cache = lik.loglik(b64, x, out)
    dout = lik.backward(b64, dll, cache)
    f = lambda p: b64.xp.sum(dll * lik.loglik(b64, x, p["out"])[0])
    mag = float(b64.xp.sum(b64.xp.abs(dll * ll)))
    return check_grads(b64, f, {"out": out}, {"out": dout}, magnitude=mag)


def test_gaussian_grad_cancelling_terms(b64):
    """The example hypothesis found (S=2, B=3, D=4): f = -2.6 from terms of total size 28, and a
    correct gradient entry of 9.4e-7 -- passes with the terms' magnitude (round-off there is
    4e-12), and that one entry off by 1e-9 (0.1 %) still fails."""
    rng = np.random.default_rng(1510226095)
    x = b64.asarray(rng.random((3, 4)))
    out = b64.asarray(host(rng, 2, 3, 8))
    dll = b64.asarray(host(rng, 2, 3))
    assert_ok(_lik_check(b64, Gaussian(0.0), x, out, dll))
    ll, cache = Gaussian(0.0).loglik(b64, x, out)
    bad = b64.to_numpy(Gaussian(0.0).backward(b64, dll, cache)).copy()
    bad[0, 1, 1] += 1e-9
    f = lambda p: b64.xp.sum(dll * Gaussian(0.0).loglik(b64, x, p["out"])[0])
    mag = float(b64.xp.sum(b64.xp.abs(dll * ll)))
    assert not check_grads(b64, f, {"out": out}, {"out": b64.asarray(bad)}, magnitude=mag).ok(RTOL)


@given(S=st.integers(1, 3), B=dims, D=dims, seed=seeds, scale=st.sampled_from([0.5, 3.0, 20.0]))
def test_bernoulli_grad(b64, S, B, D, seed, scale):
    rng = np.random.default_rng(seed)
    x = b64.asarray(rng.random((B, D)))
    out = b64.asarray(host(rng, S, B, D) * scale)
    dll = b64.asarray(host(rng, S, B))
    assert_ok(_lik_check(b64, Bernoulli(), x, out, dll))


@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_bernoulli_extreme_logits(dtype):
    from scratchvae.backend import Backend

    b = Backend("numpy", dtype)
    lik = Bernoulli()
    logits = b.asarray([[[1e4, -1e4, 1e4, -1e4, 0.0]]])
    x = b.asarray([[1.0, 0.0, 0.0, 1.0, 1.0]])
    ll, cache = lik.loglik(b, x, logits)
    # exact: log sigmoid(1e4) = 0, log(1 - sigmoid(-1e4)) = 0, log(1 - sigmoid(1e4)) = -1e4, ...
    expected = 0.0 + 0.0 - 1e4 - 1e4 - math.log(2.0)
    assert float(ll[0, 0]) == pytest.approx(expected, rel=1e-6)
    d = b.to_numpy(lik.backward(b, b.ones((1, 1)), cache))
    assert np.all(np.isfinite(d))
    np.testing.assert_allclose(d[0, 0], [0.0, 0.0, -1.0, 1.0, 0.5], atol=1e-6)


@pytest.mark.parametrize("var_min", [0.0, 1e-3])
@given(S=st.integers(1, 3), B=dims, D=dims, seed=seeds)
def test_gaussian_grad(b64, var_min, S, B, D, seed):
    rng = np.random.default_rng(seed)
    x = b64.asarray(rng.random((B, D)))
    out = b64.asarray(host(rng, S, B, 2 * D))
    dll = b64.asarray(host(rng, S, B))
    assert_ok(_lik_check(b64, Gaussian(var_min), x, out, dll))


def test_gaussian_matches_direct_density(b64):
    """log p(x) of the Gaussian likelihood against the textbook density, floor disabled."""
    rng = np.random.default_rng(3)
    x, mu, lv = rng.random((4, 5)), rng.standard_normal((4, 5)), rng.standard_normal((4, 5))
    ll, _ = Gaussian(0.0).loglik(b64, b64.asarray(x), b64.asarray(np.concatenate([mu, lv], -1)[None]))
    direct = np.sum(-0.5 * np.log(2 * np.pi * np.exp(lv)) - (x - mu) ** 2 / (2 * np.exp(lv)), -1)
    np.testing.assert_allclose(b64.to_numpy(ll)[0], direct, rtol=1e-12)


@given(S=st.integers(1, 3), B=dims, J=dims, seed=seeds)
def test_diag_head_grad(b64, S, B, J, seed):
    rng = np.random.default_rng(seed)
    head = DiagGaussianHead(J)
    h = b64.asarray(host(rng, B, 2 * J))
    eps = b64.asarray(host(rng, S, B, J))
    vz, vmu, vvar, vld = (b64.asarray(host(rng, *s)) for s in [(S, B, J), (B, J), (B, J), (B,)])
    xp = b64.xp

    def f(p):
        z, post, _ = head.forward(b64, p["h"], eps)
        return (xp.sum(vz * z) + xp.sum(vmu * post.mu) + xp.sum(vvar * post.var)
                + xp.sum(vld * post.logdet))

    _, _, cache = head.forward(b64, h, eps)
    dh = head.backward(b64, vz, vmu, vvar, vld, cache)
    assert_ok(check_grads(b64, f, {"h": h}, {"h": dh}))


@given(B=dims, J=dims, seed=seeds)
def test_kl_grad(b64, B, J, seed):
    rng = np.random.default_rng(seed)
    mu, lv = host(rng, B, J), host(rng, B, J)
    post = Posterior(b64.asarray(mu), b64.asarray(np.exp(lv)), b64.asarray(lv.sum(-1)))
    v = b64.asarray(host(rng, B))
    dmu, dvar, dld = kl_std_normal_backward(b64, v, post)
    inp = {"mu": post.mu, "var": post.var, "logdet": post.logdet}
    f = lambda p: b64.xp.sum(v * kl_std_normal(b64, Posterior(p["mu"], p["var"], p["logdet"])))
    assert_ok(check_grads(b64, f, inp, {"mu": dmu, "var": dvar, "logdet": dld}))


@given(lik=st.sampled_from(["bernoulli", "gaussian"]), post=st.sampled_from(["diag", "cholesky"]),
       act=st.sampled_from(["tanh", "softplus", "relu"]), S=st.integers(1, 3), B=st.integers(1, 4),
       J=st.integers(1, 3), seed=seeds)
def test_vae_loss_grad(b64, lik, post, act, S, B, J, seed):
    m = VAE(VAEConfig(D=5, latent_dim=J, hidden=(4,), act=act, likelihood=lik, posterior=post,
                      n_samples=S), b64)
    rng = b64.rng("vae", seed)
    params = m.init_params(rng)
    x = rng.uniform((B, 5))
    noise = m.sample_noise(rng, B)
    if act == "relu":
        for net, inp in ((m.encoder, x),):
            h = inp @ params[f"{net.prefix}.0.W"] + params[f"{net.prefix}.0.b"]
            assume(float(b64.xp.min(b64.xp.abs(h))) > 1e-2)
        hz = m.head.forward(b64, m.encoder.forward(b64, params, x)[0], noise["eps"])[0]
        hd = b64.xp.reshape(hz, (-1, J)) @ params["decoder.0.W"] + params["decoder.0.b"]
        assume(float(b64.xp.min(b64.xp.abs(hd))) > 1e-2)
    loss, grads, _ = m.loss_and_grads(params, x, noise)
    assert set(grads) == set(params)
    assert_ok(check_grads(b64, lambda p: m.loss(p, x, noise), params, grads))


# --------------------------------------------------------------------------- the mathematics
def test_reparam_moments(b64):
    """z = mu + exp(logvar/2) eps has mean mu and variance exp(logvar): CLT tolerance."""
    rng = np.random.default_rng(0)
    J, n = 4, 200_000
    mu, lv = rng.standard_normal(J), rng.standard_normal(J)
    head = DiagGaussianHead(J)
    eps = b64.rng("moments").normal((n, 1, J))
    z, post, _ = head.forward(b64, b64.asarray(np.concatenate([mu, lv])[None]), eps)
    z = b64.to_numpy(z)[:, 0, :]
    var = np.exp(lv)
    # standard errors: of the mean sqrt(var/n); of the sample variance sqrt(2 var^2 / n)
    assert np.all(np.abs(z.mean(0) - mu) < 5 * np.sqrt(var / n))
    assert np.all(np.abs(z.var(0) - var) < 5 * np.sqrt(2 * var ** 2 / n))
    np.testing.assert_allclose(b64.to_numpy(post.var)[0], var, rtol=1e-12)


def test_kl_closed_form_vs_monte_carlo(b64):
    """KL(q || N(0, I)) in closed form against the mean of log q(z) - log p(z), z ~ q."""
    rng = np.random.default_rng(1)
    J, n = 3, 400_000
    mu, lv = rng.standard_normal((2, J)), rng.standard_normal((2, J))
    head = DiagGaussianHead(J)
    eps = b64.rng("kl-mc").normal((n, 2, J))
    z, post, _ = head.forward(b64, b64.asarray(np.concatenate([mu, lv], -1)), eps)
    logq = b64.to_numpy(log_q(b64, post, eps))
    zz = b64.to_numpy(z)
    logp = -0.5 * np.sum(np.log(2 * np.pi) + zz ** 2, -1)
    d = logq - logp                                     # (n, 2)
    kl = b64.to_numpy(kl_std_normal(b64, post))
    se = d.std(0) / np.sqrt(n)
    assert np.all(np.abs(d.mean(0) - kl) < 5 * se), (d.mean(0), kl, se)
    # and the textbook formula, written independently
    direct = 0.5 * np.sum(np.exp(lv) + mu ** 2 - 1 - lv, -1)
    np.testing.assert_allclose(kl, direct, rtol=1e-12)


def test_elbo_below_iwae(b64):
    """ELBO <= IWAE_k <= log p(x), and the loss's closed-form ELBO agrees with the MC ELBO."""
    m = VAE(VAEConfig(D=6, latent_dim=2, hidden=(8,), likelihood="bernoulli"), b64)
    rng = b64.rng("iw")
    params = m.init_params(rng)
    x = b64.asarray((np.random.default_rng(0).random((3, 6)) < 0.5).astype(float))
    k = 20_000
    eps = m.sample_noise(rng, 3, S=k)["eps"]
    logw, _ = m.log_weights(params, x, eps)
    logw = b64.to_numpy(logw)                                  # (k, 3)
    elbo_mc = logw.mean(0)
    iw = np.log(np.mean(np.exp(logw - logw.max(0)), 0)) + logw.max(0)
    # a 2-D latent: log p(x) by brute-force quadrature on a grid
    g = np.linspace(-8, 8, 401)
    Z = np.stack(np.meshgrid(g, g), -1).reshape(-1, 2)
    out, _ = m.decoder.forward(b64, params, b64.asarray(Z))
    out = b64.to_numpy(out)
    xs = b64.to_numpy(x)
    ll = (xs[:, None, :] * out[None] - np.logaddexp(0, out)[None]).sum(-1)     # (3, G)
    logpz = -0.5 * np.sum(np.log(2 * np.pi) + Z ** 2, -1)
    lp = ll + logpz[None]
    logpx = np.log(np.sum(np.exp(lp - lp.max(1, keepdims=True)), 1)) + lp.max(1) + 2 * np.log(g[1] - g[0])
    assert np.all(elbo_mc < iw) and np.all(iw <= logpx + 1e-3), (elbo_mc, iw, logpx)
    # the training loss's ELBO (closed-form KL, 1 sample) is an unbiased estimate of the MC ELBO
    S = 20_000
    noise = m.sample_noise(b64.rng("iw2"), 3, S=S)
    loss_elbo = -float(m.loss(params, x, noise)) * 1.0        # mean over the 3 examples
    se = logw.mean(1).std() / np.sqrt(k)
    assert abs(loss_elbo - elbo_mc.mean()) < 5 * max(se, 1e-3), (loss_elbo, elbo_mc.mean())


@pytest.mark.parametrize("rows", [1, 7, 10 ** 9])
def test_iwae_metrics_do_not_depend_on_how_the_samples_are_sliced(b64, rows, monkeypatch):
    """iwae_metrics runs the decoder on a slice of the k samples at a time (memory): one sample
    per call, uneven slices, or all at once give the same scores; a mix-up of samples between
    slices (each log w_s depends on its own sample only) would change them."""
    from scratchvae import metrics

    m = VAE(VAEConfig(D=6, latent_dim=2, hidden=(8,), likelihood="bernoulli"), b64)
    params = m.init_params(b64.rng("sl"))
    x = b64.asarray((np.random.default_rng(0).random((50, 6)) < 0.5).astype(float))
    ref = metrics.iwae_metrics(m, params, x, k=30, batch=16)
    monkeypatch.setattr(metrics, "_ROWS", rows)
    got = metrics.iwae_metrics(m, params, x, k=30, batch=16)
    assert got.keys() == ref.keys()
    for key in ref:
        np.testing.assert_allclose(got[key], ref[key], rtol=1e-13, atol=0, err_msg=key)
    assert metrics.iwae_metrics(m, params, x, k=29, batch=16)["iwae_ll"] != ref["iwae_ll"]
