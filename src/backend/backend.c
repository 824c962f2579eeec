/* backend.c — the operations of backend.h, each dispatched through the
 * backend's table (backend_impl.h), and the choice of device. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../base/err.h"
#include "backend_impl.h"

moe_status backend_open(const char *device, int n_threads, const char *isa, backend **out) {
    *out = NULL;
    if (!device || !*device || !strcmp(device, "cpu")) return backend_new(n_threads, isa, out);
    int is_auto = !strcmp(device, "auto");
    int index = 0;
    if (!is_auto) {
        if (strncmp(device, "cuda", 4) != 0 || (device[4] && device[4] != ':'))
            return moe_err(MOE_EINVAL, "device \"%s\": expected cpu, cuda, cuda:N or auto", device);
        if (device[4] == ':') {
            char *end;
            long v = strtol(device + 5, &end, 10);
            if (!device[5] || *end || v < 0 || v > 1024)
                return moe_err(MOE_EINVAL, "device \"%s\": expected cuda:N with N a device index", device);
            index = (int)v;
        }
    }
#ifdef MOE_HAVE_CUDA
    if (is_auto && backend_cuda_count() == 0) return backend_new(n_threads, isa, out);
    return backend_cuda_open(index, out);
#else
    (void)index;
    if (is_auto) return backend_new(n_threads, isa, out);
    return moe_err(MOE_EUNSUPPORTED, "device \"%s\": this build of moe has no CUDA backend (built without nvcc)", device);
#endif
}

const char *backend_devices(void) {
#ifdef MOE_HAVE_CUDA
    static char buf[64];
    int n = backend_cuda_count();
    snprintf(buf, sizeof buf, "cpu, cuda (%d device%s)", n, n == 1 ? "" : "s");
    return buf;
#else
    return "cpu";
#endif
}

const char *backend_kind(const backend *be) { return be->ops->kind; }
const char *backend_device_name(const backend *be) { return be->name; }
int backend_host_memory(const backend *be) { return be->ops->host_memory; }

void backend_set_float_decode(backend *be, int on) {
    if (be->ops->set_float_decode) be->ops->set_float_decode(be, on);
}

int backend_movers(const backend *be) { return be->ops->mover_upload != NULL; }
void *be_host_alloc(backend *be, size_t bytes) {
    if (!be->ops->host_alloc) {
        moe_err(MOE_EUNSUPPORTED, "backend %s: no pinned host memory", be->ops->kind);
        return NULL;
    }
    return be->ops->host_alloc(be, bytes);
}
void be_host_free(backend *be, void *p) {
    if (p && be->ops->host_free) be->ops->host_free(be, p);
}
be_mover *be_mover_new(backend *be) {
    if (!be->ops->mover_new) {
        moe_err(MOE_EUNSUPPORTED, "backend %s: no copy queues", be->ops->kind);
        return NULL;
    }
    return be->ops->mover_new(be);
}
void be_mover_free(backend *be, be_mover *mv) {
    if (mv && be->ops->mover_free) be->ops->mover_free(be, mv);
}
moe_status be_mover_upload(backend *be, be_mover *mv, void *dst, const void *src, size_t bytes, be_fence *f) {
    if (!be->ops->mover_upload) return moe_err(MOE_EUNSUPPORTED, "backend %s: no copy queues", be->ops->kind);
    return be->ops->mover_upload(be, mv, dst, src, bytes, f);
}
be_fence *be_fence_new(backend *be) {
    if (!be->ops->fence_new) {
        moe_err(MOE_EUNSUPPORTED, "backend %s: no fences", be->ops->kind);
        return NULL;
    }
    return be->ops->fence_new(be);
}
void be_fence_free(backend *be, be_fence *f) {
    if (f && be->ops->fence_free) be->ops->fence_free(be, f);
}
void be_fence_record(backend *be, be_fence *f) {
    if (f && be->ops->fence_record) be->ops->fence_record(be, f);
}
int64_t backend_free_memory(backend *be) { return be->ops->free_memory ? be->ops->free_memory(be) : -1; }

void backend_free(backend *be) {
    if (be) be->ops->destroy(be);
}

/* ------------------------------------------------------------- memory -- */
void *be_alloc(backend *be, size_t bytes) { return be->ops->alloc(be, bytes); }
void be_free(backend *be, void *p) {
    if (p) be->ops->free(be, p);
}
void be_upload(backend *be, void *dst, const void *src, size_t bytes) { be->ops->upload(be, dst, src, bytes); }
void be_copy(backend *be, void *dst, const void *src, size_t bytes) { be->ops->copy(be, dst, src, bytes); }
void be_zero(backend *be, void *p, size_t bytes) { be->ops->zero(be, p, bytes); }
moe_status be_download(backend *be, void *dst, const void *src, size_t bytes) {
    return be->ops->download(be, dst, src, bytes);
}
moe_status be_sync(backend *be) { return be->ops->sync(be); }
int be_graph_begin(backend *be, void **g, uint64_t key) { return be->ops->graph_begin ? be->ops->graph_begin(be, g, key) : 1; }
int be_graph_end(backend *be, void **g) { return be->ops->graph_end ? be->ops->graph_end(be, g) : 0; }
void be_graph_free(backend *be, void *g) {
    if (g && be->ops->graph_free) be->ops->graph_free(be, g);
}
moe_status be_place_weight(backend *be, wtensor *w) { return be->ops->place_weight(be, w); }
const float *be_place_floats(backend *be, const float *src, size_t n, moe_status *st) {
    *st = MOE_OK;
    return src ? be->ops->place_floats(be, src, n, st) : NULL;
}

