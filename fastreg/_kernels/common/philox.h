/* Philox4x32-10 dropout masks and mask application (C helpers for dropout/cy.pyx).
 *
 * RNG spec (shared with dropout/numba.py, dropout.py's NumPy reference and a later CUDA port):
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

/* ---------------------------------------------------------------------------------------------
 * Whole-chunk entry points used by dropout/cy.pyx: bytes [b0, b1) of a call over n elements
 * with keep threshold `threshold` (in [0, 2^32]). They clear the unused bits of the tail byte.
 * With AVX-512F, groups of 8 full bytes (64 elements) run the explicit SIMD path below; the rest
 * (and every non-AVX-512 build) runs the portable loops above. Both give identical bits.
 * ------------------------------------------------------------------------------------------- */
#if defined(__AVX512F__)
#include <immintrin.h>
#define FR_PHILOX_AVX512 1

typedef struct {
    __m512i ka[10], kb[10];   /* round keys, broadcast in 64-bit lanes */
    __m512i thr;              /* threshold - 1 in the low 32 bits of each 64-bit lane */
} fr_philox_avx512_keys;

static inline void fr_philox_avx512_setup(fr_philox_avx512_keys *k, uint32_t k0, uint32_t k1,
                                          uint32_t thr_m1)
{
    for (int r = 0; r < 10; ++r) {
        k->ka[r] = _mm512_set1_epi64((long long)(uint32_t)(k0 + (uint32_t)r * FR_PHILOX_W0));
        k->kb[r] = _mm512_set1_epi64((long long)(uint32_t)(k1 + (uint32_t)r * FR_PHILOX_W1));
    }
    k->thr = _mm512_set1_epi64((long long)thr_m1);
}

/* Mask bytes m .. m+7 as one little-endian uint64. Lane q of the vectors holds byte m+q, i.e.
 * counter blocks 2(m+q) ("a") and 2(m+q)+1 ("e"). Words live in the low 32 bits of 64-bit lanes;
 * the high halves carry garbage that vpmuludq and the even-lane compares ignore. */
static inline uint64_t fr_philox_mask8_avx512(const fr_philox_avx512_keys *k, uint64_t offset,
                                              int64_t m)
{
    const __m512i m0 = _mm512_set1_epi64(FR_PHILOX_M0), m1 = _mm512_set1_epi64(FR_PHILOX_M1);
    const __m512i lane2 = _mm512_set_epi64(14, 12, 10, 8, 6, 4, 2, 0);
    __m512i ca = _mm512_add_epi64(_mm512_set1_epi64((long long)(offset + 2 * (uint64_t)m)),
                                  lane2);                       /* wraps mod 2^64 */
    __m512i cb = _mm512_add_epi64(ca, _mm512_set1_epi64(1));
    __m512i a0 = ca, a1 = _mm512_srli_epi64(ca, 32), a2 = _mm512_setzero_si512(), a3 = a2;
    __m512i e0 = cb, e1 = _mm512_srli_epi64(cb, 32), e2 = a2, e3 = a2;
    for (int r = 0; r < 10; ++r) {
        __m512i pa0 = _mm512_mul_epu32(a0, m0), pa1 = _mm512_mul_epu32(a2, m1);
        __m512i pe0 = _mm512_mul_epu32(e0, m0), pe1 = _mm512_mul_epu32(e2, m1);
        /* 0x96: three-way XOR */
        a0 = _mm512_ternarylogic_epi64(_mm512_srli_epi64(pa1, 32), a1, k->ka[r], 0x96);
        a2 = _mm512_ternarylogic_epi64(_mm512_srli_epi64(pa0, 32), a3, k->kb[r], 0x96);
        e0 = _mm512_ternarylogic_epi64(_mm512_srli_epi64(pe1, 32), e1, k->ka[r], 0x96);
        e2 = _mm512_ternarylogic_epi64(_mm512_srli_epi64(pe0, 32), e3, k->kb[r], 0x96);
        a1 = pa1; a3 = pa0; e1 = pe1; e3 = pe0;
    }
    const __mmask16 even = 0x5555;
    __m512i bits = _mm512_setzero_si512();
#define FR_BIT(w, j) bits = _mm512_mask_or_epi32(bits, _mm512_mask_cmple_epu32_mask(even, w, \
                                  k->thr), bits, _mm512_set1_epi32(1 << (j)))
    FR_BIT(a0, 0); FR_BIT(a1, 1); FR_BIT(a2, 2); FR_BIT(a3, 3);
    FR_BIT(e0, 4); FR_BIT(e1, 5); FR_BIT(e2, 6); FR_BIT(e3, 7);
