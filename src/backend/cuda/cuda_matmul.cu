/* cuda_matmul.cu — matmuls on weights in their stored format (backend.h's
 * wfmt), the CUDA side of be_matmul, be_matmul_swiglu, be_moe_decode and
 * be_embed.
 *
 * Two kernels carry the work, each templated on the weight format so that the
 * unpacking compiles to straight-line code:
 *
 * - mv_kernel, matrix x vector (decode, n <= MV_MAX_N tokens). Weight-read
 *   bound, so every warp streams R = 4 weight rows at 16 bytes (a "chunk") per
 *   lane per step, and each x value it loads serves those 4 rows. A chunk is
 *   the values of 16 bytes (F32 4, F16/BF16 8, Q8 16, Q4 32) or, for the odd
 *   widths, 32 values (Q2 8 bytes, Q3 12, Q5 20, Q6 24); 32 divides every group,
 *   so a chunk has one scale and one bias, and a quantized chunk's dot product
 *   is s * sum(q x) + b * sum(x), exactly the sum of (s q + b) x, with q
 *   turned into a float by the 2^23 trick (no integer conversion instruction).
 *   Arithmetic is float32 throughout; only the order of the sum differs
 *   from the scalar reference. Where rows are few, ks warps split a row set's
 *   columns and meet in shared memory, so that every SM has warps to stream.
 *   The same kernel runs one weight, a fused gate/up pair (SwiGLU: 2 gate and 2
 *   up rows a warp, only silu(g) * u written), or up to MOE_DEC_MAX experts of
 *   one MoE layer in one launch (a table of segments, one per expert).
 *   x sits in shared memory (swizzled, see x_swz) where n x cols fits in
 *   160 KiB, else is read from global memory. Measured on an H100 (bench/
 *   cuda_mm.cu): BF16 70-74% of peak bandwidth on 7B shapes, 80% fused
 *   SwiGLU; in float32, Q8 ~63%, Q4 ~40%: bound by unpacking (~3.5
 *   instructions a Q4 value), not by HBM.
 *
 * - xq_kernel + mvq_kernel, the same for Q4 and Q8 on int8 activations (the
 *   default for n <= MV_MAX_N; MOE_CUDA_FLOAT_DECODE=1 keeps mv_kernel): x
 *   rounded once per call into the context's scratch, dot products by dp4a
 *   (~0.5 instructions a Q4 value); numerics and layout at xq_kernel. The two
 *   launch with programmatic dependent launch (sm_90), so that weight loads
 *   start before x is ready. Measured: Q4 59-65% of peak on 14336x4096 and
 *   4096x14336, SwiGLU 69%, Mixtral MoE decode 71%; Q8 71-75%, 76%, 78%.
 *
 * - tc_kernel, matrix x matrix (prompts, n > MV_MAX_N) on tensor cores:
 *   mma.sync m16n8k16 with float16 operands and float32 accumulation over
 *   tiles of 128 weight rows x 128 tokens x 64 columns, double-buffered in
 *   shared memory. Weights are dequantized on the fly, tile by tile, into
 *   shared memory (never a 16-bit copy of a weight; Q4/Q8 in half2, see
 *   q4_h8); activations are rounded to float16 once per call (tc_xh_kernel,
 *   saturated at +-65504, n x cols x 2 bytes of the context's scratch) and
 *   copied into their tiles by cp.async. Measured on an H100: 170-230 TFLOP/s
 *   at 512 tokens, 210-280 at 4096 (Q4, Q8, BF16 on 7B shapes), where the
 *   kernel that converted both operands in every block ran 80-98. float16, not bf16: its unit roundoff u = 2^-11 is
 *   8 times smaller, which the small test models showed to matter (bf16
 *   operands moved their prompt logits by up to 39% RMS where a recurrent
 *   state or a router near-tie amplified it; float16 keeps them near 5%), and
 *   the range a model's matmul inputs and weights use fits. Each product w*x
 *   carries a relative error of at most 2u + u^2, and as these errors are
 *   independent and of either sign, an output's error is about
 *   u * sqrt(sum_k (w_k x_k)^2) (tests/test_cuda_mm.c holds it to
 *   8 u_bf16 sqrt(sum (w x)^2), a bound float16 meets with room). F32 weights skip this path (their
 *   user asked for float32): their prompts run mv_kernel 8 tokens at a time.
 *
 * Either kernel needs aligned weights (data and row_bytes multiples of the
 * chunk's load width: 16 bytes for F32/F16/BF16/Q4/Q8, 8 for Q2/Q6, 4 for
 * Q3/Q5) and x rows at 16-byte boundaries (x 16-byte aligned, cols % 4 == 0);
 * tc_kernel also cols % 32 == 0. Anything else (never a weight placed by
 * cuda_upload into cudaMalloc'd memory with an MLX layout, but possible for a
 * float weight of odd width) runs mv_generic, one element at a time: correct
 * and slow.
 */
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_internal.h"

#define MV_MAX_N 8   /* most tokens mv_kernel takes in one launch */
#define MV_WARPS 8   /* warps of an mv_kernel block */
#define MV_R 4       /* weight rows a warp streams together */
#ifndef MV_MIN_BLOCKS
#define MV_MIN_BLOCKS 2 /* blocks an SM should hold in one-token decode (caps registers at 128; 3 spilled, 1 was slower) */
#endif
#define TC_BM 128    /* tc_kernel: weight rows (shared-memory rows) of a block */
#define TC_BN 128    /* tokens of a block */
#define TC_BK 64     /* columns per step */
#define TC_LDS (TC_BK + 8) /* shared row stride in bf16: 144 bytes, so ldmatrix's 8 rows hit distinct banks */

/* One weight's part of a launch, as the device reads it: for SwiGLU the gate
 * (t = 0) and up (t = 1) tensors, same shape, format, group and scale format. */
typedef struct mm_seg {
    const uint8_t *w[2], *s[2], *b[2]; /* values, scales, biases (dev) */
    size_t row_bytes[2], sb_row_bytes[2];
    int64_t rows, cols;
    const float *x;     /* [n x ldx] (dev) */
    float *y;           /* [n x ldy] (dev) */
    const float *bias;  /* [rows] or NULL (dev) */
    int64_t ldx, ldy;
    int group, gshift, sfmt; /* gshift = log2(group): a 64-bit division per chunk cost more than the chunk */
    /* int8 path (mvq_kernel): x rounded by xq_kernel, n tokens of xq_ld bytes
     * (dev, scratch); xq_own: this segment's x is rounded here, not by an
     * earlier segment with the same x */
    uint8_t *xq;
    int64_t xq_ld;
    int xq_own;
    const uint16_t *xh; /* tc path: x in float16 by tc_xh_kernel, [n x cols] (dev, scratch) */
} mm_seg;

/* An mv_kernel launch: one segment by value (tab NULL) or nseg of them staged
 * to the device. Work is dealt in groups of MV_WARPS / ks row sets (a set is
 * MV_R / (1 + swiglu) output rows), a segment's first at group first[i], so
 * that a group lies in one segment; first[nseg] is the total. xq > 0: blocks
 * hold the x rows of their segment in shared memory, xq float4s a token. */
typedef struct mv_args {
    mm_seg one;
    const mm_seg *tab;
    int nseg, ks, n, xq;
    int first[MOE_DEC_MAX + 1];
} mv_args;

/* ------------------------------------------------------- weight formats -- */

/* The chunk of format F: VC values in WORDS 32-bit words, loaded ALIGN bytes
 * at a time. */
template <int F> struct fmt_traits {
    static constexpr int BITS = F == WF_F32 ? 32 : F == WF_F16 || F == WF_BF16 ? 16 : F == WF_Q2 ? 2 : F == WF_Q3 ? 3
                              : F == WF_Q4 ? 4 : F == WF_Q5 ? 5 : F == WF_Q6 ? 6 : 8;
    static constexpr bool QUANT = F >= WF_Q2;
    static constexpr int VC = BITS >= 8 || BITS == 4 ? 128 / BITS : 32;
    static constexpr int WORDS = VC * BITS / 32;
    static constexpr int ALIGN = WORDS % 4 == 0 ? 16 : WORDS % 2 == 0 ? 8 : 4;
};

/* Loads chunk c of a row. Weights are read once per call: streamed past L1 (ld.global.cs). */
template <int F> __device__ __forceinline__ void chunk_load(const uint8_t *row, int64_t c, uint32_t *w) {
    typedef fmt_traits<F> T;
    const uint8_t *p = row + c * (T::WORDS * 4);
    if constexpr (T::ALIGN == 16) {
#pragma unroll
        for (int i = 0; i < T::WORDS / 4; i++) {
            uint4 v = __ldcs((const uint4 *)p + i);
            w[4 * i] = v.x, w[4 * i + 1] = v.y, w[4 * i + 2] = v.z, w[4 * i + 3] = v.w;
        }
    } else if constexpr (T::ALIGN == 8) {
#pragma unroll
        for (int i = 0; i < T::WORDS / 2; i++) {
            uint2 v = __ldcs((const uint2 *)p + i);
            w[2 * i] = v.x, w[2 * i + 1] = v.y;
        }
    } else {
#pragma unroll
        for (int i = 0; i < T::WORDS; i++) w[i] = __ldcs((const unsigned *)p + i);
    }
}

/* An integer 0..255 as a float: 2^23 + q has q in its low mantissa bits. */
__device__ __forceinline__ float q_float(uint32_t bits) { return __uint_as_float(bits | 0x4b000000u) - 8388608.0f; }

/* Values 4j .. 4j+3 of a loaded chunk as floats: the weights of a float
 * format, the unsigned integers q of a quantized one. j must be a constant
 * after unrolling. */
template <int F> __device__ __forceinline__ void chunk_get4(const uint32_t *w, int j, float *q) {
    typedef fmt_traits<F> T;
    if constexpr (F == WF_F32) {
#pragma unroll
        for (int i = 0; i < 4; i++) q[i] = __uint_as_float(w[i]);
    } else if constexpr (F == WF_BF16) {
#pragma unroll
        for (int i = 0; i < 2; i++) {
            q[2 * i] = __uint_as_float(w[2 * j + i] << 16);
            q[2 * i + 1] = __uint_as_float(w[2 * j + i] & 0xffff0000u);
        }
    } else if constexpr (F == WF_F16) {
#pragma unroll
        for (int i = 0; i < 2; i++) {
            float2 f = __half22float2(*(const __half2 *)&w[2 * j + i]);
            q[2 * i] = f.x, q[2 * i + 1] = f.y;
        }
    } else if constexpr (F == WF_Q8) {
        /* byte i of word j into the low byte of 0x4b000000 */
#pragma unroll
        for (int i = 0; i < 4; i++) q[i] = __uint_as_float(__byte_perm(w[j], 0x4b000000u, 0x7650 + i)) - 8388608.0f;
    } else if constexpr (F == WF_Q4) {
        /* nibbles 4(j%2) .. +3 of word j/2: the even ones are the bytes of
         * w & 0x0f0f0f0f, the odd ones those of (w >> 4) & 0x0f0f0f0f */
        uint32_t x = w[j / 2], lo = x & 0x0f0f0f0fu, hi = (x >> 4) & 0x0f0f0f0fu;
        int b = (j % 2) * 2;
        q[0] = __uint_as_float(__byte_perm(lo, 0x4b000000u, 0x7650 + b)) - 8388608.0f;
        q[1] = __uint_as_float(__byte_perm(hi, 0x4b000000u, 0x7650 + b)) - 8388608.0f;
        q[2] = __uint_as_float(__byte_perm(lo, 0x4b000000u, 0x7651 + b)) - 8388608.0f;
        q[3] = __uint_as_float(__byte_perm(hi, 0x4b000000u, 0x7651 + b)) - 8388608.0f;
    } else {
        /* 2, 3, 5, 6 bits: value v at bit v*BITS of the chunk, possibly across two words */
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const int bit = (4 * j + i) * T::BITS, wi = bit / 32, sh = bit % 32;
            uint32_t v = sh + T::BITS <= 32 ? w[wi] >> sh : __funnelshift_r(w[wi], w[wi + 1], sh);
            q[i] = q_float(v & ((1u << T::BITS) - 1));
        }
    }
}

