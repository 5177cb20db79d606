"""Numba backend of the linear-layer products: a cache-blocked, packed, parallel GEMM.

Shapes (all C-contiguous, one float dtype, checked by :mod:`fastreg._kernels.matmul`)::

    x (N, K)  weight (M, K)  bias (M,) | None  out (N, M)
    dy (N, M) dx (N, K)      dweight (M, K)    dbias (M,) | None

The three products are one routine, ``C[m, n] (+)= A[m, k] @ B[k, n]`` with A and B read through
(row stride, column stride) pairs on flat views:

    forward          out = x @ weight.T      A = x     (K, 1)   B = weight.T  (1, K)
    backward_input   dx  = dy @ weight       A = dy    (M, 1)   B = weight    (K, 1)
    backward_weight  dW  = dy.T @ x          A = dy.T  (1, M)   B = x         (K, 1)

Numba cannot hold a register tile across a loop the way the C kernel does (its arrays may alias,
so LLVM keeps the tile in memory), but it does vectorize a k-loop that carries scalar sums. So
the micro-kernel here is a 4 x 4 block of dot products over *k-contiguous* packed panels: 16
scalar accumulators that LLVM turns into 16 vector registers, 8 loads per 16 FMAs. Depth blocks
are long (KC) to amortize the 16 horizontal sums at the end of each block.

Blocking: for each column block (NC columns of C) and depth block (KC) the B block is packed
once, row by row (Bp[j * kc + p] = B[pc + p, j]), shared by all threads; then each thread takes
tasks of 4 rows x a chunk of 4-column quads, packs its 4 x kc sliver of A (Ap[i * kc + p]) into
its own scratch row, and runs the 4 x 4 kernel. The epilogue (bias + activation) is applied to
the 16 values as they are stored after the last depth block; dbias is summed from the packed A
sliver (each row is packed exactly once per depth block in the jc == 0, chunk 0 task).
"""
from __future__ import annotations

import threading

import numba
import numpy as np
from numba import njit, prange

from ._codes import ACT_IDENTITY, ACT_LEAKY_RELU, ACT_RELU, ACT_SIGMOID, ACT_TANH
from ._matmul_blas import epilogue

#: Reassociation and contraction let LLVM vectorize the k-loop reductions; no "nnan"/"ninf":
#: sigmoid relies on exp overflowing to inf, and NaN inputs must propagate.
_FM = {"reassoc", "contract", "nsz", "arcp"}
#: Register block (rows x columns of C per micro-kernel call).
MR = 4
NR = 4
#: Depth block; the B block (NC x KC) is sized for a 1 MiB L2 (512 KiB of it).
KC = 512
NC = {4: 256, 8: 128}
#: Below this many flops, one thread: a parallel launch costs more than it saves.
PAR_MIN_FLOPS = 1.0e6
#: Up to this many rows of C the product is a few GEMVs: no packing, no 4-row padding.
SMALL_M = 3


@njit(cache=True, fastmath=_FM)
def _act(v, act, slope):
    if act == ACT_RELU:
        return v if v > 0 else slope - slope  # a typed zero (slope is finite)
    if act == ACT_LEAKY_RELU:
        return v * slope if v < 0 else v
    if act == ACT_SIGMOID:
        return 1 / (1 + np.exp(-v))
    if act == ACT_TANH:
        return np.tanh(v)
    return v


@njit(cache=True, fastmath=_FM)
def _pack_rows(kc, src, off, rs, cs, rows, dst, doff):
    """dst[doff + r * kc + p] = src[off + r * rs + p * cs] for r < rows, zero rows up to 4."""
    if cs == 1:
        for r in range(rows):
            base = off + r * rs
            d = doff + r * kc
            for p in range(kc):
                dst[d + p] = src[base + p]
    else:
        for p in range(kc):
            base = off + p * cs
            for r in range(rows):
                dst[doff + r * kc + p] = src[base + r * rs]
    for r in range(rows, 4):
        d = doff + r * kc
        for p in range(kc):
            dst[d + p] = 0


@njit(cache=True, fastmath=_FM, inline="always")
def _put(C, idx, s, j, load_c, epi, bias, has_bias, act, slope):
    v = s + C[idx] if load_c else s
    if epi:
        if has_bias:
            v += bias[j]
        v = _act(v, act, slope)
    C[idx] = v


