"""Floor 3: likelihoods p(x|z), each a forward/backward pair on the decoder output ``out``.

    :class:`Bernoulli`  (logits)                 [00-backprop.md#bernoulli]
    :class:`Gaussian`   (mean, log-variance)     [00-backprop.md#gaussian]

``loglik(b, x, out) -> (ll (S, B), cache)`` sums over the D data dimensions;
``backward(b, dll, cache) -> dout`` has the shape of ``out``; ``mean(b, out)`` is E[x|z].
"""
from __future__ import annotations

import math
from typing import NamedTuple

LOG2PI = math.log(2.0 * math.pi)


class BernoulliCache(NamedTuple):
    x: object      # data (B, D)
    out: object    # logits (S, B, D)


class Bernoulli:
    """x_i ~ Bernoulli(sigmoid(l_i)), parameterised by logits l (never by probabilities).

    log p(x|l) = sum_i x_i l_i - softplus(l_i)    (stable for |l| up to 1e4 and beyond)
    d/dl_i     = x_i - sigmoid(l_i)               [00-backprop.md#bernoulli]
    """

    name = "bernoulli"

    def n_out(self, D: int) -> int:
        return D

    def loglik(self, b, x, out):
        """x (B, D), out (S, B, D) logits -> ll (S, B), cache."""
        xp = b.xp
        if b.ws is not None:                           # inside a training step: buffers
            return self._loglik_into(b.ws, xp, x, out), BernoulliCache(x, out)
        e = xp.exp(-xp.abs(out))                       # in (0, 1]: no overflow anywhere
        softplus = xp.maximum(out, 0.0) + xp.log1p(e)  # log(1 + e^l)
        # (B.7.1), (M.11): log p(x|z) of (M.1) as x l - softplus(l), never through sigmoid(l)
        ll = xp.sum(x * out - softplus, axis=-1)
        return ll, BernoulliCache(x, out)

    def _loglik_into(self, ws, xp, x, out):
        """:meth:`loglik`'s sum with every temporary in ``ws``: the same operations, the same
        bits (``tests/test_speed.py``), one kernel on CuPy.  One shortcut, exact: where
        e = e^-|l| is subnormal (|l| > 87 in float32: a confident pixel, e.g. an MNIST border)
        log1p(e) = e exactly (checked for every float32 subnormal), and log1p of a subnormal
        costs ~60x a normal one on x86 (a microcode assist).  So log1p runs on e with its
        subnormals zeroed (e0, by an integer mask on the bits: no float arithmetic on them), and
        log1p(e) = log1p(e0) + (e - e0): + 0 where e is normal, 0 + e where it is subnormal."""
        if ws.fused is not None:
            return xp.sum(ws.fused.bernoulli_term(x, out), axis=-1)
        np_, buf = ws.np, (lambda tag, dt=out.dtype: ws.buf(tag, out.shape, dt))
        e = np_.abs(out, out=buf("lik.e"))
        np_.exp(np_.negative(e, out=e), out=e)                              # e^-|l|, in [0, 1]
        tiny = xp.finfo(e.dtype).smallest_normal
        if not np_.min(e) < tiny:                           # no subnormal: log1p as it is
            lp = np_.log1p(e, out=buf("lik.lp"))
        else:
            ints = np_.dtype(f"i{e.itemsize}")              # e >= 0: its bits order as ints
            normal = np_.greater_equal(e.view(ints), np_.asarray(tiny).view(ints),
                                       out=buf("lik.normal", bool))
            e0 = buf("lik.e0")
            e0 = np_.multiply(e.view(ints), normal, out=None if e0 is None else e0.view(ints))
            e0 = e0.view(e.dtype)                           # e0: e with its subnormals -> 0
            lp = np_.log1p(e0, out=buf("lik.lp"))
            lp += np_.subtract(e, e0, out=e0)              # = log1p(e), bit for bit
        sp = np_.add(np_.maximum(out, 0.0, out=buf("lik.e0")), lp, out=lp)   # softplus(l)
        t = np_.multiply(x, out, out=e)
        return xp.sum(np_.subtract(t, sp, out=t), axis=-1)   # (B.7.1): x l - softplus(l)

    def backward(self, b, dll, cache: BernoulliCache):
        """dll (S, B) -> dout (S, B, D)."""
        ws = b.ws
        if ws is not None and ws.fused is not None:         # the same arithmetic, one kernel
            return ws.fused.bernoulli_backward(dll, cache.x, cache.out)
        if ws is not None:                                  # the same operations, in a buffer
            np_ = ws.np
            s = np_.negative(cache.out, out=ws.buf("lik.dout", cache.out.shape, cache.out.dtype))
            with np_.errstate(over="ignore"):               # e^-l = inf -> sigmoid 0, as b.sigmoid
                np_.exp(s, out=s)
            s += 1.0
            np_.divide(1.0, s, out=s)                      # sigmoid(l) = 1 / (1 + e^-l)
            return np_.multiply(dll[..., None], np_.subtract(cache.x, s, out=s), out=s)
        return dll[..., None] * (cache.x - b.sigmoid(cache.out))   # (B.7.2)

    def mean(self, b, out):
        return b.sigmoid(out)


