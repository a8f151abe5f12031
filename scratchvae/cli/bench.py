"""``python run.py bench``: ms per training step (forward, backward, Adam) of a model's bench
network -- for the VAE family the VaDE network 784-500-500-2000-J with a mirrored decoder --
at batch 256 in float32, against the time of just that step's matrix products (the GEMM floor),
both measured in the same run, with where the step's time goes, the BLAS library and its thread
count and the process's peak memory.  ``--threads N`` sets the BLAS threads (default: 1, see
RESULTS.md "Speed": on a shared machine two threads fighting for cores cost up to 5x).  The last
line printed is one JSON object."""
from __future__ import annotations

import json
import time

import numpy as np

from .options import explicit_options
from .registry import REGISTRY, entry


def blas_info(backend) -> dict:
    """Which BLAS the matrix products run on and with how many threads (NumPy backend)."""
    if backend.name != "numpy":
        return {"blas": backend.name}
    try:
        from threadpoolctl import threadpool_info
    except ImportError:  # pragma: no cover
        return {"blas": "unknown"}
    blas = [lib for lib in threadpool_info() if lib.get("user_api") == "blas"]
    # NumPy's own BLAS (SciPy may load a second copy; the models' products never use it)
    blas.sort(key=lambda lib: "numpy" not in str(lib.get("filepath", "")))
    if not blas:
        return {"blas": "unknown"}
    return {"blas": f"{blas[0].get('internal_api')} {blas[0].get('version')}",
            "blas_threads": blas[0].get("num_threads")}


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MiB; Linux reports KiB)."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def make_step(model, backend, B, seed=0):
    """(params, x, opt, step(i, parts)) for timing: ``step`` runs one training step exactly as
    the training loop does (inside the optimiser's workspace) and, given a dict ``parts``,
    adds the seconds of its gradient pass and of its Adam update to it."""
    from ..optim import Adam

    params = model.init_params(backend.rng("bench-init"))
    rng = np.random.default_rng(seed)
    x = backend.asarray((rng.random((B, model.cfg.D)) < 0.13).astype(np.float32))
    opt = Adam(backend, params)
    sync = _sync(backend)

    def one_step(i, parts=None):
        with backend.reusing(opt.ws):
            noise = model.sample_noise(backend.rng("bench", i), B)
            t0 = time.perf_counter()
            loss, grads, aux = model.loss_and_grads(params, x, noise)
            sync()
            t1 = time.perf_counter()
            opt.step(params, grads)
            sync()
            t2 = time.perf_counter()
            if hasattr(model, "post_step"):
                model.post_step(params, aux, i)
        if parts is not None:
            parts["grad"] += t1 - t0
            parts["adam"] += t2 - t1
        return loss

    return params, x, opt, one_step


def _sync(backend):
    if backend.name != "cupy":
        return lambda: None
    import cupy  # pragma: no cover - GPU only

    return cupy.cuda.Stream.null.synchronize  # pragma: no cover


