/* test_kv.c — the quantized KV cache (moe_seq_params.kv_bits, kv_cache in
 * backend.h):
 *   store      a row written into a slot comes back within scale/2 per
 *              element, group by group, 8 and 4 bits, ring slots reused;
 *   attention  be_attention over a quantized cache, every ISA, 1 and 2
 *              threads, windows and ring wrap-around: equal (to rounding) to
 *              attention over the float cache of the dequantized rows, and
 *              within the bound the quantization error implies of attention
 *              over the original rows (see attention_bound);
 *   model      on fixture models (argv): the cache is really smaller by the
 *              stated factor, logits differ from float32's by a small
 *              non-zero amount (more at 4 bits), reset and truncate work on
 *              quantized slots, unsupported kv_bits are refused.
 *   usage: test_kv MODEL_DIR...
 * (The kv_dot / kv_axpy kernels of every ISA against the scalar ones are in
 * tests/test_kernels.c, which also runs for NEON under qemu.) */
#include <math.h>
#include <stdlib.h>

#include "src/backend/cpu/kernels.h"
#include "moe.h"
#include "../test.h"

static uint64_t g_rng = 0x243f6a8885a308d3ull;
static float frand(void) { /* [-1, 1) */
    g_rng ^= g_rng << 13; g_rng ^= g_rng >> 7; g_rng ^= g_rng << 17;
    return (float)(g_rng >> 40) * 0x1.0p-24f * 2.0f - 1.0f;
}
static int irand(int lo, int hi) { return lo + (int)((g_rng = g_rng * 6364136223846793005ull + 1) >> 33) % (hi - lo + 1); }

/* ------------------------------------------------------------- caches -- */

/* A cache of `cap` slots: float32 (bits 32) or quantized, zero-filled. */
static kv_cache cache_new(int bits, int n_kv, int hd, int64_t cap) {
    kv_cache c = {bits, bits == 32 ? 0 : kv_group(hd), n_kv, hd, cap, NULL, NULL, NULL, NULL, NULL, NULL};
    c.k = calloc((size_t)cap, kv_row_bytes(&c));
    c.v = calloc((size_t)cap, kv_row_bytes(&c));
    if (bits != 32) {
        size_t ns = (size_t)cap * kv_sb_row_floats(&c);
        c.ks = calloc(ns, sizeof(float));
        c.kb = calloc(ns, sizeof(float));
        c.vs = calloc(ns, sizeof(float));
        c.vb = calloc(ns, sizeof(float));
    }
    return c;
}

static void cache_free(kv_cache *c) {
    void *a[] = {c->k, c->v, c->ks, c->kb, c->vs, c->vb};
    for (size_t i = 0; i < sizeof a / sizeof *a; i++) free(a[i]);
}

/* Element j of slot `slot`'s key (which 0) or value (1) row, as float32. */
static float cache_at(const kv_cache *c, int which, int64_t slot, int64_t j) {
    const unsigned char *base = which ? c->v : c->k;
    if (c->bits == 32) return ((const float *)base)[slot * c->n_kv * c->hd + j];
    const float *s = which ? c->vs : c->ks, *b = which ? c->vb : c->kb;
    size_t g = (size_t)slot * kv_sb_row_floats(c) + (size_t)(j / c->group);
    return s[g] * (float)quant_at(base + (size_t)slot * kv_row_bytes(c), c->bits, j) + b[g];
}
/* The scale of element j's group (0 for float caches). */
static float cache_scale(const kv_cache *c, int which, int64_t slot, int64_t j) {
    if (c->bits == 32) return 0;
    return (which ? c->vs : c->ks)[(size_t)slot * kv_sb_row_floats(c) + (size_t)(j / c->group)];
}

/* A row of w values shaped like keys: each group around its own offset with
 * its own spread, some groups constant (range 0). */
static void random_row(float *x, int64_t w, int group) {
    for (int64_t g0 = 0; g0 < w; g0 += group) {
        float off = 4.0f * frand(), spread = irand(0, 5) == 0 ? 0.0f : 0.01f + 3.0f * fabsf(frand());
        for (int j = 0; j < group; j++) x[g0 + j] = off + spread * frand();
    }
}

