/* delta.c — the operations of gated DeltaNet layers (Qwen3-Next's linear
 * attention) on the CPU: the causal depthwise convolution with its carried
 * state, and the gated delta rule in its recurrent form (decode) and its
 * chunked form (prompts), which compute the same thing.
 *
 * The delta rule, per value head h reading key head kh = h / (nv / nk),
 * with S_h [dk x dv] float32 carried from token to token:
 *     S = S * exp(g_t);   u = (v_t - S^T k_t) * beta_t;   S += k_t u^T;   o_t = S^T q_t
 * The chunked form (the "WY" form of the gated delta rule) takes L <= chunk
 * tokens at once. With G_i = g_1 + .. + g_i (cumulative log decay in the
 * chunk) and the strictly lower triangular A[i][j] = -beta_i (k_i.k_j)
 * exp(G_i - G_j), T = (I - A)^-1 by forward substitution; then
 *     U = T (beta * V),  W = T (beta * exp(G) * K),  V' = U - W S,
 *     O[i] = exp(G_i) q_i^T S + sum_{j<=i} (q_i.k_j) exp(G_i - G_j) V'[j],
 *     S    = exp(G_L) S + sum_j exp(G_L - G_j) k_j V'[j]^T.
 * It reads S once per chunk instead of once per token, and every exponent
 * is <= 0 (g <= 0), so nothing overflows. */
#include <math.h>

#include "../../base/pool.h"
#include "kernels.h"

static inline float silu(float x) { return x / (1.0f + expf(-x)); }

/* ---------------------------------------------------------------- conv -- */

typedef struct conv_job {
    const float *x, *w;
    float *state, *out;
    int64_t n, ch;
    int K;
} conv_job;

#define CONV_BLOCK 64 /* channels per work item */

static void conv_item(void *ctx, int64_t item, int tid) {
    (void)tid;
    const conv_job *j = ctx;
    int K = j->K, H = K - 1; /* history rows */
    int64_t c0 = item * CONV_BLOCK, c1 = c0 + CONV_BLOCK < j->ch ? c0 + CONV_BLOCK : j->ch;
    float win[64]; /* the K inputs of one output, oldest first (K <= 64, checked by the loader) */
    for (int64_t c = c0; c < c1; c++) {
        const float *w = j->w + c * K;
        for (int r = 0; r < H; r++) win[r] = j->state[(int64_t)r * j->ch + c];
        for (int64_t t = 0; t < j->n; t++) {
            win[H] = j->x[t * j->ch + c];
            float acc = 0;
            for (int r = 0; r < K; r++) acc += w[r] * win[r];
            j->out[t * j->ch + c] = silu(acc);
            for (int r = 0; r < H; r++) win[r] = win[r + 1];
        }
        for (int r = 0; r < H; r++) j->state[(int64_t)r * j->ch + c] = win[r];
    }
}

void cpu_causal_conv(backend *be, const float *x, int64_t n, int64_t ch, int K, const float *w, float *state,
                    float *out) {
    conv_job j = {x, w, state, out, n, ch, K};
    int64_t items = (ch + CONV_BLOCK - 1) / CONV_BLOCK;
    if (n * ch * K < (1 << 16))
        for (int64_t i = 0; i < items; i++) conv_item(&j, i, 0);
    else
        pool_run(backend_cpu_pool(be), conv_item, &j, items);
}

/* ---------------------------------------------------------- delta rule -- */

typedef struct delta_job {
    const cpu_kernels *k;
    const float *q, *kk, *v, *g, *beta;
    float *state, *out, *scratch;
    int64_t ld, n;
    int nk, nv, dk, dv, chunk;
    size_t scratch_floats;
} delta_job;

size_t be_delta_scratch(int chunk, int dk, int dv) {
    size_t C = chunk > 0 ? (size_t)chunk : 1;
    /* chunked: Qc, Kc, W [C x dk]; Vc, U [C x dv]; T [C x C]; G, beta, row [C];
     * token by token: Sk, Sq, u [dv] */
    size_t chunked = C * (3 * (size_t)dk + 2 * (size_t)dv + C + 3), rec = 3 * (size_t)dv;
    return chunk > 0 && chunked > rec ? chunked : rec;
}

/* Token by token: h's state through tokens [0, n). With d = exp(g), the
 * update needs S only twice a token, one read and one read + write:
 *   Sk = S^T k, Sq = S^T q;  u = (v - d Sk) beta;  o = d Sq + (k.q) u;  S = d S + k u^T
 * (o = S_new^T q expanded), rather than decaying, reading and updating in turn. */
static void delta_recurrent(const delta_job *j, int h, float *sc) {
    const cpu_kernels *K = j->k;
    int kh = h / (j->nv / j->nk), dk = j->dk, dv = j->dv;
    float *S = j->state + (size_t)h * (size_t)dk * (size_t)dv, *sk = sc, *sq = sc + dv, *u = sc + 2 * dv;
    for (int64_t t = 0; t < j->n; t++) {
        const float *q = j->q + t * j->ld + kh * dk, *k = j->kk + t * j->ld + kh * dk;
        const float *v = j->v + t * j->ld + h * dv;
        float *o = j->out + (t * j->nv + h) * dv;
        float decay = expf(j->g[t * j->nv + h]), beta = j->beta[t * j->nv + h], kq = K->dot(k, q, dk);
        memset(sk, 0, sizeof(float) * 2 * (size_t)dv);
        for (int r = 0; r < dk; r++) {
            const float *row = S + (size_t)r * dv;
            K->axpy(sk, k[r], row, dv);
            K->axpy(sq, q[r], row, dv);
        }
        for (int c = 0; c < dv; c++) {
            u[c] = (v[c] - decay * sk[c]) * beta;
            o[c] = decay * sq[c] + kq * u[c];
        }
        for (int r = 0; r < dk; r++) {
            float *row = S + (size_t)r * dv;
            for (int c = 0; c < dv; c++) row[c] *= decay;
            K->axpy(row, k[r], u, dv);
        }
    }
}

