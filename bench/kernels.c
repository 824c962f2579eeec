/* bench/kernels.c — speed of the matmul kernels alone, through the backend
 * (thread pool included): matrix x vector in GB/s of weights read (decode),
 * matrix x matrix in GFLOP/s (prompt). Set against bench/membw's read
 * bandwidth.   usage: bench_kernels [ROWS=14336] [COLS=4096] [THREADS=all] [ISA=auto] */
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

int main(int argc, char **argv) {
    int64_t rows = argc > 1 ? atol(argv[1]) : 14336, cols = argc > 2 ? atol(argv[2]) : 4096;
    int threads = argc > 3 ? atoi(argv[3]) : 0;
    const char *isa = argc > 4 ? argv[4] : "auto";
    backend *be;
    if (backend_new(threads, isa, &be) != MOE_OK) {
        fprintf(stderr, "bench_kernels: %s\n", moe_errmsg());
        return 1;
    }
    /* several matrices, so a pass cannot be served from cache */
    enum { NMAT = 6, NTOK = 64 };
    float *x = malloc(sizeof(float) * (size_t)(cols * NTOK)), *y = malloc(sizeof(float) * (size_t)(rows * NTOK));
    for (int64_t i = 0; i < cols * NTOK; i++) x[i] = (float)(i % 13) * 0.01f;
    for (int f = 0; f <= WF_BF16; f++) {
        size_t bytes = (size_t)(rows * cols) * wfmt_size((wfmt)f);
        wtensor w[NMAT];
        for (int m = 0; m < NMAT; m++) {
            unsigned char *d = malloc(bytes);
            memset(d, 0x3c, bytes);
            w[m] = (wtensor){.fmt = (wfmt)f, .rows = rows, .cols = cols, .data = d, .row_bytes = (size_t)cols * wfmt_size((wfmt)f)};
        }
        double best = 1e9;
        for (int rep = 0; rep < 5; rep++) {
            double t0 = now_s();
            for (int m = 0; m < NMAT; m++) be_matmul(be, &w[m], x, 1, NULL, y);
            double dt = (now_s() - t0) / NMAT;
            if (dt < best) best = dt;
        }
        double best_mm = 1e9;
        for (int rep = 0; rep < 2; rep++) {
            double t0 = now_s();
            be_matmul(be, &w[rep], x, NTOK, NULL, y);
            double dt = now_s() - t0;
            if (dt < best_mm) best_mm = dt;
        }
        printf("{\"isa\":\"%s\",\"threads\":%d,\"fmt\":\"%s\",\"rows\":%lld,\"cols\":%lld,\"matvec_gbps\":%.2f,"
               "\"matmul%d_gflops\":%.1f}\n",
               backend_isa(be), backend_threads(be), wfmt_name((wfmt)f), (long long)rows, (long long)cols,
               (double)bytes / best / 1e9, NTOK, 2.0 * (double)rows * (double)cols * NTOK / best_mm / 1e9);
        for (int m = 0; m < NMAT; m++) free((void *)w[m].data);
    }
    free(x);
    free(y);
    backend_free(be);
    return 0;
}
