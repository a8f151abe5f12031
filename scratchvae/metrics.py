"""Floor 5: evaluation in nats on held-out data, and clustering metrics.

* ``iwae_ll``: the importance-weighted bound log 1/k sum_s w_s with k samples from q(z|x)
  (Burda et al., 2016), a lower bound on log p(x) that tightens as k grows; computed with
  log-sum-exp.  ``elbo`` is the mean of log w_s over the same samples (its k = 1 special case);
  ``recon`` is E_q[-log p(x|z)]; ``kl`` = recon - elbo, the MC estimate of KL(q || p).  All are
  means per example, in nats.  ``recon_mse`` is the per-pixel squared error of E[x | z = mu].
* No NaN or inf is ever returned as a score: :func:`check_finite` raises a
  :class:`~scratchvae.train.DivergenceError` instead.
* Clustering (when labels exist): accuracy under the best one-to-one matching of clusters to
  labels (Hungarian algorithm, scipy), NMI and ARI (scikit-learn).
"""
from __future__ import annotations

import math

import numpy as np

_ROWS = 2048   # decoder rows per call in iwae_metrics: (2048, D) activations


def iwae_metrics(model, params, X, *, k: int = 100, batch: int = 256, rng_tag="eval") -> dict:
    """ELBO, importance-weighted log-likelihood, reconstruction and KL on device data ``X``."""
    b, xp = model.b, model.b.xp
    N = X.shape[0]
    sums = {"iwae_ll": 0.0, "elbo": 0.0, "recon": 0.0, "recon_mse": 0.0}
    # the noise is drawn per batch of bs rows (k * bs <= 16384); the decoder then runs on at
    # most _ROWS of its k * bs rows at a time, a slice of the k samples (each sample's weights
    # depend on that sample alone), so memory stays small whatever k
    bs = max(1, min(batch, 16384 // max(1, k)))
    for i in range(0, N, bs):
        xb = X[i:min(i + bs, N), ...]   # the array API rejects out-of-range slice stops
        eps = model.sample_noise(b.rng(rng_tag, i), xb.shape[0], S=k)["eps"]
        ss = max(1, _ROWS // xb.shape[0])
        parts = [model.log_weights(params, xb, eps[s:min(s + ss, k), ...])
                 for s in range(0, k, ss)]
        logw = xp.concat([w for w, _ in parts], axis=0)                   # (k, B)
        ll = xp.concat([x for _, x in parts], axis=0)
        iw = b.logsumexp(logw, axis=0) - math.log(k)
        post, _ = model.encode(params, xb)
        mean = model.decode_mean(params, post.mu)
        sums["iwae_ll"] += float(xp.sum(iw))
        sums["elbo"] += float(xp.sum(xp.mean(logw, axis=0)))
        sums["recon"] += float(xp.sum(-xp.mean(ll, axis=0)))
        sums["recon_mse"] += float(xp.mean((mean - xb) ** 2)) * xb.shape[0]
    out = {key: v / N for key, v in sums.items()}
    out["kl"] = -out["elbo"] - out["recon"]
    check_finite(out, "the held-out scores")
    out["iwae_k"] = k
    return out


def check_finite(scores: dict, what: str = "the scores") -> dict:
    """``scores`` unchanged if every number in it is finite, else a DivergenceError naming
    them: a NaN or inf is never reported as a result."""
    from .train import DivergenceError

    bad = {k: v for k, v in scores.items() if isinstance(v, (float, np.floating))
           and not math.isfinite(v)}
    if bad:
        shown = ", ".join(f"{k} {v}" for k, v in bad.items())
        raise DivergenceError(f"{what} are not finite ({shown}): the model gives NaN or inf on "
                              "this data (diverged, or data far from what it was trained on)")
    return scores


def cluster_acc(y_true, y_pred) -> float:
    """Accuracy after the best one-to-one relabelling of predicted clusters (Hungarian)."""
    from scipy.optimize import linear_sum_assignment

    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"label arrays differ in shape: {y_true.shape} vs {y_pred.shape}")
    # any label values (negative, huge, strings) -> codes 0..C-1: the matrix is C x C'
    t = np.unique(y_true, return_inverse=True)[1].reshape(-1)
    p = np.unique(y_pred, return_inverse=True)[1].reshape(-1)
    n = int(max(t.max(initial=0), p.max(initial=0))) + 1
    w = np.zeros((n, n), dtype=np.int64)
    np.add.at(w, (p, t), 1)
    r, c = linear_sum_assignment(-w)
    return float(w[r, c].sum()) / y_true.size


def clustering_metrics(y_true, y_pred) -> dict:
    from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score

    return {"acc": cluster_acc(y_true, y_pred),
            "nmi": float(normalized_mutual_info_score(y_true, y_pred)),
            "ari": float(adjusted_rand_score(y_true, y_pred))}


def mean_std(values) -> dict:
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std(ddof=1)) if a.size > 1 else 0.0,
            "n": int(a.size), "values": [float(v) for v in a]}
