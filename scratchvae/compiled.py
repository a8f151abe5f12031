"""Floor 1 (CPU, optional): Adam's update as one compiled loop, when numba is installed.

NumPy can only run Adam as a dozen passes (``optim._adam_update_into``), each a separate call
over a cache-sized chunk; the update is one read of p, g, m, v and one write of p, m, v, so a
single loop doing every operation on an element while it is in a register moves the same bytes
once and does no pass twice.  Measured on the VaDE network's 3.35 M float32 parameters (one
thread; ``python scripts/adam_floor.py``): 7.6 ms in NumPy passes, 3.1 ms in this loop, 3.4 ms
to merely stream the same bytes through NumPy.

The loop is :func:`scratchvae.optim._adam_update` line by line, on one flat array, in the
array's own dtype (the scalars arrive rounded to it, as NumPy rounds a Python float meeting a
float32 array), compiled without ``fastmath`` -- so LLVM neither reassociates nor contracts a
multiply and an add into an FMA, which would round once instead of twice -- with IEEE ``sqrt``
and division: every operation is correctly rounded as NumPy's is, so the result has the
reference's bits (``tests/test_speed.py`` compares them, subnormals included) -- every
non-NaN result; where two NaNs of different payloads meet in an addition, which payload
survives may differ (LLVM may commute the operands).
``error_model="numpy"`` drops Python's check of every division for a zero divisor (a branch
that stops the loop from being vectorised; ``sqrt(v) + eps_hat`` is never 0).

numba is optional (``pip install -e ".[fast]"``; the test extra has it): without it, or with
``SCRATCHVAE_COMPILED=0`` in the environment, :func:`adam_kernel` returns None and Adam runs
its NumPy passes, with the same bits.  It is a compiler for plain Python loops, not an autograd
library: every gradient here is still written out by hand.
"""
from __future__ import annotations

import os

import numpy as np

_KERNEL = []    # [] not tried yet; [None] unavailable; [fn] compiled (lazily, on first use)


def _adam(p, g, m, v, b1, c1, b2, c2, step, eps_hat):
    """:func:`scratchvae.optim._adam_update` on flat arrays, one element at a time."""
    for i in range(p.size):
        gi = g[i]
        mi = m[i] * b1 + gi * c1                 # m = b1 m + (1 - b1) g
        vi = v[i] * b2 + (gi * gi) * c2          # v = b2 v + (1 - b2) (g g)
        m[i] = mi
        v[i] = vi
        p[i] = p[i] - (mi / (np.sqrt(vi) + eps_hat)) * step   # p -= step m / (v^.5 + eps)


def _build():
    """The compiled :func:`_adam`, tried once on float32 and float64 arrays; None if numba is
    missing or broken, or compiling fails.  The compiled code is cached in __pycache__ or the
    user's cache; where neither is writable (numba raises at decoration) or writing fails (a
    full disk: numba raises at the first call) it is compiled anew in each process."""
    try:
        from numba import njit
    except Exception:                   # ImportError, or a broken llvmlite (OSError)
        return None
    for cache in (True, False):
        try:
            fn = njit(cache=cache, nogil=True, error_model="numpy")(_adam)
            for dt in (np.float32, np.float64):
                a = np.zeros(1, dt)
                fn(a, a.copy(), a.copy(), a.copy(), *(dt(0.5),) * 6)
            return fn
        except Exception:
            continue
    return None


def adam_kernel():
    """The compiled update ``f(p, g, m, v, b1, c1, b2, c2, step, eps_hat)`` on flat contiguous
    arrays of one dtype (scalars of that dtype; c1 = 1 - b1, c2 = 1 - b2), or None when numba is
    missing or ``SCRATCHVAE_COMPILED=0``."""
    if os.environ.get("SCRATCHVAE_COMPILED", "1") == "0":
        return None
    if not _KERNEL:
        _KERNEL.append(_build())
    return _KERNEL[0]


def status() -> str:
    """Whether Adam's compiled loop is in use here, in words (for ``bench``)."""
    if os.environ.get("SCRATCHVAE_COMPILED", "1") == "0":
        return "switched off (SCRATCHVAE_COMPILED=0)"
    if adam_kernel() is None:
        return "numba not installed (or not working)"
    import numba
    return f"numba {numba.__version__}"


def scalars(dtype, b1, b2, step, eps_hat) -> tuple:
    """The loop's scalars (b1, 1 - b1, b2, 1 - b2, step, eps_hat) rounded to ``dtype``, as
    NumPy rounds Python floats meeting an array of that dtype: once per step and dtype."""
    f = dtype.type
    return f(b1), f(1.0 - b1), f(b2), f(1.0 - b2), f(step), f(eps_hat)


def adam_update_(kernel, p, g, m, v, b1, b2, step, eps_hat, scal=None) -> bool:
    """One Adam update of p, m, v in place by ``kernel`` if the arrays allow it -- all four of
    one shape and one native float32 or float64 dtype, writable, p, m, v C-contiguous (``scal``:
    :func:`scalars` for that dtype, if already made); returns
    whether it ran (if not, the caller runs the reference update, which broadcasts or raises as
    NumPy does: the loop never reads past an array)."""
    t = p.dtype
    arrs = (p, g, m, v)
    if not (t.kind == "f" and t.itemsize in (4, 8) and t.isnative
            and all(a.dtype == t and a.shape == p.shape and a.flags.writeable for a in arrs)
            and p.flags.c_contiguous and m.flags.c_contiguous and v.flags.c_contiguous):
        return False
    kernel(p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1),
           *(scal if scal is not None else scalars(t, b1, b2, step, eps_hat)))
    return True
