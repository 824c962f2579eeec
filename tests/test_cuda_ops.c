/* test_cuda_ops.c — the CUDA kernels of cuda_attn.cu, cuda_delta.cu and
 * cuda_elem.cu against the CPU: the scalar backend's be_* operations where
 * backend_cpu.c / delta.c have them, else a reference loop written here from
 * backend.h's contract. Random shapes with ragged sizes; tolerances are stated
 * per check (float32 results that differ only in summation order and in the
 * rounding of expf/sinf are held to a few 1e-6 of their magnitude; the KV
 * quantization to exact equality). Prints a few timings at real shapes
 * (attention decode at 4096 context, prompts on both prompt kernels, the delta
 * rule), never asserted. The tensor-core prompt attention is held to float16's
 * rounding (ATT_TC_RMS), the float32 kernels beside it (MOE_CUDA_ATT_TC=0) to 1e-5.
 * Exits 77 (skipped) where there is no CUDA device. */
#include <math.h>
#include <stdlib.h>
#include <time.h>

#include "../src/backend/backend.h"
#include "../src/backend/cuda/cuda_ops.h"
#include "test.h"

static cuda_ctx *g_c;
static backend *g_be; /* the scalar CPU backend: the reference */

/* splitmix64: uniform floats in [-scale, scale) */
static uint64_t g_seed = 0x2545f4914f6cdd1dull;
static float urand(void) {
    uint64_t z = (g_seed += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return (float)((double)((z ^ (z >> 31)) >> 40) / (double)(1 << 23) - 1);
}
static float *rnd(size_t n, float scale) {
    float *v = malloc(sizeof *v * (n + 1));
    for (size_t i = 0; i < n; i++) v[i] = scale * urand();
    return v;
}

/* A device copy of host memory (owned by the context). */
static void *dev(const void *h, size_t bytes) {
    void *d = cuda_alloc(g_c, bytes);
    if (d && h) cuda_upload(g_c, d, h, bytes);
    return d;
}
static void *host_of(const void *d, size_t bytes) {
    void *h = malloc(bytes ? bytes : 1);
    moe_status st = cuda_download(g_c, h, d, bytes);
    CHECK(st == MOE_OK, "CUDA failed: %s", moe_errmsg());
    return h;
}

/* max |a - b| over n, relative to max(1, max |b|) */
static double err_rel(const float *a, const float *b, size_t n) {
    double e = 0, m = 1;
    for (size_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - b[i]);
        e = d > e || d != d ? d : e;
        m = fabs(b[i]) > m ? fabs(b[i]) : m;
    }
    return e / m;
}
static size_t n_diff(const void *a, const void *b, size_t bytes) {
    size_t d = 0;
    for (size_t i = 0; i < bytes; i++) d += ((const unsigned char *)a)[i] != ((const unsigned char *)b)[i];
    return d;
}
static float sigm(float x) { return 1.0f / (1.0f + expf(-x)); }

/* ------------------------------------------------------- elementwise -- */

static void test_arith(int64_t n) {
    float *x = rnd((size_t)n, 4), *y = rnd((size_t)n, 4), *want = malloc(sizeof(float) * (size_t)n);
    float *dx = dev(NULL, sizeof(float) * (size_t)n), *dy = dev(y, sizeof(float) * (size_t)n);
    for (int op = 0; op < 4; op++) { /* add, mul sigmoid, mul silu, clip */
        cuda_upload(g_c, dx, x, sizeof(float) * (size_t)n);
        for (int64_t i = 0; i < n; i++)
            want[i] = op == 0   ? x[i] + y[i]
                      : op == 1 ? x[i] * sigm(y[i])
                      : op == 2 ? x[i] * (y[i] * sigm(y[i]))
                                : (x[i] > 1.5f ? 1.5f : x[i] < -1.5f ? -1.5f : x[i]);
        if (op == 0) cuda_add(g_c, dx, dy, n);
        else if (op < 3) cuda_mul_act(g_c, dx, dy, n, op == 1 ? BE_SIGMOID : BE_SILU);
        else cuda_clip(g_c, dx, n, 1.5f);
        float *got = host_of(dx, sizeof(float) * (size_t)n);
        double e = err_rel(got, want, (size_t)n);
        CHECK(e <= (op == 1 || op == 2 ? 1e-6 : 0), "elementwise op %d n %lld: error %g", op, (long long)n, e);
        free(got);
    }
    free(x), free(y), free(want);
}

static void test_rows(void) {
    const int64_t rows = 5, cols = 13, dld = 17, sld = 19, W = 29, n = 6;
    float *src = rnd((size_t)(rows * sld), 1), *dst0 = rnd((size_t)(rows * dld), 1);
    float *want = malloc(sizeof(float) * (size_t)(rows * dld));
    memcpy(want, dst0, sizeof(float) * (size_t)(rows * dld));
    for (int64_t r = 0; r < rows; r++) memcpy(want + r * dld, src + r * sld, sizeof(float) * (size_t)cols);
    float *ds = dev(src, sizeof(float) * (size_t)(rows * sld)), *dd = dev(dst0, sizeof(float) * (size_t)(rows * dld));
    cuda_copy_rows(g_c, dd, dld, ds, sld, rows, cols);
    float *got = host_of(dd, sizeof(float) * (size_t)(rows * dld));
    CHECK(n_diff(got, want, sizeof(float) * (size_t)(rows * dld)) == 0, "copy_rows differs");
    free(got);

    /* gather rows idx[j] / div of a [10 x W] table; scatter back to distinct rows */
    const int64_t idx[6] = {27, 3, 0, 14, 29, 8}, div = 3, sidx[6] = {4, 9, 0, 7, 2, 5};
    float *tab = rnd(10 * W, 1), *gw = malloc(sizeof(float) * (size_t)(n * W)), *sw = rnd(10 * W, 1);
    float *dtab = dev(tab, sizeof(float) * 10 * W), *dg = dev(NULL, sizeof(float) * (size_t)(n * W));
    float *dsw = dev(sw, sizeof(float) * 10 * W);
    for (int64_t j = 0; j < n; j++) memcpy(gw + j * W, tab + idx[j] / div * W, sizeof(float) * W);
    cuda_gather_rows(g_c, dg, dtab, W, idx, div, n);
    got = host_of(dg, sizeof(float) * (size_t)(n * W));
    CHECK(n_diff(got, gw, sizeof(float) * (size_t)(n * W)) == 0, "gather_rows differs");
    free(got);
    for (int64_t j = 0; j < n; j++) memcpy(sw + sidx[j] * W, gw + j * W, sizeof(float) * W);
    cuda_scatter_rows(g_c, dsw, dg, W, sidx, n);
    got = host_of(dsw, sizeof(float) * 10 * W);
    CHECK(n_diff(got, sw, sizeof(float) * 10 * W) == 0, "scatter_rows differs");
    free(got), free(src), free(dst0), free(want), free(tab), free(gw), free(sw);
}

