/* simd_vnni.h — the decode matmul of Q4 and Q8 weights with AVX-512 VNNI,
 * for the "avx512vnni" kernel table (kernels_avx512.c includes this
 * after simd_tmpl.h; everything here is compiled for avx512vnni by a target
 * attribute, and the table is only handed out when the CPU has it).
 *
 * Why: the float decode path (simd_quant.h) spends about 3.25 vector
 * operations per 16 Q4 weights (unpack, table lookup, FMA), ~9 weights a
 * cycle, little more than the memory delivers, so memory and compute do not
 * overlap well and Q4 decode stays below the read bandwidth. Here one
 * vpdpbusd multiplies 64 weight bytes by 64 input bytes: ~30 Q4 weights a
 * cycle in the inner loop, ~20 with each tile's setup. The price is numerics: the input vector is rounded to int8, per
 * block of QVB values with scale d = max|x| / 127, so every product carries
 * an input error of at most d/2. The result is (to float rounding) exactly
 * sum_k w[k] * x~[k] with x~ the rounded input, never a difference of large
 * terms. The float kernels match the scalar reference to float rounding;
 * this one does not, so "avx512" stays the float32 ISA the golden tests hold
 * to 1e-4, and this table (auto's pick where the CPU has VNNI) is held to a
 * relative tolerance position by position (tests/test_golden.c). Rounding
 * costs +0.06% of perplexity at 8 bits (docs/PERFORMANCE.md).
 *
 * Layout per segment of the input (QSEG columns, prepared once per call):
 * xq, the int8 input in the weights' byte order (Q8: natural; Q4, per chunk
 * of 128 values: the 64 even-indexed values, then the 64 odd-indexed ones,
 * matching the low and high nibbles of 64 packed bytes); d, the scale of
 * each input block; sg, per weight group, sum_k x~[k] (for the biases). A
 * chunk (Q4: 128 values, Q8: 64) is one 64-byte line of weights; int32 lane
 * i of its products sums 4 of them from one input block and one weight
 * group. Per row and chunk: vpdpbusd (two for Q4), a conversion, and an FMA
 * with the lane's scale * d, looked up (vpermps) in the row's products
 * scale * d per input block, computed once per row and segment.
 *
 * The backend prepares the input once per matmul call, through the table's
 * dec entries (the _prep and _dmm functions below), and every work item of
 * the call reads it; the mm_fn entry prepares its own copy on the stack.
 */

#define QVB 32    /* input values per int8 scale */
#define VN_NSEG 4 /* decode: input segments prepared at a time (16384 columns, ~21 KiB of stack) */
#define VN_DR 2   /* decode: most rows in flight (vn_dr) */

/* Rows in flight, each streamed from its own place in memory: as many as
 * make ~4 KiB of a 4096-wide row (Q4: 2, Q8: 1). The decode is memory-bound
 * and more streams cost more than their overlap gains: with 4 rows (the float
 * path's QDR), generation on a Mistral-7B shape from the page cache was ~5%
 * slower at both widths (medians of 11-12 alternating pairs; Q8 with 2 rows
 * and Q4 with 1 sat between). The kernels alone on anonymous memory
 * (bench_kernels) do not tell them apart. */
static inline int vn_dr(int bits) { return bits == 4 ? 2 : 1; }

/* Values in one 64-byte chunk of weights. */
static inline int vn_chunk(int bits) { return bits == 4 ? 128 : 64; }
/* The first value of int32 lane i of a chunk's products, relative to the chunk. */
static inline int vn_lane_start(int bits, int i) { return bits == 4 ? 8 * i : 4 * i; }

typedef struct vn_seg {
    int8_t xq[QSEG] __attribute__((aligned(64))); /* the rounded input, weight byte order */
    float d[QSEG / QVB + 16];                     /* per input block: its scale (zero past the end) */
    float sg[QSEG / 32];                          /* per group: sum of the rounded input */
} vn_seg;

/* Lane j of the result = op over the 16 lanes of v[j] (op: max, or sum if
 * !is_max), for 16 vectors at once: a transposing butterfly of 15 ops and
 * 30 shuffles, where 16 separate reductions take 64 shuffles (port 5 is what
 * preparing the input runs out of). */
