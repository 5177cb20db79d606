/* OpenBLAS's threads, run on fastreg's OpenMP pool (fastreg.set_blas_interop, "auto").
 *
 * OpenBLAS >= 0.3.27 (the scipy-openblas NumPy ships) lets the caller run its parallel jobs:
 * openblas_set_threads_callback_function(cb), then every threaded BLAS call hands its `numjobs`
 * jobs to cb instead of waking OpenBLAS's own pthreads (which, idle, spin ~2^28 cycles = 0.1 s
 * after every call and take the cores from the next OpenMP kernel). fastreg_blas_threads runs
 * job i on thread i of an OpenMP team of exactly numjobs threads: the same libgomp pool the Cython
 * kernels (and torch, which loads the same soname) use, so one pool owns the cores and its
 * idle threads sleep after GOMP_SPINCOUNT spins.
 *
 * OpenBLAS's jobs synchronise with each other (level-3 threads wait on each other's packed
 * panels), so all numjobs must run at once: where a team of numjobs threads cannot be had (called
 * inside an active parallel region, OMP_THREAD_LIMIT, OMP_DYNAMIC shrank the team) the jobs run on
 * fresh pthreads instead. Job i uses OpenBLAS's per-thread buffer i, so calls are serialised by a
 * mutex (OpenBLAS's own server serialises level-3 calls the same way).
 */
#ifndef FASTREG_BLAS_POOL_H
#define FASTREG_BLAS_POOL_H
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>
#include "prelude.h"

typedef void (*fastreg_dojob_t)(int thread_num, void *jobdata, int dojob_data);

static pthread_mutex_t fastreg_blas_lock = PTHREAD_MUTEX_INITIALIZER;
/* calls served by an OpenMP team / by the pthread fallback (read by the tests) */
static volatile long fastreg_blas_omp_calls = 0, fastreg_blas_thread_calls = 0;

typedef struct {
    fastreg_dojob_t dojob;
    char *data;
    size_t elsize;
    int arg, i;
} fastreg_blas_job;

static void *fastreg_blas_job_main(void *p) {
    fastreg_blas_job *j = (fastreg_blas_job *)p;
    j->dojob(j->i, j->data + (size_t)j->i * j->elsize, j->arg);
    return NULL;
}

/* jobs 1..n-1 on new pthreads, job 0 here; a job whose thread cannot be created runs here too
   (after the others started: a job that waits on a later one would otherwise deadlock, so this
   last resort only happens when the system is out of threads) */
static void fastreg_blas_run_pthreads(fastreg_dojob_t dojob, int n, size_t elsize, char *data,
                                      int arg) {
    pthread_t tid[n];   /* n <= OpenBLAS's MAX_CPU_NUMBER (a few hundred): a few kB of stack */
    fastreg_blas_job job[n];
    int started[n];
    for (int i = 1; i < n; i++) {
        job[i].dojob = dojob; job[i].data = data; job[i].elsize = elsize;
        job[i].arg = arg; job[i].i = i;
        started[i] = pthread_create(&tid[i], NULL, fastreg_blas_job_main, &job[i]) == 0;
    }
    dojob(0, data, arg);
    for (int i = 1; i < n; i++) {
        if (started[i]) pthread_join(tid[i], NULL);
        else dojob(i, data + (size_t)i * elsize, arg);
    }
}

static void fastreg_blas_threads(int sync, fastreg_dojob_t dojob, int numjobs, size_t elsize,
                                 void *jobdata, int dojob_data) {
    char *data = (char *)jobdata;
    (void)sync;
    if (numjobs <= 0) return;
    if (numjobs == 1) {
        dojob(0, data, dojob_data);
        return;
    }
    pthread_mutex_lock(&fastreg_blas_lock);
    int done = 0;
#ifdef _OPENMP
    if (!omp_in_parallel() && numjobs <= omp_get_thread_limit()) {
        int full = 1;
        #pragma omp parallel num_threads(numjobs)
        {
            if (omp_get_num_threads() == numjobs) {
                const int i = omp_get_thread_num();
                dojob(i, data + (size_t)i * elsize, dojob_data);
            } else if (omp_get_thread_num() == 0) {
                full = 0;
            }
        }
        done = full;
        if (done) fastreg_blas_omp_calls++;
    }
#endif
    if (!done) {
        fastreg_blas_run_pthreads(dojob, numjobs, elsize, data, dojob_data);
        fastreg_blas_thread_calls++;
    }
    pthread_mutex_unlock(&fastreg_blas_lock);
}

static inline uintptr_t fastreg_blas_threads_address(void) {
    return (uintptr_t)&fastreg_blas_threads;
}
#endif
