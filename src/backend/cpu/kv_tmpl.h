/* kv_tmpl.h — attention kernels over a quantized KV cache (kv_cache in
 * backend.h), written once and compiled per instruction set: kernels_avx2.c,
 * kernels_avx512.c and kernels_neon.c include it after simd_tmpl.h, whose
 * vector vocabulary (V, VL, VZERO, VSET1, VFMA, VLOADF, VSTOREF, VREDUCE) it
 * uses, and put kv_dot8_v / kv_dot4_v / kv_axpy8_v / kv_axpy4_v in their tables.
 *
 * Keys: the scalar reference dequantizes each element before the product;
 * here the affine form is factored out of the sum, per group g
 *     q . k_g = scale[g] * (q_g . kq_g) + bias[g] * qsum[g]
 * so an element costs one widening load and one FMA, and the per-group scale
 * is applied to a whole vector of partial sums (one reduction per head).
 * Values: a group is dequantized in registers, y += a * (scale * vq + bias).
 * Groups that are not a whole number of vectors (head dims 8, 16, 24 on
 * AVX-512) finish in scalar code. The widening loads are the one part per ISA.
 */
#include <stdint.h>
#include <string.h>

#include "kernels.h"

/* VL unsigned values as floats: 8-bit from VL bytes, 4-bit from VL/2 bytes
 * (low nibble first). Reads only those bytes. */
#if VL == 16
#define KV_WIDEN(b) _mm512_cvtepi32_ps(_mm512_cvtepu8_epi32(b))
#define KV_BYTES(p) _mm_loadu_si128((const __m128i *)(p))  /* VL bytes */
#define KV_HALF(p) _mm_loadl_epi64((const __m128i *)(p))   /* VL/2 bytes */
#elif VL == 8
static inline __attribute__((always_inline)) __m128i kv_bytes4(const unsigned char *p) {
    int32_t w;
    memcpy(&w, p, 4);
    return _mm_cvtsi32_si128(w);
}
#define KV_WIDEN(b) _mm256_cvtepi32_ps(_mm256_cvtepu8_epi32(b))
#define KV_BYTES(p) _mm_loadl_epi64((const __m128i *)(p))
#define KV_HALF(p) kv_bytes4(p)
#elif VL == 4 && defined(__ARM_NEON)
/* 4 values: the 4 or 2 bytes in lane 0, widened to 16 then 32 bits */
static inline __attribute__((always_inline)) uint8x8_t kv_bytes(const unsigned char *p, int n) {
    uint32_t w = 0;
    memcpy(&w, p, (size_t)n);
    return vreinterpret_u8_u32(vdup_n_u32(w));
}
static inline __attribute__((always_inline)) V kv_widen(uint8x8_t b) {
    return vcvtq_f32_u32(vmovl_u16(vget_low_u16(vmovl_u8(b))));
}
static inline __attribute__((always_inline)) V kv_load8(const unsigned char *p) { return kv_widen(kv_bytes(p, 4)); }
static inline __attribute__((always_inline)) V kv_load4(const unsigned char *p) {
    uint8x8_t x = kv_bytes(p, 2);
    return kv_widen(vzip1_u8(vand_u8(x, vdup_n_u8(0x0f)), vshr_n_u8(x, 4))); /* lo0 hi0 lo1 hi1 */
}
#else
#error "kv_tmpl.h: VL must be 8 or 16 (x86), or 4 (NEON)"
#endif

#if VL >= 8
static inline __attribute__((always_inline)) V kv_load8(const unsigned char *p) { return KV_WIDEN(KV_BYTES(p)); }
static inline __attribute__((always_inline)) V kv_load4(const unsigned char *p) {
    __m128i x = KV_HALF(p), m = _mm_set1_epi8(0x0f);
    return KV_WIDEN(_mm_unpacklo_epi8(_mm_and_si128(x, m), _mm_and_si128(_mm_srli_epi16(x, 4), m)));
}
#endif

/* VL values of a packed row starting at value index j (a multiple of VL) */
static inline __attribute__((always_inline)) V kv_load(int bits, const unsigned char *row, int j) {
    return bits == 8 ? kv_load8(row + j) : kv_load4(row + j / 2);
}

static inline __attribute__((always_inline)) float kv_dot_any(int bits, const float *q, const float *qsum,
                                                               const unsigned char *k, const float *scale,
                                                               const float *bias, int hd, int group) {
    V acc = VZERO(); /* sum over groups of scale[g] * (q_g . kq_g), lane-wise */
    float tail = 0;  /* the rest: bias terms and elements past the last whole vector of a group */
    int gv = group / VL * VL;
    for (int g0 = 0, gi = 0; g0 < hd; g0 += group, gi++) {
        float s = scale[gi];
        if (gv) {
            V a = VZERO();
            for (int j = g0; j < g0 + gv; j += VL) a = VFMA(VLOADF(q + j), kv_load(bits, k, j), a);
            acc = VFMA(VSET1(s), a, acc);
        }
        float r = 0;
        for (int j = g0 + gv; j < g0 + group; j++) r += q[j] * (float)quant_at(k, bits, j);
        tail += s * r + bias[gi] * qsum[gi];
    }
    return VREDUCE(acc) + tail;
}

static inline __attribute__((always_inline)) void kv_axpy_any(int bits, float *y, float a, const unsigned char *v,
                                                               const float *scale, const float *bias, int hd,
                                                               int group) {
    V av = VSET1(a);
    int gv = group / VL * VL;
    for (int g0 = 0, gi = 0; g0 < hd; g0 += group, gi++) {
        V sv = VSET1(scale[gi]), bv = VSET1(bias[gi]);
        for (int j = g0; j < g0 + gv; j += VL) VSTOREF(y + j, VFMA(av, VFMA(sv, kv_load(bits, v, j), bv), VLOADF(y + j)));
        for (int j = g0 + gv; j < g0 + group; j++) y[j] += a * (scale[gi] * (float)quant_at(v, bits, j) + bias[gi]);
    }
}

static float kv_dot8_v(const float *q, const float *qsum, const unsigned char *k, const float *scale,
                       const float *bias, int hd, int group) {
    return kv_dot_any(8, q, qsum, k, scale, bias, hd, group);
}
static float kv_dot4_v(const float *q, const float *qsum, const unsigned char *k, const float *scale,
                       const float *bias, int hd, int group) {
    return kv_dot_any(4, q, qsum, k, scale, bias, hd, group);
}
static void kv_axpy8_v(float *y, float a, const unsigned char *v, const float *scale, const float *bias, int hd,
                       int group) {
    kv_axpy_any(8, y, a, v, scale, bias, hd, group);
}
static void kv_axpy4_v(float *y, float a, const unsigned char *v, const float *scale, const float *bias, int hd,
                       int group) {
    kv_axpy_any(4, y, a, v, scale, bias, hd, group);
}
