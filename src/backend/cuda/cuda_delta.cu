/* cuda_delta.cu — the operations of gated DeltaNet layers (Qwen3-Next's
 * linear attention) as CUDA kernels: unpacking the input projections, the
 * causal depthwise conv with its carried state, the l2 normalisation of q
 * and k, and the gated delta rule.
 *
 * The delta rule runs token by token (the recurrent form of delta.c): a
 * block per value head and block of 32 columns keeps its part of S [dk x dv]
 * in registers for the whole call, thread (group gi, column c) holding rows
 * gi*rpt .. of column c, so S is read from and written to memory once per
 * call rather than once per token. */
#include <stdio.h>

#include "cuda_internal.h"

__device__ static inline float sigmoid_dev(float x) { return 1.0f / (1.0f + expf(-x)); }
__device__ static inline float silu_dev(float x) { return x / (1.0f + expf(-x)); }
/* torch's softplus: threshold 20, x itself above */
__device__ static inline float softplus_dev(float x) { return x > 20.0f ? x : log1pf(expf(x)); }

/* ------------------------------------------------------- unpacking -- */

/* One block row t, threads over the columns of in (wi) and of ba (2*nv). */
__global__ static void k_delta_split(const float *in, const float *ba, int nk, int nv, int dk, int dv,
                                     const float *neg_a, const float *dt_bias, float *mix, float *z, float *beta,
                                     float *g) {
    int64_t t = blockIdx.x;
    int r = nv / nk;
    int64_t kd = (int64_t)nk * dk, vd = (int64_t)nv * dv, wi = 2 * kd + 2 * vd, blk = 2 * dk + 2 * (int64_t)r * dv;
    const float *it = in + t * wi, *bt = ba + t * 2 * nv;
    float *mt = mix + t * (2 * kd + vd), *zt = z + t * vd;
    for (int64_t col = threadIdx.x; col < wi + 2 * nv; col += blockDim.x) {
        if (col >= wi) { /* ba: per key head gh, b of its r value heads, then a */
            int cb = (int)(col - wi), gh = cb / (2 * r), o = cb % (2 * r), h = gh * r + (o < r ? o : o - r);
            if (o < r) beta[t * nv + h] = sigmoid_dev(bt[cb]);
            else g[t * nv + h] = neg_a[h] * softplus_dev(bt[cb] + dt_bias[h]);
            continue;
        }
        int64_t gh = col / blk, o = col % blk; /* key head gh's part: q(dk) k(dk) v(r*dv) z(r*dv) */
        float x = it[col];
        if (o < dk) mt[gh * dk + o] = x;
        else if (o < 2 * dk) mt[kd + gh * dk + o - dk] = x;
        else if (o < 2 * dk + r * dv) mt[2 * kd + gh * r * dv + o - 2 * dk] = x;
        else zt[gh * r * dv + o - 2 * dk - r * dv] = x;
    }
}

extern "C" void cuda_delta_split(cuda_ctx *c, const float *in, const float *ba, int64_t n, int nk, int nv, int dk,
                                 int dv, const float *neg_a, const float *dt_bias, float *mix, float *z, float *beta,
                                 float *g) {
    CUDA_LIVE(c);
    if (n <= 0) return;
    k_delta_split<<<(unsigned)n, 256, 0, c->stream>>>(in, ba, nk, nv, dk, dv, neg_a, dt_bias, mix, z, beta, g);
    cuda_launched(c, "delta_split");
}

/* ------------------------------------------------------------ l2 norm -- */

/* One warp a vector (t, head); the sum of squares in double, as the CPU. */
__global__ static void k_l2norm(float *x, int64_t ld, int64_t n, int heads, int d, float scale) {
    int64_t v = blockIdx.x * (int64_t)(blockDim.x / 32) + threadIdx.x / 32;
    if (v >= n * heads) return;
    int lane = threadIdx.x % 32;
    float *xv = x + v / heads * ld + v % heads * d;
    double ss = 0;
    for (int i = lane; i < d; i += 32) ss += (double)xv[i] * xv[i];
    for (int o = 16; o; o >>= 1) ss += __shfl_xor_sync(0xffffffffu, ss, o);
    float inv = scale / sqrtf((float)ss + 1e-6f);
    for (int i = lane; i < d; i += 32) xv[i] *= inv;
}

