"""Batch-norm and layer-norm kernels, CUDA backend (numba.cuda).

Unlike the CPU backends (which take scratch buffers), each launcher takes the public wrapper's
own arguments in the same order, without ``backend``, after fastreg/_kernels/norm/__init__.py has
validated them: (N, C) C-contiguous device arrays x, dy, out, dx; (C,) or (N,) device vectors;
None for an absent optional vector; Python floats for eps/momentum and bools for flags.
Numerics follow norm/numba.py: statistics and parameter-gradient sums are float64 (forward sums
of x - x[0, c] resp. x - x[n, 0], a one-sample shift that keeps E[d^2] - E[d]^2 well conditioned),
elementwise maths is in the data dtype T with the float64 mean entering as a hi + lo pair.
Products of a T element with a float64 value cast the element explicitly (np.float64(w[c]) * r):
on the GPU numba promotes anyway, but the simulator runs NumPy scalars, where float32 * Python
float stays float32.

Kernel design (every block is 32 x 8 = 256 threads: threadIdx.x = one of 32 consecutive
columns, so each warp reads 32 consecutive elements of one row -> coalesced 128 B / 256 B)
----------------------------------------------------------------------------------------------
* Column reductions (batch-norm statistics, batch-norm gradient sums, layer-norm dgamma/dbeta):
  grid (ceil(C/32), R). Block (bx, g) owns the 32-column strip bx and row group g (rows
  [g*N//R, (g+1)*N//R)); its 8 row lanes stride through those rows keeping float64 sums in
  registers, then add the 8 lanes in shared memory in a fixed order and store one float64
  partial per column in a device scratch buffer (R, 2, C). R is chosen so the grid is about one
  wave of resident blocks (more blocks than that only adds partials).
* Deterministic finish without float atomics ("last block" / threadFenceReduction pattern, as in
  PyTorch's global reductions): after storing its partials a block does ``threadfence`` and one
  integer ``atomic.add`` on its strip's counter; the block that draws ticket R - 1 sums the R
  partials in group order (8 lanes over groups g = ty mod 8, then the 8 lanes in order), writes
  the per-feature results (statistics, running stats, dgamma/dbeta, elementwise coefficients)
  and resets the counter to 0 for the next launch. The result does not depend on block order.
* Batch-norm forward (train) and backward are 2 launches each: the reduction above, then an
  elementwise pass on a (ceil(C/32), R2) grid whose threads keep their column's 4 coefficients
  in registers and stride down the rows. Eval forward is 1 launch (each thread computes its
  column's coefficients). Eval backward is 1 launch: dx = dy * gamma * r is elementwise and the
  same pass accumulates the dgamma/dbeta column sums.
* Layer norm: one warp-wide row per block row (block = 8 rows x 32 lanes), grid-stride over
  rows. Each lane sums its columns c = lane, lane + 32, ... in float64; the 32 lane sums go to
  shared memory and every lane adds them in lane order (one ``syncthreads`` per 8 rows thanks
  to double-buffered slots; warp shuffles are not used, the simulator lacks them), then the lane
  re-reads its columns (L1/L2 hits) for the elementwise pass. Backward: the same row kernel produces dx; dgamma/dbeta come from the
  column-reduction kernel above (a second read of dy and x, as in PyTorch's separate
  gamma/beta-backward kernel), launched only when they are requested.
* Scratch (float64 partials, per-dtype coefficient buffers, int32 counters, 1-element stand-ins
  for absent optional vectors) is allocated once and reused (grown when a call needs more), so a
  call makes no device allocations and no host <-> device copies. Kernels are launched on the
  default stream, which orders the reuse; the module is not meant for concurrent host threads.
"""
from __future__ import annotations

import math

import numpy as np
from numba import cuda, float64, int32

from ..runtime import cuda as _cuda_runtime

#: Threads per block along the columns (one warp: coalesced row segments) and along the rows.
TX = 32
TY = 8
_BLOCK = (TX, TY)
#: Upper bound on row groups of a column reduction: the last block of a strip sums this many
#: partials per column (8 lanes, so at most 16 dependent loads each).
_MAX_GROUPS = 128
#: A row group has at least this many rows (4 per row lane): fewer and the partials cost more
#: than the rows.
_MIN_GROUP_ROWS = 4 * TY

_scratch: dict = {}


# ---------------------------------------------------------------------------------------------
# launch geometry and scratch
# ---------------------------------------------------------------------------------------------

