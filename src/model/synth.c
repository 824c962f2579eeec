/* synth.c — moe synth: a model of a real model's shapes with random weights,
 * written in the hub layout, so speed can be measured without downloading
 * the real thing. Weights are uniform in [-0.035, 0.035] (std ~0.02, like a
 * fresh initialisation), norms are 1; each value is a hash of (seed, tensor,
 * index), so the files are the same on every run. With bits, the tensors are
 * those of the mlx-community quantized layout (mlx_layout.c, shared with moe
 * quantize): random packed values, and scales and biases that dequantize
 * them to the same range. */
#include <errno.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../base/err.h"
#include "../base/file.h"
#include "../base/half.h"
#include "../format/mlx_quant.h"
#include "../format/safetensors.h"
#include "config.h"
#include "mlx_layout.h"

typedef struct shape {
    const char *name, *model_type;
    int vocab, hidden, layers, heads, kv_heads, head_dim, inter;
    int experts, top_k, moe_inter, shared_inter, window;
    double rope_theta, eps;
    int norm_topk, qkv_bias;
} shape;

static const shape k_shapes[] = {
    {"mistral-7b", "mistral", 32000, 4096, 32, 32, 8, 128, 14336, 0, 0, 0, 0, 4096, 10000, 1e-5, 0, 0},
    {"mixtral-8x7b", "mixtral", 32000, 4096, 32, 32, 8, 128, 14336, 8, 2, 14336, 0, 0, 1e6, 1e-5, 1, 0},
    {"qwen3-30b-a3b", "qwen3_moe", 151936, 2048, 48, 32, 4, 128, 6144, 128, 8, 768, 0, 0, 1e6, 1e-6, 1, 0},
    {"qwen1.5-moe-a2.7b", "qwen2_moe", 151936, 2048, 24, 16, 16, 128, 5632, 60, 4, 1408, 5632, 0, 1e6, 1e-6, 0, 1},
    {"olmoe-1b-7b", "olmoe", 50304, 2048, 16, 16, 16, 128, 1024, 64, 8, 1024, 0, 0, 1e4, 1e-5, 0, 0},
};

const char *const *moe_synth_shapes(void) {
    static const char *names[sizeof k_shapes / sizeof *k_shapes + 1];
    for (size_t i = 0; i < sizeof k_shapes / sizeof *k_shapes; i++) names[i] = k_shapes[i].name;
    return names;
}

void moe_synth_params_defaults(moe_synth_params *p) {
    memset(p, 0, sizeof *p);
    p->dtype = "bf16";
    p->group_size = 64;
}

/* ---------------------------------------------------------- tensors -- */

/* A tensor's values: center + spread * (u - 1/2), u uniform in [0, 1);
 * U32 tensors (packed quantized values) get random bits. */
typedef struct gen { uint64_t seed; float center, spread; } gen;

static const gen k_weight = {0, 0.0f, 0.07f}, k_norm = {0, 1.0f, 0.0f};

