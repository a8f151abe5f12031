"""Floor 5: the training loop and checkpoints.

* Minibatches are gathered on the device (``take`` with a device index array); the epoch's
  permutation comes from ``backend.rng("epoch", e)`` and each step's noise from
  ``backend.rng("step", t)``.  Same seed, same backend: identical parameters; and a run resumed
  from a checkpoint at step ``t`` continues exactly as if it had never stopped.
* No host synchronisation per step: losses are summed on the device and read every
  ``log_every`` steps (for the progress bar) and once per epoch (for the history).
* A run that diverges stops with :class:`DivergenceError` at the end of the epoch where the loss,
  a parameter or the optimiser state stops being finite (no NaN is ever saved).
* Checkpoints are ``.npz`` files (parameters, Adam state, step, config as JSON), written to a
  temporary file, flushed to disk (fsync) and renamed into place.  Loading reads only the
  expected members (``__info__``, ``param.*``, ``adam.*``), each after checking its header
  against its size (no pickles, no decompression bombs), and :func:`check_checkpoint` validates
  everything else in one place: a bad checkpoint is one :class:`CheckpointError` sentence.
"""
from __future__ import annotations

import json
import math
import numbers
import os
import stat
import tempfile
import zipfile
from dataclasses import dataclass

import numpy as np

from .errors import ScratchVAEError
from .optim import Adam
from .progress import progress_bar


class CheckpointError(ScratchVAEError):
    """A checkpoint is missing, unreadable or does not fit the model it is loaded into."""


class DivergenceError(ScratchVAEError, FloatingPointError):
    """Training or scoring produced NaN or inf (a ValueError, and a FloatingPointError)."""


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
    quiet = np.errstate(all="ignore") if model.b.name == "numpy" else np.errstate()  # no-op
    with blas_limit(model.b, params, tcfg.batch_size), quiet:
        out = _fit(model, params, X, tcfg, **kw)
    out[1].ws = model.b.workspace()          # the step buffers are scratch: none outlive the run
    return out


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
    if opt is None:
        from .compiled import pays
        opt = Adam(b, params, lr=tcfg.lr)
        opt.compiled = opt.compiled and pays(params, total - step)   # short runs: no numba
    history = [] if history is None else history
    bar = progress_bar(total - step, desc, progress, tcfg.epochs)
    first = None                                 # this call's first step loss (the reference)
    run_loss, run_n = None, 0                    # the bar's running loss (across epochs)
    while step < total:
        epoch, offset = divmod(step, steps_per_epoch)
        lr = tcfg.lr_at(epoch)
        perm = b.rng(rng_tag, "epoch", epoch).permutation(N)
        ep_loss = None
        ep_aux = {}
        n_in_epoch = 0
        for i in range(offset, steps_per_epoch):
            idx = perm[i * B:min((i + 1) * B, N)]   # the array API rejects out-of-range slices
            xb = xp.take(X, idx, axis=0)
            noise = model.sample_noise(b.rng(rng_tag, "step", step), xb.shape[0])
            with b.reusing(opt.ws):              # the step writes into buffers kept across steps
                loss, grads, aux = model.loss_and_grads(params, xb, noise)
                opt.step(params, grads, lr=lr)
                if hasattr(model, "post_step"):   # non-gradient state (e.g. VQ codebook EMA)
                    model.post_step(params, aux, step)
            step += 1
            n_in_epoch += 1
            ep_loss = loss if ep_loss is None else ep_loss + loss
            first = loss if first is None else first          # stays on the device
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
        bad = _diverged(xp, rec["loss"], first, params, opt)
        if bad:
            if bar is not None:
                bar.close()
            raise DivergenceError(
                f"training diverged at epoch {epoch + 1} ({bad}); lower the learning rate (lr, "
                "--lr) or check the data scale")
        history.append(rec)
        if on_epoch is not None:
            on_epoch(rec, params, opt)
        if bar is not None:
            bar.epoch_done(rec)                  # the epoch's mean loss (already on the host)
        if ckpt_path and tcfg.checkpoint_every and (epoch + 1) % tcfg.checkpoint_every == 0:
            save_checkpoint(ckpt_path, b, params, opt, step, meta or {}, history)
    if bar is not None:
        bar.close()
    if ckpt_path:
        save_checkpoint(ckpt_path, b, params, opt, step, meta or {}, history)
    return params, opt, step, history


