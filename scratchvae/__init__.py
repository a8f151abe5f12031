"""scratchvae: variational autoencoders written by hand on NumPy / CuPy.

    from scratchvae import GMVAE
    labels = GMVAE(clusters=4).fit(X).predict(X)        # X: (n_samples, n_features) in [0, 1]

Floors (each imports only from floors below it):
  0. errors         -- ScratchVAEError (a ValueError) and its kinds
  1. backend        -- array library, dtype, device RNG, stable elementwise functions
  2. nn             -- forward/backward building blocks (linear, activations, MLP)
  3. distributions  -- likelihoods, posterior heads, priors;  quantize -- the VQ codebook
  4. models/        -- vae, gmvae, vqvae: init_params, loss, loss_and_grads
  5. optim, train, data, metrics, cluster, recipe, options, plots, gradcheck, kl/
  6. estimators/    -- VAE, GMVAE, VQVAE (fit, transform, predict, score, sample, save, load)
  7. cli/           -- the command line (``scratchvae`` / ``python run.py``), a client of 6
"""
__version__ = "0.2.0"

_EXPORTS = {"VAE", "GMVAE", "VQVAE", "VAEOptions", "GMVAEOptions", "VQVAEOptions", "load",
            "Estimator"}
__all__ = sorted(_EXPORTS | {"ScratchVAEError", "DataError", "UsageError", "CheckpointError",
                             "BackendError", "NotFittedError", "__version__"})


def __getattr__(name):
    # estimators load lazily, so ``import scratchvae.nn`` stays light
    if name in _EXPORTS:
        from . import estimators

        return getattr(estimators, name)
    if name in ("ScratchVAEError", "UsageError", "NotFittedError"):
        from . import errors

        return getattr(errors, name)
    if name == "DataError":
        from .data import DataError

        return DataError
    if name == "CheckpointError":
        from .train import CheckpointError

        return CheckpointError
    if name == "BackendError":
        from .backend import BackendError

        return BackendError
    raise AttributeError(f"module 'scratchvae' has no attribute {name!r}")
