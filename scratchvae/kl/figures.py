"""The assignment's section 1 figures: the two KL landscapes with descent paths, the fitted q's on p, and
the critical points of the reverse KL against the separation a/s.

Drawn with :func:`scratchvae.plots._plt` and written atomically by
:func:`scratchvae.plots.save_fig`.
"""
from __future__ import annotations

import math

import numpy as np

from ..plots import _plt, save_fig
from .exact import exact_forward_kl, exact_reverse_kl, log_p_host


def _fmt(v, d=4):
    s = f"{v:.{d}f}"
    return s[1:] if s.startswith("-") and float(s) == 0.0 else s


def plot_contours(path, a, s, minima_rev, saddles_rev, minima_fwd, gd_paths, sgd_paths, grid=120):
    """Two panels: log10 KL(q||p) and log10 KL(p||q) over (m, rho), with exact-gradient descent
    paths (white), stochastic (Adam on an estimator) paths (dashed), minima and saddles."""
    plt = _plt()
    ms = np.linspace(-1.7 * a - s, 1.7 * a + s, grid)
    rhos = np.linspace(math.log(s) - 1.3, math.log(math.sqrt(s * s + a * a)) + 0.9, grid)
    M, P = np.meshgrid(ms, rhos)
    fig, axes = plt.subplots(1, 2, figsize=(11, 5.2), constrained_layout=True)
    panels = [("reverse", "reverse KL(q‖p): mode-seeking", exact_reverse_kl(M, P, a, s), minima_rev,
               saddles_rev),
              ("forward", "forward KL(p‖q): mode-covering", exact_forward_kl(M, P, a, s), minima_fwd,
               [])]
    for ax, (kind, title, Z, mins, sads) in zip(axes, panels):
        cs = ax.contourf(M, P, np.log10(Z), levels=30, cmap="viridis")
        ax.contour(M, P, np.log10(Z), levels=15, colors="k", linewidths=0.4, alpha=0.5)
        fig.colorbar(cs, ax=ax, label="log10 KL")
        for k, pth in enumerate(gd_paths[kind]):
            ax.plot(pth[:, 0], pth[:, 1], "-", color="white", lw=1.3,
                    label="gradient descent (exact KL)" if k == 0 else None)
            ax.plot(pth[0, 0], pth[0, 1], "o", color="white", ms=4)
        for lab, (pth, col) in sgd_paths.get(kind, {}).items():
            ax.plot(pth[:, 0], pth[:, 1], "--", color=col, lw=1.4, label=lab)
        for k, p in enumerate(mins):
            glob = p.get("global", True)
            ax.plot(p["m"], p["rho"], "*", ms=16, mec="k",
                    mfc="red" if glob else "none", mew=1.2,
                    label=("global minimum" if glob else "local minimum") if
                    (glob and not any(q.get("global", True) for q in mins[:k])) or
                    (not glob and all(q.get("global", True) for q in mins[:k])) else None)
        for k, p in enumerate(sads):
            ax.plot(p["m"], p["rho"], "X", ms=10, mfc="orange", mec="k",
                    label="saddle" if k == 0 else None)
        for c in (-a, a):
            ax.axvline(c, color="w", ls=":", lw=0.8)
        ax.set_xlim(ms[0], ms[-1])
        ax.set_ylim(rhos[0], rhos[-1])
        ax.set_xlabel("m (mean of q); dotted: modes ±a of p")
        ax.set_ylabel("ρ = log σ (q's log std)")
        ax.set_title(f"{title}\np = ½N(−{a:g}, {s:g}²) + ½N({a:g}, {s:g}²)")
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.13), ncol=2, fontsize=9,
                  facecolor="0.7", framealpha=1.0)
    return save_fig(fig, path, dpi=150, palette=True)


