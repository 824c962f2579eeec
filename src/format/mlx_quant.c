/* mlx_quant.c — see mlx_quant.h. Float32 in MLX's order of operations: no
 * FMA can form (no product is added to anything), and the build uses neither
 * -ffast-math nor x87, so every division and rounding is the IEEE single
 * precision one MLX's CPU kernel performs. A scalar reference (as MLX's loop
 * reads) and a 4-lane path that quantize_row uses, tested against it. */
#include "mlx_quant.h"

#include <math.h>
#include <string.h>

#include "../base/half.h"

int mlxq_valid(int bits, int group) {
    int b = bits == 2 || bits == 3 || bits == 4 || bits == 5 || bits == 6 || bits == 8;
    return b && (group == 32 || group == 64 || group == 128);
}

void mlxq_store(void *row, st_dtype d, int64_t k, float x) {
    unsigned char *p = row;
    uint16_t h;
    switch (d) {
    case ST_BF16: h = f32_to_bf16(x); memcpy(p + 2 * k, &h, 2); break;
    case ST_F16: h = f32_to_f16(x); memcpy(p + 2 * k, &h, 2); break;
    default: memcpy(p + 4 * k, &x, 4);
    }
}

/* 4-lane vectors (GCC/Clang vector extensions: SSE2 on x86-64, NEON on
 * arm64; no intrinsics). */
typedef float v4f __attribute__((vector_size(16)));
typedef int32_t v4i __attribute__((vector_size(16)));
typedef uint32_t v4u __attribute__((vector_size(16)));
typedef uint16_t v4h __attribute__((vector_size(8)));
typedef uint8_t v4b __attribute__((vector_size(4)));
typedef uint16_t v8h __attribute__((vector_size(16)));
typedef uint8_t v8b __attribute__((vector_size(8)));

/* ------------------------------------------------ scalar reference -- */

/* Scale and bias from the group's extremes: MLX's formula, in its order. */
static void params_from_range(float lo, float hi, int bits, float *scale, float *bias) {
    const float n_bins = (float)((1 << bits) - 1), eps = 1e-7f;
    int mask = fabsf(lo) > fabsf(hi);
    float s = (hi - lo) / n_bins;
    s = s < eps ? eps : s; /* std::max(s, eps) */
    s = mask ? s : -s;
    float edge = mask ? lo : hi;
    float q0 = rintf(edge / s);
    float b = 0.0f;
    if (q0 != 0.0f) {
        s = edge / q0;
        b = edge;
    }
    *scale = s;
    *bias = b;
}

void mlxq_group_params(const float *w, int n, int bits, float *scale, float *bias) {
    float lo = INFINITY, hi = -INFINITY;
    for (int k = 0; k < n; k++) { /* as std::max(hi, w) / std::min(lo, w) */
        hi = hi < w[k] ? w[k] : hi;
        lo = w[k] < lo ? w[k] : lo;
    }
    params_from_range(lo, hi, bits, scale, bias);
}

void mlxq_group_values(const float *w, int n, int bits, float scale, float bias, uint8_t *q) {
    const float n_bins = (float)((1 << bits) - 1);
    for (int k = 0; k < n; k++) {
        float x = rintf((w[k] - bias) / scale);
        q[k] = (uint8_t)(x > 0.0f ? (x < n_bins ? x : n_bins) : 0.0f); /* NaN: 0 */
    }
}

void mlxq_pack(const uint8_t *q, int64_t n, int bits, unsigned char *dst) {
    uint64_t acc = 0; /* bits not yet written, least significant first */
    int have = 0;
    for (int64_t k = 0; k < n; k++) {
        acc |= (uint64_t)q[k] << have;
        for (have += bits; have >= 8; have -= 8, acc >>= 8) *dst++ = (unsigned char)acc;
    }
}

/* Converts group g of a row to float32. */
static inline void load_group(const unsigned char *src, st_dtype in, int64_t g, int group, float *x) {
    size_t es = st_dtype_size(in);
    const unsigned char *p = src + (size_t)g * (size_t)group * es;
    uint16_t h[MLXQ_MAX_GROUP];
    if (in == ST_F32) {
        memcpy(x, p, (size_t)group * 4);
    } else { /* copied first: the row need not be aligned; each loop vectorises */
        memcpy(h, p, (size_t)group * 2);
        if (in == ST_BF16) {
            for (int k = 0; k < group; k += 4) { /* bf16 is the top half of a float32: exact */
                v4h v;
                memcpy(&v, h + k, sizeof v);
                v4u u = __builtin_convertvector(v, v4u) << 16;
                memcpy(x + k, &u, sizeof u);
            }
        } else {
            for (int k = 0; k < group; k++) x[k] = f16_to_f32(h[k]);
        }
    }
}

/* ------------------------------------------------------- the fast path --
 * The same arithmetic on 4-lane vectors. Vector IEEE operations round as the
 * scalar ones do, so results are identical for every input without a NaN
 * (tested against the reference above). */

static inline v4f vload(const float *p) { v4f v; memcpy(&v, p, sizeof v); return v; }
static inline v4f vsplat(float x) { return (v4f){x, x, x, x}; }
/* m ? a : b per lane (m: all ones or all zeros) */
static inline v4f vsel(v4i m, v4f a, v4f b) { return (v4f)(((v4i)a & m) | ((v4i)b & ~m)); }

/* max and min over lanes, then across: the set's extremes, so the same
 * values as the sequential scan (a zero extreme may come out with the other
 * sign, which reaches neither scale nor bias: |±0| is 0 in the mask, the
 * range of two zeros is below eps either way, and an edge of ±0 gives
 * q0 = 0, hence bias +0 and the scale it had). group >= 32, a multiple of 4. */
