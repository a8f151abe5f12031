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
    np.testing.assert_allclose(rep["spectral_eigenvalues"], 1.0, atol=1e-6)   # 3 components
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


def test_init_mixture_from_partition_is_one_m_step():
    b = Backend("numpy", "float64", seed=0)
    m = GMVAE(GMVAEConfig(D=6, latent_dim=2, hidden=(5,), clusters=3), b)
    p = m.init_params(b.rng("i"))
    Z, _ = blobs(n_per=10, K=3, D=2)
    labels = np.repeat(np.arange(3), 10)
    labels[0] = 2                                          # uneven sizes 9, 10, 11
    init_mixture_from_partition(m, p, Z, labels)
    pi = np.exp(b.to_numpy(m.prior.log_pi(b, p)))
    np.testing.assert_allclose(pi, [9 / 30, 10 / 30, 11 / 30], rtol=1e-12)
    for c in range(3):
        np.testing.assert_allclose(b.to_numpy(p["prior.mu_c"])[c], Z[labels == c].mean(0), rtol=1e-12)
        np.testing.assert_allclose(np.exp(b.to_numpy(m.prior.logvar_c(b, p)))[c],
                                   Z[labels == c].var(0), rtol=1e-9)


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
