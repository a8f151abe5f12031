"""Adam (Kingma & Ba, 2015) by hand, with bias correction, on flat parameter dicts.

    m_t = b1 m_{t-1} + (1 - b1) g_t
    v_t = b2 v_{t-1} + (1 - b2) g_t^2
    p_t = p_{t-1} - lr * sqrt(1 - b2^t) / (1 - b1^t) * m_t / (sqrt(v_t) + eps_hat)

The bias corrections are folded into one scalar step size; ``eps_hat = eps * sqrt(1 - b2^t)``
keeps the update identical to the textbook form m_hat / (sqrt(v_hat) + eps).

Speed.  Adam is pure memory traffic: a dozen elementwise operations on every parameter.  On
NumPy with numba installed the update is one compiled loop per array (``scratchvae/compiled.py``),
each element read and written once; without numba it runs over cache-sized chunks of each array,
so each array is read from and written to DRAM once and the dozen passes hit L2, and every pass
writes into one preallocated scratch chunk (``out=``): no temporaries, so no allocation or page
fault per step (2.2x the compiled loop's time on the VaDE network, ``scripts/adam_floor.py``).
On CuPy the whole update is one fused kernel per array (``scratchvae/fused.py``); on
array-api-strict it is the reference :func:`_adam_update` on whole arrays.  All four do the same
operations in the same order, so they give the same bits (``tests/test_speed.py``).  (Threads
over chunks were measured and gave nothing on the 2-core machine: the passes are
bandwidth-bound.)

Subnormals.  A parameter whose gradient has gone to zero (a dead unit, an input pixel that is
always 0) keeps a first moment that decays by b1 each step into float32's subnormal range and
stays there (0.9 x the smallest subnormal rounds back to it), and x86 multiplies and divides
subnormals ~40x slower (RESULTS.md "Speed"): late in the GMVAE recipe 17 % of the first moments
were subnormal and Adam took 3.6x its time on the same arrays with them set to 0.  So on NumPy, in float32, the entries whose moment is
near that range (:class:`_Subnormals`, a scan every ``_SCAN_EVERY`` steps) leave the float32
passes for the moment's half of the update: :func:`_adam_moment_exact` does its operations in
float64, each result rounded to float32 at once -- the correctly rounded float32 result (53 >=
2 x 24 + 2 bits, so the two roundings are one), and float32's subnormals are normal float64
numbers.  Same bits whichever entries take that path (``tests/test_speed.py``); nothing is
flushed to zero.  The compiled loop does the same for the entries the scan lists, inside the
loop (``compiled._adam_split``), with no NumPy gather and scatter.
"""
from __future__ import annotations

import math

_CHUNK = 1 << 16   # elements per chunk (256 KiB of float32): best of 2^13..2^17, measured
_SCAN_EVERY = 32   # steps between scans for moments near the subnormal range (float32, NumPy)
_MIN_SUBNORMAL = 256   # fewer such entries in a parameter: left in the passes (the detour costs
#                        a few NumPy calls per parameter, ~the subnormal cost of that many)
_NEAR_SUBNORMAL = 2.0 ** -100   # 0 < |m| below this: the entry's update meets float32
#                                 subnormals (m/d * step ~ m * 1e-3 reaches 2^-126)


def _adam_update(p, g, m, v, b1, b2, step, eps_hat):
    """In-place Adam update of one array (or one chunk of it): the reference path."""
    m *= b1
    m += (1.0 - b1) * g
    v *= b2
    v += (1.0 - b2) * (g * g)
    d = v ** 0.5
    d += eps_hat
    d = m / d
    d *= step
    p -= d


def _adam_update_into(np_, p, g, m, v, b1, b2, step, eps_hat, t):
    """:func:`_adam_update` with every temporary written into the scratch ``t`` (p's shape):
    the same operations in the same order, so the same bits."""
    m *= b1
    np_.multiply(g, 1.0 - b1, out=t)      # (1 - b1) g
    m += t
    v *= b2
    np_.multiply(g, g, out=t)
    t *= 1.0 - b2                         # (1 - b2) (g g)
    v += t
    np_.sqrt(v, out=t)                    # v ** 0.5 (NumPy computes it by sqrt)
    t += eps_hat
    np_.divide(m, t, out=t)
    t *= step
    p -= t


