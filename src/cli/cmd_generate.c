/* cmd_generate.c — moe generate: prompt in, tokens out, one at a time
 * through the generation iterator; speeds to stderr. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static void help(FILE *f) {
    fprintf(f, "usage: moe generate [-m DIR] (--tokens 1,2,3 | -p TEXT) [options]\n"
               "  -m DIR              model directory (default %s)\n"
               "  --tokens IDS        prompt as comma-separated token ids; prints generated ids\n"
               "  -p TEXT             prompt as text (needs the tokenizer, not yet built in)\n"
               "  -n N                tokens to generate (default 64)\n"
               "  --temp T            temperature, 0 = greedy (default 0.8)\n"
               "  --top-k K           keep the K most likely tokens, 0 = off (default 40)\n"
               "  --top-p P           nucleus sampling mass, 1 = off (default 0.95)\n"
               "  --min-p P           drop tokens below P x the top probability (default 0.05)\n"
               "  --repeat-penalty R  penalise tokens of the last 64 (default 1 = off)\n"
               "  --seed S            random seed (default 0); same seed, same output\n"
               "  --ignore-eos        do not stop at end-of-sequence tokens\n"
               "  --ctx N             context size (default: prompt + n)\n"
               "  -t N                threads (default: all cores)\n",
            MOE_DEFAULT_MODEL);
}

static int is_eos(const moe_config *c, int32_t t) {
    for (int i = 0; i < c->n_eos; i++)
        if (c->eos_token_ids[i] == t) return 1;
    return 0;
}

int cmd_generate(int argc, char **argv) {
    const char *dir = MOE_DEFAULT_MODEL, *toks = NULL, *prompt = NULL, *v;
    long long n_gen = 64, threads = 0, ctx = 0, ll;
    int ignore_eos = 0;
    double d;
    moe_sampler_params sp;
    moe_sampler_params_defaults(&sp);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { help(stdout); return 0; }
        else if (!strcmp(a, "--ignore-eos")) ignore_eos = 1;
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) { CLI_VALUE(); dir = v; }
        else if (!strcmp(a, "--tokens")) { CLI_VALUE(); toks = v; }
        else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) { CLI_VALUE(); prompt = v; }
        else if (!strcmp(a, "-n")) { CLI_VALUE(); if (cli_int(a, v, 0, 1 << 30, &n_gen)) return 1; }
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) { CLI_VALUE(); if (cli_int(a, v, 0, 4096, &threads)) return 1; }
        else if (!strcmp(a, "--ctx")) { CLI_VALUE(); if (cli_int(a, v, 1, 1 << 30, &ctx)) return 1; }
        else if (!strcmp(a, "--temp")) { CLI_VALUE(); if (cli_float(a, v, 0, 100, &d)) return 1; sp.temperature = (float)d; }
        else if (!strcmp(a, "--top-k")) { CLI_VALUE(); if (cli_int(a, v, 0, 1 << 30, &ll)) return 1; sp.top_k = (int)ll; }
        else if (!strcmp(a, "--top-p")) { CLI_VALUE(); if (cli_float(a, v, 1e-6, 1, &d)) return 1; sp.top_p = (float)d; }
        else if (!strcmp(a, "--min-p")) { CLI_VALUE(); if (cli_float(a, v, 0, 1, &d)) return 1; sp.min_p = (float)d; }
        else if (!strcmp(a, "--repeat-penalty")) { CLI_VALUE(); if (cli_float(a, v, 1e-3, 100, &d)) return 1; sp.repeat_penalty = (float)d; }
        else if (!strcmp(a, "--seed")) { CLI_VALUE(); if (cli_int(a, v, 0, INT64_MAX, &ll)) return 1; sp.seed = (uint64_t)ll; }
        else return cli_fail("generate: unknown option %s (moe generate --help lists them)", a);
    }
    if (prompt) return cli_fail("generate: -p needs the tokenizer, which this build does not have yet; use --tokens");
    if (!toks) return cli_fail("generate: give a prompt with --tokens (see moe generate --help)");
    int32_t *tokens;
    size_t n;
    if (cli_parse_tokens(toks, &tokens, &n)) return 1;
    moe_model *m = NULL;
    moe_seq *s = NULL;
    moe_sampler *smp = NULL;
    int rc = 1;
    if (cli_load(dir, (int)threads, &m)) goto done;
    const moe_config *c = moe_model_config(m);
    moe_seq_params qp;
    moe_seq_params_defaults(&qp);
    qp.n_ctx = ctx ? (int)ctx : (int)(n + (size_t)n_gen);
    moe_status st = moe_seq_new(m, &qp, &s);
    if (!st) st = moe_sampler_new(&sp, &smp);
    double t0 = cli_now(), t_first = 0;
    if (!st) st = moe_seq_eval(s, tokens, n, NULL, 0);
    int64_t produced = 0;
    for (; !st && produced < n_gen; produced++) {
        int32_t t;
        if ((st = moe_generate_next(s, smp, &t))) break;
        if (produced == 0) t_first = cli_now() - t0;
        printf(produced ? " %d" : "%d", t);
        fflush(stdout);
        if (!ignore_eos && is_eos(c, t)) { produced++; break; }
    }
    printf("\n");
    fflush(stdout);
    if (st && st != MOE_ERANGE) { rc = cli_fail_status(st); goto done; }
    if (st == MOE_ERANGE) fprintf(stderr, "moe: stopped: %s\n", moe_errmsg());
    moe_seq_stats ss;
    moe_seq_get_stats(s, &ss);
    fprintf(stderr, "prompt: %lld tokens, %.2f tok/s | generation: %lld tokens, %.2f tok/s | first token after %.1f ms\n",
            (long long)n, ss.prompt_seconds > 0 ? (double)ss.prompt_tokens / ss.prompt_seconds : 0.0, (long long)produced,
            ss.decode_seconds > 0 ? (double)ss.decode_tokens / ss.decode_seconds : 0.0, t_first * 1e3);
    rc = 0;
done:
    free(tokens);
    moe_sampler_free(smp);
    moe_seq_free(s);
    moe_model_free(m);
    return rc;
}
