/* bf16 mixed-precision GEMM (autocast): float32 arrays in and out, bf16-rounded operands,
 * float32 accumulation.
 *
 *   C[m, n] (+)= bf16(   sum_k bf16(A[m, k]) * bf16(B[k, n]) + bf16(bias[n])   )   then act
 *   rowsum[m] (+)= bf16( sum_k bf16(A[m, k]) )                                 (dbias)
 *
 * bf16(v) rounds a float32 to the nearest bfloat16 (8 exponent bits, 7 mantissa bits), ties to
 * even, kept in a float32 (the low 16 bits zero) -- torch's c10::BFloat16 conversion. The outer
 * bf16(...) (the result rounded once, before it is added to what C held and before the activation)
 * is optional (round_out): torch's bf16 addmm returns a bf16 tensor, and under autocast the
 * gradients of the bf16 weight copy come back rounded the same way before they are accumulated
 * into the float32 .grad.
 *
 * The operands are rounded while they are packed: the float32 packers of kernel.h write the
 * panel, then one vector pass rounds it in place while it sits in L1/L2, so the rounding costs
 * a pass over packed data that is reused across a whole row/column block, never a pass over the
 * arrays. The micro-kernel is kernel.h's float32 FMA kernel: a product of two bf16 values is
 * exact in float32 (8 x 8 significant bits), so the only error left is float32 accumulation.
 *
 * No AVX-512 BF16 (vdpbf16ps) path here: the machines this was written and tested on have none,
 * and an untested kernel would be a guess. vdpbf16ps accumulates pairs of products in float32
 * just as this kernel does (within float32 rounding), so it would be a drop-in micro-kernel with
 * a k-pair-interleaved packing; until then the float32 FMA micro-kernel does the arithmetic,
 * at float32 speed (bf16 cannot be faster than float32 on a CPU without bf16 instructions).
 */
#ifndef FASTREG_MATMUL_BF16_H
#define FASTREG_MATMUL_BF16_H

#include <stdint.h>

#include "kernel.h"

/* The float micro-kernel's tile (FR_MR x 2 FR_W in kernel.h, whose macros are #undef'd after
 * use): must match kernel.h's float settings. A mismatch reads packed panels with the wrong
 * stride, which tests/test_autocast.py's reference comparison on awkward sizes catches. */
#if defined(__AVX512F__)
#define FR_BF16_MR 8
#define FR_BF16_NR 32
#elif defined(__AVX2__) && defined(__FMA__)
#define FR_BF16_MR 6
#define FR_BF16_NR 16
#else
#define FR_BF16_MR 4
#define FR_BF16_NR 8
#endif

/* Round a float32 to the nearest bf16 (ties to even), as c10::BFloat16(float). NaN stays a
 * (quiet) NaN, +-inf stays inf, finite values past the largest bf16 round to inf. */
static inline float fr_bf16_round(float v) {
    uint32_t b;
    memcpy(&b, &v, sizeof b);
    if ((b & 0x7fffffffu) > 0x7f800000u)
        b = (b | 0x00400000u) & 0xffff0000u;
    else
        b = (b + 0x7fffu + ((b >> 16) & 1u)) & 0xffff0000u;
    memcpy(&v, &b, sizeof v);
    return v;
}

/* p[0:count] = bf16(p[0:count]) in place. */
static void fr_bf16_round_inplace(float *p, size_t count) {
    size_t i = 0;
#if defined(__AVX2__)
    const __m256i one = _mm256_set1_epi32(1), half = _mm256_set1_epi32(0x7fff);
    const __m256i hi = _mm256_set1_epi32((int)0xffff0000u), quiet = _mm256_set1_epi32(0x00400000);
    for (; i + 8 <= count; i += 8) {
        __m256 v = _mm256_loadu_ps(p + i);
        __m256i b = _mm256_castps_si256(v);
        __m256i lsb = _mm256_and_si256(_mm256_srli_epi32(b, 16), one);
        __m256i r = _mm256_and_si256(_mm256_add_epi32(b, _mm256_add_epi32(half, lsb)), hi);
        __m256i q = _mm256_and_si256(_mm256_or_si256(b, quiet), hi);
        __m256 nan = _mm256_cmp_ps(v, v, _CMP_UNORD_Q);
        _mm256_storeu_ps(p + i, _mm256_blendv_ps(_mm256_castsi256_ps(r), _mm256_castsi256_ps(q),
                                                 nan));
    }
#endif
    for (; i < count; i++) p[i] = fr_bf16_round(p[i]);
}

