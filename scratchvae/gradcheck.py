"""Finite-difference gradient checks: part of the product, not only of the tests.

A GPU user runs ``python run.py gradcheck --backend cupy`` to trust the CuPy path; the tests
drive the same functions with hypothesis.

Method (float64 only; float32 differences are too coarse to say anything at 1e-6):

* arrays with at most ``full_max`` entries: every entry, central differences
  ``(f(p + h e_i) - f(p - h e_i)) / 2h`` against ``grad[i]``;
* larger arrays: ``n_dirs`` random unit directions ``u``, comparing ``<grad, u>`` with
  ``(f(p + h u) - f(p - h u)) / 2h`` (a dot-product test of the whole array at once);
* relative error ``|a - b| / max(tiny, |a| + |b|)``.

The functions perturb host copies and rebuild device arrays through the backend, so they work on
every backend.  ``f`` takes a params dict and returns a scalar (device 0-d array or float).
"""
from __future__ import annotations

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


def rel_err(a: float, b: float, tiny: float = 1e-8) -> float:
    return abs(a - b) / max(tiny, abs(a) + abs(b))


def _scalar(backend, v) -> float:
    return float(backend.to_numpy(v)) if not isinstance(v, float) else v


def check_grads(backend, f, params: dict, grads: dict, *, h: float = 1e-5, full_max: int = 64,
                n_dirs: int = 4, seed: int = 0, keys=None, tiny: float = 1e-8,
                name: str = "") -> CheckResult:
    """Compare ``grads`` (the hand-written gradient of ``f`` at ``params``) with central
    differences.  Returns the largest relative error over all checked entries / directions."""
    if backend.dtype_name != "float64":
        raise ValueError("gradient checks need float64: build the backend with dtype='float64'")
    rng = np.random.default_rng(seed)
    host = {k: backend.to_numpy(v).astype(np.float64) for k, v in params.items()}
    worst, worst_at, n = 0.0, "", 0
    details = []

    def f_at(k, arr):
        p = dict(params)
        p[k] = backend.asarray(arr)
        return _scalar(backend, f(p))

    for k in (sorted(grads) if keys is None else keys):
        if k not in host:
            raise KeyError(f"gradient for unknown parameter {k!r}")
        p0 = host[k]
        g = backend.to_numpy(grads[k]).astype(np.float64)
        if g.shape != p0.shape:
            raise ValueError(f"gradient of {k!r} has shape {g.shape}, parameter has {p0.shape}")
        if p0.size <= full_max:
            for i in range(p0.size):
                e = np.zeros(p0.size)
                e[i] = h
                e = e.reshape(p0.shape)
                num = (f_at(k, p0 + e) - f_at(k, p0 - e)) / (2 * h)
                ana = float(g.reshape(-1)[i])
                r = rel_err(ana, num, tiny)
                n += 1
                details.append((k, i, ana, num, r))
                if r > worst:
                    worst, worst_at = r, f"{k}[{np.unravel_index(i, p0.shape)}]"
        else:
            for d in range(n_dirs):
                u = rng.standard_normal(p0.shape)
                u /= np.linalg.norm(u)
                num = (f_at(k, p0 + h * u) - f_at(k, p0 - h * u)) / (2 * h)
                ana = float(np.sum(g * u))
                r = rel_err(ana, num, tiny)
                n += 1
                details.append((k, f"dir{d}", ana, num, r))
                if r > worst:
                    worst, worst_at = r, f"{k} (direction {d})"
    return CheckResult(name, worst, worst_at, n, details)


def check_function(backend, f, inputs: dict, grads: dict, **kw) -> CheckResult:
    """Alias of :func:`check_grads` for checking a block's inputs rather than parameters."""
    return check_grads(backend, f, inputs, grads, **kw)