@njit(cache=True, fastmath=_FM)
def _tile_4x4(kc, Ap, ao, Bp, bo, C, coff, ldc, mr, nr, j0, load_c, epi, bias, has_bias, act,
              slope, zero):
    """C[i, j] (+)= sum_p Ap[i, p] * Bp[j, p] for the 4 x 4 tile at C[coff] (mr x nr valid)."""
    s00 = s01 = s02 = s03 = s10 = s11 = s12 = s13 = zero
    s20 = s21 = s22 = s23 = s30 = s31 = s32 = s33 = zero
    a1, a2, a3 = ao + kc, ao + 2 * kc, ao + 3 * kc
    b1, b2, b3 = bo + kc, bo + 2 * kc, bo + 3 * kc
    for p in range(kc):
        x0 = Ap[ao + p]
        x1 = Ap[a1 + p]
        x2 = Ap[a2 + p]
        x3 = Ap[a3 + p]
        w0 = Bp[bo + p]
        w1 = Bp[b1 + p]
        w2 = Bp[b2 + p]
        w3 = Bp[b3 + p]
        s00 += x0 * w0
        s01 += x0 * w1
        s02 += x0 * w2
        s03 += x0 * w3
        s10 += x1 * w0
        s11 += x1 * w1
        s12 += x1 * w2
        s13 += x1 * w3
        s20 += x2 * w0
        s21 += x2 * w1
        s22 += x2 * w2
        s23 += x2 * w3
        s30 += x3 * w0
        s31 += x3 * w1
        s32 += x3 * w2
        s33 += x3 * w3
    rows = ((s00, s01, s02, s03), (s10, s11, s12, s13), (s20, s21, s22, s23),
            (s30, s31, s32, s33))
    if mr == 4 and nr == 4:
        for i in range(4):
            r = rows[i]
            base = coff + i * ldc
            _put(C, base, r[0], j0, load_c, epi, bias, has_bias, act, slope)
            _put(C, base + 1, r[1], j0 + 1, load_c, epi, bias, has_bias, act, slope)
            _put(C, base + 2, r[2], j0 + 2, load_c, epi, bias, has_bias, act, slope)
            _put(C, base + 3, r[3], j0 + 3, load_c, epi, bias, has_bias, act, slope)
    else:
        for i in range(mr):
            r = rows[i]
            base = coff + i * ldc
            for j in range(nr):
                _put(C, base + j, r[j], j0 + j, load_c, epi, bias, has_bias, act, slope)


@njit(cache=True, parallel=True, fastmath=_FM)
def _gemm_small(m, n, k, A, rsa, csa, B, rsb, csb, C, ldc, accumulate, bias, has_bias, act,
                slope, rowsum, has_rowsum, nt, Arows, zero):
    """Few rows of C: GEMV loops straight from B (rsb == 1: dot form; csb == 1: axpy form)."""
    for i in range(m):
        for p in range(k):
            Arows[i * k + p] = A[i * rsa + p * csa]
    if has_rowsum:
        for i in range(m):
            s = zero
            for p in range(k):
                s += Arows[i * k + p]
            rowsum[i] = rowsum[i] + s if accumulate else s
    chunk = 256
    nchunks = (n + chunk - 1) // chunk
    for t in prange(nt):
        for ch in range(t, nchunks, nt):
            j0 = ch * chunk
            j1 = min(n, j0 + chunk)
            for i in range(m):
                xo = i * k
                co = i * ldc
                if rsb == 1:
                    for j in range(j0, j1):
                        bo = j * csb
                        s = zero
                        for p in range(k):
                            s += Arows[xo + p] * B[bo + p]
                        C[co + j] = C[co + j] + s if accumulate else s
                else:
                    if not accumulate:
                        for j in range(j0, j1):
                            C[co + j] = 0
                    for p in range(k):
                        xp = Arows[xo + p]
                        bo = p * rsb
                        for j in range(j0, j1):
                            C[co + j] += xp * B[bo + j]
                if has_bias or act != ACT_IDENTITY:
                    for j in range(j0, j1):
                        v = C[co + j]
                        if has_bias:
                            v += bias[j]
                        C[co + j] = _act(v, act, slope)


