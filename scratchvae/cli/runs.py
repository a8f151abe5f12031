"""Run folders, JSON records, the machine's description, data loading: what every command
that writes results shares.  Everything checkable is checked before the folder is created, so
bad input never leaves a half-written run behind."""
from __future__ import annotations

import json
import os
import platform
import shutil
import time

import numpy as np

from ..data import DATASETS, load_dataset, validate
from ..errors import UsageError
from ..train import atomic_write


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
    text = json.dumps(obj, indent=2, sort_keys=True, default=_jsonable)
    atomic_write(path, lambda f: f.write(text + "\n"), mode="w")


def default_out(model: str) -> str:
    return os.path.join("runs", f"{model}-{time.strftime('%Y%m%d-%H%M%S')}")


def config_record(args) -> dict:
    """The parsed command line as a JSON-able dict (what metrics.json calls ``config``)."""
    return {k: v for k, v in vars(args).items() if k not in ("func",)}


class run_folder:
    """``with run_folder(path, args) as out:`` -- create the output folder after checking it,
    and if the run fails before writing a checkpoint, remove what it created.  A folder that
    already holds a run is refused unless ``--force`` (or it is the folder being resumed)."""

    def __init__(self, path, args, resuming=False):
        self.path, self.created = os.fspath(path), False
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise UsageError(f"--out {self.path!r} is a file; name a folder")
        if (os.path.isdir(self.path) and os.listdir(self.path) and not resuming
                and not getattr(args, "force", False)):
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
        return self.path

    def __exit__(self, exc_type, exc, tb):
        if exc_type is not None and self.created:
            has_ckpt = any(f == "checkpoint.npz" for _, _, fs in os.walk(self.path) for f in fs)
            if not has_ckpt:
                shutil.rmtree(self.path, ignore_errors=True)
        return False


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
