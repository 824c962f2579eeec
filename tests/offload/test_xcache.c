/* test_xcache.c — the expert cache's policies, driven directly on one layer
 * of a MoE fixture (internal API):
 *   - LRU evicts the least recently used, LFU the least used (decayed);
 *   - a pinned expert stays whatever is asked for;
 *   - a batch needing more experts than the capacity gets each of them,
 *     once, through the slots it has;
 *   - prefetch reads ahead and its guesses are scored;
 *   - the weights handed out are the model's own, byte for byte.
 * usage: test_xcache MODEL_DIR WORK_DIR */
#include <stdlib.h>
#include <string.h>

#include "moe.h"
#include "src/experts/xcache.h"
#include "src/experts/xstore.h"
#include "src/model/model.h"
#include "test.h"

static moe_model *g_m;
static xstore *g_x;
static int g_l; /* the first MoE layer */

static int same_weight(const wtensor *a, const wtensor *b) {
    if (a->fmt != b->fmt || a->rows != b->rows || a->cols != b->cols || a->row_bytes != b->row_bytes) return 0;
    if (memcmp(a->data, b->data, (size_t)a->rows * a->row_bytes)) return 0;
    if (!wfmt_is_quant(a->fmt)) return 1;
    size_t sb = (size_t)a->rows * a->sb_row_bytes;
    return a->sfmt == b->sfmt && a->group == b->group && !memcmp(a->scales, b->scales, sb) && !memcmp(a->biases, b->biases, sb);
}

/* One batch on layer g_l over need[n]: every expert handed out once, with
 * the model's weights; returns how many were handed out. */
static int batch(xcache *c, const int *need, int n) {
    unsigned char skipped[64] = {0};
    CHECK(xc_begin(c, g_l, need, n, skipped) == MOE_OK, "begin: %s", moe_errmsg());
    int seen[64] = {0}, out = 0;
    for (;;) {
        int i;
        const expert *w;
        moe_status st = xc_next(c, g_l, &i, &w);
        CHECK(st == MOE_OK, "next: %s", moe_errmsg());
        if (st || i < 0) break;
        CHECK(i < n && !seen[i], "expert index %d handed out twice or out of range", i);
        if (i >= n || seen[i]) break;
        seen[i] = 1;
        const expert *ref = &g_m->layers[g_l].experts[need[i]];
        CHECK(same_weight(&w->gate, &ref->gate) && same_weight(&w->up, &ref->up) && same_weight(&w->down, &ref->down),
              "expert %d: cached weights differ from the model's", need[i]);
        xc_release(c, g_l, i);
        out++;
    }
    return out;
}

static int resident(xcache *c, int e) {
    int ex[64];
    double sc[64];
    int n = xc_resident(c, g_l, ex, sc);
    for (int i = 0; i < n; i++)
        if (ex[i] == e) return 1;
    return 0;
}

static xcache *make_s(int capacity, int lru, int skip, int stage) {
    xc_params p = {.capacity = capacity, .lru = lru, .skip = skip, .io_threads = 2, .stage = stage};
    xcache *c = NULL;
    CHECK(xc_new(g_m, g_x, &p, &c) == MOE_OK, "xc_new: %s", moe_errmsg());
    return c;
}

static xcache *make_p(int capacity, int lru, int skip) { return make_s(capacity, lru, skip, 0); }
static void one(xcache *c, int e) { batch(c, &e, 1); }
static xcache *make(int capacity, int lru) { return make_p(capacity, lru, 0); }

/* exact with staging: a cold miss is read and run, but through a staging
 * buffer, so the hot experts stay; a guess likewise */
static void test_staging(void) {
    xcache *c = make_s(2, 0, 0, 2);
    if (!c) return;
    int hot[2] = {0, 1};
    for (int i = 0; i < 5; i++) CHECK(batch(c, hot, 2) == 2, "hot experts");
    int cold[3] = {2, 0, 3};
    CHECK(batch(c, cold, 3) == 3, "a batch with two cold misses: every expert handed out");
    CHECK(resident(c, 0) && resident(c, 1) && !resident(c, 2) && !resident(c, 3), "cold misses evicted a hot expert");
    int guess[1] = {4};
    xc_prefetch(c, g_l, guess, 1);
    CHECK(xc_wait_idle(c) == MOE_OK, "staged guess read: %s", moe_errmsg());
    one(c, 4);
    xc_counters k;
    xc_stats(c, g_l, &k);
    CHECK(resident(c, 0) && resident(c, 1) && k.evictions == 0 && k.prefetch_used == 1 && k.misses == 4,
          "staging: %lld evictions, %lld guesses used, %lld misses", (long long)k.evictions, (long long)k.prefetch_used,
          (long long)k.misses);
    xc_free(c);
}


/* skip: a missing expert is dropped, and read for later only when it is
 * worth more than the expert it would push out */
