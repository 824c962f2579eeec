/* test_offload.c — expert offloading through the public API, on one MoE model:
 *   - exact misses: logits bit-identical to a full load for every capacity
 *     from 0 (no cache) to every expert, prompt in one batch, in small
 *     batches and token by token, with LFU / LRU, prefetch on / off;
 *   - a batch reads each expert it needs once, however many tokens chose it;
 *   - skip misses: no effect where nothing is missing (warm start of a full
 *     cache), a real effect and counted skips where experts are missing;
 *   - memory: --expert-mem sizes the cache within the budget;
 *   - a pack truncated or corrupted under a loaded model gives an error from
 *     moe_seq_eval, never logits.
 * usage: test_offload MODEL_DIR WORK_DIR */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "moe.h"
#include "test.h"

#define N_TOK 24

static const char *g_dir, *g_work;
static int32_t g_tok[N_TOK];

static moe_model *load(int offload, int capacity, int miss, int evict, int prefetch, int warm, int io) {
    moe_load_params lp;
    moe_load_params_defaults(&lp);
    lp.n_threads = 2;
    lp.offload = offload;
    lp.capacity = capacity;
    lp.miss = (moe_miss_policy)miss;
    lp.evict = (moe_evict_policy)evict;
    lp.prefetch = prefetch;
    lp.warm = warm;
    lp.io_threads = io;
    lp.cache_dir = g_work;
    moe_model *m = NULL;
    moe_status st = moe_model_load(g_dir, &lp, &m);
    CHECK(st == MOE_OK, "load (offload %d, capacity %d): %s", offload, capacity, moe_errmsg());
    return m;
}

/* Logits of the N_TOK tokens: the first 16 in batches of `batch`, then one
 * by one; [N_TOK x V]. NULL with *st set on a failure. */
static float *run(moe_model *m, int batch, moe_status *st) {
    int V = moe_model_config(m)->vocab_size;
    moe_seq_params sp;
    moe_seq_params_defaults(&sp);
    sp.n_ctx = 64;
    sp.n_batch = 16;
    moe_seq *s = NULL;
    float *out = malloc(sizeof(float) * N_TOK * (size_t)V);
    *st = moe_seq_new(m, &sp, &s);
    for (int off = 0; !*st && off < N_TOK;) {
        int n = off < 16 ? batch : 1;
        *st = moe_seq_eval(s, g_tok + off, (size_t)n, out + (size_t)off * (size_t)V, 1);
        off += n;
    }
    moe_seq_free(s);
    if (*st) {
        free(out);
        return NULL;
    }
    return out;
}

static int same(const float *a, const float *b, size_t n) { return memcmp(a, b, n * sizeof *a) == 0; }

static void test_exact(const float *ref16, const float *ref4, size_t count) {
    moe_model *probe = load(0, -1, 0, 0, 1, 0, 1);
    int E = moe_model_config(probe)->n_experts;
    moe_model_free(probe);
    for (int cap = 0; cap <= E; cap++) {
        /* vary the other knobs along the way; every combination is exact */
        int evict = cap % 2, prefetch = (cap / 2) % 2, io = cap % 3 ? 4 : 1, batch = cap % 4 == 3 ? 4 : 16;
        moe_model *m = load(1, cap, MOE_MISS_EXACT, evict, prefetch, 0, io);
        if (!m) return;
        moe_status st;
        float *got = run(m, batch, &st);
        CHECK(got && same(got, batch == 4 ? ref4 : ref16, count), "capacity %d (evict %d, prefetch %d, io %d, batch %d): logits differ from a full load%s%s",
              cap, evict, prefetch, io, batch, st ? ": " : "", st ? moe_errmsg() : "");
        moe_expert_stats k;
        CHECK(moe_model_expert_stats(m, -1, &k) == MOE_OK, "stats");
        CHECK(k.misses > 0, "capacity %d: a cold cache had no misses", cap);
        CHECK(k.skipped == 0, "capacity %d: exact skipped %lld experts", cap, (long long)k.skipped);
        CHECK(cap > 0 || k.hits == 0, "no cache: %lld hits", (long long)k.hits);
        CHECK(k.bytes_read > 0 && k.reads >= k.misses, "capacity %d: %lld reads, %lld misses", cap, (long long)k.reads,
              (long long)k.misses);
        free(got);
        moe_model_free(m);
    }
}

