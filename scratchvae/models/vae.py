"""The variational autoencoder, written out by hand (Kingma & Welling, 2014).

    x (B, D) --encoder MLP--> h --posterior head--> z = mu + L eps  (S, B, J)
             --decoder MLP--> out --likelihood--> log p(x|z)         (S, B)

    ELBO(x) = 1/S sum_s log p(x | z_s)  +  reg(x)                    [00-backprop.md#elbo]

``reg`` comes from the prior (floor 3): -KL(q || N(0, I)) in closed form for the standard VAE,
the assignment's §3.5 mixture terms for the GMVAE.  The head is mean-field (``posterior="diag"``) or
full-covariance (``posterior="cholesky"``, the assignment's §2); both summarise q by (mu, var, logdet).

Normalisation (once, for every model): the loss is the *negative ELBO averaged over the batch*,
each example's ELBO summed over data and latent dimensions, in nats.
"""
from __future__ import annotations

from dataclasses import dataclass, asdict

from ..distributions import (StandardNormalPrior, log_q, make_head, make_likelihood)
from ..nn import MLP, linear_backward


@dataclass
class VAEConfig:
    D: int
    latent_dim: int = 10
    hidden: tuple = (256, 256)
    act: str = "relu"
    likelihood: str = "bernoulli"
    posterior: str = "diag"
    n_samples: int = 1
    cholesky_diag: str = "softplus"   # diag(L) = softplus(d) + 1e-5, or "exp": exp(d)

    def to_dict(self):
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d