static void test_store(backend *be) {
    int hds[] = {2, 8, 16, 24, 32, 40, 64, 96, 128, 136};
    for (int bits = 4; bits <= 32; bits *= 2) {
        if (bits == 16) continue;
        for (size_t hi = 0; hi < sizeof hds / sizeof *hds; hi++)
            for (int n_kv = 1; n_kv <= 3; n_kv += 2) {
                int hd = hds[hi];
                int64_t cap = 5, npos = 12, w = (int64_t)n_kv * hd; /* positions 0..11: the ring wraps twice */
                kv_cache c = cache_new(bits, n_kv, hd, cap);
                float *rows = malloc((size_t)(npos * w) * sizeof *rows); /* [npos x w] */
                int64_t *pos = malloc((size_t)npos * sizeof *pos);
                int group = bits == 32 ? hd : c.group;
                for (int64_t p = 0; p < npos; p++) {
                    random_row(rows + p * w, w, group);
                    pos[p] = p;
                }
                be_kv_store(be, &c, rows, rows, 3, pos);                       /* a batch */
                for (int64_t p = 3; p < npos; p++) be_kv_store(be, &c, rows + p * w, rows + p * w, 1, pos + p); /* decode */
                float qmax = (float)((1 << (bits == 32 ? 1 : bits)) - 1);
                int bad = 0, ends = 0;
                for (int64_t p = npos - cap; p < npos; p++)
                    for (int which = 0; which < 2; which++)
                        for (int64_t j = 0; j < w; j++) {
                            float x = rows[p * w + j], y = cache_at(&c, which, p % cap, j), s = cache_scale(&c, which, p % cap, j);
                            /* round to nearest: half a step, plus float rounding of (x - lo) / s and s * q + lo */
                            float err = fabsf(x - y), lim = 0.5f * s + 4e-7f * (fabsf(x) + s * qmax + 1e-3f);
                            if (bits == 32) lim = 0;
                            if (!(err <= lim) && bad++ < 3)
                                CHECK(0, "bits %d hd %d n_kv %d pos %lld %c[%lld] = %.9g stored as %.9g (scale %g)", bits, hd, n_kv,
                                      (long long)p, which ? 'v' : 'k', (long long)j, (double)x, (double)y, (double)s);
                            /* the group's min is its bias, exactly: q = 0 there */
                            if (bits != 32 && j % c.group == 0) {
                                int64_t g0 = j;
                                float lo = rows[p * w + g0];
                                for (int e = 1; e < c.group; e++) lo = fminf(lo, rows[p * w + g0 + e]);
                                const float *b = which ? c.vb : c.kb;
                                ends += b[(size_t)(p % cap) * kv_sb_row_floats(&c) + (size_t)(g0 / c.group)] == lo;
                            }
                        }
                CHECK(bad == 0, "bits %d hd %d: %d elements beyond scale/2", bits, hd, bad);
                if (bits != 32) CHECK(ends == (int)(2 * cap * w / c.group), "bits %d hd %d: biases are the group minima", bits, hd);
                free(rows);
                free(pos);
                cache_free(&c);
            }
    }
    /* memory: 8 bits at head dim 128 (group 64, float32 scale and bias) is ~3.5x below float32 */
    kv_cache f = {32, 0, 8, 128, 1, NULL, NULL, NULL, NULL, NULL, NULL}, q = {8, kv_group(128), 8, 128, 1, NULL, NULL, NULL, NULL, NULL, NULL};
    double fb = (double)kv_row_bytes(&f), qb = (double)kv_row_bytes(&q) + 2.0 * sizeof(float) * (double)kv_sb_row_floats(&q);
    CHECK(q.group == 64 && fb / qb > 3.5, "head dim 128: %.0f -> %.0f bytes a row (%.2fx)", fb, qb, fb / qb);
    CHECK(kv_group(8) == 8 && kv_group(24) == 24 && kv_group(32) == 32 && kv_group(96) == 32 && kv_group(256) == 64, "group sizes");
}

/* ---------------------------------------------------------- attention -- */

/* Attention of one query over rows [lo..p] in double: o[hd], weights w[p-lo+1]. */
static void naive_attention(const float *q, const float *keys, const float *vals, int64_t w, int kvh, int hd, int64_t lo,
                            int64_t p, double scale, double *wts, double *o) {
    double mx = -INFINITY, sum = 0;
    for (int64_t r = lo; r <= p; r++) {
        double s = 0;
        for (int j = 0; j < hd; j++) s += (double)q[j] * keys[r * w + kvh * hd + j];
        wts[r - lo] = s * scale;
        mx = wts[r - lo] > mx ? wts[r - lo] : mx;
    }
    for (int64_t r = lo; r <= p; r++) sum += (wts[r - lo] = exp(wts[r - lo] - mx));
    for (int j = 0; j < hd; j++) o[j] = 0;
    for (int64_t r = lo; r <= p; r++) {
        wts[r - lo] /= sum;
        for (int j = 0; j < hd; j++) o[j] += wts[r - lo] * vals[r * w + kvh * hd + j];
    }
}

