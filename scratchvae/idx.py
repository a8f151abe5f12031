"""Floor 5: the IDX file format of MNIST and Fashion-MNIST, and their checked download.

:func:`read_idx` parses one file (gzipped or not) into a native-endian array, refusing anything
truncated, padded or mislabelled with a :class:`~scratchvae.errors.DataError` that says how to
fix it; :func:`download` fetches the four files of a data set from its mirrors and keeps a file
only once its SHA-256 matches the published digest.
"""
from __future__ import annotations

import gzip
import hashlib
import http.client
import math
import os
import stat
import tempfile
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from .errors import DataError

# The four IDX files of MNIST and Fashion-MNIST (same names for both), in load order.
IDX_FILES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)

# Mirrors, tried in order. ossci-datasets is torchvision's MNIST mirror, cvdf-datasets
# TensorFlow's; the Fashion-MNIST bucket's website endpoint is HTTP only, so its HTTPS REST
# endpoint comes first (the SHA-256 check below is what guarantees the bytes either way).
MIRRORS = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
    ),
    "fashion-mnist": (
        "https://fashion-mnist.s3.eu-central-1.amazonaws.com/",
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
    ),
}

# SHA-256 of the published .gz files, as listed by torchvision
# (pytorch/vision, torchvision/prototype/datasets/_builtin/mnist.py) and by many independent
# projects that pin the same files.
SHA256 = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    },
}

# IDX element type code -> NumPy dtype (multi-byte types are big-endian in the file).
IDX_DTYPES = {
    0x08: np.dtype("u1"),
    0x09: np.dtype("i1"),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}

# ---------------------------------------------------------------------------------- IDX
def read_idx(path) -> np.ndarray:
    """Parse an IDX file (gzipped when the name ends in .gz) into a native-endian array.

    Layout: two zero bytes, a type code, the number of dimensions ``k``; ``k`` big-endian
    uint32 sizes; then the elements, row-major, big-endian.  The file is streamed: at most the
    size its header promises plus 1 MiB (to report trailing garbage) is ever read, so a small
    gzip that expands to gigabytes is refused after reading what its header promised.
    """
    path = Path(path)
    try:
        st = os.stat(path)
    except FileNotFoundError as exc:
        raise DataError(f"{path}: no such file") from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from exc
    if not stat.S_ISREG(st.st_mode):   # a folder, or a FIFO that would block
        what = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise DataError(f"{path}: {what}, not an IDX file")
    try:
        with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as f:
            return _parse_idx(path, f)
    except DataError:
        raise
    except (EOFError, zlib.error, gzip.BadGzipFile) as exc:
        raise DataError(
            f"{path}: corrupt or incomplete gzip file ({exc}); delete it and download it again"
        ) from exc
    except OSError as exc:
        raise DataError(f"{path}: cannot be read ({exc.strerror or exc})") from exc


_EXTRA = 1 << 20   # bytes read past the promised end, to say how much garbage follows


def _read_upto(f, n: int) -> bytes:
    """Up to ``n`` bytes from ``f`` (fewer only at the end of the file)."""
    parts, left = [], n
    while left > 0:
        chunk = f.read(min(left, 1 << 22))
        if not chunk:
            break
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


def _parse_idx(path: Path, f) -> np.ndarray:
    raw = _read_upto(f, 4)
    if len(raw) < 4:
        raise DataError(f"{path}: truncated IDX file ({len(raw)} bytes, shorter than the header)")
    if raw[0] != 0 or raw[1] != 0:
        raise DataError(
            f"{path}: not an IDX file (starts with bytes {raw[:2].hex()}, expected 0000); "
            "if it is gzipped its name must end in .gz"
        )
    code, ndim = raw[2], raw[3]
    if code not in IDX_DTYPES:
        raise DataError(f"{path}: unknown IDX element type 0x{code:02X}")
    header = 4 + 4 * ndim
    raw += _read_upto(f, header - 4)
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX file (header promises {ndim} dimensions)")
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">u4", count=ndim, offset=4))
    dtype = IDX_DTYPES[code]
    expected = header + math.prod(shape) * dtype.itemsize
    body = _read_upto(f, expected - header + _EXTRA)
    size = header + len(body)
    if size < expected:
        raise DataError(
            f"{path}: truncated IDX file ({size} bytes, the header {shape} promises "
            f"{expected}); delete it and fetch it again"
        )
    if size > expected:
        extra = f"{size - expected}" if size - expected < _EXTRA else "over 1 MiB of"
        raise DataError(
            f"{path}: {extra} unexpected bytes after the data promised by the header {shape}; "
            "the file is damaged, fetch it again"
        )
    data = np.frombuffer(body, dtype=dtype, count=math.prod(shape))
    return data.astype(dtype.newbyteorder("="), copy=True).reshape(shape)


# ---------------------------------------------------------------------------------- download
def download(name, data_dir) -> None:
    """Fetch the four .gz files of ``name`` into ``data_dir/name``, checking SHA-256.

    Files already there with the right digest are kept. Each download goes to a temporary file
    in the same folder and is renamed into place only once its digest matches, so an
    interrupted or corrupt download never leaves a half-written file behind.
    """
    key = str(name).lower().replace("_", "-")
    if key not in SHA256:
        hint = " (digits ships with scikit-learn and needs no download)" if key == "digits" else ""
        raise DataError(f"cannot download {name!r}: choose mnist or fashion-mnist{hint}")
    target = Path(data_dir) / key
    try:
        target.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(f"cannot create {target} ({exc.strerror or exc}); choose another data dir") from exc
    for filename, digest in SHA256[key].items():
        dest = target / filename
        if dest.is_file() and _sha256_of(dest) == digest:
            continue
        _fetch(key, filename, digest, dest)


def _sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fetch(name: str, filename: str, digest: str, dest: Path) -> None:
    """Try each mirror in turn; raise DataError with every mirror's failure if none works."""
    failures = []
    for base in MIRRORS[name]:
        url = base + filename
        tmp = None
        try:
            fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{filename}.", suffix=".part")
            h = hashlib.sha256()
            with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
                for chunk in iter(lambda: response.read(1 << 20), b""):
                    h.update(chunk)
                    out.write(chunk)
            if h.hexdigest() == digest:
                os.replace(tmp, dest)
                return
            failures.append(f"{url}: SHA-256 mismatch (got {h.hexdigest()}, expected {digest})")
        except (OSError, http.client.HTTPException, ValueError) as exc:
            failures.append(f"{url}: {exc}")
        finally:
            if tmp is not None and os.path.exists(tmp):
                os.remove(tmp)
    raise DataError(
        f"download of {name} file {filename} failed ({'; '.join(failures)}); if you are offline, "
        f"fetch {', '.join(SHA256[name])} from {MIRRORS[name][0]} by hand into {dest.parent} "
        f"(SHA-256 digests in scratchvae/idx.py), then run again without --download"
    )
