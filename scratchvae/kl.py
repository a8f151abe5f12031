"""Seed section 1: which direction of the KL divergence, and what each direction does.

Derivation: ``derivations/01-kl-direction.md`` (equation numbers below refer to it).

The setting of seed section 1.2, used throughout:

* target   p(x) = 1/2 N(x; -a, s^2) + 1/2 N(x; a, s^2)           (a symmetric two-mode mixture)
* approx.  q(x) = N(x; m, sigma^2),  sigma = exp(rho),  learnable params {"m", "rho"}

The module has three parts.

1. **Device side** (array API only: every function receives the :class:`~scratchvae.backend.Backend`
   ``b`` and uses ``b.xp``): the target :class:`TwoModeMixture`, the *access oracles* that
   enforce what each scenario of seed section 1.1 may touch, and the Monte Carlo estimators with
   their hand-written gradients.  Noise is an argument, so every estimator is a deterministic
   function of ``(params, noise)`` and can be checked by finite differences.

   ====================  ===========================  =======================================
   scenario (seed 1.1)   oracle the estimator sees     estimators
   ====================  ===========================  =======================================
   1: p density+samples  :class:`Full`                 :func:`forward_kl_full`,
                                                       :func:`reverse_kl_full`
   2: p samples only,    :class:`SampleOnly`           :func:`forward_kl_mle` (takes no q noise,
      q density only                                   so it cannot sample q either)
   3: p unnormalised,    :class:`UnnormalisedDensity`  :func:`reverse_kl_reparam`,
      q samples+density                                :func:`reverse_kl_score`,
                                                       :func:`forward_kl_snis` (biased)
   ====================  ===========================  =======================================

   Every estimator *narrows* the oracle it is given to its scenario's view on entry, so even when
   handed a :class:`Full` oracle, the scenario-2 estimator cannot reach p's density: any other
   attribute raises :class:`AccessError`.

2. **Host side, exact** (NumPy float64): KL(q||p) and KL(p||q) and their gradients/Hessians by a
   dense trapezoid rule in log space (agrees with adaptive quadrature to 1e-9, see
   ``tests/test_kl.py``), located
   minima, all critical points of the reverse KL, the fold separation where the off-centre minima
   of the reverse KL are born, and gradient-descent paths.

3. **The experiment** :func:`run_experiment` (figures, variance table, metrics) for ``run.py``.
"""
from __future__ import annotations

import functools
import json
import math
import os
from typing import NamedTuple

import numpy as np  # host-side quadrature, optimisation and plotting only (parts 2 and 3)

LOG2PI = math.log(2.0 * math.pi)

# =============================================================================================
# Part 1 -- device side: target, access oracles, estimators (array API only)
# =============================================================================================


class TwoModeMixture:
    """p(x) = 1/2 N(x; -a, s^2) + 1/2 N(x; a, s^2) on the backend's device.

    ``log_unnorm``  log p~(x) = logaddexp(-(x-a)^2 / 2s^2, -(x+a)^2 / 2s^2)      (eq. 1.2)
    ``log_Z``       log of Z = int p~ = 2 sqrt(2 pi) s, so log p = log p~ - log Z
    ``score``       d/dx log p(x) = (a tanh(a x / s^2) - x) / s^2                  (eq. 1.3)
    ``sample``      x = a * sign + s * eps from noise {"eps": N(0,1), "u": U(0,1)}
    """

    def __init__(self, backend, a: float = 2.0, s: float = 0.5):
        if not (s > 0):
            raise ValueError(f"s must be positive, got {s}")
        self.b, self.a, self.s = backend, float(a), float(s)
        self.log_Z = math.log(2.0 * math.sqrt(2.0 * math.pi) * self.s)

    def log_unnorm(self, x):
        a, s2 = self.a, self.s * self.s
        return self.b.xp.logaddexp(-((x - a) ** 2) / (2.0 * s2), -((x + a) ** 2) / (2.0 * s2))

    def log_prob(self, x):
        return self.log_unnorm(x) - self.log_Z

    def score(self, x):
        a, s2 = self.a, self.s * self.s
        return (a * self.b.xp.tanh(a * x / s2) - x) / s2

    def sample(self, noise: dict):
        xp = self.b.xp
        u, eps = noise["u"], noise["eps"]
        sign = 2.0 * xp.astype(u >= 0.5, eps.dtype) - 1.0  # component -a or +a, each w.p. 1/2
        return self.a * sign + self.s * eps


def draw_p_noise(backend, rng, shape) -> dict:
    """The randomness p's sampler consumes: {"eps": N(0,1), "u": U(0,1)}, each of ``shape``."""
    shape = tuple(shape)
    return {"eps": rng.normal(shape), "u": rng.uniform(shape)}


def draw_q_noise(backend, rng, shape):
    """eps ~ N(0, 1) of ``shape``; q's samples are x = m + exp(rho) eps (eq. 1.4)."""
    return rng.normal(tuple(shape))


class AccessError(AttributeError):
    """An estimator asked an oracle for something its scenario does not give."""


def _fetch(source, name: str, wanted_by: str):
    try:
        return getattr(source, name)
    except AttributeError as exc:
        raise AccessError(
            f"{wanted_by} needs `{name}` from its source, but {type(source).__name__} does not "
            f"give it ({exc})") from None


class _Oracle:
    """A read-only view of a target exposing only the methods in ``ALLOWED``.

    Python has no true privacy: this guards against *accidental* use of forbidden access (the
    point of the exercise), not against deliberate introspection of closures.
    """

    __slots__ = ("_methods",)
    ALLOWED: tuple = ()
    SCENARIO = ""

    def __init__(self, source, **methods):
        for name in self.ALLOWED:
            if name not in methods:
                methods[name] = _fetch(source, name, type(self).__name__)
        object.__setattr__(self, "_methods", {k: methods[k] for k in self.ALLOWED})

    def __getattr__(self, name):
        methods = object.__getattribute__(self, "_methods")
        if name in methods:
            return methods[name]
        raise AccessError(
            f"{type(self).__name__} oracle ({self.SCENARIO}) does not give `{name}`; "
            f"it gives only {', '.join(self.ALLOWED)}")

    def __setattr__(self, name, value):
        raise AccessError(f"{type(self).__name__} oracles are read-only")

    def __dir__(self):
        return list(self.ALLOWED)

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(self.ALLOWED)})"


class Full(_Oracle):
    """Scenario 1: p's normalised density (and its x-derivative) and samples."""

    ALLOWED = ("log_prob", "score", "sample")
    SCENARIO = "scenario 1: density and samples of p"


class SampleOnly(_Oracle):
    """Scenario 2: samples of p only (``sample(noise)``); no density, normalised or not."""

    ALLOWED = ("sample",)
    SCENARIO = "scenario 2: samples of p only"


class UnnormalisedDensity(_Oracle):
    """Scenario 3: log p~(x) = log p(x) + log Z with Z unknown, and its x-derivative; no samples.

    ``log_unnorm`` comes from the source's ``log_unnorm`` (or ``log_prob``) plus ``log_offset``,
    an arbitrary constant the estimators never see.  ``score`` = d/dx log p~ = d/dx log p: knowing
    p~ in closed form means we may differentiate it; the unknown constant drops out.
    """

    ALLOWED = ("log_unnorm", "score")
    SCENARIO = "scenario 3: unnormalised density of p, no samples"

    def __init__(self, source, log_offset: float = 0.0):
        try:
            base = getattr(source, "log_unnorm")
        except AttributeError:
            base = _fetch(source, "log_prob", "UnnormalisedDensity")
        off = float(log_offset)
        super().__init__(source, log_unnorm=(lambda x: base(x) + off) if off else base)


