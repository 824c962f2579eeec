/* simd_quant.h — SIMD matmul of the MLX affine-quantized formats (Q2..Q8),
 * written once for every bit width and group size and compiled per
 * instruction set as part of simd_tmpl.h. Reference: mm_scalar over
 * wtensor_at (kernels_scalar.c); tests/test_kernels.c holds them together.
 *
 * On top of simd_tmpl.h's vocabulary the including file defines an integer
 * vector VI (VL int32 lanes) and VMUL, VI_SET1, VI_AND, VI_SRLI, VI_SRLV,
 * VI_LOADU, VI_TOF (int32 -> float), VI_U8 (VL bytes zero-extended to VL
 * int32), VI_SHUFB (byte shuffle inside each 128-bit lane), VI_BCASTQ (the QB
 * bytes at p in every 128-bit lane, QB >= VL*6/8), vdeint (2*VL floats split
 * into the even- and the odd-indexed ones), and VLUT(idx, tab): lane i =
 * tab[idx_i mod 2^VLUT_BITS], the higher bits of idx ignored (vpermps;
 * VLUT_BITS 0: no table lookup, every width is masked and converted).
 *
 * Unpacking VL values: Q8 zero-extends VL bytes; any width b broadcasts the
 * VL*b/8 bytes (+ slack) of the values to every lane, shuffles the two bytes
 * that hold value i into int32 lane i and shifts it down by its bit offset.
 * The slack bytes are read but never used, so a row's last groups, whose
 * reads would run past the row, are copied into a zero-padded buffer first.
 * Widths up to VLUT_BITS (AVX-512: Q2..Q4, AVX2: Q2, Q3, NEON: none) then
 * need no mask and no conversion: VLUT looks the value up in the group's table of
 * scale*q + bias (one FMA per group builds it; q repeats mod 2^bits so
 * bits above the value do not matter). Wider values are masked and converted.
 *
 * Decode (n == 1) is memory-bound, so the work per weight is kept minimal:
 * unpack, look up (or convert and FMA with scale and bias), FMA with x.
 * (Applying the scale once per group to sum_k q x and the bias to sum_k x
 * saves an FMA per vector but cancels badly for 8 bits, whose biases are
 * about -128 scales: the quantized golden tests fail it.) QDR rows are in
 * flight, prefetching a later tile's rows and scales into L2 as the float
 * path does. For Q4, VI_U8 of VL bytes gives the even values in the low
 * nibbles and the odd ones in the high nibbles; the input is split the same
 * way once per call (q4 order: each block of 2*VL values as its VL even-
 * then its VL odd-indexed ones), so no shuffle runs per weight. The input is
 * handled in segments of QSEG columns so its copy fits on the stack. (An
 * opt-in int8-input decode of Q4/Q8 for VNNI CPUs is in simd_vnni.h.)
 *
 * Prompts (n > 1) are compute-bound: a panel of QRS rows x QKC columns is
 * dequantized once (w = scale*q + bias, natural order, into L1) and used by
 * every token, in register tiles of QPR rows x QPT tokens whose accumulators
 * persist across column panels in a small stack array; a tile's inputs stay
 * in L1 while the panel's row blocks pass them. Dequantizing costs a few
 * operations per weight, spread over up to QNT tokens.
 */

/* Tiling constants; the #ifndef ones can be set with -D to tune another CPU. */
#ifndef QSEG
#define QSEG 4096 /* decode: input columns per segment (multiple of 128) */
#endif
#ifndef QDR
#define QDR 4 /* decode: rows in flight */
#endif
#ifndef QNA
#define QNA (QDR >= 4 ? 1 : 4 / QDR) /* decode: accumulators per row */
#endif
#ifndef QPF
#define QPF 1 /* decode: prefetch distance in tiles */
#endif
#ifndef QKC
#define QKC 512 /* prompt: panel columns (multiple of 128) */
#endif
#define QNT 32    /* prompt: tokens per pass over a row panel */
#ifndef QPR
#define QPR 4 /* prompt tile rows */
#endif
#ifndef QPT
#define QPT 4 /* prompt tile tokens */
#endif
#ifndef QRS
#define QRS 8 /* prompt panel rows (a multiple of QPR) */
#endif
#define QTAIL 160 /* padded copy of one group: up to 128 values of 8 bits + slack */

