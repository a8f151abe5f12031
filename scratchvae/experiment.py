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

import numpy as np

from .backend import Backend
from .data import load_dataset, validate
from .train import CheckpointError, TrainConfig, atomic_write, fit, load_checkpoint, restore


class UsageError(ValueError):
    """An option value that cannot work (reported as one sentence, exit code 2)."""


# --------------------------------------------------------------------------- model registry
MODELS = ("vae", "fullcov", "gmvae", "vqvae")      # trainable models (gradcheck, bench)
STAGES = ("kl", "vae", "fullcov", "gmvae", "vqvae")  # what --model all runs, in order


def build_model(name: str, cfg: dict, backend):
    """Model object from its name and a plain-dict config (as stored in checkpoints)."""
    c = dict(cfg)
    c["hidden"] = tuple(c.get("hidden", ()))
    if name in ("vae", "fullcov"):
        from .models.vae import VAE, VAEConfig

        return VAE(VAEConfig(**c), backend)
    if name == "gmvae":
        from .models.gmvae import GMVAE, GMVAEConfig

        return GMVAE(GMVAEConfig(**c), backend)
    if name == "vqvae":
        from .models.vqvae import VQVAE, VQVAEConfig

        return VQVAE(VQVAEConfig(**c), backend)
    raise UsageError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")


# Defaults that differ between models; any option given on the command line wins.
DEFAULTS = {
    "vae": {"epochs": 100, "lr": 1e-3, "lr_decay": 1.0},
    "fullcov": {"epochs": 100, "lr": 1e-3, "lr_decay": 1.0},
    "gmvae": {"epochs": 60, "lr": 2e-3, "lr_decay": 0.9, "pretrain_epochs": 30},
    "vqvae": {"epochs": 60, "lr": 1e-3, "lr_decay": 1.0, "latent_dim": 8},
}
FALLBACK = {"epochs": 60, "lr": 1e-3, "lr_decay": 1.0, "pretrain_epochs": 30, "latent_dim": 10,
            "iwae_k": 200, "gmm_restarts": 10, "seeds": 3, "anchor_epochs": 20,
            "graph_k": 10}
QUICK = {"epochs": 2, "pretrain_epochs": 2, "iwae_k": 10, "gmm_restarts": 2, "seeds": 2,
         "anchor_epochs": 2}


def resolve_defaults(args, model=None):
    """Fill the options left at None with the defaults of ``model`` (default ``args.model``).
    Returns a copy; the names the user set are remembered in ``explicit`` so that a later call
    for another model (the tour) re-resolves only the others."""
    import argparse

    d = dict(FALLBACK)
    d.update(DEFAULTS.get(model or args.model, {}))
    if getattr(args, "quick", False):
        d.update(QUICK)
    explicit = getattr(args, "explicit", None)
    if explicit is None:
        explicit = {k for k in d if getattr(args, k, None) is not None}
    out = argparse.Namespace(**vars(args))
    out.explicit = explicit
    for k, v in d.items():
        if k not in explicit:
            setattr(out, k, v)
    return out


def model_config(name: str, args, D: int) -> dict:
    if name == "vqvae":
        return {"D": int(D), "latent_dim": args.latent_dim, "codes_per_input": args.codes_per_input,
                "codebook_size": args.codebook_size, "hidden": list(args.hidden), "act": args.act,
                "likelihood": args.likelihood, "beta": args.beta,
                "codebook_update": args.codebook_update}
    cfg = {"D": int(D), "latent_dim": args.latent_dim, "hidden": list(args.hidden),
           "act": args.act, "likelihood": args.likelihood, "n_samples": args.samples}
    if name in ("vae", "fullcov", "gmvae"):
        cfg["posterior"] = "cholesky" if name == "fullcov" else args.posterior
        cfg["cholesky_diag"] = args.cholesky_diag
    if name == "gmvae":
        cfg["clusters"] = args.clusters
        cfg["gamma"] = args.gamma
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


class run_folder:
    """``with run_folder(path, args) as out:`` -- create the output folder after checking it,
    and if the run fails before writing a checkpoint, remove what it created (bad input never
    leaves a half-written run behind).  A folder that already holds a run is refused unless
    ``--force`` (or it is the folder being resumed)."""

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
            import shutil

            has_ckpt = any(f == "checkpoint.npz" for _, _, fs in os.walk(self.path) for f in fs)
            if not has_ckpt:
                shutil.rmtree(self.path, ignore_errors=True)
        return False


