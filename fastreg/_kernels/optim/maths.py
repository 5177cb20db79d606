"""Per-element maths of the fused optimizer updates, written once for the Numba and CUDA backends.

Plain Python on scalars (no numba import here): ``optim/numba.py`` compiles these functions with
``numba.njit(inline="always")`` and ``optim/cuda.py`` with ``numba.cuda.jit(device=True,
inline=True)``; both call them inside their own loops, which do the loads and stores. The C
backend (``step_impl.h``) is compiled separately and keeps its own copy of the same formulas.

Rules the functions follow so that both targets compile them to the same arithmetic:

* No float literals: numba types a literal as float64 and would promote float32 arithmetic
  (``cuda_compile_check.py`` fails on f64 instructions in a float32 kernel). A zero is ``w - w``;
  every coefficient arrives in the parameter dtype (``optim/__init__.py`` builds ``hp``).
* No builtin ``min``/``max`` (numba's CUDA target cannot type them): conditional expressions,
  which also give the C backend's NaN behaviour (``a if a > b else b``).
* No calls between the functions of this module (a plain function is not callable from jitted
  code); each backend composes them, in its element loops.
* No loads or stores: the loops own the memory schedule. Each algorithm is cut where its state
  buffers are stored (a buffer is stored as soon as its new value is known, as in the C
  backend): storing late keeps more values live, which cost the CUDA kernels 4-10 registers,
  and the loops select the buffers they touch outside the element loop (numba leaves a loop that
  decides its stores per element scalar, ~10x slower).

Editing this file: numba's on-disk cache (``cache=True``) is keyed on the source file of each
jitted kernel, not on the files it inlines from, so kernels cached before an edit here keep the
old maths. Touch the backend modules that import this one (or delete their ``__pycache__``
``*.nbi``/``*.nbc`` files) after changing it.

Order of operations is torch's single-tensor algorithms (see ``optim/__init__.py``).
"""
from __future__ import annotations

import math


def grad(w, g, l1, l2x2, wd, maximize):
    """The gradient the update uses: loss gradient + l1·sign(w) + 2·l2·w, negated if
    ``maximize``, then + ``wd``·w (the algorithm's L2 weight decay; 0 for AdamW)."""
    # The L1/L2 penalties are part of the loss: their gradient joins the loss gradient first.
    zero = w - w
    if w > zero:
        g = g + l1
    elif w < zero:
        g = g - l1
    g = g + l2x2 * w
    g = -g if maximize else g
    return g + wd * w


# --- SGD ------------------------------------------------------------------------------------

def sgd_buffer(g, b, mu, one_m_damp, first):
    """New momentum buffer. torch: the first step copies g, without dampening (``b`` unread)."""
    return g if first else mu * b + one_m_damp * g


def sgd_param(w, g, b, lr, mu, nesterov):
    """New w from the buffer ``b`` (Nesterov: g + mu·b); without momentum pass ``b = g``."""
    return w - lr * (g + mu * b if nesterov else b)


# --- Adam / AdamW ------------------------------------------------------------------------------

def adam_moments(g, m, v, one_m_b1, b2, one_m_b2):
    """New (exp_avg, exp_avg_sq)."""
    return m + one_m_b1 * (g - m), b2 * v + one_m_b2 * (g * g)  # m.lerp_(g, 1-b1); b2 v + (1-b2) g²


def amsgrad_max(v, vmax):
    """New max_exp_avg_sq: max(vmax, v), NaN handled as the C backend's ``vm > v ? vm : v``."""
    return vmax if vmax > v else v  # noqa: FURB136 (builtin max does not type in numba's CUDA)


def adam_param(w, m, vhat, step_size, inv_bc2_sqrt, eps, decay):
    """New w. ``decay`` is 1 for Adam and 1 - lr·weight_decay for AdamW (whose ``wd`` in
    :func:`grad` is 0), so both are one branch-free expression."""
    return w * decay - step_size * (m / (math.sqrt(vhat) * inv_bc2_sqrt + eps))


# --- RMSprop, Adagrad, Adadelta ----------------------------------------------------------------

def ema_square(avg, x, beta, one_m_beta):
    """beta·avg + (1 - beta)·x²: RMSprop's and Adadelta's square_avg, Adadelta's acc_delta."""
    return beta * avg + one_m_beta * (x * x)


def lerp(avg, x, weight):
    """avg + weight·(x - avg): RMSprop's grad_avg (torch's ``lerp_``)."""
    return avg + weight * (x - avg)


def centered_var(sq, ga):
    """Centered RMSprop's variance estimate square_avg - grad_avg²."""
    return sq - ga * ga


def rms_scaled(g, var, eps):
    """g / (sqrt(var) + eps): RMSprop's step direction (var = square_avg, or
    :func:`centered_var`) and Adagrad's (var = state_sum)."""
    return g / (math.sqrt(var) + eps)


def heavy_ball(b, d, mu):
    """mu·b + d: RMSprop's momentum buffer."""
    return mu * b + d


def add_square(s, g):
    """s + g²: Adagrad's state_sum."""
    return s + g * g


def adadelta_delta(g, sq, acc, eps):
    """Adadelta's step: sqrt(acc_delta + eps) / sqrt(square_avg + eps) · g."""
    return math.sqrt(acc + eps) / math.sqrt(sq + eps) * g


def descend(w, lr, d):
    """w - lr·d."""
    return w - lr * d
