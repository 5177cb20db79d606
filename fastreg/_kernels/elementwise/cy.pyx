# Activations and fused softmax + cross-entropy, Cython/OpenMP backend. Same names and positional
# signatures as elementwise/numba.py; arguments are checked by fastreg/_kernels/elementwise/__init__.py.
#
# Shapes: activation arrays are flat (n,); logits, probs and dlogits are (N, C) of one float
# dtype; target is (N,) int64 with values in [0, C). Row sums are accumulated in double.
from cython.parallel cimport prange
from libc.stdint cimport int64_t

cimport cython
from cython cimport floating

cdef extern from "prelude.h":
    pass

# The loops themselves are C (vectorizable exp/tanh, 16-lane row reductions): see the header.
cdef extern from "ops.h" nogil:
    void fr_act_forward_f32(const float *x, float *out, int64_t i0, int64_t i1, int code,
                            float slope)
    void fr_act_forward_f64(const double *x, double *out, int64_t i0, int64_t i1, int code,
                            double slope)
    void fr_act_backward_f32(const float *dy, const float *y, float *dx, int64_t i0, int64_t i1,
                             int code, float slope)
    void fr_act_backward_f64(const double *dy, const double *y, double *dx, int64_t i0,
                             int64_t i1, int code, double slope)
    double fr_xent_row_f32(const float *l, float *p, int64_t y, int64_t C, double eps)
    double fr_xent_row_f64(const double *l, double *p, int64_t y, int64_t C, double eps)

# Elements per parallel work item of the activations, and the size below which a parallel region
# costs more than it saves (elements, or rows x classes).
DEF CHUNK = 8192
DEF PAR_MIN = 32768


@cython.boundscheck(False)
@cython.wraparound(False)
def activation_forward(const floating[::1] x, floating[::1] out, int code, double slope):
    """out = act(x) elementwise (out may alias x)."""
    cdef int64_t n = x.shape[0], c, i0, i1
    cdef int64_t nchunks = (n + CHUNK - 1) // CHUNK
    if n == 0:
        return
    for c in prange(nchunks, nogil=True, schedule="static", use_threads_if=n >= PAR_MIN):
        i0 = c * CHUNK
        i1 = min(i0 + CHUNK, n)
        if floating is float:
            fr_act_forward_f32(&x[0], &out[0], i0, i1, code, <float>slope)
        else:
            fr_act_forward_f64(&x[0], &out[0], i0, i1, code, slope)


@cython.boundscheck(False)
@cython.wraparound(False)
def activation_backward(const floating[::1] dy, const floating[::1] y, floating[::1] dx,
                        int code, double slope):
    """dx = dy * act'(x), with act' written in terms of the output y = act(x) (dx may alias dy)."""
    cdef int64_t n = dy.shape[0], c, i0, i1
    cdef int64_t nchunks = (n + CHUNK - 1) // CHUNK
    if n == 0:
        return
    for c in prange(nchunks, nogil=True, schedule="static", use_threads_if=n >= PAR_MIN):
        i0 = c * CHUNK
        i1 = min(i0 + CHUNK, n)
        if floating is float:
            fr_act_backward_f32(&dy[0], &y[0], &dx[0], i0, i1, code, <float>slope)
        else:
            fr_act_backward_f64(&dy[0], &y[0], &dx[0], i0, i1, code, slope)


@cython.boundscheck(False)
@cython.wraparound(False)
def softmax_xent_forward(const floating[:, ::1] logits, const int64_t[::1] target,
                         floating[:, ::1] probs, double eps):
    """probs = softmax(logits) per row; return the SUM over rows of the smoothed CE loss.

    loss_n = (1 - eps) (lse_n - l_{n,y}) + eps (lse_n - mean_c l_{n,c}),
    lse_n = m_n + log sum_c exp(l_{n,c} - m_n), m_n = max_c l_{n,c}.
    """
    cdef Py_ssize_t r, N = logits.shape[0], C = logits.shape[1]
    cdef double total = 0.0
    for r in prange(N, nogil=True, schedule="static", use_threads_if=N * C >= PAR_MIN):
        if floating is float:
            total += fr_xent_row_f32(&logits[r, 0], &probs[r, 0], target[r], C, eps)
        else:
            total += fr_xent_row_f64(&logits[r, 0], &probs[r, 0], target[r], C, eps)
    return total


@cython.boundscheck(False)
@cython.wraparound(False)
def softmax_xent_backward(const floating[:, ::1] probs, const int64_t[::1] target,
                          floating[:, ::1] dlogits, double eps, double grad_scale):
    """dlogits = (probs - (1 - eps) onehot(target) - eps / C) * grad_scale (may alias probs)."""
    cdef Py_ssize_t r, c, N = probs.shape[0], C = probs.shape[1]
    cdef floating g = <floating>grad_scale
    cdef floating sub = <floating>(eps / C)
    cdef floating hit = <floating>((1.0 - eps) * grad_scale)
    for r in prange(N, nogil=True, schedule="static", use_threads_if=N * C >= PAR_MIN):
        for c in range(C):
            dlogits[r, c] = (probs[r, c] - sub) * g
        dlogits[r, target[r]] -= hit
