"""Floor 3: posterior heads q(z|x), each a forward/backward pair on the encoder output ``h``.

    :class:`DiagGaussianHead` (mu, log sigma^2)          [00-backprop.md#diag-head]
    :class:`CholeskyHead`     (mu, diag of L, lower of L) [02-full-covariance.md]

Both heads return the same summary of q, :class:`Posterior` ``(mu, var, logdet)`` with
``var = diag(Sigma)`` and ``logdet = log det Sigma``.  That summary is all the closed-form
terms of every model need:

* KL(q || N(0, I)) = 1/2 (sum var + ||mu||^2 - J - logdet)    (normal.py ``kl_std_normal``)
* E_q[log N(z | m, s^2 I)] (the assignment's lemma 3.4) uses only mu and var  (mixture.py ``MixturePrior._T``)
* log q(z|x) at z = mu + L eps is -1/2 (J log 2pi + logdet + ||eps||^2), for both heads
  (:func:`log_q`).

Shapes: B batch, S Monte Carlo samples, J latent size.  ``eps`` is (S, B, J) and is always an
argument, so every loss is a deterministic function of (params, x, noise).
``forward(b, h, eps) -> (z, Posterior, cache)``;
``backward(b, dz, dmu, dvar, dlogdet, cache) -> dh``, any upstream gradient may be None.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

LOG2PI = math.log(2.0 * math.pi)


@dataclass
class Posterior:
    """Summary of q(z|x) = N(mu, Sigma): ``mu`` (B, J), ``var`` = diag(Sigma) (B, J),
    ``logdet`` = log det Sigma (B,)."""

    mu: object
    var: object
    logdet: object


def log_q(b, post: Posterior, eps):
    """log q(z|x) at z = mu + L eps: -1/2 (J log 2pi + logdet + ||eps||^2), (S, B)."""
    xp = b.xp
    J = eps.shape[-1]
    # (F.6): (z - mu)^T Sigma^-1 (z - mu) = ||eps||^2, no solve
    return -0.5 * (J * LOG2PI + post.logdet + xp.sum(eps * eps, axis=-1))


# --------------------------------------------------------------------------- mean-field
class DiagCache(NamedTuple):
    std: object    # exp(logvar / 2) (B, J)
    var: object    # exp(logvar) (B, J)
    eps: object    # (S, B, J)


class DiagGaussianHead:
    """Mean-field head: h = [mu, logvar] (B, 2J); z = mu + exp(logvar / 2) * eps.

    var = exp(logvar), logdet = sum_j logvar_j.            [00-backprop.md#diag-head]
    The Cholesky head with L = diag(exp(logvar / 2)) is the same head (F.9).
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
        z = mu + std * eps                                  # (B.9.1); q(z|x) of (M.2)
        var = std * std
        logdet = xp.sum(logvar, axis=-1)
        return z, Posterior(mu, var, logdet), DiagCache(std, var, eps)

    def backward(self, b, dz, dmu, dvar, dlogdet, cache: DiagCache):
        """Upstream grads w.r.t. z (S,B,J) and the Posterior fields (each may be None) -> dh."""
        xp = b.xp
        std, var, eps = cache
        # (B.9.2), used by the mixture prior as (M.G7)
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


# --------------------------------------------------------------------------- full covariance
class CholeskyCache(NamedTuple):
    L: object      # (B, J, J), lower triangular
    diag: object   # diag(L) (B, J)
    d: object      # raw diagonal outputs (B, J)
    eps: object    # (S, B, J)


class CholeskyHead:
    """Full-covariance head (the assignment's §2): z = mu + L eps, Sigma = L L^T.

    h = [mu (J) | d (J) | o (J(J-1)/2)] (B, 2J + J(J-1)/2):
      * mu: linear;
      * diag(L) = softplus(d) + floor  (``diag="softplus"``, default) or exp(d) (``diag="exp"``),
        strictly positive so that Sigma is positive definite and L its unique Cholesky factor;
      * strictly-lower entries of L = o, packed row by row: (1,0), (2,0), (2,1), (3,0), ...

    L is assembled by a gather (``take``) from the packed vector plus a zero pad, never by
    fancy-index assignment, so the same code runs on every array-API library; its backward pass
    is the inverse gather.  var_j = sum_k L_jk^2, logdet = 2 sum_j log L_jj.
    [02-full-covariance.md#the-backward-pass-of-the-head]
    With o = 0 and ``diag="exp"`` it is the mean-field head with d = logvar / 2 (F.9).
    """

    name = "cholesky"

    def __init__(self, J: int, diag: str = "softplus", floor: float = 1e-5):
        if diag not in ("softplus", "exp"):
            raise ValueError(f"diag activation must be 'softplus' or 'exp', got {diag!r}")
        self.J, self.diag, self.floor = int(J), diag, float(floor)
        J = self.J
        self.T = J * (J - 1) // 2          # number of strictly-lower entries
        # flat position j*J + k of every packed entry, and for every flat position the packed
        # index (or T, the zero pad) -- host lists, turned into device index arrays lazily.
        # (F.3): entry (j, k), k < j, is packed at t(j, k) = j (j - 1) / 2 + k, row by row.
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
        mu, d, o = h[:, :J], h[:, J:2 * J], h[:, 2 * J:]   # (F.2): mu and o linear
        # a strictly positive diagonal [02-full-covariance.md#positive-diagonal], by a positive,
        # smooth, non-saturating map [02-full-covariance.md#output-activations]
        if self.diag == "softplus":
            diag = b.softplus(d) + self.floor
        else:
            diag = xp.exp(d)
        # (F.4): L = reshape(take([o, 0], g)) + diag(l), a gather, never an assignment
        o_pad = xp.concat([o, xp.zeros((B, 1), dtype=h.dtype, device=b.device)], axis=1)
        L = xp.reshape(xp.take(o_pad, gather, axis=1), (B, J, J)) + diag[:, :, None] * eye
        return mu, L, diag, d

    def forward(self, b, h, eps):
        """h (B, n_out), eps (S, B, J) -> z (S, B, J), Posterior, cache."""
        xp = b.xp
        mu, L, diag, d = self.build_L(b, h)
        # (F.1): z_j = mu_j + sum_k L_jk eps_k, so z ~ N(mu, L L^T) (M.2)
        z = mu + xp.sum(L * eps[:, :, None, :], axis=-1)
        # (F.5): the summary; var = diag(L L^T) is all a diagonal prior reads (M.10)
        var = xp.sum(L * L, axis=-1)                          # diag(L L^T), row sums of squares
        logdet = 2.0 * xp.sum(xp.log(diag), axis=-1)          # log det L L^T, the entropy (F.7)
        return z, Posterior(mu, var, logdet), CholeskyCache(L, diag, d, eps)

    def backward(self, b, dz, dmu, dvar, dlogdet, cache: CholeskyCache):
        """Upstream grads w.r.t. z (S,B,J) and the Posterior fields (each may be None) -> dh."""
        xp = b.xp
        L, diag, d, eps = cache
        J = self.J
        _, packed, eye = self._idx(b)
        B = L.shape[0]
        # [02-full-covariance.md#the-backward-pass-of-the-head], the head's part of (M.G7)
        dmu_t = xp.zeros_like(diag)
        dL = xp.zeros_like(L)
        if dz is not None:
            dmu_t = dmu_t + xp.sum(dz, axis=0)                                  # (F.10)
            # (F.11): dL_jk = sum_s dz_sj eps_sk, a batched outer product (B, J, S) @ (B, S, J)
            dL = dL + xp.matmul(xp.permute_dims(dz, (1, 2, 0)), xp.permute_dims(eps, (1, 0, 2)))
        if dmu is not None:
            dmu_t = dmu_t + dmu
        if dvar is not None:
            dL = dL + 2.0 * L * dvar[:, :, None]                                # (F.12)
        ddiag = xp.sum(dL * eye, axis=-1)
        if dlogdet is not None:
            ddiag = ddiag + 2.0 * dlogdet[:, None] / diag                       # (F.13)
        if self.diag == "softplus":                                             # (F.14)
            dd = ddiag * b.sigmoid(d)
        else:
            dd = ddiag * diag
        do = xp.take(xp.reshape(dL, (B, J * J)), packed, axis=1)                # (F.15)
        return xp.concat([dmu_t, dd, do], axis=-1)


HEADS = {"diag": DiagGaussianHead, "cholesky": CholeskyHead}


def make_head(name: str, J: int, cholesky_diag: str = "softplus"):
    """The posterior head by name; ``cholesky_diag`` picks the Cholesky diagonal's activation."""
    if name not in HEADS:
        raise ValueError(f"unknown posterior {name!r}; choose one of {', '.join(HEADS)}")
    return CholeskyHead(J, diag=cholesky_diag) if name == "cholesky" else HEADS[name](J)