/* Scale or bias g of a row in format sfmt (F32, F16 or BF16), in two steps:
 * sb_load issues one unconditional 32-bit load (the aligned word holding a
 * 16-bit value; its half in bit 1 of the address), sb_value converts it where
 * it is used. A load whose result is converted at once, inside a branch on
 * sfmt, made each of a chunk's 8 scale loads wait for the one before. */
typedef struct sb_raw {
    uint32_t w, sh;
} sb_raw;
__device__ __forceinline__ sb_raw sb_load(const uint8_t *p, int sfmt, int64_t g) {
    uintptr_t a = (uintptr_t)(p + (g << (sfmt == WF_F32 ? 2 : 1)));
    sb_raw r = {__ldg((const unsigned *)(a & ~(uintptr_t)3)), (uint32_t)(a & 2) * 8};
    return r;
}
__device__ __forceinline__ float sb_value(sb_raw r, int sfmt) {
    if (sfmt == WF_F32) return __uint_as_float(r.w);
    uint32_t h = (r.w >> r.sh) & 0xffffu;
    return sfmt == WF_BF16 ? __uint_as_float(h << 16) : __half2float(__ushort_as_half((unsigned short)h));
}

/* Element k of a row of any format, from bytes (no alignment needed): the
 * device twin of wtensor_at, for mv_generic and cuda_embed. */
__device__ float elem_at(int fmt, const uint8_t *row, const uint8_t *s, const uint8_t *b, int sfmt, int group,
                         int64_t k) {
    if (fmt == WF_F32) {
        uint32_t u = row[4 * k] | row[4 * k + 1] << 8 | row[4 * k + 2] << 16 | (uint32_t)row[4 * k + 3] << 24;
        return __uint_as_float(u);
    }
    if (fmt == WF_F16 || fmt == WF_BF16) {
        unsigned short h = (unsigned short)(row[2 * k] | row[2 * k + 1] << 8);
        return fmt == WF_BF16 ? __uint_as_float((uint32_t)h << 16) : __half2float(__ushort_as_half(h));
    }
    int bits = fmt == WF_Q8 ? 8 : fmt - WF_Q2 + 2;
    int64_t bit = k * bits;
    uint32_t v = row[bit >> 3], sh = (uint32_t)(bit & 7);
    if (sh + bits > 8) v |= (uint32_t)row[(bit >> 3) + 1] << 8;
    float q = (float)((v >> sh) & ((1u << bits) - 1));
    int64_t g = k / group;
    float sc, bi;
    if (sfmt == WF_F32) {
        memcpy(&sc, s + 4 * g, 4), memcpy(&bi, b + 4 * g, 4);
    } else {
        unsigned short hs, hb;
        memcpy(&hs, s + 2 * g, 2), memcpy(&hb, b + 2 * g, 2);
        sc = sfmt == WF_BF16 ? __uint_as_float((uint32_t)hs << 16) : __half2float(__ushort_as_half(hs));
        bi = sfmt == WF_BF16 ? __uint_as_float((uint32_t)hb << 16) : __half2float(__ushort_as_half(hb));
    }
    return __fadd_rn(__fmul_rn(sc, q), bi); /* two roundings, as wtensor_at: cuda_embed gives its exact values */
}

__device__ __forceinline__ float silu_mul(float g, float u) { return g / (1.0f + expf(-g)) * u; }

/* --------------------------------------------------- matrix x vector -- */

/* Where float4 q of an x row lies in shared memory: within each 8 float4s
 * (128 bytes, all the banks) q is XORed with q / 8, so that lanes reading
 * float4 L * VC/4 + j (their own chunk; VC/4 = 1, 2, 4 or 8) meet 8 distinct
 * bank groups in each quarter warp, never the same one. */
__device__ __forceinline__ int x_swz(int q) { return q ^ ((q >> 3) & 7); }

/* The MV_R rows of the set starting at output row r0: values, scales and
 * biases (SwiGLU: MV_R/2 gate rows, then as many up rows). */
template <bool SWI>
__device__ __forceinline__ void mv_rows(const mm_seg &s, int64_t r0, const uint8_t **row, const uint8_t **sr,
                                        const uint8_t **br) {
    constexpr int RP = SWI ? MV_R / 2 : MV_R;
#pragma unroll
    for (int i = 0; i < MV_R; i++) {
        const int ten = i / RP;
        int64_t r = r0 + i % RP;
        r = r < s.rows ? r : s.rows - 1; /* a ragged set recomputes the last row, never stores it */
        row[i] = s.w[ten] + r * s.row_bytes[ten];
        sr[i] = s.s[ten] + r * s.sb_row_bytes[ten];
        br[i] = s.b[ten] + r * s.sb_row_bytes[ten];
    }
}

/* The end of a row set's work, for mv_kernel and mvq_kernel: each lane's
 * sums acc[row][token] reduced over the warp, then over the ks warps of the
 * set (through red, the block's [MV_WARPS][MV_R * NT]; every warp of the block
 * must call it, as it may __syncthreads), and warp kp = 0 stores the outputs:
 * + bias, or silu(gate) * up for SwiGLU (rows RP.. of acc are the up rows). */
template <int NT, bool SWI>
__device__ __forceinline__ void mv_finish(float (&acc)[MV_R][NT], float (*red)[MV_R * NT], const mm_seg &s,
                                          int64_t r0, bool live, int n, int ks, int kp) {
    constexpr int RP = SWI ? MV_R / 2 : MV_R;
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
#pragma unroll
    for (int i = 0; i < MV_R; i++)
#pragma unroll
        for (int t = 0; t < NT; t++)
#pragma unroll
            for (int o = 16; o > 0; o >>= 1) acc[i][t] += __shfl_xor_sync(0xffffffffu, acc[i][t], o);
    if (ks > 1) { /* warps kp = 1 .. ks-1 hand their sums to warp kp = 0 of their set */
        if (lane == 0)
#pragma unroll
            for (int i = 0; i < MV_R; i++)
#pragma unroll
                for (int t = 0; t < NT; t++) red[warp][i * NT + t] = acc[i][t];
        __syncthreads();
        if (kp == 0)
            for (int p = 1; p < ks; p++)
#pragma unroll
                for (int i = 0; i < MV_R; i++)
#pragma unroll
                    for (int t = 0; t < NT; t++) acc[i][t] += red[warp + p][i * NT + t];
        __syncthreads(); /* red is free for the next group */
    }
    if (!live || kp != 0) return;
#pragma unroll
    for (int i = 0; i < RP; i++)
#pragma unroll
        for (int t = 0; t < NT; t++)
            if (lane == i * NT + t && t < n && r0 + i < s.rows) {
                float v = SWI ? silu_mul(acc[i][t], acc[i + RP][t]) : acc[i][t] + (s.bias ? s.bias[r0 + i] : 0.0f);
                s.y[t * s.ldy + r0 + i] = v;
            }
}

/* Row sets of MV_R rows (SwiGLU: MV_R/2 gate and as many up rows), ks warps a
 * set, MV_WARPS / ks sets a block per group, groups dealt grid-stride. F the
 * format, NT >= n the tokens. Each lane reads its chunks of x where the chunk
 * of weights is: from shared memory (a.xq > 0), conflict-free by x_swz, else
 * from global memory, where a warp's 16-byte reads at a chunk's stride cost
 * many L1 wavefronts (fine for F32/BF16, slow for Q4). */
template <int F, int NT, bool SWI>
__global__ void __launch_bounds__(MV_WARPS * 32, NT == 1 ? MV_MIN_BLOCKS : 1) mv_kernel(const mv_args a) {
    typedef fmt_traits<F> T;
    constexpr int RP = SWI ? MV_R / 2 : MV_R; /* output rows of a set */
    extern __shared__ float4 xsh[];           /* [NT][a.xq] swizzled */
    __shared__ float red[MV_WARPS][MV_R * NT];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, ks = a.ks, kp = warp % ks;
    const float *x_held = NULL;

    for (int grp = blockIdx.x; grp < a.first[a.nseg]; grp += gridDim.x) {
        int si = 0;
        while (si + 1 < a.nseg && a.first[si + 1] <= grp) si++;
        const mm_seg s = a.tab ? a.tab[si] : a.one;
        const int set = (grp - a.first[si]) * (MV_WARPS / ks) + warp / ks;
        const int64_t r0 = (int64_t)set * RP;
        const bool live = r0 < s.rows;
        if (a.xq && s.x != x_held) { /* block-uniform: the segment's x into shared memory */
            __syncthreads();
            const int q4 = (int)(s.cols / 4);
            for (int i = threadIdx.x; i < a.n * q4; i += blockDim.x) {
                int t = i / q4, q = i - t * q4;
                xsh[t * a.xq + x_swz(q)] = __ldg((const float4 *)(s.x + t * s.ldx) + q);
            }
            __syncthreads();
            x_held = s.x;
        }

        float acc[MV_R][NT];
#pragma unroll
        for (int i = 0; i < MV_R; i++)
#pragma unroll
            for (int t = 0; t < NT; t++) acc[i][t] = 0.0f;

        if (live) {
            const uint8_t *row[MV_R], *sr[MV_R], *br[MV_R];
            mv_rows<SWI>(s, r0, row, sr, br);
            const int nch = (int)(s.cols / T::VC);
            for (int c = kp * 32 + lane; c < nch; c += 32 * ks) {
                uint32_t w[MV_R][T::WORDS];
#pragma unroll
                for (int i = 0; i < MV_R; i++) chunk_load<F>(row[i], c, w[i]);
                sb_raw sc[MV_R], bi[MV_R];
                if (T::QUANT) {
                    const int g = (c * T::VC) >> s.gshift;
#pragma unroll
                    for (int i = 0; i < MV_R; i++) sc[i] = sb_load(sr[i], s.sfmt, g), bi[i] = sb_load(br[i], s.sfmt, g);
                }
                float d[MV_R][NT], xs[NT];
#pragma unroll
                for (int t = 0; t < NT; t++) {
                    xs[t] = 0.0f;
#pragma unroll
                    for (int i = 0; i < MV_R; i++) d[i][t] = 0.0f;
                }
#pragma unroll
                for (int j = 0; j < T::VC / 4; j++) {
                    float4 xv[NT];
                    const int q = c * (T::VC / 4) + j;
#pragma unroll
                    for (int t = 0; t < NT; t++) {
                        xv[t] = t >= a.n ? make_float4(0, 0, 0, 0)
                              : a.xq     ? xsh[t * a.xq + x_swz(q)]
                                         : __ldg((const float4 *)(s.x + t * s.ldx) + q);
                        if (T::QUANT) xs[t] += (xv[t].x + xv[t].y) + (xv[t].z + xv[t].w);
                    }
#pragma unroll
                    for (int i = 0; i < MV_R; i++) {
                        float qv[4];
                        chunk_get4<F>(w[i], j, qv);
#pragma unroll
                        for (int t = 0; t < NT; t++)
                            d[i][t] += qv[0] * xv[t].x + qv[1] * xv[t].y + qv[2] * xv[t].z + qv[3] * xv[t].w;
                    }
                }
#pragma unroll
                for (int i = 0; i < MV_R; i++)
#pragma unroll
                    for (int t = 0; t < NT; t++)
                        acc[i][t] += T::QUANT ? sb_value(sc[i], s.sfmt) * d[i][t] + sb_value(bi[i], s.sfmt) * xs[t]
                                              : d[i][t];
            }
            /* float formats whose cols are not a multiple of the chunk (rows padded beyond
             * their values): the rest one by one, from global memory */
            if (!T::QUANT)
                for (int64_t k = (int64_t)nch * T::VC + kp * 32 + lane; k < s.cols; k += 32 * ks)
#pragma unroll
                    for (int i = 0; i < MV_R; i++) {
                        float wv = elem_at(F, row[i], NULL, NULL, 0, 1, k);
#pragma unroll
                        for (int t = 0; t < NT; t++) acc[i][t] += t < a.n ? wv * s.x[t * s.ldx + k] : 0.0f;
                    }
        }

        mv_finish<NT, SWI>(acc, red, s, r0, live, a.n, ks, kp);
    }
}

