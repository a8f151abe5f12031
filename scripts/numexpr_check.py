"""Would numexpr (one pass per expression, no temporaries) beat NumPy on the hot elementwise
chains?  A measurement, not part of scratchvae (numexpr is not a dependency; RESULTS.md "Speed").

    pip install numexpr && OPENBLAS_NUM_THREADS=1 python scripts/numexpr_check.py [--rounds 5]

For Adam (the VAE bench network's 3.39 M float32 parameters) it runs the optimiser's chunked
in-place update and the same update as three numexpr evaluations per array (m, v, then p, in
place, the scalars as float32 0-d arrays so nothing is upcast), alternating, and checks that
both give the same bits; then the ReLU backward (dy * 1[y > 0], (256, 2000)) both ways.  One
numexpr thread (``numexpr.set_num_threads(1)``), as the BLAS.  Prints medians in ms.
"""
from __future__ import annotations

import argparse
import pathlib
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numexpr as ne  # noqa: E402

from scratchvae.backend import Backend  # noqa: E402
from scratchvae.optim import Adam  # noqa: E402

SHAPES = [(784, 500), (500,), (500, 500), (500,), (500, 2000), (2000,), (2000, 10), (10,),
          (2000, 10), (10,), (10, 2000), (2000,), (2000, 500), (500,), (500, 500), (500,),
          (500, 784), (784,)]


class NumexprAdam(Adam):
    """The same update, three numexpr passes per array."""

    def step(self, params, grads, lr=None, keys=None):
        import math

        self.t += 1
        c1, c2 = 1.0 - self.b1 ** self.t, 1.0 - self.b2 ** self.t
        step = self.lr * math.sqrt(c2) / c1
        eps_hat = self.eps * math.sqrt(c2)
        for k in grads:
            p, g, m, v = params[k], grads[k], self.m[k], self.v[k]
            B1, C1, B2, C2, S, E = (np.asarray(x, dtype=p.dtype) for x in (
                self.b1, 1.0 - self.b1, self.b2, 1.0 - self.b2, step, eps_hat))
            ne.evaluate("m * B1 + C1 * g", out=m, casting="same_kind")
            ne.evaluate("v * B2 + C2 * (g * g)", out=v, casting="same_kind")
            ne.evaluate("p - (m / (sqrt(v) + E)) * S", out=p, casting="same_kind")


def med_ms(f, n):
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        f()
        ts.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(ts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    ne.set_num_threads(1)
    rng = np.random.default_rng(0)
    b = Backend("numpy", "float32")
    p0 = {f"p{i}": (0.05 * rng.standard_normal(s)).astype(np.float32) for i, s in enumerate(SHAPES)}
    twins = [{k: v.copy() for k, v in p0.items()} for _ in range(2)]
    opts = [Adam(b, twins[0]), NumexprAdam(b, twins[1])]
    for _ in range(5):                        # mixed magnitudes, then compare every bit
        g = {k: (rng.standard_normal(v.shape) * 10.0 ** rng.integers(-8, 1)).astype(np.float32)
             for k, v in p0.items()}
        for o, p in zip(opts, twins):
            o.step(p, g)
    same = all(np.array_equal(twins[0][k], twins[1][k]) and np.array_equal(opts[0].m[k], opts[1].m[k])
               and np.array_equal(opts[0].v[k], opts[1].v[k]) for k in p0)
    res = {"numpy": [], "numexpr": []}
    for _ in range(a.rounds):
        for name, o, p in zip(res, opts, twins):
            res[name].append(med_ms(lambda: o.step(p, g), 5))
    n = sum(v.size for v in p0.values())
    print(f"Adam, {n} float32 parameters: same bits: {same}; ms per update (medians of "
          f"{a.rounds} rounds): numpy chunked {statistics.median(res['numpy']):.2f}, numexpr "
          f"{statistics.median(res['numexpr']):.2f}")
    y = np.maximum(rng.standard_normal((256, 2000)).astype(np.float32), 0)
    dy0 = rng.standard_normal((256, 2000)).astype(np.float32)
    dy1, dy2, mask = dy0.copy(), dy0.copy(), np.empty(y.shape, bool)

    def np_relu():
        np.multiply(dy1, np.greater(y, 0, out=mask), out=dy1)

    zero = np.asarray(0, np.float32)
    env = {"y": y, "dy2": dy2, "zero": zero}
    relu = {"numpy": [], "numexpr": []}
    for _ in range(a.rounds):
        relu["numpy"].append(med_ms(np_relu, 20))
        relu["numexpr"].append(med_ms(lambda: ne.evaluate(
            "where(y > zero, dy2, dy2 * zero)", local_dict=env, out=dy2, casting="same_kind"), 20))
    np_relu()
    ne.evaluate("where(y > zero, dy2, dy2 * zero)", out=dy2, casting="same_kind")
    print(f"ReLU backward (256, 2000): numpy {statistics.median(relu['numpy']):.3f} ms, numexpr "
          f"{statistics.median(relu['numexpr']):.3f} ms")
    # the Bernoulli term x l - softplus(l): numexpr's exp / log1p are not NumPy's (SIMD) ones
    x = (rng.random((128, 784)) < 0.3).astype(np.float32)
    lg = (8 * rng.standard_normal((128, 784))).astype(np.float32)
    ref = x * lg - (np.maximum(lg, 0) + np.log1p(np.exp(-np.abs(lg))))
    new = ne.evaluate("x * lg - (where(lg > zero, lg, zero) + log1p(exp(-abs(lg))))")
    print(f"Bernoulli term (128, 784): dtype {new.dtype}, same bits as NumPy: "
          f"{np.array_equal(ref, new)} ({int((ref != new).sum())} of {ref.size} differ)")


if __name__ == "__main__":
    main()
