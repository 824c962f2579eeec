/* mlx_layout.c — see mlx_layout.h. The entry list follows the model's own
 * order (embedding, each layer's attention then FFN, final norm, head);
 * readers find tensors by name, so the order only decides which shard a
 * tensor of a large model lands in. */
#include "mlx_layout.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../base/err.h"
#include "../base/file.h"
#include "../format/mlx_quant.h"

/* ------------------------------------------------------------ entries -- */

typedef struct builder {
    ml_layout *l;
    size_t cap;
    const model_config *c;
    int oom;
} builder;

/* mlx-lm's quant_predicate: qwen3_moe's routers at 8 bits, group 64; qwen3_next's
 * routers and shared-expert gates too. */
static int own_8bit(const family *f, ml_role role) {
    if (!strcmp(f->model_type, "qwen3_moe")) return role == ML_ROUTER;
    if (!strcmp(f->model_type, "qwen3_next")) return role == ML_ROUTER || role == ML_SH_ROUTER;
    return 0;
}

static void add(builder *b, ml_kind kind, ml_role role, int layer, int64_t E, int64_t rows, int64_t cols,
                const char *fmt, ...) __attribute__((format(printf, 8, 9)));
static void add(builder *b, ml_kind kind, ml_role role, int layer, int64_t E, int64_t rows, int64_t cols,
                const char *fmt, ...) {
    ml_layout *l = b->l;
    if (b->oom) return;
    if (l->n == b->cap) {
        size_t nc = b->cap ? 2 * b->cap : 64;
        ml_entry *e = realloc(l->e, nc * sizeof *e);
        if (!e) { b->oom = 1; return; }
        l->e = e;
        b->cap = nc;
    }
    ml_entry *e = &l->e[l->n++];
    memset(e, 0, sizeof *e);
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->name, sizeof e->name, fmt, ap);
    va_end(ap);
    e->kind = kind;
    e->role = role;
    e->layer = layer;
    e->E = E;
    e->rows = rows;
    e->cols = cols;
    e->shift = kind == ML_VECTOR && b->c->fam->centred_norms &&
               (role == ML_ATTN_NORM || role == ML_FFN_NORM || role == ML_Q_NORM || role == ML_K_NORM ||
                role == ML_FINAL_NORM);
    if (kind != ML_MATRIX || cols % l->group) return; /* mlx-lm: the input width must divide by the group */
    e->bits = l->bits;
    e->group = l->group;
    if (own_8bit(b->c->fam, role)) {
        e->own_params = cols % 64 == 0;
        e->bits = e->own_params ? 8 : 0;
        e->group = e->own_params ? 64 : 0;
    }
}

#define MAT(role, L, E, r, c, ...) add(b, ML_MATRIX, role, L, E, r, c, __VA_ARGS__)
#define VEC(role, L, n, ...) add(b, ML_VECTOR, role, L, 0, 1, n, __VA_ARGS__)

/* A gated DeltaNet layer's mixer (Qwen3-Next's linear_attn). */
static void add_linear(builder *b, int l) {
    const model_config *mc = b->c;
    int64_t H = mc->pub.hidden_size, nv = mc->lin_nv, kd = (int64_t)mc->lin_nk * mc->lin_dk, vd = nv * mc->lin_dv;
    const char *const P = "model.layers";
    MAT(ML_LIN_QKVZ, l, 0, 2 * kd + 2 * vd, H, "%s.%d.linear_attn.in_proj_qkvz", P, l);
    MAT(ML_LIN_BA, l, 0, 2 * nv, H, "%s.%d.linear_attn.in_proj_ba", P, l);
    add(b, ML_CONV, ML_LIN_CONV, l, 0, 2 * kd + vd, mc->lin_conv, "%s.%d.linear_attn.conv1d.weight", P, l);
    VEC(ML_LIN_A_LOG, l, nv, "%s.%d.linear_attn.A_log", P, l);
    VEC(ML_LIN_DT_BIAS, l, nv, "%s.%d.linear_attn.dt_bias", P, l);
    VEC(ML_LIN_NORM, l, mc->lin_dv, "%s.%d.linear_attn.norm.weight", P, l);
    MAT(ML_LIN_OUT, l, 0, H, vd, "%s.%d.linear_attn.out_proj", P, l);
}

