/* seq.c — sequences: allocation of caches and buffers, moe_seq_eval which
 * feeds tokens through the forward pass in batches, and the generation
 * iterator. */
#include "seq.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../base/err.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void moe_seq_params_defaults(moe_seq_params *p) {
    memset(p, 0, sizeof *p);
}

/* Slots layer l's cache needs: under a sliding window, the window plus one
 * batch (a batch's first query still sees window-1 older keys). */
static int64_t layer_cap(const moe_model *m, int l, int n_ctx, int n_batch) {
    if (m->cfg.layer_linear[l]) return 0; /* a recurrent state instead */
    int w = m->cfg.layer_window[l];
    int64_t cap = n_ctx;
    if (w > 0 && (int64_t)w + n_batch - 1 < cap) cap = (int64_t)w + n_batch - 1;
    return cap;
}

static void resolve(const moe_model *m, const moe_seq_params *p, int *n_ctx, int *n_batch) {
    *n_ctx = p && p->n_ctx > 0 ? p->n_ctx : m->cfg.pub.max_position_embeddings;
    if ((!p || p->n_ctx <= 0) && *n_ctx > 4096) *n_ctx = 4096;
    *n_batch = p && p->n_batch > 0 ? p->n_batch : 256;
    if (*n_batch > *n_ctx) *n_batch = *n_ctx;
}

/* The cache's storage bits for p->kv_bits: 32, 8 or 4; 0 (with a message)
 * when unsupported. */
static int kv_bits_of(const moe_seq_params *p) {
    int b = p ? p->kv_bits : 0;
    if (b == 0 || b == 32) return 32;
    if (b == 8 || b == 4) return b;
    moe_err(MOE_EINVAL, "kv_bits %d is not supported: 0 or 32 (float32), 8 or 4", b);
    return 0;
}

/* Layer l's cache shape (arrays not yet allocated). */
static kv_cache kv_shape(const moe_model *m, int l, int n_ctx, int n_batch, int bits) {
    const moe_config *c = &m->cfg.pub;
    kv_cache kv = {.bits = bits, .group = bits == 32 ? 0 : kv_group(c->head_dim), .n_kv = c->n_kv_heads,
                   .hd = c->head_dim, .cap = layer_cap(m, l, n_ctx, n_batch)};
    return kv;
}

/* Bytes of one cache slot, keys and values: packed values + scales + biases. */
static int64_t kv_slot_bytes(const kv_cache *kv) {
    return 2 * ((int64_t)kv_row_bytes(kv) + 2 * (int64_t)kv_sb_row_floats(kv) * (int64_t)sizeof(float));
}

/* Floats of one DeltaNet layer's recurrent state: conv inputs, then the delta rule's state. */
static size_t conv_floats(const model_config *c) {
    return (size_t)(c->lin_conv - 1) * (size_t)(2 * c->lin_nk * c->lin_dk + c->lin_nv * c->lin_dv);
}
static size_t ssm_floats(const model_config *c) { return (size_t)c->lin_nv * (size_t)c->lin_dk * (size_t)c->lin_dv; }

int64_t moe_seq_kv_bytes(const moe_model *m, const moe_seq_params *p) {
    int nc, nb, bits = kv_bits_of(p);
    if (!bits) return -1;
    resolve(m, p, &nc, &nb);
    int64_t total = (int64_t)(m->cfg.pub.n_linear_layers * (conv_floats(&m->cfg) + ssm_floats(&m->cfg)) * sizeof(float));
    for (int l = 0; l < m->cfg.pub.n_layers; l++) {
        kv_cache kv = kv_shape(m, l, nc, nb, bits);
        total += kv.cap * kv_slot_bytes(&kv);
    }
    return total;
}

int64_t moe_model_kv_bytes(const moe_model *m, int n_ctx) {
    moe_seq_params p;
    moe_seq_params_defaults(&p);
    p.n_ctx = n_ctx;
    return moe_seq_kv_bytes(m, &p);
}

