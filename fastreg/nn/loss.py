"""Losses: CrossEntropyLoss, MSELoss, BCEWithLogitsLoss.

Calling a loss returns a Python float and caches what its gradient needs; ``backward()`` returns
dL/dinput of the last call (an array the loss owns and reuses: feed it to ``model.backward``
right away). Shapes: N samples, C classes.

On the GPU (input a CUDA device array) the loss runs in CUDA kernels; host targets are checked on
the host and copied in (device targets are copied out once to be checked: an out-of-range class
index must never reach a kernel), and the returned float is the one scalar copied back.
"""
from __future__ import annotations

import numpy as np

from .. import _config
from .._config import FLOAT_DTYPES
from .._kernels import elementwise as _elementwise
from .._kernels.runtime import cuda as _cuda_runtime
from .._kernels.runtime.cuda import is_device_array
from .module import Module

__all__ = ["BCEWithLogitsLoss", "CrossEntropyLoss", "MSELoss"]

REDUCTIONS = ("mean", "sum")


def _check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def _check_logits(loss: Module, x, ndim=None) -> np.ndarray:
    if not isinstance(x, np.ndarray) and not is_device_array(x):
        raise TypeError(f"{type(loss).__name__}: input must be a numpy.ndarray, "
                        f"got {type(x).__name__}")
    x = loss._place_input(x)
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{type(loss).__name__}: input must have dtype float32 or float64, "
                        f"got {x.dtype}")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{type(loss).__name__}: input must be {ndim}-dimensional, got shape "
                         f"{x.shape}")
    if x.size == 0:
        raise ValueError(f"{type(loss).__name__}: input is empty (shape {x.shape})")
    if is_device_array(x):
        if not x.is_c_contiguous():
            raise ValueError(f"{type(loss).__name__}: input must be a C-contiguous device array")
        return x
    return np.ascontiguousarray(x)


def _target_like(loss: Module, x, target, what: str = "target"):
    """``target`` as an array of x's dtype where x lives (shape checked by the caller)."""
    if is_device_array(x):
        if is_device_array(target):
            if target.dtype != x.dtype:
                raise TypeError(f"{type(loss).__name__}: {what} is a {target.dtype} device "
                                f"array, expected {x.dtype} like the input")
            return target
        return loss._to_device_buffer(what, np.asarray(target, dtype=x.dtype))
    if is_device_array(target):
        raise ValueError(f"{type(loss).__name__}: {what} is a CUDA device array but the input "
                         "is a host array")
    return np.asarray(target).astype(x.dtype, copy=False)


class _Loss(Module):
    def __init__(self, reduction: str = "mean"):
        super().__init__()
        self.reduction = _check_reduction(reduction)
        self._cache = None

    def extra_repr(self) -> str:
        return "" if self.reduction == "mean" else f"reduction={self.reduction!r}"

    def __call__(self, input, target) -> float:
        if _config.get_backend() == "cuda" and self._device != "cuda":
            self.to("cuda")
        return self.forward(input, target)

    def to(self, device: str) -> Module:
        """Run on ``device``; the class / element weights stay host arrays (small settings; a
        device copy is made once when a GPU input first needs it)."""
        from .module import _check_device
        dev = _check_device(device)
        if dev == "cuda":
            _cuda_runtime.require()
        object.__setattr__(self, "_device", dev)
        self._out_buffers.clear()
        return self


