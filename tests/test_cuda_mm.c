/* test_cuda_mm.c — the CUDA matmuls (cuda_matmul, cuda_matmul_swiglu,
 * cuda_moe_decode, cuda_embed) against the scalar CPU reference, for every
 * weight format, scale format and group, on random ragged shapes and token
 * counts n in {1, 2, 3, 7, 8, 9, 33, 130}; and the context's error path.
 * Exits 77 (skipped) where there is no CUDA device.
 *
 * Tolerances, per output y = sum_k w_k x_k with L1 = sum_k |w_k x_k| (for a
 * quantized w, sum_k (|s q_k| + |b|) |x_k|, the terms a kernel may sum
 * separately) and L2 = sqrt(sum_k (w_k x_k)^2):
 * - float32 paths (n <= 8, F32 weights at any n, odd widths): only the order
 *   of a float32 sum differs, whose error is a few units of 2^-24 x L1 times
 *   sqrt(cols) in practice; 2e-5 x L1 is far above that for cols <= 8192 and
 *   far below a wrong term (>= L1 / cols).
 * - the tensor-core path (n > 8, other formats): w and x rounded to float16
 *   (unit roundoff u = 2^-11) give each product an independent relative error
 *   of either sign and at most 2u; their sum has a standard deviation of
 *   about 0.8 u L2. 8 u L2 (10 deviations) + the float32 term above.
 * - the int8 path (Q4/Q8, n <= 8, unless MOE_CUDA_FLOAT_DECODE=1): x rounded
 *   per block of 32 to x~ = d q (d = max|x| / 127, q = rint(x 127 / max|x|)).
 *   Against a scalar reference that rounds x the same way, sum_k (s q_k + b)
 *   d q~_k in double, only float32 rounding differs: each chunk's term
 *   carries 3 roundings, the bias term's d sum q~ one more, and a sum
 *   passes at most cols/512 + 10 additions (a lane's chunks, the warp tree, the
 *   split), so tol = (cols/512 + 24) 2^-24 L1' with L1' = sum_k (|s q_k d q~_k|
 *   + |b d q~_k|), some 10x below 2e-5 L1 (and the test checks that this bound
 *   does separate the two references somewhere). Against the float32
 *   reference: + sum_k |s q_k + b| (d/2)(1 + 2^-10), as |x~ - x| <= d/2 but
 *   for d and 127 / max|x| being rounded.
 * - SwiGLU: silu'(g) <= 1.1, so silu(g) u is off by 1.1 |u| tol(g) + |silu(g)| tol(u).
 * - embed: exact (the same float32 dequantization, rounding for rounding). */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../src/backend/cpu/kernels.h"
#include "../src/backend/cuda/cuda_ops.h"
#include "../src/base/half.h"
#include "test.h"

static uint64_t g_rng = 0x2545f4914f6cdd1dull;
static float frand(void) { /* uniform in [-1, 1) */
    g_rng ^= g_rng << 13, g_rng ^= g_rng >> 7, g_rng ^= g_rng << 17;
    return (float)(g_rng >> 40) * 0x1.0p-24f * 2.0f - 1.0f;
}
static int irand(int lo, int hi) { return lo + (int)((g_rng ^= g_rng << 13, g_rng ^= g_rng >> 7, g_rng ^= g_rng << 17) % (uint64_t)(hi - lo + 1)); }

static void put_float(wfmt f, void *p, int64_t i, float v) {
    uint16_t h = f == WF_BF16 ? f32_to_bf16(v) : f32_to_f16(v);
    if (f == WF_F32) memcpy((char *)p + 4 * i, &v, 4);
    else memcpy((char *)p + 2 * i, &h, 2);
}

/* A random host weight: float values in [-1, 1), or random packed values with
 * scales of magnitude ~ 1/2^bits (some negative, as MLX makes them) and
 * biases ~ -2^bits/2 scales, so that weights centre on zero as real ones do. */
static wtensor host_weight(wfmt f, wfmt sfmt, int group, int64_t rows, int64_t cols) {
    wtensor w = {f, rows, cols, NULL, wfmt_row_bytes(f, cols), 0, WF_F32, NULL, NULL, 0};
    unsigned char *d = malloc((size_t)rows * w.row_bytes + 1);
    if (!wfmt_is_quant(f)) {
        for (int64_t i = 0; i < rows * cols; i++) put_float(f, d, i, frand());
    } else {
        for (size_t i = 0; i < (size_t)rows * w.row_bytes; i++) d[i] = (unsigned char)irand(0, 255);
        w.group = group, w.sfmt = sfmt;
        w.sb_row_bytes = (size_t)(cols / group) * wfmt_size(sfmt);
        int64_t ng = rows * (cols / group);
        void *s = malloc((size_t)ng * 4), *b = malloc((size_t)ng * 4);
        float lev = (float)((1 << wfmt_bits(f)) - 1);
        for (int64_t i = 0; i < ng; i++) {
            float sc = (0.2f + fabsf(frand())) / lev * (frand() < -0.6f ? -1.0f : 1.0f);
            put_float(sfmt, s, i, sc);
            put_float(sfmt, b, i, -sc * lev * 0.5f + 0.1f * frand());
        }
        w.scales = s, w.biases = b;
    }
    w.data = d;
    return w;
}