#define ALLOC(ptr, count)                                       \
    do {                                                        \
        size_t cnt_ = (size_t)(count);                          \
        (ptr) = calloc(cnt_ ? cnt_ : 1, sizeof *(ptr));         \
        if (!(ptr)) goto oom;                                   \
    } while (0)
/* The same in the backend's memory (zeroed). */
#define BALLOC(ptr, count)                                      \
    do {                                                        \
        (ptr) = be_alloc(be, (size_t)(count) * sizeof *(ptr));  \
        if (!(ptr)) goto oom_be;                                \
    } while (0)

moe_status moe_seq_new(moe_model *m, const moe_seq_params *p, moe_seq **out) {
    *out = NULL;
    if (!m) return moe_err(MOE_EINVAL, "moe_seq_new: no model");
    const moe_config *c = &m->cfg.pub;
    int bits = kv_bits_of(p);
    if (!bits) return MOE_EINVAL;
    moe_seq *s = calloc(1, sizeof *s);
    if (!s) return moe_err(MOE_ENOMEM, "out of memory");
    backend *be = m->be;
    s->m = m;
    s->kv_bits = bits;
    resolve(m, p, &s->n_ctx, &s->n_batch);
    int64_t nb = s->n_batch, H = c->hidden_size, qd = (int64_t)c->n_heads * c->head_dim,
            kvd = (int64_t)c->n_kv_heads * c->head_dim;
    int64_t inter = c->intermediate_size;
    if (c->moe_intermediate_size > inter) inter = c->moe_intermediate_size;
    if (c->shared_expert_intermediate_size > inter) inter = c->shared_expert_intermediate_size;
    int64_t maxcap = 1;
    ALLOC(s->cache, c->n_layers);
    for (int l = 0; l < c->n_layers; l++) {
        kv_cache *kv = &s->cache[l].kv;
        *kv = kv_shape(m, l, s->n_ctx, s->n_batch, bits);
        if (kv->cap > maxcap) maxcap = kv->cap;
        unsigned char *kq, *vq; /* [cap x row bytes] */
        BALLOC(kq, kv->cap * (int64_t)kv_row_bytes(kv));
        kv->k = kq;
        BALLOC(vq, kv->cap * (int64_t)kv_row_bytes(kv));
        kv->v = vq;
        if (bits != 32) { /* [cap x n_kv*hd/group] each */
            int64_t nsb = kv->cap * (int64_t)kv_sb_row_floats(kv);
            BALLOC(kv->ks, nsb);
            BALLOC(kv->kb, nsb);
            BALLOC(kv->vs, nsb);
            BALLOC(kv->vb, nsb);
        }
    }
    ALLOC(s->history, s->n_ctx);
    const model_config *mc = &m->cfg;
    if (c->n_linear_layers > 0) {
        int64_t kd = (int64_t)mc->lin_nk * mc->lin_dk, vd = (int64_t)mc->lin_nv * mc->lin_dv, nv = mc->lin_nv;
        s->rec_floats = (size_t)c->n_linear_layers * (conv_floats(mc) + ssm_floats(mc));
        BALLOC(s->rec, s->rec_floats);
        float *r = s->rec;
        for (int l = 0; l < c->n_layers; l++)
            if (mc->layer_linear[l]) {
                s->cache[l].conv = r;
                s->cache[l].ssm = r + conv_floats(mc);
                r += conv_floats(mc) + ssm_floats(mc);
            }
        s->max_snaps = p && p->n_snapshots > 0 ? p->n_snapshots : 2;
        ALLOC(s->snaps, s->max_snaps);
        BALLOC(s->lin_in, nb * (2 * kd + 2 * vd));
        BALLOC(s->lin_ba, nb * 2 * nv);
        BALLOC(s->lin_mix, nb * (2 * kd + vd));
        BALLOC(s->lin_conv, nb * (2 * kd + vd));
        BALLOC(s->lin_z, nb * vd);
        BALLOC(s->lin_out, nb * vd);
        BALLOC(s->lin_g, nb * nv);
        BALLOC(s->lin_beta, nb * nv);
        BALLOC(s->lin_scratch, (int64_t)backend_threads(m->be) * (int64_t)be_delta_scratch(m->delta_chunk, mc->lin_dk, mc->lin_dv));
    }
    if (mc->fam->attn_gate) {
        BALLOC(s->qg, nb * 2 * qd);
        BALLOC(s->gate, nb * qd);
    }
    BALLOC(s->x, nb * H);
    BALLOC(s->h, nb * H);
    BALLOC(s->q, nb * qd);
    BALLOC(s->att, nb * qd);
    BALLOC(s->k, nb * kvd);
    BALLOC(s->v, nb * kvd);
    BALLOC(s->ga, nb * inter);
    ALLOC(s->positions, nb);
    BALLOC(s->pos_be, nb);
    BALLOC(s->tok_be, nb);
    ALLOC(s->logits, c->vocab_size);
    if (!backend_host_memory(be)) BALLOC(s->lg, nb * c->vocab_size);
    BALLOC(s->att_scratch, (int64_t)backend_threads(m->be) * (maxcap + c->head_dim));
    if (c->n_experts > 0) {
        BALLOC(s->moe_acc, nb * H);
        BALLOC(s->xe, nb * H);
        BALLOC(s->ye, nb * H);
        BALLOC(s->router, nb * c->n_experts);
        if (backend_host_memory(be)) s->router_h = s->router;
        else ALLOC(s->router_h, nb * c->n_experts);
        ALLOC(s->sel, nb * c->n_experts_per_tok);
        ALLOC(s->selw, nb * c->n_experts_per_tok);
        ALLOC(s->usew, nb * c->n_experts_per_tok);
        ALLOC(s->use, nb * c->n_experts_per_tok);
        BALLOC(s->usew_be, nb * c->n_experts_per_tok);
        BALLOC(s->use_be, nb * c->n_experts_per_tok);
        BALLOC(s->sel_be, nb * c->n_experts_per_tok);
        BALLOC(s->selw_be, nb * c->n_experts_per_tok);
        int64_t E = c->n_experts, K = c->n_experts_per_tok;
        BALLOC(s->ew, nb);
        BALLOC(s->yk, nb * K * H);
        s->moe_mid_ld = c->moe_intermediate_size > c->shared_expert_intermediate_size ? c->moe_intermediate_size
                                                                                     : c->shared_expert_intermediate_size;
        BALLOC(s->moe_mid, (K + 1) * s->moe_mid_ld);
        if (backend_groups(be) && nb > 1) {
            BALLOC(s->xg, nb * K * H);
            BALLOC(s->yg, nb * K * H);
            BALLOC(s->gmid, nb * K * c->moe_intermediate_size);
            ALLOC(s->grp_w, 3 * E);
        }
        ALLOC(s->need, E);
        ALLOC(s->eidx, E);
        ALLOC(s->grp_off, E + 1);
        ALLOC(s->grp_cur, E);
        ALLOC(s->grp_tk, nb * K);
        ALLOC(s->skipped, E);
        ALLOC(s->dropped, nb * K);
    }
    *out = s;
    return MOE_OK;
oom:
    moe_seq_free(s);
    return moe_err(MOE_ENOMEM, "out of memory allocating a sequence of %d tokens", s ? s->n_ctx : 0);
oom_be: { /* the backend said what it lacked (a GPU's free memory): keep that */
    char what[64];
    snprintf(what, sizeof what, "a sequence of %d tokens", s->n_ctx);
    moe_seq_free(s);
    return moe_err_prefix(MOE_ENOMEM, what);
}
}

