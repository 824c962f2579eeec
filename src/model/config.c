/* config.c — config.json parsing with the quirks real checkpoints have:
 * rope_theta at top level or in rope_parameters / rope_scaling; head_dim
 * absent or null; sliding_window null, 0 or a number (and Qwen's
 * use_sliding_window / max_window_layers, or an explicit layer_types);
 * num_local_experts vs num_experts; eos_token_id as a number or a list;
 * Qwen3-Next's linear-attention layers from layer_types or
 * full_attention_interval. */
#include "config.h"

#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../base/err.h"

static const family k_families[] = {
    {"mistral", 0, 0, QK_NORM_NONE, 0, 0, 0, 1e-6f, "mlp", {"gate_proj", "up_proj", "down_proj"}, 0, 0, 0, 0, 0},
    {"mixtral", 0, 0, QK_NORM_NONE, 1, 1, 0, 1e-5f, "block_sparse_moe", {"w1", "w3", "w2"}, 0, 0, 0, 0, 0},
    {"qwen2_moe", 1, 0, QK_NORM_NONE, 1, 0, 1, 1e-6f, "mlp", {"gate_proj", "up_proj", "down_proj"}, 0, 0, 0, 0, 0},
    {"qwen3_moe", 0, 1, QK_NORM_HEAD, 1, 0, 0, 1e-6f, "mlp", {"gate_proj", "up_proj", "down_proj"}, 0, 0, 0, 0, 0},
    {"olmoe", 0, 1, QK_NORM_FULL, 1, 0, 0, 1e-5f, "mlp", {"gate_proj", "up_proj", "down_proj"}, 0, 0, 0, 0, 0},
    {"qwen3_next", 0, 1, QK_NORM_HEAD, 1, 0, 1, 1e-6f, "mlp", {"gate_proj", "up_proj", "down_proj"}, 1, 1, 1, 256, 0.25f},
};

const family *family_find(const char *model_type) {
    for (size_t i = 0; i < sizeof k_families / sizeof *k_families; i++)
        if (strcmp(model_type, k_families[i].model_type) == 0) return &k_families[i];
    return NULL;
}

/* --- typed getters: absent or null -> default; wrong type -> error ------- */

typedef struct jctx { json_t *root; const char *path; moe_status st; } jctx;

static json_t *jget(jctx *j, const char *key) {
    json_t *v = json_object_get(j->root, key);
    return json_is_null(v) ? NULL : v;
}

static long long jint(jctx *j, const char *key, long long def, long long lo, long long hi) {
    json_t *v = jget(j, key);
    if (!v || j->st) return def;
    double d = json_is_integer(v) ? (double)json_integer_value(v) : json_is_real(v) ? json_real_value(v) : NAN;
    if (!(d == floor(d)) || d < (double)lo || d > (double)hi) {
        j->st = moe_err(MOE_EFORMAT, "%s: \"%s\" must be an integer in [%lld, %lld]", j->path, key, lo, hi);
        return def;
    }
    return (long long)d;
}

static double jnum(jctx *j, json_t *v, const char *key, double def) {
    if (!v || j->st) return def;
    if (!json_is_number(v)) {
        j->st = moe_err(MOE_EFORMAT, "%s: \"%s\" must be a number", j->path, key);
        return def;
    }
    return json_number_value(v);
}

static int jbool(jctx *j, const char *key, int def) {
    json_t *v = jget(j, key);
    if (!v || j->st) return def;
    if (!json_is_boolean(v)) {
        j->st = moe_err(MOE_EFORMAT, "%s: \"%s\" must be true or false", j->path, key);
        return def;
    }
    return json_is_true(v);
}

static const char *jstr(jctx *j, const char *key) {
    json_t *v = jget(j, key);
    if (!v || j->st) return NULL;
    if (!json_is_string(v)) {
        j->st = moe_err(MOE_EFORMAT, "%s: \"%s\" must be a string", j->path, key);
        return NULL;
    }
    return json_string_value(v);
}

