/* test_quantize.c — MLX affine quantization and moe_quantize.
 *
 *   test_quantize                  hand-worked groups (zero, constant, min- and
 *                                  max-dominated, ties, clamping, eps) for every
 *                                  bits and group size; packing of 2..8 bits
 *   test_quantize ref FILE         byte for byte against tests/quant-ref/affine.safetensors
 *                                  (a PyTorch restatement of MLX's algorithm)
 *   test_quantize compare A B      every tensor of model directory A equals B's
 *                                  (names, dtype, shape, bytes) and so do the configs
 *   test_quantize lib TMP          moe_quantize on generated models: errors, --force,
 *                                  other files copied, torch_dtype cast, shards
 */
#define _XOPEN_SOURCE 700 /* nftw */
#include <dirent.h>
#include <ftw.h>
#include <jansson.h>
#include <math.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>

#include "../src/backend/cpu/kernels.h"
#include "../src/base/half.h"
#include "../src/format/mlx_quant.h"
#include "../src/format/safetensors.h"
#include "../src/model/mlx_layout.h"
#include "moe.h"
#include "test.h"

static const int k_bits[] = {2, 3, 4, 5, 6, 8}, k_groups[] = {32, 64, 128};

/* ------------------------------------------------------- hand-worked -- */

/* One group's input and what MLX makes of it, worked out by hand. */
typedef struct hcase {
    const char *what;
    float w[MLXQ_MAX_GROUP];
    float scale, bias;
    uint8_t q[MLXQ_MAX_GROUP];
} hcase;

/* The cases for `bits` and a group of g values (n = 2^bits - 1). */
static int hand_cases(int bits, int g, hcase *c) {
    int n = (1 << bits) - 1, k = 0;
    memset(c, 0, 8 * sizeof *c);
    /* all zero: range 0 -> scale -eps (max wins the tie), edge 0 -> q0 0 -> bias 0 */
    c[k] = (hcase){.what = "zero", .scale = -1e-7f, .bias = 0.0f};
    k++;
    /* constant c: scale -eps, q0 = rint(c / -eps) != 0, scale = c / q0 = -eps again, bias = c */
    const float consts[2] = {0.75f, -2.5f};
    for (int i = 0; i < 2; i++, k++) {
        c[k] = (hcase){.what = i ? "constant negative" : "constant positive", .scale = -1e-7f, .bias = consts[i]};
        for (int j = 0; j < g; j++) c[k].w[j] = consts[i];
    }
    /* min dominates: [-n, 0] -> scale +1, bias -n, q = w + n; ties x.5 go to even */
    c[k] = (hcase){.what = "min-dominated", .scale = 1.0f, .bias = (float)-n};
    for (int j = 0; j < g; j++) {
        int v = j == 0 ? 0 : j == 1 ? n : j * 7 % (n + 1);
        c[k].w[j] = (float)(v - n);
        c[k].q[j] = (uint8_t)v;
    }
    c[k].w[2] = (float)-n + 0.5f, c[k].q[2] = 0; /* 0.5 -> 0 */
    c[k].w[3] = (float)-n + 1.5f, c[k].q[3] = 2; /* 1.5 -> 2 */
    c[k].w[4] = (float)-n + 2.5f, c[k].q[4] = 2; /* 2.5 -> 2 */
    k++;
    /* max dominates: [0, n] -> scale -1, bias n, q = n - w (n is odd) */
    c[k] = (hcase){.what = "max-dominated", .scale = -1.0f, .bias = (float)n};
    for (int j = 0; j < g; j++) {
        int v = j == 0 ? 0 : j == 1 ? n : j * 5 % (n + 1);
        c[k].w[j] = (float)v;
        c[k].q[j] = (uint8_t)(n - v);
    }
    c[k].w[2] = 0.5f, c[k].q[2] = (uint8_t)(n - 1); /* n - 0.5 -> n - 1 (even) */
    c[k].w[3] = 1.5f, c[k].q[3] = (uint8_t)(n - 1); /* n - 1.5 -> n - 1 */
    c[k].w[4] = 2.5f, c[k].q[4] = (uint8_t)(n - 3); /* n - 2.5 -> n - 3 */
    k++;
    /* a range below n * eps around 2^-7: scale -eps, q0 = -78125, scale = 2^-7 / -78125 = -1e-7, bias 2^-7;
     * the value 2^-23 below the max: q = rint(1.19) = 1 */
    c[k] = (hcase){.what = "tiny range", .scale = -1e-7f, .bias = 0x1p-7f};
    for (int j = 0; j < g; j++) c[k].w[j] = 0x1p-7f;
    c[k].w[1] = 0x1p-7f - 0x1p-23f, c[k].q[1] = 1;
    k++;
    /* a range below eps near 0: q0 = rint(4e-8 / -1e-7) = 0 -> bias 0, scale -eps; everything rounds to 0 */
    c[k] = (hcase){.what = "tiny near zero", .scale = -1e-7f, .bias = 0.0f};
    for (int j = 0; j < g; j++) c[k].w[j] = j % 2 ? 4e-8f : 0.0f;
    k++;
    if (bits == 2) { /* clamping: s0 = 5.5/3, q0 = rint(-3 / s0) = -2, scale 1.5, bias -3; (2.5+3)/1.5 = 3.67 -> 4 -> 3 */
        c[k] = (hcase){.what = "clamped", .scale = 1.5f, .bias = -3.0f};
        for (int j = 0; j < g; j++) c[k].w[j] = -3.0f;
        c[k].w[1] = 2.5f, c[k].q[1] = 3;
        c[k].w[2] = 0.0f, c[k].q[2] = 2;
        c[k].w[3] = -1.5f, c[k].q[3] = 1;
        k++;
    }
    return k;
}

