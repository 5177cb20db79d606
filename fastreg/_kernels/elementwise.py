"""Activations and fused softmax + cross-entropy.

Activation pair (``x``, ``out``, ``dy``, ``y``, ``dx``: one float dtype, one shape, C-contiguous)::

    activation_forward(x, out, activation, slope=0.01)        out = act(x); out may be x
    activation_backward(dy, y, dx, activation, slope=0.01)    dx = dy * act'(x), from y = act(x)

The derivative is written in terms of the OUTPUT ``y``, so a fused linear + activation layer keeps
only its output: relu ``[y > 0]``; leaky_relu ``[y > 0] + slope [y <= 0]`` (valid because
``sign(y) = sign(x)`` when ``slope > 0``; for ``slope <= 0`` the caller must use the input);
sigmoid ``y (1 - y)``; tanh ``1 - y²``; identity ``1``.

Softmax + cross-entropy pair (``logits``, ``probs``, ``dlogits``: (N, C); ``target``: (N,) int64)::

    softmax_cross_entropy_forward(logits, target, probs, label_smoothing=0.0) -> mean loss
    softmax_cross_entropy_backward(probs, target, dlogits, label_smoothing=0.0, grad_scale=None)

What backward needs from forward is the explicit ``probs`` buffer.
"""
from __future__ import annotations

import numpy as np

from . import _dispatch
from ._codes import ACT_LEAKY_RELU, activation_code
from ._validate import check_array, check_scalar, float_dtype


def _same_or_disjoint(a_name: str, a, b_name: str, b) -> None:
    """Elementwise kernels may run in place (a is b) but not on partially overlapping memory."""
    if a is not b and np.may_share_memory(a, b) and a.ctypes.data != b.ctypes.data:
        raise ValueError(f"{a_name} must be {b_name} itself or not overlap it")


def activation_forward(x: np.ndarray, out: np.ndarray, activation, slope: float = 0.01,
                       backend: str | None = None) -> np.ndarray:
    """Apply an activation elementwise: ``out = act(x)``.

    .. math::
        \\mathrm{relu}(x) = \\max(x, 0), \\quad
        \\mathrm{leaky\\_relu}(x) = x \\text{ if } x > 0 \\text{ else } \\mathrm{slope}\\cdot x,
        \\quad \\sigma(x) = 1 / (1 + e^{-x}), \\quad \\tanh(x), \\quad \\mathrm{identity}(x) = x

    Parameters
    ----------
    x : ndarray, float32 or float64, any shape, C-contiguous
    out : ndarray, same shape and dtype, writeable; may be ``x`` (in place)
    activation : str or int
        "identity", "relu", "leaky_relu", "sigmoid", "tanh" or its code in ``_codes``.
    slope : float
        Negative-side slope of leaky_relu (ignored by the others).
    backend : {"numba", "cython", "auto"}, optional

    Returns
    -------
    out
    """
    dt = float_dtype("x", x)
    check_array("x", x)
    check_array("out", out, dtype=dt, shape=x.shape, writeable=True)
    _same_or_disjoint("out", out, "x", x)
    code = activation_code(activation)
    slope = check_scalar("slope", slope)
    if x.size == 0:
        return out
    fn = _dispatch.kernel("elementwise", "activation_forward", backend)
    fn(x.reshape(-1), out.reshape(-1), code, slope)
    return out


def activation_backward(dy: np.ndarray, y: np.ndarray, dx: np.ndarray, activation,
                        slope: float = 0.01, backend: str | None = None) -> np.ndarray:
    """Gradient through an activation, from its output: ``dx = dy · act'(x)``, ``y = act(x)``.

    .. math::
        \\mathrm{relu}: dy\\,[y > 0], \\quad
        \\mathrm{leaky\\_relu}: dy\\,([y > 0] + \\mathrm{slope}\\,[y \\le 0]), \\quad
        \\sigma: dy\\,y(1-y), \\quad \\tanh: dy\\,(1-y^2), \\quad \\mathrm{identity}: dy

    Parameters
    ----------
    dy : ndarray, float32 or float64, any shape, C-contiguous
    y : ndarray, same shape and dtype: the forward output
    dx : ndarray, same shape and dtype, writeable; may be ``dy`` (in place)
    activation : str or int
    slope : float
        leaky_relu slope; must be > 0 here, since only then does ``y`` tell the sign of ``x``
        (for ``slope <= 0`` differentiate through the input instead).
    backend : {"numba", "cython", "auto"}, optional

    Returns
    -------
    dx
    """
    dt = float_dtype("dy", dy)
    check_array("dy", dy)
    check_array("y", y, dtype=dt, shape=dy.shape)
    check_array("dx", dx, dtype=dt, shape=dy.shape, writeable=True)
    _same_or_disjoint("dx", dx, "dy", dy)
    _same_or_disjoint("dx", dx, "y", y)
    code = activation_code(activation)
    slope = check_scalar("slope", slope)
    if code == ACT_LEAKY_RELU and slope <= 0:
        raise ValueError(f"slope must be > 0 to differentiate leaky_relu from its output, "
                         f"got {slope!r}")
    if dy.size == 0:
        return dx
    fn = _dispatch.kernel("elementwise", "activation_backward", backend)
    fn(dy.reshape(-1), y.reshape(-1), dx.reshape(-1), code, slope)
    return dx


