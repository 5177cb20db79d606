# Activations and fused softmax + cross-entropy, Cython/OpenMP backend. Same names and positional
# signatures as _elementwise_numba.py; arguments are checked by fastreg/_kernels/elementwise.py.
#
# Shapes: activation arrays are flat (n,); logits, probs and dlogits are (N, C) of one float
# dtype; target is (N,) int64 with values in [0, C). Row sums are accumulated in double.
from cython.parallel cimport prange
from libc.math cimport exp, expf, log, tanh, tanhf
from libc.stdint cimport int64_t

cimport cython
from cython cimport floating

cdef extern from "_omp_compat.h":
    pass

# Activation codes, as in fastreg/_kernels/_codes.py.
DEF ACT_IDENTITY = 0
DEF ACT_RELU = 1
DEF ACT_LEAKY_RELU = 2
DEF ACT_SIGMOID = 3
DEF ACT_TANH = 4

# Below this many elements (or rows x classes) a parallel region costs more than it saves.
DEF PAR_MIN = 32768


cdef inline floating _exp(floating v) noexcept nogil:
    if floating is float:
        return expf(v)
    else:
        return exp(v)


cdef inline floating _tanh(floating v) noexcept nogil:
    if floating is float:
        return tanhf(v)
    else:
        return tanh(v)


@cython.boundscheck(False)
@cython.wraparound(False)
def activation_forward(const floating[::1] x, floating[::1] out, int code, double slope):
    """out = act(x) elementwise (out may alias x)."""
    cdef Py_ssize_t i, n = x.shape[0]
    cdef floating v, s = <floating>slope
    cdef bint par = n >= PAR_MIN
    if code == ACT_RELU:
        for i in prange(n, nogil=True, schedule="static", use_threads_if=par):
            v = x[i]
            out[i] = 0 if v < 0 else v           # keeps NaN, as torch.relu
    elif code == ACT_LEAKY_RELU:
        for i in prange(n, nogil=True, schedule="static", use_threads_if=par):
            v = x[i]
            out[i] = v if v > 0 else v * s
    elif code == ACT_SIGMOID:
        for i in prange(n, nogil=True, schedule="static", use_threads_if=par):
            out[i] = 1 / (1 + _exp(-x[i]))       # exp overflow -> inf -> 0: no NaN
    elif code == ACT_TANH:
        for i in prange(n, nogil=True, schedule="static", use_threads_if=par):
            out[i] = _tanh(x[i])
    else:
        for i in prange(n, nogil=True, schedule="static", use_threads_if=par):
            out[i] = x[i]


@cython.boundscheck(False)
@cython.wraparound(False)
def activation_backward(const floating[::1] dy, const floating[::1] y, floating[::1] dx,
                        int code, double slope):
    """dx = dy * act'(x), with act' written in terms of the output y = act(x) (dx may alias dy)."""
    cdef Py_ssize_t i, n = dy.shape[0]
    cdef floating v, s = <floating>slope
    cdef bint par = n >= PAR_MIN
    if code == ACT_RELU:
        for i in prange(n, nogil=True, schedule="static", use_threads_if=par):
            dx[i] = dy[i] if y[i] > 0 else 0
    elif code == ACT_LEAKY_RELU:
        for i in prange(n, nogil=True, schedule="static", use_threads_if=par):
            dx[i] = dy[i] if y[i] > 0 else dy[i] * s
    elif code == ACT_SIGMOID:
        for i in prange(n, nogil=True, schedule="static", use_threads_if=par):
            v = y[i]
            dx[i] = dy[i] * v * (1 - v)
    elif code == ACT_TANH:
        for i in prange(n, nogil=True, schedule="static", use_threads_if=par):
            v = y[i]
            dx[i] = dy[i] * (1 - v * v)
    else:
        for i in prange(n, nogil=True, schedule="static", use_threads_if=par):
            dx[i] = dy[i]


@cython.boundscheck(False)
@cython.wraparound(False)
cdef inline double _xent_row(const floating *l, floating *p, int64_t y, Py_ssize_t C,
                             double eps) noexcept nogil:
    """Softmax of one row into p (p may alias l); return its smoothed CE loss."""
    cdef Py_ssize_t c
    cdef double m = l[0], lsum = 0.0, s = 0.0, e, ly, inv, lse
    for c in range(C):
        lsum += l[c]
        if l[c] > m:
            m = l[c]
    ly = l[y]
    for c in range(C):
        e = exp(l[c] - m)
        s += e
        p[c] = <floating>e
    inv = 1.0 / s
    for c in range(C):
        p[c] = <floating>(p[c] * inv)
    lse = m + log(s)
    return (1.0 - eps) * (lse - ly) + eps * (lse - lsum / C)


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
        total += _xent_row(&logits[r, 0], &probs[r, 0], target[r], C, eps)
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
