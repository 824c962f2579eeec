/* backend_impl.h — what a backend is inside: its table of operations (one
 * entry per operation of backend.h, with the same signature) and its state.
 * backend.c dispatches every be_* call through the table; backend_cpu.c and
 * backend_cuda.c each fill one. Included by backend sources only. */
#ifndef MOE_BACKEND_IMPL_H
#define MOE_BACKEND_IMPL_H

#include "backend.h"

struct pool;
struct cpu_kernels;
struct cuda_ctx;

typedef struct backend_ops {
    const char *kind;      /* "cpu", "cuda" */
    int host_memory;       /* be_alloc'd memory is the host's */
    void (*destroy)(backend *be);
    /* backend_set_float_decode; NULL where decode's inputs follow the ISA alone (CPU) */
    void (*set_float_decode)(backend *be, int on);
    /* memory */
    void *(*alloc)(backend *be, size_t bytes);
    void (*free)(backend *be, void *p);
    void (*upload)(backend *be, void *dst, const void *src, size_t bytes);
    void (*copy)(backend *be, void *dst, const void *src, size_t bytes);
    void (*zero)(backend *be, void *p, size_t bytes);
    moe_status (*download)(backend *be, void *dst, const void *src, size_t bytes);
    moe_status (*sync)(backend *be);
    /* be_graph_*; NULL where the backend records nothing (CPU) */
    int (*graph_begin)(backend *be, void **g, uint64_t key);
    int (*graph_end)(backend *be, void **g);
    void (*graph_free)(backend *be, void *g);
    /* movers and fences (backend.h); NULL where the memory is the host's */
    void *(*host_alloc)(backend *be, size_t bytes);
    void (*host_free)(backend *be, void *p);
    be_mover *(*mover_new)(backend *be);
    void (*mover_free)(backend *be, be_mover *mv);
    moe_status (*mover_upload)(backend *be, be_mover *mv, void *dst, const void *src, size_t bytes, be_fence *f);
    be_fence *(*fence_new)(backend *be);
    void (*fence_free)(backend *be, be_fence *f);
    void (*fence_record)(backend *be, be_fence *f);
    int64_t (*free_memory)(backend *be);
    moe_status (*place_weight)(backend *be, wtensor *w);
    const float *(*place_floats)(backend *be, const float *src, size_t n, moe_status *st);
    /* compute */
    void (*matmul_n)(backend *be, int nw, const wtensor *const *w, const float *x, int64_t n, const float *const *bias,
                     float *const *y);
    void (*matmul_swiglu)(backend *be, const wtensor *gate, const wtensor *up, const float *x, int64_t n, float *out);
    void (*moe_decode)(backend *be, int ne, const wtensor *const *gate, const wtensor *const *up,
                       const wtensor *const *down, const float *x, float *mid, int64_t ld_mid, float *const *out);
    /* be_route, be_moe_decode_sel: NULL where the host routes (CPU) */
    void (*route)(backend *be, float *logits, int64_t n, int E, int K, int norm, int32_t *sel, float *w,
                  int64_t *counts);
    void (*moe_decode_sel)(backend *be, int E, const wtensor *gate, const wtensor *up, const wtensor *down,
                           size_t stride, const int32_t *sel, int K, const wtensor *sgate, const wtensor *sup,
                           const wtensor *sdown, const float *x, float *mid, int64_t ld_mid, float *out,
                           int64_t ld_out, float *shared_out);
    /* be_moe_grouped: NULL where the caller runs the experts one by one (CPU) */
    void (*moe_grouped)(backend *be, int ne, const wtensor *const *gate, const wtensor *const *up,
                        const wtensor *const *down, const int64_t *off, const float *x, float *mid, float *out);
    void (*embed)(backend *be, const wtensor *w, const int32_t *tokens, int64_t n, float *out);
    void (*rmsnorm)(backend *be, const float *x, const float *weight, int64_t n, int64_t d, float eps, float *out);
    void (*rope)(backend *be, float *x, int64_t n, int n_heads, int hd, int rot, const int64_t *pos,
                 const float *inv_freq);
    void (*causal_conv)(backend *be, const float *x, int64_t n, int64_t ch, int K, const float *w, float *state,
                        float *out);
    void (*delta_rule)(backend *be, const float *q, const float *k, const float *v, int64_t ld, const float *g,
                       const float *beta, int64_t n, int nk, int nv, int dk, int dv, int chunk, float *state,
                       float *out, float *scratch);
    void (*kv_store)(backend *be, const kv_cache *c, const float *k, const float *v, int64_t n, const int64_t *pos);
    void (*attention)(backend *be, const float *q, int64_t n, const int64_t *pos, const kv_cache *c, int n_heads,
                      int window, float scale, float *scratch, float *out);
    void (*add)(backend *be, float *x, const float *y, int64_t n);
    void (*mul_act)(backend *be, float *x, const float *g, int64_t n, int act);
    void (*clip)(backend *be, float *x, int64_t n, float lim);
    void (*copy_rows)(backend *be, float *dst, int64_t dld, const float *src, int64_t sld, int64_t rows, int64_t cols);
    void (*gather_rows)(backend *be, float *dst, const float *src, int64_t width, const int64_t *idx, int64_t div,
                        int64_t n);
    void (*scatter_rows)(backend *be, float *dst, const float *src, int64_t width, const int64_t *idx, int64_t n);
    void (*moe_combine)(backend *be, float *out, const float *yk, const float *w, const unsigned char *use, int64_t n,
                        int K, int64_t H);
    void (*add_gated)(backend *be, float *out, const float *y, const float *g, int64_t n, int64_t H);
    void (*l2norm)(backend *be, float *x, int64_t ld, int64_t n, int heads, int d, float scale);
    void (*delta_split)(backend *be, const float *in, const float *ba, int64_t n, int nk, int nv, int dk, int dv,
                        const float *neg_a, const float *dt_bias, float *mix, float *z, float *beta, float *g);
} backend_ops;

struct backend {
    const backend_ops *ops;
    char name[384];              /* backend_device_name */
    /* ---- CPU (backend_cpu.c) */
    struct pool *pool;
    const struct cpu_kernels *k;
    /* ISA "amx": matmuls of >= amx_min tokens run on AMX tiles (kernels_amx.c) */
    int amx;
    int64_t amx_min;
    int64_t amx_runs;            /* matmuls that took the AMX path (backend_amx_runs) */
    /* grown by the calling thread, like the pool one call at a time */
    uint16_t *amx_x;             /* activations packed for AMX, amx_x_elems(n, K) */
    size_t amx_x_cap;            /* elements */
    unsigned char *amx_scratch;  /* [threads x amx_stride] bytes: panels and result tiles */
    size_t amx_stride;
    /* decode: the input prepared once per call for the kernels' dec entries (dec_prepare) */
    unsigned char *dec;          /* [dec_cap] bytes, 64-byte aligned; up to MM_MAX prepared inputs */
    size_t dec_cap;
    /* ---- CUDA (backend_cuda.c) */
    struct cuda_ctx *cuda;
};

extern const backend_ops cpu_backend_ops;
#ifdef MOE_HAVE_CUDA
/* Opens GPU `device` as a backend. */
moe_status backend_cuda_open(int device, backend **out);
int backend_cuda_count(void);
#endif

#endif
