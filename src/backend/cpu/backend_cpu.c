/* backend_cpu.c — the CPU backend: a thread pool and the kernel table of the
 * best instruction set this CPU has, behind the operations of backend.h. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../../base/err.h"
#include "../../base/pool.h"
#include "../backend_impl.h"
#include "kernels.h"

/* Prompts of at least this many tokens take the AMX path under "amx" (MOE_AMX_MIN_TOKENS overrides). */
#define AMX_MIN_TOKENS 8


const char *wfmt_name(wfmt f) {
    static const char *names[WF_COUNT] = {"F32", "F16", "BF16", "Q2", "Q3", "Q4", "Q5", "Q6", "Q8"};
    return (unsigned)f < WF_COUNT ? names[f] : "?";
}

int wfmt_bits(wfmt f) {
    static const int bits[WF_COUNT] = {32, 16, 16, 2, 3, 4, 5, 6, 8};
    return (unsigned)f < WF_COUNT ? bits[f] : 0;
}

size_t wfmt_size(wfmt f) { return wfmt_is_quant(f) ? 0 : (size_t)wfmt_bits(f) / 8; }

wfmt wfmt_quant(int bits) {
    for (int f = WF_Q2; f < WF_COUNT; f++)
        if (wfmt_bits((wfmt)f) == bits) return (wfmt)f;
    return WF_COUNT;
}

size_t wfmt_row_bytes(wfmt f, int64_t cols) { return ((size_t)cols * (size_t)wfmt_bits(f) + 7) / 8; }

wtensor wtensor_rows(const wtensor *w, int64_t r0, int64_t n) {
    wtensor v = *w;
    v.rows = n;
    v.data = (const unsigned char *)w->data + (size_t)r0 * w->row_bytes;
    if (wfmt_is_quant(w->fmt)) {
        v.scales = (const unsigned char *)w->scales + (size_t)r0 * w->sb_row_bytes;
        v.biases = (const unsigned char *)w->biases + (size_t)r0 * w->sb_row_bytes;
    }
    return v;
}

size_t wtensor_bytes(const wtensor *w) {
    size_t b = (size_t)w->rows * wfmt_row_bytes(w->fmt, w->cols);
    if (wfmt_is_quant(w->fmt)) b += 2 * (size_t)w->rows * (size_t)(w->cols / w->group) * wfmt_size(w->sfmt);
    return b;
}

const cpu_kernels *cpu_kernels_pick(const char *name) {
    int want_auto = !name || !*name || strcmp(name, "auto") == 0;
    if (!want_auto && strcmp(name, "scalar") == 0) return cpu_kernels_scalar();
#if defined(__x86_64__)
    __builtin_cpu_init();
    int has512 = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                 __builtin_cpu_supports("avx512vl");
    int has2 = __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma");
    int hasvnni = __builtin_cpu_supports("avx512vnni");
    if (want_auto) {
        if (has512 && hasvnni && cpu_kernels_avx512_vnni()) return cpu_kernels_avx512_vnni();
        if (has512 && cpu_kernels_avx512()) return cpu_kernels_avx512();
        if (has2 && cpu_kernels_avx2()) return cpu_kernels_avx2();
        return cpu_kernels_scalar();
    }
    if (strcmp(name, "avx2") == 0) return has2 ? cpu_kernels_avx2() : NULL;
    if (strcmp(name, "avx512") == 0) return has512 ? cpu_kernels_avx512() : NULL;
    if (strcmp(name, "avx512vnni") == 0) return has512 && hasvnni ? cpu_kernels_avx512_vnni() : NULL;
    if (strcmp(name, "amx") == 0)
        return !has512 || !amx_usable() ? NULL : hasvnni ? cpu_kernels_avx512_vnni() : cpu_kernels_avx512();
#elif defined(__aarch64__)
    /* NEON (Advanced SIMD) is part of every AArch64 CPU */
    if (want_auto || strcmp(name, "neon") == 0) return cpu_kernels_neon();
#else
    if (want_auto) return cpu_kernels_scalar();
#endif
    return NULL;
}

const char *cpu_kernels_names(void) {
#if defined(__x86_64__)
    return "auto, scalar, avx2, avx512, avx512vnni, amx";
#elif defined(__aarch64__)
    return "auto, scalar, neon";
#else
    return "auto, scalar";
#endif
}

moe_status backend_new(int n_threads, const char *isa, backend **out) {
    *out = NULL;
    if (!isa || !*isa) isa = getenv("MOE_ISA");
    const cpu_kernels *k = cpu_kernels_pick(isa);
    if (!k)
        return moe_err(MOE_EUNSUPPORTED, "instruction set \"%s\" unknown or not supported by this CPU (this build: %s)",
                       isa, cpu_kernels_names());
    int want_auto = !isa || !*isa || strcmp(isa, "auto") == 0;
    /* AMX on top of auto's pick (an AVX-512 table, VNNI's where the CPU has it, wherever AMX is usable) or of "amx"'s */
    int amx = (want_auto || strcmp(isa, "amx") == 0) && amx_usable();
    int64_t amx_min = AMX_MIN_TOKENS;
    const char *env = getenv("MOE_AMX_MIN_TOKENS");
    if (amx && env && *env) {
        char *end;
        long long v = strtoll(env, &end, 10);
        if (*end || v < 1) return moe_err(MOE_EINVAL, "MOE_AMX_MIN_TOKENS=\"%s\": expected a positive integer", env);
        amx_min = v;
    }
    backend *be = calloc(1, sizeof *be);
    if (!be) return moe_err(MOE_ENOMEM, "out of memory");
    be->ops = &cpu_backend_ops;
    be->k = k;
    be->amx = amx;
    be->amx_min = amx_min;
    be->pool = pool_new(n_threads);
    if (!be->pool) {
        free(be);
        return moe_err(MOE_ENOMEM, "cannot start worker threads");
    }
    snprintf(be->name, sizeof be->name, "cpu (%s, %d threads)", amx ? "amx" : k->name, pool_threads(be->pool));
    *out = be;
    return MOE_OK;
}