class Estimate(NamedTuple):
    """``value``: the estimate (shape = noise shape without its last axis);
    ``grads``: {"m": ..., "rho": ...} of the same shape; ``aux``: intermediate arrays."""

    value: object
    grads: dict
    aux: dict


def init_params(backend, m: float = 0.0, rho: float = 0.0) -> dict:
    """q's parameters as 0-d device arrays: {"m": m, "rho": rho}, sigma = exp(rho)."""
    return {"m": backend.asarray(m), "rho": backend.asarray(rho)}


def log_q(backend, params, x):
    """log N(x; m, exp(2 rho)) elementwise (eq. 1.4)."""
    xp = backend.xp
    m, rho = params["m"], params["rho"]
    u = (x - m) * xp.exp(-rho)
    return -0.5 * LOG2PI - rho - 0.5 * u * u


def log_q_grad(backend, params, x) -> dict:
    """Score of q in its parameters at fixed x, elementwise (eq. 1.5):
    d/dm log q = (x - m) / sigma^2,   d/drho log q = ((x - m) / sigma)^2 - 1."""
    xp = backend.xp
    m, rho = params["m"], params["rho"]
    u = (x - m) * xp.exp(-rho)
    return {"m": u * xp.exp(-rho), "rho": u * u - 1.0}


def _mean(xp, v):
    return xp.mean(v, axis=-1)


def _draw_q(backend, params, eps):
    """x = m + sigma eps with sigma = exp(rho), and log q(x) = -1/2 log 2pi - rho - eps^2/2."""
    m, rho = params["m"], params["rho"]
    sigma = backend.xp.exp(rho)
    return sigma, m + sigma * eps, -0.5 * LOG2PI - rho - 0.5 * eps * eps


def _reverse_reparam(backend, log_target, score_target, params, eps, stl=False) -> Estimate:
    """Shared body of the reparameterisation estimator of E_q[log q - log target] (eq. 1.7).

    x = m + sigma eps;  log q(x) = -1/2 log 2pi - rho - eps^2/2 (it does not depend on m);
    d/dm   = -mean(score(x)),
    d/drho = -1 - mean(score(x) * sigma * eps).
    ``stl`` ("sticking the landing", eq. 1.7b): differentiate log q(x) only through x,
    d/dm = mean(-eps/sigma - score(x)), d/drho = mean(-eps^2 - score(x) sigma eps); it drops the
    zero-mean terms eps/sigma and eps^2 - 1 (the score of q), so it is unbiased too, and its
    variance vanishes where q = target.
    """
    xp = backend.xp
    sigma, x, logq = _draw_q(backend, params, eps)                 # (..., n)
    f = logq - log_target(x)                                        # log q(x) - log target(x)
    g = score_target(x)                                             # d/dx log target
    if stl:
        grads = {"m": -_mean(xp, eps / sigma + g), "rho": -_mean(xp, eps * eps + g * sigma * eps)}
    else:
        grads = {"m": -_mean(xp, g), "rho": -1.0 - _mean(xp, g * sigma * eps)}
    return Estimate(_mean(xp, f), grads, {"x": x, "f": f})


# ---------------------------------------------------------------- scenario 1: Full access
def reverse_kl_full(backend, oracle, params, eps, stl: bool = False) -> Estimate:
    """Scenario 1, KL(q||p): value = mean(log q(x) - log p(x)), x = m + sigma eps, unbiased;
    gradient by reparameterisation (eq. 1.7) through p's normalised density.

    ``eps``: (..., n) standard normal noise; outputs have shape (...)."""
    p = Full(oracle)
    return _reverse_reparam(backend, p.log_prob, p.score, params, eps, stl)


def forward_kl_full(backend, oracle, params, p_noise) -> Estimate:
    """Scenario 1, KL(p||q): value = mean(log p(x) - log q(x)) over x ~ p, unbiased (eq. 1.6);
    gradient = that of :func:`forward_kl_mle` (log p does not depend on the params)."""
    p = Full(oracle)
    xp = backend.xp
    x = p.sample(p_noise)
    lq = log_q(backend, params, x)
    dq = log_q_grad(backend, params, x)
    grads = {k: -_mean(xp, v) for k, v in dq.items()}
    return Estimate(_mean(xp, p.log_prob(x) - lq), grads, {"x": x})


# ---------------------------------------------------------------- scenario 2: samples of p
def forward_kl_mle(backend, oracle, params, p_noise) -> Estimate:
    """Scenario 2, KL(p||q) up to the unknown constant -H(p): maximum likelihood (eq. 1.6).

    value = mean(-log q(x_i)) over x_i ~ p (the cross-entropy H(p, q) = KL(p||q) + H(p));
    d/dm   = -mean((x_i - m) / sigma^2),
    d/drho =  mean(1 - ((x_i - m) / sigma)^2).
    Sees p only through :class:`SampleOnly`, and receives no q noise, so it can neither evaluate
    p's density nor sample q.  Zero gradient at m = mean(x), sigma^2 = mean((x - m)^2)."""
    p = SampleOnly(oracle)
    xp = backend.xp
    x = p.sample(p_noise)
    dq = log_q_grad(backend, params, x)
    grads = {k: -_mean(xp, v) for k, v in dq.items()}
    return Estimate(-_mean(xp, log_q(backend, params, x)), grads, {"x": x})


# ---------------------------------------------------------------- scenario 3: unnormalised p
def reverse_kl_reparam(backend, oracle, params, eps, stl: bool = False) -> Estimate:
    """Scenario 3, KL(q||p) - log Z by reparameterisation (eq. 1.7).

    value = mean(log q(x) - log p~(x)), x = m + sigma eps: unbiased for KL(q||p) - log Z, and the
    unknown log Z does not depend on (m, rho), so the gradient is unbiased for grad KL(q||p).
    ``stl=True``: the sticking-the-landing variant (see :func:`_reverse_reparam`)."""
    p = UnnormalisedDensity(oracle)
    return _reverse_reparam(backend, p.log_unnorm, p.score, params, eps, stl)


BASELINES = ("loo", "none", "mean")


def reverse_kl_score(backend, oracle, params, eps, baseline: str = "loo") -> Estimate:
    """Scenario 3, grad KL(q||p) by the score-function (log-derivative) estimator (eq. 1.8).

    x_i = m + sigma eps_i are samples of q, held fixed (no path derivative);
    f_i = log q(x_i) - log p~(x_i);   grad = mean((f_i - b_i) * grad_phi log q(x_i)).

    ``baseline``:
      "loo"  (default) b_i = mean of the *other* f_j: independent of x_i, hence unbiased (eq. 1.9);
      "none" b_i = 0: unbiased, high variance (log Z alone adds log Z * grad log q noise);
      "mean" b_i = mean of all f_j incl. f_i: *biased*, E = (n-1)/n * grad (eq. 1.10); kept to
             show why leave-one-out.
    ``aux["coef"]`` = f - b and ``aux["x"]``: the estimate is the exact gradient of the surrogate
    mean(coef * log q(x; m, rho)) with coef and x frozen."""
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
    p = UnnormalisedDensity(oracle)
    xp = backend.xp
    n = eps.shape[-1]
    sigma, x, logq = _draw_q(backend, params, eps)
    f = logq - p.log_unnorm(x)
    if baseline == "loo":
        if n < 2:
            raise ValueError("the leave-one-out baseline needs at least 2 samples per estimate")
        total = xp.sum(f, axis=-1, keepdims=True)
        bl = (total - f) / (n - 1)
    elif baseline == "mean":
        bl = xp.mean(f, axis=-1, keepdims=True)
    else:
        bl = xp.zeros_like(f)
    coef = f - bl
    # score of q at the sample, in terms of eps: (x - m)/sigma^2 = eps/sigma, ((x-m)/sigma)^2 - 1
    grads = {"m": _mean(xp, coef * eps) / sigma, "rho": _mean(xp, coef * (eps * eps - 1.0))}
    return Estimate(_mean(xp, f), grads, {"x": x, "f": f, "coef": coef})


