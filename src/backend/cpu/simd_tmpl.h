/* simd_tmpl.h — the SIMD kernels, written once and compiled per instruction
 * set. The including file defines the vector vocabulary (V, VL, VZERO,
 * VADD, VFMA, VLOADF, VLOAD_BF16, VLOAD_F16, VREDUCE, VSET1, VSTOREF, and
 * for the quantized formats the integer words listed in simd_quant.h),
 * includes this file, and builds its kernel table from mm_f32/mm_f16/mm_bf16,
 * mm_q2..mm_q8 (simd_quant.h), dot_v, axpy_v.
 *
 * matmul: a tile of R weight rows x T tokens keeps R*T vector accumulators
 * in registers across the whole K loop, so each weight vector is converted
 * once and used T times. Decode (one token) uses 4x1 tiles; prompts 4x4.
 * Tails (rows, tokens) reuse the last valid pointer and drop its results;
 * a K tail that is not a whole vector is summed in scalar code.
 */
#include "kernels.h"

#define DR 4 /* weight rows per decode tile (8 and 12 measured slower) */

static inline __attribute__((always_inline)) V vload(wfmt f, const unsigned char *row, int64_t k) {
    switch (f) {
    case WF_BF16: return VLOAD_BF16((const uint16_t *)row + k);
    case WF_F16: return VLOAD_F16((const uint16_t *)row + k);
    default: return VLOADF((const float *)row + k);
    }
}

static inline __attribute__((always_inline)) void tile(wfmt f, const int R, const int T,
                                                      const unsigned char *const *rows, const float *const *xs,
                                                      int64_t K, size_t pf, float *out /* [R*T] */) {
    /* fully unrolled so the accumulators live in registers */
    V acc[4][4];
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) acc[r][t] = VZERO();
    int64_t kv = K / VL * VL;
    for (int64_t k = 0; k < kv; k += VL) {
        V xv[4];
#pragma GCC unroll 4
        for (int t = 0; t < T; t++) xv[t] = VLOADF(xs[t] + k);
#pragma GCC unroll 4
        for (int r = 0; r < R; r++) {
            /* decode is bandwidth-bound and the hardware prefetcher stops at 4 KiB
             * pages: pull the next tile's rows into L2 while this one computes */
            if (pf) __builtin_prefetch(rows[r] + pf + (size_t)k * (f == WF_F32 ? 4 : 2), 0, 2);
            V wv = vload(f, rows[r], k);
#pragma GCC unroll 4
            for (int t = 0; t < T; t++) acc[r][t] = VFMA(wv, xv[t], acc[r][t]);
        }
    }
#pragma GCC unroll 4
    for (int r = 0; r < R; r++)
        for (int t = 0; t < T; t++) {
            float s = VREDUCE(acc[r][t]);
            for (int64_t k = kv; k < K; k++) s += weight_at(f, rows[r], k) * xs[t][k];
            out[r * T + t] = s;
        }
}

static inline __attribute__((always_inline)) void mm_any(wfmt f, const wtensor *w, int64_t r0, int64_t r1,
                                                        const float *x, int64_t ldx, int64_t n, float *y, int64_t ldy) {
    const unsigned char *base = w->data;
    if (n == 1) { /* decode: DR rows at a time, DR streams in flight per thread */
        for (int64_t r = r0; r < r1; r += DR) {
            const unsigned char *rows[DR];
            int nr = r1 - r < DR ? (int)(r1 - r) : DR;
            for (int i = 0; i < DR; i++) rows[i] = base + (size_t)(r + (i < nr ? i : nr - 1)) * w->row_bytes;
            float out[DR];
            tile(f, DR, 1, rows, &x, w->cols, DR * w->row_bytes, out);
            for (int i = 0; i < nr; i++) y[r + i] = out[i];
        }
        return;
    }
    for (int64_t r = r0; r < r1; r += 4) {
        const unsigned char *rows[4];
        int nr = r1 - r < 4 ? (int)(r1 - r) : 4;
        for (int i = 0; i < 4; i++) rows[i] = base + (size_t)(r + (i < nr ? i : nr - 1)) * w->row_bytes;
        for (int64_t t = 0; t < n; t += 4) {
            const float *xs[4];
            int nt = n - t < 4 ? (int)(n - t) : 4;
            for (int i = 0; i < 4; i++) xs[i] = x + (t + (i < nt ? i : nt - 1)) * ldx;
            float out[16];
            tile(f, 4, 4, rows, xs, w->cols, 0, out);
            for (int i = 0; i < nr; i++)
                for (int j = 0; j < nt; j++) y[(t + j) * ldy + r + i] = out[i * 4 + j];
        }
    }
}

static void mm_f32(const wtensor *w, int64_t r0, int64_t r1, const float *x, int64_t ldx, int64_t n, float *y, int64_t ldy) {
    mm_any(WF_F32, w, r0, r1, x, ldx, n, y, ldy);
}
static void mm_f16(const wtensor *w, int64_t r0, int64_t r1, const float *x, int64_t ldx, int64_t n, float *y, int64_t ldy) {
    mm_any(WF_F16, w, r0, r1, x, ldx, n, y, ldy);
}
static void mm_bf16(const wtensor *w, int64_t r0, int64_t r1, const float *x, int64_t ldx, int64_t n, float *y, int64_t ldy) {
    mm_any(WF_BF16, w, r0, r1, x, ldx, n, y, ldy);
}

static float dot_v(const float *a, const float *b, int64_t n) {
    V acc = VZERO();
    int64_t k = 0;
    for (; k + VL <= n; k += VL) acc = VFMA(VLOADF(a + k), VLOADF(b + k), acc);
    float s = VREDUCE(acc);
    for (; k < n; k++) s += a[k] * b[k];
    return s;
}

static void axpy_v(float *y, float s, const float *x, int64_t n) {
    V sv = VSET1(s);
    int64_t k = 0;
    for (; k + VL <= n; k += VL) VSTOREF(y + k, VFMA(sv, VLOADF(x + k), VLOADF(y + k)));
    for (; k < n; k++) y[k] += s * x[k];
}

#include "simd_quant.h"
