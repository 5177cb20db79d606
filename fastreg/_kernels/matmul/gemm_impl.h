/* Type-generic body of the GEMM (see kernel.h, which includes this file once per type
 * with FR_T, FR_SUFFIX, FR_MR, FR_W, FR_KC, FR_NC and the vector macros defined).
 * No include guard on purpose. */

#define FR_NR (2 * FR_W)
#define FN(name) FR_CAT(name, FR_SUFFIX)
/* Below this much work one thread does it all. A fork/join costs a few us on a quiet machine,
 * but when another process holds the second core the join waits for an OS time slice (ms), so
 * small products (batch-1 inference, the 10-wide output layer) stay on the calling thread.
 * ~8 MFLOP is ~60 us of single-core work; a GEMV is memory-bound, worth a second core only
 * once the weights (k * n >= 2M elements) no longer sit in one core's L2. */
#define FR_PAR_MIN_FLOPS 8.0e6
#define FR_PAR_MIN_FLOPS_GEMV 4.0e6
/* Up to this many output rows the product is a few GEMVs: no packing, no tile padding. */
#define FR_SMALL_M 4

static inline FR_T FN(fr_act)(FR_T v, int act, FR_T slope) {
    switch (act) {
    case FR_ACT_RELU: return v < 0 ? (FR_T)0 : v;  /* keeps NaN, as torch.relu */
    case FR_ACT_LEAKY_RELU: return v < 0 ? v * slope : v;
    case FR_ACT_SIGMOID: return (FR_T)1 / ((FR_T)1 + FR_EXP(-v));
    case FR_ACT_TANH: return FR_TANH(v);
    default: return v;
    }
}

/* Ap[k * MR + i] = A[i, k] for the mr x kc sliver at A (rows beyond mr are zero).
 * The packers are kept scalar (FR_NOVEC): gcc would vectorize the transposing loops with AVX-512
 * scatters, which are microcoded and several times slower on Zen 4. They read the source
 * contiguously and write with a small stride into L1-resident scratch. */
FR_NOVEC static void FN(fr_pack_a)(int mr, int kc, const FR_T *A, ptrdiff_t rsa, ptrdiff_t csa,
                                   FR_T *restrict Ap) {
    if (csa == 1) {
        /* Register transposes cover rows [0, it) x depth [0, k0): only whole TB x TB blocks
         * that lie inside the sliver. With MR = 6 (AVX2) a block starting at row 4 (double) or
         * 0 (float) would read rows past the sliver and its rows of Ap would spill into the next
         * depth's entries (ldd = MR < i0 + TB): that silently corrupted AVX2 float64 GEMMs. */
        int k0 = 0, it = 0;
#ifdef FR_HAVE_TRANSPOSE
        if (mr == FR_MR && FR_MR >= FR_TB) {
            it = FR_MR / FR_TB * FR_TB;
            for (; k0 + FR_TB <= kc; k0 += FR_TB)
                for (int i0 = 0; i0 < it; i0 += FR_TB)
                    FR_CAT(fr_transpose, FR_SUFFIX)(A + i0 * rsa + k0, rsa,
                                                    Ap + k0 * FR_MR + i0, FR_MR);
        }
#if FR_MR == 6 && FR_TB == 8    /* AVX2 float: a 6-row transpose of its own */
        else if (mr == FR_MR) {
            it = FR_MR;
            for (; k0 + FR_TB <= kc; k0 += FR_TB)
                fr_transpose6x8_f32(A + k0, rsa, Ap + k0 * FR_MR);
        }
#endif
#endif
        for (int i = 0; i < mr; i++) {
            const FR_T *row = A + i * rsa;
            for (int k = (i < it ? k0 : 0); k < kc; k++) Ap[k * FR_MR + i] = row[k];
        }
    } else if (rsa == 1) {  /* A = dy.T in the weight gradient: rows of dy, copied */
        for (int k = 0; k < kc; k++) memcpy(Ap + k * FR_MR, A + k * csa, mr * sizeof(FR_T));
    } else {
        for (int k = 0; k < kc; k++) {
            const FR_T *col = A + k * csa;
            for (int i = 0; i < mr; i++) Ap[k * FR_MR + i] = col[i * rsa];
        }
    }
    for (int k = 0; k < kc; k++)
        for (int i = mr; i < FR_MR; i++) Ap[k * FR_MR + i] = 0;
}