def check_model_fits_data(name, args, ds):
    """Option values that can only be judged against the data, checked before any work."""
    if name == "gmvae" and args.clusters > ds.x_train.shape[0]:
        raise UsageError(f"--clusters {args.clusters} exceeds the {ds.x_train.shape[0]} training "
                         "examples; use fewer clusters or more data")
    if name == "gmvae":
        explicit = getattr(args, "explicit", set())
        for opt in ("anchor_epochs", "graph_k"):
            if args.init == "gmm" and opt in explicit:
                flag = "--" + opt.replace("_", "-")
                raise UsageError(f"{flag} applies to --init graph (the neighbour-graph partition "
                                 "and its warm-up); drop it or use --init graph")
        if (args.init == "graph" and "graph_k" in explicit
                and args.graph_k >= ds.x_train.shape[0]):   # the default 10 is clipped instead
            raise UsageError(f"--graph-k {args.graph_k} needs more than {args.graph_k} training "
                             f"examples ({ds.x_train.shape[0]} here); use a smaller --graph-k")
        if args.init == "graph" and "gmm_restarts" in explicit:
            raise UsageError("--gmm-restarts applies to --init gmm; drop it or pass --init gmm")
    if name == "vqvae" and args.codebook_size > 1_000_000:
        raise UsageError("--codebook-size above 1e6 is not supported")


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
def _setup(name, args, backend, ds, resume):
    """Train config, and the model with its parameters: built fresh, or restored from a
    checkpoint (``resume`` = load_checkpoint's triple).  -> (tcfg, cfg, model, params, opt,
    step, history, meta); ``opt`` is None for a fresh model."""
    tcfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                       lr_decay=args.lr_decay, decay_every=args.decay_every,
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
    meta = {"model": name, "model_config": cfg, "train_config": tcfg.__dict__,
            "data": args.data, "seed": args.seed, **backend.describe()}
    return tcfg, cfg, model, params, opt, step, history, meta


def train_vae_like(name, args, backend, ds, out, resume=None):
    """Train a VAE-family model (vae, fullcov, gmvae); returns (metrics, model, params, history)."""
    from . import metrics as M
    from . import plots

    gm = name == "gmvae"
    tcfg, cfg, model, params, opt, step, history, meta = _setup(name, args, backend, ds, resume)
    X = backend.asarray(ds.x_train)
    Xt = backend.asarray(ds.x_test)
    extra = {}
    on_epoch, track = (gmvae_epoch_hook(model, X, ds.y_train, extra) if gm else (None, None))
    if gm and resume is None:
        extra.update(gmvae_initialise(model, params, X, args, score=track["score"]))
        part = extra.pop("partition", None)
        if part is not None and ds.y_train is not None:   # reported only, never used
            extra["partition_acc"] = M.cluster_acc(ds.y_train, part)
    t0 = time.perf_counter()
    params, opt, step, history = fit(model, params, X, tcfg, opt=opt, step=step,
                                     history=history, desc=name, progress=not args.quiet,
                                     ckpt_path=os.path.join(out, "checkpoint.npz"), meta=meta,
                                     on_epoch=on_epoch)
    train_s = time.perf_counter() - t0 + extra.pop("pretrain_seconds", 0.0)
    ev = M.iwae_metrics(model, params, Xt, k=args.iwae_k)
    res = {"model": name, **ev, "train_seconds": train_s, "steps": step,
           "epochs": tcfg.epochs, "n_train": int(X.shape[0]), "n_test": int(Xt.shape[0]), **extra}
    # figures
    plots.training_curve(history, os.path.join(out, "curve.png"),
                         f"{name}: training loss (negative ELBO) on {args.data}")
    n = min(10, Xt.shape[0])
    post, _ = model.encode(params, Xt[:n, ...])
    xr = backend.to_numpy(model.decode_mean(params, post.mu))
    plots.reconstructions(ds.x_test[:n], xr, ds.image_shape, os.path.join(out, "reconstructions.png"),
                          f"{name}: test images and reconstructions E[x | z = mu]")
    if gm:
        res.update(gmvae_report(model, params, X, Xt, ds, out, track))
    else:
        z = backend.rng("prior-samples").normal((30, model.J))
        xs = backend.to_numpy(model.decode_mean(params, z))
        plots.image_grid(xs, ds.image_shape, os.path.join(out, "samples.png"),
                         f"{name}: decoder means of 30 prior samples z ~ N(0, I)")
    return res, model, params, history


# --------------------------------------------------------------------------- gmvae recipe
def gmvae_initialise(model, params, X, args, score=None) -> dict:
    """Pretrain the autoencoder, initialise the mixture and the variance head from the latent
    means, and (``--init graph``) run the anchored warm-up.  Seed-controlled and label-free:
    only ``X`` is seen.  [03-gmvae.md#the-clustering-recipe]"""
    from .cluster import (graph_partition, init_logvar_head, init_mixture_from_codes,
                          init_mixture_from_partition)
    from .models.gmvae import AnchoredGMVAE, PretrainAE

    t0 = time.perf_counter()
    rep = {"init": args.init}
    if args.pretrain_epochs > 0:
        pcfg = TrainConfig(epochs=args.pretrain_epochs, batch_size=args.batch_size, lr=1e-3)
        _, _, _, ph = fit(PretrainAE(model, drop=args.pretrain_dropout), params, X, pcfg,
                          desc="gmvae pretrain",
                          progress=not args.quiet, rng_tag="pretrain")
        rep["pretrain_recon"] = ph[-1]["loss"]
    Z = model.latent_means(params, X)
    if args.init == "gmm":
        rep.update(init_mixture_from_codes(model, params, Z, seed=args.seed,
                                           n_init=args.gmm_restarts))
        init_logvar_head(model, params, Z)
    else:
        Xh = model.b.to_numpy(X)
        labels, grep_ = graph_partition(Xh.reshape(Xh.shape[0], -1), Z, model.prior.K,
                                        k=args.graph_k, seed=args.seed)
        rep.update(grep_)
        rep.update(init_mixture_from_partition(model, params, Z, labels, seed=args.seed))
        init_logvar_head(model, params, Z)
        rep["partition"] = labels
        if args.anchor_epochs > 0:
            anch = AnchoredGMVAE(model)
            Q = model.b.one_hot(model.b.asindex(labels), model.prior.K)
            acfg = TrainConfig(epochs=args.anchor_epochs, batch_size=args.batch_size, lr=args.lr)
            last = args.anchor_epochs
            on_anchor = (None if score is None else
                         (lambda rec, p, o: score(rec["epoch"] - last, p)))   # epochs -A+1 .. 0
            _, _, _, ah = fit(anch, params, anch.pack(X, Q), acfg, desc="gmvae anchored warm-up",
                              progress=not args.quiet, rng_tag="anchor", on_epoch=on_anchor)
            rep["anchor_loss"] = ah[-1]["loss"]
        rep["anchor_epochs"] = args.anchor_epochs
    rep["pretrain_seconds"] = time.perf_counter() - t0
    return rep