class CrossEntropyLoss(_Loss):
    r"""Softmax cross-entropy with integer class targets, as ``torch.nn.CrossEntropyLoss``.

    .. math::
        p_{nc} = \frac{e^{z_{nc}}}{\sum_k e^{z_{nk}}},\quad
        \ell_n = -(1-\varepsilon)\log p_{n,y_n} - \frac{\varepsilon}{C}\sum_c \log p_{nc},\quad
        L = \frac1N \sum_n \ell_n

    with label smoothing :math:`\varepsilon`; the gradient is
    :math:`\partial L/\partial z_{nc} = (p_{nc} - (1-\varepsilon)[c = y_n] - \varepsilon/C)/N`.

    Parameters
    ----------
    weight : array of shape (C,), optional
        Per-class rescaling; the mean is then weighted, :math:`\sum_n w_{y_n}\ell_n /
        \sum_n w_{y_n}`, as torch. (Runs in NumPy; the unweighted loss uses the fused kernel.)
    reduction : {"mean", "sum"}
    label_smoothing : float in [0, 1]
    """

    def __init__(self, weight=None, reduction: str = "mean", label_smoothing: float = 0.0):
        super().__init__(reduction)
        if isinstance(label_smoothing, bool) or \
                not isinstance(label_smoothing, (int, float, np.integer, np.floating)) or \
                not 0.0 <= float(label_smoothing) <= 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1], got {label_smoothing!r}")
        self.label_smoothing = float(label_smoothing)
        if weight is not None:
            weight = np.asarray(weight, dtype=np.float64)
            if weight.ndim != 1 or not np.all(np.isfinite(weight)) or np.any(weight < 0):
                raise ValueError("weight must be a 1-D array of finite non-negative class "
                                 f"weights, got {weight!r}")
        self.register_buffer("weight", weight)

    def extra_repr(self) -> str:
        parts = [] if self.reduction == "mean" else [f"reduction={self.reduction!r}"]
        if self.label_smoothing:
            parts.append(f"label_smoothing={self.label_smoothing}")
        return ", ".join(parts)

    def _check_target(self, logits: np.ndarray, target) -> np.ndarray:
        N, C = logits.shape
        t = np.asarray(_cuda_runtime.to_host(target))
        if t.dtype.kind not in "iub":
            raise TypeError(f"CrossEntropyLoss: target must hold integer class indices, got "
                            f"dtype {t.dtype} (probability targets are not supported)")
        if t.shape != (N,):
            raise ValueError(f"CrossEntropyLoss: target must have shape ({N},) to match input "
                             f"{logits.shape}, got {t.shape}")
        t = np.ascontiguousarray(t, dtype=np.int64)
        if N and (t.min() < 0 or t.max() >= C):
            bad = t[(t < 0) | (t >= C)][0]
            raise ValueError(f"CrossEntropyLoss: target {bad} is out of bounds for {C} classes")
        if self.weight is not None and self.weight.shape != (C,):
            raise ValueError(f"CrossEntropyLoss: weight has shape {self.weight.shape}, expected "
                             f"({C},) for input {logits.shape}")
        if is_device_array(logits):
            ok = is_device_array(target) and target.dtype == np.int64 and target.shape == (N,)
            return target if ok else self._to_device_buffer("target", t)
        return t

    def _device_weight(self):
        """The class weights (float64) on the device, copied once per weight array."""
        cached = self.__dict__.get("_weight_dev")
        if cached is None or cached[0] is not self.weight:
            cached = (self.weight, _cuda_runtime.to_device(self.weight))
            object.__setattr__(self, "_weight_dev", cached)
        return cached[1]

    def forward(self, input: np.ndarray, target) -> float:
        z = _check_logits(self, input, ndim=2)
        t = self._check_target(z, target)
        N, C = z.shape
        probs = self._buffer("probs", z.shape, z.dtype)
        eps = self.label_smoothing
        if self.weight is None:
            loss = float(_elementwise.softmax_cross_entropy_forward(z, t, probs,
                                                                    label_smoothing=eps))
            if self.reduction == "sum":
                loss *= N
            self._cache = (probs, t, None)
            return loss
        if is_device_array(z):
            total, denom = _elementwise.softmax_xent_weighted_forward(
                z, t, self._device_weight(), probs, eps)
            denom = denom if self.reduction == "mean" else 1.0
            self._cache = (probs, t, denom)
            return float(total / denom)
        # weighted: NumPy in float64 (torch's formula, including label smoothing)
        w = self.weight
        z64 = z.astype(np.float64)
        zmax = z64.max(axis=1, keepdims=True)
        logp = z64 - zmax - np.log(np.exp(z64 - zmax).sum(axis=1, keepdims=True))
        probs[...] = np.exp(logp)
        wy = w[t]
        nll = -logp[np.arange(N), t] * wy
        smooth = -(logp * w).sum(axis=1)
        per = (1 - eps) * nll + (eps / C) * smooth
        denom = wy.sum() if self.reduction == "mean" else 1.0
        self._cache = (probs, t, denom)
        return float(per.sum() / denom)

    def backward(self, grad_output=None, *, input_grad: bool = True) -> np.ndarray:
        """dL/dlogits of the last call, shape (N, C)."""
        probs, t, denom = self._require_cache()
        N, C = probs.shape
        grad = self._buffer("grad", probs.shape, probs.dtype)
        eps = self.label_smoothing
        if denom is None:
            scale = 1.0 / N if self.reduction == "mean" else 1.0
            _elementwise.softmax_cross_entropy_backward(probs, t, grad, label_smoothing=eps,
                                                        grad_scale=scale)
            return grad
        if is_device_array(probs):
            _elementwise.softmax_xent_weighted_backward(probs, t, self._device_weight(), grad,
                                                        eps, 1.0 / denom)
            return grad
        # weighted: d/dz of (1-eps) w_y nll + eps/C sum_c w_c (-log p_c), over denom
        w = self.weight
        wy = w[t]
        g = probs.astype(np.float64) * ((1 - eps) * wy + (eps / C) * w.sum())[:, None]
        g[np.arange(N), t] -= (1 - eps) * wy
        g -= (eps / C) * w[None, :]
        grad[...] = g / denom
        return grad


