/* FMA-throughput probe: the machine's float32 peak in GFLOP/s, the ceiling every GEMM here is
 * measured against (README "Performance"). Each thread runs FR_PEAK_CHAINS independent chains
 * acc = acc * a + b on full-width vectors: an FMA's latency is 4-5 cycles and a core issues
 * up to 2 per cycle, so >= 10 chains keep both pipes busy; the loop body is FMAs only (no
 * loads), so its time is the FMA issue rate. Flops = 2 x lanes x chains x iterations. */
#ifndef FASTREG_MATMUL_PEAK_H
#define FASTREG_MATMUL_PEAK_H

#include <time.h>

#include "prelude.h"

#if defined(__AVX512F__) || defined(__AVX2__) || defined(__FMA__)
#include <immintrin.h>
#endif

#define FR_PEAK_CHAINS 12

static double fr_peak_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* iters iterations of FR_PEAK_CHAINS FMAs on one thread; returns a value depending on every
 * chain so that nothing can be optimized away. */
static float fr_peak_chains(long iters, float seed) {
#if defined(__AVX512F__)
#define FR_PV __m512
#define FR_PSET1 _mm512_set1_ps
#define FR_PFMA _mm512_fmadd_ps
#define FR_PADD _mm512_add_ps
#define FR_PSUM(v) _mm512_reduce_add_ps(v)
#elif defined(__AVX2__) && defined(__FMA__)
#define FR_PV __m256
#define FR_PSET1 _mm256_set1_ps
#define FR_PFMA _mm256_fmadd_ps
#define FR_PADD _mm256_add_ps
#define FR_PSUM(v) (_mm256_cvtss_f32(v))
#endif
#ifdef FR_PV
    FR_PV acc[FR_PEAK_CHAINS];
    const FR_PV a = FR_PSET1(0.999999f), b = FR_PSET1(1e-7f);
#pragma GCC unroll 16
    for (int c = 0; c < FR_PEAK_CHAINS; c++) acc[c] = FR_PSET1(seed + (float)c);
    for (long i = 0; i < iters; i++) {
#pragma GCC unroll 16
        for (int c = 0; c < FR_PEAK_CHAINS; c++) acc[c] = FR_PFMA(acc[c], a, b);
    }
    FR_PV s = acc[0];
#pragma GCC unroll 16
    for (int c = 1; c < FR_PEAK_CHAINS; c++) s = FR_PADD(s, acc[c]);
    return FR_PSUM(s);
#undef FR_PV
#undef FR_PSET1
#undef FR_PFMA
#undef FR_PADD
#undef FR_PSUM
#else
    float acc[FR_PEAK_CHAINS], s = 0;
    for (int c = 0; c < FR_PEAK_CHAINS; c++) acc[c] = seed + (float)c;
    for (long i = 0; i < iters; i++)
        for (int c = 0; c < FR_PEAK_CHAINS; c++) acc[c] = acc[c] * 0.999999f + 1e-7f;
    for (int c = 0; c < FR_PEAK_CHAINS; c++) s += acc[c];
    return s;
#endif
}

/* Float32 lanes per FMA of the probe (16 AVX-512, 8 AVX2, 1 scalar). */
static int fr_peak_lanes(void) {
#if defined(__AVX512F__)
    return 16;
#elif defined(__AVX2__) && defined(__FMA__)
    return 8;
#else
    return 1;
#endif
}

/* Float32 GFLOP/s of nthreads threads each running iters iterations at once (wall time of the
 * whole team: the slowest thread counts, as in a GEMM). *sink receives the chains' value. */
static double fr_peak_gflops(int nthreads, long iters, float *sink) {
    if (nthreads < 1) nthreads = 1;
    float total = 0;
    const double t0 = fr_peak_now();
#pragma omp parallel num_threads(nthreads) reduction(+ : total) if (nthreads > 1)
    total += fr_peak_chains(iters, (float)omp_get_thread_num());
    const double t = fr_peak_now() - t0;
    *sink = total;
    return 2.0 * fr_peak_lanes() * FR_PEAK_CHAINS * (double)iters * nthreads / t * 1e-9;
}

#endif /* FASTREG_MATMUL_PEAK_H */