static void host_free(wtensor *w) {
    free((void *)w->data), free((void *)w->scales), free((void *)w->biases);
}

/* The device copy of a host weight (cuda_alloc'd, freed with the context). */
static wtensor dev_weight(cuda_ctx *c, const wtensor *h) {
    wtensor d = *h;
    size_t vb = (size_t)h->rows * h->row_bytes, sb = (size_t)h->rows * h->sb_row_bytes;
    void *p = cuda_alloc(c, vb);
    cuda_upload(c, p, h->data, vb);
    d.data = p;
    if (wfmt_is_quant(h->fmt)) {
        void *s = cuda_alloc(c, sb), *b = cuda_alloc(c, sb);
        cuda_upload(c, s, h->scales, sb);
        cuda_upload(c, b, h->biases, sb);
        d.scales = s, d.biases = b;
    }
    return d;
}

static float *dev_floats(cuda_ctx *c, const float *h, size_t n) {
    float *p = cuda_alloc(c, n * sizeof *p);
    if (h) cuda_upload(c, p, h, n * sizeof *p);
    return p;
}

static float *rand_floats(size_t n) {
    float *x = malloc(n * sizeof *x);
    for (size_t i = 0; i < n; i++) x[i] = frand();
    return x;
}

/* What a reference is for: the float32 kernels, the tensor-core path, the
 * int8 path (exact rounding of x; or the float32 result with the rounding's
 * bound added). */
enum { REF_F32, REF_TC, REF_I8, REF_I8_F32 };

static int g_float_decode;        /* MOE_CUDA_FLOAT_DECODE is set: Q4/Q8 decode in float32 */
static int64_t g_i8_separated;    /* outputs where the int8 and float references differ beyond the int8 bound */

/* The path the CUDA matmul takes for w and n tokens. */
static int ref_mode(const wtensor *w, int64_t n) {
    if (!g_float_decode && n <= 8 && (w->fmt == WF_Q4 || w->fmt == WF_Q8)) return REF_I8;
    return n > 8 && w->fmt != WF_F32 && w->cols % 32 == 0 ? REF_TC : REF_F32;
}

/* x[cols] (cols % 32 == 0) rounded as the CUDA int8 path rounds it: per block
 * b of 32, d[b] = max|x| / 127 and q = rint(x * (127 / max|x|)), the product
 * exact (an FMA there, a double here) and rounded once, to even. */
static void round_x(const float *x, int64_t cols, int *q, float *d) {
    for (int64_t b = 0; b < cols / 32; b++) {
        float mx = 0.0f;
        for (int k = 0; k < 32; k++) mx = fmaxf(mx, fabsf(x[32 * b + k]));
        float inv = mx > 0.0f ? 127.0f / mx : 0.0f;
        d[b] = mx / 127.0f;
        for (int k = 0; k < 32; k++) q[32 * b + k] = (int)rint((double)x[32 * b + k] * inv);
    }
}

/* The reference y[n x rows] (+ bias) for a path (REF_*) and each output's tolerance tol[n x rows]. */
static void reference(const wtensor *w, const float *x, int64_t n, const float *bias, int mode, float *y, float *tol) {
    cpu_kernels_scalar()->matmul[w->fmt](w, 0, w->rows, x, w->cols, n, y, w->rows);
    int bits = wfmt_bits(w->fmt), i8 = mode == REF_I8 || mode == REF_I8_F32;
    int *q = malloc((size_t)w->cols * sizeof *q);
    float *d = malloc((size_t)(w->cols / 32 + 1) * sizeof *d);
    for (int64_t t = 0; t < n; t++) {
        const float *xt = x + t * w->cols;
        if (i8) round_x(xt, w->cols, q, d);
        for (int64_t r = 0; r < w->rows; r++) {
            double l1 = 0, l2 = 0, y8 = 0, l1_8 = 0, rb = 0;
            for (int64_t k = 0; k < w->cols; k++) {
                double xv = fabs(xt[k]), wx = fabs(wtensor_at(w, r, k)) * xv;
                l2 += wx * wx;
                if (wfmt_is_quant(w->fmt)) {
                    const unsigned char *s = (const unsigned char *)w->scales + r * w->sb_row_bytes;
                    const unsigned char *b = (const unsigned char *)w->biases + r * w->sb_row_bytes;
                    const unsigned char *row = (const unsigned char *)w->data + r * w->row_bytes;
                    int64_t g = k / w->group;
                    double sq = (double)weight_at(w->sfmt, s, g) * quant_at(row, bits, k), bi = weight_at(w->sfmt, b, g);
                    wx = (fabs(sq) + fabs(bi)) * xv;
                    if (i8) {
                        double xr = (double)d[k / 32] * q[k];
                        y8 += sq * xr + bi * xr;
                        l1_8 += fabs(sq * xr) + fabs(bi * xr);
                        rb += fabs(sq + bi) * d[k / 32] * 0.5 * (1.0 + 0x1.0p-10);
                    }
                }
                l1 += wx;
            }
            float *yo = &y[t * w->rows + r];
            if (mode == REF_I8) *yo = (float)y8;
            if (bias) *yo += bias[r];
            double tf = 2e-5 * l1 + (mode == REF_TC ? 8.0 * 0x1.0p-11 * sqrt(l2) : 0.0) + 1e-6;
            double t8 = ((double)w->cols / 512 + 24) * 0x1.0p-24 * l1_8 + 1e-7;
            tol[t * w->rows + r] = (float)(mode == REF_I8 ? t8 : mode == REF_I8_F32 ? tf + rb : tf);
        }
    }
    free(q), free(d);
}

