"""Activations, softmax + cross-entropy, loss helpers and device utilities: CUDA backend.

Launchers (plain functions below) have the Numba backend's names and positional arguments, take
device arrays already checked by fastreg/_kernels/elementwise/__init__.py, write their outputs in place and
return what the Numba backend returns. The device utilities (fill, scale, add_, subtract,
sum_squares, sum_abs, column_sum, mse_forward, bce_with_logits_*, softmax_xent_weighted_*) are what
the Module layer uses to keep a training step on the GPU; they have no CPU kernel (NumPy there).

Kernel design (all memory-bound, so the goal is full-width coalesced traffic and no host trips):

- float(v) marks every widening of a float32 value to float64 (free on the GPU, where numba would
  widen anyway; needed in the simulator, where NumPy would keep float32 for ``0.0 + v``).
- Elementwise kernels (activations, fill, scale, add, subtract, xent backward, BCE backward) are
  grid-stride loops: thread i touches elements i, i + G, i + 2G, ... (G = all threads in the grid),
  so each warp reads 32 consecutive elements per step (coalesced), and the grid is sized to keep
  every SM busy (``_cuda_runtime.blocks_for``) instead of one thread per element. Scalars arrive
  as kernel arguments in the arrays' dtype, so float32 data is computed in float32 (as the CPU).
- Reductions (sum_squares, sum_abs, MSE, BCE forward, the cross-entropy losses) are two-stage and
  deterministic: each block accumulates in float64 registers, combines its threads with a shared
  memory tree (fixed order), and writes one partial per block; a one-block ``_finalize_k`` sums
  the partials in block order. Only the final scalars (at most 4 float64) are copied back, into a
  pinned host buffer. No atomics, so a given grid always gives the same bits.
- Softmax + cross-entropy: one block per row (grid-stride over rows, at most ``max_blocks``
  blocks, each block keeps its rows' loss sum in a register). Block size = next power of two >= C
  (32..256), threads stride over the row's columns (coalesced). Per row: pass 1 is a fused block
  arg-max + sum of logits, pass 2 writes exp(l - m) to probs and block-sums it (float64), pass 3
  scales probs by 1/s. The max is re-read from the row at its arg-max, so exp runs in the logits'
  dtype like the CPU kernel. Out-of-range targets are never dereferenced: forward counts them and
  the launcher raises ValueError (the count rides along with the loss, no extra copy); backward
  writes NaN to their rows (no sync to report an error there).
- column_sum: blocks of 32 columns x 8 row-lanes, threads along columns (coalesced rows), each
  block sums a chunk of rows; with several row chunks a second kernel adds the chunk partials in
  order (a bias gradient of a 4096 x 64 batch would otherwise use only 2 blocks).

Block reductions take three barriers each (see ``_block_sum``), shared arrays are float64[256]
(the largest block). Under the simulator (NUMBA_ENABLE_CUDASIM=1) blocks are capped at 64 threads
(32 per softmax row) and grids at 2 blocks: each simulated thread is a Python thread and each
barrier costs ~20 ms there; every kernel is written for any block size.
"""
import math

import numpy as np
from numba import cuda, float64, int32

from ..common import activations
from ..runtime import cuda as _rt
from .codes import ACT_LEAKY_RELU, ACT_RELU, ACT_SIGMOID, ACT_TANH

#: Largest block (threads) and size of every shared reduction array.
_SMEM = 256
#: Threads per block of the grid-stride kernels and reductions (GPU; capped in the simulator).
_BLOCK = 64 if _rt.simulator() else 256
#: Row lanes (blockDim.y) of column_sum's 32-column blocks.
_COL_LANES = 2 if _rt.simulator() else 8
_COL_LANES_MAX = 8
#: Partial slots per block: [sum, denominator, bad-target count, a bad target value].
_SLOTS = 4

_scratch: dict = {}


def _buffers():
    """(partials (max_blocks, 4) float64, result (4,) float64, pinned host result): allocated once
    per process, reused by every reduction (kernels on one stream run in order)."""
    bufs = _scratch.get("reduce")
    if bufs is None:
        nb = _rt.max_blocks()
        bufs = (cuda.device_array((nb, _SLOTS), np.float64),
                cuda.device_array(_SLOTS, np.float64),
                cuda.pinned_array(_SLOTS, np.float64))
        _scratch["reduce"] = bufs
    return bufs


