"""Floor 1: which array library.

A :class:`Backend` bundles everything the rest of the package needs to know about arrays:

* ``xp`` -- an array-API namespace from ``array_api_compat`` (NumPy or CuPy) or
  ``array_api_strict`` (tests: it refuses anything outside the standard, and on a non-default
  device it refuses hidden host transfers);
* ``dtype`` -- the float dtype (float32 to train, float64 to check gradients);
* a seeded device RNG: ``normal``, ``uniform``, ``permutation``;
* ``asarray`` (host -> device) and ``to_numpy`` (device -> host, always explicit);
* the few numerically careful functions the standard lacks: ``softplus``, ``sigmoid``,
  ``logsumexp``, ``log_softmax``, ``one_hot``.

Model code never imports numpy or cupy; it receives ``xp`` (and the backend) from here.

Randomness is *counter based*: ``backend.rng(*key)`` returns a generator seeded by
``(seed, *key)``.  The training loop asks for ``rng("step", step)``, so a run resumed from a
checkpoint at step ``t`` draws exactly the noise an uninterrupted run would have drawn.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .errors import ScratchVAEError

BACKENDS = ("numpy", "cupy", "strict")
MIN_BUFFER_BYTES = 480_000   # Workspace: smaller arrays are left to malloc (measured, RESULTS.md "Speed")
DTYPES = ("float32", "float64")


class BackendError(ScratchVAEError, RuntimeError):
    """A backend cannot be built here (library missing, no device, unknown name)."""


def _cupy_or_explain():
    try:
        import cupy  # noqa: F401
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise BackendError(
            "the cupy backend needs CuPy: install the wheel matching your CUDA, e.g. "
            "`pip install cupy-cuda12x`, or run with --backend numpy"
        ) from exc
    try:
        n = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # pragma: no cover - depends on the machine
        raise BackendError(
            f"CuPy is installed but no CUDA device is usable ({exc.__class__.__name__}: {exc}); "
            "run on a machine with an NVIDIA GPU or use --backend numpy"
        ) from exc
    if n < 1:  # pragma: no cover
        raise BackendError("CuPy found no CUDA device; use --backend numpy")
    return cupy


@dataclass
class Backend:
    """The array library, float dtype, device and seeded RNG used by everything above floor 1.

    ``name``   : "numpy" | "cupy" | "strict"
    ``dtype``  : "float32" | "float64"
    ``device`` : only for "strict": an ``array_api_strict.Device`` name such as "device1";
                 tests use a non-default device so that a hidden host transfer raises.
    """

    name: str = "numpy"
    dtype_name: str = "float32"
    seed: int = 0
    device_name: str | None = None
    xp: object = field(init=False, repr=False)
    dtype: object = field(init=False, repr=False)
    device: object = field(init=False, repr=False)
    ws: object = field(init=False, repr=False, default=None)   # the active Workspace, or None

    def __post_init__(self):
        if self.name not in BACKENDS:
            raise BackendError(f"unknown backend {self.name!r}; choose one of {', '.join(BACKENDS)}")
        if self.dtype_name not in DTYPES:
            raise BackendError(f"unknown dtype {self.dtype_name!r}; choose float32 or float64")
        self.device = None
        if self.name == "numpy":
            import array_api_compat.numpy as xp
        elif self.name == "cupy":
            _cupy_or_explain()
            import array_api_compat.cupy as xp
        else:
            import array_api_strict as xp

            if self.device_name is not None:
                self.device = xp.Device(self.device_name)
        self.xp = xp
        self.dtype = getattr(xp, self.dtype_name)

    def __reduce__(self):
        # pickled (and deep-copied) by its recipe: the array module itself cannot be pickled
        return (Backend, (self.name, self.dtype_name, self.seed, self.device_name))

    # ------------------------------------------------------------------ host <-> device
    def asarray(self, a, dtype=None):
        """Host (or Python) data -> array on this backend's device, float dtype by default."""
        xp = self.xp
        dtype = self.dtype if dtype is None else dtype
        if self.name == "strict":
            a = np.asarray(a)
            arr = xp.asarray(a, dtype=dtype)
            return arr if self.device is None else xp.asarray(arr, device=self.device)
        return xp.asarray(a, dtype=dtype)

    def asindex(self, a):
        """Host integer data -> int64 index array on the device."""
        return self.asarray(np.asarray(a, dtype=np.int64), dtype=self.xp.int64)

    def to_numpy(self, a) -> np.ndarray:
        """Device array -> NumPy array (the one explicit device-to-host transfer)."""
        if isinstance(a, np.ndarray):
            return a
        if self.name == "cupy":
            return a.get()
        if self.name == "strict":
            import array_api_strict as xps

            return np.asarray(a.to_device(xps.Device("CPU_DEVICE")))
        return np.asarray(a)

    def zeros(self, shape, dtype=None):
        return self.xp.zeros(shape, dtype=self.dtype if dtype is None else dtype, device=self.device)

    def ones(self, shape, dtype=None):
        return self.xp.ones(shape, dtype=self.dtype if dtype is None else dtype, device=self.device)

    def eye(self, n, dtype=None):
        return self.xp.eye(n, dtype=self.dtype if dtype is None else dtype, device=self.device)

    def arange(self, n, dtype=None):
        dtype = self.xp.int64 if dtype is None else dtype
        return self.xp.arange(n, dtype=dtype, device=self.device)

    # ------------------------------------------------------------------ randomness
    def rng(self, *key) -> "RNG":
        """A generator seeded by ``(seed, *key)``; strings in ``key`` are hashed stably."""
        words = [int(self.seed)]
        for k in key:
            if isinstance(k, str):
                words.append(int.from_bytes(k.encode()[:8].ljust(8, b"\0"), "little"))
            else:
                words.append(int(k))
        return RNG(self, words)

    # ------------------------------------------------------------------ numerics
    def softplus(self, x):
        """log(1 + e^x) = max(x, 0) + log1p(e^-|x|): exact in both tails, never overflows.
        (The same value as ``logaddexp(0, x)``, which NumPy computes ~20x slower.)"""
        xp = self.xp
        return xp.maximum(x, 0.0) + xp.log1p(xp.exp(-xp.abs(x)))

    def sigmoid(self, x):
        """1 / (1 + e^-x), relatively accurate in both tails.  For x < -88 (float32) or
        x < -709 (float64) e^-x overflows to inf and the result is the correct limit 0; NumPy's
        overflow warning for that case is silenced here."""
        xp = self.xp
        if self.name == "numpy":
            with np.errstate(over="ignore"):
                return 1.0 / (1.0 + xp.exp(-x))
        return 1.0 / (1.0 + xp.exp(-x))

    def logsumexp(self, x, axis=-1, keepdims=False):
        xp = self.xp
        m = xp.max(x, axis=axis, keepdims=True)
        m = xp.where(xp.isfinite(m), m, xp.zeros_like(m))
        out = xp.log(xp.sum(xp.exp(x - m), axis=axis, keepdims=True)) + m
        return out if keepdims else xp.squeeze(out, axis=axis)

    def log_softmax(self, x, axis=-1):
        return x - self.logsumexp(x, axis=axis, keepdims=True)

    def softmax(self, x, axis=-1):
        return self.xp.exp(self.log_softmax(x, axis=axis))

    def one_hot(self, k, K: int):
        """(N,) int indices -> (N, K) float one-hot matrix (scatter-add = one_hot(k).T @ g)."""
        xp = self.xp
        return xp.astype(xp.reshape(k, (-1, 1)) == self.arange(K)[None, :], self.dtype)

    # ------------------------------------------------------------------ buffer reuse
    def workspace(self):
        """A fresh :class:`Workspace` for this backend's library, or None on array-api-strict
        (the standard has no ``out=``: strict always runs the plain reference path)."""
        if self.name == "strict":
            return None
        if self.name == "cupy":  # pragma: no cover - GPU only
            import cupy as native
        else:
            native = np
        return Workspace(native, self.name)

    def reusing(self, ws):
        """``with b.reusing(ws):`` -- the blocks below write into ``ws``'s buffers (one training
        step); outside it (and with ``ws=None``) every block allocates, the reference path."""
        import contextlib

        @contextlib.contextmanager
        def ctx():
            prev, self.ws = self.ws, ws
            try:
                yield ws
            finally:
                self.ws = prev
        return ctx()

    def describe(self) -> dict:
        d = {"backend": self.name, "dtype": self.dtype_name}
        if self.device is not None:
            d["device"] = str(self.device)
        return d


