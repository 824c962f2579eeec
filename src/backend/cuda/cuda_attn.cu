/* cuda_attn.cu — RMSNorm, RoPE, the KV cache store and attention as CUDA
 * kernels, with backend.h's contracts (be_rmsnorm, be_rope, be_kv_store,
 * be_attention) and the CPU's arithmetic where it decides bits: the cache is
 * quantized exactly as kv_quantize does (the same float operations, so the
 * same codes), and a quantized element is dequantized as scale * q + bias
 * rounded twice, as the scalar reference does.
 *
 * Attention has two kernels:
 * - decode (a few queries): "flash-decoding". A block takes one query token,
 *   one KV head with up to GB of the query heads that read it (GQA: the keys
 *   are loaded once for all of them), and one split of the keys; its 4 warps
 *   take every 4th key, one lane per 32nd element of the head, with an online
 *   softmax per warp. The warps merge in shared memory; with several splits
 *   each writes (max, sum, unnormalised output) to scratch and a second
 *   kernel merges the splits.
 * - prompts on float32 (the fallback: other head dims, fewer queries,
 *   MOE_CUDA_ATT_TC=0): a block per tile of 32 queries x head; key tiles of 32 are
 *   dequantized into shared memory, each warp scores its 8 queries against
 *   the tile (a lane a key), and keeps an online softmax and the output
 *   accumulators (a lane per 32nd element) in registers.
 * - prompts on tensor cores (head dims 64 and 128, 16 queries or more; the
 *   default, MOE_CUDA_ATT_TC=0 in the environment turns it off per call):
 *   flash-attention 2 with mma.sync m16n8k16 on float16 operands. A block of
 *   8 warps takes 128 rows of (query, head of one KV head's group) and walks key tiles
 *   of 64, dequantized and rounded to float16 in shared memory once for the
 *   whole group; each warp keeps its 16 rows' scores, online softmax (float32,
 *   base 2) and output accumulators (float32) in registers. Q is scaled by
 *   scale * log2(e) before it is rounded, so a score is the exponent itself.
 *   Its results differ from the CPU's by float16 rounding (~4e-4 relative
 *   RMS in test_cuda_ops).
 * Keys are read from slot p % cap for every position p a query sees, as the
 * CPU reads them: a ring buffer under a sliding window. */
#include <cuda_fp16.h>
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>

#include "cuda_internal.h"

static void op_fail(cuda_ctx *c, moe_status st, const char *what) {
    if (c->err) return;
    c->err = st;
    snprintf(c->msg, sizeof c->msg, "CUDA: %s", what);
}

/* ------------------------------------------------------------- RMSNorm -- */

/* The sum of squares in double, as the CPU; a warp a row for short rows,
 * a block of 256 a row for long ones. */
__device__ static inline void rms_apply(const float *xr, const float *w, int64_t d, double ss, float eps, float *o,
                                        int i0, int step) {
    float inv = 1.0f / sqrtf((float)(ss / (double)d) + eps);
    for (int64_t i = i0; i < d; i += step) o[i] = w[i] * (xr[i] * inv);
}

