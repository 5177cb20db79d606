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

Every function also takes CUDA device arrays (all arrays of one call in the same place) and then
runs the CUDA kernels of elementwise/cuda.py. Device utilities for the Module layer (host arrays:
NumPy; device arrays: CUDA kernels, the reductions copy back only their final scalars)::

    fill(a, value)                      scale(x, out, alpha)        add_(out, a, alpha=1.0)
    subtract(a, b, out)                 sum_squares(a) -> float     sum_abs(a) -> float
    column_sum(a, out, accumulate=False)                            mse_forward(x, t, diff) -> float
    bce_with_logits_forward(x, t, pos_weight, weight) -> float
    bce_with_logits_backward(x, t, pos_weight, weight, grad, scale)
    softmax_xent_weighted_forward(logits, target, class_weight, probs, eps) -> (total, denom)
    softmax_xent_weighted_backward(probs, target, class_weight, dlogits, eps, scale)
"""
from __future__ import annotations

import numpy as np

from ..._checks import (
    check_array,
    check_scalar,
    float_dtype,
    may_share_memory,
    on_device,
    same_memory,
)
from .. import _dispatch, placement
from .codes import ACT_LEAKY_RELU, activation_code


def _same_or_disjoint(a_name: str, a, b_name: str, b) -> None:
    """Elementwise kernels may run in place (a is b) but not on partially overlapping memory."""
    if a is not b and may_share_memory(a, b) and not same_memory(a, b):
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
    backend : {"numba", "cython", "auto", "cuda"}, optional
        Device arrays always run the CUDA kernels (backend None, "auto" or "cuda").

    Returns
    -------
    out
    """
    dt = float_dtype("x", x)
    check_array("x", x)
    check_array("out", out, dtype=dt, shape=x.shape, writeable=True)
    dev = on_device(x=x, out=out)
    _same_or_disjoint("out", out, "x", x)
    code = activation_code(activation)
    slope = check_scalar("slope", slope)
    return run_activation_forward(x, out, code, slope, dev, backend)


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
    backend : {"numba", "cython", "auto", "cuda"}, optional
        Device arrays always run the CUDA kernels (backend None, "auto" or "cuda").

    Returns
    -------
    dx
    """
    dt = float_dtype("dy", dy)
    check_array("dy", dy)
    check_array("y", y, dtype=dt, shape=dy.shape)
    check_array("dx", dx, dtype=dt, shape=dy.shape, writeable=True)
    dev = on_device(dy=dy, y=y, dx=dx)
    _same_or_disjoint("dx", dx, "dy", dy)
    _same_or_disjoint("dx", dx, "y", y)
    code = activation_code(activation)
    slope = check_scalar("slope", slope)
    if code == ACT_LEAKY_RELU and slope <= 0:
        raise ValueError(f"slope must be > 0 to differentiate leaky_relu from its output, "
                         f"got {slope!r}")
    return run_activation_backward(dy, y, dx, code, slope, dev, backend)


def _check_target(target, n: int, c: int):
    """Dtype and shape; on the host also the values (device kernels check those themselves:
    forward raises ValueError, backward writes NaN rows, with no extra device-to-host copy)."""
    check_array("target", target, dtype=np.int64, shape=(n,))
    if n and isinstance(target, np.ndarray):
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
    backend : {"numba", "cython", "auto", "cuda"}, optional
        Device arrays always run the CUDA kernels (backend None, "auto" or "cuda").

    Returns
    -------
    float
        The mean loss over the N rows.
    """
    dt = _check_logits("logits", logits)
    n, c = logits.shape
    _check_target(target, n, c)
    check_array("probs", probs, dtype=dt, shape=(n, c), writeable=True)
    dev = on_device(logits=logits, target=target, probs=probs)
    _same_or_disjoint("probs", probs, "logits", logits)
    eps = check_scalar("label_smoothing", label_smoothing, low=0.0, high=1.0)
    return run_softmax_cross_entropy_forward(logits, target, probs, eps, dev, backend)


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
    backend : {"numba", "cython", "auto", "cuda"}, optional
        Device arrays always run the CUDA kernels (backend None, "auto" or "cuda").

    Returns
    -------
    dlogits
    """
    dt = _check_logits("probs", probs)
    n, c = probs.shape
    _check_target(target, n, c)
    check_array("dlogits", dlogits, dtype=dt, shape=(n, c), writeable=True)
    dev = on_device(probs=probs, target=target, dlogits=dlogits)
    _same_or_disjoint("dlogits", dlogits, "probs", probs)
    eps = check_scalar("label_smoothing", label_smoothing, low=0.0, high=1.0)
    g = 1.0 / n if grad_scale is None else check_scalar("grad_scale", grad_scale)
    return run_softmax_cross_entropy_backward(probs, target, dlogits, eps, g, dev, backend)


# --- trusted entry points ------------------------------------------------------------------------
# For callers that have checked the arrays and scalars themselves (activation layers, losses,
# Sequential's fused Linear): same meaning and argument order as the checked functions above,
# activations as codes, the placement as ``device`` (True: CUDA device arrays), no checks.

def run_activation_forward(x, out, code: int, slope: float, device: bool = False,
                           backend: str | None = None):
    """Trusted :func:`activation_forward`."""
    if x.size:
        _dispatch.kernel("elementwise", "activation_forward", backend, device)(
            x.reshape(-1), out.reshape(-1), code, slope)
    return out


def run_activation_backward(dy, y, dx, code: int, slope: float, device: bool = False,
                            backend: str | None = None):
    """Trusted :func:`activation_backward`."""
    if dy.size:
        _dispatch.kernel("elementwise", "activation_backward", backend, device)(
            dy.reshape(-1), y.reshape(-1), dx.reshape(-1), code, slope)
    return dx


def run_softmax_cross_entropy_forward(logits, target, probs, label_smoothing: float,
                                      device: bool = False, backend: str | None = None) -> float:
    """Trusted :func:`softmax_cross_entropy_forward` (target values already in range)."""
    fn = _dispatch.kernel("elementwise", "softmax_xent_forward", backend, device)
    return float(fn(logits, target, probs, label_smoothing)) / logits.shape[0]


def run_softmax_cross_entropy_backward(probs, target, dlogits, label_smoothing: float,
                                       grad_scale: float, device: bool = False,
                                       backend: str | None = None):
    """Trusted :func:`softmax_cross_entropy_backward`."""
    _dispatch.kernel("elementwise", "softmax_xent_backward", backend, device)(
        probs, target, dlogits, label_smoothing, grad_scale)
    return dlogits


# --- device utilities (host: NumPy, device: CUDA kernels) -----------------------------------------

def _cuda(name: str):
    return _dispatch.kernel("elementwise", name, device=True)


def _place(device: bool):
    """The placement (fastreg._kernels.placement) that runs a checked utility call."""
    return placement.cuda() if device else placement.HOST


def _check_value(name: str, value) -> float:
    """Any real number, including nan and inf (fill values)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    return value


