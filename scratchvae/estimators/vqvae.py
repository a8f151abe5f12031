"""Floor 6: the VQ-VAE estimator (the assignment's §4).

    est = VQVAE(codebook_size=64).fit(X)
    codes = est.transform(X)            # (n_samples, codes_per_input) code indices
    est.evaluate(X)                     # recon, nll_bound, perplexity, usage, dead codes, ...
"""
from __future__ import annotations

import numpy as np
from sklearn.base import TransformerMixin

from ..errors import UsageError
from ..models.vqvae import VQVAE as VQVAEModel, VQVAEConfig
from .base import Estimator


class VQVAE(TransformerMixin, Estimator):
    """Vector-quantised autoencoder: M codes per input from a codebook of K, learned by
    exponential moving averages (default) or by the codebook loss, straight-through encoder
    gradients, dead-code restarts.  Options: :class:`VQVAEOptions`."""

    model_class, config_class = VQVAEModel, VQVAEConfig
    kinds = ("vqvae",)
    train_defaults = {"epochs": 60, "lr": 1e-3}

    def _check_data(self, Xh):
        if self.options.codebook_size > 1_000_000:
            raise UsageError(f"codebook_size={self.options.codebook_size} (--codebook-size): "
                             "above 1e6 codes is not supported")
    def transform(self, X):
        """Code indices k, (n_samples, codes_per_input) int64."""
        Xd = self._rows(X)
        return self._batched(lambda xb: self.model_.encode(self.params_, xb)[0], Xd).astype(np.int64)

    def reconstruct(self, X):
        """E[x | z_q(x)], (n_samples, n_features)."""
        Xd = self._rows(X)
        return self._batched(lambda xb: self.model_.reconstruct(self.params_, xb), Xd)

    def evaluate(self, X, y=None) -> dict:
        """recon, nll_bound, recon_mse, quant_error, perplexity, usage, dead_codes,
        bits_per_dim (see :meth:`scratchvae.models.vqvae.VQVAE.evaluate`)."""
        return self.model_.evaluate(self.params_, self._rows(X))

    def _heldout_scores(self, params, Xe) -> dict:
        """Held-out reconstruction (nats) and commitment ||z_e - e_k||^2 (the quantisation
        error; deterministic)."""
        r = self.model_.evaluate(params, Xe)
        return {"recon": r["recon"], "commit": r["quant_error"]}

    def score(self, X, y=None) -> float:
        """-nll_bound: a lower bound on the mean log-likelihood per example under the uniform
        prior over codes (higher is better)."""
        return -self.evaluate(X)["nll_bound"]

    def sample(self, n_samples: int = 1, random_state: int = 0):
        """Decoder means of ``n_samples`` code combinations drawn uniformly (the prior)."""
        self._require_fitted()
        m, b = self.model_, self.backend_
        k = np.random.default_rng(random_state).integers(0, m.K, size=(int(n_samples), m.M))
        z = m.codes_to_z(self.params_, b.asindex(k))
        return b.to_numpy(m.decode_mean(self.params_, z))


VQVAE.Options = VQVAEOptions = VQVAE.options_class("VQVAEOptions")
VQVAEOptions.__doc__ = ("Options of :class:`VQVAE`: the network and quantiser (latent_dim, "
                        "codes_per_input, codebook_size, beta, codebook_update, EMA and dead-code "
                        "settings), training and runtime.")