static inline void params_fast(const float *w, int n, int bits, float *scale, float *bias) {
    v4f h = vload(w), l = h;
    for (int k = 4; k < n; k += 4) {
        v4f x = vload(w + k);
        h = vsel(h < x, x, h);
        l = vsel(x < l, x, l);
    }
    float hi = h[0], lo = l[0];
    for (int j = 1; j < 4; j++) {
        hi = hi < h[j] ? h[j] : hi;
        lo = l[j] < lo ? l[j] : lo;
    }
    params_from_range(lo, hi, bits, scale, bias);
}

/* Clamping before rounding gives the same integer (the bounds are
 * integers) and keeps x in [0, 255], where adding and subtracting 1.5 * 2^23
 * rounds to the nearest integer, ties to even: rint as two additions. */
static inline void values_fast(const float *w, int n, int bits, float scale, float bias, uint8_t *q) {
    const v4f nb = vsplat((float)((1 << bits) - 1)), zero = vsplat(0.0f), magic = vsplat(12582912.0f);
    const v4f vs = vsplat(scale), vb = vsplat(bias);
    int32_t qi[MLXQ_MAX_GROUP];
    for (int k = 0; k < n; k += 4) {
        v4f x = (vload(w + k) - vb) / vs;
        x = (v4f)((v4i)x & (x > zero)); /* max(x, 0); NaN: 0 */
        x = vsel(x < nb, x, nb);
        v4i v = __builtin_convertvector((x + magic) - magic, v4i);
        memcpy(qi + k, &v, sizeof v);
    }
    for (int k = 0; k < n; k++) q[k] = (uint8_t)qi[k]; /* n a constant: vectorised narrowing */
}

/* 8 values are `bits` whole bytes; `bits` a constant once inlined, so the
 * shifts are too. */
static inline void pack_bits(const uint8_t *q, int n, int bits, unsigned char *dst) {
    for (int k = 0; k < n; k += 8) {
        uint64_t v = 0;
        for (int j = 0; j < 8; j++) v |= (uint64_t)q[k + j] << (j * bits);
        for (int j = 0; j < bits; j++) *dst++ = (unsigned char)(v >> (8 * j));
    }
}

static inline void pack_fast(const uint8_t *q, int n, int bits, unsigned char *dst) {
    switch (bits) {
    case 2:
        for (int k = 0; k < n; k += 16, dst += 4) { /* 4 bytes b0..b3 of a lane -> b0 | b1<<2 | b2<<4 | b3<<6 */
            v4u v;
            memcpy(&v, q + k, sizeof v);
            v |= v >> 6;
            v |= v >> 12;
            v4b r = __builtin_convertvector(v, v4b);
            memcpy(dst, &r, sizeof r);
        }
        break;
    case 3: pack_bits(q, n, 3, dst); break;
    case 4:
        for (int k = 0; k < n; k += 16, dst += 8) { /* 2 bytes lo, hi of a lane -> lo | hi<<4 */
            v8h v;
            memcpy(&v, q + k, sizeof v);
            v8b r = __builtin_convertvector(v | v >> 4, v8b);
            memcpy(dst, &r, sizeof r);
        }
        break;
    case 5: pack_bits(q, n, 5, dst); break;
    case 6: pack_bits(q, n, 6, dst); break;
    default: memcpy(dst, q, (size_t)n); break; /* 8 bits: the bytes themselves */
    }
}

/* ----------------------------------------------------------- rows -- */

/* The row loop of both paths. Fast: `group` a constant where it is
 * inlined, so every inner loop has a fixed trip count the compiler
 * vectorises. */
static inline void quantize_groups(const void *w, st_dtype in, int64_t cols, int bits, const int group, void *packed,
                                   void *scales, void *biases, st_dtype sdt, const int fast) {
    float x[MLXQ_MAX_GROUP];
    uint8_t q[MLXQ_MAX_GROUP];
    size_t gbytes = (size_t)group * (size_t)bits / 8;
    for (int64_t g = 0; g < cols / group; g++) {
        load_group(w, in, g, group, x);
        float s, b;
        if (fast) params_fast(x, group, bits, &s, &b);
        else mlxq_group_params(x, group, bits, &s, &b);
        unsigned char *dst = packed ? (unsigned char *)packed + (size_t)g * gbytes : NULL;
        if (dst && fast) {
            values_fast(x, group, bits, s, b, q);
            pack_fast(q, group, bits, dst);
        } else if (dst) {
            mlxq_group_values(x, group, bits, s, b, q);
            mlxq_pack(q, group, bits, dst);
        }
        if (scales) mlxq_store(scales, sdt, g, s);
        if (biases) mlxq_store(biases, sdt, g, b);
    }
}

void mlxq_quantize_row_ref(const void *w, st_dtype in, int64_t cols, int bits, int group, void *packed, void *scales,
                           void *biases, st_dtype sdt) {
    quantize_groups(w, in, cols, bits, group, packed, scales, biases, sdt, 0);
}

void mlxq_quantize_row(const void *w, st_dtype in, int64_t cols, int bits, int group, void *packed, void *scales,
                       void *biases, st_dtype sdt) {
    switch (group) {
    case 32: quantize_groups(w, in, cols, bits, 32, packed, scales, biases, sdt, 1); break;
    case 64: quantize_groups(w, in, cols, bits, 64, packed, scales, biases, sdt, 1); break;
    default: quantize_groups(w, in, cols, bits, 128, packed, scales, biases, sdt, 1); break;
    }
}
