/* cmd_bench.c — moe bench: prompt-processing and generation speed, time to
 * first token, peak memory, and the bytes of weights read per generated token
 * (so GB/s can be set against the machine's memory bandwidth). The prompt is
 * random token ids from a fixed seed; generation is greedy. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static void help(FILE *f) {
    fprintf(f, "usage: moe bench [-m DIR] [-p N] [-n N] [-r R] [-b N] [--kv-bits N] [--json] [model options]\n"
               "  -m DIR   model directory (default %s)\n"
               "  -p N     prompt tokens (default 128)\n"
               "  -n N     generated tokens (default 32)\n"
               "  -r R     repetitions; the best is reported (default 3)\n"
               "  -b N     prompt tokens per forward pass (default 256)\n"
               "  --kv-bits N  KV cache: 32 = float32 (default), 8 or 4 bits a value\n"
               "  --json   one JSON object on stdout\n",
            MOE_DEFAULT_MODEL);
    cli_model_help(f);
}

int cmd_bench(int argc, char **argv) {
    const char *dir = cli_default_model(), *v;
    long long np = 128, ng = 32, reps = 3, kv_bits = 0, batch = 256;
    cli_model_opts mo;
    cli_model_opts_init(&mo);
    int json = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        int mr = cli_model_opt(&mo, argc, argv, &i);
        if (mr < 0) return 1;
        if (mr) continue;
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { help(stdout); return 0; }
        else if (!strcmp(a, "--json")) json = 1;
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) { CLI_VALUE(); dir = v; }
        else if (!strcmp(a, "-p")) { CLI_VALUE(); if (cli_int(a, v, 1, 1 << 20, &np)) return 1; }
        else if (!strcmp(a, "-n")) { CLI_VALUE(); if (cli_int(a, v, 1, 1 << 20, &ng)) return 1; }
        else if (!strcmp(a, "-r")) { CLI_VALUE(); if (cli_int(a, v, 1, 1000, &reps)) return 1; }
        else if (!strcmp(a, "--kv-bits")) { CLI_VALUE(); if (cli_int(a, v, 0, 64, &kv_bits)) return 1; }
        else if (!strcmp(a, "-b") || !strcmp(a, "--batch")) { CLI_VALUE(); if (cli_int(a, v, 1, 1 << 16, &batch)) return 1; }
        else return cli_fail("bench: unknown option %s (moe bench --help lists them)", a);
    }
    moe_model *m;
    double t_launch = cli_now();
    if (cli_load_model(dir, &mo, &m)) return 1;
    double load_s = cli_now() - t_launch, copied_gb = (double)moe_model_copied_bytes(m) / 1e9;
    const moe_config *c = moe_model_config(m);
    moe_offload_info off;
    moe_model_offload_info(m, &off);
    int32_t *prompt = malloc((size_t)np * sizeof *prompt);
    moe_seq_params qp;
    moe_seq_params_defaults(&qp);
    qp.n_ctx = (int)(np + ng + 1);
    qp.kv_bits = (int)kv_bits;
    qp.n_batch = (int)batch;
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
    double best_pp = 0, best_tg = 0, best_ttft = 1e30, first_ttft = 0, gen_s = 0;
    moe_expert_stats gen = {0}; /* offloading: the expert cache over every generation phase */
    for (long long r = 0; !st && r < reps; r++) {
        moe_seq_reset(s);
        double t0 = cli_now();
        st = moe_seq_eval(s, prompt, (size_t)np, NULL, 0);
        double t1 = cli_now();
        int32_t tok;
        if (!st) st = moe_generate_next(s, smp, &tok);
        double ttft = cli_now() - t0;
        if (r == 0) first_ttft = ttft;
        moe_model_reset_expert_stats(m);
        double t2 = cli_now();
        for (long long i = 1; !st && i <= ng; i++) st = moe_generate_next(s, smp, &tok); /* ng tokens run through */
        double t3 = cli_now();
        if (st) break;
        moe_expert_stats k;
        if (off.enabled && moe_model_expert_stats(m, -1, &k) == MOE_OK) {
            gen.hits += k.hits, gen.misses += k.misses, gen.skipped += k.skipped, gen.bytes_read += k.bytes_read;
            gen.predicted += k.predicted, gen.predicted_right += k.predicted_right, gen.read_seconds += k.read_seconds;
        }
        gen_s += t3 - t2;
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
        double peak_mb = (double)cli_peak_rss() / 1e6, gbs = best_tg * (double)c->weight_bytes_active / 1e9;
        double toks = (double)(ng * reps), used = (double)(gen.hits + gen.misses + gen.skipped);
        double hit = used > 0 ? (double)gen.hits / used : 0, per_tok = (double)gen.bytes_read / toks;
        double read_gbps = gen_s > 0 ? (double)gen.bytes_read / gen_s / 1e9 : 0;
        double dev_gbps = gen.read_seconds > 0 ? (double)gen.bytes_read / gen.read_seconds / 1e9 : 0;
        double guess = gen.predicted ? (double)gen.predicted_right / (double)gen.predicted : 0;
        if (json) {
            printf("{\"model\":\"%s\",\"family\":\"%s\",\"dtype\":\"%s\",\"device\":\"%s\",\"threads\":%d,\"prompt_tokens\":%lld,"
                   "\"gen_tokens\":%lld,\"prompt_tps\":%.3f,\"gen_tps\":%.3f,\"ttft_ms\":%.2f,\"peak_rss_mb\":%.1f,"
                   "\"bytes_per_token\":%lld,\"gen_gbps\":%.3f,\"load_s\":%.3f,\"copied_gb\":%.3f,\"first_ttft_ms\":%.2f,"
                   "\"launch_ttft_s\":%.3f",
                   dir, c->model_type, c->dtype, moe_model_device(m), moe_model_threads(m), np, ng, best_pp, best_tg,
                   best_ttft * 1e3, peak_mb, (long long)c->weight_bytes_active, gbs, load_s, copied_gb, first_ttft * 1e3,
                   load_s + first_ttft);
            if (off.enabled)
                printf(",\"offload\":{\"capacity\":%d,\"n_experts\":%d,\"cache_gb\":%.3f,\"store\":\"%s\",\"store_built\":%d,"
                       "\"build_s\":%.2f,\"preloaded\":%lld,\"preload_s\":%.3f,\"hit_rate\":%.4f,\"skipped_per_token\":%.3f,"
                       "\"read_bytes_per_token\":%.0f,\"read_gbps\":%.3f,\"device_read_gbps\":%.3f,\"prefetch_accuracy\":%.4f,"
                       "\"on_gpu\":%d,\"host_gb\":%.3f}",
                       off.capacity, off.n_experts, (double)off.cache_bytes / 1e9,
                       off.store == MOE_STORE_MODEL ? "model" : "pack", off.built, off.build_seconds,
                       (long long)off.preloaded, off.preload_seconds, hit, (double)gen.skipped / toks, per_tok, read_gbps,
                       dev_gbps, guess, off.on_device, (double)off.host_bytes / 1e9);
            printf("}\n");
        } else {
            printf("%s (%s, %s, %s): prompt %lld tok: %.2f tok/s | generation %lld tok: %.2f tok/s "
                   "(%.2f GB/s of weights) | first token %.1f ms | peak RSS %.1f MB | load %.2f s%s\n",
                   dir, c->model_type, c->dtype, moe_model_device(m), np, best_pp, ng, best_tg, gbs, best_ttft * 1e3, peak_mb,
                   load_s, copied_gb > 0 ? " (weights copied into memory)" : "");
            if (off.enabled)
                printf("offload: %d of %d experts per layer in %s memory, read from %s | generation: hit rate %.1f%%, %.1f MB read per token, "
                       "%.2f GB/s read (%.2f GB/s while reading), %.2f experts skipped per token, next-layer guesses %.1f%% right "
                       "| first token after launch %.2f s\n",
                       off.capacity, off.n_experts, off.on_device ? "GPU" : "host",
                       off.host_bytes ? "pinned host memory" : off.store == MOE_STORE_MODEL ? "the model's files" : "the pack", 100 * hit, per_tok / 1e6, read_gbps, dev_gbps, (double)gen.skipped / toks,
                       100 * guess, load_s + first_ttft);
        }
    }
    free(prompt);
    moe_sampler_free(smp);
    moe_seq_free(s);
    cli_model_report(m, &mo, stderr);
    moe_model_free(m);
    return rc;
}