/* ------------------------------------------ int8 activations (Q4, Q8) -- */

/* Q4 and Q8 decode on int8 activations. xq_kernel rounds each segment's x,
 * once per call, to int8 per block of 32 values (d = max|x| / 127, q =
 * rint(x / d) by x * (127 / max|x|), so |q| <= 127) into the context's
 * scratch; mvq_kernel then computes a chunk's (Q4 32 values, Q8 16; one
 * block or half of one, in one weight group) sum of q_w q_x in integers with
 * dp4a and adds s d isum + b xsum, xsum = d sum q_x the sum of the chunk's
 * rounded x (as the CPU's VNNI decode). So y = sum_k w_k x~_k, the weights
 * exactly and x~ = d q_x off x by at most d/2: the error against float32 is
 * sum_k |w_k| d/2 at most (tests/test_cuda_mm.c), the price of ~4x fewer
 * instructions a weight. (The original x's sum in the bias term would weigh
 * the rounding by s q_k instead of w_k = s q_k + b: q is 0..15, not centred,
 * which made the error ~1.8x larger on 4-bit weights.)
 *
 * Layout of a token's xq_ld bytes: XW = VC/16 planes of nch uint4 (chunk c of
 * plane p at p nch + c), then nch float2 (d, xsum). Q8: bytes in order. Q4:
 * chunk c's 8 words (even values 0,2,4,6 of 8, then odd 1,3,5,7, for each 8)
 * in two planes, so that w & 0x0f0f0f0f and w & 0xf0f0f0f0 (16x the odd
 * values) of a weight word meet theirs in one dp4a each, and a warp's lanes
 * read consecutive uint4s. */
template <int F> struct xq_traits {
    static constexpr int VC = fmt_traits<F>::VC, XW = VC / 16;
};

/* The int8 bytes of float bits f from fma(x, inv, 1.5 * 2^23) (their low byte: rint(x inv) in two's complement). */
__device__ __forceinline__ uint32_t pack4(uint32_t a, uint32_t b, uint32_t c, uint32_t d) {
    return __byte_perm(__byte_perm(a, b, 0x0040), __byte_perm(c, d, 0x0040), 0x5410);
}

/* Lets the dependent mvq_kernel (launched with programmatic stream
 * serialization) start, and, in it, waits for xq_kernel's results; no-ops
 * before sm_90 and without the launch attribute. */
__device__ __forceinline__ void pdl_launch_dependents() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

/* Thread i of grid row y rounds values 8i .. 8i+7 of segment y's x (tokens
 * back to back, cols / 8 threads a token; 4 lanes a block of 32 meet by
 * shuffles). Segments whose x an earlier one rounds do nothing. */
template <int F> __global__ void __launch_bounds__(256) xq_kernel(const mv_args a) {
    typedef xq_traits<F> X;
    pdl_launch_dependents();
    pdl_wait(); /* for whatever wrote x */
    const mm_seg &s = a.tab ? a.tab[blockIdx.y] : a.one;
    if (!s.xq_own) return;
    const int64_t per = s.cols / 8, i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    const bool live = i < a.n * per; /* whole 4-lane groups, as per % 4 == 0 */
    const int64_t t = live ? i / per : 0, k = live ? i - t * per : 0, b = k >> 2;
    const int m = (int)(k & 3), nch = (int)(s.cols / X::VC);
    float v[8];
    const float4 *xp = (const float4 *)(s.x + t * s.ldx) + 2 * k;
    float4 v0 = live ? __ldg(xp) : make_float4(0, 0, 0, 0), v1 = live ? __ldg(xp + 1) : make_float4(0, 0, 0, 0);
    v[0] = v0.x, v[1] = v0.y, v[2] = v0.z, v[3] = v0.w, v[4] = v1.x, v[5] = v1.y, v[6] = v1.z, v[7] = v1.w;
    float mx = 0.0f;
#pragma unroll
    for (int j = 0; j < 8; j++) mx = fmaxf(mx, fabsf(v[j]));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float inv = mx > 0.0f ? __fdiv_rn(127.0f, mx) : 0.0f, d = __fdiv_rn(mx, 127.0f);
    uint32_t u[8];
    float qsum = 0.0f; /* the rounded values' sum, an integer of at most 32 x 127: exact */
#pragma unroll
    for (int j = 0; j < 8; j++) {
        float f = __fmaf_rn(v[j], inv, 12582912.0f);
        u[j] = __float_as_uint(f);
        qsum += f - 12582912.0f;
    }
    qsum += __shfl_xor_sync(0xffffffffu, qsum, 1); /* 16 values: a Q8 chunk */
    if (F == WF_Q4) qsum += __shfl_xor_sync(0xffffffffu, qsum, 2);
    if (!live) return;
    const float sum = d * qsum;
    uint8_t *tok = s.xq + t * s.xq_ld;
    float2 *ds = (float2 *)(tok + (int64_t)X::XW * nch * 16);
    if (F == WF_Q4) {
        uint2 p = make_uint2(pack4(u[0], u[2], u[4], u[6]), pack4(u[1], u[3], u[5], u[7]));
        *(uint2 *)(tok + ((m >> 1) * (int64_t)nch + b) * 16 + (m & 1) * 8) = p;
        if (m == 0) ds[b] = make_float2(d, sum);
    } else {
        *(uint2 *)(tok + 8 * k) = make_uint2(pack4(u[0], u[1], u[2], u[3]), pack4(u[4], u[5], u[6], u[7]));
        if ((m & 1) == 0) ds[2 * b + (m >> 1)] = make_float2(d, sum);
    }
}

