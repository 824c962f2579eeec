/* test_kernels.c — every SIMD kernel table of this architecture (x86-64:
 * avx2, avx512, avx512vnni; AArch64: neon) against the scalar reference on
 * random shapes with ragged tails, for every weight format and both
 * quantized KV cache widths; the half-precision converters against the CPU's
 * own instructions (F16C, or AArch64's FCVT) over all 65536 values; the
 * choice of table by name and MOE_ISA. Portable C apart from those
 * instructions, so tools/test_neon.sh cross-builds it for AArch64. */
#if defined(__x86_64__)
#include <immintrin.h>
#endif
#include <math.h>
#include <stdlib.h>

#include "../src/backend/cpu/kernels.h"
#include "../src/base/half.h"
#include "test.h"

static uint64_t g_rng = 0x9e3779b97f4a7c15ull;
static float frand(void) {
    g_rng ^= g_rng << 13; g_rng ^= g_rng >> 7; g_rng ^= g_rng << 17;
    return (float)(g_rng >> 40) * 0x1.0p-24f * 2.0f - 1.0f;
}
static int irand(int lo, int hi) { return lo + (int)((frand() * 0.5f + 0.5f) * (float)(hi - lo + 1)) % (hi - lo + 1); }

static void *make_weights(wfmt f, int64_t rows, int64_t cols) {
    size_t es = wfmt_size(f);
    unsigned char *w = malloc((size_t)(rows * cols) * es);
    for (int64_t i = 0; i < rows * cols; i++) {
        float v = frand();
        uint16_t h;
        if (f == WF_F32) memcpy(w + 4 * i, &v, 4);
        else { h = f == WF_BF16 ? f32_to_bf16(v) : f32_to_f16(v); memcpy(w + 2 * i, &h, 2); }
    }
    return w;
}

/* A random quantized weight: packed values, and scales (a quarter of them
 * negative, as MLX makes them) and biases in format sfmt. Frees with free_q. */
static wtensor make_qweights(wfmt f, wfmt sfmt, int group, int64_t rows, int64_t cols) {
    wtensor w = {f, rows, cols, NULL, wfmt_row_bytes(f, cols), group, sfmt, NULL, NULL, 0};
    w.sb_row_bytes = (size_t)(cols / group) * wfmt_size(sfmt);
    unsigned char *d = malloc((size_t)rows * w.row_bytes);
    for (size_t i = 0; i < (size_t)rows * w.row_bytes; i++) d[i] = (unsigned char)(frand() * 4096.0f);
    void *sb[2];
    for (int j = 0; j < 2; j++) {
        int64_t ng = rows * (cols / group);
        sb[j] = make_weights(sfmt, 1, ng);
        for (int64_t i = 0; j == 0 && i < ng; i++) { /* scales: magnitude ~ 1/2^bits, sign mostly + */
            float v = (0.2f + fabsf(frand())) / (float)(1 << wfmt_bits(f)) * (frand() < -0.5f ? -1.0f : 1.0f);
            uint16_t h = sfmt == WF_BF16 ? f32_to_bf16(v) : f32_to_f16(v);
            if (sfmt == WF_F32) memcpy((char *)sb[0] + 4 * i, &v, 4);
            else memcpy((char *)sb[0] + 2 * i, &h, 2);
        }
    }
    w.data = d;
    w.scales = sb[0];
    w.biases = sb[1];
    return w;
}

static void free_q(wtensor *w) {
    free((void *)w->data);
    free((void *)w->scales);
    free((void *)w->biases);
}

