"""Floor 5: the training loop and checkpoints.

* Minibatches are gathered on the device (``take`` with a device index array); the epoch's
  permutation comes from ``backend.rng("epoch", e)`` and each step's noise from
  ``backend.rng("step", t)``.  Same seed, same backend: identical parameters; and a run resumed
  from a checkpoint at step ``t`` continues exactly as if it had never stopped.
* No host synchronisation per step: losses are summed on the device and read every
  ``log_every`` steps (for the progress bar) and once per epoch (for the history).
* Checkpoints are ``.npz`` files (parameters, Adam state, step, config as JSON), written to a
  temporary file and renamed into place, read back with ``allow_pickle=False``.
"""
from __future__ import annotations

import json
import math
import os
import tempfile
from dataclasses import dataclass

import numpy as np

from .errors import ScratchVAEError
from .optim import Adam


class CheckpointError(ScratchVAEError):
    """A checkpoint is missing, unreadable or does not fit the model it is loaded into."""


@dataclass
class TrainConfig:
    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    lr_decay: float = 1.0        # lr multiplied by this every ``decay_every`` epochs
    decay_every: int = 10
    log_every: int = 25
    checkpoint_every: int = 0    # epochs; 0 = only at the end

    def lr_at(self, epoch: int) -> float:
        return self.lr * self.lr_decay ** (epoch // max(1, self.decay_every))


def _progress(total, desc, enabled):
    if not enabled:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        return None
    return tqdm(total=total, desc=desc, leave=False, dynamic_ncols=True)


def blas_limit(b, params, batch_size):
    """A context that runs small problems on one BLAS thread.

    Multi-threaded BLAS only pays when each product is large; for the small networks of the
    bundled digits, thread start-up and spin-waiting dominate, and on a busy machine they make a
    step several times slower (measured: 22 ms with one thread vs 120 ms with two, for a
    64-256-256-10 GMVAE at batch 128 on a loaded 2-core machine).  Rule: one thread when a
    step's multiply-adds (~ 3 x batch x parameters) are below 1e8.  NumPy backend only."""
    import contextlib

    if b.name != "numpy":
        return contextlib.nullcontext()
    n_params = sum(int(np.prod(v.shape)) for v in params.values())
    if 3 * batch_size * n_params >= 1e8:
        return contextlib.nullcontext()
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:  # pragma: no cover
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def fit(model, params, X, tcfg: TrainConfig, **kw):
    """Train ``model`` on device array ``X`` (N, D); see :func:`_fit`.  This wrapper picks the
    BLAS thread count for the problem size and, on NumPy, silences floating-point warnings:
    a diverging run is reported once, by the finite-loss check at the end of each epoch."""
    import contextlib

    quiet = np.errstate(all="ignore") if model.b.name == "numpy" else contextlib.nullcontext()
    with blas_limit(model.b, params, tcfg.batch_size), quiet:
        return _fit(model, params, X, tcfg, **kw)


def _fit(model, params, X, tcfg: TrainConfig, *, opt=None, step: int = 0, history=None,
         desc="train", progress=True, ckpt_path=None, meta=None, on_epoch=None, rng_tag="main"):
    """Train ``model`` on device array ``X`` (N, D) from global step ``step``.

    Returns ``(params, opt, step, history)``; ``history`` is a list of per-epoch dicts
    ``{"epoch", "step", "loss", "lr", <aux means>}`` (host floats)."""
    b, xp = model.b, model.b.xp
    N = X.shape[0]
    if N < 1:
        raise ValueError("no training data")
    B = min(tcfg.batch_size, N)
    steps_per_epoch = math.ceil(N / B)
    total = tcfg.epochs * steps_per_epoch
    opt = Adam(b, params, lr=tcfg.lr) if opt is None else opt
    history = [] if history is None else history
    bar = _progress(total - step, desc, progress)
    while step < total:
        epoch, offset = divmod(step, steps_per_epoch)
        lr = tcfg.lr_at(epoch)
        perm = b.rng(rng_tag, "epoch", epoch).permutation(N)
        ep_loss = None
        ep_aux = {}
        n_in_epoch = 0
        run_loss, run_n = None, 0
        for i in range(offset, steps_per_epoch):
            idx = perm[i * B:min((i + 1) * B, N)]   # the array API rejects out-of-range slices
            xb = xp.take(X, idx, axis=0)
            noise = model.sample_noise(b.rng(rng_tag, "step", step), xb.shape[0])
            loss, grads, aux = model.loss_and_grads(params, xb, noise)
            opt.step(params, grads, lr=lr)
            if hasattr(model, "post_step"):   # non-gradient state (e.g. VQ codebook EMA)
                model.post_step(params, aux, step)
            step += 1
            n_in_epoch += 1
            ep_loss = loss if ep_loss is None else ep_loss + loss
            for k, v in aux.items():
                if not k.startswith("_"):        # "_..." entries are tensors for post_step
                    ep_aux[k] = v if k not in ep_aux else ep_aux[k] + v
            if bar is not None:                  # running loss only for the progress bar
                run_loss = loss if run_loss is None else run_loss + loss
                run_n += 1
                bar.update(1)
                if run_n >= tcfg.log_every:
                    bar.set_postfix(loss=f"{float(run_loss) / run_n:.3f}", epoch=epoch + 1)
                    run_loss, run_n = None, 0
        rec = {"epoch": epoch + 1, "step": step, "lr": lr,
               "loss": float(ep_loss) / n_in_epoch}
        rec.update({k: float(v) / n_in_epoch for k, v in ep_aux.items()})
        if not math.isfinite(rec["loss"]):
            if bar is not None:
                bar.close()
            raise FloatingPointError(
                f"training diverged at epoch {epoch + 1} (loss {rec['loss']}); lower the learning "
                "rate (lr, --lr) or check the data scale")
        history.append(rec)
        if on_epoch is not None:
            on_epoch(rec, params, opt)
        if ckpt_path and tcfg.checkpoint_every and (epoch + 1) % tcfg.checkpoint_every == 0:
            save_checkpoint(ckpt_path, b, params, opt, step, meta or {}, history)
    if bar is not None:
        bar.close()
    if ckpt_path:
        save_checkpoint(ckpt_path, b, params, opt, step, meta or {}, history)
    return params, opt, step, history


# --------------------------------------------------------------------------- checkpoints
def atomic_write(path, write_fn, mode="wb"):
    """Call ``write_fn(fileobj)`` on a temporary file next to ``path``, then rename it into
    place: readers never see a half-written file."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=".tmp-", suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, mode) as f:
            write_fn(f)
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)          # mkstemp makes 0600; give the usual mode
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def save_checkpoint(path, b, params, opt, step, meta: dict, history=None):
    arrays = {f"param.{k}": b.to_numpy(v) for k, v in params.items()}
    if opt is not None:
        arrays.update({k: b.to_numpy(v) for k, v in opt.state_dict().items()})
    info = {"step": int(step), "adam_t": int(opt.t) if opt is not None else 0,
            "meta": meta, "history": history or []}
    arrays["__info__"] = np.array(json.dumps(info))
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load_checkpoint(path):
    """-> (params_host {key: np.ndarray}, opt_state_host, info dict)."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint {path!r} does not exist")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    except Exception as exc:
        raise CheckpointError(f"checkpoint {path!r} is not a readable .npz file written by "
                              f"run.py ({exc.__class__.__name__}); pickled objects are never "
                              "loaded") from exc
    if "__info__" not in arrays:
        raise CheckpointError(f"{path!r} is not a scratchvae checkpoint (no __info__ record)")
    info = json.loads(str(arrays.pop("__info__")))
    params = {k[len("param."):]: v for k, v in arrays.items() if k.startswith("param.")}
    opt_state = {k: v for k, v in arrays.items() if k.startswith("adam.")}
    return params, opt_state, info


def restore(model, params_host, opt_state, info, tcfg):
    """Put host checkpoint arrays onto the model's backend, checking keys and shapes."""
    b = model.b
    expected = model.init_params(b.rng("shape-probe"))
    missing = sorted(set(expected) - set(params_host))
    extra = sorted(set(params_host) - set(expected))
    if missing or extra:
        raise CheckpointError(f"checkpoint does not fit this model: missing {missing[:5]}, "
                              f"unexpected {extra[:5]}; was it written with other options?")
    for k, v in expected.items():
        if tuple(v.shape) != tuple(params_host[k].shape):
            raise CheckpointError(
                f"checkpoint parameter {k!r} has shape {tuple(params_host[k].shape)} but the model "
                f"expects {tuple(v.shape)} (different data size, latent size or hidden sizes?)")
    params = {k: b.asarray(v) for k, v in params_host.items()}
    opt = Adam(b, params, lr=tcfg.lr)
    if opt_state:
        opt.load_state_dict(opt_state, info.get("adam_t", 0))
    return params, opt
