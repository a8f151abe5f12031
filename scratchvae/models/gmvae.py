"""The Gaussian-mixture VAE of the assignment's §3 (VaDE; Jiang et al., 2017), written out by hand.

Generative model (the assignment's §3, items 1-3; (M.1) of derivations/03-gmvae.md):
c ~ Cat(pi),  z | c ~ N(mu_c, diag(var_c)), x | z ~ Bernoulli(f(z)) or N(mu_x, diag(sigma_x^2)).
Inference: q(z|x) from the encoder (mean-field or Cholesky head) and q(c|x) = gamma = p(c|z)
averaged over z ~ q(z|x) (the assignment's §3.3, (M.6)).

The ELBO is the VAE's (models/vae.py) with the standard-normal prior swapped for
:class:`~scratchvae.distributions.MixturePrior`, whose ``terms`` compute the closed-form terms
of the assignment's §3.5 ((M.16)) -- nothing
is re-derived here.  This file adds :class:`PretrainAE`, the autoencoder that starts the clustering
recipe, and :class:`AnchoredGMVAE`, the warm-up with q(c|x) given; the host-side rest of the recipe
(neighbour-graph partition, mixture and variance-head initialisation, collapse guard) is in
``scratchvae/cluster.py``.
"""
from __future__ import annotations

from dataclasses import dataclass, asdict

from ..distributions import MixturePrior
from .vae import VAE, VAEConfig


@dataclass
class GMVAEConfig(VAEConfig):
    clusters: int = 10
    var_min: float = 1e-3          # floor of the component variances var_c
    gamma: str = "sample"          # q(c|x): "sample" (§3.3, (M.6)) or "optimal" ((M.8))

    def vae_config(self) -> VAEConfig:
        d = asdict(self)
        d.pop("clusters"), d.pop("var_min"), d.pop("gamma")
        return VAEConfig(**d)


class GMVAE(VAE):
    kind = "gmvae"

    def __init__(self, cfg: GMVAEConfig, backend):
        super().__init__(cfg.vae_config(), backend,
                         prior=MixturePrior(cfg.clusters, cfg.latent_dim, cfg.var_min, cfg.gamma))
        self.cfg = cfg

    def gamma(self, params, x):
        """q(c|x), the second factor of (M.2), at z = mu (the posterior mean): (B, K).  (M.6)
        with the one sample z = mu."""
        post, _ = self.encode(params, x)
        return self.prior.responsibilities(self.b, params, post.mu[None, ...])[0, ...]

    def predict(self, params, X, batch: int = 1024):
        """Cluster of each row: argmax_c q(c|x) of (M.6) at z = mu, as a host (NumPy) int array.
        Labels are never read [05-clustering-recipe.md#no-step-uses-labels]."""
        xp = self.b.xp
        parts = [xp.argmax(self.gamma(params, X[i:min(i + batch, X.shape[0]), ...]), axis=-1)
                 for i in range(0, X.shape[0], batch)]
        return self.b.to_numpy(xp.concat(parts)).astype("int64")

    def latent_means(self, params, X, batch: int = 1024):
        """Posterior means mu(x) of every row, as a host (NumPy) array."""
        parts = [self.encode(params, X[i:min(i + batch, X.shape[0]), ...])[0].mu for i in range(0, X.shape[0], batch)]
        return self.b.to_numpy(self.b.xp.concat(parts))


class PretrainAE:
    """Deterministic autoencoder sharing the GMVAE's encoder and decoder parameters:
    z = mu(x~) (the first J head outputs), loss = -1/B sum_b log p(x_b | z_b).  The other head
    outputs get zero gradient, so pretraining leaves them as initialised.

    ``drop > 0`` makes it a denoising autoencoder (as in DEC/VaDE's stacked-AE pretraining): the
    encoder sees x~ = x * m / (1 - drop) with m_i ~ Bernoulli(1 - drop), the decoder must
    reconstruct the clean x.  The mask is part of the noise, so the loss stays a deterministic
    function of (params, x, noise).  [05-clustering-recipe.md#pretraining]"""

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
        ll, lik_c = m.lik.loglik(b, x, out[None, ...])
        return -xp.mean(ll), (h, enc_c, dec_c, lik_c)

    def loss(self, params, x, noise):
        return self._forward(params, x, noise)[0]

    def loss_and_grads(self, params, x, noise):
        m, b, xp = self.m, self.b, self.b.xp
        loss, (h, enc_c, dec_c, lik_c) = self._forward(params, x, noise)
        B = x.shape[0]
        dll = xp.full((1, B), -1.0 / B, dtype=b.dtype, device=b.device)
        dout = m.lik.backward(b, dll, lik_c)[0, ...]
        dmu, grads = m.decoder.backward(b, dout, dec_c)
        dh = xp.concat([dmu, xp.zeros((B, h.shape[1] - m.J), dtype=b.dtype, device=b.device)], axis=1)
        _, genc = m.encoder.backward(b, dh, enc_c, need_dx=False)
        grads.update(genc)
        return loss, grads, {"recon": loss}