/* The bit layout against values packed by hand as MLX packs them. */
static void test_quant_layout(void) {
    /* 4 bits: uint32 word 0x76543210 holds q = 0,1,...,7 (least significant first) */
    unsigned char r4[4] = {0x10, 0x32, 0x54, 0x76};
    for (int k = 0; k < 8; k++) CHECK(quant_at(r4, 4, k) == (unsigned)k, "4-bit value %d", k);
    /* 3 bits: 8 values 0..7 in 3 bytes: bits 0-2 = 0, 3-5 = 1, ... (MLX's byte packing) */
    unsigned bits = 0;
    for (int k = 0; k < 8; k++) bits |= (unsigned)k << (3 * k);
    unsigned char r3[3] = {(unsigned char)bits, (unsigned char)(bits >> 8), (unsigned char)(bits >> 16)};
    for (int k = 0; k < 8; k++) CHECK(quant_at(r3, 3, k) == (unsigned)k, "3-bit value %d", k);
    /* 6 bits: 4 values in 3 bytes */
    unsigned char r6[3] = {0x3f | 0x80, 0x02 | 0x50, 0x3e};
    unsigned want6[4] = {0x3f, 0x0a, 0x25, 0x0f};
    for (int k = 0; k < 4; k++) CHECK(quant_at(r6, 6, k) == want6[k], "6-bit value %d: %u", k, quant_at(r6, 6, k));
    /* dequantization: w = scale * q + bias with a negative scale */
    uint16_t sc = f32_to_bf16(-0.5f), bi = f32_to_bf16(3.0f);
    wtensor w = {WF_Q4, 1, 32, r4, 16, 32, WF_BF16, &sc, &bi, 2};
    unsigned char row[16] = {0x10, 0x32, 0x54, 0x76};
    w.data = row;
    CHECK(wtensor_at(&w, 0, 5) == 0.5f, "dequantized (0, 5) = %g", wtensor_at(&w, 0, 5));
    CHECK(wtensor_at(&w, 0, 9) == 3.0f, "dequantized (0, 9) = %g", wtensor_at(&w, 0, 9));
}

/* k's matmul of w against the scalar reference for n tokens (n <= 0: random 1..9). */
static void check_close(const cpu_kernels *k, const wtensor *w, int64_t n, const char *what, double tol) {
    const cpu_kernels *ref = cpu_kernels_scalar();
    int64_t rows = w->rows, cols = w->cols;
    if (n <= 0) n = irand(1, 9);
    float *x = malloc(sizeof(float) * (size_t)(n * cols));
    float *y0 = calloc((size_t)(n * rows), sizeof(float)), *y1 = calloc((size_t)(n * rows), sizeof(float));
    for (int64_t i = 0; i < n * cols; i++) x[i] = frand();
    int64_t r0 = rows > 3 ? irand(0, 2) : 0; /* a row range that starts off the tile grid */
    ref->matmul[w->fmt](w, r0, rows, x, cols, n, y0, rows);
    mm_fn mm = cpu_kernels_mm(k, w->fmt);
    mm(w, r0, rows, x, cols, n, y1, rows);
    double worst = 0;
    for (int64_t i = 0; i < n * rows; i++) {
        double e = fabs((double)y0[i] - y1[i]) / (1.0 + fabs((double)y0[i]));
        if (e > worst) worst = e;
    }
    CHECK(worst < tol, "%s %s %s rows %lld cols %lld n %lld: rel err %g", k->name, wfmt_name(w->fmt), what,
          (long long)rows, (long long)cols, (long long)n, worst);
    free(x); free(y0); free(y1);
}

static void test_matmul_quant(const cpu_kernels *k) {
    static const int groups[3] = {32, 64, 128};
    for (int f = WF_Q2; f < WF_COUNT; f++) {
        CHECK(k->matmul[f] != NULL, "%s has a %s kernel", k->name, wfmt_name((wfmt)f));
        for (int trial = 0; trial < 40; trial++) {
            int group = groups[trial % 3];
            wfmt sfmt = (wfmt)(trial / 3 % 3); /* F32, F16, BF16 scales */
            int64_t rows = irand(1, 37), cols = group * irand(1, 5);
            if (trial == 0) rows = 64;
            wtensor w = make_qweights((wfmt)f, sfmt, group, rows, cols);
            char what[48];
            snprintf(what, sizeof what, "group %d scales %s", group, wfmt_name(sfmt));
            check_close(k, &w, 0, what, 2e-5);
            free_q(&w);
        }
    }
}