static void cpu_destroy(backend *be) {
    pool_free(be->pool);
    free(be->amx_x);
    free(be->amx_scratch);
    free(be->dec);
    free(be);
}

int backend_threads(const backend *be) { return be->pool ? pool_threads(be->pool) : 1; }
const char *backend_isa(const backend *be) { return be->cuda ? "cuda" : be->amx ? "amx" : be->k->name; }
int64_t backend_amx_runs(const backend *be) { return be->amx_runs; }
pool *backend_cpu_pool(backend *be) { return be->pool; }
const cpu_kernels *backend_cpu_kernels(const backend *be) { return be->k; }

/* ------------------------------------------------------------- matmul -- */

/* Work below this many multiply-adds runs on the calling thread: handing it
 * to the pool costs more than it saves (tiny experts, small models). */
#define SMALL_WORK (1 << 18)

/* One pool run covers up to MM_MAX weights that read the same input (q/k/v,
 * gate/up): fewer synchronisations, and small matrices share the threads. */
#define MM_MAX 4

typedef struct mm_job {
    const cpu_kernels *k;
    const void *dx[MM_MAX];         /* decode: w[i]'s prepared input (dec_prepare), or NULL */
    const float *x;
    int64_t n, tok_chunk, n_tok_chunks;
    int nw;
    const wtensor *w[MM_MAX];
    float *y[MM_MAX];
    int64_t row_chunk[MM_MAX];
    int64_t first_item[MM_MAX + 1]; /* items of weight i: [first_item[i], first_item[i+1]) */
} mm_job;

/* Decode (n = 1): prepares the input x[i] of every weight w[i] whose kernel
 * takes a prepared input (cpu_kernels.dec), once per distinct (input, format,
 * group, cols), into be->dec (grown here, by the calling thread, and kept).
 * dx[i]: w[i]'s, or NULL where matmul[] serves w[i] (also when memory is
 * short). Every item of the call then reads it instead of redoing it. */
static void dec_prepare_each(backend *be, int nw, const wtensor *const *w, const float *const *x, const void **dx) {
    size_t total = 0;
    for (int pass = 0; pass < 2; pass++) {
        size_t off = 0;
        for (int i = 0; i < nw; i++) {
            const cpu_dec *d = &be->k->dec[w[i]->fmt];
            dx[i] = NULL;
            size_t b = d->mm ? d->bytes(w[i]) : 0;
            if (!b) continue;
            int same = -1;
            for (int k = 0; k < i && same < 0; k++)
                if (x[k] == x[i] && w[k]->fmt == w[i]->fmt && w[k]->group == w[i]->group && w[k]->cols == w[i]->cols &&
                    (pass == 0 || dx[k]))
                    same = k;
            if (pass == 0) {
                if (same < 0) total += (b + 63) / 64 * 64;
                dx[i] = same < 0 ? (const void *)1 : NULL;
                continue;
            }
            if (same >= 0) {
                dx[i] = dx[same];
                continue;
            }
            d->prep(w[i], x[i], be->dec + off);
            dx[i] = be->dec + off;
            off += (b + 63) / 64 * 64;
        }
        if (pass == 0) {
            if (!total) return;
            if (total > be->dec_cap) {
                free(be->dec);
                be->dec = aligned_alloc(64, total);
                be->dec_cap = be->dec ? total : 0;
                if (!be->dec) {
                    for (int i = 0; i < nw; i++) dx[i] = NULL;
                    return;
                }
            }
        }
    }
}

/* dec_prepare_each with one input x for all nw <= MM_MAX weights */
static void dec_prepare(backend *be, int nw, const wtensor *const *w, const float *x, const void **dx) {
    _Static_assert(MM_MAX == 4, "one x per weight below");
    const float *xs[MM_MAX] = {x, x, x, x};
    dec_prepare_each(be, nw, w, xs, dx);
}

/* AMX prompt path: an item is a block of up to AMX_RB rows of one weight (or
 * of gate and up) for every token of the batch, so each thread dequantizes a
 * block once and keeps it in its L2 while it walks the tokens. The
 * activations are packed to bf16 once per call, in a first pool run. */
typedef struct amx_job {
    backend *be;
    const float *x;
    int64_t n, K;
    amx_epilogue ep;
    int nw;
    const wtensor *w[MM_MAX][2]; /* [i][0]: the weight (gate); [i][1]: up for AMX_SWIGLU */
    float *y[MM_MAX];
    int64_t rb[MM_MAX];          /* rows an item */
    int64_t first_item[MM_MAX + 1];
} amx_job;

