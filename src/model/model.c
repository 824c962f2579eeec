/* model.c — moe_model_load: config.json -> model_config, the safetensors
 * files (one, or the shards of model.safetensors.index.json) mapped, and
 * every weight the family needs bound to a view with its shape checked.
 * Hub layouts: per-expert tensors (experts.E.w1 / gate_proj ...) and
 * transformers-5 stacked experts (experts.gate_up_proj [E, 2I, H],
 * experts.down_proj [E, H, I]). */
#include "model.h"

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../base/err.h"
#include "../base/half.h"

/* ------------------------------------------------------------ lookup -- */

typedef struct found { const st_tensor *t; const st_file *f; } found;

static found find(const moe_model *m, const char *name) {
    for (int i = 0; i < m->n_shards; i++) {
        const st_tensor *t = st_file_find(m->shards[i], name);
        if (t) return (found){t, m->shards[i]};
    }
    return (found){NULL, NULL};
}

static void shape_str(char *buf, size_t cap, const int64_t *s, int nd) {
    size_t o = (size_t)snprintf(buf, cap, "[");
    for (int i = 0; i < nd && o < cap; i++) o += (size_t)snprintf(buf + o, cap - o, "%s%lld", i ? ", " : "", (long long)s[i]);
    if (o < cap) snprintf(buf + o, cap - o, "]");
}

/* Checks the shape of a found tensor. */
static moe_status check_shape(const found *fd, const char *name, const int64_t *shape, int nd) {
    const st_tensor *t = fd->t;
    int ok = t->ndim == nd;
    for (int i = 0; ok && i < nd; i++) ok = t->shape[i] == shape[i];
    if (!ok) {
        char got[96], want[96];
        shape_str(got, sizeof got, t->shape, t->ndim);
        shape_str(want, sizeof want, shape, nd);
        return moe_err(MOE_EFORMAT, "%s: tensor %s: shape %s, expected %s", fd->f->path, name, got, want);
    }
    return MOE_OK;
}

/* Checks dtype (float formats only) and shape of a found tensor. */
static moe_status check(const found *fd, const char *name, const int64_t *shape, int nd, wfmt *fmt) {
    const st_tensor *t = fd->t;
    switch (t->dtype) {
    case ST_F32: *fmt = WF_F32; break;
    case ST_F16: *fmt = WF_F16; break;
    case ST_BF16: *fmt = WF_BF16; break;
    default:
        return moe_err(MOE_EUNSUPPORTED, "%s: tensor %s: dtype %s is not supported (F32, F16, BF16)", fd->f->path, name,
                       st_dtype_name(t->dtype));
    }
    return check_shape(fd, name, shape, nd);
}

static moe_status missing(const moe_model *m, const char *name) {
    return moe_err(MOE_EFORMAT, "%s: tensor %s is missing", m->dir, name);
}

/* The shape [nstack x rows x cols], or [rows x cols] when nstack is 0; returns its rank. */
static int stack_shape(int64_t nstack, int64_t rows, int64_t cols, int64_t *shape) {
    int nd = 0;
    if (nstack) shape[nd++] = nstack;
    shape[nd++] = rows;
    shape[nd++] = cols;
    return nd;
}

#define NAME(buf, ...) snprintf(buf, sizeof buf, __VA_ARGS__)

/* The weight of the Linear (or Embedding) module at `module`: `module.weight`
 * [rows x cols] in a float format, or MLX-quantized as `module.weight` (U32
 * [rows x cols*bits/32]), `module.scales` and `module.biases` ([rows x
 * cols/group], one float format); a module is quantized exactly when its
 * scales exist, with the bits and group size config.json gives it. nstack > 0:
 * a stack of nstack such matrices (MLX's switch_mlp experts), bound to
 * out[0..nstack-1]; else out[0]. */