#define QLUT(bits) ((bits) <= VLUT_BITS) /* values looked up in a table of the group's weights */

/* Bit phases the values v..v+VL-1 of a group (v a multiple of VL) can start
 * at: VL*bits is a whole number of bytes for VL >= 8, so they start on a
 * byte boundary; with 4 lanes (NEON), 3 and 5 bits, every other vector starts
 * at bit 4 of a byte and has its own unpack constants. */
#define QPHASES (VL % 8 ? 2 : 1) /* also spelt out in qconst_make */

/* The per-lane constants of the unpack for values v..v+VL-1 of a group,
 * by phase p (the values start at bit 4p of their first byte). */
typedef struct qconst {
    VI ctl[QPHASES]; /* bytes (o>>3, o>>3 + 1) into lane i, o = 4p + i*bits; zero above */
    VI sh[QPHASES];  /* o & 7 */
    VI mask;         /* (1 << bits) - 1 */
    V iota;          /* i mod 2^bits: the q of table entry i */
} qconst;

static inline __attribute__((always_inline)) qconst qconst_make(int bits) {
    uint8_t ctl[QPHASES][4 * VL];
    int32_t sh[QPHASES][VL];
    float iota[VL];
    for (int i = 0; i < VL; i++) {
        for (int p = 0; p < QPHASES; p++) {
            int o = 4 * p + i * bits;
            /* for 8 bits, o>>3 + 1 of the last lane is past the loaded bytes: pshufb
             * wraps it to byte 0, which the mask then drops */
            ctl[p][4 * i] = (uint8_t)(o >> 3);
            ctl[p][4 * i + 1] = (uint8_t)((o >> 3) + 1);
            ctl[p][4 * i + 2] = ctl[p][4 * i + 3] = 0x80;
            sh[p][i] = o & 7;
        }
        iota[i] = (float)(i & ((1 << bits) - 1));
    }
#if VL % 8
    qconst c = {{VI_LOADU(ctl[0]), VI_LOADU(ctl[1])}, {VI_LOADU(sh[0]), VI_LOADU(sh[1])}, VI_SET1((1 << bits) - 1),
                VLOADF(iota)};
#else
    qconst c = {{VI_LOADU(ctl[0])}, {VI_LOADU(sh[0])}, VI_SET1((1 << bits) - 1), VLOADF(iota)};
#endif
    return c;
}

/* Values j*VL .. j*VL+VL-1 of a group whose packed bytes start at gp, each in
 * the low bits of its lane (higher bits: other values). q4 (4 bits, decode
 * only): vector j holds the values of the q4 order. */
static inline __attribute__((always_inline)) VI qidx(const int bits, const int q4, const unsigned char *gp, int j,
                                                    const qconst *c) {
    if (bits == 4 && q4) {
        VI v = VI_U8(gp + (j >> 1) * VL);
        return (j & 1) ? VI_SRLI(v, 4) : v;
    }
    const int p = QPHASES > 1 ? (j * VL * bits) % 8 / 4 : 0;
    return VI_SRLV(VI_SHUFB(VI_BCASTQ(gp + j * VL * bits / 8), c->ctl[p]), c->sh[p]);
}

/* The same values as float q (widths not looked up in a table). */
static inline __attribute__((always_inline)) V qvec(const int bits, const int q4, const unsigned char *gp, int j,
                                                   const qconst *c) {
    if (bits == 8) return VI_TOF(VI_U8(gp + j * VL));
    if (bits == 4 && q4 && (j & 1)) return VI_TOF(qidx(bits, q4, gp, j, c)); /* high nibbles: nothing above */
    return VI_TOF(VI_AND(qidx(bits, q4, gp, j, c), c->mask));
}

