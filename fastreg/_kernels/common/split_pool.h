/* A small task pool for latency-bound splits (the GEMV chains of a batch of 1-4 rows): the caller
 * runs tasks too, and it never waits for a thread that has not started.
 *
 * fr_split_run(fn, ctx, ntasks, nthreads) runs fn(ctx, 0..ntasks-1), each exactly once, on the
 * calling thread and up to nthreads - 1 persistent workers, and returns when all are done. Tasks
 * are claimed from one atomic word (generation << 32 | next task), so a worker that the OS has
 * descheduled, or that is still waking up, simply finds nothing left to claim: the caller does
 * the work itself, and waits only for tasks a worker has actually claimed. (An OpenMP region
 * instead ends in a barrier that waits for every team thread; when another process holds a
 * core, that costs a scheduler time slice -- milliseconds -- per barrier.) This is how ONNX
 * Runtime's pool runs its shards.
 *
 * Which task runs on which thread varies from call to call; what each task computes does not, so
 * callers whose tasks write disjoint outputs get the same bits for any thread count.
 *
 * Workers are started on first use (one pool per extension module that includes this header),
 * spin for a short while after each job (the next layer of a chain comes microseconds later),
 * then sleep on a condition variable. One job at a time: a second thread calling while a job
 * runs (two Python threads predicting at once) runs its tasks inline on itself. After fork() the
 * child has no workers; the pool starts them again when it is next used.
 *
 * Memory ordering: the word holds generation (32 bits) | ntasks (16) | next task (16), so a
 * claimant checks "next < ntasks" on the very value its CAS then swaps: a stale word of a job
 * that has finished can never be claimed past its end, whatever the caller is writing for the
 * next job. The caller writes the job's fields (fn, ctx) before it publishes the word with a
 * release store; a claim's CAS (acq_rel) reads from that release sequence, so the fields are
 * visible, and they stay valid until the claimed task is counted done (the job cannot end
 * before). Completion is counted with release increments; the caller's acquire load of the
 * count makes every task's writes visible to it. */
#ifndef FASTREG_SPLIT_POOL_H
#define FASTREG_SPLIT_POOL_H
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define FR_CPU_RELAX() _mm_pause()
#else
#define FR_CPU_RELAX() ((void)0)
#endif

#define FR_SPLIT_MAX_WORKERS 63
/* Pause iterations a worker spins waiting for the next job before it sleeps (~50-100 us). */
#define FR_SPLIT_SPIN 2000

typedef void (*fr_split_fn)(void *ctx, int task);

static struct {
    pthread_mutex_t busy;               /* held by the caller of the job in flight */
    pthread_mutex_t sleep_m;
    pthread_cond_t sleep_cv;
    atomic_uint gen;                    /* generation of the job last published */
    atomic_ullong word;                 /* gen << 32 | ntasks << 16 | next unclaimed task */
    atomic_int done;                    /* tasks of the current job completed */
    atomic_int sleeping;                /* workers waiting on sleep_cv */
    _Atomic(fr_split_fn) fn;
    _Atomic(void *) ctx;
    atomic_int nwork;                   /* workers allowed to take part in the current job */
    int nworkers;                       /* workers started (only the caller holding busy writes) */
    int atfork;
} fr_split = {PTHREAD_MUTEX_INITIALIZER, PTHREAD_MUTEX_INITIALIZER, PTHREAD_COND_INITIALIZER};

/* Claim and run tasks of generation g until none is left; returns the number run. */
static int fr_split_claim(unsigned g, int self_index) {
    int ran = 0;
    for (;;) {
        unsigned long long w = atomic_load_explicit(&fr_split.word, memory_order_acquire);
        if ((unsigned)(w >> 32) != g) return ran;
        const int i = (int)(w & 0xffffu), n = (int)((w >> 16) & 0xffffu);
        if (i >= n) return ran;
        if (self_index >= 0 && self_index >= atomic_load_explicit(&fr_split.nwork,
                                                                  memory_order_relaxed))
            return ran;
        if (!atomic_compare_exchange_weak_explicit(&fr_split.word, &w, w + 1,
                                                   memory_order_acq_rel, memory_order_relaxed))
            continue;
        /* claimed: the job is open until this task is counted done, so its fields are stable */
        fr_split_fn fn = atomic_load_explicit(&fr_split.fn, memory_order_relaxed);
        fn(atomic_load_explicit(&fr_split.ctx, memory_order_relaxed), i);
        atomic_fetch_add_explicit(&fr_split.done, 1, memory_order_release);
        ran++;
    }
}

