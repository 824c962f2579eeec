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
 *   SwiGLU; Q8 ~62%; Q4 ~40%: the quantized kernels are still bound by
 *   latency and unpacking, not by HBM.
 *
 * - tc_kernel, matrix x matrix (prompts, n > MV_MAX_N) on tensor cores:
 *   mma.sync m16n8k16 with float16 operands and float32 accumulation over
 *   tiles of 128 weight rows x 128 tokens x 64 columns. Weights are
 *   dequantized on the fly, tile by tile, into shared memory (never a 16-bit
 *   copy of a weight); activations are rounded to float16 on the way in
 *   (saturated at +-65504). float16, not bf16: its unit roundoff u = 2^-11 is
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
#include <stdint.h>
#include <stdio.h>
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
#pragma unroll
            for (int i = 0; i < MV_R; i++) {
                const int ten = i / RP;
                int64_t r = r0 + i % RP;
                r = r < s.rows ? r : s.rows - 1; /* a ragged set recomputes the last row, never stores it */
                row[i] = s.w[ten] + r * s.row_bytes[ten];
                sr[i] = s.s[ten] + r * s.sb_row_bytes[ten];
                br[i] = s.b[ten] + r * s.sb_row_bytes[ten];
            }
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
        if (!live || kp != 0) continue;
#pragma unroll
        for (int i = 0; i < RP; i++)
#pragma unroll
            for (int t = 0; t < NT; t++)
                if (lane == i * NT + t && t < a.n && r0 + i < s.rows) {
                    float v = SWI ? silu_mul(acc[i][t], acc[i + RP][t]) : acc[i][t] + (s.bias ? s.bias[r0 + i] : 0.0f);
                    s.y[t * s.ldy + r0 + i] = v;
                }
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

/* Two floats as a pair of float16, saturated at +-65504 (float16's largest):
 * an activation beyond it keeps its sign and a large value instead of
 * becoming infinite. */
__device__ __forceinline__ uint32_t pack_h(float lo, float hi) {
    __half2 h = __floats2half2_rn(fminf(fmaxf(lo, -65504.0f), 65504.0f), fminf(fmaxf(hi, -65504.0f), 65504.0f));
    return *(uint32_t *)&h;
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t *r, const uint16_t *p) {
    unsigned a = (unsigned)__cvta_generic_to_shared(p);
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                 : "r"(a));
}

__device__ __forceinline__ void mma_h(float *d, const uint32_t *a, const uint32_t *b) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};\n"
                 : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
}

/* Y[t][r] = sum_k W[r][k] X[t][k] for a tile of TC_BM shared rows (SwiGLU: 64
 * weight rows of gate and up each, interleaved by 16 so that a warp's two
 * m16 tiles are the gate and up rows of the same outputs) x TC_BN tokens.
 * 8 warps: 4 along rows (32 each) x 2 along tokens (64 each). Thread tid
 * dequantizes 32 values of shared row tid/2 and converts 32 activations of
 * token tid/2 per step; the next step's loads are in flight during the MMAs. */
