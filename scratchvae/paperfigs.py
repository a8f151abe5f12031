"""Floor 5: the figures a reader of a VAE paper expects (host NumPy arrays in, PNG files out,
all through :func:`scratchvae.plots.save_fig` at 150 dpi or more).

* :func:`curves` -- training and held-out loss split into its terms, phase by phase;
* :func:`one_per_class` / :func:`reconstructions_or_features` -- inputs beside their
  reconstructions, one per class; for data that are not images, a feature-by-feature
  comparison instead of a padded "image";
* :func:`confusion` -- clusters against labels after the Hungarian matching;
* :func:`embedding` -- a t-SNE of latent means, coloured by assigned cluster and by true label;
* :func:`latent_2d` / :func:`manifold` -- a 2-D latent: every test mean by label with
  posterior ellipses, and the decoder's manifold, models side by side on shared axes;
* :func:`vq_atlas` / :func:`vq_empirical_samples` -- what each VQ code does, and samples from
  the codes' empirical distribution.

Every random draw here comes from its own ``numpy.random.default_rng`` (never a training
stream)."""
from __future__ import annotations

import numpy as np

from .plots import _categorical, _plt, _tile, image_grid, save_fig

DPI = 150
PHASE_NAMES = {"pretrain": "pretraining (autoencoder)", "warm-up": "anchored warm-up",
               "train": "ELBO"}


def _timeline(phases):
    """[(phase, history)] -> rows with a global epoch ``t`` and the phase boundaries."""
    rows, bounds, t0 = [], [], 0
    for name, hist in phases:
        if not hist:
            continue
        for h in hist:
            rows.append({**h, "t": t0 + h["epoch"] - hist[0]["epoch"] + 1, "phase": name})
        bounds.append((name, t0, t0 + len(hist)))
        t0 += len(hist)
    return rows, bounds


def curves(phases, path, title, terms=(("recon", "reconstruction"), ("reg", "KL / regulariser")),
           loss_label="loss (negative ELBO)"):
    """Left: the loss per epoch on the training batches (line) and held-out (dots); right: its
    ``terms`` the same way; a third panel with the learning rate when it changes.  ``phases``:
    [(name, history)] drawn one after another with their boundaries marked."""
    plt = _plt()
    rows, bounds = _timeline(phases)
    lrs = [r.get("lr") for r in rows if r.get("lr") is not None]
    show_lr = len(set(lrs)) > 1
    phased = len(bounds) > 1
    fig, axes = plt.subplots(1, 3 if show_lr else 2, figsize=(15 if show_lr else 11, 4.4))
    fig.subplots_adjust(left=0.06 if show_lr else 0.075, right=0.99, top=0.89,
                        bottom=0.2 if phased else 0.13, wspace=0.26)  # fixed: one drawing pass
    cols = plt.get_cmap("tab10").colors

    def draw(ax, key, label, col):
        pts = [(r["t"], r[key]) for r in rows if key in r]
        if pts:
            ax.plot(*zip(*pts), "-", color=col, lw=1.8, label=f"{label}, training")
        held = [(r["t"], r[f"heldout_{key}"]) for r in rows if f"heldout_{key}" in r]
        if held:
            ax.plot(*zip(*held), "o", color=col, ms=5, mec="k", mew=0.5,
                    label=f"{label}, held-out")
        return bool(pts or held)

    draw(axes[0], "loss", loss_label, cols[0])
    for i, (key, label) in enumerate(terms):
        draw(axes[1], key, label, cols[(i + 1) % 10])
    if show_lr:
        axes[2].plot([r["t"] for r in rows if "lr" in r], lrs, color="0.3")
        axes[2].set_ylabel("learning rate")
    from matplotlib.ticker import MaxNLocator

    shades = ("#e8eef7", "#f7efe2", "#ffffff")
    if len(bounds) > 1:
        fig.supxlabel("phases (shaded, dashed lines between): " + ", ".join(
            f"epochs {a + 1}-{b} {PHASE_NAMES.get(n, n)}" for n, a, b in bounds), fontsize=10,
            y=0.02)
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if len(bounds) > 1:                      # each phase on its own background
            for k, (name, a, b) in enumerate(bounds):
                ax.axvspan(a + 0.5, b + 0.5, color=shades[k % len(shades)], zorder=0, lw=0)
                if k:
                    ax.axvline(a + 0.5, color="0.4", ls="--", lw=1)
        ax.set_xlabel("epoch" + (" (all phases in order)" if len(bounds) > 1 else ""))
        ax.grid(alpha=0.3)
    for ax in axes[:2]:
        ax.set_ylabel("nats per example")
        _clip_spikes(ax)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=9)
    fig.suptitle(title, fontsize=12)
    return save_fig(fig, path, dpi=DPI, tight=False)


