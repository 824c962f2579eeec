/* kernels_scalar.c — the reference kernels: plain C, one float accumulator,
 * element order k = 0..cols-1. Every optimised kernel is tested against these. */
#include "kernels.h"

static void mm_scalar(const wtensor *w, int64_t r0, int64_t r1, const float *x, int64_t ldx, int64_t n, float *y,
                      int64_t ldy) {
    for (int64_t r = r0; r < r1; r++) {
        const unsigned char *row = (const unsigned char *)w->data + (size_t)r * w->row_bytes;
        for (int64_t t = 0; t < n; t++) {
            const float *xt = x + t * ldx;
            float acc = 0;
            if (wfmt_is_quant(w->fmt))
                for (int64_t k = 0; k < w->cols; k++) acc += wtensor_at(w, r, k) * xt[k];
            else
                for (int64_t k = 0; k < w->cols; k++) acc += weight_at(w->fmt, row, k) * xt[k];
            y[t * ldy + r] = acc;
        }
    }
}

static float dot_scalar(const float *a, const float *b, int64_t n) {
    float acc = 0;
    for (int64_t i = 0; i < n; i++) acc += a[i] * b[i];
    return acc;
}

static void axpy_scalar(float *y, float s, const float *x, int64_t n) {
    for (int64_t i = 0; i < n; i++) y[i] += s * x[i];
}

static const cpu_kernels k_scalar = {
    "scalar",
    {mm_scalar, mm_scalar, mm_scalar, mm_scalar, mm_scalar, mm_scalar, mm_scalar, mm_scalar, mm_scalar},
    dot_scalar,
    axpy_scalar,
};

const cpu_kernels *cpu_kernels_scalar(void) { return &k_scalar; }
