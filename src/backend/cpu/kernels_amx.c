/* kernels_amx.c — the prompt matmul on AMX-BF16 tiles (Sapphire Rapids and
 * later, Linux). The "amx" instruction set of backend_cpu.c is the avx512
 * kernel table plus this path for batches of many tokens.
 *
 * y[t][r] = sum_k W[r][k] x[t][k] as one tile product C = A . B per 32 k:
 *   A: 16 weight rows x 32 k, bf16, row-major: a tile of the weight panel.
 *      A block of up to AMX_RB rows is dequantized (or converted) to bf16
 *      AMX_KC columns at a time into a per-thread panel, then used for every
 *      token of the batch: the conversion is paid once per n tokens.
 *   B: 32 k x 16 tokens in the VNNI layout tdpbf16ps wants (row i = the
 *      pairs k = 2i, 2i+1 of 16 tokens): the activations, rounded to bf16
 *      once per call by amx_pack_x.
 *   C: 16 rows x 16 tokens, float32 sums; four at a time (2 row tiles x 2
 *      token tiles) so each loaded A and B tile serves two products.
 * Up to 32 tokens the C tiles stay in the tile registers over all of K
 * (rows_few); beyond, they go through a per-thread buffer between the
 * panel's column steps (rows_many). Either way they are transposed into y
 * (y's rows are tokens) at the end.
 *
 * Arithmetic: products of bf16-rounded operands (round to nearest even),
 * float32 sums. Against the float32 reference (kernels_scalar.c) a K-term
 * dot product is off by about 2^-8 * sqrt(K) * rms(w*x); tests/test_kernels_amx.c
 * checks that bound. Denormal floats round to zero on conversion (vcvtne2ps2bf16).
 */
#include "kernels.h"

#if defined(__x86_64__) && defined(__linux__) && defined(__AMX_TILE__) && defined(__AMX_BF16__) && \
    defined(__AVX512BF16__) && defined(__AVX512VBMI__)
#include <cpuid.h>
#include <immintrin.h>
#include <math.h>
#include <sys/syscall.h>
#include <unistd.h>

#define ARCH_REQ_XCOMP_PERM 0x1023
#define XFEATURE_XTILEDATA 18

/* --------------------------------------------------------- CPU and OS -- */

static int amx_probe(void) {
    unsigned a, b, c, d;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return 0;
    int tile = (d >> 24) & 1, bf16 = (d >> 22) & 1, vbmi = (c >> 1) & 1;
    int avx512 = ((b >> 16) & 1) && ((b >> 30) & 1) && ((b >> 31) & 1); /* F, BW, VL */
    if (!__get_cpuid_count(7, 1, &a, &b, &c, &d)) return 0;
    int avx512bf16 = (a >> 5) & 1;
    if (!(tile && bf16 && vbmi && avx512 && avx512bf16)) return 0;
    __builtin_cpu_init();
    if (!__builtin_cpu_supports("avx512f")) return 0; /* the OS saves the AVX-512 state */
    /* Linux hands out the 8 KiB tile state only to processes that ask (5.16+) */
    return syscall(SYS_arch_prctl, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA) == 0;
}

int amx_usable(void) {
    /* the CPU-feature probe: computed once, the same for every thread */
    static int state; /* 0: not asked yet, 1: usable, -1: not */
    int s = __atomic_load_n(&state, __ATOMIC_ACQUIRE);
    if (!s) {
        s = amx_probe() ? 1 : -1;
        __atomic_store_n(&state, s, __ATOMIC_RELEASE);
    }
    return s > 0;
}

/* -------------------------------------------------------------- tiles -- */

typedef struct tilecfg {
    uint8_t palette, start_row;
    uint8_t reserved[14];
    uint16_t colsb[16]; /* bytes per row of each tile */
    uint8_t rows[16];
} tilecfg;

/* tiles 0-3: C (16 x 16 float); 4, 5: A (16 rows x 32 bf16); 6, 7: B (16 pair rows x 16 tokens) */
static void tiles_config(void) {
    tilecfg cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.palette = 1;
    for (int i = 0; i < 8; i++) {
        cfg.colsb[i] = 64;
        cfg.rows[i] = 16;
    }
    _tile_loadconfig(&cfg);
}