/* ------------------------------------------------------------ compute -- */
void be_matmul_n(backend *be, int nw, const wtensor *const *w, const float *x, int64_t n, const float *const *bias,
                 float *const *y) {
    be->ops->matmul_n(be, nw, w, x, n, bias, y);
}
void be_matmul(backend *be, const wtensor *w, const float *x, int64_t n, const float *bias, float *y) {
    be->ops->matmul_n(be, 1, &w, x, n, &bias, &y);
}
void be_matmul_swiglu(backend *be, const wtensor *gate, const wtensor *up, const float *x, int64_t n, float *out) {
    be->ops->matmul_swiglu(be, gate, up, x, n, out);
}
void be_moe_decode(backend *be, int ne, const wtensor *const *gate, const wtensor *const *up, const wtensor *const *down,
                   const float *x, float *mid, int64_t ld_mid, float *const *out) {
    be->ops->moe_decode(be, ne, gate, up, down, x, mid, ld_mid, out);
}
int backend_routes(const backend *be) { return be->ops->route && be->ops->moe_decode_sel; }
int backend_groups(const backend *be) { return be->ops->moe_grouped != NULL; }
void be_moe_grouped(backend *be, int ne, const wtensor *const *gate, const wtensor *const *up, const wtensor *const *down,
                    const int64_t *off, const float *x, float *mid, float *out) {
    be->ops->moe_grouped(be, ne, gate, up, down, off, x, mid, out);
}
void be_route(backend *be, float *logits, int64_t n, int E, int K, int norm, int32_t *sel, float *w, int64_t *counts) {
    be->ops->route(be, logits, n, E, K, norm, sel, w, counts);
}
void be_moe_decode_sel(backend *be, int E, const wtensor *gate, const wtensor *up, const wtensor *down, size_t stride,
                       const int32_t *sel, int K, const wtensor *sgate, const wtensor *sup, const wtensor *sdown,
                       const float *x, float *mid, int64_t ld_mid, float *out, int64_t ld_out, float *shared_out) {
    be->ops->moe_decode_sel(be, E, gate, up, down, stride, sel, K, sgate, sup, sdown, x, mid, ld_mid, out, ld_out,
                            shared_out);
}
void be_embed(backend *be, const wtensor *w, const int32_t *tokens, int64_t n, float *out) {
    be->ops->embed(be, w, tokens, n, out);
}
void be_rmsnorm(backend *be, const float *x, const float *weight, int64_t n, int64_t d, float eps, float *out) {
    be->ops->rmsnorm(be, x, weight, n, d, eps, out);
}
void be_rope(backend *be, float *x, int64_t n, int n_heads, int hd, int rot, const int64_t *pos, const float *inv_freq) {
    be->ops->rope(be, x, n, n_heads, hd, rot, pos, inv_freq);
}
void be_causal_conv(backend *be, const float *x, int64_t n, int64_t ch, int K, const float *w, float *state,
                    float *out) {
    be->ops->causal_conv(be, x, n, ch, K, w, state, out);
}
void be_delta_rule(backend *be, const float *q, const float *k, const float *v, int64_t ld, const float *g,
                   const float *beta, int64_t n, int nk, int nv, int dk, int dv, int chunk, float *state, float *out,
                   float *scratch) {
    be->ops->delta_rule(be, q, k, v, ld, g, beta, n, nk, nv, dk, dv, chunk, state, out, scratch);
}
void be_kv_store(backend *be, const kv_cache *c, const float *k, const float *v, int64_t n, const int64_t *pos) {
    be->ops->kv_store(be, c, k, v, n, pos);
}
void be_attention(backend *be, const float *q, int64_t n, const int64_t *pos, const kv_cache *c, int n_heads,
                  int window, float scale, float *scratch, float *out) {
    be->ops->attention(be, q, n, pos, c, n_heads, window, scale, scratch, out);
}
void be_add(backend *be, float *x, const float *y, int64_t n) { be->ops->add(be, x, y, n); }
void be_mul_act(backend *be, float *x, const float *g, int64_t n, int act) { be->ops->mul_act(be, x, g, n, act); }
void be_clip(backend *be, float *x, int64_t n, float lim) { be->ops->clip(be, x, n, lim); }
void be_copy_rows(backend *be, float *dst, int64_t dld, const float *src, int64_t sld, int64_t rows, int64_t cols) {
    be->ops->copy_rows(be, dst, dld, src, sld, rows, cols);
}
void be_gather_rows(backend *be, float *dst, const float *src, int64_t width, const int64_t *idx, int64_t div, int64_t n) {
    be->ops->gather_rows(be, dst, src, width, idx, div, n);
}
void be_scatter_rows(backend *be, float *dst, const float *src, int64_t width, const int64_t *idx, int64_t n) {
    be->ops->scatter_rows(be, dst, src, width, idx, n);
}
void be_moe_combine(backend *be, float *out, const float *yk, const float *w, const unsigned char *use, int64_t n, int K,
                    int64_t H) {
    be->ops->moe_combine(be, out, yk, w, use, n, K, H);
}
void be_add_gated(backend *be, float *out, const float *y, const float *g, int64_t n, int64_t H) {
    be->ops->add_gated(be, out, y, g, n, H);
}
void be_l2norm(backend *be, float *x, int64_t ld, int64_t n, int heads, int d, float scale) {
    be->ops->l2norm(be, x, ld, n, heads, d, scale);
}
void be_delta_split(backend *be, const float *in, const float *ba, int64_t n, int nk, int nv, int dk, int dv,
                    const float *neg_a, const float *dt_bias, float *mix, float *z, float *beta, float *g) {
    be->ops->delta_split(be, in, ba, n, nk, nv, dk, dv, neg_a, dt_bias, mix, z, beta, g);
}
