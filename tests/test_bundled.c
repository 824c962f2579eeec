/* test_bundled.c — the bundled models against transformers: for each of the
 * prompts in tests/bundled/<model>-ref.json, the 64-token greedy continuation
 * token for token (float32 compute over the bf16 weights, as the reference).
 *   usage: test_bundled MODEL_DIR REF_JSON */
#include <jansson.h>

#include "moe.h"
#include "test.h"

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: test_bundled MODEL_DIR REF_JSON\n");
        return 2;
    }
    json_error_t je;
    json_t *ref = json_load_file(argv[2], 0, &je);
    if (!ref) {
        fprintf(stderr, "%s: %s\n", argv[2], je.text);
        return 2;
    }
    moe_model *m;
    CHECK(moe_model_load(argv[1], NULL, &m) == MOE_OK, "load: %s", moe_errmsg());
    if (!m) return 1;
    moe_sampler_params sp;
    moe_sampler_params_defaults(&sp);
    sp.temperature = 0;
    size_t pi;
    json_t *p;
    json_array_foreach(json_object_get(json_object_get(ref, "greedy"), "prompts"), pi, p) {
        json_t *pids = json_object_get(p, "prompt_ids"), *want = json_object_get(p, "new_ids");
        size_t n = json_array_size(pids), nw = json_array_size(want);
        int32_t prompt[1024];
        CHECK(n > 0 && n <= 1024 && nw > 0, "prompt %zu: %zu ids, %zu expected", pi, n, nw);
        if (!n || n > 1024) continue;
        for (size_t i = 0; i < n; i++) prompt[i] = (int32_t)json_integer_value(json_array_get(pids, i));
        moe_seq *s;
        moe_sampler *smp;
        moe_seq_params qp;
        moe_seq_params_defaults(&qp);
        qp.n_ctx = (int)(n + nw + 1);
        CHECK(moe_seq_new(m, &qp, &s) == MOE_OK && moe_sampler_new(&sp, &smp) == MOE_OK, "setup");
        CHECK(moe_seq_eval(s, prompt, n, NULL, 0) == MOE_OK, "prompt: %s", moe_errmsg());
        size_t same = 0;
        for (size_t i = 0; i < nw; i++) {
            int32_t t = -1;
            moe_generate_next(s, smp, &t);
            if (same == i && t == json_integer_value(json_array_get(want, i))) same++;
        }
        CHECK(same == nw, "prompt %zu (%zu tokens): first %zu of %zu greedy tokens match transformers", pi, n, same, nw);
        printf("prompt %zu: %zu tokens, %zu/%zu greedy tokens match\n", pi, n, same, nw);
        moe_sampler_free(smp);
        moe_seq_free(s);
    }
    moe_model_free(m);
    json_decref(ref);
    TEST_DONE();
}
