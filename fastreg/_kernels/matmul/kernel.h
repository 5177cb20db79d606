/* Cache-blocked, packed, OpenMP-parallel GEMM with a fused epilogue, for float and double.
 *
 *   C[m, n] (+)= sum_k A[m, k] * B[k, n]            (C row-major with leading dimension ldc)
 *   then, if requested: C = act(C + bias[n])        (on the tile while it is in registers/L1)
 *   and  rowsum[m] (+)= sum_k A[m, k]               (fused into the packing of A; dbias)
 *   or, for the input gradient, C = act_grad(C, Y)  (fr_gemm_ep: once the tile is final)
 *
 * A and B are read through (row stride, column stride) pairs, so the three linear-layer products
 * (x @ W.T, dy @ W, dy.T @ x) are the same routine with different strides.
 *
 * Blocking (Goto/BLIS): C is split into tiles of at most MC rows x NC columns (smaller when
 * needed to give every thread work: the columns first when A is row-major, see fr_gemm); each
 * tile is one OpenMP task (dynamic schedule, no barrier inside the call). A task walks the depth
 * in KC blocks: it packs its kc x nc block of B into NR-wide panels (L2) -- or reads the panels
 * pre-packed once (fr_pack_weight) -- then for each MR-row sliver of A (read in place when A is
 * row-major; for A = dy.T, the weight gradient, the task's whole row block is packed at once,
 * dbias summed from the same reads; other layouts packed sliver by sliver) runs the
 * register-blocked micro-kernel across the B panels.
 * Every output element is summed by one task in one order (k ascending within a depth block,
 * the blocks in turn), so results do not depend on the thread count or the split.
 *
 * The micro-kernel keeps an MR x NR tile in registers: AVX-512 (8 x 2 zmm), AVX2 (6 x 2 ymm) or
 * a portable scalar loop (4 x 8), chosen by the compiler flags (setup.py uses -march=native).
 * Packed panels are zero-padded, so edge tiles run the full kernel into a scratch tile and only
 * the valid part is copied out.
 *
 * This file is type-generic: it defines the per-type vector macros, then includes
 * gemm_impl.h once for float (suffix f32) and once for double (suffix f64).
 */
#ifndef FASTREG_MATMUL_KERNEL_H
#define FASTREG_MATMUL_KERNEL_H

#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "prelude.h"
#include "split_pool.h"

#if defined(__AVX512F__) || defined(__AVX2__)
#include <immintrin.h>
#endif

/* Activation codes: must match fastreg/_kernels/common/codes.py. */
#define FR_ACT_IDENTITY 0
#define FR_ACT_RELU 1
#define FR_ACT_LEAKY_RELU 2
#define FR_ACT_SIGMOID 3
#define FR_ACT_TANH 4
/* The input-gradient epilogue's extra code (fastreg/_kernels/matmul/codes.py): the gradient
 * through a fused ReLU -> Dropout, from the dropout's output (dropout/relu_dropout.h). */
#define FR_GRAD_RELU_DROPOUT 5

/* exp / tanh of the fused Sigmoid / Tanh epilogues: the elementwise kernels' own (branch-free,
 * vectorizable with -fno-trapping-math, which setup.py gives this extension), so a fused
 * Linear + Sigmoid / Tanh gives the bits of the Linear and then the separate layer. libm's
 * expf / tanhf were scalar calls: the fused forward was slower than the two layers. */
#include "../elementwise/ops.h"

#define FR_CAT_(a, b) a##_##b
#define FR_CAT(a, b) FR_CAT_(a, b)
#define FR_MIN(a, b) ((a) < (b) ? (a) : (b))
#define FR_ALIGN 64
#if defined(__GNUC__) && !defined(__clang__)
#define FR_NOVEC __attribute__((optimize("no-tree-vectorize")))
#else
#define FR_NOVEC
#endif

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

