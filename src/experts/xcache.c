/* xcache.c — the per-layer expert cache (see xcache.h for the contract).
 *
 * Each MoE layer has n_slots slots of xs_slot_bytes(layer) bytes, carved
 * from one anonymous mapping that is only touched when a read fills it, so
 * resident memory grows with the cache's contents and never beyond it.
 * `where[e]` maps an expert to its slot. A slot is EMPTY, LOADING (an I/O
 * thread is reading into it: nobody else touches its bytes), READY (its
 * weights are bound) or FAILED (the read's error kept for whoever wants it).
 *
 * The batch protocol keeps one state per needed expert: WAIT (no slot yet),
 * SLOT (a slot assigned, loading or ready), OUT (handed to the forward
 * pass), DONE, SKIP. A slot holding a batch's expert has refs > 0 and is not
 * evictable; WAIT entries get slots as earlier experts are released, so a
 * batch needs no more slots than the cache has and reads each expert once.
 *
 * One mutex guards everything; I/O threads drop it while they read.
 *
 * On a GPU (xc_params.be, a backend with movers) the slots and staging
 * buffers are device memory and an expert reaches its slot by an upload on
 * the I/O thread's own stream: from the host tier (every expert held in
 * pinned host memory, filled once by xc_fill_host) in one copy, or read
 * from the store into the thread's pinned bounce buffer first, then copied
 * read by read. The compute stream runs behind the host: a slot handed out
 * and released may still be read by queued kernels, so each buffer carries a
 * fence recorded at its release, and an upload into it waits for that fence.
 */
#include "xcache.h"

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#include "../backend/backend.h"
#include "../base/err.h"

enum { SL_EMPTY, SL_LOADING, SL_READY, SL_FAILED };
enum { B_WAIT, B_SLOT, B_OUT, B_DONE, B_SKIP };

#define XC_DECAY 0.99 /* LFU: a use's weight after one more pass of the layer */

typedef struct slot {
    unsigned char *buf;       /* [slot_bytes], XS_ALIGN-aligned (device: backend memory) */
    be_fence *fence;          /* device: the compute work that last read buf */
    int expert;               /* -1 when empty */
    int state;                /* SL_* */
    int refs;                 /* held by the current batch */
    int pinned, prefetched;   /* prefetched: read ahead, not used yet */
    expert w;                 /* bound weights when READY */
    int reads_left;           /* while LOADING: its reads (xs_spans) not yet done */
    moe_status err;           /* when FAILED, or a read of it failed while others run */
    char msg[256];
} slot;

typedef struct xlayer {
    int n_slots;              /* cache slots; then c->n_stage staging slots, whose buffers */
    slot *slots;              /* [n_slots + n_stage]   are borrowed from the shared pool */
    unsigned char *mem;       /* the slots' mapping (device: backend memory) */
    size_t mem_bytes;
    int *where;               /* [E] slot of expert e, -1 */
    double *score;            /* [E] LFU: decayed uses as of pass stamp[e] */
    uint64_t *stamp;          /* [E] pass of the last use (LRU: the order) */
    unsigned char *guess;     /* [E] named by the last xc_prefetch */
    uint64_t pass;            /* xc_begin calls on this layer */
    int n_need;               /* the current batch: */
    int *need, *bslot;        /* [E] expert; its slot or -1 */
    unsigned char *bstate;    /* [E] B_* */
    xc_counters cnt;
} xlayer;

typedef struct job { int l, s, k; } job; /* read k of the expert going into slot s of layer l */
typedef struct io_thread { struct xcache *c; int i; } io_thread;