static moe_status get_weight(moe_model *m, const char *module, int64_t nstack, int64_t rows, int64_t cols,
                             wtensor *out) {
    char wn[256], sn[256], bn[256];
    NAME(wn, "%s.weight", module);
    NAME(sn, "%s.scales", module);
    NAME(bn, "%s.biases", module);
    found fw = find(m, wn), fs = find(m, sn), fb = find(m, bn);
    if (!fw.t) return missing(m, wn);
    int64_t shape[3], n = nstack ? nstack : 1;
    moe_status st;
    if (!fs.t) { /* float */
        wfmt f;
        if ((st = check(&fw, wn, shape, stack_shape(nstack, rows, cols, shape), &f))) return st;
        size_t rb = (size_t)cols * wfmt_size(f);
        for (int64_t e = 0; e < n; e++)
            out[e] = (wtensor){.fmt = f, .rows = rows, .cols = cols, .row_bytes = rb,
                               .data = (const unsigned char *)fw.t->data + (size_t)e * (size_t)rows * rb};
        return MOE_OK;
    }
    int bits, group;
    config_module_quant(&m->cfg, module, &bits, &group);
    if (!bits)
        return moe_err(MOE_EFORMAT, "%s: tensor %s exists but config.json's \"quantization\" %s", fs.f->path, sn,
                       m->cfg.quant_bits ? "says this module is not quantized" : "is missing");
    if (!fb.t) return missing(m, bn);
    if (cols % group || (cols * bits) % 32)
        return moe_err(MOE_EFORMAT, "%s: %s: input width %lld does not divide into groups of %d", fw.f->path, module,
                       (long long)cols, group);
    if (fw.t->dtype != ST_U32)
        return moe_err(MOE_EFORMAT, "%s: tensor %s: dtype %s, expected U32 (packed %d-bit values)", fw.f->path, wn,
                       st_dtype_name(fw.t->dtype), bits);
    if ((st = check_shape(&fw, wn, shape, stack_shape(nstack, rows, cols * bits / 32, shape)))) return st;
    wfmt sf, bf;
    int nd = stack_shape(nstack, rows, cols / group, shape);
    if ((st = check(&fs, sn, shape, nd, &sf)) || (st = check(&fb, bn, shape, nd, &bf))) return st;
    if (sf != bf)
        return moe_err(MOE_EFORMAT, "%s: %s: scales are %s but biases %s", fs.f->path, module, wfmt_name(sf),
                       wfmt_name(bf));
    size_t rb = (size_t)cols * (size_t)bits / 8, sb = (size_t)(cols / group) * wfmt_size(sf);
    for (int64_t e = 0; e < n; e++)
        out[e] = (wtensor){.fmt = wfmt_quant(bits), .rows = rows, .cols = cols, .row_bytes = rb, .group = group,
                           .sfmt = sf, .sb_row_bytes = sb,
                           .data = (const unsigned char *)fw.t->data + (size_t)e * (size_t)rows * rb,
                           .scales = (const unsigned char *)fs.t->data + (size_t)e * (size_t)rows * sb,
                           .biases = (const unsigned char *)fb.t->data + (size_t)e * (size_t)rows * sb};
    return MOE_OK;
}

static moe_status own(moe_model *m, void *p) {
    if (m->n_owned == m->cap_owned) {
        int nc = m->cap_owned ? m->cap_owned * 2 : 64;
        void **n = realloc(m->owned, (size_t)nc * sizeof *n);
        if (!n) { free(p); return moe_err(MOE_ENOMEM, "out of memory"); }
        m->owned = n;
        m->cap_owned = nc;
    }
    m->owned[m->n_owned++] = p;
    return MOE_OK;
}

/* A 1-D tensor converted to float32. required=0: *out NULL when absent. */
static moe_status get_vec(moe_model *m, const char *name, int64_t n, int required, float **out) {
    *out = NULL;
    found fd = find(m, name);
    if (!fd.t) return required ? missing(m, name) : MOE_OK;
    wfmt f;
    moe_status st = check(&fd, name, &n, 1, &f);
    if (st) return st;
    float *v = malloc((size_t)n * sizeof *v);
    if (!v) return moe_err(MOE_ENOMEM, "out of memory");
    wtensor w = {.fmt = f, .rows = 1, .cols = n, .data = fd.t->data, .row_bytes = fd.t->nbytes};
    be_get_row(&w, 0, v);
    if ((st = own(m, v))) return st;
    *out = v;
    return MOE_OK;
}

/* The depthwise conv1d weight `name` as float32 [ch x K]: stored [ch, 1, K]
 * (the hub, torch's Conv1d) or [ch, K, 1] (mlx-community, MLX's Conv1d),
 * the same bytes either way. *mlx says which. */
static moe_status get_conv(moe_model *m, const char *name, int64_t ch, int64_t K, float **out, int *mlx) {
    found fd = find(m, name);
    if (!fd.t) return missing(m, name);
    *mlx = fd.t->ndim == 3 && fd.t->shape[1] == K && fd.t->shape[2] == 1 && K > 1;
    wfmt f;
    moe_status st = check(&fd, name, *mlx ? (int64_t[]){ch, K, 1} : (int64_t[]){ch, 1, K}, 3, &f);
    if (st) return st;
    float *v = malloc((size_t)(ch * K) * sizeof *v);
    if (!v) return moe_err(MOE_ENOMEM, "out of memory");
    wtensor w = {.fmt = f, .rows = 1, .cols = ch * K, .data = fd.t->data, .row_bytes = fd.t->nbytes};
    be_get_row(&w, 0, v);
    if ((st = own(m, v))) return st;
    *out = v;
    return MOE_OK;
}

/* -------------------------------------------------------------- layers -- */

static const char *const k_proj_names[3] = {"gate_proj", "up_proj", "down_proj"};