/* The table of a group's weights for VLUT: entry i = scale * (i mod 2^bits) + bias. */
static inline __attribute__((always_inline)) V qtable(float scale, float bias, const qconst *c) {
    return VFMA(VSET1(scale), c->iota, VSET1(bias));
}

/* The number of a row's last groups whose unpack reads past the row's end
 * (they go through a padded copy): the generic unpack reads QB bytes where
 * VL*bits/8 hold values. */
static inline int64_t qtail_groups(int bits, int q4, int group, int64_t groups) {
    int over = bits == 8 || (bits == 4 && q4) ? 0 : QB - VL * bits / 8, gb = group * bits / 8;
    int64_t n = over > 0 ? (over + gb - 1) / gb : 0;
    return n < groups ? n : groups;
}

/* Scales or biases [g0, g0+ng) of a row (format f) as float32 into out. */
static inline void qsb_row(wfmt f, const unsigned char *row, int64_t g0, int64_t ng, float *out) {
    int64_t g = 0;
    switch (f) { /* once, not per vector */
    case WF_BF16: for (; g + VL <= ng; g += VL) VSTOREF(out + g, vload(WF_BF16, row, g0 + g)); break;
    case WF_F16: for (; g + VL <= ng; g += VL) VSTOREF(out + g, vload(WF_F16, row, g0 + g)); break;
    default: for (; g + VL <= ng; g += VL) VSTOREF(out + g, vload(WF_F32, row, g0 + g)); break;
    }
    for (; g < ng; g++) out[g] = weight_at(f, row, g0 + g);
}

/* ------------------------------------------------------------ decode -- */

/* One group of QDR rows: acc[r] += sum_k w[r][k] x[k], w = scale * q + bias
 * (table widths look w up; others convert q and dequantize with one FMA).
 * sc, bi: the group's scale and bias of row 0; row r's are sbstride further.
 * pf: the prefetch distance; prefetch: a constant, 0 where pf is of no use. */
static inline __attribute__((always_inline)) void qdec_group(const int bits, const int group,
                                                            const unsigned char *const *gp, const float *xg,
                                                            const float *sc, const float *bi, int64_t sbstride,
                                                            const int prefetch, size_t pf, const qconst *c,
                                                            V *acc) {
    const int nj = group / VL, gb = group * bits / 8;
#pragma GCC unroll 4
    for (int r = 0; r < QDR; r++) {
        V *a = acc + r * QNA; /* QNA independent sums, so one row is not bound by FMA latency */
        for (int l = 0; prefetch && l < gb; l += 64) __builtin_prefetch(gp[r] + pf + l, 0, 2);
        V tab = qtable(sc[r * sbstride], bi[r * sbstride], c), s = VSET1(sc[r * sbstride]),
          b = VSET1(bi[r * sbstride]);
#pragma GCC unroll 8
        for (int j = 0; j < nj; j++) {
            V wv = QLUT(bits) ? VLUT(qidx(bits, 1, gp[r], j, c), tab) : VFMA(qvec(bits, 1, gp[r], j, c), s, b);
            a[j % QNA] = VFMA(wv, VLOADF(xg + j * VL), a[j % QNA]);
        }
    }
}

/* QDR rows (indices ri) over the columns [k0, k0+kn) of one segment: out[r] =
 * the segment's part of y[r]. xs: the segment's input (q4 order for 4 bits);
 * groups from gtail on (row-global) need a padded copy. */