def gmvae_epoch_hook(model, X, y, extra):
    """Collapse guard after every epoch; ACC/NMI tracked for the figure when labels exist (the
    labels are only ever reported, never used to choose anything).  ``track["score"]`` records
    ACC/NMI alone (the anchored warm-up calls it with epochs -A+1 .. 0)."""
    from .metrics import clustering_metrics
    from .cluster import collapse_guard

    track = {"epoch": [], "acc": [], "nmi": [], "reseeded": 0}

    def score(epoch, params):
        if y is None:
            return None
        cm = clustering_metrics(y, model.predict(params, X))
        track["epoch"].append(epoch)
        track["acc"].append(cm["acc"])
        track["nmi"].append(cm["nmi"])
        return cm["acc"]

    def on_epoch(rec, params, opt):
        track["reseeded"] += collapse_guard(model, params, opt=opt)
        acc = score(rec["epoch"], params)
        if acc is not None:
            rec["train_acc"] = acc

    track["score"] = score
    return on_epoch, track


def gmvae_report(model, params, X, Xt, ds, out, track) -> dict:
    """Clustering metrics and the GMVAE figures."""
    from . import plots
    from .metrics import clustering_metrics

    b = model.b
    res = {"reseeded_components": track["reseeded"] if track else 0}
    pi = np.exp(b.to_numpy(model.prior.log_pi(b, params)))
    res["pi"] = pi.tolist()
    yp_test = model.predict(params, Xt)
    yp_train = model.predict(params, X)
    if ds.y_test is not None:
        res.update(clustering_metrics(ds.y_test, yp_test))
    if ds.y_train is not None:
        res.update({f"train_{k}": v for k, v in clustering_metrics(ds.y_train, yp_train).items()})
    K, J = model.prior.K, model.J
    # samples: row c decodes z ~ N(mu_c, var_c)
    mu_c = b.to_numpy(params["prior.mu_c"])
    sd_c = np.exp(0.5 * b.to_numpy(model.prior.logvar_c(b, params)))
    eps = b.to_numpy(b.rng("component-samples").normal((K, 10, J)))
    z = (mu_c[:, None, :] + sd_c[:, None, :] * eps).reshape(-1, J)
    xs = b.to_numpy(model.decode_mean(params, b.asarray(z)))
    plots.image_grid(xs, ds.image_shape, os.path.join(out, "samples.png"),
                     "gmvae: row c decodes z ~ N(mu_c, sigma_c^2 I)",
                     row_labels=[f"c={c} pi={pi[c]:.2f}" for c in range(K)])
    plots.latent_scatter(model.latent_means(params, Xt), yp_test, mu_c,
                         os.path.join(out, "latent.png"),
                         "gmvae: test latent means (PCA to 2-D), coloured by assigned cluster")
    plots.bar(pi, os.path.join(out, "weights.png"), "gmvae: mixture weights pi_c",
              "component c", "pi_c")
    if track and track["epoch"]:
        warm = min(track["epoch"]) <= 0
        plots.series(track["epoch"], {"ACC": track["acc"], "NMI": track["nmi"]},
                     os.path.join(out, "clustering.png"),
                     "gmvae: clustering of the training set over training",
                     "epoch (<= 0: anchored warm-up, q(c|x) = graph partition)" if warm else "epoch",
                     "score", vline=0.5 if warm else None,
                     vline_label="q(c|x) = p(c|z) from here" if warm else None)
    return res


def make_backend(args, default_dtype="float32"):
    return Backend(args.backend, args.dtype or default_dtype, seed=args.seed)


def train_vqvae(args, backend, ds, out, resume=None):
    """Train the VQ-VAE; returns (metrics, model, params, history)."""
    from .plots import vq_figures

    tcfg, cfg, model, params, opt, step, history, meta = _setup("vqvae", args, backend, ds, resume)
    X, Xt = backend.asarray(ds.x_train), backend.asarray(ds.x_test)
    t0 = time.perf_counter()
    params, opt, step, history = fit(model, params, X, tcfg, opt=opt, step=step, history=history,
                                     desc="vqvae", progress=not args.quiet,
                                     ckpt_path=os.path.join(out, "checkpoint.npz"), meta=meta)
    res = {"model": "vqvae", **model.evaluate(params, Xt), "train_seconds": time.perf_counter() - t0,
           "steps": step, "epochs": tcfg.epochs, "n_train": int(X.shape[0]),
           "n_test": int(Xt.shape[0]),
           "train": model.evaluate(params, X)}
    res["figures"] = vq_figures(model, params, ds, history, out, backend)
    from . import plots

    plots.training_curve(history, os.path.join(out, "curve.png"),
                         f"vqvae: training loss (recon + codebook + beta commit) on {args.data}")
    return res, model, params, history


