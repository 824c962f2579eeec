/* cmd_chat.c — moe chat: an interactive conversation in the terminal through
 * the model's chat template. The whole conversation is re-rendered every turn
 * (as transformers does), and the sequence keeps the KV cache of the longest
 * prefix it shares with the new rendering, so only the new turn is processed.
 * Ctrl-C stops the current answer; Ctrl-D (end of input) ends the chat. */
#include <errno.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static volatile sig_atomic_t g_interrupted;

static void on_sigint(int sig) {
    (void)sig;
    g_interrupted = 1;
}

static void help(FILE *f) {
    fprintf(f, "usage: moe chat [-m DIR] [--system TEXT] [options]\n"
               "  -m DIR            model directory with a chat template (default %s)\n"
               "  --system TEXT     a system prompt\n"
               "  -n N              most tokens per answer (default 1024)\n"
               "  --ctx N           context size (default 4096)\n"
               "  --temp T, --top-k K, --top-p P, --min-p P, --repeat-penalty R, --seed S   sampling, as in generate\n"
               "  -t N              threads (default: all cores)\n"
               "Type a message and press Enter. Ctrl-C stops an answer; Ctrl-D ends the chat.\n",
            MOE_DEFAULT_MODEL);
}

/* Reads one line from stdin into *buf; 0 at end of input, -1 when interrupted. */
static int read_line(char **buf, size_t *cap) {
    size_t n = 0;
    for (;;) {
        if (n + 2 > *cap) {
            size_t nc = *cap ? *cap * 2 : 256;
            char *nb = realloc(*buf, nc);
            if (!nb) return 0;
            *buf = nb;
            *cap = nc;
        }
        int ch = getchar();
        if (ch == EOF) {
            if (ferror(stdin) && errno == EINTR) {
                clearerr(stdin);
                return -1;
            }
            (*buf)[n] = 0;
            return n > 0;
        }
        if (ch == '\n') break;
        (*buf)[n++] = (char)ch;
    }
    (*buf)[n] = 0;
    return 1;
}

typedef struct chat {
    moe_model *m;
    moe_tokenizer *tok;
    moe_seq *seq;
    moe_sampler *smp;
    moe_detok *dt;
    json_t *messages;
    int32_t eos[9];
    int n_eos;
    long long max_answer;
} chat;

/* Brings the sequence to the rendered conversation, reusing the shared prefix. */
static moe_status feed_prompt(chat *c, const int32_t *ids, size_t n, size_t *reused) {
    size_t have;
    const int32_t *old = moe_seq_tokens(c->seq, &have);
    size_t common = 0;
    while (common < have && common < n && old[common] == ids[common]) common++;
    if (common == n) common = n - 1; /* evaluate at least one token, for fresh logits */
    if (moe_seq_truncate(c->seq, (int64_t)common) != MOE_OK) {
        moe_seq_reset(c->seq);
        common = 0;
    }
    *reused = common;
    return moe_seq_eval(c->seq, ids + common, n - common, NULL, 0);
}

/* One answer, streamed; appended to the conversation. */
static moe_status answer(chat *c) {
    char *json = json_dumps(c->messages, JSON_COMPACT), *prompt = NULL;
    if (!json) return MOE_ENOMEM;
    moe_status st = moe_chat_render(c->tok, json, NULL, 1, &prompt);
    free(json);
    if (st) return st;
    int32_t *ids = NULL;
    size_t n = 0, reused = 0;
    st = moe_tokenize(c->tok, prompt, strlen(prompt), 0, &ids, &n);
    moe_free(prompt);
    if (!st && n == 0) st = MOE_EINVAL;
    double t0 = cli_now();
    if (!st) st = feed_prompt(c, ids, n, &reused);
    moe_detok_reset(c->dt);
    for (size_t i = 0; !st && i < n; i++) { /* the answer decodes as a continuation of the prompt */
        size_t pl;
        moe_detok_push(c->dt, ids[i], &pl);
    }
    moe_free(ids);
    if (st) return st;
    double t1 = cli_now();
    size_t cap = 256, len = 0;
    char *text = malloc(cap);
    if (!text) return MOE_ENOMEM;
    text[0] = 0;
    g_interrupted = 0;
    long long k = 0;
    for (; k < c->max_answer && !g_interrupted; k++) {
        int32_t t;
        if ((st = moe_generate_next(c->seq, c->smp, &t))) break;
        int end = 0;
        for (int i = 0; i < c->n_eos; i++) end |= c->eos[i] == t;
        if (end) break;
        size_t pl;
        const char *piece = moe_detok_push(c->dt, t, &pl);
        fwrite(piece, 1, pl, stdout);
        fflush(stdout);
        if (len + pl + 1 > cap) {
            while (len + pl + 1 > cap) cap *= 2;
            char *nt = realloc(text, cap);
            if (!nt) { st = MOE_ENOMEM; break; }
            text = nt;
        }
        memcpy(text + len, piece, pl + 1);
        len += pl;
    }
    size_t pl;
    const char *tail = moe_detok_flush(c->dt, &pl);
    fwrite(tail, 1, pl, stdout);
    if (g_interrupted) printf(" [stopped]");
    printf("\n");
    double t2 = cli_now();
    fprintf(stderr, "[%zu prompt tokens, %zu reused from the cache, %.1f tok/s; %lld answer tokens, %.1f tok/s]\n", n,
            reused, (double)(n - reused) / (t1 - t0 > 0 ? t1 - t0 : 1e-9), k, (double)k / (t2 - t1 > 0 ? t2 - t1 : 1e-9));
    if (st == MOE_ERANGE) fprintf(stderr, "moe: the context is full; start a new chat or raise --ctx\n");
    json_array_append_new(c->messages, json_pack("{s:s, s:s%}", "role", "assistant", "content", text, len));
    free(text);
    return st == MOE_ERANGE ? MOE_OK : st;
}

