/* kernels_avx2.c — AVX2 + FMA + F16C instantiation of simd_tmpl.h (8 floats a vector). */
#if defined(__x86_64__)
#include <immintrin.h>

typedef __m256 V;
#define VL 8
#define VZERO() _mm256_setzero_ps()
#define VSET1(s) _mm256_set1_ps(s)
#define VFMA(a, b, c) _mm256_fmadd_ps(a, b, c)
#define VLOADF(p) _mm256_loadu_ps(p)
#define VSTOREF(p, v) _mm256_storeu_ps(p, v)
#define VLOAD_BF16(p) \
    _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(_mm_loadu_si128((const __m128i *)(p))), 16))
#define VLOAD_F16(p) _mm256_cvtph_ps(_mm_loadu_si128((const __m128i *)(p)))

static inline float vreduce(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}
#define VREDUCE(v) vreduce(v)

#include "simd_tmpl.h"
#include "kv_tmpl.h"

static const cpu_kernels k_avx2 = {"avx2", {mm_f32, mm_f16, mm_bf16}, dot_v, axpy_v,
    .kv_dot = {kv_dot8_v, kv_dot4_v}, .kv_axpy = {kv_axpy8_v, kv_axpy4_v}};
const cpu_kernels *cpu_kernels_avx2(void) { return &k_avx2; }
#else
#include "kernels.h"
const cpu_kernels *cpu_kernels_avx2(void) { return 0; }
#endif
