/* test_kernels_amx.c — the AMX-BF16 prompt path (ISA "amx") against the
 * scalar float32 reference, through the backend: be_matmul_n and
 * be_matmul_swiglu on random shapes with ragged rows, tokens and K, for every
 * weight format, quantized group size and scale type; the token threshold;
 * and that AMX really ran (backend_amx_runs). Skipped where the CPU or the OS
 * has no AMX (then "amx" must be refused cleanly).
 *
 * Tolerance. AMX multiplies bf16-rounded weights and activations and sums in
 * float32. bf16 keeps 8 significant bits: rounding to nearest leaves a
 * relative error of at most 2^-8 (about 2^-9 on average) per operand, so a
 * product w*x is off by about 2^-8 |w*x| and the K independent errors of a
 * dot product add up to about 2^-8 * sqrt(K) * rms_k(w*x). Each output is
 * checked against 6 times that (the float32 sums add far less); a layout
 * mistake (a wrong pair, a dropped or doubled k) is off by a whole term,
 * about rms(w*x), which is over 2 * 2^8 / (6 * sqrt(K)) times the bound for
 * the largest K here. */
#include <math.h>
#include <stdlib.h>

#include "../src/backend/cpu/kernels.h"
#include "../src/base/half.h"
#include "test.h"

static uint64_t g_state = 0x2545f4914f6cdd1dull;
static uint32_t next32(void) {
    g_state = g_state * 6364136223846793005ull + 1442695040888963407ull;
    return (uint32_t)(g_state >> 33);
}
static float uniform(float lo, float hi) { return lo + (hi - lo) * (float)next32() * 0x1.0p-31f; }
static int64_t between(int64_t lo, int64_t hi) { return lo + (int64_t)(next32() % (uint32_t)(hi - lo + 1)); }

/* v stored in format f at p[i] */
static void put(wfmt f, void *p, int64_t i, float v) {
    uint16_t h = f == WF_BF16 ? f32_to_bf16(v) : f32_to_f16(v);
    if (f == WF_F32) memcpy((char *)p + 4 * i, &v, 4);
    else memcpy((char *)p + 2 * i, &h, 2);
}

/* A random weight [rows x cols] of format f (quantized: groups of `group`,
 * scales and biases in sfmt, scales ~ 1/2^bits, some negative). Free with drop(). */
static wtensor random_weight(wfmt f, wfmt sfmt, int group, int64_t rows, int64_t cols) {
    wtensor w = {.fmt = f, .rows = rows, .cols = cols, .row_bytes = wfmt_row_bytes(f, cols)};
    unsigned char *d = malloc((size_t)rows * w.row_bytes);
    if (!wfmt_is_quant(f)) {
        for (int64_t i = 0; i < rows * cols; i++) put(f, d, i, uniform(-1, 1));
    } else {
        for (size_t i = 0; i < (size_t)rows * w.row_bytes; i++) d[i] = (unsigned char)next32();
        int64_t ng = rows * (cols / group);
        void *sc = malloc((size_t)ng * wfmt_size(sfmt)), *bi = malloc((size_t)ng * wfmt_size(sfmt));
        float step = 1.0f / (float)(1 << wfmt_bits(f));
        for (int64_t i = 0; i < ng; i++) {
            put(sfmt, sc, i, uniform(0.2f, 1.2f) * step * (next32() % 5 == 0 ? -1.0f : 1.0f));
            put(sfmt, bi, i, uniform(-0.6f, 0.6f));
        }
        w.group = group;
        w.sfmt = sfmt;
        w.scales = sc;
        w.biases = bi;
        w.sb_row_bytes = (size_t)(cols / group) * wfmt_size(sfmt);
    }
    w.data = d;
    return w;
}

static void drop(wtensor *w) {
    free((void *)w->data);
    free((void *)w->scales);
    free((void *)w->biases);
}

static float *random_x(int64_t n) {
    float *x = malloc(sizeof(float) * (size_t)n);
    for (int64_t i = 0; i < n; i++) x[i] = uniform(-1, 1);
    return x;
}

/* The bf16 error bound of output (t, r) of x[n x K] . W^T (see the top). */
static double bound(const wtensor *w, const float *x, int64_t t, int64_t r) {
    double ss = 0;
    for (int64_t k = 0; k < w->cols; k++) {
        double p = (double)wtensor_at(w, r, k) * x[t * w->cols + k];
        ss += p * p;
    }
    return 6.0 * 0x1.0p-8 * sqrt(ss); /* sqrt(K) * rms = sqrt(sum of squares) */
}

