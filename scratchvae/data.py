"""Floor 5: data sets as host NumPy arrays.

Three sources, one result (a :class:`Dataset` of float32 ``(N, D)`` arrays):

* ``digits`` -- scikit-learn's bundled 8x8 digits; no network, scaled to [0, 1] by /16 and split
  into train/test by a seeded permutation;
* ``mnist`` and ``fashion-mnist`` -- the four standard IDX files (gzipped or not) from a data
  directory, with the standard 60k/10k split; :func:`download` fetches them and checks SHA-256;
* the user's own ``.npy`` / ``.npz`` arrays, split like digits.

Everything here works on host arrays; the training loop moves batches to the device. Every
problem a user can cause (a missing file, a corrupt download, NaNs, data outside [0, 1] for a
Bernoulli likelihood) is a :class:`DataError` whose message says what is wrong and how to fix it.
"""
from __future__ import annotations

import math
import numbers
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import DataError
from .idx import IDX_FILES, MIRRORS, SHA256, download, read_idx  # noqa: F401  (the public API)

DATASETS = ("digits", "mnist", "fashion-mnist")
DEFAULT_DATA_DIR = Path("data")
LIKELIHOODS = ("bernoulli", "gaussian")

X_KEYS = ("x", "X", "data")  # accepted names of the features in a user's .npz
Y_KEYS = ("y", "Y", "labels")  # accepted names of the (optional) labels


@dataclass(repr=False)
class Dataset:
    """Train and test arrays on the host.

    ``x_*``: (N, D) float32 in the data's natural scale ([0, 1] for images).
    ``y_*``: (N,) int64 labels, or None when the data has none.
    ``image_shape``: (H, W) for images, None for a table (drawn feature by feature).
    """

    name: str
    x_train: np.ndarray
    y_train: np.ndarray | None
    x_test: np.ndarray
    y_test: np.ndarray | None
    image_shape: tuple | None

    @property
    def D(self) -> int:
        """Number of features per example."""
        return int(self.x_train.shape[1])

    @property
    def n_classes(self) -> int | None:
        """1 + the largest label in either split, or None without labels."""
        if self.y_train is None:
            return None
        return int(max(self.y_train.max(initial=-1), self.y_test.max(initial=-1))) + 1

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}, train={self.x_train.shape}, test={self.x_test.shape}, "
            f"n_classes={self.n_classes}, image_shape={self.image_shape})"
        )


# ---------------------------------------------------------------------------------- loading
def load_dataset(
    name="digits",
    data_dir=None,
    path=None,
    *,
    test_fraction=0.2,
    split_seed=0,
    download=False,
    limit=None,
) -> Dataset:
    """Load a built-in data set by ``name``, or the user's ``.npy``/``.npz`` file at ``path``
    (which, when given, takes precedence over ``name``).

    ``data_dir`` (default ``./data``) holds the MNIST / Fashion-MNIST IDX files, directly or in
    a subfolder named after the data set; ``download=True`` fetches missing ones there.
    ``test_fraction`` and ``split_seed`` define the train/test split of digits and user data
    (MNIST keeps its standard split). ``limit`` keeps the first ``limit`` training examples and
    at most ``limit`` test examples, for quick runs.
    """
    is_count = isinstance(limit, numbers.Integral) and not isinstance(limit, bool)
    if limit is not None and not (is_count and limit >= 1):
        raise DataError(f"limit must be a positive integer or None, got {limit!r}")
    if path is not None:
        ds = _load_arrays(Path(path), test_fraction, split_seed)
    else:
        key = str(name).lower().replace("_", "-")
        if key == "digits":
            ds = _load_digits(test_fraction, split_seed)
        elif key in MIRRORS:
            ds = _load_idx_set(key, Path(data_dir or DEFAULT_DATA_DIR), download)
        else:
            raise DataError(
                f"unknown data set {name!r}; choose one of {', '.join(DATASETS)}, "
                "or give the path of your own .npy / .npz file"
            )
    if limit is not None:
        ds = Dataset(
            ds.name,
            ds.x_train[:limit],
            None if ds.y_train is None else ds.y_train[:limit],
            ds.x_test[:limit],
            None if ds.y_test is None else ds.y_test[:limit],
            ds.image_shape,
        )
    return ds


def _split(x, y, test_fraction, split_seed):
    """Seeded random train/test split: (x_train, y_train, x_test, y_test)."""
    is_number = isinstance(test_fraction, (int, float)) and not isinstance(test_fraction, bool)
    if not (is_number and 0 < test_fraction < 1):
        raise DataError(f"test_fraction must lie strictly between 0 and 1, got {test_fraction!r}")
    n = x.shape[0]
    if n < 2:
        raise DataError(f"need at least 2 examples to make a train/test split, got {n}")
    n_test = min(max(round(n * test_fraction), 1), n - 1)
    perm = np.random.default_rng(split_seed).permutation(n)
    test, train = perm[:n_test], perm[n_test:]
    if y is None:
        return x[train], None, x[test], None
    return x[train], y[train], x[test], y[test]


