"""Floor 5: figures (matplotlib, Agg backend, host NumPy arrays only).

Every figure has a title, labelled axes where axes mean something, and is written atomically.
"""
from __future__ import annotations

import os

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_fig(fig, path, dpi=150, palette=False, tight=True):
    """Write a figure to ``path`` via a temporary file in the same folder (never half-written).
    ``palette``: store it with 256 colours (a filled contour plot at 150 dpi is 3x smaller).
    A figure with a layout engine, or ``tight=False`` (margins set by the caller), is saved as
    laid out: one drawing pass instead of two."""
    from .train import atomic_write

    plt = _plt()
    tight = None if (fig.get_layout_engine() is not None or not tight) else "tight"
    if palette:
        import io

        from PIL import Image

        buf = io.BytesIO()
        fig.savefig(buf, format="png", dpi=dpi, bbox_inches=tight)
        buf.seek(0)
        im = Image.open(buf).convert("RGB").quantize(256)
        atomic_write(path, lambda f: im.save(f, format="PNG", optimize=True, dpi=(dpi, dpi)))
    else:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi, bbox_inches=tight))
    plt.close(fig)
    return os.fspath(path)


def training_curve(history, path, title, keys=("loss",), ylabel="nats per example"):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ep = [h["epoch"] for h in history]
    for k in keys:
        vals = [h[k] for h in history if k in h]
        if vals:
            ax.plot(ep[:len(vals)], vals, label=k)
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_fig(fig, path)


def _tile(images, image_shape, ncol):
    images = np.asarray(images, dtype=np.float64)
    n = images.shape[0]
    if image_shape is None:
        side = int(np.ceil(np.sqrt(images.shape[1])))
        pad = np.zeros((n, side * side))
        pad[:, :images.shape[1]] = images
        images, image_shape = pad, (side, side)
    h, w = image_shape
    nrow = int(np.ceil(n / ncol))
    canvas = np.zeros((nrow * (h + 1) + 1, ncol * (w + 1) + 1))   # white gaps (gray_r)
    for i in range(n):
        r, c = divmod(i, ncol)
        canvas[1 + r * (h + 1):1 + r * (h + 1) + h, 1 + c * (w + 1):1 + c * (w + 1) + w] = \
            images[i].reshape(h, w)
    return canvas


def image_grid(images, image_shape, path, title, ncol=10, row_labels=None, dpi=150,
               col_labels=None):
    """Tile (N, D) images in rows of ``ncol``; values clipped to [0, 1] for display;
    ``col_labels`` under the columns."""
    plt = _plt()
    canvas = _tile(np.clip(images, 0, 1), image_shape, ncol)
    fig, ax = plt.subplots(figsize=(0.6 * ncol + 1, 0.6 * canvas.shape[0] / (canvas.shape[1] / ncol) + 1))
    ax.imshow(canvas, cmap="gray_r", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title)
    ax.set_xticks([])
    if col_labels is not None:
        w = canvas.shape[1] / ncol
        ax.set_xticks([w * (i + 0.5) for i in range(len(col_labels))])
        ax.set_xticklabels(col_labels)
        ax.tick_params(axis="x", length=0)
    if row_labels is not None:
        h = canvas.shape[0] / len(row_labels)
        ax.set_yticks([h * (i + 0.5) for i in range(len(row_labels))])
        ax.set_yticklabels(row_labels)
    else:
        ax.set_yticks([])
    return save_fig(fig, path, dpi=dpi)


def reconstructions(x, xr, image_shape, path, title, n=10):
    """Row pairs: originals above, reconstructions below."""
    n = min(n, x.shape[0])
    ims = np.concatenate([x[:n], xr[:n]], axis=0)
    return image_grid(ims, image_shape, path, title, ncol=n,
                      row_labels=["data", "reconstruction"])


def posterior_ellipses(mu, cov, path, title, labels=None, std=2.0):
    """2-D posteriors N(mu_i, cov_i) drawn as their ``std``-sigma ellipses."""
    from matplotlib.patches import Ellipse

    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.5, 5))
    cmap = plt.get_cmap("tab10")
    for i in range(mu.shape[0]):
        vals, vecs = np.linalg.eigh(cov[i])
        vals = np.clip(vals, 0, None)
        angle = np.degrees(np.arctan2(vecs[1, 1], vecs[0, 1]))
        color = cmap(int(labels[i]) % 10) if labels is not None else cmap(i % 10)
        ax.add_patch(Ellipse(mu[i], 2 * std * np.sqrt(vals[1]), 2 * std * np.sqrt(vals[0]),
                             angle=angle, fill=False, color=color, lw=1.5))
        ax.plot(*mu[i], "o", color=color, ms=3)
    if labels is not None:
        from matplotlib.lines import Line2D

        seen = sorted({int(v) for v in labels})
        ax.legend([Line2D([], [], color=cmap(v % 10), lw=2) for v in seen], [str(v) for v in seen],
                  title="label", loc="best", fontsize=8)
    ax.autoscale_view()
    ax.set_aspect("equal", adjustable="datalim")
    ax.set_xlabel("$z_1$")
    ax.set_ylabel("$z_2$")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    return save_fig(fig, path)


