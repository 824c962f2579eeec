/* cuda_elem.cu — the elementwise steps and row moves of the forward pass
 * (backend.h's "elementwise and moves" block) as CUDA kernels: residual adds,
 * gates, clipping, row copies, the MoE weighted sum of a token's experts.
 *
 * Each operation is memory-bound: grid-stride loops over the elements, one
 * launch per call. Host arrays (row indices, routing weights and masks) go
 * through cuda_stage. The arithmetic is the CPU's, term for term, so results
 * differ from it only by the rounding of expf and by fused multiply-adds. */
#include "cuda_internal.h"

#define ELEM_THREADS 256

/* A grid for n elements: enough blocks to fill the GPU, the rest by striding. */
static unsigned elem_blocks(const cuda_ctx *c, int64_t n) {
    unsigned b = cuda_blocks(n, ELEM_THREADS), most = (unsigned)c->n_sm * 16;
    return b < 1 ? 1 : b > most ? most : b;
}

#define GRID_STRIDE(i, n) \
    for (int64_t i = blockIdx.x * (int64_t)blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

__device__ static inline float sigmoid_dev(float x) { return 1.0f / (1.0f + expf(-x)); }

/* ------------------------------------------------------------ arithmetic -- */

__global__ static void k_add(float *x, const float *y, int64_t n) {
    GRID_STRIDE(i, n) x[i] += y[i];
}

__global__ static void k_mul_act(float *x, const float *g, int64_t n, int act) {
    GRID_STRIDE(i, n) {
        float s = sigmoid_dev(g[i]);
        x[i] *= act == BE_SILU ? g[i] * s : s;
    }
}

__global__ static void k_clip(float *x, int64_t n, float lim) {
    GRID_STRIDE(i, n) x[i] = x[i] > lim ? lim : x[i] < -lim ? -lim : x[i];
}

extern "C" void cuda_add(cuda_ctx *c, float *x, const float *y, int64_t n) {
    CUDA_LIVE(c);
    if (n <= 0) return;
    k_add<<<elem_blocks(c, n), ELEM_THREADS, 0, c->stream>>>(x, y, n);
    cuda_launched(c, "add");
}

extern "C" void cuda_mul_act(cuda_ctx *c, float *x, const float *g, int64_t n, int act) {
    CUDA_LIVE(c);
    if (n <= 0) return;
    k_mul_act<<<elem_blocks(c, n), ELEM_THREADS, 0, c->stream>>>(x, g, n, act);
    cuda_launched(c, "mul_act");
}

extern "C" void cuda_clip(cuda_ctx *c, float *x, int64_t n, float lim) {
    CUDA_LIVE(c);
    if (n <= 0) return;
    k_clip<<<elem_blocks(c, n), ELEM_THREADS, 0, c->stream>>>(x, n, lim);
    cuda_launched(c, "clip");
}

/* ------------------------------------------------------------ row moves -- *
 * One grid for all of them: element i is column i % cols of row i / cols. */

__global__ static void k_copy_rows(float *dst, int64_t dld, const float *src, int64_t sld, int64_t rows,
                                   int64_t cols) {
    GRID_STRIDE(i, rows * cols) {
        int64_t r = i / cols, j = i % cols;
        dst[r * dld + j] = src[r * sld + j];
    }
}

/* dst row j <- src row idx[j] / div (gather, scatter 0) or dst row idx[j] <- src row j (scatter 1) */
__global__ static void k_move_rows(float *dst, const float *src, int64_t width, const int64_t *idx, int64_t div,
                                   int64_t n, int scatter) {
    GRID_STRIDE(i, n * width) {
        int64_t j = i / width, col = i % width;
        if (scatter) dst[idx[j] * width + col] = src[j * width + col];
        else dst[j * width + col] = src[idx[j] / div * width + col];
    }
}

extern "C" void cuda_copy_rows(cuda_ctx *c, float *dst, int64_t dld, const float *src, int64_t sld, int64_t rows,
                               int64_t cols) {
    CUDA_LIVE(c);
    if (rows <= 0 || cols <= 0) return;
    k_copy_rows<<<elem_blocks(c, rows * cols), ELEM_THREADS, 0, c->stream>>>(dst, dld, src, sld, rows, cols);
    cuda_launched(c, "copy_rows");
}

static void move_rows(cuda_ctx *c, float *dst, const float *src, int64_t width, const int64_t *idx, int64_t div,
                      int64_t n, int scatter) {
    CUDA_LIVE(c);
    if (n <= 0 || width <= 0) return;
    const int64_t *d_idx = (const int64_t *)cuda_stage(c, idx, sizeof *idx * (size_t)n);
    if (!d_idx) return;
    k_move_rows<<<elem_blocks(c, n * width), ELEM_THREADS, 0, c->stream>>>(dst, src, width, d_idx, div, n, scatter);
    cuda_launched(c, scatter ? "scatter_rows" : "gather_rows");
}

extern "C" void cuda_gather_rows(cuda_ctx *c, float *dst, const float *src, int64_t width, const int64_t *idx,
                                 int64_t div, int64_t n) {
    move_rows(c, dst, src, width, idx, div, n, 0);
}

extern "C" void cuda_scatter_rows(cuda_ctx *c, float *dst, const float *src, int64_t width, const int64_t *idx,
                                  int64_t n) {
    move_rows(c, dst, src, width, idx, 1, n, 1);
}

/* ------------------------------------------------------------ MoE sums -- */

/* out[t][j] = sum over used k in order of w[t*K+k] * yk[t*K+k][j]: the first
 * term assigned, the others added, as the CPU does; no used choice: 0. */
__global__ static void k_moe_combine(float *out, const float *yk, const float *w, const unsigned char *use, int64_t n,
                                     int K, int64_t H) {
    GRID_STRIDE(i, n * H) {
        int64_t t = i / H, j = i % H;
        float acc = 0;
        int first = 1;
        for (int k = 0; k < K; k++) {
            int64_t tk = t * K + k;
            if (use && !use[tk]) continue;
            float term = w[tk] * yk[tk * H + j];
            acc = first ? term : acc + term;
            first = 0;
        }
        out[i] = acc;
    }
}

__global__ static void k_add_gated(float *out, const float *y, const float *g, int64_t n, int64_t H) {
    GRID_STRIDE(i, n * H) out[i] += sigmoid_dev(g[i / H]) * y[i];
}

extern "C" void cuda_moe_combine(cuda_ctx *c, float *out, const float *yk, const float *w, const unsigned char *use,
                                 int64_t n, int K, int64_t H) {
    CUDA_LIVE(c);
    if (n <= 0 || H <= 0) return;
    k_moe_combine<<<elem_blocks(c, n * H), ELEM_THREADS, 0, c->stream>>>(out, yk, w, use, n, K, H);
    cuda_launched(c, "moe_combine");
}

extern "C" void cuda_add_gated(cuda_ctx *c, float *out, const float *y, const float *g, int64_t n, int64_t H) {
    CUDA_LIVE(c);
    if (n <= 0 || H <= 0) return;
    k_add_gated<<<elem_blocks(c, n * H), ELEM_THREADS, 0, c->stream>>>(out, y, g, n, H);
    cuda_launched(c, "add_gated");
}