/* Model-sized rows: several decode segments and prompt panels, the last
 * ones short; a decode segment holding only part of a row's padded tail
 * (Q2/Q3, group 32, one group past 4096); one token (decode) and more
 * tokens than one prompt pass takes. At this length the float32 reference
 * has rounding errors of its own, so both are held to the exact (double)
 * sum: |y - exact| <= 1e-6 * sum_k |w x| (float32 summation gives ~5e-8). */
static void test_matmul_quant_large(const cpu_kernels *k) {
    static const struct { int group; int64_t cols; } shapes[] = {
        {128, 4096}, {128, 4096 + 640}, {64, 14336}, {32, 4096 + 32}};
    static const int64_t ns[] = {1, 32, 33};
    const int64_t rows = 7;
    for (int f = WF_Q2; f < WF_COUNT; f++)
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            wfmt sfmt = (wfmt)((f + (int)s) % 3);
            int64_t cols = shapes[s].cols;
            wtensor w = make_qweights((wfmt)f, sfmt, shapes[s].group, rows, cols);
            float *wf = malloc(sizeof(float) * (size_t)(rows * cols)); /* dequantized once */
            for (int64_t r = 0; r < rows; r++)
                for (int64_t c = 0; c < cols; c++) wf[r * cols + c] = wtensor_at(&w, r, c);
            for (size_t i = 0; i < sizeof ns / sizeof ns[0]; i++) {
                int64_t n = ns[i];
                float *x = malloc(sizeof(float) * (size_t)(n * cols)), *y = malloc(sizeof(float) * (size_t)(n * rows));
                for (int64_t j = 0; j < n * cols; j++) x[j] = frand();
                k->matmul[f](&w, 0, rows, x, cols, n, y, rows);
                double worst = 0;
                for (int64_t t = 0; t < n; t++)
                    for (int64_t r = 0; r < rows; r++) {
                        double exact = 0, mag = 0;
                        for (int64_t c = 0; c < cols; c++) {
                            double p = (double)wf[r * cols + c] * x[t * cols + c];
                            exact += p;
                            mag += fabs(p);
                        }
                        double e = fabs(y[t * rows + r] - exact) / mag;
                        if (e > worst) worst = e;
                    }
                CHECK(worst < 1e-6, "%s %s group %d scales %s rows %lld cols %lld n %lld: error %g of sum |w x|",
                      k->name, wfmt_name((wfmt)f), shapes[s].group, wfmt_name(sfmt), (long long)rows,
                      (long long)cols, (long long)n, worst);
                free(x); free(y);
            }
            free(wf);
            free_q(&w);
        }
}

/* The input as the avx512vnni decode rounds it (simd_vnni.h, vn_prepare):
 * per block of 32, d = max|x| * (1/127) and q = x * (127 / max|x|) rounded to
 * nearest even, in float32 as the kernel computes them; xr = q * d exactly. */
static void vnni_round(const float *x, int64_t n, double *xr) {
    for (int64_t b = 0; b < n; b += 32) {
        float mx = 0;
        for (int64_t j = b; j < b + 32; j++) mx = fmaxf(mx, fabsf(x[j]));
        float d = mx * (1.0f / 127), inv = mx > 0 ? 127.0f / mx : 0;
        for (int64_t j = b; j < b + 32; j++) {
            float t = x[j] * inv;
            xr[j] = (double)nearbyintf(t) * d;
        }
    }
}

/* The avx512vnni table rounds the decode input to int8 per block of 32
 * (vnni_round), then sums exactly the products with the rounded input, up to
 * float rounding: its Q4/Q8 decode is held to 1e-6 of sum_k |w[k] xr[k]|
 * around the sum of w[k] xr[k] (an input rounded otherwise, toward zero say,
 * is off by ~ sqrt(cols) |w| d, orders of magnitude more), and that error
 * must stay within the int8 rounding's own bound around the exact sum
 * (sum_k |w[k]| d[k] / 2); prompts are the float path's. */