def _diverged(xp, loss, first, params, opt) -> str:
    """'' while the epoch's loss is finite and below 1e6 (1 + |the first step's loss|) and every
    parameter and Adam moment is finite, else what is not (one device-to-host read for all)."""
    if not math.isfinite(loss):
        return f"loss {loss}"
    moments = [] if opt is None else [*opt.m.values(), *opt.v.values()]
    finite = {k: [xp.all(xp.isfinite(v)) for v in arrays]
              for k, arrays in (("parameters", params.values()), ("Adam state", moments))}
    ok = loss <= 1e6 * (xp.abs(first) + 1.0)
    for f in finite["parameters"] + finite["Adam state"]:
        ok = xp.logical_and(ok, f)
    if bool(ok):
        return ""
    for what, fs in finite.items():
        if not all(bool(f) for f in fs):
            return f"the loss {loss:.4g} is finite but the {what} hold NaN or inf"
    return f"loss {loss:.4g}, over a million times the first step's {float(first):.4g}"


# --------------------------------------------------------------------------- checkpoints
TMP_PREFIX = ".tmp-"   # atomic_write's temporary files: ``.tmp-XXXXXXXX<name>``


def atomic_write(path, write_fn, mode="wb"):
    """Call ``write_fn(fileobj)`` on a temporary file next to ``path``, flush it to disk and
    rename it into place: after a crash the file is the old one or the new one (a SIGKILL can
    leave the temporary behind; the command line's run folder removes such leftovers)."""
    path = os.fspath(path)
    d = os.path.dirname(os.path.abspath(path))
    os.makedirs(d, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=d, prefix=TMP_PREFIX, suffix=os.path.basename(path))
    try:
        with os.fdopen(fd, mode) as f:
            write_fn(f)
            f.flush()
            os.fsync(f.fileno())                # the bytes are on disk before the rename
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)          # mkstemp makes 0600; give the usual mode
        os.replace(tmp, path)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError) and exc.filename in (None, tmp):   # name the file itself
            raise OSError(exc.errno, exc.strerror or str(exc), path) from exc
        raise
    try:                                       # and the rename itself (POSIX; best effort)
        dfd = os.open(d, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass


def save_checkpoint(path, b, params, opt, step, meta: dict, history=None):
    arrays = {f"param.{k}": b.to_numpy(v) for k, v in params.items()}
    if opt is not None:
        arrays.update({k: b.to_numpy(v) for k, v in opt.state_dict().items()})
    for k, v in arrays.items():
        if not np.isfinite(v).all():
            raise DivergenceError(f"checkpoint {os.fspath(path)!r} not written: {k} holds NaN or "
                                  "inf (the model diverged); lower the learning rate (lr, --lr)")
    info = {"step": int(step), "adam_t": int(opt.t) if opt is not None else 0,
            "meta": meta, "history": history or []}
    arrays["__info__"] = np.array(json.dumps(info, allow_nan=False))
    atomic_write(path, lambda f: np.savez(f, **arrays))


def load_checkpoint(path):
    """-> (params_host {key: np.ndarray}, opt_state_host, info dict), all checked by
    :func:`check_checkpoint`; only the expected members of the ``.npz`` are read."""
    path = os.fspath(path)
    _regular_file(path)
    try:
        with zipfile.ZipFile(path) as z:
            arrays = _read_members(z, path)
    except CheckpointError:
        raise
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path!r} cannot be read ({exc.strerror})") from exc
    except Exception as exc:   # not a zip, truncated, CRC mismatch, bad .npy header ...
        raise CheckpointError(f"checkpoint {path!r} is not a readable .npz file written by "
                              f"run.py ({exc.__class__.__name__}); pickled objects are never "
                              "loaded") from exc
    if "__info__" not in arrays:
        raise CheckpointError(f"{path!r} is not a scratchvae checkpoint (no __info__ record)")
    raw = arrays.pop("__info__")
    try:
        info = json.loads(str(raw)) if raw.dtype.kind == "U" and raw.shape == () else None
    except (ValueError, RecursionError):      # not JSON, or nested past Python's stack
        info = None
    if not isinstance(info, dict):
        raise CheckpointError(f"{path!r}: its __info__ record is not a JSON object; the file is "
                              "damaged or was not written by scratchvae")
    params = {k[len("param."):]: v for k, v in arrays.items() if k.startswith("param.")}
    opt_state = {k: v for k, v in arrays.items() if k.startswith("adam.")}
    check_checkpoint(path, params, opt_state, info)
    return params, opt_state, info


