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
from .._checks import check_scalar
from .._config import FLOAT_DTYPES
from .._kernels import elementwise as _elementwise
from .._kernels import placement
from .._kernels.placement import HOST
from .module import Module

__all__ = ["BCEWithLogitsLoss", "CrossEntropyLoss", "MSELoss"]

REDUCTIONS = ("mean", "sum")


def _check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def _check_logits(loss: Module, x, ndim=None) -> np.ndarray:
    if placement.of(x) is None:
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
    place = loss._place
    return x if place.is_contiguous(x) else place.contiguous(x, f"{type(loss).__name__}: input")


def _target_like(loss: Module, x, target, what: str = "target"):
    """``target`` as an array of x's dtype where x lives (shape checked by the caller)."""
    if placement.of(target) in (HOST, None):           # None: a list, a scalar, ...
        return loss._place_target(what, np.asarray(target).astype(x.dtype, copy=False))
    target = loss._place.accept(target, f"{type(loss).__name__}: {what}")
    if target.dtype != x.dtype:
        raise TypeError(f"{type(loss).__name__}: {what} is a {target.dtype} device "
                        f"array, expected {x.dtype} like the input")
    return target


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
        placement.for_device(dev)               # raises without a usable GPU
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
        self.label_smoothing = check_scalar("label_smoothing", label_smoothing, low=0.0,
                                            high=1.0)
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
        t = np.asarray(HOST.to_host(target))
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
        if not self._place.owns(t) and self._place.owns(target) and \
                target.dtype == np.int64 and target.shape == (N,):
            return target        # a device target, checked through its host copy t
        return self._place_target("target", t)

    def _placed_weight(self):
        """The class weights (float64) where the input is, copied once per (array, place)."""
        cached = self.__dict__.get("_weight_placed")
        if cached is None or cached[0] is not self.weight or cached[1] is not self._place:
            cached = (self.weight, self._place, self._place.put(self.weight))
            object.__setattr__(self, "_weight_placed", cached)
        return cached[2]

    def forward(self, input: np.ndarray, target) -> float:
        z = _check_logits(self, input, ndim=2)
        t = self._check_target(z, target)
        N = z.shape[0]
        probs = self._buffer("probs", z.shape, z.dtype)
        eps = self.label_smoothing
        dev = self._place.is_device
        if self.weight is None:
            loss = _elementwise.run_softmax_cross_entropy_forward(z, t, probs, eps, dev)
            if self.reduction == "sum":
                loss *= N
            self._cache = (probs, t, None)
            return loss
        # weighted (torch's formula, including label smoothing): float64 sums
        total, denom = _elementwise.run_softmax_xent_weighted_forward(
            z, t, self._placed_weight(), probs, eps, dev)
        denom = denom if self.reduction == "mean" else 1.0
        self._cache = (probs, t, denom)
        return float(total / denom)

    def backward(self, grad_output=None, *, input_grad: bool = True) -> np.ndarray:
        """dL/dlogits of the last call, shape (N, C)."""
        probs, t, denom = self._require_cache()
        N = probs.shape[0]
        grad = self._buffer("grad", probs.shape, probs.dtype)
        eps = self.label_smoothing
        dev = self._place.is_device
        if denom is None:
            scale = 1.0 / N if self.reduction == "mean" else 1.0
            _elementwise.run_softmax_cross_entropy_backward(probs, t, grad, eps, scale, dev)
            return grad
        # weighted: d/dz of (1-eps) w_y nll + eps/C sum_c w_c (-log p_c), over denom
        _elementwise.run_softmax_xent_weighted_backward(probs, t, self._placed_weight(), grad,
                                                        eps, 1.0 / denom, dev)
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
        total = _elementwise.run_mse_forward(x, t, diff, self._place.is_device)
        n = x.size
        self._cache = diff
        return total / n if self.reduction == "mean" else total

    def backward(self, grad_output=None, *, input_grad: bool = True) -> np.ndarray:
        diff = self._require_cache()
        grad = self._buffer("grad", diff.shape, diff.dtype)
        scale = 2.0 / diff.size if self.reduction == "mean" else 2.0
        self._place.scale(diff, grad, scale)
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

    def _placed_weights(self, shape):
        """(pos_weight, weight) where the input is, broadcast to (C,) and the input's shape,
        made once per (weights, shape, place)."""
        key = (self.pos_weight, self.weight, shape, self._place)
        cached = self.__dict__.get("_weights_placed")
        if cached is None or any(a is not b for a, b in zip(cached[0][:2], key[:2])) \
                or cached[0][2:] != key[2:]:
            put = self._place.put
            pw = None if self.pos_weight is None else put(
                np.ascontiguousarray(np.broadcast_to(self.pos_weight, shape[-1:])))
            w = None if self.weight is None else put(
                np.ascontiguousarray(np.broadcast_to(self.weight, shape)))
            cached = (key, (pw, w))
            object.__setattr__(self, "_weights_placed", cached)
        return cached[1]

    def forward(self, input: np.ndarray, target) -> float:
        x = _check_logits(self, input)
        shape = tuple(getattr(target, "shape", np.shape(target)))
        if shape != x.shape:
            raise ValueError(f"BCEWithLogitsLoss: target shape {shape} does not match input "
                             f"shape {x.shape}")
        t = _target_like(self, x, target)
        pw, w = self._placed_weights(x.shape)
        total = _elementwise.run_bce_with_logits_forward(x, t, pw, w, self._place.is_device)
        self._cache = (x, t)
        return total / x.size if self.reduction == "mean" else total

    def backward(self, grad_output=None, *, input_grad: bool = True) -> np.ndarray:
        x, t = self._require_cache()
        grad = self._buffer("grad", x.shape, x.dtype)
        pw, w = self._placed_weights(x.shape)
        scale = 1.0 / x.size if self.reduction == "mean" else 1.0
        _elementwise.run_bce_with_logits_backward(x, t, pw, w, grad, scale, self._place.is_device)
        return grad
