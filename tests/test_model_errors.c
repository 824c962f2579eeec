/* test_model_errors.c — every kind of bad model directory gets a one-line
 * error naming the file and tensor, and a status; nothing crashes or leaks
 * (run under ASan in the sanitizer build). Writes the broken models under
 * argv[1] and leaves them there for the CLI tests (tests/CMakeLists.txt). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../src/format/safetensors.h"
#include "moe.h"
#include "test.h"

static const char *g_root;

enum variant { GOOD, MISSING_TENSOR, WRONG_SHAPE, WRONG_DTYPE, TRUNCATED, NO_WEIGHTS };

static void fill(void *ctx, const st_out_tensor *t, size_t off, void *buf, size_t n) {
    (void)ctx;
    for (size_t i = 0; i < n; i += st_dtype_size(t->dtype)) {
        float v = (float)(((off + i) * 2654435761u) % 1000) / 1000.0f - 0.5f;
        if (t->dtype == ST_F32) memcpy((char *)buf + i, &v, 4);
        else memset((char *)buf + i, 0, st_dtype_size(t->dtype));
    }
}

/* a 2-layer mistral: vocab 50, hidden 16, 2 heads, 1 kv head, ffn 24 */
static void make(const char *name, const char *config, enum variant v, char *dir, size_t cap) {
    snprintf(dir, cap, "%s/%s", g_root, name);
    mkdir(g_root, 0755);
    mkdir(dir, 0755);
    char path[512];
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    fputs(config, f);
    fclose(f);
    if (v == NO_WEIGHTS) return;
    char names[32][96];
    st_out_tensor t[32];
    int n = 0;
#define T(d0, d1, ...) do { snprintf(names[n], 96, __VA_ARGS__); \
        t[n] = (st_out_tensor){names[n], ST_F32, (d1) ? 2 : 1, {d0, d1}, fill, NULL}; n++; } while (0)
    T(50, 16, "model.embed_tokens.weight");
    T(16, 0, "model.norm.weight");
    T(50, 16, "lm_head.weight");
    for (int l = 0; l < 2; l++) {
        T(16, 0, "model.layers.%d.input_layernorm.weight", l);
        T(16, 0, "model.layers.%d.post_attention_layernorm.weight", l);
        T(16, 16, "model.layers.%d.self_attn.q_proj.weight", l);
        T(8, 16, "model.layers.%d.self_attn.k_proj.weight", l);
        T(8, 16, "model.layers.%d.self_attn.v_proj.weight", l);
        T(16, 16, "model.layers.%d.self_attn.o_proj.weight", l);
        T(24, 16, "model.layers.%d.mlp.gate_proj.weight", l);
        T(24, 16, "model.layers.%d.mlp.up_proj.weight", l);
        T(16, 24, "model.layers.%d.mlp.down_proj.weight", l);
    }
#undef T
    if (v == MISSING_TENSOR) { t[n - 4] = t[n - 1]; n--; } /* drops layer 1's o_proj */
    if (v == WRONG_SHAPE) t[5].shape[0] = 17;    /* layer 0 q_proj [17, 16] */
    if (v == WRONG_DTYPE) t[6].dtype = ST_I32;   /* layer 0 k_proj */
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    CHECK(st_write(path, t, (size_t)n, NULL, NULL) == MOE_OK, "write %s: %s", path, moe_errmsg());
    if (v == TRUNCATED) {
        struct stat s;
        stat(path, &s);
        CHECK(truncate(path, s.st_size - 100) == 0, "truncate");
    }
}

#define CFG(extra) "{\"model_type\":\"mistral\",\"vocab_size\":50,\"hidden_size\":16,\"num_hidden_layers\":2," \
                   "\"num_attention_heads\":2,\"num_key_value_heads\":1,\"intermediate_size\":24" extra "}"

/* Loading the model in `dir` must give `want`; a failure leaves *out NULL
 * and a one-line message holding m1 and m2. */