def _flat_scratch(n: int):
    """A float64 device buffer of at least n elements (grow-only, reused)."""
    buf = _scratch.get("flat")
    if buf is None or buf.shape[0] < n:
        buf = cuda.device_array(max(n, 1024), np.float64)
        _scratch["flat"] = buf
    return buf


def _dummy():
    """A 1-element float64 device array standing in for an absent optional array."""
    buf = _scratch.get("dummy")
    if buf is None:
        buf = cuda.to_device(np.zeros(1))
        _scratch["dummy"] = buf
    return buf


def _row_threads(c: int) -> int:
    """Power-of-two block size for one row of c columns: 32 .. 256 (32 in the simulator)."""
    cap = 32 if _rt.simulator() else _SMEM
    t = 32
    while t < c and t < cap:
        t *= 2
    return t


# --- block reductions (device functions, 1-D blocks of any size <= _SMEM) --------------------------
# Three barriers per reduction whatever the block size (a shared-memory tree needs log2(threads)
# + 1): all threads store, warp 0 folds the block into 32 strided partials, then every thread sums
# those 32 by broadcast reads (conflict-free) in the same fixed order, so all threads get the same
# deterministic value without a fourth barrier for a broadcast. The last barrier frees sh.

@cuda.jit(device=True)
def _block_sum(sh, v):
    """Sum of v over the block's threads (x dimension), returned to every thread."""
    t, nt = cuda.threadIdx.x, cuda.blockDim.x
    sh[t] = v
    cuda.syncthreads()
    if t < 32:
        acc = sh[t]
        for k in range(t + 32, nt, 32):
            acc += sh[k]
        sh[t] = acc
    cuda.syncthreads()
    total = 0.0
    for k in range(32 if nt > 32 else nt):  # noqa: FURB136 (builtin min fails in CUDA typing)
        total += sh[k]
    cuda.syncthreads()
    return total


@cuda.jit(device=True)
def _block_argmax_sum(shv, shi, shs, v, i, s):
    """(index of the block's largest v, block sum of s): each thread offers its candidate (v, i)
    and partial sum s. Ties and NaN keep the earlier candidate in the fixed scan order."""
    t, nt = cuda.threadIdx.x, cuda.blockDim.x
    shv[t] = v
    shi[t] = i
    shs[t] = s
    cuda.syncthreads()
    if t < 32:
        bv, bi, acc = shv[t], shi[t], shs[t]
        for k in range(t + 32, nt, 32):
            if shv[k] > bv:
                bv = shv[k]
                bi = shi[k]
            acc += shs[k]
        shv[t] = bv
        shi[t] = bi
        shs[t] = acc
    cuda.syncthreads()
    bv, bi, acc = shv[0], shi[0], shs[0]
    for k in range(1, 32 if nt > 32 else nt):  # noqa: FURB136 (as above)
        if shv[k] > bv:
            bv = shv[k]
            bi = shi[k]
        acc += shs[k]
    cuda.syncthreads()
    return bi, acc


@cuda.jit(device=True)
def _block_sum3(sh0, sh1, sh2, a, b, c):
    """Three block sums for the price of one (same scheme and barriers as _block_sum)."""
    t, nt = cuda.threadIdx.x, cuda.blockDim.x
    sh0[t] = a
    sh1[t] = b
    sh2[t] = c
    cuda.syncthreads()
    if t < 32:
        x0, x1, x2 = sh0[t], sh1[t], sh2[t]
        for k in range(t + 32, nt, 32):
            x0 += sh0[k]
            x1 += sh1[k]
            x2 += sh2[k]
        sh0[t] = x0
        sh1[t] = x1
        sh2[t] = x2
    cuda.syncthreads()
    x0 = x1 = x2 = 0.0
    for k in range(32 if nt > 32 else nt):  # noqa: FURB136 (builtin min fails in CUDA typing)
        x0 += sh0[k]
        x1 += sh1[k]
        x2 += sh2[k]
    cuda.syncthreads()
    return x0, x1, x2


