/* Cache-blocked, packed, OpenMP-parallel GEMM with a fused epilogue, for float and double.
 *
 *   C[m, n] (+)= sum_k A[m, k] * B[k, n]            (C row-major with leading dimension ldc)
 *   then, if requested: C = act(C + bias[n])        (on the tile while it is in registers/L1)
 *   and  rowsum[m] (+)= sum_k A[m, k]               (fused into the packing of A; dbias)
 *
 * A and B are read through (row stride, column stride) pairs, so the three linear-layer products
 * (x @ W.T, dy @ W, dy.T @ x) are the same routine with different strides.
 *
 * Blocking (Goto/BLIS): C is split into tiles of at most MC rows x NC columns (smaller when
 * needed to give every thread work); each tile is one OpenMP task (dynamic schedule, no barrier
 * inside the call). A task walks the depth in KC blocks: it packs its kc x nc block of B into
 * NR-wide panels (L2), then for each MR-row sliver of A packs it (L1) and runs the
 * register-blocked micro-kernel across the B panels.
 *
 * The micro-kernel keeps an MR x NR tile in registers: AVX-512 (8 x 2 zmm), AVX2 (6 x 2 ymm) or
 * a portable scalar loop (4 x 8), chosen by the compiler flags (setup.py uses -march=native).
 * Packed panels are zero-padded, so edge tiles run the full kernel into a scratch tile and only
 * the valid part is copied out.
 *
 * This file is type-generic: it defines the per-type vector macros, then includes
 * _matmul_gemm_impl.h once for float (suffix f32) and once for double (suffix f64).
 */
#ifndef FASTREG_MATMUL_KERNEL_H
#define FASTREG_MATMUL_KERNEL_H

#include <math.h>
#include <stddef.h>
#include <stdlib.h>
#include <string.h>

#include "_omp_compat.h"

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

/* Activation codes: must match fastreg/_kernels/_codes.py. */
#define FR_ACT_IDENTITY 0
#define FR_ACT_RELU 1
#define FR_ACT_LEAKY_RELU 2
#define FR_ACT_SIGMOID 3
#define FR_ACT_TANH 4

#define FR_CAT_(a, b) a##_##b
#define FR_CAT(a, b) FR_CAT_(a, b)
#define FR_MIN(a, b) ((a) < (b) ? (a) : (b))
#define FR_ALIGN 64

/* Per-calling-thread scratch, grown on demand and kept for the next call: a fresh allocation per
 * call would page-fault the whole packed-B block every time (glibc mmaps large blocks). */
static __thread void *fr_scratch = NULL;
static __thread size_t fr_scratch_size = 0;

static void *fr_get_scratch(size_t bytes) {
    if (bytes > fr_scratch_size) {
        free(fr_scratch);
        size_t sz = (bytes + FR_ALIGN - 1) / FR_ALIGN * FR_ALIGN;
        fr_scratch = aligned_alloc(FR_ALIGN, sz);
        fr_scratch_size = fr_scratch ? sz : 0;
    }
    return fr_scratch;
}

/* ------------------------------------------------------------------ float */
#define FR_T float
#define FR_SUFFIX f32
#define FR_EXP expf
#define FR_TANH tanhf
#if defined(__AVX512F__)
#define FR_MR 8
#define FR_W 16
#define FR_V __m512
#define FR_VZERO() _mm512_setzero_ps()
#define FR_VLOAD(p) _mm512_loadu_ps(p)
#define FR_VSTORE(p, v) _mm512_storeu_ps((p), (v))
#define FR_VBCAST(p) _mm512_set1_ps(*(p))
#define FR_VSET1(x) _mm512_set1_ps(x)
#define FR_VFMA(a, b, c) _mm512_fmadd_ps((a), (b), (c))
#define FR_VADD(a, b) _mm512_add_ps((a), (b))
#define FR_VMAX(a, b) _mm512_max_ps((a), (b))
#define FR_VLEAKY(x, s) \
    _mm512_mask_mul_ps((x), _mm512_cmp_ps_mask((x), _mm512_setzero_ps(), _CMP_LT_OQ), (x), (s))
