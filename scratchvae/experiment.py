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
MODELS = ("vae", "fullcov", "gmvae")


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
    raise UsageError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")


# Defaults that differ between models; any option given on the command line wins.
DEFAULTS = {
    "vae": {"epochs": 100, "lr": 1e-3, "lr_decay": 1.0},
    "fullcov": {"epochs": 100, "lr": 1e-3, "lr_decay": 1.0},
    "gmvae": {"epochs": 60, "lr": 2e-3, "lr_decay": 0.9, "pretrain_epochs": 30},
    "vqvae": {"epochs": 100, "lr": 1e-3, "lr_decay": 1.0},
}
FALLBACK = {"epochs": 60, "lr": 1e-3, "lr_decay": 1.0, "pretrain_epochs": 30}


def resolve_defaults(args, model=None):
    """Fill the options left at None with the defaults of ``model`` (default ``args.model``).
    Returns a copy; the names the user set are remembered in ``explicit`` so that a later call
    for another model (the tour) re-resolves only the others."""
    import argparse

    d = dict(FALLBACK)
    d.update(DEFAULTS.get(model or args.model, {}))
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
    cfg = {"D": int(D), "latent_dim": args.latent_dim, "hidden": list(args.hidden),
           "act": args.act, "likelihood": args.likelihood, "n_samples": args.samples}
    if name in ("vae", "fullcov", "gmvae"):
        cfg["posterior"] = "cholesky" if name == "fullcov" else args.posterior
    if name == "gmvae":
        cfg["clusters"] = args.clusters
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
    """Train a VAE-family model (vae, fullcov, gmvae); returns (metrics, model, params, history)."""
    from . import metrics as M
    from . import plots

    gm = name == "gmvae"
    tcfg = TrainConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                       lr_decay=args.lr_decay, decay_every=args.decay_every,
                       checkpoint_every=args.checkpoint_every)
    X = backend.asarray(ds.x_train)
    Xt = backend.asarray(ds.x_test)
    extra = {}
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
        if gm:
            extra.update(gmvae_initialise(model, params, X, args))
    meta = {"model": name, "model_config": cfg, "train_config": tcfg.__dict__,
            "data": args.data, "seed": args.seed, **backend.describe()}
    on_epoch, track = (gmvae_epoch_hook(model, X, ds.y_train, extra) if gm else (None, None))
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
def gmvae_initialise(model, params, X, args) -> dict:
    """Pretrain the autoencoder, then initialise the mixture and the variance head from the
    latent means (seed-controlled, label-free)."""
    from .models.gmvae import PretrainAE, init_logvar_head, init_mixture_from_codes

    t0 = time.perf_counter()
    rep = {}
    if args.pretrain_epochs > 0:
        pcfg = TrainConfig(epochs=args.pretrain_epochs, batch_size=args.batch_size, lr=1e-3)
        _, _, _, ph = fit(PretrainAE(model, drop=args.pretrain_dropout), params, X, pcfg,
                          desc="gmvae pretrain",
                          progress=not args.quiet, rng_tag="pretrain")
        rep["pretrain_recon"] = ph[-1]["loss"]
    Z = model.latent_means(params, X)
    rep.update(init_mixture_from_codes(model, params, Z, seed=args.seed, n_init=args.gmm_restarts))
    init_logvar_head(model, params, Z)
    rep["pretrain_seconds"] = time.perf_counter() - t0
    return rep


def gmvae_epoch_hook(model, X, y, extra):
    """Collapse guard after every epoch; ACC/NMI tracked for the figure when labels exist (the
    labels are only ever reported, never used to choose anything)."""
    from .metrics import clustering_metrics
    from .models.gmvae import collapse_guard

    track = {"epoch": [], "acc": [], "nmi": [], "reseeded": 0}

    def on_epoch(rec, params, opt):
        track["reseeded"] += collapse_guard(model, params, opt=opt)
        if y is not None:
            cm = clustering_metrics(y, model.predict(params, X))
            track["epoch"].append(rec["epoch"])
            track["acc"].append(cm["acc"])
            track["nmi"].append(cm["nmi"])
            rec["train_acc"] = cm["acc"]

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
        plots.series(track["epoch"], {"ACC": track["acc"], "NMI": track["nmi"]},
                     os.path.join(out, "clustering.png"),
                     "gmvae: clustering of the training set over training", "epoch", "score")
    return res


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
    record = {**res, "config": {k: v for k, v in vars(args).items() if k not in ("func", "explicit")},
              "versions": versions(), **backend.describe(), "data": args.data, "seed": args.seed}
    write_json(os.path.join(out, "metrics.json"), record)
    return {"out": out, **res}