@cuda.jit(cache=True)
def _finalize_k(part, nblocks, nslots, res):
    """res[0:3] = sums over blocks of part[b, 0:3] (slots past nslots are not read); with 4
    slots res[3] is the bad-target value of the first block that saw one. One block, fixed
    order: deterministic."""
    sh0 = cuda.shared.array(_SMEM, float64)
    sh1 = cuda.shared.array(_SMEM, float64)
    sh2 = cuda.shared.array(_SMEM, float64)
    t = cuda.threadIdx.x
    a = b = c = 0.0
    for k in range(t, nblocks, cuda.blockDim.x):
        a += part[k, 0]
        if nslots > 1:
            b += part[k, 1]
            c += part[k, 2]
    a, b, c = _block_sum3(sh0, sh1, sh2, a, b, c)
    if t == 0:
        res[0] = a
        res[1] = b
        res[2] = c
        res[3] = 0.0
        if nslots == 4:
            for k in range(nblocks):
                if part[k, 2] > 0:
                    res[3] = part[k, 3]
                    break


def _finish(nblocks: int, nslots: int):
    """Run the final reduction over nblocks partials and copy the scalars back (one 32-byte copy).
    """
    part, res, host = _buffers()
    _finalize_k[1, _BLOCK](part, nblocks, nslots, res)
    res.copy_to_host(host)
    return host


# --- activations ----------------------------------------------------------------------------------

# The activation formulas (common/activations.py), shared with the Numba backends.
_device = cuda.jit(device=True, inline=True, cache=True)
_relu = _device(activations.relu)
_leaky_relu = _device(activations.leaky_relu)
_sigmoid = _device(activations.sigmoid)
_relu_backward = _device(activations.relu_backward)
_leaky_relu_backward = _device(activations.leaky_relu_backward)
_sigmoid_backward = _device(activations.sigmoid_backward)
_tanh_backward = _device(activations.tanh_backward)


@cuda.jit(cache=True)
def _act_fwd_k(x, out, code, slope, one):
    start, step, n = cuda.grid(1), cuda.gridsize(1), x.shape[0]
    zero = one - one                    # 0 in the data dtype (a 0.0 literal would be float64)
    if code == ACT_RELU:
        for i in range(start, n, step):
            out[i] = _relu(x[i], zero)
    elif code == ACT_LEAKY_RELU:
        for i in range(start, n, step):
            out[i] = _leaky_relu(x[i], slope, zero)
    elif code == ACT_SIGMOID:
        for i in range(start, n, step):
            v = x[i]
            out[i] = _sigmoid(v, math.exp(-abs(v)), one, zero)   # exp never overflows
    elif code == ACT_TANH:
        for i in range(start, n, step):
            out[i] = math.tanh(x[i])
    else:
        for i in range(start, n, step):
            out[i] = x[i]


@cuda.jit(cache=True)
def _act_bwd_k(dy, y, dx, code, slope, one):
    start, step, n = cuda.grid(1), cuda.gridsize(1), dy.shape[0]
    zero = one - one
    if code == ACT_RELU:
        for i in range(start, n, step):
            dx[i] = _relu_backward(dy[i], y[i], zero)
    elif code == ACT_LEAKY_RELU:
        for i in range(start, n, step):
            dx[i] = _leaky_relu_backward(dy[i], y[i], slope, zero)
    elif code == ACT_SIGMOID:
        for i in range(start, n, step):
            dx[i] = _sigmoid_backward(dy[i], y[i], one)
    elif code == ACT_TANH:
        for i in range(start, n, step):
            dx[i] = _tanh_backward(dy[i], y[i], one)
    else:
        for i in range(start, n, step):
            dx[i] = dy[i]


def _grid(n: int) -> int:
    return _rt.blocks_for(n, _BLOCK)


def activation_forward(x, out, code, slope):
    """out = act(x) on flat device arrays (out may be x)."""
    n = x.shape[0]
    if n:
        t = x.dtype.type
        _act_fwd_k[_grid(n), _BLOCK](x, out, int(code), t(slope), t(1))


def activation_backward(dy, y, dx, code, slope):
    """dx = dy * act'(x) from y = act(x), on flat device arrays (dx may be dy)."""
    n = dy.shape[0]
    if n:
        t = dy.dtype.type
        _act_bwd_k[_grid(n), _BLOCK](dy, y, dx, int(code), t(slope), t(1))


# --- softmax + cross-entropy ----------------------------------------------------------------------