def _load_digits(test_fraction, split_seed) -> Dataset:
    """scikit-learn's 8x8 digits, scaled to [0, 1]."""
    from sklearn.datasets import load_digits

    X, y = load_digits(return_X_y=True)
    x = (X / 16.0).astype(np.float32)
    return Dataset("digits", *_split(x, y.astype(np.int64), test_fraction, split_seed), (8, 8))


def _find_idx_files(name: str, data_dir: Path):
    """The four IDX paths from the first folder that has them all, or (None, report)."""
    folders = (data_dir / name, data_dir)  # the named subfolder first, so sets don't mix
    missing = {}
    for folder in folders:
        found = []
        for base in IDX_FILES:
            candidates = (folder / f"{base}.gz", folder / base)
            found.append(next((p for p in candidates if _exists(p)), None))
        if all(found):
            return found, None
        missing[folder] = [f"{b}.gz" for b, p in zip(IDX_FILES, found) if p is None]
    return None, missing


def _exists(path: Path) -> bool:
    """Whether something is at ``path`` (read_idx says what is wrong with a folder or FIFO);
    a folder that cannot be searched is a DataError, not a PermissionError."""
    try:
        os.stat(path)
        return True
    except (FileNotFoundError, NotADirectoryError):
        return False
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror}){_hint(exc)}") from exc


def _hint(exc: OSError) -> str:
    return "; check its permissions" if isinstance(exc, PermissionError) else ""


def _load_idx_set(name: str, data_dir: Path, download_missing: bool) -> Dataset:
    """MNIST or Fashion-MNIST from IDX files, pixels scaled to [0, 1]."""
    paths, missing = _find_idx_files(name, data_dir)
    if paths is None and download_missing:
        download(name, data_dir)
        paths, missing = _find_idx_files(name, data_dir)
    if paths is None:
        target = data_dir / name
        raise DataError(
            f"{name}: missing {', '.join(missing[target])} in {target} "
            f"(also looked in {data_dir}); put the four IDX files there (gzipped or not) "
            "or run with --download to fetch them"
        )
    x_train, y_train = _images_and_labels(paths[0], paths[1])
    x_test, y_test = _images_and_labels(paths[2], paths[3])
    if x_train.shape[1:] != x_test.shape[1:]:
        raise DataError(
            f"{name}: train images are {x_train.shape[1:]} but test images are "
            f"{x_test.shape[1:]}; the four files must come from the same data set"
        )
    image_shape = tuple(int(s) for s in x_train.shape[1:])
    return Dataset(name, _pixels(x_train), y_train, _pixels(x_test), y_test, image_shape)


def _pixels(images: np.ndarray) -> np.ndarray:
    """(N, H, W) uint8 -> (N, H*W) float32 in [0, 1]."""
    return images.reshape(images.shape[0], -1).astype(np.float32) / np.float32(255.0)