/* gate, up, down of one MLP (nstack 0) or of nstack stacked experts (e[0..nstack-1]). */
static moe_status bind_mlp(moe_model *m, const char *prefix, const char *const names[3], int64_t nstack, int64_t inter,
                           expert *e) {
    char n[256];
    int64_t H = m->cfg.pub.hidden_size, cnt = nstack ? nstack : 1;
    wtensor *w = malloc(3 * (size_t)cnt * sizeof *w); /* [3 x cnt] */
    if (!w) return moe_err(MOE_ENOMEM, "out of memory");
    moe_status st = MOE_OK;
    for (int i = 0; i < 3 && !st; i++) {
        NAME(n, "%s.%s", prefix, names[i]);
        st = get_weight(m, n, nstack, i < 2 ? inter : H, i < 2 ? H : inter, w + i * cnt);
    }
    for (int64_t x = 0; x < cnt && !st; x++) e[x] = (expert){w[x], w[cnt + x], w[2 * cnt + x]};
    free(w);
    return st;
}

/* transformers 5 stacked experts: gate_up_proj [E, 2I, H] (gate rows first), down_proj [E, H, I]. */
static moe_status bind_stacked(moe_model *m, const char *block, expert *ex) {
    const moe_config *c = &m->cfg.pub;
    int64_t E = c->n_experts, I = c->moe_intermediate_size, H = c->hidden_size;
    char ngu[256], nd[256];
    NAME(ngu, "%s.experts.gate_up_proj", block);
    NAME(nd, "%s.experts.down_proj", block);
    found gu = find(m, ngu), dn = find(m, nd);
    if (!gu.t) return missing(m, ngu);
    if (!dn.t) return missing(m, nd);
    wfmt fg, fd;
    moe_status st;
    if ((st = check(&gu, ngu, (int64_t[]){E, 2 * I, H}, 3, &fg)) || (st = check(&dn, nd, (int64_t[]){E, H, I}, 3, &fd)))
        return st;
    size_t rb = (size_t)H * wfmt_size(fg), rbd = (size_t)I * wfmt_size(fd);
    for (int64_t e = 0; e < E; e++) {
        const unsigned char *g = (const unsigned char *)gu.t->data + (size_t)e * 2 * I * rb;
        ex[e].gate = (wtensor){.fmt = fg, .rows = I, .cols = H, .data = g, .row_bytes = rb};
        ex[e].up = (wtensor){.fmt = fg, .rows = I, .cols = H, .data = g + (size_t)I * rb, .row_bytes = rb};
        ex[e].down = (wtensor){.fmt = fd, .rows = H, .cols = I, .data = (const unsigned char *)dn.t->data + (size_t)e * H * rbd, .row_bytes = rbd};
    }
    return MOE_OK;
}

static moe_status bind_moe(moe_model *m, int l, layer *L) {
    const moe_config *c = &m->cfg.pub;
    const family *fam = m->cfg.fam;
    char block[128], n[256];
    moe_status st;
    /* The family's block name, or "mlp" as transformers 5 names every MoE block. */
    const char *blocks[2] = {fam->moe_block, "mlp"};
    int b = 0;
    for (; b < 2; b++) {
        NAME(n, "model.layers.%d.%s.gate.weight", l, blocks[b]);
        if (find(m, n).t) break;
    }
    if (b == 2) {
        NAME(n, "model.layers.%d.%s.gate.weight", l, fam->moe_block);
        return missing(m, n);
    }
    NAME(block, "model.layers.%d.%s", l, blocks[b]);
    NAME(n, "%s.gate", block);
    if ((st = get_weight(m, n, 0, c->n_experts, c->hidden_size, &L->router))) return st;
    L->experts = calloc((size_t)c->n_experts, sizeof *L->experts);
    if (!L->experts) return moe_err(MOE_ENOMEM, "out of memory");
    if ((st = own(m, L->experts))) return st;
    /* experts one by one (hub), stacked as MLX's switch_mlp, or transformers 5's fused stack */
    char sw[160], swn[200];
    NAME(sw, "%s.switch_mlp", block);
    NAME(swn, "%s.gate_proj.weight", sw);
    NAME(n, "%s.experts.0.%s.weight", block, fam->expert_names[0]);
    if (find(m, n).t) {
        for (int e = 0; e < c->n_experts; e++) {
            char p[160];
            NAME(p, "%s.experts.%d", block, e);
            if ((st = bind_mlp(m, p, fam->expert_names, 0, c->moe_intermediate_size, &L->experts[e]))) return st;
        }
    } else if (find(m, swn).t) {
        if ((st = bind_mlp(m, sw, k_proj_names, c->n_experts, c->moe_intermediate_size, L->experts))) return st;
    } else if ((st = bind_stacked(m, block, L->experts))) {
        return st;
    }
    if (c->shared_expert_intermediate_size > 0) {
        NAME(n, "%s.shared_expert", block);
        if ((st = bind_mlp(m, n, k_proj_names, 0, c->shared_expert_intermediate_size, &L->shared))) return st;
        NAME(n, "%s.shared_expert_gate", block);
        if ((st = get_weight(m, n, 0, 1, c->hidden_size, &L->shared_gate))) return st;
    }
    return MOE_OK;
}

