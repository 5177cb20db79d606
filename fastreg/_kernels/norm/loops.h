/* Inner loops of the Cython norm kernels (norm/cy.pyx), one row chunk [r0, r1) at a time.
 *
 * Arrays are (N, C) row-major; per-feature vectors (C,). Sums are float64 (fed by 4-term partial
 * sums in T in the statistics passes, and by 16-row blocks in T in the backward column sums);
 * elementwise maths is in the data type T (twice the SIMD width for float32, and accurate to a
 * few ulp: means enter as a hi + lo pair of T numbers). float32 layer norm has AVX2 (and, for
 * the backward, AVX-512) row loops below the generic ones; the portable path stays for other
 * machines (FASTREG_PORTABLE=1 builds). The .pyx file validates nothing either:
 * fastreg/_kernels/norm/__init__.py checked every shape before we get here.
 * Written in C for `restrict` and `omp simd reduction`, which vectorise the float64 row sums
 * without -ffast-math (so NaN/inf still propagate). NORM_DEFINE(T, S) instantiates the family
 * for element type T with suffix S (f = float, d = double).
 */
#ifndef FASTREG_NORM_LOOPS_H
#define FASTREG_NORM_LOOPS_H
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>
#if defined(__AVX512F__) || defined(__SSE2__)
#include <immintrin.h>
#endif

/* Outputs of at least this many bytes are written with non-temporal (streaming) stores: they
   cannot stay in the 32 MB L3 next to their inputs anyway, and streaming skips the read-for-
   ownership of every output line (a third of a pass's traffic). Smaller outputs stay cached for
   the next layer. A row is computed into an L1 tile, then streamed. */
#define NORM_STREAM_BYTES (8 << 20)
#define NORM_TILE 512

static inline void norm_stream_f(float *restrict dst, const float *restrict src, ptrdiff_t n) {
    ptrdiff_t i = 0;
#if defined(__AVX512F__)
    for (; i < n && ((uintptr_t)(dst + i) & 63); i++) dst[i] = src[i];
    for (; i + 16 <= n; i += 16) _mm512_stream_ps(dst + i, _mm512_loadu_ps(src + i));
#elif defined(__SSE2__)
    for (; i < n && ((uintptr_t)(dst + i) & 15); i++) dst[i] = src[i];
    for (; i + 4 <= n; i += 4) _mm_stream_ps(dst + i, _mm_loadu_ps(src + i));
#endif
    for (; i < n; i++) dst[i] = src[i];
}

static inline void norm_stream_d(double *restrict dst, const double *restrict src,
                                 ptrdiff_t n) {
    ptrdiff_t i = 0;
#if defined(__AVX512F__)
    for (; i < n && ((uintptr_t)(dst + i) & 63); i++) dst[i] = src[i];
    for (; i + 8 <= n; i += 8) _mm512_stream_pd(dst + i, _mm512_loadu_pd(src + i));
#elif defined(__SSE2__)
    for (; i < n && ((uintptr_t)(dst + i) & 15); i++) dst[i] = src[i];
    for (; i + 2 <= n; i += 2) _mm_stream_pd(dst + i, _mm_loadu_pd(src + i));
#endif
    for (; i < n; i++) dst[i] = src[i];
}

/* Streaming stores are weakly ordered: fence before another thread may read the output. */
static inline void norm_stream_fence(void) {
#if defined(__AVX512F__) || defined(__SSE2__)
    _mm_sfence();
#endif
}

#if defined(__AVX2__)
static inline double norm_hsum256_pd(__m256d a) {
    const __m128d s = _mm_add_pd(_mm256_castpd256_pd128(a), _mm256_extractf128_pd(a, 1));
    return _mm_cvtsd_f64(_mm_add_sd(s, _mm_unpackhi_pd(s, s)));
}
#endif

/* Barrier of the enclosing OpenMP team (an orphaned directive). Cython's prange inside a
   `parallel()` block is an `omp for nowait`: work after it that reads its results needs this. */
static inline void norm_barrier(void) {
#ifdef _OPENMP
    _Pragma("omp barrier")
#endif
}

/* dst[0:C] = EXPR(j) for j = column, through an L1 tile and streaming stores when STREAM. */
#define NORM_ROW_STORE(T, S, STREAM, dst, C, j, EXPR)                                           \
    if (STREAM) {                                                                               \
        T tile_[NORM_TILE];                                                                     \
        for (ptrdiff_t c0_ = 0; c0_ < (C); c0_ += NORM_TILE) {                                  \
            const ptrdiff_t len_ = (C) - c0_ < NORM_TILE ? (C) - c0_ : NORM_TILE;               \
            NORM_SIMD                                                                           \
            for (ptrdiff_t t_ = 0; t_ < len_; t_++) {                                           \
                const ptrdiff_t j = c0_ + t_;                                                   \
                tile_[t_] = (EXPR);                                                             \
            }                                                                                   \
            norm_stream_##S((dst) + c0_, tile_, len_);                                          \
        }                                                                                       \
    } else {                                                                                    \
        NORM_SIMD                                                                               \
        for (ptrdiff_t j = 0; j < (C); j++) (dst)[j] = (EXPR);                                  \
    }

/* Two rows at once, dst0[j] = EXPR0, dst1[j] = EXPR1: per-column coefficients are loaded once
   for both rows (the batch-norm elementwise passes were load-port bound on them). */
