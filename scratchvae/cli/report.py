"""What every command leaves beside its numbers: ``history.csv`` (one row per epoch, phase by
phase) and ``report.md`` (data, seeds, machine, the metrics, the figures), built from the run's
own files and written atomically.  The tour writes its own, longer report (``tour.py``)."""
from __future__ import annotations

import csv
import io
import math
import os
import sys

from ..train import atomic_write
from .runs import versions


def write_history(path, est) -> str:
    """Every epoch the estimator trained, one CSV row each: the phase (pretrain, warm-up,
    train), the epoch within it, the step, the loss and its parts, the learning rate, and what
    the epoch hook recorded (training ACC, agreement with the partition, re-seeded components)."""
    rows = []
    if (getattr(est.options, "warm_start", False) and not getattr(est, "phase_history_", None)
            and os.path.exists(path)):
        # a resumed run: its checkpoint keeps only the last phase's history, so the earlier
        # phases (the GMVAE's pretraining and warm-up) are carried over from the file
        with open(path, newline="") as f:
            rows = [r for r in csv.DictReader(f) if r.get("phase") not in ("train", None)]
    for phase, hist in (*getattr(est, "phase_history_", {}).items(), ("train", est.history_)):
        rows += [{"phase": phase, **h} for h in hist]
    cols = ["phase", "epoch", "step", "loss"]
    cols += sorted({k for r in rows for k in r} - set(cols))
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols, restval="", lineterminator="\n")
    w.writeheader()
    w.writerows(rows)
    atomic_write(path, lambda f: f.write(buf.getvalue()), mode="w")
    return path


def _fmt(v) -> str:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return str(v)
    return f"{v:.4g}" if isinstance(v, float) and math.isfinite(v) else str(v)


def _header(title, args, extra=()) -> list:
    v = versions()
    prog = "scratchvae" if os.path.basename(sys.argv[0]) == "scratchvae" else "python run.py"
    cmd = " ".join([prog, *sys.argv[1:]]) if sys.argv and sys.argv[0] else f"{prog} ..."
    return [f"# {title}", "", f"Command `{cmd}`.", "",
            (f"Data `{args.data}`" if getattr(args, "data", None) else "No data set (the §1 "
             "study of two 1-D Gaussians)")
            + (f" (first {args.limit} rows of each split)" if getattr(args, "limit", None) else "")
            + "; " + "; ".join(extra) + ".", "",
            f"Machine: {v['platform']}, {v['cpus']} CPUs; Python {v['python']}, NumPy {v['numpy']}"
            + (f", CuPy {v['cupy']}" if "cupy" in v else "") + ".", ""]


def _table(rows: dict) -> list:
    """{name: value} -> a two-column Markdown table of the scalar entries."""
    out = ["| metric | value |", "|---|---|"]
    out += [f"| {k} | {_fmt(v)} |" for k, v in rows.items()
            if isinstance(v, (int, float, str)) and not isinstance(v, bool)]
    return out + [""]


# what each figure shows, as the report's caption under it (file name -> caption)
CAPTIONS = {
    "curve.png": "Training curves per epoch: the loss (negative ELBO; the VQ-VAE: its "
                 "objective) and its terms, as the mean over the epoch's training batches "
                 "(lines; the parameters move during the epoch) and on the held-out split at "
                 "the end of every few epochs (dots, one noise sample per row); the learning "
                 "rate when it changes; GMVAE: pretraining (autoencoder loss), anchored warm-up "
                 "and ELBO phases in one timeline.",
    "reconstructions.png": "Held-out inputs (top of each pair) and their reconstructions "
                           "E[x | z = mu] (below), one input per class where labels exist.",
    "samples.png": "Decoder means of samples from the prior (GMVAE: one row per component).",
    "latent.png": "Held-out latent means on their first two principal components (x: the "
                  "component means), coloured by assigned cluster and by the true label.",
    "confusion.png": "Clusters against labels after the Hungarian matching (held-out split): "
                     "row = true label, column = matched cluster; the diagonal is ACC.",
    "weights.png": "Mixture weights pi_c.",
    "clustering.png": "ACC / NMI of the training split over training (labels only score).",
    "vq_reconstructions.png": "Held-out inputs and their VQ-VAE reconstructions.",
    "vq_samples.png": "Decoded uniformly random code combinations (no learned prior over "
                      "codes: why the VQ-VAE needs one).",
    "vq_atlas.png": "Decoded atlas: row m is the typical input's codes with position m set to "
                    "each of that position's most used codes.",
    "vq_usage.png": "Codebook usage on the training split, sorted; dashed: uniform.",
    "vq_perplexity.png": "Codebook perplexity during training.",
    "tsne.png": "t-SNE (scikit-learn) of the held-out latent means, coloured by the assigned "
                "cluster and, beside it, by the true label.",
    "vq_samples_empirical.png": "Decoded codes drawn from their empirical frequencies on the "
                                "training split, each position independently.",
    "latent2d.png": "2-D latent, models side by side on shared axes: every held-out mean "
                    "coloured by label, and the 2-sigma ellipses of q(z|x) for two inputs per "
                    "class (mean-field: axis-aligned; full covariance: tilted).",
    "manifold.png": "The decoders' manifolds: E[x | z] on a 15 x 15 grid of prior quantiles "
                    "(5%..95%), models side by side.",
    "ellipses-vae.png": "Mean-field q(z|x) in a 2-D latent (shared axes with the full-"
                        "covariance figure).",
    "ellipses-fullcov.png": "Full-covariance q(z|x) in a 2-D latent (shared axes with the "
                            "mean-field figure).",
    "kl_contours.png": "log10 of both KLs over q's (m, rho), with descent paths, minima and "
                       "saddles.",
    "kl_fits.png": "The target p (grey) and the Gaussian q at each minimum: forward KL, one "
                   "wide q; reverse KL, each global minimum a separate q on one mode.",
    "kl_minima_vs_separation.png": "Critical points of the reverse KL against the separation "
                                   "a/s: where off-centre minima are born and become global.",
    "seeds-acc.png": "Held-out ACC, one dot per seed; black bar: the mean.",
    "seeds-iwae_ll.png": "Held-out iwae_ll, one dot per seed; black bar: the mean.",
    "compare-iwae_ll.png": "Held-out iwae_ll per seed, mean-field vs full covariance, each "
                           "seed's pair joined.",
    "baselines-acc.png": "ACC on the training rows per seed, each method; black bar: the mean.",
    "features.png": "Non-image data: held-out rows and their reconstructions, feature by "
                    "feature (not drawn as images).",
}