static inline __attribute__((always_inline)) void qdec_tile(const int bits, const int group, const wtensor *w,
                                                           const int64_t *ri, int64_t k0, int64_t kn, int64_t gtail,
                                                           const float *xs, const qconst *c, float *out /* [QDR] */) {
    const int gb = group * bits / 8;
    const int64_t g0 = k0 / group, ng = kn / group;
    const unsigned char *q[QDR];
    float sc[QDR][QSEG / 32], bi[QDR][QSEG / 32]; /* the segment's scales and biases as float32 */
    /* a later tile's scales and biases: read at its start, they would stall it on DRAM */
    size_t sbpf = (size_t)(ri[0] + QPF * QDR) * w->sb_row_bytes + (size_t)g0 * wfmt_size(w->sfmt);
    for (size_t o = 0; o < QDR * w->sb_row_bytes; o += 64) {
        __builtin_prefetch((const unsigned char *)w->scales + sbpf + o, 0, 2);
        __builtin_prefetch((const unsigned char *)w->biases + sbpf + o, 0, 2);
    }
    for (int r = 0; r < QDR; r++) {
        q[r] = (const unsigned char *)w->data + (size_t)ri[r] * w->row_bytes + (size_t)g0 * gb;
        qsb_row(w->sfmt, (const unsigned char *)w->scales + (size_t)ri[r] * w->sb_row_bytes, g0, ng, sc[r]);
        qsb_row(w->sfmt, (const unsigned char *)w->biases + (size_t)ri[r] * w->sb_row_bytes, g0, ng, bi[r]);
    }
    V acc[QDR * QNA];
#pragma GCC unroll 8
    for (int i = 0; i < QDR * QNA; i++) acc[i] = VZERO();
    int64_t nfast = gtail - g0 < ng ? gtail - g0 : ng;
    size_t pf = QPF * QDR * w->row_bytes; /* a later tile's rows */
    for (int64_t g = 0; g < nfast; g++) {
        const unsigned char *gp[QDR];
#pragma GCC unroll 4
        for (int r = 0; r < QDR; r++) gp[r] = q[r] + (size_t)g * gb;
        qdec_group(bits, group, gp, xs + g * group, &sc[0][g], &bi[0][g], QSEG / 32, 1, pf, c, acc);
    }
    for (int64_t g = nfast > 0 ? nfast : 0; g < ng; g++) {
        unsigned char tb[QDR][QTAIL];
        const unsigned char *gp[QDR];
        for (int r = 0; r < QDR; r++) {
            memset(tb[r], 0, sizeof tb[r]);
            memcpy(tb[r], q[r] + (size_t)g * gb, (size_t)gb);
            gp[r] = tb[r];
        }
        qdec_group(bits, group, gp, xs + g * group, &sc[0][g], &bi[0][g], QSEG / 32, 0, 0, c, acc);
    }
    for (int r = 0; r < QDR; r++) {
        for (int i = 1; i < QNA; i++) acc[r * QNA] = VADD(acc[r * QNA], acc[r * QNA + i]);
        out[r] = VREDUCE(acc[r * QNA]);
    }
}

static inline __attribute__((always_inline)) void qdecode(const int bits, const int group, const wtensor *w,
                                                         int64_t r0, int64_t r1, const float *x, float *y) {
    const qconst c = qconst_make(bits);
    const int64_t K = w->cols, G = K / group, gtail = G - qtail_groups(bits, 1, group, G);
    float xq[QSEG] __attribute__((aligned(64))); /* the segment's input in q4 order (4 bits) */
    for (int64_t k0 = 0; k0 < K; k0 += QSEG) {
        int64_t kn = K - k0 < QSEG ? K - k0 : QSEG;
        const float *xs = x + k0;
        if (bits == 4) {
            for (int64_t k = 0; k < kn; k += 2 * VL) vdeint(xs + k, xq + k, xq + k + VL);
            xs = xq;
        }
        for (int64_t r = r0; r < r1; r += QDR) {
            int nr = r1 - r < QDR ? (int)(r1 - r) : QDR;
            int64_t ri[QDR];
            for (int i = 0; i < QDR; i++) ri[i] = r + (i < nr ? i : nr - 1);
            float out[QDR];
            qdec_tile(bits, group, w, ri, k0, kn, gtail, xs, &c, out);
            for (int i = 0; i < nr; i++) y[r + i] = (k0 ? y[r + i] : 0.0f) + out[i];
        }
    }
}