static void test_matmul_vnni(const cpu_kernels *k) {
    static const struct { int group; int64_t cols; } shapes[] = {{32, 32}, {64, 192}, {128, 384}, {32, 96},
                                                                   {128, 4096 + 640}, {64, 14336}, {32, 4096 + 32},
                                                                   {128, 16384 + 128}};
    const cpu_kernels *fl = cpu_kernels_pick("avx512");
    const int64_t rows = 7;
    double worst_frac = 0, worst_fl = 0;
    for (int f = WF_Q4; f <= WF_Q8; f += WF_Q8 - WF_Q4)
        for (size_t s = 0; s < sizeof shapes / sizeof shapes[0]; s++) {
            wfmt sfmt = (wfmt)((f + (int)s) % 3);
            int64_t cols = shapes[s].cols;
            wtensor w = make_qweights((wfmt)f, sfmt, shapes[s].group, rows, cols);
            float *x = malloc(sizeof(float) * (size_t)(3 * cols)), *y = malloc(sizeof(float) * (size_t)(3 * rows));
            float *y0 = malloc(sizeof(float) * (size_t)(3 * rows));
            double *xr = malloc(sizeof(double) * (size_t)cols);
            for (int64_t j = 0; j < 3 * cols; j++) x[j] = frand() * (j % 7 == 0 ? 4.0f : 1.0f);
            vnni_round(x, cols, xr);
            k->matmul[f](&w, 0, rows, x, cols, 1, y, rows);
            double worst = 0, worst_r = 0;
            for (int64_t r = 0; r < rows; r++) {
                double exact = 0, bound = 0, rounded = 0, mag = 0;
                for (int64_t c = 0; c < cols; c++) {
                    double wv = wtensor_at(&w, r, c), mx = 0;
                    for (int64_t j = c / 32 * 32; j < c / 32 * 32 + 32; j++) mx = fmax(mx, fabs((double)x[j]));
                    exact += wv * x[c];
                    bound += fabs(wv) * (mx / 127 / 2 * 1.001 + 1e-6 * fabs((double)x[c]));
                    rounded += wv * xr[c];
                    mag += fabs(wv * xr[c]);
                }
                double er = fabs(y[r] - rounded) / (1e-6 * mag + 1e-30); /* a NaN sticks */
                if (fabs(y[r] - exact) / bound > worst) worst = fabs(y[r] - exact) / bound;
                if (!(er <= worst_r)) worst_r = er;
            }
            if (worst > worst_frac) worst_frac = worst;
            if (worst_r > worst_fl) worst_fl = worst_r;
            CHECK(worst_r <= 1, "%s %s group %d scales %s cols %lld: %.3g of the float rounding bound from the sum "
                  "over the int8-rounded input", k->name, wfmt_name((wfmt)f), shapes[s].group, wfmt_name(sfmt),
                  (long long)cols, worst_r);
            CHECK(worst <= 1, "%s %s group %d scales %s cols %lld: error %.3g of the int8 rounding bound", k->name,
                  wfmt_name((wfmt)f), shapes[s].group, wfmt_name(sfmt), (long long)cols, worst);
            /* the same decode over an input prepared once (what the backend does per call):
             * the same results bit for bit, for any row range and a view of rows */
            const cpu_dec *d = &k->dec[f];
            CHECK(d->mm && d->bytes(&w) > 0, "%s %s: no prepared-input decode", k->name, wfmt_name((wfmt)f));
            if (d->mm && d->bytes(&w) > 0) {
                void *buf = aligned_alloc(64, (d->bytes(&w) + 63) / 64 * 64);
                float yd[7];
                d->prep(&w, x, buf);
                d->mm(&w, 1, rows, buf, yd); /* rows 1.. land at yd[1..] */
                wtensor v = wtensor_rows(&w, 0, 1);
                d->mm(&v, 0, 1, buf, yd);
                CHECK(memcmp(yd, y, sizeof yd) == 0, "%s %s cols %lld: prepared-input decode differs", k->name,
                      wfmt_name((wfmt)f), (long long)cols);
                free(buf);
            }
            k->matmul[f](&w, 0, rows, x, cols, 3, y, rows); /* prompts: the float kernel's results */
            fl->matmul[f](&w, 0, rows, x, cols, 3, y0, rows);
            CHECK(memcmp(y, y0, sizeof(float) * (size_t)(3 * rows)) == 0, "%s %s prompt differs from avx512",
                  k->name, wfmt_name((wfmt)f));
            free(x); free(y); free(y0); free(xr);
            free_q(&w);
        }
    printf("%s: decode at most %.2f of the float rounding bound around the rounded input's sum, %.2f of the int8 "
           "rounding bound around the exact one\n", k->name, worst_fl, worst_frac);
}

