"""Floor 3: the pieces of an ELBO, each with its hand-written gradient.

Likelihoods  p(x|z)  -- the decoder output ``out`` parameterises them:
    :class:`Bernoulli`  (logits)                 [00-backprop.md#bernoulli]
    :class:`Gaussian`   (mean, log-variance)     [00-backprop.md#gaussian]

Posterior heads  q(z|x) -- the encoder output ``h`` parameterises them:
    :class:`DiagGaussianHead` (mu, log sigma^2)          [00-backprop.md#diag-head]
    :class:`CholeskyHead`     (mu, diag of L, lower of L) [02-full-covariance.md]

Both heads return the same summary of q, :class:`Posterior` ``(mu, var, logdet)`` with
``var = diag(Sigma)`` and ``logdet = log det Sigma``.  That summary is all the closed-form
terms of every model need:

* KL(q || N(0, I)) = 1/2 (sum var + ||mu||^2 - J - logdet)        (:func:`kl_std_normal`)
* E_q[log N(z | m, s^2 I)] (seed lemma 3.4) uses only mu and var   (models/gmvae.py)
* log q(z|x) at z = mu + L eps is -1/2 (J log 2pi + logdet + ||eps||^2), for both heads.

Shapes: B batch, S Monte Carlo samples, J latent size, D data size.  ``eps`` is (S, B, J) and is
always an argument, so every loss is a deterministic function of (params, x, noise).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

LOG2PI = math.log(2.0 * math.pi)


# =========================================================================== likelihoods
class Bernoulli:
    """x_i ~ Bernoulli(sigmoid(l_i)), parameterised by logits l (never by probabilities).

    log p(x|l) = sum_i x_i l_i - softplus(l_i)    (stable for |l| up to 1e4 and beyond)
    d/dl_i     = x_i - sigmoid(l_i)               [00-backprop.md#bernoulli]
    """

    name = "bernoulli"

    def n_out(self, D: int) -> int:
        return D

    def loglik(self, b, x, out):
        """x (B, D), out (S, B, D) logits -> ll (S, B), cache."""
        xp = b.xp
        e = xp.exp(-xp.abs(out))                       # in (0, 1]: no overflow anywhere
        softplus = xp.maximum(out, 0.0) + xp.log1p(e)  # log(1 + e^l)
        ll = xp.sum(x * out - softplus, axis=-1)
        return ll, (x, out)

    def backward(self, b, dll, cache):
        """dll (S, B) -> dout (S, B, D)."""
        x, out = cache
        return dll[..., None] * (x - b.sigmoid(out))

    def mean(self, b, out):
        return b.sigmoid(out)


class Gaussian:
    """x ~ N(mu_x, diag(exp(logvar_x))) with [mu_x; r] = decoder output (seed §3 item 3b).

    To keep the likelihood bounded on pixels that never vary, the log-variance has a smooth
    floor: logvar = lo + softplus(r - lo), lo = log(var_min).  (``var_min=0`` disables it.)

    log p(x) = -1/2 sum_i [log 2pi + logvar_i + (x_i - mu_i)^2 exp(-logvar_i)]
    d/dmu_i      = (x_i - mu_i) exp(-logvar_i)
    d/dlogvar_i  = -1/2 + 1/2 (x_i - mu_i)^2 exp(-logvar_i)
    d logvar/dr  = sigmoid(r - lo)                            [00-backprop.md#gaussian]
    """

    name = "gaussian"

    def __init__(self, var_min: float = 1e-3):
        self.var_min = float(var_min)
        self.lo = math.log(self.var_min) if self.var_min > 0 else None

    def n_out(self, D: int) -> int:
        return 2 * D

    def _logvar(self, b, r):
        if self.lo is None:
            return r
        return self.lo + b.softplus(r - self.lo)

    def loglik(self, b, x, out):
        xp = b.xp
        D = out.shape[-1] // 2
        mu, r = out[..., :D], out[..., D:]
        logvar = self._logvar(b, r)
        prec = xp.exp(-logvar)
        diff = x - mu
        ll = -0.5 * xp.sum(LOG2PI + logvar + diff * diff * prec, axis=-1)
        return ll, (diff, prec, r)

    def backward(self, b, dll, cache):
        xp = b.xp
        diff, prec, r = cache
        g = dll[..., None]
        dmu = g * diff * prec
        dlogvar = g * (0.5 * diff * diff * prec - 0.5)
        if self.lo is not None:
            dlogvar = dlogvar * b.sigmoid(r - self.lo)
        return xp.concat([dmu, dlogvar], axis=-1)

    def mean(self, b, out):
        return out[..., : out.shape[-1] // 2]


LIKELIHOODS = {"bernoulli": Bernoulli, "gaussian": Gaussian}


def make_likelihood(name: str):
    if name not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {name!r}; choose one of {', '.join(LIKELIHOODS)}")
    return LIKELIHOODS[name]()


# =========================================================================== posteriors
@dataclass
class Posterior:
    """Summary of q(z|x) = N(mu, Sigma): ``mu`` (B, J), ``var`` = diag(Sigma) (B, J),
    ``logdet`` = log det Sigma (B,)."""

    mu: object
    var: object
    logdet: object


class DiagGaussianHead:
    """Mean-field head: h = [mu, logvar] (B, 2J); z = mu + exp(logvar / 2) * eps.

    var = exp(logvar), logdet = sum_j logvar_j.            [00-backprop.md#diag-head]
    """

    name = "diag"

    def __init__(self, J: int):
        self.J = int(J)

    def n_out(self) -> int:
        return 2 * self.J

    def forward(self, b, h, eps):
        """h (B, 2J), eps (S, B, J) -> z (S, B, J), Posterior, cache."""
        xp = b.xp
        J = self.J
        mu, logvar = h[:, :J], h[:, J:]
        std = xp.exp(0.5 * logvar)
        z = mu + std * eps                                  # reparameterisation
        var = std * std
        logdet = xp.sum(logvar, axis=-1)
        return z, Posterior(mu, var, logdet), (std, var, eps)

    def backward(self, b, dz, dmu, dvar, dlogdet, cache):
        """Upstream grads w.r.t. z (S,B,J) and the Posterior fields (each may be None) -> dh."""
        xp = b.xp
        std, var, eps = cache
        dmu_t = xp.sum(dz, axis=0) if dz is not None else xp.zeros_like(std)
        dlogvar = xp.zeros_like(std)
        if dz is not None:
            dlogvar = dlogvar + 0.5 * std * xp.sum(dz * eps, axis=0)   # dz/dlogvar = std eps / 2
        if dmu is not None:
            dmu_t = dmu_t + dmu
        if dvar is not None:
            dlogvar = dlogvar + dvar * var                               # dvar/dlogvar = var
        if dlogdet is not None:
            dlogvar = dlogvar + dlogdet[:, None]                         # dlogdet/dlogvar = 1
        return xp.concat([dmu_t, dlogvar], axis=-1)


class CholeskyHead:
    """Full-covariance head (seed §2): z = mu + L eps, Sigma = L L^T.

    h = [mu (J) | d (J) | o (J(J-1)/2)] (B, 2J + J(J-1)/2):
      * mu: linear;
      * diag(L) = softplus(d) + floor  (``diag="softplus"``, default) or exp(d) (``diag="exp"``),
        strictly positive so that Sigma is positive definite and L its unique Cholesky factor;
      * strictly-lower entries of L = o, packed row by row: (1,0), (2,0), (2,1), (3,0), ...

    L is assembled by a gather (``take``) from the packed vector plus a zero pad, never by
    fancy-index assignment, so the same code runs on every array-API library; its backward pass
    is the inverse gather.  var_j = sum_k L_jk^2, logdet = 2 sum_j log L_jj.
    [02-full-covariance.md#the-backward-pass-of-the-head]
    """

    name = "cholesky"

    def __init__(self, J: int, diag: str = "softplus", floor: float = 1e-5):
        if diag not in ("softplus", "exp"):
            raise ValueError(f"diag activation must be 'softplus' or 'exp', got {diag!r}")
        self.J, self.diag, self.floor = int(J), diag, float(floor)
        J = self.J
        self.T = J * (J - 1) // 2
        # flat position j*J + k of every packed entry, and for every flat position the packed
        # index (or T, the zero pad) -- host lists, turned into device index arrays lazily.
        packed, gather = [], [self.T] * (J * J)
        for j in range(J):
            for k in range(j):
                gather[j * J + k] = len(packed)
                packed.append(j * J + k)
        self._packed_pos, self._gather = packed, gather
        self._dev = {}

    def n_out(self) -> int:
        return 2 * self.J + self.T

    def _idx(self, b):
        key = (b.name, str(b.device))
        if key not in self._dev:
            self._dev[key] = (b.asindex(self._gather), b.asindex(self._packed_pos),
                              b.eye(self.J))
        return self._dev[key]

    def build_L(self, b, h):
        """h (B, n_out) -> mu (B, J), L (B, J, J), diag (B, J), d (B, J)."""
        xp = b.xp
        J = self.J
        gather, _, eye = self._idx(b)
        B = h.shape[0]
        mu, d, o = h[:, :J], h[:, J:2 * J], h[:, 2 * J:]
        if self.diag == "softplus":
            diag = b.softplus(d) + self.floor
        else:
            diag = xp.exp(d)
        o_pad = xp.concat([o, xp.zeros((B, 1), dtype=h.dtype, device=b.device)], axis=1)
        L = xp.reshape(xp.take(o_pad, gather, axis=1), (B, J, J)) + diag[:, :, None] * eye
        return mu, L, diag, d

    def forward(self, b, h, eps):
        """h (B, n_out), eps (S, B, J) -> z (S, B, J), Posterior, cache."""
        xp = b.xp
        mu, L, diag, d = self.build_L(b, h)
        # z_j = mu_j + sum_k L_jk eps_k                      [02-full-covariance.md#sampling]
        z = mu + xp.sum(L * eps[:, :, None, :], axis=-1)
        var = xp.sum(L * L, axis=-1)                          # diag(L L^T)
        logdet = 2.0 * xp.sum(xp.log(diag), axis=-1)          # log det L L^T
        return z, Posterior(mu, var, logdet), (L, diag, d, eps)

    def backward(self, b, dz, dmu, dvar, dlogdet, cache):
        xp = b.xp
        L, diag, d, eps = cache
        J = self.J
        _, packed, eye = self._idx(b)
        B = L.shape[0]
        dmu_t = xp.zeros_like(diag)
        dL = xp.zeros_like(L)
        if dz is not None:
            dmu_t = dmu_t + xp.sum(dz, axis=0)
            # dL_jk = sum_s dz_sj eps_sk : a batched outer product (B, J, S) @ (B, S, J)
            dL = dL + xp.matmul(xp.permute_dims(dz, (1, 2, 0)), xp.permute_dims(eps, (1, 0, 2)))
        if dmu is not None:
            dmu_t = dmu_t + dmu
        if dvar is not None:
            dL = dL + 2.0 * L * dvar[:, :, None]
        ddiag = xp.sum(dL * eye, axis=-1)
        if dlogdet is not None:
            ddiag = ddiag + 2.0 * dlogdet[:, None] / diag
        if self.diag == "softplus":
            dd = ddiag * b.sigmoid(d)
        else:
            dd = ddiag * diag
        do = xp.take(xp.reshape(dL, (B, J * J)), packed, axis=1)
        return xp.concat([dmu_t, dd, do], axis=-1)


HEADS = {"diag": DiagGaussianHead, "cholesky": CholeskyHead}


def make_head(name: str, J: int, cholesky_diag: str = "softplus"):
    """The posterior head by name; ``cholesky_diag`` picks the Cholesky diagonal's activation."""
    if name not in HEADS:
        raise ValueError(f"unknown posterior {name!r}; choose one of {', '.join(HEADS)}")
    return CholeskyHead(J, diag=cholesky_diag) if name == "cholesky" else HEADS[name](J)


# =========================================================================== closed forms
def kl_std_normal(b, post: Posterior):
    """KL(N(mu, Sigma) || N(0, I)) per example (B,) = 1/2 (tr Sigma + ||mu||^2 - J - log det).
    Gradients: d/dmu = mu, d/dvar = 1/2, d/dlogdet = -1/2.   [00-backprop.md#kl]"""
    xp = b.xp
    J = post.mu.shape[-1]
    return 0.5 * (xp.sum(post.var, axis=-1) + xp.sum(post.mu * post.mu, axis=-1) - J - post.logdet)


def kl_std_normal_backward(b, dkl, post: Posterior):
    """dkl (B,) -> (dmu, dvar, dlogdet)."""
    g = dkl[:, None]
    return g * post.mu, 0.5 * g * b.xp.ones_like(post.var), -0.5 * dkl


def log_q(b, post: Posterior, eps):
    """log q(z|x) at z = mu + L eps: -1/2 (J log 2pi + logdet + ||eps||^2), (S, B)."""
    xp = b.xp
    J = eps.shape[-1]
    return -0.5 * (J * LOG2PI + post.logdet + xp.sum(eps * eps, axis=-1))


def log_std_normal(b, z):
    """log N(z | 0, I) summed over the last axis."""
    xp = b.xp
    return -0.5 * xp.sum(LOG2PI + z * z, axis=-1)


# =========================================================================== priors
class StandardNormalPrior:
    """p(z) = N(0, I).  Its ELBO term is the closed form  -KL(q(z|x) || p(z))  per example.

    Every prior exposes the same four methods, so a model swaps priors without new code:
      init(b, rng) -> params dict        terms(b, params, z, post) -> (reg (B,), cache)
      backward(b, dreg, cache) -> (dz, dmu, dvar, dlogdet, grads)
      log_prob(b, params, z) -> (S, B)   (used by the importance-weighted bound)
    ``reg`` is E_q[log p(z) - log q(z|x)], the part of the ELBO that is not reconstruction.
    """

    name = "normal"

    def init(self, b, rng) -> dict:
        return {}

    def terms(self, b, params, z, post):
        return -kl_std_normal(b, post), post

    def backward(self, b, dreg, cache):
        dmu, dvar, dlogdet = kl_std_normal_backward(b, -dreg, cache)
        return None, dmu, dvar, dlogdet, {}

    def log_prob(self, b, params, z):
        return log_std_normal(b, z)


class MixturePrior:
    """Gaussian-mixture prior of seed §3: c ~ Cat(pi), z | c ~ N(mu_c, diag(var_c)).

    Parameters (flat dict keys):
      ``prior.pi_logits`` (K,)   pi = softmax(pi_logits)     -- pi stays a probability vector
      ``prior.mu_c``      (K, J)
      ``prior.logvar_c``  (K, J) raw r; log var_c = lo + softplus(r - lo), lo = log(var_min):
                                  a smooth floor that keeps components from collapsing to a point.

    ELBO term (seed eq. 3.5, for either head through (mu, var = diag Sigma, logdet)):
      reg = -1/2 sum_c gamma_c sum_j [log var_cj + var_j / var_cj + (mu_j - mu_cj)^2 / var_cj]
            + sum_c gamma_c log(pi_c / gamma_c) + 1/2 (J + logdet)
    with q(c|x) = gamma = 1/S sum_s p(c | z_s), p(c|z) = softmax_c(log pi_c + log N(z | mu_c, var_c))
    computed by log-sum-exp.  Gradients flow through gamma (into z, hence the encoder, and into
    the prior parameters), as in the reference implementations.   [03-gmvae.md#putting-it-together]
    """

    name = "mixture"

    def __init__(self, K: int, J: int, var_min: float = 1e-3, gamma: str = "sample"):
        if K < 1:
            raise ValueError(f"the mixture needs at least one component, got K={K}")
        if gamma not in ("sample", "optimal"):
            raise ValueError(f"gamma must be 'sample' or 'optimal', got {gamma!r}")
        self.K, self.J, self.var_min = int(K), int(J), float(var_min)
        self.lo = math.log(self.var_min)
        # "sample": q(c|x) = 1/S sum_s p(c|z_s), the seed's §3.3 estimate (default).
        # "optimal": q(c|x) = softmax_c(log pi_c - T_c / 2), the maximiser of the ELBO over
        #  q(c|x) for fixed q(z|x) [03-gmvae.md#the-coordinate-ascent-optimum]; no sampling.
        self.gamma_mode = gamma

    def init(self, b, rng) -> dict:
        return {"prior.pi_logits": b.zeros((self.K,)),
                "prior.mu_c": rng.normal((self.K, self.J)),
                "prior.logvar_c": b.zeros((self.K, self.J))}

    def logvar_c(self, b, params):
        return self.lo + b.softplus(params["prior.logvar_c"] - self.lo)

    def raw_from_logvar(self, b, logvar):
        """Inverse of the floor: the raw parameter that gives ``logvar`` (must exceed lo)."""
        xp = b.xp
        t = logvar - self.lo                       # = softplus(r - lo) > 0
        return self.lo + t + xp.log(-xp.expm1(-t))  # softplus^{-1}(t) = t + log(1 - e^-t)

    def log_pi(self, b, params):
        return b.log_softmax(params["prior.pi_logits"])

    def _log_joint(self, b, params, z):
        """a[s, b, c] = log pi_c + log N(z_sb | mu_c, var_c)  (S, B, K), and pieces for backward."""
        xp = b.xp
        mu_c = params["prior.mu_c"]
        logvar_c = self.logvar_c(b, params)
        prec_c = xp.exp(-logvar_c)                                     # (K, J)
        diff = z[:, :, None, :] - mu_c                                 # (S, B, K, J)
        logN = -0.5 * xp.sum(LOG2PI + logvar_c + diff * diff * prec_c, axis=-1)   # (S, B, K)
        return self.log_pi(b, params)[None, None, :] + logN, diff, prec_c, logvar_c

    def log_prob(self, b, params, z):
        """log p(z) = logsumexp_c [log pi_c + log N(z | mu_c, var_c)]  (S, B)."""
        a, *_ = self._log_joint(b, params, z)
        return b.logsumexp(a, axis=-1)

    def responsibilities(self, b, params, z):
        """gamma = p(c | z) for z (S, B, J) -> (S, B, K); rows sum to 1."""
        a, *_ = self._log_joint(b, params, z)
        return b.softmax(a, axis=-1)

    def terms(self, b, params, z, post, q_c=None):
        """Seed eq. 3.5 per example (B,) and the cache for :meth:`backward`.

        ``q_c`` (B, K), optional: a *given* q(c|x) -- rows must be on the simplex (entries >= 0,
        summing to 1; checked by ``AnchoredGMVAE.pack``, not here, to keep the step free of host
        syncs), e.g. the one-hot partition of the clustering recipe -- used in place of gamma.
        The ELBO of seed §3.2 is a lower bound for any q(c|x), so this is still an ELBO; q_c is a
        constant (no gradient flows into it).  [03-gmvae.md#a-given-qcx-the-anchored-warm-up]"""
        xp = b.xp
        S = z.shape[0]
        if q_c is not None:
            return self._terms_given(b, params, post, q_c)
        a, diff, prec_c, logvar_c = self._log_joint(b, params, z)
        logp = b.log_softmax(a, axis=-1)                               # log p(c | z_s)  (S, B, K)
        p = xp.exp(logp)
        # gamma = 1/S sum_s p(c|z_s); log gamma by log-sum-exp over samples (finite always)
        # [03-gmvae.md#stable-log-sum-exp-responsibilities]
        log_pi = self.log_pi(b, params)                                # (K,)
        T, dmu, _ = self._T(b, params, post, logvar_c, prec_c)         # (B, K), (B, K, J)
        if self.gamma_mode == "sample":
            log_gamma = b.logsumexp(logp, axis=0) - math.log(S)       # (B, K)
        else:
            log_gamma = b.log_softmax(log_pi - 0.5 * T, axis=-1)
        gamma = xp.exp(log_gamma)
        J = post.mu.shape[-1]
        reg = (-0.5 * xp.sum(gamma * T, axis=-1)
               + xp.sum(gamma * (log_pi - log_gamma), axis=-1)
               + 0.5 * (J + post.logdet))
        cache = (S, p, gamma, log_gamma, log_pi, T, dmu, diff, prec_c, post, params)
        return reg, cache

    def _T(self, b, params, post, logvar_c=None, prec_c=None):
        """T_bc = sum_j log var_cj + var_bj / var_cj + (mu_bj - mu_cj)^2 / var_cj  (B, K), and
        pieces for backward (``logvar_c``, ``prec_c`` reused when the caller has them).
        [03-gmvae.md#the-gaussian-cross-entropy-lemma]"""
        xp = b.xp
        if logvar_c is None:
            logvar_c = self.logvar_c(b, params)
            prec_c = xp.exp(-logvar_c)
        dmu = post.mu[:, None, :] - params["prior.mu_c"]               # (B, K, J)
        T = xp.sum(logvar_c + (post.var[:, None, :] + dmu * dmu) * prec_c, axis=-1)
        return T, dmu, prec_c

    def _terms_given(self, b, params, post, q_c):
        xp = b.xp
        if tuple(q_c.shape) != (post.mu.shape[0], self.K):
            raise ValueError(f"q_c must have shape (batch, K) = ({post.mu.shape[0]}, {self.K}), "
                             f"got {tuple(q_c.shape)}")
        T, dmu, prec_c = self._T(b, params, post)
        log_pi = self.log_pi(b, params)
        # sum_c q_c log(pi_c / q_c), with 0 log 0 = 0 (a one-hot q is allowed)
        qlogq = q_c * xp.log(xp.where(q_c > 0, q_c, xp.ones_like(q_c)))
        J = post.mu.shape[-1]
        reg = (-0.5 * xp.sum(q_c * T, axis=-1) + xp.sum(q_c * log_pi - qlogq, axis=-1)
               + 0.5 * (J + post.logdet))
        return reg, ("given", q_c, log_pi, dmu, prec_c, post, params)

    def backward(self, b, dreg, cache):
        """dreg (B,) -> (dz, dmu, dvar, dlogdet, grads of the prior parameters).
        [03-gmvae.md#gradients-of-the-mixture-terms]"""
        xp = b.xp
        if cache[0] == "given":
            return self._backward_given(b, dreg, cache)
        S, p, gamma, log_gamma, log_pi, T, dmu, diff, prec_c, post, params = cache
        g = dreg[:, None]                                              # (B, 1)
        # direct partial derivatives of reg
        dgamma = g * (-0.5 * T + log_pi - log_gamma - 1.0)             # (B, K)
        dT = -0.5 * g * gamma                                          # (B, K)
        dlog_pi = xp.sum(g * gamma, axis=0)                            # (K,)
        dlogdet = 0.5 * dreg
        if self.gamma_mode == "optimal":
            # gamma = softmax(log pi - T / 2): softmax backward into log pi and T.  (At this
            # optimum dgamma is the same for every c, so this is ~0: the envelope theorem.)
            du = gamma * (dgamma - xp.sum(gamma * dgamma, axis=-1, keepdims=True))
            dlog_pi = dlog_pi + xp.sum(du, axis=0)
            dT = dT - 0.5 * du
        dmu_post, dvar_post, dmu_c, dlogvar_c = self._through_T(b, dT, dmu, prec_c, post)
        if self.gamma_mode == "optimal":
            dz = None                                                  # gamma does not see z
        else:
            # gamma = 1/S sum_s softmax(a_s): softmax backward per sample
            dp = dgamma[None, :, :] / S                                # (S, B, K)
            da = p * (dp - xp.sum(p * dp, axis=-1, keepdims=True))     # (S, B, K)
            dlog_pi = dlog_pi + xp.sum(da, axis=(0, 1))
            # a = log pi + log N(z | mu_c, var_c)
            u = da[..., None] * diff * prec_c                          # (S, B, K, J)
            dz = -xp.sum(u, axis=2)                                    # (S, B, J)
            dmu_c = dmu_c + xp.sum(u, axis=(0, 1))
            dlogvar_c = dlogvar_c + xp.sum(da[..., None] * (0.5 * diff * diff * prec_c - 0.5),
                                           axis=(0, 1))
        return (dz, dmu_post, dvar_post, dlogdet,
                self._param_grads(b, params, log_pi, dlog_pi, dmu_c, dlogvar_c))

    def _through_T(self, b, dT, dmu, prec_c, post):
        """dT (B, K) -> gradients of the posterior mean and variance (B, J) and of mu_c and
        log var_c (K, J).  [03-gmvae.md#through-t]"""
        xp = b.xp
        w = dT[:, :, None] * prec_c                                    # (B, K, J)
        dmu_post = xp.sum(2.0 * w * dmu, axis=1)                       # (B, J)
        dvar_post = xp.sum(w, axis=1)                                  # (B, J)
        dmu_c = -xp.sum(2.0 * w * dmu, axis=0)                         # (K, J)
        dlogvar_c = xp.sum(dT[:, :, None] - w * (post.var[:, None, :] + dmu * dmu), axis=0)
        return dmu_post, dvar_post, dmu_c, dlogvar_c

    def _param_grads(self, b, params, log_pi, dlog_pi, dmu_c, dlogvar_c):
        """Through the parameterisations: log_softmax of the logits, the smooth floor of the
        log-variances."""
        xp = b.xp
        pi = xp.exp(log_pi)
        dlogits = dlog_pi - pi * xp.sum(dlog_pi)
        draw = dlogvar_c * b.sigmoid(params["prior.logvar_c"] - self.lo)
        return {"prior.pi_logits": dlogits, "prior.mu_c": dmu_c, "prior.logvar_c": draw}

    def _backward_given(self, b, dreg, cache):
        """Backward of eq. 3.5 with a given (constant) q(c|x): only the T and log pi terms carry
        gradient.  [03-gmvae.md#a-given-qcx-the-anchored-warm-up]"""
        xp = b.xp
        _, q_c, log_pi, dmu, prec_c, post, params = cache
        g = dreg[:, None]
        dT = -0.5 * g * q_c                                            # (B, K)
        dlog_pi = xp.sum(g * q_c, axis=0)
        dmu_post, dvar_post, dmu_c, dlogvar_c = self._through_T(b, dT, dmu, prec_c, post)
        return (None, dmu_post, dvar_post, 0.5 * dreg,
                self._param_grads(b, params, log_pi, dlog_pi, dmu_c, dlogvar_c))