class Workspace:
    """Named buffers reused from one training step to the next: all the buffer plumbing.

    Why (issue #13): a (256, 2000) float32 array is 2 MB, which glibc serves by a fresh ``mmap``
    and returns on ``free``, so every step page-faulted its temporaries in anew.  (Measured here:
    the VAE step 49.2 -> 47.0 ms in one process; RESULTS.md "Speed" has the numbers, including where
    buffers do not pay: arrays under ``min_bytes``.)  A block that gets a workspace
    writes its output into ``ws.buf(tag, shape, dtype)`` -- the same memory every step -- with
    the library's ``out=`` argument (``ws.np`` is NumPy or CuPy itself).  The values are the
    same operations in the same order, so the numbers are bit for bit those of the plain path
    (``tests/test_speed.py``).  Contract: a buffer is valid until the same tag is written again,
    i.e. until the next step; nothing returned to the caller of a step may be a buffer except
    what that step consumes (gradients, caches).  ``fused`` is the CuPy kernel set or None."""

    def __init__(self, native, name="numpy"):
        self.np, self.name = native, name
        self._bufs = {}
        self.min_bytes = MIN_BUFFER_BYTES
        self.fused = None
        if name == "cupy":  # pragma: no cover - GPU only
            from . import fused
            self.fused = fused

    def buf(self, tag, shape, dtype):
        """The buffer ``tag`` of this shape and dtype, or None (let the operation allocate) when
        it is smaller than ``min_bytes``: small temporaries come from malloc's free lists, hot
        in cache, where a set of persistent buffers would be cold (measured, RESULTS.md "Speed")."""
        if self.min_bytes and math.prod(shape) * np.dtype(dtype).itemsize < self.min_bytes:
            return None
        key = (tag, shape, dtype)
        a = self._bufs.get(key)
        if a is None:
            a = self._bufs[key] = self.np.empty(shape, dtype=dtype)
        return a

    def nbytes(self) -> int:
        return sum(int(a.nbytes) for a in self._bufs.values())

    def __reduce__(self):
        # pickled (with its optimiser, by an estimator) as an empty workspace: buffers are scratch
        return (_empty_workspace, (self.name,))


