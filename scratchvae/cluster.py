"""Floor 5: the clustering recipe around the GMVAE (host-side steps between training phases).

A GMVAE trained from a random start rarely clusters well; these steps make it work, none of them
looks at labels:

1. autoencoder pretraining (``scratchvae/models/gmvae.py`` :class:`PretrainAE`);
2. a partition of the training set by spectral clustering of the *consensus neighbour graph*:
   an edge i-j is kept at full weight when j is among i's k nearest neighbours both in the data
   and in the pretrained latent means (:func:`graph_partition`);
3. the mixture initialised from that partition, one M-step of a diagonal Gaussian mixture on the
   latent means (:func:`init_mixture_from_partition`), or -- ``--init gmm`` -- scikit-learn's
   ``GaussianMixture`` on the latent means, ``n_init`` restarts, the best chosen by its own
   likelihood (:func:`init_mixture_from_codes`);
4. the encoder's log-variance output initialised small relative to the code spread
   (:func:`init_logvar_head`);
5. the anchored warm-up: a few epochs of the ELBO with q(c|x) set to that partition (models/
   gmvae.py :class:`AnchoredGMVAE`), then the assignment's q(c|x) = p(c|z);
6. learning-rate decay (``TrainConfig.lr_decay``);
7. a guard against component collapse: after an epoch, a component whose weight fell below
   ``pi_min / K``, or that wins no training row under argmax q(c|x), is re-seeded by splitting
   the heaviest component (:func:`collapse_guard`).

They run between epochs, on the host (NumPy / scikit-learn), and write device arrays back through
the backend.  [05-clustering-recipe.md#the-steps]
"""
from __future__ import annotations

import math

import numpy as np


def _set_mixture(model, params, logits, mu, *, var=None, raw=None, opt=None):
    """Write the prior's parameters from host arrays: weights as logits (K,), means (K, J), and
    the variances either as ``var`` (K, J; mapped through the inverse of (M.1a)) or already as
    ``raw``.  With ``opt`` (Adam) the prior's moments are reset, so the new components do not
    inherit the old ones' momentum."""
    b, prior = model.b, model.prior
    params["prior.pi_logits"] = b.asarray(logits)
    params["prior.mu_c"] = b.asarray(mu)
    params["prior.logvar_c"] = (b.asarray(raw) if raw is not None else
                                prior.raw_from_logvar(b, b.asarray(np.log(var))))
    if opt is not None:
        for k in ("prior.pi_logits", "prior.mu_c", "prior.logvar_c"):
            opt.m[k] = b.xp.zeros_like(params[k])
            opt.v[k] = b.xp.zeros_like(params[k])


def init_mixture_from_codes(model, params, Z: np.ndarray, *, seed: int = 0,
                            n_init: int = 10) -> dict:
    """Fit sklearn's GaussianMixture (diagonal covariances, ``n_init`` restarts, best by its
    likelihood) to latent means Z (N, J) and copy it into the prior parameters.  Returns a
    report (log-likelihood per point, weights).  VaDE's start, kept as ``--init gmm``.
    [05-clustering-recipe.md#mixture-initialisation]"""
    from sklearn.mixture import GaussianMixture

    prior = model.prior
    K = prior.K
    gm = GaussianMixture(n_components=K, covariance_type="diag", n_init=n_init,
                         random_state=seed, reg_covar=1e-6, max_iter=300).fit(Z)
    var = np.maximum(gm.covariances_, 1.5 * prior.var_min)
    _set_mixture(model, params, np.log(np.maximum(gm.weights_, 1e-8)), gm.means_, var=var)
    return {"gmm_loglik_per_point": float(gm.score(Z)), "gmm_converged": bool(gm.converged_),
            "gmm_weights": gm.weights_.tolist()}


def knn_graph(F: np.ndarray, k: int):
    """Symmetric 0/1 k-nearest-neighbour graph of the rows of F (sparse CSR, no self loops):
    A^x or A^z of (C.1)."""
    from sklearn.neighbors import kneighbors_graph

    A = kneighbors_graph(F, n_neighbors=k, mode="connectivity", include_self=False)
    return A.maximum(A.T).tocsr()


