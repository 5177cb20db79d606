"""Argument checks, written once: every error names the argument and the offending value.

Everything a user passes is checked here, once, at the public edge (kernel functions, layer and
optimizer constructors, the data and training helpers); code below the edge trusts it.

Scalars (each returns the normalized value):

====================================  ======================================================
``check_scalar(name, v, low=, ...)``  a finite real (not a bool) in an interval
``check_int(name, v, low)``           an integer (not a bool) ``>= low``
``check_flag(name, v)``               a bool (or numpy bool)
``check_one_of(name, v, choices)``    one of a fixed set of values
====================================  ======================================================

The same rules as declarative specs, for tables of parameters (scikit-learn's
``_parameter_constraints`` is the model): ``Interval``, ``Int``, ``Flag``, ``OneOf``; a spec is
called as ``spec(name, value)`` and :func:`check_all` applies a table to a dict of values.

Arrays: ``float_dtype``, ``check_array`` (dtype, shape, ndim, contiguity, writeable; host
ndarrays and CUDA device arrays), ``on_device`` (all arrays of a call in one place),
``may_share_memory`` / ``same_memory`` / ``no_overlap``.
"""
from __future__ import annotations

import math

import numpy as np

from ._config import FLOAT_DTYPES
from ._kernels.runtime.cuda import is_device_array


def _is_array(a) -> bool:
    """A host ndarray or a CUDA device array (the kernels run where the data is)."""
    return isinstance(a, np.ndarray) or is_device_array(a)


def float_dtype(name: str, a) -> np.dtype:
    """The dtype of ``a`` if it is a float32/float64 array, else a TypeError naming ``name``.

    ``a`` may be a numpy.ndarray or a CUDA device array (see fastreg/_kernels/runtime/cuda.py).
    """
    if not _is_array(a):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if a.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must have dtype float32 or float64, got {a.dtype}")
    return a.dtype


def check_array(name: str, a, *, dtype=None, shape=None, ndim=None, writeable=False,
                allow_none=False):
    """Check one array argument and return it.

    dtype: required dtype (TypeError otherwise). shape: required shape, a tuple whose entries may be
    None for "any". ndim: required number of dimensions. writeable: the kernel writes into it.
    Every array must be C-contiguous: the kernels index flat memory. CUDA device arrays are
    accepted as well (``on_device`` then tells the caller to dispatch to the CUDA backend).
    """
    if a is None:
        if allow_none:
            return None
        raise TypeError(f"{name} must be a numpy.ndarray, got None")
    host = isinstance(a, np.ndarray)
    if not host and not is_device_array(a):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if dtype is not None and a.dtype != np.dtype(dtype):
        raise TypeError(f"{name} must have dtype {np.dtype(dtype)}, got {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-dimensional, got shape {a.shape}")
    if shape is not None and (
            a.ndim != len(shape) or any(s is not None and s != d for s, d in zip(shape, a.shape))):
        want = "(" + ", ".join("*" if s is None else str(s) for s in shape) + ")"
        raise ValueError(f"{name} must have shape {want}, got {a.shape}")
    if not host:                # a CUDA device array (its writeability is not tracked)
        if a.size and not a.is_c_contiguous():
            raise ValueError(f"{name} must be C-contiguous (copy it into a contiguous device "
                             "array)")
        return a
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (use numpy.ascontiguousarray)")
    if writeable and not a.flags.writeable:
        raise ValueError(f"{name} is read-only; the kernel writes its result into it")
    return a


def on_device(**arrays) -> bool:
    """True if the named arrays are CUDA device arrays, False if host ndarrays (None ignored).

    A mix is an error: fastreg never copies between host and device behind the caller's back.
    """
    host = [k for k, v in arrays.items() if v is not None and not is_device_array(v)]
    dev = [k for k, v in arrays.items() if v is not None and is_device_array(v)]
    if host and dev:
        raise ValueError(f"{dev[0]} is a CUDA device array but {host[0]} is a host "
                         f"numpy.ndarray; all arrays of one call must be in the same place "
                         f"(use fastreg.cuda.to_device(a) or a.copy_to_host())")
    return bool(dev)


def may_share_memory(a, b) -> bool:
    """``numpy.may_share_memory`` for host arrays, an address-range test for device arrays."""
    if a is None or b is None:
        return False
    da, db = is_device_array(a), is_device_array(b)
    if da != db:
        return False
    if da:
        from ._kernels.runtime.cuda import may_share_memory as dev_share
        return dev_share(a, b)
    return np.may_share_memory(a, b)


