"""CUDA backend of the fused optimizer update (numba.cuda; maths in fastreg/_kernels/optim/__init__.py).

Same function and positional signature as the Numba backend:
``fused_step(kind, flags, param, grad, buf0, buf1, buf2, hp)``, with ``param``, ``grad`` and the
used state buffers flat device arrays of one dtype (unused buffers are length-0 device arrays,
never indexed) and ``hp`` the small host array of coefficients optim.py builds.

Kernel design
-------------
* One elementwise kernel per algorithm, launched with ``THREADS`` threads per block and a
  grid-stride loop over ``enough`` blocks (``_cuda_runtime.blocks_for``: one element per thread
  up to 32 blocks per SM, then each thread takes several). Consecutive threads touch consecutive
  elements, so every load and store is coalesced.
* The update is bandwidth-bound (Adam: 4 loads and 3 stores per element, ~10 flops), so the
  kernel does exactly one sweep: each element of ``param``, ``grad`` and every used state buffer
  is read once and written once, in place; intermediates stay in registers. This is what torch's
  fused/foreach kernels do, minus their per-tensor-list bookkeeping.
* ``hp`` is unpacked on the host into scalar kernel arguments in the parameter dtype: kernel
  arguments travel in the launch's parameter buffer, so a step costs no host->device copy and no
  device allocation. float32 parameters are therefore updated in float32 arithmetic; there are
  no float literals in the kernels (numba would type them float64 and promote).
* The flags that decide which buffers are read or written (SGD momentum / first step, Adam
  amsgrad, RMSprop momentum) select one of several loops outside the element loop; the others
  (maximize, nesterov, centered) are block-uniform predicates, which cost no divergence.
* Order of operations is the Numba backend's (torch's single-tensor algorithms), so results
  agree with the CPU to rounding (the GPU may contract a*b + c into an FMA, as the CPU backends
  do under ``fastmath={"contract"}``).
"""
from __future__ import annotations

import math

from numba import cuda

from ..runtime import cuda as _cuda_runtime
from .codes import (
    ADADELTA,
    ADAGRAD,
    ADAM,
    AMSGRAD,
    CENTERED,
    FIRST_STEP,
    HP_A,
    HP_B,
    HP_C,
    HP_D,
    HP_E,
    HP_F,
    HP_G,
    HP_L1,
    HP_L2X2,
    HP_LR,
    HP_WD,
    MAXIMIZE,
    MOMENTUM,
    NESTEROV,
    RMSPROP,
    SGD,
)

#: Threads per block (8 warps): enough to hide memory latency with 32 resident blocks per SM.
THREADS = 256


@cuda.jit(device=True, cache=True)
def _penalized_grad(w, g, l1, l2x2, maximize):
    # The L1/L2 penalties are part of the loss: their gradient joins the loss gradient first.
    zero = w - w
    if w > zero:
        g = g + l1
    elif w < zero:
        g = g - l1
    g = g + l2x2 * w
    return -g if maximize else g


@cuda.jit(cache=True)
def _sgd_kernel(p, gr, buf, lr, wd, l1, l2x2, mu, one_m_damp, maximize, momentum, first,
                nesterov):
    start, stride = cuda.grid(1), cuda.gridsize(1)
    n = p.shape[0]
    if not momentum:
        for i in range(start, n, stride):
            w = p[i]
            g = _penalized_grad(w, gr[i], l1, l2x2, maximize) + wd * w
            p[i] = w - lr * g
    elif first:
        # torch: the first step copies g into the buffer, without dampening (buf is not read)
        for i in range(start, n, stride):
            w = p[i]
            g = _penalized_grad(w, gr[i], l1, l2x2, maximize) + wd * w
            buf[i] = g
            p[i] = w - lr * (g + mu * g if nesterov else g)
    else:
        for i in range(start, n, stride):
            w = p[i]
            g = _penalized_grad(w, gr[i], l1, l2x2, maximize) + wd * w
            b = mu * buf[i] + one_m_damp * g
            buf[i] = b
            p[i] = w - lr * (g + mu * b if nesterov else b)


@cuda.jit(cache=True)
def _adam_kernel(p, gr, m_buf, v_buf, vmax_buf, wd, l1, l2x2, one_m_b1, b2, one_m_b2, eps,
                 step_size, inv_bc2_sqrt, decay, maximize, amsgrad):
    # optim.py passes (wd, decay) = (weight_decay, 1) for Adam and (0, 1 - lr*wd) for AdamW
    start, stride = cuda.grid(1), cuda.gridsize(1)
    n = p.shape[0]
    if not amsgrad:
        for i in range(start, n, stride):
            w = p[i]
            g = _penalized_grad(w, gr[i], l1, l2x2, maximize) + wd * w
            m = m_buf[i]
            m = m + one_m_b1 * (g - m)
            v = b2 * v_buf[i] + one_m_b2 * (g * g)
            m_buf[i] = m
            v_buf[i] = v
            p[i] = w * decay - step_size * (m / (math.sqrt(v) * inv_bc2_sqrt + eps))
    else:
        for i in range(start, n, stride):
            w = p[i]
            g = _penalized_grad(w, gr[i], l1, l2x2, maximize) + wd * w
            m = m_buf[i]
            m = m + one_m_b1 * (g - m)
            v = b2 * v_buf[i] + one_m_b2 * (g * g)
            m_buf[i] = m
            v_buf[i] = v
            vm = vmax_buf[i]
            vm = vm if vm > v else v  # noqa: FURB136 (max(v, vm): the builtin fails in CUDA typing)
            vmax_buf[i] = vm
            p[i] = w * decay - step_size * (m / (math.sqrt(vm) * inv_bc2_sqrt + eps))