@njit(cache=True, parallel=True, fastmath=_FM)
def _gemm_blocked(m, n, k, A, rsa, csa, B, rsb, csb, C, ldc, accumulate, bias, has_bias, act,
                  slope, rowsum, has_rowsum, nt, Bp, Ap, kcb, ncb, zero):
    """C[m, n] (+)= A @ B; epilogue act(C + bias[n]) after the last depth block; rowsum (+)=
    A.sum(1). Bp holds (ncb rounded up to 4) x kcb, Ap holds nt rows of 4 x kcb."""
    rowq = (m + MR - 1) // MR
    for jc in range(0, n, ncb):
        nc = min(ncb, n - jc)
        nq = (nc + NR - 1) // NR
        nchunks = 1
        if nt > 1:
            nchunks = min(nq, (4 * nt + rowq - 1) // rowq)
        ntasks = rowq * nchunks
        for pc in range(0, k, kcb):
            kc = min(kcb, k - pc)
            load_c = accumulate or pc > 0
            last = pc + kc >= k
            for t in prange(nt):
                for q in range(t, nq, nt):
                    j0 = jc + q * NR
                    _pack_rows(kc, B, pc * rsb + j0 * csb, csb, rsb, min(NR, n - j0), Bp,
                               q * NR * kc)
            for t in prange(nt):
                ao = t * MR * kcb
                for task in range(t, ntasks, nt):
                    iq = task // nchunks
                    ch = task % nchunks
                    i0 = iq * MR
                    mr = min(MR, m - i0)
                    _pack_rows(kc, A, i0 * rsa + pc * csa, rsa, csa, mr, Ap, ao)
                    if has_rowsum and jc == 0 and ch == 0:
                        for i in range(mr):
                            s = zero
                            for p in range(kc):
                                s += Ap[ao + i * kc + p]
                            rowsum[i0 + i] = rowsum[i0 + i] + s if load_c else s
                    q0 = ch * nq // nchunks
                    q1 = (ch + 1) * nq // nchunks
                    for q in range(q0, q1):
                        j0 = jc + q * NR
                        _tile_4x4(kc, Ap, ao, Bp, q * NR * kc, C, i0 * ldc + j0, ldc, mr,
                                  min(NR, n - j0), j0, load_c, last, bias, has_bias, act, slope,
                                  zero)


_EMPTY = {np.dtype(np.float32): np.zeros(0, np.float32),
          np.dtype(np.float64): np.zeros(0, np.float64)}
_scratch = threading.local()


def _get_scratch(dt: np.dtype, n: int) -> np.ndarray:
    """A per-calling-thread buffer of at least n elements, kept for the next call."""
    buf = getattr(_scratch, dt.name, None)
    if buf is None or buf.size < n:
        buf = np.empty(max(n, 1), dt)
        setattr(_scratch, dt.name, buf)
    return buf


def _gemm(m, n, k, A, rsa, csa, B, rsb, csb, C, ldc, accumulate, bias, act, slope, rowsum):
    dt = C.dtype
    zero = dt.type(0)
    A, B, C = A.reshape(-1), B.reshape(-1), C.reshape(-1)
    has_bias, has_rowsum = bias is not None, rowsum is not None
    bias = _EMPTY[dt] if bias is None else bias
    rowsum = _EMPTY[dt] if rowsum is None else rowsum
    if m == 0 or n == 0:
        return
    if k == 0:  # empty sum: C = act(beta * C + bias)
        if not accumulate:
            C[...] = 0
            if has_rowsum:
                rowsum[...] = 0
        epilogue(C.reshape(m, ldc), bias if has_bias else None, act, slope)
        return
    flops = 2.0 * m * n * k
    nt = numba.get_num_threads() if flops >= PAR_MIN_FLOPS else 1
    slope = dt.type(slope)
    if m <= SMALL_M and (rsb == 1 or csb == 1):
        ncks = (n + 255) // 256
        _gemm_small(m, n, k, A, rsa, csa, B, rsb, csb, C, ldc, bool(accumulate), bias, has_bias,
                    act, slope, rowsum, has_rowsum, max(1, min(nt, ncks)),
                    _get_scratch(dt, m * k), zero)
        return
    kblocks = (k + KC - 1) // KC
    kcb = (k + kblocks - 1) // kblocks
    ncb = min(NC[dt.itemsize], n)
    nbp = (ncb + NR - 1) // NR * NR * kcb
    buf = _get_scratch(dt, nbp + nt * MR * kcb)
    _gemm_blocked(m, n, k, A, rsa, csa, B, rsb, csb, C, ldc, bool(accumulate), bias, has_bias,
                  act, slope, rowsum, has_rowsum, nt, buf[:nbp], buf[nbp:], kcb, ncb, zero)


def linear_forward(x, weight, bias, out, act, slope):
    """out[N, M] = act(x[N, K] @ weight[M, K].T + bias[M]) (arguments already validated)."""
    N, K = x.shape
    M = weight.shape[0]
    _gemm(N, M, K, x, K, 1, weight, 1, K, out, M, False, bias, act, slope, None)
    return out


def linear_backward_input(dy, weight, dx):
    """dx[N, K] = dy[N, M] @ weight[M, K] (overwrites dx)."""
    N, M = dy.shape
    K = weight.shape[1]
    _gemm(N, K, M, dy, M, 1, weight, K, 1, dx, K, False, None, ACT_IDENTITY, 0.0, None)
    return dx


def linear_backward_weight(dy, x, dweight, dbias, accumulate):
    """dweight[M, K] (+)= dy.T @ x; dbias[M] (+)= dy.sum(0), in the same pass over dy."""
    N, M = dy.shape
    K = x.shape[1]
    _gemm(M, K, N, dy, 1, M, x, K, 1, dweight, K, accumulate, None, ACT_IDENTITY, 0.0, dbias)