#elif defined(__AVX2__) && defined(__FMA__)
#define FR_MR 6
#define FR_W 8
#define FR_V __m256
#define FR_VZERO() _mm256_setzero_ps()
#define FR_VLOAD(p) _mm256_loadu_ps(p)
#define FR_VSTORE(p, v) _mm256_storeu_ps((p), (v))
#define FR_VBCAST(p) _mm256_broadcast_ss(p)
#define FR_VSET1(x) _mm256_set1_ps(x)
#define FR_VFMA(a, b, c) _mm256_fmadd_ps((a), (b), (c))
#define FR_VADD(a, b) _mm256_add_ps((a), (b))
#define FR_VMAX(a, b) _mm256_max_ps((a), (b))
#define FR_VLEAKY(x, s) \
    _mm256_blendv_ps((x), _mm256_mul_ps((x), (s)), \
                     _mm256_cmp_ps((x), _mm256_setzero_ps(), _CMP_LT_OQ))
#else
#define FR_SCALAR_KERNEL 1
#define FR_MR 4
#define FR_W 4
#endif
#define FR_KC 256
#define FR_NC 512
#define FR_MC 128
#include "_matmul_gemm_impl.h"
#undef FR_T
#undef FR_SUFFIX
#undef FR_EXP
#undef FR_TANH
#undef FR_MR
#undef FR_W
#undef FR_V
#undef FR_VZERO
#undef FR_VLOAD
#undef FR_VSTORE
#undef FR_VBCAST
#undef FR_VSET1
#undef FR_VFMA
#undef FR_VADD
#undef FR_VMAX
#undef FR_VLEAKY
#undef FR_SCALAR_KERNEL
#undef FR_KC
#undef FR_NC
#undef FR_MC

/* ----------------------------------------------------------------- double */
#define FR_T double
#define FR_SUFFIX f64
#define FR_EXP exp
#define FR_TANH tanh
#if defined(__AVX512F__)
#define FR_MR 8
#define FR_W 8
#define FR_V __m512d
#define FR_VZERO() _mm512_setzero_pd()
#define FR_VLOAD(p) _mm512_loadu_pd(p)
#define FR_VSTORE(p, v) _mm512_storeu_pd((p), (v))
#define FR_VBCAST(p) _mm512_set1_pd(*(p))
#define FR_VSET1(x) _mm512_set1_pd(x)
#define FR_VFMA(a, b, c) _mm512_fmadd_pd((a), (b), (c))
#define FR_VADD(a, b) _mm512_add_pd((a), (b))
#define FR_VMAX(a, b) _mm512_max_pd((a), (b))
#define FR_VLEAKY(x, s) \
    _mm512_mask_mul_pd((x), _mm512_cmp_pd_mask((x), _mm512_setzero_pd(), _CMP_LT_OQ), (x), (s))
#elif defined(__AVX2__) && defined(__FMA__)
#define FR_MR 6
#define FR_W 4
#define FR_V __m256d
#define FR_VZERO() _mm256_setzero_pd()
#define FR_VLOAD(p) _mm256_loadu_pd(p)
#define FR_VSTORE(p, v) _mm256_storeu_pd((p), (v))
#define FR_VBCAST(p) _mm256_broadcast_sd(p)
#define FR_VSET1(x) _mm256_set1_pd(x)
#define FR_VFMA(a, b, c) _mm256_fmadd_pd((a), (b), (c))
#define FR_VADD(a, b) _mm256_add_pd((a), (b))
#define FR_VMAX(a, b) _mm256_max_pd((a), (b))
#define FR_VLEAKY(x, s) \
    _mm256_blendv_pd((x), _mm256_mul_pd((x), (s)), \
                     _mm256_cmp_pd((x), _mm256_setzero_pd(), _CMP_LT_OQ))
#else
#define FR_SCALAR_KERNEL 1
#define FR_MR 4
#define FR_W 4
#endif
#define FR_KC 256
#define FR_NC 256
#define FR_MC 128
#include "_matmul_gemm_impl.h"
#undef FR_T
#undef FR_SUFFIX
#undef FR_EXP
#undef FR_TANH
#undef FR_MR
#undef FR_W
#undef FR_V
#undef FR_VZERO
#undef FR_VLOAD
#undef FR_VSTORE
#undef FR_VBCAST
#undef FR_VSET1
#undef FR_VFMA
#undef FR_VADD
#undef FR_VMAX
#undef FR_VLEAKY
#undef FR_SCALAR_KERNEL
#undef FR_KC
#undef FR_NC
#undef FR_MC

#endif /* FASTREG_MATMUL_KERNEL_H */
