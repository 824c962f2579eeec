/* sampler.c — token selection from logits, in Hugging Face's order:
 * repetition penalty -> temperature -> top-k -> top-p -> min-p -> draw.
 * Temperature 0 is greedy (argmax, ties to the lower id). The RNG is
 * xoshiro256** seeded through splitmix64, so a seed fixes the choices. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "../base/err.h"
#include "moe.h"

typedef struct cand { float logit; int id; } cand;

struct moe_sampler {
    moe_sampler_params p;
    uint64_t rng[4];
    cand *c;              /* [cap] candidates, best first */
    float *probs;         /* [cap] their probabilities */
    unsigned char *mark;  /* [cap] tokens already penalised */
    int cap;
};

void moe_sampler_params_defaults(moe_sampler_params *p) {
    p->temperature = 0.8f;
    p->top_k = 40;
    p->top_p = 0.95f;
    p->min_p = 0.05f;
    p->repeat_penalty = 1.0f;
    p->repeat_last_n = 64;
    p->seed = 0;
}

static uint64_t splitmix64(uint64_t *x) {
    uint64_t z = (*x += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }

static uint64_t next_u64(uint64_t s[4]) {
    uint64_t r = rotl(s[1] * 5, 7) * 9, t = s[1] << 17;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 45);
    return r;
}

moe_status moe_sampler_new(const moe_sampler_params *p, moe_sampler **out) {
    *out = NULL;
    moe_sampler_params d;
    if (!p) {
        moe_sampler_params_defaults(&d);
        p = &d;
    }
    if (!(p->temperature >= 0) || p->top_k < 0 || !(p->top_p > 0 && p->top_p <= 1) || !(p->min_p >= 0 && p->min_p <= 1) ||
        !(p->repeat_penalty > 0))
        return moe_err(MOE_EINVAL,
                       "sampler: temperature >= 0, top_k >= 0, 0 < top_p <= 1, 0 <= min_p <= 1, repeat_penalty > 0");
    moe_sampler *s = calloc(1, sizeof *s);
    if (!s) return moe_err(MOE_ENOMEM, "out of memory");
    s->p = *p;
    uint64_t x = p->seed;
    for (int i = 0; i < 4; i++) s->rng[i] = splitmix64(&x);
    *out = s;
    return MOE_OK;
}

void moe_sampler_free(moe_sampler *s) {
    if (!s) return;
    free(s->c);
    free(s->probs);
    free(s->mark);
    free(s);
}

/* a before b: higher logit, then lower id */
static int better(const cand *a, const cand *b) { return a->logit > b->logit || (a->logit == b->logit && a->id < b->id); }

static int cand_cmp(const void *a, const void *b) {
    return better(a, b) ? -1 : better(b, a) ? 1 : 0;
}

/* Restores the min-heap (worst candidate at the root) below c[j]. */
static void sift_down(cand *c, int k, int j) {
    for (;;) {
        int l = 2 * j + 1, w = j;
        if (l < k && better(&c[w], &c[l])) w = l;
        if (l + 1 < k && better(&c[w], &c[l + 1])) w = l + 1;
        if (w == j) return;
        cand t = c[j];
        c[j] = c[w];
        c[w] = t;
        j = w;
    }
}

/* Moves the k best of c[0..n) into c[0..k), sorted best first. */
static void top_k(cand *c, int n, int k) {
    for (int i = k / 2 - 1; i >= 0; i--) sift_down(c, k, i);
    for (int i = k; i < n; i++)
        if (better(&c[i], &c[0])) {
            c[0] = c[i];
            sift_down(c, k, 0);
        }
    qsort(c, (size_t)k, sizeof *c, cand_cmp);
}

static int argmax(const float *l, int n) {
    int best = 0;
    for (int i = 1; i < n; i++)
        if (l[i] > l[best]) best = i;
    return best;
}

static int reserve(moe_sampler *s, int vocab) {
    if (s->cap >= vocab) return 1;
    free(s->c);
    free(s->probs);
    free(s->mark);
    s->c = malloc((size_t)vocab * sizeof *s->c);
    s->probs = malloc((size_t)vocab * sizeof *s->probs);
    s->mark = calloc((size_t)vocab, 1);
    s->cap = s->c && s->probs && s->mark ? vocab : 0;
    return s->cap > 0;
}

int32_t moe_sampler_sample(moe_sampler *s, float *logits, int vocab, const int32_t *history, size_t n_history) {
    const moe_sampler_params *p = &s->p;
    if (!reserve(s, vocab)) return argmax(logits, vocab); /* out of memory: degrade to greedy */
    if (p->repeat_penalty != 1.0f && history) {
        /* each distinct token of the window once, as transformers' gather/scatter does */
        size_t from = 0;
        if (p->repeat_last_n >= 0 && n_history > (size_t)p->repeat_last_n) from = n_history - (size_t)p->repeat_last_n;
        for (size_t i = from; i < n_history; i++) {
            int t = history[i];
            if (t < 0 || t >= vocab || s->mark[t]) continue;
            s->mark[t] = 1;
            logits[t] = logits[t] > 0 ? logits[t] / p->repeat_penalty : logits[t] * p->repeat_penalty;
        }
        for (size_t i = from; i < n_history; i++)
            if (history[i] >= 0 && history[i] < vocab) s->mark[history[i]] = 0;
    }
    if (p->temperature == 0) return argmax(logits, vocab);

    int n = vocab;
    for (int i = 0; i < vocab; i++) s->c[i] = (cand){logits[i], i};
    if (p->top_k > 0 && p->top_k < vocab) n = p->top_k;
    top_k(s->c, vocab, n);
    /* softmax at temperature over the candidates */
    float mx = s->c[0].logit / p->temperature;
    double sum = 0;
    for (int i = 0; i < n; i++) sum += (s->probs[i] = expf(s->c[i].logit / p->temperature - mx));
    for (int i = 0; i < n; i++) s->probs[i] = (float)(s->probs[i] / sum);
    /* top-p: the smallest prefix whose mass reaches top_p (at least one token) */
    if (p->top_p < 1.0f) {
        double cum = 0;
        for (int i = 0; i < n; i++) {
            cum += s->probs[i];
            if (cum >= p->top_p) { n = i + 1; break; }
        }
    }
    /* min-p: drop tokens below min_p x the top probability */
    if (p->min_p > 0) {
        float thr = p->min_p * s->probs[0];
        int keep = 1;
        while (keep < n && s->probs[keep] >= thr) keep++;
        n = keep;
    }
    double total = 0;
    for (int i = 0; i < n; i++) total += s->probs[i];
    double r = (double)(next_u64(s->rng) >> 11) * 0x1.0p-53 * total;
    for (int i = 0; i < n; i++) {
        r -= s->probs[i];
        if (r < 0) return s->c[i].id;
    }
    return s->c[n - 1].id;
}
