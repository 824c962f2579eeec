/* cmd_synth.c — moe synth: write a random model of a real model's shapes. */
#include <stdio.h>
#include <string.h>

#include "cli.h"

static void help(FILE *f) {
    fprintf(f, "usage: moe synth --like NAME [--layers N] [--dtype bf16|f16|f32] [--bits 4|8 [--group-size 64]]\n"
               "                 [--skew S] [--seed S] -o DIR\n"
               "  --like NAME   one of:");
    int col = 21;
    for (const char *const *s = moe_synth_shapes(); *s; s++) { /* wrapped at 88 columns */
        if (col + 1 + (int)strlen(*s) > 88) col = fprintf(f, "\n               ") - 1;
        col += fprintf(f, " %s", *s);
    }
    fprintf(f, "\n                (qwen3-coder-next and qwen3-next-80b-a3b: one shape, 48 layers, 3 of 4\n"
               "                gated DeltaNet, 512 experts, top-10; about 45 GB at --bits 4.\n"
               "                test-moe and test-next are no real models: tiny MoEs for tests, hidden 64,\n"
               "                4 layers; test-moe Mixtral-like, 16 experts, top-2; test-next Qwen3-Next-like,\n"
               "                32 experts, top-4, a shared expert)\n"
               "  --layers N    fewer layers than the real model (default: all)\n"
               "  --dtype T     weight dtype (default bf16; with --bits, of scales, biases and norms)\n"
               "  --bits B      the quantized mlx-community layout (as moe quantize writes) with random\n"
               "                B-bit values: 4 or 8 (also 2, 3, 5, 6); split into 5 GiB shards\n"
               "  --group-size G  weights per scale and bias with --bits: 32, 64 (default) or 128\n"
               "  --skew S      MoE shapes: routing skew, 0 to 4 (default 1). In each layer the expert\n"
               "                of popularity rank r is chosen for a share of the tokens ~ 1/r^S\n"
               "                (Zipf, at most 90%% of them), each layer with its own ranking;\n"
               "                0: every expert equally likely. Set through the embedding and the\n"
               "                routers' weights: same sizes, same forward pass\n"
               "  -o DIR        output directory (created)\n");
}

int cmd_synth(int argc, char **argv) {
    moe_synth_params p;
    moe_synth_params_defaults(&p);
    const char *out = NULL, *v;
    long long ll;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { help(stdout); return 0; }
        else if (!strcmp(a, "--like")) { CLI_VALUE(); p.like = v; }
        else if (!strcmp(a, "--dtype")) { CLI_VALUE(); p.dtype = v; }
        else if (!strcmp(a, "-o")) { CLI_VALUE(); out = v; }
        else if (!strcmp(a, "--layers")) { CLI_VALUE(); if (cli_int(a, v, 1, 4096, &ll)) return 1; p.n_layers = (int)ll; }
        else if (!strcmp(a, "--bits")) { CLI_VALUE(); if (cli_int(a, v, 1, 64, &ll)) return 1; p.bits = (int)ll; }
        else if (!strcmp(a, "--group-size")) { CLI_VALUE(); if (cli_int(a, v, 1, 1 << 20, &ll)) return 1; p.group_size = (int)ll; }
        else if (!strcmp(a, "--skew")) { CLI_VALUE(); if (cli_float(a, v, 0, 4, &p.skew)) return 1; }
        else if (!strcmp(a, "--seed")) { CLI_VALUE(); if (cli_int(a, v, 0, INT64_MAX, &ll)) return 1; p.seed = (uint64_t)ll; }
        else return cli_fail("synth: unknown option %s (moe synth --help lists them)", a);
    }
    if (!p.like || !out) return cli_fail("synth: --like and -o are required (see moe synth --help)");
    cli_progress_state ps = {0};
    p.progress = cli_progress;
    p.progress_ctx = &ps;
    moe_status st = moe_synth(&p, out);
    if (st) return cli_fail_status(st);
    fprintf(stderr, "wrote %s\n", out);
    return 0;
}