class MSELoss(_Loss):
    r"""Mean squared error :math:`L = \frac1n\sum_i (x_i - t_i)^2`, gradient :math:`2(x-t)/n`.

    ``target`` must have the input's shape; it is cast to the input's dtype.
    """

    def forward(self, input: np.ndarray, target) -> float:
        x = _check_logits(self, input)
        shape = tuple(getattr(target, "shape", np.shape(target)))
        if shape != x.shape:
            raise ValueError(f"MSELoss: target shape {shape} does not match input shape "
                             f"{x.shape}")
        t = _target_like(self, x, target)
        diff = self._buffer("diff", x.shape, x.dtype)
        if is_device_array(x):
            total = _elementwise.mse_forward(x, t, diff)
        else:
            np.subtract(x, t, out=diff)
            d = diff.ravel()
            total = float(np.dot(d.astype(np.float64, copy=False),
                                 d.astype(np.float64, copy=False)))
        n = x.size
        self._cache = diff
        return total / n if self.reduction == "mean" else total

    def backward(self, grad_output=None, *, input_grad: bool = True) -> np.ndarray:
        diff = self._require_cache()
        grad = self._buffer("grad", diff.shape, diff.dtype)
        scale = 2.0 / diff.size if self.reduction == "mean" else 2.0
        _elementwise.scale(diff, grad, scale)
        return grad


class BCEWithLogitsLoss(_Loss):
    r"""Sigmoid + binary cross-entropy on logits, numerically stable, as torch's.

    .. math::
        \ell_i = -w_i\,[\,p\,t_i \log\sigma(x_i) + (1-t_i)\log(1-\sigma(x_i))\,],\quad
        \partial\ell_i/\partial x_i = w_i\,[(p\,t_i + 1 - t_i)\,\sigma(x_i) - p\,t_i]

    with ``pos_weight`` p (broadcast over the last dimension) and element ``weight`` w.
    Targets are probabilities in [0, 1] with the input's shape.
    """

    def __init__(self, weight=None, reduction: str = "mean", pos_weight=None):
        super().__init__(reduction)
        self.register_buffer("weight", None if weight is None
                             else np.asarray(weight, dtype=np.float64))
        self.register_buffer("pos_weight", None if pos_weight is None
                             else np.asarray(pos_weight, dtype=np.float64))

    def _device_weights(self, shape):
        """(pos_weight, weight) on the device, broadcast to (C,) and the input's shape, copied
        once per (weights, shape)."""
        cached = self.__dict__.get("_weights_dev")
        if cached is None or cached[0][0] is not self.pos_weight \
                or cached[0][1] is not self.weight or cached[0][2] != shape:
            pw = None if self.pos_weight is None else _cuda_runtime.to_device(
                np.broadcast_to(self.pos_weight, shape[-1:]))
            w = None if self.weight is None else _cuda_runtime.to_device(
                np.broadcast_to(self.weight, shape))
            cached = ((self.pos_weight, self.weight, shape), (pw, w))
            object.__setattr__(self, "_weights_dev", cached)
        return cached[1]

    def forward(self, input: np.ndarray, target) -> float:
        x = _check_logits(self, input)
        shape = tuple(getattr(target, "shape", np.shape(target)))
        if shape != x.shape:
            raise ValueError(f"BCEWithLogitsLoss: target shape {shape} does not match input "
                             f"shape {x.shape}")
        if is_device_array(x):
            t = _target_like(self, x, target)
            pw, w = self._device_weights(x.shape)
            total = _elementwise.bce_with_logits_forward(x, t, pw, w)
            self._cache = ("device", x, t)
            return total / x.size if self.reduction == "mean" else total
        t = np.asarray(target)
        x64 = x.astype(np.float64)
        t64 = t.astype(np.float64)
        # log sigma(x) = -softplus(-x), log(1 - sigma(x)) = -softplus(x); softplus stable form
        sp_neg = np.logaddexp(0.0, -x64)
        sp_pos = np.logaddexp(0.0, x64)
        pw = 1.0 if self.pos_weight is None else self.pos_weight
        per = pw * t64 * sp_neg + (1 - t64) * sp_pos
        if self.weight is not None:
            per = per * self.weight
        self._cache = (x64, t64, x.dtype)
        total = float(per.sum())
        return total / x.size if self.reduction == "mean" else total

    def backward(self, grad_output=None, *, input_grad: bool = True) -> np.ndarray:
        cache = self._require_cache()
        if isinstance(cache[0], str):      # ("device", x, t)
            _, x, t = cache
            grad = self._buffer("grad", x.shape, x.dtype)
            pw, w = self._device_weights(x.shape)
            scale = 1.0 / x.size if self.reduction == "mean" else 1.0
            _elementwise.bce_with_logits_backward(x, t, pw, w, grad, scale)
            return grad
        x64, t64, dt = cache
        sig = 0.5 * (1.0 + np.tanh(0.5 * x64))          # overflow-free sigmoid
        pw = 1.0 if self.pos_weight is None else self.pos_weight
        g = (pw * t64 + 1 - t64) * sig - pw * t64
        if self.weight is not None:
            g = g * self.weight
        if self.reduction == "mean":
            g /= x64.size
        grad = self._buffer("grad", x64.shape, dt)
        grad[...] = g
        return grad