/* sum of the 4 products of unsigned bytes a and signed bytes b, + c */
__device__ __forceinline__ int dp4a_us(uint32_t a, uint32_t b, int c) {
    int d;
    asm("dp4a.u32.s32 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
    return d;
}

/* 16 weight bytes, read once: past L1, which keeps xq for the block's other warps. */
__device__ __forceinline__ void ld_stream(const uint8_t *p, uint32_t *w) {
    asm("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
        : "=r"(w[0]), "=r"(w[1]), "=r"(w[2]), "=r"(w[3])
        : "l"(p));
}

/* mv_kernel's twin on xq (see above), same row sets, split and epilogue.
 * Each lane keeps the next chunk's weights, scales and biases in flight
 * (loaded before this one is used: two register buffers); the first before
 * waiting for xq_kernel. */
#ifndef MVQ_PDL
#define MVQ_PDL 2 /* programmatic dependent launch on sm_90: 1 mvq_kernel's of xq_kernel, 2 also xq_kernel's; 0: off */
#endif
#ifndef MVQ_BALANCE
#define MVQ_BALANCE 0
#endif
#ifndef MVQ_STAGES
#define MVQ_STAGES 2 /* chunks a lane has in flight (registers: 24 a stage; 3 measured slower) */
#endif
#ifndef MVQ_MIN_BLOCKS
#define MVQ_MIN_BLOCKS 2
#endif
template <int F, int NT, bool SWI>
__global__ void __launch_bounds__(MV_WARPS * 32, NT == 1 ? MVQ_MIN_BLOCKS : 1) mvq_kernel(const mv_args a) {
    typedef fmt_traits<F> T;
    typedef xq_traits<F> X;
    constexpr int RP = SWI ? MV_R / 2 : MV_R;
    __shared__ float red[MV_WARPS][MV_R * NT];
    const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, ks = a.ks, kp = warp % ks;
    bool waited = false;
    pdl_launch_dependents(); /* the next call's xq_kernel, if launched so, may start; it waits for this grid */

    for (int grp = blockIdx.x; grp < a.first[a.nseg]; grp += gridDim.x) {
        int si = 0;
        while (si + 1 < a.nseg && a.first[si + 1] <= grp) si++;
        const mm_seg &s = a.tab ? a.tab[si] : a.one;
        const int set = (grp - a.first[si]) * (MV_WARPS / ks) + warp / ks;
        const int64_t r0 = (int64_t)set * RP;
        const bool live = r0 < s.rows;
        const int nch = (int)(s.cols / T::VC), step = 32 * ks;
        /* rows as 32-bit offsets from their tensor's values and scales/biases (mv_run checks they
         * fit): fewer registers than 12 pointers */
        uint32_t wo[MV_R], so[MV_R];
#pragma unroll
        for (int i = 0; i < MV_R; i++) {
            const int ten = i / RP;
            int64_t r = r0 + i % RP;
            r = r < s.rows ? r : s.rows - 1; /* a ragged set recomputes the last row, never stores it */
            wo[i] = (uint32_t)(r * s.row_bytes[ten]), so[i] = (uint32_t)(r * s.sb_row_bytes[ten]);
        }

        /* a chunk's raw scale and bias words (sb_load's) without their shifts, which follow from
         * g and bit 1 of the row's scale (bit i of par) and bias (bit 4 + i) addresses: registers
         * for twice the loads in flight */
        uint32_t par = 0;
#pragma unroll
        for (int i = 0; i < MV_R; i++)
            par |= (uint32_t)(((uintptr_t)(s.s[i / RP] + so[i]) >> 1 & 1) << i |
                              ((uintptr_t)(s.b[i / RP] + so[i]) >> 1 & 1) << (4 + i));
        uint32_t wq[MVQ_STAGES][MV_R][4], sq[MVQ_STAGES][MV_R], bq[MVQ_STAGES][MV_R];
        auto load = [&](int c, uint32_t (&w)[MV_R][4], uint32_t (&sc)[MV_R], uint32_t (&bi)[MV_R]) {
            const int g = (c * T::VC) >> s.gshift;
#pragma unroll
            for (int i = 0; i < MV_R; i++) {
                ld_stream(s.w[i / RP] + wo[i] + (uint32_t)c * 16, w[i]);
                sc[i] = sb_load(s.s[i / RP] + so[i], s.sfmt, g).w, bi[i] = sb_load(s.b[i / RP] + so[i], s.sfmt, g).w;
            }
        };
        float acc[MV_R][NT];
#pragma unroll
        for (int i = 0; i < MV_R; i++)
#pragma unroll
            for (int t = 0; t < NT; t++) acc[i][t] = 0.0f;
        auto use = [&](int c, const uint32_t (&w)[MV_R][4], const uint32_t (&sc)[MV_R], const uint32_t (&bi)[MV_R]) {
            const uint32_t g = (uint32_t)((c * T::VC) >> s.gshift);
            float sv[MV_R], bv[MV_R];
#pragma unroll
            for (int i = 0; i < MV_R; i++) {
                sb_raw rs = {sc[i], ((par >> i ^ g) & 1) << 4}, rb = {bi[i], ((par >> (4 + i) ^ g) & 1) << 4};
                sv[i] = sb_value(rs, s.sfmt), bv[i] = sb_value(rb, s.sfmt);
            }
#pragma unroll
            for (int t = 0; t < NT; t++) {
                const uint8_t *tok = s.xq + (t < a.n ? t : a.n - 1) * s.xq_ld; /* tokens past n: never stored */
                const float2 ds = __ldg((const float2 *)(tok + (int64_t)X::XW * nch * 16) + c);
                uint32_t x[X::XW * 4];
#pragma unroll
                for (int p = 0; p < X::XW; p++) {
                    uint4 v = __ldg((const uint4 *)tok + p * nch + c);
                    x[4 * p] = v.x, x[4 * p + 1] = v.y, x[4 * p + 2] = v.z, x[4 * p + 3] = v.w;
                }
#pragma unroll
                for (int i = 0; i < MV_R; i++) {
                    int isum;
                    if constexpr (F == WF_Q4) {
                        int lo = 0, hi = 0; /* hi: 16 x the odd values' sum */
#pragma unroll
                        for (int j = 0; j < 4; j++) {
                            lo = dp4a_us(w[i][j] & 0x0f0f0f0fu, x[2 * j], lo);
                            hi = dp4a_us(w[i][j] & 0xf0f0f0f0u, x[2 * j + 1], hi);
                        }
                        isum = lo + (hi >> 4);
                    } else {
                        isum = 0;
#pragma unroll
                        for (int j = 0; j < 4; j++) isum = dp4a_us(w[i][j], x[j], isum);
                    }
                    acc[i][t] += sv[i] * ds.x * (float)isum + bv[i] * ds.y;
                }
            }
        };

        /* a ring of MVQ_STAGES chunks: all in flight before the wait, the others while one is used */
        int c = kp * 32 + lane;
#pragma unroll
        for (int k = 0; k < MVQ_STAGES; k++)
            if (live && c + k * step < nch) load(c + k * step, wq[k], sq[k], bq[k]);
        if (!waited) pdl_wait(), waited = true;
        if (live)
            while (c < nch)
#pragma unroll
                for (int k = 0; k < MVQ_STAGES; k++, c += step)
                    if (c < nch) {
                        use(c, wq[k], sq[k], bq[k]);
                        if (c + MVQ_STAGES * step < nch) load(c + MVQ_STAGES * step, wq[k], sq[k], bq[k]);
                    }
        mv_finish<NT, SWI>(acc, red, s, r0, live, a.n, ks, kp);
    }
}

/* One warp an output (row r, token t) of one segment, element by element:
 * any alignment, any format (F the runtime format). */
template <bool SWI> __global__ void mv_generic(const mm_seg s, int fmt, int64_t n) {
    int64_t wid = ((int64_t)blockIdx.x * blockDim.x + threadIdx.x) >> 5;
    int lane = threadIdx.x & 31;
    if (wid >= s.rows * n) return;
    int64_t r = wid % s.rows, t = wid / s.rows;
    float acc[2] = {0.0f, 0.0f};
    for (int ten = 0; ten < 1 + SWI; ten++) {
        const uint8_t *row = s.w[ten] + r * s.row_bytes[ten];
        const uint8_t *sr = s.s[ten] ? s.s[ten] + r * s.sb_row_bytes[ten] : NULL;
        const uint8_t *br = s.b[ten] ? s.b[ten] + r * s.sb_row_bytes[ten] : NULL;
        for (int64_t k = lane; k < s.cols; k += 32)
            acc[ten] += elem_at(fmt, row, sr, br, s.sfmt, s.group, k) * s.x[t * s.ldx + k];
        for (int o = 16; o > 0; o >>= 1) acc[ten] += __shfl_xor_sync(0xffffffffu, acc[ten], o);
    }
    if (lane == 0)
        s.y[t * s.ldy + r] = SWI ? silu_mul(acc[0], acc[1]) : acc[0] + (s.bias ? s.bias[r] : 0.0f);
}

/* ------------------------------------------------ matrix x matrix (tc) -- */

/* x [n x ldx] float32 -> xh [n x cols] float16 (pack_h: saturated), once per
 * matmul, so that tc_tile streams its activation tiles by cp.async instead of
 * converting them again for every block of rows. A thread per 4 values
 * (cols % 4 == 0, x rows 16-byte aligned). */
__global__ void tc_xh_kernel(const float *x, int64_t ldx, int64_t cols, int64_t n, uint2 *xh) {
    const int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x, per = cols / 4;
    if (i >= n * per) return;
    const int64_t t = i / per, k = (i - t * per) * 4;
    float4 v = *(const float4 *)(x + t * ldx + k);
    xh[i] = make_uint2(pack_h(v.x, v.y), pack_h(v.z, v.w));
}

/* 16 bytes global -> shared, asynchronously; zeros instead where !fill (src is not read). */
__device__ __forceinline__ void cp_async16(void *dst, const void *src, bool fill) {
    unsigned a = (unsigned)__cvta_generic_to_shared(dst);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(a), "l"(src), "r"(fill ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;\n" ::: "memory"); }

/* Eight Q4 values (one word, value i in bits 4i) as four float16 pairs in
 * order, s q + b: a nibble ORed into the mantissa of 1024.0 is 1024 + q
 * exactly; minus 1024, then one half2 fma (a single rounding of s q + b, as
 * pack_h(s q + b) rounds it, where s and b are float16 exactly). */
__device__ __forceinline__ void q4_h8(uint32_t w, __half2 s, __half2 b, uint32_t *o) {
    const uint32_t m = 0x000f000fu, e = 0x64006400u;
    const uint32_t a = (w & m) | e, c = ((w >> 4) & m) | e, d = ((w >> 8) & m) | e, f = ((w >> 12) & m) | e;
    /* a = (q0, q4), c = (q1, q5), d = (q2, q6), f = (q3, q7) */
    const uint32_t p[4] = {__byte_perm(a, c, 0x5410), __byte_perm(d, f, 0x5410), __byte_perm(a, c, 0x7632),
                           __byte_perm(d, f, 0x7632)};
    const __half2 k = __halves2half2(__ushort_as_half(0x6400), __ushort_as_half(0x6400));
#pragma unroll
    for (int i = 0; i < 4; i++) {
        __half2 h = __hfma2(__hsub2(*(const __half2 *)&p[i], k), s, b);
        o[i] = *(uint32_t *)&h;
    }
}
/* Four Q8 values (one word, value i in byte i) as two float16 pairs, likewise. */
__device__ __forceinline__ void q8_h4(uint32_t w, __half2 s, __half2 b, uint32_t *o) {
    const uint32_t p[2] = {__byte_perm(w, 0x64646464u, 0x4140), __byte_perm(w, 0x64646464u, 0x4342)};
    const __half2 k = __halves2half2(__ushort_as_half(0x6400), __ushort_as_half(0x6400));
#pragma unroll
    for (int i = 0; i < 2; i++) {
        __half2 h = __hfma2(__hsub2(*(const __half2 *)&p[i], k), s, b);
        o[i] = *(uint32_t *)&h;
    }
}

/* v is a float16 exactly when it came from a bf16 in float16's normal range (or is zero). */
__device__ __forceinline__ bool h_exact(float v) { return v == 0.0f || (fabsf(v) >= 0x1p-14f && fabsf(v) <= 65504.0f); }

/* Shared memory of a tc block: two stages of the weight and activation tiles. */
#define TC_SMEM (2 * (TC_BM + TC_BN) * TC_LDS * 2)

/* Y[t][r] = sum_k W[r][k] X[t][k] for a tile of TC_BM shared rows (SwiGLU: 64
 * weight rows of gate and up each, interleaved by 16 so that a warp's two
 * m16 tiles are the gate and up rows of the same outputs) x TC_BN tokens.
 * 8 warps: 4 along rows (32 each) x 2 along tokens (64 each). The tiles are
 * double-buffered, one __syncthreads a step: while the warps multiply stage
 * kt % 2, the next step's activations (s.xh, float16 from tc_xh_kernel) stream
 * into the other stage by cp.async, and its weights load into registers, to be
 * dequantized into it after the MMAs (thread tid: 32 values of shared row
 * tid/2). Q4 and Q8 dequantize in half2 (q4_h8, q8_h4) where their scale and
 * bias are float16 exactly (F16 and, nearly always, BF16 scales), the rest in
 * float32, then pack_h, as before. */
template <int F, bool SWI> __device__ __forceinline__ void tc_tile(const mm_seg &s, int64_t n, int64_t bx, int64_t by) {
    typedef fmt_traits<F> T;
    extern __shared__ __align__(16) uint16_t tc_smem[];
    uint16_t *const As = tc_smem, *const Bs = tc_smem + 2 * TC_BM * TC_LDS; /* [2][TC_BM or TC_BN][TC_LDS] */
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, wm = warp & 3, wn = warp >> 2;
    const int64_t m0 = bx * (SWI ? TC_BM / 2 : TC_BM), t0 = by * TC_BN;

    /* this thread's weight loads: shared row ar (a weight row of tensor ten), half h of the step's columns */
    const int ar = tid >> 1, h = tid & 1;
    const int ten = SWI ? (ar >> 4) & 1 : 0;
    int64_t r = SWI ? m0 + (ar >> 5) * 16 + (ar & 15) : m0 + ar;
    r = r < s.rows ? r : s.rows - 1;
    const uint8_t *wrow = s.w[ten] + r * s.row_bytes[ten];
    const uint8_t *srow = T::QUANT ? s.s[ten] + r * s.sb_row_bytes[ten] : NULL;
    const uint8_t *brow = T::QUANT ? s.b[ten] + r * s.sb_row_bytes[ten] : NULL;
    /* its activation copies: 16 bytes (8 columns, c8) of tokens tid/8 + 32 i, i < 4; zeros for
     * tokens past n (bit i of tok_ok clear), whose outputs are not stored */
    const int c8 = tid & 7;
    const uint16_t *xsrc = s.xh + (t0 + (tid >> 3)) * s.cols + c8 * 8;
    int tok_ok = 0;
#pragma unroll
    for (int i = 0; i < 4; i++) tok_ok |= (t0 + (tid >> 3) + 32 * i < n) << i;

    constexpr int NCH = T::VC < 32 ? 32 / T::VC : 1;
    uint32_t wraw[NCH][T::WORDS];
    sb_raw sraw = {0, 0}, braw = {0, 0};
    bool zero = false;
    auto load = [&](int64_t kt, int st) { /* step kt: activations to stage st, weights to registers */
        uint16_t *bd = Bs + st * TC_BN * TC_LDS + (tid >> 3) * TC_LDS + c8 * 8;
        const bool fill = kt * TC_BK + c8 * 8 < s.cols; /* cols % 64 == 32: the last step's second half is zeros */
#pragma unroll
        for (int i = 0; i < 4; i++) {
            const bool ok = fill && (tok_ok >> i & 1);
            cp_async16(bd + 32 * i * TC_LDS, ok ? xsrc + 32 * i * s.cols + kt * TC_BK : s.xh, ok);
        }
        cp_async_commit();
        const int64_t k0 = kt * TC_BK + h * 32;
        zero = k0 >= s.cols;
        if (zero) return;
        if (T::QUANT) sraw = sb_load(srow, s.sfmt, k0 >> s.gshift), braw = sb_load(brow, s.sfmt, k0 >> s.gshift);
#pragma unroll
        for (int c = 0; c < NCH; c++) chunk_load<F>(wrow, k0 / T::VC + c, wraw[c]);
    };
    auto store = [&](int st) { /* the loaded weights, dequantized, to stage st */
        uint32_t areg[16]; /* 32 float16 */
        const float sc = T::QUANT ? sb_value(sraw, s.sfmt) : 1.0f, bi = T::QUANT ? sb_value(braw, s.sfmt) : 0.0f;
        /* half2 where s and b are float16 exactly (F16, or BF16 in float16's normal range): else, F32
         * scales rounded to float16 would move a weight near zero by up to 2^-11 |b| */
        const bool h2 = (F == WF_Q4 || F == WF_Q8) &&
                        (s.sfmt == WF_F16 || (s.sfmt == WF_BF16 && h_exact(sc) && h_exact(bi)));
        if (h2) {
            const __half2 s2 = __float2half2_rn(sc), b2 = __float2half2_rn(bi);
#pragma unroll
            for (int c = 0; c < NCH; c++)
#pragma unroll
                for (int i = 0; i < T::WORDS; i++) {
                    if constexpr (F == WF_Q4) q4_h8(wraw[c][i], s2, b2, areg + 4 * i);
                    else if constexpr (F == WF_Q8) q8_h4(wraw[c][i], s2, b2, areg + 8 * c + 2 * i);
                }
        } else {
#pragma unroll
            for (int c = 0; c < NCH; c++)
#pragma unroll
                for (int j = 0; j < T::VC / 4 && j < 8; j++) {
                    float q[4];
                    chunk_get4<F>(wraw[c], j, q);
                    if (T::QUANT)
#pragma unroll
                        for (int i = 0; i < 4; i++) q[i] = sc * q[i] + bi;
                    const int e = c * T::VC + 4 * j; /* element of the thread's 32 */
                    areg[e / 2] = pack_h(q[0], q[1]);
                    areg[e / 2 + 1] = pack_h(q[2], q[3]);
                }
        }
        uint4 *ad = (uint4 *)(As + st * TC_BM * TC_LDS + ar * TC_LDS + h * 32);
#pragma unroll
        for (int i = 0; i < 4; i++)
            ad[i] = zero ? make_uint4(0, 0, 0, 0)
                         : make_uint4(areg[4 * i], areg[4 * i + 1], areg[4 * i + 2], areg[4 * i + 3]);
    };

    float acc[2][8][4];
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[i][j][e] = 0.0f;

    const int64_t steps = (s.cols + TC_BK - 1) / TC_BK;
    load(0, 0);
    store(0);
    cp_async_wait_all();
    __syncthreads();
    for (int64_t kt = 0; kt < steps; kt++) {
        const int st = (int)(kt & 1);
        if (kt + 1 < steps) load(kt + 1, st ^ 1); /* the other stage was last read before the previous sync */
        const uint16_t *A = As + st * TC_BM * TC_LDS, *B = Bs + st * TC_BN * TC_LDS;
#pragma unroll
        for (int kk = 0; kk < TC_BK / 16; kk++) {
            uint32_t af[2][4], bf[4][4];
#pragma unroll
            for (int mi = 0; mi < 2; mi++)
                ldmatrix_x4(af[mi], A + (wm * 32 + mi * 16 + (lane & 15)) * TC_LDS + kk * 16 + (lane >> 4) * 8);
#pragma unroll
            for (int p = 0; p < 4; p++)
                ldmatrix_x4(bf[p], B + (wn * 64 + p * 16 + (lane & 7) + ((lane >> 4) << 3)) * TC_LDS + kk * 16 +
                                       ((lane >> 3) & 1) * 8);
#pragma unroll
            for (int mi = 0; mi < 2; mi++)
#pragma unroll
                for (int ni = 0; ni < 8; ni++) mma_h(acc[mi][ni], af[mi], &bf[ni / 2][(ni % 2) * 2]);
        }
        if (kt + 1 < steps) store(st ^ 1);
        cp_async_wait_all();
        __syncthreads();
    }

    /* accumulator element e of tile (mi, ni): row lane/4 (+8 for e >= 2), token 2 (lane%4) + e%2 */
#pragma unroll
    for (int ni = 0; ni < 8; ni++)
#pragma unroll
        for (int e = 0; e < 4; e++) {
            int64_t t = t0 + wn * 64 + ni * 8 + (lane & 3) * 2 + (e & 1);
            int rr = (lane >> 2) + (e >> 1) * 8;
            if (t >= n) continue;
            if (SWI) {
                int64_t row = m0 + wm * 16 + rr;
                if (row < s.rows) s.y[t * s.ldy + row] = silu_mul(acc[0][ni][e], acc[1][ni][e]);
            } else {
#pragma unroll
                for (int mi = 0; mi < 2; mi++) {
                    int64_t row = m0 + wm * 32 + mi * 16 + rr;
                    if (row < s.rows) s.y[t * s.ldy + row] = acc[mi][ni][e] + (s.bias ? s.bias[row] : 0.0f);
                }
            }
        }
}

/* Blocks of 256 threads an SM should hold: two (128 registers, 2 x TC_SMEM) where the tile fits
 * them without spilling, the formats that dequantize in few instructions. */
#define TC_MIN_BLOCKS(F) ((F) == WF_Q4 || (F) == WF_Q8 || (F) == WF_F16 || (F) == WF_BF16 ? 2 : 1)
template <int F, bool SWI> __global__ void __launch_bounds__(256, TC_MIN_BLOCKS(F)) tc_kernel(const mm_seg s, int64_t n) {
    tc_tile<F, SWI>(s, n, blockIdx.x, blockIdx.y);
}

/* One weight of many (the experts of a MoE layer, each over its own rows of
 * tokens) per blockIdx.z: the same tiles as tc_kernel, one launch for all.
 * Blocks beyond a segment's rows or tokens (the grid fits the largest) leave. */
typedef struct tc_gseg {
    mm_seg s;
    int64_t n;
} tc_gseg;
template <int F, bool SWI> __global__ void __launch_bounds__(256, TC_MIN_BLOCKS(F)) tc_group_kernel(const tc_gseg *g) {
    const tc_gseg &q = g[blockIdx.z];
    if ((int64_t)blockIdx.y * TC_BN >= q.n || (int64_t)blockIdx.x * (SWI ? TC_BM / 2 : TC_BM) >= q.s.rows) return;
    tc_tile<F, SWI>(q.s, q.n, blockIdx.x, blockIdx.y);
}
/* ------------------------------------------------------------- launch -- */

typedef void (*mv_fn)(cudaStream_t st, unsigned blocks, size_t smem, int n_sm, const mv_args *a);
typedef void (*tc_fn)(cudaStream_t st, dim3 grid, const mm_seg *s, int64_t n);
typedef cudaError_t (*mvq_fn)(cudaStream_t st, unsigned blocks, int n_sm, bool pdl, const mv_args *a);
typedef cudaError_t (*xq_fn)(cudaStream_t st, dim3 grid, bool pdl, const mv_args *a);

/* Blocks of mv_kernel<F, NT, SWI> an SM holds with smem bytes of x (0: a
 * query's failure), and the launch; the first call of each instantiation
 * raises its shared-memory limit to MV_SMEM_MAX. */
#define MV_SMEM_MAX (160 << 10)
template <int F, int NT, bool SWI>
static void mv_launch(cudaStream_t st, unsigned blocks, size_t smem, int n_sm, const mv_args *a) {
    static int ready, per_sm_regs;
    if (!ready) {
        cudaFuncSetAttribute(mv_kernel<F, NT, SWI>, cudaFuncAttributeMaxDynamicSharedMemorySize, MV_SMEM_MAX);
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm_regs, mv_kernel<F, NT, SWI>, MV_WARPS * 32, 0);
        ready = 1;
    }
    int per_sm = per_sm_regs;
    if (smem) { /* 227 KiB of shared memory an SM on sm_90, 163 on sm_80: take the smaller */
        int by_smem = (int)((163 << 10) / (smem + 2048));
        per_sm = by_smem < per_sm ? by_smem : per_sm;
    }
    per_sm = per_sm < 1 ? 1 : per_sm;
    unsigned most = (unsigned)(n_sm * per_sm);
    mv_kernel<F, NT, SWI><<<blocks < most ? blocks : most, MV_WARPS * 32, smem, st>>>(*a);
}
/* mvq_kernel<F, NT, SWI>'s launch (blocks capped as mv_launch's), with
 * programmatic stream serialization where pdl: it starts while xq_kernel runs. */
template <int F, int NT, bool SWI>
static cudaError_t mvq_launch(cudaStream_t st, unsigned blocks, int n_sm, bool pdl, const mv_args *a) {
    static int ready, per_sm;
    if (!ready) {
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, mvq_kernel<F, NT, SWI>, MV_WARPS * 32, 0);
        ready = 1;
    }
    unsigned most = (unsigned)(n_sm * (per_sm < 1 ? 1 : per_sm));
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = dim3(blocks < most ? blocks : most), cfg.blockDim = dim3(MV_WARPS * 32), cfg.stream = st;
    cudaLaunchAttribute at = {};
    at.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at.val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = &at, cfg.numAttrs = pdl ? 1 : 0;
    return cudaLaunchKernelEx(&cfg, mvq_kernel<F, NT, SWI>, *a);
}
template <int F> static cudaError_t xq_launch(cudaStream_t st, dim3 grid, bool pdl, const mv_args *a) {
    cudaLaunchConfig_t cfg = {};
    cfg.gridDim = grid, cfg.blockDim = dim3(256), cfg.stream = st;
    cudaLaunchAttribute at = {};
    at.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    at.val.programmaticStreamSerializationAllowed = 1;
    cfg.attrs = &at, cfg.numAttrs = pdl ? 1 : 0;
    return cudaLaunchKernelEx(&cfg, xq_kernel<F>, *a);
}
/* tc launches; the first of each instantiation raises its shared-memory limit to TC_SMEM. */
template <int F, bool SWI> static void tc_launch(cudaStream_t st, dim3 grid, const mm_seg *s, int64_t n) {
    static int ready;
    if (!ready) cudaFuncSetAttribute(tc_kernel<F, SWI>, cudaFuncAttributeMaxDynamicSharedMemorySize, TC_SMEM), ready = 1;
    tc_kernel<F, SWI><<<grid, 256, TC_SMEM, st>>>(*s, n);
}
template <int F, bool SWI> static void tc_group_launch(cudaStream_t st, dim3 grid, const tc_gseg *g) {
    static int ready;
    if (!ready)
        cudaFuncSetAttribute(tc_group_kernel<F, SWI>, cudaFuncAttributeMaxDynamicSharedMemorySize, TC_SMEM), ready = 1;
    tc_group_kernel<F, SWI><<<grid, 256, TC_SMEM, st>>>(g);
}

/* x's n rows of cols values (stride cols) in float16 at keep bytes (rounded up
 * to 256) into the scratch, for the tc kernels; NULL after an error. */
static const uint16_t *xh_place(cuda_ctx *c, const float *x, int64_t n, int64_t cols, size_t keep) {
    keep = (keep + 255) & ~(size_t)255;
    uint8_t *p = (uint8_t *)cuda_scratch(c, keep + (size_t)n * (size_t)cols * 2);
    if (!p) return NULL;
    tc_xh_kernel<<<cuda_blocks(n * (cols / 4), 256), 256, 0, c->stream>>>(x, cols, cols, n, (uint2 *)(p + keep));
    return cuda_launched(c, "matmul x to float16") ? (const uint16_t *)(p + keep) : NULL;
}

#define MV_ROW(F, SWI) {mv_launch<F, 1, SWI>, mv_launch<F, 2, SWI>, mv_launch<F, 4, SWI>, mv_launch<F, 8, SWI>}
#define MV_FMT(F) {MV_ROW(F, false), MV_ROW(F, true)}
/* [format][swiglu][log2 NT] */
static const mv_fn mv_tab[WF_COUNT][2][4] = {MV_FMT(WF_F32), MV_FMT(WF_F16), MV_FMT(WF_BF16),
                                             MV_FMT(WF_Q2),  MV_FMT(WF_Q3),  MV_FMT(WF_Q4),
                                             MV_FMT(WF_Q5),  MV_FMT(WF_Q6),  MV_FMT(WF_Q8)};
#define MVQ_ROW(F, SWI) {mvq_launch<F, 1, SWI>, mvq_launch<F, 2, SWI>, mvq_launch<F, 4, SWI>, mvq_launch<F, 8, SWI>}
/* [Q4, Q8][swiglu][log2 NT]: the int8 path */
static const mvq_fn mvq_tab[2][2][4] = {{MVQ_ROW(WF_Q4, false), MVQ_ROW(WF_Q4, true)},
                                        {MVQ_ROW(WF_Q8, false), MVQ_ROW(WF_Q8, true)}};
static const xq_fn xq_tab[2] = {xq_launch<WF_Q4>, xq_launch<WF_Q8>};
#define TC_FMT(F) {tc_launch<F, false>, tc_launch<F, true>}
/* [format][swiglu]; F32 has none (see the top of the file) */
static const tc_fn tc_tab[WF_COUNT][2] = {{NULL, NULL}, TC_FMT(WF_F16), TC_FMT(WF_BF16),
                                          TC_FMT(WF_Q2), TC_FMT(WF_Q3), TC_FMT(WF_Q4),
                                          TC_FMT(WF_Q5), TC_FMT(WF_Q6), TC_FMT(WF_Q8)};

typedef void (*tcg_fn)(cudaStream_t st, dim3 grid, const tc_gseg *g);
#define TCG_FMT(F) {tc_group_launch<F, false>, tc_group_launch<F, true>}
static const tcg_fn tcg_tab[WF_COUNT][2] = {{NULL, NULL}, TCG_FMT(WF_F16), TCG_FMT(WF_BF16),
                                            TCG_FMT(WF_Q2), TCG_FMT(WF_Q3), TCG_FMT(WF_Q4),
                                            TCG_FMT(WF_Q5), TCG_FMT(WF_Q6), TCG_FMT(WF_Q8)};

/* Load width of a format's chunk: what data and row_bytes must be multiples of. */
#define FMT_ALL(what) {fmt_traits<WF_F32>::what, fmt_traits<WF_F16>::what, fmt_traits<WF_BF16>::what, \
    fmt_traits<WF_Q2>::what, fmt_traits<WF_Q3>::what, fmt_traits<WF_Q4>::what, fmt_traits<WF_Q5>::what, \
    fmt_traits<WF_Q6>::what, fmt_traits<WF_Q8>::what}