def run_stage(name, args, backend, ds, out, resume=None):
    """Train one model (any of MODELS) into ``out``; returns its metrics dict."""
    if name == "vqvae":
        return train_vqvae(args, backend, ds, out, resume)[0]
    return train_vae_like(name, args, backend, ds, out, resume)[0]


def main_kl(args) -> dict:
    """``--model kl``: the seed §1 experiment alone (float64 quadrature and estimators)."""
    from . import kl as KL

    backend = Backend(args.backend, "float64", seed=args.seed)
    out = args.out or default_out("kl")
    res = KL.run_experiment(backend, out, seed=args.seed, quick=args.quick)
    write_json(os.path.join(out, "metrics.json"), res)
    return {"out": out, **{k: v for k, v in res.items() if not isinstance(v, (list, dict))}}


def main_seeds(args) -> dict:
    """Train ``--model`` with seeds 0..--seeds-1 (same data, options and budget) and report
    every scalar metric as mean +- std; for the GMVAE this is the clustering benchmark."""
    if args.model in ("all", "kl"):
        raise UsageError("seeds needs one trainable model: --model vae|fullcov|gmvae|vqvae")
    backend0 = make_backend(args)
    ds = get_data(args, args.likelihood)
    check_model_fits_data(args.model, args, ds)
    out = args.out or default_out(f"{args.model}-seeds")
    with run_folder(out, args):
        return _seeds(args, backend0, ds, out)


def _seeds(args, backend0, ds, out) -> dict:
    from . import metrics as M

    runs = []
    for seed in range(args.seeds):
        b = Backend(backend0.name, backend0.dtype_name, seed=seed)
        a = _with(args, seed=seed)
        res = run_stage(args.model, a, b, ds, os.path.join(out, f"seed{seed}"))
        runs.append({"seed": seed, **res})
        if not args.quiet:
            print(json.dumps({"seed": seed, **{k: round(v, 4) for k, v in res.items()
                                              if isinstance(v, float)}}), file=sys.stderr)
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float))
            and not isinstance(v, bool) and k != "seed"]
    summary = {k: M.mean_std([r[k] for r in runs]) for k in keys}
    record = {"model": args.model, "seeds": args.seeds, "data": args.data, "summary": summary,
              "runs": runs, "versions": versions(), **backend0.describe(),
              "config": {k: v for k, v in vars(args).items() if k not in ("func", "explicit")}}
    write_json(os.path.join(out, "seeds.json"), record)
    show = [k for k in ("acc", "nmi", "ari", "iwae_ll", "elbo", "perplexity", "usage", "recon")
            if k in summary]
    return {"out": out, "model": args.model, "seeds": args.seeds,
            **{k: {"mean": summary[k]["mean"], "std": summary[k]["std"]} for k in show}}


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
    check_model_fits_data(args.model, args, ds)
    resume_dir = (os.path.dirname(os.path.abspath(args.resume)) if args.resume and not
                  os.path.isdir(args.resume) else args.resume)
    out = args.out or resume_dir or default_out(args.model)
    resuming = bool(resume_dir) and os.path.abspath(out) == os.path.abspath(resume_dir)
    with run_folder(out, args, resuming=resuming):
        res = run_stage(args.model, args, backend, ds, out, resume)
    record = {**res, "config": {k: v for k, v in vars(args).items() if k not in ("func", "explicit")},
              "versions": versions(), **backend.describe(), "data": args.data, "seed": args.seed}
    write_json(os.path.join(out, "metrics.json"), record)
    return {"out": out, **res}


# --------------------------------------------------------------------------- compare heads
def main_compare(args) -> dict:
    """Mean-field vs full-covariance posterior (seed §2): the same data, seeds, network and
    budget; held-out importance-weighted log-likelihood mean +- std over ``--seeds`` seeds; and
    a 2-D latent model of each kind for the posterior-ellipse figure."""
    backend0 = make_backend(args)
    ds = get_data(args, args.likelihood)
    out = args.out or default_out("compare")
    with run_folder(out, args):
        return _compare(args, backend0, ds, out)


def _compare(args, backend0, ds, out) -> dict:
    from . import metrics as M

    per = {"vae": [], "fullcov": []}
    rows = []
    for seed in range(args.seeds):
        for name in ("vae", "fullcov"):
            backend = Backend(backend0.name, backend0.dtype_name, seed=seed)
            sub = os.path.join(out, f"{name}-seed{seed}")
            a = resolve_defaults(_with(args, seed=seed, model=name, quiet=True), name)
            res, *_ = train_vae_like(name, a, backend, ds, sub)
            per[name].append(res["iwae_ll"])
            rows.append({"model": name, "seed": seed, "iwae_ll": res["iwae_ll"], "elbo": res["elbo"],
                         "kl": res["kl"], "recon": res["recon"]})
            if not args.quiet:
                print(f"{name:8s} seed {seed}: iwae_ll {res['iwae_ll']:.3f}  elbo {res['elbo']:.3f}",
                      file=sys.stderr)
    summary = {name: M.mean_std(v) for name, v in per.items()}
    diff = np.asarray(per["fullcov"]) - np.asarray(per["vae"])
    summary["fullcov_minus_vae"] = M.mean_std(diff)
    # posterior ellipses in a 2-D latent space (seed 0)
    ell = ellipse_figures(resolve_defaults(_with(args, seed=0), "vae"), backend0, ds, out)
    a = resolve_defaults(args, "vae")
    record = {"rows": rows, "summary": summary, "latent_2d": ell, "data": args.data,
              "epochs": a.epochs, "latent_dim": a.latent_dim, "hidden": list(args.hidden),
              "versions": versions(), **backend0.describe()}
    write_json(os.path.join(out, "compare.json"), record)
    return {"out": out, "vae_iwae_ll": summary["vae"], "fullcov_iwae_ll": summary["fullcov"],
            "fullcov_minus_vae": summary["fullcov_minus_vae"]}


