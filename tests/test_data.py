"""Tests for scratchvae.data: IDX parsing, the MNIST-style loader, downloads (no network),
digits, the user's own arrays, and validate()."""
import gzip
import hashlib
import io
import struct
import urllib.error

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from scratchvae import data, idx
from scratchvae.data import DataError, load_dataset, read_idx, validate

CODES = {"u1": 0x08, "i1": 0x09, ">i2": 0x0B, ">i4": 0x0C, ">f4": 0x0D, ">f8": 0x0E}


def idx_bytes(a: np.ndarray) -> bytes:
    """Serialise an array as IDX: 00 00, type code, ndim, big-endian dims, big-endian data."""
    a = np.asarray(a)
    be = a.dtype.newbyteorder(">") if a.dtype.itemsize > 1 else a.dtype
    code = CODES[be.str.lstrip("|")]
    header = bytes([0, 0, code, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape)
    return header + a.astype(be).tobytes()


def write_idx(path, a, raw: bytes | None = None):
    """Write ``a`` (or ``raw`` bytes) as an IDX file, gzipped when the name ends in .gz."""
    payload = idx_bytes(a) if raw is None else raw
    path.write_bytes(gzip.compress(payload) if path.name.endswith(".gz") else payload)
    return path


def synthetic_set(folder, n_train=20, n_test=5, gz=True, seed=0):
    """The four MNIST-style files in ``folder``; returns the arrays written."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, n_test, dtype=np.uint8),
    }
    for base, a in arrays.items():
        write_idx(folder / (base + (".gz" if gz else "")), a)
    return arrays


# ---------------------------------------------------------------------------------- read_idx
@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", list(CODES))
def test_read_idx_round_trip(tmp_path, dtype, gz):
    a = (np.arange(60) - (0 if dtype == "u1" else 30)).reshape(3, 4, 5)
    a = (a / 7 if "f" in dtype else a).astype(dtype)
    path = write_idx(tmp_path / ("a.idx" + (".gz" if gz else "")), a)
    out = read_idx(path)
    assert out.shape == (3, 4, 5)
    assert out.dtype == np.dtype(dtype).newbyteorder("=")
    assert out.dtype.isnative
    np.testing.assert_array_equal(out, a)
    out[0, 0, 0] = 1  # a writable copy, not a view of the file's bytes


@settings(max_examples=40, deadline=None)
@given(
    hnp.arrays(
        dtype=st.sampled_from([np.uint8, np.int16, np.int32, np.float64]),
        shape=hnp.array_shapes(min_dims=1, max_dims=4, min_side=0, max_side=5),
    )
)
def test_read_idx_round_trip_property(tmp_path_factory, a):
    path = write_idx(tmp_path_factory.mktemp("idx") / "x.idx", a)
    np.testing.assert_array_equal(read_idx(path), a)


def good_idx():
    return idx_bytes(np.arange(12, dtype=np.uint8).reshape(3, 4))


@pytest.mark.parametrize(
    "name, raw, words",
    [
        ("truncated.idx", good_idx()[:-1], "truncated"),
        ("short-header.idx", b"\x00\x00", "truncated"),
        ("short-dims.idx", b"\x00\x00\x08\x02\x00\x00\x00\x03", "truncated"),
        ("magic.idx", b"\x01" + good_idx()[1:], "not an IDX file"),
        ("dtype.idx", b"\x00\x00\x07" + good_idx()[3:], "unknown IDX element type 0x07"),
        ("trailing.idx", good_idx() + b"\x00\x00", "2 unexpected bytes"),
        ("trailing.idx.gz", good_idx() + b"junk", "4 unexpected bytes"),
        ("truncated.idx.gz", good_idx()[:-3], "truncated"),
    ],
)
def test_read_idx_rejects_damaged_files(tmp_path, name, raw, words):
    path = write_idx(tmp_path / name, None, raw=raw)
    with pytest.raises(DataError, match=words) as err:
        read_idx(path)
    assert str(path) in str(err.value)


def test_read_idx_rejects_corrupt_gzip(tmp_path):
    blob = gzip.compress(good_idx())
    cut = tmp_path / "cut.idx.gz"
    cut.write_bytes(blob[: len(blob) // 2])
    flipped = tmp_path / "flipped.idx.gz"
    flipped.write_bytes(blob[:12] + bytes(b ^ 0xFF for b in blob[12:]))
    not_gzip = tmp_path / "plain.idx.gz"
    not_gzip.write_bytes(good_idx())
    for path in (cut, flipped, not_gzip):
        with pytest.raises(DataError, match="gzip") as err:
            read_idx(path)
        assert str(path) in str(err.value)


def test_read_idx_missing_file(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        read_idx(tmp_path / "nope.idx")


# ---------------------------------------------------------------------------------- MNIST loader
@pytest.mark.parametrize("gz", [True, False])
def test_mnist_loader_reads_synthetic_set(tmp_path, gz):
    arrays = synthetic_set(tmp_path / "mnist", gz=gz)
    ds = load_dataset("mnist", data_dir=tmp_path)
    assert ds.name == "mnist"
    assert ds.x_train.shape == (20, 784) and ds.x_test.shape == (5, 784)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.image_shape == (28, 28) and ds.D == 784
    pixels = arrays["train-images-idx3-ubyte"].reshape(20, -1)
    np.testing.assert_allclose(ds.x_train, pixels / 255.0, rtol=1e-6)
    np.testing.assert_array_equal(ds.y_test, arrays["t10k-labels-idx1-ubyte"])
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    labels = np.concatenate([arrays["train-labels-idx1-ubyte"], arrays["t10k-labels-idx1-ubyte"]])
    assert ds.n_classes == labels.max() + 1


def test_loader_prefers_the_named_subfolder_and_accepts_a_flat_dir(tmp_path):
    flat = synthetic_set(tmp_path, seed=1)  # e.g. MNIST dropped straight into data/
    sub = synthetic_set(tmp_path / "fashion-mnist", seed=2)
    fashion = load_dataset("fashion-mnist", data_dir=tmp_path)
    np.testing.assert_array_equal(fashion.y_train, sub["train-labels-idx1-ubyte"])
    mnist = load_dataset("mnist", data_dir=str(tmp_path))  # no mnist/ subfolder: the flat files
    np.testing.assert_array_equal(mnist.y_train, flat["train-labels-idx1-ubyte"])


def test_limit_keeps_the_first_examples(tmp_path):
    arrays = synthetic_set(tmp_path / "mnist")
    ds = load_dataset("mnist", data_dir=tmp_path, limit=7)
    assert ds.x_train.shape == (7, 784) and ds.x_test.shape == (5, 784)
    np.testing.assert_array_equal(ds.y_train, arrays["train-labels-idx1-ubyte"][:7])
    pixels = arrays["train-images-idx3-ubyte"][:7].reshape(7, -1)
    np.testing.assert_allclose(ds.x_train * 255, pixels, atol=1e-4)
    assert load_dataset("mnist", data_dir=tmp_path, limit=3).x_test.shape == (3, 784)
    with pytest.raises(DataError, match="limit must be a positive integer"):
        load_dataset("mnist", data_dir=tmp_path, limit=0)


def test_label_count_must_match_images(tmp_path):
    synthetic_set(tmp_path / "mnist")
    labels = write_idx(tmp_path / "mnist" / "train-labels-idx1-ubyte.gz", np.zeros(19, np.uint8))
    with pytest.raises(DataError, match="19 labels but .* 20 images") as err:
        load_dataset("mnist", data_dir=tmp_path)
    assert str(labels) in str(err.value) and "train-images-idx3-ubyte.gz" in str(err.value)


def test_missing_files_message_names_files_dir_and_download_flag(tmp_path):
    (tmp_path / "mnist").mkdir()
    write_idx(tmp_path / "mnist" / "train-images-idx3-ubyte.gz", np.zeros((2, 28, 28), np.uint8))
    with pytest.raises(DataError) as err:
        load_dataset("mnist", data_dir=tmp_path)
    msg = str(err.value)
    for name in ("train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        assert name in msg
    assert "train-images-idx3-ubyte.gz" not in msg.split(" in ")[0]  # present, so not listed
    assert str(tmp_path / "mnist") in msg and "--download" in msg


# ---------------------------------------------------------------------------------- download
def test_download_offline_says_where_to_put_files_and_leaves_nothing(tmp_path, monkeypatch):
    def offline(url, timeout=None):
        raise urllib.error.URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(idx.urllib.request, "urlopen", offline)
    with pytest.raises(DataError) as err:
        load_dataset("mnist", data_dir=tmp_path, download=True)
    msg = str(err.value)
    assert "download" in msg and "failed" in msg and "name resolution" in msg
    assert f"by hand into {tmp_path / 'mnist'}" in msg and data.MIRRORS["mnist"][0] in msg
    assert all(name in msg for name in data.SHA256["mnist"])
    assert list((tmp_path / "mnist").iterdir()) == []


def test_download_rejects_wrong_bytes(tmp_path, monkeypatch):
    monkeypatch.setattr(idx.urllib.request, "urlopen", lambda url, timeout=None: io.BytesIO(b"not mnist"))
    with pytest.raises(DataError, match="SHA-256 mismatch") as err:
        data.download("fashion-mnist", tmp_path)
    assert hashlib.sha256(b"not mnist").hexdigest() in str(err.value)
    assert all(m in str(err.value) for m in data.MIRRORS["fashion-mnist"])  # every mirror tried
    assert list((tmp_path / "fashion-mnist").iterdir()) == []


def test_interrupted_download_leaves_no_partial_file(tmp_path, monkeypatch):
    class Dropped(io.BytesIO):
        def read(self, n=-1):
            if self.tell():
                raise ConnectionResetError("connection reset by peer")
            return super().read(5)

    monkeypatch.setattr(idx.urllib.request, "urlopen", lambda url, timeout=None: Dropped(b"x" * 100))
    with pytest.raises(DataError, match="connection reset"):
        data.download("mnist", tmp_path)
    assert list((tmp_path / "mnist").iterdir()) == []


def test_download_verifies_writes_and_then_loads(tmp_path, monkeypatch):
    synthetic_set(tmp_path / "source")
    served = {p.name: p.read_bytes() for p in (tmp_path / "source").iterdir()}
    monkeypatch.setitem(data.SHA256, "mnist", {f: hashlib.sha256(b).hexdigest() for f, b in served.items()})
    calls = []

    def fake_urlopen(url, timeout=None):
        calls.append(url)
        return io.BytesIO(served[url.rsplit("/", 1)[1]])

    monkeypatch.setattr(idx.urllib.request, "urlopen", fake_urlopen)
    ds = load_dataset("mnist", data_dir=tmp_path / "data", download=True)
    assert ds.x_train.shape == (20, 784)
    assert sorted(p.name for p in (tmp_path / "data" / "mnist").iterdir()) == sorted(served)
    assert len(calls) == 4 and calls[0].startswith(data.MIRRORS["mnist"][0])
    data.download("mnist", tmp_path / "data")  # all present with the right digest: no fetch
    assert len(calls) == 4


def test_download_refuses_digits(tmp_path):
    with pytest.raises(DataError, match="needs no download"):
        data.download("digits", tmp_path)


# ---------------------------------------------------------------------------------- digits
def test_digits_shapes_range_and_split():
    ds = load_dataset("digits")
    assert ds.x_train.shape == (1438, 64) and ds.x_test.shape == (359, 64)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int64
    assert ds.image_shape == (8, 8) and ds.n_classes == 10
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    # train and test together are exactly the 1797 digits, each once
    both = np.concatenate([ds.x_train, ds.x_test])
    from sklearn.datasets import load_digits

    X = load_digits().data / 16.0
    assert np.array_equal(np.sort(both.view(np.dtype((np.void, 256))).ravel()),
                          np.sort(X.astype(np.float32).view(np.dtype((np.void, 256))).ravel()))


def test_digits_split_is_deterministic_per_seed():
    a, b = load_dataset("digits", split_seed=3), load_dataset("digits", split_seed=3)
    c = load_dataset("digits", split_seed=4)
    np.testing.assert_array_equal(a.x_train, b.x_train)
    np.testing.assert_array_equal(a.y_test, b.y_test)
    assert not np.array_equal(a.x_train, c.x_train)
    assert load_dataset("digits", test_fraction=0.5).x_test.shape[0] == 898  # round(1797 / 2)


@pytest.mark.parametrize("bad", [0, 1, -0.1, 1.5, "0.2"])
def test_bad_test_fraction(bad):
    with pytest.raises(DataError, match="test_fraction"):
        load_dataset("digits", test_fraction=bad)


def test_unknown_name():
    with pytest.raises(DataError, match="unknown data set 'cifar'.*digits, mnist, fashion-mnist"):
        load_dataset("cifar")


# ---------------------------------------------------------------------------------- user arrays
def test_npy_images_are_flattened_and_split(tmp_path):
    x = np.random.default_rng(0).random((30, 4, 4))
    np.save(tmp_path / "faces.npy", x)
    ds = load_dataset(path=tmp_path / "faces.npy", test_fraction=0.2, split_seed=1)
    assert ds.name == "faces.npy"
    assert ds.x_train.shape == (24, 16) and ds.x_test.shape == (6, 16)
    assert ds.x_train.dtype == np.float32 and ds.image_shape == (4, 4)
    assert ds.y_train is None and ds.n_classes is None
    perm = np.random.default_rng(1).permutation(30)
    np.testing.assert_allclose(ds.x_test, x.reshape(30, 16)[perm[:6]].astype(np.float32))


@pytest.mark.parametrize("x_key, y_key", [("x", "y"), ("X", "labels"), ("data", None)])
def test_npz_keys(tmp_path, x_key, y_key):
    x = np.arange(50 * 5).reshape(50, 5)
    y = np.arange(50) % 3
    arrays = {x_key: x, **({y_key: y} if y_key else {})}
    np.savez(tmp_path / "mine.npz", **arrays)
    ds = load_dataset(path=str(tmp_path / "mine.npz"))
    assert ds.D == 5 and ds.image_shape is None
    assert ds.x_train.shape[0] + ds.x_test.shape[0] == 50
    if y_key:
        assert ds.n_classes == 3 and ds.y_train.dtype == np.int64
        # each row keeps its own label through the split
        np.testing.assert_array_equal(ds.y_train, (ds.x_train[:, 0].astype(int) // 5) % 3)
    else:
        assert ds.y_train is None and ds.y_test is None


def test_object_arrays_are_refused_without_pickle(tmp_path):
    obj = np.array([[1, "a"], [2, None]], dtype=object)
    np.save(tmp_path / "obj.npy", obj, allow_pickle=True)
    np.savez(tmp_path / "obj.npz", x=obj)
    for name in ("obj.npy", "obj.npz"):
        with pytest.raises(DataError, match="dtype=object") as err:
            load_dataset(path=tmp_path / name)
        assert name in str(err.value)
        assert not isinstance(err.value.__cause__, DataError)


@pytest.mark.parametrize(
    "arrays, words",
    [
        ({"x": np.zeros((10, 3)), "y": np.zeros(9, int)}, r"labels have shape \(9,\) but there are 10"),
        ({"x": np.zeros((10, 3)), "y": np.zeros(10)}, "labels have dtype float64"),
        ({"x": np.zeros((10, 3)), "y": -np.ones(10, int)}, "non-negative"),
        ({"x": np.zeros(10)}, r"shape \(10,\); expected \(N, D\)"),
        ({"x": np.zeros((0, 3))}, "no data"),
        ({"x": np.array([["a", "b"], ["c", "d"]])}, "must be numbers"),
        ({"features": np.zeros((10, 3))}, "no features found .*keys: features"),
        ({"x": np.zeros((1, 3))}, "at least 2 examples"),
    ],
)
def test_bad_user_arrays(tmp_path, arrays, words):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match=words):
        load_dataset(path=tmp_path / "bad.npz")


def test_user_file_problems(tmp_path):
    with pytest.raises(DataError, match="no such file"):
        load_dataset(path=tmp_path / "missing.npy")
    (tmp_path / "table.csv").write_text("1,2\n")
    with pytest.raises(DataError, match="expected a .npy or .npz file, got '.csv'"):
        load_dataset(path=tmp_path / "table.csv")
    (tmp_path / "junk.npy").write_bytes(b"not numpy at all")
    with pytest.raises(DataError, match="not a readable NumPy .np[yz] file"):
        load_dataset(path=tmp_path / "junk.npy")
    (tmp_path / "junk.npz").write_bytes(b"PK not a zip")
    with pytest.raises(DataError, match="not a readable NumPy .np[yz] file"):
        load_dataset(path=tmp_path / "junk.npz")


def test_user_nans_are_reported_by_file_row(tmp_path):
    x = np.ones((20, 3))
    x[[4, 11], 1] = np.nan
    np.save(tmp_path / "holes.npy", x)
    with pytest.raises(DataError, match=r"2 row\(s\) contain NaN or inf \(rows 4, 11\)") as err:
        load_dataset(path=tmp_path / "holes.npy")
    assert "holes.npy" in str(err.value)


# ---------------------------------------------------------------------------------- validate
def test_validate_lists_nan_rows():
    x = np.zeros((8, 3), np.float32)
    x[2, 0] = np.nan
    x[5, 2] = np.inf
    with pytest.raises(DataError, match=r"^train: 2 row\(s\) contain NaN or inf \(rows 2, 5\)"):
        validate(x, "gaussian", where="train")


def test_validate_lists_at_most_ten_rows():
    x = np.full((30, 2), np.nan)
    with pytest.raises(DataError) as err:
        validate(x, "bernoulli")
    msg = str(err.value)
    assert "30 row(s)" in msg and "rows 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, ..." in msg and "10," not in msg


def test_validate_bernoulli_range():
    x = np.full((6, 4), 0.5, np.float32)
    x[1, 0], x[3, 3] = -0.25, 3.0
    with pytest.raises(DataError) as err:
        validate(x, "bernoulli", where="my.npy")
    msg = str(err.value)
    assert msg.startswith("my.npy: 2 row(s) have values outside [0, 1] (rows 1, 3;")
    assert "min -0.25, max 3" in msg and "--likelihood gaussian" in msg
    validate(x, "gaussian")  # any finite values are fine for a Gaussian
    validate(np.clip(x, 0, 1), "bernoulli")
    validate(np.zeros((0, 4)), "bernoulli")


def test_validate_unknown_likelihood():
    with pytest.raises(DataError, match="unknown likelihood 'poisson'"):
        validate(np.zeros((2, 2)), "poisson")
