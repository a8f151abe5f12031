"""Floor 3: the Gaussian-mixture prior of the assignment's §3 (VaDE), as forward/backward pairs.

Read it next to derivations/03-gmvae.md: the equation tags ``(M.n)`` and the gradients
``(M.G1)``-``(M.G6)`` in the comments are that page's, each at the line that computes it.
:meth:`MixturePrior.terms` runs the steps below top to bottom; :meth:`MixturePrior.backward`
runs their backward halves bottom to top.  Each backward method sits right under its forward.

    step                                   forward             backward
    alpha -> log pi, r_c -> logvar_c       log_pi, logvar_c    _params_backward     (M.G5), (M.G6)
    (mu, var, mu_c, logvar_c) -> T         _T   (M.12)         _T_backward          (M.G2)
    (z, log pi, mu_c, logvar_c) -> a       _log_joint          _log_joint_backward  (M.G4)
    a -> gamma               ("sample")    _sample_gamma (M.7) _sample_gamma_backward (M.G3)
    (log pi, T) -> gamma     ("optimal")   _optimal_gamma (M.8) _optimal_gamma_backward
    q_c given                ("given")     _given_gamma (M.20) -- (a constant)
    (gamma, T, log pi, logdet) -> reg      _reg  (M.16)        _reg_backward        (M.G1), (M.21)

Shapes: S samples, B batch, K components, J latent size.
"""
from __future__ import annotations

import math
from typing import NamedTuple

from .heads import Posterior

LOG2PI = math.log(2.0 * math.pi)
GAMMA_MODES = ("sample", "optimal")


class MixtureCache(NamedTuple):
    """What :meth:`MixturePrior.backward` needs, by name.

    ``mode`` says where q(c|x) came from: "sample" ((M.6), from the samples z), "optimal"
    ((M.8)) or "given" (the ``q_c`` argument, (M.20)).  Only "sample" makes reg depend on z, so
    ``p`` and ``diff`` are None in the other two modes.
    [03-gmvae.md#gradients-of-the-mixture-terms]"""

    mode: str
    post: Posterior      # summary of q(z|x): mu, var = diag Sigma (B, J), logdet (B,)
    r: object            # raw component log-variances, params["prior.logvar_c"] (K, J)
    log_pi: object       # (K,)
    prec_c: object       # 1 / var_c = exp(-logvar_c) (K, J)
    mu_diff: object      # mu - mu_c (B, K, J)
    T: object            # (B, K)
    gamma: object        # q(c|x) (B, K): computed, or the given q_c
    log_gamma: object    # log q(c|x) (B, K); 0 where a given q_c is 0 (0 log 0 := 0)
    p: object = None     # p(c | z_s) (S, B, K)
    diff: object = None  # z_s - mu_c (S, B, K, J)