/* One batch of N_TOK tokens with no cache: each layer reads exactly the
 * experts some token chose, once each. */
static void test_once_per_batch(void) {
    moe_model *m = load(1, 0, MOE_MISS_EXACT, 0, 0, 0, 2);
    if (!m) return;
    const moe_config *c = moe_model_config(m);
    moe_seq_params sp;
    moe_seq_params_defaults(&sp);
    sp.n_ctx = 64;
    sp.n_batch = N_TOK;
    moe_seq *s = NULL;
    CHECK(moe_seq_new(m, &sp, &s) == MOE_OK, "seq");
    moe_model_reset_expert_counts(m);
    moe_model_reset_expert_stats(m);
    CHECK(s && moe_seq_eval(s, g_tok, N_TOK, NULL, 0) == MOE_OK, "eval: %s", moe_errmsg());
    int64_t *cnt = calloc((size_t)c->n_experts, sizeof *cnt);
    for (int l = 0; l < c->n_layers; l++) {
        moe_expert_stats k;
        if (moe_model_expert_stats(m, l, &k) != MOE_OK) continue;
        moe_model_expert_counts(m, l, cnt);
        int64_t distinct = 0, chosen = 0;
        for (int e = 0; e < c->n_experts; e++) {
            distinct += cnt[e] > 0;
            chosen += cnt[e];
        }
        CHECK(chosen == (int64_t)N_TOK * c->n_experts_per_tok, "layer %d: %lld choices", l, (long long)chosen);
        CHECK(k.reads == distinct && k.misses == distinct, "layer %d: %lld reads, %lld misses for %lld distinct experts (%lld choices)",
              l, (long long)k.reads, (long long)k.misses, (long long)distinct, (long long)chosen);
    }
    free(cnt);
    moe_seq_free(s);
    moe_model_free(m);
}

static void test_skip(const float *ref, size_t count) {
    moe_model *probe = load(0, -1, 0, 0, 1, 0, 1);
    int E = moe_model_config(probe)->n_experts;
    moe_model_free(probe);
    /* missing experts: skipped, counted, and the output changes */
    moe_model *m = load(1, 1, MOE_MISS_SKIP, 0, 0, 0, 1);
    if (!m) return;
    moe_status st;
    float *got = run(m, 16, &st);
    moe_expert_stats k;
    moe_model_expert_stats(m, -1, &k);
    CHECK(got != NULL, "skip run: %s", moe_errmsg());
    CHECK(k.skipped > 0, "capacity 1, cold: no expert was skipped");
    CHECK(got && !same(got, ref, count), "capacity 1, %lld experts skipped: logits identical to a full load", (long long)k.skipped);
    free(got);
    moe_model_free(m);

    /* nothing missing: fill a full-capacity cache exactly, save it; a skip run
     * preloading it sees every expert it needs and changes nothing */
    m = load(1, E, MOE_MISS_EXACT, 0, 0, 1, 2);
    if (!m) return;
    free(run(m, 16, &st));
    moe_model_free(m); /* saves the warm state */
    m = load(1, E, MOE_MISS_SKIP, 0, 0, 1, 2);
    if (!m) return;
    moe_offload_info in;
    moe_model_offload_info(m, &in);
    CHECK(in.preloaded > 0, "warm start preloaded nothing (%s)", in.note);
    got = run(m, 16, &st);
    moe_model_expert_stats(m, -1, &k);
    CHECK(got && k.skipped == 0, "full warm cache: %lld experts skipped", (long long)k.skipped);
    CHECK(got && same(got, ref, count), "full warm cache, skip policy: logits differ from a full load");
    free(got);
    moe_model_free(m);
}

static int64_t cache_bytes(int capacity) {
    moe_model *m = load(1, capacity, 0, 0, 0, 0, 1);
    moe_offload_info in = {0};
    if (m) moe_model_offload_info(m, &in);
    moe_model_free(m);
    return in.cache_bytes;
}

