# Embedding kernels, Cython/OpenMP backend. Same names and positional signatures as
# embedding/numba.py; arguments are checked by fastreg/_kernels/embedding/__init__.py.
#
# Shapes: weight / grad_weight (V, D), indices flat (n,) int32 or int64 with values in [0, V),
# out / grad_output (n, D), one float dtype; counts (V,) int64 scratch (length 0 unless
# scale_by_freq); unique (m,) int64, sorted and distinct.
from cython.parallel cimport prange
from libc.math cimport fabs, pow, sqrt, INFINITY
from libc.stdint cimport int32_t, int64_t
from libc.string cimport memcpy

cimport cython
from cython cimport floating

cdef extern from "prelude.h":
    pass

ctypedef fused index_t:
    int32_t
    int64_t

# Elements (rows x D) below which a parallel region costs more than it saves.
DEF PAR_MIN = 32768


@cython.boundscheck(False)
@cython.wraparound(False)
def embedding_forward(const floating[:, ::1] weight, const index_t[::1] indices,
                      floating[:, ::1] out):
    """out[i, :] = weight[indices[i], :], parallel over the n looked-up rows."""
    cdef Py_ssize_t i, n = indices.shape[0], D = weight.shape[1]
    cdef int64_t k
    for i in prange(n, nogil=True, schedule="static", use_threads_if=n * D >= PAR_MIN):
        k = indices[i]
        memcpy(&out[i, 0], &weight[k, 0], D * sizeof(floating))


@cython.boundscheck(False)
@cython.wraparound(False)
def embedding_backward(const floating[:, ::1] grad_output, const index_t[::1] indices,
                       floating[:, ::1] grad_weight, int64_t[::1] counts, int64_t padding_idx,
                       bint scale_by_freq, int64_t nchunks):
    """grad_weight[k] += s_k * sum_{i: indices[i] = k} grad_output[i] (k != padding_idx),
    s_k = 1 / count(k) if scale_by_freq else 1. Chunk c owns rows [r0, r1) and scans every
    index in order: each row sums in input order whatever the thread count (deterministic)."""
    cdef Py_ssize_t V = grad_weight.shape[0], D = grad_weight.shape[1], n = indices.shape[0]
    cdef Py_ssize_t c, i, j, r0, r1
    cdef Py_ssize_t rows = (V + nchunks - 1) // nchunks
    cdef int64_t k
    cdef floating s
    for c in prange(nchunks, nogil=True, schedule="static",
                    use_threads_if=n * D >= PAR_MIN and nchunks > 1):
        r0 = c * rows
        r1 = min(r0 + rows, V)
        if scale_by_freq:
            for i in range(r0, r1):
                counts[i] = 0
            for i in range(n):
                k = indices[i]
                if r0 <= k < r1:
                    counts[k] += 1
        for i in range(n):
            k = indices[i]
            if k == padding_idx or k < r0 or k >= r1:
                continue
            if scale_by_freq:
                s = <floating>(1.0 / <double>counts[k])
                for j in range(D):
                    grad_weight[k, j] += grad_output[i, j] * s
            else:
                for j in range(D):
                    grad_weight[k, j] += grad_output[i, j]


@cython.boundscheck(False)
@cython.wraparound(False)
def embedding_renorm(floating[:, ::1] weight, const int64_t[::1] unique, double max_norm,
                     double norm_type):
    """weight[k] *= max_norm / (||weight[k]||_p + 1e-7) for each row k in unique whose p-norm
    (accumulated in double; p = inf: max |w|) exceeds max_norm."""
    cdef Py_ssize_t u, j, m = unique.shape[0], D = weight.shape[1]
    cdef int64_t k
    cdef double acc, a, norm
    cdef floating s
    for u in prange(m, nogil=True, schedule="static", use_threads_if=m * D >= PAR_MIN):
        k = unique[u]
        acc = 0.0
        if norm_type == INFINITY:
            for j in range(D):
                a = fabs(<double>weight[k, j])
                if a > acc:
                    acc = a
            norm = acc
        elif norm_type == 2.0:
            for j in range(D):
                a = <double>weight[k, j]
                acc = acc + a * a
            norm = sqrt(acc)
        elif norm_type == 1.0:
            for j in range(D):
                acc = acc + fabs(<double>weight[k, j])
            norm = acc
        else:
            for j in range(D):
                acc = acc + pow(fabs(<double>weight[k, j]), norm_type)
            norm = pow(acc, 1.0 / norm_type)
        if norm > max_norm:
            s = <floating>(max_norm / (norm + 1e-7))
            for j in range(D):
                weight[k, j] = weight[k, j] * s
