"""Floor 1 (GPU only): the hot elementwise chains as single CuPy kernels.

On a GPU each array-API operation is a kernel launch and a pass over memory; Adam's dozen
passes, the ReLU mask and the Bernoulli likelihood are each fused here into one kernel.  The
array-API code (``optim._adam_update``, ``nn.relu_backward``, ``Bernoulli.loglik``) stays the
reference; every kernel does *the same operations in the same order*, compiled with
``--fmad=false`` (no multiply-add contraction, which would round differently) and CUDA's default
IEEE ``sqrt`` and division, so it returns the reference's bits.  ``tests/test_speed.py``
compares both where CuPy and a device are present and skips otherwise.

Importing this module needs CuPy; only the cupy backend imports it.
"""
from __future__ import annotations

import cupy  # noqa: F401  (only imported on the cupy backend)

_OPTS = ("--fmad=false",)

# optim._adam_update, line by line: m = b1 m + (1 - b1) g; v = b2 v + (1 - b2) (g g);
# p -= step * m / (v ** 0.5 + eps_hat).  The scalars arrive already rounded to T, as the
# reference's Python floats are when they meet a T array; ``v ** 0.5`` is CuPy's ``power``,
# i.e. ``pow``, not ``sqrt``, so the kernel calls ``pow`` too.
_ADAM = cupy.ElementwiseKernel(
    "T g, T b1, T c1, T b2, T c2, T step, T eps_hat",
    "T p, T m, T v",
    """
    T mm = m * b1;
    mm = mm + c1 * g;
    T vv = v * b2;
    vv = vv + c2 * (g * g);
    T d = pow(vv, T(0.5));
    d = d + eps_hat;
    d = mm / d;
    d = d * step;
    m = mm; v = vv; p = p - d;
    """,
    "scratchvae_adam", options=_OPTS)

# nn.relu_backward: dx = dy * 1[y > 0], in place on dy
_RELU_BWD = cupy.ElementwiseKernel(
    "T y", "T dy", "dy = dy * (y > T(0) ? T(1) : T(0));", "scratchvae_relu_bwd", options=_OPTS)


def adam_update_(p, g, m, v, b1, b2, step, eps_hat):
    """One Adam update of p, m, v in place (one kernel)."""
    t = p.dtype.type
    _ADAM(g, t(b1), t(1.0 - b1), t(b2), t(1.0 - b2), t(step), t(eps_hat), p, m, v)


def relu_backward_(dy, y):
    """dy *= 1[y > 0], in place (one kernel); returns dy."""
    _RELU_BWD(y, dy)
    return dy


# distributions.Bernoulli: the per-element term x l - softplus(l), softplus(l) =
# max(l, 0) + log1p(exp(-|l|)), summed afterwards by CuPy exactly as the reference sums it
_BERN_TERM = cupy.ElementwiseKernel(
    "T x, T l", "T t",
    "T e = exp(-abs(l)); T sp = max(l, T(0)) + log1p(e); t = x * l - sp;",
    "scratchvae_bernoulli_term", options=_OPTS)

# and its backward: dl = dll (x - sigmoid(l)), sigmoid(l) = 1 / (1 + exp(-l))
_BERN_BWD = cupy.ElementwiseKernel(
    "T g, T x, T l", "T d",
    "T s = T(1) / (T(1) + exp(-l)); d = g * (x - s);",
    "scratchvae_bernoulli_bwd", options=_OPTS)


def bernoulli_term(x, out):
    """x (B, D), logits (S, B, D) -> x l - softplus(l) (S, B, D) (one kernel)."""
    return _BERN_TERM(x, out)


def bernoulli_backward(dll, x, out):
    """dll (S, B) -> dll (x - sigmoid(l)) (S, B, D) (one kernel)."""
    return _BERN_BWD(dll[..., None], x, out)
