/* Layer norm forward / backward (fastreg/_kernels/norm/loops.h) timed from C, without Python,
 * against plain C streams of the same reads and writes and the bandwidth probe's floor.
 *
 *   gcc -O3 -march=native -fopenmp -fno-math-errno -Ifastreg/_kernels/norm \
 *       -o /tmp/ln_harness benchmarks/ln_harness.c -lm
 *   GOMP_SPINCOUNT=10000 OMP_NUM_THREADS=T /tmp/ln_harness [N C OFFSET_BYTES HUGE REPS]
 *
 * Arrays are allocated like numpy's large arrays (OFFSET_BYTES past a page start: glibc's mmap'd
 * malloc gives 16; HUGE=1 madvise(MADV_HUGEPAGE) as numpy does). The work split is the library's:
 * forward 4 chunks per thread, backward _n_chunks(N, C) (64 at 4096 x 1024), both dynamic
 * chunksize 1, then ln_grad_params on one thread. BLOCK_PAD=k (env): the dgamma/dbeta block rows
 * k floats further apart than C. Each case: median and min of REPS calls (wall).
 * Floor (compare_norm.floor_seconds): forward = one read + write pair at the NT copy's speed,
 * backward = one read at the read speed + one pair at the copy's; probes on 128 MB arrays.
 * Not part of the package or of asv. */
#include "loops.h"
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

static double now(void) { struct timespec t; clock_gettime(CLOCK_MONOTONIC, &t); return t.tv_sec + 1e-9 * t.tv_nsec; }
static int cmp(const void *a, const void *b) { double x = *(const double *)a, y = *(const double *)b; return (x > y) - (x < y); }

static float *alloc_f(size_t n, int off, int huge) {
    size_t bytes = n * sizeof(float) + 4096 + off;
    char *p = aligned_alloc(4096, (bytes + 4095) & ~(size_t)4095);
    if (huge) madvise(p, bytes, MADV_HUGEPAGE);
    memset(p, 0, bytes);
    return (float *)(p + off);
}

static int N, C, P_FWD, P_BWD, T, LDB;
static float *X, *DY, *Y, *DX, *W, *B, *MEAN, *RSTD, *DW, *DB, *BLOCK;
static double *PARTIAL, *TS;

static void ln_fwd(void) {
    const int stream = (size_t)N * C * 4 >= NORM_STREAM_BYTES;
#pragma omp parallel for schedule(dynamic, 1) num_threads(T)
    for (int p = 0; p < P_FWD; p++)
        ln_fwd_rows_f(X, W, B, Y, MEAN, RSTD, 1, 1, 1e-5, stream, (ptrdiff_t)p * N / P_FWD,
                      (ptrdiff_t)(p + 1) * N / P_FWD, C);
}

static void ln_bwd(void) {
    const int stream = (size_t)N * C * 4 >= NORM_STREAM_BYTES;
#pragma omp parallel for schedule(dynamic, 1) num_threads(T)
    for (int p = 0; p < P_BWD; p++)
        ln_bwd_rows_f(DY, X, W, MEAN, RSTD, DX, PARTIAL + 2 * (size_t)p * C,
                      PARTIAL + (2 * (size_t)p + 1) * C, BLOCK + 2 * (size_t)p * LDB,
                      BLOCK + (2 * (size_t)p + 1) * LDB, 1, stream, (ptrdiff_t)p * N / P_BWD,
                      (ptrdiff_t)(p + 1) * N / P_BWD, C);
    ln_grad_params_f(DW, DB, PARTIAL, TS, TS + C, 1, 1, 1, P_BWD, C);
}

/* the same reads and NT writes as the kernels, no arithmetic beyond one add */
static void stream_fwd(void) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(T)
    for (int p = 0; p < P_FWD; p++) {
        const ptrdiff_t r0 = (ptrdiff_t)p * N / P_FWD, r1 = (ptrdiff_t)(p + 1) * N / P_FWD;
        norm_stream_f(Y + r0 * C, X + r0 * C, (r1 - r0) * C);
        norm_stream_fence();
    }
}

static void stream_bwd(void) {
#pragma omp parallel for schedule(dynamic, 1) num_threads(T)
    for (int p = 0; p < P_BWD; p++) {
        float tile[NORM_TILE] __attribute__((aligned(64)));
        for (ptrdiff_t n = (ptrdiff_t)p * N / P_BWD; n < (ptrdiff_t)(p + 1) * N / P_BWD; n++)
            for (ptrdiff_t c0 = 0; c0 < C; c0 += NORM_TILE) {
                for (int t = 0; t < NORM_TILE; t++) tile[t] = DY[n * C + c0 + t] + X[n * C + c0 + t];
                norm_stream_f(DX + n * C + c0, tile, NORM_TILE);
            }
        norm_stream_fence();
    }
}

static float *PR_SRC, *PR_DST;
static const size_t PR_N = (size_t)1 << 25;
static volatile float sink;
static void probe_read(void) {
    float total = 0;
#pragma omp parallel for schedule(static, 1) num_threads(T) reduction(+:total)
    for (int t = 0; t < T; t++) total += norm_probe_read_f(PR_SRC, t * PR_N / T, (t + 1) * PR_N / T);
    sink = total;
}
static void probe_copy(void) {
#pragma omp parallel for schedule(static, 1) num_threads(T)
    for (int t = 0; t < T; t++) norm_probe_copy_f(PR_SRC, PR_DST, t * PR_N / T, (t + 1) * PR_N / T);
}

