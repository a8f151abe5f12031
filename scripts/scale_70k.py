"""The default GMVAE recipe on 70 000 MNIST-sized images, phase by phase: the 5000 images of the
MNIST subset (``data/mnist5k``, written by ``scripts/mnist5k_to_idx.py``), 14 copies, each image
shifted by a random (dy, dx) in [-2, 2]^2.  Prints the seconds of each phase, then one JSON line
(totals, the partition's and the GMVAE's training ACC, their agreement) and the per-epoch trails.

    OPENBLAS_NUM_THREADS=1 python scripts/scale_70k.py [OPTION=VALUE ...]

OPTION=VALUE pairs are GMVAE options (e.g. ``latent_dim=20``), as in ``scripts/other_data.py``.
"""
import sys, time, json, numpy as np, warnings
from pathlib import Path
ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
warnings.filterwarnings("ignore")
import scratchvae.recipe as R, scratchvae.cluster as C
from scratchvae import GMVAE
from scratchvae.data import load_dataset
from scratchvae.metrics import cluster_acc
ds = load_dataset("mnist", data_dir=str(ROOT / "data" / "mnist5k"))
X0 = np.concatenate([ds.x_train, ds.x_test]).reshape(-1, 28, 28)
y0 = np.concatenate([ds.y_train, ds.y_test])
rng = np.random.default_rng(0)
imgs, ys = [], []
for c in range(14):
    sh = rng.integers(-2, 3, (len(X0), 2))
    out = np.zeros_like(X0)
    for (dy, dx) in set(map(tuple, sh)):
        m = (sh[:, 0] == dy) & (sh[:, 1] == dx)
        out[m] = np.roll(np.roll(X0[m], dy, 1), dx, 2)
    imgs.append(out.reshape(len(X0), -1)); ys.append(y0)
X, y = np.concatenate(imgs).astype(np.float32), np.concatenate(ys)
print("data", X.shape, flush=True)
T = {}
def timed(name, f):
    def g(*a, **k):
        t = time.perf_counter(); r = f(*a, **k); T[name] = T.get(name, 0) + time.perf_counter() - t
        print(f"  {name}: {T[name]:.1f}s", flush=True); return r
    return g
R.fit = timed("recipe fit (pretrain, warm-up)", R.fit)
C.knn_graph = timed("knn graphs", C.knn_graph)
C.overclustered_partition = timed("eigenvectors + k-means + merges", C.overclustered_partition)
C.graph_partition = timed("graph partition (all)", C.graph_partition)
t = time.perf_counter()
from other_data import gmvae_options   # noqa: E402 (this folder is on sys.path)
kw = gmvae_options(sys.argv[1:])
print("options", kw, flush=True)
g = GMVAE(random_state=0, **kw).fit(X, y)
total = time.perf_counter() - t
hook = sum(1 for _ in g.history_)
print(json.dumps({"total_s": round(total, 1), "recipe_s": round(g.fit_info_["recipe_seconds"], 1),
                  "elbo_stage_s": round(g.fit_seconds_ - g.fit_info_["recipe_seconds"], 1),
                  "pretrain_epochs": g.fit_info_["pretrain_epochs"], **{k: round(v, 1) for k, v in T.items()},
                  "partition_acc": round(g.fit_info_["partition_acc"], 3),
                  "train_acc": round(cluster_acc(y, g.labels_), 3),
                  "agreement": round(g.fit_info_["partition_agreement"], 3),
                  "anchor_rounds": g.fit_info_.get("anchor_rounds")}), flush=True)
tr = g.tracking_
print("acc trail", [(e, round(a, 3)) for e, a in zip(tr["epoch"], tr["acc"])][::2], flush=True)
print("agree trail", [round(r.get("partition_agreement", -1), 3) for r in g.history_][::2], "reseeded", tr["reseeded"], flush=True)
