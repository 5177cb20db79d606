/* Quantized linear layers: int8 weights x dynamically quantized activations, and bf16 weights x
 * float32 activations.  y[N, M] = act(x[N, K] @ W[M, K]^T + b[M]).
 *
 * int8 (per output channel j, per input row i):
 *   weights   W[j, k] ~ sw[j] * wq[j, k],  wq in [-127, 127] (symmetric, no zero point)
 *   activations x[i, k] ~ sx[i] * (xq[i, k] - zp[i]),  xq, zp in [0, 127]  (7-bit, asymmetric)
 *   acc[i, j] = sum_k xq[i, k] * wq[j, k]                  (int32, exact)
 *   y[i, j]   = act(fmaf((float)(acc[i, j] - zp[i] * cs[j]), sx[i] * sw[j], b[j]))
 *   with cs[j] = sum_k wq[j, k] (computed once, at packing).
 * Why 7-bit activations: _mm256_maddubs_epi16 adds two u8*s8 products into a *saturating*
 * int16; with xq <= 127 and |wq| <= 127 a pair is at most 2 * 127 * 127 = 32258 < 32767, so
 * it can never saturate and every path (AVX-512 VNNI vpdpbusd, AVX2 maddubs + madd, portable C)
 * gives the same int32 accumulators bit for bit.
 *
 * bf16: W stored as bf16 (the high 16 bits of a float32, rounded to nearest even); each weight
 * is widened on the fly ((uint32)w << 16 reinterpreted as float).  Every output is an 8-lane
 * float32 FMA accumulation (lane l takes k = l mod 8, in increasing k; the tail of x is read as
 * zeros), reduced as ((l0+l4)+(l2+l6)) + ((l1+l5)+(l3+l7)), then + b[j] and the activation.
 * The portable path performs the same operations in the same order (fmaf), so both paths agree
 * bit for bit.  From FR_BF16_WIDEN_MIN_ROWS rows on, each thread widens a block's weights to
 * float32 once (exact) and reuses them for every row: the same FMAs, the same bits.  (AVX-512 BF16's vdpbf16ps would need bf16 *activations*, which changes the
 * numbers: it is deliberately not used.)
 *
 * Packed weight layouts (built once, at compile time, by fr_q8_pack / fr_bf16_pack): M rounded
 * up to a multiple of 4 (zero rows), K to Kp (a multiple of 32 for int8, 8 for bf16; zeros);
 * the 4 rows of a block are interleaved chunk by chunk so that the 2 x 4 register tile reads
 * one contiguous stream:
 *   int8  index(j, k) = ((j/4) * (Kp/32) + k/32) * 128 + (j%4) * 32 + k%32
 *   bf16  index(j, k) = ((j/4) * (Kp/8)  + k/8)  * 32  + (j%4) * 8  + k%8
 * OpenMP splits the output columns (blocks of 4 weight rows) across threads; each thread
 * runs 2 x 4 tiles (2 input rows, 4 weight rows) over its blocks, the weights of a block staying
 * in L1 while the rows of x stream past.
 *
 * fr_q8_chain runs consecutive int8 layers in one call and one OpenMP region (a predictor's
 * runs of Linear stages): per layer, quantize the input rows, then the blocks split over the
 * threads as above, one barrier; the same bits as the layers called one by one.
 */
#ifndef FASTREG_QUANT_H
#define FASTREG_QUANT_H

#include <math.h>
#include <stddef.h>
#include "split_pool.h"
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include "prelude.h"
#if defined(__AVX2__)
#include <immintrin.h>
#endif

#define FR_QACT_IDENTITY 0
#define FR_QACT_RELU 1
#define FR_QACT_LEAKY_RELU 2
#define FR_QACT_SIGMOID 3
#define FR_QACT_TANH 4

/* Below this many multiply-adds a call runs on one thread: the float GEMV's threshold (matmul's
 * FR_PAR_MIN_FLOPS_GEMV, 4 MFLOP).  An OpenMP fork per layer costs ~1-2 us on a quiet machine
 * but milliseconds on an oversubscribed one (measured: 2-thread batch 1 went from 0.12 to 4.6 ms
 * with a 64K threshold), so batch-1 layers of MLP size stay on one thread. */
#define FR_Q_PAR_MIN_MACS 2.0e6