@cuda.jit(cache=True)
def _xent_fwd_k(logits, target, probs, eps, part):
    """Per row: probs = softmax(logits); block partial of the smoothed CE loss (see module doc)."""
    shv = cuda.shared.array(_SMEM, float64)
    shi = cuda.shared.array(_SMEM, int32)
    shs = cuda.shared.array(_SMEM, float64)
    t, nt = cuda.threadIdx.x, cuda.blockDim.x
    n, c = logits.shape
    loss = 0.0
    nbad = 0.0
    badval = 0.0
    for r in range(cuda.blockIdx.x, n, cuda.gridDim.x):
        # pass 1: arg-max and sum of the row (threads stride over columns: coalesced)
        v = -math.inf
        idx = 0
        lsum = 0.0
        for j in range(t, c, nt):
            z = logits[r, j]
            if z > v:
                v = z
                idx = j
            lsum += float(z)
        y = target[r]
        ok = y >= 0 and y < c
        ly = 0.0
        if t == 0 and ok:
            ly = float(logits[r, y])              # read before probs (possibly = logits) is written
        idx, lsum = _block_argmax_sum(shv, shi, shs, v, idx, lsum)
        m = logits[r, idx]                 # the max in the logits' dtype: exp below runs in it
        cuda.syncthreads()                 # every thread has m before the row is overwritten
        # pass 2: unnormalized probabilities and their float64 sum
        s = 0.0
        for j in range(t, c, nt):
            e = math.exp(logits[r, j] - m)
            probs[r, j] = e
            s += float(e)
        s = _block_sum(shv, s)
        inv = 1.0 / s
        # pass 3: normalize (each thread rescales the entries it wrote)
        for j in range(t, c, nt):
            probs[r, j] = float(probs[r, j]) * inv
        if t == 0:
            if ok:
                lse = float(m) + math.log(s)
                loss += (1.0 - eps) * (lse - ly) + eps * (lse - lsum / c)
            else:
                nbad += 1.0
                badval = y
    if t == 0:
        b = cuda.blockIdx.x
        part[b, 0] = loss
        part[b, 1] = 0.0
        part[b, 2] = nbad
        part[b, 3] = badval


@cuda.jit(cache=True)
def _xent_bwd_k(probs, target, dlogits, c, sub, g, hit):
    """dlogits = (probs - sub) * g, minus hit at the target (flat, grid-stride); NaN rows for an
    out-of-range target."""
    start, step, n = cuda.grid(1), cuda.gridsize(1), probs.shape[0]
    for i in range(start, n, step):
        r = i // c
        j = i - r * c
        y = target[r]
        v = (probs[i] - sub) * g           # in the probs' dtype, as the CPU kernel
        if j == y:
            v -= hit
        if y < 0 or y >= c:
            dlogits[i] = math.nan
        else:
            dlogits[i] = v


def _raise_bad_target(host, c: int) -> None:
    if host[2] > 0:
        raise ValueError(f"target must be in [0, {c}), got {int(host[3])}")


def softmax_xent_forward(logits, target, probs, eps):
    """probs = softmax(logits) per row; return the SUM over rows of the smoothed CE loss.

    ValueError if a target is outside [0, C) (checked on the device, reported with the loss).
    """
    n, c = logits.shape
    nb = min(n, _rt.max_blocks())
    part = _buffers()[0]
    _xent_fwd_k[nb, _row_threads(c)](logits, target, probs, float(eps), part)
    host = _finish(nb, 4)
    _raise_bad_target(host, c)
    return float(host[0])


def softmax_xent_backward(probs, target, dlogits, eps, grad_scale):
    """dlogits = (probs - (1 - eps) onehot(target) - eps / C) * grad_scale (may alias probs)."""
    n, c = probs.shape
    t = probs.dtype.type
    _xent_bwd_k[_grid(n * c), _BLOCK](probs.reshape(-1), target, dlogits.reshape(-1), c,
                                      t(eps / c), t(grad_scale), t((1.0 - eps) * grad_scale))


