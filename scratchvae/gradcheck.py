"""Finite-difference gradient checks: part of the product, not only of the tests.

A GPU user runs ``python run.py gradcheck --backend cupy`` to trust the CuPy path; the tests
drive the same functions with hypothesis.

Method (float64 only; float32 differences are too coarse to say anything at 1e-6):

* arrays with at most ``full_max`` entries: every entry e_i, compared with ``grad[i]``;
* larger arrays: ``n_dirs`` random unit directions ``u``, comparing ``<grad, u>`` with the
  directional derivative (a dot-product test of the whole array at once);
* derivatives by the five-point central stencil
  ``[f(p - 2h u) - 8 f(p - h u) + 8 f(p + h u) - f(p + 2h u)] / 12h`` with h = 5e-4: truncation
  error O(h^4) ~ 1e-13 and round-off ~ 2 eps |f| / h ~ 1e-12, so gradient entries as small as
  1e-5 are still resolved to 1e-6 relative error (the two-point stencil's round-off, ~eps|f|/h
  at its best h ~ 1e-5, is 100x larger);
* relative error ``|a - b| / max(tiny, |a| + |b|)`` with ``tiny = 1e-6 * max(1, M)``, M the
  magnitude of f's computation: |f| by default, or ``magnitude`` when f is a sum of larger terms
  that cancel (the round-off of f is that of its terms: a test's ``sum(dll * ll)`` with random
  signs gave |f| = 2.6 from terms summing to 28 in absolute value, and a correct entry of
  9.4e-7 then missed 1e-6 relative error by round-off alone).  Entries whose true value is below
  ``tiny`` (an exactly-zero gradient of a dead ReLU, say) are in effect compared absolutely, at
  1e-12 M -- above the stencil's round-off (~1.5 eps M / h = 7e-13 M, typically far less), far
  below any wrong gradient;
* the stencil's measured round-off is not counted against the gradient: where the relative
  error is above 1e-9, f's rounding is measured along the same direction (fourth differences
  of f at spacing h/1000, see ``compare``) and 3 x the stencil's resulting round-off is taken off
  |a - b| before dividing.  Truncation is not: an earlier rule that reran the stencil at 2h
  also forgave ~45x the truncation error, and a review found a variance gradient 3e-5 wrong that
  it passed.  (Hypothesis found, at 300 examples, a mixture-prior entry of 3.8e-8 whose
  five-point estimate was off by 2.3e-12 from round-off in f's larger terms; M is not always
  known.)

Near a kink (ReLU at 0, an argmin tie) the stencil must not cross it: tests keep a margin of a
few times ``2h`` times the input scale.

The functions perturb host copies and rebuild device arrays through the backend, so they work on
every backend.  ``f`` takes a params dict and returns a scalar (device 0-d array or float).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np


@dataclass
class CheckResult:
    name: str
    max_rel_err: float
    worst: str
    n_checks: int
    details: list = field(default_factory=list)

    def ok(self, rtol: float) -> bool:
        return bool(np.isfinite(self.max_rel_err) and self.max_rel_err <= rtol)


def rel_err(a: float, b: float, tiny: float = 1e-6) -> float:
    return abs(a - b) / max(tiny, abs(a) + abs(b))


def _scalar(b, v) -> float:
    return float(b.to_numpy(v)) if not isinstance(v, float) else v


def check_grads(b, f, params: dict, grads: dict, *, h: float = 5e-4, full_max: int = 64,
                n_dirs: int = 4, seed: int = 0, keys=None, tiny: float = 1e-6,
                name: str = "", magnitude: float | None = None) -> CheckResult:
    """Compare ``grads`` (the hand-written gradient of ``f`` at ``params``) with central
    differences.  Returns the largest relative error over all checked entries / directions."""
    if b.dtype_name != "float64":
        raise ValueError("gradient checks need float64: build the backend with dtype='float64'")
    rng = np.random.default_rng(seed)
    host = {k: b.to_numpy(v).astype(np.float64) for k, v in params.items()}
    worst, worst_at, n = 0.0, "", 0
    details = []

    def f_at(k, arr):
        p = dict(params)
        p[k] = b.asarray(arr)
        return _scalar(b, f(p))

    def deriv(k, p0, u):
        """Five-point central difference of f along direction u at p0."""
        return (f_at(k, p0 - 2 * h * u) - 8 * f_at(k, p0 - h * u)
                + 8 * f_at(k, p0 + h * u) - f_at(k, p0 + 2 * h * u)) / (12 * h)

    def compare(ana, k, p0, u):
        """(numerical derivative, error): the relative error, less 3 x the stencil's round-off
        when it is not plainly small.  The round-off is measured, not modelled: the fourth
        difference of five values of f spaced h/1000 apart (where f is linear far below its
        rounding) is rounding alone, variance 70 sigma^2 for a rounding error of size sigma;
        the stencil's is then sqrt(130) sigma / 12h.  Two such differences, the larger kept.
        Truncation is never subtracted: a wrong gradient cannot hide behind it."""
        num = deriv(k, p0, u)
        r = rel_err(ana, num, tiny)
        if r > 1e-9:
            sigma = 0.0
            for d in (1e-3 * h, 1.7e-3 * h):
                v = [f_at(k, p0 + j * d * u) for j in (-2, -1, 0, 1, 2)]
                d4 = v[0] - 4 * v[1] + 6 * v[2] - 4 * v[3] + v[4]
                sigma = max(sigma, abs(d4) / math.sqrt(70.0))
            noise = math.sqrt(130.0) * sigma / (12 * h)
            r = max(0.0, abs(ana - num) - 3.0 * noise) / max(tiny, abs(ana) + abs(num))
        return num, r

    f0 = _scalar(b, f(params))
    tiny = tiny * max(1.0, abs(f0) if magnitude is None else float(magnitude))
    for k in (sorted(grads) if keys is None else keys):
        if k not in host:
            raise KeyError(f"gradient for unknown parameter {k!r}")
        p0 = host[k]
        g = b.to_numpy(grads[k]).astype(np.float64)
        if g.shape != p0.shape:
            raise ValueError(f"gradient of {k!r} has shape {g.shape}, parameter has {p0.shape}")
        if p0.size <= full_max:
            for i in range(p0.size):
                e = np.zeros(p0.size)
                e[i] = 1.0
                ana = float(g.reshape(-1)[i])
                num, r = compare(ana, k, p0, e.reshape(p0.shape))
                n += 1
                details.append((k, i, ana, num, r))
                if r > worst:
                    idx = tuple(int(t) for t in np.unravel_index(i, p0.shape))
                    worst, worst_at = r, f"{k}{list(idx)}"
        else:
            for d in range(n_dirs):
                u = rng.standard_normal(p0.shape)
                u /= np.linalg.norm(u)
                ana = float(np.sum(g * u))
                num, r = compare(ana, k, p0, u)
                n += 1
                details.append((k, f"dir{d}", ana, num, r))
                if r > worst:
                    worst, worst_at = r, f"{k} (direction {d})"
    return CheckResult(name, worst, worst_at, n, details)


def check_function(b, f, inputs: dict, grads: dict, **kw) -> CheckResult:
    """Alias of :func:`check_grads` for checking a block's inputs rather than parameters."""
    return check_grads(b, f, inputs, grads, **kw)
