"""``python run.py gradcheck``: every registered model's hand-written gradients against central
finite differences in float64, on the chosen ``--backend`` -- how a GPU user trusts the CuPy
path.  Exit code 1 on any failure."""
from __future__ import annotations

from ..errors import UsageError
from ..gradcheck import check_grads
from .options import explicit_options
from .registry import REGISTRY, entry


def gradcheck_models(names, backend="numpy", rtol=1e-6, seed=0) -> list:
    """One row per (model, case): the largest relative error over every checked entry or
    random direction of the gradient of the model's loss on a tiny random problem."""
    rows = []
    for name in names:
        e = entry(name)
        for case in e.gradcheck_cases:
            est = e.make({**e.gradcheck_base, **case, "backend": backend, "dtype": "float64",
                          "random_state": seed})
            D = 6
            est._build(D)
            model, b = est.model_, est.backend_
            rng = b.rng("gradcheck", 0)
            params = model.init_params(rng)
            if e.gradcheck_prepare:
                e.gradcheck_prepare(model, params, rng)
            x = rng.uniform((4, D))
            noise = model.sample_noise(rng, 4)
            lik = case.get("likelihood", "bernoulli")
            f = e.gradcheck_loss(model, params, x, noise)
            _, grads, _ = model.loss_and_grads(params, x, noise)
            r = check_grads(b, f, params, grads, full_max=40, name=f"{name}/{lik}")
            diag = case.get("cholesky_diag", "softplus")
            rows.append({"model": name + ("" if diag == "softplus" else f"({diag})"),
                         "likelihood": lik, "max_rel_err": r.max_rel_err, "worst": r.worst,
                         "checks": r.n_checks, "ok": r.ok(rtol)})
    return rows


def main(args) -> dict:
    explicit = explicit_options(args)
    if explicit.get("dtype", "float64") != "float64":
        raise UsageError("gradcheck runs in float64 (float32 differences cannot resolve 1e-6); "
                         "drop --dtype or pass --dtype float64")
    names = tuple(REGISTRY) if args.model in (None, "all") else (args.model,)
    rows = gradcheck_models(names, explicit.get("backend", "numpy"),
                            seed=explicit.get("random_state", 0))
    for r in rows:
        print(f"{'ok  ' if r['ok'] else 'FAIL'} {r['model']:8s} {r['likelihood']:9s} "
              f"max rel err {r['max_rel_err']:.2e} over {r['checks']} checks (worst {r['worst']})")
    ok = all(r["ok"] for r in rows)
    return {"ok": ok, "rows": rows,
            "summary": {"gradcheck": "passed" if ok else "FAILED",
                        "backend": explicit.get("backend", "numpy"), "models": list(names),
                        "max_rel_err": max(r["max_rel_err"] for r in rows)}}