/* Through the backend, decode (one token) prepares the input once per call
 * (cpu_kernels.dec) and shares it among the items and among weights of one
 * format, group and cols: be_matmul_n and be_matmul_swiglu must give the
 * table's own matmul results bit for bit, for weights that share a prepared
 * input, that need their own (another format or group), and that have none. */
static void test_backend_vnni(const cpu_kernels *k) {
    backend *be;
    CHECK(backend_new(2, "avx512vnni", &be) == MOE_OK, "avx512vnni backend: %s", moe_errmsg());
    if (!be) return;
    const int64_t K = 1024, rows[4] = {300, 300, 296, 129};
    wtensor w[4] = {make_qweights(WF_Q4, WF_BF16, 64, rows[0], K), make_qweights(WF_Q8, WF_F16, 64, rows[1], K),
                    make_qweights(WF_Q4, WF_F32, 64, rows[2], K), make_qweights(WF_Q4, WF_BF16, 32, rows[3], K)};
    float *x = malloc(sizeof(float) * (size_t)K), *y[4], *y0[4], *o = malloc(sizeof(float) * 300);
    for (int64_t i = 0; i < K; i++) x[i] = frand() * (i % 5 == 0 ? 3.0f : 1.0f);
    for (int i = 0; i < 4; i++) {
        y[i] = malloc(sizeof(float) * (size_t)rows[i]);
        y0[i] = malloc(sizeof(float) * (size_t)rows[i]);
        k->matmul[w[i].fmt](&w[i], 0, rows[i], x, K, 1, y0[i], rows[i]);
    }
    void *bf = make_weights(WF_BF16, 40, K); /* no prepared input: matmul[] serves it */
    wtensor wb = {WF_BF16, 40, K, bf, (size_t)K * 2, 0, 0, NULL, NULL, 0};
    float yb0[40], yb[40];
    k->matmul[WF_BF16](&wb, 0, 40, x, K, 1, yb0, 40);
    for (int pass = 0; pass < 2; pass++) { /* the second reuses the backend's buffer */
        be_matmul_n(be, 3, (const wtensor *const[]){&w[0], &w[1], &w[2]}, x, 1, NULL, y);
        be_matmul_n(be, 2, (const wtensor *const[]){&w[3], &wb}, x, 1, NULL, (float *const[]){y[3], yb});
        for (int i = 0; i < 4; i++)
            CHECK(memcmp(y[i], y0[i], sizeof(float) * (size_t)rows[i]) == 0, "be_matmul_n decode, weight %d", i);
        CHECK(memcmp(yb, yb0, sizeof yb) == 0, "be_matmul_n decode, BF16 beside Q4");
        for (int c = 0; c < 2; c++) { /* gate and up of one format; of two */
            const wtensor *g = &w[0], *u = c ? &w[1] : &w[0];
            int64_t nr = rows[0];
            be_matmul_swiglu(be, g, u, x, 1, o);
            int bad = 0;
            for (int64_t r = 0; r < nr; r++) {
                const float *uy = c ? y0[1] : y0[0];
                bad += o[r] != y0[0][r] / (1.0f + expf(-y0[0][r])) * uy[r];
            }
            CHECK(!bad, "be_matmul_swiglu decode (%s up): %d rows differ", c ? "Q8" : "Q4", bad);
        }
    }
    for (int i = 0; i < 4; i++) {
        free(y[i]);
        free(y0[i]);
        free_q(&w[i]);
    }
    free(bf);
    free(x);
    free(o);
    backend_free(be);
}

