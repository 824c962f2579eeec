/* forward.c — the forward pass, written once for every family.
 *
 * One batch of n tokens at positions pos..pos+n-1:
 *   x = embed(tokens)                                   [n x H]
 *   per layer:  h = rmsnorm(x)
 *               attention layers:
 *               q,k,v = h.Wq/Wk/Wv (+bias) -> [clip] -> [q/k norm] -> RoPE
 *               k,v -> cache slots (pos % cap);  att = softmax(q.K^T/sqrt(hd)).V
 *               [* sigmoid(gate), the gate from Wq too];  x += att.Wo (+bias)
 *               gated DeltaNet layers (Qwen3-Next):
 *               q|k|v, z, b, a = h.Wqkvz, h.Wba -> causal conv + SiLU over q|k|v
 *               -> l2-normalised q, k -> delta rule with decay and beta from a, b
 *               -> gated RMSNorm (silu(z)) -> x += .Wout
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
        float *p = s->router_h + t * E;
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
    backend *be = s->m->be;
    int64_t H = s->m->cfg.pub.hidden_size, K = s->m->cfg.pub.n_experts_per_tok;
    int64_t a = s->grp_off[i], m = s->grp_off[i + 1] - a;
    be_gather_rows(be, s->xe, h, H, s->grp_tk + a, K, m);
    swiglu_mlp(s, w, s->xe, m, s->ye);
    be_scatter_rows(be, s->yk, s->ye, H, s->grp_tk + a, m);
}

/* Offloading: guesses what the next MoE layer after l will need from the
 * current residual stream (its own norm and router applied to it now) and
 * has the cache start reading those experts while layer l computes. */