static void amx_pack_item(void *ctx, int64_t tt, int tid) {
    (void)tid;
    const amx_job *j = ctx;
    amx_pack_x(j->x, j->K, j->n, j->K, tt, j->be->amx_x);
}

static void amx_item(void *ctx, int64_t item, int tid) {
    const amx_job *j = ctx;
    int i = 0;
    while (item >= j->first_item[i + 1]) i++;
    int64_t rows = j->w[i][0]->rows, r0 = (item - j->first_item[i]) * j->rb[i];
    int64_t nr = rows - r0 < j->rb[i] ? rows - r0 : j->rb[i];
    amx_matmul_rows(j->ep, j->w[i], r0, nr, j->be->amx_x, j->n, j->be->amx_scratch + (size_t)tid * j->be->amx_stride,
                    j->y[i] + r0, rows);
}

/* Grows the packed-activation and scratch buffers to fit (they are kept for
 * the next call); 0 when memory is short, and the float path serves the call. */
static int amx_reserve(backend *be, int64_t n, int64_t K, int nw) {
    size_t xe = amx_x_elems(n, K), stride = (amx_scratch_bytes(nw, n) + 63) / 64 * 64;
    if (xe > be->amx_x_cap) {
        free(be->amx_x);
        be->amx_x = aligned_alloc(64, (xe * sizeof(uint16_t) + 63) / 64 * 64);
        be->amx_x_cap = be->amx_x ? xe : 0;
        if (!be->amx_x) return 0;
    }
    if (stride > be->amx_stride) {
        free(be->amx_scratch);
        be->amx_scratch = aligned_alloc(64, stride * (size_t)pool_threads(be->pool));
        be->amx_stride = be->amx_scratch ? stride : 0;
        if (!be->amx_scratch) return 0;
    }
    return 1;
}

/* Runs j (w, y, ep, nw set) on AMX: packs x, then the row blocks; 0 when it could not. */
static int amx_run(backend *be, amx_job *j, const float *x, int64_t n) {
    int nth = pool_threads(be->pool), npanels = j->ep == AMX_SWIGLU ? 2 : 1;
    int64_t K = j->w[0][0]->cols, macs = 0;
    if (!amx_reserve(be, n, K, npanels)) return 0;
    j->be = be;
    j->x = x;
    j->n = n;
    j->K = K;
    for (int i = 0; i < j->nw; i++) {
        /* blocks of 32..AMX_RB rows, about 4 a thread for balance */
        int64_t rows = j->w[i][0]->rows, rb = (rows + 4 * nth - 1) / (4 * nth);
        rb = rb < 32 ? 32 : rb > AMX_RB ? AMX_RB : (rb + 31) / 32 * 32;
        j->rb[i] = rb;
        j->first_item[i + 1] = j->first_item[i] + (rows + rb - 1) / rb;
        macs += rows * K * n * npanels;
    }
    int64_t ntt = (n + 15) / 16;
    if (macs < SMALL_WORK) {
        for (int64_t tt = 0; tt < ntt; tt++) amx_pack_item(j, tt, 0);
        for (int64_t it = 0; it < j->first_item[j->nw]; it++) amx_item(j, it, 0);
    } else {
        pool_run(be->pool, amx_pack_item, j, ntt);
        pool_run(be->pool, amx_item, j, j->first_item[j->nw]);
    }
    be->amx_runs++;
    return 1;
}

static void mm_item(void *ctx, int64_t item, int tid) {
    (void)tid;
    const mm_job *j = ctx;
    int i = 0;
    while (item >= j->first_item[i + 1]) i++;
    const wtensor *w = j->w[i];
    mm_fn mm = cpu_kernels_mm(j->k, w->fmt);
    int64_t it = item - j->first_item[i];
    int64_t rc = it / j->n_tok_chunks, tc = it % j->n_tok_chunks;
    int64_t r0 = rc * j->row_chunk[i], r1 = r0 + j->row_chunk[i] < w->rows ? r0 + j->row_chunk[i] : w->rows;
    int64_t t0 = tc * j->tok_chunk, nt = j->n - t0 < j->tok_chunk ? j->n - t0 : j->tok_chunk;
    if (j->dx[i]) {
        j->k->dec[w->fmt].mm(w, r0, r1, j->dx[i], j->y[i]);
        return;
    }
    mm(w, r0, r1, j->x + t0 * w->cols, w->cols, nt, j->y[i] + t0 * w->rows, w->rows);
}

/* The float32 kernels of the ISA: items of row chunks x 32 tokens */
static void mm_float(backend *be, int nw, const wtensor *const *w, const float *x, int64_t n, float *const *y) {
    int nth = pool_threads(be->pool);
    mm_job j = {.k = be->k, .x = x, .n = n, .tok_chunk = 32, .nw = nw};
    j.n_tok_chunks = (n + j.tok_chunk - 1) / j.tok_chunk;
    if (n == 1) dec_prepare(be, nw, w, x, j.dx);
    for (int i = 0; i < nw; i++) {
        /* enough items for the pool to balance, each a multiple of the 4-row tile */
        int64_t chunk = (w[i]->rows + nth * 8 - 1) / (nth * 8);
        chunk = chunk < 16 ? 16 : (chunk + 3) / 4 * 4;
        j.w[i] = w[i];
        j.y[i] = y[i];
        j.row_chunk[i] = chunk;
        j.first_item[i + 1] = j.first_item[i] + (w[i]->rows + chunk - 1) / chunk * j.n_tok_chunks;
    }
    int64_t macs = 0;
    for (int i = 0; i < nw; i++) macs += w[i]->rows * w[i]->cols * n;
    if (macs < SMALL_WORK) /* waking the pool costs more than it saves */
        for (int64_t it = 0; it < j.first_item[nw]; it++) mm_item(&j, it, 0);
    else
        pool_run(be->pool, mm_item, &j, j.first_item[nw]);
}