#define P "model.layers.%d."

/* A gated DeltaNet layer's mixer (linear_attn.*). *mlx: its conv weight is
 * stored as MLX's (see get_conv). */
static moe_status bind_linear(moe_model *m, int l, layer *L, int *mlx) {
    const model_config *mc = &m->cfg;
    int64_t H = mc->pub.hidden_size, nv = mc->lin_nv, kd = (int64_t)mc->lin_nk * mc->lin_dk, vd = nv * mc->lin_dv;
    char n[256];
    moe_status st;
    float *a_log;
    NAME(n, P "linear_attn.in_proj_qkvz", l);
    if ((st = get_weight(m, n, 0, 2 * kd + 2 * vd, H, &L->qkvz))) return st;
    NAME(n, P "linear_attn.in_proj_ba", l);
    if ((st = get_weight(m, n, 0, 2 * nv, H, &L->ba))) return st;
    NAME(n, P "linear_attn.out_proj", l);
    if ((st = get_weight(m, n, 0, H, vd, &L->out_proj))) return st;
    NAME(n, P "linear_attn.conv1d.weight", l);
    if ((st = get_conv(m, n, 2 * kd + vd, mc->lin_conv, &L->conv_w, mlx))) return st;
    NAME(n, P "linear_attn.A_log", l);
    if ((st = get_vec(m, n, nv, 1, &a_log))) return st;
    for (int64_t h = 0; h < nv; h++) a_log[h] = -expf(a_log[h]);
    L->neg_a = a_log;
    NAME(n, P "linear_attn.dt_bias", l);
    if ((st = get_vec(m, n, nv, 1, &L->dt_bias))) return st;
    NAME(n, P "linear_attn.norm.weight", l);
    return get_vec(m, n, mc->lin_dv, 1, &L->lin_norm);
}

static moe_status bind_layer(moe_model *m, int l, int *mlx) {
    const model_config *mc = &m->cfg;
    const moe_config *c = &mc->pub;
    layer *L = &m->layers[l];
    int64_t H = c->hidden_size, hd = c->head_dim, qd = (int64_t)c->n_heads * hd, kvd = (int64_t)c->n_kv_heads * hd;
    char n[256];
    moe_status st;
    L->window = mc->layer_window[l];
    L->is_moe = mc->layer_moe[l];
    L->is_linear = mc->layer_linear[l];
    NAME(n, P "input_layernorm.weight", l);
    if ((st = get_vec(m, n, H, 1, &L->attn_norm))) return st;
    NAME(n, P "post_attention_layernorm.weight", l);
    if ((st = get_vec(m, n, H, 1, &L->ffn_norm))) return st;
    if (L->is_linear) {
        if ((st = bind_linear(m, l, L, mlx))) return st;
        goto ffn;
    }
    const char *proj[4] = {"q", "k", "v", "o"};
    wtensor *w[4] = {&L->wq, &L->wk, &L->wv, &L->wo};
    float **bias[4] = {&L->bq, &L->bk, &L->bv, &L->bo};
    int64_t rows[4] = {qd * (mc->fam->attn_gate ? 2 : 1), kvd, kvd, H}, cols[4] = {H, H, H, qd};
    for (int i = 0; i < 4; i++) {
        NAME(n, P "self_attn.%s_proj", l, proj[i]);
        if ((st = get_weight(m, n, 0, rows[i], cols[i], w[i]))) return st;
        int want = i < 3 ? mc->qkv_bias : mc->o_bias;
        NAME(n, P "self_attn.%s_proj.bias", l, proj[i]);
        if (want && (st = get_vec(m, n, rows[i], 1, bias[i]))) return st;
    }
    if (mc->fam->qk_norm != QK_NORM_NONE) {
        int full = mc->fam->qk_norm == QK_NORM_FULL;
        NAME(n, P "self_attn.q_norm.weight", l);
        if ((st = get_vec(m, n, full ? qd : hd, 1, &L->q_norm))) return st;
        NAME(n, P "self_attn.k_norm.weight", l);
        if ((st = get_vec(m, n, full ? kvd : hd, 1, &L->k_norm))) return st;
    }
ffn:
    if (L->is_moe) return bind_moe(m, l, L);
    NAME(n, P "mlp", l);
    return bind_mlp(m, n, k_proj_names, 0, c->intermediate_size, &L->mlp);
#undef P
}

/* -------------------------------------------------------------- files -- */