def forward_kl_snis(backend, oracle, params, eps) -> Estimate:
    """Scenario 3 (optional), KL(p||q) by self-normalised importance sampling from q (eq. 1.11).

    log w_i = log p~(x_i) - log q(x_i),  wbar = softmax(log w),  log Zhat = logsumexp(log w) - log n
    value = sum_i wbar_i log w_i - log Zhat      (estimates E_p[log p - log q])
    grads = -sum_i wbar_i grad_phi log q(x_i)    (estimates -E_p[grad log q]), x_i, wbar frozen.
    Consistent but biased for finite n (a ratio and a log of a mean); badly so when q misses a
    mode of p, which is exactly the regime of the reverse-KL minima."""
    p = UnnormalisedDensity(oracle)
    xp = backend.xp
    n = eps.shape[-1]
    sigma, x, logq = _draw_q(backend, params, eps)
    logw = p.log_unnorm(x) - logq
    lse = backend.logsumexp(logw, axis=-1, keepdims=True)
    wbar = xp.exp(logw - lse)
    log_Z_hat = xp.squeeze(lse, axis=-1) - math.log(n)
    value = xp.sum(wbar * logw, axis=-1) - log_Z_hat
    grads = {"m": -xp.sum(wbar * eps, axis=-1) / sigma,
             "rho": -xp.sum(wbar * (eps * eps - 1.0), axis=-1)}
    return Estimate(value, grads, {"x": x, "weights": wbar, "log_Z_hat": log_Z_hat})


# =============================================================================================
# Part 2 -- host side, exact: quadrature in log space, minima, critical points, fold
# =============================================================================================

QUAD_NODES = 4001
QUAD_HALF_WIDTH = 12.0


@functools.lru_cache(maxsize=4)
def _nodes(n: int = QUAD_NODES, half_width: float = QUAD_HALF_WIDTH):
    """Trapezoid nodes z and weights w with sum_k w_k f(z_k) ~ E_{z~N(0,1)}[f(z)].

    The integrands below are analytic in a strip, so the trapezoid rule converges geometrically;
    truncation at |z| = 12 costs < 1e-30 relative."""
    z = np.linspace(-half_width, half_width, n)
    h = z[1] - z[0]
    w = np.exp(-0.5 * z * z) / math.sqrt(2.0 * math.pi) * h
    w[0] *= 0.5
    w[-1] *= 0.5
    return z, w


def log_p_host(x, a, s):
    """log p(x) in NumPy float64, by log-sum-exp (accurate far in the tails)."""
    s2 = s * s
    return (np.logaddexp(-((x - a) ** 2) / (2 * s2), -((x + a) ** 2) / (2 * s2))
            - math.log(2.0 * math.sqrt(2.0 * math.pi) * s))


def _score_host(x, a, s):
    s2 = s * s
    return (a * np.tanh(a * x / s2) - x) / s2


def _dscore_host(x, a, s):
    """d^2/dx^2 log p = (-1 + (a/s)^2 sech^2(a x / s^2)) / s^2, sech^2 via exp(-2|y|)."""
    s2 = s * s
    e = np.exp(-2.0 * np.abs(a * x / s2))
    return (-1.0 + (a * a / s2) * 4.0 * e / (1.0 + e) ** 2) / s2


def _over_q(fun, m, rho, chunk: int = 32):
    """E_{x ~ N(m, e^{2 rho})}[fun(x, z, sigma)] for broadcast (m, rho); ``fun`` returns a tuple
    of (c, N) arrays, each reduced against the quadrature weights.  Returns a tuple of arrays."""
    z, w = _nodes()
    m, rho = np.broadcast_arrays(np.asarray(m, dtype=np.float64), np.asarray(rho, dtype=np.float64))
    shape = m.shape
    mf, rf = m.reshape(-1), rho.reshape(-1)
    outs = None
    for i in range(0, mf.size, chunk):
        sig = np.exp(rf[i:i + chunk])[:, None]
        x = mf[i:i + chunk, None] + sig * z[None, :]
        vals = fun(x, z[None, :], sig)
        if outs is None:
            outs = [np.empty(mf.size) for _ in vals]
        for o, v in zip(outs, vals):
            o[i:i + chunk] = v @ w
    return tuple(o.reshape(shape) for o in outs)


def exact_reverse_kl(m, rho, a, s):
    """KL(q||p) = -1/2 log(2 pi e) - rho - E_q[log p]  (eq. 1.12), by quadrature."""
    (elp,) = _over_q(lambda x, z, sig: (log_p_host(x, a, s),), m, rho)
    return -0.5 * (LOG2PI + 1.0) - np.asarray(rho, dtype=np.float64) - elp


def exact_reverse_kl_grad(m, rho, a, s):
    """(dR/dm, dR/drho) = (-E_q[g(x)], -1 - E_q[g(x) sigma z]), g = d/dx log p  (eq. 1.13)."""
    def fun(x, z, sig):
        g = _score_host(x, a, s)
        return g, g * sig * z
    eg, egz = _over_q(fun, m, rho)
    return -eg, -1.0 - egz


def exact_reverse_kl_hessian(m, rho, a, s):
    """Hessian of KL(q||p) in (m, rho), shape (..., 2, 2)  (eq. 1.14):
    R_mm = -E[g'],  R_mrho = -E[g' sigma z],  R_rhorho = -E[g' sigma^2 z^2 + g sigma z]."""
    return _reverse_derivs(m, rho, a, s)[1]


def _reverse_derivs(m, rho, a, s):
    """Gradient (..., 2) and Hessian (..., 2, 2) of KL(q||p) in one quadrature pass."""
    def fun(x, z, sig):
        g, gp = _score_host(x, a, s), _dscore_host(x, a, s)
        sz = sig * z
        gpsz = gp * sz
        return g, g * sz, gp, gpsz, gpsz * sz + g * sz
    eg, egz, h11, h12, h22 = _over_q(fun, m, rho)
    grad = np.stack([-eg, -1.0 - egz], -1)
    return grad, -np.stack([np.stack([h11, h12], -1), np.stack([h12, h22], -1)], -2)


@functools.lru_cache(maxsize=64)
def _p_moments(a: float, s: float):
    """(E_p[x], E_p[x^2], E_p[log p]) by quadrature over each component (p symmetric)."""
    z, w = _nodes()
    out = []
    for c in (-a, a):
        x = c + s * z
        out.append((x @ w, (x * x) @ w, log_p_host(x, a, s) @ w))
    return tuple(0.5 * (u + v) for u, v in zip(*out))