#define NORM_ROW2_STORE(T, S, STREAM, dst0, dst1, C, j, EXPR0, EXPR1)                           \
    if (STREAM) {                                                                               \
        T tile0_[NORM_TILE], tile1_[NORM_TILE];                                                 \
        for (ptrdiff_t c0_ = 0; c0_ < (C); c0_ += NORM_TILE) {                                  \
            const ptrdiff_t len_ = (C) - c0_ < NORM_TILE ? (C) - c0_ : NORM_TILE;               \
            NORM_SIMD                                                                           \
            for (ptrdiff_t t_ = 0; t_ < len_; t_++) {                                           \
                const ptrdiff_t j = c0_ + t_;                                                   \
                tile0_[t_] = (EXPR0);                                                           \
                tile1_[t_] = (EXPR1);                                                           \
            }                                                                                   \
            norm_stream_##S((dst0) + c0_, tile0_, len_);                                        \
            norm_stream_##S((dst1) + c0_, tile1_, len_);                                        \
        }                                                                                       \
    } else {                                                                                    \
        NORM_SIMD                                                                               \
        for (ptrdiff_t j = 0; j < (C); j++) { (dst0)[j] = (EXPR0); (dst1)[j] = (EXPR1); }       \
    }

/* Rows per block of the T-precision partial sums in the backward kernels (see bn_grad_sums) */
#define NORM_BLOCK 16
#define NORM_PRAGMA(x) _Pragma(#x)
#define NORM_SIMD NORM_PRAGMA(omp simd)
#define NORM_SIMD_SUM2(a, b) NORM_PRAGMA(omp simd reduction(+:a, b))

/* t1[c] = sum_p partial[p, 0, c], t2[c] = sum_p partial[p, 1, c] over the P row chunks of a
   (P, 2, C) float64 scratch, added in chunk order p = 0, 1, ... (the order fixes the bits, whoever
   runs it). Chunk-outer, so the loads are contiguous and vectorised: with p innermost the walk
   strides 2C doubles (every load in one L1 set), which was half the time of a 256 x 512
   batch-norm call and ~0.5 ms of a 4096 x 1024 one. */
static inline void norm_sum_chunks(const double *restrict partial, ptrdiff_t P, ptrdiff_t C,
                                   double *restrict t1, double *restrict t2) {
    for (ptrdiff_t c = 0; c < C; c++) { t1[c] = 0.0; t2[c] = 0.0; }
    for (ptrdiff_t p = 0; p < P; p++) {
        const double *restrict a = partial + 2 * p * C, *restrict b = a + C;
        NORM_SIMD
        for (ptrdiff_t c = 0; c < C; c++) { t1[c] += a[c]; t2[c] += b[c]; }
    }
}

#define NORM_COEF_DEFINE(T, S)                                                                  \
/* Batch norm forward, between the passes: the chunk sums (partial, (P, 2, C) float64 sums of   \
   d = x - shift and d^2) in chunk order into coef (4, C) = (mean hi, mean lo, gamma * rstd,    \
   beta); with write_stats also save_mean/save_rstd and the running statistics (running_var     \
   with the unbiased factor N/(N-1)). t1, t2: (C,) float64 scratch. */                          \
static inline void bn_train_coef_##S(const T *restrict shift, const T *restrict weight,         \
                                     const T *restrict bias, T *restrict running_mean,          \
                                     T *restrict running_var, T *restrict save_mean,            \
                                     T *restrict save_rstd, const double *restrict partial,     \
                                     double *restrict t1, double *restrict t2,                  \
                                     T *restrict coef, int write_stats, int has_weight,         \
                                     int has_bias, int has_running, double momentum,            \
                                     double eps, ptrdiff_t P, ptrdiff_t N, ptrdiff_t C) {       \
    const double inv_n = 1.0 / (double)N;                                                       \
    norm_sum_chunks(partial, P, C, t1, t2);                                                     \
    for (ptrdiff_t c = 0; c < C; c++) {                                                         \
        const double m = t1[c] * inv_n;                                                         \
        double var = t2[c] * inv_n - m * m;                                                     \
        if (var < 0.0) var = 0.0;                                                               \
        const double mean = (double)shift[c] + m;                                               \
        const double rstd = 1.0 / sqrt(var + eps);                                              \
        if (write_stats) {                                                                      \
            save_mean[c] = (T)mean;                                                             \
            save_rstd[c] = (T)rstd;                                                             \
            if (has_running) {                                                                  \
                running_mean[c] = (T)((1.0 - momentum) * running_mean[c] + momentum * mean);    \
                running_var[c] = (T)((1.0 - momentum) * running_var[c]                          \
                                     + momentum * var * (double)N / ((double)N - 1.0));         \
            }                                                                                   \
        }                                                                                       \
        const T mh = (T)mean;                                                                   \
        coef[c] = mh;                                                                           \
        coef[C + c] = (T)(mean - (double)mh);                                                   \
        coef[2 * C + c] = (T)(has_weight ? rstd * weight[c] : rstd);                            \
        coef[3 * C + c] = has_bias ? bias[c] : (T)0;                                            \
    }                                                                                           \
}                                                                                               \
/* Batch norm backward, between the passes: the chunk sums (partial: sum dy, sum dy * (x - mean)) \
   in chunk order into dbeta = sum dy, dgamma = rstd * sum dy (x - mean) and coef (4, C) =      \
   (mean, a, b, d) with dx = a dy + b (x - mean) + d, a = gamma rstd, b = -a rstd dgamma / N,   \
   d = -a dbeta / N; with write_grads also dweight/dbias (added to them with accumulate). */    \