static moe_status open_shards(moe_model *m) {
    char path[4200];
    moe_status st;
    if ((st = path_join(path, sizeof path, m->dir, "model.safetensors.index.json"))) return st;
    if (!file_exists(path)) {
        if ((st = path_join(path, sizeof path, m->dir, "model.safetensors"))) return st;
        if (!file_exists(path))
            return moe_err(MOE_EIO, "%s: no model.safetensors or model.safetensors.index.json", m->dir);
        m->shards = calloc(1, sizeof *m->shards);
        if (!m->shards) return moe_err(MOE_ENOMEM, "out of memory");
        if ((st = st_file_open(path, &m->shards[0]))) return st;
        m->n_shards = 1;
        return MOE_OK;
    }
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    if (!root) return moe_err(MOE_EFORMAT, "%s: not valid JSON (line %d): %s", path, jerr.line, jerr.text);
    json_t *wm = json_object_get(root, "weight_map");
    st = MOE_OK;
    if (!json_is_object(wm) || json_object_size(wm) == 0) {
        st = moe_err(MOE_EFORMAT, "%s: no \"weight_map\" object", path);
        goto done;
    }
    /* the distinct file names, in order of first appearance */
    const char **names = calloc(json_object_size(wm), sizeof *names);
    m->shards = calloc(json_object_size(wm), sizeof *m->shards);
    if (!names || !m->shards) {
        free(names);
        st = moe_err(MOE_ENOMEM, "out of memory");
        goto done;
    }
    int nn = 0;
    const char *key;
    json_t *val;
    json_object_foreach(wm, key, val) {
        const char *fn = json_string_value(val);
        if (!fn || !*fn || strchr(fn, '/') || strcmp(fn, "..") == 0) {
            st = moe_err(MOE_EFORMAT, "%s: weight_map[%s] is not a file name in the model directory", path, key);
            break;
        }
        int seen = 0;
        for (int i = 0; i < nn && !seen; i++) seen = strcmp(names[i], fn) == 0;
        if (!seen) names[nn++] = fn;
    }
    for (int i = 0; i < nn && st == MOE_OK; i++) {
        char sp[4200];
        if ((st = path_join(sp, sizeof sp, m->dir, names[i]))) break;
        if ((st = st_file_open(sp, &m->shards[i]))) break;
        m->n_shards = i + 1;
    }
    /* every tensor the index names must be in the shard it names */
    if (st == MOE_OK) {
        json_object_foreach(wm, key, val) {
            int ok = 0;
            for (int s = 0; s < m->n_shards && !ok; s++) {
                const char *base = strrchr(m->shards[s]->path, '/');
                if (strcmp(base ? base + 1 : m->shards[s]->path, json_string_value(val)) == 0)
                    ok = st_file_find(m->shards[s], key) != NULL;
            }
            if (!ok) {
                st = moe_err(MOE_EFORMAT, "%s: tensor %s is listed in %s but not found there", path, key, json_string_value(val));
                break;
            }
        }
    }
    free(names);
done:
    json_decref(root);
    return st;
}

/* Parameter and byte counts for moe info and the roofline. */
static void count_params(moe_model *m) {
    moe_config *c = &m->cfg.pub;
    int64_t n = 0, bytes = 0;
    for (int s = 0; s < m->n_shards; s++)
        for (size_t i = 0; i < m->shards[s]->n; i++) {
            const st_tensor *t = &m->shards[s]->tensors[i];
            bytes += (int64_t)t->nbytes;
            size_t len = strlen(t->name);
            int quant_aux = len > 7 && (!strcmp(t->name + len - 7, ".scales") || !strcmp(t->name + len - 7, ".biases"));
            if (quant_aux && m->cfg.quant_bits) continue; /* MLX scales/biases are not parameters */
            int bits = 0, group;
            if (t->dtype == ST_U32 && len > 7 && !strcmp(t->name + len - 7, ".weight")) {
                char module[256];
                snprintf(module, sizeof module, "%.*s", (int)(len - 7), t->name);
                config_module_quant(&m->cfg, module, &bits, &group);
            }
            n += bits ? (int64_t)(t->nbytes * 8 / (size_t)bits) : (int64_t)(t->nbytes / st_dtype_size(t->dtype));
        }
    int64_t idle_p = 0, idle_b = 0;
    for (int l = 0; l < c->n_layers; l++) {
        const layer *L = &m->layers[l];
        if (!L->is_moe) continue;
        const expert *e = &L->experts[0];
        int64_t p = e->gate.rows * e->gate.cols + e->up.rows * e->up.cols + e->down.rows * e->down.cols;
        int64_t b = (int64_t)(wtensor_bytes(&e->gate) + wtensor_bytes(&e->up) + wtensor_bytes(&e->down));
        idle_p += p * (c->n_experts - c->n_experts_per_tok);
        idle_b += b * (c->n_experts - c->n_experts_per_tok);
    }
    c->n_params = n;
    c->n_params_active = n - idle_p;
    c->weight_bytes = bytes;
    /* per decoded token: one embedding row, not the table (unless it is the head too) */
    int64_t emb = c->tie_word_embeddings ? 0 : (int64_t)wtensor_bytes(&m->embed);
    c->weight_bytes_active = bytes - idle_b - emb;
}

