/* kernels_scalar.c — the reference kernels: plain C, one float accumulator,
 * element order k = 0..cols-1. Every optimised kernel is tested against these. */
#include "kernels.h"

static void mm_scalar(const wtensor *w, int64_t r0, int64_t r1, const float *x, int64_t ldx, int64_t n, float *y,
                      int64_t ldy) {
    for (int64_t r = r0; r < r1; r++) {
        for (int64_t t = 0; t < n; t++) {
            const float *xt = x + t * ldx;
            float acc = 0;
            for (int64_t k = 0; k < w->cols; k++) acc += wtensor_at(w, r, k) * xt[k];
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

/* Quantized KV rows: each element dequantized as scale * q + bias, then the
 * plain dot / axpy; what attention over the float32 dequantized cache computes. */
static inline float kv_at(int bits, const unsigned char *row, const float *scale, const float *bias, int group, int j) {
    return scale[j / group] * (float)quant_at(row, bits, j) + bias[j / group];
}

static inline float kv_dot_ref(int bits, const float *q, const unsigned char *k, const float *scale, const float *bias,
                               int hd, int group) {
    float acc = 0;
    for (int j = 0; j < hd; j++) acc += q[j] * kv_at(bits, k, scale, bias, group, j);
    return acc;
}

static inline void kv_axpy_ref(int bits, float *y, float a, const unsigned char *v, const float *scale,
                               const float *bias, int hd, int group) {
    for (int j = 0; j < hd; j++) y[j] += a * kv_at(bits, v, scale, bias, group, j);
}

static float kv_dot8(const float *q, const float *qsum, const unsigned char *k, const float *scale, const float *bias,
                     int hd, int group) {
    (void)qsum;
    return kv_dot_ref(8, q, k, scale, bias, hd, group);
}
static float kv_dot4(const float *q, const float *qsum, const unsigned char *k, const float *scale, const float *bias,
                     int hd, int group) {
    (void)qsum;
    return kv_dot_ref(4, q, k, scale, bias, hd, group);
}
static void kv_axpy8(float *y, float a, const unsigned char *v, const float *scale, const float *bias, int hd, int group) {
    kv_axpy_ref(8, y, a, v, scale, bias, hd, group);
}
static void kv_axpy4(float *y, float a, const unsigned char *v, const float *scale, const float *bias, int hd, int group) {
    kv_axpy_ref(4, y, a, v, scale, bias, hd, group);
}

static const cpu_kernels k_scalar = {
    "scalar",
    {mm_scalar, mm_scalar, mm_scalar, mm_scalar, mm_scalar, mm_scalar, mm_scalar, mm_scalar, mm_scalar},
    dot_scalar,
    axpy_scalar,
    .kv_dot = {kv_dot8, kv_dot4},
    .kv_axpy = {kv_axpy8, kv_axpy4},
};

const cpu_kernels *cpu_kernels_scalar(void) { return &k_scalar; }