def _regular_file(path):
    """Refuse a missing path, a folder, a FIFO or a device before opening it (a FIFO blocks)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        d, name = os.path.split(os.path.abspath(path))
        left = [f for f in (os.listdir(d) if os.path.isdir(d) else [])
                if f.startswith(TMP_PREFIX) and f.endswith(name)]
        why = (f" (only {left[0]!r}, an unfinished write of an interrupted run, is there: that "
               "run saved nothing to continue)" if left else "")
        raise CheckpointError(f"checkpoint {path!r} does not exist{why}") from None
    except OSError as exc:
        raise CheckpointError(f"checkpoint {path!r} cannot be read ({exc.strerror})") from exc
    if not stat.S_ISREG(st.st_mode):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise CheckpointError(f"checkpoint {path!r} is {kind}; name a checkpoint.npz file")


def _read_members(z, path) -> dict:
    """The ``__info__``, ``param.*`` and ``adam.*`` arrays of an open .npz; each .npy header is
    read first and must match the member's size, and the members together may expand to at
    most a few times the file's size (scratchvae writes them uncompressed)."""
    wanted = [i for i in z.infolist() if i.filename.endswith(".npy") and (
        i.filename == "__info__.npy" or i.filename.startswith(("param.", "adam.")))]
    size, need = os.path.getsize(path), sum(i.file_size for i in wanted)
    if need > 4 * size + (1 << 20):
        raise CheckpointError(f"{path!r}: its arrays would expand to {need / 2**20:.0f} MiB from "
                              f"a {size / 2**20:.1f} MiB file; scratchvae writes checkpoints "
                              "uncompressed, so this one is not from scratchvae")
    out = {}
    for i in wanted:
        key = i.filename[:-len(".npy")]
        with z.open(i) as f:
            version = np.lib.format.read_magic(f)
            if version not in ((1, 0), (2, 0)):
                raise ValueError(f"npy format version {version}")
            shape, _, dtype = (np.lib.format.read_array_header_1_0 if version == (1, 0) else
                               np.lib.format.read_array_header_2_0)(f)
            end = f.tell() + math.prod(shape) * dtype.itemsize
        want = ("U", "a text record") if key == "__info__" else ("f", "real floating-point numbers")
        if dtype.hasobject:
            raise ValueError(f"{key} holds pickled objects")
        if dtype.kind != want[0]:
            raise CheckpointError(f"{path!r}: {key} holds {dtype} values; {want[1]} expected")
        if end != i.file_size:
            raise ValueError(f"{key}: its header promises {end} bytes, its member {i.file_size}")
        with z.open(i) as f:
            out[key] = np.lib.format.read_array(f, allow_pickle=False)
    return out


_int = lambda v, low=0: isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= low
_finite_number = lambda v: isinstance(v, numbers.Real) and not isinstance(v, bool) and (
    math.isfinite(v))
