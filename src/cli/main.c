/* main.c — the moe command: dispatches to one subcommand per file. */
#include <stdio.h>
#include <string.h>

#include "cli.h"

static const struct {
    const char *name;
    int (*fn)(int, char **);
    const char *what;
} k_cmds[] = {
    {"generate", cmd_generate, "generate text (or token ids) from a prompt"},
    {"chat", cmd_chat, "an interactive chat through the model's chat template"},
    {"serve", cmd_serve, "an OpenAI- and Anthropic-compatible HTTP server"},
    {"tokenize", cmd_tokenize, "text to token ids"},
    {"detokenize", cmd_detokenize, "token ids to text"},
    {"perplexity", cmd_perplexity, "how well a model predicts a text file"},
    {"logits", cmd_logits, "write raw float32 logits for a token sequence"},
    {"info", cmd_info, "describe a model: family, shapes, parameters, memory"},
    {"bench", cmd_bench, "measure prompt and generation speed"},
    {"quantize", cmd_quantize, "quantize a float model to MLX's 4- or 8-bit layout (as mlx-lm)"},
    {"pack", cmd_pack, "write a MoE model's experts into the pack that offloading reads"},
    {"profile", cmd_profile, "count how often each expert is chosen over a text (for offloading)"},
    {"synth", cmd_synth, "write a random model of a real model's shapes"},
};

static void usage(FILE *f) {
    fprintf(f, "moe %s — run Mistral-family and Mixture-of-Experts models on your own machine\n\n"
               "usage: moe COMMAND [options]   (moe COMMAND --help for its options)\n\ncommands:\n",
            MOE_VERSION);
    for (size_t i = 0; i < sizeof k_cmds / sizeof *k_cmds; i++) fprintf(f, "  %-10s %s\n", k_cmds[i].name, k_cmds[i].what);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        usage(stderr);
        return 1;
    }
    if (!strcmp(argv[1], "--help") || !strcmp(argv[1], "-h") || !strcmp(argv[1], "help")) {
        usage(stdout);
        return 0;
    }
    if (!strcmp(argv[1], "--version")) {
        printf("moe %s\n", MOE_VERSION);
        return 0;
    }
    for (size_t i = 0; i < sizeof k_cmds / sizeof *k_cmds; i++)
        if (!strcmp(argv[1], k_cmds[i].name)) return k_cmds[i].fn(argc - 1, argv + 1);
    fprintf(stderr, "moe: unknown command \"%s\"\n\n", argv[1]);
    usage(stderr);
    return 1;
}
