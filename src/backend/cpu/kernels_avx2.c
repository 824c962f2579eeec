/* kernels_avx2.c — AVX2 + FMA + F16C instantiation of simd_tmpl.h (8 floats a vector). */
#if defined(__x86_64__)
#include <immintrin.h>
#include <string.h>

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
#define VADD(a, b) _mm256_add_ps(a, b)
#define VMUL(a, b) _mm256_mul_ps(a, b)

/* integer words of simd_quant.h */
typedef __m256i VI;
#define VI_SET1(i) _mm256_set1_epi32(i)
#define VI_AND(a, b) _mm256_and_si256(a, b)
#define VI_SRLI(a, n) _mm256_srli_epi32(a, n)
#define VI_SRLV(a, n) _mm256_srlv_epi32(a, n)
#define VI_LOADU(p) _mm256_loadu_si256((const __m256i *)(p))
#define VI_TOF(a) _mm256_cvtepi32_ps(a)
#define VI_U8(p) _mm256_cvtepu8_epi32(_mm_loadl_epi64((const __m128i *)(p)))
#define VLUT_BITS 3
#define QPT 3 /* prompt tile 4x3: 12 sums + 3 inputs + a weight fit the 16 registers */
#define VLUT(idx, tab) _mm256_permutevar8x32_ps(tab, idx)
#define VI_SHUFB(a, c) _mm256_shuffle_epi8(a, c)
#define QB 8
static inline __m256i bcast8(const void *p) {
    long long v;
    memcpy(&v, p, 8);
    return _mm256_set1_epi64x(v);
}
#define VI_BCASTQ(p) bcast8(p)

static inline void vdeint(const float *p, float *even, float *odd) {
    __m256 a = _mm256_loadu_ps(p), b = _mm256_loadu_ps(p + 8);
    /* [a0 a2 b0 b2 | a4 a6 b4 b6], then 64-bit pairs reordered to a0 a2 a4 a6 b0 b2 b4 b6 */
    __m256 e = _mm256_shuffle_ps(a, b, 0x88), o = _mm256_shuffle_ps(a, b, 0xdd);
    _mm256_storeu_ps(even, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(e), 0xd8)));
    _mm256_storeu_ps(odd, _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(o), 0xd8)));
}

#include "simd_tmpl.h"
#include "kv_tmpl.h"

static const cpu_kernels k_avx2 = {
    "avx2", {mm_f32, mm_f16, mm_bf16, mm_q2, mm_q3, mm_q4, mm_q5, mm_q6, mm_q8}, dot_v, axpy_v,
    .kv_dot = {kv_dot8_v, kv_dot4_v}, .kv_axpy = {kv_axpy8_v, kv_axpy4_v}};
const cpu_kernels *cpu_kernels_avx2(void) { return &k_avx2; }
#else
#include "kernels.h"
const cpu_kernels *cpu_kernels_avx2(void) { return 0; }
#endif