static inline __attribute__((always_inline)) __m512 vn_reduce16(__m512 *v, const int is_max) {
#define VN_OP(a, b) (is_max ? _mm512_max_ps(a, b) : _mm512_add_ps(a, b))
    /* the butterfly leaves lane 4i+j holding v[4j+i]: pair the inputs transposed */
#define VN_T(m) v[(m) % 4 * 4 + (m) / 4]
    __m512 u[8];
    for (int k = 0; k < 8; k++) /* 256-bit halves */
        u[k] = VN_OP(_mm512_shuffle_f32x4(VN_T(2 * k), VN_T(2 * k + 1), 0x44),
                     _mm512_shuffle_f32x4(VN_T(2 * k), VN_T(2 * k + 1), 0xee));
    for (int k = 0; k < 4; k++) /* 128-bit quarters */
        u[k] = VN_OP(_mm512_shuffle_f32x4(u[2 * k], u[2 * k + 1], 0x88),
                     _mm512_shuffle_f32x4(u[2 * k], u[2 * k + 1], 0xdd));
    for (int k = 0; k < 2; k++) { /* 64-bit pairs */
        __m512d a = _mm512_castps_pd(u[2 * k]), b = _mm512_castps_pd(u[2 * k + 1]);
        u[k] = VN_OP(_mm512_castpd_ps(_mm512_unpacklo_pd(a, b)), _mm512_castpd_ps(_mm512_unpackhi_pd(a, b)));
    }
    return VN_OP(_mm512_shuffle_ps(u[0], u[1], 0x88), _mm512_shuffle_ps(u[0], u[1], 0xdd)); /* 32-bit pairs */
#undef VN_T
#undef VN_OP
}

/* The segment x[0 .. kn) (kn a multiple of 32) rounded into s; groups of
 * `group`. Blocks go 16 at a time, so their maxima and sums reduce together. */
static __attribute__((target("avx512vnni"))) void vn_prepare(int bits, int group, const float *x, int64_t kn,
                                                             vn_seg *s) {
    const int ch = vn_chunk(bits);
    const __m512i ie = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    const __m512i io = _mm512_add_epi32(ie, _mm512_set1_epi32(1));
    int64_t nb = kn / QVB;
    float bsum[QSEG / QVB + 16]; /* per block: the sum of its rounded values */
    if (kn % ch) memset(s->xq + kn / ch * ch, 0, (size_t)ch);
    for (int64_t b0 = 0; b0 < nb; b0 += 16) {
        int nj = nb - b0 < 16 ? (int)(nb - b0) : 16;
        __m512 v[16];
        for (int j = 0; j < 16; j++)
            v[j] = j < nj ? _mm512_max_ps(_mm512_abs_ps(_mm512_loadu_ps(x + (b0 + j) * QVB)),
                                          _mm512_abs_ps(_mm512_loadu_ps(x + (b0 + j) * QVB + 16)))
                          : _mm512_setzero_ps();
        __m512 mx = vn_reduce16(v, 1), d = _mm512_mul_ps(mx, _mm512_set1_ps(1.0f / 127));
        float inv[16];
        _mm512_storeu_ps(inv, _mm512_maskz_div_ps(_mm512_cmp_ps_mask(mx, _mm512_setzero_ps(), _CMP_GT_OQ),
                                                  _mm512_set1_ps(127.0f), mx));
        _mm512_storeu_ps(s->d + b0, d);
        for (int j = 0; j < 16; j++) {
            int64_t b = b0 + j;
            if (j >= nj) {
                v[j] = _mm512_setzero_ps();
                continue;
            }
            __m512 lo = _mm512_loadu_ps(x + b * QVB), hi = _mm512_loadu_ps(x + b * QVB + 16);
            /* Q8: natural order; Q4, per chunk of 128: value 32m + 2i (block m of the chunk)
             * to byte 16m + i, value 32m + 2i + 1 to byte 64 + 16m + i */
            int8_t *q0 = s->xq + b * QVB, *q1 = q0 + 16;
            if (bits == 4) {
                __m512 e = _mm512_permutex2var_ps(lo, ie, hi);
                hi = _mm512_permutex2var_ps(lo, io, hi);
                lo = e;
                q0 = s->xq + b / 4 * 128 + 16 * (b % 4), q1 = q0 + 64;
            }
            __m512 sc = _mm512_set1_ps(inv[j]);
            __m512i i0 = _mm512_cvtps_epi32(_mm512_mul_ps(lo, sc)), i1 = _mm512_cvtps_epi32(_mm512_mul_ps(hi, sc));
            _mm_storeu_si128((__m128i *)q0, _mm512_cvtsepi32_epi8(i0));
            _mm_storeu_si128((__m128i *)q1, _mm512_cvtsepi32_epi8(i1));
            v[j] = _mm512_cvtepi32_ps(_mm512_add_epi32(i0, i1));
        }
        _mm512_storeu_ps(bsum + b0, _mm512_mul_ps(vn_reduce16(v, 0), d));
    }
    for (int64_t b = nb; b < nb + 16; b++) s->d[b] = 0;
    for (int64_t g = 0; g < kn / group; g++) {
        float t = 0;
        for (int j = 0; j < group / QVB; j++) t += bsum[g * (group / QVB) + j];
        s->sg[g] = t;
    }
}

