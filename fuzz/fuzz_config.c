/* fuzz_config.c — libFuzzer harness for config_parse, the reader of an
 * untrusted config.json. On success every per-layer array entry is read
 * (ASan checks they were allocated for n_layers). */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../src/model/config.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *json = malloc(size + 1);
    if (!json) return 0;
    memcpy(json, data, size);
    json[size] = 0;
    model_config c;
    if (config_parse(&c, json, "fuzz") == MOE_OK) {
        const moe_config *pc = &c.pub;
        if (pc->n_layers < 1 || !c.layer_moe || !c.layer_window || !c.fam) abort();
        volatile long sum = 0;
        int n_moe = 0;
        for (int l = 0; l < pc->n_layers; l++) {
            sum += c.layer_moe[l] + c.layer_window[l];
            n_moe += c.layer_moe[l] != 0;
        }
        if (n_moe != pc->n_moe_layers) abort();
        if (pc->n_heads < 1 || pc->n_kv_heads < 1 || pc->n_heads % pc->n_kv_heads || pc->head_dim < 2) abort();
        if (c.fam->is_moe && (pc->n_experts < 1 || pc->n_experts_per_tok > pc->n_experts)) abort();
        (void)sum;
        config_free(&c);
    } else if (c.layer_moe || c.layer_window) {
        abort(); /* on failure c holds nothing to free */
    }
    free(json);
    return 0;
}