template <int F, bool SWI> __global__ void __launch_bounds__(256) tc_kernel(const mm_seg s, int64_t n) {
    typedef fmt_traits<F> T;
    __shared__ __align__(16) uint16_t As[TC_BM * TC_LDS], Bs[TC_BN * TC_LDS];
    const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31, wm = warp & 3, wn = warp >> 2;
    const int64_t m0 = (int64_t)blockIdx.x * (SWI ? TC_BM / 2 : TC_BM), t0 = (int64_t)blockIdx.y * TC_BN;

    /* this thread's loads: shared row ar (a weight row of tensor ten), token bt, half h of the step's columns */
    const int ar = tid >> 1, h = tid & 1;
    const int ten = SWI ? (ar >> 4) & 1 : 0;
    int64_t r = SWI ? m0 + (ar >> 5) * 16 + (ar & 15) : m0 + ar;
    r = r < s.rows ? r : s.rows - 1;
    const uint8_t *wrow = s.w[ten] + r * s.row_bytes[ten];
    const uint8_t *srow = T::QUANT ? s.s[ten] + r * s.sb_row_bytes[ten] : NULL;
    const uint8_t *brow = T::QUANT ? s.b[ten] + r * s.sb_row_bytes[ten] : NULL;
    int64_t bt = t0 + ar;
    bt = bt < n ? bt : n - 1;
    const float *xrow = s.x + bt * s.ldx;

    /* the next step's loads, in flight during this step's MMAs: raw weight words, scale and bias, activations */
    constexpr int NCH = T::VC < 32 ? 32 / T::VC : 1;
    uint32_t wraw[NCH][T::WORDS];
    sb_raw sraw = {0, 0}, braw = {0, 0};
    float4 breg[8];
    bool zero = false;
    auto load = [&](int64_t kt) {
        const int64_t k0 = kt * TC_BK + h * 32;
        zero = k0 >= s.cols; /* cols % 64 == 32: the last step's second half is zeros */
        if (zero) return;
        if (T::QUANT) sraw = sb_load(srow, s.sfmt, k0 >> s.gshift), braw = sb_load(brow, s.sfmt, k0 >> s.gshift);
#pragma unroll
        for (int c = 0; c < NCH; c++) chunk_load<F>(wrow, k0 / T::VC + c, wraw[c]);
#pragma unroll
        for (int i = 0; i < 8; i++) breg[i] = __ldg((const float4 *)(xrow + k0) + i);
    };
    /* ... then dequantized, rounded to float16 and stored to the tiles */
    auto store = [&]() {
        uint32_t areg[16], xb[16]; /* 32 float16 of weights, of activations */
        const float sc = T::QUANT ? sb_value(sraw, s.sfmt) : 1.0f, bi = T::QUANT ? sb_value(braw, s.sfmt) : 0.0f;
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
                areg[e / 2] = zero ? 0u : pack_h(q[0], q[1]);
                areg[e / 2 + 1] = zero ? 0u : pack_h(q[2], q[3]);
            }
#pragma unroll
        for (int i = 0; i < 8; i++) {
            xb[2 * i] = zero ? 0u : pack_h(breg[i].x, breg[i].y);
            xb[2 * i + 1] = zero ? 0u : pack_h(breg[i].z, breg[i].w);
        }
        uint4 *ad = (uint4 *)(As + ar * TC_LDS + h * 32), *bd = (uint4 *)(Bs + ar * TC_LDS + h * 32);
#pragma unroll
        for (int i = 0; i < 4; i++) {
            ad[i] = make_uint4(areg[4 * i], areg[4 * i + 1], areg[4 * i + 2], areg[4 * i + 3]);
            bd[i] = make_uint4(xb[4 * i], xb[4 * i + 1], xb[4 * i + 2], xb[4 * i + 3]);
        }
    };

    float acc[2][8][4];
#pragma unroll
    for (int i = 0; i < 2; i++)
#pragma unroll
        for (int j = 0; j < 8; j++)