@cuda.jit(cache=True)
def _wxent_fwd_k(logits, target, w, probs, eps, part):
    """Class-weighted smoothed CE in float64, as CrossEntropyLoss (fastreg/nn/loss.py):
    logp = (z - m) - log sum exp(z - m), probs = exp(logp), per-row loss
    (1 - eps) w_y (-logp_y) + eps / C sum_c w_c (-logp_c); block partials of loss and sum w_y."""
    shv = cuda.shared.array(_SMEM, float64)
    shi = cuda.shared.array(_SMEM, int32)
    shs = cuda.shared.array(_SMEM, float64)
    t, nt = cuda.threadIdx.x, cuda.blockDim.x
    n, c = logits.shape
    loss = 0.0
    denom = 0.0
    nbad = 0.0
    badval = 0.0
    for r in range(cuda.blockIdx.x, n, cuda.gridDim.x):
        v = -math.inf
        idx = 0
        for j in range(t, c, nt):
            z = logits[r, j]
            if z > v:
                v = z
                idx = j
        y = target[r]
        ok = y >= 0 and y < c
        zy = 0.0
        if t == 0 and ok:
            zy = float(logits[r, y])
        idx, _ = _block_argmax_sum(shv, shi, shs, v, idx, 0.0)
        m = float(logits[r, idx])
        s = 0.0
        for j in range(t, c, nt):
            s += math.exp(float(logits[r, j]) - m)
        s = _block_sum(shv, s)             # its barriers order every read of the row before
        logs = math.log(s)                 # pass 3's writes (probs may be logits)
        acc = 0.0
        for j in range(t, c, nt):
            lp = (float(logits[r, j]) - m) - logs
            probs[r, j] = math.exp(lp)
            acc += float(w[j]) * lp
        acc = _block_sum(shv, acc)
        if t == 0:
            if ok:
                wy = w[y]
                loss += (1.0 - eps) * (-((zy - m) - logs) * wy) + (eps / c) * (-acc)
                denom += wy
            else:
                nbad += 1.0
                badval = y
    if t == 0:
        b = cuda.blockIdx.x
        part[b, 0] = loss
        part[b, 1] = denom
        part[b, 2] = nbad
        part[b, 3] = badval


@cuda.jit(cache=True)
def _wxent_bwd_k(probs, target, w, dlogits, eps, scale):
    """dlogits = scale * (p ((1-eps) w_y + eps/C W) - (1-eps) w_y [c = y] - eps/C w_c), W = sum w,
    in float64; one block per row (W is block-reduced once per block). NaN rows for bad targets."""
    sh = cuda.shared.array(_SMEM, float64)
    t, nt = cuda.threadIdx.x, cuda.blockDim.x
    n, c = probs.shape
    wsum = 0.0
    for j in range(t, c, nt):
        wsum += float(w[j])
    wsum = _block_sum(sh, wsum)
    ec = eps / c
    for r in range(cuda.blockIdx.x, n, cuda.gridDim.x):
        y = target[r]
        wy = w[y] if y >= 0 and y < c else math.nan
        coef = (1.0 - eps) * wy + ec * wsum
        hit = (1.0 - eps) * wy
        for j in range(t, c, nt):
            g = float(probs[r, j]) * coef
            if j == y:
                g -= hit
            g -= ec * float(w[j])
            dlogits[r, j] = g * scale


def softmax_xent_weighted_forward(logits, target, class_weight, probs, eps):
    """Class-weighted smoothed CE: probs = softmax(logits); return (sum_n loss_n, sum_n w_{y_n}).
    ValueError if a target is outside [0, C)."""
    n, c = logits.shape
    nb = min(n, _rt.max_blocks())
    part = _buffers()[0]
    _wxent_fwd_k[nb, _row_threads(c)](logits, target, class_weight, probs, float(eps), part)
    host = _finish(nb, 4)
    _raise_bad_target(host, c)
    return float(host[0]), float(host[1])


def softmax_xent_weighted_backward(probs, target, class_weight, dlogits, eps, scale):
    """Gradient of the class-weighted smoothed CE times scale (dlogits may be probs)."""
    n, c = probs.shape
    nb = min(n, _rt.max_blocks())
    _wxent_bwd_k[nb, _row_threads(c)](probs, target, class_weight, dlogits, float(eps),
                                      float(scale))


# --- device utilities -----------------------------------------------------------------------------

@cuda.jit(cache=True)
def _fill_k(a, value):
    for i in range(cuda.grid(1), a.shape[0], cuda.gridsize(1)):
        a[i] = value


@cuda.jit(cache=True)
def _scale_k(x, out, alpha):
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        out[i] = alpha * x[i]


@cuda.jit(cache=True)
def _add_k(out, a, alpha):
    for i in range(cuda.grid(1), out.shape[0], cuda.gridsize(1)):
        out[i] += alpha * a[i]


@cuda.jit(cache=True)
def _subtract_k(a, b, out):
    for i in range(cuda.grid(1), a.shape[0], cuda.gridsize(1)):
        out[i] = a[i] - b[i]