def _reduction_blocks() -> int:
    """Target block count of a column reduction: about one wave of 256-thread blocks (8 per SM)
    on a GPU (``max_blocks`` is 32 per SM), 2 in the simulator."""
    return max(2, _cuda_runtime.max_blocks() // 4)


def _strips(C: int) -> int:
    return (C + TX - 1) // TX


def _row_groups(N: int, strips: int) -> int:
    """R for a (strips, R) column-reduction grid over N rows (>= 1 even for N = 0)."""
    want = -(-_reduction_blocks() // strips)
    return max(1, min(want, -(-N // _MIN_GROUP_ROWS), _MAX_GROUPS))


def _elementwise_groups(N: int, strips: int) -> int:
    """Row-block count of an elementwise (strips, R2) grid: up to max_blocks() blocks in all."""
    return max(1, min(-(-N // TY), -(-_cuda_runtime.max_blocks() // strips)))


def _buffer(key, n: int, dtype, zero: bool = False):
    """A cached 1-D device array of at least ``n`` elements (grown, never shrunk)."""
    buf = _scratch.get(key)
    if buf is None or buf.shape[0] < n:
        n = max(n, 2 * buf.shape[0] if buf is not None else n)
        buf = (cuda.to_device(np.zeros(n, dtype)) if zero
               else cuda.device_array(n, dtype=np.dtype(dtype)))
        _scratch[key] = buf
    return buf


def _partials(R: int, C: int):
    return _buffer("partial", 2 * R * C, np.float64)


def _counters(strips: int):
    # zero-initialised once; every reduction leaves its counters at 0 again
    return _buffer("counter", strips, np.int32, zero=True)


def _coef(C: int, dtype):
    return _buffer(("coef", np.dtype(dtype).str), 4 * C, dtype)


def _or_dummy(a, dtype):
    """Kernels take arrays only: an absent optional vector becomes a 1-element stand-in (never
    read or written, the kernel's flag says so) of the right dtype, so the signature is stable."""
    if a is not None:
        return a
    return _buffer(("dummy", np.dtype(dtype).str), 1, dtype, zero=True)


# ---------------------------------------------------------------------------------------------
# device helpers: block reduction of column sums and the deterministic last-block finish
# ---------------------------------------------------------------------------------------------

@cuda.jit(device=True, cache=True)
def _publish_partials(sa, sb, a, b, partial, counter, ticket, C, c):
    """Add the 8 row lanes' (a, b) column sums in shared memory, store them as row group
    blockIdx.y's partials, and return True in every thread of the strip's last block."""
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    sa[ty, tx] = a
    sb[ty, tx] = b
    cuda.syncthreads()
    if ty == 0 and c < C:
        ta = 0.0
        tb = 0.0
        for i in range(TY):
            ta += sa[i, tx]
            tb += sb[i, tx]
        g = cuda.blockIdx.y
        partial[2 * g * C + c] = ta
        partial[(2 * g + 1) * C + c] = tb
    # make this block's partials visible device-wide before it takes a ticket
    cuda.threadfence()
    cuda.syncthreads()
    if tx == 0 and ty == 0:
        old = cuda.atomic.add(counter, cuda.blockIdx.x, 1)
        ticket[0] = 1 if old == cuda.gridDim.y - 1 else 0
    cuda.syncthreads()
    return ticket[0] == 1


@cuda.jit(device=True, cache=True)
def _combine_partials(sa, sb, partial, counter, C, c):
    """In the strip's last block: the column totals of all row groups, summed in group order
    (valid in the ty == 0 threads); resets the strip's counter for the next launch."""
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    R = cuda.gridDim.y
    ta = 0.0
    tb = 0.0
    if c < C:
        for g in range(ty, R, TY):
            ta += partial[2 * g * C + c]
            tb += partial[(2 * g + 1) * C + c]
    sa[ty, tx] = ta             # _publish_partials' reads of sa/sb ended before its barriers
    sb[ty, tx] = tb
    cuda.syncthreads()
    ta = 0.0
    tb = 0.0
    if ty == 0:
        for i in range(TY):
            ta += sa[i, tx]
            tb += sb[i, tx]
        if tx == 0:
            counter[cuda.blockIdx.x] = 0
    return ta, tb


@cuda.jit(device=True, cache=True)
def _row_totals(sa, sb, p, a, b):
    """The sums of (a, b) over the 32 lanes of block row ty, the same in every lane.

    sa, sb: shared (2, TY, TX) float64, used alternately (p = iteration parity): one barrier
    per call, because a lane can only overwrite slot p two calls later, after every lane has
    passed the next call's barrier and so has finished reading slot p. Every lane adds the 32
    values in lane order (broadcast reads, no bank conflicts): deterministic, and no warp
    shuffles (the simulator has none). Every thread of the block must call it.
    """
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    sa[p, ty, tx] = a
    sb[p, ty, tx] = b
    cuda.syncthreads()
    ta = 0.0
    tb = 0.0
    for i in range(TX):
        ta += sa[p, ty, i]
        tb += sb[p, ty, i]
    return ta, tb


# ---------------------------------------------------------------------------------------------
# batch norm
# ---------------------------------------------------------------------------------------------

@cuda.jit(cache=True)
def _bn_train_stats(x, weight, bias, running_mean, running_var, save_mean, save_rstd, partial,
                    counter, coef, has_weight, has_bias, has_running, momentum, eps):
    # float64 sums of d = x - x[0, c] and d^2 per column; the last block of each strip turns
    # them into mean / rstd / running stats and the coefficients of _bn_affine
    sa = cuda.shared.array((TY, TX), float64)
    sb = cuda.shared.array((TY, TX), float64)
    ticket = cuda.shared.array(1, int32)
    T = x.dtype.type
    N, C = x.shape
    c = cuda.blockIdx.x * TX + cuda.threadIdx.x
    g = cuda.blockIdx.y
    R = cuda.gridDim.y
    s1 = 0.0
    s2 = 0.0
    if c < C:
        k = x[0, c]
        for n in range((g * N) // R + cuda.threadIdx.y, ((g + 1) * N) // R, TY):
            d = np.float64(x[n, c] - k)
            s1 += d
            s2 += d * d
    if _publish_partials(sa, sb, s1, s2, partial, counter, ticket, C, c):
        t1, t2 = _combine_partials(sa, sb, partial, counter, C, c)
        if cuda.threadIdx.y == 0 and c < C:
            inv_n = 1.0 / N
            m = t1 * inv_n
            var = t2 * inv_n - m * m
            # not max(): numba 0.68's CUDA target fails to compile max() of two floats
            if var < 0.0:  # noqa: PLR1730
                var = 0.0
            mean = np.float64(x[0, c]) + m
            rstd = 1.0 / math.sqrt(var + eps)
            save_mean[c] = mean
            save_rstd[c] = rstd
            if has_running:
                running_mean[c] = ((1.0 - momentum) * np.float64(running_mean[c])
                                   + momentum * mean)
                running_var[c] = ((1.0 - momentum) * np.float64(running_var[c])
                                  + momentum * var * N / (N - 1.0))
            mh = T(mean)
            coef[c] = mh
            coef[C + c] = mean - mh
            coef[2 * C + c] = rstd * np.float64(weight[c]) if has_weight else rstd
            coef[3 * C + c] = bias[c] if has_bias else T(0.0)


@cuda.jit(cache=True)
def _bn_affine(x, out, coef):
    # out = ((x - mean_hi) - mean_lo) * scale + shift, the column's coefficients in registers
    N, C = x.shape
    c = cuda.blockIdx.x * TX + cuda.threadIdx.x
    if c < C:
        mh = coef[c]
        ml = coef[C + c]
        sc = coef[2 * C + c]
        sh = coef[3 * C + c]
        for n in range(cuda.blockIdx.y * TY + cuda.threadIdx.y, N, cuda.gridDim.y * TY):
            out[n, c] = ((x[n, c] - mh) - ml) * sc + sh


@cuda.jit(cache=True)
def _bn_eval(x, weight, bias, running_mean, running_var, out, has_weight, has_bias, eps):
    # y = (x - m) * (r * gamma) + beta with r = (v + eps)^-1/2 in float64, rounded once to T
    T = x.dtype.type
    N, C = x.shape
    c = cuda.blockIdx.x * TX + cuda.threadIdx.x
    if c < C:
        rstd = 1.0 / math.sqrt(np.float64(running_var[c]) + eps)
        m = running_mean[c]
        sc = T(rstd * np.float64(weight[c])) if has_weight else T(rstd)
        sh = bias[c] if has_bias else T(0.0)
        for n in range(cuda.blockIdx.y * TY + cuda.threadIdx.y, N, cuda.gridDim.y * TY):
            out[n, c] = (x[n, c] - m) * sc + sh


@cuda.jit(cache=True)
def _bn_grad_stats(dy, x, weight, save_mean, save_rstd, dweight, dbias, partial, counter, coef,
                   has_weight, need_dweight, need_dbias, accumulate):
    # float64 column sums of dy and dy * (x - mean); the last block of each strip writes
    # dgamma / dbeta and the coefficients of _bn_grad_dx:
    # dx = a*dy - a*rstd*dgamma/N * (x - mean) - a*dbeta/N, a = gamma * rstd
    sa = cuda.shared.array((TY, TX), float64)
    sb = cuda.shared.array((TY, TX), float64)
    ticket = cuda.shared.array(1, int32)
    N, C = x.shape
    c = cuda.blockIdx.x * TX + cuda.threadIdx.x
    g = cuda.blockIdx.y
    R = cuda.gridDim.y
    sdb = 0.0
    sdg = 0.0
    if c < C:
        mu = save_mean[c]
        for n in range((g * N) // R + cuda.threadIdx.y, ((g + 1) * N) // R, TY):
            gy = dy[n, c]
            sdb += np.float64(gy)
            sdg += np.float64(gy * (x[n, c] - mu))
    if _publish_partials(sa, sb, sdb, sdg, partial, counter, ticket, C, c):
        db, dg = _combine_partials(sa, sb, partial, counter, C, c)
        if cuda.threadIdx.y == 0 and c < C:
            inv_n = 1.0 / N if N > 0 else 0.0
            rstd = np.float64(save_rstd[c])
            dg *= rstd
            if need_dweight:
                dweight[c] = dweight[c] + dg if accumulate else dg
            if need_dbias:
                dbias[c] = dbias[c] + db if accumulate else db
            a = rstd * weight[c] if has_weight else rstd
            coef[c] = save_mean[c]
            coef[C + c] = a
            coef[2 * C + c] = -a * rstd * dg * inv_n
            coef[3 * C + c] = -a * db * inv_n


@cuda.jit(cache=True)
def _bn_grad_dx(dy, x, dx, coef):
    N, C = x.shape
    c = cuda.blockIdx.x * TX + cuda.threadIdx.x
    if c < C:
        mu = coef[c]
        ca = coef[C + c]
        cb = coef[2 * C + c]
        cd = coef[3 * C + c]
        for n in range(cuda.blockIdx.y * TY + cuda.threadIdx.y, N, cuda.gridDim.y * TY):
            dx[n, c] = ca * dy[n, c] + cb * (x[n, c] - mu) + cd


@cuda.jit(cache=True)
def _bn_eval_backward(dy, x, weight, running_mean, running_var, dx, dweight, dbias, partial,
                      counter, has_weight, need_dweight, need_dbias, accumulate, eps):
    # eval-mode statistics are constants: dx = dy * T(gamma * r), r = (v + eps)^-1/2 in float64;
    # dgamma (+)= T(sum dy * (x - m) * r), dbeta (+)= T(sum dy), sums in float64
    sa = cuda.shared.array((TY, TX), float64)
    sb = cuda.shared.array((TY, TX), float64)
    ticket = cuda.shared.array(1, int32)
    T = x.dtype.type
    N, C = x.shape
    c = cuda.blockIdx.x * TX + cuda.threadIdx.x
    g = cuda.blockIdx.y
    R = cuda.gridDim.y
    reduce = need_dweight or need_dbias
    sdg = 0.0
    sdb = 0.0
    if c < C:
        r = 1.0 / math.sqrt(np.float64(running_var[c]) + eps)
        m = running_mean[c]
        scale = T(np.float64(weight[c]) * r) if has_weight else T(r)
        if reduce:
            for n in range((g * N) // R + cuda.threadIdx.y, ((g + 1) * N) // R, TY):
                gy = dy[n, c]
                dx[n, c] = gy * scale
                sdg += np.float64(gy) * (np.float64(x[n, c] - m) * r)
                sdb += np.float64(gy)
        else:
            for n in range(g * TY + cuda.threadIdx.y, N, R * TY):
                dx[n, c] = dy[n, c] * scale
    if reduce and _publish_partials(sa, sb, sdg, sdb, partial, counter, ticket, C, c):
        tg, tb = _combine_partials(sa, sb, partial, counter, C, c)
        if cuda.threadIdx.y == 0 and c < C:
            if need_dweight:
                dweight[c] = dweight[c] + T(tg) if accumulate else T(tg)
            if need_dbias:
                dbias[c] = dbias[c] + T(tb) if accumulate else T(tb)


# ---------------------------------------------------------------------------------------------
# layer norm
# ---------------------------------------------------------------------------------------------

@cuda.jit(cache=True)
def _ln_forward(x, weight, bias, out, save_mean, save_rstd, has_weight, has_bias, eps):
    # one row per warp-wide block row; grid-stride over groups of TY rows (the trip count is
    # the same for the whole block, so every thread reaches every barrier)
    sa = cuda.shared.array((2, TY, TX), float64)
    sb = cuda.shared.array((2, TY, TX), float64)
    T = x.dtype.type
    N, C = x.shape
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    inv_c = 1.0 / C
    p = 0
    for base in range(cuda.blockIdx.x * TY, N, cuda.gridDim.x * TY):
        n = base + ty
        s1 = 0.0
        s2 = 0.0
        if n < N:
            k = x[n, 0]
            for c in range(tx, C, TX):
                d = np.float64(x[n, c] - k)
                s1 += d
                s2 += d * d
        t1, t2 = _row_totals(sa, sb, p, s1, s2)
        p ^= 1
        if n < N:
            m = t1 * inv_c
            var = t2 * inv_c - m * m
            if var < 0.0:  # noqa: PLR1730 (see _bn_train_stats)
                var = 0.0
            mean = np.float64(x[n, 0]) + m
            mh = T(mean)
            ml = T(mean - mh)
            rs = T(1.0 / math.sqrt(var + eps))
            if tx == 0:
                save_mean[n] = mh
                save_rstd[n] = rs
            for c in range(tx, C, TX):
                y = ((x[n, c] - mh) - ml) * rs
                if has_weight:
                    y = y * weight[c]
                if has_bias:
                    y = y + bias[c]
                out[n, c] = y


@cuda.jit(cache=True)
def _ln_backward_dx(dy, x, weight, save_mean, save_rstd, dx, has_weight):
    # per row: g = dy * gamma, xhat = (x - mean) * rstd,
    # dx = rstd * (g - mean_c(g) - xhat * mean_c(g * xhat)), row sums in float64
    sa = cuda.shared.array((2, TY, TX), float64)
    sb = cuda.shared.array((2, TY, TX), float64)
    T = x.dtype.type
    N, C = x.shape
    tx = cuda.threadIdx.x
    ty = cuda.threadIdx.y
    inv_c = 1.0 / C
    p = 0
    for base in range(cuda.blockIdx.x * TY, N, cuda.gridDim.x * TY):
        n = base + ty
        sg = 0.0
        sgx = 0.0
        if n < N:
            mean = save_mean[n]
            for c in range(tx, C, TX):
                gy = dy[n, c] * weight[c] if has_weight else dy[n, c]
                sg += np.float64(gy)
                sgx += np.float64(gy * (x[n, c] - mean))
        tg, tgx = _row_totals(sa, sb, p, sg, sgx)
        p ^= 1
        if n < N:
            mean = save_mean[n]
            rstd = save_rstd[n]
            mg = T(tg * inv_c)
            mgx = T(tgx * np.float64(rstd) * inv_c)
            for c in range(tx, C, TX):
                xh = (x[n, c] - mean) * rstd
                gy = dy[n, c] * weight[c] if has_weight else dy[n, c]
                dx[n, c] = rstd * (gy - mg - xh * mgx)


@cuda.jit(cache=True)
def _ln_grad_params(dy, x, save_mean, save_rstd, dweight, dbias, partial, counter, need_dweight,
                    need_dbias, accumulate):
    # dgamma (+)= sum_n dy * xhat, dbeta (+)= sum_n dy: column reduction with float64 sums
    sa = cuda.shared.array((TY, TX), float64)
    sb = cuda.shared.array((TY, TX), float64)
    ticket = cuda.shared.array(1, int32)
    N, C = x.shape
    c = cuda.blockIdx.x * TX + cuda.threadIdx.x
    g = cuda.blockIdx.y
    R = cuda.gridDim.y
    sw = 0.0
    sbias = 0.0
    if c < C:
        for n in range((g * N) // R + cuda.threadIdx.y, ((g + 1) * N) // R, TY):
            gy = dy[n, c]
            xh = (x[n, c] - save_mean[n]) * save_rstd[n]
            sw += np.float64(gy * xh)
            sbias += np.float64(gy)
    if _publish_partials(sa, sb, sw, sbias, partial, counter, ticket, C, c):
        tw, tb = _combine_partials(sa, sb, partial, counter, C, c)
        if cuda.threadIdx.y == 0 and c < C:
            if need_dweight:
                dweight[c] = dweight[c] + tw if accumulate else tw
            if need_dbias:
                dbias[c] = dbias[c] + tb if accumulate else tb


# ---------------------------------------------------------------------------------------------
# launchers: the public wrappers' arguments (validated there), outputs written in place
# ---------------------------------------------------------------------------------------------

def batchnorm_forward_train(x, weight, bias, running_mean, running_var, out, save_mean,
                            save_rstd, momentum, eps):
    """Batch-norm training forward on device arrays (see norm.batchnorm_forward_train)."""
    N, C = x.shape
    dt = x.dtype
    strips = _strips(C)
    R = _row_groups(N, strips)
    coef = _coef(C, dt)
    _bn_train_stats[(strips, R), _BLOCK](
        x, _or_dummy(weight, dt), _or_dummy(bias, dt), _or_dummy(running_mean, dt),
        _or_dummy(running_var, dt), save_mean, save_rstd, _partials(R, C), _counters(strips),
        coef, weight is not None, bias is not None, running_mean is not None, momentum, eps)
    _bn_affine[(strips, _elementwise_groups(N, strips)), _BLOCK](x, out, coef)


def batchnorm_forward_eval(x, weight, bias, running_mean, running_var, out, eps):
    """Batch-norm eval forward on device arrays (see norm.batchnorm_forward_eval)."""
    N, C = x.shape
    if N == 0:
        return
    dt = x.dtype
    strips = _strips(C)
    _bn_eval[(strips, _elementwise_groups(N, strips)), _BLOCK](
        x, _or_dummy(weight, dt), _or_dummy(bias, dt), running_mean, running_var, out,
        weight is not None, bias is not None, eps)


def batchnorm_backward(dy, x, weight, save_mean, save_rstd, dx, dweight, dbias, accumulate):
    """Batch-norm training backward on device arrays (see norm.batchnorm_backward)."""
    N, C = x.shape
    dt = x.dtype
    strips = _strips(C)
    R = _row_groups(N, strips)
    coef = _coef(C, dt)
    _bn_grad_stats[(strips, R), _BLOCK](
        dy, x, _or_dummy(weight, dt), save_mean, save_rstd, _or_dummy(dweight, dt),
        _or_dummy(dbias, dt), _partials(R, C), _counters(strips), coef, weight is not None,
        dweight is not None, dbias is not None, accumulate)
    _bn_grad_dx[(strips, _elementwise_groups(N, strips)), _BLOCK](dy, x, dx, coef)


def batchnorm_backward_eval(dy, x, weight, running_mean, running_var, dx, dweight, dbias, eps,
                            accumulate):
    """Batch-norm eval-mode backward on device arrays (see norm.batchnorm_backward_eval)."""
    N, C = x.shape
    dt = x.dtype
    strips = _strips(C)
    reduce = dweight is not None or dbias is not None
    if not reduce and N == 0:
        return
    R = _row_groups(N, strips) if reduce else _elementwise_groups(N, strips)
    _bn_eval_backward[(strips, R), _BLOCK](
        dy, x, _or_dummy(weight, dt), running_mean, running_var, dx, _or_dummy(dweight, dt),
        _or_dummy(dbias, dt), _partials(R if reduce else 1, C), _counters(strips), weight is not None,
        dweight is not None, dbias is not None, accumulate, eps)


def layernorm_forward(x, weight, bias, out, save_mean, save_rstd, eps):
    """Layer-norm forward on device arrays (see norm.layernorm_forward)."""
    N = x.shape[0]
    if N == 0:
        return
    dt = x.dtype
    blocks = _cuda_runtime.blocks_for(N, TY)
    _ln_forward[blocks, _BLOCK](x, _or_dummy(weight, dt), _or_dummy(bias, dt), out, save_mean,
                                save_rstd, weight is not None, bias is not None, eps)


def layernorm_backward(dy, x, weight, save_mean, save_rstd, dx, dweight, dbias, accumulate):
    """Layer-norm backward on device arrays (see norm.layernorm_backward)."""
    N, C = x.shape
    dt = x.dtype
    if N > 0:
        _ln_backward_dx[_cuda_runtime.blocks_for(N, TY), _BLOCK](
            dy, x, _or_dummy(weight, dt), save_mean, save_rstd, dx, weight is not None)
    if dweight is not None or dbias is not None:
        strips = _strips(C)
        R = _row_groups(N, strips)
        _ln_grad_params[(strips, R), _BLOCK](
            dy, x, save_mean, save_rstd, _or_dummy(dweight, dt), _or_dummy(dbias, dt),
            _partials(R, C), _counters(strips), dweight is not None, dbias is not None,
            accumulate)
