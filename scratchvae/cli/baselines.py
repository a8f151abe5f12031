"""``python run.py baselines``: what the GMVAE adds, measured in the same harness.

On the same data, split and seeds, the clustering of the training rows by k-means on the inputs,
a Gaussian mixture on the first 10 principal components, the recipe's own pretrained
autoencoder followed by k-means on its codes, the recipe's graph partition alone, and the GMVAE
(training rows, and held-out rows where a method can predict them).  Labels only score."""
from __future__ import annotations

import json
import os
import sys
import time


from .. import metrics as M
from .. import plots
from . import report
from ..errors import UsageError
from .options import chosen_options, explicit_options
from .registry import entry
from .runs import config_record, default_out, get_data, run_folder, versions, write_json
from .train import _refuse_foreign

METHODS = ("kmeans", "pca10_gmm", "ae_kmeans", "partition", "gmvae")


def _scores(y, labels) -> dict:
    return {k: v for k, v in M.clustering_metrics(y, labels).items()}


def one_seed(est, ds, seed) -> dict:
    """Every method on the training rows (and the GMVAE on the held-out rows) for one seed."""
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture

    K, X, y = est.options.clusters, ds.x_train.reshape(len(ds.x_train), -1), ds.y_train
    rows = {}
    t = time.perf_counter()
    rows["kmeans"] = _scores(y, KMeans(K, n_init=10, random_state=seed).fit_predict(X))
    rows["kmeans"]["seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    P = PCA(min(10, X.shape[1]), random_state=seed).fit_transform(X)
    rows["pca10_gmm"] = _scores(y, GaussianMixture(K, n_init=10, random_state=seed).fit(P).predict(P))
    rows["pca10_gmm"]["seconds"] = time.perf_counter() - t
    t = time.perf_counter()
    est.set_params(random_state=seed).fit(ds.x_train, eval_set=ds.x_test)   # labels only score
    rows["gmvae"] = {**_scores(y, est.labels_), "seconds": time.perf_counter() - t}
    if ds.y_test is not None:
        rows["gmvae"].update({f"test_{k}": v for k, v in
                              _scores(ds.y_test, est.predict(ds.x_test)).items()})
    rows["ae_kmeans"] = _scores(y, KMeans(K, n_init=10, random_state=seed)
                                .fit_predict(est.pretrained_codes_))
    part = est.__dict__.get("partition_")
    if part is not None:
        rows["partition"] = _scores(y, part)
    return rows


def main(args) -> dict:
    e = entry("gmvae")
    explicit = explicit_options(args)
    _refuse_foreign("gmvae", e, explicit)
    est = e.make(chosen_options(args, explicit))
    ds = get_data(args, est.options.likelihood)
    if ds.y_train is None:
        raise UsageError(f"baselines scores clusterings against labels, and {args.data!r} has "
                         "none; give data with labels (an .npz with y)")
    est.check(ds.x_train)
    out = args.out or default_out("baselines")
    with run_folder(out, args):
        per = []
        n = args.seeds if args.seeds is not None else (2 if args.quick else 3)
        for seed in range(n):
            per.append(one_seed(est, ds, seed))
            report.write_history(os.path.join(out, f"history-seed{seed}.csv"), est)
            if not args.quiet:
                print(json.dumps({"seed": seed, **{m: round(r["acc"], 4) for m, r in per[-1].items()}}),
                      file=sys.stderr)
        summary = {m: {k: M.mean_std([p[m][k] for p in per]) for k in per[0][m]}
                   for m in METHODS if m in per[0]}
        record = {"data": args.data, "n_train": int(ds.x_train.shape[0]), "seeds": n,
                  "summary": summary, "runs": per, "options": est.get_params(),
                  "config": config_record(args), "versions": versions()}
        write_json(os.path.join(out, "baselines.json"), record)
        plots.per_seed({m: summary[m]["acc"]["values"] for m in summary},
                       os.path.join(out, "baselines-acc.png"),
                       f"clustering of the training rows of {args.data}: ACC per seed", "ACC")
        report.seeds_report(out, args, {
            "title": "the GMVAE beside its baselines (training rows, ACC)",
            "summary": {m: summary[m]["acc"] for m in summary}, "runs": per,
            "extra": [f"seeds 0-{n - 1}", f"{record['n_train']} training rows"],
            "notes": report.gmvae_phases(est) + [
                "The GMVAE's training, epoch by epoch: " + ", ".join(
                    f"[history-seed{i}.csv](history-seed{i}.csv)" for i in range(n)), ""]},
            lambda r: None)
    return {"out": out, "report": os.path.join(out, "report.md"), **{m: {k: round(summary[m][k]["mean"], 4) for k in ("acc", "nmi", "ari")}
                           for m in summary}}