static void test_moe_sums(int64_t n, int K, int64_t H) {
    float *yk = rnd((size_t)(n * K * H), 2), *w = rnd((size_t)(n * K), 1), *o0 = rnd((size_t)(n * H), 1);
    float *y = rnd((size_t)(n * H), 1), *g = rnd((size_t)n, 3), *want = malloc(sizeof(float) * (size_t)(n * H));
    unsigned char *use = malloc((size_t)(n * K));
    for (int64_t i = 0; i < n * K; i++) use[i] = urand() > -0.6f;
    for (int k = 0; k < K; k++) use[k] = 0; /* token 0: every choice dropped */
    for (int64_t t = 0; t < n; t++)
        for (int64_t j = 0; j < H; j++) {
            float acc = 0;
            int first = 1;
            for (int k = 0; k < K; k++) {
                int64_t tk = t * K + k;
                if (!use[tk]) continue;
                acc = first ? w[tk] * yk[tk * H + j] : acc + w[tk] * yk[tk * H + j];
                first = 0;
            }
            want[t * H + j] = acc;
        }
    float *dyk = dev(yk, sizeof(float) * (size_t)(n * K * H)), *dout = dev(o0, sizeof(float) * (size_t)(n * H));
    float *dw = dev(w, sizeof(float) * (size_t)(n * K));
    unsigned char *duse = dev(use, (size_t)(n * K));
    /* every choice used (use NULL) first: the sum of all K terms */
    cuda_moe_combine(g_c, dout, dyk, dw, NULL, n, K, H);
    float *got = host_of(dout, sizeof(float) * (size_t)(n * H));
    float *all = malloc(sizeof(float) * (size_t)(n * H));
    for (int64_t t = 0; t < n; t++)
        for (int64_t j = 0; j < H; j++) {
            float acc = w[t * K] * yk[t * K * H + j];
            for (int k = 1; k < K; k++) acc += w[t * K + k] * yk[(t * K + k) * H + j];
            all[t * H + j] = acc;
        }
    double ea = err_rel(got, all, (size_t)(n * H));
    CHECK(ea <= 1e-6, "moe_combine (all used) n %lld K %d H %lld: error %g", (long long)n, K, (long long)H, ea);
    free(got), free(all);
    cuda_moe_combine(g_c, dout, dyk, dw, duse, n, K, H);
    got = host_of(dout, sizeof(float) * (size_t)(n * H));
    double e = err_rel(got, want, (size_t)(n * H));
    CHECK(e <= 1e-6, "moe_combine n %lld K %d H %lld: error %g", (long long)n, K, (long long)H, e);
    cuda_free(g_c, dw), cuda_free(g_c, duse);
    /* then the shared expert's gated add onto it */
    for (int64_t i = 0; i < n * H; i++) want[i] = got[i] + sigm(g[i / H]) * y[i];
    free(got);
    float *dy = dev(y, sizeof(float) * (size_t)(n * H)), *dg = dev(g, sizeof(float) * (size_t)n);
    cuda_add_gated(g_c, dout, dy, dg, n, H);
    got = host_of(dout, sizeof(float) * (size_t)(n * H));
    e = err_rel(got, want, (size_t)(n * H));
    CHECK(e <= 1e-6, "add_gated n %lld H %lld: error %g", (long long)n, (long long)H, e);
    free(got), free(yk), free(w), free(o0), free(y), free(g), free(want), free(use);
}

/* ------------------------------------------------- DeltaNet helpers -- */

static void test_l2norm(int64_t n, int heads, int d, int64_t ld, float scale) {
    float *x = rnd((size_t)(n * ld), 2), *want = malloc(sizeof(float) * (size_t)(n * ld));
    memcpy(want, x, sizeof(float) * (size_t)(n * ld));
    for (int64_t t = 0; t < n; t++)
        for (int h = 0; h < heads; h++) {
            float *v = want + t * ld + (int64_t)h * d;
            double ss = 0;
            for (int i = 0; i < d; i++) ss += (double)v[i] * v[i];
            float inv = scale / sqrtf((float)ss + 1e-6f);
            for (int i = 0; i < d; i++) v[i] *= inv;
        }
    float *dx = dev(x, sizeof(float) * (size_t)(n * ld));
    cuda_l2norm(g_c, dx, ld, n, heads, d, scale);
    float *got = host_of(dx, sizeof(float) * (size_t)(n * ld));
    double e = err_rel(got, want, (size_t)(n * ld));
    CHECK(e <= 1e-6, "l2norm n %lld heads %d d %d: error %g", (long long)n, heads, d, e);
    free(x), free(want), free(got);
}

