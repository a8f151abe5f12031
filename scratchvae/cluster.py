"""Floor 5: the clustering recipe around the GMVAE (host-side steps between training phases).

A GMVAE trained from a random start rarely clusters well; these steps make it work, none of them
looks at labels:

1. autoencoder pretraining (``scratchvae/models/gmvae.py`` :class:`PretrainAE`);
2. the mixture initialised by scikit-learn's ``GaussianMixture`` on the pretrained latent means,
   ``n_init`` restarts, the best chosen by its own likelihood (:func:`init_mixture_from_codes`);
3. the encoder's log-variance output initialised small relative to the code spread
   (:func:`init_logvar_head`);
4. learning-rate decay (``TrainConfig.lr_decay``);
5. a guard against component collapse: after an epoch, a component whose weight fell below
   ``pi_min / K`` is re-seeded by splitting the heaviest component (:func:`collapse_guard`).

They run between epochs, on the host (NumPy / scikit-learn), and write device arrays back through
the backend.  [03-gmvae.md#the-clustering-recipe]
"""
from __future__ import annotations

import math

import numpy as np


def init_mixture_from_codes(model, params, Z: np.ndarray, *, seed: int = 0,
                            n_init: int = 10) -> dict:
    """Fit sklearn's GaussianMixture (diagonal covariances, ``n_init`` restarts, best by its
    likelihood) to latent means Z (N, J) and copy it into the prior parameters.  Returns a
    report (log-likelihood per point, weights)."""
    from sklearn.mixture import GaussianMixture

    b = model.b
    prior = model.prior
    K = prior.K
    gm = GaussianMixture(n_components=K, covariance_type="diag", n_init=n_init,
                         random_state=seed, reg_covar=1e-6, max_iter=300).fit(Z)
    var = np.maximum(gm.covariances_, 1.5 * prior.var_min)
    params["prior.pi_logits"] = b.asarray(np.log(np.maximum(gm.weights_, 1e-8)))
    params["prior.mu_c"] = b.asarray(gm.means_)
    params["prior.logvar_c"] = prior.raw_from_logvar(b, b.asarray(np.log(var)))
    return {"gmm_loglik_per_point": float(gm.score(Z)), "gmm_converged": bool(gm.converged_),
            "gmm_weights": gm.weights_.tolist()}


def init_logvar_head(model, params, Z: np.ndarray, ratio: float = 0.01):
    """Encoder log-variance outputs start at log(ratio * mean code variance): weights 0, bias set.
    (Only for the mean-field head; the Cholesky head's diagonal bias is set likewise.)"""
    b = model.b
    J = model.J
    last = model.encoder.n_layers - 1
    W, bias = params[f"encoder.{last}.W"], params[f"encoder.{last}.b"]
    target = math.log(ratio * float(np.mean(np.var(Z, axis=0))) + 1e-12)
    Wh, bh = b.to_numpy(W).copy(), b.to_numpy(bias).copy()
    if model.head.name == "diag":
        Wh[:, J:2 * J] = 0.0
        bh[J:2 * J] = target
    else:   # Cholesky: diagonal std softplus(d) + floor ~ exp(target / 2); off-diagonals 0
        std = math.exp(0.5 * target)
        Wh[:, J:] = 0.0
        bh[J:2 * J] = math.log(math.expm1(max(std, 1e-6)))
        bh[2 * J:] = 0.0
    params[f"encoder.{last}.W"] = b.asarray(Wh)
    params[f"encoder.{last}.b"] = b.asarray(bh)


def collapse_guard(model, params, pi_min: float = 0.1, opt=None) -> int:
    """Re-seed every component whose weight fell below ``pi_min / K`` by splitting the heaviest
    component along its widest axis (means moved by +-1/2 std, weight shared).  Label-free.
    With ``opt`` (Adam), the moments of the prior parameters are reset so the re-seeded
    components do not inherit the dead one's momentum.  Returns the number re-seeded."""
    b = model.b
    K = model.prior.K
    pi = np.exp(b.to_numpy(model.prior.log_pi(b, params)))
    small = np.flatnonzero(pi < pi_min / K)
    if small.size == 0 or K < 2:
        return 0
    logits = np.log(pi)
    mu = b.to_numpy(params["prior.mu_c"]).copy()
    raw = b.to_numpy(params["prior.logvar_c"]).copy()
    lv = b.to_numpy(model.prior.logvar_c(b, params))
    for c in small:
        big = int(np.argmax(np.exp(logits)))
        j = int(np.argmax(lv[big]))
        step = 0.5 * math.exp(0.5 * lv[big, j])
        mu[c] = mu[big]
        mu[c, j] += step
        mu[big, j] -= step
        raw[c] = raw[big]
        logits[c] = logits[big] = logits[big] - math.log(2.0)
    params["prior.pi_logits"] = b.asarray(logits)
    params["prior.mu_c"] = b.asarray(mu)
    params["prior.logvar_c"] = b.asarray(raw)
    if opt is not None:
        for k in ("prior.pi_logits", "prior.mu_c", "prior.logvar_c"):
            opt.m[k] = b.xp.zeros_like(params[k])
            opt.v[k] = b.xp.zeros_like(params[k])
    return int(small.size)
