"""Dropout with a counter-based RNG: bit masks from Philox4x32-10, applied in one pass.

RNG specification (fixed: the Numba, Cython and CUDA kernels and the NumPy reference below all
follow it, so a mask depends only on ``(seed, offset, i)``, never on the backend, the
thread count or the dtype):

* Generator: Philox4x32-10 (Salmon, Moraes, Dror & Shaw, "Parallel random numbers: as easy as
  1, 2, 3", SC'11), Random123 constants M0 = 0xD2511F53, M1 = 0xCD9E8D57 (multipliers) and
  W0 = 0x9E3779B9, W1 = 0xBB67AE85 (Weyl key increments). One round maps counter
  ``(c0, c1, c2, c3)`` with key ``(k0, k1)`` to
  ``(hi(M1·c2) ^ c1 ^ k0, lo(M1·c2), hi(M0·c0) ^ c3 ^ k1, lo(M0·c0))``; the key is bumped by
  ``(W0, W1)`` between rounds; ten rounds.
* Key: ``(k0, k1) = (seed & 0xffffffff, seed >> 32)`` for a 64-bit ``seed``.
* Counter: block ``b`` (0-based within one call) uses ``(lo32(offset + b), hi32(offset + b), 0, 0)``
  with the addition taken modulo 2**64. A call over ``n`` elements uses
  ``philox_blocks(n) = ceil(n / 4)`` blocks; the caller advances its offset by that much (the
  Dropout module does it through ``fastreg._random.default_generator.reserve_philox``).
* Element ``i`` (flat, C order) uses output word ``i % 4`` of block ``i // 4`` and is **kept** iff
  ``word < threshold`` with ``threshold = floor((1 - p) · 2**32)`` computed exactly from the float
  ``p`` (p = 0 gives 2**32: keep all). Hence P(keep) = threshold / 2**32, within 2**-32 of 1 - p.
* Mask storage: ``mask_nbytes(n) = ceil(n / 8)`` uint8 bytes; bit ``j`` (LSB first) of byte ``k``
  is element ``8k + j``; 1 = kept. Unused bits of the last byte are 0.

Kernels (shapes: ``x``, ``out``, ``dy``, ``dx`` any shape, C-contiguous, one float dtype;
``mask`` 1-D uint8 of ``mask_nbytes(x.size)`` bytes):

* ``dropout_forward``: mask bits and ``out = x · scale`` where kept, else 0, in one pass.
  Inverted dropout passes ``scale = 1 / (1 - p)``; the classic form passes ``scale = 1`` in
  training and multiplies by ``1 - p`` at inference.
* ``dropout_backward``: ``dx = dy · scale`` where kept, else 0.
* ``dropout_mask``: the bits only.

``p = 0`` and evaluation mode are the caller's fast path: the module returns its input without a
copy and without calling these kernels (nor reserving Philox blocks); the kernels still accept
``p = 0`` and then keep every element.
"""
from __future__ import annotations

from fractions import Fraction
from functools import lru_cache

import numpy as np

from ..._checks import (
    check_array,
    check_scalar,
    float_dtype,
    may_share_memory,
    no_overlap,
    on_device,
    same_memory,
)
from .. import _dispatch
from ..runtime import cuda as _cuda_runtime
from .codes import _MASK32, _MASK64, PHILOX_M0, PHILOX_M1, PHILOX_ROUNDS, PHILOX_W0, PHILOX_W1


def mask_nbytes(n: int) -> int:
    """Bytes of the bit mask for ``n`` elements: ``ceil(n / 8)``."""
    return (int(n) + 7) // 8


def philox_blocks(n: int) -> int:
    """Philox counter blocks one dropout call over ``n`` elements uses: ``ceil(n / 4)``."""
    return (int(n) + 3) // 4


@lru_cache(maxsize=64)          # exact Fraction arithmetic costs ~10 us; a model uses few p values
def keep_threshold(p: float) -> int:
    """``floor((1 - p) · 2**32)`` as an exact integer (element kept iff its word is below it)."""
    return int((1 - Fraction(float(p))) * (1 << 32))   # int() floors a positive Fraction