def _figures(out, sub="") -> list:
    folder = os.path.join(out, sub)
    pngs = sorted(f for f in os.listdir(folder) if f.endswith(".png")) if os.path.isdir(folder) else []
    return [f"![{os.path.splitext(f)[0]}]({os.path.join(sub, f) if sub else f})\n\n"
            + (f"*{CAPTIONS[f]}*\n" if f in CAPTIONS else "") for f in pngs]


def gmvae_phases(est) -> list:
    """The GMVAE's --epochs counts only the last phase: say so where a reader looks."""
    if est.kind != "gmvae":
        return []
    o = est.options
    anchor = getattr(est, "fit_info_", {}).get("anchor_epochs", getattr(o, "anchor_epochs", 0)) \
        if getattr(o, "init", "graph") == "graph" else 0
    ran = getattr(est, "fit_info_", {}).get("pretrain_epochs")
    pre = (f"{ran} pretraining epochs (--pretrain-epochs, or --pretrain-steps "
           f"{o.pretrain_steps} when that is 0)" if ran is not None else
           f"{o.pretrain_epochs or f'{o.pretrain_steps} steps of'} pretraining (--pretrain-epochs)")
    return [f"Phases: {pre}, {anchor} "
            f"anchored warm-up epochs (--anchor-epochs, --anchor-steps), then {o.epochs} ELBO epochs "
            "(--epochs counts only this last phase).", ""]


def write(out, lines) -> str:
    path = os.path.join(out, "report.md")
    atomic_write(path, lambda f: f.write("\n".join(lines) + "\n"), mode="w")
    return path


def train_report(out, args, res, est) -> str:
    """One model's run: its metrics (held-out), how it trained, its figures."""
    lines = _header(f"scratchvae: {res['model']}", args,
                    [f"{res['n_train']} train / {res['n_test']} test rows",
                     f"seed {est.options.random_state}",
                     f"backend `{est.options.backend}` ({est.options.dtype})"])
    lines += ["Held-out metrics (nats per example where a likelihood; clustering scores use the "
              "labels only to score):", ""]
    lines += _table({k: v for k, v in res.items() if k not in ("model", "pi")})
    lines += gmvae_phases(est)
    lines += ["Per-epoch record: [history.csv](history.csv) (loss and its terms, learning rate, "
              "held-out loss every few epochs); every number: [metrics.json](metrics.json).", ""]
    lines += [f"Note: {n}" for n in res.get("figure_notes", [])] + [""]
    return write(out, lines + _figures(out))


def seeds_report(out, args, record, sub_of) -> str:
    """One format for ``seeds``, ``compare`` and ``baselines``: the summary (mean +- std over
    seeds), one row per seed, the figure across seeds, and each seed's run folder."""
    lines = _header(f"scratchvae: {record['title']}", args, record["extra"])
    lines += ["| metric | mean | std | values |", "|---|---|---|---|"]
    for k, s in record["summary"].items():
        lines.append(f"| {k} | {_fmt(s['mean'])} | {_fmt(s['std'])} | "
                     f"{', '.join(_fmt(v) for v in s['values'])} |")
    lines += ["", *record.get("notes", []), *_figures(out)]
    subs = [s for s in (sub_of(r) for r in record["runs"])
            if s and os.path.exists(os.path.join(out, s, "report.md"))]
    if subs:                   # each run's own report: its curves, reconstructions, samples
        lines += ["Runs (each with its report, history.csv and figures): "
                  + ", ".join(f"[{s}]({s}/report.md)" for s in subs), ""]
    return write(out, lines)


def eval_report(out, args, res, est) -> str:
    """``eval``: the checkpoint's held-out metrics and its figures, drawn from the checkpoint."""
    lines = _header(f"scratchvae: evaluation of {res['model']}", args,
                    [f"checkpoint `{res['checkpoint']}`", f"{res['n_train']} train / "
                     f"{res['n_test']} test rows", f"seed {est.options.random_state}",
                     f"backend `{est.options.backend}` ({est.options.dtype})"])
    lines += ["Held-out metrics of the checkpoint (nats per example where a likelihood; "
              "clustering scores use the labels only to score):", ""]
    lines += _table({k: v for k, v in res.items() if k not in ("checkpoint", "model", "pi")})
    lines += gmvae_phases(est)
    lines += [f"Note: {n}" for n in res.get("figure_notes", [])] + [""]
    return write(out, lines + _figures(out))


def kl_report(out, args, res) -> str:
    """``train --model kl``: the §1 study's numbers, figures and estimator-variance table."""
    lines = _header("scratchvae: §1 KL direction", args, [f"seed {getattr(args, 'seed', 0) or 0}",
                    "float64 quadrature"])
    lines += _table(res)
    vpath = os.path.join(out, "kl_variance.md")
    if os.path.exists(vpath):
        with open(vpath) as f:
            lines += ["Gradient-estimator variance (reverse KL):", "", f.read(), ""]
    return write(out, lines + _figures(out))
