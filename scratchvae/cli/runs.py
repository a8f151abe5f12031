"""Run folders, JSON records, the machine's description, data loading: what every command
that writes results shares.  Everything checkable is checked before the folder is created, so
bad input never leaves a half-written run behind."""
from __future__ import annotations

import json
import os
import platform
import shutil
import sys
import time

import numpy as np

from ..data import DATASETS, load_dataset, validate
from ..errors import UsageError
from ..train import TMP_PREFIX, DivergenceError, atomic_write


def versions() -> dict:
    import array_api_compat

    v = {"python": platform.python_version(), "numpy": np.__version__,
         "array_api_compat": array_api_compat.__version__, "platform": platform.platform(),
         "machine": platform.machine(), "cpus": os.cpu_count()}
    try:
        import cupy

        v["cupy"] = cupy.__version__
    except Exception:
        pass
    return v


def _jsonable(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON-serialisable: {type(o)}")


def write_json(path, obj):
    """``obj`` as JSON, written atomically; a NaN or inf anywhere in it is refused (it is not
    JSON, and a non-finite result is never recorded as a success)."""
    try:
        text = json.dumps(obj, indent=2, sort_keys=True, default=_jsonable, allow_nan=False)
    except ValueError:
        where = _non_finite(obj) or "a value"
        raise DivergenceError(f"{path} not written: {where} is not a finite number (NaN or "
                              "inf); the run diverged or its data gives the model NaN") from None
    atomic_write(path, lambda f: f.write(text + "\n"), mode="w")


def _non_finite(o, at=""):
    """The first NaN or inf in a nested dict/list, spelled like ``history[3].loss``."""
    if isinstance(o, (float, np.floating)) and not np.isfinite(o):
        return f"{at or 'the value'} ({float(o)})"
    items = o.items() if isinstance(o, dict) else enumerate(o) if isinstance(
        o, (list, tuple, np.ndarray)) else ()
    for k, v in items:
        found = _non_finite(v, f"{at}.{k}" if isinstance(k, str) and at else
                            k if isinstance(k, str) else f"{at}[{k}]")
        if found:
            return found
    return None


def default_out(model: str) -> str:
    return os.path.join("runs", f"{model}-{time.strftime('%Y%m%d-%H%M%S')}")


def config_record(args) -> dict:
    """The parsed command line as a JSON-able dict (what metrics.json calls ``config``)."""
    return {k: v for k, v in vars(args).items() if k not in ("func",)}


LOCK = ".scratchvae-run.lock"     # a run folder's claim: created O_EXCL, removed at the end
OPENED: list = []                 # run folders entered by this process (for the SIGINT message)


class run_folder:
    """``with run_folder(path, args) as out:`` -- claim the output folder for the run's lifetime
    after checking it, and if the run fails before writing a checkpoint, remove what it created.

    * A folder that already holds a run is refused unless ``--force`` (or it is the folder being
      resumed); leftovers of a killed run's checkpoint write (``.tmp-*``) do not count and are
      removed.
    * The claim is a lock file created with ``O_EXCL`` (holding the process id): a second run on
      the same folder is refused, even with ``--force``, while the first is alive; a lock left by
      a killed process is taken over.
    * Creating the lock is the writability check: a read-only or full folder fails here, before
      any training, as one sentence."""

    def __init__(self, path, args, resuming=False):
        self.path, self.created, self.locked = os.fspath(path), False, False
        self.resuming, self.force = resuming, getattr(args, "force", False)
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise UsageError(f"--out {self.path!r} is a file; name a folder")
        if os.path.isdir(self.path):
            _refuse_live_lock(self.path)
            self._check_empty()

    def _check_empty(self):
        held = [f for f in _listdir(self.path) if f != LOCK and not f.startswith(TMP_PREFIX)]
        if held and not self.resuming and not self.force:
            raise UsageError(f"--out {self.path!r} already holds files; choose another folder, "
                             "or pass --force to overwrite")

    def __enter__(self):
        if not os.path.isdir(self.path):
            try:
                os.makedirs(self.path)
            except OSError as exc:
                raise UsageError(f"cannot create the output folder {self.path!r}: "
                                 f"{exc.strerror}") from exc
            self.created = True
        try:
            self._claim()
            self._check_empty()            # again, now that no other run can start here
        except BaseException:
            self.__exit__(*sys.exc_info())
            raise
        for f in _listdir(self.path):      # a killed run's unfinished checkpoint writes
            if f.startswith(TMP_PREFIX):
                _remove(os.path.join(self.path, f))
        OPENED.append(self.path)
        return self.path

    def _claim(self):
        lock = os.path.join(self.path, LOCK)
        for _ in range(2):
            try:
                fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                _refuse_live_lock(self.path)   # a dead owner's lock: take it over
                _remove(lock)
                continue
            except OSError as exc:
                raise UsageError(f"cannot write to the output folder {self.path!r} "
                                 f"({exc.strerror}); choose a writable folder with --out") from exc
            try:
                self.locked = True
                os.write(fd, f"{os.getpid()} {platform.node()}\n".encode())
                os.fsync(fd)
            except OSError as exc:
                raise UsageError(f"cannot write to the output folder {self.path!r} "
                                 f"({exc.strerror}); free some space or choose another folder "
                                 "with --out") from exc
            finally:
                os.close(fd)
            return
        raise UsageError(f"--out {self.path!r} is being claimed by another run; try again")

    def __exit__(self, exc_type, exc, tb):
        if self.locked:
            _remove(os.path.join(self.path, LOCK))
            self.locked = False
        if exc_type is not None and self.created:
            has_ckpt = any(f == "checkpoint.npz" for _, _, fs in os.walk(self.path) for f in fs)
            if not has_ckpt:
                shutil.rmtree(self.path, ignore_errors=True)
        return False


def _listdir(path) -> list:
    try:
        return os.listdir(path)
    except OSError as exc:
        raise UsageError(f"--out {path!r} cannot be listed ({exc.strerror}); choose another "
                         "folder") from exc


def _remove(path):
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _refuse_live_lock(path):
    """UsageError if ``path`` is claimed by a process that is still running."""
    try:
        with open(os.path.join(path, LOCK)) as f:
            pid, _, host = f.read().strip().partition(" ")
    except FileNotFoundError:
        return
    except (OSError, UnicodeDecodeError):
        pid, host = "", ""
    if host and host != platform.node():
        alive = True                       # another machine's run: cannot tell, assume alive
    else:
        try:
            os.kill(int(pid), 0)
            alive = True
        except ProcessLookupError:
            alive = False
        except (ValueError, OverflowError):
            alive = False                  # an empty or garbled lock (killed mid-write)
        except PermissionError:
            alive = True                   # another user's live process
    if alive:
        raise UsageError(f"the run folder {path!r} is in use by another run (process "
                         f"{pid or '?'} on {host or 'this machine'}); wait for it or choose another "
                         f"folder (if no run is using it, delete {os.path.join(path, LOCK)})")


def resolve_source(args, meta=None):
    """Fill --data, --data-dir and --limit left out: from a checkpoint's record (``meta``) when
    resuming or evaluating, else the defaults (the bundled digits)."""
    meta = meta or {}
    args.data = args.data or meta.get("data") or "digits"
    args.data_dir = args.data_dir or meta.get("data_dir") or "data"
    if getattr(args, "limit", None) is None:
        args.limit = meta.get("limit")
    return args


def source_record(args) -> dict:
    """What a checkpoint remembers of its data, so --resume and eval find it again."""
    return {"data": args.data, "data_dir": args.data_dir, "limit": args.limit}


def get_data(args, likelihood):
    """Load and validate the data set named by ``--data`` (a name or a .npy/.npz path)."""
    resolve_source(args)
    if args.data.lower() in DATASETS:
        args.data = args.data.lower()
        ds = load_dataset(args.data, data_dir=args.data_dir, download=args.download,
                          limit=args.limit)
    else:
        ds = load_dataset(path=args.data, limit=args.limit)
    validate(ds.x_train, likelihood, where=f"{args.data} (training split)")
    validate(ds.x_test, likelihood, where=f"{args.data} (test split)")
    return ds


def checkpoint_path(resume: str) -> str:
    """--resume names a checkpoint or its run folder."""
    return os.path.join(resume, "checkpoint.npz") if os.path.isdir(resume) else resume
