"""How fast can Adam be on this machine?  The memory-traffic floor of one update, against ours.

    python scripts/adam_floor.py [--model vae] [--rounds 15] [--threads 1]

Adam reads every parameter, its gradient and both moments and writes the parameter and both
moments back: at least 7 x 4 bytes per float32 parameter per step, whatever does the arithmetic.
This prints, for the model's parameters (the VaDE 784-500-500-2000-10 network by default):

* ``ours``: ``optim.Adam.step`` as training runs it (NumPy passes over cache-sized chunks);
* ``stream``: the same bytes moved by the fastest one-pass NumPy kernels there are -- one
  ``np.add(a, b, out=c)`` per array pair, i.e. the machine's streaming bandwidth times Adam's
  traffic (a floor for any implementation, compiled or not);
* ``fused``: if numba is importable (it is not a dependency), one compiled loop over each array
  doing exactly Adam's float32 operations in order, checked to give ``ours``'s bits;
* the training step's matrix products (``bench``'s in-step GEMM time) and so the least step any
  Adam leaves, ``GEMM + stream``, as a ratio of the GEMM floor; and, if torch is importable, the
  PyTorch eager step of the same model timed alternately in this process, with the least ratio
  to it that ours could reach.

Medians over ``--rounds``, the variants alternating.  One BLAS thread by default.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _fused():
    """A numba loop doing :func:`scratchvae.optim._adam_update`'s float32 operations in the same
    order (no fastmath, so no reassociation or contraction), or None without numba."""
    try:
        from numba import njit
    except ImportError:
        return None

    @njit(fastmath=False, nogil=True, error_model="numpy")   # "python" checks every divide: scalar
    def adam(p, g, m, v, b1, omb1, b2, omb2, step, eps_hat):
        for i in range(p.size):
            gi = g[i]
            mi = m[i] * b1 + gi * omb1
            m[i] = mi
            vi = v[i] * b2 + (gi * gi) * omb2
            v[i] = vi
            p[i] = p[i] - (mi / (np.sqrt(vi) + eps_hat)) * step

    def run(params, grads, m, v, b1, b2, step, eps_hat):
        f = np.float32
        for k in params:
            adam(params[k].reshape(-1), grads[k].reshape(-1), m[k].reshape(-1),
                 v[k].reshape(-1), f(b1), f(1.0 - b1), f(b2), f(1.0 - b2), f(step), f(eps_hat))
    return run


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="vae", choices=("vae", "fullcov", "gmvae", "vqvae"))
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--peers", default="/work/shared/peers",
                    help="folder of the PyTorch peer's torch_models.py (only if torch imports)")
    args = ap.parse_args(argv)
    from threadpoolctl import threadpool_limits

    from scratchvae.cli.bench import bench_step
    from scratchvae.cli.registry import entry
    from scratchvae.optim import Adam

    e = entry(args.model)
    est = e.make({**e.bench({}), "dtype": "float32"})
    est._build(784)
    model, b = est.model_, est.backend_
    rng = np.random.default_rng(0)
    params = {k: v.copy() for k, v in model.init_params(b.rng("adam-floor")).items()}
    grads = {k: (rng.standard_normal(v.shape) * 1e-3).astype(np.float32)
             for k, v in params.items()}
    n = sum(v.size for v in params.values())
    opt = Adam(b, params)
    b1, b2 = opt.b1, opt.b2
    # stream: Adam's 4 reads + 3 writes per entry as 7/3 passes of c = a + b (2 reads, 1 write)
    big = max(v.size for v in params.values())
    a1, a2, a3 = (np.ones(big, np.float32) for _ in range(3))

    def stream():
        for v in params.values():
            s = v.size
            np.add(a1[:s], a2[:s], out=a3[:s])
            np.add(a2[:s], a3[:s], out=a1[:s])
        # 2 passes move 6 arrays' worth; the 7th as a third of a pass over all
        third = n // 3
        for i in range(0, third, big):
            j = min(third, i + big) - i
            np.add(a1[:j], a2[:j], out=a3[:j])

    fused = _fused()
    fm = {k: v.copy() for k, v in opt.m.items()}
    fv = {k: v.copy() for k, v in opt.v.items()}
    fp = {k: v.copy() for k, v in params.items()}
    import math

    def fused_step():
        t = opt.t                                  # ours has just taken step t: same scalars
        c1, c2 = 1.0 - b1 ** t, 1.0 - b2 ** t
        fused(fp, grads, fm, fv, b1, b2, opt.lr * math.sqrt(c2) / c1, opt.eps * math.sqrt(c2))

    times = {"ours": [], "stream": [], "fused": []}
    same = None
    with threadpool_limits(limits=args.threads, user_api="blas"):
        for r in range(args.rounds + 2):
            t0 = time.perf_counter()
            opt.step(params, grads)
            t1 = time.perf_counter()
            stream()
            t2 = time.perf_counter()
            if fused is not None:
                fused_step()
                t3 = time.perf_counter()
                if r == args.rounds + 1:             # both took the same steps: same bits?
                    same = all(np.array_equal(params[k].view(np.uint32), fp[k].view(np.uint32))
                               and np.array_equal(opt.m[k], fm[k])
                               and np.array_equal(opt.v[k], fv[k]) for k in params)
            if r >= 2:                              # two warm-up rounds (and numba's compile)
                times["ours"].append(t1 - t0)
                times["stream"].append(t2 - t1)
                if fused is not None:
                    times["fused"].append(t3 - t2)
        bs = bench_step(model, b, args.batch, steps=10)
    med = {k: 1e3 * statistics.median(v) for k, v in times.items() if v}
    gb = 7 * 4 * n / 1e9
    out = {"model": args.model, "n_params": n, "adam_bytes_gb": gb, "adam_ms": med["ours"],
           "stream_ms": med["stream"], "stream_gb_per_s": gb / (med["stream"] / 1e3),
           "fused_ms": med.get("fused"), "fused_same_bits": same,
           "gemm_in_step_ms": bs["gemm_in_step_ms"], "gemm_floor_ms": bs["gemm_floor_ms"],
           "step_ms": bs["ms_per_step"], "threads": args.threads}
    least = bs["gemm_in_step_ms"] + med["stream"]
    out["least_step_ms"] = least
    out["least_ratio_to_floor"] = least / bs["gemm_floor_ms"]
    print(f"# {args.model}: {n} parameters, Adam moves >= {gb * 1e3:.1f} MB per step; ours "
          f"{med['ours']:.2f} ms, the same bytes streamed {med['stream']:.2f} ms "
          f"({out['stream_gb_per_s']:.1f} GB/s)"
          + ("" if fused is None else f", numba one-pass {med['fused']:.2f} ms "
             f"(same bits: {same})"))
    print(f"# step {bs['ms_per_step']:.1f} ms, its products {bs['gemm_in_step_ms']:.1f} ms (floor "
          f"{bs['gemm_floor_ms']:.1f}); the least step any Adam leaves: {least:.1f} ms = "
          f"{out['least_ratio_to_floor']:.2f}x the floor, with nothing else in the step")
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        sys.path.insert(0, str(ROOT / "scripts"))
        from vs_torch import compare
        torch.set_num_threads(args.threads)
        with threadpool_limits(limits=args.threads, user_api="blas"), np.errstate(all="ignore"):
            c = compare(args.model, args.batch, 6, args.peers)
        out.update(torch_ms=c["torch_ms"], ours_vs_torch=c["ratio"],
                   least_vs_torch=least / c["torch_ms"])
        print(f"# torch eager {c['torch_ms']:.1f} ms, ours {c['ours_ms']:.1f} ms = "
              f"{c['ratio']:.2f}x; the least step above = {out['least_vs_torch']:.2f}x torch")
    print(json.dumps(out))


if __name__ == "__main__":
    main()