def one_per_class(y, n=10):
    """Indices of the first example of each class (up to ``n`` classes), or the first ``n``."""
    if y is None:
        return np.arange(n)
    y = np.asarray(y)
    idx = [int(np.flatnonzero(y == c)[0]) for c in np.unique(y)[:n]]
    return np.asarray(idx)


def reconstructions_or_features(x, xr, y, image_shape, path, title) -> str | None:
    """Inputs above their reconstructions, one per class; for non-image data (``image_shape``
    None) each row's features as a line beside its reconstruction.  -> a note, or None."""
    idx = one_per_class(y, min(10, x.shape[0]))
    idx = idx[idx < x.shape[0]]
    lab = [f"label {int(y[i])}" for i in idx] if y is not None else None
    if image_shape is not None:
        ims = np.concatenate([x[idx], xr[idx]], axis=0)
        image_grid(ims, image_shape, path, title, ncol=len(idx),
                   row_labels=["input", "reconstruction"], dpi=DPI,
                   col_labels=[str(int(y[i])) for i in idx] if y is not None else None)
        return None
    feature_rows(x[idx[:4]], xr[idx[:4]], path, title, lab[:4] if lab else None)
    return ("the data are not images (a table of features); reconstructions are "
            "drawn feature by feature (features.png), and samples are not drawn")


def feature_rows(x, xr, path, title, labels=None):
    """Up to four rows: the input's features (line) and its reconstruction (dashed)."""
    plt = _plt()
    n = x.shape[0]
    fig, axes = plt.subplots(n, 1, figsize=(9, 1.9 * n + 0.8), sharex=True, squeeze=False,
                             layout="constrained")
    f = np.arange(x.shape[1])
    for i, ax in enumerate(axes[:, 0]):
        ax.plot(f, x[i], "o-", ms=3, color="tab:blue", label="input")
        ax.plot(f, xr[i], "s--", ms=3, color="tab:orange", label="reconstruction")
        ax.set_ylabel(labels[i] if labels else f"row {i}", fontsize=9)
        ax.grid(alpha=0.3)
    from matplotlib.ticker import MaxNLocator

    axes[0, 0].legend(fontsize=9, ncol=2, loc="lower right", bbox_to_anchor=(1.0, 1.0),
                      frameon=False)                 # above the first panel, over no data
    axes[-1, 0].xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[-1, 0].set_xlabel("feature index")
    fig.suptitle(title, fontsize=12)
    return save_fig(fig, path, dpi=DPI)


