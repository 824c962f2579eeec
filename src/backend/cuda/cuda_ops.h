/* cuda_ops.h — the CUDA backend's kernels and device context, behind a C
 * interface that backend_cuda.c (plain C) maps the operations of backend.h
 * onto. No model logic here: each function is one operation of backend.h with
 * the same contract, on device memory.
 *
 * Conventions
 * - Pointers marked (dev) are device memory from cuda_alloc (or inside a
 *   weight placed with cuda_upload); (host) ones are ordinary host memory,
 *   read before the function returns (the context stages them to the device).
 * - A wtensor passed here is a host struct whose data, scales and biases are
 *   device pointers, in the stored format (backend.h): no weight is ever
 *   converted to another format on the device.
 * - Every compute function enqueues work on the context's one stream and
 *   returns without waiting. A CUDA error (a failed launch, an illegal
 *   address, out of memory) is recorded in the context, the first one wins, and
 *   every later call becomes a no-op; cuda_sync and cuda_download return it as
 *   a moe_status with moe_err's message ("CUDA: <what>: <cudaGetErrorString>").
 *   Nothing aborts or exits.
 * - Activations are float32 row-major [n x width], as on the CPU.
 */
#ifndef MOE_CUDA_OPS_H
#define MOE_CUDA_OPS_H

#include <stddef.h>
#include <stdint.h>

#include "../backend.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct cuda_ctx cuda_ctx;

/* ------------------------------------------------------------ context -- */
/* Opens device `device` (0-based), one stream, a scratch arena. MOE_EUNSUPPORTED
 * with a message when there is no CUDA device or driver, MOE_EINVAL for an index
 * beyond the devices present. */
moe_status cuda_ctx_new(int device, cuda_ctx **out);
void cuda_ctx_free(cuda_ctx *c); /* NULL allowed; frees every allocation still held */
/* "NVIDIA H100 80GB HBM3, sm_90, 79.1 GiB" */
const char *cuda_ctx_name(const cuda_ctx *c);
int cuda_device_count(void); /* 0 when no driver or no device */
/* Free and total device memory in bytes. */
void cuda_mem_info(cuda_ctx *c, size_t *free_b, size_t *total_b);

/* ------------------------------------------------------------- memory -- */
/* zeroed (dev); NULL when out of memory (the context stays usable) or after an error */
void *cuda_alloc(cuda_ctx *c, size_t bytes);
void cuda_free(cuda_ctx *c, void *p);        /* NULL allowed */
void cuda_upload(cuda_ctx *c, void *dst, const void *src, size_t bytes);   /* dst (dev) <- src (host) */
void cuda_copy(cuda_ctx *c, void *dst, const void *src, size_t bytes);     /* (dev) -> (dev) */
void cuda_zero(cuda_ctx *c, void *p, size_t bytes);                        /* (dev) */
/* dst (host) <- src (dev), after everything enqueued before it; returns the
 * context's first error (then dst is left unspecified). */
moe_status cuda_download(cuda_ctx *c, void *dst, const void *src, size_t bytes);
/* Waits for the stream; the context's first error, or MOE_OK. */
moe_status cuda_sync(cuda_ctx *c);

/* ------------------------------------------------- copies beside the stream --
 * For the expert cache's I/O threads: pinned host memory, a stream per
 * thread, and events that make its copies wait for the compute stream's
 * use of a buffer. These never touch the context's error: they return theirs. */
typedef struct cuda_mover cuda_mover;
typedef struct cuda_fence cuda_fence;
void *cuda_host_alloc(cuda_ctx *c, size_t bytes);    /* pinned, 4096-aligned; NULL with a message */
void cuda_host_free(cuda_ctx *c, void *p);
cuda_mover *cuda_mover_new(cuda_ctx *c);              /* NULL with a message */
void cuda_mover_free(cuda_ctx *c, cuda_mover *mv);
/* dst (dev) <- src (host) on mv's stream after f (NULL: none); returns once it landed */
moe_status cuda_mover_upload(cuda_ctx *c, cuda_mover *mv, void *dst, const void *src, size_t bytes, cuda_fence *f);
cuda_fence *cuda_fence_new(cuda_ctx *c);              /* NULL with a message */
void cuda_fence_free(cuda_ctx *c, cuda_fence *f);
void cuda_fence_record(cuda_ctx *c, cuda_fence *f);   /* on the context's stream */

/* ------------------------------------------------------------- graphs --
 * be_graph_begin / be_graph_end / be_graph_free (backend.h): the stream's
 * work between them captured once into a CUDA graph and replayed. The key
 * also holds what the context decides per call (float or int8 decode). While
 * capturing, host arguments an operation stages go to the graph's own
 * buffer (so a replay reads what the capture saw), and anything that cannot
 * be recorded (the scratch area would grow, a call that waits) fails the
 * capture, not the context. A capture is also dropped when the scratch area
 * moved since (cuda_scratch reallocates it). */
typedef struct cuda_graph cuda_graph;
int cuda_graph_begin(cuda_ctx *c, cuda_graph **g, uint64_t key);
int cuda_graph_end(cuda_ctx *c, cuda_graph *g);
void cuda_graph_free(cuda_ctx *c, cuda_graph *g);
/* Grows the scratch area to at least `bytes` now (it moves: recorded graphs
 * capture again), so that later calls need not. */
void cuda_scratch_reserve(cuda_ctx *c, size_t bytes);
/* Replays launched and captures made since the context opened. */
void cuda_graph_counts(const cuda_ctx *c, uint64_t *replays, uint64_t *captures);

