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

Blocking: C is cut into tiles of at most MC rows x nc columns (nc from the L2 budget, smaller
when needed to give every thread work), dealt round-robin to the threads of one prange: no
barrier inside the call. A tile walks the depth in KC blocks: it packs its B block row by row
(Bp[j * kc + p] = B[pc + p, j], L2), then for each 4-row sliver of A packs it (Ap[i * kc + p],
L1) and runs the 4 x 4 kernel across the B block. The epilogue (bias + activation) is applied
to the 16 values as they are stored after the last depth block; dbias is summed from the packed
A sliver (in the tiles of column block 0, where each row is packed once per depth block).

Few rows of C (batch-1 inference) or a short depth (weight gradients of a small batch) go to
``_gemm_rows`` instead: GEMV dot products or axpy over B's rows, no packing, no 4 x 4 padding.
"""
from __future__ import annotations

import threading
import types

import numba
import numpy as np
from numba import njit, prange

from ..common import activations
from .blas import epilogue
from .codes import ACT_IDENTITY, ACT_LEAKY_RELU, ACT_RELU, ACT_SIGMOID, ACT_TANH

#: Reassociation and contraction let LLVM vectorize the k-loop reductions; no "nnan"/"ninf":
#: sigmoid relies on exp(-v) overflowing to inf for very negative v.
_FM = {"reassoc", "contract", "nsz", "arcp"}
#: Register block (rows x columns of C per micro-kernel call).
MR = 4
NR = 4
#: Depth block (long: amortizes the 16 horizontal sums per tile). Packed panels are zero-padded
#: to a multiple of KPAD so the vector loop has no scalar remainder.
KC = 1024
KPAD = 16
#: Bytes of L2 (1 MiB per Zen 4 core) the packed B block may use: its width follows from kc.
L2_BLOCK_BYTES = 512 * 1024
#: Rows of C per task (at most).
MC = 128
#: Below this much work, one thread (same thresholds and reasons as gemm_impl.h: a
#: parallel launch is cheap on a quiet machine, but waits for an OS time slice when another
#: process holds the second core). GEMV: per row of C, i.e. weights >= 2M elements.
PAR_MIN_FLOPS = 8.0e6
PAR_MIN_FLOPS_GEMV = 4.0e6
#: Up to this many rows of C the product is a few GEMVs: no packing, no 4-row padding.
SMALL_M = 3
#: Up to this depth (and B rows contiguous) C is built by axpy over B's rows instead.
SHORT_K = 64


# The activation formulas (common/activations.py, shared with the CUDA backends), inlined.
_inline = njit(cache=True, fastmath=_FM, inline="always")
_relu = _inline(activations.relu)
_leaky_relu = _inline(activations.leaky_relu)


@njit(cache=True, fastmath=_FM)
def _act(v, act, slope):
    zero = slope - slope  # a typed zero (slope is finite)
    if act == ACT_RELU:
        return _relu(v, zero)  # keeps NaN
    if act == ACT_LEAKY_RELU:
        return _leaky_relu(v, slope, zero)
    if act == ACT_SIGMOID:
        # Not activations.sigmoid's two-sided form: in this scalar epilogue its choice on the
        # sign of v compiles to an unpredictable branch (+10% on a sigmoid linear_forward).
        # The one-sided form is exact here too: np.exp overflows quietly to inf, giving 0.
        return 1 / (1 + np.exp(-v))
    if act == ACT_TANH:
        return np.tanh(v)
    return v


@njit(cache=True, fastmath=_FM)
def _pack_rows(kv, kc, src, off, rs, cs, rows, dst, doff):
    """dst[doff + r * kc + p] = src[off + r * rs + p * cs] for r < rows and p < kv; zero for the
    padding (rows up to 4, p from kv up to kc)."""
    for r in range(4):
        d = dst[doff + r * kc:doff + (r + 1) * kc]  # a slice: no wraparound checks inside
        if r >= rows:
            d[:] = 0
            continue
        if cs == 1:
            d[:kv] = src[off + r * rs:off + r * rs + kv]
        else:
            s = src[off + r * rs:]
            for p in range(kv):
                d[p] = s[p * cs]
        d[kv:] = 0


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
    # Slices, not offset arithmetic: numba's negative-index wraparound on "Ap[ao + p]" (ao of
    # unknown sign) turns the vectorized loads into gathers; "a0[p]" with p in range() does not.
    a0, a1 = Ap[ao:ao + kc], Ap[ao + kc:ao + 2 * kc]
    a2, a3 = Ap[ao + 2 * kc:ao + 3 * kc], Ap[ao + 3 * kc:ao + 4 * kc]
    b0, b1 = Bp[bo:bo + kc], Bp[bo + kc:bo + 2 * kc]
    b2, b3 = Bp[bo + 2 * kc:bo + 3 * kc], Bp[bo + 3 * kc:bo + 4 * kc]
    for p in range(kc):
        x0 = a0[p]
        x1 = a1[p]
        x2 = a2[p]
        x3 = a3[p]
        w0 = b0[p]
        w1 = b1[p]
        w2 = b2[p]
        w3 = b3[p]
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
def _gemm_rows(m, n, k, A, rsa, csa, B, rsb, csb, C, ldc, accumulate, bias, has_bias, act,
               slope, rowsum, has_rowsum, nt, Arows, zero):
    """C row by row, no packing of B: dot products when B's columns are contiguous (rsb == 1:
    few rows of x @ W.T), else axpy over B's rows (csb == 1: a short depth, where the 4 x 4
    dot-product tile would spend its time in horizontal sums). Tasks are (row, 256-column chunk)
    pairs dealt round-robin to nt threads; A is first copied to contiguous rows (m x k)."""
    for i in range(m):
        ar = Arows[i * k:(i + 1) * k]
        for p in range(k):
            ar[p] = A[i * rsa + p * csa]
    chunk = 256
    nchunks = (n + chunk - 1) // chunk
    ntasks = m * nchunks
    for t in prange(nt):
        for task in range(t, ntasks, nt):
            i = task // nchunks
            j0 = (task % nchunks) * chunk
            j1 = min(n, j0 + chunk)
            xr = Arows[i * k:(i + 1) * k]
            cr = C[i * ldc:i * ldc + n]
            if has_rowsum and j0 == 0:
                s = zero
                for p in range(k):
                    s += xr[p]
                rowsum[i] = rowsum[i] + s if accumulate else s
            if rsb == 1:
                for j in range(j0, j1):
                    br = B[j * csb:j * csb + k]
                    s = zero
                    for p in range(k):
                        s += xr[p] * br[p]
                    cr[j] = cr[j] + s if accumulate else s
            else:
                cc = cr[j0:j1]  # indices from 0: no wraparound select in the vector loop
                w = j1 - j0
                if not accumulate:
                    cc[:] = 0
                for p in range(k):
                    xp = xr[p]
                    bc = B[p * rsb + j0:p * rsb + j1]
                    for j in range(w):
                        cc[j] += xp * bc[j]
            if has_bias or act != ACT_IDENTITY:
                for j in range(j0, j1):
                    v = cr[j]
                    if has_bias:
                        v += bias[j]
                    cr[j] = _act(v, act, slope)


@njit(cache=True, parallel=True, fastmath=_FM)
def _gemm_blocked(m, n, k, A, rsa, csa, B, rsb, csb, C, ldc, accumulate, bias, has_bias, act,
                  slope, rowsum, has_rowsum, nt, scratch, kcb, kcp, mcb, ncb, zero):
    """C[m, n] (+)= A @ B; epilogue act(C + bias[n]) after the last depth block; rowsum (+)=
    A.sum(1). Tasks are mcb x ncb tiles of C, dealt round-robin to nt threads; each thread has
    its own scratch row: packed B (ncb x kcp) then packed A (4 x kcp), kcp = kcb padded."""
    mb = (m + mcb - 1) // mcb
    nb = (n + ncb - 1) // ncb
    ntasks = mb * nb
    for t in prange(nt):
        Bp = scratch[t, :ncb * kcp]
        Ap = scratch[t, ncb * kcp:]
        for task in range(t, ntasks, nt):
            ib = task // nb
            jb = task % nb
            i0 = ib * mcb
            i1 = min(m, i0 + mcb)
            j0 = jb * ncb
            nc = min(ncb, n - j0)
            nq = (nc + NR - 1) // NR
            for pc in range(0, k, kcb):
                kv = min(kcb, k - pc)
                kc = (kv + KPAD - 1) // KPAD * KPAD
                load_c = accumulate or pc > 0
                last = pc + kv >= k
                for q in range(nq):
                    jq = j0 + q * NR
                    _pack_rows(kv, kc, B, pc * rsb + jq * csb, csb, rsb, min(NR, n - jq), Bp,
                               q * NR * kc)
                for ir in range(i0, i1, MR):
                    mr = min(MR, i1 - ir)
                    _pack_rows(kv, kc, A, ir * rsa + pc * csa, rsa, csa, mr, Ap, 0)
                    if has_rowsum and jb == 0:
                        # dbias: each row sliver is packed exactly once here per depth block
                        for i in range(mr):
                            s = zero
                            ar = Ap[i * kc:(i + 1) * kc]
                            for p in range(kc):
                                s += ar[p]
                            rowsum[ir + i] = rowsum[ir + i] + s if load_c else s
                    for q in range(nq):
                        jq = j0 + q * NR
                        _tile_4x4(kc, Ap, 0, Bp, q * NR * kc, C, ir * ldc + jq, ldc, mr,
                                  min(NR, n - jq), jq, load_c, last, bias, has_bias, act, slope,
                                  zero)


def _serial(dispatcher, name: str):
    """The same kernel compiled without parallel=True (prange runs as range): a one-thread call
    must not go through numba's thread pool at all, it would wake (and wait for) the workers.
    A renamed copy of the Python function, so its on-disk cache entry is its own."""
    f = dispatcher.py_func
    g = types.FunctionType(f.__code__, f.__globals__, name, f.__defaults__, f.__closure__)
    g.__qualname__ = name
    return njit(cache=True, fastmath=_FM)(g)


_gemm_rows_serial = _serial(_gemm_rows, "_gemm_rows_serial")
_gemm_blocked_serial = _serial(_gemm_blocked, "_gemm_blocked_serial")

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
    slope = dt.type(slope)
    if (m <= SMALL_M and (rsb == 1 or csb == 1)) or (k <= SHORT_K and csb == 1):
        few_rows = m <= SMALL_M
        big = flops >= (PAR_MIN_FLOPS_GEMV * m if few_rows else PAR_MIN_FLOPS)
        nt = min(numba.get_num_threads(), m * ((n + 255) // 256)) if big else 1
        fn = _gemm_rows if nt > 1 else _gemm_rows_serial
        fn(m, n, k, A, rsa, csa, B, rsb, csb, C, ldc, bool(accumulate), bias, has_bias, act,
           slope, rowsum, has_rowsum, nt, _get_scratch(dt, m * k), zero)
        return
    nt = numba.get_num_threads() if flops >= PAR_MIN_FLOPS else 1
    kblocks = (k + KC - 1) // KC
    kcb = (k + kblocks - 1) // kblocks
    kcp = (kcb + KPAD - 1) // KPAD * KPAD
    nc_max = max(64, L2_BLOCK_BYTES // (kcp * dt.itemsize) // NR * NR)
    mcb, ncb = _tiles(m, n, MC, nc_max, 3 * nt if nt > 1 else 1)
    nt = min(nt, ((m + mcb - 1) // mcb) * ((n + ncb - 1) // ncb))
    per_thread = ncb * kcp + MR * kcp
    buf = _get_scratch(dt, nt * per_thread)[:nt * per_thread].reshape(nt, per_thread)
    fn = _gemm_blocked if nt > 1 else _gemm_blocked_serial
    fn(m, n, k, A, rsa, csa, B, rsb, csb, C, ldc, bool(accumulate), bias, has_bias, act, slope,
       rowsum, has_rowsum, nt, buf, kcb, kcp, mcb, ncb, zero)


def _tiles(m: int, n: int, mc: int, nc: int, want: int) -> tuple[int, int]:
    """Tile sizes (multiples of MR, NR) for at least ``want`` tiles where the shape allows:
    split the longer side first, never below two register blocks."""
    mb, nb = _cdiv(m, mc), _cdiv(n, nc)
    while mb * nb < want:
        mcur, ncur = _cdiv(m, mb), _cdiv(n, nb)
        if mcur >= 2 * MR and mcur >= ncur // 2:
            mb += 1
        elif ncur >= 2 * NR:
            nb += 1
        else:
            break
    return _cdiv(_cdiv(m, mb), MR) * MR, _cdiv(_cdiv(n, nb), NR) * NR


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


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