/* ------------------------------------------------------------ prompt -- */

/* Columns [k0, k0+kc) of row ri dequantized: p[k] = scale * q + bias (natural order). */
static inline __attribute__((always_inline)) void qpanel_row(const int bits, const int group, const wtensor *w,
                                                            int64_t ri, int64_t k0, int64_t kc, int64_t gtail,
                                                            const qconst *c, float *p /* [kc] */) {
    const int nj = group / VL, gb = group * bits / 8;
    const unsigned char *q = (const unsigned char *)w->data + (size_t)ri * w->row_bytes;
    const unsigned char *srow = (const unsigned char *)w->scales + (size_t)ri * w->sb_row_bytes;
    const unsigned char *brow = (const unsigned char *)w->biases + (size_t)ri * w->sb_row_bytes;
    float sc[QKC / 32], bi[QKC / 32];
    int64_t g0 = k0 / group, ng = kc / group;
    qsb_row(w->sfmt, srow, g0, ng, sc);
    qsb_row(w->sfmt, brow, g0, ng, bi);
    for (int64_t g = 0; g < ng; g++) {
        const unsigned char *gp = q + (size_t)(g0 + g) * gb;
        unsigned char tb[QTAIL];
        if (g0 + g >= gtail) {
            memset(tb, 0, sizeof tb);
            memcpy(tb, gp, (size_t)gb);
            gp = tb;
        }
        if (QLUT(bits)) {
            V tab = qtable(sc[g], bi[g], c);
#pragma GCC unroll 8
            for (int j = 0; j < nj; j++) VSTOREF(p + g * group + j * VL, VLUT(qidx(bits, 0, gp, j, c), tab));
        } else {
            V s = VSET1(sc[g]), b = VSET1(bi[g]);
#pragma GCC unroll 8
            for (int j = 0; j < nj; j++) VSTOREF(p + g * group + j * VL, VFMA(qvec(bits, 0, gp, j, c), s, b));
        }
    }
}

/* acc[r][t] += panel row r . token t over kc columns, for a QPR x QPT tile;
 * acc: the tile's accumulators, row r at acc + r * (QNT + QPT) * VL. */
static void qgemm(const float *const *p, const float *const *xs, int64_t kc, float *acc) {
    V a[QPR][QPT];
#pragma GCC unroll 8
    for (int r = 0; r < QPR; r++)
#pragma GCC unroll 4
        for (int t = 0; t < QPT; t++) a[r][t] = VLOADF(acc + (r * (QNT + QPT) + t) * VL);
    for (int64_t k = 0; k < kc; k += VL) {
        V xv[QPT];
#pragma GCC unroll 4
        for (int t = 0; t < QPT; t++) xv[t] = VLOADF(xs[t] + k);
#pragma GCC unroll 8
        for (int r = 0; r < QPR; r++) {
            V wv = VLOADF(p[r] + k);
#pragma GCC unroll 4
            for (int t = 0; t < QPT; t++) a[r][t] = VFMA(wv, xv[t], a[r][t]);
        }
    }
#pragma GCC unroll 8
    for (int r = 0; r < QPR; r++)
#pragma GCC unroll 4
        for (int t = 0; t < QPT; t++) VSTOREF(acc + (r * (QNT + QPT) + t) * VL, a[r][t]);
}

