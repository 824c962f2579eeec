/* bench/amx.c — prompt matmul speed of the AMX-BF16 path against the avx512
 * float32 kernels, through the backend (thread pool included): GFLOP/s of
 * y = x . W^T for weights of Mistral-7B's shapes (4096 x 4096: q/o;
 * 14336 x 4096: gate/up, also fused as SwiGLU) at n = 32, 128, 512 tokens, for
 * BF16, Q4 and Q8 (group 64, bf16 scales) weights. A slow path (a format the
 * float kernels only have in scalar code) is timed once, and its larger n
 * skipped once a call takes over 5 s.
 *   usage: bench_amx [THREADS=all] [FORMAT=all] [N=all]   (one JSON object a line) */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../src/backend/backend.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static unsigned char *noise(size_t bytes, uint32_t seed) {
    unsigned char *p = malloc(bytes);
    for (size_t i = 0; i < bytes; i++) {
        seed = seed * 1664525u + 1013904223u;
        p[i] = (unsigned char)(seed >> 24);
    }
    return p;
}

/* A weight of format f with random contents: bf16 values in [-1, 1), or
 * random quantized values with scales 2^-bits and biases -1/2 (bf16), all in
 * one allocation (free w.data). */
static wtensor make(wfmt f, int64_t rows, int64_t cols, uint32_t seed) {
    wtensor w = {.fmt = f, .rows = rows, .cols = cols, .row_bytes = wfmt_row_bytes(f, cols)};
    size_t vb = (size_t)rows * w.row_bytes, ng = wfmt_is_quant(f) ? (size_t)rows * (size_t)(cols / 64) : 0;
    unsigned char *d = noise(vb + 4 * ng, seed);
    if (f == WF_BF16) /* keep the exponent sane: |v| < 1 */
        for (size_t i = 1; i < vb; i += 2) d[i] = (unsigned char)(0x3e | (d[i] & 0x80));
    if (ng) {
        w.group = 64;
        w.sfmt = WF_BF16;
        w.sb_row_bytes = (size_t)(cols / 64) * 2;
        uint16_t *s = (uint16_t *)(d + vb), *b = s + ng;
        for (size_t i = 0; i < ng; i++) {
            s[i] = (uint16_t)(0x3f80 - (wfmt_bits(f) << 7)); /* 2^-bits */
            b[i] = 0xbf00;                                   /* -0.5 */
        }
        w.scales = s;
        w.biases = b;
    }
    w.data = d;
    return w;
}

/* seconds of the fastest of up to 5 calls after a first one that sizes the
 * buffers (1 when a call takes over a second): the machine is shared, and
 * only other work slows a call down */
static double time_call(backend *be, const wtensor *w, const wtensor *up, const float *x, int64_t n, float *y) {
    double best = 1e30;
    for (int rep = 0; rep < 6; rep++) {
        double t0 = now_s();
        if (up) be_matmul_swiglu(be, w, up, x, n, y);
        else be_matmul(be, w, x, n, NULL, y);
        double dt = now_s() - t0;
        if (rep > 0 && dt < best) best = dt;
        if (dt > 1.0) {
            if (rep == 0) best = dt;
            break;
        }
    }
    return best;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 0;
    const char *only_fmt = argc > 2 ? argv[2] : NULL;
    int64_t only_n = argc > 3 ? atoll(argv[3]) : 0;
    static const char *isas[2] = {"avx512", "amx"};
    backend *be[2];
    for (int i = 0; i < 2; i++)
        if (backend_new(threads, isas[i], &be[i]) != MOE_OK) {
            fprintf(stderr, "bench_amx: %s\n", moe_errmsg());
            return 1;
        }
    static const wfmt fmts[3] = {WF_BF16, WF_Q4, WF_Q8};
    static const int64_t shapes[3][2] = {{4096, 4096}, {14336, 4096}, {14336, 4096}}; /* the last: SwiGLU */
    static const int64_t ns[3] = {32, 128, 512};
    int64_t cols = 4096;
    float *x = malloc(sizeof(float) * (size_t)(512 * cols)), *y = malloc(sizeof(float) * (size_t)(512 * 14336));
    for (int64_t i = 0; i < 512 * cols; i++) x[i] = (float)((i * 7919) % 2001 - 1000) * 1e-3f;
    for (int fi = 0; fi < 3; fi++)
        for (int s = 0; s < 3 && (!only_fmt || !strcmp(only_fmt, wfmt_name(fmts[fi]))); s++) {
            int64_t rows = shapes[s][0];
            int swiglu = s == 2;
            wtensor w = make(fmts[fi], rows, cols, 1u + (uint32_t)s), u = swiglu ? make(fmts[fi], rows, cols, 99u) : w;
            double slow[2] = {0, 0};
            for (int ni = 0; ni < 3; ni++) {
                int64_t n = ns[ni];
                if (only_n && n != only_n) continue;
                double flops = 2.0 * (double)rows * (double)cols * (double)n * (swiglu ? 2 : 1), g[2] = {0, 0};
                for (int i = 0; i < 2; i++) {
                    if (slow[i] > 5.0) continue;
                    double dt = time_call(be[i], &w, swiglu ? &u : NULL, x, n, y);
                    slow[i] = dt;
                    g[i] = flops / dt / 1e9;
                }
                printf("{\"op\":\"%s\",\"fmt\":\"%s\",\"rows\":%lld,\"cols\":%lld,\"n\":%lld,\"threads\":%d,"
                       "\"avx512_gflops\":%.1f,\"amx_gflops\":%.1f,\"ratio\":%.2f}\n",
                       swiglu ? "swiglu" : "matmul", wfmt_name(fmts[fi]), (long long)rows, (long long)cols, (long long)n,
                       backend_threads(be[1]), g[0], g[1], g[0] > 0 ? g[1] / g[0] : 0.0);
                fflush(stdout);
            }
            if (swiglu) free((void *)u.data);
            free((void *)w.data);
        }
    free(x);
    free(y);
    for (int i = 0; i < 2; i++) backend_free(be[i]);
    return 0;
}
