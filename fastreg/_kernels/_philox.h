/* Philox4x32-10 dropout masks and mask application (C helpers for _dropout_cy.pyx).
 *
 * RNG spec (shared with _dropout_numba.py, dropout.py's NumPy reference and a later CUDA port):
 * key (k0, k1) = (lo32(seed), hi32(seed)); counter block b of a call is
 * (lo32(offset + b), hi32(offset + b), 0, 0) with 64-bit wraparound; flat element i uses word
 * i % 4 of block i / 4 and is kept iff word < threshold, i.e. word <= thr_m1 = threshold - 1
 * (the caller handles threshold == 0, "keep none", separately).
 * Mask byte m holds elements 8m .. 8m+7 (LSB first), i.e. counter blocks 2m and 2m+1.
 *
 * The loops below are written so that gcc -O3 -march=native vectorizes them across bytes m:
 * every lane runs two Philox blocks in 32-bit arithmetic and emits one mask byte.
 */
#ifndef FASTREG_PHILOX_H
#define FASTREG_PHILOX_H
#include <stdint.h>
#include <string.h>

#define FR_PHILOX_M0 0xD2511F53u
#define FR_PHILOX_M1 0xCD9E8D57u
#define FR_PHILOX_W0 0x9E3779B9u
#define FR_PHILOX_W1 0xBB67AE85u

/* One Philox round on counter (c0, c1, c2, c3) with round key (ka, kb). */
#define FR_PHILOX_ROUND(c0, c1, c2, c3, ka, kb)                        \
    do {                                                               \
        uint64_t p0_ = (uint64_t)FR_PHILOX_M0 * (c0);                  \
        uint64_t p1_ = (uint64_t)FR_PHILOX_M1 * (c2);                  \
        uint32_t n0_ = (uint32_t)(p1_ >> 32) ^ (c1) ^ (ka);            \
        uint32_t n2_ = (uint32_t)(p0_ >> 32) ^ (c3) ^ (kb);            \
        (c1) = (uint32_t)p1_;                                          \
        (c3) = (uint32_t)p0_;                                          \
        (c0) = n0_;                                                    \
        (c2) = n2_;                                                    \
    } while (0)

/* Philox4x32-10 of one counter block, in place on ctr[4] (used by the known-answer tests). */
static inline void fr_philox4x32_10(uint32_t ctr[4], uint32_t k0, uint32_t k1)
{
    uint32_t c0 = ctr[0], c1 = ctr[1], c2 = ctr[2], c3 = ctr[3];
    for (int r = 0; r < 10; ++r) {
        FR_PHILOX_ROUND(c0, c1, c2, c3, k0, k1);
        k0 += FR_PHILOX_W0;
        k1 += FR_PHILOX_W1;
    }
    ctr[0] = c0; ctr[1] = c1; ctr[2] = c2; ctr[3] = c3;
}

/* Mask bytes [b0, b1): byte m gets bit j set iff element 8m+j is kept. Bytes past the end of the
 * data are the caller's business (it clears the tail bits of the last byte). */
static inline void fr_dropout_mask_bytes(uint8_t *restrict mask, int64_t b0, int64_t b1,
                                         uint32_t k0, uint32_t k1, uint64_t offset,
                                         uint32_t thr_m1)
{
    /* Round keys are the same for every lane: hoist them. */
    uint32_t ka[10], kb[10];
    for (int r = 0; r < 10; ++r) {
        ka[r] = k0 + (uint32_t)r * FR_PHILOX_W0;
        kb[r] = k1 + (uint32_t)r * FR_PHILOX_W1;
    }
    for (int64_t m = b0; m < b1; ++m) {
        uint64_t ca = offset + 2 * (uint64_t)m;   /* wraps mod 2^64 as the spec says */
        uint64_t cb = ca + 1;
        uint32_t a0 = (uint32_t)ca, a1 = (uint32_t)(ca >> 32), a2 = 0, a3 = 0;
        uint32_t e0 = (uint32_t)cb, e1 = (uint32_t)(cb >> 32), e2 = 0, e3 = 0;
#define FR_R2(r) FR_PHILOX_ROUND(a0, a1, a2, a3, ka[r], kb[r]); \
                 FR_PHILOX_ROUND(e0, e1, e2, e3, ka[r], kb[r])
        FR_R2(0); FR_R2(1); FR_R2(2); FR_R2(3); FR_R2(4);
        FR_R2(5); FR_R2(6); FR_R2(7); FR_R2(8); FR_R2(9);
#undef FR_R2
        uint32_t byte = (uint32_t)(a0 <= thr_m1)
                      | (uint32_t)(a1 <= thr_m1) << 1
                      | (uint32_t)(a2 <= thr_m1) << 2
                      | (uint32_t)(a3 <= thr_m1) << 3
                      | (uint32_t)(e0 <= thr_m1) << 4
                      | (uint32_t)(e1 <= thr_m1) << 5
                      | (uint32_t)(e2 <= thr_m1) << 6
                      | (uint32_t)(e3 <= thr_m1) << 7;
        mask[m] = (uint8_t)byte;
    }
}

/* out[i] = x[i] * scale where mask bit i is set, else 0, for i in [8*b0, min(8*b1, n)).
 * Used by the forward pass (x -> out) and the backward pass (dy -> dx); out may be x.
 * Branch-free on purpose: a select on a random bit mispredicts half the time (10x slower); ANDing
 * the product's bits with 0 or ~0 gives exactly +0 for dropped elements (also for inf/nan x). */
#define FR_DEFINE_DROPOUT_APPLY(SUFFIX, T, U)                                                 \
static inline void fr_dropout_apply_##SUFFIX(const T *x, T *out, const uint8_t *mask,         \
                                             int64_t b0, int64_t b1, int64_t n, T scale)      \
{                                                                                             \
    int64_t full = n >> 3;                   /* bytes whose 8 elements all exist */           \
    int64_t bf = b1 < full ? b1 : full;                                                       \
    for (int64_t m = b0; m < bf; ++m) {                                                       \
        U byte = mask[m];                                                                     \
        for (int j = 0; j < 8; ++j) {                                                         \
            T v = x[8 * m + j] * scale;                                                       \
            U u;                                                                              \
            memcpy(&u, &v, sizeof u);                                                         \
            u &= (U)0 - ((byte >> j) & 1u);                                                   \
            memcpy(&out[8 * m + j], &u, sizeof u);                                            \
        }                                                                                     \
    }                                                                                         \
    if (b1 > full && full >= b0) {           /* the partial last byte */                     \
        U byte = mask[full];                                                                  \
        for (int64_t i = 8 * full; i < n; ++i) {                                              \
            T v = x[i] * scale;                                                               \
            U u;                                                                              \
            memcpy(&u, &v, sizeof u);                                                         \
            u &= (U)0 - ((byte >> (i & 7)) & 1u);                                             \
            memcpy(&out[i], &u, sizeof u);                                                    \
        }                                                                                     \
    }                                                                                         \
}
FR_DEFINE_DROPOUT_APPLY(f32, float, uint32_t)
FR_DEFINE_DROPOUT_APPLY(f64, double, uint64_t)
#undef FR_DEFINE_DROPOUT_APPLY

#endif