static inline void bn_grad_coef_##S(const T *restrict weight, const T *restrict save_mean,      \
                                    const T *restrict save_rstd, T *restrict dweight,           \
                                    T *restrict dbias, const double *restrict partial,          \
                                    double *restrict t1, double *restrict t2,                   \
                                    T *restrict coef, int write_grads, int has_weight,          \
                                    int need_dweight, int need_dbias, int accumulate,           \
                                    ptrdiff_t P, ptrdiff_t N, ptrdiff_t C) {                    \
    const double inv_n = N > 0 ? 1.0 / (double)N : 0.0;                                         \
    norm_sum_chunks(partial, P, C, t1, t2);                                                     \
    for (ptrdiff_t c = 0; c < C; c++) {                                                         \
        const double db = t1[c];                                                                \
        const double rstd = (double)save_rstd[c];                                               \
        const double dg = t2[c] * rstd;                                                         \
        if (write_grads) {                                                                      \
            if (need_dweight) dweight[c] = (T)(accumulate ? dweight[c] + dg : dg);              \
            if (need_dbias) dbias[c] = (T)(accumulate ? dbias[c] + db : db);                    \
        }                                                                                       \
        const double a = has_weight ? rstd * weight[c] : rstd;                                  \
        coef[c] = save_mean[c];                                                                 \
        coef[C + c] = (T)a;                                                                     \
        coef[2 * C + c] = (T)(-a * rstd * dg * inv_n);                                          \
        coef[3 * C + c] = (T)(-a * db * inv_n);                                                 \
    }                                                                                           \
}                                                                                               \
/* Layer norm backward, after the rows: dgamma, dbeta from the chunk sums (partial: sum dy xhat, \
   sum dy) in chunk order, written to (accumulate) or over dweight/dbias. */                    \
static inline void ln_grad_params_##S(T *restrict dweight, T *restrict dbias,                   \
                                      const double *restrict partial, double *restrict t1,      \
                                      double *restrict t2, int need_dweight, int need_dbias,    \
                                      int accumulate, ptrdiff_t P, ptrdiff_t C) {               \
    norm_sum_chunks(partial, P, C, t1, t2);                                                     \
    for (ptrdiff_t c = 0; c < C; c++) {                                                         \
        if (need_dweight) dweight[c] = (T)(accumulate ? dweight[c] + t1[c] : t1[c]);            \
        if (need_dbias) dbias[c] = (T)(accumulate ? dbias[c] + t2[c] : t2[c]);                  \
    }                                                                                           \
}


#define NORM_DEFINE(T, S)                                                                       \
/* Batch norm pass 1: s1[c] = sum_n (x[n,c] - shift[c]), s2[c] = sum_n (...)^2 over the chunk. \
   The difference is taken in T (exact or nearly, x and shift are close), summed in float64. */ \
static inline void bn_sums_##S(const T *restrict x, const T *restrict shift,                   \
                               double *restrict s1, double *restrict s2,                       \
                               ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t C) {                      \
    for (ptrdiff_t c = 0; c < C; c++) { s1[c] = 0.0; s2[c] = 0.0; }                             \
    ptrdiff_t n = r0;                                                                           \
    /* four rows per visit of s1/s2, their d and d^2 summed in T first (a 4-term sum, one      \
       rounding of T), then added in float64: a quarter of the accumulator loads, stores and   \
       conversions */                                                                           \
    for (; n + 4 <= r1; n += 4) {                                                               \
        const T *restrict x0 = x + n * C, *restrict x1 = x0 + C;                               \
        const T *restrict x2 = x1 + C, *restrict x3 = x2 + C;                                  \
        NORM_SIMD                                                                               \
        for (ptrdiff_t c = 0; c < C; c++) {                                                     \
            const T d0 = x0[c] - shift[c], d1 = x1[c] - shift[c];                               \
            const T d2 = x2[c] - shift[c], d3 = x3[c] - shift[c];                               \
            s1[c] += (double)((d0 + d1) + (d2 + d3));                                           \
            s2[c] += (double)((d0 * d0 + d1 * d1) + (d2 * d2 + d3 * d3));                       \
        }                                                                                       \
    }                                                                                           \
    for (; n < r1; n++) {                                                                       \
        const T *restrict xr = x + n * C;                                                       \
        NORM_SIMD                                                                               \
        for (ptrdiff_t c = 0; c < C; c++) {                                                     \
            double d = (double)(xr[c] - shift[c]);                                              \
            s1[c] += d;                                                                         \
            s2[c] += d * d;                                                                     \
        }                                                                                       \
    }                                                                                           \
}                                                                                               \
/* Batch norm pass 2: out = ((x - mh) - ml) * sc + sh in T, where mh + ml is the float64 mean  \
   split in two T numbers (so float32 data with a large mean loses nothing). With reverse the   \
   chunk is walked last row first, starting on the rows pass 1 left in cache; a single pass    \
   (eval) goes forwards, which the prefetchers prefer. */                                      \
static inline void bn_affine_##S(const T *restrict x, T *restrict out,                         \
                                 const T *restrict mh, const T *restrict ml,                   \
                                 const T *restrict sc, const T *restrict sh, int reverse,      \
                                 int stream, ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t C) {        \
    ptrdiff_t i = 0;                                                                            \
    for (; i + 2 <= r1 - r0; i += 2) {   /* rows n and n + 1 */                                \
        const ptrdiff_t n = reverse ? r1 - 2 - i : r0 + i;                                      \
        const T *restrict x0 = x + n * C, *restrict x1 = x0 + C;                               \
        T *restrict o0 = out + n * C, *restrict o1 = o0 + C;                                   \
        NORM_ROW2_STORE(T, S, stream, o0, o1, C, c,                                             \
                        ((x0[c] - mh[c]) - ml[c]) * sc[c] + sh[c],                              \
                        ((x1[c] - mh[c]) - ml[c]) * sc[c] + sh[c])                              \
    }                                                                                           \
    if (i < r1 - r0) {                                                                          \
        const ptrdiff_t n = reverse ? r0 : r1 - 1;                                              \
        const T *restrict xr = x + n * C;                                                       \
        T *restrict orow = out + n * C;                                                         \
        NORM_ROW_STORE(T, S, stream, orow, C, c, ((xr[c] - mh[c]) - ml[c]) * sc[c] + sh[c])     \
    }                                                                                           \
    if (stream) norm_stream_fence();                                                            \
}                                                                                               \
/* Batch norm backward pass 1: sb[c] = sum_n dy, sw[c] = sum_n dy * (x - mean). Blocks of     \
   NORM_BLOCK rows are summed in T into bb/bw (C,), then added to the float64 sums: half the    \
   work of float64 accumulators per element, error ~NORM_BLOCK ulp of T per block. */           \