/* The bound the quantization error implies on attention over the original
 * rows, element j: key errors |dk| <= sk/2 move each score by at most
 * D = scale * sum_j |q_j| sk_j/2, so each softmax weight by a factor within
 * e^(+-2D); value errors |dv| <= sv/2. Hence
 *   |o'_j - o_j| <= max_r sv_rj/2 + (e^(2D) - 1) * sum_r w_r |v_rj|. */
static double attention_bound(const kv_cache *c, const float *q, const float *vals, int64_t w, int kvh, int64_t lo,
                              int64_t p, double scale, const double *wts, int j) {
    int hd = c->hd;
    double D = 0, dv = 0, wv = 0;
    for (int64_t r = lo; r <= p; r++) {
        double d = 0;
        for (int e = 0; e < hd; e++) d += fabs((double)q[e]) * 0.5 * cache_scale(c, 0, r % c->cap, (int64_t)kvh * hd + e);
        D = d * scale > D ? d * scale : D;
        double sv = 0.5 * cache_scale(c, 1, r % c->cap, (int64_t)kvh * hd + j);
        dv = sv > dv ? sv : dv;
        wv += wts[r - lo] * fabs((double)vals[r * w + kvh * hd + j]);
    }
    return dv + expm1(2 * D) * wv;
}

static void test_attention(void) {
    const char *isas[] = {"scalar", "avx2", "avx512"};
    backend *ref_be;
    CHECK(backend_new(1, "scalar", &ref_be) == MOE_OK, "scalar backend");
    int hds[] = {8, 16, 24, 32, 40, 64, 128};
    for (int it = 0; it < 60; it++) {
        int big = it % 15 == 14; /* enough work for the thread pool */
        int bits = it % 2 ? 4 : 8, n_kv = irand(1, 3), n_heads = n_kv * (1 << irand(0, 2));
        int hd = big ? 64 : hds[irand(0, 6)], window = it % 3 == 0 ? 0 : irand(1, 12);
        int64_t n = big ? 16 : irand(1, 6), pos0 = big ? 100 : irand(0, 30);
        int64_t cap = window ? window + n - 1 + irand(0, 2) : pos0 + n + irand(0, 2);
        int64_t w = (int64_t)n_kv * hd, total = pos0 + n;
        float *keys = malloc((size_t)(total * w) * sizeof(float)), *vals = malloc((size_t)(total * w) * sizeof(float));
        float *q = malloc((size_t)(n * n_heads * hd) * sizeof(float));
        int64_t *pos = malloc((size_t)total * sizeof *pos);
        kv_cache qc = cache_new(bits, n_kv, hd, cap), fc = cache_new(32, n_kv, hd, cap);
        for (int64_t p = 0; p < total; p++) {
            random_row(keys + p * w, w, qc.group);
            random_row(vals + p * w, w, qc.group);
            pos[p] = p;
        }
        for (int64_t i = 0; i < n * n_heads * hd; i++) q[i] = frand();
        /* history in batches of 4, then the queries' own rows as one batch (as the forward pass does) */
        for (int64_t p = 0; p < pos0; p += 4) {
            int64_t m = pos0 - p < 4 ? pos0 - p : 4;
            be_kv_store(ref_be, &qc, keys + p * w, vals + p * w, m, pos + p);
        }
        be_kv_store(ref_be, &qc, keys + pos0 * w, vals + pos0 * w, n, pos + pos0);
        for (int64_t sl = 0; sl < cap; sl++) /* the float cache of the dequantized rows */
            for (int64_t j = 0; j < w; j++) {
                ((float *)fc.k)[sl * w + j] = cache_at(&qc, 0, sl, j);
                ((float *)fc.v)[sl * w + j] = cache_at(&qc, 1, sl, j);
            }
        size_t out_n = (size_t)(n * n_heads * hd);
        float *want = malloc(out_n * sizeof(float)), *got = malloc(out_n * sizeof(float));
        float *scratch = malloc((size_t)(2 * (cap + hd)) * sizeof(float));
        float scale = 2.0f / sqrtf((float)hd);
        be_attention(ref_be, q, n, pos + pos0, &fc, n_heads, window, scale, scratch, want);
        double vmax = 0;
        for (int64_t i = 0; i < total * w; i++) vmax = fabs(vals[i]) > vmax ? fabs(vals[i]) : vmax;
        for (int ii = 0; ii < 3; ii++)
            for (int th = 1; th <= 2; th++) {
                backend *be;
                if (backend_new(th, isas[ii], &be) != MOE_OK) continue; /* not on this CPU */
                be_attention(be, q, n, pos + pos0, &qc, n_heads, window, scale, scratch, got);
                double worst = 0;
                for (size_t i = 0; i < out_n; i++) worst = fmax(worst, fabs((double)got[i] - want[i]));
                CHECK(worst <= 2e-5 * (1 + vmax), "%s x%d bits %d n_kv %d heads %d hd %d window %d n %lld pos0 %lld cap %lld: "
                      "max |quantized - dequantized float| %.3g", isas[ii], th, bits, n_kv, n_heads, hd, window, (long long)n,
                      (long long)pos0, (long long)cap, worst);
                backend_free(be);
            }
        /* against attention over the original rows: within the quantization's bound */
        double *wts = malloc((size_t)total * sizeof(double)), *o = malloc((size_t)hd * sizeof(double));
        int over = 0;
        for (int64_t t = 0; t < n; t++)
            for (int h = 0; h < n_heads; h++) {
                int kvh = h / (n_heads / n_kv);
                int64_t p = pos0 + t, lo = window && p - window + 1 > 0 ? p - window + 1 : 0;
                const float *qh = q + (t * n_heads + h) * hd;
                naive_attention(qh, keys, vals, w, kvh, hd, lo, p, scale, wts, o);
                for (int j = 0; j < hd; j++) {
                    double b = attention_bound(&qc, qh, vals, w, kvh, lo, p, scale, wts, j);
                    over += !(fabs(want[(t * n_heads + h) * hd + j] - o[j]) <= b + 1e-5 * (1 + vmax));
                }
            }
        CHECK(over == 0, "bits %d hd %d: %d outputs beyond the quantization bound", bits, hd, over);
        free(wts), free(o), free(keys), free(vals), free(q), free(pos), free(want), free(got), free(scratch);
        cache_free(&qc);
        cache_free(&fc);
    }
    backend_free(ref_be);
}

