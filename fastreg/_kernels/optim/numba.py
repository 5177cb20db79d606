"""Numba backend of the fused optimizer update (formulas in fastreg/_kernels/optim/maths.py,
shared with the CUDA backend; documented in fastreg/_kernels/optim/__init__.py).

Same function and positional signature as the Cython backend (optim/cy.pyx):
``fused_step(kind, flags, param, grad, buf0, buf1, buf2, hp)``. The algorithm switch is taken
once per block, outside the element loops; every coefficient in ``hp`` is already in the
parameter dtype, so float32 buffers are updated in float32 arithmetic (no literal constants here,
which numba would promote to float64).
"""
from __future__ import annotations

from numba import njit, prange

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

# Elements per parallel block (as in the Cython backend).
BLOCK = 16384
# No reassociation (the update is elementwise, nothing to reorder); contraction into FMA and
# no-signed-zeros are all the vectorizer needs.
_FASTMATH = {"contract", "nsz", "arcp"}


# The per-element maths (optim/maths.py, shared with the CUDA backend), inlined at the IR level.
_inline = njit(cache=True, error_model="numpy", fastmath=_FASTMATH, inline="always")
_grad = _inline(maths.grad)
_sgd_buffer = _inline(maths.sgd_buffer)
_sgd_param = _inline(maths.sgd_param)
_adam_moments = _inline(maths.adam_moments)
_amsgrad_max = _inline(maths.amsgrad_max)
_adam_param = _inline(maths.adam_param)
_ema_square = _inline(maths.ema_square)
_lerp = _inline(maths.lerp)
_centered_var = _inline(maths.centered_var)
_rms_scaled = _inline(maths.rms_scaled)
_heavy_ball = _inline(maths.heavy_ball)
_add_square = _inline(maths.add_square)
_adadelta_delta = _inline(maths.adadelta_delta)
_descend = _inline(maths.descend)

# One element loop per combination of the flags that decide a load or a store: a loop whose
# stores depend on a runtime flag per element stays scalar (~10x slower). The other flags
# (maximize, nesterov, centered's arithmetic) are loop-invariant selects LLVM unswitches.


@njit(cache=True, error_model="numpy", fastmath=_FASTMATH)
def _sgd_range(p, gr, buf, hp, flags):
    lr, wd, l1, l2x2 = hp[HP_LR], hp[HP_WD], hp[HP_L1], hp[HP_L2X2]
    mu, one_m_damp = hp[HP_A], hp[HP_B]
    mx = (flags & MAXIMIZE) != 0
    nesterov = (flags & NESTEROV) != 0
    if (flags & MOMENTUM) == 0:
        for i in range(p.shape[0]):
            w = p[i]
            g = _grad(w, gr[i], l1, l2x2, wd, mx)
            p[i] = _sgd_param(w, g, g, lr, mu, False)
    elif (flags & FIRST_STEP) != 0:
        for i in range(p.shape[0]):
            w = p[i]
            g = _grad(w, gr[i], l1, l2x2, wd, mx)
            b = _sgd_buffer(g, g, mu, one_m_damp, True)
            buf[i] = b
            p[i] = _sgd_param(w, g, b, lr, mu, nesterov)
    else:
        for i in range(p.shape[0]):
            w = p[i]
            g = _grad(w, gr[i], l1, l2x2, wd, mx)
            b = _sgd_buffer(g, buf[i], mu, one_m_damp, False)
            buf[i] = b
            p[i] = _sgd_param(w, g, b, lr, mu, nesterov)


@njit(cache=True, error_model="numpy", fastmath=_FASTMATH)
def _adam_range(p, gr, m_buf, v_buf, vmax_buf, hp, flags):
    wd, l1, l2x2 = hp[HP_WD], hp[HP_L1], hp[HP_L2X2]
    one_m_b1, b2, one_m_b2, eps = hp[HP_A], hp[HP_B], hp[HP_C], hp[HP_D]
    step_size, inv_bc2_sqrt, decay = hp[HP_E], hp[HP_F], hp[HP_G]
    mx = (flags & MAXIMIZE) != 0
    if (flags & AMSGRAD) == 0:
        for i in range(p.shape[0]):
            w = p[i]
            g = _grad(w, gr[i], l1, l2x2, wd, mx)
            m, v = _adam_moments(g, m_buf[i], v_buf[i], one_m_b1, b2, one_m_b2)
            m_buf[i] = m
            v_buf[i] = v
            p[i] = _adam_param(w, m, v, step_size, inv_bc2_sqrt, eps, decay)
    else:
        for i in range(p.shape[0]):
            w = p[i]
            g = _grad(w, gr[i], l1, l2x2, wd, mx)
            m, v = _adam_moments(g, m_buf[i], v_buf[i], one_m_b1, b2, one_m_b2)
            m_buf[i] = m
            v_buf[i] = v
            vm = _amsgrad_max(v, vmax_buf[i])
            vmax_buf[i] = vm
            p[i] = _adam_param(w, m, vm, step_size, inv_bc2_sqrt, eps, decay)


