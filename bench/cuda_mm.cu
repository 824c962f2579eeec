/* cuda_mm.cu — speed of the CUDA matmuls (src/backend/cuda/cuda_matmul.cu).
 *
 * Decode: cuda_matmul of one token on Mistral-7B / Mixtral shapes in BF16,
 * Q4 and Q8 (group 64, bf16 scales; their int8-activation path, then with
 * MOE_CUDA_FLOAT_DECODE=1 their float32 one), as GB/s of weight read and the fraction
 * of the device's peak (memory clock x bus width x 2, or --peak GB/s); also
 * the fused SwiGLU and Mixtral's top-2 expert decode. Weights rotate through
 * copies of >= 512 MiB so that L2 (50 MiB on an H100) holds none of them.
 * Prompt: cuda_matmul and cuda_matmul_swiglu of 512 and 4096 tokens, as TFLOP/s
 * (the tensor-core kernel, tc_kernel; its time includes the pass that rounds x
 * to float16).
 *
 * usage: bench_cuda_mm [--peak GBps] [--iters N]
 * Timed with cudaEvents on the context's stream. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../src/backend/backend.h"
#include "../src/backend/cuda/cuda_internal.h"

static cuda_ctx *g_c;
static int g_iters = 50;
static double g_peak; /* bytes/s */

/* A weight of rows x cols in format f (group 64, bf16 scales), in device memory, zero values. */
static wtensor dev_weight(wfmt f, int64_t rows, int64_t cols) {
    wtensor w;
    memset(&w, 0, sizeof w);
    w.fmt = f, w.rows = rows, w.cols = cols, w.row_bytes = wfmt_row_bytes(f, cols);
    w.data = cuda_alloc(g_c, (size_t)rows * w.row_bytes);
    if (wfmt_is_quant(f)) {
        w.group = 64, w.sfmt = WF_BF16, w.sb_row_bytes = (size_t)(cols / 64) * 2;
        w.scales = cuda_alloc(g_c, (size_t)rows * w.sb_row_bytes);
        w.biases = cuda_alloc(g_c, (size_t)rows * w.sb_row_bytes);
    }
    return w;
}

static void free_weight(wtensor *w) {
    cuda_free(g_c, (void *)w->data), cuda_free(g_c, (void *)w->scales), cuda_free(g_c, (void *)w->biases);
}

typedef void (*op_fn)(const wtensor *w, int64_t n, const float *x, float *y);
static void op_matmul(const wtensor *w, int64_t n, const float *x, float *y) { cuda_matmul(g_c, w, x, n, NULL, y); }
static void op_swiglu(const wtensor *w, int64_t n, const float *x, float *y) {
    cuda_matmul_swiglu(g_c, &w[0], &w[1], x, n, y);
}
/* w: gate, up, down of 2 experts (Mixtral top-2) */
static void op_moe(const wtensor *w, int64_t n, const float *x, float *y) {
    (void)n;
    const wtensor *g[2] = {&w[0], &w[3]}, *u[2] = {&w[1], &w[4]}, *d[2] = {&w[2], &w[5]};
    float *out[2] = {y, y + w[2].rows};
    cuda_moe_decode(g_c, 2, g, u, d, x, y + 2 * w[2].rows, w[0].rows, out);
}

/* Seconds per call of op over nw weights of one call, rotating through copies. */
static double time_op(op_fn op, wfmt f, const int64_t (*shape)[2], int nw, int64_t n, double *bytes) {
    size_t one = 0;
    int64_t maxr = 0, maxc = 0;
    for (int i = 0; i < nw; i++) {
        wtensor t;
        memset(&t, 0, sizeof t);
        t.fmt = f, t.rows = shape[i][0], t.cols = shape[i][1], t.row_bytes = wfmt_row_bytes(f, t.cols);
        if (wfmt_is_quant(f)) t.group = 64, t.sb_row_bytes = (size_t)(t.cols / 64) * 2;
        one += wtensor_bytes(&t);
        maxr = shape[i][0] > maxr ? shape[i][0] : maxr, maxc = shape[i][1] > maxc ? shape[i][1] : maxc;
    }
    int copies = n > 8 ? 1 : (int)((512u << 20) / one) + 1;
    wtensor *w = (wtensor *)calloc((size_t)copies * nw, sizeof *w);
    for (int i = 0; i < copies * nw; i++) w[i] = dev_weight(f, shape[i % nw][0], shape[i % nw][1]);
    size_t ny = (size_t)(n + 4) * (maxr > maxc ? maxr : maxc) * 4; /* moe: 2 outputs and 2 mids */
    float *x = (float *)cuda_alloc(g_c, ny), *y = (float *)cuda_alloc(g_c, ny);
    cudaEvent_t e0, e1;
    cudaEventCreate(&e0), cudaEventCreate(&e1);
    for (int i = 0; i < copies; i++) op(w + i * nw, n, x, y); /* warm-up */
    cudaEventRecord(e0, g_c->stream);
    for (int it = 0; it < g_iters; it++) op(w + (it % copies) * nw, n, x, y);
    cudaEventRecord(e1, g_c->stream);
    float ms = 0;
    if (cuda_sync(g_c) != MOE_OK) {
        fprintf(stderr, "bench_cuda_mm: %s\n", moe_errmsg());
        exit(1);
    }
    cudaEventElapsedTime(&ms, e0, e1);
    cudaEventDestroy(e0), cudaEventDestroy(e1);
    for (int i = 0; i < copies * nw; i++) free_weight(&w[i]);
    cuda_free(g_c, x), cuda_free(g_c, y);
    free(w);
    *bytes = (double)one;
    return ms / 1e3 / g_iters;
}

