"""Dropout kernels, CUDA backend (numba.cuda). Same names and positional signatures as
dropout/numba.py; every array is a (flat) device array checked by fastreg/_kernels/dropout/__init__.py.

The RNG is the one specified in fastreg/_kernels/dropout/__init__.py (Philox4x32-10, counter
``offset + b`` for block ``b``, element ``i`` <- word ``i % 4`` of block ``i // 4``, kept iff
``word < threshold``, bit ``i & 7`` of mask byte ``i >> 3``), so masks equal the CPU masks bit for
bit: a mask depends on ``(seed, offset, i)`` only, never on the launch geometry.

Kernel design
-------------
* Work unit = one mask byte = 8 elements = two Philox blocks. One thread owns a whole byte, so no
  two threads ever write the same byte (no atomics, no read-modify-write races), and consecutive
  threads write consecutive bytes (coalesced).
* ``dropout_forward`` works on tiles of ``THREADS * 8`` elements (256 threads -> 2048 elements,
  256 mask bytes). Phase 1: thread t computes byte t of the tile, stores it to global memory and
  to a 256-byte shared array. ``syncthreads``. Phase 2: thread t applies the mask to elements
  t, t + 256, ..., t + 7*256 of the tile, reading its bit from shared memory, so every warp
  reads/writes 32 consecutive floats per instruction (fully coalesced; the 8 threads that read
  one shared byte get a broadcast, no bank conflicts). A second ``syncthreads`` keeps the shared
  bytes alive until the whole block has used them. Tiles are walked grid-stride; the tile loop's
  bounds depend on the block index only, so every thread of a block reaches both barriers.
* ``dropout_backward`` needs no RNG: a grid-stride loop with one element per thread; the 8
  threads sharing a mask byte hit the same cache line (L1 broadcast).
* The Philox rounds are the Numba backend's, compiled from the same source
  (``dropout/maths.py``): 32-bit words held in uint64, exact 64-bit products, no mulhi
  intrinsic (which the simulator lacks). The counter ``offset + b`` is formed from the host-split halves of ``offset`` with an explicit carry,
  so nothing overflows even in the simulator's NumPy scalars, and it wraps modulo 2**64 as the
  spec says. All integer operands are uint64 (numba types uint64 op int64 as float64).
* Dropped elements are written as +0.0 by a select, not a multiply by 0, so dropped inf/nan give
  0 exactly as on the CPU.
"""
from __future__ import annotations

import numpy as np
from numba import cuda, uint8

from ..runtime import cuda as _cuda_runtime
from . import maths
from .maths import LO as _LO
from .maths import S32 as _S32

#: Threads per block; one mask byte per thread, so a forward tile is THREADS * 8 elements.
THREADS = 256
TILE = THREADS * 8

_ZERO = np.uint64(0)
_ONE = np.uint64(1)
_TWO = np.uint64(2)
_EIGHT = np.uint64(8)


# The Philox rounds (dropout/maths.py), shared with the Numba backend.
_philox10 = cuda.jit(device=True, inline=True, cache=True)(maths.philox4x32_10)


@cuda.jit(device=True, cache=True)
def _bit(word, threshold, shift):
    """``1 << shift`` if the element with this word is kept, else 0 (uint64)."""
    if word < threshold:
        return _ONE << shift
    return _ZERO


@cuda.jit(device=True, cache=True)
def _mask_byte(m, n, k0, k1, off_lo, off_hi, threshold):
    """Keep bits of elements 8m .. 8m+7 (Philox blocks 2m, 2m+1); bits >= n cleared. uint64."""
    b = _TWO * np.uint64(m)
    s = off_lo + b                          # < 2**63: no overflow; carry goes into the high word
    a0, a1, a2, a3 = _philox10(s & _LO, (off_hi + (s >> _S32)) & _LO, _ZERO, _ZERO, k0, k1)
    s = s + _ONE
    e0, e1, e2, e3 = _philox10(s & _LO, (off_hi + (s >> _S32)) & _LO, _ZERO, _ZERO, k0, k1)
    byte = (_bit(a0, threshold, np.uint64(0)) | _bit(a1, threshold, np.uint64(1))
            | _bit(a2, threshold, np.uint64(2)) | _bit(a3, threshold, np.uint64(3))
            | _bit(e0, threshold, np.uint64(4)) | _bit(e1, threshold, np.uint64(5))
            | _bit(e2, threshold, np.uint64(6)) | _bit(e3, threshold, np.uint64(7)))
    valid = np.uint64(n) - _EIGHT * np.uint64(m)      # elements left from 8m on (>= 1)
    if valid < _EIGHT:
        byte &= (_ONE << valid) - _ONE                # the spec's zero tail bits
    return byte


@cuda.jit(cache=True)
def _philox_blocks_kernel(ctr, out, k0, k1):
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for b in range(start, ctr.shape[0], stride):
        c0, c1, c2, c3 = _philox10(np.uint64(ctr[b, 0]), np.uint64(ctr[b, 1]),
                                   np.uint64(ctr[b, 2]), np.uint64(ctr[b, 3]), k0, k1)
        out[b, 0] = np.uint32(c0)
        out[b, 1] = np.uint32(c1)
        out[b, 2] = np.uint32(c2)
        out[b, 3] = np.uint32(c3)


@cuda.jit(cache=True)
def _mask_kernel(mask, n, k0, k1, off_lo, off_hi, threshold):
    # one thread per mask byte, grid-stride; consecutive threads write consecutive bytes
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for m in range(start, mask.shape[0], stride):
        mask[m] = np.uint8(_mask_byte(m, n, k0, k1, off_lo, off_hi, threshold))