static void test_hand_worked(void) {
    static hcase c[8];
    for (size_t bi = 0; bi < 6; bi++)
        for (size_t gi = 0; gi < 3; gi++) {
            int bits = k_bits[bi], g = k_groups[gi], nc = hand_cases(bits, g, c);
            int64_t cols = (int64_t)nc * g;
            float row[8 * MLXQ_MAX_GROUP], sc[8], bs[8];
            unsigned char packed[8 * MLXQ_MAX_GROUP], s16[16], b16[16];
            for (int i = 0; i < nc; i++) memcpy(row + i * g, c[i].w, (size_t)g * sizeof(float));
            mlxq_quantize_row(row, ST_F32, cols, bits, g, packed, sc, bs, ST_F32);
            unsigned char packed_ref[8 * MLXQ_MAX_GROUP];
            float sc_ref[8], bs_ref[8];
            mlxq_quantize_row_ref(row, ST_F32, cols, bits, g, packed_ref, sc_ref, bs_ref, ST_F32);
            CHECK(!memcmp(packed, packed_ref, (size_t)cols * (size_t)bits / 8) && !memcmp(sc, sc_ref, sizeof(float) * (size_t)nc) &&
                      !memcmp(bs, bs_ref, sizeof(float) * (size_t)nc),
                  "bits %d group %d: the reference path differs from the fast one", bits, g);
            for (int i = 0; i < nc; i++) {
                CHECK(sc[i] == c[i].scale && bs[i] == c[i].bias, "bits %d group %d %s: scale %.9g bias %.9g, want %.9g %.9g",
                      bits, g, c[i].what, sc[i], bs[i], c[i].scale, c[i].bias);
                int bad = -1;
                for (int j = 0; j < g && bad < 0; j++)
                    if (quant_at(packed, bits, (int64_t)i * g + j) != c[i].q[j]) bad = j;
                CHECK(bad < 0, "bits %d group %d %s: q[%d] = %u, want %u", bits, g, c[i].what, bad,
                      bad < 0 ? 0 : quant_at(packed, bits, (int64_t)i * g + bad), bad < 0 ? 0 : c[i].q[bad]);
            }
            /* scales and biases stored in a 16-bit dtype: rounded to nearest even, as a cast */
            st_dtype dts[2] = {ST_BF16, ST_F16};
            for (int d = 0; d < 2; d++) {
                mlxq_quantize_row(row, ST_F32, cols, bits, g, NULL, s16, b16, dts[d]);
                for (int i = 0; i < nc; i++) {
                    uint16_t s, b;
                    memcpy(&s, s16 + 2 * i, 2);
                    memcpy(&b, b16 + 2 * i, 2);
                    uint16_t ws = d ? f32_to_f16(c[i].scale) : f32_to_bf16(c[i].scale);
                    uint16_t wb = d ? f32_to_f16(c[i].bias) : f32_to_bf16(c[i].bias);
                    CHECK(s == ws && b == wb, "bits %d group %d %s %s: scale/bias 0x%04x 0x%04x, want 0x%04x 0x%04x",
                          bits, g, c[i].what, st_dtype_name(dts[d]), s, b, ws, wb);
                }
            }
        }
}

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static uint32_t rnd(void) {
    g_rng ^= g_rng << 13, g_rng ^= g_rng >> 7, g_rng ^= g_rng << 17;
    return (uint32_t)(g_rng >> 32);
}

/* The fast row path against the scalar reference on varied rows: uniform,
 * one sign, wide magnitudes, zeros of both signs, constant groups, tiny
 * ranges; every dtype, bits and group size. */
