"""scratchvae's training step against the PyTorch eager peer, timed in the same process.

    /tmp/torchvenv/bin/python scripts/vs_torch.py [--model all] [--batch 256] [--threads 1]
        [--blocks 12] [--peers /work/shared/peers]

Torch is never a dependency of scratchvae: run this with an environment that has both, e.g.

    python -m venv /tmp/torchvenv
    /tmp/torchvenv/bin/pip install torch --index-url https://download.pytorch.org/whl/cpu
    /tmp/torchvenv/bin/pip install -e .

For each model the two steps (forward, backward, Adam; batch ``--batch``, float32, the same
network: the VaDE 784-500-500-2000-10 for vae/fullcov/gmvae, 784-500-500-16 with K=64 codes
for vqvae) alternate in blocks of 5 for ``--blocks`` blocks each, after a warm-up, so that a
shared machine's drift hits both alike; each is the median over its steps.  Both run with
``--threads`` BLAS / intra-op threads (NumPy's BLAS via threadpoolctl, torch.set_num_threads).
The peer models are ``torch_models.py`` in ``--peers``.  Prints one line per model and a JSON
object per model: ours_ms, torch_ms, ratio = ours / torch.
"""
from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def ours(name, B):
    from scratchvae.cli.bench import make_step
    from scratchvae.cli.registry import entry

    e = entry(name)
    est = e.make({**e.bench({}), "dtype": "float32"})
    est._build(784)
    _, _, _, step = make_step(est.model_, est.backend_, B)
    return step


def peer(name, B, peers):
    import torch

    sys.path.insert(0, str(peers))
    from torch_models import MODELS

    torch.manual_seed(0)
    model = MODELS[name]()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    x = (torch.rand(B, 784) < 0.13).float()

    def step(i):
        opt.zero_grad(set_to_none=True)
        loss = model.loss(x)
        loss.backward()
        opt.step()
        return loss

    return step


def compare(name, B, blocks, peers, warmup=5, block=5):
    a, b = ours(name, B), peer(name, B, peers)
    for i in range(warmup):
        a(i), b(i)
    ta, tb, i = [], [], warmup
    for _ in range(blocks):
        for f, t in ((a, ta), (b, tb)):
            for _ in range(block):
                t0 = time.perf_counter()
                f(i)
                t.append(time.perf_counter() - t0)
                i += 1
    ms_a, ms_b = 1e3 * statistics.median(ta), 1e3 * statistics.median(tb)
    return {"model": name, "batch": B, "ours_ms": ms_a, "torch_ms": ms_b, "ratio": ms_a / ms_b,
            "steps_each": len(ta)}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="all", choices=("all", "vae", "fullcov", "gmvae", "vqvae"))
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--blocks", type=int, default=12)
    p.add_argument("--peers", default="/work/shared/peers")
    args = p.parse_args(argv)
    import numpy as np
    import torch
    from threadpoolctl import threadpool_limits

    torch.set_num_threads(args.threads)
    names = ("vae", "fullcov", "gmvae", "vqvae") if args.model == "all" else (args.model,)
    with threadpool_limits(limits=args.threads, user_api="blas"), np.errstate(all="ignore"):
        for name in names:
            r = compare(name, args.batch, args.blocks, args.peers)
            import scratchvae
            r.update(threads=args.threads, torch=torch.__version__, numpy=np.__version__,
                     scratchvae=scratchvae.__file__)
            print(f"# {name}: scratchvae {r['ours_ms']:.1f} ms, torch {r['torch_ms']:.1f} ms, "
                  f"ratio {r['ratio']:.2f} ({args.threads} thread(s), batch {args.batch}, "
                  f"{r['steps_each']} steps each)")
            print(json.dumps(r))


if __name__ == "__main__":
    main()
