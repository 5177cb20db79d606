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

/* The input-gradient epilogue: C = act_grad(C, Y) on an mr x nr block, C the gradient w.r.t.
 * an activation's output, Y that output (its own row stride), the result the gradient w.r.t.
 * the activation's input. The same float operations on the same values as the separate passes,
 * so the fused product gives their bits: elementwise/ops.h fr_act_backward (ReLU, LeakyReLU,
 * Sigmoid, Tanh; p = slope) and dropout/relu_dropout.h fr_relu_dropout_backward
 * (FR_GRAD_RELU_DROPOUT, p = scale, Y = the dropout's output). `Y > 0` is false for NaN and
 * -0.0, which then give +0.0 (ReLU, ReLU -> Dropout) or C * slope (LeakyReLU), as there.
 * Scalar loops, one per code, which the compiler vectorizes like the separate passes' (all but
 * LeakyReLU's). */
static void FN(fr_act_grad)(int mr, int nr, FR_T *restrict c, ptrdiff_t ldc,
                            const FR_T *restrict y, ptrdiff_t ldy, int code, FR_T p) {
    for (int i = 0; i < mr; i++) {
        FR_T *restrict cr = c + i * ldc;
        const FR_T *restrict yr = y + i * ldy;
        switch (code) {
        case FR_ACT_RELU:
            for (int j = 0; j < nr; j++) cr[j] = yr[j] > 0 ? cr[j] : (FR_T)0;
            break;
        case FR_ACT_LEAKY_RELU:
            /* (vectorized only with -fno-trapping-math, which setup.py gives this extension:
             * otherwise gcc does not speculate the product past the compare) */
            for (int j = 0; j < nr; j++) cr[j] = yr[j] > 0 ? cr[j] : cr[j] * p;
            break;
        case FR_ACT_SIGMOID:
            for (int j = 0; j < nr; j++) { FR_T v = yr[j]; cr[j] = cr[j] * v * ((FR_T)1 - v); }
            break;
        case FR_ACT_TANH:
            for (int j = 0; j < nr; j++) { FR_T v = yr[j]; cr[j] = cr[j] * ((FR_T)1 - v * v); }
            break;
        case FR_GRAD_RELU_DROPOUT:
            for (int j = 0; j < nr; j++) {
                FR_T v = cr[j] * p;
                FR_U u;
                memcpy(&u, &v, sizeof u);
                u &= (FR_U)0 - (FR_U)(yr[j] > 0);
                memcpy(&cr[j], &u, sizeof u);
            }
            break;
        default:
            break;
        }
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

/* The whole mc x kc row block of a transposed A (rsa == 1: A = dy.T in the weight gradient,
 * A[i, k] = dy[k, i] at A[i + k * csa]) packed at once, sliver s (rows 6s..) at Ap + s * MR * kc
 * in fr_pack_a's layout (rows past mc zero). Reads dy's rows contiguously; packing sliver by
 * sliver read kc lines at a power-of-two stride (the row of dy) per sliver, lines that alias in
 * L1/L2 and were fetched again for each of the 2-3 slivers that share them: ~7% of the GEMM.
 * rs: NULL, or where the block's row sums go (the fused dbias), summed from the same reads. */
static void FN(fr_pack_a_block)(int mc, int kc, const FR_T *A, ptrdiff_t csa,
                                FR_T *restrict Ap, FR_T *restrict rs) {
    const int nsl = (mc + FR_MR - 1) / FR_MR, full = mc / FR_MR, mr = mc - full * FR_MR;
    const size_t ss = (size_t)FR_MR * kc;
    if (rs) {  /* rs[i] = sum_k A[i, k] (dbias), k ascending: a vector add of each row of dy */
        for (int i = 0; i < mc; i++) rs[i] = 0;
        for (int k = 0; k < kc; k++) {
            const FR_T *row = A + k * csa;
            for (int i = 0; i < mc; i++) rs[i] += row[i];
        }
    }
    /* 8 rows of dy at a time, sliver by sliver: each sliver gets 8 * MR contiguous elements
     * (one pass over the 43 slivers' pages per row cost a TLB miss per sliver and row). */
    for (int k0 = 0; k0 < kc; k0 += 8) {
        const int kn = FR_MIN(8, kc - k0);
        const FR_T *src = A + k0 * csa;
        FR_T *dst = Ap + (size_t)k0 * FR_MR;
        for (int s = 0; s < full; s++, src += FR_MR, dst += ss)
            for (int k = 0; k < kn; k++)
                for (int i = 0; i < FR_MR; i++) dst[k * FR_MR + i] = src[k * csa + i];
        if (full < nsl)
            for (int k = 0; k < kn; k++)
                for (int i = 0; i < FR_MR; i++) dst[k * FR_MR + i] = i < mr ? src[k * csa + i] : (FR_T)0;
    }
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

/* C tile (MR x NR at c, row stride ldc) (+)= A sliver @ Bp panel; then, if epilogue:
 * C = act(C + bias[0:NR]) (bias may be NULL). load_c: add to what C holds.
 * lda == 0: a is a packed sliver (a[k * MR + i]); lda > 0: a is A itself, MR whole rows read in
 * place (a[i * lda + k], unit stride in k) -- the same products summed in the same order, so
 * the two forms give the same bits; reading A in place saves packing it once per column block,
 * which is most of the overhead at small m (the serving batches, the N-split across threads). */
static inline void FN(fr_ukernel)(int kc, const FR_T *restrict a, ptrdiff_t lda,
                                  const FR_T *restrict b, FR_T *restrict c, ptrdiff_t ldc,
                                  int load_c, int epilogue, const FR_T *bias, int act,
                                  FR_T slope) {
#ifndef FR_SCALAR_KERNEL
    FR_V c0[FR_MR], c1[FR_MR];
#pragma GCC unroll 16
    for (int i = 0; i < FR_MR; i++) { c0[i] = FR_VZERO(); c1[i] = FR_VZERO(); }
    if (lda == 0) {
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
    } else {
        const FR_T *ar[FR_MR];
#pragma GCC unroll 16
        for (int i = 0; i < FR_MR; i++) ar[i] = a + i * lda;
        for (int k = 0; k < kc; k++) {
            FR_V b0 = FR_VLOAD(b), b1 = FR_VLOAD(b + FR_W);
#pragma GCC unroll 16
            for (int i = 0; i < FR_MR; i++) {
                FR_V ai = FR_VBCAST(ar[i] + k);
                c0[i] = FR_VFMA(ai, b0, c0[i]);
                c1[i] = FR_VFMA(ai, b1, c1[i]);
            }
            b += FR_NR;
        }
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
        for (int i = 0; i < FR_MR; i++) {
            const FR_T ai = lda ? a[i * lda + k] : a[k * FR_MR + i];
            for (int j = 0; j < FR_NR; j++) acc[i][j] += ai * b[j];
        }
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
    /* sigmoid / tanh: one pass over the tile, still in L1, with ops.h's exp / tanh (one loop per
     * activation, so that the compiler vectorizes it; the separate layers' expressions) */
    if (epilogue && act == FR_ACT_SIGMOID) {
        for (int i = 0; i < FR_MR; i++) {
            FR_T *restrict cr = c + i * ldc;
            for (int j = 0; j < FR_NR; j++) cr[j] = (FR_T)1 / ((FR_T)1 + FR_EXP(-cr[j]));
        }
    } else if (epilogue && act == FR_ACT_TANH) {
        for (int i = 0; i < FR_MR; i++) {
            FR_T *restrict cr = c + i * ldc;
            for (int j = 0; j < FR_NR; j++) cr[j] = FR_TANH(cr[j]);
        }
    }
}

/* Edge tile (mr < MR or nr < NR): full kernel into scratch, then copy the valid part. */
static void FN(fr_edge_tile)(int mr, int nr, int kc, const FR_T *a, ptrdiff_t lda,
                             const FR_T *b, FR_T *restrict c, ptrdiff_t ldc, int load_c,
                             int epilogue, const FR_T *bias, int act, FR_T slope,
                             FR_T *restrict tile) {
    FN(fr_ukernel)(kc, a, lda, b, tile, FR_NR, 0, 0, NULL, FR_ACT_IDENTITY, 0);
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
                             const FR_T *Y, ptrdiff_t ldy, int gcode, FR_T gparam,
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
        if (Y) FN(fr_act_grad)(m, j1 - j0, C + j0, ldc, Y + j0, ldy, gcode, gparam);
    }
    return 1;
}

/* Depth block of a k-deep product: balanced (784 = 4 x 196 rather than 3 x 256 + 16). The
 * pre-packed weights (fr_pack_weight) use the same blocks as fr_gemm, so it is one function. */
static inline int FN(fr_kcb)(int k) {
    const int kblocks = (k + FR_KC - 1) / FR_KC;
    return (k + kblocks - 1) / kblocks;
}

/* Elements of the pre-packed form of an n x k weight (n output rows, zero-padded to NR). */
static size_t FN(fr_packed_size)(int n, int k) {
    return (size_t)((n + FR_NR - 1) / FR_NR) * FR_NR * (size_t)(k > 0 ? k : 0);
}

/* Pre-pack W (n x k, row-major: torch's Linear layout) for out = x @ W.T, once, into the panels
 * fr_gemm would pack from B = W.T on every call: depth block pc (kc deep) holds the NR-wide
 * panels p = 0 .. npan-1 one after another, panel p at Bp + pc * npan * NR + p * NR * kc, with
 * Bp[k * NR + j] = W[p * NR + j, pc + k] (columns past n are zero). */
static void FN(fr_pack_weight)(int n, int k, const FR_T *W, FR_T *Bp) {
    if (n <= 0 || k <= 0) return;
    const int kcb = FN(fr_kcb)(k), npan = (n + FR_NR - 1) / FR_NR;
    for (int pc = 0; pc < k; pc += kcb) {
        const int kc = FR_MIN(kcb, k - pc);
        for (int p = 0; p < npan; p++) {
            const int jp = p * FR_NR;
            FN(fr_pack_b)(FR_MIN(FR_NR, n - jp), kc, W + (ptrdiff_t)jp * k + pc, 1, k,
                          Bp + (size_t)pc * npan * FR_NR + (size_t)p * FR_NR * kc);
        }
    }
}

/* Few rows (m <= FR_SMALL_M) against pre-packed weights, output panels [p0, p1) only:
 * C[i, j] = act(sum_k A[i, k] Bp(k, j) + bias[j]). Each panel is one contiguous stream per depth
 * block; its NR outputs sit in registers over the whole depth. Four panels run side by side
 * (eight independent FMA chains hide the FMA latency; a GEMV is bound by reading the weights).
 * Every output is summed in exactly the order of the blocked path's micro-kernel (k ascending
 * within a depth block, block partials added in turn, then the bias), so a sample's output does
 * not depend on the batch it came in. */
static void FN(fr_gemv_packed)(int m, int n, int k, const FR_T *A, ptrdiff_t lda,
                               const FR_T *Bp, FR_T *C, ptrdiff_t ldc, const FR_T *bias,
                               int act, FR_T slope, int p0, int p1) {
    const int kcb = FN(fr_kcb)(k), npan = (n + FR_NR - 1) / FR_NR;
    FR_T acc[4][FR_NR] __attribute__((aligned(FR_ALIGN)));
    for (int pg = p0; pg < p1; pg += 4) {
        const int np = FR_MIN(4, p1 - pg);
        for (int i = 0; i < m; i++) {
            const FR_T *x = A + i * lda;
#ifndef FR_SCALAR_KERNEL
            FR_V t[4][2];
            for (int pc = 0; pc < k; pc += kcb) {
                const int kc = FR_MIN(kcb, k - pc);
                const FR_T *b = Bp + (size_t)pc * npan * FR_NR + (size_t)pg * FR_NR * kc;
                const size_t ps = (size_t)FR_NR * kc;      /* panel to panel */
                const FR_T *xp = x + pc;
                FR_V a0 = FR_VZERO(), a1 = FR_VZERO(), b0 = FR_VZERO(), b1 = FR_VZERO();
                FR_V c0 = FR_VZERO(), c1 = FR_VZERO(), d0 = FR_VZERO(), d1 = FR_VZERO();
                if (np == 4) {
                    for (int q = 0; q < kc; q++, b += FR_NR) {
                        const FR_V xv = FR_VSET1(xp[q]);
                        a0 = FR_VFMA(xv, FR_VLOAD(b), a0);
                        a1 = FR_VFMA(xv, FR_VLOAD(b + FR_W), a1);
                        b0 = FR_VFMA(xv, FR_VLOAD(b + ps), b0);
                        b1 = FR_VFMA(xv, FR_VLOAD(b + ps + FR_W), b1);
                        c0 = FR_VFMA(xv, FR_VLOAD(b + 2 * ps), c0);
                        c1 = FR_VFMA(xv, FR_VLOAD(b + 2 * ps + FR_W), c1);
                        d0 = FR_VFMA(xv, FR_VLOAD(b + 3 * ps), d0);
                        d1 = FR_VFMA(xv, FR_VLOAD(b + 3 * ps + FR_W), d1);
                    }
                } else {
                    for (int q = 0; q < kc; q++, b += FR_NR) {
                        const FR_V xv = FR_VSET1(xp[q]);
                        a0 = FR_VFMA(xv, FR_VLOAD(b), a0);
                        a1 = FR_VFMA(xv, FR_VLOAD(b + FR_W), a1);
                        if (np > 1) {
                            b0 = FR_VFMA(xv, FR_VLOAD(b + ps), b0);
                            b1 = FR_VFMA(xv, FR_VLOAD(b + ps + FR_W), b1);
                        }
                        if (np > 2) {
                            c0 = FR_VFMA(xv, FR_VLOAD(b + 2 * ps), c0);
                            c1 = FR_VFMA(xv, FR_VLOAD(b + 2 * ps + FR_W), c1);
                        }
                    }
                }
                if (pc == 0) {
                    t[0][0] = a0; t[0][1] = a1; t[1][0] = b0; t[1][1] = b1;
                    t[2][0] = c0; t[2][1] = c1; t[3][0] = d0; t[3][1] = d1;
                } else {
                    t[0][0] = FR_VADD(a0, t[0][0]); t[0][1] = FR_VADD(a1, t[0][1]);
                    t[1][0] = FR_VADD(b0, t[1][0]); t[1][1] = FR_VADD(b1, t[1][1]);
                    t[2][0] = FR_VADD(c0, t[2][0]); t[2][1] = FR_VADD(c1, t[2][1]);
                    t[3][0] = FR_VADD(d0, t[3][0]); t[3][1] = FR_VADD(d1, t[3][1]);
                }
            }
            for (int p = 0; p < np; p++) {
                FR_VSTORE(acc[p], t[p][0]);
                FR_VSTORE(acc[p] + FR_W, t[p][1]);
            }
#else
            for (int p = 0; p < np; p++)
                for (int j = 0; j < FR_NR; j++) acc[p][j] = 0;
            for (int pc = 0; pc < k; pc += kcb) {
                const int kc = FR_MIN(kcb, k - pc);
                for (int p = 0; p < np; p++) {
                    const FR_T *b = Bp + (size_t)pc * npan * FR_NR + (size_t)(pg + p) * FR_NR * kc;
                    FR_T part[FR_NR];
                    for (int j = 0; j < FR_NR; j++) part[j] = 0;
                    for (int q = 0; q < kc; q++, b += FR_NR)
                        for (int j = 0; j < FR_NR; j++) part[j] += x[pc + q] * b[j];
                    for (int j = 0; j < FR_NR; j++) acc[p][j] = pc ? part[j] + acc[p][j] : part[j];
                }
            }
#endif
            for (int p = 0; p < np; p++) {
                const int jp = (pg + p) * FR_NR, nr = FR_MIN(FR_NR, n - jp);
                FR_T *crow = C + i * ldc + jp;
                for (int j = 0; j < nr; j++)
                    crow[j] = FN(fr_act)(acc[p][j] + (bias ? bias[jp + j] : (FR_T)0), act, slope);
            }
        }
    }
}

/* C[m, n] (+)= A @ B, fused epilogue act(C + bias[n]) and rowsum[m] (+)= A.sum(1), then, with
 * Y != NULL, the input-gradient epilogue C = act_grad(C, Y) (fr_act_grad: gcode, gparam; Y is
 * m x n with row stride ldy, must not overlap C), applied once per tile in its last depth block.
 * Bpk: B already packed by fr_pack_weight (B = W.T, rsb = 1, csb = k, never accumulated), or
 * NULL to pack per call; with Bpk, B is not read (may be NULL) and Y must be NULL.
 * Returns 0 on success, -1 if the scratch could not be allocated. */
static int FN(fr_gemm_ep)(int m, int n, int k, const FR_T *A, ptrdiff_t rsa, ptrdiff_t csa,
                          const FR_T *B, ptrdiff_t rsb, ptrdiff_t csb, const FR_T *Bpk, FR_T *C,
                          ptrdiff_t ldc, int accumulate, const FR_T *bias, int act, FR_T slope,
                          FR_T *rowsum, const FR_T *Y, ptrdiff_t ldy, int gcode, FR_T gparam,
                          int nthreads) {
    if (m <= 0 || n <= 0) return 0;
    if (Y && Bpk) return -2;
    if (k <= 0) {  /* empty sum: C = act(beta * C + bias) */
        for (int i = 0; i < m; i++) {
            if (rowsum && !accumulate) rowsum[i] = 0;
            for (int j = 0; j < n; j++) {
                FR_T v = accumulate ? C[i * ldc + j] : (FR_T)0;
                C[i * ldc + j] = FN(fr_act)(v + (bias ? bias[j] : (FR_T)0), act, slope);
            }
        }
        if (Y) FN(fr_act_grad)(m, n, C, ldc, Y, ldy, gcode, gparam);
        return 0;
    }
    if (nthreads < 1) nthreads = 1;
    if (Bpk && m <= FR_SMALL_M) {
        const int npan = (n + FR_NR - 1) / FR_NR;
        const int nt = 2.0 * m * (double)n * k >= FR_PAR_MIN_FLOPS_GEMV * m
                           ? FR_MIN(nthreads, npan) : 1;
        if (nt == 1) {
            FN(fr_gemv_packed)(m, n, k, A, rsa, Bpk, C, ldc, bias, act, slope, 0, npan);
            return 0;
        }
#pragma omp parallel for schedule(static) num_threads(nt)
        for (int t = 0; t < nt; t++)
            FN(fr_gemv_packed)(m, n, k, A, rsa, Bpk, C, ldc, bias, act, slope,
                               (int)((long)npan * t / nt), (int)((long)npan * (t + 1) / nt));
        return 0;
    }
    if (!Bpk && m <= FR_SMALL_M &&
        FN(fr_gemm_small)(m, n, k, A, rsa, csa, B, rsb, csb, C, ldc, accumulate, bias, act,
                          slope, rowsum, Y, ldy, gcode, gparam, nthreads))
        return 0;

    const double flops = 2.0 * m * (double)n * k;
    const int nt = flops >= FR_PAR_MIN_FLOPS ? nthreads : 1;
    const int kcb = FN(fr_kcb)(k);
    const int npan_all = (n + FR_NR - 1) / FR_NR;
    /* Tasks are (row block) x (column block) tiles of C, each computed start to finish by one
     * thread with its own packed B: no barrier inside the call, so a thread that the OS
     * preempts (a shared 2-core machine) delays only its own tile, never a team barrier.
     * Two tasks a thread: enough for the dynamic schedule to even out a preempted thread, and
     * fewer column blocks than three a thread gave -- each column block reads its slivers of A
     * again, and a sliver read in place is amortized over the block's panels only (quiet
     * 2 cores, 256 x 784 x 512 forward 172 -> 178 GF/s, dx 256 x 256 x 512 176 -> 187).
     * A row-major A (csa == 1: the forward and dx products) is read in place, so splitting the
     * columns costs no packing, while splitting the rows re-packs B per row block (or, with B
     * pre-packed, streams all of it through every thread's cache): for those, the tiles split
     * the columns (the output features / weight panels) first -- at batch 64 that is what
     * gives each thread equal work (64 rows are only 11 slivers). Otherwise (A packed per
     * tile: the weight gradient) the longer side is split, as each split re-packs the other
     * operand. Repacking B per row block costs k*nc copies per 2*mc*k*nc flops: < 1% for
     * mc >= 64. */
    const int a_direct = csa == 1 && !rowsum;
    int mb = (m + FR_MC - 1) / FR_MC, nb = (n + FR_NC - 1) / FR_NC;
    const int want = nt > 1 ? 2 * nt : 1;
    while (mb * nb < want) {
        const int mcur = (m + mb - 1) / mb, ncur = (n + nb - 1) / nb;
        if (a_direct && ncur >= 2 * FR_NR) nb++;
        else if (mcur >= 2 * FR_MR && mcur >= ncur / 2) mb++;
        else if (ncur >= 2 * FR_NR) nb++;
        else if (mcur >= 2 * FR_MR) mb++;
        else break;
    }
    /* Whole slivers and panels are dealt out as evenly as they go (32 panels in 6 tasks:
     * 5 or 6 each, not 6,6,6,6,6,2 -- which left one of two threads 18 panels, the other 14). */
    const int nsliv = (m + FR_MR - 1) / FR_MR;
    mb = FR_MIN(mb, nsliv);
    nb = FR_MIN(nb, npan_all);
    const int ntasks = mb * nb;
    const int nteam = FR_MIN(nt, ntasks);
    const int ncb = (npan_all + nb - 1) / nb * FR_NR;   /* the widest task */
    const size_t bsize = Bpk ? 0 : (size_t)ncb * kcb;   /* the per-task packed B, if packing */
    /* A = dy.T (the weight gradient): each task packs its row block whole, per depth block */
    const int ablock = !a_direct && rsa == 1;
    const size_t mcb = (size_t)((nsliv + mb - 1) / mb) * FR_MR;     /* the tallest task */
    const size_t absize = ablock ? mcb * kcb + (rowsum ? mcb : 0) : 0;
    const size_t per_thread = bsize + absize + (size_t)FR_MR * kcb + (size_t)FR_MR * FR_NR;
    FR_T *scratch = (FR_T *)fr_get_scratch(per_thread * (size_t)nteam * sizeof(FR_T));
    if (!scratch) return -1;
    (void)nteam;

#pragma omp parallel for schedule(dynamic, 1) num_threads(nteam) if (nteam > 1)
    for (int t = 0; t < ntasks; t++) {
        FR_T *Bp = scratch + per_thread * (size_t)omp_get_thread_num();
        FR_T *Apb = Bp + bsize;
        FR_T *Ap = Apb + absize;
        FR_T *tile = Ap + (size_t)FR_MR * kcb;
        const int ib = t / nb, jb = t % nb;
        const int i0 = (int)((long)nsliv * ib / mb) * FR_MR;
        const int i1 = FR_MIN(m, (int)((long)nsliv * (ib + 1) / mb) * FR_MR);
        const int j0 = (int)((long)npan_all * jb / nb) * FR_NR;
        const int nc = FR_MIN(n, (int)((long)npan_all * (jb + 1) / nb) * FR_NR) - j0;
        const int npanels = (nc + FR_NR - 1) / FR_NR;
        for (int pc = 0; pc < k; pc += kcb) {
            const int kc = FR_MIN(kcb, k - pc);
            const int first = pc == 0, last = pc + kc >= k;
            const int load_c = accumulate || !first;
            /* this task's panels: packed now, or the slice of the pre-packed weights */
            const FR_T *Bblk = Bpk ? Bpk + (size_t)pc * npan_all * FR_NR + (size_t)(j0 / FR_NR) * FR_NR * kc
                                   : Bp;
            if (!Bpk)
                for (int p = 0; p < npanels; p++) {
                    const int jp = j0 + p * FR_NR;
                    FN(fr_pack_b)(FR_MIN(FR_NR, n - jp), kc, B + pc * rsb + jp * csb, rsb, csb,
                                  Bp + (size_t)p * FR_NR * kc);
                }
            if (ablock) {
                /* the row block's sums (dbias) come with its packing: once, in the jb == 0 task */
                FR_T *rs = rowsum && jb == 0 ? Apb + mcb * kcb : NULL;
                FN(fr_pack_a_block)(i1 - i0, kc, A + i0 + pc * csa, csa, Apb, rs);
                if (rs)
                    for (int i = 0; i < i1 - i0; i++)
                        rowsum[i0 + i] = load_c ? rowsum[i0 + i] + rs[i] : rs[i];
            }
            for (int ir = i0; ir < i1; ir += FR_MR) {
                const int mr = FR_MIN(FR_MR, i1 - ir);
                /* whole slivers of a row-major A are read in place (lda = rsa), others packed */
                const int direct = a_direct && mr == FR_MR;
                const FR_T *As = direct ? A + ir * rsa + pc
                                 : ablock ? Apb + (size_t)(ir - i0) * kc : Ap;
                const ptrdiff_t lda = direct ? rsa : 0;
                if (!direct && !ablock)
                    FN(fr_pack_a)(mr, kc, A + ir * rsa + pc * csa, rsa, csa, Ap);
                if (rowsum && jb == 0 && !ablock) {
                    /* dbias: each row sliver is packed exactly once here per depth block. */
                    /* depth outer, rows inner: MR independent sums (one row's sum in one
                     * order, k ascending, as before) instead of one latency-bound chain at a
                     * time, which cost ~6% of the weight-gradient GEMM. */
                    FR_T s[FR_MR];
                    for (int i = 0; i < FR_MR; i++) s[i] = 0;
                    const FR_T *ap = As;
                    for (int p = 0; p < kc; p++, ap += FR_MR)
                        for (int i = 0; i < FR_MR; i++) s[i] += ap[i];
                    for (int i = 0; i < mr; i++)
                        rowsum[ir + i] = load_c ? rowsum[ir + i] + s[i] : s[i];
                }
                for (int p = 0; p < npanels; p++) {
                    const int jp = j0 + p * FR_NR, nr = FR_MIN(FR_NR, n - jp);
                    FR_T *c = C + ir * ldc + jp;
                    const FR_T *bp = Bblk + (size_t)p * FR_NR * kc;
                    const FR_T *bb = bias ? bias + jp : NULL;
                    if (mr == FR_MR && nr == FR_NR)
                        FN(fr_ukernel)(kc, As, lda, bp, c, ldc, load_c, last, bb, act, slope);
                    else
                        FN(fr_edge_tile)(mr, nr, kc, As, lda, bp, c, ldc, load_c, last, bb,
                                         act, slope, tile);
                }
                /* the input-gradient epilogue on the finished sliver (mr x nc, in L1/L2): Y read
                 * in mr row streams, which the prefetchers follow (tile by tile: 6 x 64 bytes
                 * at a stride, ~2x slower) */
                if (last && Y)
                    FN(fr_act_grad)(mr, nc, C + ir * ldc + j0, ldc, Y + ir * ldy + j0, ldy, gcode,
                                    gparam);
            }
        }
    }
    return 0;
}

/* fr_gemm_ep without the input-gradient epilogue. */
static int FN(fr_gemm)(int m, int n, int k, const FR_T *A, ptrdiff_t rsa, ptrdiff_t csa,
                       const FR_T *B, ptrdiff_t rsb, ptrdiff_t csb, const FR_T *Bpk, FR_T *C,
                       ptrdiff_t ldc, int accumulate, const FR_T *bias, int act, FR_T slope,
                       FR_T *rowsum, int nthreads) {
    return FN(fr_gemm_ep)(m, n, k, A, rsa, csa, B, rsb, csb, Bpk, C, ldc, accumulate, bias, act,
                          slope, rowsum, NULL, 0, FR_ACT_IDENTITY, 0, nthreads);
}

/* 1 if fr_chain(m, nl, dims, ...) may fork at this m (so the thread count matters), else 0. */
static int FN(fr_chain_parallel)(int m, int nl, const int *dims) {
    double flops = 0, layer_max = 0;
    for (int l = 0; l < nl; l++) {
        const double f = 2.0 * m * (double)dims[l] * dims[l + 1];
        flops += f;
        if (f > layer_max) layer_max = f;
    }
    if (m <= FR_SMALL_M) return flops >= fr_chain_par_min_flops * m;
    return layer_max >= FR_PAR_MIN_FLOPS;
}

/* One layer of a small-batch chain, split by output panels (fr_chain below). */
struct FN(fr_chain_job) {
    int m, n, k;
    const FR_T *h;
    const FR_T *Wp;
    FR_T *o;
    const FR_T *bias;
    int act;
    FR_T slope;
    int npan, ntask;
};

static void FN(fr_chain_task)(void *ctx, int t) {
    const struct FN(fr_chain_job) *j = (const struct FN(fr_chain_job) *)ctx;
    FN(fr_gemv_packed)(j->m, j->n, j->k, j->h, j->k, j->Wp, j->o, j->n, j->bias, j->act,
                       j->slope, (int)((long)j->npan * t / j->ntask),
                       (int)((long)j->npan * (t + 1) / j->ntask));
}

/* A chain of linear layers on pre-packed weights (fr_pack_weight), the whole forward of a
 * compiled MLP in one call:
 *   h_0 = x (m x dims[0]),  h_{l+1} = act_l(h_l @ W_l.T + bias_l) (m x dims[l+1]),  out = h_nl.
 * The intermediate h_l live in per-calling-thread scratch: concurrent calls from different
 * threads never share them, and nothing is allocated once the scratch has grown.
 * m <= FR_SMALL_M (serving a few samples): the chain is a sequence of GEMVs bound by reading the
 * weights. When it is worth splitting (fr_chain_par_min_flops per row, kernel.h), each layer's
 * output panels (NR rows of W each) are cut into up to 4 tasks per thread and run on the split pool
 * (common/split_pool.h): the caller claims tasks too, and waits only for tasks a worker has
 * claimed, never for a worker that has not started. Larger m: one blocked GEMM per layer (fr_gemm, parallel over tiles of C).
 * Returns 0 on success, -1 if the scratch could not be allocated. */
static int FN(fr_chain)(int m, int nl, const int *dims, const FR_T *const *Wp,
                        const FR_T *const *bias, const int *act, const FR_T *slope,
                        const FR_T *x, FR_T *out, int nthreads) {
    if (m <= 0 || nl <= 0) return 0;
    size_t wmax = 0;
    double flops = 0;
    for (int l = 0; l < nl; l++) {
        if (l > 0 && (size_t)dims[l] > wmax) wmax = (size_t)dims[l];
        flops += 2.0 * m * (double)dims[l] * dims[l + 1];
    }
    FR_T *buf = NULL;
    if (nl > 1) {
        /* (+ 1: a zero-width hidden layer still gets a non-NULL scratch) */
        buf = (FR_T *)fr_get_chain_scratch((2 * (size_t)m * wmax + 1) * sizeof(FR_T));
        if (!buf) return -1;
    }
    FR_T *bufs[2] = {buf, buf ? buf + (size_t)m * wmax : NULL};
    if (nthreads < 1) nthreads = 1;
    if (m <= FR_SMALL_M) {
        for (int l = 0; l <= nl; l++)
            if (dims[l] <= 0) goto blocked;     /* empty products: fr_gemm's edge cases */
        const int nt = flops >= fr_chain_par_min_flops * m ? nthreads : 1;
        if (nt == 1) {  /* no parallel region at all: even an if(0) one costs a GOMP call */
            const FR_T *h = x;
            for (int l = 0; l < nl; l++) {
                FR_T *o = l == nl - 1 ? out : bufs[l & 1];
                FN(fr_gemv_packed)(m, dims[l + 1], dims[l], h, dims[l], Wp[l], o, dims[l + 1],
                                   bias[l], act[l], slope[l], 0, (dims[l + 1] + FR_NR - 1) / FR_NR);
                h = o;
            }
            return 0;
        }
        /* one job of the split pool a layer (split_pool.h): tasks are contiguous ranges of the
         * layer's output panels; the caller runs tasks too and never waits for a worker that
         * has not started, so a descheduled thread costs its share of the work, not a time
         * slice. Each output is computed by one task, in one order: the same bits. */
        const FR_T *h = x;
        for (int l = 0; l < nl; l++) {
            FR_T *o = l == nl - 1 ? out : bufs[l & 1];
            const int npan = (dims[l + 1] + FR_NR - 1) / FR_NR;
            /* up to 4 tasks a thread, each of at least 4 panels (fr_gemv_packed streams 4
             * panels side by side) */
            int ntask = npan / 4;
            if (ntask > 4 * nt) ntask = 4 * nt;
            if (ntask < 1) ntask = 1;
            struct FN(fr_chain_job) job = {m, dims[l + 1], dims[l], h, Wp[l], o, bias[l], act[l],
                                           slope[l], npan, ntask};
            fr_split_run(FN(fr_chain_task), &job, ntask, nt);
            h = o;
        }
        return 0;
    }
blocked:;
    const FR_T *h = x;
    for (int l = 0; l < nl; l++) {
        FR_T *o = l == nl - 1 ? out : bufs[l & 1];
        int rc = FN(fr_gemm)(m, dims[l + 1], dims[l], h, dims[l], 1, NULL, 1, dims[l], Wp[l], o,
                             dims[l + 1], 0, bias[l], act[l], slope[l], NULL, nthreads);
        if (rc) return rc;
        h = o;
    }
    return 0;
}

#undef FR_NR
#undef FN
#undef FR_PAR_MIN_FLOPS
#undef FR_PAR_MIN_FLOPS_GEMV
#undef FR_SMALL_M