# ---------------------------------------------------------------------------------------------
# NumPy reference (vectorized; used by the tests, fine for small inputs)
# ---------------------------------------------------------------------------------------------

def philox4x32(counters, key) -> np.ndarray:
    """Philox4x32-10 of each counter block (pure NumPy reference).

    Parameters
    ----------
    counters : array_like of uint32, shape (B, 4)
        Counter blocks ``(c0, c1, c2, c3)``.
    key : tuple of two ints
        ``(k0, k1)``, each in [0, 2**32).

    Returns
    -------
    numpy.ndarray of uint32, shape (B, 4)
        The ten-round output words.
    """
    c = np.asarray(counters, dtype=np.uint64).reshape(-1, 4) & np.uint64(_MASK32)
    c0, c1, c2, c3 = (c[:, j].copy() for j in range(4))
    k0, k1 = int(key[0]) & _MASK32, int(key[1]) & _MASK32
    m0, m1, lo = np.uint64(PHILOX_M0), np.uint64(PHILOX_M1), np.uint64(_MASK32)
    for _ in range(PHILOX_ROUNDS):
        p0 = m0 * c0                     # < 2**64: exact in uint64
        p1 = m1 * c2
        c0, c1, c2, c3 = ((p1 >> np.uint64(32)) ^ c1 ^ np.uint64(k0), p1 & lo,
                          (p0 >> np.uint64(32)) ^ c3 ^ np.uint64(k1), p0 & lo)
        k0 = (k0 + PHILOX_W0) & _MASK32
        k1 = (k1 + PHILOX_W1) & _MASK32
    return np.stack([c0, c1, c2, c3], axis=1).astype(np.uint32)


def dropout_keep_reference(n: int, p: float, seed: int, offset: int) -> np.ndarray:
    """Boolean keep decisions of elements 0..n-1 by the spec above (NumPy reference)."""
    nb = philox_blocks(n)
    ctr = (np.arange(nb, dtype=np.uint64) + np.uint64(offset & _MASK64))  # wraps mod 2**64
    counters = np.zeros((nb, 4), dtype=np.uint64)
    counters[:, 0] = ctr & np.uint64(_MASK32)
    counters[:, 1] = ctr >> np.uint64(32)
    words = philox4x32(counters, (seed & _MASK32, (seed >> 32) & _MASK32)).reshape(-1)[:n]
    return words.astype(np.uint64) < np.uint64(keep_threshold(p))


# ---------------------------------------------------------------------------------------------
# Public kernels
# ---------------------------------------------------------------------------------------------

def _check_p(p) -> float:
    v = check_scalar("p", p)
    if not 0.0 <= v < 1.0:
        raise ValueError(f"p must be in [0, 1), got {p!r}")
    return v


