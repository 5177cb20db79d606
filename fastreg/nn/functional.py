"""Functional activations and dropout, as ``torch.nn.functional``.

Each takes an array (or an array recorded inside a taped forward, see
:mod:`fastreg.nn._tape`, in which case the call is recorded and differentiated) and returns a
new array; the maths are the layers' (:class:`fastreg.nn.ReLU` ...), run by the same kernels:

* ``relu(x) = max(x, 0)``, gradient 0 at x <= 0;
* ``leaky_relu(x, s) = x if x > 0 else s*x``;
* ``sigmoid(x) = 1/(1+exp(-x))``, backward ``dy*y*(1-y)``;
* ``tanh(x)``, backward ``dy*(1-y^2)``;
* ``dropout(x, p, training)``: inverted dropout, a fresh Philox mask per call
  (``fastreg.manual_seed``'s counter), kept elements scaled by ``1/(1-p)``; the identity when
  ``training`` is False or ``p == 0``; zeros for ``p == 1``.
"""
from __future__ import annotations

import math

import numpy as np

from .. import _config, _random
from .._kernels import dropout as _dropout
from .._kernels import elementwise as _elementwise
from .._kernels.common import codes as _codes
from ._tape import Recorded, cat

__all__ = ["cat", "dropout", "leaky_relu", "relu", "sigmoid", "tanh"]


def _float_input(fn: str, x) -> np.ndarray:
    if type(x) is Recorded:
        x = x.data
        if type(x) is not np.ndarray:
            raise NotImplementedError(f"fastreg.nn.functional.{fn} on a device array inside a "
                                      "recorded forward is not supported (CPU only)")
    elif type(x) is not np.ndarray:
        if isinstance(x, (list, tuple, int, float)):
            x = np.asarray(x, dtype=_config.get_default_dtype())
        else:
            from .parameter import Parameter
            if isinstance(x, Parameter):
                raise TypeError(f"fastreg.nn.functional.{fn}: pass p.data, not the Parameter")
            if not isinstance(x, np.ndarray):
                raise TypeError(f"fastreg.nn.functional.{fn}: input must be a numpy.ndarray, "
                                f"got {type(x).__name__}")
    if x.dtype not in _config.FLOAT_DTYPES:
        raise TypeError(f"fastreg.nn.functional.{fn}: input must be float32 or float64, "
                        f"got {x.dtype}")
    return np.ascontiguousarray(x)


def _activation(fn: str, x, code: int, slope: float):
    xd = _float_input(fn, x)
    y = np.empty_like(xd)
    _elementwise.run_activation_forward(xd, y, code, slope)
    if type(x) is not Recorded:
        return y
    # backward from the saved output (exact for these codes: y > 0 <=> x > 0 when slope > 0);
    # a leaky ReLU with slope <= 0 is differentiated at the input
    saved = xd if (code == _codes.ACT_LEAKY_RELU and slope <= 0) else y

    def back(g):
        g = np.ascontiguousarray(g, dtype=y.dtype)
        dx = np.empty_like(y)
        _elementwise.run_activation_backward(g, saved, dx, code, slope)
        return (dx,)
    return x.tape.custom(x, y, back)


def relu(x, inplace: bool = False):
    """max(x, 0). ``inplace`` is accepted for torch compatibility; a new array is returned."""
    return _activation("relu", x, _codes.ACT_RELU, 0.0)


def leaky_relu(x, negative_slope: float = 0.01, inplace: bool = False):
    """x for x > 0, else negative_slope * x."""
    if isinstance(negative_slope, bool) or \
            not isinstance(negative_slope, (int, float, np.integer, np.floating)) or \
            not math.isfinite(negative_slope):
        raise ValueError(f"negative_slope must be a finite number, got {negative_slope!r}")
    return _activation("leaky_relu", x, _codes.ACT_LEAKY_RELU, float(negative_slope))


def sigmoid(x):
    """1 / (1 + exp(-x))."""
    return _activation("sigmoid", x, _codes.ACT_SIGMOID, 0.0)


def tanh(x):
    """tanh(x)."""
    return _activation("tanh", x, _codes.ACT_TANH, 0.0)


def dropout(x, p: float = 0.5, training: bool = True, inplace: bool = False):
    """Inverted dropout (torch's ``F.dropout``): zero each element with probability ``p`` and
    scale the kept ones by ``1/(1-p)`` when ``training``; the input itself otherwise."""
    if isinstance(p, bool) or not isinstance(p, (int, float, np.integer, np.floating)) \
            or not 0.0 <= float(p) <= 1.0:
        raise ValueError(f"dropout probability has to be between 0 and 1, but got {p!r}")
    if not isinstance(training, (bool, np.bool_)):
        raise TypeError(f"training must be a bool, got {training!r}")
    p = float(p)
    if not training or p == 0.0:
        return x
    xd = _float_input("dropout", x)
    if p == 1.0:
        y = np.zeros_like(xd)
        if type(x) is not Recorded:
            return y
        return x.tape.custom(x, y, lambda g: (np.zeros_like(y),))
    n = xd.size
    out = np.empty_like(xd)
    mask = np.empty(_dropout.mask_nbytes(n), np.uint8)
    scale = 1.0 / (1.0 - p)
    if n:
        seed, offset = _random.default_generator.reserve_philox(_dropout.philox_blocks(n))
        _dropout.run_dropout_forward(xd, out, mask, p, scale, seed, offset)
    if type(x) is not Recorded:
        return out

    def back(g):
        g = np.ascontiguousarray(g, dtype=out.dtype)
        dx = np.empty_like(out)
        if n:
            _dropout.run_dropout_backward(g, mask, dx, scale)
        return (dx,)
    return x.tape.custom(x, out, back)
