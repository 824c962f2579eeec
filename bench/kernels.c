/* bench/kernels.c — speed of the matmul kernels alone, through the backend
 * (thread pool included): matrix x vector in GB/s of weights read (decode;
 * quantized formats count their scales and biases too), matrix x matrix in
 * GFLOP/s (prompt). Set against bench/membw's read bandwidth. Each format
 * cycles through enough matrices (>= 1.5 GB) that no pass is served from the
 * last-level cache.
 *   usage: bench_kernels [ROWS=14336] [COLS=4096] [THREADS=all] [ISA=auto] [FORMATS=all] [GROUP=64] [SCALES=BF16]
 *   FORMATS: comma-separated names (F32,F16,BF16,Q2,Q3,Q4,Q5,Q6,Q8) or "all".
 *   ISA as backend_new takes it: auto (the best of the ladder below the CPU has),
 *   scalar, avx2, avx512, avx512vnni (int8-input Q4/Q8 decode), amx; neon on AArch64. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../src/backend/backend.h"
#include "../src/base/half.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int listed(const char *list, const char *name) {
    if (strcmp(list, "all") == 0) return 1;
    size_t n = strlen(name);
    for (const char *p = list; (p = strstr(p, name)) != NULL; p += n)
        if ((p == list || p[-1] == ',') && (p[n] == ',' || p[n] == 0)) return 1;
    return 0;
}

/* A weight of format f over fresh memory: values and scales are arbitrary
 * (a byte pattern), which does not change the speed. */
static wtensor make_weight(wfmt f, int64_t rows, int64_t cols, int group, wfmt sfmt) {
    wtensor w = {.fmt = f, .rows = rows, .cols = cols, .row_bytes = wfmt_row_bytes(f, cols)};
    unsigned char *d = malloc((size_t)rows * w.row_bytes);
    memset(d, 0x3c, (size_t)rows * w.row_bytes);
    w.data = d;
    if (wfmt_is_quant(f)) {
        w.group = group;
        w.sfmt = sfmt;
        w.sb_row_bytes = (size_t)(cols / group) * wfmt_size(sfmt);
        unsigned char *s = malloc(2 * (size_t)rows * w.sb_row_bytes);
        memset(s, 0x3c, 2 * (size_t)rows * w.sb_row_bytes);
        w.scales = s;
        w.biases = s + (size_t)rows * w.sb_row_bytes;
    }
    return w;
}

static void free_weight(wtensor *w) {
    free((void *)w->data);
    free((void *)w->scales); /* biases share the block */
}

int main(int argc, char **argv) {
    int64_t rows = argc > 1 ? atol(argv[1]) : 14336, cols = argc > 2 ? atol(argv[2]) : 4096;
    int threads = argc > 3 ? atoi(argv[3]) : 0;
    const char *isa = argc > 4 ? argv[4] : "auto";
    const char *formats = argc > 5 ? argv[5] : "all";
    int group = argc > 6 ? atoi(argv[6]) : 64;
    const char *sname = argc > 7 ? argv[7] : "BF16";
    wfmt sfmt = strcmp(sname, "F32") == 0 ? WF_F32 : strcmp(sname, "F16") == 0 ? WF_F16 : WF_BF16;
    if (rows < 1 || cols < 1 || (group != 32 && group != 64 && group != 128) || cols % group) {
        fprintf(stderr, "bench_kernels: bad shape or group (GROUP 32, 64 or 128 dividing COLS)\n");
        return 1;
    }
    backend *be;
    if (backend_new(threads, isa, &be) != MOE_OK) {
        fprintf(stderr, "bench_kernels: %s\n", moe_errmsg());
        return 1;
    }
    enum { MAXMAT = 64, NTOK = 64 };
    float *x = malloc(sizeof(float) * (size_t)(cols * NTOK)), *y = malloc(sizeof(float) * (size_t)(rows * NTOK));
    for (int64_t i = 0; i < cols * NTOK; i++) x[i] = (float)(i % 13) * 0.01f;
    for (int f = 0; f < WF_COUNT; f++) {
        if (!listed(formats, wfmt_name((wfmt)f))) continue;
        wtensor w[MAXMAT];
        w[0] = make_weight((wfmt)f, rows, cols, group, sfmt);
        size_t bytes = wtensor_bytes(&w[0]);
        int nmat = (int)((1.5e9 + (double)bytes - 1) / (double)bytes);
        nmat = nmat < 2 ? 2 : nmat > MAXMAT ? MAXMAT : nmat;
        for (int m = 1; m < nmat; m++) w[m] = make_weight((wfmt)f, rows, cols, group, sfmt);
        for (int m = 0; m < nmat; m++) be_matmul(be, &w[m], x, 1, NULL, y); /* touch every page once */
        double best = 1e9;
        for (int rep = 0; rep < 5; rep++) {
            double t0 = now_s();
            for (int m = 0; m < nmat; m++) be_matmul(be, &w[m], x, 1, NULL, y);
            double dt = (now_s() - t0) / nmat;
            if (dt < best) best = dt;
        }
        double best_mm = 1e9;
        for (int rep = 0; rep < 3; rep++) {
            double t0 = now_s();
            be_matmul(be, &w[rep % nmat], x, NTOK, NULL, y);
            double dt = now_s() - t0;
            if (dt < best_mm) best_mm = dt;
        }
        printf("{\"isa\":\"%s\",\"threads\":%d,\"fmt\":\"%s\",", backend_isa(be), backend_threads(be),
               wfmt_name((wfmt)f));
        if (wfmt_is_quant((wfmt)f)) printf("\"group\":%d,\"scales\":\"%s\",", group, wfmt_name(sfmt));
        printf("\"rows\":%lld,\"cols\":%lld,\"matvec_gbps\":%.2f,\"matvec_gweights\":%.2f,\"matmul%d_gflops\":%.1f}\n",
               (long long)rows, (long long)cols, (double)bytes / best / 1e9, (double)(rows * cols) / best / 1e9, NTOK,
               2.0 * (double)rows * (double)cols * NTOK / best_mm / 1e9);
        fflush(stdout);
        for (int m = 0; m < nmat; m++) free_weight(&w[m]);
    }
    free(x);
    free(y);
    backend_free(be);
    return 0;
}
