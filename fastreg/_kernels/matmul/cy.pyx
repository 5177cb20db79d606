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
cimport numpy as cnp

from fastreg._kernels.runtime import get_num_threads

cnp.import_array()

cdef extern from "kernel.h" nogil:
    int fr_gemm_f32(int m, int n, int k, const float *A, Py_ssize_t rsa, Py_ssize_t csa,
                    const float *B, Py_ssize_t rsb, Py_ssize_t csb, float *C, Py_ssize_t ldc,
                    int accumulate, const float *bias, int act, float slope, float *rowsum,
                    int nthreads)
    int fr_gemm_f64(int m, int n, int k, const double *A, Py_ssize_t rsa, Py_ssize_t csa,
                    const double *B, Py_ssize_t rsb, Py_ssize_t csb, double *C, Py_ssize_t ldc,
                    int accumulate, const double *bias, int act, double slope, double *rowsum,
                    int nthreads)


cdef inline void* _ptr(object a):
    return NULL if a is None else cnp.PyArray_DATA(<cnp.ndarray>a)


cdef int _gemm(object dtype, int m, int n, int k, object A, Py_ssize_t rsa, Py_ssize_t csa,
               object B, Py_ssize_t rsb, Py_ssize_t csb, object C, Py_ssize_t ldc,
               int accumulate, object bias, int act, double slope, object rowsum) except -1:
    cdef void *pa = _ptr(A)
    cdef void *pb = _ptr(B)
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
            rc = fr_gemm_f32(m, n, k, <const float*>pa, rsa, csa, <const float*>pb, rsb, csb,
                             <float*>pc, ldc, accumulate, <const float*>pbias, act,
                             <float>slope, <float*>prow, nt)
        else:
            rc = fr_gemm_f64(m, n, k, <const double*>pa, rsa, csa, <const double*>pb, rsb, csb,
                             <double*>pc, ldc, accumulate, <const double*>pbias, act,
                             slope, <double*>prow, nt)
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