/* An attention layer's mixer (self_attn). */
static void add_attention(builder *b, int l) {
    const model_config *mc = b->c;
    const moe_config *c = &mc->pub;
    int64_t H = c->hidden_size, hd = c->head_dim, qd = (int64_t)c->n_heads * hd, kvd = (int64_t)c->n_kv_heads * hd;
    int64_t qrows = qd * (mc->fam->attn_gate ? 2 : 1); /* with an output gate: query and gate per head */
    const char *const P = "model.layers";
    MAT(ML_Q, l, 0, qrows, H, "%s.%d.self_attn.q_proj", P, l);
    if (mc->qkv_bias) VEC(ML_QB, l, qrows, "%s.%d.self_attn.q_proj.bias", P, l);
    MAT(ML_K, l, 0, kvd, H, "%s.%d.self_attn.k_proj", P, l);
    if (mc->qkv_bias) VEC(ML_KB, l, kvd, "%s.%d.self_attn.k_proj.bias", P, l);
    MAT(ML_V, l, 0, kvd, H, "%s.%d.self_attn.v_proj", P, l);
    if (mc->qkv_bias) VEC(ML_VB, l, kvd, "%s.%d.self_attn.v_proj.bias", P, l);
    MAT(ML_O, l, 0, H, qd, "%s.%d.self_attn.o_proj", P, l);
    if (mc->o_bias) VEC(ML_OB, l, H, "%s.%d.self_attn.o_proj.bias", P, l);
    if (mc->fam->qk_norm != QK_NORM_NONE) {
        int full = mc->fam->qk_norm == QK_NORM_FULL;
        VEC(ML_Q_NORM, l, full ? qd : hd, "%s.%d.self_attn.q_norm.weight", P, l);
        VEC(ML_K_NORM, l, full ? kvd : hd, "%s.%d.self_attn.k_norm.weight", P, l);
    }
}

static void add_layer(builder *b, int l) {
    const model_config *mc = b->c;
    const moe_config *c = &mc->pub;
    int64_t H = c->hidden_size;
    const char *const P = "model.layers";
    VEC(ML_ATTN_NORM, l, H, "%s.%d.input_layernorm.weight", P, l);
    if (mc->layer_linear && mc->layer_linear[l]) add_linear(b, l);
    else add_attention(b, l);
    VEC(ML_FFN_NORM, l, H, "%s.%d.post_attention_layernorm.weight", P, l);
    if (!mc->layer_moe[l]) {
        int64_t I = c->intermediate_size;
        MAT(ML_MLP_GATE, l, 0, I, H, "%s.%d.mlp.gate_proj", P, l);
        MAT(ML_MLP_UP, l, 0, I, H, "%s.%d.mlp.up_proj", P, l);
        MAT(ML_MLP_DOWN, l, 0, H, I, "%s.%d.mlp.down_proj", P, l);
        return;
    }
    const char *blk = mc->fam->moe_block;
    int64_t E = c->n_experts, I = c->moe_intermediate_size, S = c->shared_expert_intermediate_size;
    MAT(ML_ROUTER, l, 0, E, H, "%s.%d.%s.gate", P, l, blk);
    MAT(ML_SW_GATE, l, E, I, H, "%s.%d.%s.switch_mlp.gate_proj", P, l, blk);
    MAT(ML_SW_UP, l, E, I, H, "%s.%d.%s.switch_mlp.up_proj", P, l, blk);
    MAT(ML_SW_DOWN, l, E, H, I, "%s.%d.%s.switch_mlp.down_proj", P, l, blk);
    if (S > 0) {
        MAT(ML_SH_GATE, l, 0, S, H, "%s.%d.%s.shared_expert.gate_proj", P, l, blk);
        MAT(ML_SH_UP, l, 0, S, H, "%s.%d.%s.shared_expert.up_proj", P, l, blk);
        MAT(ML_SH_DOWN, l, 0, H, S, "%s.%d.%s.shared_expert.down_proj", P, l, blk);
        MAT(ML_SH_ROUTER, l, 0, 1, H, "%s.%d.%s.shared_expert_gate", P, l, blk);
    }
}

