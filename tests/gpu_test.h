/* gpu_test.h — what the GPU tests share: skipping where no GPU is present,
 * running a token sequence through a model in calls of a given size, and the
 * relative RMS error they judge logits by. Included by one test each. */
#ifndef MOE_TESTS_GPU_TEST_H
#define MOE_TESTS_GPU_TEST_H

#include <jansson.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "moe.h"

/* 1 when this build has the CUDA backend and the machine a GPU; else prints
 * why the test is skipped (exit 77). */
static inline int gpu_present(void) {
    if (strstr(moe_devices(), "cuda") && !strstr(moe_devices(), "(0 devices)")) return 1;
    printf("no GPU: skipped (%s)\n", moe_devices());
    return 0;
}

static inline int32_t *ints(json_t *a, size_t *n) {
    *n = json_array_size(a);
    int32_t *v = malloc((*n ? *n : 1) * sizeof *v);
    for (size_t i = 0; i < *n; i++) v[i] = (int32_t)json_integer_value(json_array_get(a, i));
    return v;
}

/* A fingerprint of the experts m's MoE layers chose since the last reset
 * (moe_model_expert_counts), then reset: 0 for a dense model. */
static inline uint64_t take_routes(moe_model *m) {
    const moe_config *c = moe_model_config(m);
    uint64_t h = 1469598103934665603ull;
    int64_t *k = calloc((size_t)(c->n_experts ? c->n_experts : 1), sizeof *k);
    for (int l = 0; c->n_experts && l < c->n_layers; l++)
        if (moe_model_expert_counts(m, l, k) == MOE_OK)
            for (int e = 0; e < c->n_experts; e++) h = (h ^ (uint64_t)k[e] ^ ((uint64_t)l << 32 | (uint64_t)e)) * 1099511628211ull;
    free(k);
    moe_model_reset_expert_counts(m);
    return c->n_experts ? h : 0;
}

/* logits of tok[n] fed `step` tokens per call (0: all at once), NULL on
 * failure; routes (NULL: not wanted) [n]: each position's call's take_routes */
static inline float *run(moe_model *m, const int32_t *tok, size_t n, size_t step, int V, uint64_t *routes) {
    moe_seq_params sp;
    moe_seq_params_defaults(&sp);
    sp.n_ctx = (int)n + 8;
    sp.n_batch = step ? (int)step : (int)n;
    moe_seq *s;
    if (moe_seq_new(m, &sp, &s) != MOE_OK) return NULL;
    float *out = malloc(n * (size_t)V * sizeof *out);
    if (!step) step = n;
    for (size_t off = 0; off < n && out; off += step) {
        size_t k = n - off < step ? n - off : step;
        moe_model_reset_expert_counts(m);
        if (moe_seq_eval(s, tok + off, k, out + off * (size_t)V, 1) != MOE_OK) {
            fprintf(stderr, "eval: %s\n", moe_errmsg());
            free(out);
            out = NULL;
        } else if (routes) {
            uint64_t r = take_routes(m);
            for (size_t i = 0; i < k; i++) routes[off + i] = r;
        }
    }
    moe_seq_free(s);
    return out;
}

/* RMS(got - ref) / RMS(ref) over count logits */
static inline double rel_rms(const float *got, const float *ref, size_t count) {
    double se = 0, sr = 0;
    for (size_t i = 0; i < count; i++) {
        se += ((double)got[i] - ref[i]) * ((double)got[i] - ref[i]);
        sr += (double)ref[i] * ref[i];
    }
    return sr > 0 ? sqrt(se / sr) : sqrt(se);
}

#endif
