/* kernels_neon.c — AArch64 Advanced SIMD (NEON) instantiation of simd_tmpl.h
 * (4 floats a vector). NEON is part of every AArch64 CPU, so this table is
 * auto's pick there; CMake compiles this file instead of the x86 ones.
 *
 * The vocabulary maps onto NEON directly, with these choices: F16 weights
 * convert with vcvt_f32_f16 (FCVTL, exact like F16C), BF16 ones by a widening
 * shift; simd_quant.h's byte shuffle is TBL (an index past the table gives 0,
 * as pshufb's 0x80 does); NEON shifts by a vector only to the left, so a
 * right shift by n is a left shift by -n (the negation is of a loop
 * constant). There is no table lookup of weights (VLUT_BITS 0): on 4 lanes
 * the index arithmetic a TBL lookup needs costs more than the mask,
 * conversion and FMA it would save. Correctness is tested under
 * qemu-aarch64 (tools/test_neon.sh); the speed is not measured. */
#if !defined(__aarch64__)
#error "kernels_neon.c is for AArch64 (CMake compiles it only there)"
#endif
#include <arm_neon.h>
#include <string.h>

typedef float32x4_t V;
#define VL 4
#define VZERO() vdupq_n_f32(0.0f)
#define VSET1(s) vdupq_n_f32(s)
#define VFMA(a, b, c) vfmaq_f32(c, a, b)
#define VLOADF(p) vld1q_f32(p)
#define VSTOREF(p, v) vst1q_f32(p, v)
#define VLOAD_BF16(p) vreinterpretq_f32_u32(vshll_n_u16(vld1_u16(p), 16))
#define VLOAD_F16(p) vcvt_f32_f16(vreinterpret_f16_u16(vld1_u16(p)))
#define VREDUCE(v) vaddvq_f32(v)
#define VADD(a, b) vaddq_f32(a, b)
#define VMUL(a, b) vmulq_f32(a, b)

/* integer words of simd_quant.h */
typedef uint32x4_t VI;
#define VI_SET1(i) vdupq_n_u32((uint32_t)(i))
#define VI_AND(a, b) vandq_u32(a, b)
#define VI_SRLI(a, n) vshrq_n_u32(a, n)
#define VI_SRLV(a, n) vshlq_u32(a, vnegq_s32(vreinterpretq_s32_u32(n)))
#define VI_LOADU(p) vreinterpretq_u32_u8(vld1q_u8((const uint8_t *)(p)))
#define VI_TOF(a) vcvtq_f32_u32(a)
#define VI_SHUFB(a, c) vreinterpretq_u32_u8(vqtbl1q_u8(vreinterpretq_u8_u32(a), vreinterpretq_u8_u32(c)))
#define QB 4
/* The 4 bytes at p (any alignment) in each 32-bit lane. */
static inline __attribute__((always_inline)) uint32x4_t bcast4(const void *p) {
    uint32_t w;
    memcpy(&w, p, 4);
    return vdupq_n_u32(w);
}
#define VI_BCASTQ(p) bcast4(p)
/* 4 bytes zero-extended to 4 int32 lanes; reads only those bytes */
#define VI_U8(p) vmovl_u16(vget_low_u16(vmovl_u8(vreinterpret_u8_u32(vget_low_u32(bcast4(p))))))
#define VLUT_BITS 0
#define VLUT(idx, tab) ((void)(idx), (tab)) /* never reached: QLUT(bits) is false for every width */

static inline void vdeint(const float *p, float *even, float *odd) {
    float32x4x2_t v = vld2q_f32(p);
    vst1q_f32(even, v.val[0]);
    vst1q_f32(odd, v.val[1]);
}

#include "simd_tmpl.h"
#include "kv_tmpl.h"

static const cpu_kernels k_neon = {
    "neon", {mm_f32, mm_f16, mm_bf16, mm_q2, mm_q3, mm_q4, mm_q5, mm_q6, mm_q8}, dot_v, axpy_v,
    .kv_dot = {kv_dot8_v, kv_dot4_v}, .kv_axpy = {kv_axpy8_v, kv_axpy4_v}};
const cpu_kernels *cpu_kernels_neon(void) { return &k_neon; }