def _adam_moment_exact(p, g, m, d, b1, step, t):
    """The first moment's half of :func:`_adam_update` -- m = b1 m + (1 - b1) g, p -= step m / d
    with d = v ** 0.5 + eps_hat already computed -- on float32 1-D arrays in place, every
    operation computed in float64 (``dtype``) and its result rounded once to float32 (``out``):
    the float32 operation's bits, without float32 subnormal arithmetic.  The scalars are rounded
    to float32 first, as NumPy rounds a Python float meeting a float32 array.  ``t``: scratch."""
    import numpy as np

    s = lambda x: float(np.float32(x))                          # noqa: E731
    kw = {"dtype": np.float64, "casting": "same_kind"}
    np.multiply(m, s(b1), out=m, **kw)
    np.multiply(g, s(1.0 - b1), out=t, **kw)                    # (1 - b1) g
    np.add(m, t, out=m, **kw)
    np.divide(m, d, out=t, **kw)
    np.multiply(t, s(step), out=t, **kw)
    np.subtract(p, t, out=p, **kw)


class _Subnormals:
    """The entries whose first moment is near float32's subnormal range, taken out of the float32
    passes (their moment set to 0 there) and updated by :func:`_adam_moment_exact`; their second
    moment is updated in the passes as every other (in the recipe it never came near 2^-126).  ``idx``: per parameter the
    flat indices found by the last scan -- a cache: any set of entries gives the same numbers."""

    def __init__(self):
        self.idx, self.buf, self.todo = {}, None, []

    def take_out(self, np_, keys, params, grads, m, v):
        """Before the passes: copy p, g, m of the entries out, and zero their m in place."""
        todo = []
        for k in keys:
            idx, arrs = self.idx.get(k), (params[k], grads[k], m[k], v[k])
            if (idx is not None and idx.size >= _MIN_SUBNORMAL and idx[-1] < arrs[0].size
                    and all(a.flags.c_contiguous and a.dtype == np_.float32 for a in arrs)):
                todo.append((idx, [a.reshape(-1) for a in arrs]))
        n = sum(idx.size for idx, _ in todo)
        self.scratch(np_, n)
        a = 0
        for idx, flat in todo:
            for row, f in zip(self.buf[:3], flat[:3]):          # p, g, m
                np_.take(f, idx, out=row[a:a + idx.size], mode="clip")
            flat[2][idx] = 0
            a += idx.size
        self.todo = todo

    def scratch(self, np_, n):
        """``buf``, float32 (5, >= n), grown when needed (kept across steps)."""
        if n and (self.buf is None or self.buf.shape[1] < n):
            self.buf = np_.empty((5, n), dtype=np_.float32)
        return self.buf

    def put_back(self, np_, b1, step, eps_hat):
        """After the passes: their d = v ** 0.5 + eps_hat in float32 (v from the passes), the
        exact moment half, and p, m written back."""
        if not self.todo:
            return
        n = sum(idx.size for idx, _ in self.todo)
        P, G, M, D, T = self.buf[:, :n]
        a = 0
        for idx, flat in self.todo:
            np_.take(flat[3], idx, out=D[a:a + idx.size], mode="clip")
            a += idx.size
        np_.sqrt(D, out=D)
        D += eps_hat
        _adam_moment_exact(P, G, M, D, b1, step, T)
        a = 0
        for idx, flat in self.todo:
            flat[0][idx], flat[2][idx] = P[a:a + idx.size], M[a:a + idx.size]
            a += idx.size
        self.todo = []

    def scan(self, np_, keys, m, t):
        """Flat indices where 0 < |m| < 2^-100, per parameter (``t``: float32 scratch)."""
        for k in keys:
            mk = m[k]
            if mk.flags.c_contiguous and mk.dtype == np_.float32:
                mk, found = mk.reshape(-1), []
                for i in range(0, mk.size, t.size):             # chunks: no large temporaries
                    tk = np_.abs(mk[i:i + t.size], out=t[:min(t.size, mk.size - i)])
                    found.append(np_.flatnonzero((tk < _NEAR_SUBNORMAL) & (tk > 0)) + i)
                self.idx[k] = np_.concatenate(found) if found else np_.zeros(0, np_.intp)