void moe_seq_free(moe_seq *s) {
    if (!s) return;
    backend *be = s->m->be;
    be_graph_free(be, s->graph); /* before the buffers it reads */
    if (s->cache)
        for (int l = 0; l < s->m->cfg.pub.n_layers; l++) {
            kv_cache *kv = &s->cache[l].kv;
            void *arrays[] = {kv->k, kv->v, kv->ks, kv->kb, kv->vs, kv->vb};
            for (size_t i = 0; i < sizeof arrays / sizeof *arrays; i++) be_free(be, arrays[i]);
        }
    free(s->cache);
    for (int i = 0; i < s->n_snaps; i++) {
        be_free(be, s->snaps[i].rec);
        free(s->snaps[i].logits);
    }
    void *dev[] = {s->rec, s->qg, s->gate, s->lin_in, s->lin_ba, s->lin_mix, s->lin_conv, s->lin_z, s->lin_out,
                   s->lin_g, s->lin_beta, s->lin_scratch, s->x, s->h, s->q, s->att, s->k, s->v, s->ga, s->moe_acc,
                   s->xe, s->ye, s->router, s->ew, s->yk, s->moe_mid, s->att_scratch, s->lg, s->pos_be, s->tok_be, s->usew_be, s->use_be, s->sel_be, s->selw_be,
                   s->xg, s->yg, s->gmid};
    for (size_t i = 0; i < sizeof dev / sizeof *dev; i++) be_free(be, dev[i]);
    if (s->router_h != s->router) free(s->router_h);
    void *host[] = {s->snaps, s->history, s->sel, s->selw, s->usew, s->use, s->need, s->eidx, s->grp_off, s->grp_cur,
                    s->grp_tk, s->skipped, s->dropped, (void *)s->grp_w, s->positions, s->logits, s->batch_logits, s->batch_tokens};
    for (size_t i = 0; i < sizeof host / sizeof *host; i++) free(host[i]);
    free(s);
}