/* Bp[k * NR + j] = B[k, j] for the kc x nr panel at B (columns beyond nr are zero). */
FR_NOVEC static void FN(fr_pack_b)(int nr, int kc, const FR_T *B, ptrdiff_t rsb, ptrdiff_t csb,
                                   FR_T *restrict Bp) {
    if (csb == 1) {  /* plain row copies: memcpy is vectorized even though this function isn't */
        for (int k = 0; k < kc; k++) memcpy(Bp + k * FR_NR, B + k * rsb, nr * sizeof(FR_T));
    } else {  /* B = W.T in the forward pass: a transpose, W's rows are read contiguously */
        int j0 = 0;
#ifdef FR_HAVE_TRANSPOSE
        if (rsb == 1) {
            const int kb = kc / FR_TB * FR_TB;
            for (; j0 + FR_TB <= nr; j0 += FR_TB) {
                for (int k0 = 0; k0 < kb; k0 += FR_TB)
                    FR_CAT(fr_transpose, FR_SUFFIX)(B + j0 * csb + k0, csb,
                                                    Bp + k0 * FR_NR + j0, FR_NR);
                for (int j = j0; j < j0 + FR_TB; j++)
                    for (int k = kb; k < kc; k++) Bp[k * FR_NR + j] = B[j * csb + k];
            }
        }
#endif
        for (int j = j0; j < nr; j++) {
            const FR_T *col = B + j * csb;
            for (int k = 0; k < kc; k++) Bp[k * FR_NR + j] = col[k * rsb];
        }
    }
    if (nr < FR_NR)
        for (int k = 0; k < kc; k++)
            for (int j = nr; j < FR_NR; j++) Bp[k * FR_NR + j] = 0;
}

/* C tile (MR x NR at c, row stride ldc) (+)= Ap sliver @ Bp panel; then, if epilogue:
 * C = act(C + bias[0:NR]) (bias may be NULL). load_c: add to what C holds. */