/* One chunk of vn_dr(bits) rows (packed bytes at q[r] + off; masked: only the bytes
 * of m, so the row's end is not read past): acc[r] += its products, lane i
 * scaled by pd[r][bidx[i]] (pd 64-byte aligned: an unaligned load across the
 * preamble's recent stores could not be forwarded from them). */
static inline __attribute__((always_inline, target("avx512vnni"))) void
vn_chunk_rows(const int bits, const int masked, __mmask64 m, const unsigned char *const *q, size_t off, size_t pf,
              const int8_t *xq, const float *pd, int64_t pdstride, __m512i bidx, __m512 *acc) {
    const __m512i lo4 = _mm512_set1_epi8(0x0f);
    __m512i x0 = _mm512_load_si512(xq), x1 = x0;
    if (bits == 4) x1 = _mm512_load_si512(xq + 64);
#pragma GCC unroll 2
    for (int r = 0; r < vn_dr(bits); r++) {
        const unsigned char *p = q[r] + off;
        if (!masked) __builtin_prefetch(p + pf, 0, 2);
        __m512i v = masked ? _mm512_maskz_loadu_epi8(m, p) : _mm512_loadu_si512(p), sum;
        if (bits == 4) {
            sum = _mm512_dpbusd_epi32(_mm512_setzero_si512(), _mm512_and_si512(v, lo4), x0);
            sum = _mm512_dpbusd_epi32(sum, _mm512_and_si512(_mm512_srli_epi16(v, 4), lo4), x1);
        } else {
            sum = _mm512_dpbusd_epi32(_mm512_setzero_si512(), v, x0);
        }
        __m512 sd = _mm512_permutexvar_ps(bidx, _mm512_load_ps(pd + r * pdstride));
        acc[r] = _mm512_fmadd_ps(_mm512_cvtepi32_ps(sum), sd, acc[r]);
    }
}