def fill(a, value):
    """Set every element of ``a`` to ``value``.

    Parameters
    ----------
    a : ndarray or device array, numeric dtype, any shape, C-contiguous, writeable
    value : real number (nan and inf allowed), cast to ``a``'s dtype

    Returns
    -------
    a
    """
    check_array("a", a, writeable=True)
    if a.dtype.kind not in "biuf":
        raise TypeError(f"a must have a numeric dtype, got {a.dtype}")
    _check_value("value", value)
    return _place(on_device(a=a)).fill(a, value)


def scale(x, out, alpha: float):
    """``out = alpha * x`` (computed in the arrays' dtype).

    Parameters
    ----------
    x : ndarray or device array, float32 or float64, any shape, C-contiguous
    out : same shape and dtype, writeable; may be ``x``
    alpha : finite real number

    Returns
    -------
    out
    """
    dt = float_dtype("x", x)
    check_array("x", x)
    check_array("out", out, dtype=dt, shape=x.shape, writeable=True)
    dev = on_device(x=x, out=out)
    _same_or_disjoint("out", out, "x", x)
    alpha = check_scalar("alpha", alpha)
    return _place(dev).scale(x, out, alpha)


def add_(out, a, alpha: float = 1.0):
    """``out += alpha * a`` in place (gradient accumulation), in the arrays' dtype.

    Parameters
    ----------
    out : ndarray or device array, float32 or float64, any shape, C-contiguous, writeable
    a : same shape and dtype; may be ``out``
    alpha : finite real number

    Returns
    -------
    out
    """
    dt = float_dtype("out", out)
    check_array("out", out, writeable=True)
    check_array("a", a, dtype=dt, shape=out.shape)
    dev = on_device(out=out, a=a)
    _same_or_disjoint("a", a, "out", out)
    alpha = check_scalar("alpha", alpha)
    return _place(dev).add_(out, a, alpha)


