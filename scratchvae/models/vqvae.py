"""The vector-quantised VAE (van den Oord, Vinyals & Kavukcuoglu, 2017), written out by hand.

    x (B, D) --encoder MLP--> h (B, M*J) --reshape--> z_e (B*M, J)
             --nearest code--> k (B*M,)    z_q = z_e + sg[e_k - z_e]      (B*M, J)
             --reshape--> (B, M*J) --decoder MLP--> out --likelihood--> log p(x|z_q)   (B,)

Loss (``derivations/04-vqvae.md`` (V.7)), per batch:

    L = recon + codebook + beta * commit
    recon    = -(1/B) sum_b log p(x_b | z_q,b)                 (sum over the D data dims)
    codebook = (1/B) sum_b sum_{m,j} (sg[z_e] - e_k)^2        (sum over M vectors, J dims)
    commit   = (1/B) sum_b sum_{m,j} (z_e - sg[e_k])^2

Normalisation (once, as for every model in the package): mean over the batch, sums over data
and latent dimensions, nats.  With ``codebook_update="ema"`` the codebook term is *not* part of
the objective (its value is still reported in ``aux["codebook"]``): the codebook moves by the
exponential moving averages of :func:`scratchvae.quantize.ema_update` in :meth:`VQVAE.post_step`,
and ``codebook.E`` gets no gradient, so Adam never touches it.

Non-gradient state lives in the params dict (so checkpoints save it; it has no gradient, so the
optimiser leaves it alone): ``codebook.ema_count`` (K,), ``codebook.ema_sum`` (K, J) and
``codebook.unused`` (K,), the number of consecutive training steps in which each code was chosen
by no row of the batch.

The discrete model: a uniform prior over the K^M code combinations and a deterministic one-hot
posterior, so KL(q || p) = M log K, a constant left out of the loss and added back in
``evaluate``'s ``nll_bound``.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .. import quantize as Q
from ..distributions import make_likelihood
from ..nn import MLP

UPDATES = ("ema", "grad")


@dataclass
class VQVAEConfig:
    D: int
    latent_dim: int = 8            # J: size of each latent vector (and of each code)
    codes_per_input: int = 4       # M: latent vectors per input
    codebook_size: int = 64        # K: codes in the codebook
    hidden: tuple = (256, 256)
    act: str = "relu"
    likelihood: str = "bernoulli"
    beta: float = 0.25             # weight of the commitment term
    codebook_update: str = "ema"   # "ema" (moving averages) or "grad" (the codebook loss)
    decay: float = 0.99            # EMA decay gamma
    ema_eps: float = 1e-5          # Laplace smoothing of the EMA counts
    dead_after: int = 100          # a code chosen in no batch for this many steps is dead
    restart: bool = True           # re-seed dead codes at recent encoder outputs
    restart_every: int = 10        # check for dead codes every this many steps
    kmeans_init: bool = False      # k-means codebook from the first batch's encoder outputs
    kmeans_iters: int = 10

    def to_dict(self):
        d = asdict(self)
        d["hidden"] = list(self.hidden)
        return d


class VQVAE:
    """Encoder, vector quantiser, decoder and likelihood (deterministic: no noise)."""

    kind = "vqvae"

    def __init__(self, cfg: VQVAEConfig, backend):
        if min(cfg.D, cfg.latent_dim, cfg.codes_per_input, cfg.codebook_size) < 1:
            raise ValueError("D, latent_dim, codes_per_input and codebook_size must be positive")
        if cfg.codebook_update not in UPDATES:
            raise ValueError(f"codebook_update must be 'ema' or 'grad', got {cfg.codebook_update!r}")
        if not 0.0 <= cfg.decay < 1.0:
            raise ValueError(f"decay must be in [0, 1), got {cfg.decay}")
        if cfg.beta < 0 or cfg.ema_eps < 0:
            raise ValueError("beta and ema_eps must be non-negative")
        if cfg.dead_after < 1 or cfg.restart_every < 1:
            raise ValueError("dead_after and restart_every must be positive")
        self.cfg, self.b = cfg, backend
        self.J, self.M, self.K = cfg.latent_dim, cfg.codes_per_input, cfg.codebook_size
        self.lik = make_likelihood(cfg.likelihood)
        self.encoder = MLP("encoder", (cfg.D, *cfg.hidden, self.M * self.J), cfg.act)
        self.decoder = MLP("decoder", (self.M * self.J, *reversed(tuple(cfg.hidden)),
                                       self.lik.n_out(cfg.D)), cfg.act)
        # weight of the codebook term in the objective: 0 when the EMA moves the codebook
        self.w_codebook = 1.0 if cfg.codebook_update == "grad" else 0.0

    @property
    def bits_per_dim(self) -> float:
        """Code rate M log2 K / D: bits of the discrete code per data dimension."""
        return self.M * math.log2(self.K) / self.cfg.D

    # ------------------------------------------------------------------ parameters and noise
    def init_params(self, rng) -> dict:
        """Encoder and decoder MLPs; codebook E ~ U(-1/K, 1/K) (K, J); zero EMA state."""
        b = self.b
        p = self.encoder.init(b, rng)
        p.update(self.decoder.init(b, rng))
        K, J = self.K, self.J
        p["codebook.E"] = (2.0 * rng.uniform((K, J)) - 1.0) / K
        p["codebook.ema_count"] = b.zeros((K,))
        p["codebook.ema_sum"] = b.zeros((K, J))
        p["codebook.unused"] = b.zeros((K,))
        return p

    def sample_noise(self, rng, B: int, S: int | None = None) -> dict:
        """A deterministic model: no noise (the signature matches the other models)."""
        return {}

    # ------------------------------------------------------------------ forward / backward
    def _encode(self, params, x):
        h, enc_c = self.encoder.forward(self.b, params, x)                 # (B, M*J)
        return self.b.xp.reshape(h, (x.shape[0] * self.M, self.J)), enc_c  # (B*M, J)

    def _forward(self, params, x, frozen=None):
        """The loss and everything its backward pass needs.

        ``frozen`` (from :meth:`freeze`) turns the loss into the straight-through surrogate: the
        assignment k and the offset sg[e_k - z_e] are fixed, and the stop-gradient operands
        (z_e in the codebook term, e_k in the commitment term) are constants."""
        b, xp = self.b, self.b.xp
        B = x.shape[0]
        E = params["codebook.E"]
        z_e, enc_c = self._encode(params, x)                               # (B*M, J)
        if frozen is None:
            z_q, (k, e_k) = Q.quantize_forward(b, z_e, E)                  # (V.1), (V.2)
            z_e_sg, e_k_sg = z_e, e_k
        else:
            k = frozen["k"]
            z_q, (_, e_k) = Q.quantize_forward(b, z_e, E, k=k, offset=frozen["offset"])
            z_e_sg, e_k_sg = frozen["z_e"], xp.take(frozen["E"], k, axis=0)
        out, dec_c = self.decoder.forward(b, params, xp.reshape(z_q, (B, self.M * self.J)))
        ll, lik_c = self.lik.loglik(b, x, xp.reshape(out, (1, B, out.shape[-1])))  # (1, B)
        recon = -xp.mean(ll)
        # (V.4): the codebook term sees sg[z_e], the commitment term sg[e_k]
        codebook, _, cb_c = Q.vq_losses(b, z_e_sg, e_k, B)
        _, commit, cm_c = Q.vq_losses(b, z_e, e_k_sg, B)
        # (V.7)
        loss = recon + self.w_codebook * codebook + self.cfg.beta * commit
        cache = (B, enc_c, dec_c, lik_c, cb_c, cm_c)
        return loss, recon, codebook, commit, z_e, k, cache

    def loss(self, params, x, noise=None):
        """The VQ-VAE objective (V.7), mean over the batch (0-d device array).
        [04-vqvae.md#eq-v7]"""
        return self._forward(params, x)[0]

    def freeze(self, params, x) -> dict:
        """The constants of the straight-through surrogate at ``params``: k, sg[e_k - z_e],
        z_e and E -- frozen, the surrogate's exact derivative is (V.3)."""
        xp = self.b.xp
        z_e, _ = self._encode(params, x)
        E = params["codebook.E"]
        k = Q.nearest(self.b, z_e, E)
        return {"k": k, "offset": xp.take(E, k, axis=0) - z_e, "z_e": z_e, "E": E}

    def surrogate_loss(self, params, x, frozen):
        """The surrogate whose exact gradient at the frozen point is what
        :meth:`loss_and_grads` returns (the straight-through estimator, (V.3))."""
        return self._forward(params, x, frozen)[0]

    def surrogate_fn(self, params, x):
        """``f(p)`` for :func:`scratchvae.gradcheck.check_grads`, frozen at ``params``: the
        surrogate of (V.2)-(V.3)."""
        frozen = self.freeze(params, x)
        return lambda p: self.surrogate_loss(p, x, frozen)

    def loss_and_grads(self, params, x, noise=None):
        """-> loss (0-d), grads {key: array}, aux {name: 0-d array, "_k", "_z_e", "_counts"}.

        The hand backward pass of [04-vqvae.md#the-hand-backward-pass], of the objective (V.7)."""
        b, xp = self.b, self.b.xp
        loss, recon, codebook, commit, z_e, k, cache = self._forward(params, x)
        B, enc_c, dec_c, lik_c, cb_c, cm_c = cache
        # recon = -1/B sum_b ll_b
        dll = xp.full((1, B), -1.0 / B, dtype=b.dtype, device=b.device)
        dout = self.lik.backward(b, dll, lik_c)                            # (1, B, Dout)
        dz_q, grads = self.decoder.backward(b, xp.reshape(dout, (B, dout.shape[-1])), dec_c)
        dz_e = Q.quantize_backward(b, xp.reshape(dz_q, (B * self.M, self.J)), None)  # (V.3)
        dz_commit, _ = Q.vq_losses_backward(b, 0.0, self.cfg.beta, cm_c)  # (V.5) commitment
        dz_e = dz_e + dz_commit
        onehot = b.one_hot(k, self.K)                                      # (B*M, K)
        if self.cfg.codebook_update == "grad":
            _, de_k = Q.vq_losses_backward(b, self.w_codebook, 0.0, cb_c)  # (V.5) codebook
            grads["codebook.E"] = Q.codebook_grad(b, onehot, de_k)         # (V.6)
        _, genc = self.encoder.backward(b, xp.reshape(dz_e, (B, self.M * self.J)), enc_c,
                                        need_dx=False)
        grads.update(genc)
        counts = xp.sum(onehot, axis=0)
        ppl, usage, _ = Q.usage_stats(b, counts)
        aux = {"recon": recon, "codebook": codebook, "commit": commit,
               "perplexity": ppl, "usage": usage, "_k": k, "_z_e": z_e, "_counts": counts}
        return loss, grads, aux

    # ------------------------------------------------------------------ non-gradient state
    def post_step(self, params, aux, step: int):
        """After the optimiser step: k-means initialisation (step 0, optional), the EMA codebook
        update, the usage counters and dead-code restarts.  In place on ``params``; device
        arrays only (no host synchronisation).  [04-vqvae.md#dead-codes]"""
        b, xp, cfg = self.b, self.b.xp, self.cfg
        k, z, n_k = aux["_k"], aux["_z_e"], aux.get("_counts")
        if cfg.kmeans_init and step == 0:
            u = b.rng("vq-kmeans-init").uniform((z.shape[0],))
            params["codebook.E"] = Q.kmeans_init(b, z, self.K, u, cfg.kmeans_iters)
            params["codebook.ema_count"] = xp.zeros_like(params["codebook.ema_count"])
            params["codebook.ema_sum"] = xp.zeros_like(params["codebook.ema_sum"])
            k = Q.nearest(b, z, params["codebook.E"])
            n_k = None                                   # the assignments changed
        if cfg.codebook_update == "ema":                                    # (V.8)
            state = Q.ema_update(b, {"E": params["codebook.E"],
                                     "count": params["codebook.ema_count"],
                                     "sum": params["codebook.ema_sum"]},
                                 z, k, cfg.decay, cfg.ema_eps)
            params["codebook.E"] = state["E"]
            params["codebook.ema_count"] = state["count"]
            params["codebook.ema_sum"] = state["sum"]
        if n_k is None:
            n_k = Q.code_counts(b, k, self.K)
        unused = params["codebook.unused"]
        unused = xp.where(n_k > 0, xp.zeros_like(unused), unused + 1.0)
        if cfg.restart and (step + 1) % cfg.restart_every == 0:
            u = b.rng("vq-restart", step).uniform((z.shape[0],))
            E, dead = Q.restart_dead_codes(b, params["codebook.E"], unused, z, u, cfg.dead_after)
            params["codebook.E"] = E
            # a restarted code starts afresh, as at initialisation: no EMA history, not unused
            params["codebook.ema_count"] = xp.where(dead, 0.0, params["codebook.ema_count"])
            params["codebook.ema_sum"] = xp.where(dead[:, None], 0.0, params["codebook.ema_sum"])
            unused = xp.where(dead, 0.0, unused)
        params["codebook.unused"] = unused

    # ------------------------------------------------------------------ inference helpers
    def encode(self, params, x):
        """x (B, D) -> k (B, M) codes, z_e (B, M, J) encoder outputs."""
        xp = self.b.xp
        z_e, _ = self._encode(params, x)
        k = Q.nearest(self.b, z_e, params["codebook.E"])
        B = x.shape[0]
        return xp.reshape(k, (B, self.M)), xp.reshape(z_e, (B, self.M, self.J))

    def codes_to_z(self, params, k):
        """k (B, M) int -> z_q (B, M*J), the decoder input."""
        xp = self.b.xp
        B = k.shape[0]
        e = xp.take(params["codebook.E"], xp.reshape(k, (-1,)), axis=0)
        return xp.reshape(e, (B, self.M * self.J))

    def decode_mean(self, params, z_q_flat):
        """z_q (N, M*J) -> E[x | z_q] (N, D)."""
        out, _ = self.decoder.forward(self.b, params, z_q_flat)
        return self.lik.mean(self.b, out)

    def reconstruct(self, params, x):
        k, _ = self.encode(params, x)
        return self.decode_mean(params, self.codes_to_z(params, k))

    def evaluate(self, params, X, batch: int = 512) -> dict:
        """Metrics on device data X (N, D); one host transfer at the end.

        recon        mean over examples of -log p(x | z_q), nats
        nll_bound    recon + M ln K  >= -log p(x) under the uniform prior (KL = M log K, (V.0))
        recon_mse    mean squared error of E[x | z_q] per data dimension
        quant_error  mean over examples of sum_{m,j} (z_e - e_k)^2
        perplexity   exp(entropy) of the code frequencies over the whole of X      (V.10)
        usage        fraction of the K codes chosen at least once in X
        dead_codes   number of codes chosen by no vector of X
        bits_per_dim code rate M log2 K / D
        [04-vqvae.md#usage-metrics]"""
        b, xp = self.b, self.b.xp
        N = X.shape[0]
        counts = b.zeros((self.K,))
        nll = b.zeros(())
        se = b.zeros(())
        qe = b.zeros(())
        for i in range(0, N, batch):
            xb = X[i:min(i + batch, N), ...]      # in-bounds stops (array API)
            B = xb.shape[0]
            z_e, _ = self._encode(params, xb)
            z_q, (k, e_k) = Q.quantize_forward(b, z_e, params["codebook.E"])
            out, _ = self.decoder.forward(b, params, xp.reshape(z_q, (B, self.M * self.J)))
            ll, _ = self.lik.loglik(b, xb, out)
            mean = self.lik.mean(b, out)
            counts = counts + Q.code_counts(b, k, self.K)
            nll = nll - xp.sum(ll)
            se = se + xp.sum((mean - xb) ** 2)
            qe = qe + xp.sum((z_e - e_k) ** 2)
        ppl, usage, dead = Q.usage_stats(b, counts)
        host = b.to_numpy(xp.stack([nll, se, qe, ppl, usage, dead]))
        recon = float(host[0]) / N
        return {"recon": recon, "nll_bound": recon + self.M * math.log(self.K),
                "recon_mse": float(host[1]) / (N * self.cfg.D), "quant_error": float(host[2]) / N,
                "perplexity": float(host[3]), "usage": float(host[4]),
                "dead_codes": int(round(float(host[5]))), "bits_per_dim": self.bits_per_dim,
                "codebook_size": self.K, "codes_per_input": self.M}

    def code_usage(self, params, X, batch: int = 512):
        """Counts (K,) of every code over device data X, as a host array."""
        b = self.b
        counts = b.zeros((self.K,))
        N = X.shape[0]
        for i in range(0, N, batch):
            z_e, _ = self._encode(params, X[i:min(i + batch, N), ...])
            counts = counts + Q.code_counts(b, Q.nearest(b, z_e, params["codebook.E"]), self.K)
        return b.to_numpy(counts)