static int compare(const char *what, const wtensor *w, int64_t n, const float *got, const float *ref, const float *tol,
                   int64_t count) {
    int bad = 0;
    for (int64_t i = 0; i < count; i++)
        if (!(fabsf(got[i] - ref[i]) <= tol[i])) {
            if (bad++ < 3)
                fprintf(stderr, "%s %s g%d s%s %lldx%lld n=%lld: [%lld] %g, expected %g (tol %g)\n", what,
                        wfmt_name(w->fmt), w->group, wfmt_name(w->sfmt), (long long)w->rows, (long long)w->cols,
                        (long long)n, (long long)i, got[i], ref[i], tol[i]);
        }
    return bad;
}

static const int64_t g_ns[] = {1, 2, 3, 7, 8, 9, 33, 130, 257};

/* cuda_matmul (with and without bias) of one weight at every n; the int8
 * path against both its references. x starts with a block of zeros (d = 0). */
static void check_matmul(cuda_ctx *c, const wtensor *h) {
    wtensor d = dev_weight(c, h);
    for (size_t i = 0; i < sizeof g_ns / sizeof *g_ns; i++) {
        int64_t n = g_ns[i];
        float *x = rand_floats((size_t)(n * h->cols)), *bias = i % 2 ? rand_floats((size_t)h->rows) : NULL;
        if (h->cols >= 64) memset(x, 0, 32 * sizeof *x);
        size_t ny = (size_t)(n * h->rows);
        float *ref = malloc(ny * 4), *tol = malloc(ny * 4), *got = malloc(ny * 4);
        int mode = ref_mode(h, n);
        reference(h, x, n, bias, mode, ref, tol);
        float *dx = dev_floats(c, x, (size_t)(n * h->cols)), *dy = dev_floats(c, NULL, ny);
        float *db = bias ? dev_floats(c, bias, (size_t)h->rows) : NULL;
        cuda_matmul(c, &d, dx, n, db, dy);
        moe_status st = cuda_download(c, got, dy, ny * 4);
        CHECK(st == MOE_OK, "matmul: %s", moe_errmsg());
        int bad = compare("matmul", h, n, got, ref, tol, (int64_t)ny);
        CHECK(bad == 0, "matmul %s: %d of %zu outputs off", wfmt_name(h->fmt), bad, ny);
        if (mode == REF_I8) {
            float *rf = malloc(ny * 4), *tf = malloc(ny * 4);
            reference(h, x, n, bias, REF_I8_F32, rf, tf);
            bad = compare("matmul (int8 vs float32)", h, n, got, rf, tf, (int64_t)ny);
            CHECK(bad == 0, "matmul %s int8 against float32: %d of %zu outputs off", wfmt_name(h->fmt), bad, ny);
            for (size_t k = 0; k < ny; k++) g_i8_separated += fabsf(rf[k] - ref[k]) > tol[k];
            free(rf), free(tf);
        }
        cuda_free(c, dx), cuda_free(c, dy), cuda_free(c, db);
        free(x), free(bias), free(ref), free(tol), free(got);
    }
}

static float silu(float g) { return g / (1.0f + expf(-g)); }

/* silu(x gate^T) * (x up^T) from the references of gate and up; tol as the file's header says. */
static void swiglu_ref(const wtensor *g, const wtensor *u, const float *x, int64_t n, float *ref, float *tol) {
    size_t ny = (size_t)(n * g->rows);
    float *gy = malloc(ny * 4), *gt = malloc(ny * 4), *uy = malloc(ny * 4), *ut = malloc(ny * 4);
    reference(g, x, n, NULL, ref_mode(g, n), gy, gt);
    reference(u, x, n, NULL, ref_mode(u, n), uy, ut);
    for (size_t i = 0; i < ny; i++) {
        ref[i] = silu(gy[i]) * uy[i];
        tol[i] = 1.1f * fabsf(uy[i]) * gt[i] + fabsf(silu(gy[i])) * ut[i] + 1e-6f * fabsf(ref[i]);
    }
    free(gy), free(gt), free(uy), free(ut);
}

static void check_swiglu(cuda_ctx *c, const wtensor *hg, const wtensor *hu) {
    wtensor dg = dev_weight(c, hg), du = dev_weight(c, hu);
    for (size_t i = 0; i < sizeof g_ns / sizeof *g_ns; i++) {
        int64_t n = g_ns[i];
        float *x = rand_floats((size_t)(n * hg->cols));
        size_t ny = (size_t)(n * hg->rows);
        float *ref = malloc(ny * 4), *tol = malloc(ny * 4), *got = malloc(ny * 4);
        swiglu_ref(hg, hu, x, n, ref, tol);
        float *dx = dev_floats(c, x, (size_t)(n * hg->cols)), *dy = dev_floats(c, NULL, ny);
        cuda_matmul_swiglu(c, &dg, &du, dx, n, dy);
        moe_status st = cuda_download(c, got, dy, ny * 4);
        CHECK(st == MOE_OK, "swiglu: %s", moe_errmsg());
        int bad = compare("swiglu", hg, n, got, ref, tol, (int64_t)ny);
        CHECK(bad == 0, "swiglu %s/%s: %d of %zu outputs off", wfmt_name(hg->fmt), wfmt_name(hu->fmt), bad, ny);
        cuda_free(c, dx), cuda_free(c, dy);
        free(x), free(ref), free(tol), free(got);
    }
}