__global__ static void k_rmsnorm_warp(const float *x, const float *w, int64_t n, int64_t d, float eps, float *out) {
    int64_t row = blockIdx.x * (int64_t)(blockDim.x / 32) + threadIdx.x / 32;
    if (row >= n) return;
    int lane = threadIdx.x % 32;
    const float *xr = x + row * d;
    double ss = 0;
    for (int64_t i = lane; i < d; i += 32) ss += (double)xr[i] * xr[i];
    for (int o = 16; o; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    rms_apply(xr, w, d, ss, eps, out + row * d, lane, 32);
}

__global__ static void k_rmsnorm_block(const float *x, const float *w, int64_t d, float eps, float *out) {
    __shared__ double part[32];
    int64_t row = blockIdx.x;
    const float *xr = x + row * d;
    double ss = 0;
    for (int64_t i = threadIdx.x; i < d; i += blockDim.x) ss += (double)xr[i] * xr[i];
    for (int o = 16; o; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    if (threadIdx.x % 32 == 0) part[threadIdx.x / 32] = ss;
    __syncthreads();
    ss = 0;
    for (int i = 0; i < (int)blockDim.x / 32; i++) ss += part[i];
    rms_apply(xr, w, d, ss, eps, out + row * d, threadIdx.x, blockDim.x);
}

extern "C" void cuda_rmsnorm(cuda_ctx *c, const float *x, const float *weight, int64_t n, int64_t d, float eps,
                             float *out) {
    CUDA_LIVE(c);
    if (n <= 0 || d <= 0) return;
    if (d <= 512) k_rmsnorm_warp<<<cuda_blocks(n, 8), 256, 0, c->stream>>>(x, weight, n, d, eps, out);
    else k_rmsnorm_block<<<(unsigned)n, 256, 0, c->stream>>>(x, weight, d, eps, out);
    cuda_launched(c, "rmsnorm");
}

/* ---------------------------------------------------------------- RoPE -- */

/* A thread a pair (t, head, i < rot/2). */
__global__ static void k_rope(float *x, int64_t n, int n_heads, int hd, int half, const int64_t *pos,
                              const float *inv_freq) {
    int64_t total = n * n_heads * half;
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < total; e += (int64_t)gridDim.x * blockDim.x) {
        int i = (int)(e % half);
        int64_t th = e / half, t = th / n_heads;
        float ang = (float)pos[t] * inv_freq[i], s, co;
        sincosf(ang, &s, &co);
        float *v = x + th * hd;
        float a = v[i], b = v[i + half];
        v[i] = a * co - b * s;
        v[i + half] = b * co + a * s;
    }
}

extern "C" void cuda_rope(cuda_ctx *c, float *x, int64_t n, int n_heads, int hd, int rot, const int64_t *pos,
                          const float *inv_freq) {
    CUDA_LIVE(c);
    int half = rot / 2;
    if (n <= 0 || half <= 0 || n_heads <= 0) return;
    unsigned b = cuda_blocks(n * n_heads * half, 256), most = (unsigned)c->n_sm * 16;
    k_rope<<<b < most ? b : most, 256, 0, c->stream>>>(x, n, n_heads, hd, half, pos, inv_freq);
    cuda_launched(c, "rope");
}

/* ------------------------------------------------------------ KV store -- */

/* Token t's write to slot `slot` is lost to a later token of the batch with
 * the same slot (the CPU writes in order). Positions increase (be_kv_store's
 * contract), so they are consecutive when the last is n - 1 past the first:
 * then exactly the rows before the last cap are overwritten; else a scan. */
__device__ static inline bool kv_overwritten(const int64_t *pos, int64_t n, int64_t cap, int64_t t, int64_t slot) {
    if (pos[n - 1] - pos[0] == n - 1) return t < n - cap;
    for (int64_t u = t + 1; u < n; u++)
        if (pos[u] % cap == slot) return true;
    return false;
}

/* float32 cache: a thread an element of a key and a value row */
__global__ static void k_kv_store32(float *kc, float *vc, const float *k, const float *v, int64_t n, int64_t w,
                                    const int64_t *pos, int64_t cap) {
    for (int64_t e = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; e < n * w; e += (int64_t)gridDim.x * blockDim.x) {
        int64_t t = e / w, j = e % w, slot = pos[t] % cap;
        if (kv_overwritten(pos, n, cap, t, slot)) continue;
        kc[slot * w + j] = k[e];
        vc[slot * w + j] = v[e];
    }
}

/* Quantized cache: a warp a group of one token's key (blockIdx.y 0) or value
 * (1) row: min and max, then kv_quantize's rule, operation for operation.
 * 4 bits: the even lane of each pair writes the byte (group and its start are even). */
template <int BITS>
__global__ static void k_kv_quant(unsigned char *kc, unsigned char *vc, float *ks, float *kb, float *vs, float *vb,
                                  const float *k, const float *v, int64_t n, int64_t w, int group,
                                  const int64_t *pos, int64_t cap) {
    int64_t gpr = w / group, unit = blockIdx.x * (int64_t)(blockDim.x / 32) + threadIdx.x / 32;
    if (unit >= n * gpr) return;
    int lane = threadIdx.x % 32;
    int64_t t = unit / gpr, gg = unit % gpr, g0 = gg * group, slot = pos[t] % cap;
    if (kv_overwritten(pos, n, cap, t, slot)) return;
    bool is_v = blockIdx.y == 1;
    const float *xg = (is_v ? v : k) + t * w + g0;
    unsigned char *row = (is_v ? vc : kc) + (size_t)slot * (size_t)(w * BITS / 8);
    float lo = xg[0], hi = xg[0];
    for (int j = lane; j < group; j += 32) {
        lo = xg[j] < lo ? xg[j] : lo;
        hi = xg[j] > hi ? xg[j] : hi;
    }
    for (int o = 16; o; o >>= 1) {
        float l2 = __shfl_xor_sync(0xffffffffu, lo, o), h2 = __shfl_xor_sync(0xffffffffu, hi, o);
        lo = l2 < lo ? l2 : lo;
        hi = h2 > hi ? h2 : hi;
    }
    const float qmax = (float)((1 << BITS) - 1);
    float s = (hi - lo) / qmax, inv = s > 0 ? 1.0f / s : 0.0f;
    if (lane == 0) {
        (is_v ? vs : ks)[slot * gpr + gg] = s;
        (is_v ? vb : kb)[slot * gpr + gg] = lo;
    }
    for (int j0 = 0; j0 < group; j0 += 32) {
        int j = j0 + lane;
        unsigned qv = 0;
        if (j < group) {
            float qf = rintf((xg[j] - lo) * inv);
            qf = qf > qmax ? qmax : qf >= 0 ? qf : 0.0f;
            qv = (unsigned)qf;
        }
        if (BITS == 8) {
            if (j < group) row[g0 + j] = (unsigned char)qv;
        } else {
            unsigned hi4 = __shfl_down_sync(0xffffffffu, qv, 1);
            if (j < group && (lane & 1) == 0) row[(g0 + j) / 2] = (unsigned char)(qv | hi4 << 4);
        }
    }
}

extern "C" void cuda_kv_store(cuda_ctx *c, const kv_cache *kv, const float *k, const float *v, int64_t n,
                              const int64_t *pos) {
    CUDA_LIVE(c);
    if (n <= 0) return;
    int64_t w = (int64_t)kv->n_kv * kv->hd;
    if (kv->bits == 32) {
        unsigned b = cuda_blocks(n * w, 256), most = (unsigned)c->n_sm * 16;
        k_kv_store32<<<b < most ? b : most, 256, 0, c->stream>>>((float *)kv->k, (float *)kv->v, k, v, n, w, pos,
                                                                 kv->cap);
        cuda_launched(c, "kv_store");
        return;
    }
    if ((kv->bits != 8 && kv->bits != 4) || kv->group <= 0 || kv->hd % kv->group || (kv->bits == 4 && kv->group % 2)) {
        op_fail(c, MOE_EUNSUPPORTED, "kv_store: cache of bits/group not 8 or 4 bits in even groups dividing the head");
        return;
    }
    dim3 grid(cuda_blocks(n * (w / kv->group), 8), 2);
    if (kv->bits == 8)
        k_kv_quant<8><<<grid, 256, 0, c->stream>>>((unsigned char *)kv->k, (unsigned char *)kv->v, kv->ks, kv->kb,
                                                   kv->vs, kv->vb, k, v, n, w, kv->group, pos, kv->cap);
    else
        k_kv_quant<4><<<grid, 256, 0, c->stream>>>((unsigned char *)kv->k, (unsigned char *)kv->v, kv->ks, kv->kb,
                                                   kv->vs, kv->vb, k, v, n, w, kv->group, pos, kv->cap);
    cuda_launched(c, "kv_store");
}

/* ----------------------------------------------------------- attention -- */

#define ATT_WARPS 4      /* warps a block, both kernels */
#define ATT_DECODE_MAX 4 /* queries up to which the decode kernel serves */
#define ATT_MIN_CHUNK 32 /* keys a split, at least */
#define PQ 32            /* prompt kernel: queries a block */
#define PK 32            /* keys a tile */
#define QPW (PQ / ATT_WARPS)

typedef struct att_args {
    const float *q;
    const int64_t *pos;         /* (dev) the queries' positions: pos[0] .. pos[0] + n - 1 */
    float *out, *part;          /* part: decode splits' [n x n_heads x nsplit x (hd + 2)] */
    const void *k, *v;          /* cache values, float32 or packed */
    const float *ks, *kb, *vs, *vb;
    int64_t n, cap, row;        /* row: values a slot (n_kv * hd) */
    int64_t rb, gpr;            /* packed bytes and groups a slot row */
    int n_heads, hd, group, G, window;
    int nsplit;                 /* decode: the grid's splits, the most att_splits gives */
    float scale;
} att_args;

/* Element e (= kv head * hd + j) of slot sl's row, as float32 */
template <int BITS>
__device__ static inline float kv_elem(const void *base, const float *sc, const float *bi, const att_args &a,
                                       int64_t sl, int e) {
    if (BITS == 32) return ((const float *)base)[sl * a.row + e];
    const unsigned char *r = (const unsigned char *)base + sl * a.rb;
    unsigned q = BITS == 8 ? r[e] : (r[e >> 1] >> ((e & 1) * 4)) & 15u;
    int64_t gi = sl * a.gpr + e / a.group;
    return __fadd_rn(__fmul_rn(sc[gi], (float)q), bi[gi]); /* unfused, as the CPU */
}

/* Bytes of packed values as one load (the caller keeps them aligned) */
template <int BYTES> struct kv_word;
template <> struct kv_word<1> { typedef unsigned char t; };
template <> struct kv_word<2> { typedef unsigned short t; };
template <> struct kv_word<4> { typedef unsigned t; };
template <> struct kv_word<8> { typedef unsigned long long t; };

/* A lane's EPL consecutive elements e0 .. e0+EPL-1 of slot sl (e0 = kv head *
 * hd + lane * EPL), nv of them inside the head. vec: the head dim and the
 * group are multiples of EPL, so the elements are one aligned load (cache
 * arrays from cudaMalloc) and share one scale and bias, at sg in the slot's
 * scale row; else element by element. */
template <int BITS, int EPL>
__device__ static inline void kv_lane(const void *base, const float *sc, const float *bi, const att_args &a,
                                      int64_t sl, int e0, int sg, int nv, bool vec, float *x) {
    if (!vec || nv < EPL) {
#pragma unroll
        for (int i = 0; i < EPL; i++) x[i] = i < nv ? kv_elem<BITS>(base, sc, bi, a, sl, e0 + i) : 0.0f;
        return;
    }
    if constexpr (BITS == 32) {
        const float *p = (const float *)base + sl * a.row + e0;
        if constexpr (EPL >= 4) {
#pragma unroll
            for (int i = 0; i < EPL; i += 4) {
                float4 f = *(const float4 *)(p + i);
                x[i] = f.x, x[i + 1] = f.y, x[i + 2] = f.z, x[i + 3] = f.w;
            }
        } else {
#pragma unroll
            for (int i = 0; i < EPL; i++) x[i] = p[i];
        }
    } else { /* EPL values of BITS bits: EPL*BITS/8 bytes, or one nibble */
        const unsigned char *r = (const unsigned char *)base + sl * a.rb;
        float s = sc[sl * a.gpr + sg], b = bi[sl * a.gpr + sg];
        unsigned long long w;
        if constexpr (BITS * EPL < 8) w = r[e0 >> 1] >> ((e0 & 1) * 4);
        else w = *(const typename kv_word<EPL * BITS / 8>::t *)(r + e0 * BITS / 8);
#pragma unroll
        for (int i = 0; i < EPL; i++)
            x[i] = __fadd_rn(__fmul_rn(s, (float)(unsigned)((w >> (i * BITS)) & ((1u << BITS) - 1))), b);
    }
}

__device__ static inline float warp_sum(float x) {
    for (int o = 16; o; o >>= 1) x += __shfl_xor_sync(0xffffffffu, x, o);
    return x;
}
__device__ static inline float warp_max(float x) {
    for (int o = 16; o; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffffu, x, o));
    return x;
}

