/* test_sampler.c — greedy, determinism by seed, each filter's effect, the
 * repetition penalty, the sampled distribution, and bad parameters. */
#include <math.h>
#include <stdlib.h>

#include "moe.h"
#include "test.h"

static int32_t draw(moe_sampler_params *p, const float *l0, int n, const int32_t *hist, size_t nh) {
    moe_sampler *s;
    if (moe_sampler_new(p, &s) != MOE_OK) return -1;
    float l[16];
    memcpy(l, l0, sizeof(float) * (size_t)n);
    int32_t t = moe_sampler_sample(s, l, n, hist, nh);
    moe_sampler_free(s);
    return t;
}

int main(void) {
    const float logits[6] = {0.1f, 2.0f, 1.9f, -1.0f, 0.5f, 1.95f};
    moe_sampler_params p;
    moe_sampler_params_defaults(&p);

    p.temperature = 0;
    CHECK(draw(&p, logits, 6, NULL, 0) == 1, "greedy picks the argmax");
    const float tie[3] = {1, 3, 3};
    CHECK(draw(&p, tie, 3, NULL, 0) == 1, "greedy ties go to the lower id");

    /* repetition penalty: token 1 seen -> 2.0/1.5 = 1.33 < 1.95 -> token 5 */
    p.repeat_penalty = 1.5f;
    int32_t hist[3] = {1, 1, 3};
    CHECK(draw(&p, logits, 6, hist, 3) == 5, "penalty moves greedy off a seen token");
    p.repeat_last_n = 1; /* only token 3 in the window */
    CHECK(draw(&p, logits, 6, hist, 3) == 1, "penalty window excludes older tokens");
    moe_sampler_params_defaults(&p);

    /* filters that leave one candidate make sampling greedy whatever the seed */
    for (uint64_t seed = 0; seed < 20; seed++) {
        p.seed = seed;
        p.temperature = 1.5f;
        p.top_k = 1; p.top_p = 1; p.min_p = 0;
        CHECK(draw(&p, logits, 6, NULL, 0) == 1, "top-k 1 is greedy (seed %llu)", (unsigned long long)seed);
        p.top_k = 0; p.top_p = 1e-4f;
        CHECK(draw(&p, logits, 6, NULL, 0) == 1, "tiny top-p is greedy");
        p.top_p = 1; p.min_p = 1;
        CHECK(draw(&p, logits, 6, NULL, 0) == 1, "min-p 1 is greedy");
    }
    /* top-k 3 never yields a token outside {1, 5, 2} */
    moe_sampler_params_defaults(&p);
    p.top_k = 3; p.top_p = 1; p.min_p = 0; p.temperature = 5;
    moe_sampler *s;
    CHECK(moe_sampler_new(&p, &s) == MOE_OK, "new");
    int outside = 0, seen[6] = {0};
    for (int i = 0; i < 3000; i++) {
        float l[6];
        memcpy(l, logits, sizeof l);
        int32_t t = moe_sampler_sample(s, l, 6, NULL, 0);
        seen[t]++;
        outside += t != 1 && t != 2 && t != 5;
    }
    moe_sampler_free(s);
    CHECK(outside == 0, "top-k 3 stayed inside the top 3 (%d outside)", outside);
    CHECK(seen[1] > 500 && seen[2] > 500 && seen[5] > 500, "all of the top 3 occur at high temperature");

    /* the distribution at temperature 1 follows softmax */
    moe_sampler_params_defaults(&p);
    p.temperature = 1; p.top_k = 0; p.top_p = 1; p.min_p = 0; p.seed = 7;
    const float dist[3] = {logf(0.5f), logf(0.3f), logf(0.2f)};
    CHECK(moe_sampler_new(&p, &s) == MOE_OK, "new");
    int cnt[3] = {0};
    for (int i = 0; i < 40000; i++) {
        float l[3];
        memcpy(l, dist, sizeof l);
        cnt[moe_sampler_sample(s, l, 3, NULL, 0)]++;
    }
    moe_sampler_free(s);
    CHECK(fabs(cnt[0] / 40000.0 - 0.5) < 0.015 && fabs(cnt[1] / 40000.0 - 0.3) < 0.015 &&
              fabs(cnt[2] / 40000.0 - 0.2) < 0.015,
          "frequencies %d %d %d", cnt[0], cnt[1], cnt[2]);

    /* same seed, same sequence; another seed, another sequence */
    int32_t a[64], b[64], c[64];
    for (int run = 0; run < 3; run++) {
        p.seed = run == 2 ? 99 : 42;
        CHECK(moe_sampler_new(&p, &s) == MOE_OK, "new");
        int32_t *o = run == 0 ? a : run == 1 ? b : c;
        for (int i = 0; i < 64; i++) {
            float l[6];
            memcpy(l, logits, sizeof l);
            o[i] = moe_sampler_sample(s, l, 6, NULL, 0);
        }
        moe_sampler_free(s);
    }
    CHECK(memcmp(a, b, sizeof a) == 0, "same seed, same output");
    CHECK(memcmp(a, c, sizeof a) != 0, "different seed, different output");

    /* bad parameters */
    moe_sampler_params_defaults(&p);
    p.top_p = 0;
    CHECK(moe_sampler_new(&p, &s) == MOE_EINVAL && strstr(moe_errmsg(), "top_p"), "top_p 0 refused");
    p.top_p = 1; p.temperature = -1;
    CHECK(moe_sampler_new(&p, &s) == MOE_EINVAL, "negative temperature refused");
    moe_sampler_free(NULL);
    TEST_DONE();
}
