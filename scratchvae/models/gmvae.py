"""The Gaussian-mixture VAE of seed §3 (VaDE; Jiang et al., 2017), written out by hand.

Generative model (seed §3, items 1-3):   c ~ Cat(pi),  z | c ~ N(mu_c, diag(var_c)),
x | z ~ Bernoulli(f(z)) or N(mu_x, diag(sigma_x^2)).  Inference: q(z|x) from the encoder
(mean-field or Cholesky head) and q(c|x) = gamma = p(c|z) (seed §3.3).

The ELBO is the VAE's (models/vae.py) with the standard-normal prior swapped for
:class:`~scratchvae.distributions.MixturePrior`, whose ``terms`` compute seed eq. 3.5 -- nothing
is re-derived here.  This file adds what makes clustering *work*, since a GMVAE trained from a
random start usually does not:

1. autoencoder pretraining (:class:`PretrainAE`: the same encoder/decoder, z = mu, loss
   -log p(x | z = mu));
2. the mixture initialised by scikit-learn's ``GaussianMixture`` on the pretrained latent means,
   ``n_init`` restarts, the best chosen by its own likelihood (never by labels);
3. the encoder's log-variance output initialised small relative to the code spread;
4. learning-rate decay;
5. a guard against component collapse: after an epoch, a component whose weight fell below
   ``pi_min / K`` is re-seeded by splitting the heaviest component (again label-free).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, asdict

import numpy as np

from ..distributions import MixturePrior
from .vae import VAE, VAEConfig


@dataclass
class GMVAEConfig(VAEConfig):
    clusters: int = 10
    var_min: float = 1e-3          # floor of the component variances var_c

    def vae_config(self) -> VAEConfig:
        d = asdict(self)
        d.pop("clusters"), d.pop("var_min")
        return VAEConfig(**d)


class GMVAE(VAE):
    kind = "gmvae"

    def __init__(self, cfg: GMVAEConfig, backend):
        self.gcfg = cfg
        super().__init__(cfg.vae_config(), backend,
                         prior=MixturePrior(cfg.clusters, cfg.latent_dim, cfg.var_min))
        self.cfg = cfg

    def gamma(self, params, x):
        """q(c|x) at z = mu (the posterior mean): (B, K)."""
        post, _ = self.encode(params, x)
        return self.prior.responsibilities(self.b, params, post.mu[None])[0]

    def predict(self, params, X, batch: int = 1024) -> np.ndarray:
        """Cluster of each row: argmax_c q(c|x) (host int array)."""
        out = []
        for i in range(0, X.shape[0], batch):
            out.append(self.b.to_numpy(self.b.xp.argmax(self.gamma(params, X[i:i + batch, ...]), axis=-1)))
        return np.concatenate(out).astype(np.int64)

    def latent_means(self, params, X, batch: int = 1024) -> np.ndarray:
        return np.concatenate([self.b.to_numpy(self.encode(params, X[i:i + batch, ...])[0].mu)
                               for i in range(0, X.shape[0], batch)])


class PretrainAE:
    """Deterministic autoencoder sharing the GMVAE's encoder and decoder parameters:
    z = mu(x~) (the first J head outputs), loss = -1/B sum_b log p(x_b | z_b).  The other head
    outputs get zero gradient, so pretraining leaves them as initialised.

    ``drop > 0`` makes it a denoising autoencoder (as in DEC/VaDE's stacked-AE pretraining): the
    encoder sees x~ = x * m / (1 - drop) with m_i ~ Bernoulli(1 - drop), the decoder must
    reconstruct the clean x.  The mask is part of the noise, so the loss stays a deterministic
    function of (params, x, noise)."""

    kind = "ae"

    def __init__(self, model: VAE, drop: float = 0.0):
        if not 0.0 <= drop < 1.0:
            raise ValueError(f"input dropout must be in [0, 1), got {drop}")
        self.m, self.b, self.cfg, self.drop = model, model.b, model.cfg, float(drop)

    def init_params(self, rng):
        return self.m.init_params(rng)

    def sample_noise(self, rng, B, S=None):
        if self.drop == 0.0:
            return {}
        keep = self.b.xp.astype(rng.uniform((B, self.m.cfg.D)) >= self.drop, self.b.dtype)
        return {"mask": keep * (1.0 / (1.0 - self.drop))}

    def _forward(self, params, x, noise=None):
        m, b, xp = self.m, self.b, self.b.xp
        x_in = x * noise["mask"] if noise and "mask" in noise else x
        h, enc_c = m.encoder.forward(b, params, x_in)
        mu = h[:, :m.J]
        out, dec_c = m.decoder.forward(b, params, mu)
        ll, lik_c = m.lik.loglik(b, x, out[None])
        return -xp.mean(ll), (h, enc_c, dec_c, lik_c)

    def loss(self, params, x, noise):
        return self._forward(params, x, noise)[0]

    def loss_and_grads(self, params, x, noise):
        m, b, xp = self.m, self.b, self.b.xp
        loss, (h, enc_c, dec_c, lik_c) = self._forward(params, x, noise)
        B = x.shape[0]
        dll = xp.full((1, B), -1.0 / B, dtype=b.dtype, device=b.device)
        dout = m.lik.backward(b, dll, lik_c)[0]
        dmu, grads = m.decoder.backward(b, dout, dec_c)
        dh = xp.concat([dmu, xp.zeros((B, h.shape[1] - m.J), dtype=b.dtype, device=b.device)], axis=1)
        _, genc = m.encoder.backward(b, dh, enc_c, need_dx=False)
        grads.update(genc)
        return loss, grads, {"recon": loss}


def init_mixture_from_codes(model: GMVAE, params, Z: np.ndarray, *, seed: int = 0,
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


def init_logvar_head(model: VAE, params, Z: np.ndarray, ratio: float = 0.01):
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


def collapse_guard(model: GMVAE, params, pi_min: float = 0.1, opt=None) -> int:
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
