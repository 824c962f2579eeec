/* cmd_generate.c — moe generate: a prompt in (text or token ids), tokens out
 * one at a time through the generation iterator. Text is streamed through the
 * detokenizer and the stop strings; speeds go to stderr. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

#define MAX_STOPS 16

static void help(FILE *f) {
    fprintf(f, "usage: moe generate [-m DIR] (-p TEXT | --tokens 1,2,3) [options]\n"
               "  -m DIR              model directory (default %s)\n"
               "  -p TEXT             prompt text; the answer is streamed as text\n"
               "  --tokens IDS        prompt as comma-separated token ids; prints generated ids\n"
               "  -n N                tokens to generate (default 64)\n"
               "  --stop STR          stop when the text contains STR (repeatable, with -p)\n"
               "  --temp T            temperature, 0 = greedy (default 0.8)\n"
               "  --top-k K           keep the K most likely tokens, 0 = off (default 40)\n"
               "  --top-p P           nucleus sampling mass, 1 = off (default 0.95)\n"
               "  --min-p P           drop tokens below P x the top probability (default 0.05)\n"
               "  --repeat-penalty R  penalise tokens of the last 64 (default 1 = off)\n"
               "  --seed S            random seed (default 0); same seed, same output\n"
               "  --ignore-eos        do not stop at end-of-sequence tokens\n"
               "  --ctx N             context size (default: prompt + n)\n"
               "  --kv-bits N         KV cache: 32 = float32 (default), 8 or 4 bits a value\n",
            MOE_DEFAULT_MODEL);
    cli_model_help(f);
}

typedef struct gen_opts {
    const char *dir, *toks, *prompt;
    const char *stops[MAX_STOPS];
    size_t n_stops;
    long long n_gen, ctx, kv_bits;
    cli_model_opts mo;
    int ignore_eos;
    moe_sampler_params sp;
} gen_opts;

static int parse(int argc, char **argv, gen_opts *o) {
    const char *v;
    long long ll;
    double d;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int mr = cli_model_opt(&o->mo, argc, argv, &i);
        if (mr < 0) return 1;
        if (mr) continue;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { help(stdout); return -1; }
        else if (!strcmp(a, "--ignore-eos")) o->ignore_eos = 1;
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) { CLI_VALUE(); o->dir = v; }
        else if (!strcmp(a, "--tokens")) { CLI_VALUE(); o->toks = v; }
        else if (!strcmp(a, "-p") || !strcmp(a, "--prompt")) { CLI_VALUE(); o->prompt = v; }
        else if (!strcmp(a, "--stop")) {
            CLI_VALUE();
            if (o->n_stops == MAX_STOPS) return cli_fail("generate: at most %d --stop strings", MAX_STOPS);
            if (!*v) return cli_fail("generate: --stop needs a non-empty string");
            o->stops[o->n_stops++] = v;
        }
        else if (!strcmp(a, "-n")) { CLI_VALUE(); if (cli_int(a, v, 0, 1 << 30, &o->n_gen)) return 1; }
        else if (!strcmp(a, "--ctx")) { CLI_VALUE(); if (cli_int(a, v, 1, 1 << 30, &o->ctx)) return 1; }
        else if (!strcmp(a, "--kv-bits")) { CLI_VALUE(); if (cli_int(a, v, 0, 64, &o->kv_bits)) return 1; }
        else if (!strcmp(a, "--temp")) { CLI_VALUE(); if (cli_float(a, v, 0, 100, &d)) return 1; o->sp.temperature = (float)d; }
        else if (!strcmp(a, "--top-k")) { CLI_VALUE(); if (cli_int(a, v, 0, 1 << 30, &ll)) return 1; o->sp.top_k = (int)ll; }
        else if (!strcmp(a, "--top-p")) { CLI_VALUE(); if (cli_float(a, v, 1e-6, 1, &d)) return 1; o->sp.top_p = (float)d; }
        else if (!strcmp(a, "--min-p")) { CLI_VALUE(); if (cli_float(a, v, 0, 1, &d)) return 1; o->sp.min_p = (float)d; }
        else if (!strcmp(a, "--repeat-penalty")) { CLI_VALUE(); if (cli_float(a, v, 1e-3, 100, &d)) return 1; o->sp.repeat_penalty = (float)d; }
        else if (!strcmp(a, "--seed")) { CLI_VALUE(); if (cli_int(a, v, 0, INT64_MAX, &ll)) return 1; o->sp.seed = (uint64_t)ll; }
        else return cli_fail("generate: unknown option %s (moe generate --help lists them)", a);
    }
    if (!o->toks == !o->prompt) return cli_fail("generate: give the prompt with -p TEXT or --tokens IDS (see moe generate --help)");
    if (o->n_stops && !o->prompt) return cli_fail("generate: --stop works on text: use -p");
    return 0;
}

/* Prints text that the stop strings let through; 1 when a stop string ended it. */
static int show(moe_stop *stop, const char *text, size_t len) {
    size_t n;
    int stopped;
    const char *e = moe_stop_feed(stop, text, len, &n, &stopped);
    fwrite(e, 1, n, stdout);
    fflush(stdout);
    return stopped;
}

