"""Floor 3: the vector quantiser of VQ-VAE (van den Oord et al., 2017), written out by hand.

Equation tags (V.n) refer to derivations/04-vqvae.md, where equation (V.n) has the anchor
``eq-vn``; each function's docstring links its own, and a comment names it at the line that
computes it.

Shapes: ``N`` rows to quantise (in the model N = B * M: M latent vectors per example), ``J`` the
size of each row, ``K`` codes.  ``z_e`` (N, J) encoder outputs, ``E`` (K, J) the codebook,
``k`` (N,) int64 the chosen codes, ``e_k = E[k]`` (N, J).

Forward and backward (CS231n pairs):

    nearest(b, z_e, E) -> k                           argmin_k ||z_e - e_k||^2        (V.1)
    quantize_forward(b, z_e, E, k=None) -> z_q, cache z_q = z_e + sg[e_k - z_e]        (V.2)
    quantize_backward(b, dz_q, cache) -> dz_e         straight-through: dz_e = dz_q   (V.3)
    vq_losses(b, z_e, e_k, B) -> codebook, commit     (1/B) sum ||z_e - e_k||^2        (V.4)
    vq_losses_backward(b, w_codebook, w_commit, cache) -> dz_e, de_k                   (V.5)
    codebook_grad(b, onehot, de_k) -> dE              scatter-add as a one-hot matmul (V.6)

Normalisation (stated once, kept everywhere): ``codebook`` and ``commit`` are sums over the J
coordinates and the M vectors of an example, averaged over the B examples of the batch -- the
same "sum over dimensions, mean over the batch" rule as the reconstruction term.

Codebook learning without gradients:

    ema_update(b, state, z_e, k, decay, eps) -> state   EMA / online k-means            (V.8)
    lloyd_step(b, z, E) -> E                            ema_update with decay 0, eps 0  (V.9)
    kmeans(b, z, E, iters), kmeans_init(b, z, K, u, iters)
    restart_dead_codes(b, E, unused, z, u, dead_after) -> E, dead

Usage statistics: ``code_counts``, ``perplexity`` (V.10), ``usage_stats``.

No numpy or cupy here: everything goes through ``b.xp`` (an array-API namespace) and the
backend's helpers, so the same code runs on NumPy, CuPy and array-api-strict.
"""
from __future__ import annotations


# =========================================================================== assignment
def sq_distances(b, z, E):
    """z (N, J), E (K, J) -> d (N, K), d_nk = ||z_n||^2 - 2 z_n . e_k + ||e_k||^2.
    [04-vqvae.md#eq-v1]

    One (N, J) x (J, K) matrix product instead of an (N, K, J) difference tensor.  Rounding can
    make an entry slightly negative; callers that need a distance as a value clip it."""
    xp = b.xp
    zz = xp.sum(z * z, axis=1, keepdims=True)        # (N, 1)
    ee = xp.sum(E * E, axis=1)                       # (K,)
    return zz - 2.0 * (z @ E.T) + ee[None, :]        # (N, K), the expansion of (V.1)


def nearest(b, z, E):
    """z (N, J), E (K, J) -> k (N,) int64: the index of the nearest code.   [04-vqvae.md#eq-v1]

    Ties go to the lowest index: the array API standard specifies that ``argmin`` returns the
    first occurrence of the minimum (NumPy, CuPy and array-api-strict follow it), so identical
    inputs give identical codes on every backend."""
    return b.xp.argmin(sq_distances(b, z, E), axis=1)   # (V.1)


def nearest_gap(b, z, E):
    """z (N, J), E (K >= 2, J) -> (N,) distance to the second-nearest code minus distance to the
    nearest.  A small gap means a tiny perturbation can flip the assignment (test guard)."""
    xp = b.xp
    d = xp.sort(sq_distances(b, z, E), axis=1)
    return d[:, 1] - d[:, 0]


# =========================================================================== straight-through
def quantize_forward(b, z_e, E, k=None, offset=None):
    """z_e (N, J), E (K, J) -> z_q (N, J), cache.   [04-vqvae.md#eq-v2]

    z_q = z_e + sg[e_k - z_e]: in value the nearest code e_k, in gradient the identity on z_e.
    ``k`` (N,) freezes the assignment; ``offset`` (N, J) freezes sg[e_k - z_e] as well -- the
    surrogate whose exact derivative is the straight-through estimator (tests, gradcheck)."""
    xp = b.xp
    if k is None:
        k = nearest(b, z_e, E)
    e_k = xp.take(E, k, axis=0)                      # (N, J)
    if offset is None:
        offset = e_k - z_e                           # sg[e_k - z_e]: a constant for backward
    z_q = z_e + offset                               # (V.2)
    return z_q, (k, e_k)


