# Cython backend of the linear-layer products: thin typed wrappers around the blocked, packed,
# OpenMP-parallel GEMM in kernel.h (AVX-512 / AVX2 / scalar micro-kernel).
#
# Shapes (all C-contiguous, one float dtype, checked by fastreg/_kernels/matmul/__init__.py):
#   x (N, K), weight (M, K), bias (M,) or None, out (N, M)
#   dy (N, M), dx (N, K), dweight (M, K), dbias (M,) or None
# The three products are one GEMM C[m, n] (+)= A[m, k] @ B[k, n] read through strides:
#   forward          out = x @ weight.T   A = x  (K, 1)      B = weight.T (1, K)
#   backward_input   dx  = dy @ weight    A = dy (M, 1)      B = weight   (K, 1)
#   backward_weight  dW  = dy.T @ x       A = dy.T (1, M)    B = x        (K, 1), rowsum = dbias
#
# Pre-packed weights (inference): pack_weight(W) packs W once into the NR-wide panels the GEMM
# would pack from W.T on every call (kernel.h, fr_pack_weight); linear_forward_packed and
# LinearChain (a whole chain of linear layers in one call, intermediates in per-thread scratch)
# read them instead of packing.
cimport numpy as cnp
from cpython.mem cimport PyMem_Free, PyMem_Malloc

import numpy as np

from fastreg._kernels.runtime import get_num_threads

include "../common/fast_io.pxi"

cnp.import_array()

cdef extern from "kernel.h" nogil:
    int fr_gemm_f32(int m, int n, int k, const float *A, Py_ssize_t rsa, Py_ssize_t csa,
                    const float *B, Py_ssize_t rsb, Py_ssize_t csb, const float *Bpk,
                    float *C, Py_ssize_t ldc, int accumulate, const float *bias, int act,
                    float slope, float *rowsum, int nthreads)
    int fr_gemm_f64(int m, int n, int k, const double *A, Py_ssize_t rsa, Py_ssize_t csa,
                    const double *B, Py_ssize_t rsb, Py_ssize_t csb, const double *Bpk,
                    double *C, Py_ssize_t ldc, int accumulate, const double *bias, int act,
                    double slope, double *rowsum, int nthreads)
    int fr_gemm_ep_f32(int m, int n, int k, const float *A, Py_ssize_t rsa, Py_ssize_t csa,
                       const float *B, Py_ssize_t rsb, Py_ssize_t csb, const float *Bpk,
                       float *C, Py_ssize_t ldc, int accumulate, const float *bias, int act,
                       float slope, float *rowsum, const float *Y, Py_ssize_t ldy, int gcode,
                       float gparam, int nthreads)
    int fr_gemm_ep_f64(int m, int n, int k, const double *A, Py_ssize_t rsa, Py_ssize_t csa,
                       const double *B, Py_ssize_t rsb, Py_ssize_t csb, const double *Bpk,
                       double *C, Py_ssize_t ldc, int accumulate, const double *bias, int act,
                       double slope, double *rowsum, const double *Y, Py_ssize_t ldy,
                       int gcode, double gparam, int nthreads)
    size_t fr_packed_size_f32(int n, int k)
    size_t fr_packed_size_f64(int n, int k)
    void fr_pack_weight_f32(int n, int k, const float *W, float *Bp)
    void fr_pack_weight_f64(int n, int k, const double *W, double *Bp)
    int fr_chain_f32(int m, int nl, const int *dims, const float *const *Wp,
                     const float *const *bias, const int *act, const float *slope,
                     const float *x, float *out, int nthreads)
    int fr_chain_f64(int m, int nl, const int *dims, const double *const *Wp,
                     const double *const *bias, const int *act, const double *slope,
                     const double *x, double *out, int nthreads)
    double fr_chain_par_min_flops
    int fr_chain_parallel_f32(int m, int nl, const int *dims)
    int fr_chain_parallel_f64(int m, int nl, const int *dims)


cdef inline void* _ptr(object a):
    return NULL if a is None else cnp.PyArray_DATA(<cnp.ndarray>a)