/* Qwen3-Next's RMSNorms (the layers' two, q/k norms, the final one) are
 * stored zero-centred by the hub (applied as 1 + w) and already shifted in
 * mlx-community checkpoints, whose conversion (mlx-lm's sanitize) also gives
 * the conv weights MLX's shape: so the conv shape says which (mlx 1: shifted).
 * A model without linear layers (mlx -1) counts as converted when its experts
 * are stacked as switch_mlp, as only the conversion stacks them. */
static void centre_norms(moe_model *m, int mlx) {
    const moe_config *c = &m->cfg.pub;
    if (mlx < 0) {
        mlx = 0;
        for (int s = 0; s < m->n_shards && !mlx; s++)
            for (size_t i = 0; i < m->shards[s]->n && !mlx; i++) mlx = strstr(m->shards[s]->tensors[i].name, ".switch_mlp.") != NULL;
    }
    if (mlx) return;
    int64_t H = c->hidden_size, hd = c->head_dim;
    for (int64_t i = 0; i < H; i++) m->final_norm[i] += 1;
    for (int l = 0; l < c->n_layers; l++) {
        layer *L = &m->layers[l];
        for (int64_t i = 0; i < H; i++) {
            L->attn_norm[i] += 1;
            L->ffn_norm[i] += 1;
        }
        for (int64_t i = 0; L->q_norm && i < hd; i++) L->q_norm[i] += 1;
        for (int64_t i = 0; L->k_norm && i < hd; i++) L->k_norm[i] += 1;
    }
}

static moe_status load(moe_model *m, const moe_load_params *p) {
    char path[4200];
    moe_status st;
    if ((st = path_join(path, sizeof path, m->dir, "config.json"))) return st;
    char *text;
    if ((st = file_read_all(path, 16u << 20, &text, NULL))) return st;
    st = config_parse(&m->cfg, text, path);
    free(text);
    if (st) return st;
    if ((st = path_join(path, sizeof path, m->dir, "generation_config.json"))) return st;
    if (file_exists(path) && (st = config_read_generation(&m->cfg, path))) return st;
    if ((st = open_shards(m))) return st;

    const moe_config *c = &m->cfg.pub;
    int64_t V = c->vocab_size, H = c->hidden_size;
    if ((st = get_weight(m, "model.embed_tokens", 0, V, H, &m->embed))) return st;
    if (c->tie_word_embeddings && !find(m, "lm_head.weight").t) {
        m->lm_head = m->embed;
    } else if ((st = get_weight(m, "lm_head", 0, V, H, &m->lm_head))) {
        return st;
    }
    if ((st = get_vec(m, "model.norm.weight", H, 1, &m->final_norm))) return st;
    m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
    if (!m->layers) return moe_err(MOE_ENOMEM, "out of memory");
    int mlx = -1; /* the first linear layer's conv weight: MLX's shape, or the hub's */
    for (int l = 0; l < c->n_layers; l++) {
        int lm = -1;
        if ((st = bind_layer(m, l, &lm))) return st;
        if (mlx < 0) mlx = lm;
    }
    if (m->cfg.fam->centred_norms) centre_norms(m, mlx);

    int rot = m->cfg.rot_dim, half = rot / 2;
    m->inv_freq = malloc((size_t)half * sizeof *m->inv_freq);
    if (!m->inv_freq) return moe_err(MOE_ENOMEM, "out of memory");
    for (int i = 0; i < half; i++) /* as transformers: 1 / theta^(2i/d), in float32, d the rotated dims */
        m->inv_freq[i] = (float)(1.0 / pow((double)(float)c->rope_theta, (double)(float)(2.0f * i / rot)));
    count_params(m);
    const char *dc = getenv("MOE_DELTA_CHUNK"); /* tests: the chunked and the recurrent forms side by side */
    m->delta_chunk = dc && *dc ? atoi(dc) : 64;
    if (m->delta_chunk < 0 || m->delta_chunk > 1024) m->delta_chunk = 64;
    if (c->n_experts > 0 && !(m->route_counts = calloc((size_t)c->n_layers * (size_t)c->n_experts, sizeof *m->route_counts)))
        return moe_err(MOE_ENOMEM, "out of memory");
    const char *dev = p->device && *p->device ? p->device : getenv("MOE_DEVICE");
    if ((st = backend_open(dev, p->n_threads, NULL, &m->be))) return st;
    m->inv_freq_be = m->inv_freq;
    return MOE_OK;
}

/* ------------------------------------------------------- placement --
 * Where the backend does not compute in host memory (a GPU), every weight
 * and vector goes to its memory once, here, in its stored format; the
 * layer's fields then point there. Host copies stay as they were (the mmap,
 * the owned float32 vectors) and are freed with the model as before. */