static inline void bn_grad_sums_##S(const T *restrict dy, const T *restrict x,                 \
                                    const T *restrict mean,                                    \
                                    double *restrict sb, double *restrict sw,                  \
                                    T *restrict bb, T *restrict bw,                            \
                                    ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t C) {                 \
    for (ptrdiff_t c = 0; c < C; c++) { sb[c] = 0.0; sw[c] = 0.0; }                             \
    for (ptrdiff_t n0 = r0; n0 < r1; n0 += NORM_BLOCK) {                                        \
        const ptrdiff_t n1 = n0 + NORM_BLOCK < r1 ? n0 + NORM_BLOCK : r1;                       \
        for (ptrdiff_t c = 0; c < C; c++) { bb[c] = 0; bw[c] = 0; }                             \
        ptrdiff_t n = n0;                                                                       \
        for (; n + 2 <= n1; n += 2) {   /* two rows per visit of bb/bw */                      \
            const T *restrict x0 = x + n * C, *restrict x1 = x0 + C;                           \
            const T *restrict g0 = dy + n * C, *restrict g1 = g0 + C;                          \
            NORM_SIMD                                                                           \
            for (ptrdiff_t c = 0; c < C; c++) {                                                 \
                bb[c] += g0[c] + g1[c];                                                         \
                bw[c] += g0[c] * (x0[c] - mean[c]) + g1[c] * (x1[c] - mean[c]);                 \
            }                                                                                   \
        }                                                                                       \
        for (; n < n1; n++) {                                                                   \
            const T *restrict xr = x + n * C;                                                   \
            const T *restrict gr = dy + n * C;                                                  \
            NORM_SIMD                                                                           \
            for (ptrdiff_t c = 0; c < C; c++) {                                                 \
                bb[c] += gr[c];                                                                 \
                bw[c] += gr[c] * (xr[c] - mean[c]);                                             \
            }                                                                                   \
        }                                                                                       \
        NORM_SIMD                                                                               \
        for (ptrdiff_t c = 0; c < C; c++) { sb[c] += (double)bb[c]; sw[c] += (double)bw[c]; }   \
    }                                                                                           \
}                                                                                               \
/* Batch norm backward pass 2: dx = ca * dy + cb * (x - mu) + cd, chunk walked backwards */     \
static inline void bn_dx_rev_##S(const T *restrict dy, const T *restrict x, T *restrict dx,    \
                                 const T *restrict mu, const T *restrict ca,                   \
                                 const T *restrict cb, const T *restrict cd, int stream,       \
                                 ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t C) {                    \
    ptrdiff_t n = r1 - 2;                                                                       \
    for (; n >= r0; n -= 2) {   /* rows n and n + 1 */                                         \
        const T *restrict x0 = x + n * C, *restrict x1 = x0 + C;                               \
        const T *restrict g0 = dy + n * C, *restrict g1 = g0 + C;                              \
        T *restrict d0 = dx + n * C, *restrict d1 = d0 + C;                                    \
        NORM_ROW2_STORE(T, S, stream, d0, d1, C, c,                                             \
                        ca[c] * g0[c] + cb[c] * (x0[c] - mu[c]) + cd[c],                        \
                        ca[c] * g1[c] + cb[c] * (x1[c] - mu[c]) + cd[c])                        \
    }                                                                                           \
    if (n == r0 - 1) {   /* odd row count: row r0 is left */                                   \
        const T *restrict xr = x + r0 * C;                                                      \
        const T *restrict gr = dy + r0 * C;                                                     \
        T *restrict dr = dx + r0 * C;                                                           \
        NORM_ROW_STORE(T, S, stream, dr, C, c, ca[c] * gr[c] + cb[c] * (xr[c] - mu[c]) + cd[c]) \
    }                                                                                           \
    if (stream) norm_stream_fence();                                                            \
}                                                                                               \
/* Layer norm forward on rows [r0, r1): per-row shifted float64 sums, then the affine map in T \
   with the mean split as mh + ml (see bn_affine) */                                           \
static inline void ln_fwd_rows_generic_##S(const T *restrict x, const T *restrict w,           \
                                   const T *restrict b, T *restrict out,                       \
                                   T *restrict save_mean, T *restrict save_rstd,               \
                                   int has_w, int has_b, double eps, int stream,               \
                                   ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t C) {                  \
    const double inv_c = 1.0 / (double)C;                                                       \
    for (ptrdiff_t n = r0; n < r1; n++) {                                                       \
        const T *restrict xr = x + n * C;                                                       \
        T *restrict orow = out + n * C;                                                         \
        const T k = xr[0];                                                                      \
        double s1 = 0.0, s2 = 0.0;                                                              \
        NORM_SIMD_SUM2(s1, s2)                                                                  \
        for (ptrdiff_t c = 0; c < C; c++) {                                                     \
            double d = (double)(xr[c] - k);                                                     \
            s1 += d;                                                                            \
            s2 += d * d;                                                                        \
        }                                                                                       \
        const double m = s1 * inv_c;                                                            \
        double var = s2 * inv_c - m * m;                                                        \
        if (var < 0.0) var = 0.0;                                                               \
        const double mean = (double)k + m;                                                      \
        const double rstd = 1.0 / sqrt(var + eps);                                              \
        const T mh = (T)mean, ml = (T)(mean - (double)mh), rs = (T)rstd;                        \
        save_mean[n] = mh;                                                                      \
        save_rstd[n] = rs;                                                                      \
        if (has_w && has_b) {                                                                   \
            NORM_ROW_STORE(T, S, stream, orow, C, c, ((xr[c] - mh) - ml) * rs * w[c] + b[c])    \
        } else if (has_w) {                                                                     \
            NORM_ROW_STORE(T, S, stream, orow, C, c, ((xr[c] - mh) - ml) * rs * w[c])           \
        } else if (has_b) {                                                                     \
            NORM_ROW_STORE(T, S, stream, orow, C, c, ((xr[c] - mh) - ml) * rs + b[c])           \
        } else {                                                                                \
            NORM_ROW_STORE(T, S, stream, orow, C, c, ((xr[c] - mh) - ml) * rs)                  \
        }                                                                                       \
    }                                                                                           \
    if (stream) norm_stream_fence();                                                            \
}                                                                                               \
/* Layer norm backward on rows [r0, r1); pw/pb (C,) collect this chunk's dgamma/dbeta in      \
   float64, from blocks of NORM_BLOCK rows summed in T into bw/bb (C,). Row sums in float64. */ \
