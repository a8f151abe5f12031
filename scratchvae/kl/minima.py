"""The assignment's section 1, host side: where the exact KLs of :mod:`scratchvae.kl.exact` have their
minima and critical points (NumPy float64).

Derivation: ``derivations/01-kl-direction.md`` (the equation tags (K.n) below are its).

Located minima of either KL, all critical points of the reverse KL, the fold separation where
the off-centre minima of the reverse KL are born, the separation where they become global,
gradient-descent paths, and the sweep of critical points over the separation a/s.
"""
from __future__ import annotations

import math

import numpy as np

from .exact import (_kind, _reverse_derivs, exact_reverse_kl, exact_reverse_kl_grad,
                    exact_reverse_kl_hessian)


def default_starts(a, s, n_m: int = 7, n_rho: int = 4):
    """A grid of (m, rho) starts covering both modes, narrow to wide q."""
    ms = np.linspace(-1.5 * a - s, 1.5 * a + s, n_m)
    rhos = math.log(s) + np.linspace(-1.0, math.log(1.0 + 2.0 * a / s) + 0.5, n_rho)
    return [(float(m), float(r)) for m in ms for r in rhos]


def _newton_polish(kind, v, a, s, iters: int = 20):
    _, grad, hess = _kind(kind)
    v = np.array(v, dtype=np.float64)
    for _ in range(iters):
        g = np.array(grad(v[0], v[1], a, s), dtype=np.float64)
        if np.max(np.abs(g)) < 1e-13:
            break
        step = np.linalg.solve(hess(v[0], v[1], a, s), g)
        if not np.all(np.isfinite(step)) or np.linalg.norm(step) > 1e-2 * (s + abs(a)):
            break
        v = v - step
    return v


def _dedupe(points, scale, tol=1e-6):
    out = []
    for p in points:
        if all(abs(p["m"] - q["m"]) > tol * scale or abs(p["rho"] - q["rho"]) > tol for q in out):
            out.append(p)
    return sorted(out, key=lambda d: d["m"])


def minimise_from(kind, starts, a, s, *, iters: int = 300, tol: float = 1e-11):
    """Modified-Newton descent on the exact KL from many starts at once (vectorised).

    Direction d = -(H + shift I)^{-1} g with the shift making H + shift I positive definite
    (so d always descends and saddles repel), step capped at 0.5 in (m/s, rho) units, Armijo
    backtracking; close to a minimum (small gradient, positive-definite Hessian) full Newton
    steps, since there f no longer changes above its rounding.  Returns the end points (S, 2)
    and a converged flag (S,): scaled gradient |(s R_m, R_rho)| below ``tol``."""
    val, grad, hess = _kind(kind)
    v = np.array(starts, dtype=np.float64).reshape(-1, 2)
    active = np.ones(len(v), dtype=bool)
    conv = np.zeros(len(v), dtype=bool)
    lo, hi = math.log(s) - 6.0, math.log(s + abs(a)) + 6.0
    for _ in range(iters):
        idx = np.nonzero(active)[0]
        if idx.size == 0:
            break
        m, r = v[idx, 0], v[idx, 1]
        f = np.asarray(val(m, r, a, s))
        g = np.stack(grad(m, r, a, s), -1)
        H = np.asarray(hess(m, r, a, s))
        done = np.max(np.abs(g) * np.array([s, 1.0]), axis=1) < tol
        conv[idx[done]] = True
        active[idx[done]] = False
        lam_min = np.linalg.eigvalsh(H)[:, 0]
        scale = np.maximum(np.abs(H[:, 0, 0]) + np.abs(H[:, 1, 1]), 1e-12)
        shift = np.where(lam_min < 1e-6 * scale, 1e-6 * scale - lam_min + 1e-3 * scale, 0.0)
        Hs = H + shift[:, None, None] * np.eye(2)
        d = -np.linalg.solve(Hs, g[..., None])[..., 0]
        length = np.hypot(d[:, 0] / s, d[:, 1])
        d *= np.minimum(1.0, 0.5 / np.maximum(length, 1e-300))[:, None]
        slope = np.sum(g * d, axis=1)
        t = np.ones(idx.size)
        near = ~done & (shift == 0.0) & (np.max(np.abs(g) * np.array([s, 1.0]), axis=1) < 1e-6)
        v[idx[near]] += d[near]
        pending = ~done & ~near
        for _ in range(40):
            if not pending.any():
                break
            cand = v[idx[pending]] + t[pending, None] * d[pending]
            cand[:, 1] = np.clip(cand[:, 1], lo, hi)
            fc = np.asarray(val(cand[:, 0], cand[:, 1], a, s))
            accept = fc <= f[pending] + 1e-4 * t[pending] * slope[pending]
            sel = np.nonzero(pending)[0]
            v[idx[sel[accept]]] = cand[accept]
            pending[sel[accept]] = False
            t[sel[~accept]] *= 0.5
        if pending.any():  # no decrease possible at float precision: stationary to rounding
            sel = np.nonzero(pending)[0]
            conv[idx[sel]] = np.max(np.abs(g[sel]) * np.array([s, 1.0]), axis=1) < 1e-8
            active[idx[sel]] = False
    return v, conv


