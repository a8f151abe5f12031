"""The assignment's section 1, device side: the target, the access oracles, and the Monte Carlo estimators.

Derivation: ``derivations/01-kl-direction.md`` (the equation tags (K.n) below are its).

The setting of the assignment's section 1.2, used throughout:

* target   p(x) = 1/2 N(x; -a, s^2) + 1/2 N(x; a, s^2)           (a symmetric two-mode mixture)
* approx.  q(x) = N(x; m, sigma^2),  sigma = exp(rho),  learnable params {"m", "rho"}

Array API only: every function receives the :class:`~scratchvae.backend.Backend` ``b`` and uses
``b.xp``.  The target :class:`TwoModeMixture`, the *access oracles* that enforce what each
scenario of the assignment's section 1.1 may touch, and the Monte Carlo estimators with their hand-written
gradients.  Noise is an argument, so every estimator is a deterministic function of
``(params, noise)`` and can be checked by finite differences.

====================  ===========================  =======================================
scenario (§1.1)       oracle the estimator sees     estimators
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
"""
from __future__ import annotations

import math
from typing import NamedTuple

LOG2PI = math.log(2.0 * math.pi)


class TwoModeMixture:
    """p(x) = 1/2 N(x; -a, s^2) + 1/2 N(x; a, s^2) on the backend's device.

    ``log_unnorm``  log p~(x) = logaddexp(-(x-a)^2 / 2s^2, -(x+a)^2 / 2s^2)      (K.2)
    ``log_Z``       log of Z = int p~ = 2 sqrt(2 pi) s, so log p = log p~ - log Z
    ``score``       d/dx log p(x) = (a tanh(a x / s^2) - x) / s^2                  (K.3)
    ``sample``      x = a * sign + s * eps from noise {"eps": N(0,1), "u": U(0,1)}
    """

    def __init__(self, b, a: float = 2.0, s: float = 0.5):
        if not (s > 0):
            raise ValueError(f"s must be positive, got {s}")
        self.b, self.a, self.s = b, float(a), float(s)
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


def draw_p_noise(b, rng, shape) -> dict:
    """The randomness p's sampler consumes: {"eps": N(0,1), "u": U(0,1)}, each of ``shape``."""
    shape = tuple(shape)
    return {"eps": rng.normal(shape), "u": rng.uniform(shape)}


def draw_q_noise(b, rng, shape):
    """eps ~ N(0, 1) of ``shape``; q's samples are x = m + exp(rho) eps (K.4)."""
    return rng.normal(tuple(shape))


class AccessError(AttributeError):
    """An estimator asked an oracle for something its scenario does not give.
    [01-kl-direction.md#result-5]"""


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
    """Scenario 1: p's normalised density (and its x-derivative) and samples.
    [01-kl-direction.md#result-5]"""

    ALLOWED = ("log_prob", "score", "sample")
    SCENARIO = "scenario 1: density and samples of p"


class SampleOnly(_Oracle):
    """Scenario 2: samples of p only (``sample(noise)``); no density, normalised or not.
    [01-kl-direction.md#result-5]"""

    ALLOWED = ("sample",)
    SCENARIO = "scenario 2: samples of p only"


class UnnormalisedDensity(_Oracle):
    """Scenario 3: log p~(x) = log p(x) + log Z with Z unknown, and its x-derivative; no samples.

    ``log_unnorm`` comes from the source's ``log_unnorm`` (or ``log_prob``) plus ``log_offset``,
    an arbitrary constant the estimators never see.  ``score`` = d/dx log p~ = d/dx log p: knowing
    p~ in closed form means we may differentiate it; the unknown constant drops out.
    [01-kl-direction.md#result-5]
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


def init_params(b, m: float = 0.0, rho: float = 0.0) -> dict:
    """q's parameters as 0-d device arrays: {"m": m, "rho": rho}, sigma = exp(rho) (K.4)."""
    return {"m": b.asarray(m), "rho": b.asarray(rho)}