static moe_status prefetch_next(moe_seq *s, int l, int64_t n) {
    const moe_model *m = s->m;
    const moe_config *c = &m->cfg.pub;
    int ln = l + 1;
    while (ln < c->n_layers && !m->layers[ln].is_moe) ln++;
    if (ln >= c->n_layers) return MOE_OK;
    const layer *L = &m->layers[ln];
    int E = c->n_experts, K = c->n_experts_per_tok, sel[64], *votes = s->grp_cur, n_want = 0;
    be_rmsnorm(m->be, s->x, L->ffn_norm, n, c->hidden_size, c->rms_norm_eps, s->xe);
    be_matmul(m->be, &L->router, s->xe, n, NULL, s->router); /* softmax keeps the order: top-k of the logits */
    moe_status st = be_download(m->be, s->router_h, s->router, sizeof(float) * (size_t)(n * E));
    if (st) return st;
    memset(votes, 0, sizeof *votes * (size_t)E);
    for (int64_t t = 0; t < n; t++) {
        top_k(s->router_h + t * E, E, K, sel);
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
    return MOE_OK;
}

/* The experts of layer l over its batch: from the model's own mapping, or
 * through the expert cache (which may skip some). Marks skipped choices in
 * s->dropped[t*K + k]. *shared_done: the shared expert ran too (decode, with
 * the others), its output in s->ye. */
static moe_status run_experts(moe_seq *s, int l, int64_t n, const float *h, int *shared_done) {
    const moe_model *m = s->m;
    int K = m->cfg.pub.n_experts_per_tok, n_need = group(s, n);
    for (int64_t i = 0; i < n * K; i++) s->dropped[i] = 0;
    *shared_done = 0;
    if (!m->xc && n == 1 && n_need < MOE_DEC_MAX) {
        /* decode: every expert of the token, and the shared expert, in one pass of the pool */
        const layer *L = &m->layers[l];
        const wtensor *g[MOE_DEC_MAX], *u[MOE_DEC_MAX], *d[MOE_DEC_MAX];
        float *out[MOE_DEC_MAX];
        int64_t H = m->cfg.pub.hidden_size, ne = n_need;
        for (int i = 0; i < n_need; i++) {
            const expert *e = &L->experts[s->need[i]];
            g[i] = &e->gate, u[i] = &e->up, d[i] = &e->down;
            out[i] = s->yk + s->grp_tk[s->grp_off[i]] * H; /* the one choice of expert i */
        }
        if (m->cfg.pub.shared_expert_intermediate_size > 0) {
            g[ne] = &L->shared.gate, u[ne] = &L->shared.up, d[ne] = &L->shared.down;
            out[ne++] = s->ye;
            *shared_done = 1;
        }
        be_moe_decode(m->be, (int)ne, g, u, d, h, s->moe_mid, s->moe_mid_ld, out);
        return MOE_OK;
    }
    if (!m->xc && s->xg) {
        /* every choice's row gathered in expert order, all experts in one launch per projection */
        backend *be = m->be;
        const wtensor **g = s->grp_w, **u = g + n_need, **d = u + n_need;
        for (int i = 0; i < n_need; i++) {
            const expert *e = &m->layers[l].experts[s->need[i]];
            g[i] = &e->gate, u[i] = &e->up, d[i] = &e->down;
        }
        int64_t H = m->cfg.pub.hidden_size, total = s->grp_off[n_need];
        be_gather_rows(be, s->xg, h, H, s->grp_tk, K, total);
        be_moe_grouped(be, n_need, g, u, d, s->grp_off, s->xg, s->gmid, s->yg);
        be_scatter_rows(be, s->yk, s->yg, H, s->grp_tk, total);
        return MOE_OK;
    }
    if (!m->xc) {
        for (int i = 0; i < n_need; i++) run_expert(s, &m->layers[l].experts[s->need[i]], i, h);
        return MOE_OK;
    }
    moe_status st = xc_begin(m->xc, l, s->need, n_need, s->skipped);
    if (st) return st;
    for (int i = 0; i < n_need; i++)
        if (s->skipped[i])
            for (int64_t j = s->grp_off[i]; j < s->grp_off[i + 1]; j++) s->dropped[s->grp_tk[j]] = 1;
    if (m->prefetch && (st = prefetch_next(s, l, n))) return st; /* after this layer's misses, so its reads go first */
    for (;;) {
        int i;
        const expert *w;
        if ((st = xc_next(m->xc, l, &i, &w))) return st;
        if (i < 0) return MOE_OK;
        run_expert(s, w, i, h);
        xc_release(m->xc, l, i);
    }
}

/* A token's MoE layer routed on the device (backend_routes): the router's
 * choice, the chosen experts and the shared one, and their weighted sum,
 * with nothing read back to the host. */
static void moe_decode_routed(moe_seq *s, int l, const float *h, float *out) {
    const moe_model *m = s->m;
    const moe_config *c = &m->cfg.pub;
    const layer *L = &m->layers[l];
    backend *be = m->be;
    int E = c->n_experts, K = c->n_experts_per_tok, sh = c->shared_expert_intermediate_size > 0;
    int64_t H = c->hidden_size;
    be_route(be, s->router, 1, E, K, m->cfg.norm_topk_prob, s->sel_be, s->selw_be, m->route_counts_be + (size_t)l * E);
    be_moe_decode_sel(be, E, &L->experts[0].gate, &L->experts[0].up, &L->experts[0].down, sizeof(expert), s->sel_be, K,
                      sh ? &L->shared.gate : NULL, sh ? &L->shared.up : NULL, sh ? &L->shared.down : NULL, h,
                      s->moe_mid, s->moe_mid_ld, s->yk, H, s->ye);
    be_moe_combine(be, out, s->yk, s->selw_be, NULL, 1, K, H);
    if (sh) {
        be_matmul(be, &L->shared_gate, h, 1, NULL, s->ew); /* [1] gate logit */
        be_add_gated(be, out, s->ye, s->ew, 1, H);
    }
}

/* One token's MoE layers can be routed on the device: no expert cache, a backend that routes. */
static int routes_on_device(const moe_model *m) {
    return !m->xc && backend_routes(m->be) && m->cfg.pub.n_experts_per_tok < MOE_DEC_MAX;
}

static moe_status moe_ffn(moe_seq *s, int l, const float *h, int64_t n, float *out) {
    const moe_config *c = &s->m->cfg.pub;
    const layer *L = &s->m->layers[l];
    backend *be = s->m->be;
    int64_t H = c->hidden_size;
    int K = c->n_experts_per_tok;
    be_matmul(be, &L->router, h, n, NULL, s->router);
    if (n == 1 && routes_on_device(s->m)) {
        moe_decode_routed(s, l, h, out);
        return MOE_OK;
    }
    moe_status st = be_download(be, s->router_h, s->router, sizeof(float) * (size_t)(n * c->n_experts));
    if (st) return st;
    route(s, n, s->m->route_counts + (size_t)l * (size_t)c->n_experts);
    int shared_done;
    if ((st = run_experts(s, l, n, h, &shared_done))) return st;
    /* out[t] = sum over k, in order, of w[t,k] * yk[t,k]: the same sums whatever
     * order the experts ran in. Dropped choices (skip policy) give their weight
     * to the others where the family renormalises. */
    for (int64_t t = 0; t < n; t++) {
        float scale = 1, kept = 0;
        int dropped = 0;
        for (int k = 0; k < K; k++) {
            dropped += s->dropped[t * K + k];
            kept += s->dropped[t * K + k] ? 0 : s->selw[t * K + k];
        }
        if (dropped && s->m->cfg.norm_topk_prob && kept > 0) scale = 1 / kept;
        for (int k = 0; k < K; k++) {
            s->use[t * K + k] = !s->dropped[t * K + k];
            s->usew[t * K + k] = s->selw[t * K + k] * scale;
        }
    }
    be_upload(be, s->usew_be, s->usew, sizeof *s->usew * (size_t)(n * K));
    be_upload(be, s->use_be, s->use, sizeof *s->use * (size_t)(n * K));
    be_moe_combine(be, out, s->yk, s->usew_be, s->use_be, n, K, H);
    if (c->shared_expert_intermediate_size > 0) {
        if (!shared_done) swiglu_mlp(s, &L->shared, h, n, s->ye);
        be_matmul(be, &L->shared_gate, h, n, NULL, s->ew); /* [n] gate logits */
        be_add_gated(be, out, s->ye, s->ew, n, H);
    }
    return MOE_OK;
}

/* The end of the run of rows that starts at r0 and belongs to one sequence
 * (owner[r0], or s for all rows when owner is NULL); that sequence in *o. */
static int64_t owner_run(moe_seq *s, moe_seq *const *owner, int64_t r0, int64_t n, moe_seq **o) {
    *o = owner ? owner[r0] : s;
    int64_t r1 = r0 + 1;
    while (r1 < n && (owner ? owner[r1] : s) == *o) r1++;
    return r1;
}

/* A gated DeltaNet layer over s's n rows (rows of sequence owner[t], as in
 * attention_block): each sequence's conv inputs and delta state carry on
 * from its own cache. */
static void linear_block(moe_seq *s, moe_seq *const *owner, int l, int64_t n) {
    const moe_model *m = s->m;
    const model_config *mc = &m->cfg;
    const layer *L = &m->layers[l];
    backend *be = m->be;
    int nk = mc->lin_nk, nv = mc->lin_nv, dk = mc->lin_dk, dv = mc->lin_dv;
    int64_t H = mc->pub.hidden_size, kd = (int64_t)nk * dk, vd = (int64_t)nv * dv, cd = 2 * kd + vd;
    float eps = mc->pub.rms_norm_eps;

    be_rmsnorm(be, s->x, L->attn_norm, n, H, eps, s->h);
    be_matmul_n(be, 2, (const wtensor *[]){&L->qkvz, &L->ba}, s->h, n, NULL, (float *[]){s->lin_in, s->lin_ba});
    /* per key head the projections hold q, k, v, z (and b, a of its value heads):
     * q|k|v for the conv, z, and per value head beta and decay */
    be_delta_split(be, s->lin_in, s->lin_ba, n, nk, nv, dk, dv, L->neg_a, L->dt_bias, s->lin_mix, s->lin_z, s->lin_beta,
                   s->lin_g);
    /* each sequence's rows: the conv over its carried inputs, q and k normalised, its delta state */
    for (int64_t r0 = 0, r1; r0 < n; r0 = r1) {
        moe_seq *o;
        r1 = owner_run(s, owner, r0, n, &o);
        float *c0 = s->lin_conv + r0 * cd;
        be_causal_conv(be, s->lin_mix + r0 * cd, r1 - r0, cd, mc->lin_conv, L->conv_w, o->cache[l].conv, c0);
        be_l2norm(be, c0, cd, r1 - r0, nk, dk, 1.0f / sqrtf((float)dk));
        be_l2norm(be, c0 + kd, cd, r1 - r0, nk, dk, 1.0f);
        be_delta_rule(be, c0, c0 + kd, c0 + 2 * kd, cd, s->lin_g + r0 * nv, s->lin_beta + r0 * nv, r1 - r0, nk, nv, dk, dv,
                      m->delta_chunk, o->cache[l].ssm, s->lin_out + r0 * vd, s->lin_scratch);
    }
    be_rmsnorm(be, s->lin_out, L->lin_norm, n * nv, dv, eps, s->lin_out);
    be_mul_act(be, s->lin_out, s->lin_z, n * vd, BE_SILU);
    be_matmul(be, &L->out_proj, s->lin_out, n, NULL, s->h);
    be_add(be, s->x, s->h, n * H);
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
    int gated = mc->fam->attn_gate;
    be_matmul_n(be, 3, (const wtensor *[]){&L->wq, &L->wk, &L->wv}, s->h, n, (const float *[]){L->bq, L->bk, L->bv},
                (float *[]){gated ? s->qg : s->q, s->k, s->v});
    if (gated) { /* per head: hd query values, then hd gate values */
        be_copy_rows(be, s->q, hd, s->qg, 2 * hd, n * nh, hd);
        be_copy_rows(be, s->gate, hd, s->qg + hd, 2 * hd, n * nh, hd);
    }
    if (mc->fam->qk_norm == QK_NORM_FULL) {
        be_rmsnorm(be, s->q, L->q_norm, n, qd, c->rms_norm_eps, s->q);
        be_rmsnorm(be, s->k, L->k_norm, n, kvd, c->rms_norm_eps, s->k);
    } else if (mc->fam->qk_norm == QK_NORM_HEAD) {
        be_rmsnorm(be, s->q, L->q_norm, n * nh, hd, c->rms_norm_eps, s->q);
        be_rmsnorm(be, s->k, L->k_norm, n * nkv, hd, c->rms_norm_eps, s->k);
    }
    if (mc->clip_qkv > 0) {
        be_clip(be, s->q, n * qd, mc->clip_qkv);
        be_clip(be, s->k, n * kvd, mc->clip_qkv);
        be_clip(be, s->v, n * kvd, mc->clip_qkv);
    }
    be_rope(be, s->q, n, nh, hd, mc->rot_dim, s->pos_be, m->inv_freq_be);
    be_rope(be, s->k, n, nkv, hd, mc->rot_dim, s->pos_be, m->inv_freq_be);
    /* each run of rows of one sequence attends over that sequence's own cache */
    for (int64_t r0 = 0, r1; r0 < n; r0 = r1) {
        moe_seq *o;
        r1 = owner_run(s, owner, r0, n, &o);
        const kv_cache *kv = &o->cache[l].kv; /* float32 or quantized: the backend stores and reads either */
        be_kv_store(be, kv, s->k + r0 * kvd, s->v + r0 * kvd, r1 - r0, s->pos_be + r0);
        be_attention(be, s->q + r0 * qd, r1 - r0, s->pos_be + r0, kv, nh, L->window, 1.0f / sqrtf((float)hd),
                     o->att_scratch, s->att + r0 * qd);
    }
    if (gated) be_mul_act(be, s->att, s->gate, n * qd, BE_SIGMOID);
    be_matmul(be, &L->wo, s->att, n, L->bo, s->h);
    be_add(be, s->x, s->h, n * H);
}

/* The batch's token ids and positions (s->positions) into backend memory,
 * where the operations read them. */
static void inputs(moe_seq *s, const int32_t *tokens, int64_t n) {
    be_upload(s->m->be, s->tok_be, tokens, sizeof *tokens * (size_t)n);
    be_upload(s->m->be, s->pos_be, s->positions, sizeof *s->positions * (size_t)n);
}

/* The layers over n rows in s's buffers (inputs() done), row t of
 * sequence owner[t] (NULL: all of s): the matmuls run on all rows at once,
 * attention per sequence. */
static moe_status layers(moe_seq *s, moe_seq *const *owner, int64_t n) {
    const moe_model *m = s->m;
    const moe_config *c = &m->cfg.pub;
    backend *be = m->be;
    int64_t H = c->hidden_size;
    be_embed(be, &m->embed, s->tok_be, n, s->x);
    for (int l = 0; l < c->n_layers; l++) {
        const layer *L = &m->layers[l];
        if (L->is_linear) linear_block(s, owner, l, n);
        else attention_block(s, owner, l, n);
        be_rmsnorm(be, s->x, L->ffn_norm, n, H, c->rms_norm_eps, s->h);
        if (L->is_moe) {
            moe_status st = moe_ffn(s, l, s->h, n, s->moe_acc);
            if (st) return st;
            be_add(be, s->x, s->moe_acc, n * H);
        } else {
            swiglu_mlp(s, &L->mlp, s->h, n, s->h);
            be_add(be, s->x, s->h, n * H);
        }
    }
    return MOE_OK;
}

/* Where the lm_head writes logits: straight into the caller's host array on
 * a backend whose memory is the host's, else s->lg (then downloaded). */
static float *head_dst(moe_seq *s, float *logits) { return backend_host_memory(s->m->be) ? logits : s->lg; }

/* y [rows x V] = rmsnorm(xs) . lm_head^T, xs rows of the residual stream */
static void head(moe_seq *s, const float *xs, int64_t rows, float *y) {
    const moe_model *m = s->m;
    be_rmsnorm(m->be, xs, m->final_norm, rows, m->cfg.pub.hidden_size, m->cfg.pub.rms_norm_eps, s->h);
    be_matmul(m->be, &m->lm_head, s->h, rows, NULL, y);
}

/* A decode step can be recorded once and replayed (be_graph_begin) when no
 * decision in it is taken on the host: no expert cache, and MoE layers
 * routed on the device. */
static int recordable(const moe_model *m) { return !m->xc && (m->cfg.pub.n_experts == 0 || routes_on_device(m)); }

static moe_status forward(moe_seq *s, const int32_t *tokens, int64_t n, float *logits, int all) {
    const moe_model *m = s->m;
    backend *be = m->be;
    int64_t H = m->cfg.pub.hidden_size, rows = all ? n : 1;
    for (int64_t t = 0; t < n; t++) s->positions[t] = s->pos + t;
    inputs(s, tokens, n);
    const float *xs = all ? s->x : s->x + (n - 1) * H;
    float *y = logits ? head_dst(s, logits) : NULL;
    moe_status st = MOE_OK;
    if (logits && n == 1 && recordable(m)) { /* one decode step: the same operations every time */
        for (int run = be_graph_begin(be, &s->graph, 1); run; run = be_graph_end(be, &s->graph))
            if (!(st = layers(s, NULL, n))) head(s, xs, rows, y);
    } else if (!(st = layers(s, NULL, n)) && logits) {
        head(s, xs, rows, y);
    }
    if (!st) st = logits ? be_download(be, logits, y, sizeof(float) * (size_t)rows * (size_t)m->cfg.pub.vocab_size)
                         : be_sync(be);
    if (st) return st;
    s->pos += n;
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
    pthread_mutex_lock(&s->m->lock);
    for (int64_t t = 0; t < n; t++) s->positions[t] = seqs[t]->pos;
    inputs(s, tokens, n);
    float *y = head_dst(s, logits);
    moe_status st = layers(s, seqs, n);
    if (!st) {
        head(s, s->x, n, y);
        st = be_download(s->m->be, logits, y, sizeof(float) * (size_t)n * (size_t)s->m->cfg.pub.vocab_size);
    }
    if (!st)
        for (int64_t t = 0; t < n; t++) seqs[t]->pos++;
    pthread_mutex_unlock(&s->m->lock);
    return st;
}