static void test_matmul(const cpu_kernels *k) {
    const cpu_kernels *ref = cpu_kernels_scalar();
    for (int f = 0; f <= WF_BF16; f++)
        for (int trial = 0; trial < 60; trial++) {
            int64_t rows = irand(1, 37), cols = irand(1, 300), n = irand(1, 9);
            if (trial == 0) { rows = 64; cols = 256; n = 4; } /* whole tiles only */
            void *wd = make_weights((wfmt)f, rows, cols);
            wtensor w = {(wfmt)f, rows, cols, wd, (size_t)cols * wfmt_size((wfmt)f), 0, 0, NULL, NULL, 0};
            float *x = malloc(sizeof(float) * (size_t)(n * cols));
            float *y0 = calloc((size_t)(n * rows), sizeof(float)), *y1 = calloc((size_t)(n * rows), sizeof(float));
            for (int64_t i = 0; i < n * cols; i++) x[i] = frand();
            int64_t r0 = rows > 3 ? irand(0, 2) : 0; /* a row range that starts off the tile grid */
            ref->matmul[f](&w, r0, rows, x, cols, n, y0, rows);
            k->matmul[f](&w, r0, rows, x, cols, n, y1, rows);
            double worst = 0;
            for (int64_t i = 0; i < n * rows; i++) {
                double e = fabs((double)y0[i] - y1[i]) / (1.0 + fabs((double)y0[i]));
                if (e > worst) worst = e;
            }
            CHECK(worst < 2e-5, "%s %s rows %lld cols %lld n %lld: rel err %g", k->name, wfmt_name((wfmt)f),
                  (long long)rows, (long long)cols, (long long)n, worst);
            free(wd); free(x); free(y0); free(y1);
        }
}

static void test_vec(const cpu_kernels *k) {
    const cpu_kernels *ref = cpu_kernels_scalar();
    for (int trial = 0; trial < 50; trial++) {
        int n = irand(1, 200);
        float a[200], b[200], y0[200], y1[200];
        for (int i = 0; i < n; i++) { a[i] = frand(); b[i] = frand(); y0[i] = y1[i] = frand(); }
        float d0 = ref->dot(a, b, n), d1 = k->dot(a, b, n);
        CHECK(fabsf(d0 - d1) < 1e-5f * (1 + fabsf(d0)), "%s dot n=%d: %g vs %g", k->name, n, d0, d1);
        float s = frand();
        ref->axpy(y0, s, a, n);
        k->axpy(y1, s, a, n);
        for (int i = 0; i < n; i++) CHECK(fabsf(y0[i] - y1[i]) < 1e-6f, "%s axpy n=%d i=%d", k->name, n, i);
    }
}

/* The quantized KV cache kernels (kv_dot, kv_axpy, 8 and 4 bits) on random
 * even head dims and groups (kv_group's, or another even divisor), rows of
 * random bytes; qsum as attention computes it. */
