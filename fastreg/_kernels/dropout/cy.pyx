# Dropout kernels, Cython/OpenMP backend. Same names and positional signatures as
# dropout/numba.py; arguments are checked by fastreg/_kernels/dropout/__init__.py before they get here.
#
# Shapes: x, out, dy, dx are flat (n,) arrays of one float dtype; mask is (ceil(n/8),) uint8,
# bit j of byte k <-> element 8k+j, 1 = kept. The Philox core and the per-byte loops live in
# philox.h so that gcc vectorizes them; this file only splits the bytes into chunks and runs the
# chunks in parallel (the result does not depend on how chunks map to threads).
from cython.parallel cimport prange
from libc.stdint cimport int64_t, uint8_t, uint32_t, uint64_t

cimport cython
from cython cimport floating

cdef extern from "prelude.h":
    pass

cdef extern from "philox.h" nogil:
    void fr_philox4x32_10(uint32_t *ctr, uint32_t k0, uint32_t k1)
    void fr_dropout_mask_bytes(uint8_t *mask, int64_t b0, int64_t b1, uint32_t k0, uint32_t k1,
                               uint64_t offset, uint32_t thr_m1)
    void fr_dropout_apply_f32(const float *x, float *out, const uint8_t *mask, int64_t b0,
                              int64_t b1, int64_t n, float scale)
    void fr_dropout_apply_f64(const double *x, double *out, const uint8_t *mask, int64_t b0,
                              int64_t b1, int64_t n, double scale)
    void fr_dropout_mask_chunk(uint8_t *mask, int64_t b0, int64_t b1, int64_t n, uint32_t k0,
                               uint32_t k1, uint64_t offset, uint64_t threshold)
    void fr_dropout_forward_chunk_f32(const float *x, float *out, uint8_t *mask, int64_t b0,
                                      int64_t b1, int64_t n, uint32_t k0, uint32_t k1,
                                      uint64_t offset, uint64_t threshold, float scale)
    void fr_dropout_forward_chunk_f64(const double *x, double *out, uint8_t *mask, int64_t b0,
                                      int64_t b1, int64_t n, uint32_t k0, uint32_t k1,
                                      uint64_t offset, uint64_t threshold, double scale)
    int FR_PHILOX_AVX512_ENABLED

cdef extern from "relu_dropout.h" nogil:
    void fr_relu_dropout_forward_chunk_f32(const float *x, float *out, uint8_t *mask, int64_t b0,
                                           int64_t b1, int64_t n, uint32_t k0, uint32_t k1,
                                           uint64_t offset, uint64_t threshold, float scale)
    void fr_relu_dropout_forward_chunk_f64(const double *x, double *out, uint8_t *mask,
                                           int64_t b0, int64_t b1, int64_t n, uint32_t k0,
                                           uint32_t k1, uint64_t offset, uint64_t threshold,
                                           double scale)
    void fr_relu_dropout_backward_f32(const float *dy, const float *out, float *dx, int64_t i0,
                                      int64_t i1, float scale)
    void fr_relu_dropout_backward_f64(const double *dy, const double *out, double *dx,
                                      int64_t i0, int64_t i1, double scale)

# Mask bytes per parallel work item: 2048 elements, 8 KiB of float32 (stays in L1 between the
# mask pass and the apply pass over the same chunk). A single chunk runs without a parallel
# region (batch-1 inference latency).
DEF CHUNK_BYTES = 256


#: True when this build runs the explicit AVX-512 Philox path (else the portable C loops).
HAVE_AVX512 = bool(FR_PHILOX_AVX512_ENABLED)


def philox4x32_10_blocks(uint32_t[:, ::1] ctr, uint32_t[:, ::1] out, uint32_t k0, uint32_t k1):
    """out[b] = Philox4x32-10(ctr[b], (k0, k1)) for each row b (known-answer tests)."""
    cdef Py_ssize_t b
    cdef int j
    cdef uint32_t c[4]
    for b in range(ctr.shape[0]):
        for j in range(4):
            c[j] = ctr[b, j]
        fr_philox4x32_10(c, k0, k1)
        for j in range(4):
            out[b, j] = c[j]


@cython.boundscheck(False)
@cython.wraparound(False)
def dropout_mask(uint8_t[::1] mask, int64_t n, uint32_t k0, uint32_t k1, uint64_t offset,
                 uint64_t threshold):
    """Write the keep bits of elements 0..n-1 into mask."""
    cdef int64_t nbytes = (n + 7) >> 3
    cdef int64_t nchunks = (nbytes + CHUNK_BYTES - 1) // CHUNK_BYTES
    cdef int64_t c, b0, b1
    if n <= 0:
        return
    for c in prange(nchunks, nogil=True, schedule="static", use_threads_if=nchunks > 1):
        b0 = c * CHUNK_BYTES
        b1 = min(b0 + CHUNK_BYTES, nbytes)
        fr_dropout_mask_chunk(&mask[0], b0, b1, n, k0, k1, offset, threshold)