static void test_delta_split(int64_t n, int nk, int nv, int dk, int dv) {
    int r = nv / nk;
    int64_t kd = (int64_t)nk * dk, vd = (int64_t)nv * dv, wi = 2 * kd + 2 * vd, cd = 2 * kd + vd;
    float *in = rnd((size_t)(n * wi), 1), *ba = rnd((size_t)(n * 2 * nv), 30); /* softplus on both sides of 20 */
    float *neg_a = rnd((size_t)nv, 2), *dtb = rnd((size_t)nv, 1);
    float *mix = malloc(sizeof(float) * (size_t)(n * cd)), *z = malloc(sizeof(float) * (size_t)(n * vd));
    float *beta = malloc(sizeof(float) * (size_t)(n * nv)), *g = malloc(sizeof(float) * (size_t)(n * nv));
    for (int64_t t = 0; t < n; t++)
        for (int gh = 0; gh < nk; gh++) {
            const float *p = in + t * wi + gh * (2 * dk + 2 * (int64_t)r * dv), *b = ba + t * 2 * nv + gh * 2 * r;
            memcpy(mix + t * cd + gh * dk, p, sizeof(float) * (size_t)dk);
            memcpy(mix + t * cd + kd + gh * dk, p + dk, sizeof(float) * (size_t)dk);
            memcpy(mix + t * cd + 2 * kd + (int64_t)gh * r * dv, p + 2 * dk, sizeof(float) * (size_t)(r * dv));
            memcpy(z + t * vd + (int64_t)gh * r * dv, p + 2 * dk + r * dv, sizeof(float) * (size_t)(r * dv));
            for (int i = 0; i < r; i++) {
                int h = gh * r + i;
                float x = b[r + i] + dtb[h];
                beta[t * nv + h] = sigm(b[i]);
                g[t * nv + h] = neg_a[h] * (x > 20 ? x : log1pf(expf(x)));
            }
        }
    float *d_in = dev(in, sizeof(float) * (size_t)(n * wi)), *d_ba = dev(ba, sizeof(float) * (size_t)(n * 2 * nv));
    float *d_na = dev(neg_a, sizeof(float) * (size_t)nv), *d_dt = dev(dtb, sizeof(float) * (size_t)nv);
    float *d_mix = dev(NULL, sizeof(float) * (size_t)(n * cd)), *d_z = dev(NULL, sizeof(float) * (size_t)(n * vd));
    float *d_beta = dev(NULL, sizeof(float) * (size_t)(n * nv)), *d_g = dev(NULL, sizeof(float) * (size_t)(n * nv));
    cuda_delta_split(g_c, d_in, d_ba, n, nk, nv, dk, dv, d_na, d_dt, d_mix, d_z, d_beta, d_g);
    float *gm = host_of(d_mix, sizeof(float) * (size_t)(n * cd)), *gz = host_of(d_z, sizeof(float) * (size_t)(n * vd));
    float *gb = host_of(d_beta, sizeof(float) * (size_t)(n * nv)), *gg = host_of(d_g, sizeof(float) * (size_t)(n * nv));
    CHECK(n_diff(gm, mix, sizeof(float) * (size_t)(n * cd)) == 0, "delta_split: mix differs");
    CHECK(n_diff(gz, z, sizeof(float) * (size_t)(n * vd)) == 0, "delta_split: z differs");
    double eb = err_rel(gb, beta, (size_t)(n * nv)), eg = err_rel(gg, g, (size_t)(n * nv));
    CHECK(eb <= 1e-6 && eg <= 1e-6, "delta_split: beta error %g, g error %g", eb, eg);
    free(in), free(ba), free(neg_a), free(dtb), free(mix), free(z), free(beta), free(g);
    free(gm), free(gz), free(gb), free(gg);
}

static void test_conv(int64_t n, int64_t ch, int K) {
    float *x = rnd((size_t)(n * ch), 1), *w = rnd((size_t)(ch * K), 1), *st = rnd((size_t)((K - 1) * ch), 1);
    float *out = malloc(sizeof(float) * (size_t)(n * ch));
    float *d_x = dev(x, sizeof(float) * (size_t)(n * ch)), *d_w = dev(w, sizeof(float) * (size_t)(ch * K));
    float *d_st = dev(st, sizeof(float) * (size_t)((K - 1) * ch + 1)), *d_out = dev(NULL, sizeof(float) * (size_t)(n * ch));
    cuda_causal_conv(g_c, d_x, n, ch, K, d_w, d_st, d_out);
    be_causal_conv(g_be, x, n, ch, K, w, st, out);
    float *go = host_of(d_out, sizeof(float) * (size_t)(n * ch)), *gs = host_of(d_st, sizeof(float) * (size_t)((K - 1) * ch));
    double eo = err_rel(go, out, (size_t)(n * ch));
    CHECK(eo <= 1e-6, "causal_conv n %lld ch %lld K %d: error %g", (long long)n, (long long)ch, K, eo);
    CHECK(n_diff(gs, st, sizeof(float) * (size_t)((K - 1) * ch)) == 0, "causal_conv n %lld K %d: state differs",
          (long long)n, K);
    free(x), free(w), free(st), free(out), free(go), free(gs);
}

/* The delta rule over lengths 1..70 from a non-zero state, against the CPU's token-by-token form. */
static void test_delta_rule(int nk, int nv, int dk, int dv) {
    int64_t ld = 2 * (int64_t)nk * dk + (int64_t)nv * dv + 3; /* rows with a gap, as the conv output's are not */
    size_t st_n = (size_t)nv * dk * dv;
    float *scratch = malloc(sizeof(float) * be_delta_scratch(0, dk, dv) * (size_t)backend_threads(g_be));
    double worst_o = 0, worst_s = 0;
    for (int64_t n = 1; n <= 70; n++) {
        float *qkv = rnd((size_t)(n * ld), 1), *g = rnd((size_t)(n * nv), 1), *beta = rnd((size_t)(n * nv), 1);
        for (int64_t t = 0; t < n; t++)
            for (int i = 0; i < 2 * nk; i++) { /* unit q and k as the model gives them, q scaled by 1/sqrt(dk) */
                float *v = qkv + t * ld + (int64_t)i * dk;
                double ss = 0;
                for (int r = 0; r < dk; r++) ss += (double)v[r] * v[r];
                for (int r = 0; r < dk; r++) v[r] /= (float)(sqrt(ss) * (i < nk ? sqrt(dk) : 1));
            }
        for (int64_t i = 0; i < n * nv; i++) {
            g[i] = -fabsf(g[i]) * 2;
            beta[i] = 0.5f + 0.5f * beta[i];
        }
        float *st = rnd(st_n, 0.5f), *out = malloc(sizeof(float) * (size_t)(n * nv * dv));
        float *d_qkv = dev(qkv, sizeof(float) * (size_t)(n * ld)), *d_g = dev(g, sizeof(float) * (size_t)(n * nv));
        float *d_b = dev(beta, sizeof(float) * (size_t)(n * nv)), *d_st = dev(st, sizeof(float) * st_n);
        float *d_out = dev(NULL, sizeof(float) * (size_t)(n * nv * dv));
        int64_t kd = (int64_t)nk * dk;
        cuda_delta_rule(g_c, d_qkv, d_qkv + kd, d_qkv + 2 * kd, ld, d_g, d_b, n, nk, nv, dk, dv, d_st, d_out);
        be_delta_rule(g_be, qkv, qkv + kd, qkv + 2 * kd, ld, g, beta, n, nk, nv, dk, dv, 0, st, out, scratch);
        float *go = host_of(d_out, sizeof(float) * (size_t)(n * nv * dv)), *gs = host_of(d_st, sizeof(float) * st_n);
        double eo = err_rel(go, out, (size_t)(n * nv * dv)), es = err_rel(gs, st, st_n);
        worst_o = eo > worst_o || eo != eo ? eo : worst_o;
        worst_s = es > worst_s || es != es ? es : worst_s;
        free(qkv), free(g), free(beta), free(st), free(out), free(go), free(gs);
        cuda_free(g_c, d_qkv), cuda_free(g_c, d_g), cuda_free(g_c, d_b), cuda_free(g_c, d_st), cuda_free(g_c, d_out);
    }
    CHECK(worst_o <= 1e-5 && worst_s <= 1e-5, "delta_rule nk %d nv %d dk %d dv %d: output error %g, state error %g", nk,
          nv, dk, dv, worst_o, worst_s);
    printf("delta_rule nk %d nv %d dk %d dv %d, n 1..70: max error %.2g (output), %.2g (state)\n", nk, nv, dk, dv,
           worst_o, worst_s);
    free(scratch);
}