static inline float fr_q_act(float v, int act, float slope) {
    switch (act) {
    case FR_QACT_RELU: return v < 0.0f ? 0.0f : v;            /* relu(NaN) = NaN */
    case FR_QACT_LEAKY_RELU: return v < 0.0f ? v * slope : v;
    case FR_QACT_SIGMOID: return 1.0f / (1.0f + expf(-v));
    case FR_QACT_TANH: return tanhf(v);
    default: return v;
    }
}

/* Which paths this build has: 2 = AVX-512 VNNI, 1 = AVX2, 0 = portable C only. */
static inline int fr_q8_simd_level(void) {
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
    return 2;
#elif defined(__AVX2__)
    return 1;
#else
    return 0;
#endif
}

static inline int fr_bf16_simd_level(void) {
#if defined(__AVX2__) && defined(__FMA__)
    return 1;
#else
    return 0;
#endif
}

/* ------------------------------------------------------------------ int8: activations */

/* Quantize the rows of x (n, k) into xq (n, kp; columns k..kp-1 zero), sx (n), zp (n):
 *   lo = min(0, min_k x), hi = max(0, max_k x), s = (hi - lo) / 127, inv = 1 / s,
 *   zp = clamp(rint(-lo * inv), 0, 127), xq = clamp(rint(x * inv) + zp, 0, 127)
 * (rint: round half to even).  A row of zeros (or of magnitudes below FLT_MIN * 127) gets
 * s = 0, zp = 0, xq = 0 (its products are zero).  A row with a NaN or an infinity gets
 * s = NaN (its outputs are NaN) and xq = 0. */