/* vn_dr(bits) rows (indices ri) over the segment [k0, k0+kn): out[r] = its part of y[r]. */
static inline __attribute__((always_inline, target("avx512vnni"))) void
vn_tile(const int bits, const int group, const wtensor *w, const int64_t *ri, int64_t k0, int64_t kn, const vn_seg *s,
        float *out /* [VN_DR] */) {
    const int ch = vn_chunk(bits), dr = vn_dr(bits);
    const int64_t g0 = k0 / group, ng = kn / group, nb = kn / QVB, nfull = kn / ch, nch = (kn + ch - 1) / ch;
    const unsigned char *q[VN_DR];
    /* per input block: scale of its group * d; padded, a chunk loads the aligned 16 around its blocks */
    float pd[VN_DR][QSEG / QVB + 16] __attribute__((aligned(64)));
    float sc[QSEG / 32 + 16] __attribute__((aligned(64))), bi[QSEG / 32];
    float bs[VN_DR];
    __m512 acc[VN_DR];
    int32_t bi_[16], gs[16];
    for (int i = 0; i < 16; i++) {
        bi_[i] = vn_lane_start(bits, i) / QVB; /* lane -> input block, relative to the chunk's first */
        gs[i] = i * QVB / group;               /* block -> group, relative to the first of 16 blocks */
    }
    const __m512i bidx = _mm512_loadu_si512(bi_), gsel = _mm512_loadu_si512(gs);
    size_t sbpf = (size_t)(ri[0] + QPF * dr) * w->sb_row_bytes + (size_t)g0 * wfmt_size(w->sfmt);
    for (size_t o = 0; o < dr * w->sb_row_bytes; o += 64) {
        __builtin_prefetch((const unsigned char *)w->scales + sbpf + o, 0, 2);
        __builtin_prefetch((const unsigned char *)w->biases + sbpf + o, 0, 2);
    }
    for (int r = 0; r < dr; r++) {
        q[r] = (const unsigned char *)w->data + (size_t)ri[r] * w->row_bytes + (size_t)k0 * bits / 8;
        qsb_row(w->sfmt, (const unsigned char *)w->scales + (size_t)ri[r] * w->sb_row_bytes, g0, ng, sc);
        memset(sc + ng, 0, 16 * sizeof(float));
        for (int64_t b = 0; b < nb; b += 16) {
            int64_t fg = b * QVB / group; /* the first group of these blocks */
            __m512 sv = _mm512_permutexvar_ps(_mm512_add_epi32(gsel, _mm512_set1_epi32((int)(fg & 15))),
                                              _mm512_load_ps(sc + (fg & ~(int64_t)15)));
            _mm512_store_ps(pd[r] + b, _mm512_mul_ps(sv, _mm512_loadu_ps(s->d + b)));
        }
        memset(pd[r] + nb, 0, 16 * sizeof(float));
        qsb_row(w->sfmt, (const unsigned char *)w->biases + (size_t)ri[r] * w->sb_row_bytes, g0, ng, bi);
        /* the biases' part starts the row's sums: sum_g bias[g] * sg[g] */
        acc[r] = _mm512_setzero_ps();
        int64_t g = 0;
        for (; g + 16 <= ng; g += 16)
            acc[r] = _mm512_fmadd_ps(_mm512_loadu_ps(bi + g), _mm512_loadu_ps(s->sg + g), acc[r]);
        bs[r] = 0;
        for (; g < ng; g++) bs[r] += bi[g] * s->sg[g];
    }
    size_t pf = QPF * dr * w->row_bytes;
    for (int64_t c = 0; c < nch; c++) {
        int64_t fb = c * ch / QVB; /* the chunk's first input block */
        __m512i idx = _mm512_add_epi32(bidx, _mm512_set1_epi32((int)(fb & 15)));
        const float *p = &pd[0][fb & ~(int64_t)15];
        if (c < nfull)
            vn_chunk_rows(bits, 0, 0, q, (size_t)c * 64, pf, s->xq + c * ch, p, QSEG / QVB + 16, idx, acc);
        else /* a last chunk of 32, 64 or 96 values */
            vn_chunk_rows(bits, 1, ((__mmask64)1 << (kn % ch * bits / 8)) - 1, q, (size_t)c * 64, 0, s->xq + c * ch, p,
                          QSEG / QVB + 16, idx, acc);
    }
#pragma GCC unroll 2
    for (int r = 0; r < dr; r++) out[r] = _mm512_reduce_add_ps(acc[r]) + bs[r];
}

/* Bytes of the input of K columns prepared for vn_rows: its segments. */
static inline size_t vn_bytes(int64_t K) { return (size_t)((K + QSEG - 1) / QSEG) * sizeof(vn_seg); }

/* Rows [r0, r1) over the columns [p0, p0+pk), s[i] the prepared segment at
 * p0 + i*QSEG: y[r] = (p0 ? y[r] : 0) + their part. Rows go tile by tile,
 * each through all its segments, so a tile streams its rows' bytes in order
 * (segment by segment over all rows would stride). A row's result does not
 * depend on r0 or r1. */
static inline __attribute__((always_inline, target("avx512vnni"))) void
vn_rows(const int bits, const int group, const wtensor *w, int64_t r0, int64_t r1, const vn_seg *s, int64_t p0,
        int64_t pk, float *y) {
    const int64_t K = w->cols;
    int nseg = (int)((pk + QSEG - 1) / QSEG);
    const int dr = vn_dr(bits);
    for (int64_t r = r0; r < r1; r += dr) {
        int nr = r1 - r < dr ? (int)(r1 - r) : dr;
        int64_t ri[VN_DR];
        for (int i = 0; i < dr; i++) ri[i] = r + (i < nr ? i : nr - 1);
        float sum[VN_DR] = {0}, out[VN_DR];
        for (int i = 0; i < nseg; i++) {
            int64_t k0 = p0 + i * QSEG, kn = K - k0 < QSEG ? K - k0 : QSEG;
            vn_tile(bits, group, w, ri, k0, kn, &s[i], out);
            for (int j = 0; j < dr; j++) sum[j] += out[j];
        }
        for (int i = 0; i < nr; i++) y[r + i] = (p0 ? y[r + i] : 0.0f) + sum[i];
    }
}

