"""Dropout kernels, Numba backend. Same names and positional signatures as dropout/cy.pyx.

Shapes: x, out, dy, dx are flat (n,) arrays of one float dtype; mask is (ceil(n/8),) uint8, bit j
of byte k <-> element 8k+j, 1 = kept. The RNG is specified in fastreg/_kernels/dropout/__init__.py.

The Philox rounds are dropout/maths.py's (shared with the CUDA backend); its 32-bit words are
held in uint64 (Numba promotes uint32 arithmetic to 64 bits anyway) and LLVM lowers the exact
products M·c to 32x32->64 multiplies (vpmuludq).
"""
import numpy as np
from llvmlite import ir
from numba import njit, prange
from numba.core import types
from numba.extending import intrinsic

from . import maths
from .maths import LO as _LO
from .maths import S32 as _S32

_ONE = np.uint64(1)
_TWO = np.uint64(2)
_ZERO = np.uint64(0)

#: Mask bytes per parallel work item (2048 elements), as in the Cython backend.
CHUNK_BYTES = 256


# The Philox rounds (dropout/maths.py, shared with the CUDA backend), inlined at the IR level.
_philox10 = njit(cache=True, inline="always")(maths.philox4x32_10)


@njit(cache=True)
def philox4x32_10_blocks(ctr, out, k0, k1):
    """out[b] = Philox4x32-10(ctr[b], (k0, k1)) for each row b (known-answer tests)."""
    ka = np.uint64(k0)
    kb = np.uint64(k1)
    for b in range(ctr.shape[0]):
        c0, c1, c2, c3 = _philox10(np.uint64(ctr[b, 0]), np.uint64(ctr[b, 1]),
                                   np.uint64(ctr[b, 2]), np.uint64(ctr[b, 3]), ka, kb)
        out[b, 0] = np.uint32(c0)
        out[b, 1] = np.uint32(c1)
        out[b, 2] = np.uint32(c2)
        out[b, 3] = np.uint32(c3)


@njit(cache=True, inline="always")
def _mask_bytes(mask, b0, b1, n, k0, k1, offset, threshold):
    """Keep bits of bytes [b0, b1); clears the unused bits of the tail byte."""
    nbytes = (n + 7) >> 3
    if threshold == _ZERO:                    # (1 - p) * 2^32 < 1: nothing survives
        for m in range(b0, b1):
            mask[m] = 0
    else:
        t = threshold - _ONE                  # word < threshold  <=>  word <= t (fits 32 bits)
        for m in range(b0, b1):
            ca = offset + _TWO * np.uint64(m)  # wraps mod 2^64
            cb = ca + _ONE
            a0, a1, a2, a3 = _philox10(ca & _LO, ca >> _S32, _ZERO, _ZERO, k0, k1)
            e0, e1, e2, e3 = _philox10(cb & _LO, cb >> _S32, _ZERO, _ZERO, k0, k1)
            byte = (np.uint64(a0 <= t) | (np.uint64(a1 <= t) << np.uint64(1))
                    | (np.uint64(a2 <= t) << np.uint64(2)) | (np.uint64(a3 <= t) << np.uint64(3))
                    | (np.uint64(e0 <= t) << np.uint64(4)) | (np.uint64(e1 <= t) << np.uint64(5))
                    | (np.uint64(e2 <= t) << np.uint64(6)) | (np.uint64(e3 <= t) << np.uint64(7)))
            mask[m] = np.uint8(byte)
    if b1 == nbytes and (n & 7) != 0:
        mask[nbytes - 1] &= np.uint8((1 << (n & 7)) - 1)


@intrinsic
def _and_bits(typingctx, v, keep):
    """``v`` with its bits ANDed with the integer ``keep`` (0 or all ones): ``v`` or +0.0.

    A branch-free select: a branch on a random bit mispredicts half the time (10x slower), and
    Numba has no scalar float<->int bitcast of its own. Also gives +0.0 for dropped inf/nan.
    """
    if not isinstance(v, types.Float) or not isinstance(keep, types.Integer):
        return None

    def codegen(context, builder, sig, args):
        fv, kv = args
        ity = ir.IntType(sig.args[0].bitwidth)
        kv = builder.trunc(kv, ity) if sig.args[1].bitwidth > ity.width else builder.zext(kv, ity)
        return builder.bitcast(builder.and_(builder.bitcast(fv, ity), kv), fv.type)

    return v(v, keep), codegen