class MixturePrior:
    """Gaussian-mixture prior of the assignment's §3: c ~ Cat(pi), z | c ~ N(mu_c, diag(var_c)).

    Parameters (flat dict keys):
      ``prior.pi_logits`` (K,)   alpha; pi = softmax(alpha) -- pi stays a probability vector
      ``prior.mu_c``      (K, J)
      ``prior.logvar_c``  (K, J) raw r; log var_c = lo + softplus(r - lo), lo = log(var_min):
                                  a smooth floor that keeps components from collapsing to a point.

    ELBO term ((M.16), the assignment's §3.5; either head through mu, var = diag Sigma, logdet):
      reg = -1/2 sum_c gamma_c T_c + sum_c gamma_c log(pi_c / gamma_c) + 1/2 (J + logdet),
      T_c = sum_j [log var_cj + var_j / var_cj + (mu_j - mu_cj)^2 / var_cj]
    with q(c|x) = gamma = 1/S sum_s p(c | z_s) (``gamma="sample"``, the assignment's §3.3) or
    softmax_c(log pi_c - T_c / 2) (``gamma="optimal"``), or a given q_c.  Gradients flow through
    gamma (into z, hence the encoder, and into the prior parameters), as in the reference
    implementations.   [03-gmvae.md#putting-it-together]
    """

    name = "mixture"

    def __init__(self, K: int, J: int, var_min: float = 1e-3, gamma: str = "sample"):
        if K < 1:
            raise ValueError(f"the mixture needs at least one component, got K={K}")
        if gamma not in GAMMA_MODES:
            raise ValueError(f"gamma must be 'sample' or 'optimal', got {gamma!r}")
        self.K, self.J, self.var_min = int(K), int(J), float(var_min)
        self.lo = math.log(self.var_min)
        # "sample": q(c|x) = 1/S sum_s p(c|z_s), the assignment's §3.3 estimate (default).
        # "optimal": q(c|x) = softmax_c(log pi_c - T_c / 2), the maximiser of the ELBO over
        #  q(c|x) for fixed q(z|x) [03-gmvae.md#the-coordinate-ascent-optimum]; no sampling.
        self.gamma_mode = gamma

    def init(self, b, rng) -> dict:
        return {"prior.pi_logits": b.zeros((self.K,)),
                "prior.mu_c": rng.normal((self.K, self.J)),
                "prior.logvar_c": b.zeros((self.K, self.J))}

    # ------------------------------------------------------------------ the composition
    def terms(self, b, params, z, post: Posterior, q_c=None):
        """reg (B,) of (M.16) and the :class:`MixtureCache` for :meth:`backward`.  With K = 1,
        mu_1 = 0 and var_1 = 1 it is the standard VAE's -KL (M.19).

        ``q_c`` (B, K), optional: a *given* q(c|x) -- rows must be on the simplex (entries >= 0,
        summing to 1; checked by ``AnchoredGMVAE.pack``, not here, to keep the step free of host
        syncs), e.g. the one-hot partition of the clustering recipe -- used in place of gamma.
        The ELBO of the assignment's §3.2 is a lower bound for any q(c|x), so this is still an
        ELBO (M.20); q_c is a constant (no gradient flows into it)."""
        xp = b.xp
        mode = self.gamma_mode if q_c is None else "given"
        if q_c is not None and tuple(q_c.shape) != (post.mu.shape[0], self.K):
            raise ValueError(f"q_c must have shape (batch, K) = ({post.mu.shape[0]}, {self.K}), "
                             f"got {tuple(q_c.shape)}")
        mu_c = params["prior.mu_c"]
        log_pi, logvar_c = self.log_pi(b, params), self.logvar_c(b, params)   # (K,), (K, J)
        prec_c = xp.exp(-logvar_c)                                     # (K, J)
        T, mu_diff = self._T(b, post, mu_c, logvar_c, prec_c)          # (B, K), (B, K, J)
        p = diff = None
        if mode == "sample":                                           # q(c|x) from z
            a, diff = self._log_joint(b, z, log_pi, mu_c, logvar_c, prec_c)   # (S, B, K)
            gamma, log_gamma, p = self._sample_gamma(b, a)
        elif mode == "optimal":                                        # q(c|x) from log pi, T
            gamma, log_gamma = self._optimal_gamma(b, log_pi, T)
        else:                                                          # q(c|x) given
            gamma, log_gamma = self._given_gamma(b, q_c)
        reg = self._reg(b, gamma, log_gamma, log_pi, T, post)          # (B,)
        return reg, MixtureCache(mode, post, params["prior.logvar_c"], log_pi, prec_c, mu_diff, T,
                                 gamma, log_gamma, p, diff)

    def backward(self, b, dreg, cache: MixtureCache):
        """dreg (B,) -> (dz (S, B, J) or None, dmu_post (B, J), dvar_post (B, J), dlogdet (B,),
        grads of the prior parameters).  [03-gmvae.md#gradients-of-the-mixture-terms]"""
        c = cache
        dgamma, dT, dlog_pi, dlogdet = self._reg_backward(b, dreg, c)  # reg -> gamma, T, log pi
        da = None
        if c.mode == "sample":                                         # gamma -> a
            da = self._sample_gamma_backward(b, dgamma, c)
        elif c.mode == "optimal":                                      # gamma -> log pi, T
            dlog_pi_g, dT_g = self._optimal_gamma_backward(b, dgamma, c)
            dlog_pi, dT = dlog_pi + dlog_pi_g, dT + dT_g
        # ("given": q_c is a constant, dgamma goes nowhere -- (M.21))
        dmu_post, dvar_post, dmu_c, dlogvar_c = self._T_backward(b, dT, c)   # T -> q(z|x), prior
        dz = None
        if da is not None:                                             # a -> z, prior
            dz, dlog_pi_a, dmu_c_a, dlogvar_c_a = self._log_joint_backward(b, da, c)
            dlog_pi = dlog_pi + dlog_pi_a
            dmu_c = dmu_c + dmu_c_a
            dlogvar_c = dlogvar_c + dlogvar_c_a
        grads = self._params_backward(b, dlog_pi, dmu_c, dlogvar_c, c)
        return dz, dmu_post, dvar_post, dlogdet, grads

    # ------------------------------------------------------------------ log pi, logvar_c
    def log_pi(self, b, params):
        """log pi = log_softmax(alpha)  (K,)."""
        # (M.1): p(c) = pi_c, pi = softmax(alpha) stays on the simplex
        return b.log_softmax(params["prior.pi_logits"])

    def logvar_c(self, b, params):
        """The floored component log-variances  (K, J)."""
        # (M.1a): l_c = lo + softplus(r_c - lo)
        return self.lo + b.softplus(params["prior.logvar_c"] - self.lo)

    def _params_backward(self, b, dlog_pi, dmu_c, dlogvar_c, c: MixtureCache):
        """Through log_softmax of the logits and the floor of the log-variances -> grads."""
        xp = b.xp
        pi = xp.exp(c.log_pi)
        # (M.G5): d alpha_k = d log pi_k - pi_k sum_c d log pi_c
        dlogits = dlog_pi - pi * xp.sum(dlog_pi)
        # (M.G6): d r_cj = d l_cj sigmoid(r_cj - lo)
        draw = dlogvar_c * b.sigmoid(c.r - self.lo)
        return {"prior.pi_logits": dlogits, "prior.mu_c": dmu_c, "prior.logvar_c": draw}

    def raw_from_logvar(self, b, logvar):
        """Inverse of the floor (M.1a): the raw parameter that gives ``logvar`` (> lo)."""
        xp = b.xp
        # inverse of (M.1a), whose derivative is (M.G6); the mixture initialisation writes its
        # variances through it [05-clustering-recipe.md#mixture-initialisation]
        t = logvar - self.lo                       # = softplus(r - lo) > 0
        return self.lo + t + xp.log(-xp.expm1(-t))  # softplus^{-1}(t) = t + log(1 - e^-t)

    # ------------------------------------------------------------------ T  (lemma 3.4, (M.9))
    def _T(self, b, post: Posterior, mu_c, logvar_c, prec_c):
        """T (B, K) of (M.12) and mu_diff = mu - mu_c (B, K, J).
        [03-gmvae.md#the-gaussian-cross-entropy-lemma]"""
        xp = b.xp
        mu_diff = post.mu[:, None, :] - mu_c                           # (B, K, J)
        # (M.12), by the assignment's lemma 3.4 (M.9) with var = diag Sigma (M.10):
        # T_bc = sum_j log var_cj + var_bj / var_cj + (mu_bj - mu_cj)^2 / var_cj
        T = xp.sum(logvar_c + (post.var[:, None, :] + mu_diff * mu_diff) * prec_c, axis=-1)
        return T, mu_diff

    def _T_backward(self, b, dT, c: MixtureCache):
        """dT (B, K) -> dmu_post, dvar_post (B, J) of q(z|x) and dmu_c, dlogvar_c (K, J).
        [03-gmvae.md#through-t]"""
        xp = b.xp
        d = c.mu_diff                                                  # d_bcj = mu_bj - mu_cj
        # (M.G2), with w_bcj = dT_bc / var_cj
        w = dT[:, :, None] * c.prec_c                                  # (B, K, J)
        dmu_post = xp.sum(2.0 * w * d, axis=1)                         # (B, J)
        dvar_post = xp.sum(w, axis=1)                                  # (B, J)
        dmu_c = -xp.sum(2.0 * w * d, axis=0)                           # (K, J)
        dlogvar_c = xp.sum(dT[:, :, None] - w * (c.post.var[:, None, :] + d * d), axis=0)
        return dmu_post, dvar_post, dmu_c, dlogvar_c

    # ------------------------------------------------------------------ a = log p(z, c)
    def _log_joint(self, b, z, log_pi, mu_c, logvar_c, prec_c):
        """a (S, B, K) and diff = z - mu_c (S, B, K, J) for z (S, B, J)."""
        xp = b.xp
        diff = z[:, :, None, :] - mu_c                                 # (S, B, K, J)
        # log N(z | mu_c, var_c) = -1/2 sum_j [log 2pi + l_cj + (z_j - mu_cj)^2 / var_cj]
        logN = -0.5 * xp.sum(LOG2PI + logvar_c + diff * diff * prec_c, axis=-1)   # (S, B, K)
        # a_sbc = log pi_c + log N(z_sb | mu_c, var_c)  (the log-joint of (M.1))
        return log_pi[None, None, :] + logN, diff

    def _log_joint_backward(self, b, da, c: MixtureCache):
        """da (S, B, K) -> dz (S, B, J), dlog_pi (K,), dmu_c, dlogvar_c (K, J).
        [03-gmvae.md#through-the-component-densities]"""
        xp = b.xp
        # (M.G4), with u_sbcj = da_sbc (z_sbj - mu_cj) / var_cj
        u = da[..., None] * c.diff * c.prec_c                          # (S, B, K, J)
        dz = -xp.sum(u, axis=2)                                        # (S, B, J)
        dmu_c = xp.sum(u, axis=(0, 1))                                 # (K, J)
        dlogvar_c = xp.sum(da[..., None] * (0.5 * c.diff * c.diff * c.prec_c - 0.5), axis=(0, 1))
        dlog_pi = xp.sum(da, axis=(0, 1))                              # (K,)
        return dz, dlog_pi, dmu_c, dlogvar_c

    def log_joint(self, b, params, z):
        """log p(z, c) = log pi_c + log N(z | mu_c, var_c) for z (S, B, J) -> (S, B, K), the
        log of (M.1) without p(x|z)."""
        logvar_c = self.logvar_c(b, params)
        a, _ = self._log_joint(b, z, self.log_pi(b, params), params["prior.mu_c"], logvar_c,
                               b.xp.exp(-logvar_c))
        return a

    def log_prob(self, b, params, z):
        """log p(z) = logsumexp_c [log pi_c + log N(z | mu_c, var_c)]  (S, B): the marginal prior
        of (M.1) and of the first integral of (M.5)."""
        return b.logsumexp(self.log_joint(b, params, z), axis=-1)

    def responsibilities(self, b, params, z):
        """p(c | z) for z (S, B, J) -> (S, B, K); rows sum to 1.  Bayes' rule of (M.5), by
        log-softmax as in (M.7); at z = mu it is the test-time q(c|x) of (M.6)."""
        return b.softmax(self.log_joint(b, params, z), axis=-1)

    # ------------------------------------------------------------------ q(c|x) = gamma
    def _sample_gamma(self, b, a):
        """gamma, log gamma (B, K) and p(c | z_s) (S, B, K) from a (S, B, K).
        [03-gmvae.md#stable-log-sum-exp-responsibilities]"""
        xp = b.xp
        logp = b.log_softmax(a, axis=-1)                               # log p(c | z_s)
        p = xp.exp(logp)
        # (M.7) ((M.6) in logs): log gamma = logsumexp_s log p(c | z_s) - log S, finite always
        log_gamma = b.logsumexp(logp, axis=0) - math.log(a.shape[0])   # (B, K)
        return xp.exp(log_gamma), log_gamma, p

    def _sample_gamma_backward(self, b, dgamma, c: MixtureCache):
        """dgamma (B, K) -> da (S, B, K).   [03-gmvae.md#through-gamma]"""
        xp = b.xp
        dp = dgamma[None, :, :] / c.p.shape[0]                         # (S, B, K)
        # (M.G3): softmax backward per sample
        return c.p * (dp - xp.sum(c.p * dp, axis=-1, keepdims=True))

    def _optimal_gamma(self, b, log_pi, T):
        """gamma, log gamma (B, K) at the coordinate-ascent optimum (no sampling).
        [03-gmvae.md#the-coordinate-ascent-optimum]"""
        # (M.8): q* = softmax_c(log pi_c - T_c / 2)
        log_gamma = b.log_softmax(log_pi - 0.5 * T, axis=-1)
        return b.xp.exp(log_gamma), log_gamma

    def _optimal_gamma_backward(self, b, dgamma, c: MixtureCache):
        """dgamma (B, K) -> dlog_pi (K,), dT (B, K).  At this optimum dgamma is the same for
        every c, so both are ~0: the envelope theorem (M.8); the softmax backward is (M.G3)'s."""
        xp = b.xp
        g = c.gamma
        du = g * (dgamma - xp.sum(g * dgamma, axis=-1, keepdims=True))   # softmax backward
        return xp.sum(du, axis=0), -0.5 * du

    def _given_gamma(self, b, q_c):
        """A given q(c|x) and its log, with log 0 := 0 so that 0 log 0 = 0 (a one-hot q_c is
        allowed).  A constant: no backward.  The bound it gives is (M.20); the clustering
        recipe's warm-up trains on it [05-clustering-recipe.md#the-anchored-warm-up]."""
        xp = b.xp
        return q_c, xp.log(xp.where(q_c > 0, q_c, xp.ones_like(q_c)))

    # ------------------------------------------------------------------ reg
    def _reg(self, b, gamma, log_gamma, log_pi, T, post: Posterior):
        """reg (B,) of (M.16) ((M.20) when gamma is a given q_c).   [03-gmvae.md#the-full-formula]"""
        xp = b.xp
        J = post.mu.shape[-1]
        # (M.16) = (ii) + (iii) + (iv), the log 2pi of (ii) and (iv) cancelled
        return (-0.5 * xp.sum(gamma * T, axis=-1)                     # (ii), (M.12)
                + xp.sum(gamma * (log_pi - log_gamma), axis=-1)       # (iii), (M.13)
                + 0.5 * (J + post.logdet))                            # (iv), (M.14)

    def _reg_backward(self, b, dreg, c: MixtureCache):
        """dreg (B,) -> dgamma (B, K), dT (B, K), dlog_pi (K,), dlogdet (B,).
        [03-gmvae.md#direct-partial-derivatives]"""
        xp = b.xp
        g = dreg[:, None]                                              # (B, 1)
        # (M.G1) ((M.21) for a given q_c, where dgamma is not used)
        dgamma = g * (-0.5 * c.T + c.log_pi - c.log_gamma - 1.0)       # (B, K)
        dT = -0.5 * g * c.gamma                                        # (B, K)
        dlog_pi = xp.sum(g * c.gamma, axis=0)                          # (K,)
        dlogdet = 0.5 * dreg                                           # (B,)
        return dgamma, dT, dlog_pi, dlogdet