static int fmt_align(wfmt f) {
    static const int a[WF_COUNT] = FMT_ALL(ALIGN);
    return a[f];
}
/* Values of a format's chunk. */
static int fmt_vc(wfmt f) {
    static const int v[WF_COUNT] = FMT_ALL(VC);
    return v[f];
}

static bool aligned(const void *p, size_t a) { return ((uintptr_t)p & (a - 1)) == 0; }

/* The vector kernels can read w (and x rows of stride ldx) with wide loads. */
static bool fast_ok(const wtensor *w, const float *x, int64_t ldx) {
    size_t a = (size_t)fmt_align(w->fmt);
    if (!aligned(w->data, a) || w->row_bytes % a || !aligned(x, 16) || ldx % 4) return false;
    if (!wfmt_is_quant(w->fmt)) return true;
    size_t e = w->sfmt == WF_F32 ? 4 : 2;
    return w->group % 32 == 0 && (w->group & (w->group - 1)) == 0 && w->cols % 32 == 0 && aligned(w->scales, e) &&
           aligned(w->biases, e) &&
           w->sb_row_bytes % e == 0;
}

static mm_seg seg_of(const wtensor *w0, const wtensor *w1, const float *x, int64_t ldx, float *y, int64_t ldy,
                     const float *bias) {
    mm_seg s;
    memset(&s, 0, sizeof s);
    const wtensor *w[2] = {w0, w1 ? w1 : w0};
    for (int i = 0; i < 2; i++) {
        s.w[i] = (const uint8_t *)w[i]->data, s.s[i] = (const uint8_t *)w[i]->scales;
        s.b[i] = (const uint8_t *)w[i]->biases;
        s.row_bytes[i] = w[i]->row_bytes, s.sb_row_bytes[i] = w[i]->sb_row_bytes;
    }
    s.rows = w0->rows, s.cols = w0->cols, s.x = x, s.y = y, s.bias = bias, s.ldx = ldx, s.ldy = ldy;
    s.group = wfmt_is_quant(w0->fmt) ? w0->group : 1, s.sfmt = w0->sfmt;
    while ((1 << s.gshift) < s.group) s.gshift++;
    return s;
}

