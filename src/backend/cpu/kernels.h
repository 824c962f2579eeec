/* kernels.h — per-ISA CPU kernels, one table per instruction set, indexed
 * by weight format. The scalar table is the reference; the AVX2, AVX-512
 * and NEON tables are tested against it (tests/test_kernels.c; NEON under
 * qemu-aarch64, tools/test_neon.sh). */
#ifndef MOE_CPU_KERNELS_H
#define MOE_CPU_KERNELS_H

#include <string.h>

#include "../../base/half.h"
#include "../backend.h"

/* Element k of a float-format weight row (F32, F16, BF16) as float32: the
 * scalar reference of every vector load (memcpy, so rows need no alignment). */
static inline float weight_at(wfmt f, const unsigned char *row, int64_t k) {
    uint16_t h;
    float x;
    switch (f) {
    case WF_BF16: memcpy(&h, row + 2 * k, 2); return bf16_to_f32(h);
    case WF_F16: memcpy(&h, row + 2 * k, 2); return f16_to_f32(h);
    default: memcpy(&x, row + 4 * k, 4); return x;
    }
}

/* The b-bit value at index k of a packed row: bits k*b .. k*b+b-1, least
 * significant first (see wfmt in backend.h). Reads only bytes of the value. */
static inline unsigned quant_at(const unsigned char *row, int bits, int64_t k) {
    int64_t bit = k * bits;
    unsigned v = row[bit >> 3], sh = (unsigned)(bit & 7);
    if (sh + (unsigned)bits > 8) v |= (unsigned)row[(bit >> 3) + 1] << 8;
    return (v >> sh) & ((1u << bits) - 1);
}

/* Element (r, k) of any weight as float32, dequantized as MLX does:
 * scale * q + bias in float32. The scalar reference of every kernel. */
static inline float wtensor_at(const wtensor *w, int64_t r, int64_t k) {
    const unsigned char *row = (const unsigned char *)w->data + (size_t)r * w->row_bytes;
    if (!wfmt_is_quant(w->fmt)) return weight_at(w->fmt, row, k);
    int64_t g = k / w->group;
    const unsigned char *s = (const unsigned char *)w->scales + (size_t)r * w->sb_row_bytes;
    const unsigned char *b = (const unsigned char *)w->biases + (size_t)r * w->sb_row_bytes;
    float q = (float)quant_at(row, wfmt_bits(w->fmt), k);
    return weight_at(w->sfmt, s, g) * q + weight_at(w->sfmt, b, g);
}

/* y[t*ldy + r] = sum_k W[r][k] * x[t*ldx + k] for r in [r0, r1), t in [0, n). */
typedef void (*mm_fn)(const wtensor *w, int64_t r0, int64_t r1, const float *x, int64_t ldx, int64_t n, float *y,
                      int64_t ldy);
/* sum_k a[k]*b[k], a and b float32 [n] (attention scores and sums). */
typedef float (*dot_fn)(const float *a, const float *b, int64_t n);
/* y[k] += s * x[k] for k < n */
typedef void (*axpy_fn)(float *y, float s, const float *x, int64_t n);

/* One head of a quantized KV cache row (kv_cache in backend.h): hd values
 * packed at `bits` (8 or 4) in groups of `group`, scale[g] and bias[g] a group.
 * kv_dot: q[hd] . dequantized k. qsum[hd/group] holds the sums of q over each
 * group, computed once per query head, so a kernel may compute
 * sum_g scale[g] * (q_g . kq_g) + bias[g] * qsum[g]; the scalar reference
 * dequantizes element by element and ignores it. */
typedef float (*kv_dot_fn)(const float *q, const float *qsum, const unsigned char *k, const float *scale,
                           const float *bias, int hd, int group);
/* y[j] += a * dequantized v[j] for j < hd. */
typedef void (*kv_axpy_fn)(float *y, float a, const unsigned char *v, const float *scale, const float *bias, int hd,
                           int group);
/* The kv_dot / kv_axpy slot of a cache of `bits` (8 or 4). */
static inline int kv_slot(int bits) { return bits == 4; }

/* Decode (one token) over an input prepared once per matmul call and shared
 * by every row range and every weight of the call (the int8-input VNNI
 * kernels, simd_vnni.h: the rounding and block sums are then done once, not
 * once per work item). bytes: the size of w's prepared input (it depends on
 * w's format, group and cols only), 0 when this kernel cannot take w (matmul[]
 * serves it then). prep: x[w->cols] into buf (bytes(w) bytes, 64-byte
 * aligned). mm: y[r] = row r of w . x for r in [r0, r1), buf prepared for a
 * weight of the same format, group and cols; buf is only read (threads share it). */
typedef struct cpu_dec {
    size_t (*bytes)(const wtensor *w);
    void (*prep)(const wtensor *w, const float *x, void *buf);
    void (*mm)(const wtensor *w, int64_t r0, int64_t r1, const void *buf, float *y);
} cpu_dec;