@cuda.jit(cache=True)
def _forward_kernel(x, out, mask, n, k0, k1, off_lo, off_hi, threshold, scale):
    bits = cuda.shared.array(THREADS, dtype=uint8)   # this tile's mask bytes
    t = cuda.threadIdx.x
    zero = scale - scale                              # +0.0 in the data dtype (scale is finite)
    nbytes = mask.shape[0]
    ntiles = (nbytes + THREADS - 1) // THREADS
    for tile in range(cuda.blockIdx.x, ntiles, cuda.gridDim.x):   # block-uniform bounds
        # phase 1: one mask byte per thread, to global memory and to shared memory
        m = tile * THREADS + t
        if m < nbytes:
            byte = np.uint8(_mask_byte(m, n, k0, k1, off_lo, off_hi, threshold))
            mask[m] = byte
            bits[t] = byte
        cuda.syncthreads()
        # phase 2: element e of the tile is handled by thread e % THREADS (coalesced x / out)
        base = tile * TILE
        for j in range(8):
            e = j * THREADS + t
            i = base + e
            if i < n:
                if (bits[e >> 3] >> (e & 7)) & 1:
                    out[i] = x[i] * scale
                else:
                    out[i] = zero
        cuda.syncthreads()                            # bits is rewritten by the next tile


@cuda.jit(cache=True)
def _backward_kernel(dy, mask, dx, n, scale):
    zero = scale - scale
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, n, stride):
        if (mask[i >> 3] >> (i & 7)) & 1:
            dx[i] = dy[i] * scale
        else:
            dx[i] = zero


def _split_offset(offset):
    off = int(offset)
    return np.uint64(off & 0xFFFFFFFF), np.uint64(off >> 32)


def philox4x32_10_blocks(ctr, out, k0, k1):
    """out[b] = Philox4x32-10(ctr[b], (k0, k1)) for each row b of the (B, 4) uint32 arrays."""
    nb = ctr.shape[0]
    if nb == 0:
        return
    blocks = _cuda_runtime.blocks_for(nb, THREADS)
    _philox_blocks_kernel[blocks, THREADS](ctr, out, np.uint64(k0), np.uint64(k1))


def dropout_mask(mask, n, k0, k1, offset, threshold):
    """Write the keep bits of elements 0..n-1 into mask (ceil(n/8) bytes)."""
    off_lo, off_hi = _split_offset(offset)
    blocks = _cuda_runtime.blocks_for(mask.shape[0], THREADS)
    _mask_kernel[blocks, THREADS](mask, np.int64(n), np.uint64(k0), np.uint64(k1), off_lo,
                                  off_hi, np.uint64(threshold))


def dropout_forward(x, out, mask, n, k0, k1, offset, threshold, scale):
    """mask bits as dropout_mask; out = x * scale where kept, else 0 (out may be x)."""
    off_lo, off_hi = _split_offset(offset)
    blocks = _cuda_runtime.blocks_for(mask.shape[0], THREADS)   # one tile of bytes per block
    _forward_kernel[blocks, THREADS](x, out, mask, np.int64(n), np.uint64(k0), np.uint64(k1),
                                     off_lo, off_hi, np.uint64(threshold), scale)


def dropout_backward(dy, mask, dx, n, scale):
    """dx = dy * scale where the mask bit is set, else 0 (dx may be dy)."""
    blocks = _cuda_runtime.blocks_for(int(n), THREADS)
    _backward_kernel[blocks, THREADS](dy, mask, dx, np.int64(n), scale)


# ReLU then dropout in one pass (Sequential's fusion; meaning in dropout/relu_dropout.h).

@cuda.jit(cache=True)
def _relu_forward_kernel(x, out, mask, n, k0, k1, off_lo, off_hi, threshold, scale):
    bits = cuda.shared.array(THREADS, dtype=uint8)   # as _forward_kernel, with ReLU on x
    t = cuda.threadIdx.x
    zero = scale - scale
    nbytes = mask.shape[0]
    ntiles = (nbytes + THREADS - 1) // THREADS
    for tile in range(cuda.blockIdx.x, ntiles, cuda.gridDim.x):
        m = tile * THREADS + t
        if m < nbytes:
            byte = np.uint8(_mask_byte(m, n, k0, k1, off_lo, off_hi, threshold))
            mask[m] = byte
            bits[t] = byte
        cuda.syncthreads()
        base = tile * TILE
        for j in range(8):
            e = j * THREADS + t
            i = base + e
            if i < n:
                if (bits[e >> 3] >> (e & 7)) & 1:
                    v = x[i]
                    out[i] = (zero if v < 0 else v) * scale
                else:
                    out[i] = zero
        cuda.syncthreads()


@cuda.jit(cache=True)
def _relu_backward_kernel(dy, out, dx, n, scale):
    zero = scale - scale
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, n, stride):
        if out[i] > 0:
            dx[i] = dy[i] * scale
        else:
            dx[i] = zero


def relu_dropout_forward(x, out, mask, n, k0, k1, offset, threshold, scale):
    """mask bits as dropout_mask; out = max(x, 0) * scale where kept, else 0."""
    off_lo, off_hi = _split_offset(offset)
    blocks = _cuda_runtime.blocks_for(mask.shape[0], THREADS)
    _relu_forward_kernel[blocks, THREADS](x, out, mask, np.int64(n), np.uint64(k0),
                                          np.uint64(k1), off_lo, off_hi, np.uint64(threshold),
                                          scale)


def relu_dropout_backward(dy, out, dx, n, scale):
    """dx = dy * scale where out > 0, else 0 (dx may be dy)."""
    blocks = _cuda_runtime.blocks_for(int(n), THREADS)
    _relu_backward_kernel[blocks, THREADS](dy, out, dx, np.int64(n), scale)
