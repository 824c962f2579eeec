/* backend_cuda.c — the CUDA backend: the table of backend_impl.h filled with
 * the kernels of cuda_ops.h. Plain C; no model logic. Activations, caches and
 * weights live in the GPU's memory; the few host arrays an operation reads
 * (token ids, positions, expert indices and weights) are staged by the
 * context. Errors are the context's: sticky, reported by be_download and
 * be_sync as a moe_status with its message. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../base/err.h"
#include "../backend_impl.h"
#include "cuda_ops.h"

#define CTX(be) ((be)->cuda)

int backend_cuda_count(void) { return cuda_device_count(); }

static void gpu_set_float_decode(backend *be, int on) { cuda_set_float_decode(CTX(be), on); }

static void gpu_destroy(backend *be) {
    cuda_ctx_free(CTX(be));
    free(be);
}

/* ------------------------------------------------------------- memory -- */

static void *gpu_alloc(backend *be, size_t bytes) {
    void *p = cuda_alloc(CTX(be), bytes);
    if (!p) {
        size_t fr = 0, tot = 0;
        cuda_mem_info(CTX(be), &fr, &tot);
        moe_err(MOE_ENOMEM, "GPU out of memory: %.1f MB asked for, %.1f MB of %.1f MB free", (double)bytes / 1e6,
                (double)fr / 1e6, (double)tot / 1e6);
    }
    return p;
}

static void gpu_free(backend *be, void *p) { cuda_free(CTX(be), p); }
static void gpu_upload(backend *be, void *dst, const void *src, size_t bytes) { cuda_upload(CTX(be), dst, src, bytes); }
static void gpu_copy(backend *be, void *dst, const void *src, size_t bytes) { cuda_copy(CTX(be), dst, src, bytes); }
static void gpu_zero(backend *be, void *p, size_t bytes) { cuda_zero(CTX(be), p, bytes); }
static moe_status gpu_download(backend *be, void *dst, const void *src, size_t bytes) {
    return cuda_download(CTX(be), dst, src, bytes);
}
static moe_status gpu_sync(backend *be) { return cuda_sync(CTX(be)); }
static int gpu_graph_begin(backend *be, void **g, uint64_t key) {
    cuda_graph *cg = *g;
    int run = cuda_graph_begin(CTX(be), &cg, key);
    *g = cg;
    return run;
}
static int gpu_graph_end(backend *be, void **g) { return cuda_graph_end(CTX(be), *g); }
static void gpu_graph_free(backend *be, void *g) { cuda_graph_free(CTX(be), (cuda_graph *)g); }

static void *gpu_host_alloc(backend *be, size_t bytes) { return cuda_host_alloc(CTX(be), bytes); }
static void gpu_host_free(backend *be, void *p) { cuda_host_free(CTX(be), p); }
static be_mover *gpu_mover_new(backend *be) { return (be_mover *)cuda_mover_new(CTX(be)); }
static void gpu_mover_free(backend *be, be_mover *mv) { cuda_mover_free(CTX(be), (cuda_mover *)mv); }
static moe_status gpu_mover_upload(backend *be, be_mover *mv, void *dst, const void *src, size_t bytes, be_fence *f) {
    return cuda_mover_upload(CTX(be), (cuda_mover *)mv, dst, src, bytes, (cuda_fence *)f);
}
static be_fence *gpu_fence_new(backend *be) { return (be_fence *)cuda_fence_new(CTX(be)); }
static void gpu_fence_free(backend *be, be_fence *f) { cuda_fence_free(CTX(be), (cuda_fence *)f); }
static void gpu_fence_record(backend *be, be_fence *f) { cuda_fence_record(CTX(be), (cuda_fence *)f); }
static int64_t gpu_free_memory(backend *be) {
    size_t fr = 0, tot = 0;
    cuda_mem_info(CTX(be), &fr, &tot);
    return (int64_t)fr;
}

static void gpu_moe_grouped(backend *be, int ne, const wtensor *const *gate, const wtensor *const *up,
                            const wtensor *const *down, const int64_t *off, const float *x, float *mid, float *out) {
    cuda_moe_grouped(CTX(be), ne, gate, up, down, off, x, mid, out);
}

/* A device copy of n host bytes, or NULL with the message set. */
static void *place_bytes(backend *be, const void *src, size_t n) {
    void *d = gpu_alloc(be, n);
    if (d) cuda_upload(CTX(be), d, src, n);
    return d;
}

