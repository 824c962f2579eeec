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

static moe_status missing(const moe_model *m, const char *name) {
    return moe_err(MOE_EFORMAT, "%s: tensor %s is missing", m->dir, name);
}

static moe_status get_mat(moe_model *m, const char *name, int64_t rows, int64_t cols, wtensor *out) {
    found fd = find(m, name);
    if (!fd.t) return missing(m, name);
    wfmt f;
    moe_status st = check(&fd, name, (int64_t[]){rows, cols}, 2, &f);
    if (st) return st;
    *out = (wtensor){.fmt = f, .rows = rows, .cols = cols, .data = fd.t->data, .row_bytes = (size_t)cols * wfmt_size(f)};
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

#define NAME(buf, ...) snprintf(buf, sizeof buf, __VA_ARGS__)

/* -------------------------------------------------------------- layers -- */

static moe_status bind_mlp(moe_model *m, const char *prefix, const char *const names[3], int64_t inter, expert *e) {
    char n[256];
    int64_t H = m->cfg.pub.hidden_size;
    moe_status st;
    NAME(n, "%s.%s.weight", prefix, names[0]);
    if ((st = get_mat(m, n, inter, H, &e->gate))) return st;
    NAME(n, "%s.%s.weight", prefix, names[1]);
    if ((st = get_mat(m, n, inter, H, &e->up))) return st;
    NAME(n, "%s.%s.weight", prefix, names[2]);
    return get_mat(m, n, H, inter, &e->down);
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
    if ((st = get_mat(m, n, c->n_experts, c->hidden_size, &L->router))) return st;
    L->experts = calloc((size_t)c->n_experts, sizeof *L->experts);
    if (!L->experts) return moe_err(MOE_ENOMEM, "out of memory");
    if ((st = own(m, L->experts))) return st;
    NAME(n, "%s.experts.0.%s.weight", block, fam->expert_names[0]);
    if (find(m, n).t) {
        for (int e = 0; e < c->n_experts; e++) {
            char p[160];
            NAME(p, "%s.experts.%d", block, e);
            if ((st = bind_mlp(m, p, fam->expert_names, c->moe_intermediate_size, &L->experts[e]))) return st;
        }
    } else if ((st = bind_stacked(m, block, L->experts))) {
        return st;
    }
    if (c->shared_expert_intermediate_size > 0) {
        NAME(n, "%s.shared_expert", block);
        static const char *const sn[3] = {"gate_proj", "up_proj", "down_proj"};
        if ((st = bind_mlp(m, n, sn, c->shared_expert_intermediate_size, &L->shared))) return st;
        NAME(n, "%s.shared_expert_gate.weight", block);
        if ((st = get_mat(m, n, 1, c->hidden_size, &L->shared_gate))) return st;
    }
    return MOE_OK;
}

static moe_status bind_layer(moe_model *m, int l) {
    const model_config *mc = &m->cfg;
    const moe_config *c = &mc->pub;
    layer *L = &m->layers[l];
    int64_t H = c->hidden_size, hd = c->head_dim, qd = (int64_t)c->n_heads * hd, kvd = (int64_t)c->n_kv_heads * hd;
    char n[256];
    moe_status st;
    L->window = mc->layer_window[l];
    L->is_moe = mc->layer_moe[l];
#define P "model.layers.%d."
    NAME(n, P "input_layernorm.weight", l);
    if ((st = get_vec(m, n, H, 1, &L->attn_norm))) return st;
    NAME(n, P "post_attention_layernorm.weight", l);
    if ((st = get_vec(m, n, H, 1, &L->ffn_norm))) return st;
    const char *proj[4] = {"q", "k", "v", "o"};
    wtensor *w[4] = {&L->wq, &L->wk, &L->wv, &L->wo};
    float **bias[4] = {&L->bq, &L->bk, &L->bv, &L->bo};
    int64_t rows[4] = {qd, kvd, kvd, H}, cols[4] = {H, H, H, qd};
    for (int i = 0; i < 4; i++) {
        NAME(n, P "self_attn.%s_proj.weight", l, proj[i]);
        if ((st = get_mat(m, n, rows[i], cols[i], w[i]))) return st;
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
    if (L->is_moe) return bind_moe(m, l, L);
    NAME(n, P "mlp", l);
    static const char *const dn[3] = {"gate_proj", "up_proj", "down_proj"};
    return bind_mlp(m, n, dn, c->intermediate_size, &L->mlp);
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
            n += (int64_t)(t->nbytes / st_dtype_size(t->dtype));
            bytes += (int64_t)t->nbytes;
        }
    int64_t idle_p = 0, idle_b = 0;
    for (int l = 0; l < c->n_layers; l++) {
        const layer *L = &m->layers[l];
        if (!L->is_moe) continue;
        const expert *e = &L->experts[0];
        int64_t p = e->gate.rows * e->gate.cols + e->up.rows * e->up.cols + e->down.rows * e->down.cols;
        int64_t b = e->gate.rows * (int64_t)e->gate.row_bytes + e->up.rows * (int64_t)e->up.row_bytes +
                    e->down.rows * (int64_t)e->down.row_bytes;
        idle_p += p * (c->n_experts - c->n_experts_per_tok);
        idle_b += b * (c->n_experts - c->n_experts_per_tok);
    }
    c->n_params = n;
    c->n_params_active = n - idle_p;
    c->weight_bytes = bytes;
    /* per decoded token: one embedding row, not the table (unless it is the head too) */
    int64_t emb = c->tie_word_embeddings ? 0 : m->embed.rows * (int64_t)m->embed.row_bytes;
    c->weight_bytes_active = bytes - idle_b - emb;
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
    if ((st = get_mat(m, "model.embed_tokens.weight", V, H, &m->embed))) return st;
    if (c->tie_word_embeddings && !find(m, "lm_head.weight").t) {
        m->lm_head = m->embed;
    } else if ((st = get_mat(m, "lm_head.weight", V, H, &m->lm_head))) {
        return st;
    }
    if ((st = get_vec(m, "model.norm.weight", H, 1, &m->final_norm))) return st;
    m->layers = calloc((size_t)c->n_layers, sizeof *m->layers);
    if (!m->layers) return moe_err(MOE_ENOMEM, "out of memory");
    for (int l = 0; l < c->n_layers; l++)
        if ((st = bind_layer(m, l))) return st;

    int half = c->head_dim / 2;
    m->inv_freq = malloc((size_t)half * sizeof *m->inv_freq);
    if (!m->inv_freq) return moe_err(MOE_ENOMEM, "out of memory");
    for (int i = 0; i < half; i++) /* as transformers: 1 / theta^(2i/d), in float32 */
        m->inv_freq[i] = (float)(1.0 / pow((double)(float)c->rope_theta, (double)(float)(2.0f * i / c->head_dim)));
    count_params(m);
    return backend_new(p ? p->n_threads : 0, NULL, &m->be);
}

void moe_load_params_defaults(moe_load_params *p) { memset(p, 0, sizeof *p); }

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
    moe_status st = load(m, p);
    if (st) {
        moe_model_free(m);
        return st;
    }
    *out = m;
    return MOE_OK;
}

void moe_model_free(moe_model *m) {
    if (!m) return;
    backend_free(m->be);
    for (int i = 0; i < m->n_owned; i++) free(m->owned[i]);
    free(m->owned);
    free(m->layers);
    free(m->inv_freq);
    for (int i = 0; i < m->n_shards; i++) st_file_close(m->shards[i]);
    free(m->shards);
    config_free(&m->cfg);
    pthread_mutex_destroy(&m->lock);
    free(m);
}

const moe_config *moe_model_config(const moe_model *m) { return &m->cfg.pub; }
int moe_model_threads(const moe_model *m) { return backend_threads(m->be); }