cdef int _gemm(object dtype, int m, int n, int k, object A, Py_ssize_t rsa, Py_ssize_t csa,
               object B, Py_ssize_t rsb, Py_ssize_t csb, object C, Py_ssize_t ldc,
               int accumulate, object bias, int act, double slope, object rowsum,
               object Bpk=None, object Y=None, Py_ssize_t ldy=0, int gcode=0,
               double gparam=0.0) except -1:
    cdef void *pa = _ptr(A)
    cdef void *py = _ptr(Y)
    cdef void *pb = _ptr(B)
    cdef void *pbk = _ptr(Bpk)
    cdef void *pc = _ptr(C)
    cdef void *pbias = _ptr(bias)
    cdef void *prow = _ptr(rowsum)
    # fastreg's setting, not omp_get_max_threads(): another OpenMP user in the process (numba's
    # omp layer) may have changed this thread's OpenMP default.
    cdef int nt = get_num_threads()
    cdef bint is_f32 = dtype.itemsize == 4
    cdef int rc
    with nogil:
        if is_f32:
            rc = fr_gemm_ep_f32(m, n, k, <const float*>pa, rsa, csa, <const float*>pb, rsb, csb,
                                <const float*>pbk, <float*>pc, ldc, accumulate,
                                <const float*>pbias, act, <float>slope, <float*>prow,
                                <const float*>py, ldy, gcode, <float>gparam, nt)
        else:
            rc = fr_gemm_ep_f64(m, n, k, <const double*>pa, rsa, csa, <const double*>pb, rsb,
                                csb, <const double*>pbk, <double*>pc, ldc, accumulate,
                                <const double*>pbias, act, slope, <double*>prow,
                                <const double*>py, ldy, gcode, gparam, nt)
    if rc != 0:
        raise MemoryError("fastreg matmul: could not allocate the packing scratch")
    return 0


def linear_forward(x, weight, bias, out, int act, double slope):
    """out[N, M] = act(x[N, K] @ weight[M, K].T + bias[M]) (arguments already validated)."""
    cdef Py_ssize_t N = x.shape[0], K = x.shape[1], M = weight.shape[0]
    _gemm(x.dtype, N, M, K, x, K, 1, weight, 1, K, out, M, 0, bias, act, slope, None)
    return out


def linear_backward_input(dy, weight, dx):
    """dx[N, K] = dy[N, M] @ weight[M, K] (overwrites dx)."""
    cdef Py_ssize_t N = dy.shape[0], M = dy.shape[1], K = weight.shape[1]
    _gemm(dy.dtype, N, K, M, dy, M, 1, weight, K, 1, dx, K, 0, None, 0, 0.0, None)
    return dx


def linear_backward_input_act(dy, weight, dx, act_out, int code, double param):
    """dx[N, K] = act_grad(dy[N, M] @ weight[M, K], act_out[N, K]) in one GEMM: the epilogue
    of each final tile applies the activation's backward (kernel.h fr_act_grad; ``code`` an
    ACT_* or GRAD_RELU_DROPOUT, ``param`` the slope or the dropout scale); act_out (N, K)
    C-contiguous, apart from dx (validated by the caller)."""
    cdef Py_ssize_t N = dy.shape[0], M = dy.shape[1], K = weight.shape[1]
    _gemm(dy.dtype, N, K, M, dy, M, 1, weight, K, 1, dx, K, 0, None, 0, 0.0, None, None,
          act_out, K, code, param)
    return dx


def linear_backward_weight(dy, x, dweight, dbias, bint accumulate):
    """dweight[M, K] (+)= dy.T @ x; dbias[M] (+)= dy.sum(0), in the same pass over dy."""
    cdef Py_ssize_t N = dy.shape[0], M = dy.shape[1], K = x.shape[1]
    _gemm(dy.dtype, M, K, N, dy, 1, M, x, K, 1, dweight, K, accumulate, None, 0, 0.0, dbias)


# ---------------------------------------------------------------------------------------------
# bf16 autocast products (bf16.h): float32 arrays, operands rounded to bf16 while packed, float32
# accumulation; round_out rounds each result to bf16 once (before it is accumulated and before the
# activation), as torch's bf16 addmm / mm outputs. Same shapes and strides as the three above.
# ---------------------------------------------------------------------------------------------