static void cpu_matmul_n(backend *be, int nw, const wtensor *const *w, const float *x, int64_t n, const float *const *bias,
                 float *const *y) {
    amx_job aj = {.ep = AMX_STORE, .nw = nw};
    for (int i = 0; i < nw; i++) {
        aj.w[i][0] = w[i];
        aj.y[i] = y[i];
    }
    if (!(be->amx && n >= be->amx_min && amx_run(be, &aj, x, n))) mm_float(be, nw, w, x, n, y);
    for (int i = 0; bias && i < nw; i++)
        if (bias[i])
            for (int64_t t = 0; t < n; t++)
                for (int64_t r = 0; r < w[i]->rows; r++) y[i][t * w[i]->rows + r] += bias[i][r];
}

/* Fused SwiGLU: an item is SW_ROWS rows of gate and up for SW_TOK tokens (for
 * one token, up to SW_ROWS * SW_TOK rows); its two partial products live in a
 * stack buffer of 2 * SW_ROWS * SW_TOK floats. */
#define SW_ROWS 64
#define SW_TOK 32

typedef struct sw_job {
    const cpu_kernels *k;
    const wtensor *gate, *up;
    const float *x;
    float *out;
    int64_t n, rb, n_row_chunks; /* rb: rows an item */
    const void *dx[2];           /* decode: gate's and up's prepared input (dec_prepare), or NULL */
} sw_job;

/* out[t * ldo + r] = silu(gate . x_t) * (up . x_t) for the nr rows from r0 of
 * gate and up (r counted from r0) and nt tokens x [nt x cols]; dx: their
 * prepared inputs (decode) or NULLs. The two products go through stack
 * buffers of SW_ROWS * SW_TOK floats (nt * nr must fit). */
static void swiglu_rows(const cpu_kernels *k, const wtensor *gate, const wtensor *up, int64_t r0, int64_t nr, const float *x,
                        int64_t nt, const void *const *dx, float *out, int64_t ldo) {
    float g[SW_ROWS * SW_TOK], u[SW_ROWS * SW_TOK]; /* [nt x nr] */
    const wtensor *w[2] = {gate, up};
    float *y[2] = {g, u};
    for (int i = 0; i < 2; i++) {
        mm_fn mm = cpu_kernels_mm(k, w[i]->fmt);
        wtensor v = wtensor_rows(w[i], r0, nr); /* so the block's row r0 lands in column 0 of y */
        if (dx[i]) k->dec[v.fmt].mm(&v, 0, nr, dx[i], y[i]);
        else mm(&v, 0, nr, x, v.cols, nt, y[i], nr);
    }
    for (int64_t t = 0; t < nt; t++) {
        float *o = out + t * ldo;
        const float *gt = g + t * nr, *ut = u + t * nr;
        for (int64_t r = 0; r < nr; r++) o[r] = gt[r] / (1.0f + expf(-gt[r])) * ut[r];
    }
}

static void sw_item(void *ctx, int64_t item, int tid) {
    (void)tid;
    const sw_job *j = ctx;
    int64_t rc = item % j->n_row_chunks, tc = item / j->n_row_chunks;
    int64_t rows = j->gate->rows, r0 = rc * j->rb, nr = rows - r0 < j->rb ? rows - r0 : j->rb;
    int64_t t0 = tc * SW_TOK, nt = j->n - t0 < SW_TOK ? j->n - t0 : SW_TOK;
    swiglu_rows(j->k, j->gate, j->up, r0, nr, j->x + t0 * j->gate->cols, nt, j->dx, j->out + t0 * rows + r0, rows);
}

static void cpu_matmul_swiglu(backend *be, const wtensor *gate, const wtensor *up, const float *x, int64_t n, float *out) {
    amx_job aj = {.ep = AMX_SWIGLU, .nw = 1, .w = {{gate, up}}, .y = {out}};
    if (be->amx && n >= be->amx_min && amx_run(be, &aj, x, n)) return;
    int64_t rb = SW_ROWS;
    if (n == 1) {
        /* decode: an item's buffers hold SW_TOK times the rows of one token, so
         * take bigger items, about 8 a thread as mm_float does: 64-row items
         * spent more on the pool and on each item's setup than they balanced */
        int nth = pool_threads(be->pool);
        rb = (gate->rows + nth * 8 - 1) / (nth * 8);
        rb = rb < SW_ROWS ? SW_ROWS : rb > SW_ROWS * SW_TOK ? SW_ROWS * SW_TOK : (rb + 3) / 4 * 4;
    }
    sw_job j = {be->k, gate, up, x, out, n, rb, (gate->rows + rb - 1) / rb, {NULL, NULL}};
    if (n == 1) dec_prepare(be, 2, (const wtensor *const[]){gate, up}, x, j.dx);
    int64_t items = j.n_row_chunks * ((n + SW_TOK - 1) / SW_TOK);
    if (2 * gate->rows * gate->cols * n < SMALL_WORK)
        for (int64_t it = 0; it < items; it++) sw_item(&j, it, 0);
    else
        pool_run(be->pool, sw_item, &j, items);
}

