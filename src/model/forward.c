/* forward.c — the forward pass, written once for every family.
 *
 * One batch of n tokens at positions pos..pos+n-1:
 *   x = embed(tokens)                                   [n x H]
 *   per layer:  h = rmsnorm(x)
 *               q,k,v = h.Wq/Wk/Wv (+bias) -> [clip] -> [q/k norm] -> RoPE
 *               k,v -> cache slots (pos % cap);  att = softmax(q.K^T/sqrt(hd)).V
 *               x += att.Wo (+bias)
 *               h = rmsnorm(x);  x += ffn(h)   (dense SwiGLU, or MoE: router ->
 *               top-k -> each chosen expert once over its tokens -> weighted sum
 *               [+ sigmoid-gated shared expert])
 *   logits = rmsnorm(x).lm_head^T                        [n x V] or last [V]
 * Family differences are the switches in model_config / family.
 */
#include <math.h>
#include <string.h>

#include "../base/err.h"
#include "../engine/seq.h"
#include "../experts/xcache.h"
#include "model.h"

/* out[n x rows(down)] = down( silu(gate x) * up x ), gate and up in one fused pass */
static void swiglu_mlp(moe_seq *s, const expert *e, const float *x, int64_t n, float *out) {
    backend *be = s->m->be;
    be_matmul_swiglu(be, &e->gate, &e->up, x, n, s->ga);
    be_matmul(be, &e->down, s->ga, n, NULL, out);
}

/* The k largest of p[E] into sel[K], largest first, ties to the lower index
 * (K is small: selection by repeated scan). */
static void top_k(const float *p, int E, int K, int *sel) {
    for (int k = 0; k < K; k++) {
        int best = -1;
        for (int e = 0; e < E; e++) {
            int taken = 0;
            for (int j = 0; j < k && !taken; j++) taken = sel[j] == e;
            if (!taken && (best < 0 || p[e] > p[best])) best = e;
        }
        sel[k] = best;
    }
}

/* Router probabilities -> top-k experts and weights per token; counts[E]
 * (the layer's routing counts) += each choice. */
static void route(moe_seq *s, int64_t n, int64_t *counts) {
    const model_config *mc = &s->m->cfg;
    int E = mc->pub.n_experts, K = mc->pub.n_experts_per_tok;
    for (int64_t t = 0; t < n; t++) {
        float *p = s->router + t * E;
        float mx = p[0], sum = 0;
        for (int e = 1; e < E; e++) mx = p[e] > mx ? p[e] : mx;
        for (int e = 0; e < E; e++) sum += (p[e] = expf(p[e] - mx));
        for (int e = 0; e < E; e++) p[e] /= sum;
        int *sel = s->sel + t * K;
        float *w = s->selw + t * K, wsum = 0;
        top_k(p, E, K, sel);
        for (int k = 0; k < K; k++) {
            counts[sel[k]]++;
            wsum += (w[k] = p[sel[k]]);
        }
        if (mc->norm_topk_prob)
            for (int k = 0; k < K; k++) w[k] /= wsum;
    }
}

/* Groups the batch's choices by expert: s->need[0..returned) the distinct
 * experts in index order, expert need[i]'s choices at
 * s->grp_tk[grp_off[i] .. grp_off[i+1]) as t*K + k; s->eidx[e] = i or -1. */
static int group(moe_seq *s, int64_t n) {
    int E = s->m->cfg.pub.n_experts, K = s->m->cfg.pub.n_experts_per_tok;
    int *cnt = s->eidx, n_need = 0;
    memset(cnt, 0, sizeof *cnt * (size_t)E);
    for (int64_t i = 0; i < n * K; i++) cnt[s->sel[i]]++;
    int64_t off = 0;
    for (int e = 0; e < E; e++) {
        int c = cnt[e];
        cnt[e] = -1;
        if (!c) continue;
        s->need[n_need] = e;
        s->grp_off[n_need] = off;
        cnt[e] = n_need++;
        off += c;
    }
    s->grp_off[n_need] = off;
    for (int i = 0; i < n_need; i++) s->grp_cur[i] = s->grp_off[i];
    for (int64_t i = 0; i < n * K; i++) s->grp_tk[s->grp_cur[cnt[s->sel[i]]]++] = i;
    return n_need;
}