/* be_matmul_n on `amx` against the scalar backend, nw weights of the given formats */
static void check_matmul(backend *ref, backend *amx, int nw, const wfmt *fmt, wfmt sfmt, int group, int64_t rows,
                         int64_t K, int64_t n) {
    wtensor w[3];
    const wtensor *wp[3];
    float *y0[3], *y1[3], *bias[3];
    for (int i = 0; i < nw; i++) {
        w[i] = random_weight(fmt[i], sfmt, group, rows + 7 * i, K); /* the weights of one call differ in rows */
        wp[i] = &w[i];
        y0[i] = malloc(sizeof(float) * (size_t)(n * w[i].rows));
        y1[i] = malloc(sizeof(float) * (size_t)(n * w[i].rows));
        bias[i] = i == 1 ? random_x(w[i].rows) : NULL;
    }
    float *x = random_x(n * K);
    int64_t runs = backend_amx_runs(amx);
    be_matmul_n(ref, nw, wp, x, n, (const float *const *)bias, y0);
    be_matmul_n(amx, nw, wp, x, n, (const float *const *)bias, y1);
    CHECK(backend_amx_runs(amx) == runs + 1, "the AMX path ran");
    for (int i = 0; i < nw; i++) {
        double worst = 0; /* |error| / bound */
        int64_t at = 0;
        for (int64_t t = 0; t < n; t++)
            for (int64_t r = 0; r < w[i].rows; r++) {
                double e = fabs((double)y1[i][t * w[i].rows + r] - y0[i][t * w[i].rows + r]) / bound(&w[i], x, t, r);
                if (!(e <= worst)) { worst = e; at = t * w[i].rows + r; }
            }
        CHECK(worst <= 1.0, "%s group %d scales %s rows %lld K %lld n %lld (weight %d of %d): error %.3g x the bound at "
              "token %lld row %lld", wfmt_name(fmt[i]), group, wfmt_name(sfmt), (long long)w[i].rows, (long long)K,
              (long long)n, i, nw, worst, (long long)(at / w[i].rows), (long long)(at % w[i].rows));
        drop(&w[i]);
        free(y0[i]); free(y1[i]); free(bias[i]);
    }
    free(x);
}

/* SwiGLU on AMX against silu(g) * u of AMX's own gate and up products (the same
 * bf16 sums, so only the fused epilogue's exp and rounding differ: 1e-5).
 * gate_scale multiplies a BF16 gate's weights: 1e18 takes |g| far past exp's range. */
static void check_swiglu(backend *amx, wfmt f, wfmt sfmt, int group, int64_t rows, int64_t K, int64_t n,
                         float gate_scale) {
    wtensor gate = random_weight(f, sfmt, group, rows, K), up = random_weight(f, sfmt, group, rows, K);
    for (int64_t i = 0; f == WF_BF16 && i < rows * K; i++) {
        uint16_t h;
        memcpy(&h, (const char *)gate.data + 2 * i, 2);
        put(WF_BF16, (void *)gate.data, i, bf16_to_f32(h) * gate_scale);
    }
    float *x = random_x(n * K), *g = malloc(sizeof(float) * (size_t)(n * rows));
    float *u = malloc(sizeof(float) * (size_t)(n * rows)), *o = malloc(sizeof(float) * (size_t)(n * rows));
    for (int64_t i = 0; i < n * K; i++) x[i] *= 4.0f; /* wider gate values: both tails of silu */
    int64_t runs = backend_amx_runs(amx);
    be_matmul(amx, &gate, x, n, NULL, g);
    be_matmul(amx, &up, x, n, NULL, u);
    be_matmul_swiglu(amx, &gate, &up, x, n, o);
    CHECK(backend_amx_runs(amx) == runs + 3, "the AMX path ran");
    double worst = 0;
    for (int64_t i = 0; i < n * rows; i++) {
        double want = (double)g[i] / (1.0 + exp(-(double)g[i])) * u[i];
        double e = fabs(o[i] - want) / (1e-6 + fabs(want));
        if (!(e <= worst)) worst = e;
    }
    CHECK(worst < 1e-5, "swiglu %s rows %lld K %lld n %lld: relative error %.3g", wfmt_name(f), (long long)rows,
          (long long)K, (long long)n, worst);
    drop(&gate); drop(&up);
    free(x); free(g); free(u); free(o);
}

/* Below the threshold the table's own kernels serve the call: for bf16
 * weights avx512's, bit for bit (avx512vnni differs only in Q4/Q8 decode). */