static void expect_load(const char *name, const char *dir, moe_status want, const char *m1, const char *m2) {
    moe_model *m = (moe_model *)1;
    moe_status st = moe_model_load(dir, NULL, &m);
    CHECK(st == want, "%s: got %s (%s), want %s", name, moe_status_name(st), moe_errmsg(), moe_status_name(want));
    if (st == MOE_OK) {
        moe_model_free(m);
        return;
    }
    CHECK(m == NULL, "%s: *out is NULL after a failure", name);
    CHECK(strstr(moe_errmsg(), m1) && strstr(moe_errmsg(), m2), "%s: message \"%s\" should name \"%s\" and \"%s\"", name,
          moe_errmsg(), m1, m2);
    CHECK(!strchr(moe_errmsg(), '\n'), "%s: one line", name);
}

static void expect(const char *name, const char *config, enum variant v, moe_status want, const char *m1, const char *m2) {
    char dir[400];
    make(name, config, v, dir, sizeof dir);
    expect_load(name, dir, want, m1, m2);
}

/* ------------------------------------------------ quantized models -- */

static void copy_fill(void *ctx, const st_out_tensor *t, size_t off, void *buf, size_t n) {
    const st_tensor *src = ctx;
    size_t have = src->nbytes > off ? src->nbytes - off : 0;
    memcpy(buf, (const char *)src->data + off, n < have ? n : have);
    if (n > have) memset((char *)buf + have, 0, n - have);
    (void)t;
}

/* A copy of the quantized model `src` with config.json `config`, without
 * tensor `drop` (may be NULL), and with tensor `reshape`'s last dimension
 * halved (may be NULL); then the load must fail with `want` and a message
 * holding m1 and m2. */
static void expect_quant(const char *src, const char *name, const char *config, const char *drop, const char *reshape,
                         moe_status want, const char *m1, const char *m2) {
    char dir[400], path[512];
    snprintf(dir, sizeof dir, "%s/%s", g_root, name);
    mkdir(g_root, 0755);
    mkdir(dir, 0755);
    snprintf(path, sizeof path, "%s/model.safetensors", src);
    st_file *f;
    CHECK(st_file_open(path, &f) == MOE_OK, "open %s: %s", path, moe_errmsg());
    if (!f) return;
    st_out_tensor *t = calloc(f->n, sizeof *t);
    size_t n = 0;
    for (size_t i = 0; i < f->n; i++) {
        const st_tensor *x = &f->tensors[i];
        if (drop && !strcmp(x->name, drop)) continue;
        t[n] = (st_out_tensor){x->name, x->dtype, x->ndim, {0}, copy_fill, (void *)x};
        memcpy(t[n].shape, x->shape, sizeof x->shape);
        if (reshape && !strcmp(x->name, reshape)) t[n].shape[x->ndim - 1] /= 2;
        n++;
    }
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    CHECK(st_write(path, t, n, NULL, NULL) == MOE_OK, "write %s", path);
    free(t);
    st_file_close(f);
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *c = fopen(path, "w");
    fputs(config, c);
    fclose(c);
    expect_load(name, dir, want, m1, m2);
}