def _project2(Z, centres):
    """Codes and centres on the first two principal components of Z (or as they are)."""
    Z = np.asarray(Z, dtype=np.float64)
    centres = np.asarray(centres, dtype=np.float64)
    mean = Z.mean(0)
    if Z.shape[1] > 2:
        _, _, vt = np.linalg.svd(Z - mean, full_matrices=False)
        P, labs = vt[:2].T, ("principal component 1", "principal component 2")
    else:
        P = np.eye(Z.shape[1])[:, :2] if Z.shape[1] == 2 else np.eye(1)
        labs = ("$z_1$", "$z_2$")
    Y, C = (Z - mean) @ P, (centres - mean) @ P
    if Y.shape[1] == 1:
        Y = np.concatenate([Y, np.zeros_like(Y)], 1)
        C = np.concatenate([C, np.zeros_like(C)], 1)
    return Y, C, labs


def _categorical(ax, Y, labels, name, fontsize=8):
    """One colour per category (tab10, then tab20 for more), a legend, no colour bar."""
    import matplotlib

    labels = np.asarray(labels)
    cats = np.unique(labels)
    cmap = matplotlib.colormaps["tab10" if cats.size <= 10 else "tab20"]
    for i, c in enumerate(cats):
        m = labels == c
        ax.scatter(Y[m, 0], Y[m, 1], s=6, alpha=0.7, color=cmap(i % cmap.N), label=f"{name} {c}")
    # below the axes: inside, a legend covers points wherever it goes
    ax.legend(fontsize=fontsize, markerscale=2.5, ncol=min(5, cats.size), loc="upper center",
              bbox_to_anchor=(0.5, -0.13), framealpha=0.8)


def latent_scatter(Z, labels, centres, path, title, true_labels=None):
    """2-D view of latent codes (first two principal components if J > 2), coloured by the
    assigned cluster (categorical colours), the mixture means projected the same way; with
    ``true_labels``, a second panel coloured by them."""
    plt = _plt()
    Y, C, (xlab, ylab) = _project2(Z, centres)
    panels = [("cluster", labels, "assigned cluster")]
    if true_labels is not None:
        panels.append(("label", true_labels, "true label (only for this picture)"))
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 5.2), squeeze=False)
    for ax, (name, lab, sub) in zip(axes[0], panels):
        _categorical(ax, Y, lab, name)
        ax.scatter(C[:, 0], C[:, 1], c="black", marker="x", s=60)
        ax.set_xlabel(xlab)
        ax.set_ylabel(ylab)
        ax.set_title(f"coloured by {sub}; x = component means", fontsize=10)
    fig.suptitle(title)
    return save_fig(fig, path, dpi=150)


def bar(values, path, title, xlabel, ylabel):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3))
    ax.bar(np.arange(len(values)), values, color="tab:blue")
    ax.set_xticks(np.arange(len(values)))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return save_fig(fig, path)