def _check_u64(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    v = int(value)
    if not 0 <= v <= _MASK64:
        raise ValueError(f"{name} must be in [0, 2**64), got {value!r}")
    return v


def _check_mask(mask, n: int, writeable: bool):
    check_array("mask", mask, dtype=np.uint8, ndim=1, writeable=writeable)
    if mask.size != mask_nbytes(n):
        raise ValueError(f"mask must have mask_nbytes({n}) = {mask_nbytes(n)} bytes, "
                         f"got shape {mask.shape}")
    return mask


def _rng_args(p: float, seed: int, offset: int):
    """(k0, k1, offset, threshold) as the fixed integer types every backend takes (arguments
    already checked)."""
    return (np.uint32(seed & _MASK32), np.uint32(seed >> 32), np.uint64(offset),
            np.uint64(keep_threshold(p)))


def dropout_forward(x: np.ndarray, out: np.ndarray, mask: np.ndarray, p: float, scale: float,
                    seed: int, offset: int, backend: str | None = None) -> np.ndarray:
    """Inverted (or classic) dropout forward with a Philox bit mask.

    .. math:: m_i = [\\mathrm{word}_i < \\lfloor (1-p) 2^{32} \\rfloor], \\qquad
              \\mathrm{out}_i = m_i \\, x_i \\cdot \\mathrm{scale}

    Parameters
    ----------
    x : ndarray, float32 or float64, any shape, C-contiguous
    out : ndarray, same shape and dtype as ``x``, writeable; may be ``x`` itself (in place).
    mask : ndarray of uint8, shape ``(mask_nbytes(x.size),)``, writeable
        Receives the keep bits (see the module docstring).
    p : float in [0, 1)
        Drop probability.
    scale : float
        Factor for kept elements (``1 / (1 - p)`` for inverted dropout).
    seed, offset : int in [0, 2**64)
        Philox key and first counter block (reserve ``philox_blocks(x.size)`` blocks).
    backend : {"numba", "cython", "auto", "cuda"}, optional
        CUDA device arrays (all arrays of the call, never a mix) run on "cuda"; for them only
        None, "auto" or "cuda" are valid.

    Returns
    -------
    out
    """
    dt = float_dtype("x", x)
    check_array("x", x)
    check_array("out", out, dtype=dt, shape=x.shape, writeable=True)
    _check_mask(mask, x.size, writeable=True)
    no_overlap(mask=mask, x=x)
    no_overlap(mask=mask, out=out)
    # in place is fine (element i is read before it is written); partial overlap is not
    if out is not x and may_share_memory(out, x) and not same_memory(out, x):
        raise ValueError("out must be x itself or not overlap x")
    dev = on_device(x=x, out=out, mask=mask)
    scale = check_scalar("scale", scale)
    p = _check_p(p)
    seed = _check_u64("seed", seed)
    offset = _check_u64("offset", offset)
    return run_dropout_forward(x, out, mask, p, scale, seed, offset, dev, backend)


def dropout_backward(dy: np.ndarray, mask: np.ndarray, dx: np.ndarray, scale: float,
                     backend: str | None = None) -> np.ndarray:
    """Dropout backward: ``dx_i = m_i · dy_i · scale`` with the forward pass's mask bits.

    Parameters
    ----------
    dy : ndarray, float32 or float64, any shape, C-contiguous
    mask : ndarray of uint8, shape ``(mask_nbytes(dy.size),)``, from ``dropout_forward``
    dx : ndarray, same shape and dtype as ``dy``, writeable; may be ``dy`` (in place)
    scale : float
        The forward pass's scale.
    backend : {"numba", "cython", "auto", "cuda"}, optional
        As in :func:`dropout_forward` (device arrays run on "cuda").

    Returns
    -------
    dx
    """
    dt = float_dtype("dy", dy)
    check_array("dy", dy)
    _check_mask(mask, dy.size, writeable=False)
    check_array("dx", dx, dtype=dt, shape=dy.shape, writeable=True)
    no_overlap(mask=mask, dx=dx)
    if dx is not dy and may_share_memory(dx, dy) and not same_memory(dx, dy):
        raise ValueError("dx must be dy itself or not overlap dy")
    dev = on_device(dy=dy, mask=mask, dx=dx)
    scale = check_scalar("scale", scale)
    return run_dropout_backward(dy, mask, dx, scale, dev, backend)


def dropout_mask(mask: np.ndarray, n: int, p: float, seed: int, offset: int,
                 backend: str | None = None) -> np.ndarray:
    """Write only the keep bits of ``n`` elements (same bits as ``dropout_forward``).

    Parameters
    ----------
    mask : ndarray of uint8, shape ``(mask_nbytes(n),)``, writeable
    n : int >= 0
        Number of elements.
    p, seed, offset : as in :func:`dropout_forward`
    backend : {"numba", "cython", "auto", "cuda"}, optional
        As in :func:`dropout_forward` (device arrays run on "cuda").

    Returns
    -------
    mask
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n must be an integer, got {n!r}")
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n!r}")
    n = int(n)
    _check_mask(mask, n, writeable=True)
    dev = on_device(mask=mask)
    k0, k1, off, thr = _rng_args(_check_p(p), _check_u64("seed", seed),
                                 _check_u64("offset", offset))
    if n == 0:
        return mask
    fn = _dispatch.kernel("dropout", "dropout_mask", backend, device=dev)
    fn(mask, np.int64(n), k0, k1, off, thr)
    return mask


def philox4x32_kernel(counters, key, backend: str | None = None):
    """Philox4x32-10 computed by a compiled backend (for known-answer tests of the kernels).

    ``counters``: array_like of uint32 blocks ``(B, 4)``, or a C-contiguous uint32 CUDA device
    array of shape ``(B, 4)``; the result (uint32, ``(B, 4)``) is then a new device array.
    """
    dev = on_device(counters=counters)
    if dev:
        ctr = check_array("counters", counters, dtype=np.uint32, shape=(None, 4))
        out = _cuda_runtime.empty(ctr.shape, np.uint32)
    else:
        ctr = np.ascontiguousarray(counters, dtype=np.uint32).reshape(-1, 4)
        out = np.empty_like(ctr)
    fn = _dispatch.kernel("dropout", "philox4x32_10_blocks", backend, device=dev)
    fn(ctr, out, np.uint32(int(key[0]) & _MASK32), np.uint32(int(key[1]) & _MASK32))
    return out


# ---------------------------------------------------------------------------------------------
# Trusted entry points: for callers that have checked the arrays and scalars themselves (the
# Dropout module). Same meaning and argument order as the checked functions, with the placement
# as ``device`` (True: CUDA device arrays) and no checks.
# ---------------------------------------------------------------------------------------------

def run_dropout_forward(x, out, mask, p: float, scale: float, seed: int, offset: int,
                        device: bool = False, backend: str | None = None):
    """Trusted :func:`dropout_forward`."""
    n = x.size
    if n == 0:
        return out
    k0, k1, off, thr = _rng_args(p, seed, offset)
    fn = _dispatch.kernel("dropout", "dropout_forward", backend, device)
    fn(x.reshape(-1), out.reshape(-1), mask, np.int64(n), k0, k1, off, thr, x.dtype.type(scale))
    return out


def run_dropout_backward(dy, mask, dx, scale: float, device: bool = False,
                         backend: str | None = None):
    """Trusted :func:`dropout_backward`."""
    n = dy.size
    if n == 0:
        return dx
    fn = _dispatch.kernel("dropout", "dropout_backward", backend, device)
    fn(dy.reshape(-1), mask, dx.reshape(-1), np.int64(n), dy.dtype.type(scale))
    return dx


def run_relu_dropout_forward(x, out, mask, p: float, scale: float, seed: int, offset: int,
                             device: bool = False, backend: str | None = None):
    """Trusted ReLU then dropout in one pass (Sequential's fusion of an adjacent pair).

    .. math:: \\mathrm{out}_i = m_i \\, \\max(x_i, 0) \\cdot \\mathrm{scale}

    with the mask bits ``m`` of :func:`dropout_forward` (same RNG, same bits written to
    ``mask``); bit-identical to ``activation_forward(x, y, "relu")`` followed by
    ``dropout_forward(y, out, ...)``. ``scale`` must be >= 1 (inverted ``1/(1-p)`` or classic
    ``1``), which the backward relies on.
    """
    n = x.size
    if n == 0:
        return out
    k0, k1, off, thr = _rng_args(p, seed, offset)
    fn = _dispatch.kernel("dropout", "relu_dropout_forward", backend, device)
    fn(x.reshape(-1), out.reshape(-1), mask, np.int64(n), k0, k1, off, thr, x.dtype.type(scale))
    return out


def run_relu_dropout_backward(dy, out, dx, scale: float, device: bool = False,
                              backend: str | None = None):
    """Trusted gradient through ReLU then dropout, from the fused forward's ``out``.

    .. math:: dx_i = [\\mathrm{out}_i > 0] \\, dy_i \\cdot \\mathrm{scale}

    With ``scale >= 1``, ``out_i > 0`` exactly where the element was kept and ``max(x_i, 0) > 0``,
    so this equals dropout's backward followed by ReLU's, bit for bit (dx may be dy).
    """
    n = dy.size
    if n == 0:
        return dx
    fn = _dispatch.kernel("dropout", "relu_dropout_backward", backend, device)
    fn(dy.reshape(-1), out.reshape(-1), dx.reshape(-1), np.int64(n), dy.dtype.type(scale))
    return dx
