# cython: language_level=3
"""Cython backend of the fused optimizer update (see fastreg/_kernels/optim/__init__.py for the maths).

The element update lives in step.h (one loop per algorithm, the switch outside the loop);
this module splits the flat buffer into blocks and runs them over OpenMP threads.
"""
from cython cimport floating
from cython.parallel cimport prange

cdef extern from "step.h" nogil:
    int FR_OPT_SGD, FR_OPT_ADAM, FR_OPT_RMSPROP, FR_OPT_ADAGRAD, FR_OPT_ADADELTA
    int FR_OPT_MAXIMIZE, FR_OPT_MOMENTUM, FR_OPT_NESTEROV, FR_OPT_FIRST_STEP
    int FR_OPT_AMSGRAD, FR_OPT_DECOUPLED, FR_OPT_CENTERED
    int FR_HP_LEN
    void fr_optim_range_f32(int kind, int flags, float* p, const float* g, float* b0, float* b1,
                            float* b2, const float* hp, Py_ssize_t lo, Py_ssize_t hi)
    void fr_optim_range_f64(int kind, int flags, double* p, const double* g, double* b0,
                            double* b1, double* b2, const double* hp, Py_ssize_t lo,
                            Py_ssize_t hi)

#: Codes from the C header, exported so a test can check optim.py mirrors them.
CODES = {"SGD": FR_OPT_SGD, "ADAM": FR_OPT_ADAM, "RMSPROP": FR_OPT_RMSPROP,
         "ADAGRAD": FR_OPT_ADAGRAD, "ADADELTA": FR_OPT_ADADELTA,
         "MAXIMIZE": FR_OPT_MAXIMIZE, "MOMENTUM": FR_OPT_MOMENTUM, "NESTEROV": FR_OPT_NESTEROV,
         "FIRST_STEP": FR_OPT_FIRST_STEP, "AMSGRAD": FR_OPT_AMSGRAD,
         "DECOUPLED": FR_OPT_DECOUPLED, "CENTERED": FR_OPT_CENTERED, "HP_LEN": FR_HP_LEN}

# Elements per parallel block: 64 KiB of float32 per stream, large enough that the per-block
# overhead vanishes, small enough that both threads get work at MLP sizes.
cdef enum:
    BLOCK = 16384


cdef inline void _range(int kind, int flags, floating* p, const floating* g, floating* b0,
                        floating* b1, floating* b2, const floating* hp, Py_ssize_t lo,
                        Py_ssize_t hi) noexcept nogil:
    if floating is float:
        fr_optim_range_f32(kind, flags, p, g, b0, b1, b2, hp, lo, hi)
    else:
        fr_optim_range_f64(kind, flags, p, g, b0, b1, b2, hp, lo, hi)


def fused_step(int kind, int flags, floating[::1] param, const floating[::1] grad, floating[::1] buf0,
               floating[::1] buf1, floating[::1] buf2, const floating[::1] hp):
    """In-place update of ``param`` (and the state buffers) by algorithm ``kind``.

    Trusts its inputs: fastreg/_kernels/optim/__init__.py has checked dtypes, lengths, contiguity,
    writeability and that no two buffers overlap. Unused buffers may have length 0.
    """
    cdef Py_ssize_t n = param.shape[0]
    cdef Py_ssize_t nblk = (n + BLOCK - 1) // BLOCK
    cdef Py_ssize_t b, lo, hi
    if n == 0:
        return
    cdef floating* pp = &param[0]
    cdef const floating* pg = &grad[0]
    # Length-0 buffers: a valid address that is never dereferenced.
    cdef floating* p0 = &buf0[0] if buf0.shape[0] else pp
    cdef floating* p1 = &buf1[0] if buf1.shape[0] else pp
    cdef floating* p2 = &buf2[0] if buf2.shape[0] else pp
    cdef const floating* php = &hp[0]
    if nblk == 1:
        with nogil:
            _range(kind, flags, pp, pg, p0, p1, p2, php, 0, n)
        return
    for b in prange(nblk, nogil=True, schedule="static"):
        lo = b * BLOCK
        hi = lo + BLOCK
        if hi > n:
            hi = n
        _range(kind, flags, pp, pg, p0, p1, p2, php, lo, hi)
