/* xpack_api.c — moe_pack (moe.h): the public face of the expert store, for
 * `moe pack`: load the model, build or reuse its pack in the cache
 * directory, and on request read every record back through the checksums. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../base/err.h"
#include "../base/pool.h"
#include "xstore.h"

void moe_pack_params_defaults(moe_pack_params *p) { memset(p, 0, sizeof *p); }

/* The records checked in parallel: work item i is record i in (layer,
 * expert) order; the failure reported is the first in that order. */
typedef struct check_job {
    xstore *x;
    int *moe_layer;             /* [n_moe]: the model layer of each MoE layer */
    int n_experts;
    unsigned char **buf;        /* [threads] slot-sized, XS_ALIGN-aligned */
    pthread_mutex_t lock;
    int64_t bad;                /* first failing record, or -1 */
    moe_status st;
    char msg[1024];
} check_job;

static void check_one(void *ctx, int64_t i, int tid) {
    check_job *j = ctx;
    int l = j->moe_layer[i / j->n_experts], e = (int)(i % j->n_experts);
    moe_status st = xs_read(j->x, l, e, j->buf[tid]);
    if (!st) return;
    pthread_mutex_lock(&j->lock);
    if (j->bad < 0 || i < j->bad) {
        j->bad = i;
        j->st = st;
        snprintf(j->msg, sizeof j->msg, "%s", moe_errmsg());
    }
    pthread_mutex_unlock(&j->lock);
}

static moe_status check_all(xstore *x, const moe_model *m, int n_threads) {
    const moe_config *c = moe_model_config(m);
    int n_moe = 0;
    uint64_t slot = 0;
    check_job j = {.x = x, .n_experts = c->n_experts, .bad = -1};
    j.moe_layer = malloc((size_t)c->n_layers * sizeof *j.moe_layer);
    if (!j.moe_layer) return moe_err(MOE_ENOMEM, "out of memory");
    for (int l = 0; l < c->n_layers; l++) {
        if (!xs_record_of(x, l, 0)) continue;
        j.moe_layer[n_moe++] = l;
        if (xs_slot_bytes(x, l) > slot) slot = xs_slot_bytes(x, l);
    }
    pool *p = pool_new(n_threads > 0 ? n_threads : 1);
    moe_status st = p ? MOE_OK : moe_err(MOE_ENOMEM, "cannot start threads");
    int nt = p ? pool_threads(p) : 0;
    if (!st && !(j.buf = calloc((size_t)nt, sizeof *j.buf))) st = moe_err(MOE_ENOMEM, "out of memory");
    for (int t = 0; t < nt && !st; t++)
        if (!(j.buf[t] = aligned_alloc(XS_ALIGN, slot))) st = moe_err(MOE_ENOMEM, "out of memory");
    if (!st) {
        pthread_mutex_init(&j.lock, NULL);
        pool_run(p, check_one, &j, (int64_t)n_moe * c->n_experts);
        pthread_mutex_destroy(&j.lock);
        if (j.bad >= 0) st = moe_err(j.st, "%s", j.msg);
    }
    for (int t = 0; j.buf && t < nt; t++) free(j.buf[t]);
    free(j.buf);
    pool_free(p);
    free(j.moe_layer);
    return st;
}

/* Opens, builds or checks the pack at `path` as p asks. */
static moe_status pack_model(const moe_model *m, const char *path, const moe_pack_params *p, moe_pack_result *out) {
    xstore *x = NULL;
    moe_status st;
    if (p->force) {
        if (!(st = xs_build(m, path, p->progress, p->progress_ctx))) st = xs_open(m, path, &x);
        out->built = 1;
    } else if (p->check) {
        struct stat s;
        st = stat(path, &s) != 0 ? moe_err(MOE_EFORMAT, "%s: no expert pack yet (moe pack builds it)", path)
                                 : xs_open(m, path, &x);
    } else {
        st = xs_open_or_build(m, path, p->progress, p->progress_ctx, &out->built, out->why, sizeof out->why, &x);
    }
    if (!st && p->check) st = check_all(x, m, p->n_threads);
    struct stat s;
    if (!st && stat(path, &s) == 0) out->bytes = (uint64_t)s.st_size;
    if (!st) out->direct = xs_direct(x);
    xs_close(x);
    return st;
}

moe_status moe_pack(const char *model_dir, const moe_pack_params *p, moe_pack_result *out) {
    moe_pack_params def;
    if (!p) {
        moe_pack_params_defaults(&def);
        p = &def;
    }
    memset(out, 0, sizeof *out);
    if (!model_dir) return moe_err(MOE_EINVAL, "no model directory given");
    moe_load_params lp;
    moe_load_params_defaults(&lp);
    lp.n_threads = 1; /* nothing is computed */
    lp.offload = 0;   /* the experts are read from the model's own files */
    lp.load = MOE_LOAD_MMAP;
    moe_model *m;
    moe_status st = moe_model_load(model_dir, &lp, &m);
    if (st) return st;
    const moe_config *c = moe_model_config(m);
    out->moe_layers = c->n_moe_layers;
    out->experts = c->n_experts;
    out->records = (int64_t)c->n_moe_layers * c->n_experts;
    char dir[4096];
    if (out->records == 0)
        st = moe_err(MOE_EINVAL, "%s: a dense model (no MoE layers): there are no experts to pack", model_dir);
    if (!st) st = xs_cache_dir(model_dir, p->cache_dir, 1, dir, sizeof dir);
    if (!st && snprintf(out->path, sizeof out->path, "%s/experts.pack", dir) >= (int)sizeof out->path)
        st = moe_err(MOE_EINVAL, "path too long: %s/experts.pack", dir);
    if (!st) st = pack_model(m, out->path, p, out);
    moe_model_free(m);
    return st;
}
