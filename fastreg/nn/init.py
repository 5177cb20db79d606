"""Parameter initialization, with ``torch.nn.init``'s names, arguments and formulas.

Every function fills its argument **in place** and returns it. The argument is a
:class:`fastreg.nn.Parameter` (its ``data`` is filled) or a float ndarray. Random draws come from
``generator`` (a :class:`fastreg.Generator` or ``numpy.random.Generator``), by default fastreg's
global generator, so ``fastreg.manual_seed(s)`` makes initialization repeatable. Values are
drawn in float64 and cast, so a float32 and a float64 array filled from the same seed agree to
float32 rounding.

Why the scale matters: all-zero (or constant) weights make every unit of a layer compute the
same thing, so they never differ (symmetry is never broken); an unscaled standard normal makes
activations and gradients grow or vanish with depth. Xavier/Glorot keeps the variance of
activations and gradients constant for tanh/sigmoid layers (scale by fan-in and fan-out);
He/Kaiming does it for ReLU, whose half-zero output needs twice the variance.
"""
from __future__ import annotations

import math
import warnings

import numpy as np

from .._checks import check_scalar
from .._random import Generator, default_generator
from .parameter import Parameter

__all__ = ["calculate_gain", "constant_", "kaiming_normal_", "kaiming_uniform_", "normal_",
           "ones_", "uniform_", "xavier_normal_", "xavier_uniform_", "zeros_"]

_LINEAR_FNS = ("linear", "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d",
               "conv_transpose3d")


def _array(tensor, name: str = "tensor") -> np.ndarray:
    """The writeable float ndarray behind ``tensor`` (a Parameter or an ndarray)."""
    a = tensor.data if isinstance(tensor, Parameter) else tensor
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a fastreg.nn.Parameter or a numpy.ndarray, "
                        f"got {type(tensor).__name__}")
    if a.dtype.kind != "f":
        raise TypeError(f"{name} must have a floating dtype, got {a.dtype}")
    if not a.flags.writeable:
        raise ValueError(f"{name} is read-only; initializers fill it in place")
    return a


def _rng(generator) -> np.random.Generator:
    if generator is None:
        return default_generator.numpy
    if isinstance(generator, Generator):
        return generator.numpy
    if isinstance(generator, np.random.Generator):
        return generator
    raise TypeError(f"generator must be None, a fastreg.Generator or a numpy.random.Generator, "
                    f"got {type(generator).__name__}")


def _real(name: str, value) -> float:
    return check_scalar(name, value)


def calculate_gain(nonlinearity: str, param: float | None = None) -> float:
    r"""The recommended gain for a nonlinearity (torch's table).

    ============================  ==========================================
    nonlinearity                  gain
    ============================  ==========================================
    linear / conv* / sigmoid      1
    tanh                          5/3
    relu                          :math:`\sqrt{2}`
    leaky_relu                    :math:`\sqrt{2 / (1 + \text{slope}^2)}` (slope = ``param``,
                                  default 0.01)
    selu                          3/4
    ============================  ==========================================
    """
    if nonlinearity in _LINEAR_FNS or nonlinearity == "sigmoid":
        return 1
    if nonlinearity == "tanh":
        return 5.0 / 3
    if nonlinearity == "relu":
        return math.sqrt(2.0)
    if nonlinearity == "leaky_relu":
        if param is None:
            negative_slope = 0.01
        elif not isinstance(param, bool) and isinstance(param, (int, float)):
            negative_slope = param
        else:
            raise ValueError(f"negative_slope {param} not a valid number")
        return math.sqrt(2.0 / (1 + negative_slope ** 2))
    if nonlinearity == "selu":
        return 3.0 / 4
    raise ValueError(f"Unsupported nonlinearity {nonlinearity!r}; expected one of "
                     f"{[*_LINEAR_FNS, 'sigmoid', 'tanh', 'relu', 'leaky_relu', 'selu']}")


def _calculate_fan_in_and_fan_out(tensor) -> tuple[int, int]:
    """(fan_in, fan_out) of a weight of shape (out, in, *kernel), as torch.

    ``fan_in = in · prod(kernel)``, ``fan_out = out · prod(kernel)``; undefined below 2-D.
    """
    shape = _array(tensor).shape
    if len(shape) < 2:
        raise ValueError("Fan in and fan out can not be computed for tensor with fewer than 2 "
                         f"dimensions (got shape {shape})")
    receptive_field_size = 1
    for s in shape[2:]:
        receptive_field_size *= s
    return shape[1] * receptive_field_size, shape[0] * receptive_field_size


