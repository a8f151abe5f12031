"""The assignment's section 1.2 end to end, for ``run.py``: :func:`run_experiment` (figures, estimator
variance and SNIS tables, metrics), the tables' statistics, and the stochastic (Adam) fits.

Derivation: ``derivations/01-kl-direction.md``.  Every file is written atomically
(:func:`scratchvae.train.atomic_write`, :func:`scratchvae.plots.save_fig`).
"""
from __future__ import annotations

import json
import math
import os

import numpy as np

from ..train import atomic_write
from .estimators import (SampleOnly, TwoModeMixture, UnnormalisedDensity, draw_p_noise,
                         draw_q_noise, forward_kl_mle, forward_kl_snis, init_params,
                         reverse_kl_reparam, reverse_kl_score)
from .exact import (exact_forward_kl, exact_reverse_kl, exact_reverse_kl_grad,
                    exact_reverse_kl_hessian, forward_kl_minimiser)
from .figures import plot_contours, plot_fits, plot_separation
from .minima import (centre_rho, descent_path, fold_separation, global_switch_separation,
                     locate_minima, reverse_critical_points, separation_sweep)


def _summ(b, arr):
    a = b.to_numpy(arr).astype(np.float64).reshape(-1)
    return float(a.mean()), float(a.std(ddof=1)), float(a.var(ddof=1))


def variance_table(b, a, s, points, *, n: int = 16, reps: int = 2000, key=("kl", "var")):
    """Gradient estimators of KL(q||p) at each (label, m, rho): mean, standard error and
    variance over ``reps`` independent estimates, each from ``n`` samples, against the exact
    (quadrature) gradient.  Rows are JSON-able dicts.  [01-kl-direction.md#variance]"""
    target = TwoModeMixture(b, a, s)
    oracle = UnnormalisedDensity(target)
    rows = []
    for i, (label, m, rho) in enumerate(points):
        params = init_params(b, m, rho)
        eps = draw_q_noise(b, b.rng(*key, i), (reps, n))
        ex_m, ex_r = (float(v) for v in exact_reverse_kl_grad(m, rho, a, s))
        ests = {
            "reparam": reverse_kl_reparam(b, oracle, params, eps),
            "reparam (STL)": reverse_kl_reparam(b, oracle, params, eps, stl=True),
            "score+loo": reverse_kl_score(b, oracle, params, eps, baseline="loo"),
            "score (no baseline)": reverse_kl_score(b, oracle, params, eps, baseline="none"),
        }
        for name, est in ests.items():
            mm, sm, vm = _summ(b, est.grads["m"])
            mr, sr, vr = _summ(b, est.grads["rho"])
            rows.append({"point": label, "m": m, "rho": rho, "estimator": name, "n": n,
                         "reps": reps, "exact_dm": ex_m, "exact_drho": ex_r,
                         "mean_dm": mm, "se_dm": sm / math.sqrt(reps), "var_dm": vm,
                         "mean_drho": mr, "se_drho": sr / math.sqrt(reps), "var_drho": vr})
    return rows


def snis_table(b, a, s, points, ns=(4, 16, 64, 256), *, reps: int = 400, key=("kl", "snis")):
    """Self-normalised IS estimates of KL(p||q) (scenario 3) at each (label, m, rho) and sample
    size n: mean and standard error over ``reps`` estimates of (K.11) vs the exact value."""
    target = TwoModeMixture(b, a, s)
    oracle = UnnormalisedDensity(target)
    rows = []
    for i, (label, m, rho) in enumerate(points):
        params = init_params(b, m, rho)
        exact = float(exact_forward_kl(m, rho, a, s))
        for j, n in enumerate(ns):
            eps = draw_q_noise(b, b.rng(*key, i, j), (reps, n))
            mean, sd, _ = _summ(b, forward_kl_snis(b, oracle, params, eps).value)
            rows.append({"point": label, "m": m, "rho": rho, "n": int(n), "reps": reps,
                         "exact": exact, "mean": mean, "se": sd / math.sqrt(reps),
                         "bias": mean - exact})
    return rows


def sgd_fit(b, estimator, oracle, start, *, steps: int, n: int, lr: float = 0.05,
            key=("kl", "sgd"), noise: str = "q"):
    """Adam (``scratchvae.optim``) on one estimator's gradients, fresh noise every step, the
    learning rate decayed geometrically from ``lr`` to ``lr / 50`` so the last iterate settles.
    ``noise``: "q" draws eps for q, "p" draws p's sampler noise.  Returns the (steps+1, 2) path
    of (m, rho) on the host (one transfer at the end)."""
    from scratchvae.optim import Adam

    xp = b.xp
    params = init_params(b, *start)
    opt = Adam(b, params, lr=lr, b2=0.9)  # short memory: early gradients are huge
    hist = [xp.stack([params["m"], params["rho"]])]
    for t in range(steps):
        rng = b.rng(*key, t)
        nz = draw_q_noise(b, rng, (n,)) if noise == "q" else draw_p_noise(b, rng, (n,))
        est = estimator(b, oracle, params, nz)
        opt.step(params, est.grads, lr=lr * 0.02 ** (t / max(1, steps - 1)))
        hist.append(xp.stack([params["m"], params["rho"]]))
    return b.to_numpy(xp.stack(hist)).astype(np.float64)