/* cuda_embed returns rows exactly as wtensor_at reads them; an id outside
 * the table (the last two) reads nothing and gives zeros. */
static void check_embed(cuda_ctx *c, const wtensor *h) {
    wtensor d = dev_weight(c, h);
    int64_t n = 7;
    int32_t tok[7];
    for (int i = 0; i < 5; i++) tok[i] = irand(0, (int)h->rows - 1);
    tok[4] = (int32_t)h->rows - 1, tok[5] = (int32_t)h->rows, tok[6] = -1;
    size_t ny = (size_t)(n * h->cols);
    float *got = malloc(ny * 4), *dy = dev_floats(c, NULL, ny);
    int32_t *dtok = cuda_alloc(c, sizeof tok);
    cuda_upload(c, dtok, tok, sizeof tok);
    cuda_embed(c, &d, dtok, n, dy);
    CHECK(cuda_download(c, got, dy, ny * 4) == MOE_OK, "embed: %s", moe_errmsg());
    int bad = 0;
    for (int64_t t = 0; t < n; t++)
        for (int64_t k = 0; k < h->cols; k++) bad += got[t * h->cols + k] != (t < 5 ? wtensor_at(h, tok[t], k) : 0.0f);
    CHECK(bad == 0, "embed %s g%d: %d values differ", wfmt_name(h->fmt), h->group, bad);
    cuda_free(c, dy);
    cuda_free(c, dtok);
    free(got);
}

/* Every format, scale format and group: matmul, SwiGLU (gate and up of one
 * layout) and embed on fresh random shapes, ragged rows; float formats also at
 * odd widths (the element-wise kernel). */
static void test_formats(cuda_ctx *c) {
    static const wfmt fmts[] = {WF_F32, WF_F16, WF_BF16, WF_Q2, WF_Q3, WF_Q4, WF_Q5, WF_Q6, WF_Q8};
    static const wfmt sfmts[] = {WF_F32, WF_F16, WF_BF16};
    static const int groups[] = {32, 64, 128};
    for (size_t fi = 0; fi < sizeof fmts / sizeof *fmts; fi++) {
        wfmt f = fmts[fi];
        int q = wfmt_is_quant(f);
        for (int si = 0; si < (q ? 3 : 1); si++)
            for (int gi = 0; gi < (q ? 3 : 2); gi++) {
                int group = groups[gi];
                int64_t rows = irand(1, 170);
                /* quantized: up to 5 groups (cols % 64 == 32 happens: tc_kernel's half step);
                 * float: a multiple of 32 (gi 0) or any width (gi 1) */
                int64_t cols = q ? group * irand(1, 5) : gi == 0 ? 32 * irand(1, 12) : irand(1, 400);
                wtensor h = host_weight(f, sfmts[si], group, rows, cols);
                check_matmul(c, &h);
                check_embed(c, &h);
                wtensor u = host_weight(f, sfmts[si], group, rows, cols);
                check_swiglu(c, &h, &u);
                host_free(&u);
                host_free(&h);
            }
    }
}

/* Few rows and long ones: warps split the columns and meet in shared memory;
 * one row of 8192 Q4 values, three of BF16. Also gate and up in different
 * formats (the unfused fallback). */
static void test_shapes(cuda_ctx *c) {
    wtensor a = host_weight(WF_Q4, WF_BF16, 64, 1, 8192), b = host_weight(WF_BF16, WF_F32, 0, 3, 8192);
    wtensor e = host_weight(WF_Q8, WF_F16, 32, 5, 4096);
    check_matmul(c, &a), check_matmul(c, &b), check_matmul(c, &e);
    /* rows padded beyond their values (a view of wider rows): the float kernels' column tail */
    wtensor p = host_weight(WF_BF16, WF_F32, 0, 37, 264);
    p.cols = 260;
    check_matmul(c, &p);
    host_free(&p);
    wtensor g = host_weight(WF_Q4, WF_F16, 64, 70, 256), u = host_weight(WF_Q8, WF_F16, 32, 70, 256);
    check_swiglu(c, &g, &u);
    host_free(&a), host_free(&b), host_free(&e), host_free(&g), host_free(&u);
}

/* The tensor-core path's edges: widths of one, two and three halves of its
 * 64-column step (the activation copies' zero fill, the weights' zero half),
 * rows beyond one 128-row tile (and one 64-row SwiGLU tile), in the formats
 * that dequantize in half2 (Q4, Q8) and BF16, at every n of g_ns. */