static moe_status gpu_place_weight(backend *be, wtensor *w) {
    if (!w->data || w->rows == 0) return MOE_OK;
    wtensor d = *w;
    d.data = place_bytes(be, w->data, (size_t)w->rows * w->row_bytes);
    if (!d.data) return MOE_ENOMEM;
    if (wfmt_is_quant(w->fmt)) {
        size_t sb = (size_t)w->rows * w->sb_row_bytes;
        d.scales = place_bytes(be, w->scales, sb);
        d.biases = d.scales ? place_bytes(be, w->biases, sb) : NULL;
        if (!d.biases) return MOE_ENOMEM;
    }
    moe_status st = cuda_sync(CTX(be));
    if (!st) *w = d;
    return st;
}

static const float *gpu_place_floats(backend *be, const float *src, size_t n, moe_status *st) {
    float *d = place_bytes(be, src, n * sizeof *src);
    *st = d ? cuda_sync(CTX(be)) : MOE_ENOMEM;
    return *st ? NULL : d;
}

/* ------------------------------------------------------------ compute -- */

static void gpu_matmul_n(backend *be, int nw, const wtensor *const *w, const float *x, int64_t n, const float *const *bias,
                         float *const *y) {
    for (int i = 0; i < nw; i++) cuda_matmul(CTX(be), w[i], x, n, bias ? bias[i] : NULL, y[i]);
}

static void gpu_matmul_swiglu(backend *be, const wtensor *gate, const wtensor *up, const float *x, int64_t n, float *out) {
    cuda_matmul_swiglu(CTX(be), gate, up, x, n, out);
}

static void gpu_moe_decode(backend *be, int ne, const wtensor *const *gate, const wtensor *const *up,
                           const wtensor *const *down, const float *x, float *mid, int64_t ld_mid, float *const *out) {
    cuda_moe_decode(CTX(be), ne, gate, up, down, x, mid, ld_mid, out);
}

static void gpu_route(backend *be, float *logits, int64_t n, int E, int K, int norm, int32_t *sel, float *w,
                      int64_t *counts) {
    cuda_route(CTX(be), logits, n, E, K, norm, sel, w, counts);
}
static void gpu_moe_decode_sel(backend *be, int E, const wtensor *gate, const wtensor *up, const wtensor *down,
                               size_t stride, const int32_t *sel, int K, const wtensor *sgate, const wtensor *sup,
                               const wtensor *sdown, const float *x, float *mid, int64_t ld_mid, float *out,
                               int64_t ld_out, float *shared_out) {
    cuda_moe_decode_sel(CTX(be), E, gate, up, down, stride, sel, K, sgate, sup, sdown, x, mid, ld_mid, out, ld_out,
                        shared_out);
}
static void gpu_embed(backend *be, const wtensor *w, const int32_t *tokens, int64_t n, float *out) {
    cuda_embed(CTX(be), w, tokens, n, out);
}

static void gpu_rmsnorm(backend *be, const float *x, const float *weight, int64_t n, int64_t d, float eps, float *out) {
    cuda_rmsnorm(CTX(be), x, weight, n, d, eps, out);
}

static void gpu_rope(backend *be, float *x, int64_t n, int n_heads, int hd, int rot, const int64_t *pos,
                     const float *inv_freq) {
    cuda_rope(CTX(be), x, n, n_heads, hd, rot, pos, inv_freq);
}

static void gpu_causal_conv(backend *be, const float *x, int64_t n, int64_t ch, int K, const float *w, float *state,
                            float *out) {
    cuda_causal_conv(CTX(be), x, n, ch, K, w, state, out);
}

static void gpu_delta_rule(backend *be, const float *q, const float *k, const float *v, int64_t ld, const float *g,
                           const float *beta, int64_t n, int nk, int nv, int dk, int dv, int chunk, float *state,
                           float *out, float *scratch) {
    (void)chunk, (void)scratch;
    cuda_delta_rule(CTX(be), q, k, v, ld, g, beta, n, nk, nv, dk, dv, state, out);
}

static void gpu_kv_store(backend *be, const kv_cache *c, const float *k, const float *v, int64_t n, const int64_t *pos) {
    cuda_kv_store(CTX(be), c, k, v, n, pos);
}

static void gpu_attention(backend *be, const float *q, int64_t n, const int64_t *pos, const kv_cache *c, int n_heads,
                          int window, float scale, float *scratch, float *out) {
    (void)scratch;
    cuda_attention(CTX(be), q, n, pos, c, n_heads, window, scale, out);
}

static void gpu_add(backend *be, float *x, const float *y, int64_t n) { cuda_add(CTX(be), x, y, n); }
static void gpu_mul_act(backend *be, float *x, const float *g, int64_t n, int act) { cuda_mul_act(CTX(be), x, g, n, act); }
static void gpu_clip(backend *be, float *x, int64_t n, float lim) { cuda_clip(CTX(be), x, n, lim); }