/* eos_token_id: a number or a list of numbers */
static void read_eos(jctx *j, json_t *v, moe_config *pc) {
    if (!v || json_is_null(v)) return;
    pc->n_eos = 0;
    if (json_is_integer(v)) {
        pc->eos_token_ids[pc->n_eos++] = (int)json_integer_value(v);
        return;
    }
    if (!json_is_array(v)) {
        j->st = moe_err(MOE_EFORMAT, "%s: \"eos_token_id\" must be a number or a list", j->path);
        return;
    }
    size_t i;
    json_t *e;
    json_array_foreach(v, i, e) {
        if (!json_is_integer(e)) {
            j->st = moe_err(MOE_EFORMAT, "%s: \"eos_token_id\" entries must be integers", j->path);
            return;
        }
        if (pc->n_eos < 8) pc->eos_token_ids[pc->n_eos++] = (int)json_integer_value(e);
    }
}

/* rope: theta at top level, in rope_parameters (transformers 5) or with a
 * rope_scaling that must be absent or "default". */
static void read_rope(jctx *j, moe_config *pc) {
    double theta = jnum(j, jget(j, "rope_theta"), "rope_theta", 10000.0);
    const char *keys[] = {"rope_parameters", "rope_scaling"};
    for (int k = 0; k < 2 && !j->st; k++) {
        json_t *rp = jget(j, keys[k]);
        if (!rp) continue;
        if (!json_is_object(rp)) {
            j->st = moe_err(MOE_EFORMAT, "%s: \"%s\" must be an object", j->path, keys[k]);
            return;
        }
        json_t *t = json_object_get(rp, "rope_theta");
        if (t && !json_is_null(t)) theta = jnum(j, t, "rope_parameters.rope_theta", theta);
        json_t *type = json_object_get(rp, "rope_type");
        if (!type) type = json_object_get(rp, "type");
        if (type && !json_is_null(type) && (!json_is_string(type) || strcmp(json_string_value(type), "default") != 0)) {
            j->st = moe_err(MOE_EUNSUPPORTED, "%s: %s type %s is not supported (only default RoPE)", j->path, keys[k],
                            json_is_string(type) ? json_string_value(type) : "?");
            return;
        }
    }
    if (!(theta > 0)) j->st = moe_err(MOE_EFORMAT, "%s: rope_theta must be positive", j->path);
    pc->rope_theta = (float)theta;
}

/* --- quantization -------------------------------------------------------- */

static int valid_bits(long long b) { return b == 2 || b == 3 || b == 4 || b == 5 || b == 6 || b == 8; }
static int valid_group(long long g) { return g == 32 || g == 64 || g == 128; }

/* {"group_size": G, "bits": B} of object `o` (named `what` in messages). */
static void read_qparams(jctx *j, json_t *o, const char *what, int *bits, int *group) {
    json_t *b = json_object_get(o, "bits"), *g = json_object_get(o, "group_size");
    if (!json_is_integer(b) || !valid_bits(json_integer_value(b))) {
        j->st = moe_err(MOE_EUNSUPPORTED, "%s: %s: \"bits\" must be 2, 3, 4, 5, 6 or 8", j->path, what);
        return;
    }
    if (!json_is_integer(g) || !valid_group(json_integer_value(g))) {
        j->st = moe_err(MOE_EUNSUPPORTED, "%s: %s: \"group_size\" must be 32, 64 or 128", j->path, what);
        return;
    }
    *bits = (int)json_integer_value(b);
    *group = (int)json_integer_value(g);
}

/* "quantization" as mlx-lm writes it: defaults, "mode", and per-module
 * entries (an object with its own bits/group_size, or false). A
 * "quantization_config" alone is accepted when it has the same MLX form;
 * other methods (GPTQ, AWQ, FP8, ...) are refused. */