#undef FR_BIT
    return (uint64_t)_mm_cvtsi128_si64(_mm512_cvtepi64_epi8(bits));
}

/* Mask bytes m .. m+15 as two uint64 (out[0]: bytes m..m+7, out[1]: m+8..m+15): the same
 * computation as fr_philox_mask8_avx512 on four independent vector groups, which keeps more
 * multiplies in flight (~10% faster than two mask8 calls). Group g = 2h + s holds blocks
 * 2(m + 8h + q) + s in lane q. */
static inline void fr_philox_mask16_avx512(const fr_philox_avx512_keys *k, uint64_t offset,
                                           int64_t m, uint64_t out[2])
{
    const __m512i m0 = _mm512_set1_epi64(FR_PHILOX_M0), m1 = _mm512_set1_epi64(FR_PHILOX_M1);
    const __m512i lane2 = _mm512_set_epi64(14, 12, 10, 8, 6, 4, 2, 0);
    __m512i c[4][4];
    for (int g = 0; g < 4; ++g) {
        uint64_t base = offset + 2 * (uint64_t)m + 16 * (uint64_t)(g >> 1) + (uint64_t)(g & 1);
        __m512i ctr = _mm512_add_epi64(_mm512_set1_epi64((long long)base), lane2);
        c[g][0] = ctr;
        c[g][1] = _mm512_srli_epi64(ctr, 32);
        c[g][2] = _mm512_setzero_si512();
        c[g][3] = c[g][2];
    }
    for (int r = 0; r < 10; ++r) {
        for (int g = 0; g < 4; ++g) {
            __m512i p0 = _mm512_mul_epu32(c[g][0], m0), p1 = _mm512_mul_epu32(c[g][2], m1);
            c[g][0] = _mm512_ternarylogic_epi64(_mm512_srli_epi64(p1, 32), c[g][1], k->ka[r], 0x96);
            c[g][2] = _mm512_ternarylogic_epi64(_mm512_srli_epi64(p0, 32), c[g][3], k->kb[r], 0x96);
            c[g][1] = p1;
            c[g][3] = p0;
        }
    }
    for (int h = 0; h < 2; ++h) {
        __m512i bits = _mm512_setzero_si512();
        for (int w = 0; w < 4; ++w) {
            bits = _mm512_mask_or_epi32(bits, _mm512_mask_cmple_epu32_mask(0x5555, c[2 * h][w],
                                        k->thr), bits, _mm512_set1_epi32(1 << w));
            bits = _mm512_mask_or_epi32(bits, _mm512_mask_cmple_epu32_mask(0x5555,
                                        c[2 * h + 1][w], k->thr), bits,
                                        _mm512_set1_epi32(1 << (w + 4)));
        }
        out[h] = (uint64_t)_mm_cvtsi128_si64(_mm512_cvtepi64_epi8(bits));
    }
}
#endif

#if !defined(FR_PHILOX_AVX512) && defined(__AVX2__)
/* AVX2 (no AVX-512): 8 Philox blocks at once, one per 32-bit lane, = 4 mask bytes. The 32x32->64
 * products are two vpmuludq (even lanes, odd lanes shifted down) recombined into hi and lo words;
 * "word <= thr_m1" is max_epu32(word, thr) == thr. Lane l is block 2k + (l & 1) of byte k = l / 2;
 * a movemask per output word j gives bit l = lane l, and fr_philox_spread moves lane bits 2k and
 * 2k+1 to bits 8k and 8k+4 (elements 8k + j and 8k + 4 + j after the shift by j). Same bits as the
 * portable loop (tests/test_dropout.py checks every backend against the reference). */
#include <immintrin.h>
#define FR_PHILOX_AVX2 1
#define FR_SP(M) ((uint32_t)((M) & 1) | (uint32_t)(((M) >> 1) & 1) << 4                      \
                  | (uint32_t)(((M) >> 2) & 1) << 8 | (uint32_t)(((M) >> 3) & 1) << 12       \
                  | (uint32_t)(((M) >> 4) & 1) << 16 | (uint32_t)(((M) >> 5) & 1) << 20      \
                  | (uint32_t)(((M) >> 6) & 1) << 24 | (uint32_t)(((M) >> 7) & 1) << 28)