/* --------------------------------------------------- norm, RoPE, KV -- */

static void test_rmsnorm(int64_t n, int64_t d) {
    float *x = rnd((size_t)(n * d), 3), *w = rnd((size_t)d, 1), *out = malloc(sizeof(float) * (size_t)(n * d));
    be_rmsnorm(g_be, x, w, n, d, 1e-6f, out);
    float *dx = dev(x, sizeof(float) * (size_t)(n * d)), *dw = dev(w, sizeof(float) * (size_t)d);
    cuda_rmsnorm(g_c, dx, dw, n, d, 1e-6f, dx); /* in place */
    float *got = host_of(dx, sizeof(float) * (size_t)(n * d));
    double e = err_rel(got, out, (size_t)(n * d));
    CHECK(e <= 1e-6, "rmsnorm n %lld d %lld: error %g", (long long)n, (long long)d, e);
    free(x), free(w), free(out), free(got);
}

static void test_rope(int64_t n, int heads, int hd, int rot, int64_t p0) {
    float *x = rnd((size_t)(n * heads * hd), 1), *inv = malloc(sizeof(float) * (size_t)(rot / 2));
    int64_t *pos = malloc(sizeof(int64_t) * (size_t)n);
    for (int i = 0; i < rot / 2; i++) inv[i] = (float)pow(10000.0, -2.0 * i / rot);
    for (int64_t t = 0; t < n; t++) pos[t] = p0 + 3 * t; /* not consecutive: each row its own */
    float *dx = dev(x, sizeof(float) * (size_t)(n * heads * hd)), *dinv = dev(inv, sizeof(float) * (size_t)(rot / 2));
    int64_t *dpos = dev(pos, sizeof(int64_t) * (size_t)n);
    cuda_rope(g_c, dx, n, heads, hd, rot, dpos, dinv);
    be_rope(g_be, x, n, heads, hd, rot, pos, inv);
    float *got = host_of(dx, sizeof(float) * (size_t)(n * heads * hd));
    double e = err_rel(got, x, (size_t)(n * heads * hd));
    CHECK(e <= 2e-6, "rope n %lld hd %d rot %d pos %lld: error %g", (long long)n, hd, rot, (long long)p0, e);
    free(x), free(inv), free(pos), free(got);
    cuda_free(g_c, dx), cuda_free(g_c, dinv), cuda_free(g_c, dpos);
}

/* A kv_cache's arrays on the host (h) and on the device (d), zeroed. */
typedef struct kv_pair {
    kv_cache h, d;
    size_t vbytes, sbytes; /* bytes of k (and of v); of ks (and of each other scale/bias array) */
} kv_pair;

static kv_pair kv_make(int bits, int n_kv, int hd, int64_t cap) {
    kv_pair p = {0};
    p.h = (kv_cache){.bits = bits, .group = bits == 32 ? 0 : kv_group(hd), .n_kv = n_kv, .hd = hd, .cap = cap};
    p.vbytes = (size_t)cap * kv_row_bytes(&p.h);
    p.sbytes = (size_t)cap * kv_sb_row_floats(&p.h) * sizeof(float);
    p.d = p.h;
    p.h.k = calloc(1, p.vbytes), p.h.v = calloc(1, p.vbytes);
    p.d.k = dev(NULL, p.vbytes), p.d.v = dev(NULL, p.vbytes);
    if (bits != 32) {
        float **hs[4] = {&p.h.ks, &p.h.kb, &p.h.vs, &p.h.vb}, **ds[4] = {&p.d.ks, &p.d.kb, &p.d.vs, &p.d.vb};
        for (int i = 0; i < 4; i++) *hs[i] = calloc(1, p.sbytes), *ds[i] = dev(NULL, p.sbytes);
    }
    return p;
}

static void kv_release(kv_pair *p) {
    void *h[6] = {p->h.k, p->h.v, p->h.ks, p->h.kb, p->h.vs, p->h.vb}, *d[6] = {p->d.k, p->d.v, p->d.ks, p->d.kb, p->d.vs, p->d.vb};
    for (int i = 0; i < 6; i++) free(h[i]), cuda_free(g_c, d[i]);
}

/* The device arrays against the host's, byte for byte; or the host's uploaded to the device (up). */
static size_t kv_compare(kv_pair *p, int up) {
    void *h[6] = {p->h.k, p->h.v, p->h.ks, p->h.kb, p->h.vs, p->h.vb}, *d[6] = {p->d.k, p->d.v, p->d.ks, p->d.kb, p->d.vs, p->d.vb};
    size_t diff = 0;
    for (int i = 0; i < (p->h.bits == 32 ? 2 : 6); i++) {
        size_t b = i < 2 ? p->vbytes : p->sbytes;
        if (up) {
            cuda_upload(g_c, d[i], h[i], b);
            continue;
        }
        void *got = host_of(d[i], b);
        diff += n_diff(got, h[i], b);
        free(got);
    }
    return diff;
}

/* n rows stored at positions pos (consecutive from p0, or every 7th: several
 * rows of one call land in one slot, the last must win) on both sides. */
static void test_kv_store(int bits, int n_kv, int hd, int64_t cap, int64_t n, int64_t p0, int stride) {
    kv_pair p = kv_make(bits, n_kv, hd, cap);
    int64_t w = (int64_t)n_kv * hd, *pos = malloc(sizeof(int64_t) * (size_t)n);
    for (int64_t t = 0; t < n; t++) pos[t] = p0 + stride * t;
    float *k = rnd((size_t)(n * w), 2), *v = rnd((size_t)(n * w), 0.5f);
    for (int64_t j = 0; j < w; j++) k[j] = 0.25f; /* a constant group: scale 0 */
    be_kv_store(g_be, &p.h, k, v, n, pos);
    float *dk = dev(k, sizeof(float) * (size_t)(n * w)), *dv = dev(v, sizeof(float) * (size_t)(n * w));
    int64_t *dpos = dev(pos, sizeof(int64_t) * (size_t)n);
    cuda_kv_store(g_c, &p.d, dk, dv, n, dpos);
    size_t diff = kv_compare(&p, 0);
    CHECK(diff == 0, "kv_store bits %d hd %d cap %lld n %lld stride %d: %zu bytes differ", bits, hd, (long long)cap,
          (long long)n, stride, diff);
    kv_release(&p);
    free(pos), free(k), free(v);
    cuda_free(g_c, dk), cuda_free(g_c, dv), cuda_free(g_c, dpos);
}