/* The first key position the query at p sees */
__device__ static inline int64_t att_lo(int64_t p, int window) {
    return window > 0 && p - window + 1 > 0 ? p - window + 1 : 0;
}

/* Decode: how the keys the last query sees (span) are split, from the
 * positions on the device (so that a recorded launch serves every step):
 * chunks of at least ATT_MIN_CHUNK keys, at most a.nsplit of them. Returns
 * the splits in use, their length in *chunk. */
__device__ static inline int att_splits(const att_args &a, int64_t *chunk) {
    int64_t span = a.pos[0] + a.n;
    if (a.window > 0 && a.window < span) span = a.window;
    int64_t ch = (span + a.nsplit - 1) / a.nsplit;
    ch = ch < ATT_MIN_CHUNK ? ATT_MIN_CHUNK : ch;
    *chunk = ch;
    return (int)((span + ch - 1) / ch);
}

/* Decode: grid (nsplit, n_kv * ceil(G / GB), n); splits past att_splits' return at once. Lane l holds elements
 * l*EPL .. l*EPL+EPL-1 of the head (hd <= 32 * EPL). A warp takes keys
 * k0+warp, k0+warp+4, .. two at a time, so that four rows are in flight. */
template <int BITS, int EPL, int GB>
__global__ static void __launch_bounds__(ATT_WARPS * 32) k_att_decode(att_args a) {
    extern __shared__ float sm[]; /* [ATT_WARPS x GB] max, sum; [ATT_WARPS x GB x hd] output */
    int gblocks = (a.G + GB - 1) / GB, kvh = blockIdx.y / gblocks, g0 = blockIdx.y % gblocks * GB;
    int ng = a.G - g0 < GB ? a.G - g0 : GB, warp = threadIdx.x / 32, lane = threadIdx.x % 32, hd = a.hd;
    int64_t chunk;
    const int ns = att_splits(a, &chunk);
    if ((int)blockIdx.x >= ns) return; /* the whole block */
    int64_t t = blockIdx.z, p = a.pos[0] + t, k0 = att_lo(p, a.window) + (int64_t)blockIdx.x * chunk;
    int64_t k1 = k0 + chunk < p + 1 ? k0 + chunk : p + 1;
    int j0 = lane * EPL, nv = hd - j0 < EPL ? (hd - j0 > 0 ? hd - j0 : 0) : EPL, e0 = kvh * hd + j0;
    bool vec = hd % EPL == 0 && (BITS == 32 || a.group % EPL == 0);
    int sg = BITS == 32 ? 0 : e0 / a.group;
    float qv[GB][EPL], acc[GB][EPL], m[GB], l[GB];
#pragma unroll
    for (int g = 0; g < GB; g++) {
        const float *qh = a.q + (t * a.n_heads + (int64_t)kvh * a.G + g0 + g) * hd + j0;
        m[g] = -INFINITY, l[g] = 0;
#pragma unroll
        for (int i = 0; i < EPL; i++) {
            qv[g][i] = g < ng && i < nv ? qh[i] : 0.0f;
            acc[g][i] = 0;
        }
    }
    /* slots advance by ATT_WARPS keys without a division where the ring is longer than that */
    bool ring_step = a.cap > 2 * ATT_WARPS;
    int64_t sl = (k0 + warp) % a.cap;
    for (int64_t kp = k0 + warp; kp < k1; kp += 2 * ATT_WARPS) {
        int nk = kp + ATT_WARPS < k1 ? 2 : 1;
        int64_t sl2 = ring_step ? (sl + ATT_WARPS >= a.cap ? sl + ATT_WARPS - a.cap : sl + ATT_WARPS)
                                : (kp + ATT_WARPS) % a.cap;
        float kr[2][EPL], vr[2][EPL];
#pragma unroll
        for (int u = 0; u < 2; u++)
            if (u < nk) {
                kv_lane<BITS, EPL>(a.k, a.ks, a.kb, a, u ? sl2 : sl, e0, sg, nv, vec, kr[u]);
                kv_lane<BITS, EPL>(a.v, a.vs, a.vb, a, u ? sl2 : sl, e0, sg, nv, vec, vr[u]);
            }
#pragma unroll
        for (int u = 0; u < 2; u++) {
            if (u >= nk) break;
#pragma unroll
            for (int g = 0; g < GB; g++) {
                if (g >= ng) break;
                float s = 0;
#pragma unroll
                for (int i = 0; i < EPL; i++) s += qv[g][i] * kr[u][i];
                s = warp_sum(s) * a.scale;
                float mn = fmaxf(m[g], s), al = expf(m[g] - mn), pe = expf(s - mn);
                l[g] = l[g] * al + pe;
#pragma unroll
                for (int i = 0; i < EPL; i++) acc[g][i] = acc[g][i] * al + pe * vr[u][i];
                m[g] = mn;
            }
        }
        sl = ring_step ? (sl2 + ATT_WARPS >= a.cap ? sl2 + ATT_WARPS - a.cap : sl2 + ATT_WARPS)
                       : (kp + 2 * ATT_WARPS) % a.cap;
    }
    /* merge the warps */
    float *wm = sm, *wl = wm + ATT_WARPS * GB, *wacc = wl + ATT_WARPS * GB;
#pragma unroll
    for (int g = 0; g < GB; g++) {
        if (lane == 0) wm[warp * GB + g] = m[g], wl[warp * GB + g] = l[g];
#pragma unroll
        for (int i = 0; i < EPL; i++)
            if (i < nv) wacc[(warp * GB + g) * hd + j0 + i] = acc[g][i];
    }
    __syncthreads();
    for (int e = threadIdx.x; e < ng * hd; e += blockDim.x) {
        int g = e / hd, j = e % hd;
        float M = -INFINITY, L = 0, O = 0;
        for (int w = 0; w < ATT_WARPS; w++) M = fmaxf(M, wm[w * GB + g]);
        if (M > -INFINITY)
            for (int w = 0; w < ATT_WARPS; w++) {
                float mw = wm[w * GB + g], f = mw > -INFINITY ? expf(mw - M) : 0.0f;
                L += wl[w * GB + g] * f;
                O += wacc[(w * GB + g) * hd + j] * f;
            }
        int64_t th = t * a.n_heads + (int64_t)kvh * a.G + g0 + g;
        if (ns == 1) { /* split 0 holds key p: L > 0 */
            a.out[th * hd + j] = O / L;
            continue;
        }
        float *pp = a.part + (th * a.nsplit + blockIdx.x) * (hd + 2);
        if (j == 0) pp[0] = M, pp[1] = L;
        pp[2 + j] = O;
    }
}