struct xcache {
    const moe_model *m;
    xstore *x;
    xc_params p;
    int E, n_layers;
    xlayer *L;                /* [n_layers]; n_slots 0 for dense layers */
    pthread_mutex_t mu;
    pthread_cond_t cv_done, cv_work;
    job *q;                   /* ring of reads to do */
    int qcap, qhead, qlen;
    pthread_t *io;
    int n_io, stop;
    int inflight;             /* reads in progress */
    double busy_since, busy_seconds;
    moe_status bg_err;        /* a failed read nobody waited for (skip policy) */
    char bg_msg[256];
    int n_stage;              /* staging buffers, shared by all layers: an expert that must be
                                 read but is worth less than every cached one goes through one
                                 and is not kept */
    int n_free;
    unsigned char **free_buf; /* [n_stage] the buffers not lent out */
    be_fence **free_fence;    /* [n_stage] device: theirs */
    unsigned char *stage_mem; /* their mapping */
    size_t stage_mem_bytes;
    size_t slot_max;          /* the largest slot of any layer: a staging or bounce buffer's size */
    /* device (xc_params.be): */
    backend *be;
    io_thread *iot;           /* [io_threads] */
    be_mover **mv;            /* [io_threads] each I/O thread's copy queue */
    unsigned char **bounce;   /* [io_threads] pinned [largest slot], without a host tier */
    unsigned char *host;      /* the host tier: pinned, expert (l, e) at host_off[l] + e * slot bytes */
    uint64_t *host_off;       /* [n_layers] */
    uint64_t host_bytes;
    int host_ready;           /* xc_fill_host succeeded: uploads come from the host tier */
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ------------------------------------------------------------ I/O side -- */

/* Device: expert e of layer l, read k, into slot sl's device buffer, by I/O thread t. */
static moe_status dev_fill(xcache *c, int t, int l, int e, int k, slot *sl) {
    uint64_t sb = xs_slot_bytes(c->x, l);
    if (c->host_ready)
        return be_mover_upload(c->be, c->mv[t], sl->buf, c->host + c->host_off[l] + (uint64_t)e * sb, (size_t)sb, sl->fence);
    if (!c->bounce[t]) return moe_err(MOE_EINVAL, "expert cache: a read of the store before its buffers (xc_fill_host)");
    moe_status st = xs_read_span(c->x, l, e, k, c->bounce[t]);
    uint64_t dst[XS_MAX_SPANS], len[XS_MAX_SPANS];
    int n = st ? 0 : xs_span_parts(c->x, l, e, k, dst, len);
    for (int i = 0; i < n && !st; i++)
        st = be_mover_upload(c->be, c->mv[t], sl->buf + dst[i], c->bounce[t] + dst[i], (size_t)len[i], sl->fence);
    return st;
}

static void *io_main(void *arg) {
    io_thread *me = arg;
    xcache *c = me->c;
    pthread_mutex_lock(&c->mu);
    for (;;) {
        while (!c->qlen && !c->stop) pthread_cond_wait(&c->cv_work, &c->mu);
        if (!c->qlen) break;
        job j = c->q[c->qhead];
        c->qhead = (c->qhead + 1) % c->qcap;
        c->qlen--;
        xlayer *L = &c->L[j.l];
        slot *sl = &L->slots[j.s];
        int e = sl->expert;
        if (c->inflight++ == 0) c->busy_since = now_s();
        pthread_mutex_unlock(&c->mu);

        double t0 = now_s();
        moe_status st = c->be ? dev_fill(c, me->i, j.l, e, j.k, sl) : xs_read_span(c->x, j.l, e, j.k, sl->buf);
        double dt = now_s() - t0;
        char msg[256] = "";
        if (st) snprintf(msg, sizeof msg, "%s", moe_errmsg());

        pthread_mutex_lock(&c->mu);
        if (--c->inflight == 0) c->busy_seconds += now_s() - c->busy_since;
        L->cnt.read_seconds += dt;
        if (st && !sl->err) {
            sl->err = st;
            memcpy(sl->msg, msg, sizeof msg);
        }
        if (--sl->reads_left > 0) continue; /* the expert's other reads are still running */
        L->cnt.reads++;
        if (sl->err) {
            sl->state = SL_FAILED;
            if (!sl->refs && !c->bg_err) { /* a read ahead: under skip, nobody would wait for it */
                c->bg_err = sl->err;
                memcpy(c->bg_msg, sl->msg, sizeof sl->msg);
            }
        } else {
            L->cnt.bytes_read += (int64_t)(c->host_ready ? xs_slot_bytes(c->x, j.l) : xs_read_bytes(c->x, j.l, e));
            xs_bind(xs_record_of(c->x, j.l, e), sl->buf, &sl->w);
            sl->state = SL_READY;
        }
        pthread_cond_broadcast(&c->cv_done);
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

/* ------------------------------------------------------ slot bookkeeping -- */

/* Expert e's value for eviction: higher stays. */
static double value(const xcache *c, const xlayer *L, int e) {
    if (c->p.lru) return (double)L->stamp[e];
    return L->score[e] * pow(XC_DECAY, (double)(L->pass - L->stamp[e]));
}

static void touch(const xcache *c, xlayer *L, int e) {
    L->score[e] = c->p.lru ? 0 : value(c, L, e) + 1.0;
    L->stamp[e] = L->pass;
}

/* The slot to fill next: an empty (or failed) one, else the least valuable
 * evictable one, if it is worth less than `below` (the newcomer's value:
 * a read that may be declined is not allowed to push out a hotter expert);
 * -1 when every slot is in use, being read, pinned, holds an expert the
 * last prefetch named (when spare_guess) or is worth more. */
static int victim(const xcache *c, const xlayer *L, int spare_guess, double below) {
    int best = -1;
    double bv = 0;
    for (int s = 0; s < L->n_slots; s++) {
        const slot *sl = &L->slots[s];
        if (sl->state == SL_EMPTY || (sl->state == SL_FAILED && !sl->refs)) return s;
        if (sl->refs || sl->pinned || sl->state == SL_LOADING) continue;
        if (spare_guess && L->guess[sl->expert]) continue;
        double v = value(c, L, sl->expert);
        if (v < below && (best < 0 || v < bv)) best = s, bv = v;
    }
    return best;
}

/* Starts reading expert e of layer l into slot s (evicting what it held). */
static void start_read(xcache *c, int l, int s, int e) {
    xlayer *L = &c->L[l];
    slot *sl = &L->slots[s];
    if (sl->expert >= 0) {
        if (sl->state == SL_READY) L->cnt.evictions++;
        L->where[sl->expert] = -1;
    }
    sl->expert = e;
    sl->state = SL_LOADING;
    sl->prefetched = 0;
    sl->err = MOE_OK;
    L->where[e] = s;
    /* each of its reads is a job of its own: an expert in 9 pieces (MLX layout
     * read from the model's files) is fetched by several threads at once */
    sl->reads_left = c->host_ready ? 1 : xs_spans(c->x, l, e);
    for (int k = 0; k < sl->reads_left; k++) c->q[(c->qhead + c->qlen++) % c->qcap] = (job){l, s, k};
    pthread_cond_broadcast(&c->cv_work);
}

static int stage_slot(xcache *c, int l);

/* Gives slots to the batch's waiting experts, in order, while any is free. */
static void assign_waiting(xcache *c, int l) {
    xlayer *L = &c->L[l];
    for (int i = 0; i < L->n_need; i++) {
        if (L->bstate[i] != B_WAIT) continue;
        /* a colder cached expert makes room; else it passes through staging;
         * else (no staging buffer free) it takes the coldest slot anyway */
        int s = victim(c, L, 0, c->n_stage ? value(c, L, L->need[i]) : INFINITY);
        if (s < 0 && c->n_stage) s = stage_slot(c, l);
        if (s < 0) s = victim(c, L, 0, INFINITY);
        if (s < 0) return;
        start_read(c, l, s, L->need[i]);
        L->slots[s].refs++;
        L->bslot[i] = s;
        L->bstate[i] = B_SLOT;
    }
}

/* Empties slot s of L (a staging slot gives its buffer back to the pool). */
static void empty_slot(xcache *c, xlayer *L, int s) {
    slot *sl = &L->slots[s];
    if (sl->expert >= 0) L->where[sl->expert] = -1;
    sl->expert = -1;
    sl->state = SL_EMPTY;
    sl->prefetched = 0;
    if (s >= L->n_slots && sl->buf) {
        c->free_fence[c->n_free] = sl->fence;
        c->free_buf[c->n_free++] = sl->buf;
        sl->buf = NULL;
        sl->fence = NULL;
    }
}

/* Empties the failed slot s of L; returns its read's error, set as this
 * thread's message. */
static moe_status take_failure(xcache *c, xlayer *L, int s) {
    moe_status st = moe_err(L->slots[s].err, "%s", L->slots[s].msg);
    empty_slot(c, L, s);
    return st;
}

/* A staging slot of layer l holding a buffer from the pool, or -1. A buffer
 * lent to an expert read ahead in another layer and not in use (ready,
 * refs 0) is taken back when the pool is empty: the read needed now wins. */
static int stage_slot(xcache *c, int l) {
    xlayer *L = &c->L[l];
    int s = L->n_slots;
    while (s < L->n_slots + c->n_stage && L->slots[s].state != SL_EMPTY) s++;
    if (s == L->n_slots + c->n_stage) return -1;
    for (int k = 0; !c->n_free && k < c->n_layers; k++) {
        xlayer *K = &c->L[k];
        for (int t = K->n_slots; k != l && K->n_slots && t < K->n_slots + c->n_stage && !c->n_free; t++)
            if (K->slots[t].buf && !K->slots[t].refs && K->slots[t].state != SL_LOADING) empty_slot(c, K, t);
    }
    if (!c->n_free) return -1;
    L->slots[s].buf = c->free_buf[--c->n_free];
    L->slots[s].fence = c->free_fence[c->n_free];
    return s;
}

/* ------------------------------------------------------- compute side -- */

moe_status xc_begin(xcache *c, int l, const int *need, int n, unsigned char *skipped) {
    if (l < 0 || l >= c->n_layers || !c->L[l].n_slots || n < 0 || n > c->E)
        return moe_err(MOE_EINVAL, "expert cache: bad batch (layer %d, %d experts)", l, n);
    xlayer *L = &c->L[l];
    pthread_mutex_lock(&c->mu);
    if (c->p.skip && c->bg_err) {
        moe_status st = c->bg_err;
        c->bg_err = MOE_OK;
        pthread_mutex_unlock(&c->mu);
        return moe_err(st, "%s", c->bg_msg);
    }
    L->pass++;
    L->n_need = n;
    for (int t = L->n_slots; t < L->n_slots + c->n_stage; t++) { /* guesses that missed */
        slot *sl = &L->slots[t];
        int wanted = 0;
        for (int i = 0; i < n && !wanted; i++) wanted = need[i] == sl->expert;
        if (sl->buf && !sl->refs && sl->state != SL_LOADING && !wanted) empty_slot(c, L, t);
    }
    /* first the experts already here (or on their way), so that placing the
     * misses cannot evict one of them */
    for (int i = 0; i < n; i++) {
        int e = need[i], s = L->where[e];
        L->need[i] = e;
        L->bslot[i] = -1;
        L->bstate[i] = B_WAIT;
        if (skipped) skipped[i] = 0;
        touch(c, L, e);
        if (L->guess[e]) {
            L->cnt.predicted_right++;
            L->guess[e] = 0;
        }
        if (s < 0) continue;
        slot *sl = &L->slots[s];
        if (sl->state == SL_FAILED) {
            empty_slot(c, L, (int)(sl - L->slots));
            continue;
        }
        if (c->p.skip && sl->state != SL_READY) continue; /* on its way, but not here now */
        if (sl->state == SL_READY) L->cnt.hits++;
        else L->cnt.misses++; /* its read, started ahead, is still running: waited for */
        if (sl->prefetched) {
            L->cnt.prefetch_used++;
            sl->prefetched = 0;
        }
        sl->refs++;
        L->bslot[i] = s;
        L->bstate[i] = B_SLOT;
    }
    for (int i = 0; i < n; i++) {
        if (L->bstate[i] != B_WAIT) continue;
        if (!c->p.skip) {
            L->cnt.misses++;
            continue;
        }
        L->cnt.skipped++;
        L->bstate[i] = B_SKIP;
        if (skipped) skipped[i] = 1;
        int s;
        /* for later batches, if it is worth more than what it would push out */
        if (L->where[need[i]] < 0 && (s = victim(c, L, 0, value(c, L, need[i]))) >= 0) start_read(c, l, s, need[i]);
    }
    memset(L->guess, 0, (size_t)c->E);
    assign_waiting(c, l);
    pthread_mutex_unlock(&c->mu);
    return MOE_OK;
}

static void abort_locked(xcache *c, int l) {
    xlayer *L = &c->L[l];
    for (int i = 0; i < L->n_need; i++) {
        if ((L->bstate[i] == B_SLOT || L->bstate[i] == B_OUT) && L->bslot[i] >= 0) L->slots[L->bslot[i]].refs--;
        if (L->bstate[i] == B_OUT && c->be) be_fence_record(c->be, L->slots[L->bslot[i]].fence);
        L->bstate[i] = B_DONE;
    }
    L->n_need = 0;
}

moe_status xc_next(xcache *c, int l, int *i, const expert **w) {
    xlayer *L = &c->L[l];
    *i = -1;
    *w = NULL;
    pthread_mutex_lock(&c->mu);
    for (;;) {
        assign_waiting(c, l);
        int left = 0;
        for (int k = 0; k < L->n_need; k++) {
            if (L->bstate[k] == B_WAIT) left = 1;
            if (L->bstate[k] != B_SLOT) continue;
            slot *sl = &L->slots[L->bslot[k]];
            if (sl->state == SL_READY) {
                L->bstate[k] = B_OUT;
                *i = k;
                *w = &sl->w;
                pthread_mutex_unlock(&c->mu);
                return MOE_OK;
            }
            if (sl->state == SL_FAILED) {
                abort_locked(c, l);
                moe_status st = take_failure(c, L, L->bslot[k]);
                pthread_mutex_unlock(&c->mu);
                return st;
            }
            left = 1;
        }
        if (!left) break;
        pthread_cond_wait(&c->cv_done, &c->mu);
    }
    L->n_need = 0;
    pthread_mutex_unlock(&c->mu);
    return MOE_OK;
}

void xc_release(xcache *c, int l, int i) {
    xlayer *L = &c->L[l];
    pthread_mutex_lock(&c->mu);
    if (i >= 0 && i < L->n_need && L->bstate[i] == B_OUT) {
        slot *sl = &L->slots[L->bslot[i]];
        sl->refs--;
        L->bstate[i] = B_DONE;
        if (c->be) be_fence_record(c->be, sl->fence); /* the kernels queued on it so far */
        if ((c->p.capacity == 0 || L->bslot[i] >= L->n_slots) && !sl->refs) /* staged: not kept */
            empty_slot(c, L, L->bslot[i]);
        assign_waiting(c, l);
    }
    pthread_mutex_unlock(&c->mu);
}

void xc_prefetch(xcache *c, int l, const int *experts, int n) {
    if (l < 0 || l >= c->n_layers || !c->L[l].n_slots || c->p.capacity == 0) return;
    xlayer *L = &c->L[l];
    pthread_mutex_lock(&c->mu);
    memset(L->guess, 0, (size_t)c->E);
    for (int i = 0; i < n; i++)
        if (experts[i] >= 0 && experts[i] < c->E && !L->guess[experts[i]]) {
            L->guess[experts[i]] = 1;
            L->cnt.predicted++;
        }
    for (int i = 0; i < n; i++) {
        int e = experts[i], s;
        if (e < 0 || e >= c->E || L->where[e] >= 0) continue;
        /* worth keeping: into the cache; else through staging, when there is any */
        if ((s = victim(c, L, 1, c->p.skip || c->n_stage ? value(c, L, e) : INFINITY)) < 0 && c->n_stage) s = stage_slot(c, l);
        if (s < 0) continue;
        start_read(c, l, s, e);
        L->slots[s].prefetched = 1;
        L->cnt.prefetched++;
    }
    pthread_mutex_unlock(&c->mu);
}

/* Waits until layer l's slots of experts[0..n) are no longer loading; the
 * first failure's error. Called with the lock held. */
static moe_status wait_loaded(xcache *c, int l, const int *experts, int n) {
    xlayer *L = &c->L[l];
    for (;;) {
        int loading = 0;
        for (int i = 0; i < n; i++) {
            int s = L->where[experts[i]];
            if (s < 0) continue;
            slot *sl = &L->slots[s];
            if (sl->state == SL_LOADING) loading = 1;
            if (sl->state == SL_FAILED) return take_failure(c, L, s);
        }
        if (!loading) return MOE_OK;
        pthread_cond_wait(&c->cv_done, &c->mu);
    }
}

moe_status xc_pin(xcache *c, int l, const int *experts, int n) {
    if (l < 0 || l >= c->n_layers || !c->L[l].n_slots) return moe_err(MOE_EINVAL, "expert cache: layer %d has no experts", l);
    xlayer *L = &c->L[l];
    pthread_mutex_lock(&c->mu);
    int pinned = 0;
    for (int s = 0; s < L->n_slots; s++) pinned += L->slots[s].pinned;
    moe_status st = MOE_OK;
    if (c->p.capacity == 0 || pinned + n > L->n_slots - 1) {
        st = moe_err(MOE_EINVAL, "expert cache: cannot pin %d experts in layer %d (%d slots, %d pinned; one must stay free)", n,
                     l, c->p.capacity, pinned);
        goto out;
    }
    for (int i = 0; i < n; i++) {
        int e = experts[i], s = e >= 0 && e < c->E ? L->where[e] : -2;
        if (s == -2) {
            st = moe_err(MOE_EINVAL, "expert cache: no expert %d in layer %d", e, l);
            goto out;
        }
        if (s < 0 && (s = victim(c, L, 0, INFINITY)) >= 0) start_read(c, l, s, e);
        if (s >= 0) L->slots[s].pinned = 1;
    }
    st = wait_loaded(c, l, experts, n);
out:
    pthread_mutex_unlock(&c->mu);
    return st;
}

void xc_preload(xcache *c, int l, const int *experts, const double *scores, int n) {
    if (l < 0 || l >= c->n_layers || !c->L[l].n_slots || c->p.capacity == 0) return;
    xlayer *L = &c->L[l];
    pthread_mutex_lock(&c->mu);
    for (int i = 0, k = 0; i < n; i++) {
        int e = experts[i];
        if (e < 0 || e >= c->E || L->where[e] >= 0) continue;
        while (k < L->n_slots && L->slots[k].state != SL_EMPTY) k++;
        if (k == L->n_slots) break;
        start_read(c, l, k, e);
        if (scores && scores[i] >= 0) L->score[e] = scores[i];
        L->stamp[e] = L->pass;
    }
    pthread_mutex_unlock(&c->mu);
}

moe_status xc_wait_idle(xcache *c) {
    pthread_mutex_lock(&c->mu);
    while (c->qlen || c->inflight) pthread_cond_wait(&c->cv_done, &c->mu);
    moe_status st = MOE_OK;
    for (int l = 0; l < c->n_layers && !st; l++)
        for (int s = 0; c->L[l].n_slots && s < c->L[l].n_slots + c->n_stage; s++) {
            slot *sl = &c->L[l].slots[s];
            if (sl->state != SL_FAILED || sl->refs) continue;
            if (!st) st = take_failure(c, &c->L[l], s);
            else empty_slot(c, &c->L[l], s);
        }
    c->bg_err = MOE_OK;
    pthread_mutex_unlock(&c->mu);
    return st;
}

/* ---------------------------------------------------------- statistics -- */

static void add(xc_counters *t, const xc_counters *a) {
    t->hits += a->hits;
    t->misses += a->misses;
    t->skipped += a->skipped;
    t->prefetched += a->prefetched;
    t->prefetch_used += a->prefetch_used;
    t->predicted += a->predicted;
    t->predicted_right += a->predicted_right;
    t->evictions += a->evictions;
    t->reads += a->reads;
    t->bytes_read += a->bytes_read;
    t->read_seconds += a->read_seconds;
    t->capacity += a->capacity;
    t->resident += a->resident;
    t->pinned += a->pinned;
}

static void layer_stats(const xcache *c, int l, xc_counters *out) {
    const xlayer *L = &c->L[l];
    *out = L->cnt;
    out->capacity = c->p.capacity ? L->n_slots : 0;
    out->resident = out->pinned = 0;
    for (int s = 0; s < L->n_slots; s++) {
        out->resident += L->slots[s].state == SL_READY;
        out->pinned += L->slots[s].pinned;
    }
}

void xc_stats(xcache *c, int l, xc_counters *out) {
    memset(out, 0, sizeof *out);
    pthread_mutex_lock(&c->mu);
    if (l >= 0 && l < c->n_layers) {
        layer_stats(c, l, out);
    } else if (l < 0) {
        for (int k = 0; k < c->n_layers; k++) {
            xc_counters one;
            layer_stats(c, k, &one);
            add(out, &one);
        }
        /* the layers' reads overlap: the total's time is the wall time with any read in flight */
        out->read_seconds = c->busy_seconds + (c->inflight ? now_s() - c->busy_since : 0);
    }
    pthread_mutex_unlock(&c->mu);
}

void xc_reset_stats(xcache *c) {
    pthread_mutex_lock(&c->mu);
    for (int l = 0; l < c->n_layers; l++) memset(&c->L[l].cnt, 0, sizeof c->L[l].cnt);
    c->busy_seconds = 0;
    if (c->inflight) c->busy_since = now_s();
    pthread_mutex_unlock(&c->mu);
}

int xc_resident(xcache *c, int l, int *experts, double *scores) {
    if (l < 0 || l >= c->n_layers) return 0;
    const xlayer *L = &c->L[l];
    int n = 0;
    pthread_mutex_lock(&c->mu);
    for (int s = 0; s < L->n_slots; s++)
        if (L->slots[s].state == SL_READY) experts[n++] = L->slots[s].expert;
    for (int i = 1; i < n; i++) /* insertion sort, most valuable first */
        for (int j = i; j > 0 && value(c, L, experts[j]) > value(c, L, experts[j - 1]); j--) {
            int t = experts[j];
            experts[j] = experts[j - 1];
            experts[j - 1] = t;
        }
    for (int i = 0; i < n; i++) scores[i] = value(c, L, experts[i]);
    pthread_mutex_unlock(&c->mu);
    return n;
}

uint64_t xc_bytes(const xcache *c) {
    uint64_t b = c->stage_mem_bytes;
    for (int l = 0; l < c->n_layers; l++) b += c->L[l].mem_bytes;
    return b;
}

uint64_t xc_host_bytes(const xcache *c) { return c->host_ready ? c->host_bytes : 0; }

/* ------------------------------------------------------------ host tier -- */

typedef struct fill_job {
    xcache *c;
    pthread_mutex_t mu;
    int next;                 /* the next (layer * E + expert) to read */
    uint64_t done;            /* bytes read */
    moe_status st;
    char msg[256];
    void (*progress)(void *, uint64_t, uint64_t);
    void *ctx;
} fill_job;

static void *fill_main(void *arg) {
    fill_job *f = arg;
    xcache *c = f->c;
    for (;;) {
        pthread_mutex_lock(&f->mu);
        int i = f->next;
        while (i < c->n_layers * c->E && !c->L[i / c->E].n_slots) i++;
        f->next = i + 1;
        int stop = f->st || i >= c->n_layers * c->E;
        pthread_mutex_unlock(&f->mu);
        if (stop) return NULL;
        int l = i / c->E, e = i % c->E;
        uint64_t sb = xs_slot_bytes(c->x, l);
        moe_status st = xs_read(c->x, l, e, c->host + c->host_off[l] + (uint64_t)e * sb);
        pthread_mutex_lock(&f->mu);
        if (st && !f->st) {
            f->st = st;
            snprintf(f->msg, sizeof f->msg, "%s", moe_errmsg());
        }
        f->done += sb;
        /* progress from one thread at a time, in order */
        if (!st && f->progress) f->progress(f->ctx, f->done, c->host_bytes);
        pthread_mutex_unlock(&f->mu);
    }
}

/* The host tier could not be had: the store's reads need their bounce
 * buffers after all. Returns st (its message kept), or a failure to get them. */
static moe_status host_failed(xcache *c, moe_status st) {
    char msg[256];
    snprintf(msg, sizeof msg, "%s", moe_errmsg());
    for (int i = 0; i < c->p.io_threads; i++)
        if (!c->bounce[i] && !(c->bounce[i] = be_host_alloc(c->be, c->slot_max)))
            return moe_err(MOE_ENOMEM, "expert cache: %s; and no bounce buffer: %s", msg, moe_errmsg());
    return moe_err(st, "%s", msg);
}

moe_status xc_fill_host(xcache *c, void (*progress)(void *ctx, uint64_t done, uint64_t total), void *ctx) {
    if (!c->be) return moe_err(MOE_EINVAL, "expert cache: a host tier is for a device's cache");
    if (c->host_ready) return MOE_OK;
    if (!c->host) {
        uint64_t total = 0;
        for (int l = 0; l < c->n_layers; l++) {
            c->host_off[l] = total;
            if (c->L[l].n_slots) total += (uint64_t)c->E * xs_slot_bytes(c->x, l);
        }
        c->host_bytes = total;
        if (!(c->host = be_host_alloc(c->be, (size_t)total)))
            return host_failed(c, moe_err(MOE_ENOMEM, "%.2f GB of pinned host memory for every expert: %s", (double)total / 1e9,
                                          moe_errmsg()));
    }
    fill_job f = {.c = c, .progress = progress, .ctx = ctx};
    pthread_mutex_init(&f.mu, NULL);
    pthread_t th[16];
    int n = c->n_io < 16 ? c->n_io : 16, started = 0;
    for (int i = 0; i < n; i++) started += !pthread_create(&th[started], NULL, fill_main, &f);
    if (!started) fill_main(&f);
    for (int i = 0; i < started; i++) pthread_join(th[i], NULL);
    pthread_mutex_destroy(&f.mu);
    if (f.st) {
        moe_status st = moe_err(f.st, "%s", f.msg);
        be_host_free(c->be, c->host);
        c->host = NULL;
        return host_failed(c, st);
    }
    pthread_mutex_lock(&c->mu); /* no read is queued: the reads so far went to the store */
    while (c->qlen || c->inflight) pthread_cond_wait(&c->cv_done, &c->mu);
    c->host_ready = 1;
    pthread_mutex_unlock(&c->mu);
    return MOE_OK;
}

/* ---------------------------------------------------------- lifetime -- */

moe_status xc_new(const moe_model *m, xstore *x, const xc_params *p, xcache **out) {
    *out = NULL;
    const moe_config *mc = &m->cfg.pub;
    if (p->capacity < 0 || p->io_threads < 1) return moe_err(MOE_EINVAL, "expert cache: capacity %d, %d I/O threads", p->capacity, p->io_threads);
    if (p->be && !backend_movers(p->be))
        return moe_err(MOE_EINVAL, "expert cache: backend %s keeps its memory on the host (no device cache)", backend_kind(p->be));
    xcache *c = calloc(1, sizeof *c);
    if (!c) return moe_err(MOE_ENOMEM, "out of memory");
    c->m = m;
    c->x = x;
    c->p = *p;
    c->be = p->be;
    c->E = mc->n_experts;
    c->n_layers = mc->n_layers;
    if (c->p.capacity > c->E) c->p.capacity = c->E;
    c->n_stage = c->p.capacity > 0 && c->p.capacity < c->E && p->stage > 0 ? p->stage : 0;
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv_done, NULL);
    pthread_cond_init(&c->cv_work, NULL);
    moe_status st = MOE_OK;
    if (!(c->L = calloc((size_t)c->n_layers, sizeof *c->L))) goto oom;
    for (int l = 0; l < c->n_layers; l++) {
        xlayer *L = &c->L[l];
        uint64_t sb = xs_slot_bytes(x, l);
        if (!m->layers[l].is_moe || !sb) continue;
        L->n_slots = c->p.capacity ? c->p.capacity : 2;
        L->mem_bytes = (size_t)sb * (size_t)L->n_slots;
        void *mem = c->be ? be_alloc(c->be, L->mem_bytes)
                          : mmap(NULL, L->mem_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (c->be ? !mem : mem == MAP_FAILED) {
            L->mem_bytes = 0;
            st = moe_err(MOE_ENOMEM, "expert cache: cannot allocate %.1f MB for layer %d's %d slots%s%s", (double)sb * L->n_slots / 1e6,
                         l, L->n_slots, c->be ? ": " : "", c->be ? moe_errmsg() : "");
            goto fail;
        }
        L->mem = mem;
        /* 2 MB pages where the kernel gives them: a slot's first fill would
         * otherwise fault in ~450 4 KB pages of a 1.8 MB expert, each fault
         * costly in a VM; advisory, so a refusal changes nothing */
        if (!c->be) madvise(mem, L->mem_bytes, MADV_HUGEPAGE);
        if (!(L->slots = calloc((size_t)(L->n_slots + c->n_stage), sizeof *L->slots)) || !(L->where = malloc(sizeof(int) * (size_t)c->E)) ||
            !(L->score = calloc((size_t)c->E, sizeof *L->score)) || !(L->stamp = calloc((size_t)c->E, sizeof *L->stamp)) ||
            !(L->guess = calloc((size_t)c->E, 1)) || !(L->need = malloc(sizeof(int) * (size_t)c->E)) ||
            !(L->bslot = malloc(sizeof(int) * (size_t)c->E)) || !(L->bstate = malloc((size_t)c->E)))
            goto oom;
        for (int e = 0; e < c->E; e++) L->where[e] = -1;
        for (int s = 0; s < L->n_slots + c->n_stage; s++) {
            L->slots[s].buf = s < L->n_slots ? L->mem + (size_t)s * sb : NULL;
            L->slots[s].expert = -1;
            if (c->be && s < L->n_slots && !(L->slots[s].fence = be_fence_new(c->be))) goto dev_fail;
        }
        c->qcap += (L->n_slots + c->n_stage) * XS_MAX_SPANS; /* every slot loading, each read a job */
        if (sb > c->slot_max) c->slot_max = (size_t)sb;
    }
    if (c->n_stage) {
        size_t one = c->slot_max;
        c->stage_mem_bytes = one * (size_t)c->n_stage;
        void *mem = c->be ? be_alloc(c->be, c->stage_mem_bytes)
                          : mmap(NULL, c->stage_mem_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
        if (c->be ? !mem : mem == MAP_FAILED) {
            c->stage_mem_bytes = 0;
            st = moe_err(MOE_ENOMEM, "expert cache: cannot allocate %d staging buffers%s%s", c->n_stage, c->be ? ": " : "",
                         c->be ? moe_errmsg() : "");
            goto fail;
        }
        c->stage_mem = mem;
        if (!(c->free_buf = malloc(sizeof *c->free_buf * (size_t)c->n_stage)) ||
            !(c->free_fence = calloc((size_t)c->n_stage, sizeof *c->free_fence)))
            goto oom;
        for (int i = 0; i < c->n_stage; i++) {
            if (c->be && !(c->free_fence[c->n_free] = be_fence_new(c->be))) goto dev_fail;
            c->free_buf[c->n_free++] = c->stage_mem + (size_t)i * one;
        }
    }
    if (!(c->q = malloc(sizeof *c->q * (size_t)(c->qcap ? c->qcap : 1)))) goto oom;
    if (!(c->io = calloc((size_t)p->io_threads, sizeof *c->io)) || !(c->iot = calloc((size_t)p->io_threads, sizeof *c->iot)))
        goto oom;
    if (c->be) {
        if (!(c->mv = calloc((size_t)p->io_threads, sizeof *c->mv)) || !(c->bounce = calloc((size_t)p->io_threads, sizeof *c->bounce)) ||
            !(c->host_off = calloc((size_t)c->n_layers, sizeof *c->host_off)))
            goto oom;
        for (int i = 0; i < p->io_threads; i++)
            if (!(c->mv[i] = be_mover_new(c->be)) || (!p->host_tier && !(c->bounce[i] = be_host_alloc(c->be, c->slot_max))))
                goto dev_fail;
        if ((st = be_sync(c->be))) goto fail; /* the slots' zeroing is done before any upload lands */
    }
    for (int i = 0; i < p->io_threads; i++) {
        c->iot[i] = (io_thread){c, i};
        if (pthread_create(&c->io[i], NULL, io_main, &c->iot[i])) {
            st = moe_err(MOE_ENOMEM, "expert cache: cannot start I/O thread %d", i);
            goto fail;
        }
        c->n_io = i + 1;
    }
    *out = c;
    return MOE_OK;
oom:
    st = moe_err(MOE_ENOMEM, "out of memory");
    goto fail;
dev_fail:
    st = moe_err(MOE_ENOMEM, "expert cache: %s", moe_errmsg());
fail:
    xc_free(c);
    return st;
}

void xc_free(xcache *c) {
    if (!c) return;
    pthread_mutex_lock(&c->mu);
    c->stop = 1;
    pthread_cond_broadcast(&c->cv_work);
    pthread_mutex_unlock(&c->mu);
    for (int i = 0; i < c->n_io; i++) pthread_join(c->io[i], NULL);
    for (int l = 0; c->L && l < c->n_layers; l++) {
        xlayer *L = &c->L[l];
        if (L->mem && c->be) be_free(c->be, L->mem);
        else if (L->mem) munmap(L->mem, L->mem_bytes);
        for (int s = 0; c->be && L->slots && s < L->n_slots + c->n_stage; s++) be_fence_free(c->be, L->slots[s].fence);
        free(L->slots);
        free(L->where);
        free(L->score);
        free(L->stamp);
        free(L->guess);
        free(L->need);
        free(L->bslot);
        free(L->bstate);
    }
    if (c->stage_mem && c->be) be_free(c->be, c->stage_mem);
    else if (c->stage_mem) munmap(c->stage_mem, c->stage_mem_bytes);
    for (int i = 0; c->be && c->free_fence && i < c->n_free; i++) be_fence_free(c->be, c->free_fence[i]);
    free(c->free_fence);
    free(c->free_buf);
    for (int i = 0; c->be && c->mv && i < c->p.io_threads; i++) {
        be_mover_free(c->be, c->mv[i]);
        if (c->bounce) be_host_free(c->be, c->bounce[i]);
    }
    free(c->mv);
    free(c->bounce);
    if (c->be) be_host_free(c->be, c->host);
    free(c->host_off);
    free(c->iot);
    free(c->L);
    free(c->q);
    free(c->io);
    pthread_cond_destroy(&c->cv_done);
    pthread_cond_destroy(&c->cv_work);
    pthread_mutex_destroy(&c->mu);
    free(c);
}
