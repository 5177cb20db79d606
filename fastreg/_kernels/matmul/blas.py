"""BLAS backend of the linear-layer products: NumPy's matmul (OpenBLAS in NumPy's wheels) plus a
NumPy epilogue. The peer the own kernels are measured against, and a fallback "auto" can pick.

Same functions and positional signatures as ``_matmul_numba`` / ``_matmul_cy``; arguments are
already validated by :mod:`fastreg._kernels.matmul`.
"""
from __future__ import annotations

import numpy as np

from .codes import ACT_IDENTITY, ACT_LEAKY_RELU, ACT_RELU, ACT_SIGMOID, ACT_TANH


def epilogue(out: np.ndarray, bias, act: int, slope: float) -> None:
    """out = act(out + bias), in place (a second pass over out, unlike the fused kernels)."""
    if bias is not None:
        out += bias
    if act == ACT_RELU:
        np.maximum(out, 0, out=out)
    elif act == ACT_LEAKY_RELU:
        np.multiply(out, out.dtype.type(slope), out=out, where=out < 0)
    elif act == ACT_SIGMOID:
        with np.errstate(over="ignore"):  # exp(-v) -> inf gives sigmoid 0, as it should
            np.negative(out, out=out)
            np.exp(out, out=out)
            out += 1
            np.reciprocal(out, out=out)
    elif act == ACT_TANH:
        np.tanh(out, out=out)
    elif act != ACT_IDENTITY:
        raise ValueError(f"unknown activation code {act}")


def linear_forward(x, weight, bias, out, act, slope):
    """out[N, M] = act(x[N, K] @ weight[M, K].T + bias[M])."""
    np.matmul(x, weight.T, out=out)
    epilogue(out, bias, act, slope)
    return out


def linear_backward_input(dy, weight, dx):
    """dx[N, K] = dy[N, M] @ weight[M, K] (overwrites dx)."""
    np.matmul(dy, weight, out=dx)
    return dx


def linear_backward_weight(dy, x, dweight, dbias, accumulate):
    """dweight[M, K] (+)= dy.T @ x; dbias[M] (+)= dy.sum(0)."""
    if accumulate:
        dweight += dy.T @ x
        if dbias is not None:
            dbias += dy.sum(axis=0)
    else:
        np.matmul(dy.T, x, out=dweight)
        if dbias is not None:
            np.sum(dy, axis=0, out=dbias)
