/* fuzz_profile.c — libFuzzer harness for xp_parse, the reader of untrusted
 * expert profiles (see fuzz/run.sh). The input is the file's text. Nothing
 * may crash or leak; errors are fine. A profile that parses must hold
 * together (xp_validate), give every MoE layer's hottest experts as a
 * permutation in count order, and survive xp_format -> xp_parse unchanged. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../src/experts/xprofile.h"

static void check_layers(const xp_profile *p, int *order, unsigned char *seen) {
    for (int l = 0; l < p->n_layers; l++) {
        const int64_t *c = xp_counts(p, l);
        if (!c) continue;
        if (xp_hottest(p, l, p->n_experts, order) != p->n_experts) abort();
        memset(seen, 0, (size_t)p->n_experts);
        for (int i = 0; i < p->n_experts; i++) {
            int e = order[i];
            if (e < 0 || e >= p->n_experts || seen[e]++) abort();
            if (i && (c[order[i - 1]] < c[e] || (c[order[i - 1]] == c[e] && order[i - 1] > e))) abort();
        }
    }
}

static int same(const xp_profile *a, const xp_profile *b) {
    if (strcmp(a->model_type, b->model_type) || a->n_layers != b->n_layers || a->n_experts != b->n_experts ||
        a->top_k != b->top_k || a->tokens != b->tokens || a->n_moe != b->n_moe || !a->text != !b->text ||
        (a->text && strcmp(a->text, b->text)))
        return 0;
    return !memcmp(a->row, b->row, (size_t)a->n_layers * sizeof *a->row) &&
           !memcmp(a->counts, b->counts, (size_t)a->n_moe * (size_t)a->n_experts * sizeof *a->counts);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    xp_profile *p = NULL, *q = NULL;
    if (xp_parse((const char *)data, size, "fuzz", &p)) {
        if (p) abort(); /* on failure nothing is handed out */
        return 0;
    }
    if (xp_validate(p, "fuzz") || p->n_moe < 1) abort();
    int *order = malloc((size_t)p->n_experts * sizeof *order);
    unsigned char *seen = malloc((size_t)p->n_experts);
    if (order && seen) check_layers(p, order, seen);
    char *json = NULL;
    size_t len = 0;
    if (xp_format(p, "fuzz", &json, &len) == MOE_OK) {
        if (xp_parse(json, len, "again", &q) || !same(p, q)) abort();
    }
    free(json);
    free(order);
    free(seen);
    xp_free(q);
    xp_free(p);
    return 0;
}