extern "C" void cuda_l2norm(cuda_ctx *c, float *x, int64_t ld, int64_t n, int heads, int d, float scale) {
    CUDA_LIVE(c);
    int64_t vecs = n * heads;
    if (vecs <= 0) return;
    k_l2norm<<<cuda_blocks(vecs, 8), 256, 0, c->stream>>>(x, ld, n, heads, d, scale);
    cuda_launched(c, "l2norm");
}

/* --------------------------------------------------------- causal conv -- */

/* out[t][c] = silu(sum_r w[c*K + r] * in(t - K + 1 + r)[c]), in(i < 0) from
 * the state's row K-1+i: every output independent, one thread each. */
__global__ static void k_conv_out(const float *x, int64_t n, int64_t ch, int K, const float *w, const float *state,
                                  float *out) {
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < n * ch; i += (int64_t)gridDim.x * blockDim.x) {
        int64_t t = i / ch, cc = i % ch;
        float acc = 0;
        for (int r = 0; r < K; r++) {
            int64_t src = t - K + 1 + r;
            float in = src >= 0 ? x[src * ch + cc] : state[(K - 1 + src) * ch + cc];
            acc += w[cc * K + r] * in;
        }
        out[i] = silu_dev(acc);
    }
}

/* The state becomes the last K-1 inputs: row r <- in(n - K + 1 + r). Rows
 * still taken from the old state come from later rows (r + n > r), so one
 * thread a channel, rows in ascending order, shifts in place. */
__global__ static void k_conv_state(const float *x, int64_t n, int64_t ch, int K, float *state) {
    int64_t cc = blockIdx.x * (int64_t)blockDim.x + threadIdx.x;
    if (cc >= ch) return;
    for (int r = 0; r < K - 1; r++) {
        int64_t src = n - K + 1 + r;
        state[r * ch + cc] = src >= 0 ? x[src * ch + cc] : state[(r + n) * ch + cc];
    }
}

extern "C" void cuda_causal_conv(cuda_ctx *c, const float *x, int64_t n, int64_t ch, int K, const float *w,
                                 float *state, float *out) {
    CUDA_LIVE(c);
    if (n <= 0 || ch <= 0) return;
    unsigned most = (unsigned)c->n_sm * 16, b = cuda_blocks(n * ch, 256);
    k_conv_out<<<b < most ? b : most, 256, 0, c->stream>>>(x, n, ch, K, w, state, out);
    if (!cuda_launched(c, "causal_conv") || K < 2) return;
    k_conv_state<<<cuda_blocks(ch, 256), 256, 0, c->stream>>>(x, n, ch, K, state);
    cuda_launched(c, "causal_conv state");
}

/* ---------------------------------------------------------- delta rule -- */

#define DELTA_RPT 16  /* rows of S a thread holds at most */
#define DELTA_COLS 32 /* columns of S a block */
#define DELTA_PF 4    /* q and k values a thread prefetches, at most */

/* Block (h, column block): the value head h's columns c0 .. c0+cb-1 of S, for
 * blockDim = cb * R threads with R = ceil(dk / DELTA_RPT): thread (gi, cl) =
 * (tid / cb, tid % cb) holds S[r][c0 + cl] for rows r = gi*rpt + i, i < rpt
 * (rpt = ceil(dk / R)). The columns of S are independent but for k.q, which
 * each block computes. Per token (with d = exp(g)):
 *   Sk = S^T k, Sq = S^T q, kq = k.q   (partial over a thread's rows, summed over gi in shared memory)
 *   u = (v - d Sk) beta;  o = d Sq + kq u;  S = d S + k u^T
 * as delta.c's delta_recurrent. q and k are double-buffered in shared memory,
 * and the next token's are loaded while this one computes: two barriers a token. */
