/* test_synth_next.c — the Qwen3-Next (qwen3_next) files that moe synth and
 * moe quantize write, read back through the safetensors reader, on the
 * test-next shape (hidden 64, 4 layers: 3 gated DeltaNet then 1 gated
 * attention, 32 experts of width 64, a shared expert of width 32, vocab 512).
 *
 *   hub       synth test-next (bf16): exactly the hub's tensors, by name,
 *             shape and dtype: linear_attn.* (conv weight [C, 1, K]) in layers
 *             0-2, self_attn.* with q_proj [2 x 4 heads x 32, 64] (query and
 *             gate) in layer 3, experts one by one, the shared expert and its
 *             gate; the five zero-centred norms near 0 (applied 1 + w),
 *             linear_attn.norm 1, A_log in [0, log 16], dt_bias near 1
 *   quantize  moe_quantize of that model, 4-bit group 64, with mtp.* tensors
 *             in a second shard behind an index: exactly the mlx-community
 *             tensors: experts stacked as switch_mlp (expert 5's rows
 *             quantized from experts.5), the five norms bf16(w + 1) exactly
 *             as mlx-lm's sanitize computes it, linear_attn.norm, A_log,
 *             dt_bias unchanged, conv weights the same bytes as [C, K, 1],
 *             routers and shared-expert gates at 8 bits group 64 with their
 *             config entries, the shared expert's down_proj (input 32) float,
 *             mtp.* dropped
 *   synth     synth test-next --bits 4: the same tensor names, shapes and
 *             dtypes as the quantized model, the same quantization entries
 *   layout    ml_layout_build on a qwen3_next config with full attention
 *             every 2nd layer and a dense layer (mlp_only_layers): which
 *             entries, which are shifted, which have 8-bit entries
 *
 *   usage: test_synth_next TMPDIR   (TMPDIR is emptied and written) */
#define _XOPEN_SOURCE 700 /* nftw */
#include <ftw.h>
#include <jansson.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "../../src/base/half.h"
#include "../../src/format/mlx_quant.h"
#include "../../src/format/safetensors.h"
#include "../../src/model/mlx_layout.h"
#include "moe.h"
#include "../test.h"

/* test-next's shape (src/model/synth.c) */
enum { V = 512, H = 64, LAYERS = 4, QD = 4 * 32, KVD = 2 * 32, HD = 32, E = 32, I = 64, S = 32 };
enum { NK = 2, NV = 4, DK = 16, DV = 16, K = 4, KD = NK * DK, VD = NV * DV, CONV = 2 * KD + VD };

static int is_linear(int l) { return (l + 1) % 4 != 0; }

/* ------------------------------------------------------------- files -- */

typedef struct model_files {
    st_file *f[8];
    int n;
} model_files;

static void close_files(model_files *m) {
    for (int i = 0; i < m->n; i++)
        st_file_close(m->f[i]);
    m->n = 0;
}

/* Opens dir/name for each name given (NULL-terminated). */
static int open_files(model_files *m, const char *dir, ...) {
    va_list ap;
    va_start(ap, dir);
    m->n = 0;
    for (const char *name; (name = va_arg(ap, const char *)) != NULL;) {
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, name);
        CHECK(st_file_open(path, &m->f[m->n]) == MOE_OK, "%s", moe_errmsg());
        if (!m->f[m->n]) break;
        m->n++;
    }
    va_end(ap);
    return m->n > 0;
}

static const st_tensor *find(const model_files *m, const char *name) {
    for (int i = 0; i < m->n; i++) {
        const st_tensor *t = st_file_find(m->f[i], name);
        if (t) return t;
    }
    return NULL;
}

static size_t count(const model_files *m) {
    size_t n = 0;
    for (int i = 0; i < m->n; i++)
        n += m->f[i]->n;
    return n;
}

/* ------------------------------------------------- expected tensors -- */

/* What a model should hold: each expect() finds the tensor and checks its
 * dtype and shape; `seen` counts them, to hold against the files' count. */
typedef struct expectation {
    const model_files *m;
    size_t seen;
} expectation;