static void *fr_split_worker(void *arg) {
    const int me = (int)(intptr_t)arg;
    unsigned seen = atomic_load_explicit(&fr_split.gen, memory_order_acquire);
    for (;;) {
        unsigned g = atomic_load_explicit(&fr_split.gen, memory_order_acquire);
        for (int s = 0; g == seen && s < FR_SPLIT_SPIN; s++) {
            FR_CPU_RELAX();
            g = atomic_load_explicit(&fr_split.gen, memory_order_acquire);
        }
        if (g == seen) {
            pthread_mutex_lock(&fr_split.sleep_m);
            atomic_fetch_add(&fr_split.sleeping, 1);          /* seq_cst: pairs with publish */
            while ((g = atomic_load(&fr_split.gen)) == seen)
                pthread_cond_wait(&fr_split.sleep_cv, &fr_split.sleep_m);
            atomic_fetch_sub(&fr_split.sleeping, 1);
            pthread_mutex_unlock(&fr_split.sleep_m);
        }
        seen = g;
        fr_split_claim(g, me);
    }
    return NULL;
}

static void fr_split_after_fork_child(void) {
    /* the workers do not exist in the child; the locks may have been held by parent threads */
    pthread_mutex_t m0 = PTHREAD_MUTEX_INITIALIZER, m1 = PTHREAD_MUTEX_INITIALIZER;
    pthread_cond_t c0 = PTHREAD_COND_INITIALIZER;
    fr_split.busy = m0;
    fr_split.sleep_m = m1;
    fr_split.sleep_cv = c0;
    atomic_store(&fr_split.sleeping, 0);
    fr_split.nworkers = 0;
}

/* Start workers up to `want` (called with busy held); returns how many exist. */
static int fr_split_grow(int want) {
    if (want > FR_SPLIT_MAX_WORKERS) want = FR_SPLIT_MAX_WORKERS;
    if (!fr_split.atfork) {
        if (pthread_atfork(NULL, NULL, fr_split_after_fork_child) != 0) return fr_split.nworkers;
        fr_split.atfork = 1;
    }
    while (fr_split.nworkers < want) {
        pthread_t th;
        pthread_attr_t attr;
        pthread_attr_init(&attr);
        pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
        pthread_attr_setstacksize(&attr, 256 * 1024);
        const int rc = pthread_create(&th, &attr, fr_split_worker,
                                      (void *)(intptr_t)fr_split.nworkers);
        pthread_attr_destroy(&attr);
        if (rc != 0) break;
        fr_split.nworkers++;
    }
    return fr_split.nworkers;
}

static void fr_split_run(fr_split_fn fn, void *ctx, int ntasks, int nthreads) {
    if (ntasks <= 0) return;
    if (nthreads <= 1 || ntasks == 1 || ntasks > 0xffff ||
        pthread_mutex_trylock(&fr_split.busy) != 0) {
        for (int i = 0; i < ntasks; i++) fn(ctx, i);
        return;
    }
    int nwork = fr_split_grow(nthreads - 1);
    if (nwork > nthreads - 1) nwork = nthreads - 1;
    if (nwork <= 0) {
        pthread_mutex_unlock(&fr_split.busy);
        for (int i = 0; i < ntasks; i++) fn(ctx, i);
        return;
    }
    atomic_store_explicit(&fr_split.fn, fn, memory_order_relaxed);
    atomic_store_explicit(&fr_split.ctx, ctx, memory_order_relaxed);
    atomic_store_explicit(&fr_split.nwork, nwork, memory_order_relaxed);
    atomic_store_explicit(&fr_split.done, 0, memory_order_relaxed);
    const unsigned g = atomic_load_explicit(&fr_split.gen, memory_order_relaxed) + 1u;
    atomic_store_explicit(&fr_split.word,
                          (unsigned long long)g << 32 | (unsigned long long)ntasks << 16,
                          memory_order_release);
    atomic_store(&fr_split.gen, g);                 /* seq_cst: pairs with a worker's sleeping++ */
    if (atomic_load(&fr_split.sleeping) > 0) {
        pthread_mutex_lock(&fr_split.sleep_m);
        pthread_cond_broadcast(&fr_split.sleep_cv);
        pthread_mutex_unlock(&fr_split.sleep_m);
    }
    fr_split_claim(g, -1);
    /* wait only for tasks a worker claimed (and is running) */
    while (atomic_load_explicit(&fr_split.done, memory_order_acquire) < ntasks) FR_CPU_RELAX();
    pthread_mutex_unlock(&fr_split.busy);
}
#endif
