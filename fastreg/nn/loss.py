"""Losses: CrossEntropyLoss, MSELoss, BCEWithLogitsLoss.

Calling a loss returns a Python float (``reduction="mean"`` or ``"sum"``) or the per-sample /
per-element loss array (``reduction="none"``) and caches what its gradient needs.
``backward(grad_output=None)`` returns dL/dinput of the last call, as torch's
``loss.backward(grad_output)``:

* ``reduction="mean"|"sum"``: ``grad_output`` is None (1) or a scalar (a float, a 0-d or
  one-element array) that scales the gradient;
* ``reduction="none"``: ``grad_output`` is None (ones) or an array of the returned loss's shape,
  the upstream gradient of each sample's loss (sample weights are built on this).

The returned gradient may be an array the loss owns and reuses: feed it to ``model.backward``
right away. Shapes: N samples, C classes.

The default paths (mean/sum over class-index targets without ignored samples, same-shape MSE and
BCE targets) run in the fused kernels of ``fastreg._kernels.elementwise``; ``reduction="none"``,
ignored samples, probability targets, broadcast MSE targets and 0-d inputs run in float64 NumPy
(on the host: a device input is copied out and the results copied back in).

On the GPU (input a CUDA device array) the loss runs in CUDA kernels; host targets are checked on
the host and copied in (device targets are copied out once to be checked: an out-of-range class
index must never reach a kernel), and the returned float is the one scalar copied back.
"""
from __future__ import annotations

import warnings

import numpy as np

from .. import _config
from .._checks import check_scalar
from .._config import FLOAT_DTYPES
from .._kernels import elementwise as _elementwise
from .._kernels import placement
from .._kernels.placement import HOST
from .module import Module

__all__ = ["BCEWithLogitsLoss", "CrossEntropyLoss", "MSELoss"]

REDUCTIONS = ("none", "mean", "sum")


def _check_reduction(reduction: str) -> str:
    if reduction not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {reduction!r}")
    return reduction


def _check_logits(loss: Module, x, ndim=None) -> np.ndarray:
    if isinstance(x, np.generic):          # a NumPy scalar (x[i], a 0-d result): a 0-d array
        x = np.asarray(x)
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


def _to_device_like(loss: Module, a: np.ndarray, dtype):
    """A float64 host result ``a`` in the input's dtype, where the input lives."""
    a = np.asarray(a, dtype=dtype)
    return a if loss._place is HOST else loss._place.put(np.ascontiguousarray(a))


def _host(a) -> np.ndarray:
    """``a`` as a host array (a device array is copied out; lists and scalars converted)."""
    return np.asarray(a) if placement.of(a) in (HOST, None) else HOST.to_host(a)


def _host64(a) -> np.ndarray:
    return np.asarray(_host(a), dtype=np.float64)


def _check_upstream(loss: Module, grad_output, shape: tuple):
    """torch's ``loss.backward(grad_output)``: for reduction "none" an array of the loss's
    ``shape`` (None: ones) as float64 host array; for "mean"/"sum" a finite scalar (None: 1.0)."""
    name = type(loss).__name__
    if loss.reduction == "none":
        if grad_output is None:
            return np.ones(shape)
        if placement.of(grad_output) is None and not np.isscalar(grad_output):
            raise TypeError(f"{name}.backward: grad_output must be an array of shape {shape}, "
                            f"got {type(grad_output).__name__}")
        g = _host(grad_output)
        if g.dtype.kind not in "fiub" or g.shape != shape:
            raise ValueError(f"{name}.backward: grad_output must be a real array of the "
                             f"per-sample loss's shape {shape}, got shape {g.shape} dtype "
                             f"{g.dtype}")
        return g.astype(np.float64)
    if grad_output is None:
        return 1.0
    g = _host(grad_output)
    if g.size != 1 or g.dtype.kind not in "fiub" or not np.isfinite(g).all():
        raise ValueError(f"{name}.backward: with reduction={loss.reduction!r} grad_output must "
                         f"be a finite scalar (the upstream gradient of the loss), got "
                         f"{grad_output!r}")
    return float(g.reshape(()))