def _flat(a):
    return a if a.ndim == 1 else a.reshape(-1)


def fill(a, value):
    """Every element of the C-contiguous device array a = value (cast to a's dtype)."""
    if a.size:
        _fill_k[_grid(a.size), _BLOCK](_flat(a), a.dtype.type(value))


def scale(x, out, alpha):
    """out = alpha * x (out may be x)."""
    if x.size:
        _scale_k[_grid(x.size), _BLOCK](_flat(x), _flat(out), x.dtype.type(alpha))


def add_(out, a, alpha):
    """out += alpha * a."""
    if out.size:
        _add_k[_grid(out.size), _BLOCK](_flat(out), _flat(a), out.dtype.type(alpha))


def subtract(a, b, out):
    """out = a - b (out may be a or b)."""
    if a.size:
        _subtract_k[_grid(a.size), _BLOCK](_flat(a), _flat(b), _flat(out))


@cuda.jit(cache=True)
def _sumsq_k(a, part):
    sh = cuda.shared.array(_SMEM, float64)
    acc = 0.0
    for i in range(cuda.grid(1), a.shape[0], cuda.gridsize(1)):
        v = float(a[i])
        acc += v * v
    acc = _block_sum(sh, acc)
    if cuda.threadIdx.x == 0:
        part[cuda.blockIdx.x, 0] = acc


@cuda.jit(cache=True)
def _sumabs_k(a, part):
    sh = cuda.shared.array(_SMEM, float64)
    acc = 0.0
    for i in range(cuda.grid(1), a.shape[0], cuda.gridsize(1)):
        acc += abs(float(a[i]))
    acc = _block_sum(sh, acc)
    if cuda.threadIdx.x == 0:
        part[cuda.blockIdx.x, 0] = acc


@cuda.jit(cache=True)
def _mse_k(x, t, diff, part):
    sh = cuda.shared.array(_SMEM, float64)
    acc = 0.0
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        d = x[i] - t[i]
        diff[i] = d
        d64 = float(diff[i])               # the stored (dtype-rounded) difference, squared in f64
        acc += d64 * d64
    acc = _block_sum(sh, acc)
    if cuda.threadIdx.x == 0:
        part[cuda.blockIdx.x, 0] = acc


def _reduce(kernel, n: int, *args) -> float:
    nb = _grid(n)
    kernel[nb, _BLOCK](*args, _buffers()[0])
    return float(_finish(nb, 1)[0])


def sum_squares(a) -> float:
    """sum(a ** 2), float64-accumulated, deterministic."""
    return _reduce(_sumsq_k, a.size, _flat(a)) if a.size else 0.0


def sum_abs(a) -> float:
    """sum(|a|), float64-accumulated, deterministic."""
    return _reduce(_sumabs_k, a.size, _flat(a)) if a.size else 0.0


def mse_forward(x, t, diff) -> float:
    """diff = x - t; return sum(diff ** 2) (float64 accumulation)."""
    if not x.size:
        return 0.0
    return _reduce(_mse_k, x.size, _flat(x), _flat(t), _flat(diff))


@cuda.jit(device=True)
def _softplus_pair(xv):
    """(softplus(-x), softplus(x)) in the stable form max(+-x, 0) + log1p(exp(-|x|))."""
    e = math.log1p(math.exp(-abs(xv)))
    return (-xv if xv < 0 else 0.0) + e, (xv if xv > 0 else 0.0) + e


@cuda.jit(cache=True)
def _bce_fwd_k(x, t, pw, has_pw, last, w, has_w, part):
    """Block partials of sum_i w_i (p t_i softplus(-x_i) + (1 - t_i) softplus(x_i)), float64."""
    sh = cuda.shared.array(_SMEM, float64)
    acc = 0.0
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        xv = float(x[i])
        tv = float(t[i])
        p = float(pw[i % last]) if has_pw else 1.0
        sp_neg, sp_pos = _softplus_pair(xv)
        per = p * tv * sp_neg + (1.0 - tv) * sp_pos
        if has_w:
            per *= float(w[i])
        acc += per
    acc = _block_sum(sh, acc)
    if cuda.threadIdx.x == 0:
        part[cuda.blockIdx.x, 0] = acc


