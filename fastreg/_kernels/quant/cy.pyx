# Cython backend of the quantized linear layers: thin typed wrappers around quant.h (int8 weights
# with 7-bit dynamic activations, bf16 weights with float32 activations; AVX2 / AVX-512 VNNI /
# portable C paths, chosen by the compiler flags; `portable=1` forces the C path, for tests).
#
# Shapes (C-contiguous, checked by fastreg/_kernels/quant/__init__.py):
#   x (N, K) float32, xq (N, Kp) uint8, sx (N,) float32, zp (N,) int32
#   int8 packed (Mp * Kp,) int8, sw (M,) float32, cs (Mp,) int32, bias (M,) float32
#   bf16 packed (Mp * Kp,) uint16;  out (N, M) float32, acc (N, M) int32 or None
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport int8_t, int32_t, uint8_t, uint16_t

cimport numpy as cnp

from fastreg._kernels.runtime import get_num_threads

include "../common/fast_io.pxi"

cnp.import_array()

cdef extern from "quant.h" nogil:
    int fr_q8_simd_level()
    double fr_q_chain_par_min_macs
    int fr_bf16_simd_level()
    void fr_q8_quantize_rows(int n, int k, int kp, const float *x, uint8_t *xq, float *sx,
                             int32_t *zp, int portable)
    void fr_q8_pack(int m, int k, int kp, const int8_t *wq, int8_t *packed, int32_t *cs)
    void fr_q8_linear(int n, int m, int kp, const uint8_t *xq, const float *sx,
                      const int32_t *zp, const int8_t *packed, const float *sw,
                      const int32_t *cs, const float *bias, float *out, int32_t *acc_out,
                      int act, float slope, int nthreads, int portable)
    int fr_q8_chain(int n, int L, const int *dims, const int *kps,
                    const int8_t *const *packed, const float *const *sw,
                    const int32_t *const *cs, const float *const *bias, const int *acts,
                    const float *slopes, const float *x, float *out, int nthreads,
                    double par_min_macs, int portable)
    void fr_bf16_pack(int m, int k, int kp, const uint16_t *wb, uint16_t *packed)
    int fr_bf16_linear(int n, int m, int k, int kp, const float *x, const uint16_t *packed,
                        const float *bias, float *out, int act, float slope, int nthreads,
                        int portable)


def set_chain_parallel_min_macs(double macs):
    """Multiply-adds of a call (all layers, all rows) from which a Q8Chain built with
    ``parallel_min_macs < 0`` runs on several threads (default 2.5e5: batch 1 of the 784-512-256-10
    MLP, 535K, splits; fastreg.inference.set_split_small_batches sets it); read at every call; returns the previous value."""
    global fr_q_chain_par_min_macs
    cdef double old = fr_q_chain_par_min_macs
    fr_q_chain_par_min_macs = macs
    return old


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