def locate_minima(kind, a, s, starts=None):
    """Local minima of the exact KL (``kind`` "reverse" = KL(q||p), "forward" = KL(p||q)) from
    several starts: :func:`minimise_from`, dedupe, and keep only points with a positive-definite
    Hessian.  Returns dicts {m, rho, var, kl, global} sorted by m.
    [01-kl-direction.md#result-8]"""
    val, _, hess = _kind(kind)
    v, conv = minimise_from(kind, default_starts(a, s) if starts is None else starts, a, s)
    found = []
    for (m, r), ok in zip(v, conv):
        if not ok or np.min(np.linalg.eigvalsh(hess(m, r, a, s))) <= 0:
            continue
        found.append({"m": float(m), "rho": float(r), "var": float(np.exp(2 * r)),
                      "kl": float(val(m, r, a, s))})
    out = _dedupe(found, s + abs(a))
    best = min(p["kl"] for p in out)
    for p in out:
        p["global"] = bool(p["kl"] <= best + 1e-9)
    return out


def reverse_critical_points(a, s, n_m: int = 7, n_rho: int = 6, iters: int = 100):
    """All critical points of KL(q||p) (minima and saddles) by damped Newton on the gradient from
    a grid of starts with m >= 0 (mirrored: KL(q||p) is even in m), vectorised over starts.
    Returns dicts {m, rho, var, kl, type} with type "min", "saddle" or "max".
    [01-kl-direction.md#result-8]"""
    ms = np.linspace(0.0, 1.6 * a + s, n_m)
    rhos = math.log(s) + np.linspace(-0.7, math.log(1.0 + 2.0 * a / s) + 0.7, n_rho)
    M, P = np.meshgrid(ms, rhos, indexing="ij")
    v = np.stack([M.ravel(), P.ravel()], -1)
    cap = 0.25
    active = np.ones(len(v), dtype=bool)
    ok = np.zeros(len(v), dtype=bool)
    for _ in range(iters):
        idx = np.nonzero(active)[0]
        if idx.size == 0:
            break
        g, H = _reverse_derivs(v[idx, 0], v[idx, 1], a, s)
        done = np.max(np.abs(g), axis=1) < 1e-12
        ok[idx[done]] = True
        active[idx[done]] = False
        det = H[:, 0, 0] * H[:, 1, 1] - H[:, 0, 1] ** 2
        det = np.where(np.abs(det) < 1e-300, 1e-300, det)
        step = np.stack([(H[:, 1, 1] * g[:, 0] - H[:, 0, 1] * g[:, 1]) / det,
                         (H[:, 0, 0] * g[:, 1] - H[:, 0, 1] * g[:, 0]) / det], -1)
        scaled = np.sqrt((step[:, 0] / s) ** 2 + step[:, 1] ** 2)
        step *= np.minimum(1.0, cap / np.maximum(scaled, 1e-300))[:, None]
        step[done] = 0.0
        v[idx] = v[idx] - step
        v[idx, 1] = np.clip(v[idx, 1], math.log(s) - 5.0, math.log(s + a) + 5.0)
    if active.any():  # stragglers: accept if converged to a looser tolerance
        idx = np.nonzero(active)[0]
        g = _reverse_derivs(v[idx, 0], v[idx, 1], a, s)[0]
        ok[idx] = np.max(np.abs(g), axis=1) < 1e-9
    pts = []
    for mm, rr in v[ok]:
        for sgn in (1.0, -1.0):
            mi = sgn * mm if abs(mm) > 1e-7 * (s + a) else 0.0
            ev = np.linalg.eigvalsh(exact_reverse_kl_hessian(mi, rr, a, s))
            typ = "min" if ev[0] > 0 else ("max" if ev[1] < 0 else "saddle")
            pts.append({"m": float(mi), "rho": float(rr), "var": float(np.exp(2 * rr)),
                        "kl": float(exact_reverse_kl(mi, rr, a, s)), "type": typ})
    return _dedupe(pts, s + a)