def _sum_to(g: np.ndarray, shape: tuple) -> np.ndarray:
    """Sum a broadcast gradient back to ``shape`` (the inverse of numpy broadcasting)."""
    lead = g.ndim - len(shape)
    if lead:
        g = g.sum(axis=tuple(range(lead)))
    axes = tuple(i for i, d in enumerate(shape) if d == 1 and g.shape[i] != 1)
    return g.sum(axis=axes, keepdims=True) if axes else g


def _reduce(loss: Module, per: np.ndarray, denom: float, dtype):
    """The loss value: ``per`` itself (reduction "none"), or its sum / ``denom`` as a float."""
    if loss.reduction == "none":
        return _to_device_like(loss, per, dtype)
    total = float(per.sum())
    return total / denom if loss.reduction == "mean" else total


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
    r"""Softmax cross-entropy, as ``torch.nn.CrossEntropyLoss``.

    Input: logits z of shape (N, C), or one unbatched sample (C,). Target: class indices
    (integer, shape (N,) or 0-d) or class probabilities (float, z's shape). With
    :math:`\log p_{nc} = z_{nc} - \log\sum_k e^{z_{nk}}` every sample's loss is a cross-entropy
    :math:`\ell_n = -\sum_c q_{nc}\log p_{nc}` against the target distribution

    .. math::
        q_{nc} = m_n\,[(1-\varepsilon)\,w_{y_n}[c = y_n] + \tfrac{\varepsilon}{C} w_c]
        \quad\text{(class indices)},\qquad
        q_{nc} = w_c\,[(1-\varepsilon)\,t_{nc} + \tfrac{\varepsilon}{C}]
        \quad\text{(probabilities)}

    with label smoothing :math:`\varepsilon`, class weights w (ones by default) and
    :math:`m_n = [y_n \ne \text{ignore\_index}]`. Reductions: ``"none"`` returns
    :math:`(\ell_n)` (shape (N,), or 0-d for an unbatched input; ignored samples give 0),
    ``"sum"`` :math:`\sum_n \ell_n`, ``"mean"`` :math:`\sum_n \ell_n / D` with
    :math:`D = \sum_n m_n w_{y_n}` for class indices (NaN when every sample is ignored, as
    torch) and :math:`D = N` for probabilities. The gradient is
    :math:`\partial \ell_n/\partial z_{nc} = (\sum_k q_{nk})\,p_{nc} - q_{nc}`.

    Parameters
    ----------
    weight : array of shape (C,), optional
        Per-class rescaling w.
    ignore_index : int
        Class-index targets equal to it contribute nothing (default -100, as torch; ignored for
        probability targets).
    reduction : {"mean", "sum", "none"}
    label_smoothing : float in [0, 1]

    Notes
    -----
    Mean/sum over class indices with no ignored sample runs in the fused softmax + cross-entropy
    kernels (the unweighted and weighted ones); the other cases run in float64 NumPy.
    """

    def __init__(self, weight=None, ignore_index: int = -100, reduction: str = "mean",
                 label_smoothing: float = 0.0):
        super().__init__(reduction)
        self.label_smoothing = check_scalar("label_smoothing", label_smoothing, low=0.0,
                                            high=1.0)
        if isinstance(ignore_index, bool) or not isinstance(ignore_index, (int, np.integer)):
            raise TypeError(f"ignore_index must be an int, got {ignore_index!r}")
        self.ignore_index = int(ignore_index)
        if weight is not None:
            weight = np.asarray(weight, dtype=np.float64)
            if weight.ndim != 1 or not np.all(np.isfinite(weight)) or np.any(weight < 0):
                raise ValueError("weight must be a 1-D array of finite non-negative class "
                                 f"weights, got {weight!r}")
        self.register_buffer("weight", weight)

    def extra_repr(self) -> str:
        parts = [] if self.reduction == "mean" else [f"reduction={self.reduction!r}"]
        if self.ignore_index != -100:
            parts.append(f"ignore_index={self.ignore_index}")
        if self.label_smoothing:
            parts.append(f"label_smoothing={self.label_smoothing}")
        return ", ".join(parts)

    def _class_targets(self, t: np.ndarray, N: int, C: int, unbatched: bool):
        """(int64 targets (N,), any ignored?) after the shape and range checks."""
        want = () if unbatched else (N,)
        if t.shape != want:
            raise ValueError(f"CrossEntropyLoss: class-index target must have shape {want} to "
                             f"match input {(C,) if unbatched else (N, C)}, got {t.shape}")
        t = np.ascontiguousarray(t, dtype=np.int64)
        if unbatched:
            t = t.reshape(1)
        ign = self.ignore_index
        ignored = False
        # one reduction for both bounds: a negative index viewed as uint64 is >= 2**63 > C
        if N and t.view(np.uint64).max() >= C:
            out = (t < 0) | (t >= C)
            bad = t[out & (t != ign)]
            if bad.size:
                raise ValueError(f"CrossEntropyLoss: target {bad[0]} is out of bounds for {C} "
                                 "classes")
            ignored = True
        elif 0 <= ign < C:
            ignored = bool(np.any(t == ign))
        return t, ignored

    def _placed_target(self, t: np.ndarray, target, N: int):
        if not self._place.owns(t) and self._place.owns(target) and \
                target.dtype == np.int64 and tuple(target.shape) == (N,):
            return target        # a device target, checked through its host copy t
        return self._place_target("target", t)

    def _placed_weight(self):
        """The class weights (float64) where the input is, copied once per (array, place)."""
        cached = self.__dict__.get("_weight_placed")
        if cached is None or cached[0] is not self.weight or cached[1] is not self._place:
            cached = (self.weight, self._place, self._place.put(self.weight))
            object.__setattr__(self, "_weight_placed", cached)
        return cached[2]

    def forward(self, input: np.ndarray, target):
        x = _check_logits(self, input)
        if x.ndim not in (1, 2):
            raise ValueError(f"CrossEntropyLoss: input must be (N, C) logits or one unbatched "
                             f"sample (C,), got shape {x.shape}")
        unbatched = x.ndim == 1
        z = x.reshape(1, -1) if unbatched else x
        N, C = z.shape
        weight = self.weight            # (a buffer: one Module.__getattr__ per call)
        if weight is not None and weight.shape != (C,):
            raise ValueError(f"CrossEntropyLoss: weight has shape {weight.shape}, expected "
                             f"({C},) for input {x.shape}")
        th = _host(target)
        if th.dtype.kind == "f":
            if th.shape != tuple(x.shape):
                raise ValueError(f"CrossEntropyLoss: probability target must have the input's "
                                 f"shape {x.shape}, got {th.shape}")
            return self._general(x, z, th.reshape(N, C), None)
        if th.dtype.kind not in "iub":
            raise TypeError(f"CrossEntropyLoss: target must hold integer class indices or float "
                            f"class probabilities, got dtype {th.dtype}")
        t, ignored = self._class_targets(th, N, C, unbatched)
        if ignored or self.reduction == "none":
            return self._general(x, z, None, t)
        t = self._placed_target(t, target, N)
        probs = self._buffer("probs", z.shape, z.dtype)
        eps = self.label_smoothing
        dev = self._place.is_device
        if weight is None:
            loss = _elementwise.run_softmax_cross_entropy_forward(z, t, probs, eps, dev)
            if self.reduction == "sum":
                loss *= N
            self.__dict__["_cache"] = ("fast", probs, t, None, x.shape, x.dtype)
            return loss
        # weighted (torch's formula, including label smoothing): float64 sums
        total, denom = _elementwise.run_softmax_xent_weighted_forward(
            z, t, self._placed_weight(), probs, eps, dev)
        denom = denom if self.reduction == "mean" else 1.0
        self.__dict__["_cache"] = ("fast", probs, t, denom, x.shape, x.dtype)
        return float(total / denom)

    def _general(self, x, z, prob_target, t):
        """Every case in float64 NumPy: the target distribution q, then ``-sum q log p``."""
        zh = _host64(z)
        N, C = zh.shape
        logp = zh - zh.max(axis=1, keepdims=True)
        logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
        eps = self.label_smoothing
        w = self.weight
        if prob_target is not None:
            q = prob_target.astype(np.float64)
            if eps:
                q = q * (1.0 - eps) + eps / C
            if w is not None:
                q = q * w
            denom = float(N)
        else:
            keep = t != self.ignore_index
            tc = np.where(keep, t, 0)
            wv = np.ones(C) if w is None else w
            q = np.empty((N, C))
            q[...] = (eps / C) * wv
            q[np.arange(N), tc] += (1.0 - eps) * wv[tc]
            q[~keep] = 0.0
            denom = float(wv[tc][keep].sum())
        per = -(q * logp).sum(axis=1)
        self._cache = ("general", np.exp(logp), q, denom, tuple(x.shape), x.dtype)
        if self.reduction == "mean" and denom == 0.0:
            return float("nan")                            # every sample ignored (as torch)
        out = _reduce(self, per, denom, x.dtype)
        return out.reshape(()) if len(x.shape) == 1 and self.reduction == "none" else out

    def backward(self, grad_output=None, *, input_grad: bool = True) -> np.ndarray:
        """dL/dlogits of the last call, the input's shape ((N, C) or (C,)).

        ``grad_output``: see the module docstring (None; a scalar for "mean"/"sum"; an (N,)
        array, or 0-d for an unbatched input, for "none")."""
        kind, probs, t, denom, shape, dt = self._require_cache()
        unbatched = len(shape) == 1
        if kind == "fast":
            g = 1.0 if grad_output is None else _check_upstream(self, grad_output, ())
            N = probs.shape[0]
            grad = self._buffer("grad", probs.shape, probs.dtype)
            eps = self.label_smoothing
            dev = self._place.is_device
            if denom is None:
                scale = g / N if self.reduction == "mean" else g
                _elementwise.run_softmax_cross_entropy_backward(probs, t, grad, eps, scale, dev)
            else:
                # weighted: d/dz of (1-eps) w_y nll + eps/C sum_c w_c (-log p_c), over denom
                _elementwise.run_softmax_xent_weighted_backward(
                    probs, t, self._placed_weight(), grad, eps, g / denom, dev)
            return grad.reshape(shape) if unbatched else grad
        q = t
        N = probs.shape[0]
        g = _check_upstream(self, grad_output, () if unbatched else (N,))
        if self.reduction == "none":
            gn = np.reshape(g, (N, 1))
        else:
            gn = g / denom if self.reduction == "mean" else g
        grad = gn * (q.sum(axis=1, keepdims=True) * probs - q)
        return _to_device_like(self, grad.reshape(shape), dt)


