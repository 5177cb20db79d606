"""Activations and fused softmax + cross-entropy, Numba backend.

Same names and positional signatures as _elementwise_cy.pyx; arguments are checked by
fastreg/_kernels/elementwise.py. Shapes: activation arrays are flat (n,); logits, probs and
dlogits are (N, C) of one float dtype; target is (N,) int64 with values in [0, C).
Sums over a row are accumulated in float64 for both dtypes.
"""
import math

import numpy as np
from numba import njit, prange

# Activation codes, as in fastreg/_kernels/_codes.py (literal here so the jitted code folds them).
ACT_IDENTITY = 0
ACT_RELU = 1
ACT_LEAKY_RELU = 2
ACT_SIGMOID = 3
ACT_TANH = 4


@njit(cache=True, parallel=True)
def activation_forward(x, out, code, slope):
    """out = act(x) elementwise (out may alias x)."""
    n = x.shape[0]
    one = x.dtype.type(1)
    s = x.dtype.type(slope)
    if code == ACT_RELU:
        for i in prange(n):
            v = x[i]
            out[i] = 0 if v < 0 else v  # noqa: FURB136 (keeps NaN, as torch.relu)
    elif code == ACT_LEAKY_RELU:
        for i in prange(n):
            v = x[i]
            out[i] = v if v > 0 else v * s
    elif code == ACT_SIGMOID:
        for i in prange(n):
            out[i] = one / (one + np.exp(-x[i]))  # exp overflow -> inf -> 0: no NaN
    elif code == ACT_TANH:
        for i in prange(n):
            out[i] = np.tanh(x[i])
    else:
        for i in prange(n):
            out[i] = x[i]


@njit(cache=True, parallel=True)
def activation_backward(dy, y, dx, code, slope):
    """dx = dy * act'(x), with act' written in terms of the output y = act(x) (dx may alias dy)."""
    n = dy.shape[0]
    one = dy.dtype.type(1)
    s = dy.dtype.type(slope)
    if code == ACT_RELU:
        for i in prange(n):
            dx[i] = dy[i] if y[i] > 0 else 0
    elif code == ACT_LEAKY_RELU:
        for i in prange(n):
            dx[i] = dy[i] if y[i] > 0 else dy[i] * s
    elif code == ACT_SIGMOID:
        for i in prange(n):
            v = y[i]
            dx[i] = dy[i] * v * (one - v)
    elif code == ACT_TANH:
        for i in prange(n):
            v = y[i]
            dx[i] = dy[i] * (one - v * v)
    else:
        for i in prange(n):
            dx[i] = dy[i]


@njit(cache=True, parallel=True)
def softmax_xent_forward(logits, target, probs, eps):
    """probs = softmax(logits) per row; return the SUM over rows of the smoothed CE loss.

    loss_n = (1 - eps) (lse_n - l_{n,y}) + eps (lse_n - mean_c l_{n,c}),
    lse_n = m_n + log sum_c exp(l_{n,c} - m_n), m_n = max_c l_{n,c}.
    probs may alias logits: everything read from a row is read before the row is written.
    """
    N, C = logits.shape
    total = 0.0
    for r in prange(N):
        m = -np.inf
        lsum = 0.0
        for c in range(C):
            v = logits[r, c]
            lsum += v
            m = max(m, v)
        ly = float(logits[r, target[r]])
        s = 0.0
        for c in range(C):
            e = math.exp(float(logits[r, c]) - m)
            s += e
            probs[r, c] = e
        inv = 1.0 / s
        for c in range(C):
            probs[r, c] = probs[r, c] * inv
        lse = m + math.log(s)
        total += (1.0 - eps) * (lse - ly) + eps * (lse - lsum / C)
    return total


@njit(cache=True, parallel=True)
def softmax_xent_backward(probs, target, dlogits, eps, grad_scale):
    """dlogits = (probs - (1 - eps) onehot(target) - eps / C) * grad_scale (may alias probs)."""
    N, C = probs.shape
    g = probs.dtype.type(grad_scale)
    sub = probs.dtype.type(eps / C)
    hit = probs.dtype.type((1.0 - eps) * grad_scale)
    for r in prange(N):
        for c in range(C):
            dlogits[r, c] = (probs[r, c] - sub) * g
        dlogits[r, target[r]] -= hit