/* x[0 .. K) prepared into s[0 .. vn_bytes(K)): every segment. */
static void vn_prepare_all(int bits, int group, const float *x, int64_t K, vn_seg *s) {
    for (int64_t k0 = 0; k0 < K; k0 += QSEG)
        vn_prepare(bits, group, x + k0, K - k0 < QSEG ? K - k0 : QSEG, &s[k0 / QSEG]);
}

/* Decode without a prepared input (the mm_fn entry): VN_NSEG segments at a
 * time prepared on the stack, then every row over them. */
static inline __attribute__((always_inline, target("avx512vnni"))) void
vn_decode(const int bits, const int group, const wtensor *w, int64_t r0, int64_t r1, const float *x, float *y) {
    const int64_t K = w->cols;
    vn_seg s[VN_NSEG];
    for (int64_t p0 = 0; p0 < K; p0 += VN_NSEG * QSEG) {
        int64_t pk = K - p0 < VN_NSEG * QSEG ? K - p0 : VN_NSEG * QSEG;
        vn_prepare_all(bits, group, x + p0, pk, s);
        vn_rows(bits, group, w, r0, r1, s, p0, pk, y);
    }
}

/* Decode over a whole prepared input s (vn_prepare_all): the segments
 * summed VN_NSEG at a time as vn_decode does, so the results are its own. */
static inline __attribute__((always_inline, target("avx512vnni"))) void
vn_decode_prepared(const int bits, const int group, const wtensor *w, int64_t r0, int64_t r1, const vn_seg *s,
                   float *y) {
    for (int64_t p0 = 0; p0 < w->cols; p0 += VN_NSEG * QSEG)
        vn_rows(bits, group, w, r0, r1, s + p0 / QSEG, p0,
                w->cols - p0 < VN_NSEG * QSEG ? w->cols - p0 : VN_NSEG * QSEG, y);
}

/* The groups the kernels are compiled for; dec_bytes is 0 for the others. */
static size_t vn_dec_bytes(const wtensor *w) {
    return w->group == 32 || w->group == 64 || w->group == 128 ? vn_bytes(w->cols) : 0;
}

/* Per format: decode through vn_decode, or (the dec_* entries) over an input
 * prepared once per call; prompts (n > 1) through the float path of mm_fl. */
#define VNMM(name, bits, mm_fl)                                                                                      \
    static __attribute__((target("avx512vnni"), noinline)) void name##_g(const wtensor *w, int64_t r0, int64_t r1,  \
                                                                          const float *x, float *y) {               \
        switch (w->group) {                                                                                          \
        case 32: vn_decode(bits, 32, w, r0, r1, x, y); return;                                                       \
        case 64: vn_decode(bits, 64, w, r0, r1, x, y); return;                                                       \
        default: vn_decode(bits, 128, w, r0, r1, x, y); return;                                                      \
        }                                                                                                            \
    }                                                                                                                \
    static void name(const wtensor *w, int64_t r0, int64_t r1, const float *x, int64_t ldx, int64_t n, float *y,   \
                     int64_t ldy) {                                                                                  \
        if (n == 1 && vn_dec_bytes(w))                                                                               \
            name##_g(w, r0, r1, x, y);                                                                               \
        else                                                                                                         \
            mm_fl(w, r0, r1, x, ldx, n, y, ldy);                                                                     \
    }                                                                                                                \
    static void name##_prep(const wtensor *w, const float *x, void *buf) {                                          \
        vn_prepare_all(bits, w->group, x, w->cols, buf);                                                             \
    }                                                                                                                \
    static __attribute__((target("avx512vnni"), noinline)) void name##_dmm(const wtensor *w, int64_t r0,           \
                                                                            int64_t r1, const void *buf, float *y) { \
        switch (w->group) {                                                                                          \
        case 32: vn_decode_prepared(bits, 32, w, r0, r1, buf, y); return;                                           \
        case 64: vn_decode_prepared(bits, 64, w, r0, r1, buf, y); return;                                           \
        default: vn_decode_prepared(bits, 128, w, r0, r1, buf, y); return;                                         \
        }                                                                                                            \
    }
VNMM(mm_q4_vnni, 4, mm_q4)
VNMM(mm_q8_vnni, 8, mm_q8)
#undef VNMM