/* Merges the splits of (t, head) blockIdx.x: out = sum_s O_s e^(m_s - M) / sum_s l_s e^(m_s - M).
 * (A variant that staged the weights in shared memory was ~10% faster at 4096
 * keys but failed under compute-sanitizer's memcheck for a reason not yet
 * found; this loop passed it.) */
__global__ static void k_att_merge(att_args a) {
    int64_t th = blockIdx.x;
    int hd = a.hd;
    const float *pp = a.part + th * a.nsplit * (hd + 2);
    int64_t chunk;
    const int ns = att_splits(a, &chunk);
    if (ns == 1) return; /* the decode kernel wrote out */
    float M = -INFINITY;
#pragma unroll 4
    for (int s = 0; s < ns; s++) M = fmaxf(M, pp[s * (hd + 2)]);
    for (int j = threadIdx.x; j < hd; j += blockDim.x) {
        float L = 0, O = 0;
#pragma unroll 4
        for (int s = 0; s < ns; s++) {
            float ms = pp[s * (hd + 2)], f = ms > -INFINITY ? expf(ms - M) : 0.0f;
            L += pp[s * (hd + 2) + 1] * f;
            O += pp[s * (hd + 2) + 2 + j] * f;
        }
        a.out[th * hd + j] = O / L;
    }
}