/* ---------------------------------------------- MoE decode, all experts -- */

typedef struct moe_job {
    const cpu_kernels *k;
    int ne, swiglu;          /* phase: 1 = gate/up into mid, 0 = down into out */
    const wtensor *const *w0, *const *w1; /* gate, up (phase 1) or down (w0) */
    const float *x;          /* phase 1: the token */
    float *mid;
    float *const *out;
    int64_t ld_mid, rb;
    const void **dx;         /* [2 * ne] prepared inputs (gate, up / down), or NULLs */
    int64_t first_item[MOE_DEC_MAX + 1];
} moe_job;

static void moe_item(void *ctx, int64_t item, int tid) {
    (void)tid;
    const moe_job *j = ctx;
    int i = 0;
    while (item >= j->first_item[i + 1]) i++;
    const wtensor *w = j->w0[i];
    int64_t r0 = (item - j->first_item[i]) * j->rb, nr = w->rows - r0 < j->rb ? w->rows - r0 : j->rb;
    if (!j->swiglu) { /* down: mid[i] -> out[i] */
        const float *xi = j->mid + i * j->ld_mid;
        if (j->dx[i]) j->k->dec[w->fmt].mm(w, r0, r0 + nr, j->dx[i], j->out[i]);
        else cpu_kernels_mm(j->k, w->fmt)(w, r0, r0 + nr, xi, w->cols, 1, j->out[i], w->rows);
        return;
    }
    swiglu_rows(j->k, w, j->w1[i], r0, nr, j->x, 1, j->dx + 2 * i, j->mid + i * j->ld_mid + r0, 0);
}

/* Items of about 8 a thread over all the experts' rows, within the SwiGLU
 * item's stack buffers. */
static void moe_items(moe_job *j, int nth) {
    int64_t rows = 0;
    for (int i = 0; i < j->ne; i++) rows += j->w0[i]->rows;
    int64_t rb = (rows + nth * 8 - 1) / (nth * 8);
    j->rb = rb < 16 ? 16 : rb > SW_ROWS * SW_TOK ? SW_ROWS * SW_TOK : (rb + 3) / 4 * 4;
    for (int i = 0; i < j->ne; i++) j->first_item[i + 1] = j->first_item[i] + (j->w0[i]->rows + j->rb - 1) / j->rb;
}

static void cpu_moe_decode(backend *be, int ne, const wtensor *const *gate, const wtensor *const *up, const wtensor *const *down,
                   const float *x, float *mid, int64_t ld_mid, float *const *out) {
    const void *dx[2 * MOE_DEC_MAX];
    const wtensor *gw[2 * MOE_DEC_MAX];
    const float *xs[2 * MOE_DEC_MAX];
    int nth = pool_threads(be->pool);
    for (int i = 0; i < ne; i++) {
        gw[2 * i] = gate[i], gw[2 * i + 1] = up[i];
        xs[2 * i] = xs[2 * i + 1] = x;
    }
    dec_prepare_each(be, 2 * ne, gw, xs, dx);
    moe_job j = {.k = be->k, .ne = ne, .swiglu = 1, .w0 = gate, .w1 = up, .x = x, .mid = mid, .out = out,
                 .ld_mid = ld_mid, .dx = dx};
    moe_items(&j, nth);
    pool_run(be->pool, moe_item, &j, j.first_item[ne]);
    for (int i = 0; i < ne; i++) xs[i] = mid + i * ld_mid;
    dec_prepare_each(be, ne, down, xs, dx);
    j.swiglu = 0;
    j.w0 = down;
    j.first_item[0] = 0;
    moe_items(&j, nth);
    pool_run(be->pool, moe_item, &j, j.first_item[ne]);
}

void be_get_row(const wtensor *w, int64_t r, float *out) {
    for (int64_t k = 0; k < w->cols; k++) out[k] = wtensor_at(w, r, k);
}

/* ------------------------------------------------------- elementwise -- */

static void cpu_rmsnorm(backend *be, const float *x, const float *weight, int64_t n, int64_t d, float eps, float *out) {
    (void)be;
    for (int64_t t = 0; t < n; t++) {
        const float *xr = x + t * d;
        float *o = out + t * d;
        double ss = 0;
        for (int64_t i = 0; i < d; i++) ss += (double)xr[i] * xr[i];
        float inv = 1.0f / sqrtf((float)(ss / (double)d) + eps);
        for (int64_t i = 0; i < d; i++) o[i] = weight[i] * (xr[i] * inv);
    }
}