/* Warps splitting a row set's columns: enough warps for every SM to stream
 * (about 16 each), never fewer than 2 chunks a lane. */
static int pick_ks(const cuda_ctx *c, int64_t sets, int64_t chunks) {
    int ks = 1;
    while (ks < MV_WARPS && sets * ks < (int64_t)c->n_sm * 16 && chunks >= (int64_t)64 * ks) ks *= 2;
    return ks;
}

static int nt_slot(int64_t n) { return n <= 1 ? 0 : n <= 2 ? 1 : n <= 4 ? 2 : 3; }

/* Whether Q4/Q8 decode runs in float32 (mv_kernel) rather than on int8
 * activations (mvq_kernel): the context says so (cuda_set_float_decode: a
 * model whose recurrent state would carry the rounding on), or
 * MOE_CUDA_FLOAT_DECODE is set and not "0", read at each call. */
bool cuda_decode_float(const cuda_ctx *c) {
    const char *e = getenv("MOE_CUDA_FLOAT_DECODE");
    return c->float_decode || (e && *e && strcmp(e, "0") != 0);
}

void cuda_set_float_decode(cuda_ctx *c, int on) { c->float_decode = on; }

/* Bytes of one token of a segment's rounded x (see xq_kernel): the int8
 * values, then a float2 per chunk; a multiple of 16. */
static int64_t xq_token_bytes(wfmt f, int64_t cols) {
    return (cols + cols / fmt_vc(f) * 8 + 15) / 16 * 16;
}

/* Scratch bytes the int8 path of n tokens of width cols takes. */
static size_t xq_bytes(wfmt f, int64_t n, int64_t cols) {
    return f == WF_Q4 || f == WF_Q8 ? (size_t)(n * xq_token_bytes(f, cols)) : 0;
}

/* Q4/Q8 segments' x rounded to int8 into scratch past its first keep bytes
 * (the caller's), one area per distinct x; false after an error. */
static bool xq_place(cuda_ctx *c, wfmt f, mm_seg *segs, int nseg, int64_t n, size_t keep) {
    size_t need = 0;
    keep = (keep + 255) & ~(size_t)255;
    for (int i = 0; i < nseg; i++) {
        segs[i].xq_own = 1, segs[i].xq_ld = xq_token_bytes(f, segs[i].cols);
        for (int j = 0; j < i; j++)
            if (segs[j].x == segs[i].x && segs[j].ldx == segs[i].ldx && segs[j].cols == segs[i].cols)
                segs[i].xq_own = 0;
        if (segs[i].xq_own) need += (size_t)(n * segs[i].xq_ld);
    }
    uint8_t *p = (uint8_t *)cuda_scratch(c, keep + need);
    if (!p) return false;
    p += keep;
    for (int i = 0; i < nseg; i++) {
        if (!segs[i].xq_own) {
            for (int j = 0; j < i; j++)
                if (segs[j].xq_own && segs[j].x == segs[i].x) segs[i].xq = segs[j].xq;
            continue;
        }
        segs[i].xq = p;
        p += n * segs[i].xq_ld;
    }
    return true;
}

/* mv_kernel, or xq_kernel + mvq_kernel for Q4/Q8 (int8 activations), over
 * nseg segments of format f (swi: SwiGLU pairs), n <= MV_MAX_N tokens; segs
 * staged to the device when there are several. keep: bytes at the start of
 * the context's scratch that the caller holds (the int8 path uses the rest). */
/* Experts chosen on the device (cuda_moe_decode_sel): segments k < K of a
 * launch take their weights from tab[sel[k]], the rest (the shared expert)
 * keep theirs; the table is built in dst on the device. */
typedef struct seg_w {
    const uint8_t *w[2], *s[2], *b[2];
} seg_w;
typedef struct seg_pick {
    const seg_w *tab; /* (dev) [E] */
    const int32_t *sel; /* (dev) [K] */
    int K;
    mm_seg *dst;      /* (dev) [nseg] */
} seg_pick;

__global__ void k_seg_pick(mm_seg *dst, const mm_seg *tmpl, int nseg, seg_pick p) {
    int i = threadIdx.x;
    if (i >= nseg) return;
    mm_seg s = tmpl[i];
    if (i < p.K) {
        const seg_w e = p.tab[p.sel[i]];
        for (int t = 0; t < 2; t++) s.w[t] = e.w[t], s.s[t] = e.s[t], s.b[t] = e.b[t];
    }
    dst[i] = s;
}

static void mv_run(cuda_ctx *c, wfmt f, bool swi, const mm_seg *segs_in, int nseg, int64_t n, const char *what,
                   size_t keep, const seg_pick *pick = NULL) {
    mm_seg segs[MOE_DEC_MAX];
    memcpy(segs, segs_in, (size_t)nseg * sizeof *segs);
    mv_args a;
    memset(&a, 0, sizeof a);
    a.nseg = nseg, a.n = (int)n;
    const int rp = swi ? MV_R / 2 : MV_R;
    bool i8 = (f == WF_Q4 || f == WF_Q8) && !cuda_decode_float(c);
    for (int i = 0; i < nseg; i++) /* mvq_kernel's 32-bit row offsets */
        for (int t = 0; t < 2; t++)
            i8 = i8 && (uint64_t)segs[i].rows * segs[i].row_bytes[t] <= UINT32_MAX &&
                 (uint64_t)segs[i].rows * segs[i].sb_row_bytes[t] <= UINT32_MAX;
    if (i8 && !xq_place(c, f, segs, nseg, n, keep)) return;
    a.one = segs[0];
    int64_t chunks = 0, sets = 0, cols = 0;
    for (int i = 0; i < nseg; i++) {
        int64_t ch = segs[i].cols / fmt_vc(f);
        chunks = i == 0 || ch < chunks ? ch : chunks;
        sets += (segs[i].rows + rp - 1) / rp;
        cols = segs[i].cols > cols ? segs[i].cols : cols;
    }
    a.ks = pick_ks(c, sets, chunks);
    if (i8 && a.ks > 2) a.ks = 2; /* measured: a longer stream a warp beats more warps */
#if MVQ_BALANCE
    if (i8) { /* the split whose groups fill whole waves of MVQ_MIN_BLOCKS blocks an SM best */
        double best = 0;
        for (int ks = 1; ks <= MV_WARPS && chunks >= (int64_t)64 * ks; ks *= 2) {
            int64_t groups = 0;
            for (int i = 0; i < nseg; i++) groups += cuda_blocks((segs[i].rows + rp - 1) / rp, MV_WARPS / ks);
            double waves = (double)groups / (c->n_sm * MVQ_MIN_BLOCKS), eff = waves / ceil(waves);
            if (eff > best + 0.02) best = eff, a.ks = ks;
        }
    }
#endif
    const int spg = MV_WARPS / a.ks; /* sets a group */
    for (int i = 0; i < nseg; i++) a.first[i + 1] = a.first[i] + (int)cuda_blocks((segs[i].rows + rp - 1) / rp, spg);
    if (nseg > 1 || pick) {
        a.tab = (const mm_seg *)cuda_stage(c, segs, (size_t)nseg * sizeof *segs);
        if (!a.tab) return;
        if (pick) { /* the staged segments are the template; the weights come from the device's choice */
            k_seg_pick<<<1, 128, 0, c->stream>>>(pick->dst, a.tab, nseg, *pick);
            if (!cuda_launched(c, what)) return;
            a.tab = pick->dst;
        }
    }
    if (i8) {
        const int q8 = f == WF_Q8;
        dim3 grid(cuda_blocks(n * cols / 8, 256), (unsigned)nseg);
        if (!cuda_check(c, xq_tab[q8](c->stream, grid, MVQ_PDL > 1 && c->cc >= 90, &a), what)) return;
        cuda_check(c, mvq_tab[q8][swi][nt_slot(n)](c->stream, (unsigned)a.first[nseg], c->n_sm, MVQ_PDL && c->cc >= 90, &a),
                   what);
        return;
    }
    /* x in shared memory where it fits: rows of cols/4 float4s rounded up to whole swizzle blocks of 8 */
    int64_t xq = (cols / 4 + 7) / 8 * 8;
    size_t smem = (size_t)(n * xq) * 16;
    if (smem <= MV_SMEM_MAX) a.xq = (int)xq;
    else smem = 0;
    mv_tab[f][swi][nt_slot(n)](c->stream, (unsigned)a.first[nseg], smem, c->n_sm, &a);
    cuda_launched(c, what);
}

