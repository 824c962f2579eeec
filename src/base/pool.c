/* pool.c — fork-join pool (see pool.h). A run bumps a generation counter;
 * workers waiting on it wake, take items from `next` until none remain, and
 * count themselves out in `done`. */
#include "pool.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <unistd.h>

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define cpu_relax() _mm_pause()
#else
#define cpu_relax() ((void)0)
#endif

struct pool {
    int n;                /* threads including the caller */
    pthread_t *th;        /* [n-1] */
    pthread_mutex_t mu;
    pthread_cond_t cv;
    _Atomic uint64_t gen; /* incremented per run; workers wait for a change */
    _Atomic int64_t next; /* next work item */
    _Atomic int done;     /* workers finished with this run */
    _Atomic int quit;
    pool_fn fn;
    void *ctx;
    int64_t count;
};

typedef struct { pool *p; int tid; } worker_arg;

int pool_cpu_count(void) {
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

static void work(pool *p, int tid) {
    for (;;) {
        int64_t i = atomic_fetch_add_explicit(&p->next, 1, memory_order_relaxed);
        if (i >= p->count) break;
        p->fn(p->ctx, i, tid);
    }
}

static void *worker_main(void *arg) {
    worker_arg *wa = arg;
    pool *p = wa->p;
    int tid = wa->tid;
    free(wa);
    uint64_t seen = 0;
    for (;;) {
        uint64_t g;
        int spins = 0;
        while ((g = atomic_load_explicit(&p->gen, memory_order_acquire)) == seen && !atomic_load(&p->quit)) {
            if (++spins < 20000) { cpu_relax(); continue; }
            pthread_mutex_lock(&p->mu);
            while (atomic_load(&p->gen) == seen && !atomic_load(&p->quit)) pthread_cond_wait(&p->cv, &p->mu);
            pthread_mutex_unlock(&p->mu);
        }
        if (atomic_load(&p->quit)) return NULL;
        seen = g;
        work(p, tid);
        atomic_fetch_add_explicit(&p->done, 1, memory_order_release);
    }
}

pool *pool_new(int n_threads) {
    if (n_threads <= 0) n_threads = pool_cpu_count();
    pool *p = calloc(1, sizeof *p);
    if (!p) return NULL;
    p->n = n_threads;
    pthread_mutex_init(&p->mu, NULL);
    pthread_cond_init(&p->cv, NULL);
    p->th = calloc((size_t)n_threads, sizeof *p->th);
    if (!p->th) { free(p); return NULL; }
    for (int t = 1; t < n_threads; t++) {
        worker_arg *wa = malloc(sizeof *wa);
        if (wa) { wa->p = p; wa->tid = t; }
        if (!wa || pthread_create(&p->th[t - 1], NULL, worker_main, wa) != 0) {
            free(wa);
            p->n = t; /* keep the threads that started */
            break;
        }
    }
    return p;
}

void pool_free(pool *p) {
    if (!p) return;
    pthread_mutex_lock(&p->mu);
    atomic_store(&p->quit, 1);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    for (int t = 1; t < p->n; t++) pthread_join(p->th[t - 1], NULL);
    pthread_mutex_destroy(&p->mu);
    pthread_cond_destroy(&p->cv);
    free(p->th);
    free(p);
}

int pool_threads(const pool *p) { return p ? p->n : 1; }

void pool_run(pool *p, pool_fn fn, void *ctx, int64_t n) {
    if (n <= 0) return;
    if (!p || p->n == 1 || n == 1) {
        for (int64_t i = 0; i < n; i++) fn(ctx, i, 0);
        return;
    }
    p->fn = fn;
    p->ctx = ctx;
    p->count = n;
    atomic_store_explicit(&p->next, 0, memory_order_relaxed);
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    pthread_mutex_lock(&p->mu);
    atomic_fetch_add_explicit(&p->gen, 1, memory_order_release);
    pthread_cond_broadcast(&p->cv);
    pthread_mutex_unlock(&p->mu);
    work(p, 0);
    while (atomic_load_explicit(&p->done, memory_order_acquire) < p->n - 1) cpu_relax(); /* items are short */
}