@njit(cache=True, error_model="numpy", fastmath=_FASTMATH)
def _rmsprop_range(p, gr, sq_buf, ga_buf, mom_buf, hp, flags):
    lr, wd, l1, l2x2 = hp[HP_LR], hp[HP_WD], hp[HP_L1], hp[HP_L2X2]
    alpha, one_m_alpha, eps, mu = hp[HP_A], hp[HP_B], hp[HP_C], hp[HP_D]
    mx = (flags & MAXIMIZE) != 0
    centered = (flags & CENTERED) != 0
    if (flags & MOMENTUM) == 0:
        for i in range(p.shape[0]):
            w = p[i]
            g = _grad(w, gr[i], l1, l2x2, wd, mx)
            sq = _ema_square(sq_buf[i], g, alpha, one_m_alpha)
            sq_buf[i] = sq
            if centered:
                ga = _lerp(ga_buf[i], g, one_m_alpha)
                ga_buf[i] = ga
                sq = _centered_var(sq, ga)
            p[i] = _descend(w, lr, _rms_scaled(g, sq, eps))
    else:
        for i in range(p.shape[0]):
            w = p[i]
            g = _grad(w, gr[i], l1, l2x2, wd, mx)
            sq = _ema_square(sq_buf[i], g, alpha, one_m_alpha)
            sq_buf[i] = sq
            if centered:
                ga = _lerp(ga_buf[i], g, one_m_alpha)
                ga_buf[i] = ga
                sq = _centered_var(sq, ga)
            b = _heavy_ball(mom_buf[i], _rms_scaled(g, sq, eps), mu)
            mom_buf[i] = b
            p[i] = _descend(w, lr, b)


@njit(cache=True, error_model="numpy", fastmath=_FASTMATH)
def _adagrad_range(p, gr, sum_buf, hp, flags):
    wd, l1, l2x2 = hp[HP_WD], hp[HP_L1], hp[HP_L2X2]
    clr, eps = hp[HP_A], hp[HP_B]
    mx = (flags & MAXIMIZE) != 0
    for i in range(p.shape[0]):
        w = p[i]
        g = _grad(w, gr[i], l1, l2x2, wd, mx)
        s = _add_square(sum_buf[i], g)
        sum_buf[i] = s
        p[i] = _descend(w, clr, _rms_scaled(g, s, eps))


@njit(cache=True, error_model="numpy", fastmath=_FASTMATH)
def _adadelta_range(p, gr, sq_buf, acc_buf, hp, flags):
    lr, wd, l1, l2x2 = hp[HP_LR], hp[HP_WD], hp[HP_L1], hp[HP_L2X2]
    rho, one_m_rho, eps = hp[HP_A], hp[HP_B], hp[HP_C]
    mx = (flags & MAXIMIZE) != 0
    for i in range(p.shape[0]):
        w = p[i]
        g = _grad(w, gr[i], l1, l2x2, wd, mx)
        sq = _ema_square(sq_buf[i], g, rho, one_m_rho)
        sq_buf[i] = sq
        acc = acc_buf[i]
        delta = _adadelta_delta(g, sq, acc, eps)
        acc_buf[i] = _ema_square(acc, delta, rho, one_m_rho)
        p[i] = _descend(w, lr, delta)


@njit(cache=True, error_model="numpy", fastmath=_FASTMATH)
def _range(kind, flags, param, grad, buf0, buf1, buf2, hp, lo, hi):
    # Slices, so every element loop runs from 0: numba then proves the index non-negative and
    # drops the wrap-around select that would otherwise stop LLVM from vectorizing.
    # (Unused buffers have length 0 and slice to length 0; they are never indexed.)
    p, g = param[lo:hi], grad[lo:hi]
    b0, b1, b2 = buf0[lo:hi], buf1[lo:hi], buf2[lo:hi]
    if kind == SGD:
        _sgd_range(p, g, b0, hp, flags)
    elif kind == ADAM:
        _adam_range(p, g, b0, b1, b2, hp, flags)
    elif kind == RMSPROP:
        _rmsprop_range(p, g, b0, b1, b2, hp, flags)
    elif kind == ADAGRAD:
        _adagrad_range(p, g, b0, hp, flags)
    elif kind == ADADELTA:
        _adadelta_range(p, g, b0, b1, hp, flags)


@njit(cache=True, parallel=True, error_model="numpy", fastmath=_FASTMATH)
def fused_step(kind, flags, param, grad, buf0, buf1, buf2, hp):
    """In-place update of ``param`` (and the state buffers) by algorithm ``kind``.

    Trusts its inputs (checked in fastreg/_kernels/optim/__init__.py). Unused buffers may have length 0.
    """
    n = param.shape[0]
    nblk = (n + BLOCK - 1) // BLOCK
    if nblk <= 1:
        _range(kind, flags, param, grad, buf0, buf1, buf2, hp, 0, n)
        return
    for b in prange(nblk):
        lo = b * BLOCK
        hi = min(lo + BLOCK, n)
        _range(kind, flags, param, grad, buf0, buf1, buf2, hp, lo, hi)