static void generic_run(cuda_ctx *c, wfmt f, bool swi, const mm_seg *s, int64_t n, const char *what) {
    unsigned blocks = cuda_blocks(s->rows * n, 8);
    if (swi) mv_generic<true><<<blocks, 256, 0, c->stream>>>(*s, (int)f, n);
    else mv_generic<false><<<blocks, 256, 0, c->stream>>>(*s, (int)f, n);
    cuda_launched(c, what);
}

/* y = x . w0^T (+ bias), or silu(x . w0^T) * (x . w1^T) when w1: the kernel
 * for n, format and alignment. */
static void mm_any(cuda_ctx *c, const wtensor *w0, const wtensor *w1, const float *x, int64_t n, const float *bias,
                   float *y, const char *what, size_t keep) {
    CUDA_LIVE(c);
    if (n <= 0 || w0->rows <= 0) return;
    const bool swi = w1 != NULL;
    const wfmt f = w0->fmt;
    const int64_t rows = w0->rows, cols = w0->cols;
    mm_seg s = seg_of(w0, w1, x, cols, y, rows, bias);
    bool fast = fast_ok(w0, x, cols) && (!swi || fast_ok(w1, x, cols));
    if (!fast) {
        generic_run(c, f, swi, &s, n, what);
        return;
    }
    if (n > MV_MAX_N && tc_tab[f][swi] && cols % 32 == 0) {
        dim3 grid(cuda_blocks(rows, swi ? TC_BM / 2 : TC_BM), cuda_blocks(n, TC_BN));
        if (grid.y > 65535) { /* a prompt beyond 8 M tokens: in parts */
            for (int64_t t0 = 0; t0 < n && !c->err; t0 += (int64_t)65535 * TC_BN) {
                int64_t nt = n - t0 < (int64_t)65535 * TC_BN ? n - t0 : (int64_t)65535 * TC_BN;
                mm_any(c, w0, w1, x + t0 * cols, nt, bias, y + t0 * rows, what, keep);
            }
            return;
        }
        if (!(s.xh = xh_place(c, x, n, cols, keep))) return;
        tc_tab[f][swi](c->stream, grid, &s, n);
        cuda_launched(c, what);
        return;
    }
    for (int64_t t0 = 0; t0 < n && !c->err; t0 += MV_MAX_N) {
        mm_seg p = s;
        p.x = x + t0 * cols, p.y = y + t0 * rows;
        mv_run(c, f, swi, &p, 1, n - t0 < MV_MAX_N ? n - t0 : MV_MAX_N, what, keep);
    }
}

/* Weights gate and up may be fused only when they read alike. */
static bool same_layout(const wtensor *a, const wtensor *b) {
    return a->fmt == b->fmt && a->rows == b->rows && a->cols == b->cols &&
           (!wfmt_is_quant(a->fmt) || (a->group == b->group && a->sfmt == b->sfmt));
}

__global__ void silu_mul_kernel(float *g, const float *u, int64_t n) {
    int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) g[i] = silu_mul(g[i], u[i]);
}

extern "C" void cuda_matmul(cuda_ctx *c, const wtensor *w, const float *x, int64_t n, const float *bias, float *y) {
    mm_any(c, w, NULL, x, n, bias, y, "matmul", 0);
}

extern "C" void cuda_matmul_swiglu(cuda_ctx *c, const wtensor *gate, const wtensor *up, const float *x, int64_t n,
                                   float *out) {
    CUDA_LIVE(c);
    if (same_layout(gate, up)) {
        mm_any(c, gate, up, x, n, NULL, out, "matmul_swiglu", 0);
        return;
    }
    /* gate and up stored differently (never in a file moe writes): two matmuls, then the product; u
     * at the start of the scratch, the int8 path's rounded x after it (reserved now: growing the
     * scratch later would free u) */
    size_t ub = (size_t)n * up->rows * sizeof(float), xb = xq_bytes(up->fmt, n < MV_MAX_N ? n : MV_MAX_N, up->cols);
    size_t xg = xq_bytes(gate->fmt, n < MV_MAX_N ? n : MV_MAX_N, gate->cols);
    size_t xh = n > MV_MAX_N ? (size_t)n * (size_t)gate->cols * 2 : 0; /* the tc path's x in float16 */
    xb = xb > xg ? xb : xg;
    float *u = (float *)cuda_scratch(c, ((ub + 255) & ~(size_t)255) + (xb > xh ? xb : xh));
    if (!u) return;
    mm_any(c, gate, NULL, x, n, NULL, out, "matmul_swiglu", ub);
    mm_any(c, up, NULL, x, n, NULL, u, "matmul_swiglu", ub);
    CUDA_LIVE(c);
    silu_mul_kernel<<<cuda_blocks(n * gate->rows, 256), 256, 0, c->stream>>>(out, u, n * gate->rows);
    cuda_launched(c, "matmul_swiglu");
}

/* w0[i] (with w1[i]: SwiGLU of the pair) over rows off[i] .. off[i+1] of x
 * into the same rows of y, for the ne weights. Those that tc_kernel would run
 * alone (more than MV_MAX_N rows, wide loads, one format) go as one
 * tc_group_kernel launch, the same tiles and arithmetic; the rest one by one
 * as cuda_matmul(_swiglu) runs them. So the results are those of the calls one
 * by one, whatever is grouped. */
static void group_run(cuda_ctx *c, int ne, const wtensor *const *w0, const wtensor *const *w1, const int64_t *off,
                      const float *x, float *y, const char *what) {
    const bool swi = w1 != NULL;
    const int64_t cols = w0[0]->cols, rows = w0[0]->rows;
    tc_gseg *g = (tc_gseg *)malloc(sizeof *g * (size_t)(ne > 0 ? ne : 1));
    if (!g) {
        cuda_check(c, cudaErrorMemoryAllocation, what);
        return;
    }
    int k = 0, f = -1;
    int64_t max_n = 0;
    for (int i = 0; i < ne && !c->err; i++) {
        const int64_t n = off[i + 1] - off[i];
        const float *xi = x + off[i] * cols;
        float *yi = y + off[i] * rows;
        if (n <= 0) continue;
        const wtensor *a = w0[i], *b = swi ? w1[i] : NULL;
        bool ok = !c->no_grouped && n > MV_MAX_N && a->cols == cols && a->rows == rows && cols % 32 == 0 &&
                  tcg_tab[a->fmt][swi] && (f < 0 || a->fmt == f) && fast_ok(a, xi, cols) &&
                  (!swi || (same_layout(a, b) && fast_ok(b, xi, cols)));
        if (!ok) {
            if (swi) cuda_matmul_swiglu(c, a, b, xi, n, yi);
            else mm_any(c, a, NULL, xi, n, NULL, yi, what, 0);
            continue;
        }
        f = a->fmt;
        g[k].s = seg_of(a, b, xi, cols, yi, rows, NULL);
        g[k++].n = n;
        max_n = n > max_n ? n : max_n;
    }
    /* x in float16 for rows off[0] .. off[ne] (after the matmuls above, which may use the scratch too) */
    const float *x0 = x + off[0] * cols;
    const uint16_t *xh = k && !c->err ? xh_place(c, x0, off[ne] - off[0], cols, 0) : NULL;
    for (int i = 0; i < k && xh; i++) g[i].s.xh = xh + (g[i].s.x - x0);
    const tc_gseg *d = xh ? (const tc_gseg *)cuda_stage(c, g, sizeof *g * (size_t)k) : NULL;
    if (d) {
        dim3 grid(cuda_blocks(rows, swi ? TC_BM / 2 : TC_BM), cuda_blocks(max_n, TC_BN), (unsigned)k);
        tcg_tab[f][swi](c->stream, grid, d);
        cuda_launched(c, what);
    }
    free(g);
}

extern "C" void cuda_moe_grouped(cuda_ctx *c, int ne, const wtensor *const *gate, const wtensor *const *up,
                                 const wtensor *const *down, const int64_t *off, const float *x, float *mid,
                                 float *out) {
    CUDA_LIVE(c);
    if (ne <= 0) return;
    group_run(c, ne, gate, up, off, x, mid, "moe_grouped");
    group_run(c, ne, down, NULL, off, mid, out, "moe_grouped");
}

extern "C" void cuda_moe_decode(cuda_ctx *c, int ne, const wtensor *const *gate, const wtensor *const *up,
                                const wtensor *const *down, const float *x, float *mid, int64_t ld_mid,
                                float *const *out) {
    CUDA_LIVE(c);
    if (ne <= 0) return;
    if (ne > MOE_DEC_MAX) {
        c->err = MOE_EINVAL;
        snprintf(c->msg, sizeof c->msg, "CUDA: moe_decode of %d experts (at most %d)", ne, MOE_DEC_MAX);
        return;
    }
    mm_seg segs[MOE_DEC_MAX + 1] = {}; /* + 1: cuda_stage copies whole 256-byte blocks (zeroed: what it copies past ne is defined) */
    /* gate/up of every expert in one launch when they share a format and read fast, else one by one */
    bool one = true;
    for (int i = 0; i < ne; i++) {
        one = one && gate[i]->fmt == gate[0]->fmt && same_layout(gate[i], up[i]) && fast_ok(gate[i], x, 0) &&
              fast_ok(up[i], x, 0) && gate[i]->rows > 0;
        segs[i] = seg_of(gate[i], up[i], x, 0, mid + i * ld_mid, 0, NULL);
    }
    if (one) mv_run(c, gate[0]->fmt, true, segs, ne, 1, "moe_decode gate/up", 0);
    else
        for (int i = 0; i < ne; i++) cuda_matmul_swiglu(c, gate[i], up[i], x, 1, mid + i * ld_mid);
    one = true;
    for (int i = 0; i < ne; i++) {
        const float *xi = mid + i * ld_mid;
        one = one && down[i]->fmt == down[0]->fmt && fast_ok(down[i], xi, 0) && down[i]->rows > 0;
        segs[i] = seg_of(down[i], NULL, xi, 0, out[i], 0, NULL);
    }
    if (one) mv_run(c, down[0]->fmt, false, segs, ne, 1, "moe_decode down", 0);
    else
        for (int i = 0; i < ne; i++) cuda_matmul(c, down[i], mid + i * ld_mid, 1, NULL, out[i]);
}

