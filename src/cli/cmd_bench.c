/* cmd_bench.c — moe bench: prompt-processing and generation speed, time to
 * first token, peak memory, and the bytes of weights read per generated token
 * (so GB/s can be set against the machine's memory bandwidth). The prompt is
 * random token ids from a fixed seed; generation is greedy. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include "cli.h"

static void help(FILE *f) {
    fprintf(f, "usage: moe bench [-m DIR] [-p N] [-n N] [-r R] [-t N] [--kv-bits N] [--json]\n"
               "  -m DIR   model directory (default %s)\n"
               "  -p N     prompt tokens (default 128)\n"
               "  -n N     generated tokens (default 32)\n"
               "  -r R     repetitions; the best is reported (default 3)\n"
               "  -t N     threads (default: all cores)\n"
               "  --kv-bits N  KV cache: 32 = float32 (default), 8 or 4 bits a value\n"
               "  --json   one JSON object on stdout\n",
            MOE_DEFAULT_MODEL);
}

int cmd_bench(int argc, char **argv) {
    const char *dir = cli_default_model(), *v;
    long long np = 128, ng = 32, reps = 3, threads = 0, kv_bits = 0;
    int json = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { help(stdout); return 0; }
        else if (!strcmp(a, "--json")) json = 1;
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) { CLI_VALUE(); dir = v; }
        else if (!strcmp(a, "-p")) { CLI_VALUE(); if (cli_int(a, v, 1, 1 << 20, &np)) return 1; }
        else if (!strcmp(a, "-n")) { CLI_VALUE(); if (cli_int(a, v, 1, 1 << 20, &ng)) return 1; }
        else if (!strcmp(a, "-r")) { CLI_VALUE(); if (cli_int(a, v, 1, 1000, &reps)) return 1; }
        else if (!strcmp(a, "--kv-bits")) { CLI_VALUE(); if (cli_int(a, v, 0, 64, &kv_bits)) return 1; }
        else if (!strcmp(a, "-t") || !strcmp(a, "--threads")) { CLI_VALUE(); if (cli_int(a, v, 0, 4096, &threads)) return 1; }
        else return cli_fail("bench: unknown option %s (moe bench --help lists them)", a);
    }
    moe_model *m;
    if (cli_load(dir, (int)threads, &m)) return 1;
    const moe_config *c = moe_model_config(m);
    int32_t *prompt = malloc((size_t)np * sizeof *prompt);
    moe_seq_params qp;
    moe_seq_params_defaults(&qp);
    qp.n_ctx = (int)(np + ng + 1);
    qp.kv_bits = (int)kv_bits;
    moe_seq *s = NULL;
    moe_sampler *smp = NULL;
    moe_sampler_params sp;
    moe_sampler_params_defaults(&sp);
    sp.temperature = 0;
    moe_status st = prompt ? moe_seq_new(m, &qp, &s) : MOE_ENOMEM;
    if (!st) st = moe_sampler_new(&sp, &smp);
    uint64_t x = 0x2545f4914f6cdd1dull;
    for (long long i = 0; prompt && i < np; i++) {
        x ^= x << 13; x ^= x >> 7; x ^= x << 17;
        prompt[i] = (int32_t)(x % (uint64_t)c->vocab_size);
    }
    double best_pp = 0, best_tg = 0, best_ttft = 1e30;
    for (long long r = 0; !st && r < reps; r++) {
        moe_seq_reset(s);
        double t0 = cli_now();
        st = moe_seq_eval(s, prompt, (size_t)np, NULL, 0);
        double t1 = cli_now();
        int32_t tok;
        if (!st) st = moe_generate_next(s, smp, &tok);
        double ttft = cli_now() - t0;
        double t2 = cli_now();
        for (long long i = 1; !st && i <= ng; i++) st = moe_generate_next(s, smp, &tok); /* ng tokens run through */
        double t3 = cli_now();
        if (st) break;
        double pp = (double)np / (t1 - t0), tg = (double)ng / (t3 - t2);
        if (pp > best_pp) best_pp = pp;
        if (tg > best_tg) best_tg = tg;
        if (ttft < best_ttft) best_ttft = ttft;
        if (!json) fprintf(stderr, "run %lld: prompt %.2f tok/s, generation %.2f tok/s\n", r + 1, pp, tg);
    }
    int rc = 0;
    if (st) {
        rc = cli_fail_status(st);
    } else {
        struct rusage ru;
        getrusage(RUSAGE_SELF, &ru);
        double gbs = best_tg * (double)c->weight_bytes_active / 1e9;
        if (json)
            printf("{\"model\":\"%s\",\"family\":\"%s\",\"dtype\":\"%s\",\"threads\":%d,\"prompt_tokens\":%lld,"
                   "\"gen_tokens\":%lld,\"prompt_tps\":%.3f,\"gen_tps\":%.3f,\"ttft_ms\":%.2f,\"peak_rss_mb\":%.1f,"
                   "\"bytes_per_token\":%lld,\"gen_gbps\":%.3f}\n",
                   dir, c->model_type, c->dtype, moe_model_threads(m), np, ng, best_pp, best_tg, best_ttft * 1e3,
                   (double)ru.ru_maxrss / 1024.0, (long long)c->weight_bytes_active, gbs);
        else
            printf("%s (%s, %s, %d threads): prompt %lld tok: %.2f tok/s | generation %lld tok: %.2f tok/s "
                   "(%.2f GB/s of weights) | first token %.1f ms | peak RSS %.1f MB\n",
                   dir, c->model_type, c->dtype, moe_model_threads(m), np, best_pp, ng, best_tg, gbs, best_ttft * 1e3,
                   (double)ru.ru_maxrss / 1024.0);
    }
    free(prompt);
    moe_sampler_free(smp);
    moe_seq_free(s);
    moe_model_free(m);
    return rc;
}
