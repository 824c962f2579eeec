/* test_snapshot.c HYBRID_FIXTURE ATTENTION_MODEL — the saved states of a
 * model with linear-attention layers (moe_seq_snapshot, moe_seq_restore_point,
 * moe_seq_truncate): a three-turn conversation keeps the latest n_snapshots,
 * goes back only to a saved position, and continues from a restored state
 * with transformers' logits of the whole sequence; reset and truncation drop
 * what they should; an attention-only model needs no snapshot at all.
 * HYBRID_FIXTURE is a tests/golden case (golden.json, logits_2.f32: the 29-token
 * sequence). */
#include <jansson.h>
#include <math.h>
#include <stdlib.h>

#include "f32file.h"
#include "moe.h"
#include "test.h"

static double max_diff(const float *a, const float *b, size_t n) {
    double w = 0;
    for (size_t i = 0; i < n; i++) w = fmax(w, fabs((double)a[i] - b[i]));
    return w;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: test_snapshot HYBRID_FIXTURE ATTENTION_MODEL\n");
        return 2;
    }
    char path[1024];
    snprintf(path, sizeof path, "%s/golden.json", argv[1]);
    json_t *g = json_load_file(path, 0, NULL);
    json_t *seq = json_array_get(json_object_get(g, "sequences"), 2);
    size_t n = json_array_size(json_object_get(seq, "tokens")), nref;
    int32_t tok[64];
    for (size_t i = 0; i < n && i < 64; i++) tok[i] = (int32_t)json_integer_value(json_array_get(json_object_get(seq, "tokens"), i));
    snprintf(path, sizeof path, "%s/%s", argv[1], json_string_value(json_object_get(seq, "logits")));
    float *ref = read_f32(path, &nref);
    snprintf(path, sizeof path, "%s/model", argv[1]);
    moe_model *m;
    CHECK(n == 29 && ref && moe_model_load(path, NULL, &m) == MOE_OK, "load %s: %s", path, moe_errmsg());
    if (!ref || n != 29) TEST_DONE();
    int V = moe_model_config(m)->vocab_size;
    CHECK(moe_model_config(m)->n_linear_layers > 0, "%s has linear-attention layers", path);
    moe_seq_params sp;
    moe_seq_params_defaults(&sp);
    sp.n_ctx = 64;
    sp.n_batch = 8;
    sp.n_snapshots = 2;
    moe_seq_params sp0 = sp;
    sp0.n_snapshots = 0;
    CHECK(moe_seq_kv_bytes(m, &sp) > 0 && moe_seq_kv_bytes(m, &sp) == moe_seq_kv_bytes(m, &sp0), "state bytes");

    moe_seq *s;
    CHECK(moe_seq_new(m, &sp, &s) == MOE_OK, "seq");
    /* three turns, a snapshot after each: 10, 20, 29; two kept: 20, 29 */
    size_t ends[3] = {10, 20, 29};
    for (int t = 0, at = 0; t < 3; at = (int)ends[t++]) {
        CHECK(moe_seq_eval(s, tok + at, ends[t] - (size_t)at, NULL, 0) == MOE_OK, "turn %d: %s", t, moe_errmsg());
        CHECK(moe_seq_snapshot(s) == MOE_OK && moe_seq_snapshot(s) == MOE_OK, "snapshot (twice at one position)");
    }
    CHECK(moe_seq_restore_point(s, 29) == 29 && moe_seq_restore_point(s, 28) == 20 && moe_seq_restore_point(s, 25) == 20 &&
              moe_seq_restore_point(s, 19) == 0 && moe_seq_restore_point(s, 100) == 29,
          "restore points with snapshots at 20 and 29 (10 replaced)");
    CHECK(moe_seq_truncate(s, 10) == MOE_ERANGE, "10 was replaced: %s", moe_errmsg());
    CHECK(moe_seq_truncate(s, 25) == MOE_ERANGE && moe_seq_pos(s) == 29, "no state at 25, nothing changes");
    /* back to 20, then the last turn again: transformers' logits of the whole sequence */
    CHECK(moe_seq_truncate(s, 20) == MOE_OK && moe_seq_pos(s) == 20, "truncate to 20: %s", moe_errmsg());
    CHECK(moe_seq_restore_point(s, 29) == 20, "the snapshot at 29 went with the tokens after 20");
    /* the snapshot kept position 19's logits: the next token can be sampled with nothing evaluated */
    CHECK(moe_seq_has_logits(s), "logits restored with the state");
    {
        moe_sampler_params spp;
        moe_sampler_params_defaults(&spp);
        spp.temperature = 0;
        moe_sampler *smp;
        int32_t t = -1, want = 0;
        for (int v = 1; v < V; v++) want = ref[19 * (size_t)V + v] > ref[19 * (size_t)V + want] ? v : want;
        CHECK(moe_sampler_new(&spp, &smp) == MOE_OK && moe_generate_next(s, smp, &t) == MOE_OK && t == want,
              "greedy from the restored logits: %d, transformers' argmax %d", t, want);
        CHECK(!moe_seq_has_logits(s) && moe_seq_pos(s) == 21, "sampled: pending");
        moe_sampler_free(smp);
        CHECK(moe_seq_truncate(s, 20) == MOE_OK && moe_seq_has_logits(s), "back to 20 (the pending token dropped)");
    }
    float *got = malloc(sizeof *got * 9 * (size_t)V);
    CHECK(moe_seq_eval(s, tok + 20, 9, got, 1) == MOE_OK, "turn 3 again");
    double d = max_diff(got, ref + 20 * (size_t)V, 9 * (size_t)V);
    CHECK(d <= 3e-4, "after restoring the state at 20: max |diff| %.3g", d);
    /* a different third turn, then back to 20 again: the snapshot is unchanged by what ran after it */
    int32_t other[9] = {5, 6, 7, 8, 9, 10, 11, 12, 13};
    CHECK(moe_seq_truncate(s, 20) == MOE_OK && moe_seq_eval(s, other, 9, NULL, 0) == MOE_OK, "another turn");
    CHECK(moe_seq_truncate(s, 20) == MOE_OK && moe_seq_eval(s, tok + 20, 9, got, 1) == MOE_OK, "back again");
    CHECK(max_diff(got, ref + 20 * (size_t)V, 9 * (size_t)V) <= 3e-4, "the snapshot at 20 is intact");
    /* to 0: always allowed, a zero state; reset drops the snapshots */
    CHECK(moe_seq_truncate(s, 0) == MOE_OK && moe_seq_restore_point(s, 29) == 0, "truncate to 0");
    CHECK(moe_seq_eval(s, tok, 29, got, 0) == MOE_OK, "from the start");
    CHECK(max_diff(got, ref + 28 * (size_t)V, (size_t)V) <= 3e-4, "from a zeroed state");
    CHECK(moe_seq_snapshot(s) == MOE_OK, "snapshot");
    moe_seq_reset(s);
    CHECK(moe_seq_pos(s) == 0 && moe_seq_restore_point(s, 29) == 0, "reset");
    CHECK(moe_seq_eval(s, tok, 29, got, 0) == MOE_OK && max_diff(got, ref + 28 * (size_t)V, (size_t)V) <= 3e-4,
          "after reset: a zeroed state");
    moe_seq_free(s);
    free(got);
    moe_model_free(m);

    /* attention only: every position is a restore point, snapshots are no-ops */
    CHECK(moe_model_load(argv[2], NULL, &m) == MOE_OK, "load %s: %s", argv[2], moe_errmsg());
    CHECK(moe_model_config(m)->n_linear_layers == 0, "attention only");
    CHECK(moe_seq_new(m, &sp, &s) == MOE_OK && moe_seq_eval(s, other, 9, NULL, 0) == MOE_OK, "eval: %s", moe_errmsg());
    CHECK(moe_seq_has_logits(s) && moe_seq_truncate(s, 9) == MOE_OK && moe_seq_has_logits(s), "logits kept at the same position");
    CHECK(moe_seq_snapshot(s) == MOE_OK && moe_seq_restore_point(s, 7) == 7 && moe_seq_truncate(s, 7) == MOE_OK,
          "attention-only truncation");
    CHECK(!moe_seq_has_logits(s), "a KV cache cut back has no logits for its new last position");
    moe_seq_free(s);
    moe_model_free(m);
    free(ref);
    json_decref(g);
    TEST_DONE();
}