/* --------------------------------------------------- routing on the GPU -- */

/* A thread a token: p = softmax(logits) in place (as forward.c's route: the
 * max subtracted, expf, the sum in order, each divided), the K largest by
 * repeated scan (ties to the lower index), their p as weights (divided by
 * their sum when norm), counts[e] += each choice. */
__global__ void k_route(float *logits, int64_t n, int E, int K, int norm, int32_t *sel, float *w,
                        unsigned long long *counts) {
    int64_t t = (int64_t)blockIdx.x * blockDim.x + threadIdx.x;
    if (t >= n) return;
    float *p = logits + t * E, mx = p[0], sum = 0.0f, wsum = 0.0f;
    for (int e = 1; e < E; e++) mx = p[e] > mx ? p[e] : mx;
    for (int e = 0; e < E; e++) sum += (p[e] = expf(p[e] - mx));
    for (int e = 0; e < E; e++) p[e] /= sum;
    int32_t *st = sel + t * K;
    float *wt = w + t * K;
    for (int k = 0; k < K; k++) {
        int best = -1;
        for (int e = 0; e < E; e++) {
            bool taken = false;
            for (int j = 0; j < k && !taken; j++) taken = st[j] == e;
            if (!taken && (best < 0 || p[e] > p[best])) best = e;
        }
        st[k] = best;
        wsum += (wt[k] = p[best]);
        if (counts) atomicAdd(counts + best, 1ull);
    }
    if (norm)
        for (int k = 0; k < K; k++) wt[k] /= wsum;
}

extern "C" void cuda_route(cuda_ctx *c, float *logits, int64_t n, int E, int K, int norm, int32_t *sel, float *w,
                           int64_t *counts) {
    CUDA_LIVE(c);
    if (n <= 0 || E <= 0 || K <= 0) return;
    if (K > E) {
        c->err = MOE_EINVAL;
        snprintf(c->msg, sizeof c->msg, "CUDA: route: top-%d of %d experts", K, E);
        return;
    }
    k_route<<<cuda_blocks(n, 64), 64, 0, c->stream>>>(logits, n, E, K, norm, sel, w, (unsigned long long *)counts);
    cuda_launched(c, "route");
}

/* A layer's experts as the device picks them: for each, the weights of its
 * gate/up segment and of its down segment. Made on the first call for a
 * layer (keyed by expert 0's gate) and kept with the context. */
typedef struct xtable {
    const wtensor *key;
    int E;
    seg_w *gu, *dn; /* (dev) [E] each */
} xtable;

static seg_w seg_w_of(const wtensor *a, const wtensor *b) {
    seg_w r;
    const wtensor *w[2] = {a, b ? b : a};
    for (int t = 0; t < 2; t++)
        r.w[t] = (const uint8_t *)w[t]->data, r.s[t] = (const uint8_t *)w[t]->scales, r.b[t] = (const uint8_t *)w[t]->biases;
    return r;
}

#define XW(base, e, stride) ((const wtensor *)((const char *)(base) + (size_t)(e) * (stride)))

static const xtable *xtable_get(cuda_ctx *c, int E, const wtensor *gate, const wtensor *up, const wtensor *down,
                                size_t stride) {
    xtable *t = (xtable *)c->xtabs;
    for (int i = 0; i < c->n_xtabs; i++)
        if (t[i].key == gate && t[i].E == E) return &t[i];
    if (c->capturing) { /* allocating and uploading cannot be recorded */
        c->capture_failed = 1;
        return NULL;
    }
    if (c->n_xtabs == c->cap_xtabs) {
        int cap = c->cap_xtabs ? 2 * c->cap_xtabs : 16;
        xtable *nt = (xtable *)realloc(c->xtabs, (size_t)cap * sizeof *nt);
        if (!nt) {
            c->err = MOE_ENOMEM;
            snprintf(c->msg, sizeof c->msg, "out of memory");
            return NULL;
        }
        c->xtabs = nt, c->cap_xtabs = cap, t = nt;
    }
    seg_w *h = (seg_w *)malloc(2 * (size_t)E * sizeof *h);
    seg_w *d = (seg_w *)cuda_alloc(c, 2 * (size_t)E * sizeof *d);
    if (!h || !d) {
        free(h);
        if (!c->err) {
            c->err = MOE_ENOMEM;
            snprintf(c->msg, sizeof c->msg, "CUDA: out of memory for an expert table");
        }
        return NULL;
    }
    for (int e = 0; e < E; e++) h[e] = seg_w_of(XW(gate, e, stride), XW(up, e, stride)), h[E + e] = seg_w_of(XW(down, e, stride), NULL);
    cuda_upload(c, d, h, 2 * (size_t)E * sizeof *h);
    free(h);
    xtable *x = &t[c->n_xtabs++];
    x->key = gate, x->E = E, x->gu = d, x->dn = d + E;
    return x;
}

/* Every expert of the layer in one format and layout the fast kernels read. */
static bool experts_uniform(int E, const wtensor *gate, const wtensor *up, const wtensor *down, size_t stride,
                            const float *x, const float *mid) {
    for (int e = 0; e < E; e++) {
        const wtensor *g = XW(gate, e, stride), *u = XW(up, e, stride), *d = XW(down, e, stride);
        if (!same_layout(g, gate) || !same_layout(u, gate) || !same_layout(d, down) || !fast_ok(g, x, 0) ||
            !fast_ok(u, x, 0) || !fast_ok(d, mid, 0) || g->rows <= 0 || d->rows <= 0)
            return false;
    }
    return true;
}

extern "C" void cuda_moe_decode_sel(cuda_ctx *c, int E, const wtensor *gate, const wtensor *up, const wtensor *down,
                                    size_t stride, const int32_t *sel, int K, const wtensor *sgate,
                                    const wtensor *sup, const wtensor *sdown, const float *x, float *mid,
                                    int64_t ld_mid, float *out, int64_t ld_out, float *shared_out) {
    CUDA_LIVE(c);
    if (K <= 0) return;
    int ne = K + (sgate ? 1 : 0);
    if (ne > MOE_DEC_MAX || K > E) {
        c->err = MOE_EINVAL;
        snprintf(c->msg, sizeof c->msg, "CUDA: moe_decode_sel: top-%d of %d experts (at most %d)", K, E, MOE_DEC_MAX);
        return;
    }
    if (!experts_uniform(E, gate, up, down, stride, x, mid)) {
        /* experts of several formats: the choice read back, then cuda_moe_decode (not recordable) */
        if (c->capturing) {
            c->capture_failed = 1;
            return;
        }
        int32_t hs[MOE_DEC_MAX];
        if (cuda_download(c, hs, sel, sizeof *hs * (size_t)K)) return;
        const wtensor *g[MOE_DEC_MAX], *u[MOE_DEC_MAX], *d[MOE_DEC_MAX];
        float *o[MOE_DEC_MAX];
        for (int k = 0; k < K; k++) {
            if (hs[k] < 0 || hs[k] >= E) {
                c->err = MOE_EIO;
                snprintf(c->msg, sizeof c->msg, "CUDA: moe_decode_sel: expert %d chosen of %d", hs[k], E);
                return;
            }
            g[k] = XW(gate, hs[k], stride), u[k] = XW(up, hs[k], stride), d[k] = XW(down, hs[k], stride);
            o[k] = out + k * ld_out;
        }
        if (sgate) g[K] = sgate, u[K] = sup, d[K] = sdown, o[K] = shared_out;
        cuda_moe_decode(c, ne, g, u, d, x, mid, ld_mid, o);
        return;
    }
    const xtable *xt = xtable_get(c, E, gate, up, down, stride);
    if (!xt) return;
    if (!c->seg_dev && !c->capturing) c->seg_dev = cuda_alloc(c, 2 * (MOE_DEC_MAX + 1) * sizeof(mm_seg));
    if (!c->seg_dev) {
        if (c->capturing) c->capture_failed = 1;
        else if (!c->err) c->err = MOE_ENOMEM, snprintf(c->msg, sizeof c->msg, "CUDA: out of memory");
        return;
    }
    mm_seg *dst = (mm_seg *)c->seg_dev;
    /* the shared expert joins the launch where its format matches */
    bool with_shared = sgate && sgate->fmt == gate->fmt && same_layout(sgate, sup) && fast_ok(sgate, x, 0) &&
                       fast_ok(sup, x, 0) && sdown->fmt == down->fmt && fast_ok(sdown, mid, 0) && sgate->rows > 0 &&
                       sdown->rows > 0;
    int nl = K + (with_shared ? 1 : 0);
    mm_seg segs[MOE_DEC_MAX + 1];
    for (int k = 0; k < K; k++) segs[k] = seg_of(gate, up, x, 0, mid + k * ld_mid, 0, NULL);
    if (with_shared) segs[K] = seg_of(sgate, sup, x, 0, mid + K * ld_mid, 0, NULL);
    seg_pick pk = {xt->gu, sel, K, dst};
    mv_run(c, gate->fmt, true, segs, nl, 1, "moe_decode gate/up", 0, &pk);
    for (int k = 0; k < K; k++) segs[k] = seg_of(down, NULL, mid + k * ld_mid, 0, out + k * ld_out, 0, NULL);
    if (with_shared) segs[K] = seg_of(sdown, NULL, mid + K * ld_mid, 0, shared_out, 0, NULL);
    seg_pick pd = {xt->dn, sel, K, dst + MOE_DEC_MAX + 1};
    mv_run(c, down->fmt, false, segs, nl, 1, "moe_decode down", 0, &pd);
    if (sgate && !with_shared) { /* fixed weights: any kernel */
        cuda_matmul_swiglu(c, sgate, sup, x, 1, mid + K * ld_mid);
        cuda_matmul(c, sdown, mid + K * ld_mid, 1, NULL, shared_out);
    }
}

/* ------------------------------------------------------------- embed -- */

/* Ids are checked where they enter (moe_seq_eval); one outside the table reads nothing and gives zeros. */
__global__ void embed_kernel(const mm_seg s, int fmt, const int32_t *tok, float *out) {
    const int64_t t = blockIdx.y, r = tok[t];
    if (r < 0 || r >= s.rows) {
        for (int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; k < s.cols; k += (int64_t)gridDim.x * blockDim.x)
            out[t * s.cols + k] = 0.0f;
        return;
    }
    const uint8_t *row = s.w[0] + r * s.row_bytes[0];
    const uint8_t *sr = s.s[0] ? s.s[0] + r * s.sb_row_bytes[0] : NULL;
    const uint8_t *br = s.b[0] ? s.b[0] + r * s.sb_row_bytes[0] : NULL;
    for (int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; k < s.cols; k += (int64_t)gridDim.x * blockDim.x)
        out[t * s.cols + k] = elem_at(fmt, row, sr, br, s.sfmt, s.group, k);
}

extern "C" void cuda_embed(cuda_ctx *c, const wtensor *w, const int32_t *tokens, int64_t n, float *out) {
    CUDA_LIVE(c);
    if (n <= 0) return;
    for (int64_t t0 = 0; t0 < n && !c->err; t0 += 65535) { /* gridDim.y's limit */
        int64_t nt = n - t0 < 65535 ? n - t0 : 65535;
        const int32_t *tok = tokens + t0;
        mm_seg s = seg_of(w, NULL, NULL, 0, NULL, 0, NULL);
        dim3 grid(cuda_blocks(w->cols, 256) < 64 ? cuda_blocks(w->cols, 256) : 64, (unsigned)nt);
        embed_kernel<<<grid, 256, 0, c->stream>>>(s, (int)w->fmt, tok, out + t0 * w->cols);
        cuda_launched(c, "embed");
    }
}