/* ---------------------------------------------------------- attention -- */

typedef struct att_case {
    int n_heads, n_kv, hd, window;
} att_case;

/* sqrt(sum (a - b)^2 / sum b^2): the tensor-core kernel's measure, whose
 * float16 rounding is spread over every element */
static double err_rms(const float *a, const float *b, size_t n) {
    double d2 = 0, b2 = 0;
    for (size_t i = 0; i < n; i++) {
        double d = (double)a[i] - b[i];
        d2 += d * d, b2 += (double)b[i] * b[i];
    }
    return d2 == d2 ? sqrt(d2 / (b2 > 0 ? b2 : 1)) : INFINITY;
}

/* The tensor-core prompt kernel (cuda_attn.cu) rounds Q (scaled), K, V and
 * the probabilities to float16: 11 significant bits, a relative error of at
 * most 2^-11 = 4.9e-4 each. The output is held to 4 such units in relative
 * RMS and to 8 in the largest error relative to the largest output. */
#define ATT_TC_RMS 2e-3
#define ATT_TC_MAX 4e-3

/* The worst tensor-core errors seen per class: bits (32, 8, 4) x hd (64, 128) x windowed */
static double g_tc_rms[3][2][2], g_tc_max[3][2][2];

/* Cuda attention of the device inputs, with the tensor-core prompt kernel
 * allowed (tc) or not (MOE_CUDA_ATT_TC=0, the float32 kernels). */
static float *att_gpu(const float *dq, int64_t n, const int64_t *dpos, kv_pair *p, att_case ac, float scale, int tc) {
    int64_t qd = (int64_t)ac.n_heads * ac.hd;
    float *dout = dev(NULL, sizeof(float) * (size_t)(n * qd));
    if (tc) unsetenv("MOE_CUDA_ATT_TC");
    else setenv("MOE_CUDA_ATT_TC", "0", 1);
    cuda_attention(g_c, dq, n, dpos, &p->d, ac.n_heads, ac.window, scale, dout);
    unsetenv("MOE_CUDA_ATT_TC");
    float *got = host_of(dout, sizeof(float) * (size_t)(n * qd));
    cuda_free(g_c, dout);
    return got;
}

/* n queries at pos0.. over a cache filled (on the CPU, uploaded) with
 * positions 0..pos0+n-1; cap as the engine sizes it: window + 36 (a batch
 * of 37) under a window, else every position and `spare` slots more (a
 * context not filled yet: the decode grid is sized for the cap, the splits
 * in use for the positions). A ring smaller than the positions holds only
 * the last cap of them; the queries read slot p % cap for every key p, as
 * the CPU does. The float32 kernels are held to 1e-5; where the tensor-core
 * kernel applies (16 queries or more, hd 64 or 128) it runs too, held to
 * ATT_TC_RMS / ATT_TC_MAX, and must show float16 rounding (else the float32
 * kernel ran in its place). */
static void test_attention(att_case ac, int bits, int64_t n, int64_t pos0, int64_t spare) {
    int64_t total = pos0 + n, cap = ac.window > 0 ? ac.window + 36 : total + spare;
    int64_t w = (int64_t)ac.n_kv * ac.hd, qd = (int64_t)ac.n_heads * ac.hd;
    kv_pair p = kv_make(bits, ac.n_kv, ac.hd, cap);
    float *k = rnd((size_t)(total * w), 1), *v = rnd((size_t)(total * w), 1), *q = rnd((size_t)(n * qd), 2.5f);
    int64_t *pos = malloc(sizeof(int64_t) * (size_t)total);
    for (int64_t t = 0; t < total; t++) pos[t] = t;
    be_kv_store(g_be, &p.h, k, v, total, pos);
    kv_compare(&p, 1);
    float *want = malloc(sizeof(float) * (size_t)(n * qd));
    float *scratch = malloc(sizeof(float) * (size_t)(backend_threads(g_be) * (cap + ac.hd)));
    float scale = 1.0f / sqrtf((float)ac.hd);
    be_attention(g_be, q, n, pos + pos0, &p.h, ac.n_heads, ac.window, scale, scratch, want);
    float *dq = dev(q, sizeof(float) * (size_t)(n * qd));
    int64_t *dpos = dev(pos + pos0, sizeof(int64_t) * (size_t)n);
    float *got = att_gpu(dq, n, dpos, &p, ac, scale, 0);
    double e = err_rel(got, want, (size_t)(n * qd));
    CHECK(e <= 1e-5, "attention heads %d/%d hd %d window %d cap %lld bits %d n %lld pos0 %lld: error %g", ac.n_heads,
          ac.n_kv, ac.hd, ac.window, (long long)cap, bits, (long long)n, (long long)pos0, e);
    free(got);
    if (n >= 16 && (ac.hd == 64 || ac.hd == 128)) {
        got = att_gpu(dq, n, dpos, &p, ac, scale, 1);
        double r = err_rms(got, want, (size_t)(n * qd)), m = err_rel(got, want, (size_t)(n * qd));
        CHECK(r <= ATT_TC_RMS && m <= ATT_TC_MAX && r > 1e-6,
              "attention (tensor cores) heads %d/%d hd %d window %d cap %lld bits %d n %lld pos0 %lld: "
              "rms error %g, max error %g",
              ac.n_heads, ac.n_kv, ac.hd, ac.window, (long long)cap, bits, (long long)n, (long long)pos0, r, m);
        int bi = bits == 32 ? 0 : bits == 8 ? 1 : 2, hi = ac.hd == 128, wi = ac.window > 0;
        g_tc_rms[bi][hi][wi] = r > g_tc_rms[bi][hi][wi] ? r : g_tc_rms[bi][hi][wi];
        g_tc_max[bi][hi][wi] = m > g_tc_max[bi][hi][wi] ? m : g_tc_max[bi][hi][wi];
        free(got);
    }
    kv_release(&p);
    cuda_free(g_c, dq), cuda_free(g_c, dpos);
    free(k), free(v), free(q), free(pos), free(want), free(scratch);
}

static void report_tc_errors(void) {
    const int widths[] = {32, 8, 4};
    for (int b = 0; b < 3; b++)
        for (int h = 0; h < 2; h++)
            for (int wi = 0; wi < 2; wi++)
                if (g_tc_rms[b][h][wi] > 0)
                    printf("attention (tensor cores) vs CPU, %2d-bit cache, hd %3d, %s: worst rms error %.2e, worst "
                           "max error %.2e\n",
                           widths[b], h ? 128 : 64, wi ? "window" : "causal", g_tc_rms[b][h][wi], g_tc_max[b][h][wi]);
}

/* ------------------------------------------------------------- graphs -- */