def mixture_entropy(a, s) -> float:
    """H(p) = -E_p[log p], by quadrature (no closed form)."""
    return -float(_p_moments(float(a), float(s))[2])


def exact_forward_kl(m, rho, a, s):
    """KL(p||q) = E_p[log p] + 1/2 log 2pi + rho + E_p[(x - m)^2] / (2 sigma^2)  (eq. 1.15);
    E_p[log p] and the moments of p by quadrature."""
    m = np.asarray(m, dtype=np.float64)
    rho = np.asarray(rho, dtype=np.float64)
    ex, ex2, elp = _p_moments(float(a), float(s))
    sq = ex2 - 2.0 * m * ex + m * m
    return elp + 0.5 * LOG2PI + rho + sq * np.exp(-2.0 * rho) / 2.0


def exact_forward_kl_grad(m, rho, a, s):
    """(dF/dm, dF/drho) = (-E_p[x - m] / sigma^2, 1 - E_p[(x - m)^2] / sigma^2)  (eq. 1.16)."""
    m = np.asarray(m, dtype=np.float64)
    rho = np.asarray(rho, dtype=np.float64)
    ex, ex2, _ = _p_moments(float(a), float(s))
    iv = np.exp(-2.0 * rho)
    return -(ex - m) * iv, 1.0 - (ex2 - 2.0 * m * ex + m * m) * iv


def exact_forward_kl_hessian(m, rho, a, s):
    """Hessian of KL(p||q): [[1, 2 E(x-m)], [2 E(x-m), 2 E(x-m)^2]] / sigma^2."""
    m = np.asarray(m, dtype=np.float64)
    rho = np.asarray(rho, dtype=np.float64)
    ex, ex2, _ = _p_moments(float(a), float(s))
    iv = np.exp(-2.0 * rho)
    h11 = iv * np.ones_like(m * rho)
    h12 = 2.0 * (ex - m) * iv
    h22 = 2.0 * (ex2 - 2.0 * m * ex + m * m) * iv
    return np.stack([np.stack([h11, h12], -1), np.stack([h12, h22], -1)], -2)


def forward_kl_minimiser(a, s):
    """Closed form (eq. 1.17): m* = E_p[x] = 0, sigma*^2 = Var_p[x] = s^2 + a^2."""
    return 0.0, 0.5 * math.log(s * s + a * a)


_EXACT = {
    "reverse": (exact_reverse_kl, exact_reverse_kl_grad, exact_reverse_kl_hessian),
    "forward": (exact_forward_kl, exact_forward_kl_grad, exact_forward_kl_hessian),
}


def _kind(kind):
    if kind not in _EXACT:
        raise ValueError(f"kind must be 'reverse' (KL(q||p)) or 'forward' (KL(p||q)), got {kind!r}")
    return _EXACT[kind]


def default_starts(a, s, n_m: int = 7, n_rho: int = 4):
    """A grid of (m, rho) starts covering both modes, narrow to wide q."""
    ms = np.linspace(-1.5 * a - s, 1.5 * a + s, n_m)
    rhos = math.log(s) + np.linspace(-1.0, math.log(1.0 + 2.0 * a / s) + 0.5, n_rho)
    return [(float(m), float(r)) for m in ms for r in rhos]


def _newton_polish(kind, v, a, s, iters: int = 20):
    _, grad, hess = _kind(kind)
    v = np.array(v, dtype=np.float64)
    for _ in range(iters):
        g = np.array(grad(v[0], v[1], a, s), dtype=np.float64)
        if np.max(np.abs(g)) < 1e-13:
            break
        step = np.linalg.solve(hess(v[0], v[1], a, s), g)
        if not np.all(np.isfinite(step)) or np.linalg.norm(step) > 1e-2 * (s + abs(a)):
            break
        v = v - step
    return v


def _dedupe(points, scale, tol=1e-6):
    out = []
    for p in points:
        if all(abs(p["m"] - q["m"]) > tol * scale or abs(p["rho"] - q["rho"]) > tol for q in out):
            out.append(p)
    return sorted(out, key=lambda d: d["m"])


def minimise_from(kind, starts, a, s, *, iters: int = 300, tol: float = 1e-11):
    """Modified-Newton descent on the exact KL from many starts at once (vectorised).

    Direction d = -(H + shift I)^{-1} g with the shift making H + shift I positive definite
    (so d always descends and saddles repel), step capped at 0.5 in (m/s, rho) units, Armijo
    backtracking; close to a minimum (small gradient, positive-definite Hessian) full Newton
    steps, since there f no longer changes above its rounding.  Returns the end points (S, 2)
    and a converged flag (S,): scaled gradient |(s R_m, R_rho)| below ``tol``."""
    val, grad, hess = _kind(kind)
    v = np.array(starts, dtype=np.float64).reshape(-1, 2)
    active = np.ones(len(v), dtype=bool)
    conv = np.zeros(len(v), dtype=bool)
    lo, hi = math.log(s) - 6.0, math.log(s + abs(a)) + 6.0
    for _ in range(iters):
        idx = np.nonzero(active)[0]
        if idx.size == 0:
            break
        m, r = v[idx, 0], v[idx, 1]
        f = np.asarray(val(m, r, a, s))
        g = np.stack(grad(m, r, a, s), -1)
        H = np.asarray(hess(m, r, a, s))
        done = np.max(np.abs(g) * np.array([s, 1.0]), axis=1) < tol
        conv[idx[done]] = True
        active[idx[done]] = False
        lam_min = np.linalg.eigvalsh(H)[:, 0]
        scale = np.maximum(np.abs(H[:, 0, 0]) + np.abs(H[:, 1, 1]), 1e-12)
        shift = np.where(lam_min < 1e-6 * scale, 1e-6 * scale - lam_min + 1e-3 * scale, 0.0)
        Hs = H + shift[:, None, None] * np.eye(2)
        d = -np.linalg.solve(Hs, g[..., None])[..., 0]
        length = np.hypot(d[:, 0] / s, d[:, 1])
        d *= np.minimum(1.0, 0.5 / np.maximum(length, 1e-300))[:, None]
        slope = np.sum(g * d, axis=1)
        t = np.ones(idx.size)
        near = ~done & (shift == 0.0) & (np.max(np.abs(g) * np.array([s, 1.0]), axis=1) < 1e-6)
        v[idx[near]] += d[near]
        pending = ~done & ~near
        for _ in range(40):
            if not pending.any():
                break
            cand = v[idx[pending]] + t[pending, None] * d[pending]
            cand[:, 1] = np.clip(cand[:, 1], lo, hi)
            fc = np.asarray(val(cand[:, 0], cand[:, 1], a, s))
            accept = fc <= f[pending] + 1e-4 * t[pending] * slope[pending]
            sel = np.nonzero(pending)[0]
            v[idx[sel[accept]]] = cand[accept]
            pending[sel[accept]] = False
            t[sel[~accept]] *= 0.5
        if pending.any():  # no decrease possible at float precision: stationary to rounding
            sel = np.nonzero(pending)[0]
            conv[idx[sel]] = np.max(np.abs(g[sel]) * np.array([s, 1.0]), axis=1) < 1e-8
            active[idx[sel]] = False
    return v, conv