#define TILE 256   /* floats of a C tile (16 x 16) */
#define TILE16 512 /* bf16 of an A or B tile (16 rows of 32) */

/* 16 x 16 transpose of 32-bit elements: r[i][j] -> r[j][i] */
static inline void transpose16(__m512i r[16]) {
    __m512i t[16];
    for (int i = 0; i < 8; i++) {
        t[2 * i] = _mm512_unpacklo_epi32(r[2 * i], r[2 * i + 1]);
        t[2 * i + 1] = _mm512_unpackhi_epi32(r[2 * i], r[2 * i + 1]);
    }
    /* r[4g + j], 128-bit lane L: column 4L + j of rows 4g .. 4g+3 */
    for (int g = 0; g < 4; g++) {
        r[4 * g] = _mm512_unpacklo_epi64(t[4 * g], t[4 * g + 2]);
        r[4 * g + 1] = _mm512_unpackhi_epi64(t[4 * g], t[4 * g + 2]);
        r[4 * g + 2] = _mm512_unpacklo_epi64(t[4 * g + 1], t[4 * g + 3]);
        r[4 * g + 3] = _mm512_unpackhi_epi64(t[4 * g + 1], t[4 * g + 3]);
    }
    /* row 4L + j of the result: lane L of r[j], r[4 + j], r[8 + j], r[12 + j] */
    for (int j = 0; j < 4; j++) {
        __m512i a = _mm512_shuffle_i32x4(r[j], r[4 + j], 0x44), b = _mm512_shuffle_i32x4(r[j], r[4 + j], 0xee);
        __m512i c = _mm512_shuffle_i32x4(r[8 + j], r[12 + j], 0x44), d = _mm512_shuffle_i32x4(r[8 + j], r[12 + j], 0xee);
        t[j] = _mm512_shuffle_i32x4(a, c, 0x88);
        t[4 + j] = _mm512_shuffle_i32x4(a, c, 0xdd);
        t[8 + j] = _mm512_shuffle_i32x4(b, d, 0x88);
        t[12 + j] = _mm512_shuffle_i32x4(b, d, 0xdd);
    }
    for (int i = 0; i < 16; i++) r[i] = t[i];
}

/* 32 floats from p (the first `left` of them, the rest 0) as 32 bf16 */
static inline __m512i bf16x32(const float *p, int64_t left) {
    __mmask16 lo = left >= 16 ? 0xffff : (__mmask16)((1u << left) - 1);
    __mmask16 hi = left >= 32 ? 0xffff : left <= 16 ? 0 : (__mmask16)((1u << (left - 16)) - 1);
    return (__m512i)_mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(hi, p + 16), _mm512_maskz_loadu_ps(lo, p));
}

size_t amx_x_elems(int64_t n, int64_t K) { return (size_t)((n + 15) / 16) * (size_t)((K + 31) / 32) * TILE16; }

void amx_pack_x(const float *x, int64_t ldx, int64_t n, int64_t K, int64_t tt, uint16_t *xp) {
    int64_t nkb = (K + 31) / 32;
    for (int64_t kb = 0; kb < nkb; kb++) {
        __m512i v[16]; /* v[token]: its 16 k-pairs */
        for (int j = 0; j < 16; j++) {
            int64_t t = tt * 16 + j;
            v[j] = t < n ? bf16x32(x + t * ldx + kb * 32, K - kb * 32) : _mm512_setzero_si512();
        }
        transpose16(v); /* v[pair]: that pair of 16 tokens, one tile row */
        uint16_t *dst = xp + (size_t)(tt * nkb + kb) * TILE16;
        for (int i = 0; i < 16; i++) _mm512_storeu_si512(dst + 32 * i, v[i]);
    }
}

/* ---------------------------------------------------- weight panels -- */

