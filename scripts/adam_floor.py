"""How fast can Adam be on this machine?  The memory-traffic floor of one update, against ours.

    python scripts/adam_floor.py [--model vae] [--rounds 15] [--threads 1]

Adam reads every parameter, its gradient and both moments and writes the parameter and both
moments back: at least 7 x 4 bytes per float32 parameter per step, whatever does the arithmetic.
This prints, for the model's parameters (the VaDE 784-500-500-2000-10 network by default):

* ``passes``: ``optim.Adam.step`` as training runs it without numba (NumPy passes over
  cache-sized chunks);
* ``compiled``: the same with numba installed (one compiled loop per array,
  ``scratchvae/compiled.py``), checked to give the passes' bits;
* ``stream``: the same bytes moved by the fastest one-pass NumPy kernel there is,
  ``np.add(a, b, out=c)`` (2 reads, 1 write) over each array: the machine's streaming bandwidth
  times Adam's traffic, a floor for any implementation;
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
    from scratchvae.compiled import adam_kernel
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
    twin = {k: v.copy() for k, v in params.items()}
    opt, opt2 = Adam(b, params), Adam(b, twin)
    opt.compiled = False                                # the NumPy passes
    has_kernel = adam_kernel() is not None              # opt2: the compiled loop, if numba
    # stream: Adam's 4 reads + 3 writes per entry as 7/3 passes of c = a + b (2 reads, 1 write)
    big = max(v.size for v in params.values())
    a1, a2, a3 = (np.ones(big, np.float32) for _ in range(3))

    def stream():
        for v in params.values():
            s = v.size
            np.add(a1[:s], a2[:s], out=a3[:s])
            np.add(a2[:s], a3[:s], out=a1[:s])
        third = n // 3                    # 2 passes moved 6 arrays' worth; the 7th: n/3 more
        for i in range(0, third, big):
            j = min(third, i + big) - i
            np.add(a1[:j], a2[:j], out=a3[:j])

    times = {"passes": [], "stream": [], "compiled": []}
    with threadpool_limits(limits=args.threads, user_api="blas"):
        for r in range(args.rounds + 2):
            t0 = time.perf_counter()
            opt.step(params, grads)
            t1 = time.perf_counter()
            stream()
            t2 = time.perf_counter()
            if has_kernel:
                opt2.step(twin, grads)
                t3 = time.perf_counter()
            if r >= 2:                              # two warm-up rounds (and numba's compile)
                times["passes"].append(t1 - t0)
                times["stream"].append(t2 - t1)
                if has_kernel:
                    times["compiled"].append(t3 - t2)
        bs = bench_step(model, b, args.batch, steps=10)
    med = {k: 1e3 * statistics.median(v) for k, v in times.items() if v}
    same = has_kernel and all(np.array_equal(params[k], twin[k]) and np.array_equal(
        opt.m[k], opt2.m[k]) and np.array_equal(opt.v[k], opt2.v[k]) for k in params)
    gb = 7 * 4 * n / 1e9
    out = {"model": args.model, "n_params": n, "adam_bytes_gb": gb, "passes_ms": med["passes"],
           "stream_ms": med["stream"], "stream_gb_per_s": gb / (med["stream"] / 1e3),
           "compiled_ms": med.get("compiled"), "compiled_same_bits": same,
           "gemm_in_step_ms": bs["gemm_in_step_ms"], "gemm_floor_ms": bs["gemm_floor_ms"],
           "step_ms": bs["ms_per_step"], "threads": args.threads}
    least = bs["gemm_in_step_ms"] + med["stream"]
    out["least_step_ms"] = least
    out["least_ratio_to_floor"] = least / bs["gemm_floor_ms"]
    print(f"# {args.model}: {n} parameters, Adam moves >= {gb * 1e3:.1f} MB per step; NumPy "
          f"passes {med['passes']:.2f} ms, "
          + ("numba not installed" if not has_kernel else
             f"compiled loop {med['compiled']:.2f} ms (same bits: {same})")
          + f"; the same bytes streamed {med['stream']:.2f} ms "
          f"({out['stream_gb_per_s']:.1f} GB/s)")
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
