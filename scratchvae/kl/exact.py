"""The assignment's section 1, host side, exact values (NumPy float64).

Derivation: ``derivations/01-kl-direction.md`` (the equation tags (K.n) below are its).

KL(q||p) and KL(p||q) and their gradients/Hessians in (m, rho) by a dense trapezoid rule in log
space (agrees with adaptive quadrature to 1e-9, see ``tests/test_kl.py``), p's moments and
entropy, and the closed-form minimiser of the forward KL.  The minima and critical points these
values define are located in :mod:`scratchvae.kl.minima`.
"""
from __future__ import annotations

import functools
import math

import numpy as np

from .estimators import LOG2PI

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
    """KL(q||p) = -1/2 log(2 pi e) - rho - E_q[log p]  (K.12), by quadrature."""
    (elp,) = _over_q(lambda x, z, sig: (log_p_host(x, a, s),), m, rho)
    return -0.5 * (LOG2PI + 1.0) - np.asarray(rho, dtype=np.float64) - elp


def exact_reverse_kl_grad(m, rho, a, s):
    """(dR/dm, dR/drho) = (-E_q[g(x)], -1 - E_q[g(x) sigma z]), g = d/dx log p  (K.13)."""
    def fun(x, z, sig):
        g = _score_host(x, a, s)
        return g, g * sig * z
    eg, egz = _over_q(fun, m, rho)
    return -eg, -1.0 - egz


def exact_reverse_kl_hessian(m, rho, a, s):
    """Hessian of KL(q||p) in (m, rho), shape (..., 2, 2)  (K.14):
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
    """KL(p||q) = E_p[log p] + 1/2 log 2pi + rho + E_p[(x - m)^2] / (2 sigma^2)  (K.15);
    E_p[log p] and the moments of p by quadrature."""
    m = np.asarray(m, dtype=np.float64)
    rho = np.asarray(rho, dtype=np.float64)
    ex, ex2, elp = _p_moments(float(a), float(s))
    sq = ex2 - 2.0 * m * ex + m * m
    return elp + 0.5 * LOG2PI + rho + sq * np.exp(-2.0 * rho) / 2.0


def exact_forward_kl_grad(m, rho, a, s):
    """(dF/dm, dF/drho) = (-E_p[x - m] / sigma^2, 1 - E_p[(x - m)^2] / sigma^2)  (K.16)."""
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
    """Closed form (K.17): m* = E_p[x] = 0, sigma*^2 = Var_p[x] = s^2 + a^2."""
    return 0.0, 0.5 * math.log(s * s + a * a)


_EXACT = {
    "reverse": (exact_reverse_kl, exact_reverse_kl_grad, exact_reverse_kl_hessian),
    "forward": (exact_forward_kl, exact_forward_kl_grad, exact_forward_kl_hessian),
}


def _kind(kind):
    if kind not in _EXACT:
        raise ValueError(f"kind must be 'reverse' (KL(q||p)) or 'forward' (KL(p||q)), got {kind!r}")
    return _EXACT[kind]
