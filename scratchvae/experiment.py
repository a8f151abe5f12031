"""Floor 5: build a model from options, train it, evaluate it, write a run folder.

``run.py`` parses the command line and calls :func:`main_train`, :func:`main_eval`,
:func:`main_gradcheck` or :func:`main_bench`.  Everything that can be checked before work
starts (data, options, checkpoint compatibility) is checked before the output folder is created,
so bad input never leaves a half-written run behind.
"""
from __future__ import annotations

import json
import os
import platform
import sys
import time
from dataclasses import dataclass

import numpy as np

from .backend import Backend
from .data import DataError, load_dataset, validate
from .train import (CheckpointError, TrainConfig, atomic_write, fit, load_checkpoint, restore,
                    save_checkpoint)


class UsageError(ValueError):
    """An option value that cannot work (reported as one sentence, exit code 2)."""


# --------------------------------------------------------------------------- model registry
MODELS = ("vae", "fullcov")


def build_model(name: str, cfg: dict, backend):
    """Model object from its name and a plain-dict config (as stored in checkpoints)."""
    if name in ("vae", "fullcov"):
        from .models.vae import VAE, VAEConfig

        c = dict(cfg)
        c["hidden"] = tuple(c.get("hidden", ()))
        return VAE(VAEConfig(**c), backend)
    raise UsageError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")


def model_config(name: str, args, D: int) -> dict:
    cfg = {"D": int(D), "latent_dim": args.latent_dim, "hidden": list(args.hidden),
           "act": args.act, "likelihood": args.likelihood, "n_samples": args.samples}
    if name in ("vae", "fullcov"):
        cfg["posterior"] = "cholesky" if name == "fullcov" else args.posterior
    return cfg


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


def write_json(path, obj):
    text = json.dumps(obj, indent=2, sort_keys=True, default=_jsonable)
    atomic_write(path, lambda f: f.write(text + "\n"), mode="w")


def _jsonable(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, tuple):
        return list(o)
    raise TypeError(f"not JSON-serialisable: {type(o)}")


def default_out(model: str) -> str:
    return os.path.join("runs", f"{model}-{time.strftime('%Y%m%d-%H%M%S')}")


# --------------------------------------------------------------------------- data
def get_data(args, likelihood):
    """Load and validate the data set named by ``--data`` (a name or a .npy/.npz path)."""
    kw = {"download": getattr(args, "download", False), "limit": getattr(args, "limit", None)}
    if args.data in ("digits", "mnist", "fashion-mnist"):
        ds = load_dataset(args.data, data_dir=args.data_dir, **kw)
    else:
        ds = load_dataset(path=args.data, **{k: v for k, v in kw.items() if k == "limit"})
    validate(ds.x_train, likelihood, where=f"{args.data} (training split)")
    validate(ds.x_test, likelihood, where=f"{args.data} (test split)")
    return ds


# --------------------------------------------------------------------------- train
def train_vae_like(name, args, backend, ds, out, resume=None):
    """Train a VAE-family model (vae, fullcov); returns the metrics dict."""
    from . import metrics as M
    from . import plots

    tcfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                       checkpoint_every=args.checkpoint_every)
    if resume is not None:
        params_h, opt_h, info = resume
        cfg = info["meta"]["model_config"]
        model = build_model(name, cfg, backend)
        params, opt = restore(model, params_h, opt_h, info, tcfg)
        step, history = info["step"], info.get("history", [])
    else:
        cfg = model_config(name, args, ds.D)
        model = build_model(name, cfg, backend)
        params = model.init_params(backend.rng("init"))
        opt, step, history = None, 0, []
    X = backend.asarray(ds.x_train)
    Xt = backend.asarray(ds.x_test)
    meta = {"model": name, "model_config": cfg, "train_config": tcfg.__dict__,
            "data": args.data, "seed": args.seed, **backend.describe()}
    t0 = time.perf_counter()
    params, opt, step, history = fit(model, params, X, tcfg, opt=opt, step=step,
                                     history=history, desc=name, progress=not args.quiet,
                                     ckpt_path=os.path.join(out, "checkpoint.npz"), meta=meta)
    train_s = time.perf_counter() - t0
    ev = M.iwae_metrics(model, params, Xt, k=args.iwae_k)
    res = {"model": name, **ev, "train_seconds": train_s, "steps": step,
           "epochs": tcfg.epochs, "n_train": int(X.shape[0]), "n_test": int(Xt.shape[0])}
    # figures
    plots.training_curve(history, os.path.join(out, "curve.png"),
                         f"{name}: training loss (negative ELBO) on {args.data}")
    n = min(10, Xt.shape[0])
    post, _ = model.encode(params, Xt[:n, ...])
    xr = backend.to_numpy(model.decode_mean(params, post.mu))
    plots.reconstructions(ds.x_test[:n], xr, ds.image_shape, os.path.join(out, "reconstructions.png"),
                          f"{name}: test images and reconstructions E[x | z = mu]")
    z = backend.rng("prior-samples").normal((30, model.J))
    xs = backend.to_numpy(model.decode_mean(params, z))
    plots.image_grid(xs, ds.image_shape, os.path.join(out, "samples.png"),
                     f"{name}: decoder means of 30 prior samples z ~ N(0, I)")
    return res, model, params, history


def make_backend(args, default_dtype="float32"):
    return Backend(args.backend, args.dtype or default_dtype, seed=args.seed)


def main_train(args) -> dict:
    backend = make_backend(args)
    resume = None
    if args.resume:
        ck = args.resume
        if os.path.isdir(ck):
            ck = os.path.join(ck, "checkpoint.npz")
        resume = load_checkpoint(ck)
        meta = resume[2].get("meta", {})
        if meta.get("model") and meta["model"] != args.model:
            raise UsageError(f"checkpoint {ck!r} holds a {meta['model']!r} model but --model is "
                             f"{args.model!r}; pass --model {meta['model']}")
    lik = resume[2]["meta"]["model_config"]["likelihood"] if resume else args.likelihood
    ds = get_data(args, lik)
    if resume:
        D = resume[2]["meta"]["model_config"]["D"]
        if D != ds.D:
            raise CheckpointError(f"the checkpoint was trained on data with {D} features but "
                                  f"{args.data!r} has {ds.D}; use the same data set")
    out = args.out or (os.path.dirname(os.path.abspath(args.resume)) if args.resume and not
                       os.path.isdir(args.resume) else args.resume) or default_out(args.model)
    os.makedirs(out, exist_ok=True)
    res, *_ = train_vae_like(args.model, args, backend, ds, out, resume)
    record = {**res, "config": {k: v for k, v in vars(args).items() if k != "func"},
              "versions": versions(), **backend.describe(), "data": args.data, "seed": args.seed}
    write_json(os.path.join(out, "metrics.json"), record)
    return {"out": out, **res}