static moe_status each_expert(moe_model *m, expert *e, model_weight_fn fn, void *ctx) {
    moe_status st;
    if ((st = fn(m, &e->gate, ctx)) || (st = fn(m, &e->up, ctx))) return st;
    return fn(m, &e->down, ctx);
}

static moe_status each_layer_weight(moe_model *m, layer *L, model_weight_fn fn, void *ctx) {
    const moe_config *c = &m->cfg.pub;
    moe_status st;
    wtensor *lin[] = {&L->qkvz, &L->ba, &L->out_proj}, *att[] = {&L->wq, &L->wk, &L->wv, &L->wo};
    wtensor **w = L->is_linear ? lin : att;
    for (size_t i = 0, n = L->is_linear ? 3 : 4; i < n; i++)
        if ((st = fn(m, w[i], ctx))) return st;
    if (!L->is_moe) return each_expert(m, &L->mlp, fn, ctx);
    if ((st = fn(m, &L->router, ctx))) return st;
    for (int e = 0; !m->xc && e < c->n_experts; e++)
        if ((st = each_expert(m, &L->experts[e], fn, ctx))) return st;
    if (c->shared_expert_intermediate_size > 0 &&
        ((st = each_expert(m, &L->shared, fn, ctx)) || (st = fn(m, &L->shared_gate, ctx))))
        return st;
    return MOE_OK;
}

moe_status model_each_weight(moe_model *m, model_weight_fn fn, void *ctx) {
    moe_status st;
    int tied = m->lm_head.data == m->embed.data;
    if ((st = fn(m, &m->embed, ctx))) return st;
    if (tied) m->lm_head = m->embed;
    else if ((st = fn(m, &m->lm_head, ctx))) return st;
    for (int l = 0; l < m->cfg.pub.n_layers; l++)
        if ((st = each_layer_weight(m, &m->layers[l], fn, ctx))) return st;
    return MOE_OK;
}

static moe_status place_vec(moe_model *m, float **v, size_t n) {
    moe_status st;
    const float *d = be_place_floats(m->be, *v, n, &st);
    if (!st) *v = (float *)d;
    return st;
}

static moe_status place_layer_vecs(moe_model *m, layer *L) {
    const moe_config *c = &m->cfg.pub;
    const model_config *mc = &m->cfg;
    int64_t H = c->hidden_size, hd = c->head_dim;
    int qn_full = mc->fam->qk_norm == QK_NORM_FULL;
    moe_status st;
    if ((st = place_vec(m, &L->attn_norm, (size_t)H)) || (st = place_vec(m, &L->ffn_norm, (size_t)H))) return st;
    if (L->is_linear) {
        int64_t cd = 2 * (int64_t)mc->lin_nk * mc->lin_dk + (int64_t)mc->lin_nv * mc->lin_dv;
        if ((st = place_vec(m, &L->conv_w, (size_t)(cd * mc->lin_conv))) || (st = place_vec(m, &L->neg_a, (size_t)mc->lin_nv)) ||
            (st = place_vec(m, &L->dt_bias, (size_t)mc->lin_nv)) || (st = place_vec(m, &L->lin_norm, (size_t)mc->lin_dv)))
            return st;
        return MOE_OK;
    }
    int64_t qd = L->wq.rows, kvd = L->wk.rows;
    if ((st = place_vec(m, &L->bq, (size_t)qd)) || (st = place_vec(m, &L->bk, (size_t)kvd)) ||
        (st = place_vec(m, &L->bv, (size_t)kvd)) || (st = place_vec(m, &L->bo, (size_t)H)) ||
        (st = place_vec(m, &L->q_norm, (size_t)(qn_full ? (int64_t)c->n_heads * hd : hd))) ||
        (st = place_vec(m, &L->k_norm, (size_t)(qn_full ? (int64_t)c->n_kv_heads * hd : hd))))
        return st;
    return MOE_OK;
}

static moe_status place_one(moe_model *m, wtensor *w, void *ctx) {
    (void)ctx;
    return be_place_weight(m->be, w);
}

static moe_status place_weights(moe_model *m) {
    moe_status st;
    if ((st = model_each_weight(m, place_one, NULL))) return moe_err_prefix(st, "placing the weights");
    if ((st = place_vec(m, &m->final_norm, (size_t)m->cfg.pub.hidden_size))) return st;
    const float *f = be_place_floats(m->be, m->inv_freq, (size_t)(m->cfg.rot_dim / 2), &st);
    if (st) return st;
    m->inv_freq_be = f;
    for (int l = 0; l < m->cfg.pub.n_layers; l++)
        if ((st = place_layer_vecs(m, &m->layers[l]))) return moe_err_prefix(st, "placing the weights");
    return MOE_OK;
}

void moe_load_params_defaults(moe_load_params *p) {
    memset(p, 0, sizeof *p);
    p->offload = -1;
    p->capacity = -1;
    p->prefetch = 1;
    p->warm = 1;
    p->pin = -1;
    p->host_experts = -1;
}