def series(x, ys: dict, path, title, xlabel, ylabel, vline=None, vline_label=None):
    """Curves ys[name] over x; ``vline``: an x position marked by a dashed line (a phase change)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 3.5))
    for name, y in ys.items():
        ax.plot(x, y, label=name)
    if vline is not None:
        ax.axvline(vline, color="0.4", linestyle="--", linewidth=1, label=vline_label)
    if all(float(v).is_integer() for v in x):   # epochs: integer ticks
        from matplotlib.ticker import MaxNLocator

        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    return save_fig(fig, path)


def per_seed(values: dict, path, title, ylabel):
    """One dot per seed for each method (``values[method][i]`` is seed i), seeds joined by thin
    grey lines so paired differences show; the mean of each method as a black bar."""
    plt = _plt()
    names = list(values)
    fig, ax = plt.subplots(figsize=(max(4.0, 1.6 * len(names) + 1.5), 3.6))
    cols = plt.get_cmap("tab10").colors
    n = max(len(v) for v in values.values())
    for i in range(n):                                  # the pairs: one seed across methods
        ys = [values[m][i] for m in names if i < len(values[m])]
        if len(ys) == len(names) and len(names) > 1:
            ax.plot(range(len(names)), ys, color="0.75", linewidth=0.8, zorder=1)
    for j, m in enumerate(names):
        v = np.asarray(values[m], dtype=float)
        ax.scatter(np.full(v.size, j), v, s=36, color=cols[j % 10], zorder=2,
                   label=f"{m} (mean {v.mean():.3f})")
        ax.hlines(v.mean(), j - 0.25, j + 0.25, color="black", linewidth=2, zorder=3)
    ax.set_xticks(range(len(names)), names)
    ax.set_xlim(-0.6, len(names) - 0.4)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.14),
              ncol=min(3, len(names)), frameon=False)      # below the axes: never over a dot
    return save_fig(fig, path, dpi=150)


# --------------------------------------------------------------------------- VQ-VAE
def vq_figures(model, params, ds, history, out_dir, backend=None, title_prefix="vqvae") -> list:
    """Write vq_reconstructions.png, vq_samples.png, vq_usage.png, vq_perplexity.png to
    ``out_dir``; returns their paths.  Host transfers happen here, never in training."""
    b = model.b if backend is None else backend
    plt = _plt()
    os.makedirs(out_dir, exist_ok=True)
    paths = []
    t = title_prefix
    K, M = model.K, model.M
    # reconstructions of held-out images
    n = min(10, ds.x_test.shape[0])
    Xt = b.asarray(ds.x_test[:n])
    xr = b.to_numpy(model.reconstruct(params, Xt))
    paths.append(reconstructions(
        ds.x_test[:n], xr, ds.image_shape, os.path.join(out_dir, "vq_reconstructions.png"),
        f"{t}: test images and E[x | z_q] ({M} codes of {K} each)"))
    # decoded random code combinations: each of the M positions uniform over the K codes
    rng = np.random.default_rng(0)
    k = b.asindex(rng.integers(0, K, size=(30, M)))
    xs = b.to_numpy(model.decode_mean(params, model.codes_to_z(params, k)))
    paths.append(image_grid(
        xs, ds.image_shape, os.path.join(out_dir, "vq_samples.png"),
        f"{t}: decoded uniformly random codes k ~ U{{0..{K - 1}}}^{M} (no learned prior)"))
    # codebook usage over the training set
    counts = model.code_usage(params, b.asarray(ds.x_train))
    p = counts / counts.sum()
    ppl = float(np.exp(-np.sum(p[p > 0] * np.log(p[p > 0]))))
    fig, ax = plt.subplots(figsize=(7, 3.5))
    order = np.argsort(-counts, kind="stable")
    ax.bar(np.arange(K), counts[order] / counts.sum(), width=1.0, color="tab:blue")
    ax.axhline(1.0 / K, color="k", ls="--", lw=1, label=f"uniform 1/K = {1.0 / K:.3g}")
    ax.set_xlabel("code (sorted by frequency)")
    ax.set_ylabel("fraction of latent vectors")
    ax.set_title(f"{t}: codebook usage on the training set\n"
                 f"{int((counts > 0).sum())}/{K} codes used, perplexity {ppl:.1f}")
    ax.legend()
    ax.grid(alpha=0.3, axis="y")
    paths.append(save_fig(fig, os.path.join(out_dir, "vq_usage.png")))
    # perplexity over training
    ep = [h["epoch"] for h in history if "perplexity" in h]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(ep, [h["perplexity"] for h in history if "perplexity" in h],
            label="per batch (epoch mean)")
    ax.plot(ep[-1:], [ppl], "o", label="whole training set, end")
    ax.axhline(K, color="k", ls="--", lw=1, label=f"K = {K}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("perplexity exp H(codes)")
    ax.set_ylim(0, K * 1.08)
    ax.set_title(f"{t}: codebook perplexity during training")
    ax.grid(alpha=0.3)
    ax.legend()
    paths.append(save_fig(fig, os.path.join(out_dir, "vq_perplexity.png")))
    return paths


def vq_compare_figure(runs: dict, K: int, path, title="codebook perplexity by update rule"):
    """``runs`` {label: history}: per-batch perplexity (epoch means) of several runs on one
    plot -- how the codebook update rule and dead-code restarts change codebook use."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6.5, 3.8))
    for i, (label, hist) in enumerate(runs.items()):
        # dashed and thinner on top of solid: identical curves stay visible
        ax.plot([h["epoch"] for h in hist], [h["perplexity"] for h in hist], label=label,
                ls="--" if i % 2 else "-", lw=1.5 if i % 2 else 2.5)
    ax.axhline(K, color="k", ls="--", lw=1, label=f"K = {K}")
    ax.set_xlabel("epoch")
    ax.set_ylabel("per-batch perplexity")
    ax.set_ylim(0, K * 1.08)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=9)
    return save_fig(fig, path)
