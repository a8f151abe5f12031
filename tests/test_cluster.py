"""The host-side clustering recipe (scratchvae/cluster.py): the consensus-graph partition and the
mixture initialised from it.  [05-clustering-recipe.md#the-steps]"""
import numpy as np
import pytest
from sklearn.metrics import adjusted_rand_score

from scratchvae.backend import Backend
from scratchvae.cluster import (graph_partition, init_mixture_from_partition, knn_graph,
                                spectral_clustering)
from scratchvae.models.gmvae import GMVAE, GMVAEConfig


def blobs(n_per=40, K=3, D=6, sep=8.0, seed=0):
    rng = np.random.default_rng(seed)
    centres = sep * rng.standard_normal((K, D))
    y = np.repeat(np.arange(K), n_per)
    return centres[y] + rng.standard_normal((K * n_per, D)), y


def test_knn_graph_is_symmetric_without_self_loops():
    X, _ = blobs()
    A = knn_graph(X, 5)
    assert (A != A.T).nnz == 0
    assert A.diagonal().sum() == 0
    assert np.all(np.asarray(A.sum(1)).ravel() >= 5)      # each row keeps its own 5 neighbours


def test_graph_partition_recovers_separated_clusters():
    """Three well-separated blobs, seen through two different views (the data and a random
    linear map of it standing in for the latent means): the partition is exact."""
    X, y = blobs()
    Z = X @ np.random.default_rng(1).standard_normal((6, 2))
    labels, rep = graph_partition(X, Z, 3, k=8, seed=0)
    assert adjusted_rand_score(y, labels) == 1.0
    assert sorted(rep["partition_sizes"]) == [40, 40, 40]
    assert rep["spectral_max_residual"] < 1e-5               # the eigensolver converged
    ev = rep["spectral_eigenvalues"]                         # the leading 4 K = 12
    np.testing.assert_allclose(ev[:3], 1.0, atol=1e-6)       # 3 components: eigenvalue 1 thrice
    assert len(ev) == 12 and ev[3] < 1.0 - 1e-3
    assert rep["graph_edges_consensus"] <= min(rep["graph_edges_data"], rep["graph_edges_latent"])


def test_graph_partition_edge_cases():
    X, _ = blobs(n_per=2, K=2)
    labels, rep = graph_partition(X, X, 1, k=50)            # K = 1: one cluster, no graph
    assert np.all(labels == 0) and rep["partition_sizes"] == [4]
    labels, rep = graph_partition(X, X, 2, k=50)            # k clipped to N - 1 (complete graph)
    assert rep["graph_k"] == 3 and sum(rep["partition_sizes"]) == 4 and min(rep["partition_sizes"]) >= 1
    labels, _ = graph_partition(X[:1], X[:1], 1)            # a single row
    assert labels.tolist() == [0]
    with pytest.raises(ValueError, match="cannot partition 4 rows into 5 clusters"):
        graph_partition(X, X, 5)


@pytest.mark.parametrize("ratio", [1.0, 0.01])
def test_init_mixture_from_partition_is_one_m_step(ratio):
    """(C.2): weights and means of one hard M-step, variances ratio x the cluster's scatter
    (ratio 1: the plain M-step)."""
    b = Backend("numpy", "float64", seed=0)
    m = GMVAE(GMVAEConfig(D=6, latent_dim=2, hidden=(5,), clusters=3), b)
    p = m.init_params(b.rng("i"))
    Z, _ = blobs(n_per=10, K=3, D=2)
    labels = np.repeat(np.arange(3), 10)
    labels[0] = 2                                          # uneven sizes 9, 10, 11
    init_mixture_from_partition(m, p, Z, labels, var_ratio=ratio)
    pi = np.exp(b.to_numpy(m.prior.log_pi(b, p)))
    np.testing.assert_allclose(pi, [9 / 30, 10 / 30, 11 / 30], rtol=1e-12)
    for c in range(3):
        np.testing.assert_allclose(b.to_numpy(p["prior.mu_c"])[c], Z[labels == c].mean(0), rtol=1e-12)
        np.testing.assert_allclose(np.exp(b.to_numpy(m.prior.logvar_c(b, p)))[c],
                                   np.maximum(ratio * Z[labels == c].var(0), 1.5e-3), rtol=1e-9)


def test_init_mixture_from_partition_survives_an_empty_cluster():
    b = Backend("numpy", "float64", seed=0)
    m = GMVAE(GMVAEConfig(D=6, latent_dim=2, hidden=(5,), clusters=3), b)
    p = m.init_params(b.rng("i"))
    Z, _ = blobs(n_per=10, K=2, D=2)
    init_mixture_from_partition(m, p, Z, np.repeat([0, 1], 10))   # cluster 2 is empty
    pi = np.exp(b.to_numpy(m.prior.log_pi(b, p)))
    assert np.all(np.isfinite(b.to_numpy(p["prior.mu_c"]))) and pi[2] == pytest.approx(1 / 21)


@pytest.mark.parametrize("n", [10, 40])        # dense eigh path, LOBPCG path
def test_spectral_clustering_finds_components(n):
    """K disjoint cliques: the eigenvalue 1 of D^-1/2 A D^-1/2 has multiplicity K (a single-vector
    Lanczos solver finds one copy only); the partition must be the components exactly."""
    import scipy.sparse as sp

    K = 4
    sizes = [n, n + 3, n + 7, n + 1]
    blocks = [np.ones((m, m)) - np.eye(m) for m in sizes]
    A = sp.block_diag(blocks).tocsr()
    y = np.repeat(np.arange(K), sizes)
    labels = spectral_clustering(A, K, seed=1)
    assert adjusted_rand_score(y, labels) == 1.0
    with pytest.raises(ValueError, match="at least one edge"):
        spectral_clustering(sp.csr_matrix((5, 5)), 2)