static void test_fast_vs_ref(void) {
    enum { COLS = 384 };
    float f[COLS];
    unsigned char in[COLS * 4], p1[COLS], p2[COLS], s1[64], s2[64], b1[64], b2[64];
    const st_dtype dts[3] = {ST_F32, ST_F16, ST_BF16};
    int bad = 0;
    for (int trial = 0; trial < 96 && !bad; trial++) {
        for (int k = 0; k < COLS; k++) {
            float u = (float)(rnd() >> 8) * 0x1p-24f - 0.5f;
            switch (trial % 6) {
            case 0: f[k] = u * 0.1f; break;
            case 1: f[k] = fabsf(u) * 3.0f; break;
            case 2: f[k] = -fabsf(u) * ldexpf(1.0f, (int)(rnd() % 40) - 20); break;
            case 3: f[k] = rnd() % 3 ? (rnd() % 2 ? 0.0f : -0.0f) : u; break;
            case 4: f[k] = (float)(k / 32 % 5) - 2.0f; break;
            default: f[k] = 0.01f + u * 1e-9f; break;
            }
        }
        for (int d = 0; d < 3; d++) {
            for (int k = 0; k < COLS; k++) {
                if (dts[d] == ST_F32) memcpy(in + 4 * k, &f[k], 4);
                else { uint16_t h = dts[d] == ST_F16 ? f32_to_f16(f[k]) : f32_to_bf16(f[k]); memcpy(in + 2 * k, &h, 2); }
            }
            for (size_t bi = 0; bi < 6; bi++)
                for (size_t gi = 0; gi < 3; gi++) {
                    int bits = k_bits[bi], g = k_groups[gi];
                    size_t pb = (size_t)COLS * (size_t)bits / 8, sb = (size_t)(COLS / g) * st_dtype_size(dts[d]);
                    mlxq_quantize_row(in, dts[d], COLS, bits, g, p1, s1, b1, dts[d]);
                    mlxq_quantize_row_ref(in, dts[d], COLS, bits, g, p2, s2, b2, dts[d]);
                    if (memcmp(p1, p2, pb) || memcmp(s1, s2, sb) || memcmp(b1, b2, sb)) bad++;
                    CHECK(!bad, "trial %d %s bits %d group %d: the fast row differs from the reference", trial,
                          st_dtype_name(dts[d]), bits, g);
                }
        }
    }
}

/* The group functions on their own, and a bf16 input row. */
static void test_group_functions(void) {
    float w[4] = {-3.0f, 2.5f, 0.0f, -1.5f}, s, b;
    uint8_t q[4];
    mlxq_group_params(w, 4, 2, &s, &b);
    CHECK(s == 1.5f && b == -3.0f, "group params: %g %g", s, b);
    mlxq_group_values(w, 4, 2, s, b, q);
    CHECK(q[0] == 0 && q[1] == 3 && q[2] == 2 && q[3] == 1, "group values: %u %u %u %u", q[0], q[1], q[2], q[3]);
    float nan_in[2] = {NAN, 1.0f};
    mlxq_group_values(nan_in, 2, 4, 1.0f, 0.0f, q);
    CHECK(q[0] == 0 && q[1] == 1, "a NaN quantizes to 0: %u %u", q[0], q[1]);
    /* bf16 in: the same as its float32 values */
    uint16_t h[32];
    float f[32];
    for (int k = 0; k < 32; k++) h[k] = f32_to_bf16(f[k] = bf16_to_f32(f32_to_bf16(sinf((float)k) * 0.05f)));
    unsigned char p1[16], p2[16];
    uint16_t s1, b1, s2, b2;
    mlxq_quantize_row(h, ST_BF16, 32, 4, 32, p1, &s1, &b1, ST_BF16);
    mlxq_quantize_row(f, ST_F32, 32, 4, 32, p2, &s2, &b2, ST_BF16);
    CHECK(!memcmp(p1, p2, 16) && s1 == s2 && b1 == b2, "bf16 input quantizes as its float32 values");
    CHECK(mlxq_valid(4, 64) && mlxq_valid(3, 128) && !mlxq_valid(7, 64) && !mlxq_valid(4, 48) && !mlxq_valid(1, 32) &&
          !mlxq_valid(16, 64), "mlxq_valid");
}

