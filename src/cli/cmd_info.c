/* cmd_info.c — moe info: what a model is and what it will cost to run. */
#include <stdio.h>
#include <string.h>

#include "cli.h"

static void help(FILE *f) {
    fprintf(f, "usage: moe info [-m DIR] [--ctx N]\n"
               "  -m DIR    model directory (default %s)\n"
               "  --ctx N   context size for the KV-cache estimate (default 4096)\n",
            MOE_DEFAULT_MODEL);
}

static void human(char *buf, size_t cap, double bytes) {
    const char *u[] = {"B", "KiB", "MiB", "GiB", "TiB"};
    int i = 0;
    while (bytes >= 1024 && i < 4) { bytes /= 1024; i++; }
    snprintf(buf, cap, "%.2f %s", bytes, u[i]);
}

static void count(char *buf, size_t cap, double n) {
    const char *u[] = {"", " K", " M", " B", " T"};
    int i = 0;
    while (n >= 1000 && i < 4) { n /= 1000; i++; }
    snprintf(buf, cap, i ? "%.2f%s" : "%.0f%s", n, u[i]);
}

int cmd_info(int argc, char **argv) {
    const char *dir = cli_default_model(), *v;
    long long ctx = 4096;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { help(stdout); return 0; }
        else if (!strcmp(a, "-m") || !strcmp(a, "--model")) { CLI_VALUE(); dir = v; }
        else if (!strcmp(a, "--ctx")) { CLI_VALUE(); if (cli_int(a, v, 1, 1 << 30, &ctx)) return 1; }
        else return cli_fail("info: unknown option %s (moe info --help lists them)", a);
    }
    moe_model *m;
    if (cli_load(dir, 1, &m)) return 1;
    const moe_config *c = moe_model_config(m);
    char w[32], wa[32], kv[32];
    human(w, sizeof w, (double)c->weight_bytes);
    human(wa, sizeof wa, (double)c->weight_bytes_active);
    int64_t kvb = moe_model_kv_bytes(m, (int)ctx);
    human(kv, sizeof kv, (double)kvb);
    printf("model:        %s\n", dir);
    printf("family:       %s\n", c->model_type);
    printf("dtype:        %s\n", c->dtype);
    if (c->quant_bits)
        printf("quantization: MLX affine, %d-bit, group size %d (modules with their own entry in config.json may differ)\n",
               c->quant_bits, c->quant_group);
    printf("layers:       %d (%d MoE", c->n_layers, c->n_moe_layers);
    if (c->n_linear_layers) printf("; %d gated DeltaNet, %d attention", c->n_linear_layers, c->n_layers - c->n_linear_layers);
    printf(")\n");
    printf("hidden:       %d\n", c->hidden_size);
    printf("attention:    %d heads, %d kv heads, head_dim %d, rope_theta %g", c->n_heads, c->n_kv_heads, c->head_dim,
           (double)c->rope_theta);
    if (c->sliding_window) printf(", sliding window %d", c->sliding_window);
    printf("\n");
    if (c->n_moe_layers < c->n_layers) printf("dense ffn:    %d\n", c->intermediate_size);
    if (c->n_experts)
        printf("experts:      %d, top-%d, width %d%s\n", c->n_experts, c->n_experts_per_tok, c->moe_intermediate_size,
               c->shared_expert_intermediate_size ? ", with a shared expert" : "");
    if (c->shared_expert_intermediate_size) printf("shared:       width %d\n", c->shared_expert_intermediate_size);
    printf("vocab:        %d%s\n", c->vocab_size, c->tie_word_embeddings ? " (tied embeddings)" : "");
    char pt[32], pa[32];
    count(pt, sizeof pt, (double)c->n_params);
    count(pa, sizeof pa, (double)c->n_params_active);
    printf("parameters:   %s total, %s active per token\n", pt, pa);
    printf("weights:      %s on disk (mapped, not copied); %s read per generated token\n", w, wa);
    printf("kv cache:     %s at context %lld (float32%s)\n", kv, ctx,
           c->n_linear_layers ? "; with the linear-attention layers' recurrent state" : "");
    char tot[32];
    human(tot, sizeof tot, (double)(c->weight_bytes + kvb));
    printf("memory:       about %s for weights + KV cache\n", tot);
    printf("devices:      %s (--device)\n", moe_devices());
    moe_model_free(m);
    return 0;
}
