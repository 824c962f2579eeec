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
#define VADD(a, b) _mm512_add_ps(a, b)
#define VMUL(a, b) _mm512_mul_ps(a, b)

/* integer words of simd_quant.h */
typedef __m512i VI;
#define VI_SET1(i) _mm512_set1_epi32(i)
#define VI_AND(a, b) _mm512_and_si512(a, b)
#define VI_SRLI(a, n) _mm512_srli_epi32(a, n)
#define VI_SRLV(a, n) _mm512_srlv_epi32(a, n)
#define VI_LOADU(p) _mm512_loadu_si512(p)
#define VI_TOF(a) _mm512_cvtepi32_ps(a)
#define VI_U8(p) _mm512_cvtepu8_epi32(_mm_loadu_si128((const __m128i *)(p)))
#define VLUT_BITS 4
#define VLUT(idx, tab) _mm512_permutexvar_ps(idx, tab)
#define VI_SHUFB(a, c) _mm512_shuffle_epi8(a, c)
#define QB 16
#define VI_BCASTQ(p) _mm512_broadcast_i32x4(_mm_loadu_si128((const __m128i *)(p)))

static inline void vdeint(const float *p, float *even, float *odd) {
    const __m512i ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i io = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
    __m512 a = _mm512_loadu_ps(p), b = _mm512_loadu_ps(p + 16);
    _mm512_storeu_ps(even, _mm512_permutex2var_ps(a, ie, b));
    _mm512_storeu_ps(odd, _mm512_permutex2var_ps(a, io, b));
}

#include "simd_tmpl.h"
#include "kv_tmpl.h"

static const cpu_kernels k_avx512 = {
    "avx512", {mm_f32, mm_f16, mm_bf16, mm_q2, mm_q3, mm_q4, mm_q5, mm_q6, mm_q8}, dot_v, axpy_v,
    .kv_dot = {kv_dot8_v, kv_dot4_v}, .kv_axpy = {kv_axpy8_v, kv_axpy4_v}};
const cpu_kernels *cpu_kernels_avx512(void) { return &k_avx512; }

/* avx512 with Q4/Q8 decode on int8-rounded inputs (simd_vnni.h): auto's pick where the CPU has VNNI */
#include "simd_vnni.h"
static const cpu_kernels k_avx512_vnni = {
    "avx512vnni", {mm_f32, mm_f16, mm_bf16, mm_q2, mm_q3, mm_q4_vnni, mm_q5, mm_q6, mm_q8_vnni}, dot_v, axpy_v,
    .kv_dot = {kv_dot8_v, kv_dot4_v}, .kv_axpy = {kv_axpy8_v, kv_axpy4_v},
    .dec = {[WF_Q4] = {vn_dec_bytes, mm_q4_vnni_prep, mm_q4_vnni_dmm},
            [WF_Q8] = {vn_dec_bytes, mm_q8_vnni_prep, mm_q8_vnni_dmm}}};
const cpu_kernels *cpu_kernels_avx512_vnni(void) { return &k_avx512_vnni; }
#else
#include "kernels.h"
const cpu_kernels *cpu_kernels_avx512(void) { return 0; }
const cpu_kernels *cpu_kernels_avx512_vnni(void) { return 0; }
#endif