static void test_skip_admission(void) {
    xcache *c = make_p(2, 0, 1);
    if (!c) return;
    int hot[2] = {0, 1};
    CHECK(batch(c, hot, 2) == 0, "cold skip cache handed out experts");
    xc_wait_idle(c); /* the two background reads (empty slots: admitted) */
    for (int i = 0; i < 5; i++) CHECK(batch(c, hot, 2) == 2, "hot experts not handed out");
    one(c, 2); /* once: skipped, not worth evicting 0 or 1 */
    xc_wait_idle(c);
    CHECK(resident(c, 0) && resident(c, 1) && !resident(c, 2), "a cold expert pushed out a hot one");
    for (int i = 0; i < 40 && !resident(c, 3); i++) { /* used again and again: it earns its place */
        one(c, 3);
        xc_wait_idle(c);
    }
    CHECK(resident(c, 3), "an expert used 40 times in a row was never admitted");
    xc_counters k;
    xc_stats(c, g_l, &k);
    CHECK(k.skipped >= 3 && k.misses == 0, "skip: %lld skipped, %lld misses", (long long)k.skipped, (long long)k.misses);
    xc_free(c);
}

static void test_lru(void) {
    xcache *c = make(2, 1);
    if (!c) return;
    one(c, 0), one(c, 1), one(c, 0); /* 1 is now the least recent */
    one(c, 2);
    CHECK(resident(c, 0) && resident(c, 2) && !resident(c, 1), "LRU: expected {0, 2} resident");
    xc_counters k;
    xc_stats(c, g_l, &k);
    CHECK(k.hits == 1 && k.misses == 3 && k.evictions == 1, "LRU: %lld hits, %lld misses, %lld evictions", (long long)k.hits,
          (long long)k.misses, (long long)k.evictions);
    xc_free(c);
}

static void test_lfu(void) {
    xcache *c = make(2, 0);
    if (!c) return;
    one(c, 0), one(c, 0), one(c, 0), one(c, 1); /* 1 is the most recent, 0 the most used */
    one(c, 2);
    CHECK(resident(c, 0) && resident(c, 2) && !resident(c, 1), "LFU: expected {0, 2} resident");
    /* decay: after many uses of others, old frequency fades */
    for (int i = 0; i < 400; i++) one(c, 2 + i % 2);
    CHECK(!resident(c, 0), "LFU: expert 0's old uses did not decay");
    xc_free(c);
}

static void test_pin(void) {
    xcache *c = make(3, 1);
    if (!c) return;
    int pin[2] = {5, 6};
    CHECK(xc_pin(c, g_l, pin, 2) == MOE_OK, "pin: %s", moe_errmsg());
    CHECK(resident(c, 5) && resident(c, 6), "pinned experts not loaded");
    for (int e = 0; e < 5; e++) one(c, e);
    CHECK(resident(c, 5) && resident(c, 6) && resident(c, 4), "pinned experts evicted (or 4 missing)");
    int three[3] = {0, 1, 2};
    CHECK(xc_pin(c, g_l, three, 1) == MOE_EINVAL, "pinning every slot must be refused");
    /* a batch wider than the one free slot still gets all its experts */
    int need[5] = {7, 0, 5, 3, 1};
    CHECK(batch(c, need, 5) == 5, "a batch of 5 through 1 free slot");
    xc_counters k;
    xc_stats(c, g_l, &k);
    CHECK(k.pinned == 2 && k.resident == 3, "%d pinned, %d resident", k.pinned, k.resident);
    xc_free(c);
}

static void test_prefetch(void) {
    xcache *c = make(4, 0);
    if (!c) return;
    int guess[2] = {3, 4};
    xc_prefetch(c, g_l, guess, 2);
    CHECK(xc_wait_idle(c) == MOE_OK, "prefetch reads: %s", moe_errmsg()); /* 3 is in memory: a hit */
    int need[2] = {3, 1};
    CHECK(batch(c, need, 2) == 2, "batch after prefetch");
    xc_counters k;
    xc_stats(c, g_l, &k);
    CHECK(k.prefetched == 2 && k.predicted == 2 && k.predicted_right == 1 && k.prefetch_used == 1 && k.hits == 1 && k.misses == 1,
          "prefetch: %lld read ahead, %lld guessed, %lld right, %lld used, %lld hits, %lld misses", (long long)k.prefetched,
          (long long)k.predicted, (long long)k.predicted_right, (long long)k.prefetch_used, (long long)k.hits, (long long)k.misses);
    xc_free(c);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: test_xcache MODEL_DIR WORK_DIR\n");
        return 2;
    }
    moe_load_params lp;
    moe_load_params_defaults(&lp);
    lp.offload = 0;
    if (moe_model_load(argv[1], &lp, &g_m)) {
        fprintf(stderr, "load: %s\n", moe_errmsg());
        return 1;
    }
    while (g_l < g_m->cfg.pub.n_layers && !g_m->layers[g_l].is_moe) g_l++;
    CHECK(g_m->cfg.pub.n_experts >= 8 && g_m->cfg.pub.n_experts <= 64, "the fixture needs 8..64 experts");
    char dir[4096], path[4200];
    CHECK(xs_cache_dir(g_m->dir, argv[2], 1, dir, sizeof dir) == MOE_OK, "cache dir: %s", moe_errmsg());
    snprintf(path, sizeof path, "%s/experts.pack", dir);
    CHECK(xs_open_or_build(g_m, path, NULL, NULL, NULL, NULL, 0, &g_x) == MOE_OK, "store: %s", moe_errmsg());
    if (g_x) {
        test_lru();
        test_lfu();
        test_pin();
        test_prefetch();
        test_skip_admission();
        test_staging();
    }
    xs_close(g_x);
    moe_model_free(g_m);
    TEST_DONE();
}