def plot_fits(path, a, s, minima_rev, minima_fwd):
    """p's density with the q at each located minimum of both KLs."""
    plt = _plt()
    x = np.linspace(-a - 5 * s, a + 5 * s, 800)
    fig, ax = plt.subplots(figsize=(8, 5.6), constrained_layout=True)
    ax.fill_between(x, np.exp(log_p_host(x, a, s)), color="0.8", label="target p")

    def qpdf(m, rho):
        sg = math.exp(rho)
        return np.exp(-0.5 * ((x - m) / sg) ** 2) / (sg * math.sqrt(2 * math.pi))

    for p in minima_fwd:
        ax.plot(x, qpdf(p["m"], p["rho"]), "b-", lw=2,
                label=f"argmin KL(p‖q): m={_fmt(p['m'])}, σ²={_fmt(p['var'])}")
    # each reverse-KL minimum is its own q: two global minima in two colours and line styles
    # (one colour for both would read as one bimodal q, the opposite of the point)
    glob = iter([("red", "-"), ("purple", "-."), ("brown", ":")])
    for p in minima_rev:
        col, style = next(glob, ("red", "-")) if p["global"] else ("darkorange", "--")
        kind = "a global" if p["global"] else "the local"
        ax.plot(x, qpdf(p["m"], p["rho"]), ls=style, color=col, lw=2.0,
                label=f"{kind} argmin KL(q‖p): m={_fmt(p['m'], 3)}, σ²={_fmt(p['var'], 3)}, "
                      f"KL={_fmt(p['kl'], 3)}")
    ax.set_xlabel("x")
    ax.set_ylabel("density")
    ax.set_title("forward KL: one wide q over both modes; reverse KL: each global minimum is "
                 "a q on one mode\n(every curve is a separate Gaussian q)", fontsize=10.5)
    ax.legend(fontsize=9, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=1,
              frameon=False)                       # below the axes: never over a curve
    return save_fig(fig, path, dpi=150)


def plot_separation(path, sweep, fold, switch):
    """Critical points of KL(q||p) vs separation a/s (s = 1): m, sigma and KL value."""
    plt = _plt()
    fig, axes = plt.subplots(1, 3, figsize=(14.0, 5.0), layout="constrained")
    styles = {"gmin": dict(marker="o", ls="", color="red", ms=4, label="global minimum"),
              "lmin": dict(marker="o", ls="", mfc="none", color="darkorange", ms=5,
                           label="local (non-global) minimum"),
              "saddle": dict(marker="x", ls="", color="k", ms=4, label="saddle")}
    r_all = np.array([row["ratio"] for row in sweep])
    for key, st in styles.items():
        pts = [(row["ratio"], p) for row in sweep for p in row["points"]
               if (p["type"] == "saddle" if key == "saddle"
                   else p["type"] == "min" and p["global"] == (key == "gmin"))]
        if not pts:
            continue
        r = np.array([q[0] for q in pts])
        axes[0].plot(r, [q[1]["m"] for q in pts], **st)
        axes[1].plot(r, [math.exp(q[1]["rho"]) for q in pts], **st)
        axes[2].plot(r, [q[1]["kl"] for q in pts], **st)
    rr = np.linspace(r_all.min(), r_all.max(), 200)
    axes[0].plot(rr, rr, ":", color="gray", lw=1, label="modes ±a/s")
    axes[0].plot(rr, -rr, ":", color="gray", lw=1)
    axes[1].plot(rr, np.sqrt(1 + rr ** 2), "b-", lw=1, label="forward-KL σ = √(s²+a²)")
    axes[1].axhline(1.0, color="gray", ls=":", lw=1, label="σ = s")
    axes[2].axhline(math.log(2), color="gray", ls=":", lw=1, label="log 2")
    axes[0].plot([fold["ratio"]] * 2, [fold["m_over_s"], -fold["m_over_s"]], "D", color="purple",
                 ms=6, label="fold point (min meets saddle)")
    axes[1].plot([fold["ratio"]], [fold["sigma_over_s"]], "D", color="purple", ms=6)
    for ax in axes:
        ax.axvline(fold["ratio"], color="purple", lw=1,
                   label=f"fold a/s = {fold['ratio']:.4f}: off-centre minima born")
        ax.axvline(switch, color="green", lw=1, ls="--",
                   label=f"a/s = {switch:.4f}: off-centre minima become global")
        ax.set_xlabel("separation a/s")
    axes[0].set_ylabel("m / s of the critical point")
    axes[1].set_ylabel("σ / s of the critical point")
    axes[2].set_ylabel("KL(q‖p) at the critical point")
    axes[0].set_title("location (mean)")
    axes[1].set_title("width")
    axes[2].set_title("value")
    handles, labels = {}, []
    for ax in axes:
        for h, lab in zip(*ax.get_legend_handles_labels()):
            if lab not in handles:
                handles[lab] = h
                labels.append(lab)
    fig.legend([handles[k] for k in labels], labels, loc="outside lower center", ncol=4, fontsize=9.5)
    fig.suptitle("Critical points of reverse KL(q‖p), q Gaussian, p = ½N(−a, s²) + ½N(a, s²)")
    return save_fig(fig, path, dpi=150)
