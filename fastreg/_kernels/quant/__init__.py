r"""Quantized linear layers: int8 weights with dynamic activation quantization, bf16 weights.

Shapes: x (N, K) float32, W (M, K), b (M,), out (N, M) float32; all C-contiguous.

**int8** (the calibration-free scheme of ONNX Runtime's ``quantize_dynamic``, per channel):

* weights, once: per output channel j, symmetric,
  :math:`s^w_j = \max_k |W_{jk}| / 127`, :math:`q^w_{jk} = \mathrm{clip}(\mathrm{rint}(W_{jk}/s^w_j),
  -127, 127)` (an all-zero row gets :math:`s^w_j = 1`);
* activations, every call, per input row i, asymmetric with a zero point, **7-bit**:
  :math:`lo = \min(0, \min_k x_{ik})`, :math:`hi = \max(0, \max_k x_{ik})`,
  :math:`s^x_i = (hi - lo)/127`, :math:`z_i = \mathrm{clip}(\mathrm{rint}(-lo/s^x_i), 0, 127)`,
  :math:`q^x_{ik} = \mathrm{clip}(\mathrm{rint}(x_{ik}/s^x_i) + z_i, 0, 127)` (division as a
  multiplication by the float32 reciprocal; rint rounds half to even);
* :math:`acc_{ij} = \sum_k q^x_{ik} q^w_{jk}` in int32 (exact), then the epilogue
  :math:`y_{ij} = \mathrm{act}((acc_{ij} - z_i c_j)\, s^x_i s^w_j + b_j)` with
  :math:`c_j = \sum_k q^w_{jk}`.

ORT's dynamic quantization uses 8-bit per-tensor activations (DynamicQuantizeLinear); here they
are 7-bit and per row: AVX2's ``vpmaddubsw`` sums two u8 x s8 products into a saturating int16,
and with :math:`q^x \le 127`, :math:`|q^w| \le 127` a pair is at most 32258 < 32767 -- it can
never saturate, so the AVX2, AVX-512 VNNI and portable paths produce the same accumulators bit
for bit. Per-row scales give each sample its own range (at batch 1 the two schemes coincide
up to the 7th bit). K is limited to :data:`MAX_K_INT8` so that :math:`acc - z c` fits int32.

**bf16**: :math:`W` rounded once to bfloat16 (round to nearest even from float32; stored as the
upper 16 bits), widened on the fly in the inner loop; float32 activations and accumulation.

The kernels are Cython only (quant.h; no numba twin): :func:`backend` raises ImportError with a
clear message when the extension is not built.
"""
from __future__ import annotations

import numpy as np

__all__ = [
    "BF16_K_ALIGN",
    "INT8_K_ALIGN",
    "MAX_K_INT8",
    "backend",
    "bf16_to_float32",
    "pack_bf16",
    "pack_int8",
    "quantize_int8",
    "to_bf16",
]

#: K is padded to a multiple of these in the packed weights (one SIMD chunk of the kernels).
INT8_K_ALIGN = 32
BF16_K_ALIGN = 8
#: Largest K of an int8 layer: 2 * 127 * 127 * K must fit in int32.
MAX_K_INT8 = 65536


def backend():
    """The compiled kernels (``fastreg._kernels.quant.cy``), or ImportError saying how to get
    them."""
    try:
        from . import cy
    except ImportError as exc:
        raise ImportError("quantized inference (weights='int8'/'bf16') needs fastreg's compiled "
                          "Cython kernels (fastreg._kernels.quant.cy), which are not built; "
                          "reinstall fastreg with a C compiler") from exc
    return cy


def _round_up(n: int, a: int) -> int:
    return (n + a - 1) // a * a


def quantize_int8(W: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(q (M, K) int8, s (M,) float32): per-row symmetric quantization, ``W ~ s[:, None] * q``.

    :math:`s_j = \\max_k |W_{jk}|/127` (rounded to float32; 1 for an all-zero row),
    :math:`q_{jk} = \\mathrm{clip}(\\mathrm{rint}(W_{jk}/s_j), -127, 127)`. W must be finite."""
    W = np.asarray(W, dtype=np.float64)
    amax = np.max(np.abs(W), axis=1) if W.shape[1] else np.zeros(W.shape[0])
    s = (amax / 127.0).astype(np.float32)
    s[s == 0] = 1.0                 # (also a max below float32's range: the row is ~0)
    q = np.clip(np.rint(W / s.astype(np.float64)[:, None]), -127, 127).astype(np.int8)
    return q, s


def to_bf16(W: np.ndarray) -> np.ndarray:
    """The bfloat16 bits (uint16) of float32(W), rounded to nearest, ties to even (NaN stays a
    quiet NaN; values beyond bf16's range round to +-inf, as torch's ``.to(torch.bfloat16)``)."""
    u = np.ascontiguousarray(W, dtype=np.float32).view(np.uint32)
    nan = (u & 0x7FFFFFFF) > 0x7F800000
    r = ((u + 0x7FFF + ((u >> 16) & 1)) >> 16).astype(np.uint16)
    r[nan] = ((u[nan] >> 16) | 0x40).astype(np.uint16)
    return r


def bf16_to_float32(h: np.ndarray) -> np.ndarray:
    """The float32 values of bfloat16 bits (exact)."""
    return (np.asarray(h, dtype=np.uint16).astype(np.uint32) << 16).view(np.float32)


def pack_int8(q: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """(packed int8 weights, column sums c_j (Mp,) int32, Kp) in the kernels' blocked layout
    (see quant.h: M padded to 4, K to :data:`INT8_K_ALIGN`, 4 rows interleaved per chunk)."""
    q = np.ascontiguousarray(q, dtype=np.int8)
    M, K = q.shape
    mp, kp = _round_up(M, 4), _round_up(max(K, 1), INT8_K_ALIGN)
    packed = np.empty(mp * kp, np.int8)
    cs = np.empty(mp, np.int32)
    backend().q8_pack(q, packed, cs)
    return packed, cs, kp


def pack_bf16(h: np.ndarray) -> tuple[np.ndarray, int]:
    """(packed bf16 weights, Kp) in the kernels' blocked layout (M padded to 4, K to
    :data:`BF16_K_ALIGN`)."""
    h = np.ascontiguousarray(h, dtype=np.uint16)
    M, K = h.shape
    mp, kp = _round_up(M, 4), _round_up(max(K, 1), BF16_K_ALIGN)
    packed = np.empty(mp * kp, np.uint16)
    backend().bf16_pack(h, packed, mp)
    return packed, kp