static void test_tc_edges(cuda_ctx *c) {
    static const wfmt fmts[] = {WF_Q4, WF_Q8, WF_BF16};
    static const int64_t cols[] = {32, 64, 96}, rows[] = {130, 200, 257};
    for (int fi = 0; fi < 3; fi++)
        for (int ci = 0; ci < 3; ci++) {
            int group = wfmt_is_quant(fmts[fi]) ? 32 : 0;
            wtensor h = host_weight(fmts[fi], WF_BF16, group, rows[ci], cols[ci]);
            wtensor u = host_weight(fmts[fi], WF_BF16, group, rows[ci], cols[ci]);
            check_matmul(c, &h);
            check_swiglu(c, &h, &u);
            host_free(&h), host_free(&u);
        }
}

/* ne experts of hidden size H, intermediate I (the last of width Is, a shared
 * expert), format f (the last in fmt_last); mid and out checked. */
static void check_moe(cuda_ctx *c, int ne, wfmt f, wfmt fmt_last, int64_t H, int64_t I, int64_t Is) {
    static wtensor hg[MOE_DEC_MAX], hu[MOE_DEC_MAX], hd[MOE_DEC_MAX], dg[MOE_DEC_MAX], du[MOE_DEC_MAX], dd[MOE_DEC_MAX];
    const wtensor *pg[MOE_DEC_MAX], *pu[MOE_DEC_MAX], *pd[MOE_DEC_MAX];
    float *dout[MOE_DEC_MAX];
    int64_t ld_mid = Is > I ? Is : I;
    float *x = rand_floats((size_t)H), *dx = dev_floats(c, x, (size_t)H);
    float *dmid = dev_floats(c, NULL, (size_t)(ne * ld_mid));
    for (int i = 0; i < ne; i++) {
        wfmt fi = i == ne - 1 ? fmt_last : f;
        int64_t w = i == ne - 1 ? Is : I;
        hg[i] = host_weight(fi, WF_BF16, 32, w, H), hu[i] = host_weight(fi, WF_BF16, 32, w, H);
        hd[i] = host_weight(fi, WF_BF16, 32, H, w);
        dg[i] = dev_weight(c, &hg[i]), du[i] = dev_weight(c, &hu[i]), dd[i] = dev_weight(c, &hd[i]);
        pg[i] = &dg[i], pu[i] = &du[i], pd[i] = &dd[i];
        dout[i] = dev_floats(c, NULL, (size_t)H);
    }
    cuda_moe_decode(c, ne, pg, pu, pd, dx, dmid, ld_mid, dout);
    float *mid = malloc((size_t)(ne * ld_mid) * 4), *out = malloc((size_t)H * 4);
    CHECK(cuda_download(c, mid, dmid, (size_t)(ne * ld_mid) * 4) == MOE_OK, "moe_decode: %s", moe_errmsg());
    for (int i = 0; i < ne; i++) {
        int64_t w = hg[i].rows;
        float *ref = malloc((size_t)(H > w ? H : w) * 4), *tol = malloc((size_t)(H > w ? H : w) * 4);
        swiglu_ref(&hg[i], &hu[i], x, 1, ref, tol);
        CHECK(compare("moe mid", &hg[i], 1, mid + i * ld_mid, ref, tol, w) == 0, "moe_decode mid of expert %d", i);
        /* down's reference from the device's mid (its own error is checked above) */
        reference(&hd[i], mid + i * ld_mid, 1, NULL, ref_mode(&hd[i], 1), ref, tol);
        CHECK(cuda_download(c, out, dout[i], (size_t)H * 4) == MOE_OK, "moe_decode: %s", moe_errmsg());
        CHECK(compare("moe out", &hd[i], 1, out, ref, tol, H) == 0, "moe_decode out of expert %d of %d", i, ne);
        free(ref), free(tol);
        host_free(&hg[i]), host_free(&hu[i]), host_free(&hd[i]);
        cuda_free(c, dout[i]);
    }
    cuda_free(c, dx), cuda_free(c, dmid);
    free(x), free(mid), free(out);
}

/* The experts of a layer as the model keeps them: an array of structs. */
typedef struct test_expert {
    wtensor gate, up, down;
} test_expert;

/* cuda_route on E random router logits (top-K, weights renormalised or not)
 * against the same arithmetic on the host, then cuda_moe_decode_sel of the
 * chosen experts (+ a shared one) bit for bit against cuda_moe_decode of the
 * same experts chosen on the host. odd >= 0: expert `odd` in format f_odd
 * (the layer no longer uniform: the choice is read back). */
