/* examples/generate.c — libmoe on one page: load a model, feed a prompt of
 * token ids, and sample tokens one at a time with the generation iterator.
 *   usage: example_generate MODEL_DIR [N_TOKENS] [ID ...]  */
#include <stdio.h>
#include <stdlib.h>

#include "moe.h"

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s MODEL_DIR [N_TOKENS] [ID ...]\n", argv[0]);
        return 1;
    }
    int n_gen = argc > 2 ? atoi(argv[2]) : 16;
    int32_t prompt[64] = {1};
    int n_prompt = 0;
    for (int i = 3; i < argc && n_prompt < 64; i++) prompt[n_prompt++] = atoi(argv[i]);
    if (n_prompt == 0) n_prompt = 1;

    moe_model *model = NULL;
    moe_seq *seq = NULL;
    moe_sampler *sampler = NULL;
    moe_status st = moe_model_load(argv[1], NULL, &model);
    if (st == MOE_OK) st = moe_seq_new(model, NULL, &seq);
    moe_sampler_params sp;
    moe_sampler_params_defaults(&sp);
    sp.temperature = 0; /* greedy */
    if (st == MOE_OK) st = moe_sampler_new(&sp, &sampler);
    if (st == MOE_OK) st = moe_seq_eval(seq, prompt, (size_t)n_prompt, NULL, 0);
    for (int i = 0; st == MOE_OK && i < n_gen; i++) {
        int32_t tok;
        st = moe_generate_next(seq, sampler, &tok);
        if (st == MOE_OK) printf("%s%d", i ? " " : "", tok);
    }
    printf("\n");
    if (st != MOE_OK) fprintf(stderr, "error: %s\n", moe_errmsg());
    moe_sampler_free(sampler);
    moe_seq_free(seq);
    moe_model_free(model);
    return st == MOE_OK ? 0 : 1;
}
