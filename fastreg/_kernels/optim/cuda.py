"""CUDA backend of the fused optimizer update (numba.cuda; per-element formulas in
optim/maths.py, shared with the Numba backend; documented in fastreg/_kernels/optim/__init__.py).

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
* The per-element formulas are the Numba backend's, compiled from the same source
  (``optim/maths.py``; torch's single-tensor order of operations), so results agree with the CPU
  to rounding (the GPU may contract a*b + c into an FMA, as the CPU backends
  do under ``fastmath={"contract"}``).
"""
from __future__ import annotations

from numba import cuda

from ..runtime import cuda as _cuda_runtime
from . import maths
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


# The per-element maths (optim/maths.py), shared with the Numba backend.
_device = cuda.jit(device=True, inline=True, cache=True)
_grad = _device(maths.grad)
_sgd_buffer = _device(maths.sgd_buffer)
_sgd_param = _device(maths.sgd_param)
_adam_moments = _device(maths.adam_moments)
_amsgrad_max = _device(maths.amsgrad_max)
_adam_param = _device(maths.adam_param)
_ema_square = _device(maths.ema_square)
_lerp = _device(maths.lerp)
_centered_var = _device(maths.centered_var)
_rms_scaled = _device(maths.rms_scaled)
_heavy_ball = _device(maths.heavy_ball)
_add_square = _device(maths.add_square)
_adadelta_delta = _device(maths.adadelta_delta)
_descend = _device(maths.descend)


@cuda.jit(cache=True)
def _sgd_kernel(p, gr, buf, lr, wd, l1, l2x2, mu, one_m_damp, maximize, momentum, first,
                nesterov):
    start, stride = cuda.grid(1), cuda.gridsize(1)
    n = p.shape[0]
    if not momentum:
        for i in range(start, n, stride):
            w = p[i]
            g = _grad(w, gr[i], l1, l2x2, wd, maximize)
            p[i] = _sgd_param(w, g, g, lr, mu, False)
    elif first:
        # torch: the first step copies g into the buffer, without dampening (buf is not read)
        for i in range(start, n, stride):
            w = p[i]
            g = _grad(w, gr[i], l1, l2x2, wd, maximize)
            b = _sgd_buffer(g, g, mu, one_m_damp, True)
            buf[i] = b
            p[i] = _sgd_param(w, g, b, lr, mu, nesterov)
    else:
        for i in range(start, n, stride):
            w = p[i]
            g = _grad(w, gr[i], l1, l2x2, wd, maximize)
            b = _sgd_buffer(g, buf[i], mu, one_m_damp, False)
            buf[i] = b
            p[i] = _sgd_param(w, g, b, lr, mu, nesterov)


@cuda.jit(cache=True)
def _adam_kernel(p, gr, m_buf, v_buf, vmax_buf, wd, l1, l2x2, one_m_b1, b2, one_m_b2, eps,
                 step_size, inv_bc2_sqrt, decay, maximize, amsgrad):
    # optim/__init__.py passes (wd, decay) = (weight_decay, 1) for Adam, (0, 1 - lr*wd) for AdamW
    start, stride = cuda.grid(1), cuda.gridsize(1)
    n = p.shape[0]
    if not amsgrad:
        for i in range(start, n, stride):
            w = p[i]
            g = _grad(w, gr[i], l1, l2x2, wd, maximize)
            m, v = _adam_moments(g, m_buf[i], v_buf[i], one_m_b1, b2, one_m_b2)
            m_buf[i] = m
            v_buf[i] = v
            p[i] = _adam_param(w, m, v, step_size, inv_bc2_sqrt, eps, decay)
    else:
        for i in range(start, n, stride):
            w = p[i]
            g = _grad(w, gr[i], l1, l2x2, wd, maximize)
            m, v = _adam_moments(g, m_buf[i], v_buf[i], one_m_b1, b2, one_m_b2)
            m_buf[i] = m
            v_buf[i] = v
            vm = _amsgrad_max(v, vmax_buf[i])
            vmax_buf[i] = vm
            p[i] = _adam_param(w, m, vm, step_size, inv_bc2_sqrt, eps, decay)


@cuda.jit(cache=True)
def _rmsprop_kernel(p, gr, sq_buf, ga_buf, mom_buf, lr, wd, l1, l2x2, alpha, one_m_alpha, eps,
                    mu, maximize, centered, momentum):
    start, stride = cuda.grid(1), cuda.gridsize(1)
    n = p.shape[0]
    if not momentum:
        for i in range(start, n, stride):
            w = p[i]
            g = _grad(w, gr[i], l1, l2x2, wd, maximize)
            sq = _ema_square(sq_buf[i], g, alpha, one_m_alpha)
            sq_buf[i] = sq
            if centered:
                ga = _lerp(ga_buf[i], g, one_m_alpha)
                ga_buf[i] = ga
                sq = _centered_var(sq, ga)
            p[i] = _descend(w, lr, _rms_scaled(g, sq, eps))
    else:
        for i in range(start, n, stride):
            w = p[i]
            g = _grad(w, gr[i], l1, l2x2, wd, maximize)
            sq = _ema_square(sq_buf[i], g, alpha, one_m_alpha)
            sq_buf[i] = sq
            if centered:
                ga = _lerp(ga_buf[i], g, one_m_alpha)
                ga_buf[i] = ga
                sq = _centered_var(sq, ga)
            b = _heavy_ball(mom_buf[i], _rms_scaled(g, sq, eps), mu)
            mom_buf[i] = b
            p[i] = _descend(w, lr, b)


@cuda.jit(cache=True)
def _adagrad_kernel(p, gr, sum_buf, wd, l1, l2x2, clr, eps, maximize):
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, p.shape[0], stride):
        w = p[i]
        g = _grad(w, gr[i], l1, l2x2, wd, maximize)
        s = _add_square(sum_buf[i], g)
        sum_buf[i] = s
        p[i] = _descend(w, clr, _rms_scaled(g, s, eps))


@cuda.jit(cache=True)
def _adadelta_kernel(p, gr, sq_buf, acc_buf, lr, wd, l1, l2x2, rho, one_m_rho, eps, maximize):
    start, stride = cuda.grid(1), cuda.gridsize(1)
    for i in range(start, p.shape[0], stride):
        w = p[i]
        g = _grad(w, gr[i], l1, l2x2, wd, maximize)
        sq = _ema_square(sq_buf[i], g, rho, one_m_rho)
        sq_buf[i] = sq
        acc = acc_buf[i]
        delta = _adadelta_delta(g, sq, acc, eps)
        acc_buf[i] = _ema_square(acc, delta, rho, one_m_rho)
        p[i] = _descend(w, lr, delta)


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