moe_status ml_layout_build(const model_config *c, int bits, int group, int with_head, ml_layout *l) {
    memset(l, 0, sizeof *l);
    if (!mlxq_valid(bits, group))
        return moe_err(MOE_EINVAL, "quantization to %d bits in groups of %d is not supported "
                                   "(bits 2, 3, 4, 5, 6 or 8; group size 32, 64 or 128)", bits, group);
    l->bits = bits;
    l->group = group;
    builder B = {l, 0, c, 0}, *b = &B;
    int64_t V = c->pub.vocab_size, H = c->pub.hidden_size;
    MAT(ML_EMBED, -1, 0, V, H, "model.embed_tokens");
    for (int i = 0; i < c->pub.n_layers; i++) add_layer(b, i);
    VEC(ML_FINAL_NORM, -1, H, "model.norm.weight");
    if (with_head) MAT(ML_HEAD, -1, 0, V, H, "lm_head");
    if (B.oom) {
        ml_layout_free(l);
        return moe_err(MOE_ENOMEM, "out of memory");
    }
    return MOE_OK;
}

void ml_layout_free(ml_layout *l) {
    free(l->e);
    l->e = NULL;
    l->n = 0;
}

json_t *ml_layout_quant_json(const ml_layout *l) {
    json_t *q = json_pack("{s:i, s:i, s:s}", "group_size", l->group, "bits", l->bits, "mode", "affine");
    for (size_t i = 0; q && i < l->n; i++) {
        const ml_entry *e = &l->e[i];
        if (!e->own_params) continue;
        json_t *o = json_pack("{s:i, s:i}", "group_size", e->group, "bits", e->bits);
        if (!o || json_object_set_new(q, e->name, o)) {
            json_decref(q);
            return NULL;
        }
    }
    return q;
}

int64_t ml_layout_params(const ml_layout *l) {
    int64_t n = 0;
    for (size_t i = 0; i < l->n; i++) n += (l->e[i].E ? l->e[i].E : 1) * l->e[i].rows * l->e[i].cols;
    return n;
}

/* ------------------------------------------------------------ tensors -- */

uint64_t ml_tensor_bytes(const st_out_tensor *t) {
    uint64_t n = st_dtype_size(t->dtype);
    for (int d = 0; d < t->ndim; d++) n *= (uint64_t)t->shape[d];
    return n;
}

void ml_tensors_free(ml_tensors *t) {
    for (size_t i = 0; t->names && i < t->n; i++) free(t->names[i]);
    free(t->names);
    free(t->t);
    free(t->entry);
    free(t->what);
    memset(t, 0, sizeof *t);
}

moe_status ml_tensors_build(const ml_layout *l, const st_dtype *dtype, ml_tensors *out) {
    memset(out, 0, sizeof *out);
    size_t cap = 3 * l->n;
    out->t = calloc(cap ? cap : 1, sizeof *out->t);
    out->entry = calloc(cap ? cap : 1, sizeof *out->entry);
    out->what = calloc(cap ? cap : 1, sizeof *out->what);
    out->names = calloc(cap ? cap : 1, sizeof *out->names);
    if (!out->t || !out->entry || !out->what || !out->names) goto oom;
    static const char *const suffix[3] = {"weight", "scales", "biases"};
    for (size_t i = 0; i < l->n; i++) {
        const ml_entry *e = &l->e[i];
        int parts = e->bits ? 3 : 1;
        for (int w = 0; w < parts; w++) {
            size_t k = out->n;
            char name[160];
            if (e->kind != ML_MATRIX) snprintf(name, sizeof name, "%s", e->name);
            else snprintf(name, sizeof name, "%s.%s", e->name, suffix[w]);
            if (!(out->names[k] = strdup(name))) goto oom;
            st_out_tensor *t = &out->t[k];
            t->name = out->names[k];
            t->dtype = dtype[i];
            if (e->E) t->shape[t->ndim++] = e->E;
            if (e->kind != ML_VECTOR) t->shape[t->ndim++] = e->rows;
            t->shape[t->ndim++] = e->cols;
            if (e->kind == ML_CONV) t->shape[t->ndim++] = 1;
            if (e->bits && w == ML_VALUES) {
                t->dtype = ST_U32;
                t->shape[t->ndim - 1] = e->cols * e->bits / 32;
            } else if (e->bits) {
                t->shape[t->ndim - 1] = e->cols / e->group;
            }
            out->entry[k] = i;
            out->what[k] = w;
            out->n++;
        }
    }
    return MOE_OK;
oom:
    ml_tensors_free(out);
    return moe_err(MOE_ENOMEM, "out of memory");
}