def quantize_backward(b, dz_q, cache):
    """dz_q (N, J) -> dz_e (N, J) = dz_q.   [04-vqvae.md#eq-v3]

    The straight-through estimator: the offset is a constant, so dz_q/dz_e = I and the codebook
    receives nothing through the decoder path."""
    return dz_q                                      # (V.3)


# =========================================================================== loss terms
def vq_losses(b, z_e, e_k, B: int):
    """z_e, e_k (N, J), B examples -> codebook (0-d), commit (0-d), cache.   [04-vqvae.md#eq-v4]

    codebook = (1/B) sum_{n,j} (sg[z_e] - e_k)^2     moves the codes toward the encoder outputs
    commit   = (1/B) sum_{n,j} (z_e - sg[e_k])^2     keeps the encoder near its codes
    The two are equal in value and differ only in where their gradient goes; the model weights
    them 1 and beta (beta on the commitment term only)."""
    xp = b.xp
    diff = z_e - e_k                                 # (N, J)
    sq = xp.sum(diff * diff) / B                     # (V.4): both terms have this value
    return sq, sq, (diff, B)


def vq_losses_backward(b, w_codebook, w_commit, cache):
    """Upstream weights of the two terms (Python floats) -> dz_e (N, J), de_k (N, J).
    [04-vqvae.md#eq-v5]

    d(codebook)/de_k = (2/B) (e_k - z_e), d(codebook)/dz_e = 0   (sg on z_e)
    d(commit)/dz_e   = (2/B) (z_e - e_k), d(commit)/de_k   = 0   (sg on e_k)"""
    diff, B = cache
    g = 2.0 / B
    dz_e = (w_commit * g) * diff                     # (V.5), commitment: beta (2/B)(z_e - e_k)
    de_k = (-w_codebook * g) * diff                  # (V.5), codebook: (2/B)(e_k - z_e)
    return dz_e, de_k


def codebook_grad(b, onehot, de_k):
    """onehot (N, K), de_k (N, J) -> dE (K, J) = onehot^T de_k.   [04-vqvae.md#eq-v6]

    Scatter-add of the per-row code gradients onto their codes, as a matmul: deterministic on
    every backend (no atomics), and codes that no row chose get exactly zero."""
    return onehot.T @ de_k                           # (V.6): Y^T G


# =========================================================================== usage
def code_counts(b, k, K: int):
    """k (N,) -> counts (K,) float, n_k = number of rows assigned to code k."""
    return b.xp.sum(b.one_hot(k, K), axis=0)


def perplexity(b, counts):
    """counts (K,) -> exp(H(p)) with p = counts / sum(counts) (0-d).   [04-vqvae.md#eq-v10]

    1 when one code takes everything, K when usage is uniform: the effective number of codes.
    0 log 0 is taken as 0."""
    xp = b.xp
    p = counts / xp.sum(counts)
    used = p > 0
    plogp = xp.where(used, p * xp.log(xp.where(used, p, xp.ones_like(p))), xp.zeros_like(p))
    return xp.exp(-xp.sum(plogp))                    # (V.10)


def usage_stats(b, counts):
    """counts (K,) -> (perplexity, fraction of codes used, number of codes unused), 0-d arrays.
    The perplexity is (V.10); the other two are the usage metrics listed beside it."""
    xp = b.xp
    K = counts.shape[0]
    used = xp.sum(xp.astype(counts > 0, counts.dtype))
    return perplexity(b, counts), used / K, K - used