static int REPS = 40;
static double run(void (*fn)(void), double *mn) {
    double *ts = malloc(sizeof(double) * REPS);
    for (int i = 0; i < 3; i++) fn();
    for (int i = 0; i < REPS; i++) { double t0 = now(); fn(); ts[i] = now() - t0; }
    qsort(ts, REPS, sizeof(double), cmp);
    double med = ts[REPS / 2];
    *mn = ts[0];
    free(ts);
    return med;
}

int main(int argc, char **argv) {
    N = argc > 1 ? atoi(argv[1]) : 4096;
    C = argc > 2 ? atoi(argv[2]) : 1024;
    int off = argc > 3 ? atoi(argv[3]) : 16, huge = argc > 4 ? atoi(argv[4]) : 1;
    REPS = argc > 5 ? atoi(argv[5]) : 40;
    T = omp_get_max_threads();
    P_FWD = 4 * T < N ? 4 * T : N;
    P_BWD = (int)((size_t)N * C / 16384);
    if (P_BWD > 64) P_BWD = 64;
    if (P_BWD > N) P_BWD = N;
    if (P_BWD < 1) P_BWD = 1;
    size_t nc = (size_t)N * C;
    X = alloc_f(nc, off, huge); DY = alloc_f(nc, off, huge); Y = alloc_f(nc, off, huge); DX = alloc_f(nc, off, huge);
    W = alloc_f(C, 0, 0); B = alloc_f(C, 0, 0); DW = alloc_f(C, 0, 0); DB = alloc_f(C, 0, 0);
    MEAN = alloc_f(N, 0, 0); RSTD = alloc_f(N, 0, 0);
    LDB = C + (getenv("BLOCK_PAD") ? atoi(getenv("BLOCK_PAD")) : 0);
    BLOCK = alloc_f(2 * (size_t)P_BWD * LDB, 0, 0);
    PARTIAL = aligned_alloc(64, sizeof(double) * 2 * P_BWD * C); TS = aligned_alloc(64, sizeof(double) * 2 * C);
    unsigned s = 1;
    for (size_t i = 0; i < nc; i++) { s = s * 1103515245u + 12345u; X[i] = (float)(s >> 9) * 1e-7f; s = s * 1103515245u + 12345u; DY[i] = (float)(s >> 9) * 1e-7f - 0.8f; }
    for (int c = 0; c < C; c++) { W[c] = 1.0f + 0.001f * c; B[c] = 0.01f * c; }
    PR_SRC = alloc_f(PR_N, 0, 1); PR_DST = alloc_f(PR_N, 0, 1);
    for (size_t i = 0; i < PR_N; i++) PR_SRC[i] = 1.0f;
    double mn, rd, cp, fm, bm, sfm, sbm, fmn, bmn, sfmn, sbmn, fbm, fbmn;
    /* best of the probes (as compare_norm: min of reps) */
    run(probe_read, &mn); rd = 4.0 * PR_N / mn;
    run(probe_copy, &mn); cp = 8.0 * PR_N / mn;
    fm = run(ln_fwd, &fmn); bm = run(ln_bwd, &bmn);
    sfm = run(stream_fwd, &sfmn); sbm = run(stream_bwd, &sbmn);
    void fb(void); fbm = run(fb, &fbmn);
    const double a = 4.0 * nc;
    const double ff = 2 * a / cp, fbk = a / rd + 2 * a / cp;
    printf("T=%d N=%d C=%d off=%d huge=%d P_fwd=%d P_bwd=%d probe read %.1f copy %.1f GB/s\n", T, N, C, off, huge, P_FWD, P_BWD, rd * 1e-9, cp * 1e-9);
    printf("  floor fwd %.1f bwd %.1f fwd+bwd %.1f us\n", ff * 1e6, fbk * 1e6, (ff + fbk) * 1e6);
    printf("  ln fwd      med %8.1f min %8.1f us = %.2fx floor (min %.2fx), %.2f el/ns\n", fm * 1e6, fmn * 1e6, fm / ff, fmn / ff, nc / fmn * 1e-9);
    printf("  ln bwd      med %8.1f min %8.1f us = %.2fx floor (min %.2fx), %.2f el/ns\n", bm * 1e6, bmn * 1e6, bm / fbk, bmn / fbk, nc / bmn * 1e-9);
    printf("  ln fwd+bwd  med %8.1f min %8.1f us = %.2fx floor (min %.2fx)\n", fbm * 1e6, fbmn * 1e6, fbm / (ff + fbk), fbmn / (ff + fbk));
    printf("  stream fwd  med %8.1f min %8.1f us = %.2fx floor\n", sfm * 1e6, sfmn * 1e6, sfm / ff);
    printf("  stream bwd  med %8.1f min %8.1f us = %.2fx floor\n", sbm * 1e6, sbmn * 1e6, sbm / fbk);
    return 0;
}
void fb(void) { ln_fwd(); ln_bwd(); }
