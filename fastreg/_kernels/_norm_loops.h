/* Inner loops of the Cython norm kernels (_norm_cy.pyx), one row chunk [r0, r1) at a time.
 *
 * Arrays are (N, C) row-major; per-feature vectors (C,); scratch sums are float64. The .pyx file
 * validates nothing either: fastreg/_kernels/norm.py checked every shape before we get here.
 * Written in C for `restrict` and `omp simd reduction`, which vectorise the float64 row sums
 * without -ffast-math (so NaN/inf still propagate). NORM_DEFINE(T, S) instantiates the family
 * for element type T with suffix S (f = float, d = double).
 */
#ifndef FASTREG_NORM_LOOPS_H
#define FASTREG_NORM_LOOPS_H
#include <math.h>
#include <stddef.h>

#define NORM_PRAGMA(x) _Pragma(#x)
#define NORM_SIMD NORM_PRAGMA(omp simd)
#define NORM_SIMD_SUM2(a, b) NORM_PRAGMA(omp simd reduction(+:a, b))

#define NORM_DEFINE(T, S)                                                                       \
/* Batch norm pass 1: s1[c] = sum_n (x[n,c] - shift[c]), s2[c] = sum_n (...)^2 over the chunk */ \
static inline void bn_sums_##S(const T *restrict x, const T *restrict shift,                   \
                               double *restrict s1, double *restrict s2,                       \
                               ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t C) {                      \
    for (ptrdiff_t c = 0; c < C; c++) { s1[c] = 0.0; s2[c] = 0.0; }                             \
    for (ptrdiff_t n = r0; n < r1; n++) {                                                       \
        const T *restrict xr = x + n * C;                                                       \
        NORM_SIMD                                                                               \
        for (ptrdiff_t c = 0; c < C; c++) {                                                     \
            double d = (double)xr[c] - (double)shift[c];                                        \
            s1[c] += d;                                                                         \
            s2[c] += d * d;                                                                     \
        }                                                                                       \
    }                                                                                           \
}                                                                                               \
/* Batch norm pass 2: out = (x - mu) * sc + sh, last row of the chunk first (still cached) */  \
static inline void bn_affine_rev_##S(const T *restrict x, T *restrict out,                     \
                                     const double *restrict mu, const double *restrict sc,     \
                                     const double *restrict sh,                                \
                                     ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t C) {                \
    for (ptrdiff_t n = r1 - 1; n >= r0; n--) {                                                  \
        const T *restrict xr = x + n * C;                                                       \
        T *restrict orow = out + n * C;                                                         \
        NORM_SIMD                                                                               \
        for (ptrdiff_t c = 0; c < C; c++)                                                       \
            orow[c] = (T)(((double)xr[c] - mu[c]) * sc[c] + sh[c]);                             \
    }                                                                                           \
}                                                                                               \
/* Batch norm backward pass 1: sb[c] = sum_n dy, sw[c] = sum_n dy * (x - mean) */               \
static inline void bn_grad_sums_##S(const T *restrict dy, const T *restrict x,                 \
                                    const T *restrict mean,                                    \
                                    double *restrict sb, double *restrict sw,                  \
                                    ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t C) {                 \
    for (ptrdiff_t c = 0; c < C; c++) { sb[c] = 0.0; sw[c] = 0.0; }                             \
    for (ptrdiff_t n = r0; n < r1; n++) {                                                       \
        const T *restrict xr = x + n * C;                                                       \
        const T *restrict gr = dy + n * C;                                                      \
        NORM_SIMD                                                                               \
        for (ptrdiff_t c = 0; c < C; c++) {                                                     \
            double g = (double)gr[c];                                                           \
            sb[c] += g;                                                                         \
            sw[c] += g * ((double)xr[c] - (double)mean[c]);                                     \
        }                                                                                       \
    }                                                                                           \
}                                                                                               \
/* Batch norm backward pass 2: dx = ca * dy + cb * (x - mu) + cd, chunk walked backwards */     \
static inline void bn_dx_rev_##S(const T *restrict dy, const T *restrict x, T *restrict dx,    \
                                 const double *restrict mu, const double *restrict ca,         \
                                 const double *restrict cb, const double *restrict cd,         \
                                 ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t C) {                    \
    for (ptrdiff_t n = r1 - 1; n >= r0; n--) {                                                  \
        const T *restrict xr = x + n * C;                                                       \
        const T *restrict gr = dy + n * C;                                                      \
        T *restrict dr = dx + n * C;                                                            \
        NORM_SIMD                                                                               \
        for (ptrdiff_t c = 0; c < C; c++)                                                       \
            dr[c] = (T)(ca[c] * (double)gr[c] + cb[c] * ((double)xr[c] - mu[c]) + cd[c]);       \
    }                                                                                           \
}                                                                                               \
/* Layer norm forward on rows [r0, r1): per-row shifted float64 sums, then the affine map */   \
static inline void ln_fwd_rows_##S(const T *restrict x, const T *restrict w,                   \
                                   const T *restrict b, T *restrict out,                       \
                                   T *restrict save_mean, T *restrict save_rstd,               \
                                   int has_w, int has_b, double eps,                           \
                                   ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t C) {                  \
    const double inv_c = 1.0 / (double)C;                                                       \
    for (ptrdiff_t n = r0; n < r1; n++) {                                                       \
        const T *restrict xr = x + n * C;                                                       \
        T *restrict orow = out + n * C;                                                         \
        const double k = (double)xr[0];                                                         \
        double s1 = 0.0, s2 = 0.0;                                                              \
        NORM_SIMD_SUM2(s1, s2)                                                                  \
        for (ptrdiff_t c = 0; c < C; c++) {                                                     \
            double d = (double)xr[c] - k;                                                       \
            s1 += d;                                                                            \
            s2 += d * d;                                                                        \
        }                                                                                       \
        const double m = s1 * inv_c;                                                            \
        double var = s2 * inv_c - m * m;                                                        \
        if (var < 0.0) var = 0.0;                                                               \
        const double mean = k + m;                                                              \
        const double rstd = 1.0 / sqrt(var + eps);                                              \
        save_mean[n] = (T)mean;                                                                 \
        save_rstd[n] = (T)rstd;                                                                 \
        if (has_w && has_b) {                                                                   \
            NORM_SIMD                                                                           \
            for (ptrdiff_t c = 0; c < C; c++)                                                   \
                orow[c] = (T)(((double)xr[c] - mean) * rstd * (double)w[c] + (double)b[c]);     \
        } else if (has_w) {                                                                     \
            NORM_SIMD                                                                           \
            for (ptrdiff_t c = 0; c < C; c++)                                                   \
                orow[c] = (T)(((double)xr[c] - mean) * rstd * (double)w[c]);                    \
        } else if (has_b) {                                                                     \
            NORM_SIMD                                                                           \
            for (ptrdiff_t c = 0; c < C; c++)                                                   \
                orow[c] = (T)(((double)xr[c] - mean) * rstd + (double)b[c]);                    \
        } else {                                                                                \
            NORM_SIMD                                                                           \
            for (ptrdiff_t c = 0; c < C; c++)                                                   \
                orow[c] = (T)(((double)xr[c] - mean) * rstd);                                   \
        }                                                                                       \
    }                                                                                           \
}                                                                                               \
/* Layer norm backward on rows [r0, r1); pw/pb (C,) collect this chunk's dgamma/dbeta */       \
static inline void ln_bwd_rows_##S(const T *restrict dy, const T *restrict x,                  \
                                   const T *restrict w, const T *restrict save_mean,           \
                                   const T *restrict save_rstd, T *restrict dx,                \
                                   double *restrict pw, double *restrict pb, int has_w,        \
                                   ptrdiff_t r0, ptrdiff_t r1, ptrdiff_t C) {                  \
    const double inv_c = 1.0 / (double)C;                                                       \
    for (ptrdiff_t c = 0; c < C; c++) { pw[c] = 0.0; pb[c] = 0.0; }                             \
    for (ptrdiff_t n = r0; n < r1; n++) {                                                       \
        const T *restrict xr = x + n * C;                                                       \
        const T *restrict gr = dy + n * C;                                                      \
        T *restrict dr = dx + n * C;                                                            \
        const double mean = (double)save_mean[n], rstd = (double)save_rstd[n];                  \
        double sg = 0.0, sgx = 0.0;                                                             \
        if (has_w) {                                                                            \
            NORM_SIMD_SUM2(sg, sgx)                                                             \
            for (ptrdiff_t c = 0; c < C; c++) {                                                 \
                double g = (double)gr[c] * (double)w[c];                                        \
                sg += g;                                                                        \
                sgx += g * ((double)xr[c] - mean);                                              \
            }                                                                                   \
        } else {                                                                                \
            NORM_SIMD_SUM2(sg, sgx)                                                             \
            for (ptrdiff_t c = 0; c < C; c++) {                                                 \
                double g = (double)gr[c];                                                       \
                sg += g;                                                                        \
                sgx += g * ((double)xr[c] - mean);                                              \
            }                                                                                   \
        }                                                                                       \
        const double mg = sg * inv_c, mgx = sgx * rstd * inv_c;                                 \
        if (has_w) {                                                                            \
            NORM_SIMD                                                                           \
            for (ptrdiff_t c = 0; c < C; c++) {                                                 \
                double xh = ((double)xr[c] - mean) * rstd;                                      \
                double g = (double)gr[c];                                                       \
                dr[c] = (T)(rstd * (g * (double)w[c] - mg - xh * mgx));                         \
                pw[c] += g * xh;                                                                \
                pb[c] += g;                                                                     \
            }                                                                                   \
        } else {                                                                                \
            NORM_SIMD                                                                           \
            for (ptrdiff_t c = 0; c < C; c++) {                                                 \
                double xh = ((double)xr[c] - mean) * rstd;                                      \
                dr[c] = (T)(rstd * ((double)gr[c] - mg - xh * mgx));                            \
            }                                                                                   \
        }                                                                                       \
    }                                                                                           \
}

NORM_DEFINE(float, f)
NORM_DEFINE(double, d)

#undef NORM_DEFINE
#endif