@cuda.jit(cache=True)
def _rmsprop_kernel(p, gr, sq_buf, ga_buf, mom_buf, lr, wd, l1, l2x2, alpha, one_m_alpha, eps,
                    mu, maximize, centered, momentum):
    start, stride = cuda.grid(1), cuda.gridsize(1)
    n = p.shape[0]
    if not momentum:
        for i in range(start, n, stride):
            w = p[i]
            g = _penalized_grad(w, gr[i], l1, l2x2, maximize) + wd * w
            sq = alpha * sq_buf[i] + one_m_alpha * (g * g)
            sq_buf[i] = sq
            if centered:
                ga = ga_buf[i]
                ga = ga + one_m_alpha * (g - ga)
                ga_buf[i] = ga
                sq = sq - ga * ga
            p[i] = w - lr * (g / (math.sqrt(sq) + eps))
    else:
        for i in range(start, n, stride):
            w = p[i]
            g = _penalized_grad(w, gr[i], l1, l2x2, maximize) + wd * w
            sq = alpha * sq_buf[i] + one_m_alpha * (g * g)
            sq_buf[i] = sq
            if centered:
                ga = ga_buf[i]
                ga = ga + one_m_alpha * (g - ga)
                ga_buf[i] = ga
                sq = sq - ga * ga
            b = mu * mom_buf[i] + g / (math.sqrt(sq) + eps)
            mom_buf[i] = b
            p[i] = w - lr * b


@cuda.jit(cache=True)
def _adagrad_kernel(p, gr, sum_buf, wd, l1, l2x2, clr, eps, maximize):
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, p.shape[0], stride):
        w = p[i]
        g = _penalized_grad(w, gr[i], l1, l2x2, maximize) + wd * w
        s = sum_buf[i] + g * g
        sum_buf[i] = s
        p[i] = w - clr * (g / (math.sqrt(s) + eps))


@cuda.jit(cache=True)
def _adadelta_kernel(p, gr, sq_buf, acc_buf, lr, wd, l1, l2x2, rho, one_m_rho, eps, maximize):
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, p.shape[0], stride):
        w = p[i]
        g = _penalized_grad(w, gr[i], l1, l2x2, maximize) + wd * w
        sq = rho * sq_buf[i] + one_m_rho * (g * g)
        sq_buf[i] = sq
        acc = acc_buf[i]
        delta = math.sqrt(acc + eps) / math.sqrt(sq + eps) * g
        acc_buf[i] = rho * acc + one_m_rho * (delta * delta)
        p[i] = w - lr * delta


def fused_step(kind, flags, param, grad, buf0, buf1, buf2, hp):
    """In-place update of ``param`` (and the state buffers) by algorithm ``kind``.

    Trusts its inputs (checked in fastreg/_kernels/optim/__init__.py). ``hp`` is a host array whose
    entries (numpy scalars of the parameter dtype) become kernel arguments.
    """
    n = param.shape[0]
    if n == 0:
        return
    launch = (_cuda_runtime.blocks_for(n, THREADS), THREADS)
    lr, wd, l1, l2x2 = hp[HP_LR], hp[HP_WD], hp[HP_L1], hp[HP_L2X2]
    mx = bool(flags & MAXIMIZE)
    if kind == SGD:
        _sgd_kernel[launch](param, grad, buf0, lr, wd, l1, l2x2, hp[HP_A], hp[HP_B], mx,
                            bool(flags & MOMENTUM), bool(flags & FIRST_STEP),
                            bool(flags & NESTEROV))
    elif kind == ADAM:
        _adam_kernel[launch](param, grad, buf0, buf1, buf2, wd, l1, l2x2, hp[HP_A], hp[HP_B],
                             hp[HP_C], hp[HP_D], hp[HP_E], hp[HP_F], hp[HP_G], mx,
                             bool(flags & AMSGRAD))
    elif kind == RMSPROP:
        _rmsprop_kernel[launch](param, grad, buf0, buf1, buf2, lr, wd, l1, l2x2, hp[HP_A],
                                hp[HP_B], hp[HP_C], hp[HP_D], mx, bool(flags & CENTERED),
                                bool(flags & MOMENTUM))
    elif kind == ADAGRAD:
        _adagrad_kernel[launch](param, grad, buf0, wd, l1, l2x2, hp[HP_A], hp[HP_B], mx)
    elif kind == ADADELTA:
        _adadelta_kernel[launch](param, grad, buf0, buf1, lr, wd, l1, l2x2, hp[HP_A], hp[HP_B],
                                 hp[HP_C], mx)
    else:
        raise ValueError(f"unknown optimizer kind {kind!r}")