static inline void ln_bwd_rows_generic_##S(const T *restrict dy, const T *restrict x,                  \
                                   const T *restrict w, const T *restrict save_mean,           \
                                   const T *restrict save_rstd, T *restrict dx,                \
                                   double *restrict pw, double *restrict pb,                   \
                                   T *restrict bw, T *restrict bb, int has_w, int stream,      \
                                   ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t C) {                  \
    const double inv_c = 1.0 / (double)C;                                                       \
    for (ptrdiff_t c = 0; c < C; c++) { pw[c] = 0.0; pb[c] = 0.0; }                             \
    for (ptrdiff_t n0 = r0; n0 < r1; n0 += NORM_BLOCK) {                                        \
        const ptrdiff_t n1 = n0 + NORM_BLOCK < r1 ? n0 + NORM_BLOCK : r1;                       \
        for (ptrdiff_t c = 0; c < C; c++) { bw[c] = 0; bb[c] = 0; }                             \
        for (ptrdiff_t n = n0; n < n1; n++) {                                                   \
            const T *restrict xr = x + n * C;                                                   \
            const T *restrict gr = dy + n * C;                                                  \
            T *restrict dr = dx + n * C;                                                        \
            const T mean = save_mean[n], rstd = save_rstd[n];                                   \
            double sg = 0.0, sgx = 0.0;                                                         \
            if (has_w) {                                                                        \
                NORM_SIMD_SUM2(sg, sgx)                                                         \
                for (ptrdiff_t c = 0; c < C; c++) {                                             \
                    T g = gr[c] * w[c];                                                         \
                    sg += (double)g;                                                            \
                    sgx += (double)(g * (xr[c] - mean));                                        \
                }                                                                               \
            } else {                                                                            \
                NORM_SIMD_SUM2(sg, sgx)                                                         \
                for (ptrdiff_t c = 0; c < C; c++) {                                             \
                    sg += (double)gr[c];                                                        \
                    sgx += (double)(gr[c] * (xr[c] - mean));                                    \
                }                                                                               \
            }                                                                                   \
            const T mg = (T)(sg * inv_c), mgx = (T)(sgx * (double)rstd * inv_c);                \
            if (has_w) {                                                                        \
                NORM_SIMD                                                                       \
                for (ptrdiff_t c = 0; c < C; c++) {                                             \
                    T xh = (xr[c] - mean) * rstd;                                               \
                    bw[c] += gr[c] * xh;                                                        \
                    bb[c] += gr[c];                                                             \
                }                                                                               \
                NORM_ROW_STORE(T, S, stream, dr, C, c,                                          \
                               rstd * (gr[c] * w[c] - mg - (xr[c] - mean) * rstd * mgx))        \
            } else {                                                                            \
                NORM_ROW_STORE(T, S, stream, dr, C, c,                                          \
                               rstd * (gr[c] - mg - (xr[c] - mean) * rstd * mgx))               \
            }                                                                                   \
        }                                                                                       \
        if (has_w) {                                                                            \
            NORM_SIMD                                                                           \
            for (ptrdiff_t c = 0; c < C; c++) { pw[c] += (double)bw[c]; pb[c] += (double)bb[c]; } \
        }                                                                                       \
    }                                                                                           \
    if (stream) norm_stream_fence();                                                            \
}

NORM_DEFINE(float, f)
NORM_DEFINE(double, d)
NORM_COEF_DEFINE(float, f)
NORM_COEF_DEFINE(double, d)

#undef NORM_DEFINE
#undef NORM_COEF_DEFINE

/* Layer norm backward, float32, AVX-512: the same maths as ln_bwd_rows_generic_f in two visits of
   each (L1-resident) row instead of three: (1) the two float64 row sums, (2) one loop that adds
   the row into the dgamma/dbeta block sums and writes dx. One thread at 4096 x 1024: 3.0 ms
   instead of 3.6 ms (the loop is then close to what one core's memory bandwidth allows). */
#if defined(__AVX512F__) && defined(__AVX512DQ__)
static inline double norm_hsum_pd(__m512d a) { return _mm512_reduce_add_pd(a); }