def locate_minima(kind, a, s, starts=None):
    """Local minima of the exact KL (``kind`` "reverse" = KL(q||p), "forward" = KL(p||q)) from
    several starts: :func:`minimise_from`, dedupe, and keep only points with a positive-definite
    Hessian.  Returns dicts {m, rho, var, kl, global} sorted by m."""
    val, grad, hess = _kind(kind)
    v, conv = minimise_from(kind, default_starts(a, s) if starts is None else starts, a, s)
    found = []
    for (m, r), ok in zip(v, conv):
        if not ok or np.min(np.linalg.eigvalsh(hess(m, r, a, s))) <= 0:
            continue
        found.append({"m": float(m), "rho": float(r), "var": float(np.exp(2 * r)),
                      "kl": float(val(m, r, a, s))})
    out = _dedupe(found, s + abs(a))
    best = min(p["kl"] for p in out)
    for p in out:
        p["global"] = bool(p["kl"] <= best + 1e-9)
    return out


def reverse_critical_points(a, s, n_m: int = 7, n_rho: int = 6, iters: int = 100):
    """All critical points of KL(q||p) (minima and saddles) by damped Newton on the gradient from
    a grid of starts with m >= 0 (mirrored: KL(q||p) is even in m), vectorised over starts.
    Returns dicts {m, rho, var, kl, type} with type "min", "saddle" or "max"."""
    ms = np.linspace(0.0, 1.6 * a + s, n_m)
    rhos = math.log(s) + np.linspace(-0.7, math.log(1.0 + 2.0 * a / s) + 0.7, n_rho)
    M, P = np.meshgrid(ms, rhos, indexing="ij")
    v = np.stack([M.ravel(), P.ravel()], -1)
    cap = 0.25
    active = np.ones(len(v), dtype=bool)
    ok = np.zeros(len(v), dtype=bool)
    for _ in range(iters):
        idx = np.nonzero(active)[0]
        if idx.size == 0:
            break
        g, H = _reverse_derivs(v[idx, 0], v[idx, 1], a, s)
        done = np.max(np.abs(g), axis=1) < 1e-12
        ok[idx[done]] = True
        active[idx[done]] = False
        det = H[:, 0, 0] * H[:, 1, 1] - H[:, 0, 1] ** 2
        det = np.where(np.abs(det) < 1e-300, 1e-300, det)
        step = np.stack([(H[:, 1, 1] * g[:, 0] - H[:, 0, 1] * g[:, 1]) / det,
                         (H[:, 0, 0] * g[:, 1] - H[:, 0, 1] * g[:, 0]) / det], -1)
        scaled = np.sqrt((step[:, 0] / s) ** 2 + step[:, 1] ** 2)
        step *= np.minimum(1.0, cap / np.maximum(scaled, 1e-300))[:, None]
        step[done] = 0.0
        v[idx] = v[idx] - step
        v[idx, 1] = np.clip(v[idx, 1], math.log(s) - 5.0, math.log(s + a) + 5.0)
    if active.any():  # stragglers: accept if converged to a looser tolerance
        idx = np.nonzero(active)[0]
        g = _reverse_derivs(v[idx, 0], v[idx, 1], a, s)[0]
        ok[idx] = np.max(np.abs(g), axis=1) < 1e-9
    pts = []
    for mm, rr in v[ok]:
        for sgn in (1.0, -1.0):
            mi = sgn * mm if abs(mm) > 1e-7 * (s + a) else 0.0
            ev = np.linalg.eigvalsh(exact_reverse_kl_hessian(mi, rr, a, s))
            typ = "min" if ev[0] > 0 else ("max" if ev[1] < 0 else "saddle")
            pts.append({"m": float(mi), "rho": float(rr), "var": float(np.exp(2 * rr)),
                        "kl": float(exact_reverse_kl(mi, rr, a, s)), "type": typ})
    return _dedupe(pts, s + a)


def centre_rho(a, s):
    """argmin over rho of KL(q||p) on the symmetry line m = 0 (root of dR/drho, eq. 1.18)."""
    from scipy.optimize import minimize_scalar

    res = minimize_scalar(lambda r: float(exact_reverse_kl(0.0, r, a, s)),
                          bounds=(math.log(s) - 4.0, math.log(s + a) + 3.0), method="bounded",
                          options={"xatol": 1e-12})
    return float(_newton_polish("reverse", (0.0, res.x), a, s)[1])


def fold_separation():
    """The separation a/s below which the two off-centre minima of KL(q||p) do not exist.

    They are born in a fold (saddle-node) with the two saddles, away from m = 0: solve
    grad R = 0 and det Hess R = 0 for (m, rho, a) with s = 1 (eq. 1.20), seeded from the
    off-centre minimum and saddle at a/s = 3.  Returns {"ratio", "m_over_s", "sigma_over_s"}."""
    from scipy.optimize import fsolve

    def fold_eqs(v):
        m, rho, a = v
        g = exact_reverse_kl_grad(m, rho, a, 1.0)
        return [float(g[0]), float(g[1]), float(np.linalg.det(exact_reverse_kl_hessian(m, rho, a, 1.0)))]

    r0 = 3.0
    pts = reverse_critical_points(r0, 1.0)
    mins = [p for p in pts if p["type"] == "min" and p["m"] > 0.1]
    sads = [p for p in pts if p["type"] == "saddle" and p["m"] > 0.1]
    if not (mins and sads):
        raise RuntimeError("no off-centre minimum/saddle at a/s = 3 to seed the fold search")
    v0 = [0.5 * (mins[0]["m"] + sads[0]["m"]), 0.5 * (mins[0]["rho"] + sads[0]["rho"]), r0]
    sol, info, ier, msg = fsolve(fold_eqs, v0, xtol=1e-13, full_output=True)
    if ier != 1 or max(abs(np.asarray(info["fvec"]))) > 1e-9:
        raise RuntimeError(f"fold search did not converge: {msg}")
    return {"ratio": float(sol[2]), "m_over_s": float(sol[0]), "sigma_over_s": float(np.exp(sol[1]))}


def _offcentre_minus_centre(r):
    """KL at the off-centre minimum minus KL at the central minimum, s = 1."""
    mins = locate_minima("reverse", r, 1.0, starts=[(r, 0.0), (0.0, centre_rho(r, 1.0))])
    off = [p for p in mins if p["m"] > 1e-6]
    cen = [p for p in mins if abs(p["m"]) <= 1e-6]
    if not (off and cen):
        raise RuntimeError(f"expected a central and an off-centre minimum at a/s = {r}")
    return off[0]["kl"] - cen[0]["kl"]


def global_switch_separation(lo: float, hi: float = 4.0):
    """The a/s above which the off-centre minima, not the central one, are global (eq. 1.21)."""
    from scipy.optimize import brentq

    return float(brentq(_offcentre_minus_centre, lo, hi, xtol=1e-10))


def descent_path(kind, start, a, s, *, steps: int = 400, max_step: float = 0.15, tol: float = 1e-8):
    """Gradient descent on the exact KL with Armijo backtracking (step length at most
    ``max_step`` in (m/s, rho) units).  Returns an array (k, 2) of (m, rho)."""
    val, grad, _ = _kind(kind)
    v = np.array(start, dtype=np.float64)
    path = [v.copy()]
    f = float(val(v[0], v[1], a, s))
    for _ in range(steps):
        g = np.array(grad(v[0], v[1], a, s), dtype=np.float64)
        disp = math.hypot(g[0] / s, g[1])  # length of a unit-t step in (m/s, rho) units
        if disp < tol:
            break
        t = min(1.0, max_step / disp)
        while True:
            cand = v - t * g
            fc = float(val(cand[0], cand[1], a, s))
            if fc <= f - 0.5 * t * float(g @ g) or t < 1e-12:
                break
            t *= 0.5
        v, f = cand, fc
        path.append(v.copy())
    return np.array(path)