# =========================================================================== EMA / k-means
def ema_update(b, state, z, k, decay: float, eps: float):
    """One exponential-moving-average codebook update (online k-means).   [04-vqvae.md#eq-v8]

    state: {"E": (K, J), "count": N (K,), "sum": m (K, J)}; z (N, J) encoder outputs (constants),
    k (N,) their codes.  Returns a new state dict (the inputs are not modified):

        n_k = #{i: k_i = k},          s_k = sum_{i: k_i = k} z_i           (one-hot matmuls)
        N_k <- decay N_k + (1 - decay) n_k
        m_k <- decay m_k + (1 - decay) s_k
        Nt_k = (N_k + eps) / (n + K eps) * n,   n = sum_k N_k             (Laplace smoothing)
        e_k  = m_k / Nt_k          for codes with N_k > 0; other codes keep their vector.

    Counts are not debiased: N and m start at zero together, so both carry the same factor
    (1 - decay^t) and it cancels in m_k / N_k.  A code that has never been chosen (N_k = 0) keeps
    its initial vector instead of collapsing to m_k / Nt_k = 0."""
    xp = b.xp
    E, N, m = state["E"], state["count"], state["sum"]
    K = E.shape[0]
    onehot = b.one_hot(k, K)                         # (N_rows, K)
    n_k = xp.sum(onehot, axis=0)                     # (K,)
    s_k = onehot.T @ z                               # (K, J)   scatter-add as a matmul
    # (V.8)
    N = decay * N + (1.0 - decay) * n_k
    m = decay * m + (1.0 - decay) * s_k
    n = xp.sum(N)
    Nt = (N + eps) / (n + K * eps) * n
    seen = N > 0
    Nt = xp.where(seen, Nt, xp.ones_like(Nt))        # no 0/0 for codes never chosen
    E_new = xp.where(seen[:, None], m / Nt[:, None], E)
    return {"E": E_new, "count": N, "sum": m}


def lloyd_step(b, z, E):
    """One Lloyd (k-means) iteration: assign every row to its nearest code, move each code to
    the mean of its rows; a code with no rows stays where it is.   [04-vqvae.md#eq-v9]

    Implemented as :func:`ema_update` with decay 0 and eps 0 (fresh zero state), which is the
    statement that the EMA update *is* online k-means."""
    xp = b.xp
    K, J = E.shape
    state = {"E": E, "count": xp.zeros((K,), dtype=E.dtype, device=b.device),
             "sum": xp.zeros((K, J), dtype=E.dtype, device=b.device)}
    return ema_update(b, state, z, nearest(b, z, E), 0.0, 0.0)["E"]   # (V.9)


def distortion(b, z, E):
    """Mean over rows of the squared distance to the nearest code (the k-means objective), which
    a Lloyd step (V.9) never increases."""
    xp = b.xp
    return xp.mean(xp.maximum(xp.min(sq_distances(b, z, E), axis=1), 0.0))


def sample_rows(b, z, u, K: int):
    """K rows of z (N, J), chosen by the uniform variates u (N,): the rows of the K smallest u,
    so without replacement when N >= K (rows repeat cyclically when N < K).  -> (K, J).
    The restart and the k-means start draw their rows here.  [04-vqvae.md#dead-codes]"""
    xp = b.xp
    n = z.shape[0]
    order = xp.argsort(u)                                  # a uniformly random permutation
    idx = xp.take(order, b.arange(K) % n, axis=0)          # (K,)
    return xp.take(z, idx, axis=0)


def kmeans(b, z, E, iters: int):
    """``iters`` Lloyd steps (V.9) from the codebook E; the distortion never increases."""
    for _ in range(int(iters)):
        E = lloyd_step(b, z, E)
    return E


def kmeans_init(b, z, K: int, u, iters: int = 10):
    """A codebook from data: K distinct rows of z (chosen by u, uniform (N,)), then ``iters``
    Lloyd steps.  [04-vqvae.md#dead-codes]"""
    return kmeans(b, z, sample_rows(b, z, u, K), iters)


# =========================================================================== dead codes
def restart_dead_codes(b, E, unused, z, u, dead_after: float):
    """Re-seed codes unused for ``dead_after`` steps at recent encoder outputs.
    [04-vqvae.md#dead-codes]

    E (K, J); unused (K,) float, consecutive steps without an assignment; z (N, J) the latest
    encoder outputs; u (N,) uniform variates choosing which rows.  Returns (E_new, dead) with
    dead (K,) bool.  All on the device, no host synchronisation: the codes that are not dead
    are kept by a ``where``."""
    xp = b.xp
    dead = unused >= dead_after
    fresh = sample_rows(b, z, u, E.shape[0])               # (K, J), distinct rows if N >= K
    return xp.where(dead[:, None], fresh, E), dead
