"""``seeds`` (one model over several seeds: mean +- std of every metric; for the GMVAE, the
clustering benchmark) and ``compare`` (mean-field vs full-covariance posterior on the same data,
seeds and budget, plus the posterior-ellipse figures in a 2-D latent)."""
from __future__ import annotations

import json
import os
import sys

import numpy as np

from .. import metrics as M
from .. import plots
from . import report
from ..errors import UsageError
from .options import chosen_options, explicit_options
from .registry import entry
from .runs import config_record, default_out, get_data, run_folder, versions, write_json
from .train import _refuse_foreign, run_model


def _n_seeds(args):
    return args.seeds if args.seeds is not None else (2 if args.quick else 3)


def main_seeds(args) -> dict:
    if args.model is None:
        raise UsageError("seeds needs --model (vae, fullcov, gmvae or vqvae)")
    e = entry(args.model)
    explicit = explicit_options(args)
    _refuse_foreign(args.model, e, explicit)
    first = e.make(chosen_options(args, explicit))
    ds = get_data(args, first.options.likelihood)
    first.check(ds.x_train)
    out = args.out or default_out(f"{args.model}-seeds")
    with run_folder(out, args):
        return _seeds(args, e, ds, out)


def _seeds(args, e, ds, out) -> dict:
    runs = []
    for seed in range(_n_seeds(args)):
        est = e.make({**chosen_options(args), "random_state": seed}, verbose=not args.quiet)
        res = run_model(args.model, est, ds, os.path.join(out, f"seed{seed}"), args)
        runs.append({"seed": seed, **res})
        if not args.quiet:
            print(json.dumps({"seed": seed, **{k: round(v, 4) for k, v in res.items()
                                              if isinstance(v, float)}}), file=sys.stderr)
    keys = [k for k, v in runs[0].items() if isinstance(v, (int, float))
            and not isinstance(v, bool) and k != "seed"]
    summary = {k: M.mean_std([r[k] for r in runs]) for k in keys}
    record = {"model": args.model, "seeds": len(runs), "data": args.data, "summary": summary,
              "runs": runs, "versions": versions(), **est.backend_.describe(),
              "config": config_record(args), "options": {**est.get_params(), "random_state": None}}
    write_json(os.path.join(out, "seeds.json"), record)
    main_metric = next(k for k in ("acc", "iwae_ll", "perplexity", "recon") if k in summary)
    plots.per_seed({args.model: summary[main_metric]["values"]},
                   os.path.join(out, f"seeds-{main_metric}.png"),
                   f"{args.model} on {args.data}: held-out {main_metric}, one dot per seed",
                   main_metric)
    report.seeds_report(out, args, {
        "title": f"{args.model} over {len(runs)} seeds", "summary": summary, "runs": runs,
        "extra": [f"seeds 0-{len(runs) - 1}", f"backend `{est.options.backend}`"],
        "notes": report.gmvae_phases(est)},
        lambda r: f"seed{r['seed']}")
    show = [k for k in ("acc", "nmi", "ari", "iwae_ll", "elbo", "perplexity", "usage", "recon")
            if k in summary]
    return {"out": out, "report": os.path.join(out, "report.md"), "model": args.model,
            "seeds": len(runs),
            **{k: {"mean": summary[k]["mean"], "std": summary[k]["std"]} for k in show}}


def main_compare(args) -> dict:
    explicit = explicit_options(args)
    _refuse_foreign("vae", entry("vae"), explicit)
    if "posterior" in explicit:
        raise UsageError("compare sets the posterior itself (diag vs cholesky); drop --posterior")
    first = entry("vae").make(chosen_options(args, explicit))
    ds = get_data(args, first.options.likelihood)
    first.check(ds.x_train)
    out = args.out or default_out("compare")
    with run_folder(out, args):
        return _compare(args, ds, out)


def _compare(args, ds, out) -> dict:
    from .tour import ellipse_figures

    per = {"vae": [], "fullcov": []}
    rows = []
    for seed in range(_n_seeds(args)):
        for name in ("vae", "fullcov"):
            est = entry(name).make({**chosen_options(args), "random_state": seed})
            res = run_model(name, est, ds, os.path.join(out, f"{name}-seed{seed}"), args)
            per[name].append(res["iwae_ll"])
            rows.append({"model": name, "seed": seed, "iwae_ll": res["iwae_ll"],
                         "elbo": res["elbo"], "kl": res["kl"], "recon": res["recon"]})
            if not args.quiet:
                print(f"{name:8s} seed {seed}: iwae_ll {res['iwae_ll']:.3f}  elbo {res['elbo']:.3f}",
                      file=sys.stderr)
    summary = {name: M.mean_std(v) for name, v in per.items()}
    summary["fullcov_minus_vae"] = M.mean_std(np.asarray(per["fullcov"]) - np.asarray(per["vae"]))
    ell = ellipse_figures(type(args)(**{**vars(args), "seed": 0, "quiet": True}), ds, out)
    record = {"rows": rows, "summary": summary, "latent_2d": ell, "data": args.data,
              "epochs": est.options.epochs, "latent_dim": est.options.latent_dim,
              "hidden": list(est.options.hidden), "versions": versions(),
              **est.backend_.describe()}
    write_json(os.path.join(out, "compare.json"), record)
    plots.per_seed({"mean-field": per["vae"], "full covariance": per["fullcov"]},
                   os.path.join(out, "compare-iwae_ll.png"),
                   f"held-out iwae_ll on {args.data}: each seed's pair joined",
                   "iwae_ll (nats per example)")
    report.seeds_report(out, args, {
        "title": "mean-field vs full-covariance posterior", "summary": summary, "runs": rows,
        "extra": [f"seeds 0-{len(per['vae']) - 1}", f"{est.options.epochs} epochs",
                  f"J = {est.options.latent_dim}"]},
        lambda r: f"{r['model']}-seed{r['seed']}")
    return {"out": out, "report": os.path.join(out, "report.md"), "vae_iwae_ll": summary["vae"],
            "fullcov_iwae_ll": summary["fullcov"],
            "fullcov_minus_vae": summary["fullcov_minus_vae"]}
