/* kernels_avx512.c — AVX-512 instantiation of simd_tmpl.h (16 floats a vector). */
#if defined(__x86_64__)
#include <immintrin.h>

typedef __m512 V;
#define VL 16
#define VZERO() _mm512_setzero_ps()
#define VSET1(s) _mm512_set1_ps(s)
#define VFMA(a, b, c) _mm512_fmadd_ps(a, b, c)
#define VLOADF(p) _mm512_loadu_ps(p)
#define VSTOREF(p, v) _mm512_storeu_ps(p, v)
#define VLOAD_BF16(p) \
    _mm512_castsi512_ps(_mm512_slli_epi32(_mm512_cvtepu16_epi32(_mm256_loadu_si256((const __m256i *)(p))), 16))
#define VLOAD_F16(p) _mm512_cvtph_ps(_mm256_loadu_si256((const __m256i *)(p)))
#define VREDUCE(v) _mm512_reduce_add_ps(v)

#include "simd_tmpl.h"
#include "kv_tmpl.h"

static const cpu_kernels k_avx512 = {"avx512", {mm_f32, mm_f16, mm_bf16}, dot_v, axpy_v,
    .kv_dot = {kv_dot8_v, kv_dot4_v}, .kv_axpy = {kv_axpy8_v, kv_axpy4_v}};
const cpu_kernels *cpu_kernels_avx512(void) { return &k_avx512; }
#else
#include "kernels.h"
const cpu_kernels *cpu_kernels_avx512(void) { return 0; }
#endif