__global__ static void __launch_bounds__(1024)
    k_delta_rule(const float *q, const float *k, const float *v, int64_t ld, const float *g, const float *beta,
                 int64_t n, int nk, int nv, int dk, int dv, float *state, float *out) {
    extern __shared__ float sm[];
    int R = (dk + DELTA_RPT - 1) / DELTA_RPT, rpt = (dk + R - 1) / R, cb = blockDim.x / R;
    int h = blockIdx.x, kh = h / (nv / nk), tid = threadIdx.x, gi = tid / cb, cl = tid % cb;
    int cc = blockIdx.y * cb + cl, r0 = gi * rpt, nr = dk - r0 < rpt ? dk - r0 : rpt;
    bool col = cc < dv; /* a column of S (the last block may have fewer) */
    /* [2 x dk] q, [2 x dk] k, [2 x R x cb] Sk and Sq partials, [2 x R] kq partials */
    float *qs = sm, *ks = qs + 2 * dk, *psk = ks + 2 * dk, *psq = psk + 2 * R * cb, *pkq = psq + 2 * R * cb;
    float S[DELTA_RPT];
    float *Sh = state + (size_t)h * dk * dv;
#pragma unroll
    for (int i = 0; i < DELTA_RPT; i++) S[i] = col && i < nr ? Sh[(size_t)(r0 + i) * dv + cc] : 0.0f;
    float nq[DELTA_PF], nkk[DELTA_PF], nvv = 0, ng = 0, nb = 0; /* the next token's inputs */
    auto fetch = [&](int64_t t) {
#pragma unroll
        for (int m = 0; m < DELTA_PF; m++) {
            int i = tid + m * (int)blockDim.x;
            if (i < dk) nq[m] = q[t * ld + (int64_t)kh * dk + i], nkk[m] = k[t * ld + (int64_t)kh * dk + i];
        }
        if (col) nvv = v[t * ld + (int64_t)h * dv + cc];
        ng = g[t * nv + h], nb = beta[t * nv + h];
    };
    fetch(0);
    for (int64_t t = 0; t < n; t++) {
        int b = (int)(t & 1);
        float *qb = qs + b * dk, *kb = ks + b * dk;
#pragma unroll
        for (int m = 0; m < DELTA_PF; m++) {
            int i = tid + m * (int)blockDim.x;
            if (i < dk) qb[i] = nq[m], kb[i] = nkk[m];
        }
        float vc = nvv, d = expf(ng), bt = nb;
        if (t + 1 < n) fetch(t + 1);
        __syncthreads();
        float sk = 0, sq = 0, kq = 0;
#pragma unroll
        for (int i = 0; i < DELTA_RPT; i++)
            if (i < nr) {
                sk += S[i] * kb[r0 + i];
                sq += S[i] * qb[r0 + i];
                if (cl == 0) kq += kb[r0 + i] * qb[r0 + i];
            }
        psk[(b * R + gi) * cb + cl] = sk;
        psq[(b * R + gi) * cb + cl] = sq;
        if (cl == 0) pkq[b * R + gi] = kq;
        __syncthreads();
        if (!col) continue;
        sk = sq = kq = 0;
        for (int j = 0; j < R; j++) {
            sk += psk[(b * R + j) * cb + cl];
            sq += psq[(b * R + j) * cb + cl];
            kq += pkq[b * R + j];
        }
        float u = (vc - d * sk) * bt;
        if (gi == 0) out[(t * nv + h) * dv + cc] = d * sq + kq * u;
#pragma unroll
        for (int i = 0; i < DELTA_RPT; i++)
            if (i < nr) S[i] = S[i] * d + kb[r0 + i] * u;
    }
#pragma unroll
    for (int i = 0; i < DELTA_RPT; i++)
        if (col && i < nr) Sh[(size_t)(r0 + i) * dv + cc] = S[i];
}

extern "C" void cuda_delta_rule(cuda_ctx *c, const float *q, const float *k, const float *v, int64_t ld,
                                const float *g, const float *beta, int64_t n, int nk, int nv, int dk, int dv,
                                float *state, float *out) {
    CUDA_LIVE(c);
    if (n <= 0) return;
    int R = (dk + DELTA_RPT - 1) / DELTA_RPT, cb = dv < DELTA_COLS ? dv : DELTA_COLS, threads = R * cb;
    if (dk < 1 || dv < 1 || threads > 1024 || dk > DELTA_PF * threads) {
        c->err = MOE_EUNSUPPORTED;
        snprintf(c->msg, sizeof c->msg, "CUDA delta rule: dk %d x dv %d does not fit a block", dk, dv);
        return;
    }
    size_t smem = sizeof(float) * (4 * (size_t)dk + 4 * (size_t)R * cb + 2 * (size_t)R);
    dim3 grid((unsigned)nv, (unsigned)((dv + cb - 1) / cb));
    k_delta_rule<<<grid, (unsigned)threads, smem, c->stream>>>(q, k, v, ld, g, beta, n, nk, nv, dk, dv, state, out);
    cuda_launched(c, "delta_rule");
}