class AnchoredGMVAE:
    """The GMVAE trained with a *given* q(c|x) instead of gamma = p(c|z): the anchored warm-up
    of the clustering recipe.  The ELBO of the assignment's §3.2 bounds log p(x) for any q(c|x)
    (M.20), so the loss is still a negative ELBO; with q(c|x) fixed to a partition found on a
    neighbour graph, the encoder and the mixture learn to make that partition's clusters
    Gaussian in z before the assignment's q(c|x) = p(c|z) takes over.
    [05-clustering-recipe.md#the-anchored-warm-up]

    The training rows carry their q(c|x): the data matrix is ``[x | q]`` of shape (N, D + K)
    (see :meth:`pack`), so the ordinary training loop shuffles both together."""

    kind = "gmvae-anchored"

    def __init__(self, model: GMVAE):
        self.m, self.b, self.cfg = model, model.b, model.cfg
        self.D, self.K = model.cfg.D, model.prior.K

    def pack(self, X, Q):
        """Device arrays X (N, D) and Q (N, K) -> the training matrix [X | Q].  Every row of Q
        must be a distribution over the K clusters (otherwise the loss is not an ELBO)."""
        if tuple(Q.shape) != (X.shape[0], self.K):
            raise ValueError(f"q(c|x) must have shape (N, K) = ({X.shape[0]}, {self.K}), got "
                             f"{tuple(Q.shape)}")
        xp = self.b.xp
        if not (bool(xp.all(Q >= 0)) and bool(xp.all(xp.abs(xp.sum(Q, axis=1) - 1.0) <= 1e-6))):
            raise ValueError("every row of q(c|x) must be a distribution over the clusters "
                             "(entries >= 0 summing to 1)")
        return self.b.xp.concat([X, self.b.xp.astype(Q, X.dtype)], axis=1)

    def init_params(self, rng):
        return self.m.init_params(rng)

    def sample_noise(self, rng, B, S=None):
        return self.m.sample_noise(rng, B, S)

    def _split(self, xq, noise):
        return xq[:, :self.D], {**noise, "q_c": xq[:, self.D:]}

    def loss(self, params, xq, noise):
        return self.m.loss(params, *self._split(xq, noise))

    def loss_and_grads(self, params, xq, noise):
        return self.m.loss_and_grads(params, *self._split(xq, noise))


class HeldEncoder:
    """The GMVAE's ELBO ((M.16)) with the codes mu(x) held: the decoder, the mixture and the
    encoder's posterior spread (its output layer's non-mean columns) train; the encoder's hidden
    layers and mean columns stay as the warm-up left them.  The clustering recipe's ELBO stage:
    trained there, the encoder moves the codes toward what reconstructs best and away from the
    partition it was anchored to (the ELBO rises while the clusters drift).
    [05-clustering-recipe.md#the-elbo-stage-holds-the-codes]

    :meth:`hold` zeroes the optimiser's moments of the mean columns: their gradient is then
    always zero, so Adam's update m / (sqrt(v) + eps) is exactly 0 there, step after step."""

    kind = "gmvae-held-codes"

    def __init__(self, model: GMVAE):
        self.m, self.b, self.cfg = model, model.b, model.cfg
        self.last = f"encoder.{model.encoder.n_layers - 1}"

    def hold(self, opt):
        """Zero ``opt``'s moments of the mean columns of the encoder's output layer."""
        J = self.m.J
        for moments in (opt.m, opt.v):
            moments[self.last + ".W"][:, :J] = 0.0
            moments[self.last + ".b"][:J] = 0.0

    def init_params(self, rng):
        return self.m.init_params(rng)

    def sample_noise(self, rng, B, S=None):
        return self.m.sample_noise(rng, B, S)

    def loss(self, params, x, noise):
        return self.m.loss(params, x, noise)

    def loss_and_grads(self, params, x, noise):
        return self.m.loss_and_grads(params, x, noise, encoder="spread")
