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

Subnormals.  x86 multiplies and divides float32 subnormals many times slower than normal
numbers, and a dead unit's first moment sits there (``scratchvae/optim.py``).  The entries the
optimiser's scan lists go through :func:`_adam_split`: copied out, updated by :func:`_adam_wide`
(each multiplication, division and square root in float64, rounded to float32 at once -- the
same bits, all operands normal), and written back; the rest of the array meanwhile runs the
ordinary loop with those entries set to harmless values.  On the GMVAE recipe (MNIST subset, one
thread, 3 runs each, the same metrics) the whole run took 55.9 / 55.2 / 55.4 s against
57.5 / 59.3 / 59.2 s with the NumPy gather and scatter it replaced.

Short runs keep the NumPy passes (:func:`pays`): importing numba and loading the loop cost
~0.5 s and ~100 MiB, which a few hundred million parameter updates repay.
"""
from __future__ import annotations

import os
from typing import Callable, NamedTuple

import numpy as np

_KERNEL = []    # [] not tried yet; [None] unavailable; [Kernel] compiled (lazily, on first use)


JIT = {"nogil": True, "error_model": "numpy"}   # numba.njit's options for every loop here


class Kernel(NamedTuple):
    """The compiled loops: ``update`` (:func:`_adam`, any float dtype) and ``split``
    (:func:`_adam_split`: float32, with the entries near the subnormal range given)."""
    update: Callable
    split: Callable


def _adam(p, g, m, v, b1, c1, b2, c2, step, eps_hat, s, e):
    """:func:`scratchvae.optim._adam_update` on entries s..e-1 of flat arrays, one element at a
    time.  ``s``, ``e``: unsigned (NumPy uint64) -- a signed index could be negative, which
    Python indexing wraps around, and that check stops LLVM from vectorising the loop."""
    for i in range(s, e):
        gi = g[i]
        mi = m[i] * b1 + gi * c1                 # m = b1 m + (1 - b1) g
        vi = v[i] * b2 + (gi * gi) * c2          # v = b2 v + (1 - b2) (g g)
        m[i] = mi
        v[i] = vi
        p[i] = p[i] - (mi / (np.sqrt(vi) + eps_hat)) * step   # p -= step m / (v^.5 + eps)


def _adam_wide(p, g, m, v, b1, c1, b2, c2, step, eps_hat, s, e, one):
    """:func:`_adam` on float32 arrays with every multiplication, division and square root
    done in float64 and rounded to float32 at once: float32's bits (53 >= 2 x 24 + 2, so the two
    roundings are one), with no float32 subnormal operand -- x86 multiplies and divides those
    many times slower; additions, and conversions between the two widths, it does at full speed.
    ``one`` is 1.0, passed in: a float64 operand that LLVM cannot prove came from a float32,
    so it does not shrink the operation back to float32 (it does, where it can prove it)."""
    f32, f64 = np.float32, np.float64
    B1, C1, B2, C2, S = f64(b1) * one, f64(c1) * one, f64(b2) * one, f64(c2) * one, f64(step) * one
    for i in range(s, e):
        gi = f64(g[i])
        mi = f32(f64(m[i]) * B1) + f32(gi * C1)
        vi = f32(f64(v[i]) * B2) + f32(f64(f32(gi * one * gi)) * C2)
        m[i] = mi
        v[i] = vi
        d = f32(np.sqrt(f64(vi) * one)) + eps_hat
        q = f32(f64(mi) * one / f64(d))
        p[i] = p[i] - f32(f64(q) * S)


def _make_split(update, wide):
    def _adam_split(p, g, m, v, idx, buf, b1, c1, b2, c2, step, eps_hat, one):
        """The update of float32 flat arrays with the entries ``idx`` (in range, else an
        IndexError before anything is written; a repeated index is harmless) done in float64:
        they are copied into ``buf`` (4 rows of >= idx.size) and set to
        harmless values (m = g = 0, v = 1) for :func:`_adam` over the whole array, updated in
        ``buf`` by :func:`_adam_wide`, and written back (g restored) -- two vectorised loops
        whatever the pattern of the indices."""
        u = np.uint64
        n = idx.size
        for j in range(n):                       # nothing is touched unless every index is in
            if idx[j] < 0 or idx[j] >= p.size:   # range (a negative one would wrap around)
                raise IndexError("an index of the list is outside the array")
        P, G, M, V = buf[0], buf[1], buf[2], buf[3]
        for j in range(n):
            i = idx[j]
            P[j], G[j], M[j], V[j] = p[i], g[i], m[i], v[i]
            g[i], m[i], v[i] = 0, 0, 1
        update(p, g, m, v, b1, c1, b2, c2, step, eps_hat, u(0), u(p.size))
        wide(P, G, M, V, b1, c1, b2, c2, step, eps_hat, u(0), u(n), one)
        for j in range(n - 1, -1, -1):           # backwards: of a repeated index, the first
            i = idx[j]                           # copy (the true values) is written last
            p[i], g[i], m[i], v[i] = P[j], G[j], M[j], V[j]
    return _adam_split


def _build():
    """The compiled loops, tried once on float32 and float64 arrays; None if numba is
    missing or broken, or compiling fails.  The compiled code is cached in __pycache__ or the
    user's cache; where neither is writable (numba raises at decoration) or writing fails (a
    full disk: numba raises at the first call) it is compiled anew in each process."""
    try:
        from numba import njit
    except Exception:                   # ImportError, or a broken llvmlite (OSError)
        return None
    for cache in (True, False):
        try:
            jit = njit(cache=cache, **JIT)
            update, wide = jit(_adam), jit(_adam_wide)
            k = Kernel(update, jit(_make_split(update, wide)))
            for dt in (np.float32, np.float64):
                a = np.zeros(2, dt)
                k.update(a, a.copy(), a.copy(), a.copy(), *(dt(0.5),) * 6, np.uint64(0),
                         np.uint64(2))
            a = np.zeros(2, np.float32)
            k.split(a, a.copy(), a.copy(), a.copy(), np.zeros(1, np.intp),
                    np.zeros((4, 1), np.float32), *(np.float32(0.5),) * 6, 1.0)
            return k
        except Exception:
            continue
    return None


def adam_kernel():
    """The compiled loops (:class:`Kernel`; for :func:`adam_update_`), or None when numba is
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


