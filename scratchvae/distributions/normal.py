"""Floor 3: the standard-normal prior p(z) = N(0, I) and its closed forms.   [00-backprop.md#kl]

Every prior (this one and :class:`~scratchvae.distributions.mixture.MixturePrior`) exposes the
same methods, so a model swaps priors without new code:

    init(b, rng) -> params dict (the prior's own parameters, keys ``prior.*``)
    terms(b, params, z, post, q_c=None) -> (reg (B,), cache)
    backward(b, dreg, cache) -> (dz or None, dmu, dvar, dlogdet, grads of the prior parameters)
    log_prob(b, params, z) -> (S, B)     (used by the importance-weighted bound)

``reg`` is E_q[log p(z) - log q(z|x)], the part of the ELBO that is not reconstruction, given
the summary ``post`` = (mu, var = diag Sigma, logdet) of q(z|x) and the samples z (S, B, J).
"""
from __future__ import annotations

import math

from .heads import Posterior

LOG2PI = math.log(2.0 * math.pi)


def kl_std_normal(b, post: Posterior):
    """KL(N(mu, Sigma) || N(0, I)) per example (B,) = 1/2 (tr Sigma + ||mu||^2 - J - log det).
    Gradients: d/dmu = mu, d/dvar = 1/2, d/dlogdet = -1/2.   [00-backprop.md#kl]"""
    xp = b.xp
    J = post.mu.shape[-1]
    # (B.10.1); from L directly it is (F.8); the one-component mixture gives it back (M.19)
    return 0.5 * (xp.sum(post.var, axis=-1) + xp.sum(post.mu * post.mu, axis=-1) - J - post.logdet)


def kl_std_normal_backward(b, dkl, post: Posterior):
    """dkl (B,) -> (dmu, dvar, dlogdet)."""
    g = dkl[:, None]                                          # (B.10.2)
    return g * post.mu, 0.5 * g * b.xp.ones_like(post.var), -0.5 * dkl


def log_std_normal(b, z):
    """log N(z | 0, I) summed over the last axis."""
    xp = b.xp
    return -0.5 * xp.sum(LOG2PI + z * z, axis=-1)


class StandardNormalPrior:
    """p(z) = N(0, I).  Its ELBO term is the closed form  reg = -KL(q(z|x) || p(z))  per example
    (B.10.1), backward (B.10.2); it has no parameters, no cluster variable (so no ``q_c``) and no
    gradient into z."""

    name = "normal"

    def init(self, b, rng) -> dict:
        return {}

    def terms(self, b, params, z, post, q_c=None):
        """-KL(q || N(0, I)) (B,); the cache is ``post``.  The K = 1 mixture equals it (M.19)."""
        if q_c is not None:
            raise ValueError("the standard-normal prior has no clusters: q_c must be None")
        return -kl_std_normal(b, post), post

    def backward(self, b, dreg, cache: Posterior):
        dmu, dvar, dlogdet = kl_std_normal_backward(b, -dreg, cache)
        return None, dmu, dvar, dlogdet, {}

    def log_prob(self, b, params, z):
        return log_std_normal(b, z)