def spectral_embedding(A, n: int, *, seed: int = 0, report: dict | None = None) -> np.ndarray:
    """The ``n`` leading eigenvectors (N, n), largest eigenvalue first, of the normalised
    adjacency M = D^-1/2 A D^-1/2 of a symmetric non-negative sparse graph A (N, N) with
    positive degrees.  ``report`` (a dict), if given, receives the eigenvalues and the largest
    eigen-residual ||M v - lambda v|| (a check that the iterative solver converged).
    [05-clustering-recipe.md#spectral-clustering]"""
    import warnings

    import scipy.sparse as sp
    from scipy.sparse.linalg import lobpcg

    N = A.shape[0]
    d = np.asarray(A.sum(axis=1)).ravel()
    if np.any(d <= 0):
        raise ValueError("every node of the graph needs at least one edge")
    s = sp.diags(1.0 / np.sqrt(d))
    M = (s @ A @ s).tocsr()                     # M = D^-1/2 A D^-1/2
    if N < 5 * n + 50:        # small (LOBPCG itself needs N >= 5n): dense eigendecomposition
        w, V = np.linalg.eigh(M.toarray())
        w, V = w[-n:], V[:, -n:]
    else:
        # LOBPCG, a block method: a disconnected graph has eigenvalue 1 once per component, and
        # single-vector Lanczos (eigsh) can miss copies of a repeated eigenvalue.  Convergence
        # is checked below through the residuals, not through LOBPCG's warning.
        X0 = np.random.default_rng(seed).standard_normal((N, n))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            w, V = lobpcg(M, X0, largest=True, tol=1e-6, maxiter=500)
    order = np.argsort(w)[::-1]
    w, V = w[order], V[:, order]
    if report is not None:
        res = np.linalg.norm(M @ V - V * w[None, :], axis=0)
        report["spectral_eigenvalues"] = w.tolist()
        report["spectral_max_residual"] = float(res.max())
    return V


def _rows_kmeans(V, K: int, seed: int) -> np.ndarray:
    """Rows of V scaled to unit length, then k-means (10 restarts, best inertia) into K."""
    from sklearn.cluster import KMeans

    V = V / np.maximum(np.linalg.norm(V, axis=1, keepdims=True), 1e-12)
    return KMeans(n_clusters=K, n_init=10, random_state=seed).fit_predict(V).astype(np.int64)


def spectral_clustering(A, K: int, *, seed: int = 0, report: dict | None = None) -> np.ndarray:
    """Normalised spectral clustering of a symmetric non-negative sparse graph A (N, N) with
    positive degrees (Ng, Jordan & Weiss, 2001): the K leading eigenvectors of
    D^-1/2 A D^-1/2 (:func:`spectral_embedding`), each row scaled to unit length, then k-means
    (10 restarts, best inertia).  [05-clustering-recipe.md#spectral-clustering]"""
    return _rows_kmeans(spectral_embedding(A, K, seed=seed, report=report), K, seed)


def _cluster_graph(A, labels: np.ndarray) -> np.ndarray:
    """W (C, C): W[a, b] = total edge weight between clusters a and b of ``labels``."""
    import scipy.sparse as sp

    n = len(labels)
    P = sp.csr_matrix((np.ones(n), (np.arange(n), labels)), shape=(n, int(labels.max()) + 1))
    return np.asarray((P.T @ A @ P).todense(), dtype=np.float64)


def modularity(A, labels: np.ndarray) -> float:
    """Newman's modularity of a partition of a weighted graph A:
    Q = sum_c [ W_cc / 2m - (vol_c / 2m)^2 ], 2m = the total weight, vol_c = the weight of the
    edges at c's nodes.  [05-clustering-recipe.md#over-clustering-and-merging]"""
    W = _cluster_graph(A, np.asarray(labels))
    two_m, vol = W.sum(), W.sum(axis=1)
    return float(np.trace(W) / two_m - np.sum((vol / two_m) ** 2))


def merge_by_modularity(A, labels: np.ndarray, K: int) -> np.ndarray:
    """Merge the clusters of ``labels`` on graph A pairwise, greedily, until K remain: each time
    the pair a, b whose merge raises the modularity most (dQ = 2 W_ab / 2m - 2 vol_a vol_b /
    (2m)^2, taken even when negative).  Returns labels 0..K-1.
    [05-clustering-recipe.md#over-clustering-and-merging]"""
    labels = np.asarray(labels)
    W = _cluster_graph(A, labels)
    groups = [[c] for c in range(W.shape[0])]
    two_m = W.sum()
    while len(groups) > K:
        vol = W.sum(axis=1)
        gain = W / two_m - np.outer(vol, vol) / two_m ** 2
        np.fill_diagonal(gain, -np.inf)
        a, b = sorted(np.unravel_index(int(np.argmax(gain)), gain.shape))
        W[a] += W[b]
        W[:, a] += W[:, b]
        W = np.delete(np.delete(W, b, axis=0), b, axis=1)
        groups[a] += groups.pop(b)
    lut = np.empty(sum(len(g) for g in groups), dtype=np.int64)     # fine cluster -> merged
    for c, g in enumerate(groups):
        lut[g] = c
    return lut[labels]