# =============================================================================================
# Part 3 -- the experiment: estimator checks and variance table, SGD fits, figures, metrics
# =============================================================================================


def _summ(backend, arr):
    a = backend.to_numpy(arr).astype(np.float64).reshape(-1)
    return float(a.mean()), float(a.std(ddof=1)), float(a.var(ddof=1))


def variance_table(backend, a, s, points, *, n: int = 16, reps: int = 2000, key=("kl", "var")):
    """Gradient estimators of KL(q||p) at each (label, m, rho): mean, standard error and
    variance over ``reps`` independent estimates, each from ``n`` samples, against the exact
    (quadrature) gradient.  Rows are JSON-able dicts."""
    target = TwoModeMixture(backend, a, s)
    oracle = UnnormalisedDensity(target)
    rows = []
    for i, (label, m, rho) in enumerate(points):
        params = init_params(backend, m, rho)
        eps = draw_q_noise(backend, backend.rng(*key, i), (reps, n))
        ex_m, ex_r = (float(v) for v in exact_reverse_kl_grad(m, rho, a, s))
        ests = {
            "reparam": reverse_kl_reparam(backend, oracle, params, eps),
            "reparam (STL)": reverse_kl_reparam(backend, oracle, params, eps, stl=True),
            "score+loo": reverse_kl_score(backend, oracle, params, eps, baseline="loo"),
            "score (no baseline)": reverse_kl_score(backend, oracle, params, eps, baseline="none"),
        }
        for name, est in ests.items():
            mm, sm, vm = _summ(backend, est.grads["m"])
            mr, sr, vr = _summ(backend, est.grads["rho"])
            rows.append({"point": label, "m": m, "rho": rho, "estimator": name, "n": n,
                         "reps": reps, "exact_dm": ex_m, "exact_drho": ex_r,
                         "mean_dm": mm, "se_dm": sm / math.sqrt(reps), "var_dm": vm,
                         "mean_drho": mr, "se_drho": sr / math.sqrt(reps), "var_drho": vr})
    return rows


def snis_table(backend, a, s, points, ns=(4, 16, 64, 256), *, reps: int = 400, key=("kl", "snis")):
    """Self-normalised IS estimates of KL(p||q) (scenario 3) at each (label, m, rho) and sample
    size n: mean and standard error over ``reps`` estimates vs the exact value."""
    target = TwoModeMixture(backend, a, s)
    oracle = UnnormalisedDensity(target)
    rows = []
    for i, (label, m, rho) in enumerate(points):
        params = init_params(backend, m, rho)
        exact = float(exact_forward_kl(m, rho, a, s))
        for j, n in enumerate(ns):
            eps = draw_q_noise(backend, backend.rng(*key, i, j), (reps, n))
            mean, sd, _ = _summ(backend, forward_kl_snis(backend, oracle, params, eps).value)
            rows.append({"point": label, "m": m, "rho": rho, "n": int(n), "reps": reps,
                         "exact": exact, "mean": mean, "se": sd / math.sqrt(reps),
                         "bias": mean - exact})
    return rows


def sgd_fit(backend, estimator, oracle, start, *, steps: int, n: int, lr: float = 0.05,
            key=("kl", "sgd"), noise: str = "q"):
    """Adam (``scratchvae.optim``) on one estimator's gradients, fresh noise every step, the
    learning rate decayed geometrically from ``lr`` to ``lr / 50`` so the last iterate settles.
    ``noise``: "q" draws eps for q, "p" draws p's sampler noise.  Returns the (steps+1, 2) path
    of (m, rho) on the host (one transfer at the end)."""
    from scratchvae.optim import Adam

    xp = backend.xp
    params = init_params(backend, *start)
    opt = Adam(backend, params, lr=lr, b2=0.9)  # short memory: early gradients are huge
    hist = [xp.stack([params["m"], params["rho"]])]
    for t in range(steps):
        rng = backend.rng(*key, t)
        nz = draw_q_noise(backend, rng, (n,)) if noise == "q" else draw_p_noise(backend, rng, (n,))
        est = estimator(backend, oracle, params, nz)
        opt.step(params, est.grads, lr=lr * 0.02 ** (t / max(1, steps - 1)))
        hist.append(xp.stack([params["m"], params["rho"]]))
    return backend.to_numpy(xp.stack(hist)).astype(np.float64)


def _variance_markdown(rows):
    r0 = rows[0]
    head = (f"Gradient estimators of KL(q‖p): each estimate from n = {r0['n']} samples, "
            f"statistics over {r0['reps']} independent estimates.\n\n"
            "| point (m, rho) | estimator | exact dR/dm | mean dm ± se | var dm | exact dR/drho | "
            "mean drho ± se | var drho |\n|---|---|---|---|---|---|---|---|\n")
    lines = [f"| {r['point']} ({r['m']:.4g}, {r['rho']:.4g}) | {r['estimator']} | "
             f"{r['exact_dm']:.4g} | {r['mean_dm']:.4g} ± {r['se_dm']:.2g} | {r['var_dm']:.3g} | "
             f"{r['exact_drho']:.4g} | {r['mean_drho']:.4g} ± {r['se_drho']:.2g} | "
             f"{r['var_drho']:.3g} |" for r in rows]
    return head + "\n".join(lines) + "\n"


def _snis_markdown(rows):
    head = (f"Self-normalised importance sampling of KL(p‖q) from q: statistics over "
            f"{rows[0]['reps']} independent estimates per sample size n.\n\n"
            "| point (m, rho) | n | exact KL(p‖q) | SNIS mean ± se | bias |\n"
            "|---|---|---|---|---|\n")
    lines = [f"| {r['point']} ({r['m']:.4g}, {r['rho']:.4g}) | {r['n']} | {r['exact']:.4f} | "
             f"{r['mean']:.4f} ± {r['se']:.2g} | {r['bias']:+.4f} |" for r in rows]
    return head + "\n".join(lines) + "\n"


def _fmt(v, d=4):
    s = f"{v:.{d}f}"
    return s[1:] if s.startswith("-") and float(s) == 0.0 else s