def _check_target(target, n: int, c: int):
    check_array("target", target, dtype=np.int64, shape=(n,))
    if n:
        lo, hi = int(target.min()), int(target.max())
        if lo < 0 or hi >= c:
            bad = lo if lo < 0 else hi
            raise ValueError(f"target must be in [0, {c}), got {bad}")
    return target


def _check_logits(name: str, a):
    dt = float_dtype(name, a)
    check_array(name, a, ndim=2)
    n, c = a.shape
    if n == 0 or c == 0:
        raise ValueError(f"{name} must have at least one row and one class, got shape {a.shape}")
    return dt


def softmax_cross_entropy_forward(logits: np.ndarray, target: np.ndarray, probs: np.ndarray,
                                  label_smoothing: float = 0.0,
                                  backend: str | None = None) -> float:
    """Softmax and mean cross-entropy with label smoothing, fused (one read of the logits).

    .. math::
        p_{n,c} = \\frac{e^{l_{n,c} - m_n}}{\\sum_k e^{l_{n,k} - m_n}}, \\quad
        \\mathrm{lse}_n = m_n + \\log \\sum_k e^{l_{n,k} - m_n}, \\quad m_n = \\max_k l_{n,k}

        L = \\frac{1}{N} \\sum_n (1 - \\varepsilon)(\\mathrm{lse}_n - l_{n,y_n})
            + \\frac{\\varepsilon}{C} \\sum_c (\\mathrm{lse}_n - l_{n,c})

    which is ``torch.nn.functional.cross_entropy(logits, target, label_smoothing=ε)``; using
    log-sum-exp means no ``log(0)`` even when a probability underflows.

    Parameters
    ----------
    logits : ndarray (N, C), float32 or float64, C-contiguous, N >= 1, C >= 1
    target : ndarray (N,), int64, values in [0, C)
    probs : ndarray (N, C), same dtype, writeable; receives the softmax (may be ``logits``)
    label_smoothing : float in [0, 1]
    backend : {"numba", "cython", "auto"}, optional

    Returns
    -------
    float
        The mean loss over the N rows.
    """
    dt = _check_logits("logits", logits)
    n, c = logits.shape
    _check_target(target, n, c)
    check_array("probs", probs, dtype=dt, shape=(n, c), writeable=True)
    _same_or_disjoint("probs", probs, "logits", logits)
    eps = check_scalar("label_smoothing", label_smoothing, low=0.0, high=1.0)
    fn = _dispatch.kernel("elementwise", "softmax_xent_forward", backend)
    return float(fn(logits, target, probs, eps)) / n


def softmax_cross_entropy_backward(probs: np.ndarray, target: np.ndarray, dlogits: np.ndarray,
                                   label_smoothing: float = 0.0, grad_scale: float | None = None,
                                   backend: str | None = None) -> np.ndarray:
    """Gradient of the smoothed cross-entropy with respect to the logits.

    .. math::
        \\frac{\\partial L}{\\partial l_{n,c}} = \\left(p_{n,c} - (1 - \\varepsilon)[c = y_n]
            - \\frac{\\varepsilon}{C}\\right) \\cdot g, \\qquad g = 1/N \\text{ by default}

    Parameters
    ----------
    probs : ndarray (N, C), float32 or float64: the forward pass's softmax
    target : ndarray (N,), int64, values in [0, C)
    dlogits : ndarray (N, C), same dtype, writeable (overwritten; may be ``probs``)
    label_smoothing : float in [0, 1]
    grad_scale : float, optional
        Upstream gradient times the reduction factor; ``1/N`` (mean reduction) when None.
    backend : {"numba", "cython", "auto"}, optional

    Returns
    -------
    dlogits
    """
    dt = _check_logits("probs", probs)
    n, c = probs.shape
    _check_target(target, n, c)
    check_array("dlogits", dlogits, dtype=dt, shape=(n, c), writeable=True)
    _same_or_disjoint("dlogits", dlogits, "probs", probs)
    eps = check_scalar("label_smoothing", label_smoothing, low=0.0, high=1.0)
    g = 1.0 / n if grad_scale is None else check_scalar("grad_scale", grad_scale)
    fn = _dispatch.kernel("elementwise", "softmax_xent_backward", backend)
    fn(probs, target, dlogits, eps, g)
    return dlogits
