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

typedef enum wfmt { WF_F32, WF_F16, WF_BF16, WF_COUNT } wfmt;

/* A 2-D weight [rows x cols] (rows = output features, cols = input features,
 * the nn.Linear layout) over memory it does not own: a mapped file. */
typedef struct wtensor {
    wfmt fmt;
    int64_t rows, cols;
    const void *data;   /* row r starts at (char*)data + r * row_bytes */
    size_t row_bytes;
} wtensor;

const char *wfmt_name(wfmt f);
size_t wfmt_size(wfmt f);

typedef struct backend backend;

/* n_threads <= 0: all cores. `isa` NULL or "auto": the best the CPU has;
 * else "scalar", "avx2" or "avx512" (MOE_ISA in the environment also picks). */
moe_status backend_new(int n_threads, const char *isa, backend **out);
void backend_free(backend *be);
int backend_threads(const backend *be);
const char *backend_isa(const backend *be);

/* y[n x w->rows] = x[n x w->cols] . W^T (+ bias[w->rows] if not NULL). */
void be_matmul(backend *be, const wtensor *w, const float *x, int64_t n, const float *bias, float *y);
/* The same for nw <= 4 weights with the same input width, in one pass of the
 * thread pool: y[i] = x . w[i]^T (+ bias[i]); bias may be NULL, or hold NULLs. */
void be_matmul_n(backend *be, int nw, const wtensor *const *w, const float *x, int64_t n, const float *const *bias,
                 float *const *y);
/* Row r of W as float32 into out[w->cols] (embedding lookup). */
void be_get_row(const wtensor *w, int64_t r, float *out);
/* out[n x d] = x / rms(x) * weight, per row of width d (in place allowed). */
void be_rmsnorm(backend *be, const float *x, const float *weight, int64_t n, int64_t d, float eps, float *out);
/* Rotates pairs (i, i + hd/2) of each head of x[n x n_heads*hd] by position pos[t] (HF rotate_half). */
void be_rope(backend *be, float *x, int64_t n, int n_heads, int hd, const int64_t *pos, const float *inv_freq);
/* a[i] = silu(a[i]) * b[i] for i < n. */
void be_swiglu(float *a, const float *b, int64_t n);

/* Attention of n queries q[n x n_heads*hd] at positions pos0..pos0+n-1 over a
 * cache k, v [cap x n_kv*hd] holding position p at slot p % cap; query at
 * position p sees keys [max(0, p-window+1) .. p] (window 0: [0 .. p]).
 * out[n x n_heads*hd]. `scratch` [threads x cap] floats. */
void be_attention(backend *be, const float *q, int64_t n, int64_t pos0, const float *k, const float *v, int64_t cap,
                  int n_heads, int n_kv, int hd, int window, float scale, float *scratch, float *out);

#endif