static void read_quant(jctx *j, model_config *c) {
    json_t *q = jget(j, "quantization");
    if (!q) {
        q = jget(j, "quantization_config");
        if (!q) return;
        json_t *qm = json_object_get(q, "quant_method");
        if (json_is_object(q) && qm) {
            j->st = moe_err(MOE_EUNSUPPORTED, "%s: quantization_config.quant_method \"%.40s\" is not supported (MLX affine only)",
                            j->path, json_is_string(qm) ? json_string_value(qm) : "?");
            return;
        }
    }
    if (!json_is_object(q)) {
        j->st = moe_err(MOE_EFORMAT, "%s: \"quantization\" must be an object", j->path);
        return;
    }
    json_t *mode = json_object_get(q, "mode");
    if (mode && !json_is_null(mode) && !(json_is_string(mode) && strcmp(json_string_value(mode), "affine") == 0)) {
        j->st = moe_err(MOE_EUNSUPPORTED, "%s: quantization mode \"%.40s\" is not supported (affine)", j->path,
                        json_is_string(mode) ? json_string_value(mode) : "?");
        return;
    }
    read_qparams(j, q, "quantization", &c->quant_bits, &c->quant_group);
    if (j->st) return;
    size_t n = 0;
    const char *key;
    json_t *v;
    json_object_foreach(q, key, v) n += json_is_object(v) || json_is_false(v);
    if (!n) return;
    c->quant_over = calloc(n, sizeof *c->quant_over);
    if (!c->quant_over) {
        j->st = moe_err(MOE_ENOMEM, "out of memory");
        return;
    }
    json_object_foreach(q, key, v) {
        if (!json_is_object(v) && !json_is_false(v)) continue;
        quant_override *o = &c->quant_over[c->n_quant_over];
        if (json_is_object(v)) {
            char what[160];
            snprintf(what, sizeof what, "quantization[\"%.100s\"]", key);
            read_qparams(j, v, what, &o->bits, &o->group);
            if (j->st) return;
        }
        if (!(o->path = strdup(key))) {
            j->st = moe_err(MOE_ENOMEM, "out of memory");
            return;
        }
        c->n_quant_over++;
    }
}

void config_module_quant(const model_config *c, const char *path, int *bits, int *group) {
    for (int i = 0; i < c->n_quant_over; i++)
        if (strcmp(c->quant_over[i].path, path) == 0) {
            *bits = c->quant_over[i].bits;
            *group = c->quant_over[i].group;
            return;
        }
    *bits = c->quant_bits;
    *group = c->quant_group;
}

static int in_int_list(jctx *j, const char *key, int x) {
    json_t *v = jget(j, key);
    if (!v || j->st) return 0;
    if (!json_is_array(v)) {
        j->st = moe_err(MOE_EFORMAT, "%s: \"%s\" must be a list", j->path, key);
        return 0;
    }
    size_t i;
    json_t *e;
    json_array_foreach(v, i, e) if (json_is_integer(e) && json_integer_value(e) == x) return 1;
    return 0;
}

/* Hybrid families: which layers are gated DeltaNet ("linear_attention" in
 * layer_types, else all but every full_attention_interval-th), and their shapes. */