static void cpu_rope(backend *be, float *x, int64_t n, int n_heads, int hd, int rot, const int64_t *pos, const float *inv_freq) {
    (void)be;
    int half = rot / 2;
    for (int64_t t = 0; t < n; t++) {
        for (int i = 0; i < half; i++) {
            float ang = (float)pos[t] * inv_freq[i];
            float c = cosf(ang), s = sinf(ang);
            for (int h = 0; h < n_heads; h++) {
                float *v = x + (t * n_heads + h) * hd;
                float a = v[i], b = v[i + half];
                v[i] = a * c - b * s;
                v[i + half] = b * c + a * s;
            }
        }
    }
}

/* ---------------------------------------------------------- attention -- */

int kv_group(int hd) { return hd % 64 == 0 ? 64 : hd % 32 == 0 ? 32 : hd; }

size_t kv_row_bytes(const kv_cache *c) { return (size_t)c->n_kv * (size_t)c->hd * (size_t)c->bits / 8; }

size_t kv_sb_row_floats(const kv_cache *c) { return c->bits == 32 ? 0 : (size_t)c->n_kv * (size_t)(c->hd / c->group); }

/* x[n] -> n/group groups: q packed at `bits` into out, scale and bias per
 * group. Round to nearest; the clamp also keeps NaN out of the conversion. */
static void kv_quantize(const float *x, int64_t n, int bits, int group, unsigned char *out, float *scale, float *bias) {
    float qmax = (float)((1 << bits) - 1);
    memset(out, 0, (size_t)n * (size_t)bits / 8);
    for (int64_t g0 = 0; g0 < n; g0 += group) {
        const float *xg = x + g0;
        float lo = xg[0], hi = xg[0];
        for (int j = 1; j < group; j++) {
            lo = xg[j] < lo ? xg[j] : lo;
            hi = xg[j] > hi ? xg[j] : hi;
        }
        float s = (hi - lo) / qmax, inv = s > 0 ? 1.0f / s : 0.0f;
        scale[g0 / group] = s;
        bias[g0 / group] = lo;
        for (int j = 0; j < group; j++) {
            float qf = rintf((xg[j] - lo) * inv);
            qf = qf > qmax ? qmax : qf >= 0 ? qf : 0.0f;
            int64_t k = g0 + j;
            out[k * bits / 8] |= (unsigned char)((unsigned)qf << (k * bits % 8));
        }
    }
}

static void cpu_kv_store(backend *be, const kv_cache *c, const float *k, const float *v, int64_t n, const int64_t *pos) {
    (void)be;
    int64_t w = (int64_t)c->n_kv * c->hd;
    size_t rb = kv_row_bytes(c), sb = kv_sb_row_floats(c);
    for (int64_t t = 0; t < n; t++) {
        int64_t slot = pos[t] % c->cap;
        if (c->bits == 32) {
            memcpy((char *)c->k + (size_t)slot * rb, k + t * w, rb);
            memcpy((char *)c->v + (size_t)slot * rb, v + t * w, rb);
            continue;
        }
        kv_quantize(k + t * w, w, c->bits, c->group, (unsigned char *)c->k + (size_t)slot * rb, c->ks + (size_t)slot * sb,
                    c->kb + (size_t)slot * sb);
        kv_quantize(v + t * w, w, c->bits, c->group, (unsigned char *)c->v + (size_t)slot * rb, c->vs + (size_t)slot * sb,
                    c->vb + (size_t)slot * sb);
    }
}

typedef struct att_job {
    const cpu_kernels *k;
    const float *q;
    const kv_cache *c;
    float *scratch, *out;
    int64_t pos0;
    int n_heads, window;
    float scale;
    kv_dot_fn kdot;   /* quantized caches: this ISA's kernels, or the scalar ones */
    kv_axpy_fn kaxpy;
} att_job;

static void att_item(void *ctx, int64_t i, int tid) {
    const att_job *j = ctx;
    const kv_cache *c = j->c;
    int hd = c->hd;
    int64_t t = i / j->n_heads;
    int h = (int)(i % j->n_heads), kvh = h / (j->n_heads / c->n_kv);
    int64_t p = j->pos0 + t, lo = 0;
    if (j->window > 0 && p - j->window + 1 > 0) lo = p - j->window + 1;
    const float *q = j->q + (t * j->n_heads + h) * hd;
    float *s = j->scratch + (size_t)tid * (size_t)(c->cap + hd), *o = j->out + (t * j->n_heads + h) * hd;
    float *qsum = s + c->cap; /* [hd/group] quantized only */
    /* head kvh of slot sl: values at kbase + sl*rb + hoff, scales/biases at sl*sb + soff */
    size_t rb = kv_row_bytes(c), hoff = (size_t)kvh * (size_t)hd * (size_t)c->bits / 8;
    size_t sb = kv_sb_row_floats(c), soff = c->bits == 32 ? 0 : (size_t)kvh * (size_t)(hd / c->group);
    const unsigned char *kbase = c->k, *vbase = c->v;
    if (c->bits != 32)
        for (int g = 0; g < hd / c->group; g++) {
            float sum = 0;
            for (int e = 0; e < c->group; e++) sum += q[g * c->group + e];
            qsum[g] = sum;
        }
    float mx = -INFINITY;
    for (int64_t p2 = lo; p2 <= p; p2++) {
        size_t sl = (size_t)(p2 % c->cap);
        const unsigned char *kr = kbase + sl * rb + hoff;
        float sc = c->bits == 32 ? j->k->dot(q, (const float *)kr, hd)
                                 : j->kdot(q, qsum, kr, c->ks + sl * sb + soff, c->kb + sl * sb + soff, hd, c->group);
        s[p2 - lo] = sc *= j->scale;
        if (sc > mx) mx = sc;
    }
    float sum = 0;
    for (int64_t p2 = lo; p2 <= p; p2++) sum += (s[p2 - lo] = expf(s[p2 - lo] - mx));
    memset(o, 0, sizeof(float) * (size_t)hd);
    float inv = 1.0f / sum;
    for (int64_t p2 = lo; p2 <= p; p2++) {
        size_t sl = (size_t)(p2 % c->cap);
        const unsigned char *vr = vbase + sl * rb + hoff;
        if (c->bits == 32) j->k->axpy(o, s[p2 - lo] * inv, (const float *)vr, hd);
        else j->kaxpy(o, s[p2 - lo] * inv, vr, c->vs + sl * sb + soff, c->vb + sl * sb + soff, hd, c->group);
    }
}