#pragma unroll
            for (int e = 0; e < 4; e++) acc[i][j][e] = 0.0f;

    const int64_t steps = (s.cols + TC_BK - 1) / TC_BK;
    load(0);
    for (int64_t kt = 0; kt < steps; kt++) {
        __syncthreads(); /* the previous step's MMAs are done with the tiles */
        store();
        __syncthreads();
        if (kt + 1 < steps) load(kt + 1);
#pragma unroll
        for (int kk = 0; kk < TC_BK / 16; kk++) {
            uint32_t af[2][4], bf[4][4];
#pragma unroll
            for (int mi = 0; mi < 2; mi++)
                ldmatrix_x4(af[mi], As + (wm * 32 + mi * 16 + (lane & 15)) * TC_LDS + kk * 16 + (lane >> 4) * 8);
#pragma unroll
            for (int p = 0; p < 4; p++)
                ldmatrix_x4(bf[p], Bs + (wn * 64 + p * 16 + (lane & 7) + ((lane >> 4) << 3)) * TC_LDS + kk * 16 +
                                       ((lane >> 3) & 1) * 8);
#pragma unroll
            for (int mi = 0; mi < 2; mi++)
#pragma unroll
                for (int ni = 0; ni < 8; ni++) mma_h(acc[mi][ni], af[mi], &bf[ni / 2][(ni % 2) * 2]);
        }
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

/* ------------------------------------------------------------- launch -- */

typedef void (*mv_fn)(cudaStream_t st, unsigned blocks, size_t smem, int n_sm, const mv_args *a);
typedef void (*tc_fn)(cudaStream_t st, dim3 grid, const mm_seg *s, int64_t n);

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
template <int F, bool SWI> static void tc_launch(cudaStream_t st, dim3 grid, const mm_seg *s, int64_t n) {
    tc_kernel<F, SWI><<<grid, 256, 0, st>>>(*s, n);
}

#define MV_ROW(F, SWI) {mv_launch<F, 1, SWI>, mv_launch<F, 2, SWI>, mv_launch<F, 4, SWI>, mv_launch<F, 8, SWI>}
#define MV_FMT(F) {MV_ROW(F, false), MV_ROW(F, true)}
/* [format][swiglu][log2 NT] */
static const mv_fn mv_tab[WF_COUNT][2][4] = {MV_FMT(WF_F32), MV_FMT(WF_F16), MV_FMT(WF_BF16),
                                             MV_FMT(WF_Q2),  MV_FMT(WF_Q3),  MV_FMT(WF_Q4),
                                             MV_FMT(WF_Q5),  MV_FMT(WF_Q6),  MV_FMT(WF_Q8)};
#define TC_FMT(F) {tc_launch<F, false>, tc_launch<F, true>}
/* [format][swiglu]; F32 has none (see the top of the file) */
static const tc_fn tc_tab[WF_COUNT][2] = {{NULL, NULL}, TC_FMT(WF_F16), TC_FMT(WF_BF16),
                                          TC_FMT(WF_Q2), TC_FMT(WF_Q3), TC_FMT(WF_Q4),
                                          TC_FMT(WF_Q5), TC_FMT(WF_Q6), TC_FMT(WF_Q8)};

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

/* mv_kernel over nseg segments of format f (swi: SwiGLU pairs), n <= MV_MAX_N
 * tokens; segs staged to the device when there are several. */
static void mv_run(cuda_ctx *c, wfmt f, bool swi, const mm_seg *segs, int nseg, int64_t n, const char *what) {
    mv_args a;
    memset(&a, 0, sizeof a);
    a.one = segs[0], a.nseg = nseg, a.n = (int)n;
    const int rp = swi ? MV_R / 2 : MV_R;
    int64_t chunks = 0, sets = 0, cols = 0;
    for (int i = 0; i < nseg; i++) {
        int64_t ch = segs[i].cols / fmt_vc(f);
        chunks = i == 0 || ch < chunks ? ch : chunks;
        sets += (segs[i].rows + rp - 1) / rp;
        cols = segs[i].cols > cols ? segs[i].cols : cols;
    }
    a.ks = pick_ks(c, sets, chunks);
    const int spg = MV_WARPS / a.ks; /* sets a group */
    for (int i = 0; i < nseg; i++) a.first[i + 1] = a.first[i] + (int)cuda_blocks((segs[i].rows + rp - 1) / rp, spg);
    /* x in shared memory where it fits: rows of cols/4 float4s rounded up to whole swizzle blocks of 8 */
    int64_t xq = (cols / 4 + 7) / 8 * 8;
    size_t smem = (size_t)(n * xq) * 16;
    if (smem <= MV_SMEM_MAX) a.xq = (int)xq;
    else smem = 0;
    if (nseg > 1) {
        a.tab = (const mm_seg *)cuda_stage(c, segs, (size_t)nseg * sizeof *segs);
        if (!a.tab) return;
    }
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
                   float *y, const char *what) {
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
                mm_any(c, w0, w1, x + t0 * cols, nt, bias, y + t0 * rows, what);
            }
            return;
        }
        tc_tab[f][swi](c->stream, grid, &s, n);
        cuda_launched(c, what);
        return;
    }
    for (int64_t t0 = 0; t0 < n && !c->err; t0 += MV_MAX_N) {
        mm_seg p = s;
        p.x = x + t0 * cols, p.y = y + t0 * rows;
        mv_run(c, f, swi, &p, 1, n - t0 < MV_MAX_N ? n - t0 : MV_MAX_N, what);
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
    mm_any(c, w, NULL, x, n, bias, y, "matmul");
}