/* Bits a stored value of format f: a constant once inlined with a constant f */
static inline int fmt_bits(wfmt f) {
    switch (f) {
    case WF_F32: return 32;
    case WF_F16: case WF_BF16: return 16;
    case WF_Q2: return 2;
    case WF_Q3: return 3;
    case WF_Q4: return 4;
    case WF_Q5: return 5;
    case WF_Q6: return 6;
    default: return 8;
    }
}

/* Rows [r0, r0+nr) of w, columns [32*kb0, 32*(kb0+nkb)), as bf16 A tiles
 * panel[nrp/16][nkb][16][32]; rows nr .. nrp-1 and columns past w->cols are 0.
 * Written in panel order (a tile's 16 rows, then the next k step), so the
 * stores run sequentially; the 16 source rows are read side by side.
 *
 * Quantized values are turned into floats without a conversion instruction
 * (the vector ports, not memory, bound this loop): q goes into the top
 * mantissa bits of 1.0, f = 1 + q/256 exactly, and
 *     scale*q + bias = (256*scale) * f + (bias - 256*scale)
 * in one fma; 256*scale is exact and the rounding of (bias - 256*scale)
 * moves w by under 2^-24 * (|bias| + 256|scale|): thousands of times less
 * than bf16's rounding (2^-9) of the group's larger weights. */
static inline __attribute__((always_inline)) void panel_any(wfmt f, const wtensor *w, int64_t r0, int64_t nr,
                                                           int64_t nrp, int64_t kb0, int64_t nkb, uint16_t *panel) {
    const int bits = fmt_bits(f), quant = wfmt_is_quant(f);
    __m512i idx[2] = {_mm512_setzero_si512(), _mm512_setzero_si512()}, shift[2] = {idx[0], idx[0]};
    const __m512i qmask = _mm512_set1_epi32((int)((((1u << (bits & 15)) - 1)) << 15)), one = _mm512_set1_epi32(0x3f800000);
    if (quant) { /* value j of 32 in dword j % 16 of idx[j / 16]: its 2 bytes in bits 16-31, then >> 1 + (j*b) % 8 */
        uint8_t ib[2][64];
        uint32_t sh[2][16];
        for (int j = 0; j < 32; j++) {
            uint8_t *d = ib[j / 16] + 4 * (j % 16);
            d[0] = d[1] = 0; /* zeroed by the mask below */
            d[2] = (uint8_t)(j * bits / 8);
            d[3] = (uint8_t)(j * bits / 8 + 1);
            sh[j / 16][j % 16] = (uint32_t)(1 + j * bits % 8);
        }
        for (int h = 0; h < 2; h++) {
            idx[h] = _mm512_loadu_si512(ib[h]);
            shift[h] = _mm512_loadu_si512(sh[h]);
        }
    }
    for (int64_t rt = 0; rt < nrp / 16; rt++) {
        const unsigned char *row[16];
        float s256[16], c256[16]; /* 256*scale and bias - 256*scale of the current group, per row */
        int64_t gcur = -1;
        int nv = nr - rt * 16 < 16 ? (int)(nr - rt * 16) : 16; /* valid rows of this tile */
        for (int i = 0; i < nv; i++) row[i] = (const unsigned char *)w->data + (size_t)(r0 + rt * 16 + i) * w->row_bytes;
        for (int64_t kb = 0; kb < nkb; kb++) {
            uint16_t *dst = panel + (size_t)(rt * nkb + kb) * TILE16;
            int64_t k = (kb0 + kb) * 32, left = w->cols - k;
            if (quant && k / w->group != gcur) {
                gcur = k / w->group;
                for (int i = 0; i < nv; i++) {
                    size_t off = (size_t)(r0 + rt * 16 + i) * w->sb_row_bytes;
                    float sc = weight_at(w->sfmt, (const unsigned char *)w->scales + off, gcur);
                    s256[i] = 256.0f * sc;
                    c256[i] = weight_at(w->sfmt, (const unsigned char *)w->biases + off, gcur) - s256[i];
                }
            }
            for (int i = 0; i < 16; i++) {
                __m512i v = _mm512_setzero_si512();
                if (i >= nv) { /* padding rows stay 0 */
                } else if (f == WF_BF16) {
                    v = _mm512_maskz_loadu_epi16(left >= 32 ? ~0u : (__mmask32)((1u << left) - 1), row[i] + 2 * k);
                } else if (f == WF_F32) {
                    v = bf16x32((const float *)row[i] + k, left);
                } else if (f == WF_F16) {
                    __mmask16 lo = left >= 16 ? 0xffff : (__mmask16)((1u << left) - 1);
                    __mmask16 hi = left >= 32 ? 0xffff : left <= 16 ? 0 : (__mmask16)((1u << (left - 16)) - 1);
                    __m512 a = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(lo, row[i] + 2 * k));
                    __m512 b = _mm512_cvtph_ps(_mm256_maskz_loadu_epi16(hi, row[i] + 2 * k + 32));
                    v = (__m512i)_mm512_cvtne2ps_pbh(b, a);
                } else { /* quantized: cols is a multiple of the group, so 32 whole values from byte k*b/8 */
                    __m512 sv = _mm512_set1_ps(s256[i]), cv = _mm512_set1_ps(c256[i]);
                    __m512i bytes = _mm512_maskz_loadu_epi8((1ull << (4 * bits)) - 1, row[i] + k * bits / 8);
                    __m512 h[2];
                    for (int j = 0; j < 2; j++) {
                        __m512i q = _mm512_maskz_permutexvar_epi8(0xccccccccccccccccull, idx[j], bytes);
                        q = _mm512_ternarylogic_epi32(_mm512_srlv_epi32(q, shift[j]), qmask, one, 0xea); /* a&b | c */
                        h[j] = _mm512_fmadd_ps(_mm512_castsi512_ps(q), sv, cv);
                    }
                    v = (__m512i)_mm512_cvtne2ps_pbh(h[1], h[0]);
                }
                _mm512_storeu_si512(dst + 32 * i, v);
            }
        }
    }
}