/* -------------------------------------------------------------- files -- */

/* The file name of shard s (from 0) of n. */
static void shard_name(char *buf, size_t cap, size_t s, size_t n) {
    if (n == 1) snprintf(buf, cap, "model.safetensors");
    else snprintf(buf, cap, "model-%05zu-of-%05zu.safetensors", s + 1, n);
}

typedef struct progress_span {
    void (*fn)(void *ctx, uint64_t done, uint64_t total);
    void *ctx;
    uint64_t base, total; /* bytes of the shards before this one; of all */
} progress_span;

static void shard_progress(void *ctx, uint64_t done, uint64_t total) {
    (void)total;
    const progress_span *s = ctx;
    s->fn(s->ctx, s->base + done, s->total);
}

static moe_status write_index(const char *dir, const st_out_tensor *t, const size_t *shard_of, size_t n_shards, size_t n,
                              uint64_t total, int64_t n_params) {
    json_t *wm = json_object(), *root = json_object();
    int bad = !wm || !root;
    for (size_t i = 0; !bad && i < n; i++) {
        char fn[64];
        shard_name(fn, sizeof fn, shard_of[i], n_shards);
        bad = json_object_set_new(wm, t[i].name, json_string(fn)) != 0;
    }
    json_t *meta = bad ? NULL : json_pack("{s:I, s:I}", "total_size", (json_int_t)total, "total_parameters", (json_int_t)n_params);
    bad = bad || !meta || json_object_set_new(root, "metadata", meta) || json_object_set(root, "weight_map", wm);
    json_decref(wm);
    char path[4200];
    moe_status st = path_join(path, sizeof path, dir, "model.safetensors.index.json");
    if (!st && bad) st = moe_err(MOE_ENOMEM, "out of memory");
    if (!st && json_dump_file(root, path, JSON_INDENT(4) | JSON_SORT_KEYS) != 0)
        st = moe_err(MOE_EIO, "%s: cannot write: %s", path, strerror(errno));
    json_decref(root);
    return st;
}

moe_status ml_write(const char *dir, const st_out_tensor *t, size_t n, uint64_t max_shard, int64_t n_params,
                    void (*progress)(void *ctx, uint64_t done, uint64_t total), void *pctx) {
    size_t *shard_of = malloc((n ? n : 1) * sizeof *shard_of);
    if (!shard_of) return moe_err(MOE_ENOMEM, "out of memory");
    /* as mlx-lm's make_shards: a new shard when the next tensor would pass the limit */
    uint64_t total = 0, cur = 0;
    size_t n_shards = 1;
    for (size_t i = 0; i < n; i++) {
        uint64_t nb = ml_tensor_bytes(&t[i]);
        if (cur > 0 && cur + nb > max_shard) {
            n_shards++;
            cur = 0;
        }
        cur += nb;
        total += nb;
        shard_of[i] = n_shards - 1;
    }
    moe_status st = MOE_OK;
    progress_span span = {progress, pctx, 0, total};
    size_t first = 0, written = 0;
    char path[4200];
    for (size_t s = 0; s < n_shards && !st; s++) {
        size_t end = first;
        while (end < n && shard_of[end] == s) end++;
        char fn[64];
        shard_name(fn, sizeof fn, s, n_shards);
        if ((st = path_join(path, sizeof path, dir, fn))) break;
        st = st_write(path, t + first, end - first, progress ? shard_progress : NULL, &span);
        written = s + 1; /* st_write may have created the file even when it failed */
        for (size_t i = first; i < end; i++) span.base += ml_tensor_bytes(&t[i]);
        first = end;
    }
    if (!st && n_shards > 1) st = write_index(dir, t, shard_of, n_shards, n, total, n_params);
    free(shard_of);
    if (st) { /* leave no half model behind */
        moe_status keep = st;
        for (size_t s = 0; s < written; s++) {
            char fn[64];
            shard_name(fn, sizeof fn, s, n_shards);
            if (!path_join(path, sizeof path, dir, fn)) unlink(path);
        }
        st = keep;
    }
    return st;
}
