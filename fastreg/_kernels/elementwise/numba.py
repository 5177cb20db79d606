"""Activations and fused softmax + cross-entropy, Numba backend.

Same names and positional signatures as elementwise/cy.pyx; arguments are checked by
fastreg/_kernels/elementwise/__init__.py. Shapes: activation arrays are flat (n,); logits, probs and
dlogits are (N, C) of one float dtype; target is (N,) int64 with values in [0, C).
Sums over a row are accumulated in float64 for both dtypes. The activation formulas are
common/activations.py's (shared with the CUDA backends); exp and tanh are this module's own.

The clamps below are written as comparisons on purpose (they become vector selects and leave NaN
to the final ``x == x`` test, which is how NaN is passed through), hence the ruff exemptions.
"""
# ruff: noqa: FURB136, PLR0124
import math

import numpy as np
from llvmlite import ir
from numba import njit, prange
from numba.core import types
from numba.extending import intrinsic, overload

from ..common import activations
from .codes import ACT_LEAKY_RELU, ACT_RELU, ACT_SIGMOID, ACT_TANH

# --- vectorizable exp and tanh ---------------------------------------------------------------------
# Numba lowers np.exp/np.tanh to scalar libm calls (no SVML here), which blocks vectorization and
# costs 10-20x. These are the same branch-free formulas as ops.h (see there):
# exp(x) = 2^n P(r) with a Cody-Waite reduction and a Taylor polynomial; tanh via expm1(2|x|).

@intrinsic
def _float_from_bits(typingctx, bits, like):
    """The float of ``like``'s type whose bit pattern is the low bits of the integer ``bits``."""
    if not isinstance(bits, types.Integer) or not isinstance(like, types.Float):
        return None

    def codegen(context, builder, sig, args):
        width = sig.args[1].bitwidth
        ity = ir.IntType(width)
        b = args[0]
        if sig.args[0].bitwidth > width:
            b = builder.trunc(b, ity)
        elif sig.args[0].bitwidth < width:
            b = builder.sext(b, ity)
        return builder.bitcast(b, context.get_value_type(sig.args[1]))

    return like(bits, like), codegen


_F = np.float32
_MAGIC32, _LOG2E32 = _F(12582912.0), _F(1.44269504088896341)
_LN2HI32, _LN2LO32 = _F(0.693359375), _F(2.12194440e-4)
_LO32, _HI32 = _F(-104.0), _F(89.0)
_EXP32 = tuple(_F(1.0 / math.factorial(k)) for k in range(8))          # 1/0! .. 1/7!
_MAGIC64, _LOG2E64 = 6755399441055744.0, 1.4426950408889634074
_LN2HI64, _LN2LO64 = 6.93147180369123816490e-01, 1.90821492927058770002e-10
_EXP64 = tuple(1.0 / math.factorial(k) for k in range(14))             # 1/0! .. 1/13!
_EXPM1_32 = tuple(_F(1.0 / math.factorial(k)) for k in range(11))      # to y^10
_EXPM1_64 = tuple(1.0 / math.factorial(k) for k in range(18))          # to y^17


@njit(cache=True, inline="always")
def _exp32(x):
    xc = _LO32 if x < _LO32 else x
    xc = _HI32 if xc > _HI32 else xc
    n = (xc * _LOG2E32 + _MAGIC32) - _MAGIC32
    r = (xc - n * _LN2HI32) + n * _LN2LO32
    c = _EXP32
    p = c[7]
    p = p * r + c[6]
    p = p * r + c[5]
    p = p * r + c[4]
    p = p * r + c[3]
    p = p * r + c[2]
    p = p * r + c[1]
    p = p * r + c[0]
    k = np.int32(n)
    h = k >> 1
    y = p * _float_from_bits((h + 127) << 23, x) * _float_from_bits((k - h + 127) << 23, x)
    return y if x == x else x


@njit(cache=True, inline="always")
def _exp64(x):
    xc = -746.0 if x < -746.0 else x
    xc = 710.0 if xc > 710.0 else xc
    n = (xc * _LOG2E64 + _MAGIC64) - _MAGIC64
    r = (xc - n * _LN2HI64) - n * _LN2LO64
    c = _EXP64
    p = c[13]
    for j in range(12, -1, -1):
        p = p * r + c[j]
    k = np.int64(n)
    h = k >> 1
    y = p * _float_from_bits((h + 1023) << 52, x) * _float_from_bits((k - h + 1023) << 52, x)
    return y if x == x else x


@njit(cache=True, inline="always")
def _tanh32(x):
    a = -x if x < 0 else x
    a = _F(20.0) if a > _F(20.0) else a
    y = _F(2.0) * a
    c = _EXPM1_32
    q = c[10]
    for j in range(9, 0, -1):
        q = q * y + c[j]
    q = q * y
    e = q if y < _F(0.6) else _exp32(y) - _F(1.0)
    t = e / (e + _F(2.0))
    t = -t if x < 0 else t
    return t if x == x else x


@njit(cache=True, inline="always")
def _tanh64(x):
    a = -x if x < 0 else x
    a = 20.0 if a > 20.0 else a
    y = 2.0 * a
    c = _EXPM1_64
    q = c[17]
    for j in range(16, 0, -1):
        q = q * y + c[j]
    q = q * y
    e = q if y < 0.6 else _exp64(y) - 1.0
    t = e / (e + 2.0)
    t = -t if x < 0 else t
    return t if x == x else x


def _fexp(x):
    """exp in the precision of x (dispatched at compile time)."""


