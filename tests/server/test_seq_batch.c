/* test_seq_batch.c MODEL_DIR — moe_seq_eval_pending (batched decoding, as
 * moe serve runs its slots) against each sequence decoding alone: the same
 * greedy tokens and logits within float rounding, for batches of every size
 * up to 12, sequences of different lengths, a batch that shrinks as
 * sequences drop out, and the argument errors. CTest runs it with the AMX
 * path off (MOE_AMX_MIN_TOKENS): that path computes batches of 8 or more
 * tokens in bf16, another precision than fewer tokens, by design. */
#include <math.h>
#include <stdlib.h>

#include "../../src/engine/seq.h" /* the last logits, s->logits */
#include "../test.h"

#define NSEQ 12
#define STEPS 24 /* > 2 * (NSEQ - 1) */

static const char *const k_prompts[NSEQ] = {
    "The history of the church", "Tell me about the war.", "He said that the committee",
    "In the morning the city was quiet and", "A", "The president of the United States announced today that the",
    "She", "It was the last", "Why did they", "The river", "Music", "On Sunday the church",
};

int main(int argc, char **argv) {
    if (argc != 2) {
        fprintf(stderr, "usage: test_seq_batch MODEL_DIR\n");
        return 2;
    }
    moe_model *m;
    moe_tokenizer *tok;
    if (moe_model_load(argv[1], NULL, &m) || moe_tokenizer_load(argv[1], &tok)) {
        fprintf(stderr, "%s\n", moe_errmsg());
        return 1;
    }
    int V = moe_model_config(m)->vocab_size;
    moe_sampler_params sp;
    moe_sampler_params_defaults(&sp);
    sp.temperature = 0;
    moe_sampler *smp;
    moe_sampler_new(&sp, &smp);
    moe_seq_params qp;
    moe_seq_params_defaults(&qp);
    qp.n_ctx = 256;
    /* alone[i]: the reference, decoded one sequence at a time; batch[i]: the same, in batches */
    moe_seq *alone[NSEQ], *batch[NSEQ];
    int32_t want[NSEQ][STEPS];
    float *ref = malloc(sizeof(float) * (size_t)V * NSEQ * STEPS), *lg = malloc(sizeof(float) * (size_t)V);
    for (int i = 0; i < NSEQ; i++) {
        int32_t *ids;
        size_t n;
        CHECK(moe_tokenize(tok, k_prompts[i], strlen(k_prompts[i]), 1, &ids, &n) == MOE_OK, "tokenize");
        CHECK(moe_seq_new(m, &qp, &alone[i]) == MOE_OK && moe_seq_new(m, &qp, &batch[i]) == MOE_OK, "seq_new");
        moe_seq_eval(alone[i], ids, n, NULL, 0);
        moe_seq_eval(batch[i], ids, n, NULL, 0);
        moe_free(ids);
        for (int k = 0; k < STEPS; k++) {
            moe_generate_next(alone[i], smp, &want[i][k]);
            moe_seq_eval(alone[i], NULL, 0, NULL, 0); /* runs the token */
            memcpy(ref + ((size_t)i * STEPS + k) * V, alone[i]->logits, sizeof(float) * (size_t)V);
        }
    }
    /* batch: sequence i takes part in steps [0, STEPS - 2i): the batch shrinks from 12 to 1 */
    double worst = 0;
    int same_tokens = 1;
    for (int k = 0; k < STEPS; k++) {
        moe_seq *in[NSEQ];
        size_t n = 0;
        for (int i = 0; i < NSEQ; i++) {
            if (k >= STEPS - i * 2) continue;
            int32_t t;
            CHECK(moe_generate_next(batch[i], smp, &t) == MOE_OK, "generate_next");
            same_tokens &= t == want[i][k];
            in[n++] = batch[i];
        }
        /* rotate, so every sequence also leads a batch (its buffers hold the rows) */
        moe_seq *rot[NSEQ];
        for (size_t j = 0; j < n; j++) rot[j] = in[(j + (size_t)k) % n];
        CHECK(moe_seq_eval_pending(rot, n) == MOE_OK, "eval_pending of %zu: %s", n, moe_errmsg());
        for (int i = 0; i < NSEQ; i++) {
            if (k >= STEPS - i * 2) continue;
            memcpy(lg, batch[i]->logits, sizeof(float) * (size_t)V);
            const float *r = ref + ((size_t)i * STEPS + k) * V;
            for (int v = 0; v < V; v++) {
                double d = fabs((double)lg[v] - r[v]) / (1.0 + fabs(r[v]));
                if (d > worst) worst = d;
            }
        }
    }
    CHECK(same_tokens, "batched greedy decoding picks the tokens decoding alone picks");
    CHECK(worst < 1e-4, "batched logits within %g of decoding alone", worst);
    printf("largest relative logit difference, batched vs alone: %.3g\n", worst);
    for (int i = 0; i < NSEQ; i++) {
        size_t na, nb;
        const int32_t *ta = moe_seq_tokens(alone[i], &na), *tb = moe_seq_tokens(batch[i], &nb);
        CHECK(nb <= na && memcmp(ta, tb, nb * sizeof *ta) == 0, "sequence %d holds the same tokens", i);
    }

    /* argument errors: nothing is run */
    int32_t t;
    moe_generate_next(batch[0], smp, &t);
    int64_t p0 = moe_seq_pos(batch[0]);
    CHECK(moe_seq_eval_pending((moe_seq *[]){batch[0], batch[0]}, 2) == MOE_EINVAL, "the same sequence twice");
    CHECK(moe_seq_eval_pending((moe_seq *[]){batch[0], batch[1]}, 2) == MOE_EINVAL, "a sequence without a pending token");
    CHECK(moe_seq_eval_pending(NULL, 0) == MOE_EINVAL, "no sequences");
    CHECK(moe_seq_pos(batch[0]) == p0, "nothing ran");
    CHECK(moe_seq_eval_pending((moe_seq *[]){batch[0]}, 1) == MOE_OK && moe_seq_pos(batch[0]) == p0, "a batch of one");

    for (int i = 0; i < NSEQ; i++) {
        moe_seq_free(alone[i]);
        moe_seq_free(batch[i]);
    }
    free(ref);
    free(lg);
    moe_sampler_free(smp);
    moe_tokenizer_free(tok);
    moe_model_free(m);
    TEST_DONE();
}