static uint64_t mix(uint64_t z) {
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static void fill(void *ctx, const st_out_tensor *t, size_t off, void *buf, size_t n) {
    const gen *g = ctx;
    unsigned char *o = buf;
    if (t->dtype == ST_U32) { /* 8 random bytes per hash */
        for (size_t i = 0; i < n;) {
            size_t p = off + i, b = p % 8, take = 8 - b < n - i ? 8 - b : n - i;
            uint64_t v = mix(g->seed + 0x9e3779b97f4a7c15ull * (p / 8));
            memcpy(o + i, (const unsigned char *)&v + b, take);
            i += take;
        }
        return;
    }
    size_t es = st_dtype_size(t->dtype), first = off / es, count = n / es;
    for (size_t i = 0; i < count; i++) {
        float u = (float)(mix(g->seed + 0x9e3779b97f4a7c15ull * (first + i)) >> 40) * 0x1.0p-24f;
        mlxq_store(o, t->dtype, (int64_t)i, g->center + g->spread * (u - 0.5f));
    }
}

typedef struct tlist {
    st_out_tensor *t;
    gen *g;
    char **names;
    size_t n, cap;
    st_dtype dtype;
    uint64_t seed;
    int oom;
} tlist;

static void add(tlist *l, int norm, int64_t d0, int64_t d1, const char *fmt, ...) __attribute__((format(printf, 5, 6)));
static void add(tlist *l, int norm, int64_t d0, int64_t d1, const char *fmt, ...) {
    if (l->oom) return;
    if (l->n == l->cap) {
        size_t nc = l->cap ? l->cap * 2 : 256;
        st_out_tensor *t = realloc(l->t, nc * sizeof *t);
        if (t) l->t = t;
        gen *g = realloc(l->g, nc * sizeof *g);
        if (g) l->g = g;
        char **nm = realloc(l->names, nc * sizeof *nm);
        if (nm) l->names = nm;
        if (!t || !g || !nm) { l->oom = 1; return; }
        l->cap = nc;
    }
    char buf[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (!(l->names[l->n] = strdup(buf))) { l->oom = 1; return; }
    l->g[l->n] = norm ? k_norm : k_weight;
    l->g[l->n].seed = mix(l->seed ^ (0x51ed27ull * (l->n + 1)));
    l->t[l->n] = (st_out_tensor){l->names[l->n], l->dtype, d1 ? 2 : 1, {d0, d1}, fill, NULL};
    l->n++;
}

static void add_mlp(tlist *l, const char *prefix, const char *const names[3], int64_t inter, int64_t H) {
    add(l, 0, inter, H, "%s.%s.weight", prefix, names[0]);
    add(l, 0, inter, H, "%s.%s.weight", prefix, names[1]);
    add(l, 0, H, inter, "%s.%s.weight", prefix, names[2]);
}

static void build(tlist *l, const shape *s, const family *f, int layers) {
    int64_t H = s->hidden, qd = (int64_t)s->heads * s->head_dim, kvd = (int64_t)s->kv_heads * s->head_dim;
    static const char *const dense[3] = {"gate_proj", "up_proj", "down_proj"};
    add(l, 0, s->vocab, H, "model.embed_tokens.weight");
    for (int i = 0; i < layers; i++) {
        char p[128], q[160];
        snprintf(p, sizeof p, "model.layers.%d", i);
        add(l, 1, H, 0, "%s.input_layernorm.weight", p);
        add(l, 1, H, 0, "%s.post_attention_layernorm.weight", p);
        add(l, 0, qd, H, "%s.self_attn.q_proj.weight", p);
        add(l, 0, kvd, H, "%s.self_attn.k_proj.weight", p);
        add(l, 0, kvd, H, "%s.self_attn.v_proj.weight", p);
        add(l, 0, H, qd, "%s.self_attn.o_proj.weight", p);
        if (s->qkv_bias) {
            add(l, 0, qd, 0, "%s.self_attn.q_proj.bias", p);
            add(l, 0, kvd, 0, "%s.self_attn.k_proj.bias", p);
            add(l, 0, kvd, 0, "%s.self_attn.v_proj.bias", p);
        }
        if (f->qk_norm != QK_NORM_NONE) {
            int full = f->qk_norm == QK_NORM_FULL;
            add(l, 1, full ? qd : s->head_dim, 0, "%s.self_attn.q_norm.weight", p);
            add(l, 1, full ? kvd : s->head_dim, 0, "%s.self_attn.k_norm.weight", p);
        }
        if (!s->experts) {
            snprintf(q, sizeof q, "%s.mlp", p);
            add_mlp(l, q, dense, s->inter, H);
            continue;
        }
        add(l, 0, s->experts, H, "%s.%s.gate.weight", p, f->moe_block);
        for (int e = 0; e < s->experts; e++) {
            snprintf(q, sizeof q, "%s.%s.experts.%d", p, f->moe_block, e);
            add_mlp(l, q, f->expert_names, s->moe_inter, H);
        }
        if (s->shared_inter) {
            snprintf(q, sizeof q, "%s.%s.shared_expert", p, f->moe_block);
            add_mlp(l, q, dense, s->shared_inter, H);
            add(l, 0, 1, H, "%s.%s.shared_expert_gate.weight", p, f->moe_block);
        }
    }
    add(l, 1, H, 0, "model.norm.weight");
    add(l, 0, s->vocab, H, "lm_head.weight");
    for (size_t i = 0; i < l->n; i++) l->t[i].ctx = &l->g[i];
}

static json_t *make_config(const shape *s, int layers, const char *dtype) {
    json_t *c = json_pack("{s:[s], s:s, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:i, s:f, s:f, s:s, s:b, s:s, s:i, s:i}",
                          "architectures", "SyntheticForCausalLM", "model_type", s->model_type, "vocab_size", s->vocab,
                          "hidden_size", s->hidden, "num_hidden_layers", layers, "num_attention_heads", s->heads,
                          "num_key_value_heads", s->kv_heads, "head_dim", s->head_dim, "intermediate_size", s->inter,
                          "max_position_embeddings", 32768, "rope_theta", s->rope_theta, "rms_norm_eps", s->eps,
                          "hidden_act", "silu", "tie_word_embeddings", 0, "torch_dtype", dtype, "bos_token_id", 1,
                          "eos_token_id", 2);
    if (!c) return NULL;
    json_object_set_new(c, "sliding_window", s->window ? json_integer(s->window) : json_null());
    if (s->experts) {
        json_object_set_new(c, strcmp(s->model_type, "mixtral") ? "num_experts" : "num_local_experts", json_integer(s->experts));
        json_object_set_new(c, "num_experts_per_tok", json_integer(s->top_k));
        json_object_set_new(c, "moe_intermediate_size", json_integer(s->moe_inter));
        json_object_set_new(c, "norm_topk_prob", json_boolean(s->norm_topk));
        if (s->shared_inter) json_object_set_new(c, "shared_expert_intermediate_size", json_integer(s->shared_inter));
    }
    return c;
}

static moe_status write_json(json_t *c, const char *path) {
    int rc = json_dump_file(c, path, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
    return rc ? moe_err(MOE_EIO, "%s: cannot write", path) : MOE_OK;
}

/* The float model in the hub layout: one model.safetensors. */
static moe_status write_float(const moe_synth_params *p, const shape *s, int layers, st_dtype dtype, const char *dir) {
    tlist l = {0};
    l.dtype = dtype;
    l.seed = mix(p->seed + 1);
    build(&l, s, family_find(s->model_type), layers);
    char path[4200];
    moe_status st = l.oom ? moe_err(MOE_ENOMEM, "out of memory") : MOE_OK;
    if (!st) st = path_join(path, sizeof path, dir, "model.safetensors");
    if (!st) st = st_write(path, l.t, l.n, p->progress, p->progress_ctx);
    for (size_t i = 0; i < l.n; i++) free(l.names[i]);
    free(l.names);
    free(l.t);
    free(l.g);
    return st;
}

/* The quantized mlx-community layout, laid out as moe quantize writes it:
 * the config (parsed as a loader would) gives the layout; packed values are
 * random bits; scales s ~ range/n_bins and biases b ~ -range/2, so that
 * s*q + b spans the float model's [-0.035, 0.035]. */
static moe_status write_quant(const moe_synth_params *p, json_t *cfg, st_dtype dtype, const char *dir) {
    char *text = json_dumps(cfg, 0);
    if (!text) return moe_err(MOE_ENOMEM, "out of memory");
    model_config mc;
    moe_status st = config_parse(&mc, text, "synth config.json");
    free(text);
    if (st) return st;
    ml_layout lay;
    ml_tensors ts = {0};
    gen *g = NULL;
    st_dtype *dts = NULL;
    if ((st = ml_layout_build(&mc, p->bits, p->group_size, 1, &lay))) {
        config_free(&mc);
        return st;
    }
    if (!(dts = malloc((lay.n ? lay.n : 1) * sizeof *dts))) st = moe_err(MOE_ENOMEM, "out of memory");
    for (size_t i = 0; !st && i < lay.n; i++) dts[i] = dtype;
    if (!st) st = ml_tensors_build(&lay, dts, &ts);
    if (!st && !(g = calloc(ts.n ? ts.n : 1, sizeof *g))) st = moe_err(MOE_ENOMEM, "out of memory");
    uint64_t seed = mix(p->seed + 1);
    for (size_t i = 0; !st && i < ts.n; i++) {
        const ml_entry *e = &lay.e[ts.entry[i]];
        float n_bins = e->bits ? (float)((1 << e->bits) - 1) : 1.0f;
        if (e->kind == ML_VECTOR) g[i] = strstr(e->name, "norm") ? k_norm : k_weight;
        else if (!e->bits || ts.what[i] == ML_VALUES) g[i] = k_weight;
        else if (ts.what[i] == ML_SCALES) g[i] = (gen){0, 0.07f / n_bins, 0.014f / n_bins};
        else g[i] = (gen){0, -0.035f, 0.007f};
        g[i].seed = mix(seed ^ (0x51ed27ull * (i + 1)));
        ts.t[i].fill = fill;
        ts.t[i].ctx = &g[i];
    }
    json_t *q = st ? NULL : ml_layout_quant_json(&lay);
    if (!st && (!q || json_object_set(cfg, "quantization", q) || json_object_set_new(cfg, "quantization_config", json_deep_copy(q))))
        st = moe_err(MOE_ENOMEM, "out of memory");
    json_decref(q);
    if (!st) st = ml_write(dir, ts.t, ts.n, ML_SHARD_BYTES, ml_layout_params(&lay), p->progress, p->progress_ctx);
    char path[4200];
    if (!st && !(st = path_join(path, sizeof path, dir, "config.json"))) st = write_json(cfg, path);
    free(g);
    free(dts);
    ml_tensors_free(&ts);
    ml_layout_free(&lay);
    config_free(&mc);
    return st;
}

moe_status moe_synth(const moe_synth_params *p, const char *out_dir) {
    const shape *s = NULL;
    for (size_t i = 0; p && p->like && i < sizeof k_shapes / sizeof *k_shapes; i++)
        if (!strcmp(p->like, k_shapes[i].name)) s = &k_shapes[i];
    if (!s) return moe_err(MOE_EINVAL, "synth: unknown shape \"%s\" (mistral-7b, mixtral-8x7b, qwen3-30b-a3b, qwen1.5-moe-a2.7b, olmoe-1b-7b)",
                           p && p->like ? p->like : "");
    const char *dt = p->dtype ? p->dtype : "bf16";
    st_dtype dtype = !strcmp(dt, "bf16") ? ST_BF16 : !strcmp(dt, "f16") ? ST_F16 : !strcmp(dt, "f32") ? ST_F32 : ST_N_DTYPES;
    if (dtype == ST_N_DTYPES) return moe_err(MOE_EINVAL, "synth: dtype \"%s\" (bf16, f16 or f32)", dt);
    int group = p->group_size ? p->group_size : 64;
    if (p->bits && !mlxq_valid(p->bits, group))
        return moe_err(MOE_EINVAL, "synth: %d bits in groups of %d is not supported (bits 2, 3, 4, 5, 6 or 8; "
                                   "group size 32, 64 or 128)", p->bits, group);
    int layers = p->n_layers > 0 ? p->n_layers : s->layers;
    if (mkdir(out_dir, 0755) != 0 && errno != EEXIST) return moe_err(MOE_EIO, "%s: cannot create: %s", out_dir, strerror(errno));
    const char *tdt = dtype == ST_BF16 ? "bfloat16" : dtype == ST_F16 ? "float16" : "float32";
    json_t *cfg = make_config(s, layers, tdt);
    if (!cfg) return moe_err(MOE_ENOMEM, "out of memory");
    moe_status st;
    if (p->bits) {
        moe_synth_params q = *p;
        q.group_size = group;
        st = write_quant(&q, cfg, dtype, out_dir);
    } else {
        char path[4200];
        if (!(st = path_join(path, sizeof path, out_dir, "config.json")) && !(st = write_json(cfg, path)))
            st = write_float(p, s, layers, dtype, out_dir);
    }
    json_decref(cfg);
    return st;
}