/* Bad MLX-quantized models, made from a good fixture (argv[2]). */
static void quant_errors(const char *src) {
    char path[512];
    snprintf(path, sizeof path, "%s/config.json", src);
    FILE *f = fopen(path, "r");
    CHECK(f != NULL, "open %s", path);
    if (!f) return;
    static char cfg[8192];
    size_t len = fread(cfg, 1, sizeof cfg - 1, f);
    fclose(f);
    cfg[len] = 0;
    char *q = strstr(cfg, "\"quantization\"");
    CHECK(q != NULL, "fixture config has a quantization entry");
    if (!q) return;
    /* the config without its quantization entries: everything before "quantization" + a closing brace */
    static char noq[8192], with[8192];
    snprintf(noq, sizeof noq, "%.*s\"tie_word_embeddings\": true}", (int)(q - cfg), cfg);
#define WITH(x) (snprintf(with, sizeof with, "%.*s%s}", (int)(q - cfg), cfg, x), with)
    expect_quant(src, "q-good", WITH("\"quantization\": {\"group_size\": 64, \"bits\": 4}"), NULL, NULL, MOE_OK, "", "");
    expect_quant(src, "q-no-config", noq, NULL, NULL, MOE_EFORMAT, "model.embed_tokens.scales", "\"quantization\" is missing");
    expect_quant(src, "q-bits", WITH("\"quantization\": {\"group_size\": 64, \"bits\": 7}"), NULL, NULL, MOE_EUNSUPPORTED,
                 "config.json", "\"bits\" must be 2, 3, 4, 5, 6 or 8");
    expect_quant(src, "q-group", WITH("\"quantization\": {\"group_size\": 48, \"bits\": 4}"), NULL, NULL, MOE_EUNSUPPORTED,
                 "config.json", "\"group_size\" must be 32, 64 or 128");
    expect_quant(src, "q-mode", WITH("\"quantization\": {\"group_size\": 32, \"bits\": 4, \"mode\": \"mxfp4\"}"), NULL,
                 NULL, MOE_EUNSUPPORTED, "config.json", "mode \"mxfp4\"");
    expect_quant(src, "q-gptq", WITH("\"quantization_config\": {\"quant_method\": \"gptq\", \"bits\": 4}"), NULL, NULL,
                 MOE_EUNSUPPORTED, "config.json", "quant_method \"gptq\"");
    /* 8 bits where the file holds 4: the packed width does not match */
    expect_quant(src, "q-wrong-bits", WITH("\"quantization\": {\"group_size\": 64, \"bits\": 8}"), NULL, NULL,
                 MOE_EFORMAT, "tensor model.embed_tokens.weight", "expected [256, 16]");
    expect_quant(src, "q-false", WITH("\"quantization\": {\"group_size\": 64, \"bits\": 4, \"model.layers.0.mlp.up_proj\": false}"),
                 NULL, NULL, MOE_EFORMAT, "model.layers.0.mlp.up_proj.scales", "says this module is not quantized");
    expect_quant(src, "q-no-biases", WITH("\"quantization\": {\"group_size\": 64, \"bits\": 4}"),
                 "model.layers.1.self_attn.k_proj.biases", NULL, MOE_EFORMAT, "model.layers.1.self_attn.k_proj.biases",
                 "missing");
    expect_quant(src, "q-scales-shape", WITH("\"quantization\": {\"group_size\": 32, \"bits\": 4}"), NULL, NULL,
                 MOE_EFORMAT, "model.embed_tokens.scales", "expected [256, 2]");
    expect_quant(src, "q-packed-shape", WITH("\"quantization\": {\"group_size\": 64, \"bits\": 4}"), NULL,
                 "model.layers.0.mlp.down_proj.weight", MOE_EFORMAT, "model.layers.0.mlp.down_proj.weight", "expected [64, 16]");
#undef WITH
}