def centre_rho(a, s):
    """argmin over rho of KL(q||p) on the symmetry line m = 0 (root of dR/drho, (K.18))."""
    from scipy.optimize import minimize_scalar

    res = minimize_scalar(lambda r: float(exact_reverse_kl(0.0, r, a, s)),
                          bounds=(math.log(s) - 4.0, math.log(s + a) + 3.0), method="bounded",
                          options={"xatol": 1e-12})
    return float(_newton_polish("reverse", (0.0, res.x), a, s)[1])


def fold_separation():
    """The separation a/s below which the two off-centre minima of KL(q||p) do not exist.

    They are born in a fold (saddle-node) with the two saddles, away from m = 0: solve
    grad R = 0 and det Hess R = 0 for (m, rho, a) with s = 1 (K.20), seeded from the
    off-centre minimum and saddle at a/s = 3.  Returns {"ratio", "m_over_s", "sigma_over_s"}."""
    from scipy.optimize import fsolve

    def fold_eqs(v):
        m, rho, a = v
        g = exact_reverse_kl_grad(m, rho, a, 1.0)
        return [float(g[0]), float(g[1]), float(np.linalg.det(exact_reverse_kl_hessian(m, rho, a, 1.0)))]

    r0 = 3.0
    pts = reverse_critical_points(r0, 1.0)
    mins = [p for p in pts if p["type"] == "min" and p["m"] > 0.1]
    sads = [p for p in pts if p["type"] == "saddle" and p["m"] > 0.1]
    if not (mins and sads):
        raise RuntimeError("no off-centre minimum/saddle at a/s = 3 to seed the fold search")
    v0 = [0.5 * (mins[0]["m"] + sads[0]["m"]), 0.5 * (mins[0]["rho"] + sads[0]["rho"]), r0]
    sol, info, ier, msg = fsolve(fold_eqs, v0, xtol=1e-13, full_output=True)
    if ier != 1 or max(abs(np.asarray(info["fvec"]))) > 1e-9:
        raise RuntimeError(f"fold search did not converge: {msg}")
    return {"ratio": float(sol[2]), "m_over_s": float(sol[0]), "sigma_over_s": float(np.exp(sol[1]))}


def _offcentre_minus_centre(r):
    """KL at the off-centre minimum minus KL at the central minimum, s = 1."""
    mins = locate_minima("reverse", r, 1.0, starts=[(r, 0.0), (0.0, centre_rho(r, 1.0))])
    off = [p for p in mins if p["m"] > 1e-6]
    cen = [p for p in mins if abs(p["m"]) <= 1e-6]
    if not (off and cen):
        raise RuntimeError(f"expected a central and an off-centre minimum at a/s = {r}")
    return off[0]["kl"] - cen[0]["kl"]


def global_switch_separation(lo: float, hi: float = 4.0):
    """The a/s above which the off-centre minima, not the central one, are global (K.21)."""
    from scipy.optimize import brentq

    return float(brentq(_offcentre_minus_centre, lo, hi, xtol=1e-10))


def descent_path(kind, start, a, s, *, steps: int = 400, max_step: float = 0.15, tol: float = 1e-8):
    """Gradient descent on the exact KL with Armijo backtracking (step length at most
    ``max_step`` in (m/s, rho) units).  Returns an array (k, 2) of (m, rho)."""
    val, grad, _ = _kind(kind)
    v = np.array(start, dtype=np.float64)
    path = [v.copy()]
    f = float(val(v[0], v[1], a, s))
    for _ in range(steps):
        g = np.array(grad(v[0], v[1], a, s), dtype=np.float64)
        disp = math.hypot(g[0] / s, g[1])  # length of a unit-t step in (m/s, rho) units
        if disp < tol:
            break
        t = min(1.0, max_step / disp)
        while True:
            cand = v - t * g
            fc = float(val(cand[0], cand[1], a, s))
            if fc <= f - 0.5 * t * float(g @ g) or t < 1e-12:
                break
            t *= 0.5
        v, f = cand, fc
        path.append(v.copy())
    return np.array(path)


def separation_sweep(ratios):
    """Critical points of KL(q||p) at each a/s (s = 1), with global minima flagged."""
    sweep = []
    for r in ratios:
        pts = reverse_critical_points(float(r), 1.0)
        best = min(p["kl"] for p in pts if p["type"] == "min")
        for p in pts:
            p["global"] = bool(p["type"] == "min" and p["kl"] <= best + 1e-9)
        sweep.append({"ratio": float(r), "points": pts,
                      "n_minima": sum(p["type"] == "min" for p in pts)})
    return sweep
