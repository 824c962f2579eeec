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
#include "model.h"

/* out[n x rows(down)] = down( silu(gate x) * up x ), gate and up in one fused pass */
static void swiglu_mlp(moe_seq *s, const expert *e, const float *x, int64_t n, float *out) {
    backend *be = s->m->be;
    be_matmul_swiglu(be, &e->gate, &e->up, x, n, s->ga);
    be_matmul(be, &e->down, s->ga, n, NULL, out);
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
        for (int k = 0; k < K; k++) { /* K is small: selection by repeated scan, ties to the lower index */
            int best = -1;
            for (int e = 0; e < E; e++) {
                int taken = 0;
                for (int j = 0; j < k && !taken; j++) taken = sel[j] == e;
                if (!taken && (best < 0 || p[e] > p[best])) best = e;
            }
            sel[k] = best;
            counts[best]++;
            wsum += (w[k] = p[best]);
        }
        if (mc->norm_topk_prob)
            for (int k = 0; k < K; k++) w[k] /= wsum;
    }
}

static void moe_ffn(moe_seq *s, int l, const float *h, int64_t n, float *out) {
    const layer *L = &s->m->layers[l];
    const moe_config *c = &s->m->cfg.pub;
    backend *be = s->m->be;
    int64_t H = c->hidden_size;
    int K = c->n_experts_per_tok;
    be_matmul(be, &L->router, h, n, NULL, s->router);
    route(s, n, s->m->route_counts + (size_t)l * (size_t)c->n_experts);
    memset(out, 0, sizeof(float) * (size_t)(n * H));
    for (int e = 0; e < c->n_experts; e++) {
        int64_t m = 0;
        for (int64_t t = 0; t < n; t++)
            for (int k = 0; k < K; k++)
                if (s->sel[t * K + k] == e) {
                    s->etok[m] = (int)t;
                    s->ew[m] = s->selw[t * K + k];
                    memcpy(s->xe + m * H, h + t * H, sizeof(float) * (size_t)H);
                    m++;
                }
        if (!m) continue;
        swiglu_mlp(s, &L->experts[e], s->xe, m, s->ye);
        for (int64_t i = 0; i < m; i++) {
            float *o = out + (int64_t)s->etok[i] * H, *y = s->ye + i * H, w = s->ew[i];
            for (int64_t j = 0; j < H; j++) o[j] += w * y[j];
        }
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
static void layers(moe_seq *s, moe_seq *const *owner, const int32_t *tokens, int64_t n) {
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
            moe_ffn(s, l, s->h, n, s->moe_acc);
            for (int64_t i = 0; i < n * H; i++) s->x[i] += s->moe_acc[i];
        } else {
            swiglu_mlp(s, &L->mlp, s->h, n, s->h);
            for (int64_t i = 0; i < n * H; i++) s->x[i] += s->h[i];
        }
    }
}

static moe_status forward(moe_seq *s, const int32_t *tokens, int64_t n, float *logits, int all) {
    const moe_model *m = s->m;
    const moe_config *c = &m->cfg.pub;
    backend *be = m->be;
    int64_t H = c->hidden_size;
    for (int64_t t = 0; t < n; t++) s->positions[t] = s->pos + t;
    layers(s, NULL, tokens, n);
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
    layers(s, seqs, tokens, n);
    for (int64_t t = 0; t < n; t++) seqs[t]->pos++;
    be_rmsnorm(m->be, s->x, m->final_norm, n, c->hidden_size, c->rms_norm_eps, s->h);
    be_matmul(m->be, &m->lm_head, s->h, n, NULL, logits);
    pthread_mutex_unlock(&s->m->lock);
    return MOE_OK;
}
