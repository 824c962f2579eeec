/* backend.h — the operations the forward pass is written against.
 *
 * The forward pass (model/forward.c) calls only these; a backend implements
 * operations, never models. Activations are float32 row-major [n x width];
 * weights are wtensor views in their stored format, dispatched by format.
 */
#ifndef MOE_BACKEND_H
#define MOE_BACKEND_H

#include <stddef.h>
#include <stdint.h>

#include "moe.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Weight formats. WF_Qb is MLX's affine quantization with b bits a value:
 * row r, element k is the b-bit unsigned q at bit k*b of the row's bytes
 * (least-significant bits first: MLX's uint32 packing for 2/4/8 bits and its
 * byte packing for 3/5/6 read the same way), and
 *     w = scale[r][k / group] * q + bias[r][k / group]     (float32 arithmetic)
 * with scales and biases in F32, F16 or BF16. */
typedef enum wfmt { WF_F32, WF_F16, WF_BF16, WF_Q2, WF_Q3, WF_Q4, WF_Q5, WF_Q6, WF_Q8, WF_COUNT } wfmt;

/* A 2-D weight [rows x cols] (rows = output features, cols = input features,
 * the nn.Linear layout) over memory it does not own: a mapped file. */
typedef struct wtensor {
    wfmt fmt;
    int64_t rows, cols;
    const void *data;   /* row r starts at (char*)data + r * row_bytes */
    size_t row_bytes;
    /* quantized formats only (zero otherwise): */
    int group;          /* values per scale/bias: 32, 64 or 128; divides cols */
    wfmt sfmt;          /* WF_F32, WF_F16 or WF_BF16: the type of scales and biases */
    const void *scales, *biases; /* [rows x cols/group], row r at + r * sb_row_bytes */
    size_t sb_row_bytes;
} wtensor;

const char *wfmt_name(wfmt f);
/* Bytes per element of a float format (4 or 2); 0 for quantized formats. */
size_t wfmt_size(wfmt f);
/* Bits per stored element: 32, 16, or the quantized width 2..8. */
int wfmt_bits(wfmt f);
static inline int wfmt_is_quant(wfmt f) { return f >= WF_Q2 && f < WF_COUNT; }
/* The quantized format of `bits` (2, 3, 4, 5, 6, 8), or WF_COUNT when there is none. */
wfmt wfmt_quant(int bits);
/* Bytes of a weight row of `cols` elements in format f (quantized: the packed
 * values only, which MLX stores as cols*bits/32 uint32 words). */
size_t wfmt_row_bytes(wfmt f, int64_t cols);
/* The view of rows [r0, r0+n) of w (the rows of one expert in a stacked tensor). */
wtensor wtensor_rows(const wtensor *w, int64_t r0, int64_t n);
/* Bytes of the whole weight: values plus, when quantized, scales and biases. */
size_t wtensor_bytes(const wtensor *w);

typedef struct backend backend;

/* ------------------------------------------------------------ devices --
 * A backend computes on one device: "cpu", or "cuda" / "cuda:N" where this
 * build has the CUDA backend (backend_cuda.c). Activations, caches and states
 * live in the backend's memory (be_alloc); on the CPU that is host memory, so
 * CPU callers may also pass their own host buffers. Weights are placed once
 * (be_place_weight): the CPU uses them where they lie (the mmap of a file),
 * CUDA copies them into device memory in their stored format. */
/* device NULL, "" or "cpu": the CPU backend (n_threads, isa as below); "cuda", "cuda:N": that GPU;
 * "auto": the first GPU when this build and machine have one, else the CPU. */
moe_status backend_open(const char *device, int n_threads, const char *isa, backend **out);
/* "cpu" or "cuda" */
const char *backend_kind(const backend *be);
/* A line naming the device: the CPU's ISA and threads, or the GPU's name and memory. */
const char *backend_device_name(const backend *be);
/* 1 where the backend's memory is the host's (be_alloc'd pointers may be dereferenced). */
int backend_host_memory(const backend *be);
/* Devices this build can open: "cpu" or "cpu, cuda (N devices)". */
const char *backend_devices(void);
/* on: quantized matrix x vector keeps float32 inputs where the backend would
 * round them to int8 for speed (CUDA's Q4/Q8 decode). The model asks for it
 * when a recurrent state would carry that rounding from token to token. On
 * the CPU the ISA decides (MOE_ISA) and this changes nothing. */
void backend_set_float_decode(backend *be, int on);