static void gpu_copy_rows(backend *be, float *dst, int64_t dld, const float *src, int64_t sld, int64_t rows, int64_t cols) {
    cuda_copy_rows(CTX(be), dst, dld, src, sld, rows, cols);
}

static void gpu_gather_rows(backend *be, float *dst, const float *src, int64_t width, const int64_t *idx, int64_t div,
                            int64_t n) {
    cuda_gather_rows(CTX(be), dst, src, width, idx, div, n);
}

static void gpu_scatter_rows(backend *be, float *dst, const float *src, int64_t width, const int64_t *idx, int64_t n) {
    cuda_scatter_rows(CTX(be), dst, src, width, idx, n);
}

static void gpu_moe_combine(backend *be, float *out, const float *yk, const float *w, const unsigned char *use, int64_t n,
                            int K, int64_t H) {
    cuda_moe_combine(CTX(be), out, yk, w, use, n, K, H);
}

static void gpu_add_gated(backend *be, float *out, const float *y, const float *g, int64_t n, int64_t H) {
    cuda_add_gated(CTX(be), out, y, g, n, H);
}

static void gpu_l2norm(backend *be, float *x, int64_t ld, int64_t n, int heads, int d, float scale) {
    cuda_l2norm(CTX(be), x, ld, n, heads, d, scale);
}

static void gpu_delta_split(backend *be, const float *in, const float *ba, int64_t n, int nk, int nv, int dk, int dv,
                            const float *neg_a, const float *dt_bias, float *mix, float *z, float *beta, float *g) {
    cuda_delta_split(CTX(be), in, ba, n, nk, nv, dk, dv, neg_a, dt_bias, mix, z, beta, g);
}

static const backend_ops cuda_backend_ops = {
    .kind = "cuda",
    .host_memory = 0,
    .destroy = gpu_destroy,
    .set_float_decode = gpu_set_float_decode,
    .alloc = gpu_alloc,
    .free = gpu_free,
    .upload = gpu_upload,
    .copy = gpu_copy,
    .zero = gpu_zero,
    .download = gpu_download,
    .sync = gpu_sync,
    .graph_begin = gpu_graph_begin,
    .graph_end = gpu_graph_end,
    .graph_free = gpu_graph_free,
    .host_alloc = gpu_host_alloc,
    .host_free = gpu_host_free,
    .mover_new = gpu_mover_new,
    .mover_free = gpu_mover_free,
    .mover_upload = gpu_mover_upload,
    .fence_new = gpu_fence_new,
    .fence_free = gpu_fence_free,
    .fence_record = gpu_fence_record,
    .free_memory = gpu_free_memory,
    .place_weight = gpu_place_weight,
    .place_floats = gpu_place_floats,
    .matmul_n = gpu_matmul_n,
    .matmul_swiglu = gpu_matmul_swiglu,
    .moe_decode = gpu_moe_decode,
    .route = gpu_route,
    .moe_decode_sel = gpu_moe_decode_sel,
    .moe_grouped = gpu_moe_grouped,
    .embed = gpu_embed,
    .rmsnorm = gpu_rmsnorm,
    .rope = gpu_rope,
    .causal_conv = gpu_causal_conv,
    .delta_rule = gpu_delta_rule,
    .kv_store = gpu_kv_store,
    .attention = gpu_attention,
    .add = gpu_add,
    .mul_act = gpu_mul_act,
    .clip = gpu_clip,
    .copy_rows = gpu_copy_rows,
    .gather_rows = gpu_gather_rows,
    .scatter_rows = gpu_scatter_rows,
    .moe_combine = gpu_moe_combine,
    .add_gated = gpu_add_gated,
    .l2norm = gpu_l2norm,
    .delta_split = gpu_delta_split,
};

moe_status backend_cuda_open(int device, backend **out) {
    *out = NULL;
    backend *be = calloc(1, sizeof *be);
    if (!be) return moe_err(MOE_ENOMEM, "out of memory");
    moe_status st = cuda_ctx_new(device, &be->cuda);
    if (st) {
        free(be);
        return st;
    }
    be->ops = &cuda_backend_ops;
    /* Q4/Q8 decode on int8-rounded inputs (dp4a, +27% decode on a 7B Q4) by default, as the
     * CPU's avx512vnni: the golden fixtures hold it to the same position-by-position bound
     * (tests/test_cuda_golden.c); MOE_CUDA_FLOAT_DECODE=1 keeps float32 inputs */
    cuda_set_float_decode(be->cuda, 0);
    snprintf(be->name, sizeof be->name, "cuda:%d: %s", device, cuda_ctx_name(be->cuda));
    *out = be;
    return MOE_OK;
}