def _ftanh(x):
    """tanh in the precision of x (dispatched at compile time)."""


@overload(_fexp, inline="always")
def _fexp_impl(x):
    if x == types.float32:
        return lambda x: _exp32(x)
    if x == types.float64:
        return lambda x: _exp64(x)


@overload(_ftanh, inline="always")
def _ftanh_impl(x):
    if x == types.float32:
        return lambda x: _tanh32(x)
    if x == types.float64:
        return lambda x: _tanh64(x)


# The activation formulas (common/activations.py, shared with the CUDA backends), inlined.
_inline = njit(cache=True, inline="always")
_relu = _inline(activations.relu)
_leaky_relu = _inline(activations.leaky_relu)
_sigmoid = _inline(activations.sigmoid)
_relu_backward = _inline(activations.relu_backward)
_leaky_relu_backward = _inline(activations.leaky_relu_backward)
_sigmoid_backward = _inline(activations.sigmoid_backward)
_tanh_backward = _inline(activations.tanh_backward)


@njit(cache=True, parallel=True)
def activation_forward(x, out, code, slope):
    """out = act(x) elementwise (out may alias x)."""
    n = x.shape[0]
    zero = x.dtype.type(0)
    one = x.dtype.type(1)
    s = x.dtype.type(slope)
    if code == ACT_RELU:
        for i in prange(n):
            out[i] = _relu(x[i], zero)
    elif code == ACT_LEAKY_RELU:
        for i in prange(n):
            out[i] = _leaky_relu(x[i], s, zero)
    elif code == ACT_SIGMOID:
        for i in prange(n):
            v = x[i]
            out[i] = _sigmoid(v, _fexp(-abs(v)), one, zero)
    elif code == ACT_TANH:
        for i in prange(n):
            out[i] = _ftanh(x[i])
    else:
        for i in prange(n):
            out[i] = x[i]


@njit(cache=True, parallel=True)
def activation_backward(dy, y, dx, code, slope):
    """dx = dy * act'(x), with act' written in terms of the output y = act(x) (dx may alias dy)."""
    n = dy.shape[0]
    zero = dy.dtype.type(0)
    one = dy.dtype.type(1)
    s = dy.dtype.type(slope)
    if code == ACT_RELU:
        for i in prange(n):
            dx[i] = _relu_backward(dy[i], y[i], zero)
    elif code == ACT_LEAKY_RELU:
        for i in prange(n):
            dx[i] = _leaky_relu_backward(dy[i], y[i], s, zero)
    elif code == ACT_SIGMOID:
        for i in prange(n):
            dx[i] = _sigmoid_backward(dy[i], y[i], one)
    elif code == ACT_TANH:
        for i in prange(n):
            dx[i] = _tanh_backward(dy[i], y[i], one)
    else:
        for i in prange(n):
            dx[i] = dy[i]


@njit(cache=True, parallel=True)
def softmax_xent_forward(logits, target, probs, eps):
    """probs = softmax(logits) per row; return the SUM over rows of the smoothed CE loss.

    loss_n = (1 - eps) (lse_n - l_{n,y}) + eps (lse_n - mean_c l_{n,c}),
    lse_n = m_n + log sum_c exp(l_{n,c} - m_n), m_n = max_c l_{n,c}.
    probs may alias logits: everything read from a row is read before the row is written.
    """
    N, C = logits.shape
    total = 0.0
    for r in prange(N):
        row = logits[r]
        prow = probs[r]
        # four independent chains: float reductions do not vectorize without reassociation
        m0 = m1 = m2 = m3 = row[0]
        l0 = l1 = l2 = l3 = 0.0
        c4 = C - C % 4
        for c in range(0, c4, 4):
            m0, m1 = max(m0, row[c]), max(m1, row[c + 1])
            m2, m3 = max(m2, row[c + 2]), max(m3, row[c + 3])
            l0 += row[c]
            l1 += row[c + 1]
            l2 += row[c + 2]
            l3 += row[c + 3]
        m = max(max(m0, m1), max(m2, m3))
        lsum = (l0 + l1) + (l2 + l3)
        for c in range(c4, C):
            m = max(m, row[c])
            lsum += row[c]
        ly = float(row[target[r]])
        for c in range(C):                  # vectorized exp, in the dtype of the logits
            prow[c] = _fexp(row[c] - m)
        s0 = s1 = s2 = s3 = 0.0
        for c in range(0, c4, 4):
            s0 += prow[c]
            s1 += prow[c + 1]
            s2 += prow[c + 2]
            s3 += prow[c + 3]
        s = (s0 + s1) + (s2 + s3)
        for c in range(c4, C):
            s += prow[c]
        inv = prow.dtype.type(1.0 / s)
        for c in range(C):
            prow[c] *= inv
        lse = float(m) + math.log(s)
        total += (1.0 - eps) * (lse - ly) + eps * (lse - lsum / C)
    return total


@njit(cache=True, parallel=True)
def softmax_xent_backward(probs, target, dlogits, eps, grad_scale):
    """dlogits = (probs - (1 - eps) onehot(target) - eps / C) * grad_scale (may alias probs)."""
    N, C = probs.shape
    g = probs.dtype.type(grad_scale)
    sub = probs.dtype.type(eps / C)
    hit = probs.dtype.type((1.0 - eps) * grad_scale)
    for r in prange(N):
        for c in range(C):
            dlogits[r, c] = (probs[r, c] - sub) * g
        dlogits[r, target[r]] -= hit