#define FR_SP4(i) FR_SP(i), FR_SP((i) + 1), FR_SP((i) + 2), FR_SP((i) + 3)
#define FR_SP16(i) FR_SP4(i), FR_SP4((i) + 4), FR_SP4((i) + 8), FR_SP4((i) + 12)
#define FR_SP64(i) FR_SP16(i), FR_SP16((i) + 16), FR_SP16((i) + 32), FR_SP16((i) + 48)
static const uint32_t fr_philox_spread[256] = {FR_SP64(0), FR_SP64(64), FR_SP64(128),
                                               FR_SP64(192)};
#undef FR_SP64
#undef FR_SP16
#undef FR_SP4
#undef FR_SP

/* hi and lo 32-bit halves of a * m in each 32-bit lane */
static inline void fr_mulhilo_avx2(__m256i a, __m256i m, __m256i *hi, __m256i *lo)
{
    __m256i even = _mm256_mul_epu32(a, m);
    __m256i odd = _mm256_mul_epu32(_mm256_srli_epi64(a, 32), m);
    *lo = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
    *hi = _mm256_blend_epi32(_mm256_srli_epi64(even, 32), odd, 0xAA);
}

/* Mask bytes m .. m+3 (blocks offset + 2m .. + 7) as a little-endian uint32; the caller makes
 * sure lo32(offset + 2m) + 7 does not wrap (the carry into the high word is not propagated). */
static inline uint32_t fr_philox_mask4_avx2(uint32_t k0, uint32_t k1, uint64_t offset, int64_t m,
                                            uint32_t thr_m1)
{
    uint64_t base = offset + 2 * (uint64_t)m;
    __m256i c0 = _mm256_add_epi32(_mm256_set1_epi32((int)(uint32_t)base),
                                  _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
    __m256i c1 = _mm256_set1_epi32((int)(uint32_t)(base >> 32));
    __m256i c2 = _mm256_setzero_si256(), c3 = _mm256_setzero_si256();
    const __m256i m0 = _mm256_set1_epi32((int)FR_PHILOX_M0), m1 = _mm256_set1_epi32((int)FR_PHILOX_M1);
    for (int r = 0; r < 10; ++r) {
        __m256i h0, l0, h1, l1;
        fr_mulhilo_avx2(c0, m0, &h0, &l0);
        fr_mulhilo_avx2(c2, m1, &h1, &l1);
        __m256i ka = _mm256_set1_epi32((int)(k0 + (uint32_t)r * FR_PHILOX_W0));
        __m256i kb = _mm256_set1_epi32((int)(k1 + (uint32_t)r * FR_PHILOX_W1));
        c0 = _mm256_xor_si256(_mm256_xor_si256(h1, c1), ka);
        c2 = _mm256_xor_si256(_mm256_xor_si256(h0, c3), kb);
        c1 = l1;
        c3 = l0;
    }
    const __m256i thr = _mm256_set1_epi32((int)thr_m1);
#define FR_KEEP(c) ((uint32_t)_mm256_movemask_ps(_mm256_castsi256_ps(                           \
                        _mm256_cmpeq_epi32(_mm256_max_epu32((c), thr), thr))))
    return fr_philox_spread[FR_KEEP(c0)] | fr_philox_spread[FR_KEEP(c1)] << 1
         | fr_philox_spread[FR_KEEP(c2)] << 2 | fr_philox_spread[FR_KEEP(c3)] << 3;
#undef FR_KEEP
}
#endif

/* Keep bits of bytes [b0, b1), tail bits cleared. */
static inline void fr_dropout_mask_chunk(uint8_t *mask, int64_t b0, int64_t b1, int64_t n,
                                         uint32_t k0, uint32_t k1, uint64_t offset,
                                         uint64_t threshold)
{
    int64_t nbytes = (n + 7) >> 3;
    if (threshold == 0) {                      /* (1 - p) 2^32 < 1: nothing survives */
        memset(mask + b0, 0, (size_t)(b1 - b0));
        return;
    }
    uint32_t thr_m1 = (uint32_t)(threshold - 1);
    int64_t m = b0;
#ifdef FR_PHILOX_AVX512
    fr_philox_avx512_keys keys;
    fr_philox_avx512_setup(&keys, k0, k1, thr_m1);
    for (; m + 16 <= b1; m += 16) {
        uint64_t two[2];
        fr_philox_mask16_avx512(&keys, offset, m, two);
        memcpy(mask + m, two, 16);
    }
    for (; m + 8 <= b1; m += 8) {
        uint64_t bytes = fr_philox_mask8_avx512(&keys, offset, m);
        memcpy(mask + m, &bytes, 8);
    }
#endif
#ifdef FR_PHILOX_AVX2
    for (; m + 4 <= b1; m += 4) {
        if ((uint32_t)(offset + 2 * (uint64_t)m) > 0xFFFFFFF8u) {   /* a carry inside: portable */
            fr_dropout_mask_bytes(mask, m, m + 4, k0, k1, offset, thr_m1);
            continue;
        }
        uint32_t four = fr_philox_mask4_avx2(k0, k1, offset, m, thr_m1);
        memcpy(mask + m, &four, 4);
    }
#endif
    fr_dropout_mask_bytes(mask, m, b1, k0, k1, offset, thr_m1);
    if (b1 == nbytes && (n & 7) != 0)          /* unused bits of the tail byte are 0 */
        mask[nbytes - 1] &= (uint8_t)((1u << (n & 7)) - 1u);
}