def log_q(b, params, x):
    """log N(x; m, exp(2 rho)) elementwise (K.4)."""
    xp = b.xp
    m, rho = params["m"], params["rho"]
    u = (x - m) * xp.exp(-rho)
    return -0.5 * LOG2PI - rho - 0.5 * u * u


def log_q_grad(b, params, x) -> dict:
    """Score of q in its parameters at fixed x, elementwise (K.5):
    d/dm log q = (x - m) / sigma^2,   d/drho log q = ((x - m) / sigma)^2 - 1."""
    xp = b.xp
    m, rho = params["m"], params["rho"]
    u = (x - m) * xp.exp(-rho)
    return {"m": u * xp.exp(-rho), "rho": u * u - 1.0}


def _mean(xp, v):
    return xp.mean(v, axis=-1)


def _draw_q(b, params, eps):
    """x = m + sigma eps with sigma = exp(rho), and log q(x) = -1/2 log 2pi - rho - eps^2/2."""
    m, rho = params["m"], params["rho"]
    sigma = b.xp.exp(rho)
    return sigma, m + sigma * eps, -0.5 * LOG2PI - rho - 0.5 * eps * eps


def _reverse_reparam(b, log_target, score_target, params, eps, stl=False) -> Estimate:
    """Shared body of the reparameterisation estimator of E_q[log q - log target] (K.7).

    x = m + sigma eps;  log q(x) = -1/2 log 2pi - rho - eps^2/2 (it does not depend on m);
    d/dm   = -mean(score(x)),
    d/drho = -1 - mean(score(x) * sigma * eps).
    ``stl`` ("sticking the landing", (K.7b)): differentiate log q(x) only through x,
    d/dm = mean(-eps/sigma - score(x)), d/drho = mean(-eps^2 - score(x) sigma eps); it drops the
    zero-mean terms eps/sigma and eps^2 - 1 (the score of q), so it is unbiased too, and its
    variance vanishes where q = target.
    """
    xp = b.xp
    sigma, x, logq = _draw_q(b, params, eps)                 # (..., n)
    f = logq - log_target(x)                                        # log q(x) - log target(x)
    g = score_target(x)                                             # d/dx log target
    if stl:
        grads = {"m": -_mean(xp, eps / sigma + g), "rho": -_mean(xp, eps * eps + g * sigma * eps)}
    else:
        grads = {"m": -_mean(xp, g), "rho": -1.0 - _mean(xp, g * sigma * eps)}
    return Estimate(_mean(xp, f), grads, {"x": x, "f": f})


# ---------------------------------------------------------------- scenario 1: Full access
def reverse_kl_full(b, oracle, params, eps, stl: bool = False) -> Estimate:
    """Scenario 1, KL(q||p): value = mean(log q(x) - log p(x)), x = m + sigma eps, unbiased;
    gradient by reparameterisation (K.7) through p's normalised density.

    ``eps``: (..., n) standard normal noise; outputs have shape (...)."""
    p = Full(oracle)
    return _reverse_reparam(b, p.log_prob, p.score, params, eps, stl)


def forward_kl_full(b, oracle, params, p_noise) -> Estimate:
    """Scenario 1, KL(p||q): value = mean(log p(x) - log q(x)) over x ~ p, unbiased (K.6);
    gradient = that of :func:`forward_kl_mle` (log p does not depend on the params)."""
    p = Full(oracle)
    xp = b.xp
    x = p.sample(p_noise)
    lq = log_q(b, params, x)
    dq = log_q_grad(b, params, x)
    grads = {k: -_mean(xp, v) for k, v in dq.items()}
    return Estimate(_mean(xp, p.log_prob(x) - lq), grads, {"x": x})