static void cpu_attention(backend *be, const float *q, int64_t n, const int64_t *pos, const kv_cache *c, int n_heads,
                          int window, float scale, float *scratch, float *out) {
    int64_t pos0 = pos[0];
    att_job j = {be->k, q, c, scratch, out, pos0, n_heads, window, scale, NULL, NULL};
    if (c->bits != 32) {
        int ks = kv_slot(c->bits);
        j.kdot = be->k->kv_dot[ks] ? be->k->kv_dot[ks] : cpu_kernels_scalar()->kv_dot[ks];
        j.kaxpy = be->k->kv_axpy[ks] ? be->k->kv_axpy[ks] : cpu_kernels_scalar()->kv_axpy[ks];
    }
    int64_t span = window > 0 && window < pos0 + n ? window : pos0 + n; /* keys a query sees, at most */
    if (n * n_heads * span * c->hd < SMALL_WORK)
        for (int64_t i = 0; i < n * n_heads; i++) att_item(&j, i, 0);
    else
        pool_run(be->pool, att_item, &j, n * n_heads);
}

/* ------------------------------------------------------------- memory --
 * Host memory: the forward pass's buffers are ordinary allocations, and a
 * copy to or from the host where source and destination are the same buffer
 * (a caller's host array used directly) is no copy at all. */

static void *cpu_alloc(backend *be, size_t bytes) {
    (void)be;
    void *p = NULL;
    if (posix_memalign(&p, 64, bytes ? bytes : 1)) {
        moe_err(MOE_ENOMEM, "out of memory for a buffer of %zu bytes", bytes);
        return NULL;
    }
    memset(p, 0, bytes);
    return p;
}

static void cpu_free(backend *be, void *p) {
    (void)be;
    free(p);
}

static void cpu_copy(backend *be, void *dst, const void *src, size_t bytes) {
    (void)be;
    if (dst != src && bytes) memcpy(dst, src, bytes);
}

static void cpu_zero(backend *be, void *p, size_t bytes) {
    (void)be;
    if (bytes) memset(p, 0, bytes);
}

static moe_status cpu_download(backend *be, void *dst, const void *src, size_t bytes) {
    cpu_copy(be, dst, src, bytes);
    return MOE_OK;
}

static moe_status cpu_sync(backend *be) {
    (void)be;
    return MOE_OK;
}

static moe_status cpu_place_weight(backend *be, wtensor *w) {
    (void)be, (void)w;
    return MOE_OK;
}

static const float *cpu_place_floats(backend *be, const float *src, size_t n, moe_status *st) {
    (void)be, (void)n;
    *st = MOE_OK;
    return src;
}

/* ---------------------------------------------- elementwise and moves -- */

static inline float sigmoidf(float x) { return 1.0f / (1.0f + expf(-x)); }

/* log(1 + e^x) as torch's softplus (threshold 20: x itself above). */
static inline float softplusf(float x) { return x > 20 ? x : log1pf(expf(x)); }

static void cpu_embed(backend *be, const wtensor *w, const int32_t *tokens, int64_t n, float *out) {
    (void)be;
    for (int64_t t = 0; t < n; t++) be_get_row(w, tokens[t], out + t * w->cols);
}

static void cpu_add(backend *be, float *x, const float *y, int64_t n) {
    (void)be;
    for (int64_t i = 0; i < n; i++) x[i] += y[i];
}

static void cpu_mul_act(backend *be, float *x, const float *g, int64_t n, int act) {
    (void)be;
    if (act == BE_SILU)
        for (int64_t i = 0; i < n; i++) x[i] *= g[i] * sigmoidf(g[i]);
    else
        for (int64_t i = 0; i < n; i++) x[i] *= sigmoidf(g[i]);
}

static void cpu_clip(backend *be, float *x, int64_t n, float c) {
    (void)be;
    for (int64_t i = 0; i < n; i++) x[i] = x[i] > c ? c : x[i] < -c ? -c : x[i];
}

static void cpu_copy_rows(backend *be, float *dst, int64_t dld, const float *src, int64_t sld, int64_t rows,
                          int64_t cols) {
    (void)be;
    for (int64_t r = 0; r < rows; r++) memcpy(dst + r * dld, src + r * sld, sizeof(float) * (size_t)cols);
}