def _with(args, **kw):
    """A copy of ``args`` with ``kw`` set; those count as given by the user, so a later
    :func:`resolve_defaults` keeps them."""
    import argparse

    d = dict(vars(args))
    d.update(kw)
    if d.get("explicit") is not None:
        d["explicit"] = set(d["explicit"]) | set(kw)
    return argparse.Namespace(**d)


# --------------------------------------------------------------------------- eval
def main_eval(args) -> dict:
    """Evaluate a checkpoint (``--resume``) on the held-out split of ``--data``."""
    from . import metrics as M

    if not args.resume:
        raise UsageError("eval needs a checkpoint: pass --resume path/to/checkpoint.npz (or its run folder)")
    ck = os.path.join(args.resume, "checkpoint.npz") if os.path.isdir(args.resume) else args.resume
    if os.path.isdir(args.resume) and not os.path.exists(ck):
        subs = sorted(d for d in os.listdir(args.resume)
                      if os.path.exists(os.path.join(args.resume, d, "checkpoint.npz")))
        if subs:
            raise UsageError(f"{args.resume!r} is a tour folder; its checkpoints are in the "
                             f"sub-folders {', '.join(subs)}: pass e.g. --resume "
                             f"{os.path.join(args.resume, subs[0])}")
    params_h, _, info = load_checkpoint(ck)
    meta = info.get("meta", {})
    name, cfg = meta.get("model"), meta.get("model_config")
    if args.model not in ("all", None) and name is not None and args.model != name:
        raise UsageError(f"checkpoint {ck!r} holds a {name!r} model but --model is "
                         f"{args.model!r}; drop --model or pass --model {name}")
    if name is None or cfg is None:
        raise CheckpointError(f"{ck!r} has no model description; was it written by scratchvae?")
    backend = make_backend(args)
    ds = get_data(args, cfg.get("likelihood", "bernoulli"))
    if cfg["D"] != ds.D:
        raise CheckpointError(f"the checkpoint was trained on data with {cfg['D']} features but "
                              f"{args.data!r} has {ds.D}; use the same data set")
    model = build_model(name, cfg, backend)
    params, _ = restore(model, params_h, {}, info, TrainConfig())
    Xt = backend.asarray(ds.x_test)
    return {"model": name, "checkpoint": ck, **M.iwae_metrics(model, params, Xt, k=args.iwae_k)}


# --------------------------------------------------------------------------- gradcheck
def gradcheck_models(backend, names=MODELS, rtol=1e-6, seed=0) -> list:
    """Finite-difference check of every model's loss gradient on small random problems."""
    from .gradcheck import check_grads

    rows = []
    cases = [(n, lik, diag) for n in names for lik in ("bernoulli", "gaussian")
             for diag in (("softplus", "exp") if n == "fullcov" else ("softplus",))]
    for name, lik, diag in cases:
        if name == "vqvae":
            cfg = {"D": 6, "latent_dim": 3, "codes_per_input": 2, "codebook_size": 5,
                   "hidden": [5, 4], "act": "tanh", "likelihood": lik,
                   "codebook_update": "grad"}
        else:
            cfg = {"D": 6, "latent_dim": 3, "hidden": [5, 4], "act": "tanh",
                   "likelihood": lik, "n_samples": 2}
        if name in ("vae", "fullcov", "gmvae"):
            cfg["posterior"] = "cholesky" if name == "fullcov" else "diag"
            cfg["cholesky_diag"] = diag
        if name == "gmvae":
            cfg["clusters"] = 3
        model = build_model(name, cfg, backend)
        rng = backend.rng("gradcheck", seed)
        params = model.init_params(rng)
        if name == "gmvae":   # non-trivial mixture parameters
            params["prior.pi_logits"] = rng.normal((3,))
            params["prior.logvar_c"] = 0.5 * rng.normal((3, 3))
        x = rng.uniform((4, cfg["D"]))
        noise = model.sample_noise(rng, 4)
        if name == "vqvae":
            # the straight-through gradient is the exact gradient of the surrogate in which
            # the code assignment and the offset e_k - z_e are frozen
            frozen = model.freeze(params, x)
            f = lambda p: model.surrogate_loss(p, x, frozen)
        else:
            f = lambda p: model.loss(p, x, noise)
        _, grads, _ = model.loss_and_grads(params, x, noise)
        r = check_grads(backend, f, params, grads, full_max=40, name=f"{name}/{lik}")
        rows.append({"model": name + ("" if diag == "softplus" else f"({diag})"),
                     "likelihood": lik, "max_rel_err": r.max_rel_err,
                     "worst": r.worst, "checks": r.n_checks, "ok": r.ok(rtol)})
    return rows