static inline void ln_bwd_rows_f(const float *restrict dy, const float *restrict x,
                                 const float *restrict w, const float *restrict save_mean,
                                 const float *restrict save_rstd, float *restrict dx,
                                 double *restrict pw, double *restrict pb,
                                 float *restrict bw, float *restrict bb, int has_w, int stream,
                                 ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t C) {
    const double inv_c = 1.0 / (double)C;
    const ptrdiff_t Cv = C & ~(ptrdiff_t)15;
    float tile[NORM_TILE] __attribute__((aligned(64)));
    for (ptrdiff_t c = 0; c < C; c++) { pw[c] = 0.0; pb[c] = 0.0; }
    for (ptrdiff_t n0 = r0; n0 < r1; n0 += NORM_BLOCK) {
        const ptrdiff_t n1 = n0 + NORM_BLOCK < r1 ? n0 + NORM_BLOCK : r1;
        for (ptrdiff_t c = 0; c < C; c++) { bw[c] = 0; bb[c] = 0; }
        for (ptrdiff_t n = n0; n < n1; n++) {
            const float *restrict xr = x + n * C;
            const float *restrict gr = dy + n * C;
            float *restrict dr = dx + n * C;
            const float mean = save_mean[n], rstd = save_rstd[n];
            const __m512 vm = _mm512_set1_ps(mean), vr = _mm512_set1_ps(rstd);
            __m512d a0 = _mm512_setzero_pd(), a1 = a0, b0 = a0, b1 = a0;
            ptrdiff_t c = 0;
            for (; c < Cv; c += 16) {
                __m512 g = _mm512_loadu_ps(gr + c);
                if (has_w) g = _mm512_mul_ps(g, _mm512_loadu_ps(w + c));
                const __m512 gx = _mm512_mul_ps(g, _mm512_sub_ps(_mm512_loadu_ps(xr + c), vm));
                a0 = _mm512_add_pd(a0, _mm512_cvtps_pd(_mm512_castps512_ps256(g)));
                a1 = _mm512_add_pd(a1, _mm512_cvtps_pd(_mm512_extractf32x8_ps(g, 1)));
                b0 = _mm512_add_pd(b0, _mm512_cvtps_pd(_mm512_castps512_ps256(gx)));
                b1 = _mm512_add_pd(b1, _mm512_cvtps_pd(_mm512_extractf32x8_ps(gx, 1)));
            }
            double sg = norm_hsum_pd(_mm512_add_pd(a0, a1));
            double sgx = norm_hsum_pd(_mm512_add_pd(b0, b1));
            for (; c < C; c++) {
                const float g = has_w ? gr[c] * w[c] : gr[c];
                sg += (double)g;
                sgx += (double)(g * (xr[c] - mean));
            }
            const float mg = (float)(sg * inv_c), mgx = (float)(sgx * (double)rstd * inv_c);
            const __m512 vmg = _mm512_set1_ps(mg), vmgx = _mm512_set1_ps(mgx);
            for (ptrdiff_t c0 = 0; c0 < C; c0 += NORM_TILE) {
                const ptrdiff_t c1 = C - c0 < NORM_TILE ? C : c0 + NORM_TILE;
                /* dx for columns [c0, c1) goes to the tile when streaming, else straight out */
                float *restrict out = stream ? tile - c0 : dr;
                const ptrdiff_t cv1 = c0 + ((c1 - c0) & ~(ptrdiff_t)15);
                for (c = c0; c < cv1; c += 16) {
                    const __m512 g0 = _mm512_loadu_ps(gr + c);
                    const __m512 xh = _mm512_mul_ps(
                        _mm512_sub_ps(_mm512_loadu_ps(xr + c), vm), vr);
                    __m512 g = g0;
                    if (has_w) {
                        _mm512_storeu_ps(bw + c, _mm512_fmadd_ps(g0, xh, _mm512_loadu_ps(bw + c)));
                        _mm512_storeu_ps(bb + c, _mm512_add_ps(_mm512_loadu_ps(bb + c), g0));
                        g = _mm512_mul_ps(g0, _mm512_loadu_ps(w + c));
                    }
                    _mm512_storeu_ps(out + c, _mm512_mul_ps(
                        vr, _mm512_sub_ps(_mm512_sub_ps(g, vmg), _mm512_mul_ps(xh, vmgx))));
                }
                for (; c < c1; c++) {
                    const float xh = (xr[c] - mean) * rstd;
                    float g = gr[c];
                    if (has_w) { bw[c] += gr[c] * xh; bb[c] += gr[c]; g = gr[c] * w[c]; }
                    out[c] = rstd * (g - mg - xh * mgx);
                }
                if (stream) norm_stream_f(dr + c0, tile, c1 - c0);
            }
        }
        if (has_w) {
            for (ptrdiff_t c = 0; c < C; c++) { pw[c] += (double)bw[c]; pb[c] += (double)bb[c]; }
        }
    }
    if (stream) norm_stream_fence();
}
#elif defined(__AVX2__) && defined(__FMA__)
/* Layer norm backward, float32, AVX2 + FMA: the maths of ln_bwd_rows_generic_f in two visits of
   each (L1-resident) row: (1) the float64 row sums sum g and sum g (x - mean), g = dy * gamma,
   from 4-term float32 partial sums (as the forward; the generic loop's one `omp simd`
   accumulator per sum waits on the add latency); (2) one loop that adds the row into the
   dgamma/dbeta block sums and writes dx, and prefetches the next row's dy and x. Without the
   prefetch a row's DRAM reads wait for visit (1), and visit (2) runs with none in flight, so
   compute and memory add up: at 4096 x 1024 the loop ran at 1.45x its bytes' floor on 2
   threads, 1.8x on one; with it 1.25x / 1.6x (benchmarks/ln_harness.c, alternated with the previous build). */
