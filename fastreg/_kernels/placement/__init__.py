"""The device seam: where arrays live, and the array utilities ``nn``, ``optim`` and the losses need.

A *placement* is an object with one implementation per place (``HOST``: NumPy arrays;
:func:`cuda`: numba.cuda device arrays). Code above ``fastreg._kernels`` never asks "is this a
CUDA array?": it takes the placement of its data once (:func:`of`, :func:`for_device`) and calls
its methods, which have the same meaning everywhere:

================================  ===========================================================
``owns(a)``                       ``a`` lives here (an ndarray for HOST, a device array for CUDA)
``empty(shape, dtype)``           uninitialized array here; ``zeros`` zero-filled
``fill(a, value)``                every element of ``a`` = ``value``
``scale(x, out, alpha)``          ``out = alpha * x`` in the arrays' dtype (``out`` may be ``x``)
``add_(out, a, alpha)``           ``out += alpha * a`` in the arrays' dtype
``subtract(a, b, out)``           ``out = a - b``
``column_sum(a, out, acc)``       ``out[j] (+)= sum_i a[i, j]``, float64 sums rounded once
``sum_squares(a)``, ``sum_abs``   ``sum(a**2)``, ``sum(|a|)`` in float64, as a Python float
``put(a)``                        ``a`` (from anywhere) as an array here (no copy if already here)
``copy_into(dst, src)``           ``dst[...] = src`` (``src`` from anywhere; cast for host src)
``copy(a)``                       a new array here equal to ``a``
``to_host(a)``                    ``a`` as a host ndarray (no copy if already there)
``may_share_memory(a, b)``        conservative overlap test for two arrays here
``is_contiguous(a)``              C order, no gaps
``contiguous(a, what)``           ``a`` C-contiguous (HOST copies; CUDA raises, naming ``what``)
``accept(a, what)``               an array handed in (a gradient, a target) for use here: CUDA
                                  copies a host array in; HOST refuses a device array, naming it
================================  ===========================================================

The methods trust their arguments (same shape and dtype, C-contiguous, here): the checked
public versions of the arithmetic ones are ``fastreg._kernels.elementwise.fill`` etc. The CUDA
placement imports numba only when it is first asked for.
"""
from __future__ import annotations

import numpy as np

from ..runtime.cuda import is_device_array
from .host import HOST, Host

__all__ = ["HOST", "Host", "cuda", "for_device", "of", "of_arrays"]

_cuda = []


def cuda():
    """The CUDA placement (imports numba.cuda; raises RuntimeError without a usable GPU)."""
    if not _cuda:
        from ..runtime import cuda as runtime
        runtime.require()
        from .device import CUDA
        _cuda.append(CUDA)
    return _cuda[0]


def for_device(device: str):
    """The placement of a device name already checked ("cpu" or "cuda")."""
    return HOST if device == "cpu" else cuda()


def of(a):
    """The placement of array ``a``, or None if ``a`` is neither a host nor a device array."""
    if isinstance(a, np.ndarray):
        return HOST
    if is_device_array(a):
        return cuda()
    return None


def of_arrays(**arrays):
    """The placement shared by the named arrays (None entries ignored; HOST if all are None).

    A host / device mix is a ValueError: fastreg never copies between them behind the caller's
    back. A non-array is a TypeError naming it.
    """
    place = None
    first = None
    for name, a in arrays.items():
        if a is None:
            continue
        p = of(a)
        if p is None:
            raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
        if place is None:
            place, first = p, name
        elif p is not place:
            dev, host = (name, first) if p is not HOST else (first, name)
            raise ValueError(f"{dev} is a CUDA device array but {host} is a host "
                             f"numpy.ndarray; all arrays of one call must be in the same place "
                             f"(use fastreg.cuda.to_device(a) or a.copy_to_host())")
    return HOST if place is None else place