/* Memory of the backend: zeroed; NULL with a message (moe_errmsg) when out of memory. */
void *be_alloc(backend *be, size_t bytes);
void be_free(backend *be, void *p); /* NULL allowed */
void be_upload(backend *be, void *dst, const void *src, size_t bytes);  /* backend <- host */
void be_copy(backend *be, void *dst, const void *src, size_t bytes);    /* backend -> backend */
void be_zero(backend *be, void *p, size_t bytes);
/* host <- backend, after all work before it; returns the first error of that
 * work (a GPU fault, out of memory) with its message, or MOE_OK. */
moe_status be_download(backend *be, void *dst, const void *src, size_t bytes);
/* Waits for all work; its first error, or MOE_OK. */
moe_status be_sync(backend *be);

/* Moving bytes into backend memory from other threads, beside the compute
 * stream (the expert cache's I/O threads on a GPU). Only backends whose memory
 * is not the host's have them (backend_movers); elsewhere a memcpy does.
 *   be_host_alloc  host memory, XS_ALIGN (4096) aligned, that the device copies
 *                  from at full speed (pinned); NULL with a message;
 *   be_mover_new   a copy queue for one thread; NULL with a message;
 *   be_mover_upload dst (backend) <- src (host, any), once the compute work
 *                  fenced by f (NULL: none) is done; returns when dst holds
 *                  the bytes; its error is returned, never kept by the
 *                  backend (the compute stream is not affected);
 *   be_fence_record marks the compute work queued so far (called by the
 *                  compute thread), so that an upload waits for it. */
typedef struct be_mover be_mover;
typedef struct be_fence be_fence;
int backend_movers(const backend *be);
void *be_host_alloc(backend *be, size_t bytes);
void be_host_free(backend *be, void *p); /* NULL allowed */
be_mover *be_mover_new(backend *be);
void be_mover_free(backend *be, be_mover *mv); /* NULL allowed */
moe_status be_mover_upload(backend *be, be_mover *mv, void *dst, const void *src, size_t bytes, be_fence *f);
be_fence *be_fence_new(backend *be);
void be_fence_free(backend *be, be_fence *f); /* NULL allowed */
void be_fence_record(backend *be, be_fence *f);
/* Free backend memory in bytes now; -1 where that is the host's (ask the OS). */
int64_t backend_free_memory(backend *be);

/* Recorded work (CUDA graphs): a caller that issues the same operations on
 * the same buffers again and again (one decode step) brackets them:
 *     for (int run = be_graph_begin(be, &g, key); run; run = be_graph_end(be, &g)) issue the operations;
 * be_graph_begin returns 0 when it launched a recording of them made under the
 * same key (the operations must not be issued), else 1: issue them, and
 * be_graph_end records them (on the second call under a key: the first sizes
 * the backend's scratch) and launches the recording, returning 0, or, where
 * recording failed, returns 1 once to have them issued plainly (the key is then
 * never recorded again). What varies between steps must lie in backend memory
 * uploaded before be_graph_begin (token ids, positions), never in host
 * arguments of the operations. key: the caller's summary of the operations'
 * shape (0 is a valid key). On the CPU begin returns 1 and end 0: no recording.
 * *g starts NULL; be_graph_free releases it. */
int be_graph_begin(backend *be, void **g, uint64_t key);
int be_graph_end(backend *be, void **g);
void be_graph_free(backend *be, void *g);
/* Makes w usable by the backend: the CPU leaves it; CUDA copies values,
 * scales and biases to device memory (owned by the backend, freed with it) and
 * repoints w. On failure w is unchanged. */
moe_status be_place_weight(backend *be, wtensor *w);
/* A backend copy of n host floats (the CPU returns src itself; CUDA's copy is
 * owned by the backend); NULL src gives NULL. NULL with a message on failure. */
const float *be_place_floats(backend *be, const float *src, size_t n, moe_status *st);

/* n_threads <= 0: all cores. `isa` (MOE_ISA in the environment when NULL
 * or "") names the kernels, a ladder where each adds to the one before:
 *   "scalar", "avx2", "avx512"  float32 arithmetic throughout (the golden
 *                               tests' reference ISAs);
 *   "avx512vnni"  avx512 whose Q4/Q8 matrix x vector (decode, one token)
 *                 rounds the vector to int8 per block of 32 (scale max|x|/127)
 *                 for VNNI dot products: faster decode, an input error of up
 *                 to half a step in every product;
 *   "amx"         avx512vnni (avx512 on a CPU without VNNI) plus AMX-BF16
 *                 tiles for matmuls of at least 8 tokens (MOE_AMX_MIN_TOKENS
 *                 overrides): products of bf16-rounded weights and
 *                 activations, float32 sums.
 * NULL or "auto": the last of these the CPU (and, for AMX, the OS) allows.
 * Decoding several sequences at once is a matmul of several tokens, so under
 * avx512vnni and amx a sequence's logits depend a little on what it is
 * batched with; "avx512" gives float32 results whatever the batch. */