/* One "step" of work on device inputs: x = the rope of x0 at positions pos
 * (device), y = x + y0, with a staged host argument (gather_rows' index
 * table) and a decode attention over a cache of `cap` slots (its splits
 * follow pos on the device), into out. */
typedef struct graph_case {
    float *x0, *x, *y0, *y, *inv, *tab, *g, *q, *att;
    int64_t *pos;
    kv_pair kv;
} graph_case;

static void graph_work(graph_case *gc, int with_upload) {
    const int heads = 4, hd = 64;
    int64_t idx[3] = {2, 0, 1};
    cuda_copy(g_c, gc->x, gc->x0, sizeof(float) * heads * hd);
    cuda_rope(g_c, gc->x, 1, heads, hd, hd, gc->pos, gc->inv);
    cuda_copy(g_c, gc->y, gc->y0, sizeof(float) * heads * hd);
    cuda_add(g_c, gc->y, gc->x, heads * hd);
    cuda_gather_rows(g_c, gc->g, gc->tab, 16, idx, 1, 3);
    static const float four[4] = {1, 2, 3, 4};
    if (with_upload) cuda_upload(g_c, gc->tab, four, sizeof four); /* reads the host now: cannot be recorded */
    cuda_attention(g_c, gc->q, 1, gc->pos, &gc->kv.d, 8, 0, 0.125f, gc->att);
}

/* The step's outputs (y, gathered rows, attention) into one host array. */
static float *graph_out(graph_case *gc) {
    float *a = host_of(gc->y, sizeof(float) * 256), *b = host_of(gc->g, sizeof(float) * 48),
          *c = host_of(gc->att, sizeof(float) * 8 * 64), *o = malloc(sizeof(float) * (256 + 48 + 512));
    memcpy(o, a, sizeof(float) * 256), memcpy(o + 256, b, sizeof(float) * 48), memcpy(o + 304, c, sizeof(float) * 512);
    free(a), free(b), free(c);
    return o;
}

/* cuda_graph_*: steps at positions 0..7, the first plain, the second
 * captured, the rest replayed, each equal to the same work issued plainly;
 * staging traffic between replays (the ring wraps) changes nothing; a new
 * key captures again; the scratch area moving (a larger attention) makes the
 * next step capture again; work that cannot be recorded (an upload) is run
 * plainly once end says so, and that key is never captured again. */
static void test_graph(void) {
    graph_case gc;
    gc.x0 = rnd(256, 1), gc.y0 = rnd(256, 1), gc.tab = rnd(48, 1), gc.q = rnd(512, 1);
    float inv[32];
    for (int i = 0; i < 32; i++) inv[i] = (float)pow(10000.0, -2.0 * i / 64);
    float *hx0 = gc.x0, *hy0 = gc.y0, *htab = gc.tab, *hq = gc.q;
    gc.x0 = dev(hx0, sizeof(float) * 256), gc.y0 = dev(hy0, sizeof(float) * 256), gc.tab = dev(htab, sizeof(float) * 48);
    gc.q = dev(hq, sizeof(float) * 512), gc.inv = dev(inv, sizeof inv);
    gc.x = dev(NULL, sizeof(float) * 256), gc.y = dev(NULL, sizeof(float) * 256), gc.g = dev(NULL, sizeof(float) * 48);
    gc.att = dev(NULL, sizeof(float) * 512), gc.pos = dev(NULL, sizeof(int64_t));
    gc.kv = kv_make(8, 2, 64, 4096);
    float *kvh = rnd(gc.kv.vbytes / 4, 1), *sbh = rnd(gc.kv.sbytes / 4, 0.01f);
    void *d[6] = {gc.kv.d.k, gc.kv.d.v, gc.kv.d.ks, gc.kv.d.kb, gc.kv.d.vs, gc.kv.d.vb};
    for (int i = 0; i < 6; i++) cuda_upload(g_c, d[i], i < 2 ? (void *)kvh : (void *)sbh, i < 2 ? gc.kv.vbytes : gc.kv.sbytes);

    cuda_graph *g = NULL;
    uint64_t rep0, cap0, rep, cap;
    cuda_graph_counts(g_c, &rep0, &cap0);
    int64_t steps[] = {0, 1, 2, 40, 41, 700, 701, 4000, 5, 6, 3000, 7, 8};
    for (size_t i = 0; i < sizeof steps / sizeof *steps; i++) {
        int64_t p = steps[i];
        uint64_t key = i < 9 ? 1 : 2;
        if (i == 4) { /* staging traffic: the ring wraps between replays */
            int64_t *zeros = calloc(1 << 14, sizeof(int64_t));
            float *sink = dev(NULL, sizeof(float) << 14);
            for (int k = 0; k < 40; k++) cuda_gather_rows(g_c, sink, gc.x0, 1, zeros, 1, 1 << 14); /* 128 KiB staged each */
            cuda_free(g_c, sink);
            free(zeros);
        }
        if (i == 6) cuda_scratch_reserve(g_c, (size_t)256 << 20); /* the scratch area moves */
        cuda_upload(g_c, gc.pos, &p, sizeof p);
        graph_work(&gc, 0); /* plainly: the expected result */
        float *want = graph_out(&gc);
        cuda_zero(g_c, gc.y, sizeof(float) * 256), cuda_zero(g_c, gc.g, sizeof(float) * 48), cuda_zero(g_c, gc.att, sizeof(float) * 512);
        int runs = 0;
        for (int run = cuda_graph_begin(g_c, &g, key); run; run = cuda_graph_end(g_c, g)) {
            graph_work(&gc, 0);
            runs++;
        }
        float *got = graph_out(&gc);
        size_t diff = n_diff(got, want, sizeof(float) * (256 + 48 + 512));
        CHECK(diff == 0, "graph step %zu (position %lld, key %llu, work issued %d times): %zu bytes differ", i,
              (long long)p, (unsigned long long)key, runs, diff);
        /* issued: the first step of a key plainly, the second to capture, then replayed (none) */
        int want_runs = i == 0 || i == 1 || i == 6 || i == 9 || i == 10 ? 1 : 0;
        CHECK(runs == want_runs, "graph step %zu: work issued %d times, expected %d", i, runs, want_runs);
        free(want), free(got);
    }
    cuda_graph_counts(g_c, &rep, &cap);
    /* captures: step 1, 6 (scratch moved), 10 (key 2); replays: every step but 0 and 9 */
    CHECK(cap - cap0 == 3 && rep - rep0 == sizeof steps / sizeof *steps - 2, "graphs: %llu captures, %llu replays",
          (unsigned long long)(cap - cap0), (unsigned long long)(rep - rep0));

    /* work that cannot be recorded: issued once to capture, once more plainly, then plainly ever after */
    cuda_graph *h = NULL;
    for (int i = 0; i < 4; i++) {
        int64_t p = 10 + i;
        cuda_upload(g_c, gc.pos, &p, sizeof p);
        int runs = 0;
        for (int run = cuda_graph_begin(g_c, &h, 3); run; run = cuda_graph_end(g_c, h)) {
            graph_work(&gc, 1);
            runs++;
        }
        CHECK(runs == (i == 1 ? 2 : 1), "uncapturable step %d: work issued %d times", i, runs);
        CHECK(cuda_sync(g_c) == MOE_OK, "uncapturable step %d: the context failed: %s", i, moe_errmsg());
    }
    cuda_graph_counts(g_c, &rep0, &cap0);
    CHECK(cap0 == cap && rep0 == rep, "an uncapturable step was recorded (%llu captures)", (unsigned long long)cap0);
    cuda_graph_free(g_c, g);
    cuda_graph_free(g_c, h);
    kv_release(&gc.kv);
    float *all[] = {gc.x0, gc.x, gc.y0, gc.y, gc.inv, gc.tab, gc.g, gc.q, gc.att};
    for (size_t i = 0; i < sizeof all / sizeof *all; i++) cuda_free(g_c, all[i]);
    cuda_free(g_c, gc.pos);
    free(hx0), free(hy0), free(htab), free(hq), free(kvh), free(sbh);
}