def subtract(a, b, out):
    """``out = a - b`` elementwise.

    Parameters
    ----------
    a, b : ndarray or device array, one float dtype, one shape, C-contiguous
    out : same shape and dtype, writeable; may be ``a`` or ``b``

    Returns
    -------
    out
    """
    dt = float_dtype("a", a)
    check_array("a", a)
    check_array("b", b, dtype=dt, shape=a.shape)
    check_array("out", out, dtype=dt, shape=a.shape, writeable=True)
    dev = on_device(a=a, b=b, out=out)
    _same_or_disjoint("out", out, "a", a)
    _same_or_disjoint("out", out, "b", b)
    return _place(dev).subtract(a, b, out)


def sum_squares(a) -> float:
    """``sum(a ** 2)`` accumulated in float64 (deterministic), as a Python float.

    Parameters
    ----------
    a : ndarray or device array, float32 or float64, any shape, C-contiguous
    """
    float_dtype("a", a)
    check_array("a", a)
    return _place(on_device(a=a)).sum_squares(a)


def sum_abs(a) -> float:
    """``sum(|a|)`` accumulated in float64 (deterministic), as a Python float.

    Parameters
    ----------
    a : ndarray or device array, float32 or float64, any shape, C-contiguous
    """
    float_dtype("a", a)
    check_array("a", a)
    return _place(on_device(a=a)).sum_abs(a)


def column_sum(a, out, accumulate: bool = False):
    """Column sums ``out[j] = sum_i a[i, j]``, or ``out[j] += ...`` with ``accumulate``.

    Sums are accumulated in float64 and rounded once to ``out``'s dtype (bias gradients).

    Parameters
    ----------
    a : ndarray or device array (M, N), float32 or float64, C-contiguous
    out : (N,), same dtype, writeable, not overlapping ``a``
    accumulate : bool

    Returns
    -------
    out
    """
    dt = float_dtype("a", a)
    check_array("a", a, ndim=2)
    check_array("out", out, dtype=dt, shape=(a.shape[1],), writeable=True)
    dev = on_device(a=a, out=out)
    if may_share_memory(a, out):
        raise ValueError("out must not overlap a")
    return _place(dev).column_sum(a, out, bool(accumulate))


def mse_forward(x, t, diff) -> float:
    """``diff = x - t``; return ``sum(diff ** 2)`` (float64 accumulation of the stored diff).

    Parameters
    ----------
    x, t : ndarray or device array, one float dtype, one shape, C-contiguous
    diff : same shape and dtype, writeable (MSE backward is ``2 * diff / n``); may be x or t

    Returns
    -------
    float
    """
    dt = float_dtype("x", x)
    check_array("x", x)
    check_array("t", t, dtype=dt, shape=x.shape)
    check_array("diff", diff, dtype=dt, shape=x.shape, writeable=True)
    dev = on_device(x=x, t=t, diff=diff)
    _same_or_disjoint("diff", diff, "x", x)
    _same_or_disjoint("diff", diff, "t", t)
    return run_mse_forward(x, t, diff, dev)


def _check_bce(x, t, pos_weight, weight):
    dt = float_dtype("x", x)
    check_array("x", x)
    check_array("t", t, dtype=dt, shape=x.shape)
    if pos_weight is not None:
        float_dtype("pos_weight", pos_weight)
        if x.ndim == 0:
            raise ValueError("pos_weight needs x with at least one dimension, got a 0-d x")
        check_array("pos_weight", pos_weight, shape=(x.shape[x.ndim - 1],))
    if weight is not None:
        float_dtype("weight", weight)
        check_array("weight", weight, shape=x.shape)
    return dt


def _bce_host(x, t, pos_weight):
    x64 = x.astype(np.float64)
    t64 = t.astype(np.float64)
    pw = 1.0 if pos_weight is None else pos_weight.astype(np.float64, copy=False)
    return x64, t64, pw