def _variance_markdown(rows):
    r0 = rows[0]
    head = (f"Gradient estimators of KL(q‖p): each estimate from n = {r0['n']} samples, "
            f"statistics over {r0['reps']} independent estimates.\n\n"
            "| point (m, rho) | estimator | exact dR/dm | mean dm ± se | var dm | exact dR/drho | "
            "mean drho ± se | var drho |\n|---|---|---|---|---|---|---|---|\n")
    lines = [f"| {r['point']} ({r['m']:.4g}, {r['rho']:.4g}) | {r['estimator']} | "
             f"{r['exact_dm']:.4g} | {r['mean_dm']:.4g} ± {r['se_dm']:.2g} | {r['var_dm']:.3g} | "
             f"{r['exact_drho']:.4g} | {r['mean_drho']:.4g} ± {r['se_drho']:.2g} | "
             f"{r['var_drho']:.3g} |" for r in rows]
    return head + "\n".join(lines) + "\n"


def _snis_markdown(rows):
    head = (f"Self-normalised importance sampling of KL(p‖q) from q: statistics over "
            f"{rows[0]['reps']} independent estimates per sample size n.\n\n"
            "| point (m, rho) | n | exact KL(p‖q) | SNIS mean ± se | bias |\n"
            "|---|---|---|---|---|\n")
    lines = [f"| {r['point']} ({r['m']:.4g}, {r['rho']:.4g}) | {r['n']} | {r['exact']:.4f} | "
             f"{r['mean']:.4f} ± {r['se']:.2g} | {r['bias']:+.4f} |" for r in rows]
    return head + "\n".join(lines) + "\n"