/* ------------------------------------------------------------ timings -- */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Seconds a call of attention over ctx positions (n queries at the end) takes, at 32 heads / 8 KV heads / hd 128. */
static double time_attention(int bits, int64_t ctx, int64_t n, int iters) {
    const int nh = 32, nkv = 8, hd = 128;
    kv_pair p = kv_make(bits, nkv, hd, ctx);
    float *kv = rnd(p.vbytes / 4 + 1, 1), *sb = rnd(p.sbytes / 4 + 1, 0.01f), *q = rnd((size_t)(n * nh * hd), 1);
    void *d[6] = {p.d.k, p.d.v, p.d.ks, p.d.kb, p.d.vs, p.d.vb};
    for (int i = 0; i < (bits == 32 ? 2 : 6); i++) cuda_upload(g_c, d[i], i < 2 ? (void *)kv : (void *)sb, i < 2 ? p.vbytes : p.sbytes);
    float *dq = dev(q, sizeof(float) * (size_t)(n * nh * hd)), *dout = dev(NULL, sizeof(float) * (size_t)(n * nh * hd));
    int64_t p0 = ctx - n, *dpos = dev(&p0, sizeof p0);
    for (int i = 0; i < 3; i++) cuda_attention(g_c, dq, n, dpos, &p.d, nh, 0, 0.088f, dout);
    cuda_sync(g_c);
    double t0 = now_s();
    for (int i = 0; i < iters; i++) cuda_attention(g_c, dq, n, dpos, &p.d, nh, 0, 0.088f, dout);
    CHECK(cuda_sync(g_c) == MOE_OK, "timing run failed: %s", moe_errmsg());
    double dt = (now_s() - t0) / iters;
    kv_release(&p);
    cuda_free(g_c, dq), cuda_free(g_c, dout), cuda_free(g_c, dpos);
    free(kv), free(sb), free(q);
    return dt;
}

static void timings(void) {
    const int widths[] = {32, 8, 4};
    for (int b = 0; b < 3; b++) {
        int bits = widths[b];
        double dt = time_attention(bits, 4096, 1, 200);
        double bytes = 2.0 * 4096 * 8 * 128 * (bits / 8.0 + (bits == 32 ? 0 : 2.0 * 4 / 64));
        printf("timing: attention decode, 4096 context, 32/8 heads, hd 128, %2d-bit cache: %.1f us (%.0f GB/s of K+V)\n",
               bits, dt * 1e6, bytes / dt / 1e9);
    }
    for (int64_t ctx = 256; ctx <= 32768; ctx *= 8) { /* the fixed part and the part per key */
        double dc = time_attention(32, ctx, 1, 200);
        printf("timing: attention decode, %lld context, 32-bit cache: %.1f us\n", (long long)ctx, dc * 1e6);
    }
    /* prompts: the float32 kernel (MOE_CUDA_ATT_TC=0) against the tensor-core one */
    const int64_t prompts[][2] = {{37, 4096}, {512, 4096}, {4096, 4096}};
    for (int pi = 0; pi < 3; pi++)
        for (int b = 0; b < 3; b++)
            for (int tc = 0; tc < 2; tc++) {
                int64_t n = prompts[pi][0], ctx = prompts[pi][1];
                if (tc) unsetenv("MOE_CUDA_ATT_TC");
                else setenv("MOE_CUDA_ATT_TC", "0", 1);
                if (!tc && widths[b] != 32) continue; /* the float32 kernel: one width is its figure */
                double dt = time_attention(widths[b], ctx, n, n > 1000 ? 3 : n < 100 ? 50 : 5);
                /* QK and PV (2 flops a multiply-add each) over the causal keys: query i sees ctx - n + i + 1 */
                double flops = 4.0 * 32 * 128 * (double)n * (double)(ctx - n + (n + 1) / 2.0);
                printf("timing: attention prompt, %lld queries at %lld..%lld, 32/8 heads, hd 128, %2d-bit, %s: %.2f ms "
                       "(%.1f TFLOP/s)\n",
                       (long long)n, (long long)(ctx - n), (long long)(ctx - 1), widths[b],
                       tc ? "tensor cores" : "float32 kernel", dt * 1e3, flops / dt / 1e12);
            }
    unsetenv("MOE_CUDA_ATT_TC");
    const int nk = 16, nv = 32, dk = 128, dv = 128;
    for (int64_t n = 1; n <= 512; n *= 512) {
        int64_t ld = 2 * nk * dk + nv * dv;
        float *qkv = dev(NULL, sizeof(float) * (size_t)(n * ld)), *gb = dev(NULL, sizeof(float) * (size_t)(2 * n * nv));
        float *st = dev(NULL, sizeof(float) * (size_t)nv * dk * dv), *out = dev(NULL, sizeof(float) * (size_t)(n * nv * dv));
        int iters = n == 1 ? 200 : 5;
        cuda_delta_rule(g_c, qkv, qkv + nk * dk, qkv + 2 * nk * dk, ld, gb, gb + n * nv, n, nk, nv, dk, dv, st, out);
        cuda_sync(g_c);
        double t0 = now_s();
        for (int i = 0; i < iters; i++)
            cuda_delta_rule(g_c, qkv, qkv + nk * dk, qkv + 2 * nk * dk, ld, gb, gb + n * nv, n, nk, nv, dk, dv, st, out);
        CHECK(cuda_sync(g_c) == MOE_OK, "timing run failed: %s", moe_errmsg());
        printf("timing: delta rule, %d value heads, dk = dv = 128, %lld token%s: %.1f us\n", nv, (long long)n,
               n == 1 ? "" : "s", (now_s() - t0) / iters * 1e6);
        cuda_free(g_c, qkv), cuda_free(g_c, gb), cuda_free(g_c, st), cuda_free(g_c, out);
    }
}