static void check_moe_sel(cuda_ctx *c, int E, int K, int norm, wfmt f, int odd, wfmt f_odd, int shared, int64_t H,
                          int64_t I) {
    test_expert *hx = calloc((size_t)E + 1, sizeof *hx), *dx = calloc((size_t)E + 1, sizeof *dx);
    for (int e = 0; e <= E; e++) { /* E: the shared expert, 2I wide */
        wfmt fe = e == odd ? f_odd : f;
        int64_t w = e == E ? 2 * I : I;
        hx[e].gate = host_weight(fe, WF_BF16, 32, w, H), hx[e].up = host_weight(fe, WF_BF16, 32, w, H);
        hx[e].down = host_weight(fe, WF_BF16, 32, H, w);
        dx[e].gate = dev_weight(c, &hx[e].gate), dx[e].up = dev_weight(c, &hx[e].up), dx[e].down = dev_weight(c, &hx[e].down);
    }
    float *logit = rand_floats((size_t)E), *x = rand_floats((size_t)H);
    for (int e = 0; e < E; e++) logit[e] = 4.0f * logit[e] + 0.001f * (float)e; /* no ties */
    /* the host's routing, as forward.c's */
    float *p = malloc((size_t)E * sizeof *p), mx = logit[0], sum = 0, wsum = 0, want_w[MOE_DEC_MAX];
    int want_sel[MOE_DEC_MAX];
    for (int e = 1; e < E; e++) mx = logit[e] > mx ? logit[e] : mx;
    for (int e = 0; e < E; e++) sum += (p[e] = expf(logit[e] - mx));
    for (int e = 0; e < E; e++) p[e] /= sum;
    for (int k = 0; k < K; k++) {
        int best = -1;
        for (int e = 0; e < E; e++) {
            int taken = 0;
            for (int j = 0; j < k; j++) taken |= want_sel[j] == e;
            if (!taken && (best < 0 || p[e] > p[best])) best = e;
        }
        want_sel[k] = best;
        wsum += (want_w[k] = p[best]);
    }
    if (norm)
        for (int k = 0; k < K; k++) want_w[k] /= wsum;
    float *dlog = dev_floats(c, logit, (size_t)E), *dw = dev_floats(c, NULL, (size_t)K);
    int32_t *dsel = cuda_alloc(c, sizeof(int32_t) * (size_t)K);
    int64_t *dcnt = cuda_alloc(c, sizeof(int64_t) * (size_t)E);
    cuda_route(c, dlog, 1, E, K, norm, dsel, dw, dcnt);
    int32_t sel[MOE_DEC_MAX];
    float w[MOE_DEC_MAX];
    int64_t *cnt = malloc(sizeof(int64_t) * (size_t)E);
    CHECK(cuda_download(c, sel, dsel, sizeof(int32_t) * (size_t)K) == MOE_OK && cuda_download(c, w, dw, 4 * (size_t)K) == MOE_OK &&
              cuda_download(c, cnt, dcnt, sizeof(int64_t) * (size_t)E) == MOE_OK,
          "route: %s", moe_errmsg());
    int bad = 0;
    int64_t chosen = 0;
    for (int k = 0; k < K; k++) bad += sel[k] != want_sel[k] || fabsf(w[k] - want_w[k]) > 1e-6f * want_w[k];
    for (int e = 0; e < E; e++) chosen += cnt[e];
    for (int k = 0; k < K; k++) bad += cnt[sel[k]] != 1;
    CHECK(bad == 0 && chosen == K, "route E %d K %d norm %d: %d choices differ from the host's (%lld counted)", E, K, norm,
          bad, (long long)chosen);
    /* the chosen experts on the device, against the same ones chosen on the host */
    int ne = K + (shared ? 1 : 0);
    int64_t ld_mid = 2 * I;
    float *dxv = dev_floats(c, x, (size_t)H), *dmid = dev_floats(c, NULL, (size_t)(ne * ld_mid));
    float *dout = dev_floats(c, NULL, (size_t)(K * H)), *dsh = dev_floats(c, NULL, (size_t)H);
    float *dmid2 = dev_floats(c, NULL, (size_t)(ne * ld_mid)), *dout2 = dev_floats(c, NULL, (size_t)(ne * H));
    cuda_moe_decode_sel(c, E, &dx[0].gate, &dx[0].up, &dx[0].down, sizeof *dx, dsel, K, shared ? &dx[E].gate : NULL,
                        shared ? &dx[E].up : NULL, shared ? &dx[E].down : NULL, dxv, dmid, ld_mid, dout, H, dsh);
    const wtensor *pg[MOE_DEC_MAX], *pu[MOE_DEC_MAX], *pd[MOE_DEC_MAX];
    float *po[MOE_DEC_MAX];
    for (int k = 0; k < ne; k++) {
        int e = k < K ? want_sel[k] : E;
        pg[k] = &dx[e].gate, pu[k] = &dx[e].up, pd[k] = &dx[e].down, po[k] = dout2 + k * H;
    }
    cuda_moe_decode(c, ne, pg, pu, pd, dxv, dmid2, ld_mid, po);
    size_t nb = sizeof(float) * (size_t)(K * H);
    float *a = malloc(nb + 4 * (size_t)H), *b = malloc(nb + 4 * (size_t)H);
    CHECK(cuda_download(c, a, dout, nb) == MOE_OK && cuda_download(c, a + K * H, dsh, 4 * (size_t)H) == MOE_OK &&
              cuda_download(c, b, dout2, nb + (shared ? 4 * (size_t)H : 0)) == MOE_OK,
          "moe_decode_sel: %s", moe_errmsg());
    if (!shared) memcpy(b + K * H, a + K * H, 4 * (size_t)H);
    CHECK(memcmp(a, b, nb + 4 * (size_t)H) == 0, "moe_decode_sel E %d K %d %s%s%s: not the host-chosen experts' outputs",
          E, K, wfmt_name(f), odd >= 0 ? " (one expert in another format)" : "", shared ? " + shared" : "");
    for (int e = 0; e <= E; e++) host_free(&hx[e].gate), host_free(&hx[e].up), host_free(&hx[e].down);
    void *d[] = {dlog, dw, dsel, dcnt, dxv, dmid, dout, dsh, dmid2, dout2};
    for (size_t i = 0; i < sizeof d / sizeof *d; i++) cuda_free(c, d[i]);
    free(hx), free(dx), free(logit), free(x), free(p), free(cnt), free(a), free(b);
}