static void read_linear(jctx *j, model_config *c) {
    moe_config *pc = &c->pub;
    json_t *types = jget(j, "layer_types");
    long long every = jint(j, "full_attention_interval", 4, 1, 1 << 16);
    for (int l = 0; l < pc->n_layers && !j->st; l++) {
        const char *t = types ? json_string_value(json_array_get(types, (size_t)l)) : NULL;
        c->layer_linear[l] = types ? t && strcmp(t, "linear_attention") == 0 : (l + 1) % every != 0;
        pc->n_linear_layers += c->layer_linear[l];
    }
    if (!pc->n_linear_layers || j->st) return;
    c->lin_nk = (int)jint(j, "linear_num_key_heads", 0, 1, 4096);
    c->lin_nv = (int)jint(j, "linear_num_value_heads", 0, 1, 4096);
    c->lin_dk = (int)jint(j, "linear_key_head_dim", 0, 1, 1 << 16);
    c->lin_dv = (int)jint(j, "linear_value_head_dim", 0, 1, 1 << 16);
    c->lin_conv = (int)jint(j, "linear_conv_kernel_dim", 4, 1, 64);
    if (j->st) return;
    for (const char **k = (const char *[]){"linear_num_key_heads", "linear_num_value_heads", "linear_key_head_dim",
                                           "linear_value_head_dim", NULL}; *k; k++)
        if (!jget(j, *k)) {
            j->st = moe_err(MOE_EFORMAT, "%s: \"%s\" is missing (the model has linear-attention layers)", j->path, *k);
            return;
        }
    if (c->lin_nv % c->lin_nk)
        j->st = moe_err(MOE_EFORMAT, "%s: linear_num_value_heads %d is not a multiple of linear_num_key_heads %d", j->path,
                        c->lin_nv, c->lin_nk);
}

/* Which layers slide, and by how much. */
static void read_windows(jctx *j, model_config *c) {
    moe_config *pc = &c->pub;
    long long w = jint(j, "sliding_window", 0, 0, 1LL << 30);
    int is_qwen = strncmp(c->model_type, "qwen", 4) == 0;
    int use = jbool(j, "use_sliding_window", !is_qwen); /* Qwen configs slide only when asked */
    long long max_window_layers = jint(j, "max_window_layers", 0, 0, 1 << 20);
    json_t *types = jget(j, "layer_types");
    if (types && !j->st && (!json_is_array(types) || json_array_size(types) != (size_t)pc->n_layers)) {
        j->st = moe_err(MOE_EFORMAT, "%s: \"layer_types\" must list %d layers", j->path, pc->n_layers);
        return;
    }
    pc->sliding_window = 0;
    for (int l = 0; l < pc->n_layers && !j->st; l++) {
        int slide;
        if (types) {
            const char *t = json_string_value(json_array_get(types, (size_t)l));
            int linear_ok = c->fam->hybrid && t && strcmp(t, "linear_attention") == 0;
            if (!t || (!linear_ok && strcmp(t, "sliding_attention") != 0 && strcmp(t, "full_attention") != 0)) {
                j->st = moe_err(MOE_EUNSUPPORTED, "%s: layer_types[%d] = %s is not supported", j->path, l, t ? t : "?");
                return;
            }
            slide = strcmp(t, "sliding_attention") == 0;
        } else if (is_qwen) {
            slide = use && l >= max_window_layers;
        } else {
            slide = use;
        }
        c->layer_window[l] = slide ? (int)w : 0;
        if (c->layer_window[l]) pc->sliding_window = (int)w;
    }
}