extern "C" void cuda_matmul_swiglu(cuda_ctx *c, const wtensor *gate, const wtensor *up, const float *x, int64_t n,
                                   float *out) {
    CUDA_LIVE(c);
    if (same_layout(gate, up)) {
        mm_any(c, gate, up, x, n, NULL, out, "matmul_swiglu");
        return;
    }
    /* gate and up stored differently (never in a file moe writes): two matmuls, then the product */
    float *u = (float *)cuda_scratch(c, (size_t)n * up->rows * sizeof(float));
    if (!u) return;
    mm_any(c, gate, NULL, x, n, NULL, out, "matmul_swiglu");
    mm_any(c, up, NULL, x, n, NULL, u, "matmul_swiglu");
    CUDA_LIVE(c);
    silu_mul_kernel<<<cuda_blocks(n * gate->rows, 256), 256, 0, c->stream>>>(out, u, n * gate->rows);
    cuda_launched(c, "matmul_swiglu");
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
    mm_seg segs[MOE_DEC_MAX + 1]; /* + 1: cuda_stage copies whole 256-byte blocks */
    /* gate/up of every expert in one launch when they share a format and read fast, else one by one */
    bool one = true;
    for (int i = 0; i < ne; i++) {
        one = one && gate[i]->fmt == gate[0]->fmt && same_layout(gate[i], up[i]) && fast_ok(gate[i], x, 0) &&
              fast_ok(up[i], x, 0) && gate[i]->rows > 0;
        segs[i] = seg_of(gate[i], up[i], x, 0, mid + i * ld_mid, 0, NULL);
    }
    if (one) mv_run(c, gate[0]->fmt, true, segs, ne, 1, "moe_decode gate/up");
    else
        for (int i = 0; i < ne; i++) cuda_matmul_swiglu(c, gate[i], up[i], x, 1, mid + i * ld_mid);
    one = true;
    for (int i = 0; i < ne; i++) {
        const float *xi = mid + i * ld_mid;
        one = one && down[i]->fmt == down[0]->fmt && fast_ok(down[i], xi, 0) && down[i]->rows > 0;
        segs[i] = seg_of(down[i], NULL, xi, 0, out[i], 0, NULL);
    }
    if (one) mv_run(c, down[0]->fmt, false, segs, ne, 1, "moe_decode down");
    else
        for (int i = 0; i < ne; i++) cuda_matmul(c, down[i], mid + i * ld_mid, 1, NULL, out[i]);
}

/* ------------------------------------------------------------- embed -- */

__global__ void embed_kernel(const mm_seg s, int fmt, const int32_t *tok, float *out) {
    const int64_t t = blockIdx.y, r = tok[t];
    const uint8_t *row = s.w[0] + r * s.row_bytes[0];
    const uint8_t *sr = s.s[0] ? s.s[0] + r * s.sb_row_bytes[0] : NULL;
    const uint8_t *br = s.b[0] ? s.b[0] + r * s.sb_row_bytes[0] : NULL;
    for (int64_t k = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; k < s.cols; k += (int64_t)gridDim.x * blockDim.x)
        out[t * s.cols + k] = elem_at(fmt, row, sr, br, s.sfmt, s.group, k);
}

extern "C" void cuda_embed(cuda_ctx *c, const wtensor *w, const int32_t *tokens, int64_t n, float *out) {
    CUDA_LIVE(c);
    if (n <= 0) return;
    for (int64_t t = 0; t < n; t++)
        if (tokens[t] < 0 || tokens[t] >= w->rows) {
            c->err = MOE_EINVAL;
            snprintf(c->msg, sizeof c->msg, "CUDA: embed: token %d at %lld outside [0, %lld)", (int)tokens[t],
                     (long long)t, (long long)w->rows);
            return;
        }
    for (int64_t t0 = 0; t0 < n && !c->err; t0 += 65535) { /* gridDim.y's limit */
        int64_t nt = n - t0 < 65535 ? n - t0 : 65535;
        const int32_t *tok = (const int32_t *)cuda_stage(c, tokens + t0, (size_t)nt * sizeof *tokens);
        if (!tok) return;
        mm_seg s = seg_of(w, NULL, NULL, 0, NULL, 0, NULL);
        dim3 grid(cuda_blocks(w->cols, 256) < 64 ? cuda_blocks(w->cols, 256) : 64, (unsigned)nt);
        embed_kernel<<<grid, 256, 0, c->stream>>>(s, (int)w->fmt, tok, out + t0 * w->cols);
        cuda_launched(c, "embed");
    }
}