typedef void (*panel_fn)(const wtensor *w, int64_t r0, int64_t nr, int64_t nrp, int64_t kb0, int64_t nkb,
                         uint16_t *panel);
#define PANEL_FN(F)                                                                                                   \
    static void panel_##F(const wtensor *w, int64_t r0, int64_t nr, int64_t nrp, int64_t kb0, int64_t nkb,          \
                          uint16_t *panel) {                                                                          \
        panel_any(WF_##F, w, r0, nr, nrp, kb0, nkb, panel);                                                           \
    }
PANEL_FN(F32)
PANEL_FN(F16)
PANEL_FN(BF16)
PANEL_FN(Q2)
PANEL_FN(Q3)
PANEL_FN(Q4)
PANEL_FN(Q5)
PANEL_FN(Q6)
PANEL_FN(Q8)
static const panel_fn panel_fns[WF_COUNT] = {panel_F32, panel_F16, panel_BF16, panel_Q2, panel_Q3,
                                             panel_Q4,  panel_Q5,  panel_Q6,   panel_Q8};

/* Asks for the stored bytes of rows [r0, r0+nr), columns [k0, k0+kn) of w to
 * be brought into L2: the next panel's weights load while this one computes
 * (the hardware prefetchers do not follow 128 short runs in as many pages). */
static void prefetch_rows(const wtensor *w, int64_t r0, int64_t nr, int64_t k0, int64_t kn) {
    int bits = fmt_bits(w->fmt);
    size_t b0 = (size_t)k0 * (size_t)bits / 8, b1 = (size_t)(k0 + kn) * (size_t)bits / 8;
    for (int64_t r = r0; r < r0 + nr; r++) {
        const char *row = (const char *)w->data + (size_t)r * w->row_bytes;
        for (size_t b = b0; b < b1; b += 64) _mm_prefetch(row + b, _MM_HINT_T1);
        _mm_prefetch(row + b1 - 1, _MM_HINT_T1);
        if (wfmt_is_quant(w->fmt)) {
            size_t g = (size_t)(k0 / w->group) * wfmt_size(w->sfmt);
            _mm_prefetch((const char *)w->scales + (size_t)r * w->sb_row_bytes + g, _MM_HINT_T1);
            _mm_prefetch((const char *)w->biases + (size_t)r * w->sb_row_bytes + g, _MM_HINT_T1);
        }
    }
}

/* ------------------------------------------------------ the products -- */

/* C tiles c[rt][tt] (2 row tiles x nt token tiles, nt 1 or 2) at c + rt * ldc
 * + tt * TILE: zeroed (first) or loaded; stored back. */
static inline __attribute__((always_inline)) void c_load(int nt, const float *c, int64_t ldc, int first) {
    if (first) {
        _tile_zero(0);
        _tile_zero(2);
        if (nt == 2) { _tile_zero(1); _tile_zero(3); }
    } else {
        _tile_loadd(0, c, 64);
        _tile_loadd(2, c + ldc, 64);
        if (nt == 2) { _tile_loadd(1, c + TILE, 64); _tile_loadd(3, c + ldc + TILE, 64); }
    }
}

static inline __attribute__((always_inline)) void c_store(int nt, float *c, int64_t ldc) {
    _tile_stored(0, c, 64);
    _tile_stored(2, c + ldc, 64);
    if (nt == 2) { _tile_stored(1, c + TILE, 64); _tile_stored(3, c + ldc + TILE, 64); }
}

/* C += A . B over nkb k steps; a0/a1: the two row tiles' first A tiles
 * (consecutive k steps TILE16 apart), b0/b1 the same for the token tiles. */
static inline __attribute__((always_inline)) void k_steps(int nt, const uint16_t *a0, const uint16_t *a1,
                                                         const uint16_t *b0, const uint16_t *b1, int64_t nkb) {
    for (int64_t kb = 0; kb < nkb; kb++) {
        _tile_loadd(4, a0 + kb * TILE16, 64);
        _tile_loadd(6, b0 + kb * TILE16, 64);
        _tile_loadd(5, a1 + kb * TILE16, 64);
        _tile_dpbf16ps(0, 4, 6);
        _tile_dpbf16ps(2, 5, 6);
        if (nt == 2) {
            _tile_loadd(7, b1 + kb * TILE16, 64);
            _tile_dpbf16ps(1, 4, 7);
            _tile_dpbf16ps(3, 5, 7);
        }
    }
}

/* --------------------------------------------------------- epilogues -- */

/* exp(x), float32, within a few ulp: 2^n * e^r with |r| <= ln2/2 (Cody-Waite),
 * a degree-7 Taylor polynomial for e^r; scalef gives inf/0 outside the range.
 * |x| is clamped to 100 first (already inf/0 in float32), where the
 * reduction stays exact; NaN comes out as exp(-100) (silu's g carries it). */
static inline __m512 exp_v(__m512 x) {
    x = _mm512_min_ps(_mm512_max_ps(x, _mm512_set1_ps(-100.0f)), _mm512_set1_ps(100.0f));
    __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)), _MM_FROUND_TO_NEAREST_INT);
    __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);
    r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.42860682030941723212e-6f), r);
    __m512 p = _mm512_set1_ps(1.0f / 5040);
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
    return _mm512_scalef_ps(p, n);
}