static inline __attribute__((always_inline)) void qprompt(const int bits, const int group, const wtensor *w,
                                                         int64_t r0, int64_t r1, const float *x, int64_t ldx,
                                                         int64_t n, float *y, int64_t ldy) {
    const qconst c = qconst_make(bits);
    const int64_t K = w->cols, G = K / group, gtail = G - qtail_groups(bits, 0, group, G);
    float panel[QRS][QKC + 16] __attribute__((aligned(64))); /* rows padded off the same L1 sets */
    float acc[QRS][QNT + QPT][VL] __attribute__((aligned(64))); /* vector accumulators [row][token] */
    for (int64_t r = r0; r < r1; r += QRS) {
        int nr = r1 - r < QRS ? (int)(r1 - r) : QRS, nb = (nr + QPR - 1) / QPR;
        const float *p[QRS]; /* rows past nr repeat the last one; their sums are dropped */
        for (int i = 0; i < QRS; i++) p[i] = panel[i < nr ? i : nr - 1];
        for (int64_t t0 = 0; t0 < n; t0 += QNT) {
            int nt = n - t0 < QNT ? (int)(n - t0) : QNT;
            memset(acc, 0, sizeof acc);
            for (int64_t k0 = 0; k0 < K; k0 += QKC) {
                int64_t kc = K - k0 < QKC ? K - k0 : QKC;
                for (int i = 0; i < nr; i++) qpanel_row(bits, group, w, r + i, k0, kc, gtail, &c, panel[i]);
                /* a token tile's inputs stay in L1 while every row block of the panel passes them */
                for (int t = 0; t < nt; t += QPT) {
                    const float *xs[QPT];
                    for (int j = 0; j < QPT; j++) xs[j] = x + (t0 + (t + j < nt ? t + j : nt - 1)) * ldx + k0;
                    for (int b = 0; b < nb; b++) qgemm(p + b * QPR, xs, kc, &acc[b * QPR][t][0]);
                }
            }
            for (int i = 0; i < nr; i++)
                for (int t = 0; t < nt; t++) y[(t0 + t) * ldy + r + i] = VREDUCE(VLOADF(acc[i][t]));
        }
    }
}

/* ----------------------------------------------------------- entries -- */

/* One function per (bits, group) and path, so each keeps its own small stack frame. */
#define QFN(bits, group)                                                                                             \
    static __attribute__((noinline)) void qdec_##bits##_##group(const wtensor *w, int64_t r0, int64_t r1,           \
                                                                const float *x, float *y) {                         \
        qdecode(bits, group, w, r0, r1, x, y);                                                                       \
    }                                                                                                                \
    static __attribute__((noinline)) void qpro_##bits##_##group(const wtensor *w, int64_t r0, int64_t r1,           \
                                                                const float *x, int64_t ldx, int64_t n, float *y,   \
                                                                int64_t ldy) {                                      \
        qprompt(bits, group, w, r0, r1, x, ldx, n, y, ldy);                                                          \
    }
#define QMM(name, bits)                                                                                              \
    QFN(bits, 32)                                                                                                    \
    QFN(bits, 64)                                                                                                    \
    QFN(bits, 128)                                                                                                   \
    static void name(const wtensor *w, int64_t r0, int64_t r1, const float *x, int64_t ldx, int64_t n, float *y,   \
                     int64_t ldy) {                                                                                  \
        switch (w->group * (n == 1 ? 1 : -1)) {                                                                      \
        case 32: qdec_##bits##_32(w, r0, r1, x, y); return;                                                          \
        case 64: qdec_##bits##_64(w, r0, r1, x, y); return;                                                          \
        case 128: qdec_##bits##_128(w, r0, r1, x, y); return;                                                        \
        case -32: qpro_##bits##_32(w, r0, r1, x, ldx, n, y, ldy); return;                                            \
        case -64: qpro_##bits##_64(w, r0, r1, x, ldx, n, y, ldy); return;                                            \
        case -128: qpro_##bits##_128(w, r0, r1, x, ldx, n, y, ldy); return;                                          \
        }                                                                                                            \
        cpu_kernels_scalar()->matmul[w->fmt](w, r0, r1, x, ldx, n, y, ldy); /* a group size MLX does not make */     \
    }
QMM(mm_q2, 2)
QMM(mm_q3, 3)
QMM(mm_q4, 4)
QMM(mm_q5, 5)
QMM(mm_q6, 6)
QMM(mm_q8, 8)
#undef QMM
#undef QFN