@cython.boundscheck(False)
@cython.wraparound(False)
def dropout_forward(const floating[::1] x, floating[::1] out, uint8_t[::1] mask, int64_t n,
                    uint32_t k0, uint32_t k1, uint64_t offset, uint64_t threshold,
                    floating scale):
    """mask bits as dropout_mask; out = x * scale where kept, else 0 (out may alias x)."""
    cdef int64_t nbytes = (n + 7) >> 3
    cdef int64_t nchunks = (nbytes + CHUNK_BYTES - 1) // CHUNK_BYTES
    cdef int64_t c, b0, b1
    if n <= 0:
        return
    for c in prange(nchunks, nogil=True, schedule="static", use_threads_if=nchunks > 1):
        b0 = c * CHUNK_BYTES
        b1 = min(b0 + CHUNK_BYTES, nbytes)
        if floating is float:
            fr_dropout_forward_chunk_f32(&x[0], &out[0], &mask[0], b0, b1, n, k0, k1, offset,
                                         threshold, scale)
        else:
            fr_dropout_forward_chunk_f64(&x[0], &out[0], &mask[0], b0, b1, n, k0, k1, offset,
                                         threshold, scale)


@cython.boundscheck(False)
@cython.wraparound(False)
def dropout_backward(const floating[::1] dy, const uint8_t[::1] mask, floating[::1] dx,
                     int64_t n, floating scale):
    """dx = dy * scale where the mask bit is set, else 0 (dx may alias dy)."""
    cdef int64_t nbytes = (n + 7) >> 3
    cdef int64_t nchunks = (nbytes + CHUNK_BYTES - 1) // CHUNK_BYTES
    cdef int64_t c, b0, b1
    if n <= 0:
        return
    for c in prange(nchunks, nogil=True, schedule="static", use_threads_if=nchunks > 1):
        b0 = c * CHUNK_BYTES
        b1 = min(b0 + CHUNK_BYTES, nbytes)
        if floating is float:
            fr_dropout_apply_f32(&dy[0], &dx[0], &mask[0], b0, b1, n, scale)
        else:
            fr_dropout_apply_f64(&dy[0], &dx[0], &mask[0], b0, b1, n, scale)


@cython.boundscheck(False)
@cython.wraparound(False)
def relu_dropout_forward(const floating[::1] x, floating[::1] out, uint8_t[::1] mask, int64_t n,
                         uint32_t k0, uint32_t k1, uint64_t offset, uint64_t threshold,
                         floating scale):
    """mask bits as dropout_mask; out = max(x, 0) * scale where kept, else 0 (relu_dropout.h)."""
    cdef int64_t nbytes = (n + 7) >> 3
    cdef int64_t nchunks = (nbytes + CHUNK_BYTES - 1) // CHUNK_BYTES
    cdef int64_t c, b0, b1
    if n <= 0:
        return
    for c in prange(nchunks, nogil=True, schedule="static", use_threads_if=nchunks > 1):
        b0 = c * CHUNK_BYTES
        b1 = min(b0 + CHUNK_BYTES, nbytes)
        if floating is float:
            fr_relu_dropout_forward_chunk_f32(&x[0], &out[0], &mask[0], b0, b1, n, k0, k1,
                                              offset, threshold, scale)
        else:
            fr_relu_dropout_forward_chunk_f64(&x[0], &out[0], &mask[0], b0, b1, n, k0, k1,
                                              offset, threshold, scale)


@cython.boundscheck(False)
@cython.wraparound(False)
def relu_dropout_backward(const floating[::1] dy, const floating[::1] out, floating[::1] dx,
                          int64_t n, floating scale):
    """dx = dy * scale where out > 0, else 0: the gradient through ReLU then dropout, from the
    fused forward's output (dx may alias dy)."""
    cdef int64_t chunk = 8 * CHUNK_BYTES
    cdef int64_t nchunks = (n + chunk - 1) // chunk
    cdef int64_t c, i0, i1
    if n <= 0:
        return
    for c in prange(nchunks, nogil=True, schedule="static", use_threads_if=nchunks > 1):
        i0 = c * chunk
        i1 = min(i0 + chunk, n)
        if floating is float:
            fr_relu_dropout_backward_f32(&dy[0], &out[0], &dx[0], i0, i1, scale)
        else:
            fr_relu_dropout_backward_f64(&dy[0], &out[0], &dx[0], i0, i1, scale)