/* The result tiles acc[nrp/16][ntt][16 rows][16 tokens] into y[t*ldy + r] for
 * r < nr, t < n; with up != NULL, silu(acc) * up instead (SwiGLU). */
static void store_tiles(const float *acc, const float *up, int64_t nr, int64_t n, float *y, int64_t ldy) {
    int64_t ntt = (n + 15) / 16;
    /* tokens outermost: each token's row of y is written in one run of nr floats */
    for (int64_t tt = 0; tt < ntt; tt++)
        for (int64_t rt = 0; rt * 16 < nr; rt++) {
            __mmask16 rows = nr - rt * 16 >= 16 ? 0xffff : (__mmask16)((1u << (nr - rt * 16)) - 1);
            const float *c = acc + (size_t)(rt * ntt + tt) * TILE;
            __m512i v[16]; /* v[row]: its 16 tokens */
            for (int i = 0; i < 16; i++) {
                __m512 g = _mm512_loadu_ps(c + 16 * i);
                if (up) {
                    __m512 u = _mm512_loadu_ps(up + (size_t)(rt * ntt + tt) * TILE + 16 * i);
                    __m512 e = exp_v(_mm512_sub_ps(_mm512_setzero_ps(), g));
                    g = _mm512_div_ps(_mm512_mul_ps(g, u), _mm512_add_ps(_mm512_set1_ps(1.0f), e));
                }
                v[i] = _mm512_castps_si512(g);
            }
            transpose16(v); /* v[token]: its 16 rows */
            for (int j = 0; j < 16 && tt * 16 + j < n; j++)
                _mm512_mask_storeu_ps(y + (tt * 16 + j) * ldy + rt * 16, rows, _mm512_castsi512_ps(v[j]));
        }
}

