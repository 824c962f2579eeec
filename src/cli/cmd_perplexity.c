/* cmd_perplexity.c — moe perplexity: how well a model predicts a text.
 * Protocol (documented in --help, reproduced by tools/train_tiny.py's
 * reference): the file is tokenized whole without special tokens and cut
 * into chunks of --ctx - 1 tokens; each chunk is run with BOS in front
 * (when the model has one) and every token of the chunk is scored given what
 * precedes it in the chunk. perplexity = exp(mean negative log-likelihood). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static void help(FILE *f) {
    fprintf(f, "usage: moe perplexity [-m DIR] -f FILE [--ctx N] [--batch N] [--kv-bits N] [model options]\n"
               "  -m DIR    model directory (default %s)\n"
               "  -f FILE   text to score\n"
               "  --ctx N   tokens per chunk including BOS (default 512)\n"
               "  --batch N tokens per forward pass (default 256); 1 scores the text through\n"
               "            the one-token (decode) kernels, as generation runs them\n"
               "  --kv-bits N  KV cache: 32 = float32 (default), 8 or 4 bits a value\n"
               "The text is tokenized without special tokens and cut into chunks of N-1 tokens;\n"
               "each chunk gets BOS in front and all its tokens are scored.\n",
            MOE_DEFAULT_MODEL);
    cli_model_help(f);
}

int cmd_perplexity(int argc, char **argv) {
    const char *dir = cli_default_model(), *file = NULL, *v;
    long long ctx = 512, kv_bits = 0, batch = 0;
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
        else if (!strcmp(a, "--ctx")) { CLI_VALUE(); if (cli_int(a, v, 2, 1 << 20, &ctx)) return 1; }
        else if (!strcmp(a, "--batch")) { CLI_VALUE(); if (cli_int(a, v, 1, 1 << 20, &batch)) return 1; }
        else if (!strcmp(a, "--kv-bits")) { CLI_VALUE(); if (cli_int(a, v, 0, 64, &kv_bits)) return 1; }
        else return cli_fail("perplexity: unknown option %s (moe perplexity --help lists them)", a);
    }
    if (!file) return cli_fail("perplexity: -f FILE is required (see moe perplexity --help)");
    size_t len = 0;
    char *text = cli_read_file(file, &len);
    if (!text) return 1;
    moe_model *m = NULL;
    moe_seq *s = NULL;
    cli_text t = {0};
    float *logits = NULL;
    int rc = 1;
    moe_status st = MOE_OK;
    if (cli_load_model(dir, &mo, &m)) goto done;
    const moe_config *c = moe_model_config(m);
    if (cli_text_open(&t, text, len, dir, c, (int)ctx, 0)) goto done;
    int V = c->vocab_size;
    moe_seq_params qp;
    moe_seq_params_defaults(&qp);
    qp.n_ctx = (int)ctx;
    qp.kv_bits = (int)kv_bits;
    if (batch) qp.n_batch = (int)batch;
    logits = malloc((size_t)ctx * (size_t)V * sizeof *logits);
    if (!logits) { rc = cli_fail("out of memory"); goto done; }
    if ((st = moe_seq_new(m, &qp, &s))) goto done;
    double nll = 0, t0 = cli_now();
    size_t scored = 0, evaluated = 0;
    for (size_t w = 0; w < t.windows; w++) {
        const int32_t *chunk = t.window;
        size_t k = cli_text_window(&t, w);
        moe_seq_reset(s);
        if ((st = moe_seq_eval(s, chunk, k, logits, 1))) goto done;
        evaluated += k;
        /* position p predicts chunk[p + 1]; without BOS the first token is not scored */
        for (size_t p = 0; p + 1 < k; p++) {
            const float *l = logits + p * (size_t)V;
            float mx = l[0];
            for (int j = 1; j < V; j++) mx = l[j] > mx ? l[j] : mx;
            double sum = 0;
            for (int j = 0; j < V; j++) sum += exp((double)l[j] - mx);
            nll += log(sum) + mx - l[chunk[p + 1]];
            scored++;
        }
        fprintf(stderr, "\rchunk %zu of %zu, perplexity so far %.4f", w + 1, t.windows,
                scored ? exp(nll / (double)scored) : 0.0);
    }
    fprintf(stderr, "\n");
    if (!scored) { rc = cli_fail("perplexity: %s has too few tokens to score", file); goto done; }
    printf("perplexity %.4f over %zu tokens (%zu chunks of up to %lld, %.1f tok/s)\n", exp(nll / (double)scored), scored,
           t.windows, ctx, (double)evaluated / (cli_now() - t0));
    rc = 0;
done:
    if (st) rc = cli_fail_status(st);
    free(text);
    free(logits);
    cli_text_close(&t);
    moe_seq_free(s);
    cli_model_report(m, &mo, stderr);
    moe_model_free(m);
    return rc;
}