int64_t moe_seq_pos(const moe_seq *s) { return s->pos + (s->has_pending ? 1 : 0); }

int moe_seq_has_logits(const moe_seq *s) { return s->has_logits && !s->has_pending; }

const int32_t *moe_seq_tokens(const moe_seq *s, size_t *n) {
    *n = (size_t)s->pos;
    return s->history;
}

/* The snapshot at exactly pos, or NULL. */
static seq_snap *snap_at(moe_seq *s, int64_t pos) {
    for (int i = 0; i < s->n_snaps; i++)
        if (s->snaps[i].pos == pos) return &s->snaps[i];
    return NULL;
}

/* The latest snapshot at or before pos, or NULL. */
static const seq_snap *snap_latest(const moe_seq *s, int64_t pos) {
    const seq_snap *best = NULL;
    for (int i = 0; i < s->n_snaps; i++)
        if (s->snaps[i].pos <= pos && (!best || s->snaps[i].pos > best->pos)) best = &s->snaps[i];
    return best;
}

/* Puts the recurrent state of sn back (NULL: the empty state of position 0),
 * and its logits into s->logits when it kept them; returns whether it did. */
static int snap_restore(moe_seq *s, const seq_snap *sn) {
    backend *be = s->m->be;
    if (!sn) {
        be_zero(be, s->rec, s->rec_floats * sizeof *s->rec);
        return 0;
    }
    be_copy(be, s->rec, sn->rec, s->rec_floats * sizeof *s->rec);
    if (sn->has_logits) memcpy(s->logits, sn->logits, (size_t)s->m->cfg.pub.vocab_size * sizeof *s->logits);
    return sn->has_logits;
}

/* Drops the snapshots past pos: their states belong to tokens being replaced. */
static void snaps_drop_after(moe_seq *s, int64_t pos) {
    int k = 0;
    for (int i = 0; i < s->n_snaps; i++) {
        if (s->snaps[i].pos <= pos) {
            s->snaps[k++] = s->snaps[i];
        } else {
            be_free(s->m->be, s->snaps[i].rec);
            free(s->snaps[i].logits);
        }
    }
    s->n_snaps = k;
}