static inline void FN(fr_ukernel)(int kc, const FR_T *restrict a, const FR_T *restrict b,
                                  FR_T *restrict c, ptrdiff_t ldc, int load_c, int epilogue,
                                  const FR_T *bias, int act, FR_T slope) {
#ifndef FR_SCALAR_KERNEL
    FR_V c0[FR_MR], c1[FR_MR];
#pragma GCC unroll 16
    for (int i = 0; i < FR_MR; i++) { c0[i] = FR_VZERO(); c1[i] = FR_VZERO(); }
    for (int k = 0; k < kc; k++) {
        FR_V b0 = FR_VLOAD(b), b1 = FR_VLOAD(b + FR_W);
#pragma GCC unroll 16
        for (int i = 0; i < FR_MR; i++) {
            FR_V ai = FR_VBCAST(a + i);
            c0[i] = FR_VFMA(ai, b0, c0[i]);
            c1[i] = FR_VFMA(ai, b1, c1[i]);
        }
        a += FR_MR;
        b += FR_NR;
    }
    if (load_c) {
#pragma GCC unroll 16
        for (int i = 0; i < FR_MR; i++) {
            c0[i] = FR_VADD(c0[i], FR_VLOAD(c + i * ldc));
            c1[i] = FR_VADD(c1[i], FR_VLOAD(c + i * ldc + FR_W));
        }
    }
    if (epilogue && bias) {
        FR_V bb0 = FR_VLOAD(bias), bb1 = FR_VLOAD(bias + FR_W);
#pragma GCC unroll 16
        for (int i = 0; i < FR_MR; i++) { c0[i] = FR_VADD(c0[i], bb0); c1[i] = FR_VADD(c1[i], bb1); }
    }
    if (epilogue && act == FR_ACT_RELU) {
        FR_V z = FR_VZERO();
#pragma GCC unroll 16
        for (int i = 0; i < FR_MR; i++) { c0[i] = FR_VMAX(z, c0[i]); c1[i] = FR_VMAX(z, c1[i]);  /* max(0, NaN) = NaN, as torch.relu */ }
    } else if (epilogue && act == FR_ACT_LEAKY_RELU) {
        FR_V s = FR_VSET1(slope);
#pragma GCC unroll 16
        for (int i = 0; i < FR_MR; i++) { c0[i] = FR_VLEAKY(c0[i], s); c1[i] = FR_VLEAKY(c1[i], s); }
    }
#pragma GCC unroll 16
    for (int i = 0; i < FR_MR; i++) {
        FR_VSTORE(c + i * ldc, c0[i]);
        FR_VSTORE(c + i * ldc + FR_W, c1[i]);
    }
#else
    FR_T acc[FR_MR][FR_NR];
    for (int i = 0; i < FR_MR; i++)
        for (int j = 0; j < FR_NR; j++) acc[i][j] = 0;
    for (int k = 0; k < kc; k++) {
        for (int i = 0; i < FR_MR; i++)
            for (int j = 0; j < FR_NR; j++) acc[i][j] += a[i] * b[j];
        a += FR_MR;
        b += FR_NR;
    }
    for (int i = 0; i < FR_MR; i++)
        for (int j = 0; j < FR_NR; j++) {
            FR_T v = acc[i][j] + (load_c ? c[i * ldc + j] : (FR_T)0);
            if (epilogue && bias) v += bias[j];
            if (epilogue && (act == FR_ACT_RELU || act == FR_ACT_LEAKY_RELU))
                v = FN(fr_act)(v, act, slope);
            c[i * ldc + j] = v;
        }
#endif
    /* sigmoid / tanh have no vector form here: one scalar pass over the tile, still in L1. */
    if (epilogue && (act == FR_ACT_SIGMOID || act == FR_ACT_TANH)) {
        for (int i = 0; i < FR_MR; i++)
            for (int j = 0; j < FR_NR; j++) c[i * ldc + j] = FN(fr_act)(c[i * ldc + j], act, slope);
    }
}

/* Edge tile (mr < MR or nr < NR): full kernel into scratch, then copy the valid part. */
static void FN(fr_edge_tile)(int mr, int nr, int kc, const FR_T *a, const FR_T *b,
                             FR_T *restrict c, ptrdiff_t ldc, int load_c, int epilogue,
                             const FR_T *bias, int act, FR_T slope, FR_T *restrict tile) {
    FN(fr_ukernel)(kc, a, b, tile, FR_NR, 0, 0, NULL, FR_ACT_IDENTITY, 0);
    for (int i = 0; i < mr; i++)
        for (int j = 0; j < nr; j++) {
            FR_T v = tile[i * FR_NR + j] + (load_c ? c[i * ldc + j] : (FR_T)0);
            if (epilogue) {
                if (bias) v += bias[j];
                v = FN(fr_act)(v, act, slope);
            }
            c[i * ldc + j] = v;
        }
}

/* Few output rows (m <= FR_SMALL_M): GEMV-like loops straight from the inputs. Parallel over
 * column chunks when the work is worth a fork. Returns 0 if the layout has no fast form here. */