/* Runs expert need[i] (weights w) over its tokens: yk[t*K + k] = expert(h[t]). */
static void run_expert(moe_seq *s, const expert *w, int i, const float *h) {
    int64_t H = s->m->cfg.pub.hidden_size, K = s->m->cfg.pub.n_experts_per_tok;
    int64_t a = s->grp_off[i], m = s->grp_off[i + 1] - a;
    for (int64_t j = 0; j < m; j++)
        memcpy(s->xe + j * H, h + s->grp_tk[a + j] / K * H, sizeof(float) * (size_t)H);
    swiglu_mlp(s, w, s->xe, m, s->ye);
    for (int64_t j = 0; j < m; j++) memcpy(s->yk + s->grp_tk[a + j] * H, s->ye + j * H, sizeof(float) * (size_t)H);
}

/* Offloading: guesses what the next MoE layer after l will need from the
 * current residual stream (its own norm and router applied to it now) and
 * has the cache start reading those experts while layer l computes. */
static void prefetch_next(moe_seq *s, int l, int64_t n) {
    const moe_model *m = s->m;
    const moe_config *c = &m->cfg.pub;
    int ln = l + 1;
    while (ln < c->n_layers && !m->layers[ln].is_moe) ln++;
    if (ln >= c->n_layers) return;
    const layer *L = &m->layers[ln];
    int E = c->n_experts, K = c->n_experts_per_tok, sel[64], *votes = s->grp_cur, n_want = 0;
    be_rmsnorm(m->be, s->x, L->ffn_norm, n, c->hidden_size, c->rms_norm_eps, s->xe);
    be_matmul(m->be, &L->router, s->xe, n, NULL, s->router); /* softmax keeps the order: top-k of the logits */
    memset(votes, 0, sizeof *votes * (size_t)E);
    for (int64_t t = 0; t < n; t++) {
        top_k(s->router + t * E, E, K, sel);
        for (int k = 0; k < K; k++)
            if (!votes[sel[k]]++) s->need[n_want++] = sel[k];
    }
    for (int i = 1; i < n_want; i++) /* most wanted first (stable: first seen first among equals) */
        for (int j = i; j > 0 && votes[s->need[j]] > votes[s->need[j - 1]]; j--) {
            int t = s->need[j];
            s->need[j] = s->need[j - 1];
            s->need[j - 1] = t;
        }
    xc_prefetch(m->xc, ln, s->need, n_want);
}

/* The experts of layer l over its batch: from the model's own mapping, or
 * through the expert cache (which may skip some). Marks skipped choices in
 * s->dropped[t*K + k]. */
static moe_status run_experts(moe_seq *s, int l, int64_t n, const float *h) {
    const moe_model *m = s->m;
    int K = m->cfg.pub.n_experts_per_tok, n_need = group(s, n);
    for (int64_t i = 0; i < n * K; i++) s->dropped[i] = 0;
    if (!m->xc) {
        for (int i = 0; i < n_need; i++) run_expert(s, &m->layers[l].experts[s->need[i]], i, h);
        return MOE_OK;
    }
    moe_status st = xc_begin(m->xc, l, s->need, n_need, s->skipped);
    if (st) return st;
    for (int i = 0; i < n_need; i++)
        if (s->skipped[i])
            for (int64_t j = s->grp_off[i]; j < s->grp_off[i + 1]; j++) s->dropped[s->grp_tk[j]] = 1;
    if (m->prefetch) prefetch_next(s, l, n); /* after this layer's misses, so its reads go first */
    for (;;) {
        int i;
        const expert *w;
        if ((st = xc_next(m->xc, l, &i, &w))) return st;
        if (i < 0) return MOE_OK;
        run_expert(s, w, i, h);
        xc_release(m->xc, l, i);
    }
}