/* cuda_moe_grouped over ne experts with counts[i] rows each (ragged: empty,
 * within the decode kernels' reach, a partial tile, several tiles), expert
 * `odd` (-1: none) in format f_odd: bit for bit cuda_matmul_swiglu and
 * cuda_matmul expert by expert, which test_formats holds to the reference. */
static void check_grouped(cuda_ctx *c, int ne, const int64_t *counts, wfmt f, int odd, wfmt f_odd, int64_t H, int64_t I) {
    wtensor *hw = calloc((size_t)ne * 3, sizeof *hw), *dw = calloc((size_t)ne * 3, sizeof *dw);
    const wtensor **pg = calloc((size_t)ne * 3, sizeof *pg), **pu = pg + ne, **pd = pu + ne;
    int64_t *off = malloc(sizeof *off * (size_t)(ne + 1));
    off[0] = 0;
    for (int i = 0; i < ne; i++) off[i + 1] = off[i] + counts[i];
    int64_t T = off[ne];
    float *x = rand_floats((size_t)(T * H)), *dx = dev_floats(c, x, (size_t)(T * H));
    float *dmid = dev_floats(c, NULL, (size_t)(T * I)), *dout = dev_floats(c, NULL, (size_t)(T * H));
    float *dmid1 = dev_floats(c, NULL, (size_t)(T * I)), *dout1 = dev_floats(c, NULL, (size_t)(T * H));
    for (int i = 0; i < ne; i++) {
        wfmt fi = i == odd ? f_odd : f;
        hw[3 * i] = host_weight(fi, WF_BF16, 64, I, H), hw[3 * i + 1] = host_weight(fi, WF_BF16, 64, I, H);
        hw[3 * i + 2] = host_weight(fi, WF_BF16, 64, H, I);
        for (int k = 0; k < 3; k++) dw[3 * i + k] = dev_weight(c, &hw[3 * i + k]);
        pg[i] = &dw[3 * i], pu[i] = &dw[3 * i + 1], pd[i] = &dw[3 * i + 2];
    }
    cuda_moe_grouped(c, ne, pg, pu, pd, off, dx, dmid, dout);
    for (int i = 0; i < ne; i++) { /* one by one */
        if (!counts[i]) continue;
        cuda_matmul_swiglu(c, pg[i], pu[i], dx + off[i] * H, counts[i], dmid1 + off[i] * I);
        cuda_matmul(c, pd[i], dmid1 + off[i] * I, counts[i], NULL, dout1 + off[i] * H);
    }
    float *a = malloc((size_t)(T * (H > I ? H : I)) * 4), *b = malloc((size_t)(T * (H > I ? H : I)) * 4);
    CHECK(cuda_download(c, a, dmid, (size_t)(T * I) * 4) == MOE_OK && cuda_download(c, b, dmid1, (size_t)(T * I) * 4) == MOE_OK,
          "moe_grouped: %s", moe_errmsg());
    CHECK(!memcmp(a, b, (size_t)(T * I) * 4), "moe_grouped %s, %d experts: SwiGLU products differ from one by one",
          wfmt_name(f), ne);
    CHECK(cuda_download(c, a, dout, (size_t)(T * H) * 4) == MOE_OK && cuda_download(c, b, dout1, (size_t)(T * H) * 4) == MOE_OK,
          "moe_grouped: %s", moe_errmsg());
    CHECK(!memcmp(a, b, (size_t)(T * H) * 4), "moe_grouped %s, %d experts: outputs differ from one by one", wfmt_name(f), ne);
    double ss = 0;
    for (int64_t i = 0; i < T * H; i++) ss += (double)a[i] * a[i];
    CHECK(T == 0 || ss > 0, "moe_grouped: all zeros");
    for (int i = 0; i < 3 * ne; i++) {
        host_free(&hw[i]);
        cuda_free(c, (void *)dw[i].data), cuda_free(c, (void *)dw[i].scales), cuda_free(c, (void *)dw[i].biases);
    }
    cuda_free(c, dx), cuda_free(c, dmid), cuda_free(c, dout), cuda_free(c, dmid1), cuda_free(c, dout1);
    free(hw), free(dw), free(pg), free(off), free(x), free(a), free(b);
}