def main_gradcheck(args) -> dict:
    backend = make_backend(args, default_dtype="float64")
    if backend.dtype_name != "float64":
        raise UsageError("gradcheck runs in float64 (float32 differences cannot resolve 1e-6); "
                         "drop --dtype or pass --dtype float64")
    if args.model == "kl":
        raise UsageError("the KL estimators are gradient-checked by tests/test_kl.py; "
                         "choose --model vae|fullcov|gmvae|vqvae|all")
    names = MODELS if args.model == "all" else (args.model,)
    rows = gradcheck_models(backend, names)
    for r in rows:
        print(f"{'ok  ' if r['ok'] else 'FAIL'} {r['model']:8s} {r['likelihood']:9s} "
              f"max rel err {r['max_rel_err']:.2e} over {r['checks']} checks (worst {r['worst']})")
    ok = all(r["ok"] for r in rows)
    return {"ok": ok, "rows": rows,
            "summary": {"gradcheck": "passed" if ok else "FAILED", "backend": backend.name,
                        "models": list(names), "max_rel_err": max(r["max_rel_err"] for r in rows)}}


# --------------------------------------------------------------------------- bench
VADE_HIDDEN = (500, 500, 2000)


def bench_step(model, backend, B, steps, seed=0, warmup=3):
    """Median ms per training step (forward, backward, Adam) and the GEMM floor of that step.

    The floor: one step runs with ``nn.matmul`` recording its operands; their exact shapes and
    memory layouts (transposed views included) are then replayed on fresh arrays, timing only
    the products.  Both are medians over ``steps`` repetitions in the same process."""
    import statistics

    from . import nn
    from .optim import Adam

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


def bench_config(name, args, D=784):
    """The VaDE network for the VAE family (J = --latent-dim, K = --clusters); for the VQ-VAE
    the peer's network (784-500-500-16, K = 64 codes, one code per input, as in
    shared/peers/torch_models.py) unless --latent-dim / --codebook-size say otherwise."""
    if name == "vqvae":
        J = args.latent_dim if "latent_dim" in getattr(args, "explicit", ()) else 16
        return {"D": D, "latent_dim": J, "codes_per_input": 1, "codebook_size": args.codebook_size,
                "hidden": [500, 500], "act": "relu", "likelihood": "bernoulli",
                "codebook_update": args.codebook_update, "beta": args.beta}
    cfg = {"D": D, "latent_dim": args.latent_dim, "hidden": list(VADE_HIDDEN), "act": "relu",
           "likelihood": "bernoulli", "n_samples": 1}
    if name in ("vae", "fullcov", "gmvae"):
        cfg["posterior"] = "cholesky" if name == "fullcov" else args.posterior
    if name == "gmvae":
        cfg["clusters"] = args.clusters
    return cfg


def main_bench(args) -> dict:
    """The VaDE network (784-500-500-2000-J, mirrored decoder), batch 256, float32."""
    backend = make_backend(args)
    if args.model == "kl":
        raise UsageError("bench times training steps; choose --model vae|fullcov|gmvae|vqvae|all")
    names = MODELS if args.model == "all" else (args.model,)
    last = None
    for name in names:
        cfg = bench_config(name, args)
        model = build_model(name, cfg, backend)
        r = bench_step(model, backend, args.bench_batch, args.bench_steps)
        last = {"model": name, "batch_size": args.bench_batch, "latent_dim": cfg["latent_dim"],
                "hidden": cfg["hidden"], **r, **backend.describe()}
        if name != names[-1]:
            print(json.dumps(last))
    return last


# --------------------------------------------------------------------------- the tour
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main_all(args) -> dict:
    """``python run.py`` / ``--model all``: every part of the assignment on one data set, one
    sub-folder per stage, and ``report.md`` laying the numbers and figures next to the theory."""
    backend = make_backend(args)
    ds = get_data(args, args.likelihood)
    for stage in MODELS:
        check_model_fits_data(stage, resolve_defaults(args, stage), ds)
    out = args.out or os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
    with run_folder(out, args):
        return _tour(args, backend, ds, out)


def _tour(args, backend, ds, out) -> dict:
    from . import kl as KL

    results, seconds = {}, {}
    bar = None
    if not args.quiet:
        from tqdm.auto import tqdm

        bar = tqdm(STAGES, desc="tour", dynamic_ncols=True)
    for stage in STAGES:
        if bar is not None:
            bar.set_description(f"tour: {stage}")
        sub = os.path.join(out, stage)
        os.makedirs(sub, exist_ok=True)
        t0 = time.perf_counter()
        if stage == "kl":
            kb = Backend(backend.name, "float64", seed=args.seed)
            res = KL.run_experiment(kb, sub, seed=args.seed, quick=args.quick)
        else:
            a = resolve_defaults(args, stage)
            res = run_stage(stage, a, backend, ds, sub)
            if stage == "fullcov":
                res["ellipses"] = ellipse_figures(a, backend, ds, sub)
        seconds[stage] = time.perf_counter() - t0
        res["stage_seconds"] = seconds[stage]
        write_json(os.path.join(sub, "metrics.json"), res)
        results[stage] = res
        if bar is not None:
            bar.update(1)
    if bar is not None:
        bar.close()
    header = {"command": " ".join(["python run.py", *sys.argv[1:]]), "data": args.data,
              "seed": args.seed, **backend.describe(), "versions": versions(),
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "seconds": seconds,
              "n_train": int(ds.x_train.shape[0]), "n_test": int(ds.x_test.shape[0])}
    write_json(os.path.join(out, "metrics.json"), {"header": header, **results})
    text = render_report(out, header, results)
    atomic_write(os.path.join(out, "report.md"), lambda f: f.write(text), mode="w")
    if getattr(args, "figures_to", None):
        copy_figures(out, args.figures_to)
    return {"out": out, "report": os.path.join(out, "report.md"),
            "seconds": {k: round(v, 1) for k, v in seconds.items()}}


