"""CUDA placement: numba.cuda device arrays (see the package docstring for the contract).

Imported only through :func:`fastreg._kernels.placement.cuda`, after the CUDA runtime has been
found usable. The arithmetic runs the grid-stride kernels of ``elementwise/cuda.py``.
"""
from __future__ import annotations

import numpy as np

from ..elementwise import cuda as _k
from ..runtime import cuda as _rt


class Cuda:
    name = "cuda"
    is_device = True

    owns = staticmethod(_rt.is_device_array)
    empty = staticmethod(_rt.empty)

    @staticmethod
    def zeros(shape, dtype):
        out = _rt.empty(shape, dtype)
        _k.fill(out.reshape(-1) if out.ndim != 1 else out, 0.0)
        return out

    @staticmethod
    def fill(a, value):
        _k.fill(a, value)
        return a

    @staticmethod
    def scale(x, out, alpha):
        _k.scale(x, out, alpha)
        return out

    @staticmethod
    def add_(out, a, alpha=1.0):
        _k.add_(out, a, alpha)
        return out

    @staticmethod
    def subtract(a, b, out):
        _k.subtract(a, b, out)
        return out

    @staticmethod
    def column_sum(a, out, accumulate=False):
        _k.column_sum(a, out, bool(accumulate))
        return out

    sum_squares = staticmethod(_k.sum_squares)
    sum_abs = staticmethod(_k.sum_abs)
    to_host = staticmethod(_rt.to_host)
    copy_into = staticmethod(_rt.copy_into)
    may_share_memory = staticmethod(_rt.may_share_memory)

    @staticmethod
    def put(a, dtype=None):
        return a if _rt.is_device_array(a) else _rt.to_device(np.ascontiguousarray(a), dtype)

    @staticmethod
    def is_contiguous(a) -> bool:
        return a.is_c_contiguous()

    @staticmethod
    def contiguous(a, what: str):
        if a.size and not a.is_c_contiguous():
            raise ValueError(f"{what} must be a C-contiguous device array")
        return a

    accept = staticmethod(lambda a, what: Cuda.put(a))

    @staticmethod
    def copy(a):
        out = _rt.empty(a.shape, a.dtype)
        out.copy_to_device(a)
        return out

    def __repr__(self) -> str:
        return "placement('cuda')"


CUDA = Cuda()