/* The bitstream of 2..8 bits, against bytes worked out by hand. */
static void test_packing(void) {
    static const struct { int bits, n; uint8_t q[8]; uint8_t bytes[8]; } k[] = {
        {2, 4, {3, 0, 1, 2}, {0x93}},
        {3, 8, {1, 2, 3, 4, 5, 6, 7, 0}, {0xd1, 0x58, 0x1f}},
        {4, 8, {0xa, 0x5, 0xf, 0x0, 1, 2, 3, 4}, {0x5a, 0x0f, 0x21, 0x43}},
        {5, 8, {31, 0, 1, 2, 3, 4, 5, 6}, {0x1f, 0x04, 0x31, 0x48, 0x31}},
        {6, 4, {63, 1, 2, 3}, {0x7f, 0x20, 0x0c}},
        {6, 4, {0x2a, 0x15, 0x3f, 0x00}, {0x6a, 0xf5, 0x03}},
        {8, 2, {0x81, 0x7f}, {0x81, 0x7f}},
    };
    for (size_t i = 0; i < sizeof k / sizeof *k; i++) {
        unsigned char out[8] = {0};
        size_t nb = (size_t)k[i].n * (size_t)k[i].bits / 8;
        mlxq_pack(k[i].q, k[i].n, k[i].bits, out);
        CHECK(!memcmp(out, k[i].bytes, nb), "pack %d bits case %zu: %02x %02x %02x ...", k[i].bits, i, out[0], out[1], out[2]);
    }
    /* every width round-trips through the engine's reader */
    for (size_t bi = 0; bi < 6; bi++) {
        int bits = k_bits[bi];
        uint8_t q[256];
        unsigned char buf[256];
        for (int j = 0; j < 256; j++) q[j] = (uint8_t)((j * 37 + 11) & ((1 << bits) - 1));
        mlxq_pack(q, 256, bits, buf);
        int bad = -1;
        for (int j = 0; j < 256 && bad < 0; j++)
            if (quant_at(buf, bits, j) != q[j]) bad = j;
        CHECK(bad < 0, "%d bits: value %d does not round-trip", bits, bad);
    }
}

/* --------------------------------------------------------- reference -- */

static int test_ref(const char *path) {
    st_file *f;
    if (st_file_open(path, &f)) {
        fprintf(stderr, "%s\n", moe_errmsg());
        return 1;
    }
    const char *dts[3] = {"bf16", "f16", "f32"};
    for (int d = 0; d < 3; d++) {
        char name[96];
        snprintf(name, sizeof name, "w.%s", dts[d]);
        const st_tensor *w = st_file_find(f, name);
        CHECK(w && w->ndim == 2, "%s: no 2-D %s", path, name);
        if (!w || w->ndim != 2) continue;
        int64_t rows = w->shape[0], cols = w->shape[1];
        size_t es = st_dtype_size(w->dtype);
        for (size_t bi = 0; bi < 6; bi++)
            for (size_t gi = 0; gi < 3; gi++) {
                int bits = k_bits[bi], g = k_groups[gi];
                const st_tensor *rt[3];
                const char *part[3] = {"weight", "scales", "biases"};
                int ok = 1;
                for (int p = 0; p < 3; p++) {
                    snprintf(name, sizeof name, "q.%s.b%d.g%d.%s", dts[d], bits, g, part[p]);
                    rt[p] = st_file_find(f, name);
                    ok = ok && rt[p];
                    CHECK(rt[p] != NULL, "%s: no %s", path, name);
                }
                if (!ok) continue;
                size_t pb = (size_t)cols * (size_t)bits / 8, sb = (size_t)(cols / g) * es;
                CHECK(rt[0]->dtype == ST_U32 && rt[0]->nbytes == (size_t)rows * pb && rt[1]->dtype == w->dtype &&
                          rt[1]->nbytes == (size_t)rows * sb && rt[2]->nbytes == rt[1]->nbytes,
                      "%s b%d g%d: dtypes or sizes", dts[d], bits, g);
                if (rt[0]->nbytes != (size_t)rows * pb || rt[1]->nbytes != (size_t)rows * sb) continue;
                unsigned char packed[1024], sc[64], bs[64];
                for (int64_t r = 0; r < rows; r++) {
                    const unsigned char *row = (const unsigned char *)w->data + (size_t)r * (size_t)cols * es;
                    mlxq_quantize_row(row, w->dtype, cols, bits, g, packed, sc, bs, w->dtype);
                    const unsigned char *rp = (const unsigned char *)rt[0]->data + (size_t)r * pb;
                    const unsigned char *rs = (const unsigned char *)rt[1]->data + (size_t)r * sb;
                    const unsigned char *rb = (const unsigned char *)rt[2]->data + (size_t)r * sb;
                    CHECK(!memcmp(packed, rp, pb), "%s b%d g%d row %lld: packed values differ", dts[d], bits, g, (long long)r);
                    CHECK(!memcmp(sc, rs, sb), "%s b%d g%d row %lld: scales differ", dts[d], bits, g, (long long)r);
                    CHECK(!memcmp(bs, rb, sb), "%s b%d g%d row %lld: biases differ", dts[d], bits, g, (long long)r);
                }
            }
    }
    st_file_close(f);
    TEST_DONE();
}

/* ----------------------------------------------------------- compare -- */

/* All safetensors files of a directory. */
typedef struct model_files { st_file *f[64]; int n; } model_files;

static int open_dir(const char *dir, model_files *m) {
    m->n = 0;
    DIR *d = opendir(dir);
    if (!d) return 0;
    struct dirent *de;
    while ((de = readdir(d)) && m->n < 64) {
        size_t len = strlen(de->d_name);
        if (len < 12 || strcmp(de->d_name + len - 12, ".safetensors")) continue;
        char path[1024];
        snprintf(path, sizeof path, "%s/%s", dir, de->d_name);
        if (st_file_open(path, &m->f[m->n]) == MOE_OK) m->n++;
        else CHECK(0, "%s", moe_errmsg());
    }
    closedir(d);
    return m->n > 0;
}

