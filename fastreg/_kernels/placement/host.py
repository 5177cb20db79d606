"""Host placement: NumPy arrays in main memory (see the package docstring for the contract)."""
from __future__ import annotations

import numpy as np


class Host:
    name = "cpu"
    is_device = False

    @staticmethod
    def owns(a) -> bool:
        return isinstance(a, np.ndarray)

    @staticmethod
    def empty(shape, dtype) -> np.ndarray:
        return np.empty(shape, dtype=dtype)

    @staticmethod
    def zeros(shape, dtype) -> np.ndarray:
        return np.zeros(shape, dtype=dtype)

    @staticmethod
    def fill(a, value):
        a.fill(value)
        return a

    @staticmethod
    def scale(x, out, alpha):
        np.multiply(x, x.dtype.type(alpha), out=out)
        return out

    @staticmethod
    def add_(out, a, alpha=1.0):
        out += out.dtype.type(alpha) * a
        return out

    @staticmethod
    def subtract(a, b, out):
        np.subtract(a, b, out=out)
        return out

    @staticmethod
    def column_sum(a, out, accumulate=False):
        s = a.sum(axis=0, dtype=np.float64)
        if accumulate:
            s += out
        out[...] = s
        return out

    @staticmethod
    def sum_squares(a) -> float:
        d = a.reshape(-1).astype(np.float64, copy=False)
        return float(np.dot(d, d))

    @staticmethod
    def sum_abs(a) -> float:
        return float(np.abs(a).sum(dtype=np.float64))

    @staticmethod
    def to_host(a) -> np.ndarray:
        if isinstance(a, np.ndarray):
            return a
        return a.copy_to_host()     # a device array handed to the host side

    put = to_host

    @staticmethod
    def copy_into(dst, src) -> None:
        if isinstance(src, np.ndarray) or not hasattr(src, "copy_to_host"):
            dst[...] = np.asarray(src).astype(dst.dtype, copy=False)
        elif src.dtype == dst.dtype and dst.flags.c_contiguous:
            src.copy_to_host(dst)
        else:
            dst[...] = src.copy_to_host()

    @staticmethod
    def copy(a) -> np.ndarray:
        return Host.to_host(a).copy() if isinstance(a, np.ndarray) else a.copy_to_host()

    @staticmethod
    def may_share_memory(a, b) -> bool:
        return np.may_share_memory(a, b)

    @staticmethod
    def is_contiguous(a) -> bool:
        return a.flags.c_contiguous

    @staticmethod
    def contiguous(a, what: str):
        return a if a.flags.c_contiguous else np.ascontiguousarray(a)

    @staticmethod
    def accept(a, what: str):
        if isinstance(a, np.ndarray) or not hasattr(a, "copy_to_host"):
            return a
        raise ValueError(f"{what} is a CUDA device array but this runs on the CPU; pass a host "
                         "array (fastreg.cuda.to_host) or move the module with .to('cuda')")

    def __repr__(self) -> str:
        return "placement('cpu')"


HOST = Host()