def bce_with_logits_forward(x, t, pos_weight=None, weight=None) -> float:
    """Sum of the binary cross-entropies on logits, numerically stable, in float64.

    .. math::
        \\sum_i w_i\\,[\\,p\\,t_i\\,\\mathrm{softplus}(-x_i)
            + (1 - t_i)\\,\\mathrm{softplus}(x_i)\\,]

    as ``BCEWithLogitsLoss`` (fastreg/nn/loss.py) before its reduction.

    Parameters
    ----------
    x : ndarray or device array, float32 or float64, any shape, C-contiguous
    t : same shape and dtype: targets (probabilities in [0, 1])
    pos_weight : array (x.shape[-1],), float32 or float64, optional
        p, broadcast over the last dimension.
    weight : array of x's shape, float32 or float64, optional
        w (per element).

    Returns
    -------
    float
    """
    _check_bce(x, t, pos_weight, weight)
    dev = on_device(x=x, t=t, pos_weight=pos_weight, weight=weight)
    return run_bce_with_logits_forward(x, t, pos_weight, weight, dev)


def bce_with_logits_backward(x, t, pos_weight, weight, grad, scale: float):
    """``grad = scale * d/dx`` of :func:`bce_with_logits_forward`'s sum.

    .. math::
        \\mathrm{grad}_i = \\mathrm{scale}\\cdot w_i\\,[(p\\,t_i + 1 - t_i)\\,\\sigma(x_i)
            - p\\,t_i]

    Parameters
    ----------
    x, t, pos_weight, weight : as in :func:`bce_with_logits_forward`
    grad : x's shape and dtype, writeable; may be ``x``
    scale : finite real number (``1 / x.size`` for mean reduction)

    Returns
    -------
    grad
    """
    dt = _check_bce(x, t, pos_weight, weight)
    check_array("grad", grad, dtype=dt, shape=x.shape, writeable=True)
    dev = on_device(x=x, t=t, pos_weight=pos_weight, weight=weight, grad=grad)
    _same_or_disjoint("grad", grad, "x", x)
    _same_or_disjoint("grad", grad, "t", t)
    scale = check_scalar("scale", scale)
    return run_bce_with_logits_backward(x, t, pos_weight, weight, grad, scale, dev)


def _check_weighted(logits_name, logits, target, class_weight, out_name, out, eps):
    dt = _check_logits(logits_name, logits)
    n, c = logits.shape
    _check_target(target, n, c)
    check_array("class_weight", class_weight, dtype=np.float64, shape=(c,))
    check_array(out_name, out, dtype=dt, shape=(n, c), writeable=True)
    dev = on_device(**{logits_name: logits, "target": target, "class_weight": class_weight,
                       out_name: out})
    _same_or_disjoint(out_name, out, logits_name, logits)
    eps = check_scalar("eps", eps, low=0.0, high=1.0)
    return dev, eps


def softmax_xent_weighted_forward(logits, target, class_weight, probs, eps: float = 0.0):
    """Class-weighted softmax cross-entropy with label smoothing, in float64.

    With ``logp = log_softmax(logits)`` and class weights ``w`` (``CrossEntropyLoss(weight=w)``
    in fastreg/nn/loss.py):

    .. math::
        \\ell_n = (1 - \\varepsilon)\\,w_{y_n}(-\\log p_{n,y_n})
            + \\frac{\\varepsilon}{C}\\sum_c w_c\\,(-\\log p_{n,c}),\\quad
        \\mathrm{total} = \\sum_n \\ell_n,\\quad \\mathrm{denom} = \\sum_n w_{y_n}

    (the weighted mean is ``total / denom``).

    Parameters
    ----------
    logits : ndarray or device array (N, C), float32 or float64, C-contiguous, N, C >= 1
    target : (N,), int64, values in [0, C)
    class_weight : (C,), float64
    probs : (N, C), logits' dtype, writeable; receives the softmax (may be ``logits``)
    eps : float in [0, 1], label smoothing

    Returns
    -------
    (float, float)
        ``total`` and ``denom``.
    """
    dev, eps = _check_weighted("logits", logits, target, class_weight, "probs", probs, eps)
    return run_softmax_xent_weighted_forward(logits, target, class_weight, probs, eps, dev)