moe_status config_parse(model_config *c, const char *text, const char *path) {
    memset(c, 0, sizeof *c);
    json_error_t jerr;
    json_t *root = json_loads(text, 0, &jerr);
    if (!root) return moe_err(MOE_EFORMAT, "%s: not valid JSON (line %d): %s", path, jerr.line, jerr.text);
    jctx J = {root, path, MOE_OK}, *j = &J;
    moe_config *pc = &c->pub;
    if (!json_is_object(root)) {
        J.st = moe_err(MOE_EFORMAT, "%s: not a JSON object", path);
        goto done;
    }
    const char *mt = jstr(j, "model_type");
    if (!mt) {
        if (!J.st) J.st = moe_err(MOE_EFORMAT, "%s: no \"model_type\"", path);
        goto done;
    }
    if (!(c->fam = family_find(mt))) {
        J.st = moe_err(MOE_EUNSUPPORTED, "%s: model_type \"%.40s\" is not supported (mistral, mixtral, qwen2_moe, qwen3_moe, olmoe, qwen3_next)", path, mt);
        goto done;
    }
    snprintf(c->model_type, sizeof c->model_type, "%s", mt);
    pc->model_type = c->model_type;
    const char *act = jstr(j, "hidden_act");
    if (act && strcmp(act, "silu") != 0) {
        J.st = moe_err(MOE_EUNSUPPORTED, "%s: hidden_act \"%.40s\" is not supported (silu)", path, act);
        goto done;
    }
    const char *dt = jstr(j, "dtype");
    if (!dt) dt = jstr(j, "torch_dtype");
    snprintf(c->dtype, sizeof c->dtype, "%s", dt ? dt : "float32");
    pc->dtype = c->dtype;

    const long long BIG = 1 << 24;
    pc->vocab_size = (int)jint(j, "vocab_size", 0, 1, BIG);
    pc->hidden_size = (int)jint(j, "hidden_size", 0, 1, BIG);
    pc->n_layers = (int)jint(j, "num_hidden_layers", 0, 1, 4096);
    pc->n_heads = (int)jint(j, "num_attention_heads", 0, 1, 4096);
    pc->n_kv_heads = (int)jint(j, "num_key_value_heads", pc->n_heads, 1, 4096);
    pc->intermediate_size = (int)jint(j, "intermediate_size", 0, 0, BIG);
    pc->max_position_embeddings = (int)jint(j, "max_position_embeddings", 4096, 1, 1LL << 30);
    pc->tie_word_embeddings = jbool(j, "tie_word_embeddings", 0);
    pc->rms_norm_eps = (float)jnum(j, jget(j, "rms_norm_eps"), "rms_norm_eps", c->fam->default_eps);
    pc->bos_token_id = (int)jint(j, "bos_token_id", -1, -1, BIG);
    read_eos(j, jget(j, "eos_token_id"), pc);
    read_rope(j, pc);
    if (J.st) goto done;
    for (const char **k = (const char *[]){"vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", NULL}; *k; k++)
        if (!jget(j, *k)) {
            J.st = moe_err(MOE_EFORMAT, "%s: \"%s\" is missing", path, *k);
            goto done;
        }
    if (pc->n_heads % pc->n_kv_heads) {
        J.st = moe_err(MOE_EFORMAT, "%s: num_attention_heads %d is not a multiple of num_key_value_heads %d", path,
                       pc->n_heads, pc->n_kv_heads);
        goto done;
    }
    pc->head_dim = (int)jint(j, "head_dim", c->fam->default_head_dim, 1, 1 << 16);
    if (!pc->head_dim) {
        if (pc->hidden_size % pc->n_heads) {
            J.st = moe_err(MOE_EFORMAT, "%s: no head_dim and hidden_size %d does not divide by %d heads", path,
                           pc->hidden_size, pc->n_heads);
            goto done;
        }
        pc->head_dim = pc->hidden_size / pc->n_heads;
    }
    /* partial RoPE: at top level, or (transformers 5) inside rope_parameters */
    json_t *rp = jget(j, "rope_parameters"), *prv = jget(j, "partial_rotary_factor");
    if (!prv && json_is_object(rp)) prv = json_object_get(rp, "partial_rotary_factor");
    if (json_is_null(prv)) prv = NULL;
    double prf = jnum(j, prv, "partial_rotary_factor", c->fam->default_rotary > 0 ? c->fam->default_rotary : 1.0);
    c->rot_dim = (int)(pc->head_dim * prf);
    if (J.st) goto done;
    if (pc->head_dim % 2) {
        J.st = moe_err(MOE_EUNSUPPORTED, "%s: odd head_dim %d (RoPE needs pairs)", path, pc->head_dim);
        goto done;
    }
    if (!(prf > 0 && prf <= 1) || c->rot_dim < 2 || c->rot_dim % 2) {
        J.st = moe_err(MOE_EUNSUPPORTED, "%s: head_dim %d x partial_rotary_factor %g = %d rotated dims (RoPE needs a positive even number)",
                       path, pc->head_dim, prf, c->rot_dim);
        goto done;
    }

    /* bias: family default, overridden by attention_bias / qkv_bias */
    c->qkv_bias = c->fam->qkv_bias;
    c->o_bias = 0;
    if (jget(j, "attention_bias")) {
        c->qkv_bias = jbool(j, "attention_bias", 0);
        c->o_bias = c->fam->o_bias_follows_qkv ? c->qkv_bias : 0;
    }
    if (jget(j, "qkv_bias")) c->qkv_bias = jbool(j, "qkv_bias", c->qkv_bias);
    c->clip_qkv = (float)jnum(j, jget(j, "clip_qkv"), "clip_qkv", 0.0);

    c->layer_moe = calloc((size_t)pc->n_layers, 1);
    c->layer_window = calloc((size_t)pc->n_layers, sizeof *c->layer_window);
    c->layer_linear = calloc((size_t)pc->n_layers, 1);
    if (!c->layer_moe || !c->layer_window || !c->layer_linear) {
        J.st = moe_err(MOE_ENOMEM, "%s: out of memory", path);
        goto done;
    }
    read_windows(j, c);
    if (c->fam->hybrid) read_linear(j, c);
    read_quant(j, c);
    if (J.st) goto done;
    pc->quant_bits = c->quant_bits;
    pc->quant_group = c->quant_group;

    if (c->fam->is_moe) {
        long long ne = jint(j, "num_local_experts", 0, 0, 1 << 16);
        if (!ne) ne = jint(j, "num_experts", 0, 0, 1 << 16);
        pc->n_experts = (int)ne;
        pc->n_experts_per_tok = (int)jint(j, "num_experts_per_tok", 2, 1, 1 << 16);
        pc->moe_intermediate_size = (int)jint(j, "moe_intermediate_size", pc->intermediate_size, 1, BIG);
        pc->shared_expert_intermediate_size =
            c->fam->shared_expert ? (int)jint(j, "shared_expert_intermediate_size", 0, 0, BIG) : 0;
        c->norm_topk_prob = c->fam->always_renorm ? 1 : jbool(j, "norm_topk_prob", 0);
        int step = (int)jint(j, "decoder_sparse_step", 1, 0, 1 << 16);
        if (J.st) goto done;
        if (pc->n_experts < 1) {
            J.st = moe_err(MOE_EFORMAT, "%s: a %s model needs num_local_experts or num_experts", path, mt);
            goto done;
        }
        if (pc->n_experts_per_tok > pc->n_experts) {
            J.st = moe_err(MOE_EFORMAT, "%s: num_experts_per_tok %d > %d experts", path, pc->n_experts_per_tok, pc->n_experts);
            goto done;
        }
        for (int l = 0; l < pc->n_layers; l++) {
            c->layer_moe[l] = !in_int_list(j, "mlp_only_layers", l) && step > 0 && (l + 1) % step == 0;
            pc->n_moe_layers += c->layer_moe[l];
        }
    }
    if (pc->n_moe_layers < pc->n_layers && pc->intermediate_size < 1 && !J.st)
        J.st = moe_err(MOE_EFORMAT, "%s: \"intermediate_size\" is missing", path);
done:
    json_decref(root);
    if (J.st) config_free(c);
    return J.st;
}

moe_status config_read_generation(model_config *c, const char *path) {
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr);
    if (!root) return moe_err(MOE_EFORMAT, "%s: not valid JSON (line %d): %s", path, jerr.line, jerr.text);
    jctx J = {root, path, MOE_OK};
    if (json_is_object(root)) read_eos(&J, json_object_get(root, "eos_token_id"), &c->pub);
    json_decref(root);
    return J.st;
}

void config_free(model_config *c) {
    for (int i = 0; i < c->n_quant_over; i++) free(c->quant_over[i].path);
    free(c->quant_over);
    c->quant_over = NULL;
    c->n_quant_over = 0;
    free(c->layer_moe);
    free(c->layer_window);
    free(c->layer_linear);
    c->layer_moe = NULL;
    c->layer_window = NULL;
    c->layer_linear = NULL;
}