moe_status moe_seq_snapshot(moe_seq *s) {
    if (!s) return moe_err(MOE_EINVAL, "moe_seq_snapshot: NULL sequence");
    if (!s->rec || snap_at(s, s->pos)) return MOE_OK;
    seq_snap *sn;
    if (s->n_snaps == s->max_snaps) { /* reuse the earliest one's memory */
        sn = &s->snaps[0];
        for (int i = 1; i < s->n_snaps; i++)
            if (s->snaps[i].pos < sn->pos) sn = &s->snaps[i];
    } else {
        sn = &s->snaps[s->n_snaps];
        size_t V = (size_t)s->m->cfg.pub.vocab_size;
        sn->rec = be_alloc(s->m->be, s->rec_floats * sizeof *sn->rec);
        sn->logits = malloc(V * sizeof *sn->logits);
        if (!sn->rec || !sn->logits) {
            be_free(s->m->be, sn->rec);
            free(sn->logits);
            return moe_err(MOE_ENOMEM, "out of memory for a saved state of %zu bytes", (s->rec_floats + V) * sizeof(float));
        }
        s->n_snaps++;
    }
    sn->pos = s->pos;
    be_copy(s->m->be, sn->rec, s->rec, s->rec_floats * sizeof *s->rec);
    /* with its logits, going back here needs no token evaluated again to sample the next */
    sn->has_logits = s->has_logits;
    if (s->has_logits) memcpy(sn->logits, s->logits, (size_t)s->m->cfg.pub.vocab_size * sizeof *sn->logits);
    return MOE_OK;
}

/* How far back the sliding-window ring still allows going, from s->pos
 * (INT64_MAX without a window); *window: the window that limits it. */
static int64_t window_reach(const moe_seq *s, int *window) {
    int64_t reach = INT64_MAX;
    for (int l = 0; l < s->m->cfg.pub.n_layers; l++) {
        int w = s->m->cfg.layer_window[l];
        if (w > 0 && s->cache[l].kv.cap - w < reach) {
            reach = s->cache[l].kv.cap - w;
            *window = w;
        }
    }
    return reach;
}

int64_t moe_seq_restore_point(const moe_seq *s, int64_t pos) {
    if (pos > s->pos) pos = s->pos;
    if (pos <= 0) return 0;
    int w;
    if (s->pos - pos > window_reach(s, &w)) return 0;
    if (!s->rec || pos == s->pos) return pos;
    const seq_snap *sn = snap_latest(s, pos);
    return sn ? sn->pos : 0;
}

moe_status moe_seq_truncate(moe_seq *s, int64_t pos) {
    if (pos < 0 || pos > s->pos) return moe_err(MOE_EINVAL, "truncate to %lld: the sequence has %lld tokens", (long long)pos, (long long)s->pos);
    if (s->rec && pos > 0 && pos < s->pos && !snap_at(s, pos))
        return moe_err(MOE_ERANGE, "cannot go back to position %lld: this model's linear-attention layers keep a state, "
                       "saved only where moe_seq_snapshot was called (moe_seq_restore_point finds the nearest)", (long long)pos);
    /* Under a sliding window the ring has overwritten old keys: going back is
     * possible only while the slots of [pos - window + 1, pos) are untouched. */
    int w = 0;
    int64_t reach = window_reach(s, &w);
    if (s->pos - pos > reach)
        return moe_err(MOE_ERANGE, "cannot go back %lld tokens under a sliding window of %d (at most %lld)",
                       (long long)(s->pos - pos), w, (long long)reach);
    int logits = pos == s->pos && s->has_logits; /* still those of position pos - 1 */
    const seq_snap *here = pos == s->pos && !logits ? snap_at(s, pos) : NULL;
    if (here && here->has_logits) { /* sampling used them up; the snapshot at pos kept a copy */
        memcpy(s->logits, here->logits, (size_t)s->m->cfg.pub.vocab_size * sizeof *s->logits);
        logits = 1;
    }
    if (s->rec && pos < s->pos) logits = snap_restore(s, pos ? snap_at(s, pos) : NULL);
    snaps_drop_after(s, pos);
    s->pos = pos;
    s->has_pending = 0;
    s->has_logits = logits;
    return MOE_OK;
}

