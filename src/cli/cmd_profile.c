/* cmd_profile.c — moe profile: run a calibration text through a MoE model
 * and write how often the router chose each expert of each layer, the
 * profile (docs/PROFILE.md) from which offloading pins the hottest experts.
 * The text is run as moe perplexity runs it (textwin.c); the counting itself
 * is the model's (moe_model_expert_counts), reset before the text. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static void help(FILE *f) {
    fprintf(f, "usage: moe profile [-m DIR] -f TEXT -o FILE [--ctx N] [--max-tokens N] [model options]\n"
               "  Runs TEXT through a MoE model and writes, per MoE layer, how often the router\n"
               "  chose each expert: a profile (docs/PROFILE.md), from which offloading pins each\n"
               "  layer's hottest experts in memory (--profile FILE).\n"
               "  -m DIR          model directory (default %s)\n"
               "  -f TEXT         calibration text, e.g. samples of what the model will be used for\n"
               "  -o FILE         the profile to write (JSON)\n"
               "  --ctx N         tokens per window including BOS (default 512)\n"
               "  --max-tokens N  only the first N tokens of the text (default: all of it)\n"
               "The text is tokenized without special tokens and cut into windows of N-1 tokens,\n"
               "each run with BOS in front from an empty cache; every position counts, BOS included.\n",
            MOE_DEFAULT_MODEL);
    cli_model_help(f);
}

static int cmp_desc(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x < y) - (x > y);
}

/* Per MoE layer, the share of its routings that went to its hottest quarter
 * of experts: how much a cache holding that quarter would catch. */
static int summary(const moe_model *m, int64_t tokens) {
    const moe_config *c = moe_model_config(m);
    int E = c->n_experts, q = E / 4 > 0 ? E / 4 : 1, shown = 0, lo = -1, hi = -1, cold = 0;
    int64_t *counts = malloc((size_t)E * sizeof *counts);
    double *share = malloc((size_t)c->n_layers * sizeof *share), sum = 0;
    if (!counts || !share) {
        free(counts);
        free(share);
        return cli_fail("out of memory");
    }
    printf("share of routings that went to each layer's hottest %d of %d experts (uniform: %.1f%%):", q, E,
           100.0 * q / E);
    for (int l = 0; l < c->n_layers; l++) {
        if (moe_model_expert_counts(m, l, counts)) continue; /* a dense layer */
        qsort(counts, (size_t)E, sizeof *counts, cmp_desc);
        int64_t top = 0;
        for (int e = 0; e < q; e++) top += counts[e];
        for (int e = 0; e < E; e++) cold += counts[e] == 0;
        share[l] = tokens > 0 ? (double)top / ((double)tokens * c->n_experts_per_tok) : 0;
        sum += share[l];
        if (lo < 0 || share[l] < share[lo]) lo = l;
        if (hi < 0 || share[l] > share[hi]) hi = l;
        printf("%s  layer %2d %5.1f%%", shown++ % 6 ? "" : "\n", l, 100 * share[l]);
    }
    printf("\nmean %.1f%%, least skewed layer %d (%.1f%%), most skewed layer %d (%.1f%%); "
           "%d of %lld experts never chosen\n",
           100 * sum / shown, lo, 100 * share[lo], hi, 100 * share[hi], cold, (long long)shown * E);
    free(counts);
    free(share);
    return 0;
}

/* Runs every window of t through s, counting; progress on stderr. */
static moe_status run_text(moe_seq *s, cli_text *t, int64_t *tokens) {
    size_t total = t->n + t->windows * (t->bos >= 0);
    double t0 = cli_now(), last = 0;
    *tokens = 0;
    for (size_t w = 0; w < t->windows; w++) {
        size_t k = cli_text_window(t, w);
        moe_seq_reset(s);
        moe_status st = moe_seq_eval(s, t->window, k, NULL, 0);
        if (st) return st;
        *tokens += (int64_t)k;
        double now = cli_now();
        if (now - last >= 0.5 || w + 1 == t->windows) {
            last = now;
            fprintf(stderr, "\rprofile: %lld of %zu tokens, %.0f tok/s   ", (long long)*tokens, total,
                    (double)*tokens / (now - t0));
        }
    }
    fprintf(stderr, "\n");
    return MOE_OK;
}

int cmd_profile(int argc, char **argv) {
    const char *dir = cli_default_model(), *file = NULL, *out = NULL, *v;
    long long ctx = 512, max = 0;
    cli_model_opts mo;
    cli_model_opts_init(&mo);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int mr = cli_model_opt(&mo, argc, argv, &i);
        if (mr < 0) return 1;
        if (mr) continue;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { help(stdout); return 0; }
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) { CLI_VALUE(); dir = v; }
        else if (!strcmp(a, "-f")) { CLI_VALUE(); file = v; }
        else if (!strcmp(a, "-o")) { CLI_VALUE(); out = v; }
        else if (!strcmp(a, "--ctx")) { CLI_VALUE(); if (cli_int(a, v, 2, 1 << 20, &ctx)) return 1; }
        else if (!strcmp(a, "--max-tokens")) { CLI_VALUE(); if (cli_int(a, v, 1, (long long)1 << 40, &max)) return 1; }
        else return cli_fail("profile: unknown option %s (moe profile --help lists them)", a);
    }
    if (!file || !out) return cli_fail("profile: -f TEXT and -o FILE are required (see moe profile --help)");
    size_t len = 0;
    char *text = cli_read_file(file, &len);
    if (!text) return 1;
    moe_model *m = NULL;
    moe_seq *s = NULL;
    cli_text t = {0};
    int rc = 1;
    moe_status st = MOE_OK;
    if (cli_load_model(dir, &mo, &m)) goto done;
    const moe_config *c = moe_model_config(m);
    if (c->n_moe_layers < 1) {
        rc = cli_fail("profile: %s is a dense %s model: it has no experts to profile", dir, c->model_type);
        goto done;
    }
    if (cli_text_open(&t, text, len, dir, c, (int)ctx, (size_t)max)) goto done;
    if (!t.n) { rc = cli_fail("profile: %s has no tokens to run", file); goto done; }
    moe_seq_params qp;
    moe_seq_params_defaults(&qp);
    qp.n_ctx = (int)ctx;
    if ((st = moe_seq_new(m, &qp, &s))) goto done;
    moe_model_reset_expert_counts(m);
    double t0 = cli_now();
    int64_t tokens;
    if ((st = run_text(s, &t, &tokens))) goto done;
    double secs = cli_now() - t0;
    const char *slash = strrchr(file, '/');
    if ((st = moe_profile_write(m, out, tokens, slash ? slash + 1 : file))) goto done;
    printf("profiled %lld tokens (%zu windows of up to %lld) in %.1f s, %.0f tok/s\n", (long long)tokens, t.windows,
           ctx, secs, (double)tokens / secs);
    if ((rc = summary(m, tokens))) goto done;
    printf("wrote %s\n", out);
done:
    if (st) rc = cli_fail_status(st);
    free(text);
    cli_text_close(&t);
    moe_seq_free(s);
    cli_model_report(m, &mo, stderr);
    moe_model_free(m);
    return rc;
}