static void fr_q8_quantize_rows(int n, int k, int kp, const float *x, uint8_t *xq, float *sx,
                                int32_t *zp, int portable) {
    for (int i = 0; i < n; i++) {
        const float *xr = x + (ptrdiff_t)i * k;
        uint8_t *qr = xq + (ptrdiff_t)i * kp;
        float lo = 0.0f, hi = 0.0f;
        int bad = 0;
        int t = 0;
#if defined(__AVX2__)
        if (!portable && k >= 8) {
            __m256 vlo = _mm256_setzero_ps(), vhi = _mm256_setzero_ps(), vbad = vlo;
            for (; t + 8 <= k; t += 8) {
                __m256 v = _mm256_loadu_ps(xr + t);
                vbad = _mm256_or_ps(vbad, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
                vlo = _mm256_min_ps(vlo, v);
                vhi = _mm256_max_ps(vhi, v);
            }
            float a[8], b[8];
            _mm256_storeu_ps(a, vlo);
            _mm256_storeu_ps(b, vhi);
            for (int l = 0; l < 8; l++) {
                lo = a[l] < lo ? a[l] : lo;
                hi = b[l] > hi ? b[l] : hi;
            }
            bad = _mm256_movemask_ps(vbad) != 0;
        }
#endif
        for (; t < k; t++) {
            float v = xr[t];
            bad |= v != v;
            lo = v < lo ? v : lo;
            hi = v > hi ? v : hi;
        }
        float s = (hi - lo) / 127.0f;
        if (bad || !isfinite(s)) {
            sx[i] = NAN;
            zp[i] = 0;
            memset(qr, 0, (size_t)kp);
            continue;
        }
        if (!(s >= 1.1754944e-38f)) {      /* zero (or subnormal) range: products ~ 0 */
            sx[i] = 0.0f;
            zp[i] = 0;
            memset(qr, 0, (size_t)kp);
            continue;
        }
        float inv = 1.0f / s;
        float z = nearbyintf(-lo * inv);
        int zi = z < 0.0f ? 0 : (z > 127.0f ? 127 : (int)z);
        sx[i] = s;
        zp[i] = zi;
        t = 0;
#if defined(__AVX2__)
        if (!portable) {
            const __m256 vinv = _mm256_set1_ps(inv);
            const __m256i vz = _mm256_set1_epi32(zi), v0 = _mm256_setzero_si256(),
                          v127 = _mm256_set1_epi32(127);
            /* 32 values a step: 4 x 8 int32 in [0, 127] narrowed to bytes by two unsigned
             * saturating packs (no value saturates) and one cross-lane permutation */
            const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
            for (; t + 32 <= k; t += 32) {
                __m256i q[4];
                for (int u = 0; u < 4; u++) {
                    __m256 v = _mm256_mul_ps(_mm256_loadu_ps(xr + t + 8 * u), vinv);
                    __m256i w = _mm256_cvtps_epi32(
                        _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
                    q[u] = _mm256_min_epi32(_mm256_max_epi32(_mm256_add_epi32(w, vz), v0),
                                            v127);
                }
                __m256i b = _mm256_packus_epi16(_mm256_packus_epi32(q[0], q[1]),
                                                _mm256_packus_epi32(q[2], q[3]));
                _mm256_storeu_si256((__m256i *)(qr + t),
                                    _mm256_permutevar8x32_epi32(b, order));
            }
            for (; t + 8 <= k; t += 8) {
                __m256 v = _mm256_mul_ps(_mm256_loadu_ps(xr + t), vinv);
                __m256i q = _mm256_cvtps_epi32(
                    _mm256_round_ps(v, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC));
                q = _mm256_min_epi32(_mm256_max_epi32(_mm256_add_epi32(q, vz), v0), v127);
                __m128i h = _mm_packus_epi32(_mm256_castsi256_si128(q),
                                             _mm256_extracti128_si256(q, 1));
                _mm_storel_epi64((__m128i *)(qr + t), _mm_packus_epi16(h, h));
            }
        }
#endif
        for (; t < k; t++) {
            float q = nearbyintf(xr[t] * inv) + (float)zi;    /* exact: |q| < 2^24 */
            qr[t] = (uint8_t)(q < 0.0f ? 0 : (q > 127.0f ? 127 : (int)q));
        }
        if (kp > k) memset(qr + k, 0, (size_t)(kp - k));
    }
}

/* ------------------------------------------------------------------ int8: weights */

/* Pack wq (m, k) int8 into the blocked layout (mp = m rounded up to 4, kp) and cs[j] = sum_k
 * wq[j, k] (cs has mp entries; padded rows: 0). */
static void fr_q8_pack(int m, int k, int kp, const int8_t *wq, int8_t *packed, int32_t *cs) {
    const int mp = (m + 3) & ~3, nk = kp / 32;
    memset(packed, 0, (size_t)mp * kp);
    for (int j = 0; j < mp; j++) {
        int32_t s = 0;
        if (j < m) {
            for (int t = 0; t < k; t++) {
                int8_t w = wq[(ptrdiff_t)j * k + t];
                packed[((ptrdiff_t)(j / 4) * nk + t / 32) * 128 + (j % 4) * 32 + t % 32] = w;
                s += w;
            }
        }
        cs[j] = s;
    }
}

#if defined(__AVX2__)
/* [sum(a0), sum(a1), sum(a2), sum(a3)] (exact int32 sums of the 8 lanes each) */
static inline __m128i fr_hsum4_epi32(__m256i a0, __m256i a1, __m256i a2, __m256i a3) {
    __m256i h = _mm256_hadd_epi32(_mm256_hadd_epi32(a0, a1), _mm256_hadd_epi32(a2, a3));
    return _mm_add_epi32(_mm256_castsi256_si128(h), _mm256_extracti128_si256(h, 1));
}

/* acc += xq . w over 32 bytes: u8 x s8 products, pairs into int16 (cannot saturate: 7-bit xq),
 * then into int32 (VNNI: one vpdpbusd, exact). */
#if defined(__AVX512VNNI__) && defined(__AVX512VL__)
#define FR_Q8_DOT(acc, xv, wv, ones) ((void)(ones), (acc) = _mm256_dpbusd_epi32((acc), (xv), (wv)))
#else
#define FR_Q8_DOT(acc, xv, wv, ones) \
    (acc) = _mm256_add_epi32((acc), _mm256_madd_epi16(_mm256_maddubs_epi16((xv), (wv)), (ones)))
#endif
#endif

/* The int32 accumulators of rows i0..i0+r-1 (r = 1 or 2) against weight block jb (4 rows). */
static inline void fr_q8_tile(int r, int nk, const uint8_t *x0, const uint8_t *x1,
                              const int8_t *wb, int32_t acc[2][4], int portable) {
#if defined(__AVX2__)
    if (!portable) {
        const __m256i ones = _mm256_set1_epi16(1);
        __m256i a00 = _mm256_setzero_si256(), a01 = a00, a02 = a00, a03 = a00;
        __m256i a10 = a00, a11 = a00, a12 = a00, a13 = a00;
        if (r == 2) {
            for (int c = 0; c < nk; c++) {
                const int8_t *w = wb + (ptrdiff_t)c * 128;
                __m256i xv0 = _mm256_loadu_si256((const __m256i *)(x0 + c * 32));
                __m256i xv1 = _mm256_loadu_si256((const __m256i *)(x1 + c * 32));
                __m256i w0 = _mm256_loadu_si256((const __m256i *)w);
                FR_Q8_DOT(a00, xv0, w0, ones);
                FR_Q8_DOT(a10, xv1, w0, ones);
                __m256i w1 = _mm256_loadu_si256((const __m256i *)(w + 32));
                FR_Q8_DOT(a01, xv0, w1, ones);
                FR_Q8_DOT(a11, xv1, w1, ones);
                __m256i w2 = _mm256_loadu_si256((const __m256i *)(w + 64));
                FR_Q8_DOT(a02, xv0, w2, ones);
                FR_Q8_DOT(a12, xv1, w2, ones);
                __m256i w3 = _mm256_loadu_si256((const __m256i *)(w + 96));
                FR_Q8_DOT(a03, xv0, w3, ones);
                FR_Q8_DOT(a13, xv1, w3, ones);
            }
        } else {
            for (int c = 0; c < nk; c++) {
                const int8_t *w = wb + (ptrdiff_t)c * 128;
                __m256i xv0 = _mm256_loadu_si256((const __m256i *)(x0 + c * 32));
                FR_Q8_DOT(a00, xv0, _mm256_loadu_si256((const __m256i *)w), ones);
                FR_Q8_DOT(a01, xv0, _mm256_loadu_si256((const __m256i *)(w + 32)), ones);
                FR_Q8_DOT(a02, xv0, _mm256_loadu_si256((const __m256i *)(w + 64)), ones);
                FR_Q8_DOT(a03, xv0, _mm256_loadu_si256((const __m256i *)(w + 96)), ones);
            }
        }
        _mm_storeu_si128((__m128i *)acc[0], fr_hsum4_epi32(a00, a01, a02, a03));
        _mm_storeu_si128((__m128i *)acc[1], fr_hsum4_epi32(a10, a11, a12, a13));
        return;
    }
#endif
    for (int ii = 0; ii < 2; ii++)
        for (int jj = 0; jj < 4; jj++) acc[ii][jj] = 0;
    for (int ii = 0; ii < r; ii++) {
        const uint8_t *xr = ii ? x1 : x0;
        for (int c = 0; c < nk; c++)
            for (int jj = 0; jj < 4; jj++) {
                const int8_t *w = wb + (ptrdiff_t)c * 128 + jj * 32;
                int32_t s = 0;
                for (int l = 0; l < 32; l++) s += (int32_t)xr[c * 32 + l] * (int32_t)w[l];
                acc[ii][jj] += s;
            }
    }
}

/* Weight block jb (output columns 4*jb .. 4*jb+3) of out[n, m] = act(fmaf(acc - zp*cs, sx*sw, b))
 * from xq (n, kp) and the packed weights; when acc_out is not NULL the raw int32 accumulators
 * (n, m) are written there too. */
static inline void fr_q8_linear_block(int jb, int n, int m, int kp, const uint8_t *xq,
                                      const float *sx, const int32_t *zp, const int8_t *packed,
                                      const float *sw, const int32_t *cs, const float *bias,
                                      float *out, int32_t *acc_out, int act, float slope,
                                      int portable) {
    const int nk = kp / 32;
    const int8_t *wb = packed + (ptrdiff_t)jb * kp * 4;
    const int j0 = jb * 4, jn = m - j0 < 4 ? m - j0 : 4;
    for (int i = 0; i < n; i += 2) {
        const int r = n - i < 2 ? n - i : 2;
        int32_t acc[2][4];
        const uint8_t *x0 = xq + (ptrdiff_t)i * kp;
        fr_q8_tile(r, nk, x0, r == 2 ? x0 + kp : x0, wb, acc, portable);
        for (int ii = 0; ii < r; ii++) {
            const float s = sx[i + ii];
            const int32_t z = zp[i + ii];
            float *o = out + (ptrdiff_t)(i + ii) * m + j0;
#if defined(__AVX2__) && defined(__FMA__)
            if (!portable && jn == 4) {
                /* the scalar epilogue below, 4 columns at once: the same operations
                 * (int32 multiply-subtract, RNE conversion, one fused multiply-add) */
                const __m128i d = _mm_sub_epi32(
                    _mm_loadu_si128((const __m128i *)acc[ii]),
                    _mm_mullo_epi32(_mm_set1_epi32(z),
                                    _mm_loadu_si128((const __m128i *)(cs + j0))));
                __m128 v = _mm_fmadd_ps(
                    _mm_cvtepi32_ps(d), _mm_mul_ps(_mm_set1_ps(s), _mm_loadu_ps(sw + j0)),
                    bias ? _mm_loadu_ps(bias + j0) : _mm_setzero_ps());
                if (act == FR_QACT_RELU)
                    v = _mm_max_ps(_mm_setzero_ps(), v);   /* = v < 0 ? 0 : v, NaN kept */
                _mm_storeu_ps(o, v);
                if (act != FR_QACT_IDENTITY && act != FR_QACT_RELU)
                    for (int jj = 0; jj < 4; jj++) o[jj] = fr_q_act(o[jj], act, slope);
                if (acc_out) memcpy(acc_out + (ptrdiff_t)(i + ii) * m + j0, acc[ii], 16);
                continue;
            }
#endif
            for (int jj = 0; jj < jn; jj++) {
                const int j = j0 + jj;
                const float t = (float)(acc[ii][jj] - z * cs[j]);
                const float v = fmaf(t, s * sw[j], bias ? bias[j] : 0.0f);
                o[jj] = fr_q_act(v, act, slope);
            }
            if (acc_out)
                for (int jj = 0; jj < jn; jj++)
                    acc_out[(ptrdiff_t)(i + ii) * m + j0 + jj] = acc[ii][jj];
        }
    }
}

/* out[n, m] for every weight block: OpenMP over the blocks (output columns). */
static void fr_q8_linear(int n, int m, int kp, const uint8_t *xq, const float *sx,
                         const int32_t *zp, const int8_t *packed, const float *sw,
                         const int32_t *cs, const float *bias, float *out, int32_t *acc_out,
                         int act, float slope, int nthreads, int portable) {
    const int nb = (m + 3) / 4;
    const double macs = (double)n * m * kp;
    int nt = macs >= FR_Q_PAR_MIN_MACS ? nthreads : 1;
    if (nt > nb) nt = nb;
    if (nt < 1) nt = 1;
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int jb = 0; jb < nb; jb++)
        fr_q8_linear_block(jb, n, m, kp, xq, sx, zp, packed, sw, cs, bias, out, acc_out, act,
                           slope, portable);
}

/* ------------------------------------------------------------------ int8: a chain of layers */

/* A chain of int8 layers at or above this many multiply-adds (all layers, all rows) runs on
 * nthreads by default (fr_q8_chain's par_min_macs < 0): batch 1 of the 784-512-256-10 MLP
 * (535K multiply-adds) splits. At up to FR_Q_CHAIN_PRIVATE_ROWS rows the split runs on the split
 * pool (common/split_pool.h: the caller never waits for a worker that has not started; quiet
 * 2-core machine: 14-15 -> 8.5 us at batch 1); larger batches in one OpenMP region.
 * fastreg.inference.set_split_small_batches(False) sets 2e6 (batch 1 of that MLP on one thread):
 * with an OpenMP region a descheduled worker held every barrier for a time slice (0.76-1.3 ms a
 * call when another process held a core). */
#define FR_Q_CHAIN_PAR_MIN_MACS 2.5e5
/* The threshold a chain built with par_min_macs < 0 uses, read at every call (so
 * fastreg.inference.set_split_small_batches applies to predictors already built). */
static double fr_q_chain_par_min_macs = FR_Q_CHAIN_PAR_MIN_MACS;
/* Up to this many rows a multi-threaded chain runs on the split pool (the caller quantizes each
 * layer's input, the column blocks are the tasks); above, one OpenMP region. */
#define FR_Q_CHAIN_PRIVATE_ROWS 4

/* One int8 layer of a small-batch chain, split by blocks of 4 output columns (fr_q8_chain). */
struct fr_q8_chain_job {
    int n, m, kp, nb, ntask;
    const uint8_t *xq;
    const float *sx;
    const int32_t *zp;
    const int8_t *packed;
    const float *sw;
    const int32_t *cs;
    const float *bias;
    float *o;
    int act;
    float slope;
    int portable;
};

static void fr_q8_chain_task(void *ctx, int t) {
    const struct fr_q8_chain_job *j = (const struct fr_q8_chain_job *)ctx;
    const int b0 = (int)((long)j->nb * t / j->ntask), b1 = (int)((long)j->nb * (t + 1) / j->ntask);
    for (int jb = b0; jb < b1; jb++)
        fr_q8_linear_block(jb, j->n, j->m, j->kp, j->xq, j->sx, j->zp, j->packed, j->sw, j->cs,
                           j->bias, j->o, NULL, j->act, j->slope, j->portable);
}

/* out[n, dims[L]] = layer L-1( ... layer 0(x[n, dims[0]])): layer l is the int8 linear of
 * fr_q8_linear with K = dims[l], M = dims[l+1], Kp = kps[l], its packed weights, scales, column
 * sums, bias (or NULL) and activation; each layer quantizes its input rows (the previous
 * layer's float32 output, exactly as a sequence of fr_q8_quantize_rows + fr_q8_linear calls
 * would: the same bits, for every thread count).  It runs on nthreads from par_min_macs
 * multiply-adds (< 0: fr_q_chain_par_min_macs).  Intermediates live in one malloc'ed scratch
 * (so concurrent calls are safe).  Returns 0, or -1 when the scratch cannot be allocated. */
static int fr_q8_chain(int n, int L, const int *dims, const int *kps,
                       const int8_t *const *packed, const float *const *sw,
                       const int32_t *const *cs, const float *const *bias, const int *acts,
                       const float *slopes, const float *x, float *out, int nthreads,
                       double par_min_macs, int portable) {
    int maxkp = 0, maxm = 0;
    double macs = 0.0;
    for (int l = 0; l < L; l++) {
        if (kps[l] > maxkp) maxkp = kps[l];
        if (l < L - 1 && dims[l + 1] > maxm) maxm = dims[l + 1];
        macs += (double)n * kps[l] * dims[l + 1];
    }
    if (par_min_macs < 0.0) par_min_macs = fr_q_chain_par_min_macs;
    int nt = macs >= par_min_macs ? nthreads : 1;
    if (nt < 1) nt = 1;
    const int private_q = nt > 1 && n <= FR_Q_CHAIN_PRIVATE_ROWS;
    const size_t nrows = (size_t)n;
    const size_t fbytes = ((nrows * maxm * sizeof(float)) + 63) & ~(size_t)63;
    const size_t qbytes = ((nrows * maxkp + nrows * 8) + 63) & ~(size_t)63;
    char *scratch = (char *)malloc(2 * fbytes + qbytes + 64);
    if (!scratch) return -1;
    float *buf[2] = {(float *)scratch, (float *)(scratch + fbytes)};
    char *qbase = scratch + 2 * fbytes;
    if (private_q) {
        /* a few rows on several threads: the caller quantizes each layer's input (a few hundred
         * values), then the layer's column blocks run on the split pool (split_pool.h: the
         * caller takes part and never waits for a worker that has not started; an OpenMP
         * barrier would wait a time slice for a descheduled one) */
        uint8_t *xq = (uint8_t *)qbase;
        float *sx = (float *)(qbase + nrows * maxkp);
        int32_t *zp = (int32_t *)(sx + nrows);
        for (int l = 0; l < L; l++) {
            const int k = dims[l], m = dims[l + 1], kp = kps[l], nb = (m + 3) / 4;
            const float *in = l == 0 ? x : buf[(l - 1) & 1];
            float *o = l == L - 1 ? out : buf[l & 1];
            fr_q8_quantize_rows(n, k, kp, in, xq, sx, zp, portable);
            int ntask = nb / 8;                 /* tasks of at least 8 blocks (32 columns) */
            if (ntask > 4 * nt) ntask = 4 * nt;
            if (ntask < 1) ntask = 1;
            struct fr_q8_chain_job job = {n, m, kp, nb, ntask, xq, sx, zp, packed[l], sw[l],
                                          cs[l], bias[l], o, acts[l], slopes[l], portable};
            fr_split_run(fr_q8_chain_task, &job, ntask, nt);
        }
        free(scratch);
        return 0;
    }
#pragma omp parallel num_threads(nt) if (nt > 1)
    {
        uint8_t *xq = (uint8_t *)qbase;
        float *sx = (float *)(qbase + nrows * maxkp);
        int32_t *zp = (int32_t *)(sx + nrows);
        for (int l = 0; l < L; l++) {
            const int k = dims[l], m = dims[l + 1], kp = kps[l], nb = (m + 3) / 4;
            const float *in = l == 0 ? x : buf[(l - 1) & 1];
            float *o = l == L - 1 ? out : buf[l & 1];
#pragma omp for schedule(static)
            for (int i = 0; i < n; i++)
                fr_q8_quantize_rows(1, k, kp, in + (ptrdiff_t)i * k,
                                    xq + (ptrdiff_t)i * kp, sx + i, zp + i, portable);
#pragma omp for schedule(static)
            for (int jb = 0; jb < nb; jb++)
                fr_q8_linear_block(jb, n, m, kp, xq, sx, zp, packed[l], sw[l], cs[l], bias[l],
                                   o, NULL, acts[l], slopes[l], portable);
        }
    }
    free(scratch);
    return 0;
}

/* ------------------------------------------------------------------ bf16 */

/* Pack wb (m, k) uint16 (bf16 bits) into the blocked layout (mp, kp). */
static void fr_bf16_pack(int m, int k, int kp, const uint16_t *wb, uint16_t *packed) {
    const int mp = (m + 3) & ~3, nk = kp / 8;
    memset(packed, 0, (size_t)mp * kp * sizeof(uint16_t));
    for (int j = 0; j < m; j++)
        for (int t = 0; t < k; t++)
            packed[((ptrdiff_t)(j / 4) * nk + t / 8) * 32 + (j % 4) * 8 + t % 8] =
                wb[(ptrdiff_t)j * k + t];
}

static inline float fr_bf16_to_f32(uint16_t h) {
    uint32_t u = (uint32_t)h << 16;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

static inline float fr_lanes_sum(const float l[8]) {
    return ((l[0] + l[4]) + (l[2] + l[6])) + ((l[1] + l[5]) + (l[3] + l[7]));
}

#if defined(__AVX2__) && defined(__FMA__)
static inline float fr_hsum_ps(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    /* s = [l0+l4, l1+l5, l2+l6, l3+l7] */
    __m128 h = _mm_add_ps(s, _mm_movehl_ps(s, s));       /* [(l0+l4)+(l2+l6), (l1+l5)+(l3+l7)] */
    h = _mm_add_ss(h, _mm_shuffle_ps(h, h, 0x55));
    return _mm_cvtss_f32(h);
}

static inline __m256 fr_bf16x8(const uint16_t *p) {
    return _mm256_castsi256_ps(
        _mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)p)), 16));
}
#endif

