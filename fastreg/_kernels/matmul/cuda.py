"""CUDA backend of the linear-layer products: a shared-memory tiled GEMM with register blocking
and a fused bias + activation epilogue (numba.cuda).

Shapes (C-contiguous device arrays of one float dtype, checked by :mod:`fastreg._kernels.matmul`)::

    x (N, K)  weight (M, K)  bias (M,) | None  out (N, M)
    dy (N, M) dx (N, K)      dweight (M, K)    dbias (M,) | None

All three products are ``C[m, n] (+)= A[m, k] @ B[k, n]`` on flat views, with the two operand
layouts baked into the kernel (a factory: one kernel per layout pair, dtype and tile):

    forward          out = x @ weight.T   A = x    k-contiguous   B = weight.T  k-contiguous
    backward_input   dx  = dy @ weight    A = dy   k-contiguous   B = weight    n-contiguous
    backward_weight  dW  = dy.T @ x       A = dy.T m-contiguous   B = x         n-contiguous

Kernel design (the classic SGEMM scheme, llm.c's "matmul_forward" lineage):

- A block of 256 threads owns a BM x BN tile of C. It walks the depth in BK-deep slabs: the
  block loads the BM x BK slab of A and the BK x BN slab of B into shared memory (both stored
  k-major, As[kk, i] and Bs[kk, j], so the inner loop reads rows), synchronizes, and every
  thread accumulates its TM x TN micro-tile in registers: per kk, TM + TN shared loads feed
  TM * TN FMAs. Two tiles: 64 x 64 (BK 16, 4 x 4 per thread) by default, 128 x 128 (BK 8,
  8 x 8 per thread: twice the FMAs per shared load) for float32 outputs big enough to give
  every SM two such blocks.
- Global loads are coalesced whatever the layout: the linear thread id runs along the operand's
  contiguous axis (along k for a k-contiguous operand, along m / n otherwise), and each thread
  loads BM * BK / 256 elements. A k-contiguous operand is transposed on its way into shared
  memory; its rows are padded to a stride of 32 / BK mod 32 words, so the BK x (32 / BK)
  elements a warp stores land in 32 distinct banks.
- A thread's micro-tile is strided (rows ty + i * BM / TM, columns tx + j * BN / TN), not
  contiguous: a warp then reads BN / TN consecutive Bs entries (no bank conflicts) and two
  broadcast As entries, and stores runs of consecutive columns of C (coalesced).
- Tiles hanging over the edges are zero-filled in shared memory (guarded loads), and only the
  in-range outputs are stored. The epilogue runs on the accumulators before the one store:
  (+ old C when accumulating) + bias, then the activation, in the data dtype like the CPU
  kernels, with the Numba backend's formulas (common/activations.py; sigmoid in the
  overflow-free two-sided form: exactly 0 or 1 when it saturates).
- dbias (= row sums of A = dy.T) is fused into the weight-gradient kernel: the blocks of column
  tile 0 load every row of A once anyway; after each slab load their first BM threads each sum
  one row of the slab in shared memory (BK adds, next to the TM * TN * BK FMAs of the tile).

The grid is (ceil(m / BM), ceil(n / BN)), one block per output tile, so m and n are bounded by
the grid limits (2**31 - 1 and 65535 tiles); indices are 64-bit. In numba's simulator (each GPU
thread a Python thread, ~0.2 s per block and slab) the 64 x 64 tile is always used.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, from_dtype

from ..common import activations
from ..runtime import cuda as _cuda_runtime
from .codes import ACT_IDENTITY, ACT_LEAKY_RELU, ACT_RELU, ACT_SIGMOID, ACT_TANH

#: Tile configurations (BM, BN, BK, TM, TN): a BM x BN tile of C per block of
#: (BM / TM) * (BN / TN) = 256 threads, depth slabs of BK, a TM x TN register tile per thread.
TILE_SMALL = (64, 64, 16, 4, 4)    # 16 accumulators, 2 x 16 x 66 shared elements
TILE_LARGE = (128, 128, 8, 8, 8)   # 64 accumulators, 2 x 8 x 132 shared elements
#: The large tile when its grid has at least this many blocks per SM (it doubles the FMAs per
#: shared load, but a quarter of the blocks leaves SMs idle on small products); float32 only:
#: an 8 x 8 float64 tile needs 128 accumulator registers.
LARGE_MIN_BLOCKS_PER_SM = 2

_kernels: dict = {}
_state: dict = {}


# The activation formulas (common/activations.py), shared with the Numba backends.
_device = cuda.jit(device=True, inline=True, cache=True)
_relu = _device(activations.relu)
_leaky_relu = _device(activations.leaky_relu)
_sigmoid = _device(activations.sigmoid)


@cuda.jit(device=True)
def _act(v, act, slope, zero, one):
    """The epilogue's activation in v's dtype (the formulas of every backend); NaN passes."""
    if act == ACT_RELU:
        return _relu(v, zero)
    if act == ACT_LEAKY_RELU:
        return _leaky_relu(v, slope, zero)
    if act == ACT_SIGMOID:
        return _sigmoid(v, math.exp(-abs(v)), one, zero)   # two-sided: exp never overflows
    if act == ACT_TANH:
        return math.tanh(v)
    return v


def _make_gemm(dtype: np.dtype, a_kcontig: bool, b_kcontig: bool, tile: tuple):
    """Compile-time specialized GEMM kernel for one dtype, operand layout pair and tile.

    A[i, p] is ``A[i * lda + p]`` if ``a_kcontig`` else ``A[p * lda + i]``; B[p, j] is
    ``B[j * ldb + p]`` if ``b_kcontig`` else ``B[p * ldb + j]``.
    """
    BM, BN, BK, TM, TN = tile
    THX = BN // TN                      # threads along a row of the C tile
    THY = BM // TM
    NT = THX * THY
    # whole loads per thread; one thread per row of A for the fused row sums; the bank padding
    assert BM * BK % NT == 0 and BN * BK % NT == 0 and NT >= BM and 32 % BK == 0, tile
    A_LOADS = BM * BK // NT
    B_LOADS = BN * BK // NT
    # a k-contiguous operand is transposed on its way into shared memory: a row stride of
    # 32 / BK (mod 32) words puts the BK x (32 / BK) elements of one warp's store in 32 banks
    # (shared-array shapes must be compile-time constants: the row lengths are computed here)
    AS_W = BM + (32 // BK if a_kcontig else 0)
    BS_W = BN + (32 // BK if b_kcontig else 0)
    typ = np.dtype(dtype).type
    ZERO, ONE = typ(0), typ(1)
    nb_dtype = from_dtype(np.dtype(dtype))

    @cuda.jit(cache=True)
    def gemm(m, n, k, A, lda, B, ldb, C, ldc, accumulate, bias, has_bias, act, slope,
             rowsum, has_rowsum):
        As = cuda.shared.array((BK, AS_W), nb_dtype)
        Bs = cuda.shared.array((BK, BS_W), nb_dtype)
        acc = cuda.local.array((TM, TN), nb_dtype)
        a_reg = cuda.local.array(TM, nb_dtype)
        b_reg = cuda.local.array(TN, nb_dtype)
        tid = cuda.threadIdx.x
        tx = tid % THX
        ty = tid // THX
        i0 = cuda.blockIdx.x * BM      # first row of the C tile
        j0 = cuda.blockIdx.y * BN      # first column
        for i in range(TM):
            for j in range(TN):
                acc[i, j] = ZERO
        # dbias: the blocks of column tile 0 sum the rows of A (one row per thread)
        do_rowsum = has_rowsum and cuda.blockIdx.y == 0 and tid < BM
        rs = ZERO
        for p0 in range(0, k, BK):
            # ---- stage the A and B slabs in shared memory (coalesced, zero-filled edges)
            for l in range(A_LOADS):
                e = tid + l * NT
                if a_kcontig:
                    kk = e % BK
                    ii = e // BK
                else:
                    ii = e % BM
                    kk = e // BM
                gi = i0 + ii
                gp = p0 + kk
                v = ZERO
                if gi < m and gp < k:
                    if a_kcontig:
                        v = A[gi * lda + gp]
                    else:
                        v = A[gp * lda + gi]
                As[kk, ii] = v
            for l in range(B_LOADS):
                e = tid + l * NT
                if b_kcontig:
                    kk = e % BK
                    jj = e // BK
                else:
                    jj = e % BN
                    kk = e // BN
                gj = j0 + jj
                gp = p0 + kk
                v = ZERO
                if gj < n and gp < k:
                    if b_kcontig:
                        v = B[gj * ldb + gp]
                    else:
                        v = B[gp * ldb + gj]
                Bs[kk, jj] = v
            cuda.syncthreads()
            if do_rowsum:
                for kk in range(BK):
                    rs += As[kk, tid]
            # ---- TM x TN register tile: TM + TN shared loads, TM * TN FMAs per kk
            for kk in range(BK):
                for i in range(TM):
                    a_reg[i] = As[kk, ty + i * THY]
                for j in range(TN):
                    b_reg[j] = Bs[kk, tx + j * THX]
                for i in range(TM):
                    for j in range(TN):
                        acc[i, j] += a_reg[i] * b_reg[j]
            cuda.syncthreads()
        # ---- epilogue on the accumulators, one coalesced store per output
        for i in range(TM):
            gi = i0 + ty + i * THY
            if gi < m:
                for j in range(TN):
                    gj = j0 + tx + j * THX
                    if gj < n:
                        v = acc[i, j]
                        if accumulate:
                            v = v + C[gi * ldc + gj]
                        if has_bias:
                            v += bias[gj]
                        C[gi * ldc + gj] = _act(v, act, slope, ZERO, ONE)
        if do_rowsum and i0 + tid < m:
            if accumulate:
                rs = rowsum[i0 + tid] + rs
            rowsum[i0 + tid] = rs

    return gemm, NT


def _sm_count() -> int:
    """Streaming multiprocessors of the current device (queried once)."""
    n = _state.get("sm_count")
    if n is None:
        n = _state["sm_count"] = int(cuda.get_current_device().MULTIPROCESSOR_COUNT)
    return n


def _pick_tile(dtype: np.dtype, m: int, n: int) -> tuple:
    """TILE_LARGE for big float32 outputs on a GPU, else TILE_SMALL (always in the simulator,
    where every block is 256 Python threads and the small tile wastes less on edges)."""
    if dtype != np.float32 or _cuda_runtime.simulator():
        return TILE_SMALL
    blocks = -(-m // TILE_LARGE[0]) * -(-n // TILE_LARGE[1])
    return TILE_LARGE if blocks >= LARGE_MIN_BLOCKS_PER_SM * _sm_count() else TILE_SMALL


def _kernel(dtype: np.dtype, a_kcontig: bool, b_kcontig: bool, tile: tuple):
    """The cached kernel (and its threads per block) for a dtype, layout pair and tile."""
    key = (np.dtype(dtype), a_kcontig, b_kcontig, tile)
    entry = _kernels.get(key)
    if entry is None:
        entry = _kernels[key] = _make_gemm(np.dtype(dtype), a_kcontig, b_kcontig, tile)
    return entry


def _gemm(m, n, k, A, lda, a_kcontig, B, ldb, b_kcontig, C, accumulate, bias, act, slope,
          rowsum, tile=None):
    """Launch C[m, n] (+)= A @ B with the epilogue; ``rowsum`` (+)= A.sum(1) if not None.
    ``tile``: a tile configuration, or None to pick one for the shape."""
    if m == 0 or n == 0:
        return
    dt = C.dtype
    tile = _pick_tile(dt, m, n) if tile is None else tuple(tile)
    kern, nt = _kernel(dt, a_kcontig, b_kcontig, tile)
    Cf = C.reshape(-1)
    # unused optional arrays are replaced by C itself (never read nor written): no allocation
    kern[(-(-m // tile[0]), -(-n // tile[1])), nt](
        m, n, k, A.reshape(-1), lda, B.reshape(-1), ldb, Cf, n, bool(accumulate),
        Cf if bias is None else bias, bias is not None, act, dt.type(slope),
        Cf if rowsum is None else rowsum, rowsum is not None)


def linear_forward(x, weight, bias, out, act, slope):
    """out[N, M] = act(x[N, K] @ weight[M, K].T + bias[M]) (device arrays, already validated)."""
    N, K = x.shape
    M = weight.shape[0]
    _gemm(N, M, K, x, K, True, weight, K, True, out, False, bias, act, slope, None)
    return out


def linear_backward_input(dy, weight, dx):
    """dx[N, K] = dy[N, M] @ weight[M, K] (overwrites dx)."""
    N, M = dy.shape
    K = weight.shape[1]
    _gemm(N, K, M, dy, M, True, weight, K, False, dx, False, None, ACT_IDENTITY, 0.0, None)
    return dx


def linear_backward_weight(dy, x, dweight, dbias, accumulate):
    """dweight[M, K] (+)= dy.T @ x; dbias[M] (+)= dy.sum(0), fused into the same kernel."""
    N, M = dy.shape
    K = x.shape[1]
    _gemm(M, K, N, dy, M, False, x, K, False, dweight, accumulate, None, ACT_IDENTITY, 0.0,
          dbias)