typedef struct cpu_kernels {
    const char *name;
    mm_fn matmul[WF_COUNT];  /* NULL: the scalar kernel serves that format */
    dot_fn dot;
    axpy_fn axpy;
    kv_dot_fn kv_dot[2];   /* by kv_slot(bits); NULL: the scalar kernel serves it */
    kv_axpy_fn kv_axpy[2];
    cpu_dec dec[WF_COUNT];   /* all NULL: decode goes through matmul[] */
} cpu_kernels;

const cpu_kernels *cpu_kernels_scalar(void);
/* The CPU backend's thread pool and kernel table, for operations kept in their own files (delta.c). */
struct pool *backend_cpu_pool(backend *be);
const cpu_kernels *backend_cpu_kernels(const backend *be);
/* The CPU's gated DeltaNet operations (delta.c): be_causal_conv, be_delta_rule. */
void cpu_causal_conv(backend *be, const float *x, int64_t n, int64_t ch, int K, const float *w, float *state, float *out);
void cpu_delta_rule(backend *be, const float *q, const float *k, const float *v, int64_t ld, const float *g,
                    const float *beta, int64_t n, int nk, int nv, int dk, int dv, int chunk, float *state, float *out,
                    float *scratch);
/* The matmul of table k for format f, or the scalar one where k has none. */
static inline mm_fn cpu_kernels_mm(const cpu_kernels *k, wfmt f) {
    return k->matmul[f] ? k->matmul[f] : cpu_kernels_scalar()->matmul[f];
}
/* The SIMD tables, each defined only in builds for its architecture (x86-64:
 * kernels_avx2.c, kernels_avx512.c; AArch64: kernels_neon.c); cpu_kernels_pick
 * is the portable way to them. */
const cpu_kernels *cpu_kernels_avx2(void);
const cpu_kernels *cpu_kernels_avx512(void);
/* avx512 whose Q4/Q8 decode rounds the input to int8 (VNNI, simd_vnni.h): auto's pick where the CPU has it */
const cpu_kernels *cpu_kernels_avx512_vnni(void);
const cpu_kernels *cpu_kernels_neon(void);
/* By name ("scalar", "auto", and on x86-64 "avx2", "avx512", "avx512vnni", "amx", on AArch64 "neon");
 * NULL when unknown, not built for this architecture, or the CPU lacks it.
 * "auto" gives the best table the CPU has: avx512vnni, avx512, avx2, scalar
 * (neon on AArch64). "amx" gives the table the AMX prompt path builds on when
 * amx_usable(): avx512vnni (every AMX CPU so far has VNNI), else avx512. */
const cpu_kernels *cpu_kernels_pick(const char *name);
/* The names cpu_kernels_pick knows in this build, comma-separated (for messages). */
const char *cpu_kernels_names(void);

/* ------------------------------------------- AMX-BF16 prompt matmul --
 * kernels_amx.c: matmuls of many tokens on AMX tiles, in bf16 products with
 * float32 sums (all weight formats). Not a kernel table: the "amx" ISA of
 * backend_cpu.c is the avx512 table plus this path for batches of at least
 * a threshold of tokens. Tested against the scalar kernels within bf16
 * rounding (tests/test_kernels_amx.c). */
#define AMX_RB 128 /* most weight rows one amx_matmul_rows call takes */
#define AMX_KC 256 /* columns of the weight panel dequantized at a time */

/* 1 when the CPU has AMX-BF16 (and AVX512-BF16/VBMI) and the OS granted this
 * process the tile state (asked on the first call); else 0. Thread-safe. */
int amx_usable(void);
/* uint16_t elements of activations packed by amx_pack_x: [ceil(n/16)][ceil(K/32)][16][16][2] */
size_t amx_x_elems(int64_t n, int64_t K);
/* Token tile tt (tokens 16tt .. 16tt+15, zeros past n) of x[n x K] (row stride
 * ldx) as bf16 (round to nearest even) in the VNNI layout, into its part of xp. */
void amx_pack_x(const float *x, int64_t ldx, int64_t n, int64_t K, int64_t tt, uint16_t *xp);
/* Bytes of per-thread scratch amx_matmul_rows needs for n tokens (nw = 1, or 2 for SwiGLU). */
size_t amx_scratch_bytes(int nw, int64_t n);
typedef enum amx_epilogue { AMX_STORE, AMX_SWIGLU } amx_epilogue;
/* For rows r in [r0, r0+nr) (nr <= AMX_RB) and tokens t < n, over xp from amx_pack_x:
 *   AMX_STORE:  y[t*ldy + r-r0] = sum_k w[0][r][k] x[t][k]
 *   AMX_SWIGLU: y[t*ldy + r-r0] = silu(sum_k w[0][r][k] x[t][k]) * sum_k w[1][r][k] x[t][k]
 * scratch: amx_scratch_bytes(1 or 2, n). Call only when amx_usable(). */
void amx_matmul_rows(amx_epilogue ep, const wtensor *const *w, int64_t r0, int64_t nr, const uint16_t *xp, int64_t n,
                     void *scratch, float *y, int64_t ldy);

#endif