def _images_and_labels(image_path: Path, label_path: Path):
    """(N, H, W) uint8 images and (N,) int64 labels from a matching pair of IDX files."""
    images, labels = read_idx(image_path), read_idx(label_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise DataError(
            f"{image_path}: expected unsigned-byte images of shape (N, H, W), got "
            f"{images.dtype} {images.shape}; is this the right file?"
        )
    if 0 in images.shape:
        raise DataError(f"{image_path}: holds {images.shape[0]} images of {images.shape[1]}x"
                        f"{images.shape[2]} pixels; there is no data, fetch the file again")
    if labels.ndim != 1:
        raise DataError(f"{label_path}: expected labels of shape (N,), got {labels.shape}")
    if labels.dtype.kind not in "iu":
        raise DataError(f"{label_path}: labels are {labels.dtype} numbers; they must be integer "
                        "class indices (IDX type 0x08, 0x09, 0x0B or 0x0C)")
    if labels.size and labels.min() < 0:
        raise DataError(f"{label_path}: labels must be non-negative class indices, found "
                        f"{labels.min()}")
    if labels.shape[0] != images.shape[0]:
        raise DataError(
            f"{label_path} has {labels.shape[0]} labels but {image_path} has "
            f"{images.shape[0]} images; the two files must come from the same release"
        )
    return images, labels.astype(np.int64)


def _load_arrays(path: Path, test_fraction, split_seed) -> Dataset:
    """The user's own features (and optional labels) from a .npy or .npz file."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror}){_hint(exc)}") from exc
    if path.suffix not in (".npy", ".npz"):
        if st is None and not path.parent.name:   # a bare word: a data set name mistyped
            raise DataError(f"unknown data set {str(path)!r}; choose one of {', '.join(DATASETS)}, "
                            "or give the path of your own .npy / .npz file")
        raise DataError(f"{path}: expected a .npy or .npz file, got {path.suffix or 'no extension'!r}")
    if st is None:
        raise DataError(f"{path}: no such file; check the path")
    if not stat.S_ISREG(st.st_mode):                # a folder, or a FIFO that would block
        what = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise DataError(f"{path}: {what}, not a {path.suffix} file; give the path of the file")
    y = None
    try:
        if path.suffix == ".npy":
            x = np.load(path, allow_pickle=False)
        else:
            with np.load(path, allow_pickle=False) as npz:
                x_key = next((k for k in X_KEYS if k in npz.files), None)
                if x_key is None:
                    raise DataError(
                        f"{path}: no features found (keys: {', '.join(npz.files) or 'none'}); "
                        f"save them under the key 'x', e.g. np.savez(path, x=x, y=y)"
                    )
                x = npz[x_key]
                y_key = next((k for k in Y_KEYS if k in npz.files), None)
                y = None if y_key is None else npz[y_key]
    except DataError:
        raise
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc}){_hint(exc)}") from exc
    except Exception as exc:  # object arrays, pickles, corrupt zip, truncated header ...
        if "Object arrays" in str(exc):
            raise DataError(
                f"{path}: holds Python objects (dtype=object), which are not loaded for safety; "
                "save a numeric array instead, e.g. np.save(path, x.astype(np.float32))"
            ) from exc
        # NumPy reports any file without the .npy magic as possibly "pickled"; say what we know
        raise DataError(
            f"{path}: not a readable NumPy {path.suffix} file (no valid header, or it holds pickled "
            "objects, which are never loaded); save a numeric array with np.save / np.savez"
        ) from exc

    if not (np.issubdtype(x.dtype, np.integer) or np.issubdtype(x.dtype, np.floating) or x.dtype == bool):
        raise DataError(f"{path}: features have dtype {x.dtype}; they must be numbers (int or float)")
    if x.ndim < 2:
        raise DataError(
            f"{path}: features have shape {x.shape}; expected (N, D) or (N, ...) with one row "
            "per example (for a single feature use x[:, None])"
        )
    if x.size == 0:
        raise DataError(f"{path}: features have shape {x.shape}; there is no data")
    shape = x.shape
    with np.errstate(over="ignore"):  # out-of-range float64 becomes inf, which validate reports
        x = x.reshape(x.shape[0], -1).astype(np.float32)
    validate(x, "gaussian", where=str(path))  # row numbers refer to the file, before the split

    if y is not None:
        if y.ndim != 1 or y.shape[0] != x.shape[0]:
            raise DataError(
                f"{path}: labels have shape {y.shape} but there are {x.shape[0]} examples; "
                "give one integer label per row of x"
            )
        if not np.issubdtype(y.dtype, np.integer):
            raise DataError(f"{path}: labels have dtype {y.dtype}; they must be integers")
        if y.min() < 0:
            raise DataError(f"{path}: labels must be non-negative class indices, found {y.min()}")
        y = y.astype(np.int64)

    return Dataset(path.name, *_split(x, y, test_fraction, split_seed), _shape_of(shape, x))


def _shape_of(shape, x):
    """A user array's image shape, or None for a table: (H, W) when it was stored as images
    (N, H, W) or (N, H, W, 1); for (N, D), (s, s) only when D = s^2 and every value lies in
    [0, 1] (pixel intensities; standardised tabular features are not drawn as images)."""
    if len(shape) == 3 or (len(shape) == 4 and shape[3] == 1):
        return (int(shape[1]), int(shape[2]))
    if len(shape) != 2:
        return None
    side = math.isqrt(x.shape[1])
    square = side > 1 and side * side == x.shape[1]
    return (side, side) if square and float(x.min()) >= 0 and float(x.max()) <= 1 else None


# ---------------------------------------------------------------------------------- checks
def validate(x, likelihood: str, where: str = "data") -> None:
    """Raise DataError unless ``x`` (rows = examples) suits the likelihood.

    Every likelihood needs finite values; "bernoulli" also needs every value in [0, 1].
    """
    if likelihood not in LIKELIHOODS:
        raise DataError(f"unknown likelihood {likelihood!r}; choose one of {', '.join(LIKELIHOODS)}")
    x = np.asarray(x)
    rows = x.reshape(x.shape[0], -1) if x.ndim > 1 and x.size else x.reshape(-1, 1)  # (N, D)
    bad = np.flatnonzero(~np.isfinite(rows).all(axis=1))
    if bad.size:
        raise DataError(
            f"{where}: {bad.size} row(s) contain NaN or inf ({_row_list(bad)}); "
            "remove or impute them before training"
        )
    if likelihood == "bernoulli" and rows.size:
        bad = np.flatnonzero(((rows < 0) | (rows > 1)).any(axis=1))
        if bad.size:
            raise DataError(
                f"{where}: {bad.size} row(s) have values outside [0, 1] ({_row_list(bad)}; "
                f"min {rows.min():.4g}, max {rows.max():.4g}), which a Bernoulli likelihood "
                "cannot model; rescale the data to [0, 1] or use --likelihood gaussian"
            )


def _row_list(rows: np.ndarray) -> str:
    """'rows 3, 7, 9' -- at most the first 10 indices, then an ellipsis."""
    shown = ", ".join(str(int(r)) for r in rows[:10])
    return f"rows {shown}{', ...' if rows.size > 10 else ''}"