static void test_moe(cuda_ctx *c) {
    const int64_t mixtral[8] = {130, 0, 9, 8, 1, 300, 64, 129}, many[20] = {17, 3, 40, 0, 0, 9, 12, 200, 5, 33,
                                                                          1, 2, 96, 128, 127, 0, 10, 11, 70, 8};
    check_grouped(c, 8, mixtral, WF_Q4, -1, WF_Q4, 256, 192);
    check_grouped(c, 8, mixtral, WF_BF16, -1, WF_BF16, 128, 96);
    check_grouped(c, 20, many, WF_Q8, 7, WF_Q4, 128, 64); /* one expert in another format: by itself */
    check_grouped(c, 3, mixtral, WF_F32, -1, WF_F32, 64, 32); /* float32 has no tensor-core path */
    check_moe_sel(c, 8, 2, 1, WF_Q4, -1, WF_Q4, 0, 256, 96);   /* Mixtral-like */
    check_moe_sel(c, 60, 4, 0, WF_Q8, -1, WF_Q8, 1, 128, 64);  /* Qwen-MoE-like: a shared expert, weights as chosen */
    check_moe_sel(c, 64, 8, 0, WF_BF16, -1, WF_BF16, 0, 128, 32);
    check_moe_sel(c, 16, 4, 1, WF_Q4, 5, WF_Q8, 1, 128, 64);    /* one expert in another format: read back */
    check_moe(c, 8, WF_Q4, WF_Q4, 256, 96, 160);    /* top-8 + a wider shared expert, one launch a phase */
    check_moe(c, 2, WF_BF16, WF_BF16, 192, 224, 224);
    check_moe(c, 3, WF_Q8, WF_Q4, 128, 64, 32);     /* mixed formats: expert by expert */
    check_moe(c, MOE_DEC_MAX, WF_Q3, WF_Q6, 64, 32, 64);
    check_moe(c, 5, WF_F32, WF_F32, 100, 36, 20);   /* float32 */
    check_moe(c, 3, WF_F16, WF_F16, 102, 37, 21);   /* odd widths: the element-wise kernel */
}

/* MOE_CUDA_FLOAT_DECODE=1: Q4/Q8 decode in float32, held to the float32
 * bound (which the int8 path's rounding would break). */
static void test_float_decode(cuda_ctx *c) {
    setenv("MOE_CUDA_FLOAT_DECODE", "1", 1);
    g_float_decode = 1;
    static const wfmt fmts[] = {WF_Q4, WF_Q8};
    for (int fi = 0; fi < 2; fi++)
        for (int gi = 0; gi < 2; gi++) {
            int group = gi ? 128 : 32;
            wtensor h = host_weight(fmts[fi], gi ? WF_BF16 : WF_F16, group, irand(1, 170), group * irand(1, 5));
            wtensor u = host_weight(fmts[fi], gi ? WF_BF16 : WF_F16, group, h.rows, h.cols);
            check_matmul(c, &h);
            check_swiglu(c, &h, &u);
            host_free(&h), host_free(&u);
        }
    check_moe(c, 8, WF_Q4, WF_Q8, 256, 96, 160);
    unsetenv("MOE_CUDA_FLOAT_DECODE");
    g_float_decode = 0;
}

/* Failures are clean statuses. An impossible allocation returns NULL and
 * leaves the context usable (the caller reports it); a bad token id is a
 * kernel-side error: the context keeps it, skips later work, and a later call
 * does not replace it. */
static void test_errors(void) {
    cuda_ctx *c = NULL;
    CHECK(cuda_ctx_new(0, &c) == MOE_OK, "ctx: %s", moe_errmsg());
    /* a failed allocation is the caller's to report (cuda_alloc's contract): the context stays usable */
    void *p = cuda_alloc(c, (size_t)1 << 50);
    CHECK(p == NULL, "a 1 PiB allocation succeeded");
    moe_status st = cuda_sync(c);
    CHECK(st == MOE_OK, "a failed allocation broke the context: status %d (%s)", st, moe_errmsg());
    wtensor h = host_weight(WF_Q4, WF_F16, 32, 4, 64);
    float *y = dev_floats(c, NULL, 64);
    kv_cache bad = {.bits = 5, .group = 8, .n_kv = 1, .hd = 8, .cap = 4, .k = y, .v = y};
    cuda_kv_store(c, &bad, y, y, 1, (const int64_t *)y); /* a 5-bit cache: an operation's own error */
    st = cuda_sync(c);
    CHECK(st == MOE_EUNSUPPORTED && strstr(moe_errmsg(), "kv_store"), "a 5-bit KV cache: %d %s", st, moe_errmsg());
    wtensor hp = h; /* host pointers: never dereferenced by a failed context */
    cuda_matmul(c, &hp, NULL, 1, NULL, NULL);
    st = cuda_sync(c);
    CHECK(st == MOE_EUNSUPPORTED && strstr(moe_errmsg(), "kv_store"), "a later call replaced the first error: %d %s",
          st, moe_errmsg());
    cuda_ctx_free(c);
    host_free(&h);
}

int main(void) {
    if (cuda_device_count() == 0) {
        printf("no CUDA device: skipped\n");
        return 77;
    }
    cuda_ctx *c = NULL;
    if (cuda_ctx_new(0, &c) != MOE_OK) {
        fprintf(stderr, "cuda_ctx_new: %s\n", moe_errmsg());
        return 1;
    }
    printf("%s\n", cuda_ctx_name(c));
    test_formats(c);
    test_shapes(c);
    test_tc_edges(c);
    test_moe(c);
    CHECK(g_i8_separated > 0, "the int8 bound never told the int8 result from the float32 one");
    test_float_decode(c);
    CHECK(cuda_sync(c) == MOE_OK, "%s", moe_errmsg());
    cuda_ctx_free(c);
    test_errors();
    TEST_DONE();
}
