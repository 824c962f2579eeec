/* bench/delta.c — speed of the gated DeltaNet recurrence alone (be_delta_rule,
 * backend/cpu/delta.c) at Qwen3-Next's shape: 16 key heads, 32 value heads,
 * dk = dv = 128, so 2 MiB of float32 state per layer.
 *   decode: one token per call, cycling over LAYERS separate states (36: the
 *   model's DeltaNet layers, 72 MiB, more than the caches hold), as a decoded
 *   token meets them; reported per layer and as GB/s of state read + written.
 *   prompt: PROMPT tokens per call, token by token (chunk 0) and in chunks of 64.
 *   usage: bench_delta [PROMPT=512] [LAYERS=36] [THREADS=all] [ISA=auto] */
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "../src/backend/backend.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int main(int argc, char **argv) {
    const int nk = 16, nv = 32, dk = 128, dv = 128;
    int64_t np = argc > 1 ? atoll(argv[1]) : 512;
    int layers = argc > 2 ? atoi(argv[2]) : 36, threads = argc > 3 ? atoi(argv[3]) : 0;
    const char *isa = argc > 4 ? argv[4] : NULL;
    if (np < 1 || layers < 1) {
        fprintf(stderr, "usage: bench_delta [PROMPT=512] [LAYERS=36] [THREADS=all] [ISA=auto]\n");
        return 2;
    }
    backend *be;
    if (backend_new(threads, isa, &be) != MOE_OK) {
        fprintf(stderr, "bench_delta: %s\n", moe_errmsg());
        return 1;
    }
    int64_t ld = 2 * nk * dk + nv * dv;
    size_t st = (size_t)nv * dk * dv;
    float *x = malloc(sizeof *x * (size_t)(np * ld)), *g = malloc(sizeof *g * (size_t)(np * nv));
    float *b = malloc(sizeof *b * (size_t)(np * nv)), *o = malloc(sizeof *o * (size_t)(np * nv * dv));
    float *S = calloc(st * (size_t)layers, sizeof *S);
    float *sc = malloc(sizeof *sc * (size_t)backend_threads(be) * be_delta_scratch(64, dk, dv));
    if (!x || !g || !b || !o || !S || !sc) return 1;
    srand(1);
    for (int64_t i = 0; i < np * ld; i++) x[i] = ((float)rand() / (float)RAND_MAX - 0.5f) * 0.1f;
    for (int64_t i = 0; i < np * nv; i++) g[i] = -0.1f, b[i] = 0.5f;
    printf("ISA %s, %d threads; state %.1f MiB per layer\n", backend_isa(be), backend_threads(be), (double)st * 4 / 1048576);
    /* decode: every layer's state once per token */
    for (int l = 0; l < layers; l++) be_delta_rule(be, x, x + nk * dk, x + 2 * nk * dk, ld, g, b, 1, nk, nv, dk, dv, 0, S + (size_t)l * st, o, sc);
    int tokens = 20;
    double t0 = now_s();
    for (int t = 0; t < tokens; t++)
        for (int l = 0; l < layers; l++)
            be_delta_rule(be, x, x + nk * dk, x + 2 * nk * dk, ld, g, b, 1, nk, nv, dk, dv, 0, S + (size_t)l * st, o, sc);
    double per = (now_s() - t0) / tokens / layers;
    printf("decode: %.1f us per layer per token (%d layers: %.2f ms a token); the state read twice and written once: %.1f GB/s\n",
           per * 1e6, layers, per * layers * 1e3, 3.0 * (double)st * 4 / per / 1e9);
    for (int chunk = 0; chunk <= 64; chunk += 64) {
        be_delta_rule(be, x, x + nk * dk, x + 2 * nk * dk, ld, g, b, np, nk, nv, dk, dv, chunk, S, o, sc);
        t0 = now_s();
        int reps = 3;
        for (int r = 0; r < reps; r++)
            be_delta_rule(be, x, x + nk * dk, x + 2 * nk * dk, ld, g, b, np, nk, nv, dk, dv, chunk, S, o, sc);
        double dt = (now_s() - t0) / reps;
        printf("prompt of %lld, %s: %.1f us per token per layer\n", (long long)np,
               chunk ? "chunks of 64" : "token by token", dt * 1e6 / (double)np);
    }
    backend_free(be);
    return 0;
}