def test_graph_widens_when_near_duplicates_split_it():
    """Three separated blobs, each made of 5 base points with 12 near-identical copies: the
    10-NN graph falls into 15 pieces of copies (more than K = 3), so spectral clustering alone
    would pick arbitrary pieces.  k is doubled until the graph has at most K pieces, and then
    the blobs are recovered exactly."""
    rng = np.random.default_rng(0)
    centres = 20.0 * rng.standard_normal((3, 6))
    base = np.repeat(centres, 5, axis=0) + rng.standard_normal((15, 6))
    X = np.repeat(base, 12, axis=0) + 1e-3 * rng.standard_normal((180, 6))
    y = np.repeat(np.arange(3), 60)
    labels, rep = graph_partition(X, X.copy(), 3, k=10, seed=0)
    assert rep["graph_k_asked"] == 10 and rep["graph_k"] > 10 and rep["graph_pieces"] <= 3
    assert adjusted_rand_score(y, labels) == 1.0


def test_modularity_closed_forms():
    """Two disjoint equal cliques: Q = 1 - 2 (1/2)^2 = 1/2 for the true split, 0 for one
    cluster, and a split that cuts each clique in half (mixing them) is negative."""
    import scipy.sparse as sp

    from scratchvae.cluster import modularity

    n = 6
    block = np.ones((n, n)) - np.eye(n)
    A = sp.csr_matrix(np.block([[block, np.zeros((n, n))], [np.zeros((n, n)), block]]))
    truth = np.repeat([0, 1], n)
    assert modularity(A, truth) == pytest.approx(0.5, abs=1e-12)
    assert modularity(A, np.zeros(2 * n, dtype=int)) == pytest.approx(0.0, abs=1e-12)
    halves = np.tile(np.repeat([0, 1], n // 2), 2)     # each clique cut in two, mixed
    # within weight: per clique 2 * (3*2) of 30 edges' weight -> 24 of 60; volumes 30 each
    assert modularity(A, halves) == pytest.approx(24 / 60 - 0.5, abs=1e-12)


def test_merging_an_overclustered_graph_recovers_the_blobs():
    """Three separated blobs over-clustered into 9 pieces by spectral clustering: greedy
    modularity merging joins the pieces of each blob, never two blobs; and the partition
    with over-clustering reports every candidate's modularity and keeps the best."""
    from scratchvae.cluster import merge_by_modularity, overclustered_partition

    X, y = blobs()
    A = knn_graph(X, 8)
    fine = spectral_clustering(A + 0.01 * knn_graph(X, 30), 9, seed=0)
    assert len(np.unique(fine)) == 9
    merged = merge_by_modularity(A, fine, 3)
    assert adjusted_rand_score(y, merged) == 1.0 and sorted(np.unique(merged)) == [0, 1, 2]
    rep = {}
    labels = overclustered_partition(A, 3, seed=0, report=rep)
    q = rep["partition_modularity"]
    assert set(q) == {"1", "2", "3", "4"}
    assert q[str(rep["partition_overclustering"])] == max(q.values())
    assert adjusted_rand_score(y, labels) == 1.0


def test_refit_mixture_is_the_m_step_of_the_anchored_bound():
    """(C.3): pi_c = N_c / N, mu_c = mean of the posterior means, var_c = their scatter plus
    the mean posterior variance; a cluster with fewer than 2 members keeps its component; the
    prior's Adam moments are reset and the other moments kept."""
    from scratchvae.cluster import refit_mixture
    from scratchvae.optim import Adam

    b = Backend("numpy", "float64", seed=0)
    m = GMVAE(GMVAEConfig(D=6, latent_dim=2, hidden=(5,), clusters=3), b)
    p = m.init_params(b.rng("i"))
    X = np.random.default_rng(0).uniform(size=(31, 6))
    labels = np.r_[np.zeros(15, int), np.ones(15, int), [2]]          # cluster 2: one member
    before_2 = (p["prior.mu_c"][2].copy(), np.exp(m.prior.logvar_c(b, p))[2].copy())
    opt = Adam(b, p, lr=1e-3)
    for k in opt.m:
        opt.m[k] = np.ones_like(opt.m[k])
    refit_mixture(m, p, X, labels, opt=opt)
    post = m.encode(p, X)[0]
    var = np.exp(m.prior.logvar_c(b, p))
    for c in (0, 1):
        sel = labels == c
        np.testing.assert_allclose(p["prior.mu_c"][c], post.mu[sel].mean(0), rtol=1e-12)
        np.testing.assert_allclose(var[c], post.mu[sel].var(0) + post.var[sel].mean(0),
                                   rtol=1e-9)
    np.testing.assert_allclose(p["prior.mu_c"][2], before_2[0], rtol=1e-12)
    np.testing.assert_allclose(var[2], before_2[1], rtol=1e-9)
    np.testing.assert_allclose(np.exp(m.prior.log_pi(b, p)), [15 / 31, 15 / 31, 1 / 31],
                               rtol=1e-12)
    assert not opt.m["prior.mu_c"].any() and opt.m["encoder.0.W"].all()