static void close_dir(model_files *m) {
    for (int i = 0; i < m->n; i++) st_file_close(m->f[i]);
}

static const st_tensor *dir_find(const model_files *m, const char *name) {
    for (int i = 0; i < m->n; i++) {
        const st_tensor *t = st_file_find(m->f[i], name);
        if (t) return t;
    }
    return NULL;
}

static json_t *load_json(const char *dir, const char *file) {
    char path[1024];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    json_error_t e;
    json_t *j = json_load_file(path, 0, &e);
    CHECK(j != NULL, "%s: %s", path, e.text);
    return j;
}

/* a's tensors all in b, equal, and b has no others; one message per difference */
static void compare_tensors(const model_files *a, const model_files *b, const char *an, const char *bn) {
    size_t na = 0, nb = 0;
    for (int i = 0; i < b->n; i++) nb += b->f[i]->n;
    for (int i = 0; i < a->n; i++)
        for (size_t k = 0; k < a->f[i]->n; k++, na++) {
            const st_tensor *x = &a->f[i]->tensors[k], *y = dir_find(b, x->name);
            CHECK(y != NULL, "%s has %s, %s has not", an, x->name, bn);
            if (!y) continue;
            int same_shape = x->ndim == y->ndim;
            for (int d = 0; same_shape && d < x->ndim; d++) same_shape = x->shape[d] == y->shape[d];
            CHECK(x->dtype == y->dtype && same_shape, "%s: %s vs %s, or shapes differ", x->name, st_dtype_name(x->dtype),
                  st_dtype_name(y->dtype));
            if (x->nbytes != y->nbytes || memcmp(x->data, y->data, x->nbytes) == 0) continue;
            size_t at = 0;
            while (((const unsigned char *)x->data)[at] == ((const unsigned char *)y->data)[at]) at++;
            CHECK(0, "%s: bytes differ from byte %zu of %zu", x->name, at, x->nbytes);
        }
    CHECK(na == nb, "%s has %zu tensors, %s %zu", an, na, bn, nb);
}

static int test_compare(const char *a, const char *b) {
    model_files ma, mb;
    CHECK(open_dir(a, &ma), "%s: no safetensors", a);
    CHECK(open_dir(b, &mb), "%s: no safetensors", b);
    compare_tensors(&ma, &mb, a, b);
    json_t *ca = load_json(a, "config.json"), *cb = load_json(b, "config.json");
    CHECK(ca && cb && json_object_get(ca, "quantization") && json_object_get(ca, "quantization_config"),
          "%s: config.json has no quantization entries", a);
    const char *keys[2] = {"quantization", "quantization_config"};
    for (int k = 0; ca && cb && k < 2; k++) {
        char *x = json_dumps(json_object_get(ca, keys[k]), JSON_SORT_KEYS | JSON_COMPACT);
        char *y = json_dumps(json_object_get(cb, keys[k]), JSON_SORT_KEYS | JSON_COMPACT);
        CHECK(x && y && !strcmp(x, y), "config \"%s\": %s vs %s", keys[k], x ? x : "-", y ? y : "-");
        free(x);
        free(y);
    }
    CHECK(ca && cb && json_equal(ca, cb), "%s/config.json and %s/config.json differ elsewhere", a, b);
    json_decref(ca);
    json_decref(cb);
    close_dir(&ma);
    close_dir(&mb);
    TEST_DONE();
}

/* -------------------------------------------------------------- lib -- */

static const char *g_tmp;

static int rm_one(const char *path, const struct stat *sb, int flag, struct FTW *ftw) {
    (void)sb, (void)flag, (void)ftw;
    return remove(path);
}

static void fill_model(void *ctx, const st_out_tensor *t, size_t off, void *buf, size_t n) {
    (void)ctx;
    size_t es = st_dtype_size(t->dtype);
    for (size_t i = 0; i < n; i += es) {
        size_t k = (off + i) / es;
        float v = strstr(t->name, "norm") ? 1.0f + 0.01f * (float)(k % 7) : sinf((float)k * 0.37f + (float)t->shape[0]) * 0.05f;
        if (t->dtype == ST_F32) memcpy((char *)buf + i, &v, 4);
        else if (t->dtype == ST_BF16) { uint16_t h = f32_to_bf16(v); memcpy((char *)buf + i, &h, 2); }
        else memset((char *)buf + i, (int)(k & 0xff), es);
    }
}

enum mutation { M_NONE, M_EXTRA, M_INT, M_MISSING, M_SHAPE, M_SCALES };

