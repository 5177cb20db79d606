"""bf16 rounding in NumPy, and the bf16 linear products of the backends without a bf16 kernel.

``round_bf16(a)`` is the reference rounding: each float32 to the nearest bfloat16 (1 sign, 8
exponent, 7 mantissa bits), ties to even, returned as float32 with the low 16 bits zero --
torch's ``c10::BFloat16`` conversion (``t.to(torch.bfloat16).float()``). NaN stays NaN, +-inf
stays inf, finite values past the largest bf16 (3.39e38) round to inf.

The Cython backend has bf16 GEMMs that round while packing (``bf16.h``). The numba and BLAS
backends get :func:`fallback`: round copies of the operands, run the backend's own float32
kernel, then round the result -- the same numbers (the float32 accumulation order aside), at the
cost of the copies. Same positional signatures as ``cy.linear_*_bf16``.
"""
from __future__ import annotations

import numpy as np

from .codes import ACT_IDENTITY

_HALF = np.uint32(0x7FFF)
_ONE = np.uint32(1)
_HI = np.uint32(0xFFFF0000)
_QUIET = np.uint32(0x00400000)


def round_bf16(a: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """float32 ``a`` rounded to the nearest bf16 (ties to even), as float32 (``out`` may be
    ``a``)."""
    a = np.ascontiguousarray(a, dtype=np.float32)
    b = a.view(np.uint32)
    r = (b + (_HALF + ((b >> 16) & _ONE))) & _HI     # uint32 arithmetic wraps: -inf stays -inf
    nan = np.isnan(a)
    if nan.any():
        r[nan] = (b[nan] | _QUIET) & _HI
    if out is None:
        return r.view(np.float32)
    out.view(np.uint32)[...] = r
    return out


def _act(out: np.ndarray, act: int, slope: float) -> None:
    if act != ACT_IDENTITY:
        from .blas import epilogue
        epilogue(out, None, act, slope)


def fallback(f32_forward, f32_backward_input, f32_backward_weight):
    """The three bf16 products from a backend's float32 kernels (rounded copies in, result
    rounded out)."""

    def linear_forward_bf16(x, weight, bias, out, act, slope, round_out):
        b = None if bias is None else round_bf16(bias)
        f32_forward(round_bf16(x), round_bf16(weight), b, out, ACT_IDENTITY, 0.0)
        if round_out:
            round_bf16(out, out=out)
        _act(out, act, slope)
        return out

    def linear_backward_input_bf16(dy, weight, dx, round_out):
        f32_backward_input(round_bf16(dy), round_bf16(weight), dx)
        if round_out:
            round_bf16(dx, out=dx)
        return dx

    def linear_backward_weight_bf16(dy, x, dweight, dbias, accumulate, round_out):
        if not (accumulate and round_out):
            f32_backward_weight(round_bf16(dy), round_bf16(x), dweight, dbias, accumulate)
            if round_out:
                round_bf16(dweight, out=dweight)
                if dbias is not None:
                    round_bf16(dbias, out=dbias)
            return
        # the product is rounded once, then accumulated (torch: the bf16 grad cast to float32
        # and added to .grad)
        dw = np.empty_like(dweight)
        db = None if dbias is None else np.empty_like(dbias)
        f32_backward_weight(round_bf16(dy), round_bf16(x), dw, db, False)
        dweight += round_bf16(dw, out=dw)
        if dbias is not None:
            dbias += round_bf16(db, out=db)

    return linear_forward_bf16, linear_backward_input_bf16, linear_backward_weight_bf16