def same_memory(a, b) -> bool:
    """Do ``a`` and ``b`` start at the same address (in-place use of one buffer)?"""
    if is_device_array(a) and is_device_array(b):
        from ._kernels.runtime.cuda import device_pointer_range
        return device_pointer_range(a)[0] == device_pointer_range(b)[0]
    if isinstance(a, np.ndarray) and isinstance(b, np.ndarray):
        return a.ctypes.data == b.ctypes.data
    return False


def check_scalar(name: str, value, *, low=None, high=None, low_open=False, high_open=False,
                 integer=False, finite=True) -> float:
    """Check a real scalar (not a bool) lies in [low, high] (open ends on request) and is finite
    (``finite=False``: +-inf allowed, NaN never)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    if integer and not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    v = float(value)
    if math.isnan(v) if not finite else not math.isfinite(v):
        raise ValueError(f"{name} must be {'finite' if finite else 'a number (not NaN)'}, "
                         f"got {value!r}")
    lo_bad = low is not None and (v <= low if low_open else v < low)
    hi_bad = high is not None and (v >= high if high_open else v > high)
    if lo_bad or hi_bad:
        lb = "(" if low_open else "["
        rb = ")" if high_open else "]"
        lo = "-inf" if low is None else low
        hi = "inf" if high is None else high
        raise ValueError(f"{name} must be in {lb}{lo}, {hi}{rb}, got {value!r}")
    return int(value) if integer else v


def check_int(name: str, value, low: int) -> int:
    """An integer (not bool) >= ``low``, as a Python int."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value!r}")
    return int(value)


def no_overlap(**arrays) -> None:
    """Raise if two named output/input arrays share memory where the kernel forbids it."""
    items = [(k, v) for k, v in arrays.items() if v is not None]
    for i in range(len(items)):
        for j in range(i + 1, len(items)):
            if may_share_memory(items[i][1], items[j][1]):
                raise ValueError(f"{items[i][0]} and {items[j][0]} must not share memory")


def check_flag(name: str, value) -> bool:
    """A bool (Python or numpy), as a Python bool."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return bool(value)


def check_one_of(name: str, value, choices):
    """``value`` if it is one of ``choices`` (compared with ==, strings case-sensitively)."""
    if isinstance(value, bool) or value not in choices:
        raise ValueError(f"{name} must be one of {tuple(choices)}, got {value!r}")
    return value


# ---------------------------------------------------------------------------------------------
# Declarative specs
# ---------------------------------------------------------------------------------------------

class Interval:
    """A finite real in ``[low, high]`` (``closed`` says which ends belong: "both", "left",
    "right", "neither"; None is unbounded); ``allow_none`` admits None."""

    __slots__ = ("allow_none", "high", "high_open", "low", "low_open")

    def __init__(self, low=None, high=None, closed: str = "both", allow_none: bool = False):
        self.low, self.high = low, high
        self.low_open = closed in ("right", "neither")
        self.high_open = closed in ("left", "neither")
        self.allow_none = allow_none

    def __call__(self, name: str, value):
        if value is None and self.allow_none:
            return None
        return check_scalar(name, value, low=self.low, high=self.high, low_open=self.low_open,
                            high_open=self.high_open)


class Int:
    """An integer (not a bool) ``>= low``."""

    __slots__ = ("low",)

    def __init__(self, low: int = 0):
        self.low = low

    def __call__(self, name: str, value) -> int:
        return check_int(name, value, self.low)


class Flag:
    """A bool."""

    __slots__ = ()

    def __call__(self, name: str, value) -> bool:
        return check_flag(name, value)


class OneOf:
    """One of a fixed set of values."""

    __slots__ = ("choices",)

    def __init__(self, *choices):
        self.choices = choices

    def __call__(self, name: str, value):
        return check_one_of(name, value, self.choices)


def check_all(specs: dict, values: dict) -> dict:
    """Apply a table ``{name: spec}`` to ``values`` (a dict); return the normalized values.
    Names in ``values`` without a spec pass through unchanged."""
    out = dict(values)
    for name, spec in specs.items():
        if name in out:
            out[name] = spec(name, out[name])
    return out