@njit(cache=True, inline="always")
def _apply(x, out, mask, b0, b1, n, scale):
    """out[i] = x[i] * scale where mask bit i is set, else 0, for i in [8*b0, min(8*b1, n))."""
    full = n >> 3
    bf = min(b1, full)
    for m in range(b0, bf):
        byte = np.uint64(mask[m])
        for j in range(8):
            i = 8 * m + j
            out[i] = _and_bits(x[i] * scale, _ZERO - ((byte >> np.uint64(j)) & _ONE))
    if b1 > full >= b0:
        byte = np.uint64(mask[full])
        for i in range(8 * full, n):
            out[i] = _and_bits(x[i] * scale, _ZERO - ((byte >> np.uint64(i & 7)) & _ONE))


@njit(cache=True, parallel=True)
def dropout_mask(mask, n, k0, k1, offset, threshold):
    """Write the keep bits of elements 0..n-1 into mask."""
    ka = np.uint64(k0)
    kb = np.uint64(k1)
    nbytes = (n + 7) >> 3
    nchunks = (nbytes + CHUNK_BYTES - 1) // CHUNK_BYTES
    for c in prange(nchunks):
        b0 = c * CHUNK_BYTES
        b1 = min(b0 + CHUNK_BYTES, nbytes)
        _mask_bytes(mask, b0, b1, n, ka, kb, offset, threshold)


@njit(cache=True, parallel=True)
def dropout_forward(x, out, mask, n, k0, k1, offset, threshold, scale):
    """mask bits as dropout_mask; out = x * scale where kept, else 0 (out may alias x)."""
    ka = np.uint64(k0)
    kb = np.uint64(k1)
    nbytes = (n + 7) >> 3
    nchunks = (nbytes + CHUNK_BYTES - 1) // CHUNK_BYTES
    for c in prange(nchunks):
        b0 = c * CHUNK_BYTES
        b1 = min(b0 + CHUNK_BYTES, nbytes)
        _mask_bytes(mask, b0, b1, n, ka, kb, offset, threshold)
        _apply(x, out, mask, b0, b1, n, scale)


@njit(cache=True, parallel=True)
def dropout_backward(dy, mask, dx, n, scale):
    """dx = dy * scale where the mask bit is set, else 0 (dx may alias dy)."""
    nbytes = (n + 7) >> 3
    nchunks = (nbytes + CHUNK_BYTES - 1) // CHUNK_BYTES
    for c in prange(nchunks):
        b0 = c * CHUNK_BYTES
        b1 = min(b0 + CHUNK_BYTES, nbytes)
        _apply(dy, dx, mask, b0, b1, n, scale)


# ReLU then dropout in one pass (Sequential fuses an adjacent ReLU -> Dropout pair; the meaning
# and the bit-exactness argument are in relu_dropout.h next to the Cython kernels).

@njit(cache=True, inline="always")
def _relu_bits(v):
    """max(v, 0) as ReLU computes it (v < 0 ? +0 : v, so NaN and -0 pass), branch-free."""
    return _and_bits(v, _ZERO - np.uint64(not v < 0))


@njit(cache=True, inline="always")
def _apply_relu(x, out, mask, b0, b1, n, scale):
    """out[i] = max(x[i], 0) * scale where mask bit i is set, else 0, i in [8*b0, min(8*b1, n))."""
    full = n >> 3
    bf = min(b1, full)
    for m in range(b0, bf):
        byte = np.uint64(mask[m])
        for j in range(8):
            i = 8 * m + j
            out[i] = _and_bits(_relu_bits(x[i]) * scale,
                               _ZERO - ((byte >> np.uint64(j)) & _ONE))
    if b1 > full >= b0:
        byte = np.uint64(mask[full])
        for i in range(8 * full, n):
            out[i] = _and_bits(_relu_bits(x[i]) * scale,
                               _ZERO - ((byte >> np.uint64(i & 7)) & _ONE))


@njit(cache=True, parallel=True)
def relu_dropout_forward(x, out, mask, n, k0, k1, offset, threshold, scale):
    """mask bits as dropout_mask; out = max(x, 0) * scale where kept, else 0."""
    ka = np.uint64(k0)
    kb = np.uint64(k1)
    nbytes = (n + 7) >> 3
    nchunks = (nbytes + CHUNK_BYTES - 1) // CHUNK_BYTES
    for c in prange(nchunks):
        b0 = c * CHUNK_BYTES
        b1 = min(b0 + CHUNK_BYTES, nbytes)
        _mask_bytes(mask, b0, b1, n, ka, kb, offset, threshold)
        _apply_relu(x, out, mask, b0, b1, n, scale)


@njit(cache=True, parallel=True)
def relu_dropout_backward(dy, out, dx, n, scale):
    """dx = dy * scale where out > 0, else 0 (the gradient through ReLU then dropout)."""
    chunk = 8 * CHUNK_BYTES
    nchunks = (n + chunk - 1) // chunk
    for c in prange(nchunks):
        for i in range(c * chunk, min(c * chunk + chunk, n)):
            dx[i] = _and_bits(dy[i] * scale, _ZERO - np.uint64(out[i] > 0))