/* argv[1] "--quick": a few small prompt attentions only (the float32 and the
 * tensor-core kernels), for a run under compute-sanitizer; "--time": the
 * timings only. */
int main(int argc, char **argv) {
    int quick = argc > 1 && strcmp(argv[1], "--quick") == 0, time_only = argc > 1 && strcmp(argv[1], "--time") == 0;
    if (cuda_device_count() == 0) {
        printf("no CUDA device: skipped\n");
        return 77;
    }
    if (cuda_ctx_new(0, &g_c) != MOE_OK || backend_new(1, "scalar", &g_be) != MOE_OK) {
        fprintf(stderr, "setup: %s\n", moe_errmsg());
        return 1;
    }
    printf("device: %s\n", cuda_ctx_name(g_c));
    if (quick) {
        const int qb[] = {32, 8, 4};
        for (int b = 0; b < 3; b++) {
            test_attention((att_case){8, 2, 64, 0}, qb[b], 33, 5, 0);
            test_attention((att_case){12, 4, 128, 20}, qb[b], 70, 40, 0);
        }
        report_tc_errors();
        CHECK(cuda_sync(g_c) == MOE_OK, "CUDA failed: %s", moe_errmsg());
        cuda_ctx_free(g_c);
        backend_free(g_be);
        TEST_DONE();
    }
    if (time_only) {
        timings();
        cuda_ctx_free(g_c);
        backend_free(g_be);
        TEST_DONE();
    }

    const int64_t sizes[] = {1, 7, 1000, 4099, 100003};
    for (size_t i = 0; i < sizeof sizes / sizeof *sizes; i++) test_arith(sizes[i]);
    test_rows();
    test_moe_sums(9, 3, 37);
    test_moe_sums(1, 10, 2048);
    test_l2norm(5, 3, 16, 53, 0.25f);
    test_l2norm(33, 16, 128, 16 * 128 * 3, 1.0f);
    test_delta_split(3, 2, 4, 8, 12);
    test_delta_split(2, 16, 32, 128, 128);
    for (int K = 1; K <= 4; K++)
        for (int64_t n = 1; n <= 40; n += 13) test_conv(n, 70, K);
    test_conv(9, 8192, 4);
    test_delta_rule(2, 4, 16, 24);
    test_delta_rule(1, 3, 48, 40);
    test_delta_rule(1, 2, 128, 128);

    const int64_t dims[][2] = {{1, 24}, {5, 128}, {33, 511}, {3, 1000}, {2, 4096}};
    for (size_t i = 0; i < sizeof dims / sizeof *dims; i++) test_rmsnorm(dims[i][0], dims[i][1]);
    test_rope(7, 3, 64, 64, 5);
    test_rope(5, 4, 128, 32, 3000); /* partial rotary */
    test_rope(2, 2, 18, 18, 0);
    const int bits[] = {32, 8, 4};
    for (int b = 0; b < 3; b++) {
        test_kv_store(bits[b], 2, 64, 20, 37, 5, 1);   /* wraps: 17 rows overwritten by later ones */
        test_kv_store(bits[b], 3, 24, 16, 9, 100, 1);  /* group 24: the whole head */
        test_kv_store(bits[b], 8, 128, 20, 12, 3, 7);  /* not consecutive: slots taken twice */
        test_kv_store(bits[b], 1, 18, 40, 3, 0, 1);
    }
    const att_case cases[] = {
        {8, 2, 64, 0},   /* GQA 4 */
        {6, 2, 18, 50},  /* GQA 3, odd quarter of a warp, sliding window over a ring */
        {16, 2, 256, 0}, /* Qwen3-Next's gated attention */
        {4, 4, 80, 100}, /* MHA, group = head (80) */
        {32, 8, 128, 0},
    };
    const int64_t runs[][2] = {{1, 0}, {1, 5}, {1, 300}, {3, 129}, {37, 213}, {37, 0}, {70, 40}};
    for (size_t ci = 0; ci < sizeof cases / sizeof *cases; ci++)
        for (int b = 0; b < 3; b++)
            for (size_t r = 0; r < sizeof runs / sizeof *runs; r++) {
                test_attention(cases[ci], bits[b], runs[r][0], runs[r][1], 0);
                if (runs[r][0] <= 4) test_attention(cases[ci], bits[b], runs[r][0], runs[r][1], 4000);
            }
    /* prompts for the tensor-core kernel: ragged tiles (33, 100, 1000 queries;
     * GQA 3 splits a query's heads over two warps), windows shorter than the
     * prompt over rings shorter than the positions, a cached prefix (pos0 > 0) */
    const att_case tc_cases[] = {
        {8, 2, 64, 0},     /* GQA 4, hd 64 */
        {8, 2, 128, 0},    /* GQA 4, hd 128 */
        {4, 4, 128, 0},    /* GQA 1 */
        {4, 4, 64, 300},   /* GQA 1, window 300 in a ring of 336 */
        {12, 4, 128, 100}, /* GQA 3, window 100 in a ring of 136 */
        {8, 2, 64, 1},     /* a window of one key: each query sees itself */
    };
    const int64_t tc_runs[][2] = {{33, 0}, {100, 0}, {33, 500}, {100, 700}, {512, 0}};
    for (size_t ci = 0; ci < sizeof tc_cases / sizeof *tc_cases; ci++)
        for (int b = 0; b < 3; b++)
            for (size_t r = 0; r < sizeof tc_runs / sizeof *tc_runs; r++)
                test_attention(tc_cases[ci], bits[b], tc_runs[r][0], tc_runs[r][1], 0);
    for (int b = 0; b < 3; b++) {
        test_attention((att_case){4, 4, 64, 0}, bits[b], 1000, 24, 0);
        test_attention((att_case){8, 2, 128, 0}, bits[b], 1000, 0, 0);
        test_attention((att_case){12, 4, 128, 100}, bits[b], 1000, 3000, 0);
    }
    report_tc_errors();
    test_graph();

    CHECK(cuda_sync(g_c) == MOE_OK, "CUDA failed: %s", moe_errmsg());
    if (!g_failures) timings();
    cuda_ctx_free(g_c);
    backend_free(g_be);
    TEST_DONE();
}