class GaussianCache(NamedTuple):
    diff: object   # x - mu_x (S, B, D)
    prec: object   # exp(-logvar_x) (S, B, D)
    r: object      # raw log-variance outputs (S, B, D), before the floor


class Gaussian:
    """x ~ N(mu_x, diag(exp(logvar_x))) with [mu_x; r] = decoder output (the assignment's §3 item 3b).

    To keep the likelihood bounded on pixels that never vary, the log-variance has a smooth
    floor: logvar = lo + softplus(r - lo), lo = log(var_min).  (``var_min=0`` disables it.)

    log p(x) = -1/2 sum_i [log 2pi + logvar_i + (x_i - mu_i)^2 exp(-logvar_i)]
    d/dmu_i      = (x_i - mu_i) exp(-logvar_i)
    d/dlogvar_i  = -1/2 + 1/2 (x_i - mu_i)^2 exp(-logvar_i)
    d logvar/dr  = sigmoid(r - lo)                            [00-backprop.md#gaussian]
    """

    name = "gaussian"

    def __init__(self, var_min: float = 1e-3):
        self.var_min = float(var_min)
        self.lo = math.log(self.var_min) if self.var_min > 0 else None

    def n_out(self, D: int) -> int:
        return 2 * D

    def _logvar(self, b, r):
        if self.lo is None:
            return r
        return self.lo + b.softplus(r - self.lo)                  # (B.8.1): the smooth floor

    def loglik(self, b, x, out):
        """x (B, D), out (S, B, 2D) = [mu_x | r] -> ll (S, B), cache."""
        xp = b.xp
        D = out.shape[-1] // 2
        mu, r = out[..., :D], out[..., D:]
        logvar = self._logvar(b, r)
        prec = xp.exp(-logvar)
        diff = x - mu
        # (B.8.2), (M.18): log p(x|z) of (M.1) for real-valued x
        ll = -0.5 * xp.sum(LOG2PI + logvar + diff * diff * prec, axis=-1)
        return ll, GaussianCache(diff, prec, r)

    def backward(self, b, dll, cache: GaussianCache):
        """dll (S, B) -> dout (S, B, 2D) = [dmu_x | dr]."""
        xp = b.xp
        diff, prec, r = cache
        g = dll[..., None]
        # (B.8.3) (and the gradients under (M.18))
        dmu = g * diff * prec
        dlogvar = g * (0.5 * diff * diff * prec - 0.5)
        if self.lo is not None:
            dlogvar = dlogvar * b.sigmoid(r - self.lo)
        return xp.concat([dmu, dlogvar], axis=-1)

    def mean(self, b, out):
        return out[..., : out.shape[-1] // 2]


LIKELIHOODS = {"bernoulli": Bernoulli, "gaussian": Gaussian}


def make_likelihood(name: str):
    if name not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {name!r}; choose one of {', '.join(LIKELIHOODS)}")
    return LIKELIHOODS[name]()