def confusion(y_true, y_pred, path, title):
    """Counts of (true label, cluster), clusters reordered by the Hungarian matching so that
    cluster j faces the label it is matched to; ACC = diagonal / N.  -> ACC."""
    from scipy.optimize import linear_sum_assignment

    plt = _plt()
    yt, yp = np.asarray(y_true), np.asarray(y_pred)
    labels, clusters = np.unique(yt), np.unique(yp)
    C = np.array([[np.sum((yt == a) & (yp == c)) for c in clusters] for a in labels])
    r, c = linear_sum_assignment(-C)
    order = list(c[np.argsort(r)]) + [j for j in range(len(clusters)) if j not in c]
    C = C[:, order]
    acc = C[np.arange(len(r)), np.arange(len(r))].sum() / max(1, yt.size)
    fig, ax = plt.subplots(figsize=(0.55 * len(clusters) + 2.5, 0.5 * len(labels) + 2),
                           layout="constrained")
    im = ax.imshow(C, cmap="Blues")
    for i in range(C.shape[0]):
        for j in range(C.shape[1]):
            ax.text(j, i, str(C[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if C[i, j] > 0.6 * C.max() else "black")
    ax.set_xticks(range(len(order)), [str(clusters[j]) for j in order])
    ax.set_yticks(range(len(labels)), [str(a) for a in labels])
    ax.set_xlabel("cluster (ordered by its matched label)")
    ax.set_ylabel("true label")
    fig.colorbar(im, ax=ax, label="held-out rows", shrink=0.8)
    ax.set_title(f"{title}\nACC after Hungarian matching = {acc:.3f}", fontsize=11)
    save_fig(fig, path, dpi=DPI)
    return float(acc)


def _clip_spikes(ax):
    """A few epochs far above the rest (the first epoch of a phase, e.g. the anchored warm-up
    starting with narrow components) would flatten every other curve: clip the y axis at 1.3x
    the 98th percentile and say what is off scale."""
    ys = np.concatenate([np.asarray(l.get_ydata(), dtype=float) for l in ax.get_lines()
                         if len(l.get_ydata()) > 1] or [np.zeros(0)])
    ys = ys[np.isfinite(ys)]
    if ys.size < 10:
        return
    lo, hi, top = ys.min(), np.percentile(ys, 98), ys.max()
    if top - lo > 3 * (hi - lo) and hi > lo:
        ax.set_ylim(top=hi + 0.3 * (hi - lo), bottom=lo - 0.05 * (hi - lo))
        ax.text(0.99, 0.97, f"off scale: peak {top:.0f}", transform=ax.transAxes, ha="right",
                va="top", fontsize=8, color="0.3")


def embedding(Z, clusters, labels, path, title, max_points=2000, seed=0):
    """t-SNE (scikit-learn, at most ``max_points`` rows, drawn by ``seed``) of the latent means:
    coloured by the assigned cluster, and beside it by the true label (when given)."""
    from sklearn.manifold import TSNE

    plt = _plt()
    Z = np.asarray(Z, dtype=np.float64)
    idx = np.arange(Z.shape[0])
    if idx.size > max_points:
        idx = np.sort(np.random.default_rng(seed).choice(idx, max_points, replace=False))
    if Z.shape[1] > 2:
        Y = TSNE(2, perplexity=min(30.0, max(2.0, (idx.size - 1) / 3)), init="pca",
                 max_iter=500, random_state=seed).fit_transform(Z[idx])
        axis = ("t-SNE 1", "t-SNE 2")
    else:
        Y, axis = Z[idx], ("$z_1$", "$z_2$")
    panels = [("cluster", np.asarray(clusters)[idx], "assigned cluster")]
    if labels is not None:
        panels.append(("label", np.asarray(labels)[idx], "true label (only for this picture)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6.2 * len(panels), 5.4), squeeze=False,
                             layout="constrained")
    for ax, (name, lab, sub) in zip(axes[0], panels):
        _categorical(ax, Y, lab, name, fontsize=9)
        ax.set_xlabel(axis[0])
        ax.set_ylabel(axis[1])
        ax.set_title(f"coloured by {sub}", fontsize=11)
    fig.suptitle(f"{title} ({idx.size} held-out rows)", fontsize=12)
    return save_fig(fig, path, dpi=DPI)


def _ellipse(ax, mu, cov, color, std=2.0):
    from matplotlib.patches import Ellipse

    vals, vecs = np.linalg.eigh(cov)
    vals = np.clip(vals, 0, None)
    angle = np.degrees(np.arctan2(vecs[1, 1], vecs[0, 1]))
    ax.add_patch(Ellipse(mu, 2 * std * np.sqrt(vals[1]), 2 * std * np.sqrt(vals[0]),
                         angle=angle, fill=False, color=color, lw=1.4))


def _picks(lab, per_class):
    return np.concatenate([np.flatnonzero(lab == c)[:per_class] for c in np.unique(lab)])


def latent_limits(models, labels=None, per_class=2):
    """Shared axis limits (xlo, xhi, ylo, yhi) for {name: (mu, cov, ...)}: the central 99% of
    the means and the whole of the ellipses drawn, with a margin."""
    means, ends = [], []
    for mu, cov, *_ in models.values():
        lab = np.zeros(mu.shape[0], int) if labels is None else np.asarray(labels)
        j = _picks(lab, per_class)
        half = 2.0 * np.sqrt(np.stack([cov[j, 0, 0], cov[j, 1, 1]], 1))
        means.append(mu)
        ends += [mu[j] - half, mu[j] + half]
    means, ends = np.concatenate(means), np.concatenate(ends)
    lo = np.minimum(np.percentile(means, 0.5, axis=0), ends.min(0))
    hi = np.maximum(np.percentile(means, 99.5, axis=0), ends.max(0))
    pad = 0.05 * (hi - lo) + 1e-6
    return (lo[0] - pad[0], hi[0] + pad[0], lo[1] - pad[1], hi[1] + pad[1])


def latent_2d(models, labels, path, title, per_class=2, lim=None):
    """``models``: {name: (mu (N, 2), cov (N, 2, 2), subtitle)}, side by side on shared axes:
    every held-out mean as a dot coloured by label, and the 2-sigma ellipses of q(z|x) for
    ``per_class`` inputs of each class (the first ones)."""
    import matplotlib

    plt = _plt()
    lab = np.zeros(next(iter(models.values()))[0].shape[0], int) if labels is None else \
        np.asarray(labels)
    cats = np.unique(lab)
    cmap = matplotlib.colormaps["tab10" if cats.size <= 10 else "tab20"]
    pick = _picks(lab, per_class)
    lim = lim or latent_limits(models, labels, per_class)
    fig, axes = plt.subplots(1, len(models), figsize=(6 * len(models) + 1, 5.8), squeeze=False,
                             sharex=True, sharey=True, layout="constrained")
    for ax, (name, (mu, cov, sub)) in zip(axes[0], models.items()):
        for i, c in enumerate(cats):
            m = lab == c
            ax.scatter(mu[m, 0], mu[m, 1], s=7, alpha=0.45, color=cmap(i % cmap.N),
                       label=str(c) if labels is not None else "test input")
        for j in pick:
            col = cmap(int(np.searchsorted(cats, lab[j])) % cmap.N)
            _ellipse(ax, mu[j], cov[j], col)
            ax.plot(*mu[j], "o", color=col, ms=4, mec="k", mew=0.6)
        ax.set_xlim(lim[0], lim[1])
        ax.set_ylim(lim[2], lim[3])
        ax.set_xlabel("$z_1$")
        ax.set_ylabel("$z_2$")
        ax.set_title(f"{name}\n{sub}", fontsize=11)
        ax.grid(alpha=0.3)
    axes[0, -1].legend(title="label" if labels is not None else None, fontsize=9,
                       markerscale=2.5, loc="center left", bbox_to_anchor=(1.01, 0.5))
    import textwrap

    fig.suptitle(textwrap.fill(title, int(12 * fig.get_figwidth())), fontsize=12)
    return save_fig(fig, path, dpi=DPI)


def manifold(decoders, image_shape, path, title, n=15):
    """``decoders``: {name: f(z (n*n, 2)) -> (n*n, D)}; each decodes the grid
    z = Phi^-1(u), u on an n x n grid in (0.05, 0.95)^2 (the prior's quantiles), side by side."""
    from scipy.stats import norm

    plt = _plt()
    u = np.linspace(0.05, 0.95, n)
    g = norm.ppf(u)
    z = np.array([[a, b] for b in g[::-1] for a in g])         # rows: z2 from high to low
    fig, axes = plt.subplots(1, len(decoders), figsize=(6 * len(decoders), 6.3), squeeze=False,
                             layout="constrained")
    for ax, (name, dec) in zip(axes[0], decoders.items()):
        canvas = _tile(np.clip(dec(z), 0, 1), image_shape, n)
        ax.imshow(canvas, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest",
                  extent=(g[0], g[-1], g[0], g[-1]))
        ax.set_xlabel("$z_1$ (prior quantiles 5%..95%)")
        ax.set_ylabel("$z_2$")
        ax.set_title(name, fontsize=11)
    fig.suptitle(title, fontsize=12)
    return save_fig(fig, path, dpi=DPI)


def vq_code_stats(codes, K):
    """codes (N, M) -> per-position frequencies (M, K)."""
    codes = np.asarray(codes)
    return np.stack([np.bincount(codes[:, m], minlength=K) / codes.shape[0]
                     for m in range(codes.shape[1])])


def vq_atlas(decode_codes, freq, image_shape, path, title, top=12):
    """Row m: the typical input (each position's most frequent code) with position m replaced
    by each of that position's ``top`` most used codes, decoded."""
    M, K = freq.shape
    modal = freq.argmax(1)
    rows, labels = [], []
    for m in range(M):
        ks = np.argsort(-freq[m], kind="stable")[:top]
        k = np.tile(modal, (len(ks), 1))
        k[:, m] = ks
        rows.append(decode_codes(k))
        labels.append(f"position {m}")
    xs = np.concatenate(rows)
    return image_grid(xs, image_shape, path, title, ncol=top, row_labels=labels, dpi=DPI)


def vq_empirical_samples(decode_codes, freq, image_shape, path, title, n=30, seed=0):
    """Decoded code tuples, each position's code drawn from its training-split frequency."""
    rng = np.random.default_rng(seed)
    k = np.stack([rng.choice(freq.shape[1], size=n, p=freq[m]) for m in range(freq.shape[0])], 1)
    return image_grid(decode_codes(k), image_shape, path, title, ncol=10, dpi=DPI)