PAYS = 4e8   # parameter updates (parameters x steps) from which loading the loop pays off:
#              importing numba and loading the cached loop take ~0.5 s (and ~100 MiB), the loop
#              saves ~1.3 ns per parameter update (7.6 -> 3.1 ms per 3.35 M, adam_floor.py)


def pays(params: dict, steps: int) -> bool:
    """Whether a run of ``steps`` Adam steps on ``params`` is long enough for the compiled
    loop to repay its loading (a short run keeps the NumPy passes: the same bits)."""
    return sum(int(getattr(v, "size", 0)) for v in params.values()) * steps >= PAYS


def scalars(dtype, b1, b2, step, eps_hat) -> tuple:
    """The loop's scalars (b1, 1 - b1, b2, 1 - b2, step, eps_hat) rounded to ``dtype``, as
    NumPy rounds Python floats meeting an array of that dtype: once per step and dtype."""
    f = dtype.type
    return f(b1), f(1.0 - b1), f(b2), f(1.0 - b2), f(step), f(eps_hat)


def adam_update_(kernel, p, g, m, v, b1, b2, step, eps_hat, scal=None, idx=None,
                 buf=None) -> bool:
    """One Adam update of p, m, v in place by ``kernel`` if the arrays allow it -- all four of
    one shape and one native float32 or float64 dtype, writable, p, m, v C-contiguous (``scal``:
    :func:`scalars` for that dtype, if already made); returns whether it ran (if not, the
    caller runs the reference update, which broadcasts or raises as NumPy does: the loop never
    reads past an array).  ``idx``: flat indices, sorted and distinct, of float32 entries whose
    update meets subnormals (``optim._Subnormals.scan``), done in float64 -- the same bits, as
    fast as normal numbers; any set gives the same result, and indices past the end (a scan of
    another array) are not used.  ``buf``: float32 scratch of shape (4, >= idx.size), made if
    not given.  (g is written during the call and restored: it must be writable.)"""
    t = p.dtype
    arrs = (p, g, m, v)
    if not (t.kind == "f" and t.itemsize in (4, 8) and t.isnative
            and all(a.dtype == t and a.shape == p.shape and a.flags.writeable for a in arrs)
            and p.flags.c_contiguous and m.flags.c_contiguous and v.flags.c_contiguous):
        return False
    flat = (p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1))
    scal = scal if scal is not None else scalars(t, b1, b2, step, eps_hat)
    if idx is not None and idx.size and t.itemsize == 4 and idx[-1] < p.size:
        if buf is None or buf.shape[0] < 4 or buf.shape[1] < idx.size or buf.dtype != t \
                or not buf.flags.c_contiguous:
            buf = np.empty((4, idx.size), t)
        kernel.split(*flat, idx, buf, *scal, 1.0)
    else:
        kernel.update(*flat, *scal, np.uint64(0), np.uint64(p.size))
    return True