/* ------------------------------------------------------------ driver -- */

/* per weight: a panel [AMX_RB/16][AMX_KC/32][16][32] bf16, then the results [AMX_RB/16][ntt][16][16] float */
static size_t panel_elems(void) { return (size_t)AMX_RB * AMX_KC; }
static size_t acc_elems(int64_t n) { return (size_t)AMX_RB * (size_t)((n + 15) / 16 * 16); }

size_t amx_scratch_bytes(int nw, int64_t n) { return (size_t)nw * (panel_elems() * 2 + acc_elems(n) * 4); }

/* Batches of up to 32 tokens (two token tiles): each pair of row tiles makes
 * one pass over K, its 32 rows dequantized AMX_KC columns at a time into an
 * L1-sized panel right before their products, the C tiles held in the tile
 * registers throughout. The panel never leaves L1 and no partial sums go
 * through memory, which is what costs most when few tokens share a panel. */
static void rows_few(const wtensor *w, int64_t r0, int64_t nr, const uint16_t *xp, int64_t ntt, uint16_t *panel,
                     float *acc) {
    int64_t nkb_all = (w->cols + 31) / 32, step = AMX_KC / 32;
    for (int64_t rt = 0; rt * 16 < nr; rt += 2) {
        int64_t pr = nr - rt * 16 < 32 ? nr - rt * 16 : 32;
        c_load((int)ntt, NULL, 0, 1);
        for (int64_t kb0 = 0; kb0 < nkb_all; kb0 += step) {
            int64_t nkb = nkb_all - kb0 < step ? nkb_all - kb0 : step;
            panel_fns[w->fmt](w, r0 + rt * 16, pr, 32, kb0, nkb, panel);
            if (kb0 + step < nkb_all) /* the same rows' next columns */
                prefetch_rows(w, r0 + rt * 16, pr, (kb0 + step) * 32, (nkb_all - kb0 - step < step ? nkb_all - kb0 - step : step) * 32);
            const uint16_t *b0 = xp + (size_t)kb0 * TILE16, *b1 = b0 + (size_t)nkb_all * TILE16;
            if (ntt == 2) k_steps(2, panel, panel + (size_t)nkb * TILE16, b0, b1, nkb);
            else k_steps(1, panel, panel + (size_t)nkb * TILE16, b0, b1, nkb);
        }
        if (ntt == 2) c_store(2, acc + (size_t)(rt * ntt) * TILE, ntt * TILE);
        else c_store(1, acc + (size_t)(rt * ntt) * TILE, ntt * TILE);
    }
}

/* Larger batches: the block's rows are dequantized AMX_KC columns at a time
 * into the panel (L2), then every token-tile pair runs over them, its B tiles
 * (2 x AMX_KC/32 KiB) staying in L1 across the row tiles; the C tiles go
 * through acc between column steps. */