cdef extern from "bf16.h" nogil:
    int fr_gemm_bf16(int m, int n, int k, const float *A, Py_ssize_t rsa, Py_ssize_t csa,
                     const float *B, Py_ssize_t rsb, Py_ssize_t csb, float *C, Py_ssize_t ldc,
                     int accumulate, const float *bias, int act, float slope, float *rowsum,
                     int round_out, int nthreads)


cdef int _gemm_bf16(int m, int n, int k, object A, Py_ssize_t rsa, Py_ssize_t csa,
                    object B, Py_ssize_t rsb, Py_ssize_t csb, object C, Py_ssize_t ldc,
                    int accumulate, object bias, int act, double slope, object rowsum,
                    int round_out) except -1:
    cdef const float *pa = <const float*>_ptr(A)
    cdef const float *pb = <const float*>_ptr(B)
    cdef float *pc = <float*>_ptr(C)
    cdef const float *pbias = <const float*>_ptr(bias)
    cdef float *prow = <float*>_ptr(rowsum)
    cdef int nt = get_num_threads()
    cdef int rc
    with nogil:
        rc = fr_gemm_bf16(m, n, k, pa, rsa, csa, pb, rsb, csb, pc, ldc, accumulate, pbias, act,
                          <float>slope, prow, round_out, nt)
    if rc != 0:
        raise MemoryError("fastreg matmul (bf16): could not allocate the packing scratch")
    return 0


def linear_forward_bf16(x, weight, bias, out, int act, double slope, bint round_out):
    """out = act(bf16(bf16(x) @ bf16(weight).T + bf16(bias))) (float32 arrays, validated)."""
    cdef Py_ssize_t N = x.shape[0], K = x.shape[1], M = weight.shape[0]
    _gemm_bf16(N, M, K, x, K, 1, weight, 1, K, out, M, 0, bias, act, slope, None, round_out)
    return out


def linear_backward_input_bf16(dy, weight, dx, bint round_out):
    """dx = bf16(bf16(dy) @ bf16(weight)) (overwrites dx)."""
    cdef Py_ssize_t N = dy.shape[0], M = dy.shape[1], K = weight.shape[1]
    _gemm_bf16(N, K, M, dy, M, 1, weight, K, 1, dx, K, 0, None, 0, 0.0, None, round_out)
    return dx


def linear_backward_weight_bf16(dy, x, dweight, dbias, bint accumulate, bint round_out):
    """dweight (+)= bf16(bf16(dy).T @ bf16(x)); dbias (+)= bf16(sum_n bf16(dy))."""
    cdef Py_ssize_t N = dy.shape[0], M = dy.shape[1], K = x.shape[1]
    _gemm_bf16(M, K, N, dy, 1, M, x, K, 1, dweight, K, accumulate, None, 0, 0.0, dbias,
               round_out)


def packed_size(dtype, Py_ssize_t M, Py_ssize_t K):
    """Elements of the packed form of an (M, K) weight of ``dtype`` (float32 or float64)."""
    return (fr_packed_size_f32(M, K) if np.dtype(dtype).itemsize == 4
            else fr_packed_size_f64(M, K))


