"""Floor 3: the pieces of an ELBO, each a forward/backward pair with a hand-written gradient.

    likelihoods.py   p(x|z):  Bernoulli (logits), Gaussian (mean, floored log-variance)
    heads.py         q(z|x):  DiagGaussianHead, CholeskyHead -> Posterior (mu, var, logdet); log_q
    normal.py        prior N(0, I): StandardNormalPrior, kl_std_normal
    mixture.py       prior sum_c pi_c N(mu_c, var_c): MixturePrior (the assignment's §3)

Every forward returns ``(out, cache)`` with a named-tuple cache; every backward takes the
upstream gradient and that cache.  No array library is imported here: every function receives
the backend ``b`` (floor 1) and computes with ``b.xp``.
"""
from .heads import (HEADS, LOG2PI, CholeskyHead, DiagGaussianHead, Posterior, log_q,
                    make_head)
from .likelihoods import LIKELIHOODS, Bernoulli, Gaussian, make_likelihood
from .mixture import MixtureCache, MixturePrior
from .normal import StandardNormalPrior, kl_std_normal, kl_std_normal_backward, log_std_normal

__all__ = [
    "LOG2PI",
    "Bernoulli", "Gaussian", "LIKELIHOODS", "make_likelihood",
    "Posterior", "DiagGaussianHead", "CholeskyHead", "HEADS", "make_head", "log_q",
    "StandardNormalPrior", "kl_std_normal", "kl_std_normal_backward", "log_std_normal",
    "MixturePrior", "MixtureCache",
]