/* -------------------------------------------------------------- model -- */

/* A sequence for n tokens, in batches of 4, with a kv_bits cache. */
static moe_status seq_for(moe_model *m, size_t n, int kv_bits, moe_seq **s) {
    moe_seq_params sp;
    moe_seq_params_defaults(&sp);
    sp.n_ctx = (int)n + 8;
    sp.n_batch = 4;
    sp.kv_bits = kv_bits;
    return moe_seq_new(m, &sp, s);
}

/* logits [n x V] of tokens through a fresh sequence */
static float *logits_of(moe_model *m, const int32_t *tok, size_t n, int kv_bits) {
    moe_seq *s;
    if (seq_for(m, n, kv_bits, &s)) return NULL;
    size_t V = (size_t)moe_model_config(m)->vocab_size;
    float *out = malloc(n * V * sizeof *out);
    if (moe_seq_eval(s, tok, n, out, 1)) {
        free(out);
        out = NULL;
    }
    moe_seq_free(s);
    return out;
}

static double max_diff(const float *a, const float *b, size_t n) {
    double d = 0;
    for (size_t i = 0; i < n; i++) d = fmax(d, fabs((double)a[i] - b[i]));
    return d;
}

static void test_model(const char *dir) {
    moe_model *m;
    CHECK(moe_model_load(dir, NULL, &m) == MOE_OK, "load %s: %s", dir, moe_errmsg());
    if (!m) return;
    const moe_config *c = moe_model_config(m);
    size_t V = (size_t)c->vocab_size;

    /* the bytes: exactly values + float32 scale and bias per group */
    moe_seq_params sp;
    moe_seq_params_defaults(&sp);
    sp.n_ctx = 64;
    int64_t fb = moe_seq_kv_bytes(m, &sp);
    CHECK(fb == moe_model_kv_bytes(m, 64) && fb > 0, "float32 bytes %lld", (long long)fb);
    int64_t g = kv_group(c->head_dim);
    sp.kv_bits = 32;
    CHECK(moe_seq_kv_bytes(m, &sp) == fb, "kv_bits 32 is float32");
    sp.kv_bits = 8; /* 1 byte + 8/g bytes of scale and bias a value, against 4 */
    int64_t b8 = moe_seq_kv_bytes(m, &sp);
    CHECK(b8 * 4 * g == fb * (g + 8), "%s: 8-bit cache %lld bytes, float32 %lld, group %lld", dir, (long long)b8, (long long)fb, (long long)g);
    sp.kv_bits = 4;
    int64_t b4 = moe_seq_kv_bytes(m, &sp);
    CHECK(b4 * 8 * g == fb * (g + 16), "%s: 4-bit cache %lld bytes", dir, (long long)b4);
    printf("%s: KV bytes at n_ctx 64: float32 %lld, 8-bit %lld (%.2fx), 4-bit %lld (%.2fx)\n", dir, (long long)fb,
           (long long)b8, (double)fb / (double)b8, (long long)b4, (double)fb / (double)b4);

    /* unsupported widths: refused with a message, nothing allocated */
    int badbits[] = {1, 2, 5, 16, 64, -8};
    for (size_t i = 0; i < sizeof badbits / sizeof *badbits; i++) {
        sp.kv_bits = badbits[i];
        moe_seq *s = (moe_seq *)(uintptr_t)1; /* must come back NULL */
        char want[32];
        snprintf(want, sizeof want, "kv_bits %d", badbits[i]);
        CHECK(moe_seq_new(m, &sp, &s) == MOE_EINVAL && s == NULL && strstr(moe_errmsg(), want), "kv_bits %d: %s", badbits[i],
              moe_errmsg());
        CHECK(moe_seq_kv_bytes(m, &sp) == -1, "kv_bits %d: bytes", badbits[i]);
    }

    /* logits: quantized differs from float32, a little; 4 bits more than 8 */
    size_t n = 29;
    int32_t tok[29];
    for (size_t i = 0; i < n; i++) tok[i] = (int32_t)((i * 7919 + 3) % V);
    float *lf = logits_of(m, tok, n, 0), *l8 = logits_of(m, tok, n, 8), *l4 = logits_of(m, tok, n, 4);
    CHECK(lf && l8 && l4, "eval: %s", moe_errmsg());
    if (lf && l8 && l4) {
        double mx = 0, d8 = max_diff(lf, l8, n * V), d4 = max_diff(lf, l4, n * V);
        for (size_t i = 0; i < n * V; i++) mx = fmax(mx, fabs(lf[i]));
        printf("%s: max |logit| %.3g; max |kv8 - float| %.3g, |kv4 - float| %.3g\n", dir, mx, d8, d4);
        CHECK(d8 > 0 && d8 < 0.1 * mx, "8-bit KV: logits differ by %.3g (max |logit| %.3g)", d8, mx);
        CHECK(d4 > d8, "4-bit KV differs more than 8-bit: %.3g vs %.3g", d4, d8);
    }

    /* reset and truncate work on quantized slots: a re-run is bit-identical,
     * a truncated tail re-evaluated matches the straight run */
    for (int bits = 4; bits <= 8 && l8 && l4; bits += 4) {
        const float *full = bits == 8 ? l8 : l4;
        moe_seq *s;
        float *again = malloc(n * V * sizeof *again);
        CHECK(seq_for(m, n, bits, &s) == MOE_OK, "seq: %s", moe_errmsg());
        CHECK(moe_seq_eval(s, tok, n, again, 1) == MOE_OK, "eval");
        moe_seq_reset(s);
        CHECK(moe_seq_eval(s, tok, n, again, 1) == MOE_OK && !memcmp(again, full, n * V * sizeof *again),
              "kv_bits %d: after reset, the same logits", bits);
        size_t back = c->sliding_window ? 3 : 11; /* within the ring: cap = window + n_batch - 1 */
        CHECK(moe_seq_truncate(s, (int64_t)(n - back)) == MOE_OK, "truncate: %s", moe_errmsg());
        CHECK(moe_seq_eval(s, tok + n - back, back, again, 1) == MOE_OK, "re-eval");
        double d = max_diff(again, full + (n - back) * V, back * V);
        CHECK(d <= 1e-5, "kv_bits %d: truncated %zu back and re-evaluated: max |diff| %.3g", bits, back, d);
        free(again);
        moe_seq_free(s);
    }
    free(lf), free(l8), free(l4);
    moe_model_free(m);
}

int main(int argc, char **argv) {
    backend *be;
    CHECK(backend_new(1, "scalar", &be) == MOE_OK, "backend");
    test_store(be);
    backend_free(be);
    test_attention();
    for (int i = 1; i < argc; i++) test_model(argv[i]);
    TEST_DONE();
}