/* FLOPs per row from which a few-rows fr_chain splits each layer across the threads (on the
 * split pool, common/split_pool.h). 2.5e5: the 784-512-256-10 MLP (1.07 MFLOP a row) splits;
 * a small model stays on one thread. fastreg.inference.set_split_small_batches(False) sets
 * 4e6 (no split for models of that size): with OpenMP regions the split cost 0.6-1.4 ms a call
 * when another process held a core (each barrier waited a time slice for a descheduled worker);
 * the split pool's caller never waits for a worker that has not started, so the split is on by
 * default now (quiet 2-core machine: that MLP at batch 1 32 -> 19 us). */
static double fr_chain_par_min_flops = 2.5e5;

/* The activations between the layers of fr_chain: a second per-thread scratch, since fr_gemm
 * uses the first one while they are live. */
static __thread void *fr_chain_scratch = NULL;
static __thread size_t fr_chain_scratch_size = 0;

static void *fr_get_chain_scratch(size_t bytes) {
    if (bytes > fr_chain_scratch_size) {
        free(fr_chain_scratch);
        size_t sz = (bytes + FR_ALIGN - 1) / FR_ALIGN * FR_ALIGN;
        fr_chain_scratch = aligned_alloc(FR_ALIGN, sz);
        fr_chain_scratch_size = fr_chain_scratch ? sz : 0;
    }
    return fr_chain_scratch;
}

/* Register transposes for the packers: dst[c * ldd + r] = src[r * lds + c] for one square block
 * (8 x 8 float, 4 x 4 double). Scalar transposing loops either run at one element per several
 * cycles (strided stores) or get vectorized into AVX-512 scatters, which are slower still. */
#if defined(__AVX2__)
#define FR_HAVE_TRANSPOSE 1
static inline void fr_transpose_f32(const float *src, ptrdiff_t lds, float *dst, ptrdiff_t ldd) {
    __m256 r0 = _mm256_loadu_ps(src), r1 = _mm256_loadu_ps(src + lds);
    __m256 r2 = _mm256_loadu_ps(src + 2 * lds), r3 = _mm256_loadu_ps(src + 3 * lds);
    __m256 r4 = _mm256_loadu_ps(src + 4 * lds), r5 = _mm256_loadu_ps(src + 5 * lds);
    __m256 r6 = _mm256_loadu_ps(src + 6 * lds), r7 = _mm256_loadu_ps(src + 7 * lds);
    __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
    __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
    __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    __m256 s0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
    __m256 s1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
    __m256 s2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
    __m256 s3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
    __m256 s4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
    __m256 s5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
    __m256 s6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
    __m256 s7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
    _mm256_storeu_ps(dst, _mm256_permute2f128_ps(s0, s4, 0x20));
    _mm256_storeu_ps(dst + ldd, _mm256_permute2f128_ps(s1, s5, 0x20));
    _mm256_storeu_ps(dst + 2 * ldd, _mm256_permute2f128_ps(s2, s6, 0x20));
    _mm256_storeu_ps(dst + 3 * ldd, _mm256_permute2f128_ps(s3, s7, 0x20));
    _mm256_storeu_ps(dst + 4 * ldd, _mm256_permute2f128_ps(s0, s4, 0x31));
    _mm256_storeu_ps(dst + 5 * ldd, _mm256_permute2f128_ps(s1, s5, 0x31));
    _mm256_storeu_ps(dst + 6 * ldd, _mm256_permute2f128_ps(s2, s6, 0x31));
    _mm256_storeu_ps(dst + 7 * ldd, _mm256_permute2f128_ps(s3, s7, 0x31));
}
/* The AVX2 float sliver has 6 rows: dst[c * 6 + r] = src[r * lds + c] for r < 6, c < 8. Rows 6
 * and 7 of the 8 x 8 network are zeros (never read past the sliver: at the matrix's last rows
 * that would be out of bounds), and each output row stores its 6 valid floats (4 + 2). */