moe_status backend_new(int n_threads, const char *isa, backend **out);
void backend_free(backend *be);
int backend_threads(const backend *be);
const char *backend_isa(const backend *be);
/* Matmuls (be_matmul*, one per call) that ran on the AMX path so far. */
int64_t backend_amx_runs(const backend *be);

/* y[n x w->rows] = x[n x w->cols] . W^T (+ bias[w->rows] if not NULL). */
void be_matmul(backend *be, const wtensor *w, const float *x, int64_t n, const float *bias, float *y);
/* The same for nw <= 4 weights with the same input width, in one pass of the
 * thread pool: y[i] = x . w[i]^T (+ bias[i]); bias may be NULL, or hold NULLs. */
void be_matmul_n(backend *be, int nw, const wtensor *const *w, const float *x, int64_t n, const float *const *bias,
                 float *const *y);
/* out[n x gate->rows] = silu(x . gate^T) * (x . up^T), fused: each work item
 * computes a block of gate and up rows for a block of tokens into its own
 * small buffer and writes only the product, so the two projections are never
 * materialised. gate and up: same shape. */
void be_matmul_swiglu(backend *be, const wtensor *gate, const wtensor *up, const float *x, int64_t n, float *out);
/* One token through ne <= MOE_DEC_MAX experts at once (MoE decode): for expert i
 *   mid[i * ld_mid ..] = silu(gate[i] x) * (up[i] x)       [gate[i]->rows]
 *   out[i][..] = down[i] . mid[i]                          [down[i]->rows]
 * in two pool runs over every expert's rows, rather than two per expert: at
 * top-10 of 512-row experts the per-run cost of the pool outweighed the work.
 * The same products as be_matmul_swiglu and be_matmul on each expert. */
#define MOE_DEC_MAX 64
void be_moe_decode(backend *be, int ne, const wtensor *const *gate, const wtensor *const *up, const wtensor *const *down,
                   const float *x, float *mid, int64_t ld_mid, float *const *out);
/* Routing on the device, where backend_routes(be) (CUDA; the CPU routes on
 * the host, forward.c): a MoE layer's decode then needs nothing read back.
 * be_route: per token t < n, p = softmax(logits[t]) (in place), sel[t*K ..]
 * its K largest (largest first, ties to the lower index), w their p (divided
 * by their sum when norm), counts[e] += each choice (counts may be NULL).
 * be_moe_decode_sel: be_moe_decode of the K experts sel[0..K) of a layer's E
 * (expert e's gate, up, down at gate/up/down + e * stride bytes: the fields
 * of an array of structs), output k into out + k * ld_out; and the shared
 * expert (sgate, sup, sdown; NULL without) into shared_out. logits, sel, w,
 * counts, x, mid, out, shared_out: backend memory. */
int backend_routes(const backend *be);
/* 1 where be_moe_grouped exists (CUDA: one launch per projection for all of
 * a batch's experts); elsewhere the caller runs the experts one by one. */
int backend_groups(const backend *be);
/* For i < ne: out rows off[i] .. off[i+1] = down_i(silu(gate_i x) * up_i x)
 * over the same rows of x (the batch's choices sorted by expert, off host
 * [ne + 1]); mid [off[ne] x gate rows] holds the SwiGLU products. The same
 * results as be_matmul_swiglu and be_matmul expert by expert. */
void be_moe_grouped(backend *be, int ne, const wtensor *const *gate, const wtensor *const *up, const wtensor *const *down,
                    const int64_t *off, const float *x, float *mid, float *out);
void be_route(backend *be, float *logits, int64_t n, int E, int K, int norm, int32_t *sel, float *w, int64_t *counts);
void be_moe_decode_sel(backend *be, int E, const wtensor *gate, const wtensor *up, const wtensor *down, size_t stride,
                       const int32_t *sel, int K, const wtensor *sgate, const wtensor *sup, const wtensor *sdown,
                       const float *x, float *mid, int64_t ld_mid, float *out, int64_t ld_out, float *shared_out);