/* a 1-layer mistral, hidden 64, vocab 64, 2 heads of 32 / 1 kv head, ffn 96, float32 */
#define TINY_CFG(extra) "{\n  \"model_type\": \"mistral\",\n  \"vocab_size\": 64,\n  \"hidden_size\": 64,\n" \
    "  \"num_hidden_layers\": 1,\n  \"num_attention_heads\": 2,\n  \"num_key_value_heads\": 1,\n"          \
    "  \"intermediate_size\": 96,\n  \"rms_norm_eps\": 1e-06" extra "\n}\n"

static void make_model(const char *name, const char *cfg, enum mutation mu, char *dir, size_t cap) {
    snprintf(dir, cap, "%s/%s", g_tmp, name);
    mkdir(dir, 0755);
    char path[600];
    snprintf(path, sizeof path, "%s/config.json", dir);
    FILE *f = fopen(path, "w");
    CHECK(f != NULL, "cannot create %s", path);
    if (!f) return;
    fputs(cfg, f);
    fclose(f);
    st_out_tensor t[16];
    int n = 0;
#define T(d0, d1, nm) t[n++] = (st_out_tensor){nm, ST_F32, (d1) ? 2 : 1, {d0, d1}, fill_model, NULL}
    T(64, 64, "model.embed_tokens.weight");
    T(64, 0, "model.layers.0.input_layernorm.weight");
    T(64, 64, "model.layers.0.self_attn.q_proj.weight");
    T(32, 64, "model.layers.0.self_attn.k_proj.weight");
    T(32, 64, "model.layers.0.self_attn.v_proj.weight");
    T(64, 64, "model.layers.0.self_attn.o_proj.weight");
    T(64, 0, "model.layers.0.post_attention_layernorm.weight");
    T(96, 64, "model.layers.0.mlp.gate_proj.weight");
    T(96, 64, "model.layers.0.mlp.up_proj.weight");
    T(64, 96, "model.layers.0.mlp.down_proj.weight");
    T(64, 0, "model.norm.weight");
    T(64, 64, "lm_head.weight");
    if (mu == M_EXTRA) T(8, 0, "model.layers.0.mlp.extra.weight");
    if (mu == M_SCALES) T(64, 2, "model.layers.0.self_attn.q_proj.scales");
#undef T
    if (mu == M_INT) t[3].dtype = ST_I32;
    if (mu == M_MISSING) t[5] = t[--n];
    if (mu == M_SHAPE) t[2].shape[0] = 65;
    snprintf(path, sizeof path, "%s/model.safetensors", dir);
    CHECK(st_write(path, t, (size_t)n, NULL, NULL) == MOE_OK, "write %s: %s", path, moe_errmsg());
}

static void expect_fail(const char *what, const char *in, const char *out, int bits, int group, int force, moe_status want,
                        const char *msg) {
    moe_quantize_params p;
    moe_quantize_params_defaults(&p);
    p.bits = bits;
    p.group_size = group;
    p.force = force;
    moe_status st = moe_quantize(in, out, &p);
    CHECK(st == want, "%s: got %s (%s), want %s", what, moe_status_name(st), moe_errmsg(), moe_status_name(want));
    CHECK(st == MOE_OK || strstr(moe_errmsg(), msg), "%s: message \"%s\" lacks \"%s\"", what, moe_errmsg(), msg);
}

static int exists(const char *dir, const char *file) {
    char path[700];
    snprintf(path, sizeof path, "%s/%s", dir, file);
    return access(path, F_OK) == 0;
}