# ---------------------------------------------------------------- scenario 2: samples of p
def forward_kl_mle(b, oracle, params, p_noise) -> Estimate:
    """Scenario 2, KL(p||q) up to the unknown constant -H(p): maximum likelihood (K.6).

    value = mean(-log q(x_i)) over x_i ~ p (the cross-entropy H(p, q) = KL(p||q) + H(p));
    d/dm   = -mean((x_i - m) / sigma^2),
    d/drho =  mean(1 - ((x_i - m) / sigma)^2).
    Sees p only through :class:`SampleOnly`, and receives no q noise, so it can neither evaluate
    p's density nor sample q.  Zero gradient at m = mean(x), sigma^2 = mean((x - m)^2)."""
    p = SampleOnly(oracle)
    xp = b.xp
    x = p.sample(p_noise)
    dq = log_q_grad(b, params, x)
    grads = {k: -_mean(xp, v) for k, v in dq.items()}
    return Estimate(-_mean(xp, log_q(b, params, x)), grads, {"x": x})


# ---------------------------------------------------------------- scenario 3: unnormalised p
def reverse_kl_reparam(b, oracle, params, eps, stl: bool = False) -> Estimate:
    """Scenario 3, KL(q||p) - log Z by reparameterisation (K.7).

    value = mean(log q(x) - log p~(x)), x = m + sigma eps: unbiased for KL(q||p) - log Z, and the
    unknown log Z does not depend on (m, rho), so the gradient is unbiased for grad KL(q||p).
    ``stl=True``: the sticking-the-landing variant (see :func:`_reverse_reparam`)."""
    p = UnnormalisedDensity(oracle)
    return _reverse_reparam(b, p.log_unnorm, p.score, params, eps, stl)


BASELINES = ("loo", "none", "mean")


def reverse_kl_score(b, oracle, params, eps, baseline: str = "loo") -> Estimate:
    """Scenario 3, grad KL(q||p) by the score-function (log-derivative) estimator (K.8).

    x_i = m + sigma eps_i are samples of q, held fixed (no path derivative);
    f_i = log q(x_i) - log p~(x_i);   grad = mean((f_i - b_i) * grad_phi log q(x_i)).

    ``baseline``:
      "loo"  (default) b_i = mean of the *other* f_j: independent of x_i, hence unbiased (K.9);
      "none" b_i = 0: unbiased, high variance (log Z alone adds log Z * grad log q noise);
      "mean" b_i = mean of all f_j incl. f_i: *biased*, E = (n-1)/n * grad (K.10); kept to
             show why leave-one-out.
    ``aux["coef"]`` = f - b and ``aux["x"]``: the estimate is the exact gradient of the surrogate
    mean(coef * log q(x; m, rho)) with coef and x frozen."""
    if baseline not in BASELINES:
        raise ValueError(f"baseline must be one of {BASELINES}, got {baseline!r}")
    p = UnnormalisedDensity(oracle)
    xp = b.xp
    n = eps.shape[-1]
    sigma, x, logq = _draw_q(b, params, eps)
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


def forward_kl_snis(b, oracle, params, eps) -> Estimate:
    """Scenario 3 (optional), KL(p||q) by self-normalised importance sampling from q (K.11).

    log w_i = log p~(x_i) - log q(x_i),  wbar = softmax(log w),  log Zhat = logsumexp(log w) - log n
    value = sum_i wbar_i log w_i - log Zhat      (estimates E_p[log p - log q])
    grads = -sum_i wbar_i grad_phi log q(x_i)    (estimates -E_p[grad log q]), x_i, wbar frozen.
    Consistent but biased for finite n (a ratio and a log of a mean); badly so when q misses a
    mode of p, which is exactly the regime of the reverse-KL minima."""
    p = UnnormalisedDensity(oracle)
    xp = b.xp
    n = eps.shape[-1]
    sigma, x, logq = _draw_q(b, params, eps)
    logw = p.log_unnorm(x) - logq
    lse = b.logsumexp(logw, axis=-1, keepdims=True)
    wbar = xp.exp(logw - lse)
    log_Z_hat = xp.squeeze(lse, axis=-1) - math.log(n)
    value = xp.sum(wbar * logw, axis=-1) - log_Z_hat
    grads = {"m": -xp.sum(wbar * eps, axis=-1) / sigma,
             "rho": -xp.sum(wbar * (eps * eps - 1.0), axis=-1)}
    return Estimate(value, grads, {"x": x, "weights": wbar, "log_Z_hat": log_Z_hat})