class MSELoss(_Loss):
    r"""Squared error :math:`\ell_i = (x_i - t_i)^2`, as ``torch.nn.MSELoss``.

    ``"mean"``: :math:`\frac1n\sum_i \ell_i` (gradient :math:`2(x-t)/n`), ``"sum"``:
    :math:`\sum_i \ell_i`, ``"none"``: the array :math:`(\ell_i)`. Input and target may be 0-d.
    A target of another shape is broadcast against the input as torch does, with torch's
    ``UserWarning`` (it is usually a mistake: (N, 1) predictions against (N,) targets give an
    (N, N) loss); n is then the broadcast size and the gradient is summed back to the input's
    shape. The target is cast to the input's dtype.
    """

    def forward(self, input: np.ndarray, target):
        x = _check_logits(self, input)
        xshape = tuple(x.shape)
        shape = tuple(getattr(target, "shape", np.shape(target)))
        if shape != xshape:
            warnings.warn(
                f"Using a target size ({shape}) that is different to the input size "
                f"({xshape}). This will likely lead to incorrect results due to broadcasting. "
                "Please ensure they have the same size.", UserWarning, stacklevel=2)
            try:
                np.broadcast_shapes(xshape, shape)
            except ValueError:
                raise ValueError(f"MSELoss: target shape {shape} does not match input shape "
                                 f"{xshape} and does not broadcast with it") from None
        elif self.reduction != "none" and x.ndim:
            t = _target_like(self, x, target)
            diff = self._buffer("diff", xshape, x.dtype)
            total = _elementwise.run_mse_forward(x, t, diff, self._place.is_device)
            n = x.size
            self._cache = ("fast", diff)
            return total / n if self.reduction == "mean" else total
        # broadcast targets, 0-d arrays, reduction="none": float64 NumPy
        diff = _host64(x) - _host(target).astype(np.float64)
        per = diff * diff
        self._cache = ("general", diff, xshape, x.dtype)
        return _reduce(self, per, per.size, x.dtype)

    def backward(self, grad_output=None, *, input_grad: bool = True) -> np.ndarray:
        """dL/dinput of the last call (the input's shape); ``grad_output`` as in the module
        docstring (None, a scalar, or for "none" an array of the loss's shape)."""
        cache = self._require_cache()
        if cache[0] == "fast":
            diff = cache[1]
            g = 1.0 if grad_output is None else _check_upstream(self, grad_output, ())
            grad = self._buffer("grad", diff.shape, diff.dtype)
            scale = 2.0 / diff.size if self.reduction == "mean" else 2.0
            self._place.scale(diff, grad, scale * g)
            return grad
        _, diff, xshape, dt = cache
        g = _check_upstream(self, grad_output, diff.shape)
        if self.reduction == "mean":
            g = g / diff.size
        return _to_device_like(self, _sum_to(2.0 * diff * g, xshape), dt)