static void check_threshold(backend *f32) {
    setenv("MOE_AMX_MIN_TOKENS", "8", 1);
    backend *amx;
    CHECK(backend_new(2, "amx", &amx) == MOE_OK, "amx backend: %s", moe_errmsg());
    if (!amx) return;
    wtensor w = random_weight(WF_BF16, WF_F32, 0, 40, 96);
    float *x = random_x(8 * 96), *y0 = malloc(sizeof(float) * 8 * 40), *y1 = malloc(sizeof(float) * 8 * 40);
    be_matmul(f32, &w, x, 7, NULL, y0);
    be_matmul(amx, &w, x, 7, NULL, y1);
    CHECK(backend_amx_runs(amx) == 0 && !memcmp(y0, y1, sizeof(float) * 7 * 40), "7 tokens: the avx512 kernels");
    be_matmul(amx, &w, x, 8, NULL, y1);
    CHECK(backend_amx_runs(amx) == 1, "8 tokens: AMX");
    backend_free(amx);
    drop(&w);
    free(x); free(y0); free(y1);
    setenv("MOE_AMX_MIN_TOKENS", "0", 1);
    CHECK(backend_new(1, "amx", &amx) == MOE_EINVAL && !amx, "MOE_AMX_MIN_TOKENS=0 is refused");
}

int main(void) {
    backend *amx = NULL, *ref = NULL, *f32 = NULL;
    setenv("MOE_AMX_MIN_TOKENS", "1", 1);
    if (!amx_usable()) {
        printf("AMX: not available on this CPU or OS, skipped\n");
        CHECK(backend_new(1, "amx", &amx) == MOE_EUNSUPPORTED && !amx, "\"amx\" is refused where it cannot run");
        TEST_DONE();
    }
    CHECK(backend_new(2, "amx", &amx) == MOE_OK && backend_new(1, "scalar", &ref) == MOE_OK &&
              backend_new(2, "avx512", &f32) == MOE_OK, "backends: %s", moe_errmsg());
    if (!amx || !ref || !f32) TEST_DONE();
    CHECK(!strcmp(backend_isa(amx), "amx") && !strcmp(backend_isa(f32), "avx512"), "ISA names");
    backend *au;
    CHECK(backend_new(1, "auto", &au) == MOE_OK && !strcmp(backend_isa(au), "amx"), "auto picks amx");
    const cpu_kernels *vn = cpu_kernels_pick("avx512vnni");
    CHECK(backend_cpu_kernels(au) == (vn ? vn : cpu_kernels_pick("avx512")), "amx builds on avx512vnni where the CPU has it");
    backend_free(au);

    static const int groups[3] = {32, 64, 128};
    for (int f = 0; f < WF_COUNT; f++)
        for (int trial = 0; trial < 9; trial++) {
            int group = groups[trial % 3];
            wfmt sfmt = (wfmt)(trial / 3); /* F32, F16, BF16 scales */
            int64_t rows = between(1, 70), n = between(1, 40);
            int64_t K = wfmt_is_quant((wfmt)f) ? group * between(1, 5) : between(1, 300);
            if (trial == 0) { rows = 64; K = wfmt_is_quant((wfmt)f) ? 512 : 1024; n = 32; } /* whole tiles */
            if (trial == 1) { rows = 300; K = 1152; n = 37; } /* several row blocks and panel steps, on the pool */
            if (!wfmt_is_quant((wfmt)f) && trial > 2) continue;
            check_matmul(ref, amx, 1, (wfmt[]){(wfmt)f}, sfmt, group, rows, K, n);
        }
    /* q/k/v-like: three weights of mixed formats in one call, a bias on the second */
    check_matmul(ref, amx, 3, (wfmt[]){WF_Q4, WF_BF16, WF_Q8}, WF_BF16, 64, 100, 320, 19);
    check_matmul(ref, amx, 3, (wfmt[]){WF_F16, WF_Q3, WF_F32}, WF_F16, 32, 33, 96, 45);
    check_swiglu(amx, WF_BF16, WF_F32, 0, 77, 200, 21, 1);
    check_swiglu(amx, WF_BF16, WF_F32, 0, 40, 64, 17, 1e18f);
    check_swiglu(amx, WF_Q4, WF_BF16, 64, 300, 640, 40, 1);
    check_swiglu(amx, WF_Q6, WF_F16, 32, 17, 96, 3, 1);
    check_threshold(f32);
    backend_free(amx);
    backend_free(ref);
    backend_free(f32);
    TEST_DONE();
}
