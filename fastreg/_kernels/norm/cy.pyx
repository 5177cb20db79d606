# Cython backend of the norm kernels: batch norm and layer norm, forward and backward.
#
# Same names and positional signatures as norm/numba.py (see its docstring for the buffers:
# `partial` (P, 2, C) float64 per-chunk column sums, `block` (P, 2, C) in x's dtype for sums
# over blocks of 16 rows, `coef` (4, C) per-feature coefficients in x's dtype). Row chunk p
# covers rows [p*N//P, (p+1)*N//P); P depends on the shape only (see norm._n_chunks), chunks are
# handed out dynamically, so a thread whose core is shared with another process does fewer of
# them. Each chunk has its own partial sums, added in chunk order: results do not depend on
# which thread ran what. A second pass over the chunks goes last chunk first (and each chunk
# last row first), starting on the rows the first pass left in the shared L3. The inner loops
# over a chunk live in loops.h. Batch-norm train/backward run in one parallel region
# (sums, barrier, each thread combines them into its own coefficients, second pass), so their
# `coef` argument is unused here. Arguments were validated by fastreg/_kernels/norm/__init__.py:
# nothing below checks shapes (boundscheck is off).
from cython cimport floating
from cython.parallel cimport parallel, prange, threadid
from libc.stdlib cimport free, malloc
from libc.math cimport sqrt

cdef extern from "prelude.h":
    int omp_get_max_threads() nogil

cdef extern from "loops.h" nogil:
    int NORM_STREAM_BYTES
    void norm_barrier()
    void bn_sums_f(const float *x, const float *shift, double *s1, double *s2,
                   Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t C)
    void bn_sums_d(const double *x, const double *shift, double *s1, double *s2,
                   Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t C)
    void bn_affine_f(const float *x, float *out, const float *mh, const float *ml,
                     const float *sc, const float *sh, int reverse, int stream, Py_ssize_t r0,
                     Py_ssize_t r1, Py_ssize_t C)
    void bn_affine_d(const double *x, double *out, const double *mh, const double *ml,
                     const double *sc, const double *sh, int reverse, int stream, Py_ssize_t r0,
                     Py_ssize_t r1, Py_ssize_t C)
    void bn_grad_sums_f(const float *dy, const float *x, const float *mean, double *sb,
                        double *sw, float *bb, float *bw, Py_ssize_t r0, Py_ssize_t r1,
                        Py_ssize_t C)
    void bn_grad_sums_d(const double *dy, const double *x, const double *mean, double *sb,
                        double *sw, double *bb, double *bw, Py_ssize_t r0, Py_ssize_t r1,
                        Py_ssize_t C)
    void bn_dx_rev_f(const float *dy, const float *x, float *dx, const float *mu,
                     const float *ca, const float *cb, const float *cd, int stream,
                     Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t C)
    void bn_dx_rev_d(const double *dy, const double *x, double *dx, const double *mu,
                     const double *ca, const double *cb, const double *cd, int stream,
                     Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t C)
    void ln_fwd_rows_f(const float *x, const float *w, const float *b, float *out,
                       float *save_mean, float *save_rstd, int has_w, int has_b, double eps,
                       int stream, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t C)
    void ln_fwd_rows_d(const double *x, const double *w, const double *b, double *out,
                       double *save_mean, double *save_rstd, int has_w, int has_b, double eps,
                       int stream, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t C)
    void ln_bwd_rows_f(const float *dy, const float *x, const float *w, const float *save_mean,
                       const float *save_rstd, float *dx, double *pw, double *pb, float *bw,
                       float *bb, int has_w, int stream, Py_ssize_t r0, Py_ssize_t r1,
                       Py_ssize_t C)
    void ln_bwd_rows_d(const double *dy, const double *x, const double *w,
                       const double *save_mean, const double *save_rstd, double *dx,
                       double *pw, double *pb, double *bw, double *bb, int has_w,
                       int stream, Py_ssize_t r0, Py_ssize_t r1, Py_ssize_t C)
    void bn_train_coef_f(const float *shift, const float *weight, const float *bias,
                         float *running_mean, float *running_var, float *save_mean,
                         float *save_rstd, const double *partial, double *t1, double *t2,
                         float *coef, int write_stats, int has_weight, int has_bias,
                         int has_running, double momentum, double eps, Py_ssize_t P,
                         Py_ssize_t N, Py_ssize_t C)
    void bn_train_coef_d(const double *shift, const double *weight, const double *bias,
                         double *running_mean, double *running_var, double *save_mean,
                         double *save_rstd, const double *partial, double *t1, double *t2,
                         double *coef, int write_stats, int has_weight, int has_bias,
                         int has_running, double momentum, double eps, Py_ssize_t P,
                         Py_ssize_t N, Py_ssize_t C)
    void bn_grad_coef_f(const float *weight, const float *save_mean, const float *save_rstd,
                        float *dweight, float *dbias, const double *partial, double *t1,
                        double *t2, float *coef, int write_grads, int has_weight,
                        int need_dweight, int need_dbias, int accumulate, Py_ssize_t P,
                        Py_ssize_t N, Py_ssize_t C)
    void bn_grad_coef_d(const double *weight, const double *save_mean, const double *save_rstd,
                        double *dweight, double *dbias, const double *partial, double *t1,
                        double *t2, double *coef, int write_grads, int has_weight,
                        int need_dweight, int need_dbias, int accumulate, Py_ssize_t P,
                        Py_ssize_t N, Py_ssize_t C)
    void ln_grad_params_f(float *dweight, float *dbias, const double *partial, double *t1,
                          double *t2, int need_dweight, int need_dbias, int accumulate,
                          Py_ssize_t P, Py_ssize_t C)
    void ln_grad_params_d(double *dweight, double *dbias, const double *partial, double *t1,
                          double *t2, int need_dweight, int need_dbias, int accumulate,
                          Py_ssize_t P, Py_ssize_t C)
    float norm_probe_read_f(const float *x, Py_ssize_t i0, Py_ssize_t i1)
    void norm_probe_copy_f(const float *x, float *y, Py_ssize_t i0, Py_ssize_t i1)