def pack_weight(weight):
    """The packed form (1-D array) of weight[M, K] for ``x @ weight.T`` (argument validated)."""
    cdef Py_ssize_t M = weight.shape[0], K = weight.shape[1]
    cdef Py_ssize_t size = packed_size(weight.dtype, M, K)
    # 64-byte aligned (a view into a slightly larger buffer): NumPy only guarantees 16, and a
    # panel row (NR floats, two 32-byte vectors) split across cache lines costs the micro-kernel
    # ~5-10% (measured on the AVX2 machine, 64 x 784 x 512).
    cdef Py_ssize_t item = weight.dtype.itemsize
    buf = np.zeros(size + 64 // item, weight.dtype)
    cdef size_t addr = <size_t>cnp.PyArray_DATA(<cnp.ndarray>buf)
    cdef Py_ssize_t skip = <Py_ssize_t>((64 - addr % 64) % 64) // item
    cdef cnp.ndarray packed = buf[skip:skip + size]
    cdef void *pw = _ptr(weight)
    cdef void *pp = _ptr(packed)
    if weight.dtype.itemsize == 4:
        fr_pack_weight_f32(M, K, <const float*>pw, <float*>pp)
    else:
        fr_pack_weight_f64(M, K, <const double*>pw, <double*>pp)
    return packed


def linear_forward_packed(x, packed, Py_ssize_t M, bias, out, int act, double slope):
    """out[N, M] = act(x[N, K] @ W.T + bias[M]), W given by ``pack_weight(W)`` (validated)."""
    cdef Py_ssize_t N = x.shape[0], K = x.shape[1]
    _gemm(x.dtype, N, M, K, x, K, 1, None, 1, K, out, M, 0, bias, act, slope, None, packed)
    return out


#: Below this much work per call a chain keeps the GIL (a few us of compute).
cdef double _NOGIL_MIN_FLOPS = 2.0e4


def set_chain_parallel_min_flops(double flops):
    """FLOPs per row from which a batch <= 4 LinearChain call splits its layers across the threads
    on the split pool (default 2.5e5: the 784-512-256-10 MLP's 1.07 MFLOP splits;
    fastreg.inference.set_split_small_batches sets it); returns the previous value."""
    global fr_chain_par_min_flops
    cdef double old = fr_chain_par_min_flops
    fr_chain_par_min_flops = flops
    return old


cdef class LinearChain:
    """Linear layers run back to back in one call: h_{l+1} = act_l(h_l @ W_l.T + b_l).

    Built from validated float arrays of one dtype (weights[l] (M_l, K_l) with K_{l+1} = M_l,
    biases[l] (M_l,) or None); packs every weight once. ``run(x, out)`` is the trusted call;
    ``fast(x, out)`` checks its input cheaply and returns None for anything it does not take
    (the caller's slow path then coerces or raises). Intermediates live in the calling thread's
    C scratch, so one chain may be called from several threads at once.
    """
    cdef readonly int n_layers
    cdef readonly Py_ssize_t in_features, out_features
    cdef readonly object dtype
    cdef int type_num
    cdef bint is_f32
    cdef list _keep
    cdef int *dims
    cdef int *acts
    cdef void **packed
    cdef void **biases
    cdef double *slopes_d
    cdef float *slopes_f
    cdef double flops_per_row

    def __cinit__(self):
        self.dims = NULL
        self.acts = NULL
        self.packed = NULL
        self.biases = NULL
        self.slopes_d = NULL
        self.slopes_f = NULL

    def __init__(self, weights, biases, acts, slopes):
        cdef int L = len(weights), l
        if L < 1:
            raise ValueError("LinearChain needs at least one layer")
        self.n_layers = L
        self.dtype = weights[0].dtype
        self.type_num = cnp.PyArray_TYPE(<cnp.ndarray>weights[0])
        self.is_f32 = self.dtype.itemsize == 4
        self.dims = <int*>PyMem_Malloc((L + 1) * sizeof(int))
        self.acts = <int*>PyMem_Malloc(L * sizeof(int))
        self.packed = <void**>PyMem_Malloc(L * sizeof(void*))
        self.biases = <void**>PyMem_Malloc(L * sizeof(void*))
        self.slopes_d = <double*>PyMem_Malloc(L * sizeof(double))
        self.slopes_f = <float*>PyMem_Malloc(L * sizeof(float))
        if (not self.dims or not self.acts or not self.packed or not self.biases
                or not self.slopes_d or not self.slopes_f):
            raise MemoryError()
        self._keep = []
        self.dims[0] = weights[0].shape[1]
        for l in range(L):
            W = weights[l]
            p = pack_weight(W)
            b = biases[l]
            self._keep.append((p, b))
            self.dims[l + 1] = W.shape[0]
            self.packed[l] = _ptr(p)
            self.biases[l] = _ptr(b)
            self.acts[l] = acts[l]
            self.slopes_d[l] = slopes[l]
            self.slopes_f[l] = <float>slopes[l]
        self.in_features = self.dims[0]
        self.out_features = self.dims[L]
        self.flops_per_row = 0
        for l in range(L):
            self.flops_per_row += 2.0 * self.dims[l] * self.dims[l + 1]

    def __dealloc__(self):
        PyMem_Free(self.dims)
        PyMem_Free(self.acts)
        PyMem_Free(self.packed)
        PyMem_Free(self.biases)
        PyMem_Free(self.slopes_d)
        PyMem_Free(self.slopes_f)

    cdef int _call(self, int n, void *px, void *pout, int nt) noexcept nogil:
        if self.is_f32:
            return fr_chain_f32(n, self.n_layers, self.dims, <const float* const*>self.packed,
                                <const float* const*>self.biases, self.acts, self.slopes_f,
                                <const float*>px, <float*>pout, nt)
        return fr_chain_f64(n, self.n_layers, self.dims, <const double* const*>self.packed,
                            <const double* const*>self.biases, self.acts, self.slopes_d,
                            <const double*>px, <double*>pout, nt)

    cdef int _run(self, int n, void *px, void *pout) except -1:
        # Small calls (a tiny model at batch 1) keep the GIL and skip the thread-count lookup:
        # releasing and retaking the GIL and a Python call cost more than their whole product.
        cdef bint par = (fr_chain_parallel_f32(n, self.n_layers, self.dims) if self.is_f32
                         else fr_chain_parallel_f64(n, self.n_layers, self.dims))
        cdef int nt = get_num_threads() if par else 1
        cdef bint release = par or n * self.flops_per_row >= _NOGIL_MIN_FLOPS
        cdef int rc
        if release:
            with nogil:
                rc = self._call(n, px, pout, nt)
        else:
            rc = self._call(n, px, pout, nt)
        if rc != 0:
            raise MemoryError("fastreg matmul: could not allocate the chain's scratch")
        return 0

    def run(self, x, out):
        """out[N, M_last] = the chain applied to x[N, K_0] (both validated by the caller)."""
        self._run(x.shape[0], _ptr(x), _ptr(out))
        return out

    def fast(self, x, out=None):
        """The chain's output for ``x``, or None if ``x`` (or ``out``) is not exactly what the
        kernels take: a C-contiguous, aligned, native-order ndarray of the chain's dtype, shape
        (N, K) with N >= 1 or (K,); ``out`` None or such an array of the output's shape that
        does not overlap ``x``. Then the output is a fresh array (or ``out``)."""
        cdef cnp.npy_intp n = 0
        cdef cnp.ndarray o = _fast_io(x, out, self.type_num, self.in_features,
                                      self.out_features, &n)
        if o is None:
            return None
        self._run(<int>n, cnp.PyArray_DATA(<cnp.ndarray>x), cnp.PyArray_DATA(o))
        return o

    def __reduce__(self):
        raise TypeError("LinearChain is not picklable: pickle the Predictor that holds it")


# ---------------------------------------------------------------------------------------------
# The machine's float32 FMA peak (peak.h): the ceiling the GEMMs are reported against.
# ---------------------------------------------------------------------------------------------

cdef extern from "peak.h" nogil:
    double fr_peak_gflops(int nthreads, long iters, float *sink)
    int fr_peak_lanes()


def peak_probe(int threads=1, double seconds=0.02, int repeats=25):
    """Float32 FMA throughput of ``threads`` threads in GFLOP/s: independent FMA chains on full
    vector registers (no memory traffic), best of ``repeats`` runs of about ``seconds`` each.
    Many short runs rather than a few long ones: on a shared machine a short window is more
    likely to find every core free, and the best run is the machine's, not the neighbours'.
    Returns ``(gflops, lanes)``; lanes is the vector width in floats (8: AVX2, 16: AVX-512)."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    if not seconds > 0:
        raise ValueError(f"seconds must be > 0, got {seconds}")
    if repeats < 1:
        raise ValueError(f"repeats must be >= 1, got {repeats}")
    cdef float sink = 0
    cdef long iters = 100000
    cdef double g, best = 0
    for _ in range(2):     # calibrate twice: the first run also wakes the team (slow)
        with nogil:
            g = fr_peak_gflops(threads, iters, &sink)
        iters = max(1000, <long>(seconds * g * 1e9 / (2.0 * fr_peak_lanes() * 12 * threads)))
    for _ in range(repeats):
        with nogil:
            g = fr_peak_gflops(threads, iters, &sink)
        best = max(best, g)
    return best, fr_peak_lanes()
