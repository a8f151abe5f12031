"""Adam (Kingma & Ba, 2015) by hand, with bias correction, on flat parameter dicts.

    m_t = b1 m_{t-1} + (1 - b1) g_t
    v_t = b2 v_{t-1} + (1 - b2) g_t^2
    p_t = p_{t-1} - lr * sqrt(1 - b2^t) / (1 - b1^t) * m_t / (sqrt(v_t) + eps_hat)

The bias corrections are folded into one scalar step size; ``eps_hat = eps * sqrt(1 - b2^t)``
keeps the update identical to the textbook form m_hat / (sqrt(v_hat) + eps).

Speed.  Adam is pure memory traffic: a dozen elementwise passes over every parameter.  On NumPy
the update runs over cache-sized chunks of each array, so each array is read from and written to
DRAM once and the dozen passes hit L2, and every pass writes into one preallocated scratch
chunk (``out=``): no temporaries, so no allocation or page fault per step.  On CuPy the whole
update is one fused kernel per array (``scratchvae/fused.py``); on array-api-strict it is the
reference :func:`_adam_update` on whole arrays.  All three do the same operations in the same
order, so they give the same bits (``tests/test_speed.py``).  (Threads over chunks were
measured and gave nothing on the 2-core machine: the passes are bandwidth-bound.)
"""
from __future__ import annotations

import math

_CHUNK = 1 << 16   # elements per chunk (256 KiB of float32): best of 2^13..2^17, measured


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


class Adam:
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
        self._scratch = None
        # the buffers of the training step this optimiser drives (backend.Workspace; None on
        # strict): the loop runs each step inside ``b.reusing(opt.ws)``
        self.ws = b.workspace()

    def step(self, params: dict, grads: dict, lr: float | None = None, keys=None):
        """One in-place update of ``params`` (only ``keys`` if given)."""
        self.t += 1
        lr = self.lr if lr is None else float(lr)
        c1 = 1.0 - self.b1 ** self.t
        c2 = 1.0 - self.b2 ** self.t
        step = lr * math.sqrt(c2) / c1
        eps_hat = self.eps * math.sqrt(c2)
        keys = list(grads.keys() if keys is None else keys)
        if self.b.name == "cupy" and self.inplace:  # pragma: no cover - GPU only
            from .fused import adam_update_
            for k in keys:
                adam_update_(params[k], grads[k], self.m[k], self.v[k], self.b1, self.b2, step,
                             eps_hat)
            return
        if not self.chunked:
            for k in keys:
                _adam_update(params[k], grads[k], self.m[k], self.v[k], self.b1, self.b2, step, eps_hat)
            return
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
                _adam_update(*it, self.b1, self.b2, step, eps_hat)
            return
        import numpy as np
        n = max((int(it[0].size) for it in work), default=0)
        dt = work[0][0].dtype if work else None
        if self._scratch is None or self._scratch.size < n or self._scratch.dtype != dt:
            self._scratch = np.empty(n, dtype=dt)   # one chunk, reused by every step
        for p, g, m, v in work:
            t = self._scratch[:p.size].reshape(p.shape)
            _adam_update_into(np, p, g, m, v, self.b1, self.b2, step, eps_hat, t)

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
