"""A memory estimate made before anything is allocated, so that an absurd model size (a typo in
``--hidden``, ``--iwae-k``, ``--batch-size``) is refused in one sentence instead of swapping the
machine or dying with a MemoryError half-way through."""

from __future__ import annotations

import dataclasses

from ..errors import UsageError
from ..nn import MLP
from ..options import plain


class _Shape:
    """A stand-in backend: models are built (their layer sizes known) without allocating any
    array."""

    def __init__(self, dtype):
        self.name, self.dtype_name = "shape", dtype


def free_bytes():
    """MemAvailable from /proc/meminfo (Linux), or None where it cannot be read."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def check_memory(est, D: int, batch: int | None = None):
    """Estimate the bytes ``est`` needs on ``D`` features (parameters with Adam's two moments,
    and the widest activations of a batch, or of one row's ``iwae_k`` samples, kept for the
    backward pass) and raise :class:`UsageError` when that exceeds the free memory."""
    free = free_bytes()
    if free is None:
        return
    o = est.options
    cfg = est.model_config(D) if est._fitted() else {
        "D": int(D), **{f.name: plain(getattr(o, f.name))
                        for f in dataclasses.fields(est.config_class) if f.name != "D"}}
    cfg["hidden"] = tuple(cfg.get("hidden", ()))
    try:
        model = est.model_class(est.config_class(**cfg), _Shape(o.dtype))
    except ValueError as exc:
        raise UsageError(str(exc)) from exc
    mlps = [m for m in vars(model).values() if isinstance(m, MLP)]
    n_params = sum(fi * fo + fo for m in mlps for fi, fo in zip(m.sizes[:-1], m.sizes[1:]))
    widest = max(max(m.sizes) for m in mlps)
    depth = sum(len(m.sizes) for m in mlps)
    rows = int(batch or o.batch_size) * int(getattr(o, "n_samples", 1))
    rows = max(rows, int(getattr(o, "iwae_k", 1)))
    need = (4 * n_params + 2 * rows * widest * depth) * (8 if o.dtype == "float64" else 4)
    if need > free:
        raise UsageError(
            f"this model would need about {need / 2**30:.1f} GiB ({n_params:.3g} parameters; "
            f"{rows:.3g} rows of width {widest:.3g} at once) but {free / 2**30:.1f} GiB are "
            "free; use smaller hidden (--hidden), n_samples (--samples), iwae_k (--iwae-k) or "
            "batch_size (--batch-size)")