/* Prompts: grid (ceil(n / PQ), n_heads). Shared: Q [PQ x hd], K [PK x (hd+1)]
 * (padded: lane-per-key reads hit distinct banks), V [PK x hd], slots [PK]. */
template <int BITS, int EPL>
__global__ static void __launch_bounds__(ATT_WARPS * 32) k_att_prompt(att_args a) {
    extern __shared__ float sm[];
    int hd = a.hd, h = blockIdx.y, kvh = h / a.G, warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    float *Qs = sm, *Ks = Qs + PQ * hd, *Vs = Ks + PK * (hd + 1);
    int64_t *slots = (int64_t *)(Vs + PK * hd); /* 8-byte aligned: the float counts before it are even */
    int64_t t0 = (int64_t)blockIdx.x * PQ, nq = a.n - t0 < PQ ? a.n - t0 : PQ;
    const int64_t pos0 = a.pos[0];
    int64_t plast = pos0 + t0 + nq - 1, kstart = att_lo(pos0 + t0, a.window);
    for (int e = threadIdx.x; e < PQ * hd; e += blockDim.x) {
        int r = e / hd, j = e % hd;
        Qs[e] = r < nq ? a.q[((t0 + r) * a.n_heads + h) * hd + j] : 0.0f;
    }
    float m[QPW], l[QPW], acc[QPW][EPL];
    int64_t qp[QPW];
#pragma unroll
    for (int i = 0; i < QPW; i++) {
        m[i] = -INFINITY, l[i] = 0;
        qp[i] = warp * QPW + i < nq ? pos0 + t0 + warp * QPW + i : -1; /* -1: no query, sees no key */
#pragma unroll
        for (int e = 0; e < EPL; e++) acc[i][e] = 0;
    }
    for (int64_t kt = kstart; kt <= plast; kt += PK) {
        __syncthreads(); /* the previous tile is consumed (and Q stored, the first time) */
        if (threadIdx.x < PK) slots[threadIdx.x] = (kt + threadIdx.x) % a.cap;
        __syncthreads();
        for (int e = threadIdx.x; e < PK * hd; e += blockDim.x) {
            int r = e / hd, j = e % hd;
            bool in = kt + r <= plast;
            int ej = kvh * hd + j;
            Ks[r * (hd + 1) + j] = in ? kv_elem<BITS>(a.k, a.ks, a.kb, a, slots[r], ej) : 0.0f;
            Vs[r * hd + j] = in ? kv_elem<BITS>(a.v, a.vs, a.vb, a, slots[r], ej) : 0.0f;
        }
        __syncthreads();
        /* scores: lane = key kt + lane, for the warp's QPW queries */
        float s[QPW];
#pragma unroll
        for (int i = 0; i < QPW; i++) s[i] = 0;
        const float *kr = Ks + lane * (hd + 1), *qw = Qs + warp * QPW * hd;
        if ((hd & 3) == 0)
            for (int j = 0; j < hd; j += 4) {
                float k0 = kr[j], k1 = kr[j + 1], k2 = kr[j + 2], k3 = kr[j + 3];
#pragma unroll
                for (int i = 0; i < QPW; i++) {
                    float4 qq = *(const float4 *)(qw + i * hd + j);
                    s[i] += qq.x * k0 + qq.y * k1 + qq.z * k2 + qq.w * k3;
                }
            }
        else
            for (int j = 0; j < hd; j++) {
                float kj = kr[j];
#pragma unroll
                for (int i = 0; i < QPW; i++) s[i] += qw[i * hd + j] * kj;
            }
        int64_t kp = kt + lane;
        float pr[QPW];
#pragma unroll
        for (int i = 0; i < QPW; i++) {
            bool ok = kp <= qp[i] && kp >= att_lo(qp[i], a.window);
            float sv = ok ? s[i] * a.scale : -INFINITY, mn = fmaxf(m[i], warp_max(sv));
            pr[i] = 0;
            if (mn == -INFINITY) continue; /* no key yet for this query (uniform in the warp) */
            float al = expf(m[i] - mn);
            pr[i] = ok ? expf(sv - mn) : 0.0f;
            l[i] = l[i] * al + pr[i];
#pragma unroll
            for (int e = 0; e < EPL; e++) acc[i][e] *= al;
            m[i] = mn;
        }
        for (int kk = 0; kk < PK; kk++) {
            float vv[EPL];
#pragma unroll
            for (int e = 0; e < EPL; e++) vv[e] = lane + 32 * e < hd ? Vs[kk * hd + lane + 32 * e] : 0.0f;
#pragma unroll
            for (int i = 0; i < QPW; i++) {
                float pk = __shfl_sync(0xffffffffu, pr[i], kk);
#pragma unroll
                for (int e = 0; e < EPL; e++) acc[i][e] += pk * vv[e];
            }
        }
    }
#pragma unroll
    for (int i = 0; i < QPW; i++) {
        float L = warp_sum(l[i]);
        if (qp[i] < 0) continue;
        float *o = a.out + ((t0 + warp * QPW + i) * a.n_heads + h) * hd;
#pragma unroll
        for (int e = 0; e < EPL; e++)
            if (lane + 32 * e < hd) o[lane + 32 * e] = acc[i][e] / L;
    }
}

