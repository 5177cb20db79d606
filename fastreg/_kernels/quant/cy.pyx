# Cython backend of the quantized linear layers: thin typed wrappers around quant.h (int8 weights
# with 7-bit dynamic activations, bf16 weights with float32 activations; AVX2 / AVX-512 VNNI /
# portable C paths, chosen by the compiler flags; `portable=1` forces the C path, for tests).
#
# Shapes (C-contiguous, checked by fastreg/_kernels/quant/__init__.py):
#   x (N, K) float32, xq (N, Kp) uint8, sx (N,) float32, zp (N,) int32
#   int8 packed (Mp * Kp,) int8, sw (M,) float32, cs (Mp,) int32, bias (M,) float32
#   bf16 packed (Mp * Kp,) uint16;  out (N, M) float32, acc (N, M) int32 or None
from libc.stdint cimport int8_t, int32_t, uint8_t, uint16_t

cimport numpy as cnp

from fastreg._kernels.runtime import get_num_threads

cnp.import_array()

cdef extern from "quant.h" nogil:
    int fr_q8_simd_level()
    int fr_bf16_simd_level()
    void fr_q8_quantize_rows(int n, int k, int kp, const float *x, uint8_t *xq, float *sx,
                             int32_t *zp, int portable)
    void fr_q8_pack(int m, int k, int kp, const int8_t *wq, int8_t *packed, int32_t *cs)
    void fr_q8_linear(int n, int m, int kp, const uint8_t *xq, const float *sx,
                      const int32_t *zp, const int8_t *packed, const float *sw,
                      const int32_t *cs, const float *bias, float *out, int32_t *acc_out,
                      int act, float slope, int nthreads, int portable)
    void fr_bf16_pack(int m, int k, int kp, const uint16_t *wb, uint16_t *packed)
    int fr_bf16_linear(int n, int m, int k, int kp, const float *x, const uint16_t *packed,
                        const float *bias, float *out, int act, float slope, int nthreads,
                        int portable)


cdef inline void* _ptr(object a):
    return NULL if a is None else cnp.PyArray_DATA(<cnp.ndarray>a)


def simd_levels():
    """(int8 path, bf16 path) this build runs: int8 2 = AVX-512 VNNI, 1 = AVX2, 0 = portable C;
    bf16 1 = AVX2 + FMA, 0 = portable C."""
    return fr_q8_simd_level(), fr_bf16_simd_level()


def q8_pack(wq, packed, cs):
    """packed <- wq (M, K) int8 in the blocked layout (Kp = packed.size // Mp); cs <- row sums."""
    cdef int m = wq.shape[0], k = wq.shape[1]
    cdef int mp = cs.shape[0]
    cdef int kp = packed.shape[0] // mp
    cdef const int8_t *pw = <const int8_t*>_ptr(wq)
    cdef int8_t *pp = <int8_t*>_ptr(packed)
    cdef int32_t *pc = <int32_t*>_ptr(cs)
    with nogil:
        fr_q8_pack(m, k, kp, pw, pp, pc)


def bf16_pack(wb, packed, int mp):
    """packed <- wb (M, K) uint16 (bf16 bits) in the blocked layout (Kp = packed.size // Mp)."""
    cdef int m = wb.shape[0], k = wb.shape[1]
    cdef int kp = packed.shape[0] // mp
    cdef const uint16_t *pw = <const uint16_t*>_ptr(wb)
    cdef uint16_t *pp = <uint16_t*>_ptr(packed)
    with nogil:
        fr_bf16_pack(m, k, kp, pw, pp)


def q8_quantize_rows(x, xq, sx, zp, int portable=0):
    """xq, sx, zp <- the 7-bit asymmetric quantization of each row of x (see quant.h)."""
    cdef int n = x.shape[0], k = x.shape[1], kp = xq.shape[1]
    cdef const float *px = <const float*>_ptr(x)
    cdef uint8_t *pq = <uint8_t*>_ptr(xq)
    cdef float *ps = <float*>_ptr(sx)
    cdef int32_t *pz = <int32_t*>_ptr(zp)
    with nogil:
        fr_q8_quantize_rows(n, k, kp, px, pq, ps, pz, portable)


def q8_linear(cnp.ndarray x, cnp.ndarray xq, cnp.ndarray sx, cnp.ndarray zp,
              cnp.ndarray packed, cnp.ndarray sw, cnp.ndarray cs, cnp.ndarray bias,
              cnp.ndarray out, int act, double slope, cnp.ndarray acc=None, int portable=0):
    """out = act(dequantized (quantize(x) @ Wq^T) + bias): quantizes x into the scratch
    xq, sx, zp, then runs the int8 GEMM (acc, when given, receives the int32 accumulators)."""
    cdef int n = x.shape[0], k = x.shape[1], kp = xq.shape[1], m = out.shape[1]
    cdef int nt = get_num_threads()
    cdef const float *px = <const float*>cnp.PyArray_DATA(x)
    cdef uint8_t *pq = <uint8_t*>cnp.PyArray_DATA(xq)
    cdef float *ps = <float*>cnp.PyArray_DATA(sx)
    cdef int32_t *pz = <int32_t*>cnp.PyArray_DATA(zp)
    cdef const int8_t *pw = <const int8_t*>cnp.PyArray_DATA(packed)
    cdef const float *psw = <const float*>cnp.PyArray_DATA(sw)
    cdef const int32_t *pcs = <const int32_t*>cnp.PyArray_DATA(cs)
    cdef const float *pb = <const float*>_ptr(bias)
    cdef float *po = <float*>cnp.PyArray_DATA(out)
    cdef int32_t *pa = <int32_t*>_ptr(acc)
    with nogil:
        fr_q8_quantize_rows(n, k, kp, px, pq, ps, pz, portable)
        fr_q8_linear(n, m, kp, pq, ps, pz, pw, psw, pcs, pb, po, pa, act, <float>slope, nt,
                     portable)
    return out


def bf16_linear(cnp.ndarray x, cnp.ndarray packed, cnp.ndarray bias, cnp.ndarray out, int kp,
                int act, double slope, int portable=0):
    """out = act(x @ W^T + bias) with W the packed bf16 weights."""
    cdef int n = x.shape[0], k = x.shape[1], m = out.shape[1]
    cdef int nt = get_num_threads()
    cdef const float *px = <const float*>cnp.PyArray_DATA(x)
    cdef const uint16_t *pw = <const uint16_t*>cnp.PyArray_DATA(packed)
    cdef const float *pb = <const float*>_ptr(bias)
    cdef float *po = <float*>cnp.PyArray_DATA(out)
    cdef int rc
    with nogil:
        rc = fr_bf16_linear(n, m, k, kp, px, pw, pb, po, act, <float>slope, nt, portable)
    if rc != 0:
        raise MemoryError("fastreg quant: could not allocate the bf16 widening scratch")
    return out
