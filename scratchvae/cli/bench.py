"""``python run.py bench``: ms per training step (forward, backward, Adam) of a model's bench
network -- for the VAE family the VaDE network 784-500-500-2000-J with a mirrored decoder --
at batch 256 in float32, against the time of just that step's matrix products (the GEMM floor),
both measured in the same run.  The last line printed is one JSON object."""
from __future__ import annotations

import json
import time

import numpy as np

from .options import explicit_options
from .registry import REGISTRY, entry


def bench_step(model, backend, B, steps, seed=0, warmup=3):
    """Median ms per training step (forward, backward, Adam) and the GEMM floor of that step.

    The floor: one step runs with ``nn.matmul`` recording its operands; their exact shapes and
    memory layouts (transposed views included) are then replayed on fresh arrays, timing only
    the products.  Both are medians over ``steps`` repetitions in the same process."""
    import statistics

    from .. import nn
    from ..optim import Adam

    params = model.init_params(backend.rng("bench-init"))
    rng = np.random.default_rng(seed)
    x = backend.asarray((rng.random((B, model.cfg.D)) < 0.13).astype(np.float32))
    opt = Adam(backend, params)

    def sync(a):
        if backend.name == "cupy":  # pragma: no cover - GPU only
            import cupy

            cupy.cuda.Stream.null.synchronize()

    def one_step(i):
        noise = model.sample_noise(backend.rng("bench", i), B)
        loss, grads, aux = model.loss_and_grads(params, x, noise)
        opt.step(params, grads)
        if hasattr(model, "post_step"):
            model.post_step(params, aux, i)
        return loss

    orig_matmul = nn.matmul
    nn._MatmulRecorder.active, nn._MatmulRecorder.calls = True, []
    one_step(0)
    nn._MatmulRecorder.active = False
    calls = nn._MatmulRecorder.calls
    nn._MatmulRecorder.calls = []
    def fresh(arr):
        """A new array of the same shape and layout (a transposed view stays transposed)."""
        shape = tuple(arr.shape)
        flags = getattr(arr, "flags", None)
        if len(shape) == 2 and flags is not None and not flags.c_contiguous:
            return backend.asarray(rng.standard_normal(shape[::-1])).T
        return backend.asarray(rng.standard_normal(shape))

    replay = [(fresh(a), fresh(b_)) for a, b_ in calls]
    for i in range(warmup):
        sync(one_step(i + 1))
    # Steps and replays alternate in blocks of 5: not one by one (each would evict the other's
    # working set from the caches and inflate both) and not all steps then all replays (a shared
    # machine drifts in speed over seconds, which would bias the ratio).  A timed matmul hook
    # also measures the products inside the real steps ("gemm_in_step_ms").
    t_step, t_gemm, t_in = [], [], []
    acc = [0.0]

    def timed(a, b_):
        t = time.perf_counter()
        r = a @ b_
        sync(r)
        acc[0] += time.perf_counter() - t
        return r

    block, i = 5, warmup + 1
    while len(t_step) < steps:
        for _ in range(block):
            nn.matmul, acc[0] = timed, 0.0
            t0 = time.perf_counter()
            sync(one_step(i))
            t_step.append(time.perf_counter() - t0)
            nn.matmul = orig_matmul
            t_in.append(acc[0])
            i += 1
        for _ in range(block):
            t0 = time.perf_counter()
            for a, b_ in replay:
                a @ b_
            sync(None)
            t_gemm.append(time.perf_counter() - t0)
    ms, floor = 1e3 * statistics.median(t_step), 1e3 * statistics.median(t_gemm)
    in_step = 1e3 * statistics.median(t_in)
    n_params = sum(int(np.prod(v.shape)) for v in params.values())
    return {"ms_per_step": ms, "gemm_floor_ms": floor, "ratio": ms / floor,
            "gemm_in_step_ms": in_step, "ratio_in_step": ms / in_step,
            "n_matmuls": len(calls), "n_params": n_params}


def main(args) -> dict:
    names = tuple(REGISTRY) if args.model == "all" else (args.model or "vae",)
    explicit = explicit_options(args)
    last = None
    for name in names:
        e = entry(name)
        runtime = {"dtype": "float32", **{k: explicit[k] for k in ("backend", "dtype",
                                                                   "random_state") if k in explicit}}
        est = e.make({**e.bench(explicit), **runtime})
        est.check_memory(784, batch=args.bench_batch)
        est._build(784)
        r = bench_step(est.model_, est.backend_, args.bench_batch, args.bench_steps)
        o = est.options
        last = {"model": name, "batch_size": args.bench_batch, "latent_dim": o.latent_dim,
                "hidden": list(o.hidden), **r, **est.backend_.describe()}
        if name != names[-1]:
            print(json.dumps(last))
    return last