# --------------------------------------------------------------------------- compare heads
def main_compare(args) -> dict:
    """Mean-field vs full-covariance posterior (seed §2): the same data, seeds, network and
    budget; held-out importance-weighted log-likelihood mean +- std over ``--seeds`` seeds; and
    a 2-D latent model of each kind for the posterior-ellipse figure."""
    from . import metrics as M
    from . import plots

    backend0 = make_backend(args)
    ds = get_data(args, args.likelihood)
    out = args.out or default_out("compare")
    os.makedirs(out, exist_ok=True)
    per = {"vae": [], "fullcov": []}
    rows = []
    for seed in range(args.seeds):
        for name in ("vae", "fullcov"):
            backend = Backend(backend0.name, backend0.dtype_name, seed=seed)
            sub = os.path.join(out, f"{name}-seed{seed}")
            a = _with(args, seed=seed, model=name, quiet=True)
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
    # posterior ellipses in a 2-D latent space
    ell = {}
    n_show = 12
    for name in ("vae", "fullcov"):
        backend = Backend(backend0.name, backend0.dtype_name, seed=0)
        a = _with(args, seed=0, model=name, quiet=True, latent_dim=2)
        res, model, params, _ = train_vae_like(name, a, backend, ds, os.path.join(out, f"{name}-2d"))
        X = backend.asarray(ds.x_test[:n_show])
        post, h = model.encode(params, X)
        mu = backend.to_numpy(post.mu)
        if name == "fullcov":
            _, L, _, _ = model.head.build_L(backend, h)
            L = backend.to_numpy(L)
            cov = L @ np.transpose(L, (0, 2, 1))
        else:
            cov = np.stack([np.diag(v) for v in backend.to_numpy(post.var)])
        labels = ds.y_test[:n_show] if ds.y_test is not None else None
        plots.posterior_ellipses(
            mu, cov, os.path.join(out, f"ellipses-{name}.png"),
            f"{'full-covariance' if name == 'fullcov' else 'mean-field'} q(z|x), 2-sigma ellipses, "
            f"{n_show} test inputs, colour = digit label\n(2-D latent; iwae_ll {res['iwae_ll']:.2f} nats)", labels=labels)
        ell[name] = {"iwae_ll_2d": res["iwae_ll"],
                     "mean_abs_corr": float(np.mean(np.abs(cov[:, 0, 1] / np.sqrt(cov[:, 0, 0] * cov[:, 1, 1]))))}
    record = {"rows": rows, "summary": summary, "latent_2d": ell, "data": args.data,
              "epochs": args.epochs, "latent_dim": args.latent_dim, "hidden": list(args.hidden),
              "versions": versions(), **backend0.describe()}
    write_json(os.path.join(out, "compare.json"), record)
    return {"out": out, "vae_iwae_ll": summary["vae"], "fullcov_iwae_ll": summary["fullcov"],
            "fullcov_minus_vae": summary["fullcov_minus_vae"]}


def _with(args, **kw):
    import argparse

    d = dict(vars(args))
    d.update(kw)
    return argparse.Namespace(**d)


# --------------------------------------------------------------------------- eval
def main_eval(args) -> dict:
    """Evaluate a checkpoint (``--resume``) on the held-out split of ``--data``."""
    from . import metrics as M

    if not args.resume:
        raise UsageError("eval needs a checkpoint: pass --resume path/to/checkpoint.npz (or its run folder)")
    ck = os.path.join(args.resume, "checkpoint.npz") if os.path.isdir(args.resume) else args.resume
    params_h, _, info = load_checkpoint(ck)
    meta = info.get("meta", {})
    name, cfg = meta.get("model"), meta.get("model_config")
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
    for name in names:
        for lik in ("bernoulli", "gaussian"):
            cfg = {"D": 6, "latent_dim": 3, "hidden": [5, 4], "act": "tanh", "likelihood": lik,
                   "n_samples": 2}
            if name in ("vae", "fullcov"):
                cfg["posterior"] = "cholesky" if name == "fullcov" else "diag"
            model = build_model(name, cfg, backend)
            rng = backend.rng("gradcheck", seed)
            params = model.init_params(rng)
            # the check must also see non-trivial prior / head parameters
            x = rng.uniform((4, cfg["D"]))
            noise = model.sample_noise(rng, 4)
            _, grads, _ = model.loss_and_grads(params, x, noise)
            r = check_grads(backend, lambda p: model.loss(p, x, noise), params, grads,
                            full_max=40, name=f"{name}/{lik}")
            rows.append({"model": name, "likelihood": lik, "max_rel_err": r.max_rel_err,
                         "worst": r.worst, "checks": r.n_checks, "ok": r.ok(rtol)})
    return rows


def main_gradcheck(args) -> dict:
    backend = make_backend(args, default_dtype="float64")
    if backend.dtype_name != "float64":
        raise UsageError("gradcheck runs in float64 (float32 differences cannot resolve 1e-6); "
                         "drop --dtype or pass --dtype float64")
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

    xp = backend.xp
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
    # steps and replays in separate blocks: interleaving them makes each evict the other's
    # working set from the caches and inflates both
    t_step, t_gemm = [], []
    for i in range(steps):
        t0 = time.perf_counter()
        sync(one_step(i + warmup + 1))
        t_step.append(time.perf_counter() - t0)
    for i in range(steps):
        t0 = time.perf_counter()
        for a, b_ in replay:
            a @ b_
        sync(None)
        t_gemm.append(time.perf_counter() - t0)
    ms, floor = 1e3 * statistics.median(t_step), 1e3 * statistics.median(t_gemm)
    n_params = sum(int(np.prod(v.shape)) for v in params.values())
    return {"ms_per_step": ms, "gemm_floor_ms": floor, "ratio": ms / floor,
            "n_matmuls": len(calls), "n_params": n_params}


def bench_config(name, args, D=784):
    cfg = {"D": D, "latent_dim": args.latent_dim, "hidden": list(VADE_HIDDEN), "act": "relu",
           "likelihood": "bernoulli", "n_samples": 1}
    if name in ("vae", "fullcov"):
        cfg["posterior"] = "cholesky" if name == "fullcov" else "diag"
    return cfg


def main_bench(args) -> dict:
    """The VaDE network (784-500-500-2000-J, mirrored decoder), batch 256, float32."""
    backend = make_backend(args)
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