static const st_tensor *expect(expectation *x, st_dtype dt, int ndim, const int64_t *shape, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
static const st_tensor *expect(expectation *x, st_dtype dt, int ndim, const int64_t *shape, const char *fmt, ...) {
    char name[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    const st_tensor *t = find(x->m, name);
    CHECK(t != NULL, "%s: missing", name);
    if (!t) return NULL;
    x->seen++;
    int same = t->ndim == ndim && t->dtype == dt;
    for (int d = 0; same && d < ndim; d++)
        same = t->shape[d] == shape[d];
    CHECK(same, "%s: %s [%lld, %lld, %lld] (%d dims), expected %s [%lld, %lld, %lld] (%d dims)", name,
          st_dtype_name(t->dtype), (long long)t->shape[0], (long long)(t->ndim > 1 ? t->shape[1] : 0),
          (long long)(t->ndim > 2 ? t->shape[2] : 0), t->ndim, st_dtype_name(dt), (long long)shape[0],
          (long long)(ndim > 1 ? shape[1] : 0), (long long)(ndim > 2 ? shape[2] : 0), ndim);
    return same ? t : NULL;
}

/* expect()'s ndim and shape arguments */
#define SHAPE(...)                                                                                                     \
    (int)(sizeof((int64_t[]){__VA_ARGS__}) / sizeof(int64_t)), (const int64_t[]) { __VA_ARGS__ }

/* Module `name` [..., rows, cols] as the mlx-community layout holds it at
 * bits/group (0: float): weight, and scales and biases when quantized. E: 0
 * or the stacked experts. */
static void expect_module(expectation *x, int64_t e, int64_t rows, int64_t cols, int bits, int group,
                          const char *name) {
    int64_t shp[3], n = 0;
    if (e) shp[n++] = e;
    shp[n++] = rows;
    if (!bits) {
        shp[n] = cols;
        expect(x, ST_BF16, (int)n + 1, shp, "%s.weight", name);
        return;
    }
    shp[n] = cols * bits / 32;
    expect(x, ST_U32, (int)n + 1, shp, "%s.weight", name);
    shp[n] = cols / group;
    expect(x, ST_BF16, (int)n + 1, shp, "%s.scales", name);
    expect(x, ST_BF16, (int)n + 1, shp, "%s.biases", name);
}

/* ----------------------------------------------------------------- hub -- */

static void write_synth(const char *dir, int bits) {
    moe_synth_params p;
    moe_synth_params_defaults(&p);
    p.like = "test-next";
    p.bits = bits;
    CHECK(moe_synth(&p, dir) == MOE_OK, "synth test-next, %d bits: %s", bits, moe_errmsg());
}

static float value(const st_tensor *t, int64_t i) {
    return t->dtype == ST_BF16 ? bf16_to_f32(((const uint16_t *)t->data)[i]) : ((const float *)t->data)[i];
}

/* Every value of t within [lo, hi]. */
static void check_range(const st_tensor *t, int64_t n, float lo, float hi, const char *what) {
    int ok = t != NULL;
    for (int64_t i = 0; ok && i < n; i++)
        ok = value(t, i) >= lo && value(t, i) <= hi;
    CHECK(ok, "%s: a value outside [%g, %g]", what, lo, hi);
}

static void test_hub(const char *dir) {
    write_synth(dir, 0);
    model_files m;
    if (!open_files(&m, dir, "model.safetensors", NULL)) return;
    expectation x = {&m, 0};
    const st_dtype B = ST_BF16;
    expect(&x, B, SHAPE(V, H), "model.embed_tokens.weight");
    expect(&x, B, SHAPE(V, H), "lm_head.weight");
    check_range(expect(&x, B, SHAPE(H), "model.norm.weight"), H, -0.05f, 0.05f, "model.norm (zero-centred)");
    for (int l = 0; l < LAYERS; l++) {
        const char *const P = "model.layers";
        check_range(expect(&x, B, SHAPE(H), "%s.%d.input_layernorm.weight", P, l), H, -0.05f, 0.05f, "input_layernorm");
        expect(&x, B, SHAPE(H), "%s.%d.post_attention_layernorm.weight", P, l);
        if (is_linear(l)) {
            expect(&x, B, SHAPE(2 * KD + 2 * VD, H), "%s.%d.linear_attn.in_proj_qkvz.weight", P, l);
            expect(&x, B, SHAPE(2 * NV, H), "%s.%d.linear_attn.in_proj_ba.weight", P, l);
            check_range(expect(&x, B, SHAPE(CONV, 1, K), "%s.%d.linear_attn.conv1d.weight", P, l), CONV * K, -0.5f,
                        0.5f, "conv");
            check_range(expect(&x, B, SHAPE(NV), "%s.%d.linear_attn.A_log", P, l), NV, 0.0f, logf(16.0f) + 0.01f,
                        "A_log");
            check_range(expect(&x, B, SHAPE(NV), "%s.%d.linear_attn.dt_bias", P, l), NV, 0.9f, 1.1f, "dt_bias");
            check_range(expect(&x, B, SHAPE(DV), "%s.%d.linear_attn.norm.weight", P, l), DV, 1.0f, 1.0f,
                        "linear_attn.norm");
            expect(&x, B, SHAPE(H, VD), "%s.%d.linear_attn.out_proj.weight", P, l);
        } else {
            expect(&x, B, SHAPE(2 * QD, H), "%s.%d.self_attn.q_proj.weight", P, l);
            expect(&x, B, SHAPE(KVD, H), "%s.%d.self_attn.k_proj.weight", P, l);
            expect(&x, B, SHAPE(KVD, H), "%s.%d.self_attn.v_proj.weight", P, l);
            expect(&x, B, SHAPE(H, QD), "%s.%d.self_attn.o_proj.weight", P, l);
            check_range(expect(&x, B, SHAPE(HD), "%s.%d.self_attn.q_norm.weight", P, l), HD, -0.05f, 0.05f, "q_norm");
            expect(&x, B, SHAPE(HD), "%s.%d.self_attn.k_norm.weight", P, l);
        }
        expect(&x, B, SHAPE(E, H), "%s.%d.mlp.gate.weight", P, l);
        for (int e = 0; e < E; e++) {
            expect(&x, B, SHAPE(I, H), "%s.%d.mlp.experts.%d.gate_proj.weight", P, l, e);
            expect(&x, B, SHAPE(I, H), "%s.%d.mlp.experts.%d.up_proj.weight", P, l, e);
            expect(&x, B, SHAPE(H, I), "%s.%d.mlp.experts.%d.down_proj.weight", P, l, e);
        }
        expect(&x, B, SHAPE(S, H), "%s.%d.mlp.shared_expert.gate_proj.weight", P, l);
        expect(&x, B, SHAPE(S, H), "%s.%d.mlp.shared_expert.up_proj.weight", P, l);
        expect(&x, B, SHAPE(H, S), "%s.%d.mlp.shared_expert.down_proj.weight", P, l);
        expect(&x, B, SHAPE(1, H), "%s.%d.mlp.shared_expert_gate.weight", P, l);
    }
    CHECK(x.seen == count(&m), "hub: %zu tensors, %zu expected", count(&m), x.seen);
    close_files(&m);
}

static void fill_zeros(void *ctx, const st_out_tensor *t, size_t off, void *buf, size_t n) {
    (void)ctx, (void)t, (void)off;
    memset(buf, 0, n);
}

/* Adds Qwen3-Next's multi-token-prediction tensors to the hub model in dir,
 * as a second shard with an index naming every tensor's file. */
static void add_mtp(const char *dir) {
    static const char *const names[2] = {"mtp.fc.weight", "mtp.layers.0.input_layernorm.weight"};
    st_out_tensor t[2] = {{names[0], ST_BF16, 2, {H, 2 * H}, fill_zeros, NULL},
                          {names[1], ST_BF16, 1, {H}, fill_zeros, NULL}};
    model_files m;
    if (!open_files(&m, dir, "model.safetensors", NULL)) return;
    json_t *wm = json_object();
    for (size_t i = 0; i < m.f[0]->n; i++)
        json_object_set_new(wm, m.f[0]->tensors[i].name, json_string("model.safetensors"));
    close_files(&m);
    for (int i = 0; i < 2; i++)
        json_object_set_new(wm, names[i], json_string("mtp.safetensors"));
    char path[1024];
    snprintf(path, sizeof path, "%s/mtp.safetensors", dir);
    CHECK(st_write(path, t, 2, NULL, NULL) == MOE_OK, "%s", moe_errmsg());
    json_t *ix = json_pack("{s:{}, s:o}", "metadata", "weight_map", wm);
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    CHECK(ix && json_dump_file(ix, path, 0) == 0, "cannot write %s", path);
    json_decref(ix);
}

/* ------------------------------------------------------------ quantize -- */

/* out holds bf16(w + 1) of in's n values, in bfloat16 arithmetic as mlx-lm's
 * sanitize adds 1.0 to a bfloat16 array; *rounded counts the values where
 * that differs from the exact sum (so the rounding is exercised). */
static void check_shifted(const st_tensor *in, const st_tensor *out, int64_t n, const char *what, int *rounded) {
    if (!in || !out) return;
    int ok = 1;
    for (int64_t i = 0; i < n; i++) {
        float w = value(in, i), want = bf16_to_f32(f32_to_bf16(w + 1.0f));
        ok &= value(out, i) == want;
        *rounded += want != w + 1.0f;
    }
    CHECK(ok, "%s: not bf16(w + 1)", what);
}

static void check_same_bytes(const st_tensor *a, const st_tensor *b, const char *what) {
    CHECK(a && b && a->nbytes == b->nbytes && !memcmp(a->data, b->data, a->nbytes), "%s: bytes differ", what);
}

/* Row r of quantized module `q` (weight, scales, biases in out) is in's row r
 * quantized at bits/group; in is [rows x cols] bf16 at row offset 0. */
static void check_row(const model_files *out, const char *q, int64_t qrow, const st_tensor *in, int64_t r, int64_t cols,
                      int bits, int group) {
    char n[3][256];
    snprintf(n[0], sizeof n[0], "%s.weight", q);
    snprintf(n[1], sizeof n[1], "%s.scales", q);
    snprintf(n[2], sizeof n[2], "%s.biases", q);
    const st_tensor *w = find(out, n[0]), *sc = find(out, n[1]), *bi = find(out, n[2]);
    if (!in || !w || !sc || !bi) return;
    unsigned char packed[64 * 8 / 8];
    uint16_t s[4], b[4];
    size_t pb = (size_t)(cols * bits / 8), sb = (size_t)(cols / group) * 2;
    mlxq_quantize_row((const uint16_t *)in->data + r * cols, ST_BF16, cols, bits, group, packed, s, b, ST_BF16);
    CHECK(!memcmp(packed, (const unsigned char *)w->data + qrow * pb, pb) &&
              !memcmp(s, (const unsigned char *)sc->data + qrow * sb, sb) &&
              !memcmp(b, (const unsigned char *)bi->data + qrow * sb, sb),
          "%s row %lld: not the input's row quantized at %d bits, group %d", q, (long long)qrow, bits, group);
}

static void test_quantize(const char *hub, const char *out) {
    add_mtp(hub);
    moe_quantize_params qp;
    moe_quantize_params_defaults(&qp);
    qp.bits = 4;
    qp.group_size = 64;
    CHECK(moe_quantize(hub, out, &qp) == MOE_OK, "quantize: %s", moe_errmsg());
    model_files in, q;
    if (!open_files(&in, hub, "model.safetensors", NULL)) return;
    if (!open_files(&q, out, "model.safetensors", NULL)) {
        close_files(&in);
        return;
    }
    expectation x = {&q, 0};
    const st_dtype B = ST_BF16;
    int rounded = 0;
    char n[256];
    expect_module(&x, 0, V, H, 4, 64, "model.embed_tokens");
    expect_module(&x, 0, V, H, 4, 64, "lm_head");
    check_shifted(find(&in, "model.norm.weight"), expect(&x, B, SHAPE(H), "model.norm.weight"), H, "model.norm",
                  &rounded);
    for (int l = 0; l < LAYERS; l++) {
        const char *const P = "model.layers";
        static const char *const norms[4] = {"input_layernorm", "post_attention_layernorm", "self_attn.q_norm",
                                             "self_attn.k_norm"};
        for (int k = 0; k < (is_linear(l) ? 2 : 4); k++) {
            snprintf(n, sizeof n, "%s.%d.%s.weight", P, l, norms[k]);
            check_shifted(find(&in, n), expect(&x, B, SHAPE(k < 2 ? H : HD), "%s", n), k < 2 ? H : HD, n, &rounded);
        }
        char m[200];
        if (is_linear(l)) {
            snprintf(m, sizeof m, "%s.%d.linear_attn", P, l);
            snprintf(n, sizeof n, "%s.in_proj_qkvz", m);
            expect_module(&x, 0, 2 * KD + 2 * VD, H, 4, 64, n);
            snprintf(n, sizeof n, "%s.in_proj_ba", m);
            expect_module(&x, 0, 2 * NV, H, 4, 64, n);
            snprintf(n, sizeof n, "%s.out_proj", m);
            expect_module(&x, 0, H, VD, 4, 64, n);
            snprintf(n, sizeof n, "%s.conv1d.weight", m); /* [C, 1, K] -> [C, K, 1]: the same bytes */
            check_same_bytes(find(&in, n), expect(&x, B, SHAPE(CONV, K, 1), "%s", n), n);
            static const char *const same[3] = {"A_log", "dt_bias", "norm.weight"};
            for (int k = 0; k < 3; k++) {
                snprintf(n, sizeof n, "%s.%s", m, same[k]);
                check_same_bytes(find(&in, n), expect(&x, B, SHAPE(k < 2 ? NV : DV), "%s", n), n);
            }
        } else {
            snprintf(m, sizeof m, "%s.%d.self_attn", P, l);
            snprintf(n, sizeof n, "%s.q_proj", m);
            expect_module(&x, 0, 2 * QD, H, 4, 64, n);
            snprintf(n, sizeof n, "%s.k_proj", m);
            expect_module(&x, 0, KVD, H, 4, 64, n);
            snprintf(n, sizeof n, "%s.v_proj", m);
            expect_module(&x, 0, KVD, H, 4, 64, n);
            snprintf(n, sizeof n, "%s.o_proj", m);
            expect_module(&x, 0, H, QD, 4, 64, n);
        }
        snprintf(m, sizeof m, "%s.%d.mlp", P, l);
        snprintf(n, sizeof n, "%s.gate", m);
        expect_module(&x, 0, E, H, 8, 64, n);
        static const char *const proj[3] = {"gate_proj", "up_proj", "down_proj"};
        for (int k = 0; k < 3; k++) {
            snprintf(n, sizeof n, "%s.switch_mlp.%s", m, proj[k]);
            expect_module(&x, E, k < 2 ? I : H, k < 2 ? H : I, 4, 64, n);
            snprintf(n, sizeof n, "%s.shared_expert.%s", m, proj[k]);
            expect_module(&x, 0, k < 2 ? S : H, k < 2 ? H : S, k < 2 ? 4 : 0, 64,
                          n); /* down_proj: 32 inputs stay float */
        }
        snprintf(n, sizeof n, "%s.shared_expert_gate", m);
        expect_module(&x, 0, 1, H, 8, 64, n);
    }
    CHECK(x.seen == count(&q), "quantized: %zu tensors, %zu expected (mtp.* dropped)", count(&q), x.seen);
    CHECK(rounded > 0, "no norm needed rounding: the shift is not exercised");

    /* values: experts stacked in order, the routers at 8 bits */
    check_row(&q, "model.layers.1.mlp.switch_mlp.down_proj", 5 * H + 3,
              find(&in, "model.layers.1.mlp.experts.5.down_proj.weight"), 3, I, 4, 64);
    check_row(&q, "model.layers.3.mlp.gate", 7, find(&in, "model.layers.3.mlp.gate.weight"), 7, H, 8, 64);
    check_row(&q, "model.layers.0.mlp.shared_expert_gate", 0, find(&in, "model.layers.0.mlp.shared_expert_gate.weight"),
              0, H, 8, 64);

    /* the config: the defaults, and an 8-bit entry for each router and shared-expert gate */
    char path[1024];
    snprintf(path, sizeof path, "%s/config.json", out);
    json_t *c = json_load_file(path, 0, NULL), *qc = json_object_get(c, "quantization");
    CHECK(json_is_object(qc) && json_object_size(qc) == 3 + 2 * LAYERS &&
              json_equal(qc, json_object_get(c, "quantization_config")),
          "config: %zu quantization entries", json_object_size(qc));
    CHECK(json_integer_value(json_object_get(qc, "bits")) == 4 &&
              json_integer_value(json_object_get(qc, "group_size")) == 64,
          "config: 4 bits, group 64");
    for (int l = 0; l < LAYERS; l++)
        for (int k = 0; k < 2; k++) {
            snprintf(n, sizeof n, "model.layers.%d.mlp.%s", l, k ? "shared_expert_gate" : "gate");
            json_t *o = json_object_get(qc, n);
            CHECK(json_integer_value(json_object_get(o, "bits")) == 8 &&
                      json_integer_value(json_object_get(o, "group_size")) == 64,
                  "config: %s at 8 bits, group 64", n);
        }
    json_decref(c);
    close_files(&in);
    close_files(&q);
}

/* ----------------------------------------------------------- synth -- */

/* synth --bits 4 writes what moe quantize writes, tensor for tensor (values aside) */
static void test_synth_bits(const char *dir, const char *quantized) {
    write_synth(dir, 4);
    model_files a, b;
    if (!open_files(&a, dir, "model.safetensors", NULL)) return;
    if (!open_files(&b, quantized, "model.safetensors", NULL)) {
        close_files(&a);
        return;
    }
    int same = count(&a) == count(&b);
    for (size_t i = 0; same && i < a.f[0]->n; i++) {
        const st_tensor *t = &a.f[0]->tensors[i], *u = find(&b, t->name);
        same = u && u->dtype == t->dtype && u->ndim == t->ndim &&
               !memcmp(u->shape, t->shape, sizeof t->shape[0] * (size_t)t->ndim);
        CHECK(same, "synth --bits: %s not as moe quantize writes it", t->name);
    }
    CHECK(same, "synth --bits and moe quantize: %zu and %zu tensors", count(&a), count(&b));
    char path[2][1024];
    snprintf(path[0], sizeof path[0], "%s/config.json", dir);
    snprintf(path[1], sizeof path[1], "%s/config.json", quantized);
    json_t *ca = json_load_file(path[0], 0, NULL), *cb = json_load_file(path[1], 0, NULL);
    CHECK(ca && cb && json_equal(json_object_get(ca, "quantization"), json_object_get(cb, "quantization")),
          "synth --bits and moe quantize: different quantization entries");
    json_decref(ca);
    json_decref(cb);
    close_files(&a);
    close_files(&b);
}

/* ---------------------------------------------------------- layout -- */

static const ml_entry *entry(const ml_layout *l, const char *name) {
    for (size_t i = 0; i < l->n; i++)
        if (!strcmp(l->e[i].name, name)) return &l->e[i];
    return NULL;
}

static void test_layout(void) {
    static const char *cfg =
        "{\"model_type\": \"qwen3_next\", \"vocab_size\": 64, \"hidden_size\": 64, \"num_hidden_layers\": 4,"
        " \"num_attention_heads\": 2, \"num_key_value_heads\": 1, \"head_dim\": 32, \"intermediate_size\": 96,"
        " \"num_experts\": 4, \"moe_intermediate_size\": 64, \"shared_expert_intermediate_size\": 64,"
        " \"mlp_only_layers\": [1], \"full_attention_interval\": 2, \"partial_rotary_factor\": 0.25,"
        " \"linear_num_key_heads\": 2, \"linear_num_value_heads\": 4, \"linear_key_head_dim\": 16,"
        " \"linear_value_head_dim\": 8, \"linear_conv_kernel_dim\": 3}";
    model_config mc;
    CHECK(config_parse(&mc, cfg, "cfg") == MOE_OK, "%s", moe_errmsg());
    ml_layout l;
    if (ml_layout_build(&mc, 4, 32, 1, &l) != MOE_OK) {
        CHECK(0, "%s", moe_errmsg());
        config_free(&mc);
        return;
    }
    const ml_entry *e;
    e = entry(&l, "model.layers.0.linear_attn.conv1d.weight"); /* channels 2*32 + 32, kernel 3 */
    CHECK(e && e->kind == ML_CONV && e->rows == 96 && e->cols == 3 && !e->bits && !e->shift, "layer 0: conv");
    e = entry(&l, "model.layers.0.linear_attn.in_proj_qkvz");
    CHECK(e && e->kind == ML_MATRIX && e->rows == 2 * 32 + 2 * 32 && e->bits == 4, "layer 0: in_proj_qkvz");
    e = entry(&l, "model.layers.2.linear_attn.norm.weight");
    CHECK(e && e->kind == ML_VECTOR && e->cols == 8 && !e->shift, "layer 2: the gated norm is not shifted");
    CHECK(!entry(&l, "model.layers.0.self_attn.q_proj") && !entry(&l, "model.layers.1.linear_attn.out_proj"),
          "layer 0 is linear, layer 1 attention");
    e = entry(&l, "model.layers.1.self_attn.q_proj");
    CHECK(e && e->rows == 2 * 64 && e->cols == 64, "layer 1: q_proj yields query and gate");
    e = entry(&l, "model.layers.1.self_attn.q_norm.weight");
    CHECK(e && e->cols == 32 && e->shift, "layer 1: q_norm shifted");
    e = entry(&l, "model.norm.weight");
    CHECK(e && e->shift, "the final norm shifted");
    e = entry(&l, "model.layers.1.mlp.gate_proj"); /* the dense layer's gate_proj is no router */
    CHECK(e && e->bits == 4 && e->group == 32 && !e->own_params && !entry(&l, "model.layers.1.mlp.gate"),
          "layer 1: dense");
    e = entry(&l, "model.layers.3.mlp.shared_expert_gate");
    CHECK(e && e->bits == 8 && e->group == 64 && e->own_params, "layer 3: shared_expert_gate at 8 bits");
    ml_tensors ts;
    st_dtype *dt = calloc(l.n, sizeof *dt);
    if (dt && ml_tensors_build(&l, dt, &ts) == MOE_OK) {
        int found = 0;
        for (size_t i = 0; i < ts.n; i++)
            if (!strcmp(ts.names[i], "model.layers.2.linear_attn.conv1d.weight"))
                found = ts.t[i].ndim == 3 && ts.t[i].shape[0] == 96 && ts.t[i].shape[1] == 3 && ts.t[i].shape[2] == 1;
        CHECK(found, "the conv weight is written [C, K, 1]");
        ml_tensors_free(&ts);
    }
    free(dt);
    ml_layout_free(&l);
    config_free(&mc);
}

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: test_synth_next TMPDIR\n");
        return 2;
    }
    char hub[512], q[512], sq[512];
    nftw(argv[1], rm_one, 16, FTW_DEPTH | FTW_PHYS);
    mkdir(argv[1], 0755);
    snprintf(hub, sizeof hub, "%s/hub", argv[1]);
    snprintf(q, sizeof q, "%s/quantized", argv[1]);
    snprintf(sq, sizeof sq, "%s/synth-bits", argv[1]);
    test_layout();
    test_hub(hub);
    test_quantize(hub, q);
    test_synth_bits(sq, q);
    nftw(argv[1], rm_one, 16, FTW_DEPTH | FTW_PHYS);
    TEST_DONE();
}