/* The finished mr x nr tile at c: v = bf16(v) [+ keep] then act, where keep (row stride ldk) is
 * what C held before an accumulating call (NULL: nothing to add). */
static void fr_bf16_finish(int mr, int nr, float *c, ptrdiff_t ldc, const float *keep,
                           ptrdiff_t ldk, int act, float slope) {
    for (int i = 0; i < mr; i++) {
        float *row = c + i * ldc;
        fr_bf16_round_inplace(row, (size_t)nr);
        if (keep)
            for (int j = 0; j < nr; j++) row[j] += keep[i * ldk + j];
        if (act != FR_ACT_IDENTITY)
            for (int j = 0; j < nr; j++) row[j] = fr_act_f32(row[j], act, slope);
    }
}

/* C[m, n] (+)= A @ B with bf16-rounded operands (see the top of this file). Same strides and
 * arguments as fr_gemm_f32, plus round_out. Returns 0, or -1 when scratch could not be had. */
static int fr_gemm_bf16(int m, int n, int k, const float *A, ptrdiff_t rsa, ptrdiff_t csa,
                        const float *B, ptrdiff_t rsb, ptrdiff_t csb, float *C, ptrdiff_t ldc,
                        int accumulate, const float *bias_in, int act, float slope,
                        float *rowsum, int round_out, int nthreads) {
    if (m <= 0 || n <= 0) return 0;
    float *bias = NULL;
    if (bias_in) {   /* autocast casts the bias to bf16 too */
        bias = (float *)malloc((size_t)n * sizeof(float) + FR_ALIGN);
        if (!bias) return -1;
        memcpy(bias, bias_in, (size_t)n * sizeof(float));
        fr_bf16_round_inplace(bias, (size_t)n);
    }
    if (k <= 0) {  /* empty sum: C = act(bf16(bias)) [+ C] */
        for (int i = 0; i < m; i++) {
            if (rowsum && !accumulate) rowsum[i] = 0;
            for (int j = 0; j < n; j++) {
                float v = bias ? bias[j] : 0.0f;
                if (accumulate) v += C[i * ldc + j];
                C[i * ldc + j] = fr_act_f32(v, act, slope);
            }
        }
        free(bias);
        return 0;
    }
    if (nthreads < 1) nthreads = 1;
    /* With round_out the depth loop computes the product alone (C starts from zero) and what C
     * held is added after the rounding: keep holds it, per task, for the tile the task owns. */
    const int keep_old = accumulate && round_out;
    const int acc = accumulate && !round_out;
    const double flops = 2.0 * m * (double)n * k;
    const int nt = flops >= 8.0e6 ? nthreads : 1;
    const int kblocks = (k + 256 - 1) / 256;
    const int kcb = (k + kblocks - 1) / kblocks;
#define BMR FR_BF16_MR
#define BNR FR_BF16_NR
    int mb = (m + 256 - 1) / 256, nb = (n + 512 - 1) / 512;
    const int want = nt > 1 ? 3 * nt : 1;
    while (mb * nb < want) {
        const int mcur = (m + mb - 1) / mb, ncur = (n + nb - 1) / nb;
        if (mcur >= 2 * BMR && mcur >= ncur / 2) mb++;
        else if (ncur >= 2 * BNR) nb++;
        else break;
    }
    const int mcb = ((m + mb - 1) / mb + BMR - 1) / BMR * BMR;
    const int ncb = ((n + nb - 1) / nb + BNR - 1) / BNR * BNR;
    mb = (m + mcb - 1) / mcb;
    nb = (n + ncb - 1) / ncb;
    const int ntasks = mb * nb;
    const int nteam = FR_MIN(nt, ntasks);
    const size_t keep_size = keep_old ? (size_t)mcb * ncb + (size_t)mcb : 0;
    const size_t per_thread = (size_t)ncb * kcb + (size_t)BMR * kcb + (size_t)BMR * BNR + keep_size;
    float *scratch = (float *)fr_get_scratch(per_thread * (size_t)nteam * sizeof(float));
    if (!scratch) { free(bias); return -1; }
    (void)nteam;

#pragma omp parallel for schedule(dynamic, 1) num_threads(nteam) if (nteam > 1)
    for (int t = 0; t < ntasks; t++) {
        float *Bp = scratch + per_thread * (size_t)omp_get_thread_num();
        float *Ap = Bp + (size_t)ncb * kcb;
        float *tile = Ap + (size_t)BMR * kcb;
        float *keep = keep_old ? tile + (size_t)BMR * BNR : NULL;
        float *keep_row = keep_old ? keep + (size_t)mcb * ncb : NULL;
        const int ib = t / nb, jb = t % nb;
        const int i0 = ib * mcb, i1 = FR_MIN(m, i0 + mcb);
        const int j0 = jb * ncb, nc = FR_MIN(ncb, n - j0);
        const int npanels = (nc + BNR - 1) / BNR;
        const int do_rowsum = rowsum && jb == 0;
        if (keep_old) {
            for (int i = i0; i < i1; i++) {
                memcpy(keep + (size_t)(i - i0) * ncb, C + i * ldc + j0, nc * sizeof(float));
                if (do_rowsum) keep_row[i - i0] = rowsum[i];
            }
        }
        for (int pc = 0; pc < k; pc += kcb) {
            const int kc = FR_MIN(kcb, k - pc);
            const int first = pc == 0, last = pc + kc >= k;
            const int load_c = acc || !first;
            for (int p = 0; p < npanels; p++) {
                const int jp = j0 + p * BNR;
                float *bp = Bp + (size_t)p * BNR * kc;
                fr_pack_b_f32(FR_MIN(BNR, n - jp), kc, B + pc * rsb + jp * csb, rsb, csb, bp);
                fr_bf16_round_inplace(bp, (size_t)BNR * kc);
            }
            for (int ir = i0; ir < i1; ir += BMR) {
                const int mr = FR_MIN(BMR, i1 - ir);
                fr_pack_a_f32(mr, kc, A + ir * rsa + pc * csa, rsa, csa, Ap);
                fr_bf16_round_inplace(Ap, (size_t)BMR * kc);
                if (do_rowsum) {
                    for (int i = 0; i < mr; i++) {
                        float s = 0;
                        for (int p = 0; p < kc; p++) s += Ap[p * BMR + i];
                        rowsum[ir + i] = load_c ? rowsum[ir + i] + s : s;
                    }
                    if (last && round_out)
                        for (int i = 0; i < mr; i++) {
                            float v = fr_bf16_round(rowsum[ir + i]);
                            rowsum[ir + i] = keep_old ? v + keep_row[ir - i0 + i] : v;
                        }
                }
                for (int p = 0; p < npanels; p++) {
                    const int jp = j0 + p * BNR, nr = FR_MIN(BNR, n - jp);
                    float *c = C + ir * ldc + jp;
                    const float *bp = Bp + (size_t)p * BNR * kc;
                    const float *bb = bias ? bias + jp : NULL;
                    /* with round_out the epilogue adds the bias only; the rounding, the kept
                     * values and the activation follow in fr_bf16_finish */
                    const int a_ep = round_out ? FR_ACT_IDENTITY : act;
                    if (mr == BMR && nr == BNR)
                        fr_ukernel_f32(kc, Ap, 0, bp, c, ldc, load_c, last, bb, a_ep, slope);
                    else
                        fr_edge_tile_f32(mr, nr, kc, Ap, 0, bp, c, ldc, load_c, last, bb, a_ep,
                                         slope, tile);
                    if (last && round_out)
                        fr_bf16_finish(mr, nr, c, ldc,
                                       keep_old ? keep + (size_t)(ir - i0) * ncb + (jp - j0) : NULL,
                                       ncb, act, slope);
                }
            }
        }
    }
#undef BMR
#undef BNR
    free(bias);
    return 0;
}

#endif /* FASTREG_MATMUL_BF16_H */