int cmd_chat(int argc, char **argv) {
    const char *dir = cli_default_model(), *system = NULL, *v;
    long long threads = 0, ctx = 4096, max_answer = 1024, ll;
    double d;
    moe_sampler_params sp;
    moe_sampler_params_defaults(&sp);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { help(stdout); return 0; }
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) { CLI_VALUE(); dir = v; }
        else if (!strcmp(a, "--system")) { CLI_VALUE(); system = v; }
        else if (!strcmp(a, "-n")) { CLI_VALUE(); if (cli_int(a, v, 1, 1 << 30, &max_answer)) return 1; }
        else if (!strcmp(a, "--ctx")) { CLI_VALUE(); if (cli_int(a, v, 16, 1 << 30, &ctx)) return 1; }
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) { CLI_VALUE(); if (cli_int(a, v, 0, 4096, &threads)) return 1; }
        else if (!strcmp(a, "--temp")) { CLI_VALUE(); if (cli_float(a, v, 0, 100, &d)) return 1; sp.temperature = (float)d; }
        else if (!strcmp(a, "--top-k")) { CLI_VALUE(); if (cli_int(a, v, 0, 1 << 30, &ll)) return 1; sp.top_k = (int)ll; }
        else if (!strcmp(a, "--top-p")) { CLI_VALUE(); if (cli_float(a, v, 1e-6, 1, &d)) return 1; sp.top_p = (float)d; }
        else if (!strcmp(a, "--min-p")) { CLI_VALUE(); if (cli_float(a, v, 0, 1, &d)) return 1; sp.min_p = (float)d; }
        else if (!strcmp(a, "--repeat-penalty")) { CLI_VALUE(); if (cli_float(a, v, 1e-3, 100, &d)) return 1; sp.repeat_penalty = (float)d; }
        else if (!strcmp(a, "--seed")) { CLI_VALUE(); if (cli_int(a, v, 0, INT64_MAX, &ll)) return 1; sp.seed = (uint64_t)ll; }
        else return cli_fail("chat: unknown option %s (moe chat --help lists them)", a);
    }
    chat c = {.max_answer = max_answer, .messages = json_array()};
    int rc = 1;
    moe_status st;
    if (cli_load(dir, (int)threads, &c.m)) goto done;
    moe_seq_params qp;
    moe_seq_params_defaults(&qp);
    qp.n_ctx = (int)ctx;
    if ((st = moe_tokenizer_load(dir, &c.tok)) || (st = moe_seq_new(c.m, &qp, &c.seq)) ||
        (st = moe_sampler_new(&sp, &c.smp)) || (st = moe_detok_new(c.tok, 1, &c.dt))) {
        rc = cli_fail_status(st);
        goto done;
    }
    const moe_config *cfg = moe_model_config(c.m);
    for (int i = 0; i < cfg->n_eos; i++) c.eos[c.n_eos++] = cfg->eos_token_ids[i];
    if (moe_tokenizer_eos(c.tok) >= 0) c.eos[c.n_eos++] = moe_tokenizer_eos(c.tok);
    if (system) json_array_append_new(c.messages, json_pack("{s:s, s:s}", "role", "system", "content", system));
    /* check the template renders before the first question */
    char *probe = NULL;
    json_t *test = json_deep_copy(c.messages);
    json_array_append_new(test, json_pack("{s:s, s:s}", "role", "user", "content", "hi"));
    char *tj = json_dumps(test, JSON_COMPACT);
    json_decref(test);
    st = moe_chat_render(c.tok, tj, NULL, 1, &probe);
    free(tj);
    moe_free(probe);
    if (st) { rc = cli_fail_status(st); goto done; }

    struct sigaction sa = {0};
    sa.sa_handler = on_sigint; /* no SA_RESTART: a read interrupted by Ctrl-C returns */
    sigaction(SIGINT, &sa, NULL);
    fprintf(stderr, "moe chat: %s (%s). Ctrl-C stops an answer, Ctrl-D ends.\n", dir, cfg->model_type);
    char *line = NULL;
    size_t cap = 0;
    rc = 0;
    for (;;) {
        printf("> ");
        fflush(stdout);
        g_interrupted = 0;
        int r = read_line(&line, &cap);
        if (r < 0) { printf("\n"); continue; }
        if (r == 0) { printf("\n"); break; }
        if (!line[0]) continue;
        json_array_append_new(c.messages, json_pack("{s:s, s:s}", "role", "user", "content", line));
        if ((st = answer(&c))) {
            rc = cli_fail_status(st);
            break;
        }
    }
    free(line);
done:
    json_decref(c.messages);
    moe_detok_free(c.dt);
    moe_sampler_free(c.smp);
    moe_seq_free(c.seq);
    moe_tokenizer_free(c.tok);
    moe_model_free(c.m);
    return rc;
}
