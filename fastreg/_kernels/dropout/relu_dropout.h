/* ReLU followed by dropout, fused (dropout/cy.pyx: relu_dropout_forward / _backward).
 *
 * Sequential runs an adjacent ReLU -> Dropout pair (training, 0 < p < 1) as one pass:
 *   forward   y_i = max(x_i, 0) (ReLU's own select: NaN and -0 pass through),
 *             out_i = y_i * scale where mask bit i is set, else +0 (the dropout apply, same bits)
 *   backward  dx_i = dy_i * scale where out_i > 0, else +0.
 * The backward needs neither y nor the mask: with scale >= 1 (inverted: 1/(1-p), classic: 1),
 * out_i > 0 <=> (kept_i and y_i > 0), which is exactly where the unfused pair passes the gradient
 * (dropout: dy*scale where kept, else +0; then ReLU: that where y > 0, else +0). Both directions
 * are therefore bit-identical to the unfused layers, and each reads and writes its arrays once.
 */
#ifndef FASTREG_RELU_DROPOUT_H
#define FASTREG_RELU_DROPOUT_H
#include <stdint.h>
#include <string.h>
#include "philox.h"

#define FR_DEFINE_RELU_DROPOUT(SUFFIX, T, U)                                                  \
/* out[i] = relu(x[i]) * scale where mask bit i is set, else +0, i in [8*b0, min(8*b1, n)) */  \
static inline void fr_relu_dropout_apply_##SUFFIX(const T *x, T *out, const uint8_t *mask,    \
                                                  int64_t b0, int64_t b1, int64_t n, T scale) \
{                                                                                             \
    int64_t full = n >> 3;                                                                    \
    int64_t bf = b1 < full ? b1 : full;                                                       \
    for (int64_t m = b0; m < bf; ++m) {                                                       \
        U byte = mask[m];                                                                     \
        for (int j = 0; j < 8; ++j) {                                                         \
            T v = x[8 * m + j];                                                               \
            v = (v < 0 ? (T)0 : v) * scale;                                                   \
            U u;                                                                              \
            memcpy(&u, &v, sizeof u);                                                         \
            u &= (U)0 - ((byte >> j) & 1u);                                                   \
            memcpy(&out[8 * m + j], &u, sizeof u);                                            \
        }                                                                                     \
    }                                                                                         \
    if (b1 > full && full >= b0) {                                                            \
        U byte = mask[full];                                                                  \
        for (int64_t i = 8 * full; i < n; ++i) {                                              \
            T v = x[i];                                                                       \
            v = (v < 0 ? (T)0 : v) * scale;                                                   \
            U u;                                                                              \
            memcpy(&u, &v, sizeof u);                                                         \
            u &= (U)0 - ((byte >> (i & 7)) & 1u);                                             \
            memcpy(&out[i], &u, sizeof u);                                                    \
        }                                                                                     \
    }                                                                                         \
}                                                                                             \
/* Mask bits of bytes [b0, b1) and the fused forward of their elements (the chunk stays in L1 \
 * between the two loops). */                                                                 \
static inline void fr_relu_dropout_forward_chunk_##SUFFIX(const T *x, T *out, uint8_t *mask,  \
        int64_t b0, int64_t b1, int64_t n, uint32_t k0, uint32_t k1, uint64_t offset,         \
        uint64_t threshold, T scale)                                                          \
{                                                                                             \
    fr_dropout_mask_chunk(mask, b0, b1, n, k0, k1, offset, threshold);                        \
    fr_relu_dropout_apply_##SUFFIX(x, out, mask, b0, b1, n, scale);                           \
}                                                                                             \
/* dx[i] = dy[i] * scale where out[i] > 0, else +0, for i in [i0, i1); dx may be dy.          \
 * Branch-free (the product's bits ANDed with 0 or ~0): gcc does not if-convert a select of a  \
 * product (it may trap), and a branch on a random sign mispredicts half the time (40x slower).*/\
static inline void fr_relu_dropout_backward_##SUFFIX(const T *dy, const T *out, T *dx,        \
                                                     int64_t i0, int64_t i1, T scale)         \
{                                                                                             \
    for (int64_t i = i0; i < i1; ++i) {                                                       \
        T v = dy[i] * scale;                                                                  \
        U u;                                                                                  \
        memcpy(&u, &v, sizeof u);                                                             \
        u &= (U)0 - (U)(out[i] > 0);                                                          \
        memcpy(&dx[i], &u, sizeof u);                                                         \
    }                                                                                         \
}
FR_DEFINE_RELU_DROPOUT(f32, float, uint32_t)
FR_DEFINE_RELU_DROPOUT(f64, double, uint64_t)
#undef FR_DEFINE_RELU_DROPOUT

#endif