void moe_seq_reset(moe_seq *s) {
    s->pos = 0;
    s->has_logits = 0;
    s->has_pending = 0;
    if (s->rec) be_zero(s->m->be, s->rec, s->rec_floats * sizeof *s->rec);
    snaps_drop_after(s, -1);
}

/* After a failed forward pass: the KV caches past the start are merely
 * unreferenced, but the recurrent state has moved on, so the sequence goes
 * back to its last snapshot at or before start, or to empty. */
static void recover(moe_seq *s, int64_t start) {
    s->pos = start;
    s->has_logits = 0;
    if (!s->rec) return;
    const seq_snap *best = snap_latest(s, start);
    snap_restore(s, best); /* its logits are not taken: has_logits stays 0, as after any failure */
    s->pos = best ? best->pos : 0;
    snaps_drop_after(s, s->pos);
}

static moe_status eval(moe_seq *s, const int32_t *tokens, size_t n, float *logits, int all, int decode) {
    const moe_config *c = &s->m->cfg.pub;
    if ((int64_t)n > s->n_ctx - s->pos)
        return moe_err(MOE_ERANGE, "context full: %lld + %zu tokens > n_ctx %d", (long long)s->pos, n, s->n_ctx);
    for (size_t i = 0; i < n; i++)
        if (tokens[i] < 0 || tokens[i] >= c->vocab_size)
            return moe_err(MOE_ERANGE, "token id %d at index %zu is outside the vocabulary [0, %d)", tokens[i], i,
                           c->vocab_size);
    double t0 = now_s();
    int64_t start = s->pos;
    for (size_t off = 0; off < n; off += (size_t)s->n_batch) {
        size_t nb = n - off < (size_t)s->n_batch ? n - off : (size_t)s->n_batch;
        int last = off + nb == n;
        float *lg = all && logits ? logits + off * (size_t)c->vocab_size : last ? s->logits : NULL;
        moe_status st = model_forward(s, tokens + off, (int64_t)nb, lg, all && logits);
        if (st) {
            recover(s, start); /* the cache beyond start is garbage now, but unreferenced */
            return st;
        }
    }
    memcpy(s->history + start, tokens, n * sizeof *tokens);
    if (all && logits) memcpy(s->logits, logits + (n - 1) * (size_t)c->vocab_size, sizeof(float) * (size_t)c->vocab_size);
    else if (logits) memcpy(logits, s->logits, sizeof(float) * (size_t)c->vocab_size);
    s->has_logits = 1;
    double dt = now_s() - t0;
    if (!decode) {
        s->stats.prompt_seconds += dt;
        s->stats.prompt_tokens += (int64_t)n;
    } else {
        s->stats.decode_seconds += dt;
        s->stats.decode_tokens += 1;
    }
    return MOE_OK;
}

moe_status moe_seq_eval(moe_seq *s, const int32_t *tokens, size_t n, float *logits, int all) {
    if (!s || (!tokens && n)) return moe_err(MOE_EINVAL, "moe_seq_eval: NULL argument");
    if (s->has_pending) {
        int32_t p = s->pending;
        s->has_pending = 0;
        moe_status st = eval(s, &p, 1, NULL, 0, 1);
        if (st) {
            s->has_pending = 1;
            return st;
        }
    }
    if (n == 0) return MOE_OK;
    return eval(s, tokens, n, logits, all, 0);
}