static void rows_many(int nw, const wtensor *const *w, int64_t r0, int64_t nr, const uint16_t *xp, int64_t ntt,
                      uint16_t *const *panel, float *const *acc) {
    int64_t nkb_all = (w[0]->cols + 31) / 32, nrp = (nr + 31) / 32 * 32, step = AMX_KC / 32;
    for (int64_t kb0 = 0; kb0 < nkb_all; kb0 += step) {
        int64_t nkb = nkb_all - kb0 < step ? nkb_all - kb0 : step;
        for (int i = 0; i < nw; i++) panel_fns[w[i]->fmt](w[i], r0, nr, nrp, kb0, nkb, panel[i]);
        /* the next panel's weights come in while this one computes, a slice of rows a token-tile pair */
        int64_t next = kb0 + step, pairs = (ntt + 1) / 2, slice = (nr + pairs - 1) / pairs;
        for (int64_t tt = 0; tt < ntt; tt += 2) {
            int64_t p0 = tt / 2 * slice, pn = nr - p0 < slice ? nr - p0 : slice;
            for (int i = 0; i < nw && next < nkb_all && pn > 0; i++)
                prefetch_rows(w[i], r0 + p0, pn, next * 32, (nkb_all - next < step ? nkb_all - next : step) * 32);
            const uint16_t *b0 = xp + (size_t)(tt * nkb_all + kb0) * TILE16, *b1 = b0 + (size_t)nkb_all * TILE16;
            int nt = tt + 1 < ntt ? 2 : 1;
            for (int i = 0; i < nw; i++)
                for (int64_t rt = 0; rt < nrp / 16; rt += 2) {
                    const uint16_t *a0 = panel[i] + (size_t)(rt * nkb) * TILE16, *a1 = a0 + (size_t)nkb * TILE16;
                    float *c = acc[i] + (size_t)(rt * ntt + tt) * TILE;
                    if (nt == 2) {
                        c_load(2, c, ntt * TILE, kb0 == 0);
                        k_steps(2, a0, a1, b0, b1, nkb);
                        c_store(2, c, ntt * TILE);
                    } else {
                        c_load(1, c, ntt * TILE, kb0 == 0);
                        k_steps(1, a0, a1, b0, b1, nkb);
                        c_store(1, c, ntt * TILE);
                    }
                }
        }
    }
}

void amx_matmul_rows(amx_epilogue ep, const wtensor *const *w, int64_t r0, int64_t nr, const uint16_t *xp, int64_t n,
                     void *scratch, float *y, int64_t ldy) {
    int nw = ep == AMX_SWIGLU ? 2 : 1;
    int64_t ntt = (n + 15) / 16;
    uint16_t *panel[2];
    float *acc[2];
    for (int i = 0; i < nw; i++) {
        panel[i] = (uint16_t *)scratch + (size_t)i * panel_elems();
        acc[i] = (float *)((uint16_t *)scratch + (size_t)nw * panel_elems()) + (size_t)i * acc_elems(n);
    }
    tiles_config();
    if (ntt <= 2)
        for (int i = 0; i < nw; i++) rows_few(w[i], r0, nr, xp, ntt, panel[i], acc[i]);
    else
        rows_many(nw, w, r0, nr, xp, ntt, panel, acc);
    _tile_release();
    store_tiles(acc[0], nw == 2 ? acc[1] : NULL, nr, n, y, ldy);
}

#else /* no AMX in this build or on this OS */

int amx_usable(void) { return 0; }
size_t amx_x_elems(int64_t n, int64_t K) { (void)n; (void)K; return 0; }
void amx_pack_x(const float *x, int64_t ldx, int64_t n, int64_t K, int64_t tt, uint16_t *xp) {
    (void)x; (void)ldx; (void)n; (void)K; (void)tt; (void)xp;
}
size_t amx_scratch_bytes(int nw, int64_t n) { (void)nw; (void)n; return 0; }
void amx_matmul_rows(amx_epilogue ep, const wtensor *const *w, int64_t r0, int64_t nr, const uint16_t *xp, int64_t n,
                     void *scratch, float *y, int64_t ldy) {
    (void)ep; (void)w; (void)r0; (void)nr; (void)xp; (void)n; (void)scratch; (void)y; (void)ldy;
}

#endif