class BCEWithLogitsLoss(_Loss):
    r"""Sigmoid + binary cross-entropy on logits, numerically stable, as torch's.

    .. math::
        \ell_i = -w_i\,[\,p\,t_i \log\sigma(x_i) + (1-t_i)\log(1-\sigma(x_i))\,],\quad
        \partial\ell_i/\partial x_i = w_i\,[(p\,t_i + 1 - t_i)\,\sigma(x_i) - p\,t_i]

    with ``pos_weight`` p (broadcast over the last dimension) and element ``weight`` w
    (broadcast to the input's shape). Targets are probabilities in [0, 1] with the input's shape
    (0-d input and target allowed). ``"mean"``: :math:`\frac1n\sum_i\ell_i`, ``"sum"``:
    :math:`\sum_i\ell_i`, ``"none"``: the array :math:`(\ell_i)`.
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

    def _host_weights(self, shape):
        """(p, w) as float64 host arrays broadcast to ``shape`` (or 1.0), clear errors."""
        out = []
        for name, a in (("pos_weight", self.pos_weight), ("weight", self.weight)):
            if a is None:
                out.append(1.0)
                continue
            try:
                out.append(np.broadcast_to(a, shape))
            except ValueError:
                raise ValueError(f"BCEWithLogitsLoss: {name} of shape {a.shape} does not "
                                 f"broadcast to the input's shape {shape}") from None
        return out

    def forward(self, input: np.ndarray, target):
        x = _check_logits(self, input)
        xshape = tuple(x.shape)
        shape = tuple(getattr(target, "shape", np.shape(target)))
        if shape != xshape:
            raise ValueError(f"BCEWithLogitsLoss: target shape {shape} does not match input "
                             f"shape {xshape}")
        if self.reduction != "none" and x.ndim:
            t = _target_like(self, x, target)
            pw, w = self._placed_weights(xshape)
            total = _elementwise.run_bce_with_logits_forward(x, t, pw, w, self._place.is_device)
            self._cache = ("fast", x, t)
            return total / x.size if self.reduction == "mean" else total
        # 0-d arrays, reduction="none": float64 NumPy, torch's formula
        xh = _host64(x)
        th = _host(target).astype(np.float64)
        p, w = self._host_weights(xshape)
        log_weight = (p - 1.0) * th + 1.0
        per = w * ((1.0 - th) * xh + log_weight * (np.log1p(np.exp(-np.abs(xh)))
                                                  + np.maximum(-xh, 0.0)))
        sig = 0.5 * (1.0 + np.tanh(0.5 * xh))
        self._cache = ("general", w * ((p * th + 1.0 - th) * sig - p * th), xshape, x.dtype)
        return _reduce(self, per, per.size, x.dtype)

    def backward(self, grad_output=None, *, input_grad: bool = True) -> np.ndarray:
        """dL/dinput of the last call (the input's shape); ``grad_output`` as in the module
        docstring (None, a scalar, or for "none" an array of the loss's shape)."""
        cache = self._require_cache()
        if cache[0] == "fast":
            _, x, t = cache
            g = 1.0 if grad_output is None else _check_upstream(self, grad_output, ())
            grad = self._buffer("grad", x.shape, x.dtype)
            pw, w = self._placed_weights(tuple(x.shape))
            scale = g / x.size if self.reduction == "mean" else g
            _elementwise.run_bce_with_logits_backward(x, t, pw, w, grad, scale,
                                                      self._place.is_device)
            return grad
        _, dl, xshape, dt = cache
        g = _check_upstream(self, grad_output, xshape)
        if self.reduction == "mean":
            g = g / max(dl.size, 1)
        return _to_device_like(self, dl * g, dt)