moe_status moe_model_load(const char *dir, const moe_load_params *p, moe_model **out) {
    *out = NULL;
    if (!dir) return moe_err(MOE_EINVAL, "no model directory given");
    moe_model *m = calloc(1, sizeof *m);
    if (!m) return moe_err(MOE_ENOMEM, "out of memory");
    pthread_mutex_init(&m->lock, NULL);
    if (strlen(dir) >= sizeof m->dir) {
        moe_model_free(m);
        return moe_err(MOE_EINVAL, "model path too long");
    }
    strcpy(m->dir, dir);
    moe_load_params dp;
    if (!p) moe_load_params_defaults(&dp);
    const moe_load_params *lp = p ? p : &dp;
    moe_status st = lp->load == MOE_LOAD_AUTO || lp->load == MOE_LOAD_MMAP || lp->load == MOE_LOAD_COPY
                        ? load(m, lp)
                        : moe_err(MOE_EINVAL, "load mode %d: expected MOE_LOAD_AUTO, MOE_LOAD_MMAP or MOE_LOAD_COPY", (int)lp->load);
    if (!st) st = offload_setup(m, lp);
    if (!st && !backend_host_memory(m->be)) st = place_weights(m);
    else if (!st) st = wcopy_load(m, lp);
    if (!st && m->route_counts && backend_routes(m->be) &&
        !(m->route_counts_be = be_alloc(m->be, sizeof *m->route_counts_be * (size_t)m->cfg.pub.n_layers *
                                                   (size_t)m->cfg.pub.n_experts)))
        st = moe_err_prefix(MOE_ENOMEM, "the routing counts");
    /* a DeltaNet state carries every token's rounding on: int8-rounded decode inputs moved the
     * quantized qwen3next fixture's logits 12-18% RMS on the GPU (3x the other families') */
    if (!st && m->cfg.pub.n_linear_layers > 0) backend_set_float_decode(m->be, 1);
    if (st) {
        moe_model_free(m);
        return st;
    }
    *out = m;
    return MOE_OK;
}

void moe_model_free(moe_model *m) {
    if (!m) return;
    offload_teardown(m);
    if (m->be) be_free(m->be, m->route_counts_be);
    wcopy_free(m);
    backend_free(m->be);
    for (int i = 0; i < m->n_owned; i++) free(m->owned[i]);
    free(m->owned);
    free(m->layers);
    free(m->inv_freq);
    free(m->route_counts);
    for (int i = 0; i < m->n_shards; i++) st_file_close(m->shards[i]);
    free(m->shards);
    config_free(&m->cfg);
    pthread_mutex_destroy(&m->lock);
    free(m);
}

const moe_config *moe_model_config(const moe_model *m) { return &m->cfg.pub; }
int64_t moe_model_copied_bytes(const moe_model *m) { return m->wcopy_bytes; }
int moe_model_threads(const moe_model *m) { return backend_threads(m->be); }
const char *moe_model_device(const moe_model *m) { return backend_device_name(m->be); }
const char *moe_devices(void) { return backend_devices(); }

moe_status moe_model_expert_counts(const moe_model *m, int layer, int64_t *counts) {
    const moe_config *c = &m->cfg.pub;
    if (!counts) return moe_err(MOE_EINVAL, "moe_model_expert_counts: counts is NULL");
    if (layer < 0 || layer >= c->n_layers || !m->layers[layer].is_moe)
        return moe_err(MOE_EINVAL, "layer %d is not a MoE layer", layer);
    size_t E = (size_t)c->n_experts;
    memcpy(counts, m->route_counts + (size_t)layer * E, sizeof *counts * E);
    if (!m->route_counts_be) return MOE_OK;
    /* plus what the backend counted when it routed on the device */
    int64_t *dev = malloc(sizeof *dev * E);
    if (!dev) return moe_err(MOE_ENOMEM, "out of memory");
    pthread_mutex_lock((pthread_mutex_t *)&m->lock); /* the backend's stream is the forward pass's */
    moe_status st = be_download(m->be, dev, m->route_counts_be + (size_t)layer * E, sizeof *dev * E);
    pthread_mutex_unlock((pthread_mutex_t *)&m->lock);
    for (size_t e = 0; !st && e < E; e++) counts[e] += dev[e];
    free(dev);
    return st;
}

void moe_model_reset_expert_counts(moe_model *m) {
    size_t n = (size_t)m->cfg.pub.n_layers * (size_t)m->cfg.pub.n_experts;
    if (m->route_counts) memset(m->route_counts, 0, sizeof *m->route_counts * n);
    if (m->route_counts_be) {
        pthread_mutex_lock(&m->lock);
        be_zero(m->be, m->route_counts_be, sizeof *m->route_counts_be * n);
        pthread_mutex_unlock(&m->lock);
    }
}