class Adam:
    compiled = True     # a class default too: an Adam pickled before the attribute existed

    def __init__(self, b, params: dict, lr=1e-3, b1=0.9, b2=0.999, eps=1e-8):
        if not lr > 0:
            raise ValueError(f"learning rate must be positive, got {lr}")
        self.b = b
        self.lr, self.b1, self.b2, self.eps = float(lr), float(b1), float(b2), float(eps)
        self.t = 0
        self.m = {k: b.xp.zeros_like(v) for k, v in params.items()}
        self.v = {k: b.xp.zeros_like(v) for k, v in params.items()}
        self.chunked = b.name == "numpy"
        self.inplace = True                 # False: the reference path (tests, and strict)
        # NumPy: one compiled loop per array when numba is there (scratchvae/compiled.py), the
        # chunked passes below otherwise (or when set False); the same bits either way
        self.compiled = self.chunked
        self._scratch = None
        self._sub = _Subnormals()           # float32 on NumPy: near-subnormal first moments
        # the buffers of the training step this optimiser drives (backend.Workspace; None on
        # strict): the loop runs each step inside ``b.reusing(opt.ws)``
        self.ws = b.workspace()

    def step(self, params: dict, grads: dict, lr: float | None = None, keys=None):
        """One in-place update of ``params`` (only ``keys`` if given)."""
        self.t += 1
        # Python floats throughout (a NumPy float64 scalar meeting a float32 array would make
        # NumPy compute in float64, and the paths below would round differently)
        lr = float(self.lr if lr is None else lr)
        b1, b2 = float(self.b1), float(self.b2)
        c1 = 1.0 - b1 ** self.t
        c2 = 1.0 - b2 ** self.t
        step = lr * math.sqrt(c2) / c1
        eps_hat = float(self.eps) * math.sqrt(c2)
        keys = list(grads.keys() if keys is None else keys)
        if self.b.name == "cupy" and self.inplace:  # pragma: no cover - GPU only
            from .fused import adam_update_
            for k in keys:
                adam_update_(params[k], grads[k], self.m[k], self.v[k], b1, b2, step,
                             eps_hat)
            return
        if not self.chunked:
            for k in keys:
                _adam_update(params[k], grads[k], self.m[k], self.v[k], b1, b2, step, eps_hat)
            return
        if self.inplace and self.compiled:
            from .compiled import adam_kernel
            kernel = adam_kernel()
            if kernel is not None:
                return self._step_compiled(kernel, params, grads, keys, b1, b2, step, eps_hat)
        work = []
        for k in keys:
            p, g, m, v = params[k], grads[k], self.m[k], self.v[k]
            if not (p.flags.c_contiguous and m.flags.c_contiguous and v.flags.c_contiguous):
                work.append((p, g, m, v))       # views below would be copies: whole array
                continue
            pf, gf, mf, vf = p.reshape(-1), g.reshape(-1), m.reshape(-1), v.reshape(-1)
            for i in range(0, pf.shape[0], _CHUNK):
                j = i + _CHUNK
                work.append((pf[i:j], gf[i:j], mf[i:j], vf[i:j]))
        if not self.inplace:
            for it in work:
                _adam_update(*it, b1, b2, step, eps_hat)
            return
        import numpy as np
        n = max((int(it[0].size) for it in work), default=0)
        dt = work[0][0].dtype if work else None
        if self._scratch is None or self._scratch.size < n or self._scratch.dtype != dt:
            self._scratch = np.empty(n, dtype=dt)   # one chunk, reused by every step
        f32 = dt == np.float32
        if f32:
            self._sub.take_out(np, keys, params, grads, self.m, self.v)
        for p, g, m, v in work:
            t = self._scratch[:p.size].reshape(p.shape)
            _adam_update_into(np, p, g, m, v, b1, b2, step, eps_hat, t)
        if f32:
            self._sub.put_back(np, b1, step, eps_hat)
            if self.t % _SCAN_EVERY == 0:
                self._sub.scan(np, keys, self.m, self._scratch)

    def _step_compiled(self, kernel, params, grads, keys, b1, b2, step, eps_hat):
        """:meth:`step` as one compiled loop per array (``scratchvae/compiled.py``: the same
        operations, the same bits); an array it cannot take (not contiguous, mixed dtypes) gets
        the reference update.  The entries the last scan found near the subnormal range are
        updated inside the loop in float64 (x86 is as slow on subnormals compiled)."""
        import numpy as np

        from .compiled import adam_update_, scalars
        scal, near = {}, self._sub.idx                                 # per dtype, this step
        for k in keys:
            p, g, m, v = params[k], grads[k], self.m[k], self.v[k]
            s = scal.get(p.dtype)
            if s is None and p.dtype.kind == "f":
                s = scal[p.dtype] = scalars(p.dtype, b1, b2, step, eps_hat)
            idx = near.get(k)
            buf = self._sub.scratch(np, idx.size) if idx is not None else None
            if not adam_update_(kernel, p, g, m, v, b1, b2, step, eps_hat, s, idx, buf):
                _adam_update(p, g, m, v, b1, b2, step, eps_hat)
        if self.t % _SCAN_EVERY == 0:
            if self._scratch is None or self._scratch.dtype != np.float32:
                self._scratch = np.empty(_CHUNK, dtype=np.float32)
            self._sub.scan(np, keys, self.m, self._scratch)

    # --- checkpoints: flat dicts of arrays plus the step counter
    def state_dict(self) -> dict:
        out = {f"adam.m.{k}": v for k, v in self.m.items()}
        out.update({f"adam.v.{k}": v for k, v in self.v.items()})
        return out

    def load_state_dict(self, arrays: dict, t: int):
        for k in self.m:
            self.m[k] = self.b.asarray(arrays[f"adam.m.{k}"])
            self.v[k] = self.b.asarray(arrays[f"adam.v.{k}"])
        self.t = int(t)
        self._sub = _Subnormals()