/* One line, or for Q4/Q8 two: the int8 path, then the float32 one. */
static void decode_line(const char *name, op_fn op, wfmt f, const int64_t (*shape)[2], int nw) {
    for (int fl = 0; fl < (f == WF_Q4 || f == WF_Q8 ? 2 : 1); fl++) {
        if (fl) setenv("MOE_CUDA_FLOAT_DECODE", "1", 1);
        double bytes, s = time_op(op, f, shape, nw, 1, &bytes);
        if (fl) unsetenv("MOE_CUDA_FLOAT_DECODE");
        printf("%-28s %-4s %-5s %8.1f us %8.1f GB/s  %5.1f%% of peak\n", name, wfmt_name(f),
               f == WF_BF16 ? "" : fl ? "f32" : "int8", s * 1e6, bytes / s / 1e9, 100.0 * bytes / s / g_peak);
    }
}

static void prompt_line(const char *name, op_fn op, wfmt f, const int64_t (*shape)[2], int nw, int64_t n) {
    double bytes, s = time_op(op, f, shape, nw, n, &bytes), flop = 0;
    for (int i = 0; i < nw; i++) flop += 2.0 * shape[i][0] * shape[i][1] * n;
    printf("%-28s %-5s %8.1f us %8.1f TFLOP/s\n", name, wfmt_name(f), s * 1e6, flop / s / 1e12);
}

int main(int argc, char **argv) {
    double peak_gbs = 0;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--peak") && i + 1 < argc) peak_gbs = atof(argv[++i]);
        else if (!strcmp(argv[i], "--iters") && i + 1 < argc) g_iters = atoi(argv[++i]);
        else {
            fprintf(stderr, "usage: bench_cuda_mm [--peak GBps] [--iters N]\n");
            return 1;
        }
    }
    if (cuda_device_count() == 0 || cuda_ctx_new(0, &g_c) != MOE_OK) {
        fprintf(stderr, "bench_cuda_mm: no CUDA device\n");
        return 1;
    }
    int clk = 0, bus = 0;
    cudaDeviceGetAttribute(&clk, cudaDevAttrMemoryClockRate, g_c->device);     /* kHz */
    cudaDeviceGetAttribute(&bus, cudaDevAttrGlobalMemoryBusWidth, g_c->device); /* bits */
    g_peak = peak_gbs > 0 ? peak_gbs * 1e9 : 2.0 * clk * 1e3 * bus / 8;
    printf("%s; peak %.0f GB/s (%s); %d iterations\n\n", cuda_ctx_name(g_c), g_peak / 1e9,
           peak_gbs > 0 ? "--peak" : "memory clock x bus width x 2", g_iters);

    static const int64_t shapes[4][2] = {{4096, 4096}, {1024, 4096}, {14336, 4096}, {4096, 14336}};
    static const wfmt fmts[3] = {WF_BF16, WF_Q4, WF_Q8};
    printf("decode (n = 1): weight bytes read / time\n");
    for (int fi = 0; fi < 3; fi++)
        for (int s = 0; s < 4; s++) {
            char name[64];
            snprintf(name, sizeof name, "matmul %lldx%lld", (long long)shapes[s][0], (long long)shapes[s][1]);
            decode_line(name, op_matmul, fmts[fi], &shapes[s], 1);
        }
    static const int64_t sw[2][2] = {{14336, 4096}, {14336, 4096}};
    static const int64_t moe[6][2] = {{14336, 4096}, {14336, 4096}, {4096, 14336},
                                      {14336, 4096}, {14336, 4096}, {4096, 14336}};
    for (int fi = 0; fi < 3; fi++) decode_line("swiglu 2x 14336x4096", op_swiglu, fmts[fi], sw, 2);
    for (int fi = 0; fi < 3; fi++) decode_line("moe_decode Mixtral top-2", op_moe, fmts[fi], moe, 6);

    static const int64_t ns[2] = {512, 4096};
    for (int ni = 0; ni < 2; ni++) {
        printf("\nprompt (n = %lld): 2 rows cols n / time\n", (long long)ns[ni]);
        for (int fi = 0; fi < 3; fi++) {
            prompt_line("matmul 4096x4096", op_matmul, fmts[fi], &shapes[0], 1, ns[ni]);
            prompt_line("matmul 14336x4096", op_matmul, fmts[fi], &shapes[2], 1, ns[ni]);
            prompt_line("matmul 4096x14336", op_matmul, fmts[fi], &shapes[3], 1, ns[ni]);
            prompt_line("swiglu 2x 14336x4096", op_swiglu, fmts[fi], sw, 2, ns[ni]);
        }
    }
    prompt_line("matmul 14336x4096 (SIMT)", op_matmul, WF_F32, &shapes[2], 1, 512);
    cuda_ctx_free(g_c);
    return 0;
}
