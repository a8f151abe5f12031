"""Floor 2: differentiable building blocks, each a forward/backward pair.

Every block follows the CS231n convention::

    out, cache = forward(...)
    grads      = backward(dout, cache)

where ``dout`` is dLoss/dout (same shape as ``out``).  The derivation of each backward pass is
in ``derivations/00-backprop.md`` under the anchor named in its comment.

Parameters live in a flat dict ``{"encoder.0.W": W, "encoder.0.b": b, ...}``; an :class:`MLP`
knows its key prefix and reads/writes only its own keys.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


# --------------------------------------------------------------------------- matmul
class _MatmulRecorder:
    """Off by default.  ``bench`` switches it on to record the (shape, layout) of every matrix
    product of one training step, then replays exactly those products to time the GEMM floor."""

    active = False
    calls: list = []


def matmul(a, b, ws=None, tag=None):
    """The one place the big matrix products of the models go through.  With a workspace
    (:class:`~scratchvae.backend.Workspace`) the product is written into its buffer ``tag``
    (the same memory every step, no page faults); the product itself is the same BLAS call."""
    if _MatmulRecorder.active:
        _MatmulRecorder.calls.append((a, b))
    if ws is None:
        return a @ b
    return ws.np.matmul(a, b, out=ws.buf(tag, (a.shape[0], b.shape[1]), a.dtype))


# --------------------------------------------------------------------------- linear
def linear_forward(x, W, b, ws=None, tag="linear"):
    """x (N, I), W (I, O), b (O,) -> out (N, O) = x W + b.   [00-backprop.md#linear]"""
    out = matmul(x, W, ws, tag + ".out")   # (B.1.1): y = x W + 1 b^T
    out += b
    return out, (x, W)


def linear_backward(xp, dout, cache, need_dx=True, ws=None, tag="linear"):
    """dout (N, O) -> dx (N, I) | None, dW (I, O), db (O,).   [00-backprop.md#linear]

    dW = x^T dout,  db = 1^T dout,  dx = dout W^T.  ``need_dx=False`` skips the input
    gradient (the first layer of an encoder never needs it)."""
    x, W = cache
    # (B.1.2)
    dW = matmul(x.T, dout, ws, tag + ".dW")
    if ws is None:
        db = xp.sum(dout, axis=0)
    else:                                  # the same reduction, into the step's buffer
        db = ws.np.sum(dout, axis=0, out=ws.buf(tag + ".db", (dout.shape[1],), dout.dtype))
    dx = matmul(dout, W.T, ws, tag + ".dx") if need_dx else None
    return dx, dW, db


# --------------------------------------------------------------------------- activations
# Each activation: forward(b, x) -> (y, cache); backward(b, dy, cache) -> dx.
# The cache holds what the derivative needs, expressed through the *output* when cheaper.
# ``inplace=True`` (the MLP passes it inside a training step with a workspace, where x and dy
# are the step's own buffers) lets ReLU overwrite its input; the other activations ignore it.

def relu_forward(b, x, inplace=False):
    """y = max(x, 0).   [00-backprop.md#relu]"""
    if inplace:
        y = b.ws.np.maximum(x, 0.0, out=x)
    else:
        y = b.xp.maximum(x, 0.0)
    return y, y


def relu_backward(b, dy, y, inplace=False):
    """dx = dy * 1[x > 0] (the subgradient 0 is used at x = 0).   [00-backprop.md#relu]"""
    # (B.2.1); a multiply by the 0/1 mask: ~10x faster than where() on a random sign pattern
    if not inplace:
        return dy * b.xp.astype(y > 0, dy.dtype)
    ws = b.ws
    if ws.fused is not None:                     # CuPy: one kernel, the same products
        return ws.fused.relu_backward_(dy, y)
    mask = ws.np.greater(y, 0, out=ws.buf("relu.mask", y.shape, bool))
    return ws.np.multiply(dy, mask, out=dy)      # True -> 1.0: the same products, faster


def tanh_forward(b, x, inplace=False):
    """y = tanh(x).   [00-backprop.md#tanh]"""
    y = b.xp.tanh(x)
    return y, y


def tanh_backward(b, dy, y, inplace=False):
    """dx = dy * (1 - y^2).   [00-backprop.md#tanh]"""
    return dy * (1.0 - y * y)                # (B.3.1)


def softplus_forward(b, x, inplace=False):
    """y = log(1 + e^x).   [00-backprop.md#softplus]"""
    return b.softplus(x), x


def softplus_backward(b, dy, x, inplace=False):
    """dx = dy * sigmoid(x).   [00-backprop.md#softplus]"""
    return dy * b.sigmoid(x)                 # (B.4.1)


def sigmoid_forward(b, x, inplace=False):
    """y = 1 / (1 + e^-x).   [00-backprop.md#sigmoid]"""
    y = b.sigmoid(x)
    return y, y


def sigmoid_backward(b, dy, y, inplace=False):
    """dx = dy * y (1 - y).   [00-backprop.md#sigmoid]"""
    return dy * y * (1.0 - y)                # (B.5.1)


def identity_forward(b, x, inplace=False):
    return x, None


def identity_backward(b, dy, cache, inplace=False):
    return dy


ACTIVATIONS = {
    "relu": (relu_forward, relu_backward),
    "tanh": (tanh_forward, tanh_backward),
    "softplus": (softplus_forward, softplus_backward),
    "sigmoid": (sigmoid_forward, sigmoid_backward),
    "identity": (identity_forward, identity_backward),
}


# --------------------------------------------------------------------------- MLP
@dataclass
class MLP:
    """A stack of linear layers with ``act`` between them and none after the last.

    ``sizes = (I, H1, ..., O)``; parameters ``{prefix}.{i}.W`` (in, out) and ``{prefix}.{i}.b``.
    Initialisation: He (std sqrt(2 / fan_in)) before ReLU, Glorot (std sqrt(2 / (fan_in +
    fan_out))) otherwise; biases zero.  The output layer uses Glorot scaled by ``out_scale``.
    """

    prefix: str
    sizes: tuple
    act: str = "relu"
    out_scale: float = 1.0

    def __post_init__(self):
        if self.act not in ACTIVATIONS:
            raise ValueError(f"unknown activation {self.act!r}; choose one of {sorted(ACTIVATIONS)}")
        self.sizes = tuple(int(s) for s in self.sizes)
        if len(self.sizes) < 2 or min(self.sizes) < 1:
            raise ValueError(f"MLP sizes must be >= 2 positive ints, got {self.sizes}")

    @property
    def n_layers(self) -> int:
        return len(self.sizes) - 1

    def keys(self):
        for i in range(self.n_layers):
            yield f"{self.prefix}.{i}.W"
            yield f"{self.prefix}.{i}.b"

    def init(self, b, rng) -> dict:
        params = {}
        for i, (fi, fo) in enumerate(zip(self.sizes[:-1], self.sizes[1:])):
            last = i == self.n_layers - 1
            if self.act == "relu" and not last:
                std = math.sqrt(2.0 / fi)
            else:
                std = math.sqrt(2.0 / (fi + fo)) * (self.out_scale if last else 1.0)
            params[f"{self.prefix}.{i}.W"] = rng.normal((fi, fo)) * std
            params[f"{self.prefix}.{i}.b"] = b.zeros((fo,))
        return params

    def forward(self, b, params, x):
        """x (N, I) -> out (N, O), cache."""
        act_f, _ = ACTIVATIONS[self.act]
        ws, p = b.ws, self.prefix
        caches = []
        h = x
        # (B.6.1): a_i = h_{i-1} W_i + b_i, h_i = act(a_i), no activation after the last layer
        for i in range(self.n_layers):
            h, lc = linear_forward(h, params[f"{p}.{i}.W"], params[f"{p}.{i}.b"], ws, f"{p}.{i}")
            ac = None
            if i < self.n_layers - 1:
                h, ac = act_f(b, h, inplace=True) if ws is not None else act_f(b, h)
            caches.append((lc, ac))
        return h, caches

    def backward(self, b, dout, caches, need_dx=True):
        """dout (N, O) -> dx (N, I) | None, grads {key: array}.  Walks the layers in reverse."""
        _, act_b = ACTIVATIONS[self.act]
        ws, p = b.ws, self.prefix
        grads = {}
        d = dout
        # (B.6.2): from the last layer down, activation backward then linear backward
        for i in reversed(range(self.n_layers)):
            lc, ac = caches[i]
            if i < self.n_layers - 1:                  # d is the dx of layer i + 1 here
                d = act_b(b, d, ac, inplace=True) if ws is not None else act_b(b, d, ac)
            d, dW, db = linear_backward(b.xp, d, lc, (i > 0 or need_dx), ws, f"{p}.{i}")
            grads[f"{p}.{i}.W"] = dW
            grads[f"{p}.{i}.b"] = db
        return d, grads