/* In chunks of j->chunk tokens (see the top of the file). */
static void delta_chunked(const delta_job *j, int h, float *sc) {
    const cpu_kernels *K = j->k;
    int kh = h / (j->nv / j->nk), dk = j->dk, dv = j->dv, C = j->chunk;
    float *S = j->state + (size_t)h * (size_t)dk * (size_t)dv;
    float *Qc = sc, *Kc = Qc + (size_t)C * dk, *W = Kc + (size_t)C * dk; /* [C x dk] */
    float *Vc = W + (size_t)C * dk, *U = Vc + (size_t)C * dv;           /* [C x dv] */
    float *T = U + (size_t)C * dv;                                      /* [C x C] */
    float *G = T + (size_t)C * C, *bt = G + C, *row = bt + C;           /* [C] */
    for (int64_t t0 = 0; t0 < j->n; t0 += C) {
        int L = j->n - t0 < C ? (int)(j->n - t0) : C;
        float acc = 0;
        for (int i = 0; i < L; i++) {
            int64_t t = t0 + i;
            memcpy(Qc + (size_t)i * dk, j->q + t * j->ld + kh * dk, sizeof(float) * (size_t)dk);
            memcpy(Kc + (size_t)i * dk, j->kk + t * j->ld + kh * dk, sizeof(float) * (size_t)dk);
            memcpy(Vc + (size_t)i * dv, j->v + t * j->ld + h * dv, sizeof(float) * (size_t)dv);
            G[i] = acc += j->g[t * j->nv + h];
            bt[i] = j->beta[t * j->nv + h];
        }
        /* T = (I - A)^-1, row by row: row i's new entries are its own A entries
         * plus A[i][m] times the finished row m, for every m < i */
        for (int i = 0; i < L; i++) {
            float *Ti = T + (size_t)i * C;
            for (int m = 0; m < i; m++)
                row[m] = -bt[i] * K->dot(Kc + (size_t)i * dk, Kc + (size_t)m * dk, dk) * expf(G[i] - G[m]);
            memcpy(Ti, row, sizeof(float) * (size_t)i);
            for (int m = 1; m < i; m++) K->axpy(Ti, row[m], T + (size_t)m * C, m);
            Ti[i] = 1;
        }
        /* U = T (beta V), W = T (beta exp(G) K) */
        for (int i = 0; i < L; i++) {
            float *Ui = U + (size_t)i * dv, *Wi = W + (size_t)i * dk;
            const float *Ti = T + (size_t)i * C;
            memset(Ui, 0, sizeof(float) * (size_t)dv);
            memset(Wi, 0, sizeof(float) * (size_t)dk);
            for (int m = 0; m <= i; m++) {
                K->axpy(Ui, Ti[m] * bt[m], Vc + (size_t)m * dv, dv);
                K->axpy(Wi, Ti[m] * bt[m] * expf(G[m]), Kc + (size_t)m * dk, dk);
            }
        }
        /* V' = U - W S (in U), then the outputs, both from the chunk's incoming S */
        for (int i = 0; i < L; i++)
            for (int r = 0; r < dk; r++) K->axpy(U + (size_t)i * dv, -W[(size_t)i * dk + r], S + (size_t)r * dv, dv);
        for (int i = 0; i < L; i++) {
            float *o = j->out + ((t0 + i) * j->nv + h) * dv, eg = expf(G[i]);
            const float *qi = Qc + (size_t)i * dk;
            memset(o, 0, sizeof(float) * (size_t)dv);
            for (int r = 0; r < dk; r++) K->axpy(o, qi[r] * eg, S + (size_t)r * dv, dv);
            for (int m = 0; m <= i; m++)
                K->axpy(o, K->dot(qi, Kc + (size_t)m * dk, dk) * expf(G[i] - G[m]), U + (size_t)m * dv, dv);
        }
        /* S = exp(G_L) S + sum_m exp(G_L - G_m) k_m V'[m]^T */
        float eL = expf(G[L - 1]);
        for (size_t x = 0; x < (size_t)dk * dv; x++) S[x] *= eL;
        for (int m = 0; m < L; m++) {
            float e = expf(G[L - 1] - G[m]);
            const float *km = Kc + (size_t)m * dk;
            for (int r = 0; r < dk; r++) K->axpy(S + (size_t)r * dv, km[r] * e, U + (size_t)m * dv, dv);
        }
    }
}

static void delta_item(void *ctx, int64_t h, int tid) {
    const delta_job *j = ctx;
    float *sc = j->scratch + (size_t)tid * j->scratch_floats;
    if (j->chunk > 0 && j->n > 1) delta_chunked(j, (int)h, sc);
    else delta_recurrent(j, (int)h, sc);
}

void cpu_delta_rule(backend *be, const float *q, const float *k, const float *v, int64_t ld, const float *g,
                   const float *beta, int64_t n, int nk, int nv, int dk, int dv, int chunk, float *state, float *out,
                   float *scratch) {
    delta_job j = {backend_cpu_kernels(be), q, k, v, g, beta, state, out, scratch, ld, n, nk, nv, dk, dv, chunk,
                   be_delta_scratch(chunk, dk, dv)};
    pool_run(backend_cpu_pool(be), delta_item, &j, nv);
}