/* ----------------------------------------------------------- matmuls --
 * The same contracts as be_matmul, be_matmul_swiglu, be_moe_decode (backend.h),
 * for every wfmt (F32, F16, BF16, Q2..Q8 with F32/F16/BF16 scales and biases,
 * groups 32/64/128), n >= 1 tokens. x, y, bias, out, mid (dev). */
void cuda_matmul(cuda_ctx *c, const wtensor *w, const float *x, int64_t n, const float *bias, float *y);
void cuda_matmul_swiglu(cuda_ctx *c, const wtensor *gate, const wtensor *up, const float *x, int64_t n, float *out);
/* gate/up/down: host arrays of ne host wtensor pointers; out: host array of ne
 * (dev) pointers. */
/* be_moe_grouped: the experts' SwiGLU and down projections over their rows of x, two launches */
void cuda_moe_grouped(cuda_ctx *c, int ne, const wtensor *const *gate, const wtensor *const *up,
                      const wtensor *const *down, const int64_t *off, const float *x, float *mid, float *out);
void cuda_moe_decode(cuda_ctx *c, int ne, const wtensor *const *gate, const wtensor *const *up,
                     const wtensor *const *down, const float *x, float *mid, int64_t ld_mid, float *const *out);
/* be_route and be_moe_decode_sel's contracts (backend.h): all (dev) but the wtensors. */
void cuda_route(cuda_ctx *c, float *logits, int64_t n, int E, int K, int norm, int32_t *sel, float *w, int64_t *counts);
void cuda_moe_decode_sel(cuda_ctx *c, int E, const wtensor *gate, const wtensor *up, const wtensor *down, size_t stride,
                         const int32_t *sel, int K, const wtensor *sgate, const wtensor *sup, const wtensor *sdown,
                         const float *x, float *mid, int64_t ld_mid, float *out, int64_t ld_out, float *shared_out);
/* on: Q4/Q8 matrix x vector (n <= 8) keeps float32 inputs instead of rounding them to
 * int8 per block of 32 (a context's default is int8; MOE_CUDA_FLOAT_DECODE=1, read at each
 * call, also turns it off; the backend turns it on for hybrid models, model.c). */
void cuda_set_float_decode(cuda_ctx *c, int on);
/* out[t] = row tokens[t] of w as float32 (dequantized), t < n; tokens (dev). */
void cuda_embed(cuda_ctx *c, const wtensor *w, const int32_t *tokens, int64_t n, float *out);

/* ------------------------------------------------ norms, RoPE, attention -- */
void cuda_rmsnorm(cuda_ctx *c, const float *x, const float *weight, int64_t n, int64_t d, float eps, float *out);
/* pos (dev) [n]; inv_freq (dev) [rot/2] */
void cuda_rope(cuda_ctx *c, float *x, int64_t n, int n_heads, int hd, int rot, const int64_t *pos,
               const float *inv_freq);
/* kv_cache's arrays (dev); pos (dev) [n], increasing. bits 32, 8, 4 as in backend.h. */
void cuda_kv_store(cuda_ctx *c, const kv_cache *kv, const float *k, const float *v, int64_t n, const int64_t *pos);
/* be_attention's contract (pos (dev)); scratch is whatever the kernel needs, from the context. */
void cuda_attention(cuda_ctx *c, const float *q, int64_t n, const int64_t *pos, const kv_cache *kv, int n_heads,
                    int window, float scale, float *out);

/* ------------------------------------------------------ gated DeltaNet -- */
void cuda_causal_conv(cuda_ctx *c, const float *x, int64_t n, int64_t ch, int K, const float *w, float *state,
                      float *out);
/* be_delta_rule's contract (chunk may be ignored: any form giving the same
 * result within float32 rounding). */
void cuda_delta_rule(cuda_ctx *c, const float *q, const float *k, const float *v, int64_t ld, const float *g,
                     const float *beta, int64_t n, int nk, int nv, int dk, int dv, float *state, float *out);

/* ------------------------------------------------ elementwise and moves -- *
 * The contracts of the same-named be_* operations in backend.h. */
void cuda_add(cuda_ctx *c, float *x, const float *y, int64_t n);
void cuda_mul_act(cuda_ctx *c, float *x, const float *g, int64_t n, int act);
void cuda_clip(cuda_ctx *c, float *x, int64_t n, float lim);
void cuda_copy_rows(cuda_ctx *c, float *dst, int64_t dld, const float *src, int64_t sld, int64_t rows, int64_t cols);
void cuda_gather_rows(cuda_ctx *c, float *dst, const float *src, int64_t width, const int64_t *idx, int64_t div,
                      int64_t n);
void cuda_scatter_rows(cuda_ctx *c, float *dst, const float *src, int64_t width, const int64_t *idx, int64_t n);
void cuda_moe_combine(cuda_ctx *c, float *out, const float *yk, const float *w, const unsigned char *use, int64_t n,
                      int K, int64_t H);
void cuda_add_gated(cuda_ctx *c, float *out, const float *y, const float *g, int64_t n, int64_t H);
void cuda_l2norm(cuda_ctx *c, float *x, int64_t ld, int64_t n, int heads, int d, float scale);
void cuda_delta_split(cuda_ctx *c, const float *in, const float *ba, int64_t n, int nk, int nv, int dk, int dv,
                      const float *neg_a, const float *dt_bias, float *mix, float *z, float *beta, float *g);

#ifdef __cplusplus
}
#endif
#endif