static inline void fr_transpose6x8_f32(const float *src, ptrdiff_t lds, float *dst) {
    __m256 r0 = _mm256_loadu_ps(src), r1 = _mm256_loadu_ps(src + lds);
    __m256 r2 = _mm256_loadu_ps(src + 2 * lds), r3 = _mm256_loadu_ps(src + 3 * lds);
    __m256 r4 = _mm256_loadu_ps(src + 4 * lds), r5 = _mm256_loadu_ps(src + 5 * lds);
    __m256 r6 = _mm256_setzero_ps(), r7 = r6;
    __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
    __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
    __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
    __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
    __m256 s0 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(1, 0, 1, 0));
    __m256 s1 = _mm256_shuffle_ps(t0, t2, _MM_SHUFFLE(3, 2, 3, 2));
    __m256 s2 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(1, 0, 1, 0));
    __m256 s3 = _mm256_shuffle_ps(t1, t3, _MM_SHUFFLE(3, 2, 3, 2));
    __m256 s4 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(1, 0, 1, 0));
    __m256 s5 = _mm256_shuffle_ps(t4, t6, _MM_SHUFFLE(3, 2, 3, 2));
    __m256 s6 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(1, 0, 1, 0));
    __m256 s7 = _mm256_shuffle_ps(t5, t7, _MM_SHUFFLE(3, 2, 3, 2));
    __m256 v[8] = {_mm256_permute2f128_ps(s0, s4, 0x20), _mm256_permute2f128_ps(s1, s5, 0x20),
                   _mm256_permute2f128_ps(s2, s6, 0x20), _mm256_permute2f128_ps(s3, s7, 0x20),
                   _mm256_permute2f128_ps(s0, s4, 0x31), _mm256_permute2f128_ps(s1, s5, 0x31),
                   _mm256_permute2f128_ps(s2, s6, 0x31), _mm256_permute2f128_ps(s3, s7, 0x31)};
    for (int c = 0; c < 8; c++) {
        _mm_storeu_ps(dst + 6 * c, _mm256_castps256_ps128(v[c]));
        _mm_storel_pi((__m64 *)(dst + 6 * c + 4), _mm256_extractf128_ps(v[c], 1));
    }
}
static inline void fr_transpose_f64(const double *src, ptrdiff_t lds, double *dst,
                                    ptrdiff_t ldd) {
    __m256d r0 = _mm256_loadu_pd(src), r1 = _mm256_loadu_pd(src + lds);
    __m256d r2 = _mm256_loadu_pd(src + 2 * lds), r3 = _mm256_loadu_pd(src + 3 * lds);
    __m256d t0 = _mm256_unpacklo_pd(r0, r1), t1 = _mm256_unpackhi_pd(r0, r1);
    __m256d t2 = _mm256_unpacklo_pd(r2, r3), t3 = _mm256_unpackhi_pd(r2, r3);
    _mm256_storeu_pd(dst, _mm256_permute2f128_pd(t0, t2, 0x20));
    _mm256_storeu_pd(dst + ldd, _mm256_permute2f128_pd(t1, t3, 0x20));
    _mm256_storeu_pd(dst + 2 * ldd, _mm256_permute2f128_pd(t0, t2, 0x31));
    _mm256_storeu_pd(dst + 3 * ldd, _mm256_permute2f128_pd(t1, t3, 0x31));
}
#endif

/* ------------------------------------------------------------------ float */
#define FR_T float
#define FR_U uint32_t
#define FR_SUFFIX f32
#define FR_TB 8
#define FR_EXP fr_expf
#define FR_TANH fr_tanhf
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
#define FR_MC 256
#include "gemm_impl.h"
#undef FR_T
#undef FR_U
#undef FR_SUFFIX
#undef FR_TB
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
#define FR_U uint64_t
#define FR_SUFFIX f64
#define FR_TB 4
#define FR_EXP fr_exp
#define FR_TANH fr_tanh
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
#define FR_MC 256
#include "gemm_impl.h"
#undef FR_T
#undef FR_U
#undef FR_SUFFIX
#undef FR_TB
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
