/* cmd_serve.c — moe serve: the OpenAI- and Anthropic-compatible HTTP server
 * (src/server/). Parses flags, loads the model, serves until SIGINT or
 * SIGTERM, then stops cleanly: running requests end, every connection
 * closes, everything is freed. */
#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../server/server.h"
#include "cli.h"

static void help(FILE *f) {
    fprintf(f, "usage: moe serve [-m DIR] [options]\n"
               "  -m DIR            model directory (default %s)\n"
               "  --host ADDR       address to listen on (default 127.0.0.1; 0.0.0.0 for every interface)\n"
               "  --port N          port (default 8080; 0 picks a free one)\n"
               "  --api-key KEY     require KEY as \"Authorization: Bearer KEY\" or \"x-api-key: KEY\"\n"
               "                    (default: $MOE_API_KEY, else none)\n"
               "  --model-name NAME the model's name in /v1/models and answers (default: the directory's name)\n"
               "  --ctx N           context of each slot, tokens (default: the model's, at most 4096)\n"
               "  --parallel N      requests served at once, each in its own KV cache (default 2); more wait in a queue\n"
               "  --kv-bits N       KV cache storage: 32 = float32 (default), 8 or 4 = quantized\n"
               "  --max-body SIZE   largest request body, bytes with an optional K, M or G (default 16M)\n"
               "Endpoints: POST /v1/chat/completions, /v1/completions, /v1/messages, /v1/messages/count_tokens;\n"
               "GET /v1/models, /health, /metrics.\n",
            MOE_DEFAULT_MODEL);
    cli_model_help(f);
}

/* "16M" -> bytes; 0 on success. */
/* The last component of a directory path ("models/tiny-mixtral/" -> "tiny-mixtral"). */
static void dir_name(const char *dir, char *out, size_t cap) {
    size_t n = strlen(dir);
    while (n > 1 && dir[n - 1] == '/') n--;
    size_t b = n;
    while (b > 0 && dir[b - 1] != '/') b--;
    snprintf(out, cap, "%.*s", (int)(n - b), dir + b);
    if (!out[0]) snprintf(out, cap, "moe");
}

int cmd_serve(int argc, char **argv) {
    const char *dir = cli_default_model(), *v;
    long long ll;
    int64_t size;
    cli_model_opts mo;
    cli_model_opts_init(&mo);
    char name[256] = {0};
    srv_params sp = {.host = "127.0.0.1", .port = 8080, .api_key = getenv("MOE_API_KEY"), .n_parallel = 2,
                     .max_body = 16u << 20};
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int mr = cli_model_opt(&mo, argc, argv, &i);
        if (mr < 0) return 1;
        if (mr) continue;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { help(stdout); return 0; }
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) { CLI_VALUE(); dir = v; }
        else if (!strcmp(a, "--host")) { CLI_VALUE(); sp.host = v; }
        else if (!strcmp(a, "--port")) { CLI_VALUE(); if (cli_int(a, v, 0, 65535, &ll)) return 1; sp.port = (int)ll; }
        else if (!strcmp(a, "--api-key")) { CLI_VALUE(); sp.api_key = v; }
        else if (!strcmp(a, "--model-name")) { CLI_VALUE(); snprintf(name, sizeof name, "%s", v); }
        else if (!strcmp(a, "--ctx")) { CLI_VALUE(); if (cli_int(a, v, 16, 1 << 24, &ll)) return 1; sp.n_ctx = (int)ll; }
        else if (!strcmp(a, "--parallel")) { CLI_VALUE(); if (cli_int(a, v, 1, 256, &ll)) return 1; sp.n_parallel = (int)ll; }
        else if (!strcmp(a, "--kv-bits")) { CLI_VALUE(); if (cli_int(a, v, 0, 64, &ll)) return 1; sp.kv_bits = (int)ll; }
        else if (!strcmp(a, "--max-body")) { CLI_VALUE(); if (cli_size(a, v, &size)) return 1; sp.max_body = (size_t)size; }
        else return cli_fail("serve: unknown option %s (moe serve --help lists them)", a);
    }
    if (!name[0]) dir_name(dir, name, sizeof name);
    sp.model_name = name;

    /* SIGINT/SIGTERM are taken by sigwait below: blocked here, before any
     * thread starts, so that every thread inherits the mask. */
    sigset_t stop_sigs;
    sigemptyset(&stop_sigs);
    sigaddset(&stop_sigs, SIGINT);
    sigaddset(&stop_sigs, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &stop_sigs, NULL);
    signal(SIGPIPE, SIG_IGN); /* a client gone mid-write is an error return, not a signal */

    moe_model *m = NULL;
    moe_tokenizer *tok = NULL;
    srv *s = NULL;
    char err[512];
    int rc = 1;
    moe_status st;
    if (cli_load_model(dir, &mo, &m)) goto done;
    if ((st = moe_tokenizer_load(dir, &tok))) {
        rc = cli_fail_status(st);
        goto done;
    }
    if (srv_start(m, tok, &sp, &s, err, sizeof err)) {
        rc = cli_fail("serve: %s", err);
        goto done;
    }
    const moe_config *cfg = moe_model_config(m);
    moe_seq_params qp;
    moe_seq_params_defaults(&qp);
    qp.n_ctx = sp.n_ctx;
    qp.kv_bits = sp.kv_bits;
    int v6 = strchr(sp.host, ':') != NULL;
    fprintf(stderr, "moe serve: %s (%s) as \"%s\", %d slot%s, KV cache %.1f MiB; listening on http://%s%s%s:%d%s\n", dir,
            cfg->model_type, name, sp.n_parallel, sp.n_parallel == 1 ? "" : "s",
            (double)moe_seq_kv_bytes(m, &qp) * sp.n_parallel / 1048576.0, v6 ? "[" : "", sp.host, v6 ? "]" : "",
            srv_port(s), sp.api_key && sp.api_key[0] ? " (API key required)" : "");
    int sig = 0;
    sigwait(&stop_sigs, &sig);
    fprintf(stderr, "moe serve: %s, stopping\n", sig == SIGINT ? "SIGINT" : "SIGTERM");
    rc = 0;
done:
    srv_stop(s);
    moe_tokenizer_free(tok);
    cli_model_report(m, &mo, stderr);
    moe_model_free(m);
    return rc;
}