def _mpl():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_contours(path, a, s, minima_rev, saddles_rev, minima_fwd, gd_paths, sgd_paths, grid=120):
    """Two panels: log10 KL(q||p) and log10 KL(p||q) over (m, rho), with exact-gradient descent
    paths (white), stochastic (Adam on an estimator) paths (dashed), minima and saddles."""
    plt = _mpl()
    ms = np.linspace(-1.7 * a - s, 1.7 * a + s, grid)
    rhos = np.linspace(math.log(s) - 1.3, math.log(math.sqrt(s * s + a * a)) + 0.9, grid)
    M, P = np.meshgrid(ms, rhos)
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 5.6), constrained_layout=True)
    panels = [("reverse", "reverse KL(q‖p): mode-seeking", exact_reverse_kl(M, P, a, s), minima_rev,
               saddles_rev),
              ("forward", "forward KL(p‖q): mode-covering", exact_forward_kl(M, P, a, s), minima_fwd,
               [])]
    for ax, (kind, title, Z, mins, sads) in zip(axes, panels):
        cs = ax.contourf(M, P, np.log10(Z), levels=30, cmap="viridis")
        ax.contour(M, P, np.log10(Z), levels=15, colors="k", linewidths=0.4, alpha=0.5)
        fig.colorbar(cs, ax=ax, label="log10 KL")
        for k, pth in enumerate(gd_paths[kind]):
            ax.plot(pth[:, 0], pth[:, 1], "-", color="white", lw=1.3,
                    label="gradient descent (exact KL)" if k == 0 else None)
            ax.plot(pth[0, 0], pth[0, 1], "o", color="white", ms=4)
        for lab, (pth, col) in sgd_paths.get(kind, {}).items():
            ax.plot(pth[:, 0], pth[:, 1], "--", color=col, lw=1.4, label=lab)
        for k, p in enumerate(mins):
            glob = p.get("global", True)
            ax.plot(p["m"], p["rho"], "*", ms=16, mec="k",
                    mfc="red" if glob else "none", mew=1.2,
                    label=("global minimum" if glob else "local minimum") if
                    (glob and not any(q.get("global", True) for q in mins[:k])) or
                    (not glob and all(q.get("global", True) for q in mins[:k])) else None)
        for k, p in enumerate(sads):
            ax.plot(p["m"], p["rho"], "X", ms=10, mfc="orange", mec="k",
                    label="saddle" if k == 0 else None)
        for c in (-a, a):
            ax.axvline(c, color="w", ls=":", lw=0.8)
        ax.set_xlim(ms[0], ms[-1])
        ax.set_ylim(rhos[0], rhos[-1])
        ax.set_xlabel("m (mean of q); dotted: modes ±a of p")
        ax.set_ylabel("ρ = log σ (q's log std)")
        ax.set_title(f"{title}\np = ½N(−{a:g}, {s:g}²) + ½N({a:g}, {s:g}²)")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, fontsize=7.5,
                  facecolor="0.7", framealpha=1.0)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def plot_fits(path, a, s, minima_rev, minima_fwd):
    """p's density with the q at each located minimum of both KLs."""
    plt = _mpl()
    x = np.linspace(-a - 5 * s, a + 5 * s, 800)
    fig, ax = plt.subplots(figsize=(7.5, 4.2), constrained_layout=True)
    ax.fill_between(x, np.exp(log_p_host(x, a, s)), color="0.8", label="target p")

    def qpdf(m, rho):
        sg = math.exp(rho)
        return np.exp(-0.5 * ((x - m) / sg) ** 2) / (sg * math.sqrt(2 * math.pi))

    for p in minima_fwd:
        ax.plot(x, qpdf(p["m"], p["rho"]), "b-", lw=2,
                label=f"argmin KL(p‖q): m={_fmt(p['m'])}, σ²={_fmt(p['var'])}")
    for p in minima_rev:
        style = "-" if p["global"] else "--"
        col = "red" if p["global"] else "darkorange"
        kind = "global" if p["global"] else "local"
        ax.plot(x, qpdf(p["m"], p["rho"]), ls=style, color=col, lw=1.6,
                label=f"KL(q‖p) {kind} min: m={_fmt(p['m'])}, σ²={_fmt(p['var'])}, "
                      f"KL={_fmt(p['kl'])}")
    ax.set_xlabel("x")
    ax.set_ylabel("density")
    ax.set_title("forward KL covers both modes; reverse KL's global minima sit on one mode")
    ax.legend(fontsize=7.5, loc="upper left")
    fig.savefig(path, dpi=90)
    plt.close(fig)


def plot_separation(path, sweep, fold, switch):
    """Critical points of KL(q||p) vs separation a/s (s = 1): m, sigma and KL value."""
    plt = _mpl()
    fig, axes = plt.subplots(1, 3, figsize=(14.0, 5.0), layout="constrained")
    styles = {"gmin": dict(marker="o", ls="", color="red", ms=4, label="global minimum"),
              "lmin": dict(marker="o", ls="", mfc="none", color="darkorange", ms=5,
                           label="local (non-global) minimum"),
              "saddle": dict(marker="x", ls="", color="k", ms=4, label="saddle")}
    r_all = np.array([row["ratio"] for row in sweep])
    for key, st in styles.items():
        pts = [(row["ratio"], p) for row in sweep for p in row["points"]
               if (p["type"] == "saddle" if key == "saddle"
                   else p["type"] == "min" and p["global"] == (key == "gmin"))]
        if not pts:
            continue
        r = np.array([q[0] for q in pts])
        axes[0].plot(r, [q[1]["m"] for q in pts], **st)
        axes[1].plot(r, [math.exp(q[1]["rho"]) for q in pts], **st)
        axes[2].plot(r, [q[1]["kl"] for q in pts], **st)
    rr = np.linspace(r_all.min(), r_all.max(), 200)
    axes[0].plot(rr, rr, ":", color="gray", lw=1, label="modes ±a/s")
    axes[0].plot(rr, -rr, ":", color="gray", lw=1)
    axes[1].plot(rr, np.sqrt(1 + rr ** 2), "b-", lw=1, label="forward-KL σ = √(s²+a²)")
    axes[1].axhline(1.0, color="gray", ls=":", lw=1, label="σ = s")
    axes[2].axhline(math.log(2), color="gray", ls=":", lw=1, label="log 2")
    axes[0].plot([fold["ratio"]] * 2, [fold["m_over_s"], -fold["m_over_s"]], "D", color="purple",
                 ms=6, label="fold point (min meets saddle)")
    axes[1].plot([fold["ratio"]], [fold["sigma_over_s"]], "D", color="purple", ms=6)
    for ax in axes:
        ax.axvline(fold["ratio"], color="purple", lw=1,
                   label=f"fold a/s = {fold['ratio']:.4f}: off-centre minima born")
        ax.axvline(switch, color="green", lw=1, ls="--",
                   label=f"a/s = {switch:.4f}: off-centre minima become global")
        ax.set_xlabel("separation a/s")
    axes[0].set_ylabel("m / s of the critical point")
    axes[1].set_ylabel("σ / s of the critical point")
    axes[2].set_ylabel("KL(q‖p) at the critical point")
    axes[0].set_title("location (mean)")
    axes[1].set_title("width")
    axes[2].set_title("value")
    handles, labels = {}, []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    fig.legend([handles[k] for k in labels], labels, loc="outside lower center", ncol=4, fontsize=8)
    fig.suptitle("Critical points of reverse KL(q‖p), q Gaussian, p = ½N(−a, s²) + ½N(a, s²)")
    fig.savefig(path, dpi=85)
    plt.close(fig)


def separation_sweep(ratios):
    """Critical points of KL(q||p) at each a/s (s = 1), with global minima flagged."""
    sweep = []
    for r in ratios:
        pts = reverse_critical_points(float(r), 1.0)
        best = min(p["kl"] for p in pts if p["type"] == "min")
        for p in pts:
            p["global"] = bool(p["type"] == "min" and p["kl"] <= best + 1e-9)
        sweep.append({"ratio": float(r), "points": pts,
                      "n_minima": sum(p["type"] == "min" for p in pts)})
    return sweep