static void test_kv_kernels(const cpu_kernels *k) {
    const cpu_kernels *ref = cpu_kernels_scalar();
    int bad = 0;
    for (int it = 0; it < 400; it++) {
        int bits = it % 2 ? 4 : 8, hd = 2 * irand(1, 160);
        int group = kv_group(hd);
        if (it % 3 == 1) /* another even divisor of hd */
            for (int gdiv = irand(1, 6); gdiv > 1; gdiv--)
                if (hd % gdiv == 0 && (hd / gdiv) % 2 == 0) { group = hd / gdiv; break; }
        int ng = hd / group;
        unsigned char *row = malloc((size_t)hd); /* [hd*bits/8] (hd bytes is enough for both) */
        float *q = malloc((size_t)hd * sizeof *q), *qsum = calloc((size_t)ng, sizeof *qsum);
        float *sc = malloc((size_t)ng * sizeof *sc), *bi = malloc((size_t)ng * sizeof *bi);
        float *y0 = malloc((size_t)hd * sizeof *y0), *y1 = malloc((size_t)hd * sizeof *y1);
        for (int j = 0; j < hd; j++) {
            row[j] = (unsigned char)irand(0, 255);
            q[j] = frand();
            qsum[j / group] += q[j];
            y0[j] = y1[j] = frand();
        }
        for (int g = 0; g < ng; g++) {
            sc[g] = (0.01f + fabsf(frand())) / (float)(1 << bits);
            bi[g] = 2.0f * frand();
        }
        int s = kv_slot(bits);
        float mag = 0, a = frand(); /* sum |q_j * x_j|: the scale of the dot's rounding */
        for (int j = 0; j < hd; j++)
            mag += fabsf(q[j] * (sc[j / group] * (float)quant_at(row, bits, j) + bi[j / group]));
        float want = ref->kv_dot[s](q, qsum, row, sc, bi, hd, group), got = k->kv_dot[s](q, qsum, row, sc, bi, hd, group);
        if (!(fabsf(got - want) <= 2e-6f * mag + 1e-6f) && bad++ < 5)
            CHECK(0, "%s kv_dot bits %d hd %d group %d: %.9g vs %.9g", k->name, bits, hd, group, (double)got,
                  (double)want);
        ref->kv_axpy[s](y0, a, row, sc, bi, hd, group);
        k->kv_axpy[s](y1, a, row, sc, bi, hd, group);
        for (int j = 0; j < hd; j++)
            if (!(fabsf(y1[j] - y0[j]) <= 1e-6f * (1.0f + fabsf(y0[j]))) && bad++ < 5)
                CHECK(0, "%s kv_axpy bits %d hd %d group %d [%d]: %.9g vs %.9g", k->name, bits, hd, group, j,
                      (double)y1[j], (double)y0[j]);
        free(row), free(q), free(qsum), free(sc), free(bi), free(y0), free(y1);
    }
    CHECK(bad == 0, "%s: %d KV kernel mismatches", k->name, bad);
}

/* The CPU's own half-precision conversions (round to nearest even), where it has them. */
#if defined(__x86_64__)
#define HW_HALF "F16C"
__attribute__((target("f16c"))) static float hw_f16_to_f32(uint16_t h) { return _cvtsh_ss(h); }
__attribute__((target("f16c"))) static uint16_t hw_f32_to_f16(float f) {
    return _cvtss_sh(f, _MM_FROUND_TO_NEAREST_INT);
}
#elif defined(__aarch64__)
#define HW_HALF "FCVT"
static float hw_f16_to_f32(uint16_t h) {
    __fp16 x;
    memcpy(&x, &h, 2);
    return (float)x;
}
static uint16_t hw_f32_to_f16(float f) {
    __fp16 x = (__fp16)f;
    uint16_t h;
    memcpy(&h, &x, 2);
    return h;
}
#endif

static void test_half(void) {
#ifdef HW_HALF
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float a = f16_to_f32((uint16_t)h), b = hw_f16_to_f32((uint16_t)h);
        if (memcmp(&a, &b, 4) != 0 && !(isnan(a) && isnan(b))) bad++;
    }
    CHECK(bad == 0, "f16_to_f32 differs from " HW_HALF " for %d values", bad);
    bad = 0;
    for (int i = 0; i < 200000; i++) {
        g_rng = g_rng * 6364136223846793005ull + 1442695040888963407ull;
        uint32_t u = (uint32_t)(g_rng >> 32);
        float f;
        memcpy(&f, &u, 4);
        if (isnan(f)) continue;
        uint16_t a = f32_to_f16(f), b = hw_f32_to_f16(f);
        if (a != b) bad++;
    }
    CHECK(bad == 0, "f32_to_f16 differs from " HW_HALF " for %d values", bad);
#endif
    CHECK(bf16_to_f32(0x3f80) == 1.0f, "bf16 1.0");
    CHECK(f32_to_bf16(1.0f) == 0x3f80, "bf16 of 1.0");
    CHECK(f32_to_bf16(1.00390625f) == 0x3f80, "bf16 ties to even (down)");
    CHECK(f32_to_bf16(1.01171875f) == 0x3f82, "bf16 ties to even (up)");
}