def _calculate_correct_fan(tensor, mode: str) -> int:
    if not isinstance(mode, str) or mode.lower() not in ("fan_in", "fan_out"):
        raise ValueError(f"mode must be 'fan_in' or 'fan_out', got {mode!r}")
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    return fan_in if mode.lower() == "fan_in" else fan_out


def _fill_uniform(tensor, a: float, b: float, generator):
    arr = _array(tensor)
    arr[...] = _rng(generator).uniform(a, b, size=arr.shape)
    return tensor


def _fill_normal(tensor, mean: float, std: float, generator):
    arr = _array(tensor)
    arr[...] = _rng(generator).normal(mean, std, size=arr.shape)
    return tensor


def uniform_(tensor, a: float = 0.0, b: float = 1.0, generator=None):
    r"""Fill with :math:`\mathcal{U}(a, b)`."""
    a, b = _real("a", a), _real("b", b)
    if a > b:
        raise ValueError(f"uniform_ expects a <= b, got a={a!r}, b={b!r}")
    return _fill_uniform(tensor, a, b, generator)


def normal_(tensor, mean: float = 0.0, std: float = 1.0, generator=None):
    r"""Fill with :math:`\mathcal{N}(\text{mean}, \text{std}^2)`."""
    mean, std = _real("mean", mean), _real("std", std)
    if std < 0:
        raise ValueError(f"std must be >= 0, got {std!r}")
    return _fill_normal(tensor, mean, std, generator)


def constant_(tensor, val: float):
    """Fill with ``val``."""
    _array(tensor)[...] = _real("val", val)
    return tensor


def ones_(tensor):
    """Fill with 1."""
    return constant_(tensor, 1.0)


def zeros_(tensor):
    """Fill with 0 (symmetric: units of a layer initialized alike stay alike)."""
    return constant_(tensor, 0.0)


def xavier_uniform_(tensor, gain: float = 1.0, generator=None):
    r"""Glorot uniform: :math:`\mathcal{U}(-a, a)`, :math:`a = \text{gain}\sqrt{6 /
    (\text{fan\_in} + \text{fan\_out})}`."""
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    std = _real("gain", gain) * math.sqrt(2.0 / float(fan_in + fan_out))
    a = math.sqrt(3.0) * std
    return _fill_uniform(tensor, -a, a, generator)


def xavier_normal_(tensor, gain: float = 1.0, generator=None):
    r"""Glorot normal: :math:`\mathcal{N}(0, \sigma^2)`, :math:`\sigma = \text{gain}\sqrt{2 /
    (\text{fan\_in} + \text{fan\_out})}`."""
    fan_in, fan_out = _calculate_fan_in_and_fan_out(tensor)
    std = _real("gain", gain) * math.sqrt(2.0 / float(fan_in + fan_out))
    return _fill_normal(tensor, 0.0, std, generator)


def kaiming_uniform_(tensor, a: float = 0, mode: str = "fan_in",
                     nonlinearity: str = "leaky_relu", generator=None):
    r"""He uniform: :math:`\mathcal{U}(-b, b)`, :math:`b = \text{gain}\sqrt{3 / \text{fan}}`.

    ``fan`` is fan_in (``mode="fan_in"``, preserves the forward variance) or fan_out
    (preserves the backward variance); ``gain = calculate_gain(nonlinearity, a)`` where ``a``
    is the negative slope of a leaky ReLU. torch's ``nn.Linear`` initializes its weight with
    ``kaiming_uniform_(w, a=math.sqrt(5))``.
    """
    arr = _array(tensor)
    if 0 in arr.shape:
        warnings.warn("Initializing zero-element tensors is a no-op", stacklevel=2)
        return tensor
    fan = _calculate_correct_fan(tensor, mode)
    bound = math.sqrt(3.0) * calculate_gain(nonlinearity, a) / math.sqrt(fan)
    return _fill_uniform(tensor, -bound, bound, generator)


def kaiming_normal_(tensor, a: float = 0, mode: str = "fan_in",
                    nonlinearity: str = "leaky_relu", generator=None):
    r"""He normal: :math:`\mathcal{N}(0, \sigma^2)`, :math:`\sigma = \text{gain} /
    \sqrt{\text{fan}}` (see :func:`kaiming_uniform_` for ``a``, ``mode``, ``nonlinearity``)."""
    arr = _array(tensor)
    if 0 in arr.shape:
        warnings.warn("Initializing zero-element tensors is a no-op", stacklevel=2)
        return tensor
    fan = _calculate_correct_fan(tensor, mode)
    std = calculate_gain(nonlinearity, a) / math.sqrt(fan)
    return _fill_normal(tensor, 0.0, std, generator)