/* Row r of W as float32 into out[w->cols] (quantized rows dequantized); host memory, CPU-side weights. */
void be_get_row(const wtensor *w, int64_t r, float *out);
/* out[t] = row tokens[t] of w as float32, t < n (the embedding lookup); tokens backend memory. */
void be_embed(backend *be, const wtensor *w, const int32_t *tokens, int64_t n, float *out);

/* ------------------------------------------------ elementwise and moves --
 * The arithmetic between the matmuls, as operations so that the forward pass
 * never touches activations itself. */
enum { BE_SIGMOID, BE_SILU };
/* x[i] += y[i], i < n */
void be_add(backend *be, float *x, const float *y, int64_t n);
/* x[i] *= sigmoid(g[i]) (BE_SIGMOID) or g[i] * sigmoid(g[i]) (BE_SILU), i < n */
void be_mul_act(backend *be, float *x, const float *g, int64_t n, int act);
/* x[i] clamped to [-lim, lim] */
void be_clip(backend *be, float *x, int64_t n, float lim);
/* dst[r * dld + j] = src[r * sld + j], r < rows, j < cols */
void be_copy_rows(backend *be, float *dst, int64_t dld, const float *src, int64_t sld, int64_t rows, int64_t cols);
/* dst[j] = src[idx[j] / div], rows of `width`, j < n; idx host memory */
void be_gather_rows(backend *be, float *dst, const float *src, int64_t width, const int64_t *idx, int64_t div, int64_t n);
/* dst[idx[j]] = src[j], rows of `width`, j < n; idx host memory (distinct) */
void be_scatter_rows(backend *be, float *dst, const float *src, int64_t width, const int64_t *idx, int64_t n);
/* The weighted sum of a token's chosen experts: out[t] = sum over k < K in
 * order, of the choices with use[t*K + k], of w[t*K + k] * yk[t*K + k]
 * (rows of H; the first term assigned, the others added; no choice: zeros).
 * w, use: backend memory [n x K]; use NULL: every choice. */
void be_moe_combine(backend *be, float *out, const float *yk, const float *w, const unsigned char *use, int64_t n, int K,
                    int64_t H);
/* out[t][j] += sigmoid(g[t]) * y[t][j] (the shared expert's gate), t < n, j < H */
void be_add_gated(backend *be, float *out, const float *y, const float *g, int64_t n, int64_t H);
/* Each of the `heads` vectors of d floats at x[t*ld + h*d], t < n, becomes
 * x / sqrt(sum x^2 + 1e-6) * scale (the sum in double; the l2norm of HF's gated delta rule). */
void be_l2norm(backend *be, float *x, int64_t ld, int64_t n, int heads, int d, float scale);
/* Unpacks a gated DeltaNet layer's projections, per token t and key head g
 * (r = nv/nk value heads each; in rows of 2*nk*dk + 2*nv*dv, ba rows of 2*nv):
 *   in = [.. q(dk) k(dk) v(r*dv) z(r*dv) ..]  ->  mix = [q(nk*dk) | k(nk*dk) | v(nv*dv)], z [nv*dv]
 *   ba = [.. b(r) a(r) ..]  ->  beta[h] = sigmoid(b), g[h] = neg_a[h] * softplus(a + dt_bias[h])
 * neg_a, dt_bias [nv] backend memory (be_place_floats). */
void be_delta_split(backend *be, const float *in, const float *ba, int64_t n, int nk, int nv, int dk, int dv,
                    const float *neg_a, const float *dt_bias, float *mix, float *z, float *beta, float *g);
/* out[n x d] = x / rms(x) * weight, per row of width d (in place allowed). */
void be_rmsnorm(backend *be, const float *x, const float *weight, int64_t n, int64_t d, float eps, float *out);
/* Rotates pairs (i, i + rot/2), i < rot/2, of each head of x[n x n_heads*hd] by angle pos[t] * inv_freq[i]
 * (HF rotate_half over the first rot dims; rot = hd for full RoPE, less for partial; the rest pass through).
 * pos, inv_freq: backend memory (inv_freq from be_place_floats). */
void be_rope(backend *be, float *x, int64_t n, int n_heads, int hd, int rot, const int64_t *pos, const float *inv_freq);