def bench_step(model, backend, B, steps, seed=0, warmup=3):
    """Median ms per training step (forward, backward, Adam) and the GEMM floor of that step,
    with where the step's time goes.

    The floor: one step runs with ``nn.matmul`` recording its operands; their exact shapes and
    memory layouts (transposed views included) are then replayed on fresh arrays, timing only
    the products (``a @ b``: into preallocated outputs the replay measured 2-4 % slower, so the
    floor stays the lower of the two).  Both are medians over ``steps``
    repetitions in the same process.  Inside the real steps a timed ``nn.matmul`` hook and
    clocks around the gradient pass and the Adam update split each step into: matrix products
    (``gemm_in_step_ms``), Adam (``adam_ms``), the rest of the gradient pass -- elementwise
    work, reductions, Python (``elementwise_ms``) -- and everything else (noise, ``post_step``:
    ``other_ms``); each a median over the timed steps."""
    import statistics

    from .. import nn

    params, x, opt, one_step = make_step(model, backend, B, seed)
    sync = _sync(backend)
    rng = np.random.default_rng(seed + 1)
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
        one_step(i + 1)
        sync()
    # Steps and replays alternate in blocks of 5: not one by one (each would evict the other's
    # working set from the caches and inflate both) and not all steps then all replays (a shared
    # machine drifts in speed over seconds, which would bias the ratio).
    t_step, t_gemm, t_in, t_grad, t_adam = [], [], [], [], []
    acc = [0.0]

    def timed(a, b_, ws=None, tag=None):
        t = time.perf_counter()
        r = orig_matmul(a, b_, ws, tag)
        sync()
        acc[0] += time.perf_counter() - t
        return r

    block, i = 5, warmup + 1
    try:
        while len(t_step) < steps:
            for _ in range(block):
                nn.matmul, acc[0] = timed, 0.0
                parts = {"grad": 0.0, "adam": 0.0}
                t0 = time.perf_counter()
                one_step(i, parts)
                sync()
                t_step.append(time.perf_counter() - t0)
                nn.matmul = orig_matmul
                t_in.append(acc[0])
                t_grad.append(parts["grad"])
                t_adam.append(parts["adam"])
                i += 1
            for _ in range(block):
                t0 = time.perf_counter()
                for a, b_ in replay:       # fresh outputs: measured faster than buffers here
                    a @ b_
                sync()
                t_gemm.append(time.perf_counter() - t0)
    finally:
        nn.matmul = orig_matmul
    med = lambda v: 1e3 * statistics.median(v)  # noqa: E731
    ms, floor, in_step = med(t_step), med(t_gemm), med(t_in)
    elementwise = med([g - m for g, m in zip(t_grad, t_in)])
    other = med([s - g - a for s, g, a in zip(t_step, t_grad, t_adam)])
    n_params = sum(int(np.prod(v.shape)) for v in params.values())
    return {"ms_per_step": ms, "gemm_floor_ms": floor, "ratio": ms / floor,
            "gemm_in_step_ms": in_step, "ratio_in_step": ms / in_step,
            "adam_ms": med(t_adam), "elementwise_ms": elementwise, "other_ms": other,
            "n_matmuls": len(calls), "n_params": n_params,
            "workspace_mb": (opt.ws.nbytes() / 2**20) if opt.ws is not None else 0.0,
            "adam": adam_path(opt)}


def adam_path(opt) -> str:
    """Which Adam update the step ran: CuPy's fused kernel, the compiled loop (numba), or
    NumPy's chunked passes (see scratchvae/optim.py)."""
    if opt.b.name == "cupy":
        return "fused kernel"
    if opt.b.name != "numpy":
        return "array API"
    from ..compiled import adam_kernel, status
    if opt.compiled and adam_kernel() is not None:
        return f"compiled loop ({status()})"
    return f"NumPy passes ({'compiled loop ' + status() if opt.compiled else 'opt.compiled off'})"


def _threads(n):
    """``--threads N``: the BLAS thread count of the timed steps (NumPy backend)."""
    import contextlib

    if not n:
        return contextlib.nullcontext()
    from threadpoolctl import threadpool_limits

    return threadpool_limits(limits=int(n), user_api="blas")


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
        with _threads(getattr(args, "threads", None)):
            r = bench_step(est.model_, est.backend_, args.bench_batch, args.bench_steps)
            blas = blas_info(est.backend_)
        o = est.options
        last = {"model": name, "batch_size": args.bench_batch, "latent_dim": o.latent_dim,
                "hidden": list(o.hidden), **r, **blas, "peak_rss_mb": peak_rss_mb(),
                **est.backend_.describe()}
        print(_summary(last))
        if getattr(o, "elbo_encoder", None) == "held":   # what the recipe's ELBO stage runs
            from ..models.gmvae import HeldEncoder
            with _threads(getattr(args, "threads", None)):
                held = bench_step(HeldEncoder(est.model_), est.backend_, args.bench_batch,
                                  args.bench_steps)
            last["elbo_stage_codes_held"] = held
            print(_summary({**last, **held, "model": f"{name} ELBO stage, codes held"}))
        if name != names[-1]:
            print(json.dumps(last))
    return last


def _summary(r) -> str:
    """One human line: the ratio and where the step's time goes."""
    return (f"# {r['model']}: {r['ms_per_step']:.1f} ms/step = {r['ratio']:.2f}x its GEMM floor "
            f"({r['gemm_floor_ms']:.1f} ms); in the step: matrix products "
            f"{r['gemm_in_step_ms']:.1f}, Adam {r['adam_ms']:.1f} ({r.get('adam')}), elementwise "
            f"{r['elementwise_ms']:.1f}, other {r['other_ms']:.1f} ms; {r.get('blas')} "
            f"{r.get('blas_threads', '')} thread(s); peak RSS {r['peak_rss_mb']:.0f} MiB")