static void test_lib_errors(void) {
    char good[512], dir[512], out[600];
    make_model("good", TINY_CFG(""), M_NONE, good, sizeof good);
    snprintf(out, sizeof out, "%s/out", g_tmp);
    expect_fail("bits 7", good, out, 7, 64, 0, MOE_EINVAL, "7 bits in groups of 64 is not supported");
    expect_fail("group 48", good, out, 4, 48, 0, MOE_EINVAL, "groups of 48");
    CHECK(!exists(out, "."), "nothing is created before the arguments are checked");
    static const struct { const char *name, *cfg; enum mutation mu; moe_status st; const char *msg; } bad[] = {
        {"extra", TINY_CFG(""), M_EXTRA, MOE_EFORMAT, "tensor model.layers.0.mlp.extra.weight is not part of a mistral model"},
        {"int", TINY_CFG(""), M_INT, MOE_EUNSUPPORTED, "dtype I32 is not supported"},
        {"missing", TINY_CFG(""), M_MISSING, MOE_EFORMAT, "tensor model.layers.0.self_attn.o_proj.weight is missing"},
        {"shape", TINY_CFG(""), M_SHAPE, MOE_EFORMAT, "q_proj.weight: shape [65, 64], expected [64, 64]"},
        {"scales", TINY_CFG(""), M_SCALES, MOE_EFORMAT, "tensor model.layers.0.self_attn.q_proj.scales"},
        {"qcfg", TINY_CFG(",\n  \"quantization\": {\"group_size\": 64, \"bits\": 4}"), M_NONE, MOE_EFORMAT, "already quantized"},
        {"gpt2", "{\"model_type\": \"gpt2\", \"vocab_size\": 64, \"hidden_size\": 64, \"num_hidden_layers\": 1, "
                 "\"num_attention_heads\": 2}", M_NONE, MOE_EUNSUPPORTED, "model_type \"gpt2\" is not supported"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        make_model(bad[i].name, bad[i].cfg, bad[i].mu, dir, sizeof dir);
        expect_fail(bad[i].name, dir, out, 4, 64, 0, bad[i].st, bad[i].msg);
    }
    expect_fail("no input", "/nonexistent-model", out, 4, 64, 0, MOE_EIO, "/nonexistent-model/config.json");
    expect_fail("unwritable output", good, "/proc/moe-quantize-test", 4, 64, 0, MOE_EIO, "cannot create");
    expect_fail("output is input", good, good, 4, 64, 1, MOE_EINVAL, "the output directory is the input directory");
    CHECK(!exists(out, "."), "a failed run leaves no output directory behind when it made none");

    /* a model in the way: refused, then replaced with force; the tokenizer is copied, a directory is not */
    char path[700];
    snprintf(path, sizeof path, "%s/tokenizer.json", good);
    FILE *f = fopen(path, "w");
    CHECK(f != NULL, "cannot create %s", path);
    if (f) fputs("{\"tok\": 1}\n", f), fclose(f);
    snprintf(path, sizeof path, "%s/subdir", good);
    mkdir(path, 0755);
    expect_fail("first run", good, out, 4, 64, 0, MOE_OK, "");
    CHECK(exists(out, "model.safetensors") && exists(out, "config.json") && exists(out, "tokenizer.json") &&
          !exists(out, "subdir"), "the output has the model, its config and the tokenizer, not the subdirectory");
    expect_fail("second run", good, out, 8, 64, 0, MOE_EINVAL, "already holds a model");
    expect_fail("forced", good, out, 8, 32, 1, MOE_OK, "");
    json_t *c = load_json(out, "config.json");
    json_t *q = json_object_get(c, "quantization");
    CHECK(json_integer_value(json_object_get(q, "bits")) == 8 && json_integer_value(json_object_get(q, "group_size")) == 32 &&
              json_equal(q, json_object_get(c, "quantization_config")) && json_integer_value(json_object_get(c, "vocab_size")) == 64,
          "the forced run's config: 8 bits, group 32, the input's other keys");
    json_decref(c);
    expect_fail("requantize", out, good, 4, 64, 1, MOE_EFORMAT, "already quantized");
}

/* torch_dtype bfloat16 over float32 weights: written as bfloat16, quantized from the rounded values (as mlx-lm casts first) */
static void test_lib_cast(void) {
    char in[512], out[600];
    make_model("cast", TINY_CFG(",\n  \"torch_dtype\": \"bfloat16\""), M_NONE, in, sizeof in);
    snprintf(out, sizeof out, "%s/cast-out", g_tmp);
    expect_fail("cast", in, out, 4, 32, 0, MOE_OK, "");
    model_files mi, mo;
    CHECK(open_dir(in, &mi) && open_dir(out, &mo), "open cast models");
    const st_tensor *w = dir_find(&mi, "model.layers.0.mlp.down_proj.weight");
    const st_tensor *qw = dir_find(&mo, "model.layers.0.mlp.down_proj.weight"), *qs = dir_find(&mo, "model.layers.0.mlp.down_proj.scales");
    const st_tensor *nw = dir_find(&mi, "model.norm.weight"), *no = dir_find(&mo, "model.norm.weight");
    CHECK(w && qw && qs && nw && no && qs->dtype == ST_BF16 && no->dtype == ST_BF16 && qw->dtype == ST_U32, "cast: dtypes");
    if (w && qw && qs && nw && no && qs->dtype == ST_BF16) {
        uint16_t row[96], sc[3], sb[3];
        unsigned char packed[48];
        int same = 1;
        for (int r = 0; r < 64; r++) {
            for (int k = 0; k < 96; k++) row[k] = f32_to_bf16(((const float *)w->data)[r * 96 + k]);
            mlxq_quantize_row(row, ST_BF16, 96, 4, 32, packed, sc, sb, ST_BF16);
            same = same && !memcmp(packed, (const unsigned char *)qw->data + r * 48, 48) &&
                   !memcmp(sc, (const unsigned char *)qs->data + r * 6, 6);
        }
        CHECK(same, "cast: down_proj quantized from its bfloat16 values");
        for (int k = 0; k < 64; k++)
            same = same && ((const uint16_t *)no->data)[k] == f32_to_bf16(((const float *)nw->data)[k]);
        CHECK(same, "cast: the final norm rounded to bfloat16");
    }
    close_dir(&mi);
    close_dir(&mo);
}

/* shards: the layout split at a tiny limit, with an index naming every tensor's file */
static void test_lib_shards(void) {
    char out[600];
    snprintf(out, sizeof out, "%s/shards", g_tmp);
    mkdir(out, 0755);
    st_out_tensor t[3];
    for (int i = 0; i < 3; i++) t[i] = (st_out_tensor){i == 0 ? "a" : i == 1 ? "b" : "c", ST_F32, 1, {1000}, fill_model, NULL};
    CHECK(ml_write(out, t, 3, 8000, 3000, NULL, NULL) == MOE_OK, "ml_write: %s", moe_errmsg());
    CHECK(exists(out, "model-00001-of-00002.safetensors") && exists(out, "model-00002-of-00002.safetensors") &&
              !exists(out, "model.safetensors"), "two shards of 8000 and 4000 bytes");
    json_t *ix = load_json(out, "model.safetensors.index.json");
    json_t *wm = json_object_get(ix, "weight_map");
    CHECK(json_integer_value(json_object_get(json_object_get(ix, "metadata"), "total_size")) == 12000 &&
              !strcmp(json_string_value(json_object_get(wm, "a")), "model-00001-of-00002.safetensors") &&
              !strcmp(json_string_value(json_object_get(wm, "b")), "model-00001-of-00002.safetensors") &&
              !strcmp(json_string_value(json_object_get(wm, "c")), "model-00002-of-00002.safetensors"),
          "the index");
    json_decref(ix);
}

/* the layout of each family: names, which weights stay float, Qwen3's router entries */
static void test_layout(void) {
    static const char *cfg = "{\"model_type\": \"qwen3_moe\", \"vocab_size\": 64, \"hidden_size\": 64, \"num_hidden_layers\": 2,"
                             " \"num_attention_heads\": 2, \"num_key_value_heads\": 1, \"head_dim\": 48, \"intermediate_size\": 96,"
                             " \"num_experts\": 4, \"moe_intermediate_size\": 40, \"mlp_only_layers\": [1]}";
    model_config mc;
    CHECK(config_parse(&mc, cfg, "cfg") == MOE_OK, "%s", moe_errmsg());
    ml_layout l;
    CHECK(ml_layout_build(&mc, 4, 32, 0, &l) == MOE_OK, "%s", moe_errmsg());
    int seen = 0;
    for (size_t i = 0; i < l.n; i++) {
        const ml_entry *e = &l.e[i];
        if (!strcmp(e->name, "model.layers.0.mlp.gate")) /* hidden 64 divides by 32 and by 64: 8 bits, group 64 */
            seen |= 1 * (e->bits == 8 && e->group == 64 && e->own_params);
        if (!strcmp(e->name, "model.layers.0.mlp.switch_mlp.down_proj")) /* input 40: stays float, stacked */
            seen |= 2 * (e->bits == 0 && e->E == 4 && e->rows == 64 && e->cols == 40);
        if (!strcmp(e->name, "model.layers.0.mlp.switch_mlp.gate_proj"))
            seen |= 4 * (e->bits == 4 && e->group == 32 && e->E == 4 && e->rows == 40);
        if (!strcmp(e->name, "model.layers.1.mlp.down_proj")) /* the dense layer */
            seen |= 8 * (e->bits == 4 && e->cols == 96);
        if (!strcmp(e->name, "model.layers.0.self_attn.q_norm.weight")) seen |= 16 * (e->cols == 48);
        if (!strcmp(e->name, "lm_head")) seen |= 32; /* not written: with_head 0 */
    }
    CHECK(seen == 31, "qwen3_moe layout: %#x", seen);
    json_t *q = ml_layout_quant_json(&l);
    char *s = json_dumps(q, JSON_COMPACT);
    CHECK(s && !strcmp(s, "{\"group_size\":32,\"bits\":4,\"mode\":\"affine\",\"model.layers.0.mlp.gate\":{\"group_size\":64,\"bits\":8}}"),
          "quantization entry: %s", s ? s : "-");
    free(s);
    json_decref(q);
    ml_layout_free(&l);
    config_free(&mc);
}

int main(int argc, char **argv) {
    if (argc == 3 && !strcmp(argv[1], "ref")) return test_ref(argv[2]);
    if (argc == 4 && !strcmp(argv[1], "compare")) return test_compare(argv[2], argv[3]);
    if (argc == 3 && !strcmp(argv[1], "lib")) {
        g_tmp = argv[2];
        nftw(g_tmp, rm_one, 16, FTW_DEPTH | FTW_PHYS); /* what an earlier run left */
        mkdir(g_tmp, 0755);
        test_lib_errors();
        test_lib_cast();
        test_lib_shards();
        TEST_DONE();
    }
    if (argc != 1) {
        fprintf(stderr, "usage: test_quantize [ref FILE | compare A B | lib TMPDIR]\n");
        return 2;
    }
    test_hand_worked();
    test_fast_vs_ref();
    test_group_functions();
    test_packing();
    test_layout();
    TEST_DONE();
}
