/* cmd_quantize.c — moe quantize: a float model to the mlx-community
 * quantized layout (MLX affine quantization, as mlx-lm's convert -q). */
#include <stdio.h>
#include <string.h>

#include "cli.h"

static void help(FILE *f) {
    fprintf(f, "usage: moe quantize -m IN -o OUT [--bits 4] [--group-size 64] [--force]\n"
               "  Writes the float model in IN (config.json + safetensors, F32/F16/BF16) into OUT\n"
               "  quantized as mlx-lm's `convert -q` does: MLX affine quantization, bit for bit;\n"
               "  experts stacked as switch_mlp; the tokenizer and other files copied.\n"
               "  -m IN             the float model directory\n"
               "  -o OUT            the output directory (created; an existing model there is refused)\n"
               "  --bits B          bits per weight: 4 (default) or 8; also 2, 3, 5, 6\n"
               "  --group-size G    weights per scale and bias: 32, 64 (default) or 128\n"
               "  --force           replace a model already in OUT\n");
}

int cmd_quantize(int argc, char **argv) {
    moe_quantize_params p;
    moe_quantize_params_defaults(&p);
    const char *in = NULL, *out = NULL, *v;
    long long ll;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { help(stdout); return 0; }
        else if (!strcmp(a, "-m")) { CLI_VALUE(); in = v; }
        else if (!strcmp(a, "-o")) { CLI_VALUE(); out = v; }
        else if (!strcmp(a, "--bits")) { CLI_VALUE(); if (cli_int(a, v, 1, 64, &ll)) return 1; p.bits = (int)ll; }
        else if (!strcmp(a, "--group-size")) { CLI_VALUE(); if (cli_int(a, v, 1, 1 << 20, &ll)) return 1; p.group_size = (int)ll; }
        else if (!strcmp(a, "--force")) p.force = 1;
        else return cli_fail("quantize: unknown option %s (moe quantize --help lists them)", a);
    }
    if (!in || !out) return cli_fail("quantize: -m and -o are required (see moe quantize --help)");
    cli_progress_state ps = {0};
    p.progress = cli_progress;
    p.progress_ctx = &ps;
    double t0 = cli_now();
    moe_status st = moe_quantize(in, out, &p);
    if (st) return cli_fail_status(st);
    fprintf(stderr, "wrote %s (%d-bit, group %d) in %.1f s\n", out, p.bits, p.group_size, cli_now() - t0);
    return 0;
}