moe_status moe_seq_eval_pending(moe_seq *const *seqs, size_t n) {
    if (!seqs || n == 0) return moe_err(MOE_EINVAL, "moe_seq_eval_pending: no sequences");
    moe_seq *lead = seqs[0];
    if (!lead) return moe_err(MOE_EINVAL, "moe_seq_eval_pending: sequence 0 is NULL");
    if (n > (size_t)lead->n_batch)
        return moe_err(MOE_EINVAL, "moe_seq_eval_pending: %zu sequences, at most n_batch (%d)", n, lead->n_batch);
    for (size_t i = 0; i < n; i++) {
        const moe_seq *s = seqs[i];
        if (!s || s->m != lead->m) return moe_err(MOE_EINVAL, "moe_seq_eval_pending: sequence %zu is NULL or on another model", i);
        if (!s->has_pending) return moe_err(MOE_EINVAL, "moe_seq_eval_pending: sequence %zu has no pending token", i);
        for (size_t j = 0; j < i; j++)
            if (seqs[j] == s) return moe_err(MOE_EINVAL, "moe_seq_eval_pending: sequence %zu is also sequence %zu", i, j);
        if (s->pos >= s->n_ctx)
            return moe_err(MOE_ERANGE, "context full: sequence %zu holds %lld tokens, n_ctx %d", i, (long long)s->pos, s->n_ctx);
    }
    int64_t V = lead->m->cfg.pub.vocab_size;
    if (lead->batch_rows < (int64_t)n) { /* once per larger batch, not per token */
        float *b = realloc(lead->batch_logits, (size_t)n * (size_t)V * sizeof *b);
        if (b) lead->batch_logits = b;
        int32_t *t = b ? realloc(lead->batch_tokens, n * sizeof *t) : NULL;
        if (t) lead->batch_tokens = t;
        if (!b || !t) return moe_err(MOE_ENOMEM, "out of memory for the logits of %zu sequences", n);
        lead->batch_rows = (int64_t)n;
    }
    int32_t *tokens = lead->batch_tokens;
    for (size_t i = 0; i < n; i++) tokens[i] = seqs[i]->pending;
    double t0 = now_s();
    moe_status st = model_forward_batch(seqs, tokens, (int64_t)n, lead->batch_logits);
    if (st) {
        for (size_t i = 0; i < n; i++)
            if (seqs[i]->rec) { /* the pending token stays pending, unless the state went further back */
                int64_t at = seqs[i]->pos;
                recover(seqs[i], at);
                if (seqs[i]->pos != at) seqs[i]->has_pending = 0;
            }
        return st;
    }
    double dt = now_s() - t0;
    for (size_t i = 0; i < n; i++) {
        moe_seq *s = seqs[i];
        s->history[s->pos - 1] = tokens[i];
        memcpy(s->logits, lead->batch_logits + (int64_t)i * V, sizeof(float) * (size_t)V);
        s->has_pending = 0;
        s->has_logits = 1;
        s->stats.decode_seconds += dt;
        s->stats.decode_tokens += 1;
    }
    return MOE_OK;
}

moe_status moe_generate_next(moe_seq *s, moe_sampler *smp, int32_t *token) {
    if (!s || !smp || !token) return moe_err(MOE_EINVAL, "moe_generate_next: NULL argument");
    moe_status st = moe_seq_eval(s, NULL, 0, NULL, 0); /* runs the pending token, if any */
    if (st) return st;
    if (!s->has_logits) return moe_err(MOE_EINVAL, "moe_generate_next: evaluate a prompt first");
    int32_t t = moe_sampler_sample(smp, s->logits, s->m->cfg.pub.vocab_size, s->history, (size_t)s->pos);
    s->pending = t;
    s->has_pending = 1;
    s->has_logits = 0;
    *token = t;
    return MOE_OK;
}

void moe_seq_get_stats(const moe_seq *s, moe_seq_stats *out) { *out = s->stats; }