static moe_status moe_ffn(moe_seq *s, int l, const float *h, int64_t n, float *out) {
    const moe_config *c = &s->m->cfg.pub;
    const layer *L = &s->m->layers[l];
    backend *be = s->m->be;
    int64_t H = c->hidden_size;
    int K = c->n_experts_per_tok;
    be_matmul(be, &L->router, h, n, NULL, s->router);
    route(s, n, s->m->route_counts + (size_t)l * (size_t)c->n_experts);
    moe_status st = run_experts(s, l, n, h);
    if (st) return st;
    /* out[t] = sum over k, in order, of w[t,k] * yk[t,k]: the same sums whatever
     * order the experts ran in. Dropped choices (skip policy) give their weight
     * to the others where the family renormalises. */
    for (int64_t t = 0; t < n; t++) {
        float *o = out + t * H, scale = 1, kept = 0;
        int dropped = 0, first = 1;
        for (int k = 0; k < K; k++) {
            dropped += s->dropped[t * K + k];
            kept += s->dropped[t * K + k] ? 0 : s->selw[t * K + k];
        }
        if (dropped && s->m->cfg.norm_topk_prob && kept > 0) scale = 1 / kept;
        for (int k = 0; k < K; k++) {
            int64_t tk = t * K + k;
            if (s->dropped[tk]) continue;
            float w = s->selw[tk] * scale, *y = s->yk + tk * H;
            if (first) for (int64_t j = 0; j < H; j++) o[j] = w * y[j];
            else for (int64_t j = 0; j < H; j++) o[j] += w * y[j];
            first = 0;
        }
        if (first) memset(o, 0, sizeof(float) * (size_t)H); /* every choice dropped */
    }
    if (c->shared_expert_intermediate_size > 0) {
        swiglu_mlp(s, &L->shared, h, n, s->ye);
        float *g = s->ew; /* [n] gate logits */
        be_matmul(be, &L->shared_gate, h, n, NULL, g);
        for (int64_t t = 0; t < n; t++) {
            float sg = 1.0f / (1.0f + expf(-g[t]));
            float *o = out + t * H, *y = s->ye + t * H;
            for (int64_t j = 0; j < H; j++) o[j] += sg * y[j];
        }
    }
    return MOE_OK;
}

static void clip(float *x, int64_t n, float c) {
    for (int64_t i = 0; i < n; i++) x[i] = x[i] > c ? c : x[i] < -c ? -c : x[i];
}

/* s's buffers hold the n rows; row t belongs to sequence owner[t] (all to s
 * when owner is NULL), whose cache it is stored in and attends over. */
static void attention_block(moe_seq *s, moe_seq *const *owner, int l, int64_t n) {
    const moe_model *m = s->m;
    const model_config *mc = &m->cfg;
    const moe_config *c = &mc->pub;
    const layer *L = &m->layers[l];
    backend *be = m->be;
    int hd = c->head_dim, nh = c->n_heads, nkv = c->n_kv_heads;
    int64_t H = c->hidden_size, qd = (int64_t)nh * hd, kvd = (int64_t)nkv * hd;

    be_rmsnorm(be, s->x, L->attn_norm, n, H, c->rms_norm_eps, s->h);
    be_matmul_n(be, 3, (const wtensor *[]){&L->wq, &L->wk, &L->wv}, s->h, n, (const float *[]){L->bq, L->bk, L->bv},
                (float *[]){s->q, s->k, s->v});
    if (mc->fam->qk_norm == QK_NORM_FULL) {
        be_rmsnorm(be, s->q, L->q_norm, n, qd, c->rms_norm_eps, s->q);
        be_rmsnorm(be, s->k, L->k_norm, n, kvd, c->rms_norm_eps, s->k);
    } else if (mc->fam->qk_norm == QK_NORM_HEAD) {
        be_rmsnorm(be, s->q, L->q_norm, n * nh, hd, c->rms_norm_eps, s->q);
        be_rmsnorm(be, s->k, L->k_norm, n * nkv, hd, c->rms_norm_eps, s->k);
    }
    if (mc->clip_qkv > 0) {
        clip(s->q, n * qd, mc->clip_qkv);
        clip(s->k, n * kvd, mc->clip_qkv);
        clip(s->v, n * kvd, mc->clip_qkv);
    }
    be_rope(be, s->q, n, nh, hd, s->positions, m->inv_freq);
    be_rope(be, s->k, n, nkv, hd, s->positions, m->inv_freq);
    /* each run of rows of one sequence attends over that sequence's own cache */
    for (int64_t r0 = 0, r1; r0 < n; r0 = r1) {
        moe_seq *o = owner ? owner[r0] : s;
        for (r1 = r0 + 1; r1 < n && (owner ? owner[r1] : s) == o;) r1++;
        const kv_cache *kv = &o->cache[l].kv; /* float32 or quantized: the backend stores and reads either */
        be_kv_store(be, kv, s->k + r0 * kvd, s->v + r0 * kvd, r1 - r0, s->positions + r0);
        be_attention(be, s->q + r0 * qd, r1 - r0, s->positions[r0], kv, nh, L->window, 1.0f / sqrtf((float)hd),
                     o->att_scratch, s->att + r0 * qd);
    }
    be_matmul(be, &L->wo, s->att, n, L->bo, s->h);
    for (int64_t i = 0; i < n * H; i++) s->x[i] += s->h[i];
}