static inline void ln_bwd_rows_f(const float *restrict dy, const float *restrict x,
                                 const float *restrict w, const float *restrict save_mean,
                                 const float *restrict save_rstd, float *restrict dx,
                                 double *restrict pw, double *restrict pb,
                                 float *restrict bw, float *restrict bb, int has_w, int stream,
                                 ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t C) {
    const double inv_c = 1.0 / (double)C;
    const ptrdiff_t Cv = C & ~(ptrdiff_t)31;
    float tile[NORM_TILE] __attribute__((aligned(64)));
    for (ptrdiff_t c = 0; c < C; c++) { pw[c] = 0.0; pb[c] = 0.0; }
    for (ptrdiff_t n0 = r0; n0 < r1; n0 += NORM_BLOCK) {
        const ptrdiff_t n1 = n0 + NORM_BLOCK < r1 ? n0 + NORM_BLOCK : r1;
        for (ptrdiff_t c = 0; c < C; c++) { bw[c] = 0; bb[c] = 0; }
        for (ptrdiff_t n = n0; n < n1; n++) {
            const float *restrict xr = x + n * C;
            const float *restrict gr = dy + n * C;
            float *restrict dr = dx + n * C;
            const float mean = save_mean[n], rstd = save_rstd[n];
            const __m256 vm = _mm256_set1_ps(mean), vr = _mm256_set1_ps(rstd);
            __m256d a0 = _mm256_setzero_pd(), a1 = a0, b0 = a0, b1 = a0;
            ptrdiff_t c = 0;
            for (; c < Cv; c += 32) {
                /* g and g (x - mean) of four vectors summed in float32 first (a 4-term sum,
                   rounded once), then added in float64: a quarter of the conversions */
                __m256 g[4], gx[4];
                for (int k = 0; k < 4; k++) {
                    g[k] = _mm256_loadu_ps(gr + c + 8 * k);
                    if (has_w) g[k] = _mm256_mul_ps(g[k], _mm256_loadu_ps(w + c + 8 * k));
                    gx[k] = _mm256_mul_ps(g[k], _mm256_sub_ps(_mm256_loadu_ps(xr + c + 8 * k), vm));
                }
                const __m256 sg4 = _mm256_add_ps(_mm256_add_ps(g[0], g[1]),
                                                 _mm256_add_ps(g[2], g[3]));
                const __m256 sx4 = _mm256_add_ps(_mm256_add_ps(gx[0], gx[1]),
                                                 _mm256_add_ps(gx[2], gx[3]));
                a0 = _mm256_add_pd(a0, _mm256_cvtps_pd(_mm256_castps256_ps128(sg4)));
                a1 = _mm256_add_pd(a1, _mm256_cvtps_pd(_mm256_extractf128_ps(sg4, 1)));
                b0 = _mm256_add_pd(b0, _mm256_cvtps_pd(_mm256_castps256_ps128(sx4)));
                b1 = _mm256_add_pd(b1, _mm256_cvtps_pd(_mm256_extractf128_ps(sx4, 1)));
            }
            double sg = norm_hsum256_pd(_mm256_add_pd(a0, a1));
            double sgx = norm_hsum256_pd(_mm256_add_pd(b0, b1));
            for (; c < C; c++) {
                const float g = has_w ? gr[c] * w[c] : gr[c];
                sg += (double)g;
                sgx += (double)(g * (xr[c] - mean));
            }
            const float mg = (float)(sg * inv_c), mgx = (float)(sgx * (double)rstd * inv_c);
            const __m256 vmg = _mm256_set1_ps(mg), vmgx = _mm256_set1_ps(mgx);
            for (ptrdiff_t c0 = 0; c0 < C; c0 += NORM_TILE) {
                const ptrdiff_t c1 = C - c0 < NORM_TILE ? C : c0 + NORM_TILE;
                /* dx for columns [c0, c1) goes to the tile when streaming, else straight out */
                float *restrict out = stream ? tile - c0 : dr;
                const ptrdiff_t cv1 = c0 + ((c1 - c0) & ~(ptrdiff_t)7);
                for (c = c0; c < cv1; c += 8) {
                    /* the next row's lines of dy and x, one per 64 bytes: the row sums of
                       visit (1) then find them in L1 instead of waiting on DRAM with no other
                       load in flight (no effect on the results) */
                    if (!(c & 15) && n + 1 < r1) {
                        _mm_prefetch((const char *)(xr + C + c), _MM_HINT_T0);
                        _mm_prefetch((const char *)(gr + C + c), _MM_HINT_T0);
                    }
                    const __m256 g0 = _mm256_loadu_ps(gr + c);
                    const __m256 xh = _mm256_mul_ps(
                        _mm256_sub_ps(_mm256_loadu_ps(xr + c), vm), vr);
                    __m256 g = g0;
                    if (has_w) {
                        _mm256_storeu_ps(bw + c, _mm256_fmadd_ps(g0, xh, _mm256_loadu_ps(bw + c)));
                        _mm256_storeu_ps(bb + c, _mm256_add_ps(_mm256_loadu_ps(bb + c), g0));
                        g = _mm256_mul_ps(g0, _mm256_loadu_ps(w + c));
                    }
                    _mm256_storeu_ps(out + c, _mm256_mul_ps(
                        vr, _mm256_sub_ps(_mm256_sub_ps(g, vmg), _mm256_mul_ps(xh, vmgx))));
                }
                for (; c < c1; c++) {
                    const float xh = (xr[c] - mean) * rstd;
                    float g = gr[c];
                    if (has_w) { bw[c] += gr[c] * xh; bb[c] += gr[c]; g = gr[c] * w[c]; }
                    out[c] = rstd * (g - mg - xh * mgx);
                }
                if (stream) norm_stream_f(dr + c0, tile, c1 - c0);
            }
        }
        if (has_w) {
            for (ptrdiff_t c = 0; c < C; c++) { pw[c] += (double)bw[c]; pb[c] += (double)bb[c]; }
        }
    }
    if (stream) norm_stream_fence();
}
#else
static inline void ln_bwd_rows_f(const float *restrict dy, const float *restrict x,
                                 const float *restrict w, const float *restrict save_mean,
                                 const float *restrict save_rstd, float *restrict dx,
                                 double *restrict pw, double *restrict pb,
                                 float *restrict bw, float *restrict bb, int has_w, int stream,
                                 ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t C) {
    ln_bwd_rows_generic_f(dy, x, w, save_mean, save_rstd, dx, pw, pb, bw, bb, has_w, stream,
                          r0, r1, C);
}
#endif
#define ln_bwd_rows_d ln_bwd_rows_generic_d

/* Layer norm forward, float32, AVX2 + FMA: the maths of ln_fwd_rows_generic_f (float64 row sums
   of x - x[0], affine map in float32 with the mean as mh + ml). The row sums add 4-term float32
   partial sums (d and d^2 of four vectors) into float64 vectors: a quarter of the conversions,
   and no wait on one accumulator's add latency as in the generic `omp simd` reduction. */
