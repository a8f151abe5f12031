"""Every number the derivations quote, regenerated from the commands that produce it.

    python scripts/derivation_numbers.py                   # all runs (~3 minutes on 2 cores)
    python scripts/derivation_numbers.py --only kl vqvae   # rerun some runs, keep the others
    python scripts/derivation_numbers.py --json /tmp/n.json  # write elsewhere (a check)

writes ``derivations/numbers.json``: for each *run* the command line that was executed (in the
repository root, its output files in a scratch folder) and how long it took; for each *number*
the run, the output file and the entry it was read from, and its value; for each *table* the
rows (cell strings) built from one output file.  A derivation quotes a number as
``0.880 ± 0.019<!-- n:gmvae.optimal.acc -->`` and a table under ``<!-- table:kl.variance -->``;
``tests/test_derivations.py`` checks every such quote against this file at the precision the
page prints, without rerunning anything.  After a change to the code, rerun this script, then
let that test say which sentences to update.

Training runs are float32 on the numpy backend; the last printed digit of a float32 run can
differ between machines (BLAS, thread count).  ``environment`` records where the file was made.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_JSON = ROOT / "derivations" / "numbers.json"
PY = "python"   # as printed; the script runs them with sys.executable

_KL_WIDE = ("import math; from scratchvae.backend import Backend; from scratchvae import kl; "
            "b = Backend('numpy', 'float64'); o = kl.UnnormalisedDensity(kl.TwoModeMixture(b, 2.0, 0.5)); "
            "[print(kl.sgd_fit(b, kl.reverse_kl_score, o, (-0.6, math.log(0.5) + 0.8), steps=600, n=32, "
            "key=('kl', k, 'score'))[-1].tolist()) for k in range(6)]")
_KL_HESS = ("import json, numpy as np; from scratchvae.kl import exact, reverse_critical_points; "
            "print(json.dumps([dict(p, eig=np.linalg.eigvalsh(exact.exact_reverse_kl_hessian("
            "p['m'], p['rho'], 2.0, 0.5)).tolist()) for p in reverse_critical_points(2.0, 0.5)]))")

# name -> (argv with {out} for the run's scratch folder, file to save stdout to or None)
RUNS = {
    "kl": ([PY, "run.py", "train", "--model", "kl", "--out", "{out}", "--force", "--quiet"], None),
    "kl_score_wide": ([PY, "-c", _KL_WIDE], "stdout.txt"),
    "kl_hessians": ([PY, "-c", _KL_HESS], "stdout.json"),
    "vqvae": ([PY, "run.py", "train", "--model", "vqvae", "--out", "{out}", "--force", "--quiet"],
              None),
    "vq_compare": ([PY, "scripts/vq_update_compare.py", "--out", "{out}"], "stdout.json"),
    "vq_compare_kmeans": ([PY, "scripts/vq_update_compare.py", "--kmeans-init", "--out", "{out}"],
                          "stdout.json"),
    "vq_compare_256": ([PY, "scripts/vq_update_compare.py", "--codebook-size", "256", "--out",
                        "{out}"], "stdout.json"),
    "gmvae": ([PY, "run.py", "seeds", "--model", "gmvae", "--seeds", "5", "--out", "{out}",
               "--force", "--quiet"], None),
    "gmvae_optimal": ([PY, "run.py", "seeds", "--model", "gmvae", "--seeds", "5", "--gamma",
                       "optimal", "--out", "{out}", "--force", "--quiet"], None),
    "gmvae_anchor0": ([PY, "run.py", "seeds", "--model", "gmvae", "--seeds", "5",
                       "--anchor-epochs", "0", "--out", "{out}", "--force", "--quiet"], None),
    "gmvae_gmm": ([PY, "run.py", "seeds", "--model", "gmvae", "--seeds", "5", "--init", "gmm",
                   "--out", "{out}", "--force", "--quiet"], None),
    "gmvae_trained": ([PY, "run.py", "seeds", "--model", "gmvae", "--seeds", "5",
                       "--elbo-encoder", "trained", "--out", "{out}", "--force", "--quiet"], None),
}


def command_line(name: str) -> str:
    argv, save = RUNS[name]
    shown = " ".join(f'"{a}"' if " " in a else a for a in argv).replace("{out}", f"OUT/{name}")
    return shown + (f" > OUT/{name}/{save}" if save else "")


def execute(name: str, scratch: Path) -> tuple[Path, float]:
    argv, save = RUNS[name]
    out = scratch / name
    out.mkdir(parents=True, exist_ok=True)
    argv = [sys.executable if a == PY else a.replace("{out}", str(out)) for a in argv]
    env = dict(os.environ, MPLBACKEND="Agg")
    t0 = time.perf_counter()
    res = subprocess.run(argv, cwd=ROOT, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        raise RuntimeError(f"{name} failed ({res.returncode}):\n{res.stderr[-3000:]}")
    if save:
        (out / save).write_text(res.stdout)
    return out, time.perf_counter() - t0


# --------------------------------------------------------------------------- reading outputs
def _load(out: Path, rel: str):
    return json.loads((out / rel).read_text())


def _n(run, source, value):
    return {"run": run, "source": source, "value": value}


def _pm(summary: dict, key: str):
    return [summary[key]["mean"], summary[key]["std"]]


def _fmt(v: float, digits: int = 2) -> str:
    """Cell text of a variance-table entry: ``digits`` significant figures, unicode minus."""
    if v == 0:
        return "0"
    s = f"{v:.{digits}g}"
    if "e" in s:
        mant, ex = s.split("e")
        s = f"{mant}e{int(ex)}"
    return s.replace("-", "−")


def read_kl(out: Path) -> tuple[dict, dict]:
    m = _load(out, "metrics.json")
    nums = {f"kl.{k}": _n("kl", f"metrics.json: {k}", m[k]) for k in (
        "forward_min_m", "forward_min_var", "forward_min_kl", "reverse_kl_at_forward_min",
        "forward_kl_at_reverse_min", "centre_rho", "centre_var", "centre_hessian_mm",
        "merge_separation", "fold_m_over_s", "fold_sigma_over_s", "global_switch_separation",
        "sgd_mle_final_m", "sgd_mle_final_var", "sgd_reparam_final_m", "sgd_reparam_final_var",
        "sgd_score_final_m", "sgd_score_final_var", "reverse_global_var", "reverse_global_kl")}
    sweep = m["sweep_n_minima"]
    one = [r for r, n in sweep if n == 1]
    three = [r for r, n in sweep if n == 3]
    nums["kl.sweep_points"] = _n("kl", "metrics.json: len(sweep_n_minima)", len(sweep))
    nums["kl.sweep_last_one"] = _n("kl", "metrics.json: largest a/s of sweep_n_minima with 1 minimum",
                                   max(one))
    nums["kl.sweep_first_three"] = _n("kl", "metrics.json: smallest a/s of sweep_n_minima with 3 minima",
                                      min(three))
    g = [p for p in m["reverse_minima"] if p[4]]
    nums["kl.reverse_global_m"] = _n("kl", "metrics.json: reverse_minima, the global one with m > 0",
                                     max(p[0] for p in g))
    saddle = m["reverse_saddles"][0]
    nums["kl.saddle_m"] = _n("kl", "metrics.json: |m| of reverse_saddles", abs(saddle[0]))
    nums["kl.saddle_kl"] = _n("kl", "metrics.json: KL of reverse_saddles", saddle[2])

    rows = _load(out, "kl_variance.json")
    by = {(r["point"], r["estimator"]): r for r in rows}
    mn, ctr = "reverse-KL min", "centre, rho*(0)"

    def var_ratio(est, coord):
        return by[(mn, "reparam")][f"var_{coord}"] / by[(mn, est)][f"var_{coord}"]
    for est, tag in (("reparam (STL)", "stl"), ("score+loo", "loo")):
        for coord in ("dm", "drho"):
            nums[f"kl.variance.min_ratio_{tag}_{coord}"] = _n(
                "kl", f"kl_variance.json: var_{coord} reparam / var_{coord} {est} at the "
                      "reverse-KL min", var_ratio(est, coord))
    for coord in ("dm", "drho"):
        nums[f"kl.variance.min_reparam_var_{coord}"] = _n(
            "kl", f"kl_variance.json: var_{coord} of reparam at the reverse-KL min",
            by[(mn, "reparam")][f"var_{coord}"])
    away = [by[(pt, "score+loo")][f"var_{c}"] / by[(pt, "reparam")][f"var_{c}"]
            for pt in ("between", "far, wide") for c in ("dm", "drho")]
    nums["kl.variance.away_ratio_min"] = _n("kl", "kl_variance.json: smallest var(score+loo) / "
                                            "var(reparam) at 'between' and 'far, wide'", min(away))
    nums["kl.variance.away_ratio_max"] = _n("kl", "kl_variance.json: largest var(score+loo) / "
                                            "var(reparam) at 'between' and 'far, wide'", max(away))
    names = {mn: "reverse-KL min", ctr: "centre", "between": "between", "far, wide": "far, wide"}
    ests = {"reparam": "reparam", "reparam (STL)": "reparam (STL)", "score+loo": "score + LOO",
            "score (no baseline)": "score, no baseline"}
    def exact(v):
        return "0" if abs(v) < 1e-12 else _fmt(v, 2 if abs(v) < 1e-3 else 4)

    def mean_se(mean, se):
        se_s = _fmt(se)
        if "e" in se_s:
            return f"{_fmt(mean)} ± {se_s}"
        dec = len(se_s.split(".")[1]) if "." in se_s else 0
        return f"{mean:.{dec}f}".replace("-", "−") + f" ± {se_s}"

    table = []
    for r in rows:
        first = r["estimator"] == "reparam"
        cells = [f"{names[r['point']]} ({_fmt(r['m'], 5)}, {_fmt(r['rho'], 4)})" if first else "",
                 ests[r["estimator"]],
                 exact(r["exact_dm"]) if first else "",
                 mean_se(r["mean_dm"], r["se_dm"]), _fmt(r["var_dm"], 3),
                 exact(r["exact_drho"]) if first else "",
                 mean_se(r["mean_drho"], r["se_drho"]), _fmt(r["var_drho"], 3)]
        table.append(cells)
    tables = {"kl.variance": {"run": "kl", "source": "kl_variance.json", "rows": table}}

    snis = m["snis_table"]
    fwd = [r for r in snis if r["point"].startswith("forward")]
    rev = [r for r in snis if r["point"].startswith("reverse")]
    tables["kl.snis"] = {"run": "kl", "source": "metrics.json: snis_table (forward-KL min)", "rows": [
        ["SNIS mean ± se", *[f"{r['mean']:.4f} ± {_fmt(r['se'])}" for r in fwd]]]}
    nums["kl.snis.exact_fwd"] = _n("kl", "metrics.json: snis_table exact, forward-KL min", fwd[0]["exact"])
    nums["kl.snis.bias_n4"] = _n("kl", "metrics.json: snis_table bias at n = 4, forward-KL min",
                                 fwd[0]["mean"] - fwd[0]["exact"])
    nums["kl.snis.exact_rev"] = _n("kl", "metrics.json: snis_table exact, reverse-KL min", rev[0]["exact"])
    nums["kl.snis.rev_max_below_1024"] = _n("kl", "metrics.json: snis_table largest mean for n < 1024, "
                                            "reverse-KL min", max(r["mean"] for r in rev if r["n"] < 1024))
    nums["kl.snis.rev_1024"] = _n("kl", "metrics.json: snis_table mean at n = 1024, reverse-KL min",
                                  [r["mean"] for r in rev if r["n"] == 1024][0])
    return nums, tables


def read_kl_score_wide(out: Path) -> tuple[dict, dict]:
    import math
    finals = [json.loads(line) for line in (out / "stdout.txt").read_text().split("\n") if line]
    centre = [(m, math.exp(2 * r)) for m, r in finals if abs(m) < 1.0]
    src = "stdout: final (m, rho) of the 6 fits; those with |m| < 1"
    nums = {"kl.wide.n_centre": _n("kl_score_wide", src + ", counted", len(centre)),
            "kl.wide.n_runs": _n("kl_score_wide", "stdout: number of fits", len(finals))}
    for i, (m, v) in enumerate(centre):
        nums[f"kl.wide.centre{i}_m"] = _n("kl_score_wide", src + f", #{i} m", m)
        nums[f"kl.wide.centre{i}_var"] = _n("kl_score_wide", src + f", #{i} exp(2 rho)", v)
    return nums, {}


def read_kl_hessians(out: Path) -> tuple[dict, dict]:
    pts = _load(out, "stdout.json")
    order = {"min": 0, "saddle": 1}
    pts = sorted(pts, key=lambda p: (p["type"] != "min" or abs(p["m"]) < 1e-6, order[p["type"]], -p["m"]))
    rows, seen = [], set()
    for p in pts:
        m = p["m"]
        if p["type"] == "saddle":
            if "between" in seen:
                continue
            label, kind, mm = "between", "saddles", f"±{abs(m):.5f}"
        elif abs(m) < 1e-6:
            label, kind, mm = "centre", "local (non-global) minimum", "0"
        else:
            label = "right mode" if m > 0 else "left mode"
            kind, mm = "**global minimum**", f"{m:.5f}".replace("-", "−")
        seen.add(label)
        rows.append([label, mm, f"{p['var']:.5f}", f"{p['kl']:.6g}",
                     ", ".join(f"{e:#.3g}".replace("-", "−") for e in p["eig"]), kind])
    nums = {"kl.centre_rr": _n("kl_hessians", "stdout.json: larger Hessian eigenvalue at m = 0",
                               max(p["eig"][1] for p in pts if abs(p["m"]) < 1e-6 and p["type"] == "min"))}
    return nums, {"kl.critical_points": {"run": "kl_hessians", "source": "stdout.json: the "
                                         "critical points with their Hessian eigenvalues",
                                         "rows": rows}}


def read_vqvae(out: Path) -> tuple[dict, dict]:
    m = _load(out, "metrics.json")
    nums = {f"vqvae.{k}": _n("vqvae", f"metrics.json: {k}", m[k])
            for k in ("recon", "nll_bound", "perplexity", "recon_mse", "dead_codes", "usage")}
    nums["vqvae.train_perplexity"] = _n("vqvae", "metrics.json: train.perplexity",
                                        m["train"]["perplexity"])
    return nums, {}


ROWS = {"vq_compare": [("K=64, EMA + restarts (default)", "ema + restarts"),
                       ("K=64, EMA, no restarts", "ema, no restarts"),
                       ("K=64, grad + restarts", "grad + restarts"),
                       ("K=64, grad, no restarts", "grad, no restarts")],
        "vq_compare_kmeans": [("K=64, EMA + k-means init + restarts", "ema + restarts"),
                              ("K=64, grad + k-means init, no restarts", "grad, no restarts")],
        "vq_compare_256": [("K=256, EMA + restarts", "ema + restarts"),
                           ("K=256, EMA, no restarts", "ema, no restarts")]}


def read_vq_compare(run: str):
    def read(out: Path) -> tuple[dict, dict]:
        d = _load(out, "stdout.json")
        rows, nums = [], {}
        for label, key in ROWS[run]:
            t, tr = d[key]["test"], d[key]["train"]
            rows.append([label, f"{t['recon']:.2f}", f"{t['nll_bound']:.2f}", f"{t['recon_mse']:.4f}",
                         f"{t['perplexity']:.1f}", f"{t['usage']:.3f}", str(t["dead_codes"]),
                         str(tr["dead_codes"]), f"{tr['perplexity']:.1f}"])
            slug = key.replace(" + ", "_").replace(", no ", "_no_").replace(" ", "_")
            for k in ("recon", "nll_bound", "perplexity", "dead_codes"):
                nums[f"{run}.{slug}.{k}"] = _n(run, f"stdout.json: {key!r} test.{k}", t[k])
            for k in ("perplexity", "dead_codes"):
                nums[f"{run}.{slug}.train_{k}"] = _n(run, f"stdout.json: {key!r} train.{k}", tr[k])
            nums[f"{run}.{slug}.last_epoch_perplexity"] = _n(
                run, f"stdout.json: {key!r} last_epoch.perplexity", d[key]["last_epoch"]["perplexity"])
            nums[f"{run}.{slug}.steps"] = _n(run, f"stdout.json: {key!r} steps", d[key]["steps"])
        before = d[ROWS[run][0][1]]["test_before"]
        for k in ("recon", "perplexity", "dead_codes"):
            nums[f"{run}.before.{k}"] = _n(run, f"stdout.json: {ROWS[run][0][1]!r} test_before.{k}",
                                           before[k])
        return nums, {f"{run}.rows": {"run": run, "source": "stdout.json: test and train metrics",
                                      "rows": rows}}
    return read


def read_gmvae(run: str):
    def read(out: Path) -> tuple[dict, dict]:
        s = _load(out, "seeds.json")["summary"]
        nums = {f"{run}.{k}": _n(run, f"seeds.json: summary.{k} mean ± std", _pm(s, k))
                for k in ("acc", "nmi", "ari", "iwae_ll", "elbo", "partition_acc",
                          "partition_agreement", "train_acc") if k in s}
        nums[f"{run}.iwae_ll_mean"] = _n(run, "seeds.json: summary.iwae_ll mean", s["iwae_ll"]["mean"])
        nums[f"{run}.seeds"] = _n(run, "seeds.json: summary.acc n", s["acc"]["n"])
        return nums, {}
    return read


READERS = {"kl": read_kl, "kl_score_wide": read_kl_score_wide, "kl_hessians": read_kl_hessians,
           "vqvae": read_vqvae, **{r: read_vq_compare(r) for r in ROWS},
           **{r: read_gmvae(r) for r in ("gmvae", "gmvae_optimal", "gmvae_anchor0", "gmvae_gmm",
                                             "gmvae_trained")}}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(prog="python scripts/derivation_numbers.py",
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--only", nargs="+", choices=sorted(RUNS), help="rerun these runs only; the "
                   "others keep their entries from the existing JSON (--json, else the default)")
    p.add_argument("--json", default=str(DEFAULT_JSON), help="file to write (default %(default)s)")
    p.add_argument("--keep", default=None, help="keep the runs' output folders here")
    a = p.parse_args(argv)
    sys.path.insert(0, str(ROOT))
    path = Path(a.json)
    keep_from = path if path.exists() else DEFAULT_JSON
    old = json.loads(keep_from.read_text()) if keep_from.exists() else {}
    doc = {"regenerate": "python scripts/derivation_numbers.py",
           "quoted_by": "derivations/*.md as NUMBER<!-- n:KEY --> and <!-- table:KEY[+KEY...] -->; "
                        "checked by tests/test_derivations.py",
           "environment": {"python": platform.python_version(), "machine": platform.machine(),
                           "cpus": os.cpu_count()},
           "runs": {}, "numbers": {}, "tables": {}}
    try:
        import numpy
        doc["environment"]["numpy"] = numpy.__version__
    except ImportError:
        pass
    todo = a.only or list(RUNS)
    for name in RUNS:
        if name not in todo:
            if name not in old.get("runs", {}):
                raise SystemExit(f"{name}: no earlier entry to keep; run it")
            doc["runs"][name] = old["runs"][name]
            doc["numbers"].update({k: v for k, v in old["numbers"].items() if v["run"] == name})
            doc["tables"].update({k: v for k, v in old["tables"].items() if v["run"] == name})
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(a.keep or tmp)
        for name in todo:
            out, secs = execute(name, scratch)
            print(f"{name}: {secs:.0f} s", file=sys.stderr)
            nums, tabs = READERS[name](out)
            doc["runs"][name] = {"command": command_line(name), "seconds": round(secs)}
            doc["numbers"].update(nums)
            doc["tables"].update(tabs)
    doc["runs"] = {k: doc["runs"][k] for k in RUNS}
    doc["numbers"] = dict(sorted(doc["numbers"].items()))
    doc["tables"] = dict(sorted(doc["tables"].items()))
    path.write_text(json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
    print(f"wrote {path}", file=sys.stderr)
    return doc


if __name__ == "__main__":
    main()