def overclustered_partition(A, K: int, over=(1, 2, 3, 4), *, seed: int = 0,
                            report: dict | None = None) -> np.ndarray:
    """K clusters of graph A: for each m in ``over``, spectral clustering into m K clusters (on
    the leading m K eigenvectors of one eigen-solve), merged back to K by
    :func:`merge_by_modularity`; the candidate of highest modularity wins (the smaller m on a
    tie).  Fine clusters are purer than K-way ones, and merging by the graph joins the pieces
    of one class that K-way spectral clustering splits while it lumps two others together.
    Label-free.  [05-clustering-recipe.md#over-clustering-and-merging]"""
    N = A.shape[0]
    over = [m for m in over if m == 1 or m * K <= N // 4]
    V = spectral_embedding(A, max(over) * K, seed=seed, report=report)
    best = None
    scores = {}
    for m in over:
        lab = _rows_kmeans(V[:, :m * K], m * K, seed)
        if m > 1:
            lab = merge_by_modularity(A, lab, K)
        scores[m] = modularity(A, lab)
        if best is None or scores[m] > scores[best[0]]:
            best = (m, lab)
    if report is not None:
        report["partition_modularity"] = {str(m): q for m, q in scores.items()}
        report["partition_overclustering"] = best[0]
    return best[1]


def graph_partition(X: np.ndarray, Z: np.ndarray, K: int, *, k: int = 10, seed: int = 0,
                    weak: float = 1e-2, over=(1, 2, 3, 4)):
    """Label-free partition of the N training rows into K clusters.

    Two k-NN graphs, one on the data X (N, D) and one on the latent means Z (N, J), are combined
    into the *consensus graph* A = A_x * A_z + weak (A_x + A_z): an edge has weight ~1 when both
    spaces call the pair neighbours, ``weak`` when only one does (which keeps every point
    connected).  If A falls into more than K connected pieces, k is doubled until it does not
    (reported as ``graph_k``; ``graph_k_asked`` is the request).  :func:`overclustered_partition`
    of A gives the partition.  Cost: two k-NN searches, one sparse eigenproblem (max(over) K
    vectors) and len(over) k-means runs.  Returns
    (labels (N,), report)."""
    N = X.shape[0]
    if K > N:
        raise ValueError(f"cannot partition {N} rows into {K} clusters")
    if K == 1 or N < 2:
        return np.zeros(N, dtype=np.int64), {"graph_k": 0, "partition_sizes": [N]}
    from scipy.sparse.csgraph import connected_components

    k = k_asked = max(1, min(int(k), N - 1))
    while True:
        # More connected pieces than clusters (e.g. many near-duplicate rows, each group its own
        # piece) leaves spectral clustering an arbitrary choice among the pieces: widen the
        # neighbourhoods until the graph has at most K pieces.
        # [05-clustering-recipe.md#more-pieces-than-clusters]
        Ax, Az = knn_graph(X, k), knn_graph(Z, k)
        pieces = int(connected_components(Ax + Az, directed=False)[0])
        if pieces <= K or k >= N - 1:
            break
        k = min(2 * k, N - 1)
    both = Ax.multiply(Az)
    A = (both + weak * (Ax + Az)).tocsr()       # (C.1): A = A^x * A^z + xi (A^x + A^z)
    rep = {"graph_k": k, "graph_k_asked": k_asked, "graph_pieces": pieces,
           "graph_edges_data": int(Ax.nnz // 2),
           "graph_edges_latent": int(Az.nnz // 2), "graph_edges_consensus": int(both.nnz // 2)}
    labels = overclustered_partition(A, K, over, seed=seed, report=rep)
    rep["partition_sizes"] = np.bincount(labels, minlength=K).tolist()
    return labels, rep


def init_mixture_from_partition(model, params, Z: np.ndarray, labels: np.ndarray, *,
                                seed: int = 0, var_ratio: float = 0.01, opt=None) -> dict:
    """The mixture from a partition of the latent means Z (N, J): the weights and means of one
    M-step with hard responsibilities ``labels`` (pi_c = N_c / N, mu_c = mean) and variances
    ``var_ratio`` times the cluster's scatter (floored at 1.5 var_min).  Small component
    variances make the prior's pull (z - mu_c) / var_c on the codes strong enough for the
    anchored warm-up to make the partition's clusters Gaussian before the assignment's
    q(c|x) = p(c|z) takes over; the ELBO then learns the variances (with ``var_ratio=1``, the
    plain M-step, the MNIST subset lost 3 points of its partition in the first warm-up epoch).
    A cluster with fewer than 2 members starts at a random code (drawn with ``seed``) with the
    overall scatter and a count of 1 before the weights are normalised (the collapse guard may
    re-seed it later).  With ``opt`` (Adam) the prior's moments are reset.  The report says
    whether every variance is at the floor (``init_var_floored``: a smaller ratio changes
    nothing).
    [05-clustering-recipe.md#mixture-initialisation]"""
    # (C.2): pi_c = N_c / N, mu_c = mean, var_c = max(rho * scatter, 1.5 var_min)
    prior = model.prior
    K, (N, J) = prior.K, Z.shape
    Z = Z.astype(np.float64)
    w = np.empty(K)
    mu = np.empty((K, J))
    var = np.empty((K, J))
    rs = np.random.default_rng(seed)
    for c in range(K):
        m = labels == c
        if m.sum() >= 2:
            w[c], mu[c], var[c] = m.sum(), Z[m].mean(0), Z[m].var(0)
        else:
            w[c], mu[c], var[c] = 1.0, Z[rs.integers(N)], Z.var(0)
    floored = bool(np.all(var_ratio * var <= 1.5 * prior.var_min))
    var = np.maximum(var_ratio * var, 1.5 * prior.var_min)
    _set_mixture(model, params, np.log(w / w.sum()), mu, var=var, opt=opt)
    return {"init_weights": (w / w.sum()).tolist(), "init_var_floored": floored}


def posterior_moments(model, params, X, batch: int = 1024):
    """The encoder's posterior means and variances of the rows X (device), in batches: host
    float64 arrays (N, J), (N, J)."""
    b = model.b
    mus, vs = [], []
    for i in range(0, X.shape[0], batch):
        post = model.encode(params, X[i:min(i + batch, X.shape[0]), ...])[0]
        mus.append(b.to_numpy(post.mu))
        vs.append(b.to_numpy(post.var))
    return np.concatenate(mus).astype(np.float64), np.concatenate(vs).astype(np.float64)


def refit_mixture(model, params, X, labels: np.ndarray, opt=None, batch: int = 1024) -> dict:
    """The M-step of the anchored bound (M.20) with q(c|x) = one-hot(``labels``), on the current
    encoder: pi_c = N_c / N, mu_c = the mean of the cluster's posterior means, var_c = their
    scatter plus the mean posterior variance (floored at 1.5 var_min).  Run after the anchored
    warm-up, whose components started narrow (:func:`init_mixture_from_partition`): it hands
    the ELBO stage components as wide as the codes they hold.  With ``opt`` (Adam) the prior's
    moments are reset.  [05-clustering-recipe.md#the-anchored-warm-up]"""
    b, prior = model.b, model.prior
    Z, V = posterior_moments(model, params, X, batch)
    K = prior.K
    w = np.bincount(labels, minlength=K).astype(np.float64)
    mu = b.to_numpy(params["prior.mu_c"]).astype(np.float64).copy()
    var = np.exp(b.to_numpy(prior.logvar_c(b, params))).astype(np.float64)
    for c in np.flatnonzero(w >= 2):          # a cluster with < 2 members keeps its component
        m = labels == c
        mu[c], var[c] = Z[m].mean(0), Z[m].var(0) + V[m].mean(0)
    w = np.maximum(w, 1.0)
    _set_mixture(model, params, np.log(w / w.sum()), mu,
                 var=np.maximum(var, 1.5 * prior.var_min), opt=opt)
    return {"refit_weights": (w / w.sum()).tolist()}


def em_destination(model, params, X, max_iter: int = 200, batch: int = 1024):
    """Where the mixture goes on held codes: EM of a diagonal GaussianMixture on the codes
    mu(x) of the rows X, started from the model's mixture (weights, means, variances), each
    M-step's variances the codes' scatter plus the mean posterior variance (as in (C.3)), run to
    convergence.  Returns (assignment (N,), each component keeping its index; converged).  With
    the codes held the ELBO stage can only move the mixture, by gradient steps on about this
    objective, so this predicts, label-free, the partition it settles on (70 000 shifted MNIST
    images: the assignment right after the last warm-up kept 91.9 % of the partition, this
    predicted 90.2 %, the ELBO stage ended at 90.0 %).
    [05-clustering-recipe.md#when-the-warm-up-falls-short-again-narrower]"""
    import warnings

    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import GaussianMixture

    b, prior = model.b, model.prior
    Z, V = posterior_moments(model, params, X, batch)
    if prior.K == 1 or Z.shape[0] < 2:
        return np.zeros(Z.shape[0], dtype=np.int64), True
    pi = np.exp(b.to_numpy(prior.log_pi(b, params)).astype(np.float64))
    mu = b.to_numpy(params["prior.mu_c"]).astype(np.float64)
    var = np.exp(b.to_numpy(prior.logvar_c(b, params)).astype(np.float64))
    gm = GaussianMixture(prior.K, covariance_type="diag", weights_init=pi / pi.sum(),
                         means_init=mu, precisions_init=1.0 / var, max_iter=max_iter,
                         reg_covar=max(float(prior.var_min), float(V.mean())))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)   # reported as em_converged
        labels = gm.fit(Z).predict(Z)
    return labels, bool(gm.converged_)


def init_logvar_head(model, params, Z: np.ndarray, ratio: float = 0.01):
    """Encoder log-variance outputs start at log(ratio * mean code variance): weights 0, bias set.
    (Only for the mean-field head; the Cholesky head's diagonal bias is set likewise.)
    [05-clustering-recipe.md#variance-head-initialisation]"""
    b = model.b
    J = model.J
    last = model.encoder.n_layers - 1
    W, bias = params[f"encoder.{last}.W"], params[f"encoder.{last}.b"]
    target = math.log(ratio * float(np.mean(np.var(Z, axis=0))) + 1e-12)
    Wh, bh = b.to_numpy(W).copy(), b.to_numpy(bias).copy()
    if model.head.name == "diag":
        Wh[:, J:2 * J] = 0.0
        bh[J:2 * J] = target
    else:   # Cholesky: diagonal std softplus(d) + floor ~ exp(target / 2); off-diagonals 0
        std = math.exp(0.5 * target)
        Wh[:, J:] = 0.0
        bh[J:2 * J] = math.log(math.expm1(max(std, 1e-6)))
        bh[2 * J:] = 0.0
    params[f"encoder.{last}.W"] = b.asarray(Wh)
    params[f"encoder.{last}.b"] = b.asarray(bh)


def collapse_guard(model, params, pi_min: float = 0.1, opt=None, counts=None) -> int:
    """Re-seed every dead component by splitting the heaviest one along its widest axis (means
    moved by +-1/2 std, weight shared).  Dead: a weight below ``pi_min / K``, or -- given
    ``counts``, the number of rows each component wins under argmax q(c|x) -- winning no row (a
    component can keep a fair weight while every point prefers another: it is as dead to a user
    as one with no weight).  The heaviest is the one winning most rows (``counts``) or else the
    largest weight.  Label-free.  With ``opt`` (Adam), the moments of the prior parameters are
    reset so the re-seeded components do not inherit the dead one's momentum.  Returns the
    number re-seeded.  [05-clustering-recipe.md#collapse-guard]"""
    b = model.b
    K = model.prior.K
    pi = np.exp(b.to_numpy(model.prior.log_pi(b, params)))
    dead = pi < pi_min / K
    if counts is not None:
        counts = np.asarray(counts, dtype=np.float64).copy()
        dead |= counts == 0
    small = np.flatnonzero(dead)
    if small.size == 0 or K < 2 or small.size == K:
        return 0
    logits = np.log(pi)
    mu = b.to_numpy(params["prior.mu_c"]).copy()
    raw = b.to_numpy(params["prior.logvar_c"]).copy()
    lv = b.to_numpy(model.prior.logvar_c(b, params))
    for c in small:
        big = int(np.argmax(counts if counts is not None else np.exp(logits)))
        j = int(np.argmax(lv[big]))
        step = 0.5 * math.exp(0.5 * lv[big, j])
        mu[c] = mu[big]
        mu[c, j] += step
        mu[big, j] -= step
        raw[c] = raw[big]
        logits[c] = logits[big] = logits[big] - math.log(2.0)
        if counts is not None:
            counts[c] = counts[big] = counts[big] / 2.0
    _set_mixture(model, params, logits, mu, raw=raw, opt=opt)
    return int(small.size)
