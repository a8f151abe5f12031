"""Floor 6: scikit-learn-style estimators over the hand-written models.

``VAE`` (mean-field, or full covariance with ``posterior="cholesky"``), ``GMVAE`` (clustering:
the whole recipe runs in ``fit``), ``VQVAE``; ``load(path)`` returns whichever a checkpoint
holds.  See ``base.py`` for what they share.
"""
from .base import Estimator, load
from .gmvae import GMVAE, GMVAEOptions
from .vae import VAE, VAEOptions
from .vqvae import VQVAE, VQVAEOptions

__all__ = ["Estimator", "VAE", "GMVAE", "VQVAE", "VAEOptions", "GMVAEOptions", "VQVAEOptions",
           "load"]
