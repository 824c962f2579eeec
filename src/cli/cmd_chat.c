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
               "  --kv-bits N       KV cache: 32 = float32 (default), 8 or 4 bits a value\n"
               "  --temp T, --top-k K, --top-p P, --min-p P, --repeat-penalty R, --seed S   sampling, as in generate\n"
               "Type a message and press Enter. Ctrl-C stops an answer; Ctrl-D ends the chat.\n",
            MOE_DEFAULT_MODEL);
    cli_model_help(f);
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
    /* the last turn as the model saw it: rendered prompt + answer text, and
     * their token ids (prompt ids + the answer's own ids, EOS excluded) */
    char *prev_text;
    int32_t *prev_ids;
    size_t n_prev;
} chat;

/* Brings the sequence to the rendered conversation, reusing the shared prefix. */
static moe_status feed_prompt(chat *c, const int32_t *ids, size_t n, size_t *reused) {
    size_t have;
    const int32_t *old = moe_seq_tokens(c->seq, &have);
    size_t common = 0;
    while (common < have && common < n && old[common] == ids[common]) common++;
    common = (size_t)moe_seq_restore_point(c->seq, (int64_t)common); /* a window or a recurrent state may go back less */
    moe_status tst = moe_seq_truncate(c->seq, (int64_t)common);
    if (!tst && common == n && !moe_seq_has_logits(c->seq)) { /* all cached: fresh logits from one token again */
        common = (size_t)moe_seq_restore_point(c->seq, (int64_t)n - 1);
        tst = moe_seq_truncate(c->seq, (int64_t)common);
    }
    if (tst != MOE_OK) {
        moe_seq_reset(c->seq);
        common = 0;
    }
    *reused = common;
    moe_status st = moe_seq_eval(c->seq, ids + common, n - common, NULL, 0);
    if (!st) moe_seq_snapshot(c->seq); /* a turn boundary to come back to (no-op for attention-only models) */
    return st;
}

/* The ids of the rendered conversation. When it extends the last turn's text
 * (prompt + answer), the answer keeps the ids the model produced and only the
 * new text is tokenized: re-tokenizing the answer could split it differently
 * and force the cache back to where the answer began. */
static moe_status prompt_ids(chat *c, const char *prompt, int32_t **ids, size_t *n) {
    size_t pl = c->prev_text ? strlen(c->prev_text) : 0;
    if (!pl || strncmp(prompt, c->prev_text, pl) != 0) return moe_tokenize(c->tok, prompt, strlen(prompt), 0, ids, n);
    int32_t *tail;
    size_t nt;
    moe_status st = moe_tokenize(c->tok, prompt + pl, strlen(prompt + pl), 0, &tail, &nt);
    if (st) return st;
    int32_t *all = malloc((c->n_prev + nt + 1) * sizeof *all);
    if (!all) {
        moe_free(tail);
        return MOE_ENOMEM;
    }
    memcpy(all, c->prev_ids, c->n_prev * sizeof *all);
    memcpy(all + c->n_prev, tail, nt * sizeof *all);
    moe_free(tail);
    *ids = all;
    *n = c->n_prev + nt;
    return MOE_OK;
}