FIGURES = {  # tour file -> name under derivations/figures (what the derivations embed)
    "kl/kl_contours.png": "kl_contours.png",
    "kl/kl_fits.png": "kl_fits.png",
    "kl/kl_minima_vs_separation.png": "kl_minima_vs_separation.png",
    "fullcov/ellipses-vae.png": "fullcov_ellipses_vae.png",
    "fullcov/ellipses-fullcov.png": "fullcov_ellipses_fullcov.png",
    "gmvae/samples.png": "gmvae_samples.png",
    "gmvae/latent.png": "gmvae_latent.png",
    "gmvae/clustering.png": "gmvae_clustering.png",
    "vqvae/vq_reconstructions.png": "vq_reconstructions.png",
    "vqvae/vq_samples.png": "vq_samples.png",
    "vqvae/vq_usage.png": "vq_usage.png",
    "vqvae/vq_perplexity.png": "vq_perplexity.png",
}


def copy_figures(out, dest):
    """Copy the tour's figures that the derivations embed into ``dest`` (``--figures-to
    derivations/figures`` regenerates the committed pictures)."""
    import shutil

    os.makedirs(dest, exist_ok=True)
    for src, name in FIGURES.items():
        p = os.path.join(out, src)
        if os.path.exists(p):
            shutil.copyfile(p, os.path.join(dest, name))


def ellipse_figures(args, backend, ds, out, n_show=12) -> dict:
    """Train a 2-D-latent mean-field and full-covariance VAE (same seed and budget) and draw
    their posteriors q(z|x) for a few test inputs as 2-sigma ellipses."""
    from . import plots

    info = {}
    for name in ("vae", "fullcov"):
        b = Backend(backend.name, backend.dtype_name, seed=args.seed)
        a = resolve_defaults(_with(args, latent_dim=2, quiet=True, model=name), name)
        res, model, params, _ = train_vae_like(name, a, b, ds, os.path.join(out, f"{name}-2d"))
        X = b.asarray(ds.x_test[:n_show])
        post, h = model.encode(params, X)
        mu = b.to_numpy(post.mu)
        if name == "fullcov":
            _, L, _, _ = model.head.build_L(b, h)
            L = b.to_numpy(L)
            cov = L @ np.transpose(L, (0, 2, 1))
        else:
            cov = np.stack([np.diag(v) for v in b.to_numpy(post.var)])
        labels = ds.y_test[:n_show] if ds.y_test is not None else None
        kind = "full-covariance" if name == "fullcov" else "mean-field"
        path = os.path.join(out, f"ellipses-{name}.png")
        plots.posterior_ellipses(
            mu, cov, path, f"{kind} q(z|x): 2-sigma ellipses of {n_show} test inputs\n"
            f"colour = digit label; 2-D latent, iwae_ll {res['iwae_ll']:.2f} nats", labels=labels)
        corr = cov[:, 0, 1] / np.sqrt(cov[:, 0, 0] * cov[:, 1, 1])
        info[name] = {"figure": path, "iwae_ll_2d": res["iwae_ll"],
                      "mean_abs_corr": float(np.mean(np.abs(corr)))}
    return info


def _f(v, nd=3):
    try:
        return f"{float(v):.{nd}f}"
    except (TypeError, ValueError):
        return str(v)