static void cpu_gather_rows(backend *be, float *dst, const float *src, int64_t width, const int64_t *idx, int64_t div,
                            int64_t n) {
    (void)be;
    for (int64_t j = 0; j < n; j++) memcpy(dst + j * width, src + idx[j] / div * width, sizeof(float) * (size_t)width);
}

static void cpu_scatter_rows(backend *be, float *dst, const float *src, int64_t width, const int64_t *idx, int64_t n) {
    (void)be;
    for (int64_t j = 0; j < n; j++) memcpy(dst + idx[j] * width, src + j * width, sizeof(float) * (size_t)width);
}

static void cpu_moe_combine(backend *be, float *out, const float *yk, const float *w, const unsigned char *use,
                            int64_t n, int K, int64_t H) {
    (void)be;
    for (int64_t t = 0; t < n; t++) {
        float *o = out + t * H;
        int first = 1;
        for (int k = 0; k < K; k++) {
            int64_t tk = t * K + k;
            if (use && !use[tk]) continue;
            const float *y = yk + tk * H;
            float wk = w[tk];
            if (first) for (int64_t j = 0; j < H; j++) o[j] = wk * y[j];
            else for (int64_t j = 0; j < H; j++) o[j] += wk * y[j];
            first = 0;
        }
        if (first) memset(o, 0, sizeof(float) * (size_t)H);
    }
}

static void cpu_add_gated(backend *be, float *out, const float *y, const float *g, int64_t n, int64_t H) {
    (void)be;
    for (int64_t t = 0; t < n; t++) {
        float sg = sigmoidf(g[t]);
        float *o = out + t * H;
        const float *yt = y + t * H;
        for (int64_t j = 0; j < H; j++) o[j] += sg * yt[j];
    }
}

static void cpu_l2norm(backend *be, float *x, int64_t ld, int64_t n, int heads, int d, float scale) {
    (void)be;
    for (int64_t t = 0; t < n; t++)
        for (int h = 0; h < heads; h++) {
            float *v = x + t * ld + (int64_t)h * d;
            double ss = 0;
            for (int i = 0; i < d; i++) ss += (double)v[i] * v[i];
            float inv = scale / sqrtf((float)ss + 1e-6f);
            for (int i = 0; i < d; i++) v[i] *= inv;
        }
}

static void cpu_delta_split(backend *be, const float *in_all, const float *ba_all, int64_t n, int nk, int nv, int dk,
                            int dv, const float *neg_a, const float *dt_bias, float *mix_all, float *z_all,
                            float *beta, float *gdec) {
    (void)be;
    int r = nv / nk;
    int64_t kd = (int64_t)nk * dk, vd = (int64_t)nv * dv, cd = 2 * kd + vd;
    int64_t wi = 2 * kd + 2 * vd, blk = 2 * dk + 2 * (int64_t)r * dv; /* in_proj_qkvz row; one key head's part */
    for (int64_t t = 0; t < n; t++) {
        const float *in = in_all + t * wi, *ba = ba_all + t * 2 * nv;
        float *mix = mix_all + t * cd, *z = z_all + t * vd;
        for (int g = 0; g < nk; g++) {
            const float *p = in + g * blk;
            memcpy(mix + (int64_t)g * dk, p, sizeof(float) * (size_t)dk);
            memcpy(mix + kd + (int64_t)g * dk, p + dk, sizeof(float) * (size_t)dk);
            memcpy(mix + 2 * kd + (int64_t)g * r * dv, p + 2 * dk, sizeof(float) * (size_t)(r * dv));
            memcpy(z + (int64_t)g * r * dv, p + 2 * dk + r * dv, sizeof(float) * (size_t)(r * dv));
            for (int i = 0; i < r; i++) {
                int h = g * r + i;
                beta[t * nv + h] = sigmoidf(ba[g * 2 * r + i]);
                gdec[t * nv + h] = neg_a[h] * softplusf(ba[g * 2 * r + r + i] + dt_bias[h]);
            }
        }
    }
}

const backend_ops cpu_backend_ops = {
    .kind = "cpu",
    .host_memory = 1,
    .destroy = cpu_destroy,
    .alloc = cpu_alloc,
    .free = cpu_free,
    .upload = cpu_copy,
    .copy = cpu_copy,
    .zero = cpu_zero,
    .download = cpu_download,
    .sync = cpu_sync,
    .place_weight = cpu_place_weight,
    .place_floats = cpu_place_floats,
    .matmul_n = cpu_matmul_n,
    .matmul_swiglu = cpu_matmul_swiglu,
    .moe_decode = cpu_moe_decode,
    .embed = cpu_embed,
    .rmsnorm = cpu_rmsnorm,
    .rope = cpu_rope,
    .causal_conv = cpu_causal_conv,
    .delta_rule = cpu_delta_rule,
    .kv_store = cpu_kv_store,
    .attention = cpu_attention,
    .add = cpu_add,
    .mul_act = cpu_mul_act,
    .clip = cpu_clip,
    .copy_rows = cpu_copy_rows,
    .gather_rows = cpu_gather_rows,
    .scatter_rows = cpu_scatter_rows,
    .moe_combine = cpu_moe_combine,
    .add_gated = cpu_add_gated,
    .l2norm = cpu_l2norm,
    .delta_split = cpu_delta_split,
};