def softmax_xent_weighted_backward(probs, target, class_weight, dlogits, eps: float,
                                   scale: float):
    """Gradient of :func:`softmax_xent_weighted_forward`'s total times ``scale``.

    .. math::
        \\mathrm{dlogits}_{n,c} = \\mathrm{scale}\\,\\big(p_{n,c}\\,((1-\\varepsilon) w_{y_n}
            + \\tfrac{\\varepsilon}{C} W) - (1-\\varepsilon) w_{y_n} [c = y_n]
            - \\tfrac{\\varepsilon}{C} w_c\\big),\\quad W = \\sum_c w_c

    Parameters
    ----------
    probs : ndarray or device array (N, C), float32 or float64: the forward's softmax
    target : (N,), int64, values in [0, C)
    class_weight : (C,), float64
    dlogits : (N, C), probs' dtype, writeable (may be ``probs``)
    eps : float in [0, 1]
    scale : finite real number (``1 / denom`` for the weighted mean)

    Returns
    -------
    dlogits
    """
    dev, eps = _check_weighted("probs", probs, target, class_weight, "dlogits", dlogits, eps)
    scale = check_scalar("scale", scale)
    return run_softmax_xent_weighted_backward(probs, target, class_weight, dlogits, eps, scale,
                                              dev)


# The loss helpers have no compiled CPU kernel: on the host they are NumPy (float64 sums), on the
# device the CUDA kernels of elementwise/cuda.py. ``device`` picks, nothing else is checked.

def run_mse_forward(x, t, diff, device: bool = False) -> float:
    """Trusted :func:`mse_forward`."""
    if device:
        return _cuda("mse_forward")(x, t, diff)
    np.subtract(x, t, out=diff)
    d = diff.reshape(-1).astype(np.float64, copy=False)
    return float(np.dot(d, d))


def run_bce_with_logits_forward(x, t, pos_weight, weight, device: bool = False) -> float:
    """Trusted :func:`bce_with_logits_forward`."""
    if device:
        return _cuda("bce_with_logits_forward")(x, t, pos_weight, weight)
    x64, t64, pw = _bce_host(x, t, pos_weight)
    per = pw * t64 * np.logaddexp(0.0, -x64) + (1 - t64) * np.logaddexp(0.0, x64)
    if weight is not None:
        per = per * weight
    return float(per.sum())


def run_bce_with_logits_backward(x, t, pos_weight, weight, grad, scale: float,
                                 device: bool = False):
    """Trusted :func:`bce_with_logits_backward`."""
    if device:
        _cuda("bce_with_logits_backward")(x, t, pos_weight, weight, grad, scale)
        return grad
    x64, t64, pw = _bce_host(x, t, pos_weight)
    sig = 0.5 * (1.0 + np.tanh(0.5 * x64))          # overflow-free sigmoid
    g = (pw * t64 + 1 - t64) * sig - pw * t64
    if weight is not None:
        g = g * weight
    grad[...] = scale * g
    return grad


def run_softmax_xent_weighted_forward(logits, target, class_weight, probs, eps: float,
                                      device: bool = False) -> tuple[float, float]:
    """Trusted :func:`softmax_xent_weighted_forward` (target values already in range)."""
    if device:
        return _cuda("softmax_xent_weighted_forward")(logits, target, class_weight, probs, eps)
    n, c = logits.shape
    z64 = logits.astype(np.float64)
    zmax = z64.max(axis=1, keepdims=True)
    logp = z64 - zmax - np.log(np.exp(z64 - zmax).sum(axis=1, keepdims=True))
    probs[...] = np.exp(logp)
    wy = class_weight[target]
    nll = -logp[np.arange(n), target] * wy
    smooth = -(logp * class_weight).sum(axis=1)
    per = (1 - eps) * nll + (eps / c) * smooth
    return float(per.sum()), float(wy.sum())


def run_softmax_xent_weighted_backward(probs, target, class_weight, dlogits, eps: float,
                                       scale: float, device: bool = False):
    """Trusted :func:`softmax_xent_weighted_backward`."""
    if device:
        _cuda("softmax_xent_weighted_backward")(probs, target, class_weight, dlogits, eps, scale)
        return dlogits
    n, c = probs.shape
    wy = class_weight[target]
    g = probs.astype(np.float64) * ((1 - eps) * wy + (eps / c) * class_weight.sum())[:, None]
    g[np.arange(n), target] -= (1 - eps) * wy
    g -= (eps / c) * class_weight[None, :]
    dlogits[...] = g * scale
    return dlogits