cdef Py_ssize_t _LN_CHUNKS_PER_THREAD = 4


cdef inline int _stream(Py_ssize_t n_elements, Py_ssize_t itemsize) noexcept nogil:
    # write the output with streaming stores? (see NORM_STREAM_BYTES in loops.h)
    return n_elements * itemsize >= NORM_STREAM_BYTES


cdef inline int _threads(Py_ssize_t P) noexcept nogil:
    # OpenMP threads for P chunks: no more than the pool, no more than the chunks
    cdef Py_ssize_t t = omp_get_max_threads()
    return <int>(P if P < t else t)


cdef inline void _affine_rows(const floating[:, ::1] x, floating[:, ::1] out,
                              floating[:, ::1] coef, Py_ssize_t P, int reverse) noexcept nogil:
    # out = ((x - coef[0]) - coef[1]) * coef[2] + coef[3], one chunk per thread
    cdef Py_ssize_t p, q, N = x.shape[0], C = x.shape[1]
    cdef int stream = _stream(N * C, sizeof(floating))
    for p in prange(P, schedule="dynamic", chunksize=1, num_threads=_threads(P)):
        q = P - 1 - p if reverse else p
        if floating is float:
            bn_affine_f(&x[0, 0], &out[0, 0], &coef[0, 0], &coef[1, 0], &coef[2, 0],
                        &coef[3, 0], reverse, stream, q * N // P, (q + 1) * N // P, C)
        else:
            bn_affine_d(&x[0, 0], &out[0, 0], &coef[0, 0], &coef[1, 0], &coef[2, 0],
                        &coef[3, 0], reverse, stream, q * N // P, (q + 1) * N // P, C)


def batchnorm_forward_train(const floating[:, ::1] x, const floating[::1] weight,
                            const floating[::1] bias, floating[::1] running_mean,
                            floating[::1] running_var, floating[:, ::1] out,
                            floating[::1] save_mean, floating[::1] save_rstd,
                            double[:, :, ::1] partial, floating[:, ::1] coef, bint has_weight,
                            bint has_bias, bint has_running, double momentum, double eps):
    # One parallel region: chunk sums, (barrier), every thread combines them into its own copy
    # of the coefficients (O(P C), cheap) instead of waiting on a second barrier for one thread
    # to do it, then the affine pass. Thread 0 (and only it) writes the statistics. Fewer
    # synchronisations matter most when another process holds part of a core.
    cdef Py_ssize_t p, q, N = x.shape[0], C = x.shape[1], P = partial.shape[0]
    cdef int T = _threads(P), stream = _stream(N * C, sizeof(floating))
    cdef floating *tc = <floating *>malloc(T * 4 * C * sizeof(floating))
    cdef double *ts = <double *>malloc(T * 2 * C * sizeof(double))
    cdef floating *lc
    cdef double *ls
    if tc == NULL or ts == NULL:
        free(tc)
        free(ts)
        raise MemoryError()
    with nogil, parallel(num_threads=T):
        lc = tc + threadid() * 4 * C
        ls = ts + threadid() * 2 * C
        # pass 1: per-chunk sums of d = x - x[0] and d^2 (float64)
        for p in prange(P, schedule="dynamic", chunksize=1):
            if floating is float:
                bn_sums_f(&x[0, 0], &x[0, 0], &partial[p, 0, 0], &partial[p, 1, 0],
                          p * N // P, (p + 1) * N // P, C)
            else:
                bn_sums_d(&x[0, 0], &x[0, 0], &partial[p, 0, 0], &partial[p, 1, 0],
                          p * N // P, (p + 1) * N // P, C)
        norm_barrier()
        if floating is float:
            bn_train_coef_f(&x[0, 0], &weight[0], &bias[0], &running_mean[0], &running_var[0],
                            &save_mean[0], &save_rstd[0], &partial[0, 0, 0], ls, ls + C, lc,
                            threadid() == 0, has_weight, has_bias, has_running, momentum, eps,
                            P, N, C)
        else:
            bn_train_coef_d(&x[0, 0], &weight[0], &bias[0], &running_mean[0], &running_var[0],
                            &save_mean[0], &save_rstd[0], &partial[0, 0, 0], ls, ls + C, lc,
                            threadid() == 0, has_weight, has_bias, has_running, momentum, eps,
                            P, N, C)
        # pass 2: last chunk first, each chunk backwards (rows pass 1 left in cache)
        for p in prange(P, schedule="dynamic", chunksize=1):
            q = P - 1 - p
            if floating is float:
                bn_affine_f(&x[0, 0], &out[0, 0], lc, lc + C, lc + 2 * C, lc + 3 * C, 1,
                            stream, q * N // P, (q + 1) * N // P, C)
            else:
                bn_affine_d(&x[0, 0], &out[0, 0], lc, lc + C, lc + 2 * C, lc + 3 * C, 1,
                            stream, q * N // P, (q + 1) * N // P, C)
    free(tc)
    free(ts)


def batchnorm_forward_eval(const floating[:, ::1] x, const floating[::1] weight,
                           const floating[::1] bias, const floating[::1] running_mean,
                           const floating[::1] running_var, floating[:, ::1] out,
                           floating[:, ::1] coef, Py_ssize_t n_chunks, bint has_weight,
                           bint has_bias, double eps):
    cdef Py_ssize_t c, C = x.shape[1], P = n_chunks
    cdef double rstd
    with nogil:
        for c in range(C):
            rstd = 1.0 / sqrt(<double>running_var[c] + eps)
            coef[0, c] = running_mean[c]
            coef[1, c] = 0.0
            coef[2, c] = <floating>(rstd * weight[c] if has_weight else rstd)
            coef[3, c] = bias[c] if has_bias else 0.0
        if P > 0:
            _affine_rows(x, out, coef, P, 0)


def batchnorm_backward(const floating[:, ::1] dy, const floating[:, ::1] x,
                       const floating[::1] weight, const floating[::1] save_mean,
                       const floating[::1] save_rstd, floating[:, ::1] dx,
                       floating[::1] dweight, floating[::1] dbias, double[:, :, ::1] partial,
                       floating[:, :, ::1] block, floating[:, ::1] coef, bint has_weight,
                       bint need_dweight, bint need_dbias, bint accumulate):
    # One parallel region, as batchnorm_forward_train: chunk sums, barrier, per-thread
    # coefficients (thread 0 writes dweight/dbias), dx.
    cdef Py_ssize_t p, q, N = x.shape[0], C = x.shape[1], P = partial.shape[0]
    cdef int T = _threads(P), stream = _stream(N * C, sizeof(floating))
    cdef floating *tc = <floating *>malloc(T * 4 * C * sizeof(floating))
    cdef double *ts = <double *>malloc(T * 2 * C * sizeof(double))
    cdef floating *lc
    cdef double *ls
    if tc == NULL or ts == NULL:
        free(tc)
        free(ts)
        raise MemoryError()
    with nogil, parallel(num_threads=T):
        lc = tc + threadid() * 4 * C
        ls = ts + threadid() * 2 * C
        # pass 1: per-chunk sums of dy and dy * (x - mean)
        for p in prange(P, schedule="dynamic", chunksize=1):
            if floating is float:
                bn_grad_sums_f(&dy[0, 0], &x[0, 0], &save_mean[0], &partial[p, 0, 0],
                               &partial[p, 1, 0], &block[p, 0, 0], &block[p, 1, 0],
                               p * N // P, (p + 1) * N // P, C)
            else:
                bn_grad_sums_d(&dy[0, 0], &x[0, 0], &save_mean[0], &partial[p, 0, 0],
                               &partial[p, 1, 0], &block[p, 0, 0], &block[p, 1, 0],
                               p * N // P, (p + 1) * N // P, C)
        norm_barrier()
        if floating is float:
            bn_grad_coef_f(&weight[0], &save_mean[0], &save_rstd[0], &dweight[0], &dbias[0],
                           &partial[0, 0, 0], ls, ls + C, lc, threadid() == 0, has_weight,
                           need_dweight, need_dbias, accumulate, P, N, C)
        else:
            bn_grad_coef_d(&weight[0], &save_mean[0], &save_rstd[0], &dweight[0], &dbias[0],
                           &partial[0, 0, 0], ls, ls + C, lc, threadid() == 0, has_weight,
                           need_dweight, need_dbias, accumulate, P, N, C)
        # pass 2: dx, last chunk first, each chunk backwards
        for p in prange(P, schedule="dynamic", chunksize=1):
            q = P - 1 - p
            if floating is float:
                bn_dx_rev_f(&dy[0, 0], &x[0, 0], &dx[0, 0], lc, lc + C, lc + 2 * C, lc + 3 * C,
                            stream, q * N // P, (q + 1) * N // P, C)
            else:
                bn_dx_rev_d(&dy[0, 0], &x[0, 0], &dx[0, 0], lc, lc + C, lc + 2 * C, lc + 3 * C,
                            stream, q * N // P, (q + 1) * N // P, C)
    free(tc)
    free(ts)


def layernorm_forward(const floating[:, ::1] x, const floating[::1] weight,
                      const floating[::1] bias, floating[:, ::1] out, floating[::1] save_mean,
                      floating[::1] save_rstd, bint has_weight, bint has_bias, double eps):
    cdef Py_ssize_t p, N = x.shape[0], C = x.shape[1]
    # rows are independent: chunks of rows handed out dynamically (no effect on the results)
    cdef Py_ssize_t P = min(N, _LN_CHUNKS_PER_THREAD * <Py_ssize_t>omp_get_max_threads())
    cdef int stream = _stream(N * C, sizeof(floating))
    if P == 0:
        return
    with nogil:
        for p in prange(P, schedule="dynamic", chunksize=1, num_threads=_threads(P)):
            if floating is float:
                ln_fwd_rows_f(&x[0, 0], &weight[0], &bias[0], &out[0, 0], &save_mean[0],
                              &save_rstd[0], has_weight, has_bias, eps, stream,
                              p * N // P, (p + 1) * N // P, C)
            else:
                ln_fwd_rows_d(&x[0, 0], &weight[0], &bias[0], &out[0, 0], &save_mean[0],
                              &save_rstd[0], has_weight, has_bias, eps, stream,
                              p * N // P, (p + 1) * N // P, C)


def layernorm_backward(const floating[:, ::1] dy, const floating[:, ::1] x,
                       const floating[::1] weight, const floating[::1] save_mean,
                       const floating[::1] save_rstd, floating[:, ::1] dx,
                       floating[::1] dweight, floating[::1] dbias, double[:, :, ::1] partial,
                       floating[:, :, ::1] block, bint has_weight, bint need_dweight,
                       bint need_dbias, bint accumulate):
    cdef Py_ssize_t p, N = x.shape[0], C = x.shape[1], P = partial.shape[0]
    cdef double *ts
    cdef int stream = _stream(N * C, sizeof(floating))
    with nogil:
        for p in prange(P, schedule="dynamic", chunksize=1, num_threads=_threads(P)):
            if floating is float:
                ln_bwd_rows_f(&dy[0, 0], &x[0, 0], &weight[0], &save_mean[0], &save_rstd[0],
                              &dx[0, 0], &partial[p, 0, 0], &partial[p, 1, 0],
                              &block[p, 0, 0], &block[p, 1, 0], has_weight, stream,
                              p * N // P, (p + 1) * N // P, C)
            else:
                ln_bwd_rows_d(&dy[0, 0], &x[0, 0], &weight[0], &save_mean[0], &save_rstd[0],
                              &dx[0, 0], &partial[p, 0, 0], &partial[p, 1, 0],
                              &block[p, 0, 0], &block[p, 1, 0], has_weight, stream,
                              p * N // P, (p + 1) * N // P, C)
    if need_dweight or need_dbias:
        ts = <double *>malloc(2 * C * sizeof(double))
        if ts == NULL:
            raise MemoryError()
        if floating is float:
            ln_grad_params_f(&dweight[0], &dbias[0], &partial[0, 0, 0], ts, ts + C,
                             need_dweight, need_dbias, accumulate, P, C)
        else:
            ln_grad_params_d(&dweight[0], &dbias[0], &partial[0, 0, 0], ts, ts + C,
                             need_dweight, need_dbias, accumulate, P, C)
        free(ts)


def bandwidth_probe(const float[::1] src, float[::1] dst, bint copy):
    """One streaming pass over ``src`` on the OpenMP pool, a contiguous slab per thread: a sum
    (read only; returns it) or, with ``copy``, ``dst[:] = src`` with non-temporal stores. For
    fastreg/_bench/compare_norm.py's bandwidth floor, not a kernel of the library."""
    cdef Py_ssize_t t, n = src.shape[0]
    cdef int T = omp_get_max_threads()
    cdef double total = 0.0
    if copy and dst.shape[0] < n:
        raise ValueError(f"dst must hold {n} elements, got {dst.shape[0]}")
    if n == 0:
        return 0.0
    with nogil:
        for t in prange(T, schedule="static", chunksize=1, num_threads=T):
            if copy:
                norm_probe_copy_f(&src[0], &dst[0], t * n // T, (t + 1) * n // T)
            else:
                total += norm_probe_read_f(&src[0], t * n // T, (t + 1) * n // T)
    return total