/* Whether the conversation rendered without a generation prompt starts with `prev`. */
static int extends(chat *c, const char *prev) {
    char *json = json_dumps(c->messages, JSON_COMPACT), *out = NULL;
    int ok = json && moe_chat_render(c->tok, json, NULL, 0, &out) == MOE_OK && strncmp(out, prev, strlen(prev)) == 0;
    free(json);
    moe_free(out);
    return ok;
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
    st = prompt_ids(c, prompt, &ids, &n);
    if (!st && n == 0) st = MOE_EINVAL;
    double t0 = cli_now();
    if (!st) st = feed_prompt(c, ids, n, &reused);
    moe_detok_reset(c->dt);
    for (size_t i = 0; !st && i < n; i++) { /* the answer decodes as a continuation of the prompt */
        size_t pl;
        moe_detok_push(c->dt, ids[i], &pl);
    }
    if (st) {
        moe_free(ids);
        moe_free(prompt);
        return st;
    }
    double t1 = cli_now();
    /* text = prompt + answer; ids grow with the answer's tokens */
    size_t plen = strlen(prompt), cap = plen + 256, len = plen, idcap = n + 256;
    char *text = malloc(cap);
    int32_t *all = malloc(idcap * sizeof *all);
    if (!text || !all) {
        free(text);
        free(all);
        moe_free(ids);
        moe_free(prompt);
        return MOE_ENOMEM;
    }
    memcpy(text, prompt, plen + 1);
    memcpy(all, ids, n * sizeof *all);
    size_t n_all = n;
    moe_free(ids);
    moe_free(prompt);
    long long k = 0; /* a Ctrl-C during the prompt (reset when the line was read) skips the answer */
    for (; k < c->max_answer && !g_interrupted; k++) {
        int32_t t;
        if ((st = moe_generate_next(c->seq, c->smp, &t))) break;
        int end = 0;
        for (int i = 0; i < c->n_eos; i++) end |= c->eos[i] == t;
        if (end) break;
        if (n_all == idcap) {
            int32_t *na = realloc(all, (idcap *= 2) * sizeof *na);
            if (!na) { st = MOE_ENOMEM; break; }
            all = na;
        }
        all[n_all++] = t;
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
    char *nt = len + pl + 1 > cap ? realloc(text, len + pl + 1) : text;
    if (nt) {
        text = nt;
        memcpy(text + len, tail, pl + 1);
        len += pl;
    }
    if (g_interrupted) printf(" [stopped]");
    printf("\n");
    double t2 = cli_now();
    fprintf(stderr, "[%zu prompt tokens, %zu reused from the cache, %.1f tok/s; %lld answer tokens, %.1f tok/s]\n", n,
            reused, (double)(n - reused) / (t1 - t0 > 0 ? t1 - t0 : 1e-9), k, (double)k / (t2 - t1 > 0 ? t2 - t1 : 1e-9));
    if (st == MOE_ERANGE) fprintf(stderr, "moe: the context is full; start a new chat or raise --ctx\n");
    /* Which form of the answer lets the next rendering extend prev_text: as
     * generated, or without its leading space (Mistral-style templates add
     * ' ' before an assistant message themselves). */
    size_t lead = 0;
    while (plen + lead < len && (text[plen + lead] == ' ' || text[plen + lead] == '\n')) lead++;
    json_t *msg = json_pack("{s:s, s:s%}", "role", "assistant", "content", text + plen, len - plen);
    json_array_append_new(c->messages, msg);
    if (lead && !extends(c, text)) json_object_set_new(msg, "content", json_stringn(text + plen + lead, len - plen - lead));
    free(c->prev_text);
    free(c->prev_ids);
    c->prev_text = text;
    c->prev_ids = all;
    c->n_prev = n_all;
    return st == MOE_ERANGE ? MOE_OK : st;
}

int cmd_chat(int argc, char **argv) {
    const char *dir = cli_default_model(), *system = NULL, *v;
    cli_model_opts mo;
    cli_model_opts_init(&mo);
    long long ctx = 4096, max_answer = 1024, kv_bits = 0, ll;
    double d;
    moe_sampler_params sp;
    moe_sampler_params_defaults(&sp);
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int mr = cli_model_opt(&mo, argc, argv, &i);
        if (mr < 0) return 1;
        if (mr) continue;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { help(stdout); return 0; }
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) { CLI_VALUE(); dir = v; }
        else if (!strcmp(a, "--system")) { CLI_VALUE(); system = v; }
        else if (!strcmp(a, "-n")) { CLI_VALUE(); if (cli_int(a, v, 1, 1 << 30, &max_answer)) return 1; }
        else if (!strcmp(a, "--ctx")) { CLI_VALUE(); if (cli_int(a, v, 16, 1 << 30, &ctx)) return 1; }
        else if (!strcmp(a, "--kv-bits")) { CLI_VALUE(); if (cli_int(a, v, 0, 64, &kv_bits)) return 1; }
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
    if (cli_load_model(dir, &mo, &c.m)) goto done;
    moe_seq_params qp;
    moe_seq_params_defaults(&qp);
    qp.n_ctx = (int)ctx;
    qp.kv_bits = (int)kv_bits;
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
    free(c.prev_text);
    free(c.prev_ids);
    moe_detok_free(c.dt);
    moe_sampler_free(c.smp);
    moe_seq_free(c.seq);
    moe_tokenizer_free(c.tok);
    cli_model_report(c.m, &mo, stderr);
    moe_model_free(c.m);
    return rc;
}