META_FIELDS = {
    "model": (lambda v: isinstance(v, str), "a model name"),
    "model_config": (lambda v: isinstance(v, dict) and _int(v.get("D"), 1),
                     "a positive feature count D"),
    "options": (lambda v: isinstance(v, dict), "an object of option values"),
    "train_config": (lambda v: isinstance(v, dict), "an object of training options"),
    "fit_info": (lambda v: isinstance(v, dict), "an object"),
    "n_train": (lambda v: _int(v, 1), "a positive integer"),
    "seed": (lambda v: _int(v, 0), "a non-negative integer"),
    "limit": (lambda v: v is None or _int(v, 1), "a positive integer or null"),
    "data": (lambda v: v is None or isinstance(v, str), "a data set name or path"),
    "data_dir": (lambda v: v is None or isinstance(v, str), "a folder"),
    "backend": (lambda v: isinstance(v, str), "a backend name"),
    "dtype": (lambda v: isinstance(v, str), "a dtype name"),
}


def check_checkpoint(path, params: dict, opt_state: dict, info: dict) -> None:
    """What a checkpoint must satisfy before any of it is used, in one place: its record (step,
    Adam step, meta, history), its arrays (finite; Adam moments complete and shaped like their
    parameters) and their agreement.  Raises :class:`CheckpointError` naming the first problem."""
    def bad(what):
        raise CheckpointError(f"checkpoint {os.fspath(path)!r} is damaged or was not written by "
                              f"scratchvae: {what}")

    def short(v):
        r = repr(v.get("D") if isinstance(v, dict) and "D" in v else v)
        return r if len(r) <= 60 else r[:57] + "..."

    step, adam_t, meta, hist = (info.get(k) for k in ("step", "adam_t", "meta", "history"))
    if not _int(step):
        bad(f"its step is {step!r}, not a non-negative integer")
    if not _int(adam_t):
        bad(f"its Adam step (adam_t) is {adam_t!r}, not a non-negative integer")
    if not isinstance(meta, dict):
        bad("its meta record is not a JSON object")
    for k, (ok, says) in META_FIELDS.items():
        if k in meta and not ok(meta[k]):
            bad(f"meta {k!r} is {short(meta[k])}, not {says}")
    if not isinstance(hist, list) or not all(isinstance(h, dict) for h in hist):
        bad("its history is not a list of per-epoch records")
    for n, h in enumerate(hist, 1):
        if h.get("epoch") != n or not _int(h.get("step"), 1) or not all(
                _finite_number(v) for v in h.values()):
            bad(f"history record {n} is {short(h)} (epochs count 1, 2, ...; every value a "
                "finite number)")
    steps = [h["step"] for h in hist]
    if any(s != steps[0] * h["epoch"] for s, h in zip(steps, hist)):
        bad(f"its history's steps {steps} are not a whole number of equal epochs")
    if (steps[-1] if steps else 0) != step:
        bad(f"its step {step} is not where its history ends ({steps[-1] if steps else 0})")
    tc = meta.get("train_config") or {}
    if steps and _int(meta.get("n_train"), 1) and _int(tc.get("batch_size"), 1):
        per_epoch = math.ceil(meta["n_train"] / min(tc["batch_size"], meta["n_train"]))
        if steps[0] != per_epoch:
            bad(f"an epoch is {steps[0]} steps in its history but {per_epoch} for "
                f"{meta['n_train']} rows in batches of {tc['batch_size']}")
    for k, v in {**{f"param.{k}": v for k, v in params.items()}, **opt_state}.items():
        if not np.isfinite(v).all():
            bad(f"{k} holds NaN or inf (the state of a diverged run, which cannot be "
                "evaluated or continued; train afresh, with a lower --lr)")
    if opt_state or adam_t or step:
        want = {f"adam.{mv}.{k}" for k in params for mv in "mv"}
        if set(opt_state) != want:
            missing, extra = sorted(want - set(opt_state)), sorted(set(opt_state) - want)
            bad(f"its Adam state does not match its parameters after {step} steps (missing "
                f"{missing[:3]}, unexpected {extra[:3]})")
        for k, v in opt_state.items():
            p = params[k.split(".", 2)[2]]
            if v.shape != p.shape:
                bad(f"{k} has shape {v.shape} but its parameter has {p.shape}")
            if k.startswith("adam.v.") and (v < 0).any():
                bad(f"{k} holds negative second moments")
        if adam_t < step:
            bad(f"Adam took {adam_t} steps, fewer than the {step} training steps")


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
