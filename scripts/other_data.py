"""The GMVAE recipe, default options, on the "Other data" sets of RESULTS.md, one line per run.

    python scripts/other_data.py DATA SEED [OPTION=VALUE ...]

DATA: ``digits_bin`` (the bundled digits binarised at 0.5), ``mnist14`` / ``mnist_bin`` (the
MNIST subset pooled to 14x14 / binarised at 0.5: needs ``data/mnist5k``, written by
``scripts/mnist5k_to_idx.py``), ``mnist16_bin`` / ``mnist32_bin`` (its first 1600 / 1900
training images resized to 16x16 / padded to 32x32, binarised; 400 held-out), ``iris`` / ``wine`` / ``breast_cancer`` (scikit-learn's tables,
standardised, Gaussian likelihood, no held-out split: the held-out column is the training rows).
OPTION=VALUE pairs are GMVAE options (e.g. ``elbo_encoder=trained``).  Prints the partition's,
the final and the held-out ACC, the agreement with the partition, held-out IWAE (k = 50) and
ELBO, k-means on the inputs and GaussianMixture on PCA-10 (training rows), and the anchored
warm-up's rounds (component variance ratio: the model's agreement with the partition after
it, and that of EM of its mixture on the held codes).  Labels are only scored.
"""
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def gmvae_options(pairs) -> dict:
    """GMVAE options from OPTION=VALUE strings, each parsed as its default's type (a tuple as
    comma-separated integers, a bool as true/false)."""
    from scratchvae import GMVAE

    d, out = GMVAE().options, {}
    for k, v in (a.split("=", 1) for a in pairs):
        t = getattr(d, k)
        out[k] = (tuple(int(x) for x in v.split(",")) if isinstance(t, tuple)
                  else v.lower() in ("1", "true", "yes") if isinstance(t, bool) else type(t)(v))
    return out


def get(name):
    """(X_train, y_train, X_test, y_test, likelihood, K)."""
    from sklearn import datasets
    from sklearn.preprocessing import StandardScaler

    from scratchvae.data import load_dataset

    if name in ("iris", "wine", "breast_cancer"):
        X, y = getattr(datasets, f"load_{name}")(return_X_y=True)
        X = StandardScaler().fit_transform(X)
        return X, y, X, y, "gaussian", len(np.unique(y))
    if name.startswith("mnist"):
        ds = load_dataset("mnist", data_dir=str(ROOT / "data" / "mnist5k"))
    else:
        ds = load_dataset("digits")
    tr, te = ds.x_train.reshape(len(ds.x_train), -1), ds.x_test.reshape(len(ds.x_test), -1)
    ytr, yte = ds.y_train, ds.y_test
    if name in ("mnist16_bin", "mnist32_bin"):    # other resolutions and sizes, binary
        from scipy.ndimage import zoom

        n = 1600 if name == "mnist16_bin" else 1900
        side = 16 if name == "mnist16_bin" else 32
        def resize(a):
            a = a.reshape(-1, 28, 28)
            if side == 32:                            # padded, as a 32x32 bitmap of the digit
                return np.pad(a, ((0, 0), (2, 2), (2, 2))).reshape(len(a), -1)
            return np.stack([zoom(im, side / 28, order=1) for im in a]).reshape(len(a), -1)
        tr, te, ytr, yte = resize(tr[:n]), resize(te[:400]), ytr[:n], yte[:400]
    if name.endswith("_bin"):
        tr, te = (tr > 0.5).astype(np.float32), (te > 0.5).astype(np.float32)
    if name.endswith("14"):
        pool = lambda a: a.reshape(-1, 14, 2, 14, 2).mean((2, 4)).reshape(len(a), -1)
        tr, te = pool(tr), pool(te)
    return tr, ytr, te, yte, "bernoulli", 10


def main(argv):
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.mixture import GaussianMixture

    from scratchvae import GMVAE
    from scratchvae.metrics import cluster_acc

    name, seed = argv[0], int(argv[1])
    X, y, Xt, yt, lik, K = get(name)
    kw = gmvae_options(argv[2:])
    t = time.time()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        g = GMVAE(random_state=seed, likelihood=lik, clusters=K, **kw).fit(X, y)
    ev = g.evaluate(Xt, yt, k=50)
    km = cluster_acc(y, KMeans(K, n_init=10, random_state=seed).fit_predict(X))
    P = PCA(min(10, X.shape[1]), random_state=seed).fit_transform(X)
    gm = cluster_acc(y, GaussianMixture(K, n_init=3, random_state=seed).fit(P).predict(P))
    print(f"{name} {seed} {kw} partition {g.fit_info_['partition_acc']:.3f} final "
          f"{cluster_acc(y, g.labels_):.3f} agree {g.fit_info_['partition_agreement']:.3f} "
          f"test {ev['acc']:.3f} iwae50 {ev['iwae_ll']:.2f} elbo {ev['elbo']:.2f} "
          f"kmeans {km:.3f} pca_gmm {gm:.3f} warm-ups "
          + "/".join(f"{a['var_ratio']:.4f}:{a['agreement']:.3f},{a['agreement_em']:.3f}"
                     for a in g.fit_info_.get("anchor_rounds", []))
          + f" {time.time() - t:.0f}s", flush=True)


if __name__ == "__main__":
    if len(sys.argv) < 3:
        raise SystemExit(__doc__)
    main(sys.argv[1:])