/* Forward over bytes [b0, b1): mask bits and out = x * scale where kept, else +0.
 * VEC_BODY applies 8 fresh mask bytes (uint64 `bytes`) to the 64 elements from 8m. */
#define FR_DEFINE_DROPOUT_FORWARD(SUFFIX, T, VEC_BODY)                                        \
static inline void fr_dropout_forward_chunk_##SUFFIX(const T *x, T *out, uint8_t *mask,        \
        int64_t b0, int64_t b1, int64_t n, uint32_t k0, uint32_t k1, uint64_t offset,         \
        uint64_t threshold, T scale)                                                          \
{                                                                                             \
    int64_t m = b0;                                                                           \
    FR_FORWARD_VEC(T, VEC_BODY)                                                                  \
    fr_dropout_mask_chunk(mask, m, b1, n, k0, k1, offset, threshold);                         \
    fr_dropout_apply_##SUFFIX(x, out, mask, m, b1, n, scale);                                 \
}

#ifdef FR_PHILOX_AVX512
#define FR_PHILOX_AVX512_ENABLED 1
#define FR_FORWARD_VEC(T, VEC_BODY)                                                              \
    if (threshold != 0) {                                                                     \
        fr_philox_avx512_keys keys;                                                           \
        fr_philox_avx512_setup(&keys, k0, k1, (uint32_t)(threshold - 1));                     \
        int64_t full = n >> 3;                 /* bytes whose 8 elements all exist */         \
        int64_t bv = b1 < full ? b1 : full;                                                   \
        for (; m + 16 <= bv; m += 16) {                                                       \
            uint64_t two[2];                                                                  \
            fr_philox_mask16_avx512(&keys, offset, m, two);                                   \
            memcpy(mask + m, two, 16);                                                        \
            for (int h = 0; h < 2; ++h) {                                                     \
                uint64_t bytes = two[h];                                                      \
                const T *xs = x + 8 * (m + 8 * h);                                            \
                T *os = out + 8 * (m + 8 * h);                                                \
                VEC_BODY                                                                      \
            }                                                                                 \
        }                                                                                     \
        for (; m + 8 <= bv; m += 8) {                                                         \
            uint64_t bytes = fr_philox_mask8_avx512(&keys, offset, m);                        \
            memcpy(mask + m, &bytes, 8);                                                      \
            const T *xs = x + 8 * m;                                                          \
            T *os = out + 8 * m;                                                              \
            VEC_BODY                                                                          \
        }                                                                                     \
    }
#define FR_VEC_F32                                                                            \
    { const __m512 s = _mm512_set1_ps(scale);                                                 \
      for (int t = 0; t < 4; ++t)                                                             \
          _mm512_storeu_ps(os + 16 * t, _mm512_maskz_mul_ps((__mmask16)(bytes >> (16 * t)),   \
                                                            _mm512_loadu_ps(xs + 16 * t), s)); }
#define FR_VEC_F64                                                                            \
    { const __m512d s = _mm512_set1_pd(scale);                                                \
      for (int t = 0; t < 8; ++t)                                                             \
          _mm512_storeu_pd(os + 8 * t, _mm512_maskz_mul_pd((__mmask8)(bytes >> (8 * t)),       \
                                                           _mm512_loadu_pd(xs + 8 * t), s)); }
#else
#define FR_PHILOX_AVX512_ENABLED 0
#define FR_FORWARD_VEC(T, VEC_BODY)
#define FR_VEC_F32
#define FR_VEC_F64
#endif

FR_DEFINE_DROPOUT_FORWARD(f32, float, FR_VEC_F32)
FR_DEFINE_DROPOUT_FORWARD(f64, double, FR_VEC_F64)

#endif