#if defined(__AVX2__) && defined(__FMA__)
static inline void ln_fwd_rows_f(const float *restrict x, const float *restrict w,
                                 const float *restrict b, float *restrict out,
                                 float *restrict save_mean, float *restrict save_rstd,
                                 int has_w, int has_b, double eps, int stream,
                                 ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t C) {
    const double inv_c = 1.0 / (double)C;
    const ptrdiff_t Cv = C & ~(ptrdiff_t)31;
    float tile[NORM_TILE] __attribute__((aligned(64)));
    for (ptrdiff_t n = r0; n < r1; n++) {
        const float *restrict xr = x + n * C;
        float *restrict orow = out + n * C;
        const float k = xr[0];
        const __m256 vk = _mm256_set1_ps(k);
        __m256d a0 = _mm256_setzero_pd(), a1 = a0, b0 = a0, b1 = a0;
        ptrdiff_t c = 0;
        for (; c < Cv; c += 32) {
            /* four vectors of d = x - k summed (and squared) in float32 first: a 4-term float
               sum, rounded once into the float64 totals (a quarter of the conversions) */
            const __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(xr + c), vk);
            const __m256 d1 = _mm256_sub_ps(_mm256_loadu_ps(xr + c + 8), vk);
            const __m256 d2 = _mm256_sub_ps(_mm256_loadu_ps(xr + c + 16), vk);
            const __m256 d3 = _mm256_sub_ps(_mm256_loadu_ps(xr + c + 24), vk);
            const __m256 sd = _mm256_add_ps(_mm256_add_ps(d0, d1), _mm256_add_ps(d2, d3));
            const __m256 qd = _mm256_add_ps(_mm256_fmadd_ps(d0, d0, _mm256_mul_ps(d1, d1)),
                                            _mm256_fmadd_ps(d2, d2, _mm256_mul_ps(d3, d3)));
            a0 = _mm256_add_pd(a0, _mm256_cvtps_pd(_mm256_castps256_ps128(sd)));
            a1 = _mm256_add_pd(a1, _mm256_cvtps_pd(_mm256_extractf128_ps(sd, 1)));
            b0 = _mm256_add_pd(b0, _mm256_cvtps_pd(_mm256_castps256_ps128(qd)));
            b1 = _mm256_add_pd(b1, _mm256_cvtps_pd(_mm256_extractf128_ps(qd, 1)));
        }
        double s1 = norm_hsum256_pd(_mm256_add_pd(a0, a1));
        double s2 = norm_hsum256_pd(_mm256_add_pd(b0, b1));
        for (; c < C; c++) {
            const double d = (double)(xr[c] - k);
            s1 += d;
            s2 += d * d;
        }
        const double m = s1 * inv_c;
        double var = s2 * inv_c - m * m;
        if (var < 0.0) var = 0.0;
        const double mean = (double)k + m;
        const double rstd = 1.0 / sqrt(var + eps);
        const float mh = (float)mean, ml = (float)(mean - (double)mh), rs = (float)rstd;
        save_mean[n] = mh;
        save_rstd[n] = rs;
        const __m256 vmh = _mm256_set1_ps(mh), vml = _mm256_set1_ps(ml), vrs = _mm256_set1_ps(rs);
        for (ptrdiff_t c0 = 0; c0 < C; c0 += NORM_TILE) {
            const ptrdiff_t c1 = C - c0 < NORM_TILE ? C : c0 + NORM_TILE;
            float *restrict o = stream ? tile - c0 : orow;
            const ptrdiff_t cv1 = c0 + ((c1 - c0) & ~(ptrdiff_t)7);
            for (c = c0; c < cv1; c += 8) {
                /* the next row's lines of x (see ln_bwd_rows_f) */
                if (!(c & 15) && n + 1 < r1) _mm_prefetch((const char *)(xr + C + c), _MM_HINT_T0);
                __m256 t = _mm256_mul_ps(
                    _mm256_sub_ps(_mm256_sub_ps(_mm256_loadu_ps(xr + c), vmh), vml), vrs);
                if (has_w && has_b)
                    t = _mm256_fmadd_ps(t, _mm256_loadu_ps(w + c), _mm256_loadu_ps(b + c));
                else if (has_w)
                    t = _mm256_mul_ps(t, _mm256_loadu_ps(w + c));
                else if (has_b)
                    t = _mm256_add_ps(t, _mm256_loadu_ps(b + c));
                _mm256_storeu_ps(o + c, t);
            }
            for (; c < c1; c++) {
                float t = ((xr[c] - mh) - ml) * rs;
                if (has_w && has_b) t = t * w[c] + b[c];
                else if (has_w) t = t * w[c];
                else if (has_b) t = t + b[c];
                o[c] = t;
            }
            if (stream) norm_stream_f(orow + c0, tile, c1 - c0);
        }
    }
    if (stream) norm_stream_fence();
}
#else
#define ln_fwd_rows_f ln_fwd_rows_generic_f
#endif
#define ln_fwd_rows_d ln_fwd_rows_generic_d

/* Bandwidth probes (fastreg/_bench/compare_norm.py): the two streaming kernels the norm passes
   are measured against, on elements [i0, i1). Read: a sum in 64 float32 lanes (four AVX-512
   registers, so the adds never wait on each other); copy: loads + the same non-temporal stores
   the norm kernels write large outputs with. */
static inline float norm_probe_read_f(const float *restrict x, ptrdiff_t i0, ptrdiff_t i1) {
    float acc[64];
    for (int k = 0; k < 64; k++) acc[k] = 0.0f;
    ptrdiff_t i = i0;
    for (; i + 64 <= i1; i += 64) {
        NORM_SIMD
        for (int k = 0; k < 64; k++) acc[k] += x[i + k];
    }
    float s = 0.0f;
    for (; i < i1; i++) s += x[i];
    for (int k = 0; k < 64; k++) s += acc[k];
    return s;
}

static inline void norm_probe_copy_f(const float *restrict x, float *restrict y, ptrdiff_t i0,
                                     ptrdiff_t i1) {
    norm_stream_f(y + i0, x + i0, i1 - i0);
    norm_stream_fence();
}
#endif