static int FN(fr_gemm_small)(int m, int n, int k, const FR_T *A, ptrdiff_t rsa, ptrdiff_t csa,
                             const FR_T *B, ptrdiff_t rsb, ptrdiff_t csb, FR_T *C, ptrdiff_t ldc,
                             int accumulate, const FR_T *bias, int act, FR_T slope, FR_T *rowsum,
                             int nthreads) {
    if (!(rsb == 1 || csb == 1)) return 0;
    /* A rows made contiguous (m x k, tiny) so both forms read them with unit stride. */
    FR_T *Arows = (FR_T *)fr_get_scratch((size_t)m * (size_t)k * sizeof(FR_T) + FR_ALIGN);
    if (!Arows) return 0;
    for (int i = 0; i < m; i++)
        for (int p = 0; p < k; p++) Arows[(ptrdiff_t)i * k + p] = A[i * rsa + p * csa];
    if (rowsum) {
        for (int i = 0; i < m; i++) {
            FR_T s = 0;
            for (int p = 0; p < k; p++) s += Arows[(ptrdiff_t)i * k + p];
            rowsum[i] = accumulate ? rowsum[i] + s : s;
        }
    }
    const int chunk = 256;
    const int nchunks = (n + chunk - 1) / chunk;
    const double flops = 2.0 * m * (double)n * k;
    const int nt = flops >= FR_PAR_MIN_FLOPS_GEMV * m ? FR_MIN(nthreads, nchunks) : 1;
    (void)nt;
#pragma omp parallel for schedule(static) num_threads(nt) if (nt > 1)
    for (int ch = 0; ch < nchunks; ch++) {
        const int j0 = ch * chunk, j1 = FR_MIN(n, j0 + chunk);
        if (rsb == 1) {
            /* B[k, j] = B[j * csb + k]: column j is contiguous in k -> dot products. */
            for (int i = 0; i < m; i++) {
                const FR_T *x = Arows + (ptrdiff_t)i * k;
                FR_T *crow = C + i * ldc;
                int j = j0;
                for (; j + 4 <= j1; j += 4) {
                    const FR_T *w0 = B + j * csb, *w1 = w0 + csb, *w2 = w1 + csb, *w3 = w2 + csb;
                    FR_T s0 = 0, s1 = 0, s2 = 0, s3 = 0;
#pragma omp simd reduction(+ : s0, s1, s2, s3)
                    for (int p = 0; p < k; p++) {
                        s0 += x[p] * w0[p];
                        s1 += x[p] * w1[p];
                        s2 += x[p] * w2[p];
                        s3 += x[p] * w3[p];
                    }
                    if (accumulate) { s0 += crow[j]; s1 += crow[j + 1]; s2 += crow[j + 2]; s3 += crow[j + 3]; }
                    crow[j] = s0; crow[j + 1] = s1; crow[j + 2] = s2; crow[j + 3] = s3;
                }
                for (; j < j1; j++) {
                    const FR_T *w0 = B + j * csb;
                    FR_T s0 = 0;
#pragma omp simd reduction(+ : s0)
                    for (int p = 0; p < k; p++) s0 += x[p] * w0[p];
                    crow[j] = accumulate ? crow[j] + s0 : s0;
                }
            }
        } else {
            /* B rows contiguous in j -> axpy form. 4 vectors of C are held in registers over
             * the whole depth (an axpy into memory would be bound by the store -> reload of C
             * on every row of B); the columns left over go through L1. */
            for (int i = 0; i < m; i++) {
                const FR_T *x = Arows + (ptrdiff_t)i * k;
                FR_T *restrict crow = C + i * ldc;
                int j = j0;
#ifndef FR_SCALAR_KERNEL
                for (; j + 4 * FR_W <= j1; j += 4 * FR_W) {
                    FR_V a0 = FR_VZERO(), a1 = FR_VZERO(), a2 = FR_VZERO(), a3 = FR_VZERO();
                    if (accumulate) {
                        a0 = FR_VLOAD(crow + j);
                        a1 = FR_VLOAD(crow + j + FR_W);
                        a2 = FR_VLOAD(crow + j + 2 * FR_W);
                        a3 = FR_VLOAD(crow + j + 3 * FR_W);
                    }
                    for (int p = 0; p < k; p++) {
                        const FR_V xp = FR_VSET1(x[p]);
                        const FR_T *brow = B + p * rsb + j;
                        a0 = FR_VFMA(xp, FR_VLOAD(brow), a0);
                        a1 = FR_VFMA(xp, FR_VLOAD(brow + FR_W), a1);
                        a2 = FR_VFMA(xp, FR_VLOAD(brow + 2 * FR_W), a2);
                        a3 = FR_VFMA(xp, FR_VLOAD(brow + 3 * FR_W), a3);
                    }
                    FR_VSTORE(crow + j, a0);
                    FR_VSTORE(crow + j + FR_W, a1);
                    FR_VSTORE(crow + j + 2 * FR_W, a2);
                    FR_VSTORE(crow + j + 3 * FR_W, a3);
                }
#endif
                if (j < j1) {
                    if (!accumulate)
                        for (int jj = j; jj < j1; jj++) crow[jj] = 0;
                    for (int p = 0; p < k; p++) {
                        const FR_T xp = x[p];
                        const FR_T *restrict brow = B + p * rsb;
#pragma omp simd
                        for (int jj = j; jj < j1; jj++) crow[jj] += xp * brow[jj];
                    }
                }
            }
        }
        if (bias || act != FR_ACT_IDENTITY) {
            for (int i = 0; i < m; i++) {
                FR_T *crow = C + i * ldc;
                for (int j = j0; j < j1; j++)
                    crow[j] = FN(fr_act)(crow[j] + (bias ? bias[j] : (FR_T)0), act, slope);
            }
        }
    }
    return 1;
}