/* ------------------------------------------- prompt attention, tensor cores -- */

/* Warps a block: 8 (a tile's load serves 128 rows) ran 116 TFLOP/s on an H100
 * where 4 ran 87; at ~211 registers a thread either way one block of 8 or two
 * of 4 fit an SM, and capping the registers for three blocks of 4 (a little
 * spilling) ran 102. Unrolling the tile load changed nothing. */
#define TC_WARPS 8
#define TC_BM (16 * TC_WARPS) /* rows (query, head of the group) a block: 16 a warp */
#define TC_BN 64    /* keys a tile */
#define TC_MIN_N 16 /* queries from which the tensor-core kernel serves */



/* Elements e0 .. e0+7 of slot sl as float16 (e0 a multiple of 8; the group
 * too, so they share one scale and bias), dequantized as kv_elem does. */
template <int BITS>
__device__ __forceinline__ uint4 kv_half8(const void *base, const float *sc, const float *bi, const att_args &a,
                                          int64_t sl, int e0) {
    float x[8];
    if constexpr (BITS == 32) {
        const float4 *p = (const float4 *)((const float *)base + sl * a.row + e0);
        float4 f0 = p[0], f1 = p[1];
        x[0] = f0.x, x[1] = f0.y, x[2] = f0.z, x[3] = f0.w, x[4] = f1.x, x[5] = f1.y, x[6] = f1.z, x[7] = f1.w;
    } else {
        const unsigned char *r = (const unsigned char *)base + sl * a.rb;
        int64_t gi = sl * a.gpr + e0 / a.group;
        float s = sc[gi], b = bi[gi];
        unsigned long long w = BITS == 8 ? *(const unsigned long long *)(r + e0) : *(const unsigned *)(r + e0 / 2);
#pragma unroll
        for (int i = 0; i < 8; i++)
            x[i] = __fadd_rn(__fmul_rn(s, (float)(unsigned)((w >> (i * BITS)) & ((1u << BITS) - 1))), b);
    }
    return make_uint4(pack_h(x[0], x[1]), pack_h(x[2], x[3]), pack_h(x[4], x[5]), pack_h(x[6], x[7]));
}

/* Grid (ceil(n G / TC_BM), n_kv); row R of the n x G (query t = R / G, head
 * kvh G + R % G), the heavy tiles (late queries) launched first. Shared: K and
 * V tiles [TC_BN x (HD + 8)] float16 (the pad spreads ldmatrix's rows over
 * the banks), the tile's slots [TC_BN]. Thread layout of mma.sync's
 * fragments: a lane holds rows lane/4 and lane/4 + 8 of its warp's 16, and
 * columns 2 (lane % 4) + {0, 1} of every 8. */