int main(int argc, char **argv) {
    g_root = argc > 1 ? argv[1] : "/tmp/moe_bad_models";
    if (argc > 2) quant_errors(argv[2]);
    char dir[400];
    make("good", CFG(""), GOOD, dir, sizeof dir);
    moe_model *m;
    CHECK(moe_model_load(dir, NULL, &m) == MOE_OK, "good model loads: %s", moe_errmsg());
    if (m) {
        moe_seq_params sp;
        moe_seq_params_defaults(&sp);
        sp.n_ctx = 8;
        moe_seq *s;
        CHECK(moe_seq_new(m, &sp, &s) == MOE_OK, "seq");
        int32_t bad_tok[2] = {3, 50}, ok[9] = {1, 2, 3, 4, 5, 6, 7, 8, 9};
        float logits[50];
        CHECK(moe_seq_eval(s, bad_tok, 2, logits, 0) == MOE_ERANGE && strstr(moe_errmsg(), "token id 50"),
              "out-of-vocabulary token: %s", moe_errmsg());
        CHECK(moe_seq_pos(s) == 0, "a refused eval leaves the position");
        CHECK(moe_seq_eval(s, ok, 9, logits, 0) == MOE_ERANGE && strstr(moe_errmsg(), "context full"), "overflow: %s",
              moe_errmsg());
        CHECK(moe_seq_eval(s, ok, 8, logits, 0) == MOE_OK, "fill exactly: %s", moe_errmsg());
        int finite = 1;
        for (int i = 0; i < 50; i++) finite &= logits[i] == logits[i] && logits[i] - logits[i] == 0;
        CHECK(finite, "logits are finite");
        moe_sampler *smp;
        moe_sampler_new(NULL, &smp);
        int32_t t;
        CHECK(moe_generate_next(s, smp, &t) == MOE_OK, "sample at the end of the context");
        CHECK(moe_generate_next(s, smp, &t) == MOE_ERANGE, "no room for the sampled token: %s", moe_errmsg());
        moe_sampler_free(smp);
        moe_seq_free(s);
        moe_model_free(m);
    }
    expect("missing-tensor", CFG(""), MISSING_TENSOR, MOE_EFORMAT, "model.layers.1.self_attn.o_proj.weight", "missing");
    expect("wrong-shape", CFG(""), WRONG_SHAPE, MOE_EFORMAT, "model.safetensors: tensor model.layers.0.self_attn.q_proj.weight",
           "shape [17, 16], expected [16, 16]");
    expect("wrong-dtype", CFG(""), WRONG_DTYPE, MOE_EUNSUPPORTED, "model.layers.0.self_attn.k_proj.weight", "dtype I32");
    expect("truncated", CFG(""), TRUNCATED, MOE_EFORMAT, "model.safetensors", "outside");
    expect("no-weights", CFG(""), NO_WEIGHTS, MOE_EIO, "no-weights", "no model.safetensors");
    expect("unknown-arch", "{\"model_type\":\"gpt2\",\"vocab_size\":50}", GOOD, MOE_EUNSUPPORTED, "config.json",
           "model_type \"gpt2\"");
    expect("bad-json", "{\"model_type\": mistral}", GOOD, MOE_EFORMAT, "config.json", "not valid JSON");
    expect("yarn", CFG(",\"rope_scaling\":{\"rope_type\":\"yarn\",\"factor\":4.0}"), GOOD, MOE_EUNSUPPORTED, "config.json",
           "yarn");
    /* a shard index that names a file that is not there */
    make("bad-index", CFG(""), NO_WEIGHTS, dir, sizeof dir);
    char path[512];
    snprintf(path, sizeof path, "%s/model.safetensors.index.json", dir);
    FILE *f = fopen(path, "w");
    fputs("{\"weight_map\":{\"model.norm.weight\":\"model-00001-of-00002.safetensors\"}}", f);
    fclose(f);
    CHECK(moe_model_load(dir, NULL, &m) == MOE_EIO && strstr(moe_errmsg(), "model-00001-of-00002.safetensors"),
          "missing shard: %s", moe_errmsg());
    f = fopen(path, "w");
    fputs("{\"weight_map\":{\"model.norm.weight\":\"../../etc/passwd\"}}", f);
    fclose(f);
    CHECK(moe_model_load(dir, NULL, &m) == MOE_EFORMAT && strstr(moe_errmsg(), "weight_map"), "path escape: %s", moe_errmsg());
    CHECK(moe_model_load("/nonexistent-model", NULL, &m) == MOE_EIO && strstr(moe_errmsg(), "/nonexistent-model"),
          "missing directory: %s", moe_errmsg());
    moe_model_free(NULL);
    moe_seq_free(NULL);
    TEST_DONE();
}