def _write_text(path, text: str):
    """``text`` as UTF-8 to ``path``, atomically."""
    atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def run_experiment(b, out_dir, *, a: float = 2.0, s: float = 0.5, seed: int = 0,
                   n_samples: int = 32, steps: int = 600, quick: bool = False) -> dict:
    """The assignment's section 1.2 end to end.  Writes into ``out_dir``:

    kl_contours.png, kl_fits.png, kl_minima_vs_separation.png, kl_variance.md/.json,
    kl_snis.md, kl_metrics.json; returns the flat metrics dict (JSON-able)."""
    os.makedirs(out_dir, exist_ok=True)
    key = ("kl", int(seed))
    # -- exact minima and critical points
    mins_fwd = locate_minima("forward", a, s)
    crit = reverse_critical_points(a, s)
    mins_rev = locate_minima("reverse", a, s)
    saddles = [p for p in crit if p["type"] == "saddle"]
    rho0 = centre_rho(a, s)
    h0 = exact_reverse_kl_hessian(0.0, rho0, a, s)
    fold = fold_separation()
    switch = global_switch_separation(fold["ratio"] + 0.05)
    # -- descent paths on the exact KLs
    starts = [(-1.2 * a, math.log(s) - 0.8), (1.5 * a, math.log(s) + 0.6),
              (0.2 * a, math.log(s) - 1.0), (0.4 * a, math.log(math.sqrt(s * s + a * a)) + 0.8),
              (-1.6 * a, math.log(math.sqrt(s * s + a * a)) + 0.7), (0.6 * a, math.log(s) + 1.0)]
    gd = {k: [descent_path(k, st, a, s, steps=120 if quick else 400) for st in starts]
          for k in ("reverse", "forward")}
    # -- stochastic fits with the scenario estimators (Adam, fresh noise each step)
    n_steps = steps  # cheap (~0.1 s per fit): the same in quick mode
    target = TwoModeMixture(b, a, s)
    starts_sgd = {"mle": (-1.4 * a, math.log(s) - 0.5), "reparam": (0.3 * a, math.log(s) - 0.3),
                  "score": (-0.6 * a, math.log(s) + 0.3)}
    fit_mle = sgd_fit(b, forward_kl_mle, SampleOnly(target), starts_sgd["mle"],
                      steps=n_steps, n=n_samples, key=key + ("mle",), noise="p")
    fit_rep = sgd_fit(b, reverse_kl_reparam, UnnormalisedDensity(target),
                      starts_sgd["reparam"], steps=n_steps, n=n_samples, key=key + ("reparam",))
    fit_sf = sgd_fit(b, reverse_kl_score, UnnormalisedDensity(target), starts_sgd["score"],
                     steps=n_steps, n=n_samples, key=key + ("score",))
    sgd_paths = {"forward": {"Adam on forward_kl_mle (scenario 2)": (fit_mle, "cyan")},
                 "reverse": {"Adam on reverse_kl_reparam (scenario 3)": (fit_rep, "magenta"),
                             "Adam on reverse_kl_score, LOO (scenario 3)": (fit_sf, "cyan")}}
    # -- estimator variance and SNIS tables
    g = next(p for p in mins_rev if p["global"] and p["m"] > 0)
    points = [("reverse-KL min", round(g["m"], 4), round(g["rho"], 4)),
              ("centre, rho*(0)", 0.0, round(rho0, 4)),
              ("between", round(0.5 * a, 4), round(math.log(s), 4)),
              ("far, wide", round(-1.5 * a, 4), round(math.log(s) + 0.7, 4))]
    vt = variance_table(b, a, s, points, n=n_samples, reps=300 if quick else 4000,
                        key=key + ("var",))
    _, fwd_rho = forward_kl_minimiser(a, s)
    snis_points = [("forward-KL min", 0.0, round(fwd_rho, 4)),
                   ("reverse-KL min", round(g["m"], 4), round(g["rho"], 4))]
    st = snis_table(b, a, s, snis_points, ns=(4, 64) if quick else (4, 16, 64, 256, 1024),
                    reps=100 if quick else 400, key=key + ("snis",))
    sweep = separation_sweep(np.linspace(0.5, 4.5, 9 if quick else 33))
    # -- figures
    figs = {"contours": os.path.join(out_dir, "kl_contours.png"),
            "fits": os.path.join(out_dir, "kl_fits.png"),
            "separation": os.path.join(out_dir, "kl_minima_vs_separation.png")}
    plot_contours(figs["contours"], a, s, mins_rev, saddles, mins_fwd, gd, sgd_paths,
                  grid=50 if quick else 120)
    plot_fits(figs["fits"], a, s, mins_rev, mins_fwd)
    plot_separation(figs["separation"], sweep, fold, switch)
    _write_text(os.path.join(out_dir, "kl_variance.md"), _variance_markdown(vt))
    _write_text(os.path.join(out_dir, "kl_variance.json"), json.dumps(vt, indent=1))
    _write_text(os.path.join(out_dir, "kl_snis.md"), _snis_markdown(st))
    # -- metrics
    fm = mins_fwd[0]
    metrics = {
        "a": a, "s": s, "separation": a / s, "quick": bool(quick),
        "forward_n_minima": len(mins_fwd),
        "forward_min_m": fm["m"], "forward_min_rho": fm["rho"], "forward_min_var": fm["var"],
        "forward_min_kl": fm["kl"], "forward_min_var_closed_form": s * s + a * a,
        "reverse_n_minima": len(mins_rev),
        "reverse_minima": [[p["m"], p["rho"], p["var"], p["kl"], p["global"]] for p in mins_rev],
        "reverse_global_m": sorted(p["m"] for p in mins_rev if p["global"]),
        "reverse_global_var": max(p["var"] for p in mins_rev if p["global"]),
        "reverse_global_kl": min(p["kl"] for p in mins_rev),
        "reverse_saddles": [[p["m"], p["rho"], p["kl"]] for p in saddles],
        "reverse_kl_at_forward_min": float(exact_reverse_kl(fm["m"], fm["rho"], a, s)),
        "forward_kl_at_reverse_min": float(exact_forward_kl(g["m"], g["rho"], a, s)),
        "centre_rho": rho0, "centre_var": math.exp(2 * rho0),
        "centre_kl": float(exact_reverse_kl(0.0, rho0, a, s)),
        "centre_hessian_mm": float(h0[0, 0]), "centre_inv_var": math.exp(-2 * rho0),
        "merge_separation": fold["ratio"], "fold_m_over_s": fold["m_over_s"],
        "fold_sigma_over_s": fold["sigma_over_s"], "global_switch_separation": switch,
        "sweep_n_minima": [[row["ratio"], row["n_minima"]] for row in sweep],
        "sgd_steps": n_steps, "sgd_n_samples": n_samples,
        "sgd_mle_final_m": float(fit_mle[-1, 0]),
        "sgd_mle_final_var": float(np.exp(2 * fit_mle[-1, 1])),
        "sgd_reparam_final_m": float(fit_rep[-1, 0]),
        "sgd_reparam_final_var": float(np.exp(2 * fit_rep[-1, 1])),
        "sgd_score_final_m": float(fit_sf[-1, 0]),
        "sgd_score_final_var": float(np.exp(2 * fit_sf[-1, 1])),
        "variance_table": vt, "snis_table": st,
        "figures": sorted(figs.values()),
    }
    _write_text(os.path.join(out_dir, "kl_metrics.json"), json.dumps(metrics, indent=1))
    return metrics
