"""scratchvae: variational autoencoders written by hand on NumPy / CuPy.

Floors (each imports only from floors below it):
  1. backend        -- array library, dtype, device RNG, stable elementwise functions
  2. nn             -- forward/backward building blocks (linear, activations, MLP)
  3. distributions  -- likelihoods, posterior heads, priors;  quantize -- the VQ codebook
  4. models/        -- vae, gmvae, vqvae
  5. kl, optim, train, data, metrics, plots, gradcheck, experiment
"""
__version__ = "0.1.0"
