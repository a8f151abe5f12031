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


def ellipse_figures(args, ds, out, n_show=12) -> dict:
    """Train a 2-D-latent mean-field and full-covariance VAE (same seed and budget) and draw
    their posteriors q(z|x) for a few test inputs as 2-sigma ellipses."""
    from .. import plots

    info = {}
    for name in ("vae", "fullcov"):
        est = _stage_estimator(name, args, latent_dim=2)
        est.set_params(verbose=False)
        res = run_model(name, est, ds, os.path.join(out, f"{name}-2d"), args)
        b, model, params = est.backend_, est.model_, est.params_
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
    """report.md: per assignment section the key numbers, figures and links to derivation and
    code."""
    rel = os.path.relpath(ROOT, os.path.abspath(out))
    c = (lambda p: f"[`{p}`]({rel}/{p})",
         lambda p, alt: f"![{alt}]({os.path.relpath(os.path.abspath(p), os.path.abspath(out))})",
         out, rel)
    L = (_header(c, header) + _kl_section(c, R["kl"]) + _fullcov_section(c, R)
         + _gmvae_section(c, R["gmvae"]) + _vqvae_section(c, R["vqvae"]))
    return "\n".join(L) + "\n"


def _header(c, header) -> list:
    """Command, data, seed, backend, machine and the seconds of each stage."""
    link, img, out, rel = c
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
    return L


def _kl_section(c, k) -> list:
    """§1: the KL-direction numbers, figures and estimator-variance table."""
    link, img, out, rel = c
    L = []
    L += ["", "## §1 KL direction: mode-seeking vs mode-covering", "",
          f"Derivation: {link('derivations/01-kl-direction.md')}; code: {link('scratchvae/kl/__init__.py')}.", "",
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
    return L


def _fullcov_section(c, R) -> list:
    """§2: mean-field vs full covariance, and the 2-D ellipse figures."""
    link, img, out, rel = c
    L = []
    v, fc = R["vae"], R["fullcov"]
    L += ["## §2 Full-covariance posterior (Cholesky head)", "",
          f"Derivation: {link('derivations/02-full-covariance.md')}; code: "
          f"{link('scratchvae/distributions/heads.py')} `CholeskyHead`, {link('scratchvae/models/vae.py')}.", "",
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
    return L


def _gmvae_section(c, g) -> list:
    """§3: clustering metrics, the initialisation, the figures."""
    link, img, out, rel = c
    L = []
    L += ["## §3 Gaussian-mixture VAE", "",
          f"Derivation: {link('derivations/03-gmvae.md')}; code: {link('scratchvae/models/gmvae.py')}, "
          f"{link('scratchvae/distributions/mixture.py')} `MixturePrior`.", "",
          "| acc | nmi | ari | iwae_ll | elbo | train acc | re-seeded components |", "|---|---|---|---|---|---|---|",
          f"| {_f(g.get('acc'))} | {_f(g.get('nmi'))} | {_f(g.get('ari'))} | {_f(g['iwae_ll'])} | "
          f"{_f(g['elbo'])} | {_f(g.get('train_acc'))} | {g.get('reseeded_components')} |", "",
          "Clustering metrics are on the held-out split; labels are used only to score.", ""]
    if g.get("init") == "graph":
        L += [f"Initialisation: spectral partition of the consensus {g.get('graph_k')}-NN graph "
              f"({g.get('graph_edges_consensus')} edges agreed by data and latent means), "
              f"training-split ACC of that partition {_f(g.get('partition_acc'))}; then "
              f"{g.get('anchor_epochs', '')} anchored warm-up epochs; the final clusters agree "
              f"with the partition on {_f(g.get('partition_agreement'))} of the training rows "
              "(label-free) "
              f"([`05-clustering-recipe.md`]({rel}/derivations/05-clustering-recipe.md#the-consensus-neighbour-graph)).", ""]
    for f_, alt in (("samples.png", "samples per component"), ("latent.png", "latent means"),
                    ("weights.png", "mixture weights"), ("clustering.png", "ACC/NMI over training")):
        p = os.path.join(out, "gmvae", f_)
        if os.path.exists(p):
            L += [img(p, alt), ""]
    return L


def _vqvae_section(c, q) -> list:
    """§4: reconstruction, code usage, the figures."""
    link, img, out, rel = c
    L = []
    L += ["## §4 VQ-VAE", "",
          f"Derivation: {link('derivations/04-vqvae.md')}; code: {link('scratchvae/quantize.py')}, "
          f"{link('scratchvae/models/vqvae.py')}.", "",
          "Held-out split (the usage figure below counts the training split).", "",
          "| recon (nats) | recon_mse | perplexity | usage | dead codes | bits/dim |", "|---|---|---|---|---|---|",
          f"| {_f(q['recon'])} | {_f(q.get('recon_mse'), 4)} | {_f(q['perplexity'], 2)} | "
          f"{_f(q['usage'])} | {q['dead_codes']} | {_f(q.get('bits_per_dim'))} |", ""]
    for p in q.get("figures", []):
        L += [img(p, os.path.basename(p)), ""]
    return L