cdef class Q8Chain:
    """Consecutive int8 linear layers run back to back in one C call (fr_q8_chain): each layer
    quantizes its input rows, runs the int8 GEMM and its epilogue; one OpenMP region for the
    whole chain. Built from layers' (packed, sw, cs, bias, kp, act, slope) as made by
    ``fastreg._quant.pack_int8`` (validated by the caller; K_{l+1} = M_l); the same bits as the
    layers run one by one through q8_linear. ``run(x, out)`` is the trusted call; ``fast(x,
    out)`` checks its input cheaply and returns None for anything it does not take (the
    caller's slow path then coerces or raises). Intermediates live in a per-call scratch, so one
    chain may be called from several threads at once. ``portable=1`` forces the C path;
    ``parallel_min_macs``: the multiply-adds of a call (all layers, all rows) from which it runs
    on ``get_num_threads()`` threads (< 0: the kernel's default, FR_Q_CHAIN_PAR_MIN_MACS)."""
    cdef readonly int n_layers
    cdef readonly Py_ssize_t in_features, out_features
    cdef readonly int portable
    cdef readonly double parallel_min_macs
    cdef list _keep
    cdef int *dims
    cdef int *kps
    cdef int *acts
    cdef float *slopes
    cdef const int8_t **packed
    cdef const float **sw
    cdef const int32_t **cs
    cdef const float **bias

    def __cinit__(self):
        self.dims = NULL
        self.kps = NULL
        self.acts = NULL
        self.slopes = NULL
        self.packed = NULL
        self.sw = NULL
        self.cs = NULL
        self.bias = NULL

    def __init__(self, layers, int portable=0, double parallel_min_macs=-1.0):
        cdef int L = len(layers), l
        if L < 1:
            raise ValueError("Q8Chain needs at least one layer")
        self.n_layers = L
        self.portable = portable
        self.parallel_min_macs = parallel_min_macs
        self.dims = <int*>PyMem_Malloc((L + 1) * sizeof(int))
        self.kps = <int*>PyMem_Malloc(L * sizeof(int))
        self.acts = <int*>PyMem_Malloc(L * sizeof(int))
        self.slopes = <float*>PyMem_Malloc(L * sizeof(float))
        self.packed = <const int8_t**>PyMem_Malloc(L * sizeof(void*))
        self.sw = <const float**>PyMem_Malloc(L * sizeof(void*))
        self.cs = <const int32_t**>PyMem_Malloc(L * sizeof(void*))
        self.bias = <const float**>PyMem_Malloc(L * sizeof(void*))
        if (not self.dims or not self.kps or not self.acts or not self.slopes
                or not self.packed or not self.sw or not self.cs or not self.bias):
            raise MemoryError()
        self._keep = list(layers)
        for l in range(L):
            k, m, packed, sw, cs, bias, kp, act, slope = layers[l]
            if l == 0:
                self.dims[0] = k
            elif k != self.dims[l]:
                raise ValueError(f"Q8Chain: layer {l} takes {k} features, layer {l - 1} "
                                 f"gives {self.dims[l]}")
            self.dims[l + 1] = m
            self.kps[l] = kp
            self.packed[l] = <const int8_t*>_ptr(packed)
            self.sw[l] = <const float*>_ptr(sw)
            self.cs[l] = <const int32_t*>_ptr(cs)
            self.bias[l] = <const float*>_ptr(bias)
            self.acts[l] = act
            self.slopes[l] = <float>slope
        self.in_features = self.dims[0]
        self.out_features = self.dims[L]

    def __dealloc__(self):
        PyMem_Free(self.dims)
        PyMem_Free(self.kps)
        PyMem_Free(self.acts)
        PyMem_Free(self.slopes)
        PyMem_Free(<void*>self.packed)
        PyMem_Free(<void*>self.sw)
        PyMem_Free(<void*>self.cs)
        PyMem_Free(<void*>self.bias)

    cdef int _run(self, int n, const float *px, float *pout) except -1:
        cdef int nt = get_num_threads()
        cdef int rc
        with nogil:
            rc = fr_q8_chain(n, self.n_layers, self.dims, self.kps, self.packed, self.sw,
                             self.cs, self.bias, self.acts, self.slopes, px, pout, nt,
                             self.parallel_min_macs, self.portable)
        if rc != 0:
            raise MemoryError("fastreg quant: could not allocate the int8 chain's scratch")
        return 0

    def run(self, x, out):
        """out[N, M_last] = the chain applied to x[N, K_0] (float32, both validated by the
        caller)."""
        self._run(x.shape[0], <const float*>_ptr(x), <float*>_ptr(out))
        return out

    def fast(self, x, out=None):
        """The chain's output for ``x``, or None if ``x`` (or ``out``) is not exactly what the
        kernel takes: a C-contiguous, aligned, native-order float32 ndarray of shape (N, K) with
        N >= 1 or (K,); ``out`` None or such an array of the output's shape that does not
        overlap ``x``. Then the output is a fresh array (or ``out``)."""
        cdef cnp.npy_intp n = 0
        cdef cnp.ndarray o = _fast_io(x, out, cnp.NPY_FLOAT32, self.in_features,
                                      self.out_features, &n)
        if o is None:
            return None
        self._run(<int>n, <const float*>cnp.PyArray_DATA(<cnp.ndarray>x),
                  <float*>cnp.PyArray_DATA(o))
        return o

    def __reduce__(self):
        raise TypeError("Q8Chain is not picklable: pickle the Predictor that holds it")
