"""Per-element activation maths, written once for the Numba and CUDA backends of the elementwise
activations and of the fused linear epilogue (matmul).

Plain Python on scalars (no numba import here): each backend compiles these functions with
``numba.njit(inline="always")`` or ``numba.cuda.jit(device=True, inline=True)`` and calls them
inside its own loops. The C backends (``elementwise/ops.h``, ``matmul/gemm_impl.h``) keep their
own copies of the same formulas. Codes: ``common/codes.py``.

Editing this file: numba's on-disk cache (``cache=True``) is keyed on the source file of each
jitted kernel, not on the files it inlines from, so kernels cached before an edit here keep the
old maths. Touch the backend modules that import this one (or delete their ``__pycache__``
``*.nbi``/``*.nbc`` files) after changing it.

Not here, on purpose: ``exp`` and ``tanh``. They are the one part that differs per backend for a
reason: Numba lowers ``np.exp``/``np.tanh`` to scalar libm calls, so the Numba elementwise
backend uses its own branch-free, vectorizable polynomials (elementwise/numba.py, the formulas of
ops.h), while CUDA uses libdevice (``math.exp``/``math.tanh``). :func:`sigmoid` therefore takes
``exp(-|v|)`` from the caller.

No float literals (numba types a literal as float64 and would promote float32 arithmetic; the
CUDA compile check fails on f64 instructions in float32 kernels): callers pass ``zero`` and
``one`` in the data dtype. Comparisons are written so NaN passes through (``v < 0`` is false
for NaN), hence no builtin ``min``/``max`` (which numba's CUDA target cannot type either).
"""
# ruff: noqa: FURB136  (conditional expressions, not min/max: NaN passes, and CUDA types them)
from __future__ import annotations


def relu(v, zero):
    """max(v, 0), NaN kept (as torch.relu)."""
    return zero if v < zero else v


def leaky_relu(v, slope, zero):
    """v for v > 0, else slope·v (NaN kept)."""
    return v if v > zero else v * slope


def sigmoid(v, e, one, zero):
    """sigmoid(v) from ``e = exp(-|v|)`` (the caller's exp), in the two-sided form
    1 / (1 + e) for v >= 0 and e / (1 + e) below: exp never sees a positive argument, so it
    never overflows (in the CUDA simulator, Python's math.exp would raise OverflowError), the
    results are exactly 1 / 0 where sigmoid saturates, and the negative tail keeps its tiny
    (even subnormal) values. NaN stays NaN."""
    s = one / (one + e)
    return s if v >= zero else e * s


def relu_backward(dy, y, zero):
    """dy·relu'(x) from the output y = relu(x)."""
    return dy if y > zero else zero


def leaky_relu_backward(dy, y, slope, zero):
    """dy·leaky_relu'(x) from the output y (slope > 0, so y > 0 iff x > 0)."""
    return dy if y > zero else dy * slope


def sigmoid_backward(dy, y, one):
    """dy·sigmoid'(x) = dy·y·(1 - y) from the output y."""
    return dy * y * (one - y)


def tanh_backward(dy, y, one):
    """dy·tanh'(x) = dy·(1 - y²) from the output y."""
    return dy * (one - y * y)