#if defined(__AVX2__) && defined(__FMA__)
/* The AVX2 loop of a 2 x 4 bf16 tile: weights from wb (bf16, widened in the loop) or, when wf is
 * not NULL, from wf (the same block already widened to float32: 32 floats a chunk). The same
 * FMAs in the same order either way, so the same bits; wf/wb is a constant at every call site,
 * so the compiler specializes the loop. */
static inline void fr_bf16_tile_avx2(int r, int k, int nk, const float *x0, const float *x1,
                                     const uint16_t *wb, const float *wf, float acc[2][4]) {
    __m256 a00 = _mm256_setzero_ps(), a01 = a00, a02 = a00, a03 = a00;
    __m256 a10 = a00, a11 = a00, a12 = a00, a13 = a00;
    const int kf = k / 8;           /* full chunks of x; the last partial one is masked */
    for (int c = 0; c < nk; c++) {
        __m256 xv0, xv1, w0, w1, w2, w3;
        if (c < kf) {
            xv0 = _mm256_loadu_ps(x0 + c * 8);
            xv1 = _mm256_loadu_ps(x1 + c * 8);
        } else {
            const int rem = k - c * 8;
            const __m256i mask = _mm256_cmpgt_epi32(
                _mm256_set1_epi32(rem), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
            xv0 = _mm256_maskload_ps(x0 + c * 8, mask);
            xv1 = _mm256_maskload_ps(x1 + c * 8, mask);
        }
        if (wf) {
            const float *w = wf + (ptrdiff_t)c * 32;
            w0 = _mm256_loadu_ps(w); w1 = _mm256_loadu_ps(w + 8);
            w2 = _mm256_loadu_ps(w + 16); w3 = _mm256_loadu_ps(w + 24);
        } else {
            const uint16_t *w = wb + (ptrdiff_t)c * 32;
            w0 = fr_bf16x8(w); w1 = fr_bf16x8(w + 8);
            w2 = fr_bf16x8(w + 16); w3 = fr_bf16x8(w + 24);
        }
        a00 = _mm256_fmadd_ps(xv0, w0, a00);
        a01 = _mm256_fmadd_ps(xv0, w1, a01);
        a02 = _mm256_fmadd_ps(xv0, w2, a02);
        a03 = _mm256_fmadd_ps(xv0, w3, a03);
        if (r == 2) {
            a10 = _mm256_fmadd_ps(xv1, w0, a10);
            a11 = _mm256_fmadd_ps(xv1, w1, a11);
            a12 = _mm256_fmadd_ps(xv1, w2, a12);
            a13 = _mm256_fmadd_ps(xv1, w3, a13);
        }
    }
    acc[0][0] = fr_hsum_ps(a00); acc[0][1] = fr_hsum_ps(a01);
    acc[0][2] = fr_hsum_ps(a02); acc[0][3] = fr_hsum_ps(a03);
    acc[1][0] = fr_hsum_ps(a10); acc[1][1] = fr_hsum_ps(a11);
    acc[1][2] = fr_hsum_ps(a12); acc[1][3] = fr_hsum_ps(a13);
}

/* fr_bf16_tile on weights already widened to float32 (used when a block's weights are reused
 * by many rows: the widening is then paid once per block, not once per row pair). */
static inline void fr_bf16_tile_wide(int r, int k, int nk, const float *x0, const float *x1,
                                     const float *wf, float acc[2][4]) {
    fr_bf16_tile_avx2(r, k, nk, x0, x1, NULL, wf, acc);
}
#endif

/* Sums (before bias) of rows x0 (and x1 when r == 2) of length k against weight block wb. */
static inline void fr_bf16_tile(int r, int k, int nk, const float *x0, const float *x1,
                                const uint16_t *wb, float acc[2][4], int portable) {
#if defined(__AVX2__) && defined(__FMA__)
    if (!portable) {
        fr_bf16_tile_avx2(r, k, nk, x0, x1, wb, NULL, acc);
        return;
    }
#endif
    for (int ii = 0; ii < 2; ii++)
        for (int jj = 0; jj < 4; jj++) acc[ii][jj] = 0.0f;
    for (int ii = 0; ii < r; ii++) {
        const float *xr = ii ? x1 : x0;
        for (int jj = 0; jj < 4; jj++) {
            float lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
            for (int c = 0; c < nk; c++) {
                const uint16_t *w = wb + (ptrdiff_t)c * 32 + jj * 8;
                for (int l = 0; l < 8; l++) {
                    const int t = c * 8 + l;
                    lanes[l] = fmaf(t < k ? xr[t] : 0.0f, fr_bf16_to_f32(w[l]), lanes[l]);
                }
            }
            acc[ii][jj] = fr_lanes_sum(lanes);
        }
    }
}

/* Rows at or above this count widen each weight block to float32 once (per thread scratch). */
#define FR_BF16_WIDEN_MIN_ROWS 8

/* out[n, m] = act(x[n, k] @ W^T + b) with W the packed bf16 weights (mp, kp). */
static int fr_bf16_linear(int n, int m, int k, int kp, const float *x, const uint16_t *packed,
                          const float *bias, float *out, int act, float slope, int nthreads,
                          int portable) {
    const int nb = (m + 3) / 4, nk = kp / 8;
    const double macs = (double)n * m * kp;
    int nt = macs >= FR_Q_PAR_MIN_MACS ? nthreads : 1;
    if (nt > nb) nt = nb;
    if (nt < 1) nt = 1;
    int widen = 0;
#if defined(__AVX2__) && defined(__FMA__)
    widen = !portable && n >= FR_BF16_WIDEN_MIN_ROWS;
#endif
    int failed = 0;
#pragma omp parallel num_threads(nt) if (nt > 1) reduction(|| : failed)
    {
        float *wf = widen ? (float *)malloc((size_t)kp * 4 * sizeof(float)) : NULL;
        if (widen && !wf) failed = 1;
#pragma omp for schedule(static)
        for (int jb = 0; jb < nb; jb++) {
            if (widen && !wf) continue;
            const uint16_t *wb = packed + (ptrdiff_t)jb * kp * 4;
            const int j0 = jb * 4, jn = m - j0 < 4 ? m - j0 : 4;
            if (wf)
                for (ptrdiff_t t = 0; t < (ptrdiff_t)kp * 4; t++) wf[t] = fr_bf16_to_f32(wb[t]);
            for (int i = 0; i < n; i += 2) {
                const int r = n - i < 2 ? n - i : 2;
                float acc[2][4];
                const float *x0 = x + (ptrdiff_t)i * k;
#if defined(__AVX2__) && defined(__FMA__)
                if (wf)
                    fr_bf16_tile_wide(r, k, nk, x0, r == 2 ? x0 + k : x0, wf, acc);
                else
#endif
                    fr_bf16_tile(r, k, nk, x0, r == 2 ? x0 + k : x0, wb, acc, portable);
                for (int ii = 0; ii < r; ii++) {
                    float *o = out + (ptrdiff_t)(i + ii) * m + j0;
                    for (int jj = 0; jj < jn; jj++) {
                        const float v = acc[ii][jj] + (bias ? bias[j0 + jj] : 0.0f);
                        o[jj] = fr_q_act(v, act, slope);
                    }
                }
            }
        }
        free(wf);
    }
    return failed ? -1 : 0;
}

#endif