static void test_budget(void) {
    /* slots of 3 and 4 experts a layer (fewer than the fixtures' 8): the
     * difference is one expert in every layer; the rest, staging buffers */
    int64_t c3 = cache_bytes(3), slot = cache_bytes(4) - c3;
    CHECK(slot > 0, "a fourth expert a layer added %lld bytes", (long long)slot);
    moe_load_params lp;
    moe_load_params_defaults(&lp);
    lp.cache_dir = g_work;
    lp.warm = 0;
    lp.expert_mem = c3 + slot / 2; /* three and a half experts a layer, with the staging buffers */
    moe_model *m = NULL;
    CHECK(moe_model_load(g_dir, &lp, &m) == MOE_OK, "load with expert_mem: %s", moe_errmsg());
    if (!m) return;
    moe_offload_info in;
    moe_model_offload_info(m, &in);
    CHECK(in.enabled && in.capacity == 3 && in.cache_bytes <= lp.expert_mem,
          "expert_mem %lld: capacity %d, %lld bytes of slots", (long long)lp.expert_mem, in.capacity, (long long)in.cache_bytes);
    moe_model_free(m);
    lp.expert_mem = slot / 2; /* half an expert a layer */
    CHECK(moe_model_load(g_dir, &lp, &m) == MOE_EINVAL && strstr(moe_errmsg(), "less than one expert"),
          "expert_mem below one expert a layer: %s", moe_errmsg());
    moe_model_free(m);
}

/* The store damaged while a model uses it: errors, never logits. */
static void test_damage(void) {
    for (int how = 0; how < 2; how++) {
        moe_model *m = load(1, 1, MOE_MISS_EXACT, 0, 0, 0, 1);
        if (!m) return;
        moe_offload_info in;
        moe_model_offload_info(m, &in);
        FILE *f = fopen(in.store_path, "r+b");
        CHECK(f != NULL, "open %s", in.store_path);
        if (!f) return;
        if (how == 0) {
            CHECK(ftruncate(fileno(f), 4096) == 0, "truncate");
        } else { /* flip bytes in the second half of the file: inside records */
            fseek(f, 0, SEEK_END);
            long size = ftell(f);
            for (long off = size / 2; off < size; off += 4096) {
                fseek(f, off, SEEK_SET);
                int ch = fgetc(f);
                fseek(f, off, SEEK_SET);
                fputc(ch ^ 0x5a, f);
            }
        }
        fclose(f);
        moe_status st;
        float *got = run(m, 16, &st);
        CHECK(!got && (how == 0 ? st == MOE_EIO : st == MOE_EFORMAT), "%s store: status %s (%s)",
              how ? "corrupted" : "truncated", moe_status_name(st), moe_errmsg());
        CHECK(strstr(moe_errmsg(), "experts.pack") != NULL, "the message names the pack: %s", moe_errmsg());
        free(got);
        moe_model_free(m);
    }
    /* and the next load notices and rebuilds it */
    moe_model *m = load(1, 2, MOE_MISS_EXACT, 0, 0, 0, 1);
    if (!m) return;
    moe_offload_info in;
    moe_model_offload_info(m, &in);
    CHECK(in.built, "a damaged store was not rebuilt");
    moe_model_free(m);
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: test_offload MODEL_DIR WORK_DIR\n");
        return 2;
    }
    g_dir = argv[1];
    g_work = argv[2];
    moe_model *m = load(0, -1, 0, 0, 1, 0, 1);
    if (!m) return 1;
    const moe_config *c = moe_model_config(m);
    uint64_t x = 0x9e3779b97f4a7c15ull;
    for (int i = 0; i < N_TOK; i++) {
        x ^= x << 13, x ^= x >> 7, x ^= x << 17;
        g_tok[i] = (int32_t)(x % (uint64_t)c->vocab_size);
    }
    size_t count = (size_t)N_TOK * (size_t)c->vocab_size;
    moe_status st;
    /* the references: a full load, fed as each offloaded run will be (a batch
     * of 16 and one of 4 may sum differently on the AMX path) */
    float *ref = run(m, 16, &st), *ref4 = run(m, 4, &st);
    CHECK(ref && ref4, "full load: %s", moe_errmsg());
    moe_model_free(m);
    if (!ref || !ref4) return 1;
    test_exact(ref, ref4, count);
    test_once_per_batch();
    test_skip(ref, count);
    test_budget();
    test_damage();
    free(ref);
    free(ref4);
    TEST_DONE();
}
