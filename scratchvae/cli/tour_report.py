"""The tour's ``report.md``: per assignment section the key numbers, every figure with what it
shows (captions from :data:`.report.CAPTIONS`) and links to the derivation and the code."""
from __future__ import annotations

import os

from .report import CAPTIONS

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _f(v, nd=3):
    try:
        return f"{float(v):.{nd}f}"
    except (TypeError, ValueError):
        return str(v)


def _figs(c, sub, names, notes=()) -> list:
    """Each figure of ``sub`` that exists, with its caption; then the notes on what was not
    drawn (non-image data)."""
    link, img, out, rel = c
    L = []
    for f_, alt in names:
        p = os.path.join(out, sub, f_)
        if os.path.exists(p):
            L += [img(p, alt), ""] + ([f"*{CAPTIONS[f_]}*", ""] if f_ in CAPTIONS else [])
    return L + [f"Note: {n}." for n in notes] + ([""] if notes else [])


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
    L += _figs(c, "kl", [(os.path.basename(p), os.path.basename(p)) for p in k.get("figures", [])])
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
    for sub, name in (("vae", "mean-field"), ("fullcov", "full covariance")):
        L += [f"**{name}** ([report]({sub}/report.md), [history.csv]({sub}/history.csv)):", ""]
        L += _figs(c, sub, [("curve.png", f"{sub} training curves"),
                            ("reconstructions.png", f"{sub} reconstructions"),
                            ("features.png", f"{sub} reconstructions, feature by feature"),
                            ("samples.png", f"{sub} prior samples")],
                   R[sub].get("figure_notes", ()))
    ell = fc.get("ellipses", {})
    if ell:
        corr = ", ".join(f"{n} {_f(e.get('mean_abs_corr_test'))}" for n, e in ell.items())
        ll = ", ".join(f"{n} {_f(e.get('iwae_ll_2d'))}" for n, e in ell.items())
        L += ["**A 2-D latent** (the same two models with J = 2, same seed and budget): mean "
              f"|correlation| of q(z|x) over the test set {corr}; held-out iwae_ll {ll}.", ""]
        L += _figs(c, "fullcov", [("latent2d.png", "2-D posteriors side by side"),
                                  ("manifold.png", "decoder manifolds side by side")],
                   () if os.path.exists(os.path.join(out, "fullcov", "manifold.png")) else
                   ["the decoders' manifolds are not drawn: the data are not images"])
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
              f"({g.get('graph_edges_consensus')} edges agreed by data and latent means; "
              f"{g.get('partition_overclustering')} x K clusters merged back to K by modularity), "
              f"training-split ACC of that partition {_f(g.get('partition_acc'))}; then "
              f"{g.get('anchor_epochs', '')} anchored warm-up epochs; the final clusters agree "
              f"with the partition on {_f(g.get('partition_agreement'))} of the training rows "
              "(label-free) "
              f"([`05-clustering-recipe.md`]({rel}/derivations/05-clustering-recipe.md#the-consensus-neighbour-graph)).", ""]
    L += [f"Phases: {g.get('pretrain_epochs', '?')} pretraining, {g.get('anchor_epochs', 0)} "
          f"anchored warm-up and {g.get('epochs')} ELBO epochs (`--epochs` sets only the ELBO "
          "phase; `--pretrain-epochs` or `--pretrain-steps` and `--anchor-epochs` set the others). Per epoch: "
          "[gmvae/history.csv](gmvae/history.csv).", ""]
    L += _figs(c, "gmvae", [("curve.png", "training curves, all phases"),
                            ("reconstructions.png", "reconstructions"),
                            ("features.png", "reconstructions, feature by feature"),
                            ("confusion.png", "confusion matrix"),
                            ("tsne.png", "t-SNE of latent means"),
                            ("samples.png", "samples per component"),
                            ("latent.png", "latent means"), ("weights.png", "mixture weights"),
                            ("clustering.png", "ACC/NMI over training")],
               g.get("figure_notes", ()))
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
    L += _figs(c, "vqvae", [(f_, f_) for f_ in (
        "curve.png", "vq_reconstructions.png", "features.png", "vq_samples.png",
        "vq_samples_empirical.png", "vq_atlas.png", "vq_usage.png", "vq_perplexity.png")],
        q.get("figure_notes", ()))
    return L