def run_experiment(backend, out_dir, *, a: float = 2.0, s: float = 0.5, seed: int = 0,
                   n_samples: int = 32, steps: int = 600, quick: bool = False) -> dict:
    """Seed section 1.2 end to end.  Writes into ``out_dir``:

    kl_contours.png, kl_fits.png, kl_minima_vs_separation.png, kl_variance.md/.json,
    kl_snis.md, kl_metrics.json; returns the flat metrics dict (JSON-able)."""
    os.makedirs(out_dir, exist_ok=True)
    key = ("kl", int(seed))
    # -- exact minima and critical points
    mins_fwd = locate_minima("forward", a, s)
    crit = reverse_critical_points(a, s)
    mins_rev = locate_minima("reverse", a, s)
    saddles = [p for p in crit if p["type"] == "saddle"]
    rho0 = centre_rho(a, s)
    h0 = exact_reverse_kl_hessian(0.0, rho0, a, s)
    fold = fold_separation()
    switch = global_switch_separation(fold["ratio"] + 0.05)
    # -- descent paths on the exact KLs
    starts = [(-1.2 * a, math.log(s) - 0.8), (1.5 * a, math.log(s) + 0.6),
              (0.2 * a, math.log(s) - 1.0), (0.4 * a, math.log(math.sqrt(s * s + a * a)) + 0.8),
              (-1.6 * a, math.log(math.sqrt(s * s + a * a)) + 0.7), (0.6 * a, math.log(s) + 1.0)]
    gd = {k: [descent_path(k, st, a, s, steps=120 if quick else 400) for st in starts]
          for k in ("reverse", "forward")}
    # -- stochastic fits with the scenario estimators (Adam, fresh noise each step)
    n_steps = steps  # cheap (~0.1 s per fit): the same in quick mode
    target = TwoModeMixture(backend, a, s)
    starts_sgd = {"mle": (-1.4 * a, math.log(s) - 0.5), "reparam": (0.3 * a, math.log(s) - 0.3),
                  "score": (-0.6 * a, math.log(s) + 0.3)}
    fit_mle = sgd_fit(backend, forward_kl_mle, SampleOnly(target), starts_sgd["mle"],
                      steps=n_steps, n=n_samples, key=key + ("mle",), noise="p")
    fit_rep = sgd_fit(backend, reverse_kl_reparam, UnnormalisedDensity(target),
                      starts_sgd["reparam"], steps=n_steps, n=n_samples, key=key + ("reparam",))
    fit_sf = sgd_fit(backend, reverse_kl_score, UnnormalisedDensity(target), starts_sgd["score"],
                     steps=n_steps, n=n_samples, key=key + ("score",))
    sgd_paths = {"forward": {"Adam on forward_kl_mle (scenario 2)": (fit_mle, "cyan")},
                 "reverse": {"Adam on reverse_kl_reparam (scenario 3)": (fit_rep, "magenta"),
                             "Adam on reverse_kl_score, LOO (scenario 3)": (fit_sf, "cyan")}}
    # -- estimator variance and SNIS tables
    g = next(p for p in mins_rev if p["global"] and p["m"] > 0)
    points = [("reverse-KL min", round(g["m"], 4), round(g["rho"], 4)),
              ("centre, rho*(0)", 0.0, round(rho0, 4)),
              ("between", round(0.5 * a, 4), round(math.log(s), 4)),
              ("far, wide", round(-1.5 * a, 4), round(math.log(s) + 0.7, 4))]
    vt = variance_table(backend, a, s, points, n=n_samples, reps=300 if quick else 4000,
                        key=key + ("var",))
    fwd_m, fwd_rho = forward_kl_minimiser(a, s)
    snis_points = [("forward-KL min", 0.0, round(fwd_rho, 4)),
                   ("reverse-KL min", round(g["m"], 4), round(g["rho"], 4))]
    st = snis_table(backend, a, s, snis_points, ns=(4, 64) if quick else (4, 16, 64, 256, 1024),
                    reps=100 if quick else 400, key=key + ("snis",))
    sweep = separation_sweep(np.linspace(0.5, 4.5, 9 if quick else 33))
    # -- figures
    figs = {"contours": os.path.join(out_dir, "kl_contours.png"),
            "fits": os.path.join(out_dir, "kl_fits.png"),
            "separation": os.path.join(out_dir, "kl_minima_vs_separation.png")}
    plot_contours(figs["contours"], a, s, mins_rev, saddles, mins_fwd, gd, sgd_paths,
                  grid=50 if quick else 120)
    plot_fits(figs["fits"], a, s, mins_rev, mins_fwd)
    plot_separation(figs["separation"], sweep, fold, switch)
    with open(os.path.join(out_dir, "kl_variance.md"), "w") as fh:
        fh.write(_variance_markdown(vt))
    with open(os.path.join(out_dir, "kl_variance.json"), "w") as fh:
        json.dump(vt, fh, indent=1)
    with open(os.path.join(out_dir, "kl_snis.md"), "w") as fh:
        fh.write(_snis_markdown(st))
    # -- metrics
    fm = mins_fwd[0]
    metrics = {
        "a": a, "s": s, "separation": a / s, "quick": bool(quick),
        "forward_n_minima": len(mins_fwd),
        "forward_min_m": fm["m"], "forward_min_rho": fm["rho"], "forward_min_var": fm["var"],
        "forward_min_kl": fm["kl"], "forward_min_var_closed_form": s * s + a * a,
        "reverse_n_minima": len(mins_rev),
        "reverse_minima": [[p["m"], p["rho"], p["var"], p["kl"], p["global"]] for p in mins_rev],
        "reverse_global_m": sorted(p["m"] for p in mins_rev if p["global"]),
        "reverse_global_var": max(p["var"] for p in mins_rev if p["global"]),
        "reverse_global_kl": min(p["kl"] for p in mins_rev),
        "reverse_saddles": [[p["m"], p["rho"], p["kl"]] for p in saddles],
        "reverse_kl_at_forward_min": float(exact_reverse_kl(fm["m"], fm["rho"], a, s)),
        "forward_kl_at_reverse_min": float(exact_forward_kl(g["m"], g["rho"], a, s)),
        "centre_rho": rho0, "centre_var": math.exp(2 * rho0),
        "centre_kl": float(exact_reverse_kl(0.0, rho0, a, s)),
        "centre_hessian_mm": float(h0[0, 0]), "centre_inv_var": math.exp(-2 * rho0),
        "merge_separation": fold["ratio"], "fold_m_over_s": fold["m_over_s"],
        "fold_sigma_over_s": fold["sigma_over_s"], "global_switch_separation": switch,
        "sweep_n_minima": [[row["ratio"], row["n_minima"]] for row in sweep],
        "sgd_steps": n_steps, "sgd_n_samples": n_samples,
        "sgd_mle_final_m": float(fit_mle[-1, 0]),
        "sgd_mle_final_var": float(np.exp(2 * fit_mle[-1, 1])),
        "sgd_reparam_final_m": float(fit_rep[-1, 0]),
        "sgd_reparam_final_var": float(np.exp(2 * fit_rep[-1, 1])),
        "sgd_score_final_m": float(fit_sf[-1, 0]),
        "sgd_score_final_var": float(np.exp(2 * fit_sf[-1, 1])),
        "variance_table": vt, "snis_table": st,
        "figures": sorted(figs.values()),
    }
    with open(os.path.join(out_dir, "kl_metrics.json"), "w") as fh:
        json.dump(metrics, fh, indent=1)
    return metrics
