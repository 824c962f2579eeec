/* pool.h — a small fork-join thread pool for the kernels.
 *
 * pool_run(p, fn, ctx, n) calls fn(ctx, i, tid) for every i in [0, n) spread
 * over the pool's threads (the caller is thread 0) and returns when all are
 * done. Work items are handed out through an atomic counter, so uneven items
 * balance themselves. Workers spin briefly and then sleep between runs.
 * One run at a time per pool: a pool belongs to one model and the forward
 * passes on it are serialised by the caller.
 */
#ifndef MOE_BASE_POOL_H
#define MOE_BASE_POOL_H

#include <stdint.h>

typedef struct pool pool;
typedef void (*pool_fn)(void *ctx, int64_t i, int tid);

/* n_threads <= 0: all online cores. NULL when threads cannot be started. */
pool *pool_new(int n_threads);
void pool_free(pool *p);
int pool_threads(const pool *p);
void pool_run(pool *p, pool_fn fn, void *ctx, int64_t n);
int pool_cpu_count(void);

#endif