def render_report(out, header, R) -> str:
    """report.md: per seed section the key numbers, figures and links to derivation and code."""
    rel = os.path.relpath(ROOT, os.path.abspath(out))
    link = lambda p: f"[`{p}`]({rel}/{p})"
    img = lambda p, alt: f"![{alt}]({os.path.relpath(os.path.abspath(p), os.path.abspath(out))})"
    L = []
    h = header
    L += ["# scratchvae: the assignment, reproduced", "",
          f"Command `{h['command']}` on {h['date']}; data `{h['data']}` "
          f"({h['n_train']} train / {h['n_test']} test), seed {h['seed']}, backend "
          f"`{h['backend']}` ({h['dtype']}).", "",
          f"Machine: {h['versions']['platform']}, {h['versions']['cpus']} CPUs; Python "
          f"{h['versions']['python']}, NumPy {h['versions']['numpy']}"
          + (f", CuPy {h['versions']['cupy']}" if "cupy" in h["versions"] else "") + ".", "",
          "| stage | seconds |", "|---|---|"]
    L += [f"| {k} | {v:.1f} |" for k, v in h["seconds"].items()]
    k = R["kl"]
    L += ["", "## §1 KL direction: mode-seeking vs mode-covering", "",
          f"Derivation: {link('derivations/01-kl-direction.md')}; code: {link('scratchvae/kl.py')}.", "",
          f"Target p = 1/2 N(-{k['a']}, {k['s']}^2) + 1/2 N({k['a']}, {k['s']}^2) (a/s = "
          f"{_f(k['separation'], 2)}), q = N(m, exp(2 rho)).", "",
          "| quantity | value |", "|---|---|",
          f"| forward-KL minimum: m, variance (closed form s^2 + a^2 = {_f(k['forward_min_var_closed_form'], 4)}) | "
          f"{_f(k['forward_min_m'], 6)}, {_f(k['forward_min_var'], 6)} |",
          f"| reverse-KL global minima m | {', '.join(_f(m, 4) for m in k['reverse_global_m'])} |",
          f"| reverse-KL minima found (all) | {k['reverse_n_minima']} |",
          f"| reverse-KL at the forward minimum / forward-KL at the reverse minimum | "
          f"{_f(k['reverse_kl_at_forward_min'])} / {_f(k['forward_kl_at_reverse_min'])} |",
          f"| separation a/s where off-centre minima appear (fold) | {_f(k['merge_separation'], 4)} |",
          f"| separation a/s where they become global | {_f(k['global_switch_separation'], 4)} |", ""]
    for p in k.get("figures", []):
        L += [img(p, os.path.basename(p)), ""]
    vpath = os.path.join(out, "kl", "kl_variance.md")
    if os.path.exists(vpath):
        L += ["Gradient-estimator variance (reverse KL, scenario 3):", "", open(vpath).read(), ""]
    if os.path.exists(os.path.join(out, "kl", "kl_snis.md")):
        L += ["Self-normalised importance sampling of the forward KL (scenario 3, optional; biased "
              "for finite n, and blind to a mode q misses): [kl/kl_snis.md](kl/kl_snis.md); the "
              "derivation explains the numbers.", ""]
    v, fc = R["vae"], R["fullcov"]
    L += ["## §2 Full-covariance posterior (Cholesky head)", "",
          f"Derivation: {link('derivations/02-full-covariance.md')}; code: "
          f"{link('scratchvae/distributions.py')} `CholeskyHead`, {link('scratchvae/models/vae.py')}.", "",
          "Held-out metrics, nats per example (iwae_ll: importance-weighted bound, k = "
          f"{v.get('iwae_k')}).", "",
          "| model | iwae_ll | elbo | recon | kl | epochs | seconds |", "|---|---|---|---|---|---|---|"]
    for name, r in (("mean-field (vae)", v), ("full covariance (fullcov)", fc)):
        L.append(f"| {name} | {_f(r['iwae_ll'])} | {_f(r['elbo'])} | {_f(r['recon'])} | "
                 f"{_f(r['kl'])} | {r['epochs']} | {_f(r['train_seconds'], 1)} |")
    L += ["", "One seed here; `python run.py compare` gives mean +- std over seeds.", ""]
    for name in ("vae", "fullcov"):
        e = fc.get("ellipses", {}).get(name)
        if e:
            L += [img(e["figure"], f"posterior ellipses {name}"),
                  f"mean |correlation| of q(z|x) in 2-D: {_f(e['mean_abs_corr'])}", ""]
    L += [img(os.path.join(out, "fullcov", "samples.png"), "fullcov samples"), ""]
    g = R["gmvae"]
    L += ["## §3 Gaussian-mixture VAE", "",
          f"Derivation: {link('derivations/03-gmvae.md')}; code: {link('scratchvae/models/gmvae.py')}, "
          f"{link('scratchvae/distributions.py')} `MixturePrior`.", "",
          "| acc | nmi | ari | iwae_ll | elbo | train acc | re-seeded components |", "|---|---|---|---|---|---|---|",
          f"| {_f(g.get('acc'))} | {_f(g.get('nmi'))} | {_f(g.get('ari'))} | {_f(g['iwae_ll'])} | "
          f"{_f(g['elbo'])} | {_f(g.get('train_acc'))} | {g.get('reseeded_components')} |", "",
          "Clustering metrics are on the held-out split; labels are used only to score.", ""]
    if g.get("init") == "graph":
        L += [f"Initialisation: spectral partition of the consensus {g.get('graph_k')}-NN graph "
              f"({g.get('graph_edges_consensus')} edges agreed by data and latent means), "
              f"training-split ACC of that partition {_f(g.get('partition_acc'))}; then "
              f"{g.get('anchor_epochs', '')} anchored warm-up epochs "
              f"([`03-gmvae.md`]({rel}/derivations/03-gmvae.md#the-consensus-neighbour-graph)).", ""]
    for f_, alt in (("samples.png", "samples per component"), ("latent.png", "latent means"),
                    ("weights.png", "mixture weights"), ("clustering.png", "ACC/NMI over training")):
        p = os.path.join(out, "gmvae", f_)
        if os.path.exists(p):
            L += [img(p, alt), ""]
    q = R["vqvae"]
    L += ["## §4 VQ-VAE", "",
          f"Derivation: {link('derivations/04-vqvae.md')}; code: {link('scratchvae/quantize.py')}, "
          f"{link('scratchvae/models/vqvae.py')}.", "",
          "Held-out split (the usage figure below counts the training split).", "",
          "| recon (nats) | recon_mse | perplexity | usage | dead codes | bits/dim |", "|---|---|---|---|---|---|",
          f"| {_f(q['recon'])} | {_f(q.get('recon_mse'), 4)} | {_f(q['perplexity'], 2)} | "
          f"{_f(q['usage'])} | {q['dead_codes']} | {_f(q.get('bits_per_dim'))} |", ""]
    for p in q.get("figures", []):
        L += [img(p, os.path.basename(p)), ""]
    return "\n".join(L) + "\n"