/* The layers over n rows in s's buffers (s->positions set), row t of
 * sequence owner[t] (NULL: all of s): the matmuls run on all rows at once,
 * attention per sequence. */
static moe_status layers(moe_seq *s, moe_seq *const *owner, const int32_t *tokens, int64_t n) {
    const moe_model *m = s->m;
    const moe_config *c = &m->cfg.pub;
    backend *be = m->be;
    int64_t H = c->hidden_size;
    for (int64_t t = 0; t < n; t++) be_get_row(&m->embed, tokens[t], s->x + t * H);
    for (int l = 0; l < c->n_layers; l++) {
        const layer *L = &m->layers[l];
        attention_block(s, owner, l, n);
        be_rmsnorm(be, s->x, L->ffn_norm, n, H, c->rms_norm_eps, s->h);
        if (L->is_moe) {
            moe_status st = moe_ffn(s, l, s->h, n, s->moe_acc);
            if (st) return st;
            for (int64_t i = 0; i < n * H; i++) s->x[i] += s->moe_acc[i];
        } else {
            swiglu_mlp(s, &L->mlp, s->h, n, s->h);
            for (int64_t i = 0; i < n * H; i++) s->x[i] += s->h[i];
        }
    }
    return MOE_OK;
}

static moe_status forward(moe_seq *s, const int32_t *tokens, int64_t n, float *logits, int all) {
    const moe_model *m = s->m;
    const moe_config *c = &m->cfg.pub;
    backend *be = m->be;
    int64_t H = c->hidden_size;
    for (int64_t t = 0; t < n; t++) s->positions[t] = s->pos + t;
    moe_status st = layers(s, NULL, tokens, n);
    if (st) return st;
    s->pos += n;
    if (!logits) return MOE_OK;
    const float *xs = all ? s->x : s->x + (n - 1) * H;
    int64_t rows = all ? n : 1;
    be_rmsnorm(be, xs, m->final_norm, rows, H, c->rms_norm_eps, s->h);
    be_matmul(be, &m->lm_head, s->h, rows, NULL, logits);
    return MOE_OK;
}

moe_status model_forward(moe_seq *s, const int32_t *tokens, int64_t n, float *logits, int all) {
    if (n < 1 || n > s->n_batch) return moe_err(MOE_EINVAL, "forward: batch of %lld tokens (1..%d)", (long long)n, s->n_batch);
    pthread_mutex_lock(&s->m->lock);
    moe_status st = forward(s, tokens, n, logits, all);
    pthread_mutex_unlock(&s->m->lock);
    return st;
}

moe_status model_forward_batch(moe_seq *const *seqs, const int32_t *tokens, int64_t n, float *logits) {
    moe_seq *s = seqs[0]; /* its buffers hold the stacked rows */
    if (n < 1 || n > s->n_batch) return moe_err(MOE_EINVAL, "forward: batch of %lld sequences (1..%d)", (long long)n, s->n_batch);
    const moe_model *m = s->m;
    const moe_config *c = &m->cfg.pub;
    pthread_mutex_lock(&s->m->lock);
    for (int64_t t = 0; t < n; t++) s->positions[t] = seqs[t]->pos;
    moe_status st = layers(s, seqs, tokens, n);
    if (st) {
        pthread_mutex_unlock(&s->m->lock);
        return st;
    }
    for (int64_t t = 0; t < n; t++) seqs[t]->pos++;
    be_rmsnorm(m->be, s->x, m->final_norm, n, c->hidden_size, c->rms_norm_eps, s->h);
    be_matmul(m->be, &m->lm_head, s->h, n, NULL, logits);
    pthread_mutex_unlock(&s->m->lock);
    return MOE_OK;
}