int cmd_generate(int argc, char **argv) {
    gen_opts o = {.dir = cli_default_model(), .n_gen = 64};
    moe_sampler_params_defaults(&o.sp);
    cli_model_opts_init(&o.mo);
    int rc = parse(argc, argv, &o);
    if (rc) return rc < 0 ? 0 : rc;

    moe_model *m = NULL;
    moe_tokenizer *tok = NULL;
    moe_seq *s = NULL;
    moe_sampler *smp = NULL;
    moe_detok *dt = NULL;
    moe_stop *stop = NULL;
    int32_t *tokens = NULL;
    size_t n = 0;
    rc = 1;
    moe_status st = MOE_OK;
    if (o.toks && cli_parse_tokens(o.toks, &tokens, &n)) return 1;
    if (cli_load_model(o.dir, &o.mo, &m)) goto done;
    const moe_config *c = moe_model_config(m);
    int32_t eos[9];
    int n_eos = 0;
    for (int i = 0; i < c->n_eos; i++) eos[n_eos++] = c->eos_token_ids[i];
    if (o.prompt) {
        if ((st = moe_tokenizer_load(o.dir, &tok)) || (st = moe_tokenize(tok, o.prompt, strlen(o.prompt), 1, &tokens, &n)) ||
            (st = moe_detok_new(tok, 1, &dt)) || (st = moe_stop_new(o.stops, o.n_stops, &stop)))
            goto done;
        if (moe_tokenizer_eos(tok) >= 0) eos[n_eos++] = moe_tokenizer_eos(tok);
        /* the detokenizer sees the prompt first, so the answer's first piece
         * decodes as a continuation (a sentence-piece "▁of" is " of", not "of") */
        for (size_t i = 0; i < n; i++) {
            size_t len;
            moe_detok_push(dt, tokens[i], &len);
        }
        if (n == 0) { rc = cli_fail("generate: the prompt is empty after tokenization"); goto done; }
    }
    moe_seq_params qp;
    moe_seq_params_defaults(&qp);
    qp.n_ctx = o.ctx ? (int)o.ctx : (int)(n + (size_t)o.n_gen + 1);
    qp.kv_bits = (int)o.kv_bits;
    if ((st = moe_seq_new(m, &qp, &s)) || (st = moe_sampler_new(&o.sp, &smp))) goto done;
    double t0 = cli_now(), t_first = 0;
    if ((st = moe_seq_eval(s, tokens, n, NULL, 0))) goto done;
    int64_t produced = 0;
    int stopped = 0;
    for (; !st && !stopped && produced < o.n_gen; produced++) {
        int32_t t;
        if ((st = moe_generate_next(s, smp, &t))) break;
        if (produced == 0) t_first = cli_now() - t0;
        int end = 0;
        for (int i = 0; i < n_eos && !o.ignore_eos; i++) end |= eos[i] == t;
        if (!o.prompt) {
            printf(produced ? " %d" : "%d", t);
            fflush(stdout);
        } else if (!end) {
            size_t len;
            const char *piece = moe_detok_push(dt, t, &len);
            stopped = show(stop, piece, len);
        }
        if (end) { produced++; break; }
    }
    if (o.prompt && !stopped) {
        size_t len;
        const char *tail = moe_detok_flush(dt, &len);
        if (!show(stop, tail, len)) {
            tail = moe_stop_flush(stop, &len);
            fwrite(tail, 1, len, stdout);
        }
    }
    printf("\n");
    fflush(stdout);
    if (st == MOE_ERANGE) {
        fprintf(stderr, "moe: stopped: %s\n", moe_errmsg());
        st = MOE_OK;
    }
    if (st) goto done;
    moe_seq_stats ss;
    moe_seq_get_stats(s, &ss);
    fprintf(stderr, "prompt: %zu tokens, %.2f tok/s | generation: %lld tokens, %.2f tok/s | first token after %.1f ms\n", n,
            ss.prompt_seconds > 0 ? (double)ss.prompt_tokens / ss.prompt_seconds : 0.0, (long long)produced,
            ss.decode_seconds > 0 ? (double)ss.decode_tokens / ss.decode_seconds : 0.0, t_first * 1e3);
    rc = 0;
done:
    if (st) rc = cli_fail_status(st);
    free(tokens); /* moe_tokenize's ids are malloc'd too; moe_free is free */
    moe_stop_free(stop);
    moe_detok_free(dt);
    moe_sampler_free(smp);
    moe_seq_free(s);
    moe_tokenizer_free(tok);
    cli_model_report(m, &o.mo, stderr);
    moe_model_free(m);
    return rc;
}
