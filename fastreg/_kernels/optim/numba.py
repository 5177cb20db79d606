"""Numba backend of the fused optimizer update (see fastreg/_kernels/optim/__init__.py for the maths).

Same function and positional signature as the Cython backend (optim/cy.pyx):
``fused_step(kind, flags, param, grad, buf0, buf1, buf2, hp)``. The algorithm switch is taken
once per block, outside the element loops; every coefficient in ``hp`` is already in the
parameter dtype, so float32 buffers are updated in float32 arithmetic (no literal constants here,
which numba would promote to float64).
"""
from __future__ import annotations

import numpy as np
from numba import njit, prange

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


@njit(cache=True, error_model="numpy", fastmath=_FASTMATH, inline="always")
def _penalized_grad(w, g, l1, l2x2, maximize):
    # The L1/L2 penalties are part of the loss: their gradient joins the loss gradient first.
    zero = w - w
    if w > zero:
        g = g + l1
    elif w < zero:
        g = g - l1
    g = g + l2x2 * w
    return -g if maximize else g


@njit(cache=True, error_model="numpy", fastmath=_FASTMATH)
def _sgd_range(p, gr, buf, hp, flags):
    lr, wd, l1, l2x2 = hp[HP_LR], hp[HP_WD], hp[HP_L1], hp[HP_L2X2]
    mu, one_m_damp = hp[HP_A], hp[HP_B]
    mx = (flags & MAXIMIZE) != 0
    nesterov = (flags & NESTEROV) != 0
    if (flags & MOMENTUM) == 0:
        for i in range(p.shape[0]):
            w = p[i]
            g = _penalized_grad(w, gr[i], l1, l2x2, mx) + wd * w
            p[i] = w - lr * g
    elif (flags & FIRST_STEP) != 0:
        # torch: the first step copies g into the buffer, without dampening.
        for i in range(p.shape[0]):
            w = p[i]
            g = _penalized_grad(w, gr[i], l1, l2x2, mx) + wd * w
            buf[i] = g
            p[i] = w - lr * (g + mu * g if nesterov else g)
    else:
        for i in range(p.shape[0]):
            w = p[i]
            g = _penalized_grad(w, gr[i], l1, l2x2, mx) + wd * w
            b = mu * buf[i] + one_m_damp * g
            buf[i] = b
            p[i] = w - lr * (g + mu * b if nesterov else b)


@njit(cache=True, error_model="numpy", fastmath=_FASTMATH)
def _adam_range(p, gr, m_buf, v_buf, vmax_buf, hp, flags):
    wd, l1, l2x2 = hp[HP_WD], hp[HP_L1], hp[HP_L2X2]
    one_m_b1, b2, one_m_b2, eps = hp[HP_A], hp[HP_B], hp[HP_C], hp[HP_D]
    step_size, inv_bc2_sqrt, decay = hp[HP_E], hp[HP_F], hp[HP_G]
    mx = (flags & MAXIMIZE) != 0
    # optim.py sets (wd, decay) to (weight_decay, 1) for Adam and (0, 1 - lr*weight_decay) for
    # AdamW, so both forms are the same branch-free expression here.
    if (flags & AMSGRAD) == 0:
        for i in range(p.shape[0]):
            w = p[i]
            g = _penalized_grad(w, gr[i], l1, l2x2, mx) + wd * w
            m = m_buf[i]
            m = m + one_m_b1 * (g - m)
            v = b2 * v_buf[i] + one_m_b2 * (g * g)
            m_buf[i] = m
            v_buf[i] = v
            p[i] = w * decay - step_size * (m / (np.sqrt(v) * inv_bc2_sqrt + eps))
    else:
        for i in range(p.shape[0]):
            w = p[i]
            g = _penalized_grad(w, gr[i], l1, l2x2, mx) + wd * w
            m = m_buf[i]
            m = m + one_m_b1 * (g - m)
            v = b2 * v_buf[i] + one_m_b2 * (g * g)
            m_buf[i] = m
            v_buf[i] = v
            vm = vmax_buf[i]
            vm = max(v, vm)
            vmax_buf[i] = vm
            p[i] = w * decay - step_size * (m / (np.sqrt(vm) * inv_bc2_sqrt + eps))


@njit(cache=True, error_model="numpy", fastmath=_FASTMATH)
def _rmsprop_range(p, gr, sq_buf, ga_buf, mom_buf, hp, flags):
    lr, wd, l1, l2x2 = hp[HP_LR], hp[HP_WD], hp[HP_L1], hp[HP_L2X2]
    alpha, one_m_alpha, eps, mu = hp[HP_A], hp[HP_B], hp[HP_C], hp[HP_D]
    mx = (flags & MAXIMIZE) != 0
    centered = (flags & CENTERED) != 0
    if (flags & MOMENTUM) == 0:
        for i in range(p.shape[0]):
            w = p[i]
            g = _penalized_grad(w, gr[i], l1, l2x2, mx) + wd * w
            sq = alpha * sq_buf[i] + one_m_alpha * (g * g)
            sq_buf[i] = sq
            if centered:
                ga = ga_buf[i]
                ga = ga + one_m_alpha * (g - ga)
                ga_buf[i] = ga
                sq = sq - ga * ga
            p[i] = w - lr * (g / (np.sqrt(sq) + eps))
    else:
        for i in range(p.shape[0]):
            w = p[i]
            g = _penalized_grad(w, gr[i], l1, l2x2, mx) + wd * w
            sq = alpha * sq_buf[i] + one_m_alpha * (g * g)
            sq_buf[i] = sq
            if centered:
                ga = ga_buf[i]
                ga = ga + one_m_alpha * (g - ga)
                ga_buf[i] = ga
                sq = sq - ga * ga
            b = mu * mom_buf[i] + g / (np.sqrt(sq) + eps)
            mom_buf[i] = b
            p[i] = w - lr * b


@njit(cache=True, error_model="numpy", fastmath=_FASTMATH)
def _adagrad_range(p, gr, sum_buf, hp, flags):
    wd, l1, l2x2 = hp[HP_WD], hp[HP_L1], hp[HP_L2X2]
    clr, eps = hp[HP_A], hp[HP_B]
    mx = (flags & MAXIMIZE) != 0
    for i in range(p.shape[0]):
        w = p[i]
        g = _penalized_grad(w, gr[i], l1, l2x2, mx) + wd * w
        s = sum_buf[i] + g * g
        sum_buf[i] = s
        p[i] = w - clr * (g / (np.sqrt(s) + eps))


@njit(cache=True, error_model="numpy", fastmath=_FASTMATH)
def _adadelta_range(p, gr, sq_buf, acc_buf, hp, flags):
    lr, wd, l1, l2x2 = hp[HP_LR], hp[HP_WD], hp[HP_L1], hp[HP_L2X2]
    rho, one_m_rho, eps = hp[HP_A], hp[HP_B], hp[HP_C]
    mx = (flags & MAXIMIZE) != 0
    for i in range(p.shape[0]):
        w = p[i]
        g = _penalized_grad(w, gr[i], l1, l2x2, mx) + wd * w
        sq = rho * sq_buf[i] + one_m_rho * (g * g)
        sq_buf[i] = sq
        acc = acc_buf[i]
        delta = np.sqrt(acc + eps) / np.sqrt(sq + eps) * g
        acc_buf[i] = rho * acc + one_m_rho * (delta * delta)
        p[i] = w - lr * delta


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
