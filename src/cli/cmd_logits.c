/* cmd_logits.c — moe logits: raw little-endian float32 logits of a token
 * sequence, the last position or (--all) every position [n x vocab]. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static void help(FILE *f) {
    fprintf(f, "usage: moe logits [-m DIR] --tokens 1,2,3 [-o FILE] [--all] [--kv-bits N] [model options]\n"
               "  -m DIR        model directory (default %s)\n"
               "  --tokens IDS  comma-separated token ids\n"
               "  -o FILE       write here instead of stdout\n"
               "  --all         every position's logits [n x vocab], not just the last\n"
               "  --kv-bits N   KV cache: 32 = float32 (default), 8 or 4 bits a value\n",
            MOE_DEFAULT_MODEL);
    cli_model_help(f);
}

int cmd_logits(int argc, char **argv) {
    const char *dir = cli_default_model(), *out = NULL, *toks = NULL, *v;
    int all = 0;
    long long kv_bits = 0;
    cli_model_opts mo;
    cli_model_opts_init(&mo);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int mr = cli_model_opt(&mo, argc, argv, &i);
        if (mr < 0) return 1;
        if (mr) continue;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { help(stdout); return 0; }
        else if (!strcmp(a, "--all")) all = 1;
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) { if (!(v = cli_value(argc, argv, &i))) return 1; dir = v; }
        else if (!strcmp(a, "-o")) { if (!(v = cli_value(argc, argv, &i))) return 1; out = v; }
        else if (!strcmp(a, "--tokens")) { if (!(v = cli_value(argc, argv, &i))) return 1; toks = v; }
        else if (!strcmp(a, "--kv-bits")) {
            if (!(v = cli_value(argc, argv, &i)) || cli_int(a, v, 0, 64, &kv_bits)) return 1;
        } else return cli_fail("logits: unknown option %s (moe logits --help lists them)", a);
    }
    if (!toks) return cli_fail("logits: --tokens is required (see moe logits --help)");
    int32_t *tokens;
    size_t n;
    if (cli_parse_tokens(toks, &tokens, &n)) return 1;
    moe_model *m = NULL;
    moe_seq *s = NULL;
    float *logits = NULL;
    int rc = 1;
    if (cli_load_model(dir, &mo, &m)) goto done;
    const moe_config *c = moe_model_config(m);
    moe_seq_params sp;
    moe_seq_params_defaults(&sp);
    sp.n_ctx = (int)n;
    sp.kv_bits = (int)kv_bits;
    moe_status st = moe_seq_new(m, &sp, &s);
    if (st) { rc = cli_fail_status(st); goto done; }
    size_t rows = all ? n : 1;
    logits = malloc(rows * (size_t)c->vocab_size * sizeof *logits);
    if (!logits) { rc = cli_fail("out of memory for %zu x %d logits", rows, c->vocab_size); goto done; }
    if ((st = moe_seq_eval(s, tokens, n, logits, all))) { rc = cli_fail_status(st); goto done; }
    FILE *f = out ? fopen(out, "wb") : stdout;
    if (!f) { rc = cli_fail("%s: cannot create", out); goto done; }
    size_t cnt = rows * (size_t)c->vocab_size;
    int ok = fwrite(logits, sizeof *logits, cnt, f) == cnt; /* x86 and ARM are little-endian */
    if (out && fclose(f) != 0) ok = 0;
    if (!out && fflush(stdout) != 0) ok = 0;
    rc = ok ? 0 : cli_fail("%s: write failed", out ? out : "stdout");
done:
    free(logits);
    free(tokens);
    moe_seq_free(s);
    cli_model_report(m, &mo, stderr);
    moe_model_free(m);
    return rc;
}