/* The float32 tables of this architecture, and whether the CPU must have the first. */
#if defined(__x86_64__)
static const char *const g_isas[] = {"avx2", "avx512"};
#define MUST_HAVE_SIMD __builtin_cpu_supports("avx2")
#elif defined(__aarch64__)
static const char *const g_isas[] = {"neon"};
#define MUST_HAVE_SIMD 1 /* NEON is part of AArch64 */
#else
static const char *const g_isas[] = {NULL};
#define MUST_HAVE_SIMD 0
#endif

/* The tables by name and through MOE_ISA: auto, scalar and this
 * architecture's names work, another architecture's are refused with the
 * names this build knows. */
static void test_pick(void) {
    const cpu_kernels *a = cpu_kernels_pick("auto");
    CHECK(a && cpu_kernels_pick(NULL) == a, "auto picks a table");
    CHECK(cpu_kernels_pick("scalar") == cpu_kernels_scalar(), "scalar by name");
    CHECK(cpu_kernels_pick("no-such-isa") == NULL, "unknown ISA names are refused");
#if defined(__aarch64__)
    CHECK(a == cpu_kernels_neon() && strcmp(a->name, "neon") == 0, "auto picks neon on AArch64");
    CHECK(cpu_kernels_pick("avx512") == NULL && cpu_kernels_pick("avx2") == NULL && cpu_kernels_pick("amx") == NULL,
          "x86 ISAs are refused on AArch64");
    const char *other = "avx512";
#else
    CHECK(cpu_kernels_pick("neon") == NULL, "neon is refused off AArch64");
    const char *other = "neon";
    const cpu_kernels *vn = cpu_kernels_pick("avx512vnni");
    CHECK(!vn || a == vn, "auto picks avx512vnni where the CPU has it, not %s", a ? a->name : "none");
#endif
    const char *env = getenv("MOE_ISA");
    char saved[64] = "";
    if (env) snprintf(saved, sizeof saved, "%s", env);
    const char *names[] = {"scalar", g_isas[0], other};
    for (int i = 0; i < 3; i++) {
        if (!names[i] || (i < 2 && !cpu_kernels_pick(names[i]))) continue;
        setenv("MOE_ISA", names[i], 1);
        backend *be = NULL;
        moe_status st = backend_new(1, NULL, &be);
        if (i < 2) {
            CHECK(st == MOE_OK && be && strcmp(backend_isa(be), names[i]) == 0, "MOE_ISA=%s", names[i]);
        } else {
            CHECK(st == MOE_EUNSUPPORTED && !be, "MOE_ISA=%s is refused", names[i]);
            CHECK(strstr(moe_errmsg(), cpu_kernels_names()) != NULL, "the message lists this build's ISAs: %s",
                  moe_errmsg());
        }
        backend_free(be);
    }
    if (env) setenv("MOE_ISA", saved, 1);
    else unsetenv("MOE_ISA");
}

int main(void) {
    test_half();
    test_quant_layout();
    test_pick();
    int tested = 0;
    for (size_t i = 0; i < sizeof g_isas / sizeof g_isas[0] && g_isas[i]; i++) {
        const cpu_kernels *k = cpu_kernels_pick(g_isas[i]);
        if (!k) { printf("%s: not supported by this CPU, skipped\n", g_isas[i]); continue; }
        int before = g_checks, failed = g_failures;
        test_matmul(k);
        test_matmul_quant(k);
        test_matmul_quant_large(k);
        test_vec(k);
        test_kv_kernels(k);
        printf("%s: %d checks against scalar, %d failed\n", k->name, g_checks - before, g_failures - failed);
        tested++;
    }
    CHECK(tested > 0 || !MUST_HAVE_SIMD, "no SIMD kernel was tested on a CPU that has one");
    const cpu_kernels *vn = cpu_kernels_pick("avx512vnni");
    if (vn) test_matmul_vnni(vn);
    if (vn) test_backend_vnni(vn);
#if defined(__x86_64__)
    else printf("avx512vnni: not supported by this CPU, skipped\n");
#endif
    TEST_DONE();
}