def _empty_workspace(name):
    if name == "cupy":  # pragma: no cover - GPU only
        import cupy
        return Workspace(cupy, name)
    return Workspace(np, name)


class RNG:
    """Seeded random numbers on a backend's device, in its float dtype."""

    def __init__(self, backend: Backend, words):
        self.b, self.words = backend, list(words)
        if backend.name == "cupy":  # pragma: no cover - needs a GPU
            import cupy

            self._g = cupy.random.default_rng(np.random.SeedSequence(words))
        else:
            self._g = np.random.default_rng(np.random.SeedSequence(words))

    def normal(self, shape):
        b = self.b
        out = self._g.standard_normal(size=tuple(shape), dtype=np.dtype(b.dtype_name))
        return out if b.name == "cupy" else b.asarray(out)

    def uniform(self, shape):
        b = self.b
        out = self._g.random(size=tuple(shape), dtype=np.dtype(b.dtype_name))
        return out if b.name == "cupy" else b.asarray(out)

    def permutation_host(self, n: int) -> np.ndarray:
        """A permutation of range(n) on the host (indices are tiny; one transfer per epoch).
        Drawn from its own stream of the same key, so it is the same on every backend."""
        return np.random.default_rng(np.random.SeedSequence(self.words + [0x5045524D])).permutation(n)

    def permutation(self, n: int):
        return self.b.asindex(self.permutation_host(n))