@cuda.jit(cache=True)
def _bce_bwd_k(x, t, pw, has_pw, last, w, has_w, grad, scale):
    """grad = scale * w ((p t + 1 - t) sigmoid(x) - p t), sigmoid = (1 + tanh(x/2)) / 2."""
    for i in range(cuda.grid(1), x.shape[0], cuda.gridsize(1)):
        xv = float(x[i])
        tv = float(t[i])
        p = float(pw[i % last]) if has_pw else 1.0
        sig = 0.5 * (1.0 + math.tanh(0.5 * xv))
        g = (p * tv + 1.0 - tv) * sig - p * tv
        if has_w:
            g *= float(w[i])
        grad[i] = scale * g


def _bce_args(pos_weight, weight):
    d = _dummy()
    pw = d if pos_weight is None else pos_weight
    w = d if weight is None else _flat(weight)
    return pw, pos_weight is not None, max(1, pw.shape[0]), w, weight is not None


def bce_with_logits_forward(x, t, pos_weight, weight) -> float:
    """Sum over elements of the (pos_weight, weight)-weighted BCE on logits (float64)."""
    if not x.size:
        return 0.0
    pw, has_pw, last, w, has_w = _bce_args(pos_weight, weight)
    return _reduce(_bce_fwd_k, x.size, _flat(x), _flat(t), pw, has_pw, last, w, has_w)


def bce_with_logits_backward(x, t, pos_weight, weight, grad, scale):
    """grad = scale * d(sum of BCE terms)/dx (grad may be x)."""
    if x.size:
        pw, has_pw, last, w, has_w = _bce_args(pos_weight, weight)
        _bce_bwd_k[_grid(x.size), _BLOCK](_flat(x), _flat(t), pw, has_pw, last, w, has_w,
                                          _flat(grad), float(scale))


@cuda.jit(cache=True)
def _colsum_k(a, rows_per_chunk, part, out, accumulate):
    """Column sums of a row chunk (blockIdx.y) for 32 columns (blockIdx.x): threads along columns,
    blockDim.y row lanes, lanes combined in order through shared memory. One chunk: writes out
    directly; several: writes part[chunk * ncols + j] for _colsum_final_k."""
    sh = cuda.shared.array((_COL_LANES_MAX, 32), float64)
    tx, ty = cuda.threadIdx.x, cuda.threadIdx.y
    nrows, ncols = a.shape
    j = cuda.blockIdx.x * 32 + tx
    r0 = cuda.blockIdx.y * rows_per_chunk
    r1 = r0 + rows_per_chunk
    if r1 > nrows:  # noqa: PLR1730 (builtin min fails in numba's CUDA typing)
        r1 = nrows
    acc = 0.0
    if j < ncols:
        for i in range(r0 + ty, r1, cuda.blockDim.y):
            acc += float(a[i, j])
    sh[ty, tx] = acc
    cuda.syncthreads()
    if ty == 0 and j < ncols:
        s = 0.0
        for k in range(cuda.blockDim.y):
            s += sh[k, tx]
        if cuda.gridDim.y == 1:
            out[j] = float(out[j]) + s if accumulate else s
        else:
            part[cuda.blockIdx.y * ncols + j] = s


@cuda.jit(cache=True)
def _colsum_final_k(part, chunks, out, accumulate):
    ncols = out.shape[0]
    for j in range(cuda.grid(1), ncols, cuda.gridsize(1)):
        s = 0.0
        for k in range(chunks):
            s += part[k * ncols + j]
        out[j] = float(out[j]) + s if accumulate else s


def column_sum(a, out, accumulate):
    """out[j] (+)= sum_i a[i, j] for a 2-D device array (float64 accumulation, one rounding)."""
    nrows, ncols = a.shape
    if ncols == 0:
        return
    if nrows == 0:
        if not accumulate:
            fill(out, 0.0)
        return
    tiles = (ncols + 31) // 32
    # split the rows into chunks of >= 32 rows until the grid fills the device
    chunks = max(1, min((nrows + 31) // 32, _rt.max_blocks() // tiles))
    rows_per_chunk = (nrows + chunks - 1) // chunks
    chunks = (nrows + rows_per_chunk - 1) // rows_per_chunk
    part = _flat_scratch(chunks * ncols)
    _colsum_k[(tiles, chunks), (32, _COL_LANES)](a, rows_per_chunk, part, out, bool(accumulate))
    if chunks > 1:
        _colsum_final_k[_grid(ncols), _BLOCK](part, chunks, out, bool(accumulate))