/* ------------------------------------------------ gated DeltaNet (delta.c) --
 * Causal depthwise conv1d then SiLU over n tokens of ch channels:
 *   out[t][c] = silu(sum_{r<K} w[c*K + r] * in[t - K + 1 + r][c])
 * where the rows before x[0] come from state [(K-1) x ch] (oldest first), which is
 * then replaced by the last K-1 input rows. x, out [n x ch] (distinct); K <= 64. */
void be_causal_conv(backend *be, const float *x, int64_t n, int64_t ch, int K, const float *w, float *state,
                    float *out);
/* The gated delta rule over n tokens of one sequence: value head h (of nv) reads key head
 * h / (nv/nk) and carries state S_h = state[h] [dk x dv] (float32, in/out):
 *   S = S * exp(g[t][h]);  u = (v[t][h] - S^T k[t]) * beta[t][h];  S += k[t] u^T;  out[t][h] = S^T q[t]
 * q, k: rows of nk*dk, v: rows of nv*dv, all three with row stride ld (normalised and scaled
 * by the caller); out [n x nv*dv], g, beta [n x nv].
 * chunk > 0 and n > 1: the equivalent chunked form, `chunk` tokens at a time (prompts);
 * else token by token (decode). scratch: backend_threads(be) x be_delta_scratch(chunk, dk, dv) floats. */
void be_delta_rule(backend *be, const float *q, const float *k, const float *v, int64_t ld, const float *g,
                   const float *beta, int64_t n, int nk, int nv, int dk, int dv, int chunk, float *state, float *out,
                   float *scratch);
size_t be_delta_scratch(int chunk, int dk, int dv);

/* One layer's key/value cache, position p in slot p % cap, as the forward
 * pass writes it (be_kv_store) and attention reads it.
 *   bits 32: k, v are float32 [cap x n_kv*hd].
 *   bits 8, 4: k, v hold unsigned b-bit values [cap x n_kv*hd*bits/8 bytes],
 *     packed as the WF_Q8 / WF_Q4 rows above (value j at bit j*bits, least
 *     significant first), affine per group of `group` values along a head:
 *         x[slot][j] = scale[slot][j / group] * q + bias[slot][j / group]
 *     with ks, kb, vs, vb float32 [cap x n_kv*hd/group] (float32 rather than
 *     float16: a float16 bias would add up to |bias| * 2^-11 of error, which
 *     exceeds the 8-bit step scale/2 whenever a group sits far from zero).
 * The cache owns nothing: its arrays belong to the sequence. */
typedef struct kv_cache {
    int bits;     /* 32, 8 or 4 */
    int group;    /* values per scale/bias; divides hd (quantized only) */
    int n_kv, hd; /* kv heads, head dim; a slot's row is n_kv*hd wide */
    int64_t cap;  /* slots */
    void *k, *v;  /* [cap x row] float32 or packed values */
    float *ks, *kb, *vs, *vb; /* [cap x n_kv*hd/group] scales, biases (quantized only) */
} kv_cache;

/* The group size for head dim hd: 64 where it divides hd, else 32, else the
 * whole head (the head dims of the tiny test models, 8, 16, 24). */
int kv_group(int hd);
/* Bytes of the packed values of one slot row (n_kv*hd values), or of one
 * slot's row of scales (and again of biases): row and sb per slot. */
size_t kv_row_bytes(const kv_cache *c);
size_t kv_sb_row_floats(const kv_cache *c);

/* Writes n key and value rows k, v [n x n_kv*hd] into slots pos[t] % cap,
 * quantizing them (per group: scale = (max - min) / (2^bits - 1), bias = min,
 * q = round((x - bias) / scale) clamped to [0, 2^bits - 1]; an element is off
 * by at most scale/2 plus rounding). pos: backend memory [n], increasing
 * (several rows may land in one slot: the last one's stays). */
void be_kv_store(backend *be, const kv_cache *c, const float *k, const float *v, int64_t n, const int64_t *pos);

/* Attention of n queries q[n x n_heads*hd] at positions pos[0]..pos[0]+n-1
 * over cache c; the query at position p sees keys [max(0, p-window+1) .. p]
 * (window 0: [0 .. p]). out[n x n_heads*hd]. pos: backend memory (only pos[0]
 * is read). `scratch` [threads x (cap + hd)] floats (the CPU's; other
 * backends keep their own and ignore it). */
void be_attention(backend *be, const float *q, int64_t n, const int64_t *pos, const kv_cache *c, int n_heads,
                  int window, float scale, float *scratch, float *out);

#ifdef __cplusplus
}
#endif
#endif