template <int BITS, int HD>
__global__ static void __launch_bounds__(TC_WARPS * 32) k_att_prompt_tc(att_args a) {
    constexpr int LD = HD + 8, KS = HD / 16, NT = TC_BN / 8, OT = HD / 8;
    extern __shared__ __align__(16) unsigned char tc_sm[];
    uint16_t *Ks = (uint16_t *)tc_sm, *Vs = Ks + TC_BN * LD;
    int64_t *slots = (int64_t *)(Vs + TC_BN * LD);
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, G = a.G, kvh = blockIdx.y;
    const int64_t nr = a.n * G, r0 = (int64_t)(gridDim.x - 1 - blockIdx.x) * TC_BM, pos0 = a.pos[0];
    const int64_t rlast = r0 + TC_BM < nr ? r0 + TC_BM - 1 : nr - 1;
    const int64_t kstart = att_lo(pos0 + r0 / G, a.window), kend = pos0 + rlast / G; /* keys the block sees */
    /* the warp's rows: live, all valid (full), its first and last query positions */
    const int64_t rw = r0 + 16 * warp, rwl = rw + 15 < nr ? rw + 15 : nr - 1;
    const bool wlive = rw < nr, wall = rw + 15 < nr;
    const int64_t wq0 = pos0 + rw / G, wq1 = pos0 + rwl / G;
    /* the thread's two rows */
    int64_t qp[2];
    const float *qr[2];
    float *orow[2];
#pragma unroll
    for (int i = 0; i < 2; i++) {
        int64_t r = rw + lane / 4 + 8 * i, t = r / G;
        bool ok = r < nr;
        int64_t th = t * a.n_heads + (int64_t)kvh * G + r % G;
        qp[i] = ok ? pos0 + t : -1; /* -1: no query, sees no key */
        qr[i] = ok ? a.q + th * HD : nullptr;
        orow[i] = ok ? a.out + th * HD : nullptr;
    }
    uint32_t qf[KS][4];
    const float qs = a.scale * 1.44269504088896341f;
#pragma unroll
    for (int kk = 0; kk < KS; kk++) {
        int c = kk * 16 + 2 * (lane & 3);
#pragma unroll
        for (int h = 0; h < 2; h++)
#pragma unroll
            for (int i = 0; i < 2; i++)
                qf[kk][2 * h + i] = qr[i] ? pack_h(qr[i][c + 8 * h] * qs, qr[i][c + 8 * h + 1] * qs) : 0u;
    }
    float o[OT][4], m[2] = {-INFINITY, -INFINITY}, l[2] = {0, 0};
#pragma unroll
    for (int j = 0; j < OT; j++) o[j][0] = o[j][1] = o[j][2] = o[j][3] = 0;

    for (int64_t kt = kstart; kt <= kend; kt += TC_BN) {
        __syncthreads(); /* the previous tile is consumed */
        for (int r = threadIdx.x; r < TC_BN; r += blockDim.x) slots[r] = (kt + r) % a.cap;
        __syncthreads();
        for (int c = threadIdx.x; c < TC_BN * HD / 8; c += TC_WARPS * 32) {
            int r = c / (HD / 8), j = c % (HD / 8) * 8, e0 = kvh * HD + j;
            bool in = kt + r <= kend; /* zeros past the last key: P = 0 times V must be 0, not NaN */
            uint4 kx = in ? kv_half8<BITS>(a.k, a.ks, a.kb, a, slots[r], e0) : make_uint4(0, 0, 0, 0);
            uint4 vx = in ? kv_half8<BITS>(a.v, a.vs, a.vb, a, slots[r], e0) : make_uint4(0, 0, 0, 0);
            *(uint4 *)(Ks + r * LD + j) = kx;
            *(uint4 *)(Vs + r * LD + j) = vx;
        }
        __syncthreads();
        if (!wlive || kt > wq1 || kt + TC_BN - 1 < att_lo(wq0, a.window)) continue; /* no key of the tile for the warp */
        float s[NT][4];
#pragma unroll
        for (int j = 0; j < NT; j++) s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0;
#pragma unroll
        for (int kk = 0; kk < KS; kk++)
#pragma unroll
            for (int p = 0; p < NT / 2; p++) {
                uint32_t b[4];
                ldmatrix_x4(b, Ks + (p * 16 + (lane & 7) + ((lane >> 4) << 3)) * LD + kk * 16 + ((lane >> 3) & 1) * 8,
                                false);
                mma_h(s[2 * p], qf[kk], b);
                mma_h(s[2 * p + 1], qf[kk], b + 2);
            }
        /* masks: causal and the window by absolute positions, unless every key of the tile is seen by every row */
        if (!(wall && kt + TC_BN - 1 <= wq0 && kt >= att_lo(wq1, a.window)))
#pragma unroll
            for (int j = 0; j < NT; j++)
#pragma unroll
                for (int e = 0; e < 4; e++) {
                    int64_t kp = kt + j * 8 + 2 * (lane & 3) + (e & 1), p = qp[e >> 1];
                    if (!(kp <= p && kp >= att_lo(p, a.window))) s[j][e] = -INFINITY;
                }
        /* online softmax, base 2: rows i (elements 2i, 2i+1 of each fragment), reduced over the lane quad */
#pragma unroll
        for (int i = 0; i < 2; i++) {
            float mx = -INFINITY;
#pragma unroll
            for (int j = 0; j < NT; j++) mx = fmaxf(mx, fmaxf(s[j][2 * i], s[j][2 * i + 1]));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
            mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
            float mn = fmaxf(m[i], mx), base = mn == -INFINITY ? 0.0f : mn, al = exp2f(m[i] - base), sum = 0;
#pragma unroll
            for (int j = 0; j < NT; j++) {
                s[j][2 * i] = exp2f(s[j][2 * i] - base);
                s[j][2 * i + 1] = exp2f(s[j][2 * i + 1] - base);
                sum += s[j][2 * i] + s[j][2 * i + 1];
            }
            l[i] = l[i] * al + sum; /* the thread's columns only: the quad sums at the end */
            m[i] = mn;
#pragma unroll
            for (int j = 0; j < OT; j++) o[j][2 * i] *= al, o[j][2 * i + 1] *= al;
        }
        /* O += P V: the score fragments of keys 16kk .. 16kk+15 are the A fragment */
#pragma unroll
        for (int kk = 0; kk < TC_BN / 16; kk++) {
            uint32_t pa[4] = {pack_h(s[2 * kk][0], s[2 * kk][1]), pack_h(s[2 * kk][2], s[2 * kk][3]),
                              pack_h(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                              pack_h(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
            for (int p = 0; p < OT / 2; p++) {
                uint32_t b[4];
                ldmatrix_x4(b, Vs + (kk * 16 + (lane & 7) + ((lane >> 3) & 1) * 8) * LD + p * 16 + (lane >> 4) * 8,
                                true);
                mma_h(o[2 * p], pa, b);
                mma_h(o[2 * p + 1], pa, b + 2);
            }
        }
    }
#pragma unroll
    for (int i = 0; i < 2; i++) {
        float L = l[i];
        L += __shfl_xor_sync(0xffffffffu, L, 1);
        L += __shfl_xor_sync(0xffffffffu, L, 2);
        if (!orow[i]) continue; /* a valid row saw its own key: L > 0 */
#pragma unroll
        for (int j = 0; j < OT; j++) {
            int col = j * 8 + 2 * (lane & 3);
            orow[i][col] = o[j][2 * i] / L;
            orow[i][col + 1] = o[j][2 * i + 1] / L;
        }
    }
}

/* Launches with the smem opt-in beyond 48 KiB, which the prompt kernel needs from hd 128 on. */
template <typename K>
static bool att_launch(cuda_ctx *c, K kern, dim3 grid, size_t smem, const att_args &a, const char *what,
                       int threads = ATT_WARPS * 32) {
    if (smem > 48 * 1024 &&
        !cuda_check(c, cudaFuncSetAttribute(kern, cudaFuncAttributeMaxDynamicSharedMemorySize, (int)smem), what))
        return false;
    kern<<<grid, threads, smem, c->stream>>>(a);
    return cuda_launched(c, what);
}

/* The tensor-core prompt kernel, where it applies (head dim 64 or 128, groups
 * of a multiple of 8 values, TC_MIN_N queries or more). Returns whether it ran. */
template <int BITS>
static bool att_prompt_tc(cuda_ctx *c, const att_args &a, int n_kv) {
    if (a.n < TC_MIN_N || (a.hd != 64 && a.hd != 128) || (BITS != 32 && a.group % 8)) return false;
    dim3 grid(cuda_blocks(a.n * a.G, TC_BM), (unsigned)n_kv);
    size_t smem = sizeof(uint16_t) * 2 * TC_BN * (size_t)(a.hd + 8) + sizeof(int64_t) * TC_BN;
    if (a.hd == 64) att_launch(c, k_att_prompt_tc<BITS, 64>, grid, smem, a, "attention (prompt, tensor cores)", TC_WARPS * 32);
    else att_launch(c, k_att_prompt_tc<BITS, 128>, grid, smem, a, "attention (prompt, tensor cores)", TC_WARPS * 32);
    return true;
}

/* MOE_CUDA_ATT_TC=0 in the environment: prompts on the float32 kernel (read
 * per call, so that a test can compare both kernels in one context). */
static bool att_tc_allowed(void) {
    const char *e = getenv("MOE_CUDA_ATT_TC");
    return !(e && e[0] == '0');
}

template <int BITS, int EPL>
static void att_run(cuda_ctx *c, att_args a, int n_kv) {
    int hd = a.hd;
    if (a.n > ATT_DECODE_MAX) {
        if (att_tc_allowed() && att_prompt_tc<BITS>(c, a, n_kv)) return;
        size_t smem = sizeof(float) * (size_t)(PQ * hd + PK * (hd + 1) + PK * hd) + sizeof(int64_t) * PK;
        dim3 grid(cuda_blocks(a.n, PQ), (unsigned)a.n_heads);
        att_launch(c, k_att_prompt<BITS, EPL>, grid, smem, a, "attention (prompt)");
        return;
    }
    int GB = a.G >= 8 ? 8 : a.G >= 4 ? 4 : a.G >= 2 ? 2 : 1, gblocks = (a.G + GB - 1) / GB;
    /* splits: about 4 blocks an SM, at least ATT_MIN_CHUNK keys each, as many as
     * the longest span the cache holds needs (att_splits picks per call, on the device) */
    int64_t most = a.window > 0 && a.window < a.cap ? a.window : a.cap, base = (int64_t)n_kv * gblocks * a.n;
    int64_t want = (4 * (int64_t)c->n_sm + base - 1) / base, need = (most + ATT_MIN_CHUNK - 1) / ATT_MIN_CHUNK;
    a.nsplit = (int)(want < need ? want : need > 0 ? need : 1);
    if (a.nsplit > 1) {
        a.part = (float *)cuda_scratch(c, sizeof(float) * (size_t)(a.n * a.n_heads * a.nsplit) * (size_t)(hd + 2));
        if (!a.part) return;
    }
    dim3 grid((unsigned)a.nsplit, (unsigned)(n_kv * gblocks), (unsigned)a.n);
    size_t smem = sizeof(float) * ATT_WARPS * (size_t)GB * (size_t)(hd + 2);
    bool ok = GB == 8   ? att_launch(c, k_att_decode<BITS, EPL, 8>, grid, smem, a, "attention (decode)")
              : GB == 4 ? att_launch(c, k_att_decode<BITS, EPL, 4>, grid, smem, a, "attention (decode)")
              : GB == 2 ? att_launch(c, k_att_decode<BITS, EPL, 2>, grid, smem, a, "attention (decode)")
                        : att_launch(c, k_att_decode<BITS, EPL, 1>, grid, smem, a, "attention (decode)");
    if (!ok || a.nsplit == 1) return;
    k_att_merge<<<(unsigned)(a.n * a.n_heads), 128, 0, c->stream>>>(a);
    cuda_launched(c, "attention (merge)");
}

template <int BITS>
static void att_bits(cuda_ctx *c, const att_args &a, int n_kv) {
    if (a.hd <= 32) att_run<BITS, 1>(c, a, n_kv);
    else if (a.hd <= 64) att_run<BITS, 2>(c, a, n_kv);
    else if (a.hd <= 128) att_run<BITS, 4>(c, a, n_kv);
    else att_run<BITS, 8>(c, a, n_kv);
}

extern "C" void cuda_attention(cuda_ctx *c, const float *q, int64_t n, const int64_t *pos, const kv_cache *kv, int n_heads,
                               int window, float scale, float *out) {
    CUDA_LIVE(c);
    if (n <= 0) return;
    if (kv->hd < 1 || kv->hd > 256 || kv->n_kv < 1 || n_heads % kv->n_kv ||
        (kv->bits != 32 && kv->bits != 8 && kv->bits != 4) || (kv->bits != 32 && (kv->group < 1 || kv->hd % kv->group))) {
        op_fail(c, MOE_EUNSUPPORTED, "attention: head dim above 256, heads not a multiple of the KV heads, or bad cache");
        return;
    }
    att_args a = {};
    a.q = q, a.out = out, a.k = kv->k, a.v = kv->v, a.ks = kv->ks, a.kb = kv->kb, a.vs = kv->vs, a.vb = kv->vb;
    a.n = n, a.pos = pos, a.cap = kv->cap, a.row = (int64_t)kv->n_kv * kv->hd;
    a.rb = a.row * kv->bits / 8, a.gpr = kv->bits == 32 ? 0 : a.row / kv->group;
    a.n_heads = n_heads, a.hd = kv->hd, a.group = kv->bits == 32 ? 1 : kv->group, a.G = n_heads / kv->n_kv;
    a.window = window, a.nsplit = 1, a.scale = scale;
    if (kv->bits == 32) att_bits<32>(c, a, kv->n_kv);
    else if (kv->bits == 8) att_bits<8>(c, a, kv->n_kv);
    else att_bits<4>(c, a, kv->n_kv);
}
