"""``python run.py`` (``train --model all``): every part of the assignment on one data set --
the KL study (§1), the mean-field and full-covariance VAEs (§2), the GMVAE (§3), the VQ-VAE
(§4) -- one sub-folder per stage, and ``report.md`` laying the numbers and figures next to the
derivations and the code."""
from __future__ import annotations

import os
import sys
import time

import numpy as np

from ..backend import Backend
from ..errors import UsageError
from ..train import atomic_write
from .options import chosen_options
from .registry import entry
from .runs import config_record, get_data, resolve_source, run_folder, versions, write_json
from .train import run_model
from .tour_report import render_report

STAGES = ("kl", "vae", "fullcov", "gmvae", "vqvae")      # in this order
STAGE_TEXT = {"kl": "§1 KL direction (quadrature, critical points, estimator variance; no bar)",
              "vae": "§2 mean-field VAE", "fullcov": "§2 full-covariance VAE, then the 2-D "
              "mean-field and full-covariance VAEs", "gmvae": "§3 GMVAE (pretraining, graph "
              "partition, anchored warm-up, ELBO)", "vqvae": "§4 VQ-VAE"}
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _stage_estimator(name, args, **override):
    return entry(name).make({**chosen_options(args), **override}, strict=False,
                            verbose=not args.quiet)


def main(args) -> dict:
    resolve_source(args)
    stages = {s: _stage_estimator(s, args) for s in STAGES if s != "kl"}
    likelihood = stages["vae"].options.likelihood
    ds = get_data(args, likelihood)
    for est in stages.values():
        est.check(ds.x_train)                    # every stage's refusals before any output
    dest = getattr(args, "figures_to", None)
    if dest and (os.path.exists(dest) and not os.path.isdir(dest)
                 or not os.access(os.path.dirname(os.path.abspath(dest)) or ".", os.W_OK)):
        raise UsageError(f"--figures-to {dest!r} must be a folder that can be written (it is a "
                         "file or its parent is not writable); name another folder")
    out = args.out or os.path.join("runs", time.strftime("%Y%m%d-%H%M%S"))
    with run_folder(out, args):
        return _tour(args, stages, ds, out)


def _tour(args, stages, ds, out) -> dict:
    from .. import kl as KL

    results, seconds = {}, {}
    seed = stages["vae"].options.random_state
    backend = stages["vae"].options.backend
    for i, stage in enumerate(STAGES):
        if not args.quiet:                # a line per stage; each model's own bar shows its epochs
            print(f"tour [{i + 1}/{len(STAGES)}] {stage}: {STAGE_TEXT[stage]}", file=sys.stderr,
                  flush=True)
        sub = os.path.join(out, stage)
        os.makedirs(sub, exist_ok=True)
        t0 = time.perf_counter()
        if stage == "kl":
            kb = Backend(backend, "float64", seed=seed)
            res = KL.run_experiment(kb, sub, seed=seed, quick=args.quick)
        else:
            res = run_model(stage, stages[stage], ds, sub, args)
            if stage == "fullcov":
                res["ellipses"] = ellipse_figures(args, ds, sub)
        seconds[stage] = time.perf_counter() - t0
        res["stage_seconds"] = seconds[stage]
        write_json(os.path.join(sub, "metrics.json"), res)
        results[stage] = res
        if not args.quiet:
            print(f"tour [{i + 1}/{len(STAGES)}] {stage}: done in {seconds[stage]:.1f} s",
                  file=sys.stderr, flush=True)
    est = stages["vae"]
    prog = "scratchvae" if os.path.basename(sys.argv[0]) == "scratchvae" else "python run.py"
    header = {"command": " ".join([prog, *sys.argv[1:]]), "data": args.data,
              "seed": seed, **est.backend_.describe(), "versions": versions(),
              "date": time.strftime("%Y-%m-%d %H:%M:%S"), "seconds": seconds,
              "n_train": int(ds.x_train.shape[0]), "n_test": int(ds.x_test.shape[0])}
    write_json(os.path.join(out, "metrics.json"),
               {"header": header, "config": config_record(args), **results})
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


def ellipse_figures(args, ds, out, per_class=2) -> dict:
    """Train a 2-D-latent mean-field and full-covariance VAE (same seed and budget) and draw,
    on shared axes, every test input's posterior mean coloured by label with the 2-sigma
    ellipses of q(z|x) for ``per_class`` inputs of each class, side by side (``latent2d.png``;
    with ``--figures-to``, each model alone too: ``ellipses-<model>.png``, what the derivation
    embeds), and the two decoders' manifolds side by side (``manifold.png``)."""
    from .. import paperfigs as P

    info, models, decoders = {}, {}, {}
    for name in ("vae", "fullcov"):
        est = _stage_estimator(name, args, latent_dim=2)
        est.set_params(verbose=False)
        res = run_model(name, est, ds, os.path.join(out, f"{name}-2d"), args)
        b, model, params = est.backend_, est.model_, est.params_
        mus, covs = [], []
        for i in range(0, ds.x_test.shape[0], 1024):
            post, h = model.encode(params, b.asarray(ds.x_test[i:i + 1024]))
            mus.append(b.to_numpy(post.mu))
            if name == "fullcov":
                _, L, _, _ = model.head.build_L(b, h)
                L = b.to_numpy(L)
                covs.append(L @ np.transpose(L, (0, 2, 1)))
            else:
                covs.append(np.stack([np.diag(v) for v in b.to_numpy(post.var)]))
        mu, cov = np.concatenate(mus), np.concatenate(covs)
        kind = "full covariance" if name == "fullcov" else "mean-field"
        corr = cov[:, 0, 1] / np.sqrt(cov[:, 0, 0] * cov[:, 1, 1])
        models[kind] = (mu, cov, f"iwae_ll {res['iwae_ll']:.2f} nats, mean |corr| "
                        f"{np.mean(np.abs(corr)):.2f}")
        decoders[kind] = (lambda z, m=model, p=params, bb=b:
                          bb.to_numpy(m.decode_mean(p, bb.asarray(z))))
        info[name] = {"figure": os.path.join(out, f"ellipses-{name}.png"),
                      "iwae_ll_2d": res["iwae_ll"],
                      "mean_abs_corr": float(np.mean(np.abs(corr[:12]))),   # first 12 inputs
                      "mean_abs_corr_test": float(np.mean(np.abs(corr)))}   # the whole split
    lim = P.latent_limits(models, ds.y_test, per_class)
    what = (f"q(z|x) in a 2-D latent: all {ds.x_test.shape[0]} test means (dots), 2-sigma "
            f"ellipses of {per_class} per class")
    for name, kind in (("vae", "mean-field"), ("fullcov", "full covariance")):
        if getattr(args, "figures_to", None):    # each alone: what the derivation embeds
            P.latent_2d({kind: models[kind]}, ds.y_test, info[name]["figure"],
                        f"{kind} {what}", per_class=per_class, lim=lim)
        else:
            info[name]["figure"] = os.path.join(out, "latent2d.png")
    P.latent_2d(models, ds.y_test, os.path.join(out, "latent2d.png"),
                f"mean-field vs full covariance, {what}", per_class=per_class, lim=lim)
    if ds.image_shape is not None:
        P.manifold(decoders, ds.image_shape, os.path.join(out, "manifold.png"),
                   "the decoders' manifolds: E[x | z] over a grid of prior quantiles")
    return info