/* C[m, n] (+)= A @ B, fused epilogue act(C + bias[n]) and rowsum[m] (+)= A.sum(1).
 * Returns 0 on success, -1 if the scratch could not be allocated. */
static int FN(fr_gemm)(int m, int n, int k, const FR_T *A, ptrdiff_t rsa, ptrdiff_t csa,
                       const FR_T *B, ptrdiff_t rsb, ptrdiff_t csb, FR_T *C, ptrdiff_t ldc,
                       int accumulate, const FR_T *bias, int act, FR_T slope, FR_T *rowsum,
                       int nthreads) {
    if (m <= 0 || n <= 0) return 0;
    if (k <= 0) {  /* empty sum: C = act(beta * C + bias) */
        for (int i = 0; i < m; i++) {
            if (rowsum && !accumulate) rowsum[i] = 0;
            for (int j = 0; j < n; j++) {
                FR_T v = accumulate ? C[i * ldc + j] : (FR_T)0;
                C[i * ldc + j] = FN(fr_act)(v + (bias ? bias[j] : (FR_T)0), act, slope);
            }
        }
        return 0;
    }
    if (nthreads < 1) nthreads = 1;
    if (m <= FR_SMALL_M &&
        FN(fr_gemm_small)(m, n, k, A, rsa, csa, B, rsb, csb, C, ldc, accumulate, bias, act,
                          slope, rowsum, nthreads))
        return 0;

    const double flops = 2.0 * m * (double)n * k;
    const int nt = flops >= FR_PAR_MIN_FLOPS ? nthreads : 1;
    /* Balanced depth blocks: 784 = 4 x 196 rather than 3 x 256 + 16. */
    const int kblocks = (k + FR_KC - 1) / FR_KC;
    const int kcb = (k + kblocks - 1) / kblocks;
    /* Tasks are (row block) x (column block) tiles of C, each computed start to finish by one
     * thread with its own packed B: no barrier inside the call, so a thread that the OS
     * preempts (a shared 2-core machine) delays only its own tile, never a team barrier.
     * Repacking B per row block costs k*nc copies per 2*mc*k*nc flops: < 1% for mc >= 64. */
    int mb = (m + FR_MC - 1) / FR_MC, nb = (n + FR_NC - 1) / FR_NC;
    const int want = nt > 1 ? 3 * nt : 1;
    while (mb * nb < want) {
        const int mcur = (m + mb - 1) / mb, ncur = (n + nb - 1) / nb;
        if (mcur >= 2 * FR_MR && mcur >= ncur / 2) mb++;
        else if (ncur >= 2 * FR_NR) nb++;
        else break;
    }
    const int mcb = ((m + mb - 1) / mb + FR_MR - 1) / FR_MR * FR_MR;
    const int ncb = ((n + nb - 1) / nb + FR_NR - 1) / FR_NR * FR_NR;
    mb = (m + mcb - 1) / mcb;
    nb = (n + ncb - 1) / ncb;
    const int ntasks = mb * nb;
    const int nteam = FR_MIN(nt, ntasks);
    const size_t per_thread = (size_t)ncb * kcb + (size_t)FR_MR * kcb + (size_t)FR_MR * FR_NR;
    FR_T *scratch = (FR_T *)fr_get_scratch(per_thread * (size_t)nteam * sizeof(FR_T));
    if (!scratch) return -1;
    (void)nteam;

#pragma omp parallel for schedule(dynamic, 1) num_threads(nteam) if (nteam > 1)
    for (int t = 0; t < ntasks; t++) {
        FR_T *Bp = scratch + per_thread * (size_t)omp_get_thread_num();
        FR_T *Ap = Bp + (size_t)ncb * kcb;
        FR_T *tile = Ap + (size_t)FR_MR * kcb;
        const int ib = t / nb, jb = t % nb;
        const int i0 = ib * mcb, i1 = FR_MIN(m, i0 + mcb);
        const int j0 = jb * ncb, nc = FR_MIN(ncb, n - j0);
        const int npanels = (nc + FR_NR - 1) / FR_NR;
        for (int pc = 0; pc < k; pc += kcb) {
            const int kc = FR_MIN(kcb, k - pc);
            const int first = pc == 0, last = pc + kc >= k;
            const int load_c = accumulate || !first;
            for (int p = 0; p < npanels; p++) {
                const int jp = j0 + p * FR_NR;
                FN(fr_pack_b)(FR_MIN(FR_NR, n - jp), kc, B + pc * rsb + jp * csb, rsb, csb,
                              Bp + (size_t)p * FR_NR * kc);
            }
            for (int ir = i0; ir < i1; ir += FR_MR) {
                const int mr = FR_MIN(FR_MR, i1 - ir);
                FN(fr_pack_a)(mr, kc, A + ir * rsa + pc * csa, rsa, csa, Ap);
                if (rowsum && jb == 0) {
                    /* dbias: each row sliver is packed exactly once here per depth block. */
                    for (int i = 0; i < mr; i++) {
                        FR_T s = 0;
                        for (int p = 0; p < kc; p++) s += Ap[p * FR_MR + i];
                        rowsum[ir + i] = load_c ? rowsum[ir + i] + s : s;
                    }
                }
                for (int p = 0; p < npanels; p++) {
                    const int jp = j0 + p * FR_NR, nr = FR_MIN(FR_NR, n - jp);
                    FR_T *c = C + ir * ldc + jp;
                    const FR_T *bp = Bp + (size_t)p * FR_NR * kc;
                    const FR_T *bb = bias ? bias + jp : NULL;
                    if (mr == FR_MR && nr == FR_NR)
                        FN(fr_ukernel)(kc, Ap, bp, c, ldc, load_c, last, bb, act, slope);
                    else
                        FN(fr_edge_tile)(mr, nr, kc, Ap, bp, c, ldc, load_c, last, bb, act,
                                         slope, tile);
                }
            }
        }
    }
    return 0;
}

#undef FR_NR
#undef FN
#undef FR_PAR_MIN_FLOPS
#undef FR_PAR_MIN_FLOPS_GEMV
#undef FR_SMALL_M