class VAE:
    """Encoder, posterior head, decoder and likelihood around a prior (standard normal here)."""

    kind = "vae"

    def __init__(self, cfg: VAEConfig, backend, prior=None):
        if cfg.latent_dim < 1 or cfg.n_samples < 1 or cfg.D < 1:
            raise ValueError("latent_dim, n_samples and D must be positive integers")
        self.cfg, self.b = cfg, backend
        self.J = cfg.latent_dim
        self.head = make_head(cfg.posterior, self.J, cfg.cholesky_diag)
        self.lik = make_likelihood(cfg.likelihood)
        self.prior = StandardNormalPrior() if prior is None else prior
        self.encoder = MLP("encoder", (cfg.D, *cfg.hidden, self.head.n_out()), cfg.act)
        self.decoder = MLP("decoder", (self.J, *reversed(tuple(cfg.hidden)), self.lik.n_out(cfg.D)),
                           cfg.act)

    # ------------------------------------------------------------------ parameters and noise
    def init_params(self, rng) -> dict:
        p = self.encoder.init(self.b, rng)
        p.update(self.decoder.init(self.b, rng))
        p.update(self.prior.init(self.b, rng))
        return p

    def sample_noise(self, rng, B: int, S: int | None = None) -> dict:
        S = self.cfg.n_samples if S is None else S
        return {"eps": rng.normal((S, B, self.J))}

    # ------------------------------------------------------------------ forward / backward
    def _forward(self, params, x, noise):
        b, xp = self.b, self.b.xp
        eps = noise["eps"]
        S, B = eps.shape[0], x.shape[0]
        h, enc_c = self.encoder.forward(b, params, x)                      # (B, n_head)
        z, post, head_c = self.head.forward(b, h, eps)                     # (S, B, J)
        out, dec_c = self.decoder.forward(b, params, xp.reshape(z, (S * B, self.J)))
        ll, lik_c = self.lik.loglik(b, x, xp.reshape(out, (S, B, out.shape[-1])))  # (S, B)
        # a given q(c|x) (the GMVAE's anchored warm-up) travels with the noise
        kw = {"q_c": noise["q_c"]} if "q_c" in noise else {}
        reg, prior_c = self.prior.terms(b, params, z, post, **kw)         # (B,)
        rec = xp.mean(ll, axis=0)                                          # (B,)  1/S sum_s
        # (B.11.1); for the mixture prior the estimator (M.15) = rec + reg (M.16) of the ELBO
        # (M.3), rec the SGVB average (M.11)
        elbo = rec + reg                                                   # (B,)
        loss = -xp.mean(elbo)                                              # (B.11.2), (M.17)
        cache = (S, B, enc_c, head_c, dec_c, lik_c, prior_c)
        aux = {"recon": -xp.mean(rec), "reg": -xp.mean(reg)}
        return loss, aux, cache, (z, post)

    def loss(self, params, x, noise):
        """Negative ELBO, mean over the batch (a 0-d device array), (B.11.2)."""
        return self._forward(params, x, noise)[0]

    def loss_and_grads(self, params, x, noise, encoder: str = "all"):
        """-> loss (0-d), grads {key: array}, aux {name: 0-d array}.  ``encoder="spread"``:
        of the encoder, only its last layer's gradient, with the columns of the mean mu(x) zero
        (the posterior's spread trains, the codes are held:
        [05-clustering-recipe.md#the-elbo-stage-holds-the-codes]); ``"none"``: no encoder
        gradient."""
        if encoder not in ("all", "spread", "none"):
            raise ValueError(f"encoder must be 'all', 'spread' or 'none', got {encoder!r}")
        b, xp = self.b, self.b.xp
        loss, aux, cache, _ = self._forward(params, x, noise)
        S, B, enc_c, head_c, dec_c, lik_c, prior_c = cache
        # loss = -1/B sum_b [1/S sum_s ll_sb + reg_b]: the seeds (B.11.3), as under (M.17)
        dll = xp.full((S, B), -1.0 / (S * B), dtype=b.dtype, device=b.device)
        dreg = xp.full((B,), -1.0 / B, dtype=b.dtype, device=b.device)
        dout = self.lik.backward(b, dll, lik_c)                            # (S, B, Dout)
        dz_flat, grads = self.decoder.backward(b, xp.reshape(dout, (S * B, dout.shape[-1])), dec_c,
                                               need_dx=encoder != "none")
        dz_p, dmu, dvar, dlogdet, gprior = self.prior.backward(b, dreg, prior_c)
        grads.update(gprior)
        if encoder == "none":
            return loss, grads, aux
        dz = xp.reshape(dz_flat, (S, B, self.J))
        if dz_p is not None:
            dz = dz + dz_p
        dh = self.head.backward(b, dz, dmu, dvar, dlogdet, head_c)
        if encoder == "spread":                   # the output layer is linear: dh is its dout
            last = self.encoder.n_layers - 1
            dh[:, :self.J] = 0.0                      # (B.1.2) with the mean's columns cut
            _, dW, db = linear_backward(xp, dh, enc_c[last][0], False, b.ws, f"encoder.{last}")
            grads.update({f"encoder.{last}.W": dW, f"encoder.{last}.b": db})
            return loss, grads, aux
        _, genc = self.encoder.backward(b, dh, enc_c, need_dx=False)
        grads.update(genc)
        return loss, grads, aux

    # ------------------------------------------------------------------ inference helpers
    def encode(self, params, x):
        """Posterior summary of q(z|x) (mu, var, logdet) and the head's raw output."""
        h, _ = self.encoder.forward(self.b, params, x)
        z0 = self.b.xp.zeros((1, x.shape[0], self.J), dtype=self.b.dtype, device=self.b.device)
        _, post, _ = self.head.forward(self.b, h, z0)
        return post, h

    def decode_mean(self, params, z):
        """z (N, J) -> E[x|z] (N, D)."""
        out, _ = self.decoder.forward(self.b, params, z)
        return self.lik.mean(self.b, out)

    def log_weights(self, params, x, eps):
        """log w_s = log p(x|z_s) + log p(z_s) - log q(z_s|x) for z_s = mu + L eps_s: (S, B).
        The importance weights of [00-backprop.md#elbo]; log q by (F.6)."""
        b, xp = self.b, self.b.xp
        S, B = eps.shape[0], x.shape[0]
        h, _ = self.encoder.forward(b, params, x)
        z, post, _ = self.head.forward(b, h, eps)
        out, _ = self.decoder.forward(b, params, xp.reshape(z, (S * B, self.J)))
        ll, _ = self.lik.loglik(b, x, xp.reshape(out, (S, B, out.shape[-1])))
        return ll + self.prior.log_prob(b, params, z) - log_q(b, post, eps), ll
