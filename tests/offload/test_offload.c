/* test_offload.c — expert offloading through the public API, on one MoE model:
 *   - exact misses: logits bit-identical to a full load for every capacity
 *     from 0 (no cache) to every expert, prompt in one batch, in small
 *     batches and token by token, with LFU / LRU, prefetch on / off;
 *   - a batch reads each expert it needs once, however many tokens chose it;
 *   - skip misses: no effect where nothing is missing (warm start of a full
 *     cache), a real effect and counted skips where experts are missing;
 *   - memory: --expert-mem sizes the cache within the budget;
 *   - a pack truncated or corrupted under a loaded model gives an error from
 *     moe_seq_eval, never logits;
 *   - the same with experts read from the model's own files (--store model):
 *     bit-identical at several capacities, 1 and 4 I/O threads, O_DIRECT on
 *     and off, one read per distinct expert, warm state kept in the cache
 *     directory with no pack written; a model file truncated under it: MOE_EIO
 *     naming the file, layer and expert;
 *   - auto: the pack while the disk has room, the model's files (with a note)
 *     when $MOE_TEST_FREE_BYTES says it has none, an existing pack still used.
 * usage: test_offload MODEL_DIR WORK_DIR */
#define _GNU_SOURCE
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "moe.h"
#include "src/format/safetensors.h"
#include "test.h"

#define N_TOK 24

static const char *g_dir, *g_work;
static char g_cache[4200];          /* the cache root of the runs: g_work, or a directory of the model store's */
static moe_store_kind g_store;      /* what load() asks for */
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
    lp.cache_dir = g_cache;
    lp.store = g_store;
    moe_model *m = NULL;
    moe_status st = moe_model_load(g_dir, &lp, &m);
    CHECK(st == MOE_OK, "load (offload %d, capacity %d, store %d): %s", offload, capacity, (int)g_store, moe_errmsg());
    moe_offload_info in;
    if (m) moe_model_offload_info(m, &in);
    CHECK(!m || !in.enabled || in.store == (g_store == MOE_STORE_MODEL ? MOE_STORE_MODEL : MOE_STORE_PACK),
          "store %d in use, %d asked for (disk room: the pack)", (int)in.store, (int)g_store);
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

static int n_experts(void) {
    moe_model *probe = load(0, -1, 0, 0, 1, 0, 1);
    int E = probe ? moe_model_config(probe)->n_experts : 0;
    moe_model_free(probe);
    return E;
}

/* Exact misses at capacity cap with io reader threads: logits bit-identical
 * to the full load's (fed in the same batches), the counters consistent. The
 * other knobs vary with cap; every combination is exact. */
static void exact_at(const float *ref16, const float *ref4, size_t count, int cap, int io) {
    int evict = cap % 2, prefetch = (cap / 2) % 2, batch = cap % 4 == 3 ? 4 : 16;
    moe_model *m = load(1, cap, MOE_MISS_EXACT, evict, prefetch, 0, io);
    if (!m) return;
    moe_status st;
    float *got = run(m, batch, &st);
    CHECK(got && same(got, batch == 4 ? ref4 : ref16, count),
          "store %d, capacity %d (evict %d, prefetch %d, io %d, batch %d): logits differ from a full load%s%s", (int)g_store,
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

static void test_exact(const float *ref16, const float *ref4, size_t count) {
    int E = n_experts();
    for (int cap = 0; cap <= E; cap++) exact_at(ref16, ref4, count, cap, cap % 3 ? 4 : 1);
}

/* From the model's files: a few capacities, each with 1 and 4 I/O threads,
 * with O_DIRECT (where the filesystem has it) and without. */
static void test_exact_model(const float *ref16, const float *ref4, size_t count) {
    int E = n_experts(), caps[5] = {0, 1, 3, E / 2, E};
    for (int direct = 1; direct >= 0; direct--) {
        if (!direct) setenv("MOE_XSTORE_DIRECT", "0", 1);
        for (int i = 0; i < 5; i++) {
            if (i && caps[i] <= caps[i - 1]) continue;
            exact_at(ref16, ref4, count, caps[i], 1);
            exact_at(ref16, ref4, count, caps[i], 4);
        }
        unsetenv("MOE_XSTORE_DIRECT");
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
    int E = n_experts();
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
    lp.cache_dir = g_cache;
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

/* ------------------------------------------------ the model's own files -- */

/* The one directory under cache root `root` (the model's cache directory) into dir[cap]; 0 when found. */
static int cache_dir_of(const char *root, char *dir, size_t cap) {
    DIR *d = opendir(root);
    struct dirent *de;
    int rc = -1;
    while (d && (de = readdir(d)))
        if (de->d_name[0] != '.' && snprintf(dir, cap, "%s/%s", root, de->d_name) < (int)cap) rc = 0;
    if (d) closedir(d);
    return rc;
}

/* After the model store's runs: the warm state was saved in the cache
 * directory, and no pack was written there. */
static void test_no_pack(void) {
    char dir[4400], f[4500];
    CHECK(cache_dir_of(g_cache, dir, sizeof dir) == 0, "no cache directory under %s", g_cache);
    snprintf(f, sizeof f, "%s/experts.pack", dir);
    CHECK(access(f, F_OK) != 0, "%s written under --store model", f);
    snprintf(f, sizeof f, "%s/cache-state.json", dir);
    CHECK(access(f, F_OK) == 0, "no warm state %s under --store model", f);
}

static void rm_rf(const char *path) {
    char cmd[4500];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
    CHECK(system(cmd) == 0, "%s", cmd);
}

static int is_expert(const char *name) { return strstr(name, ".experts.") || strstr(name, ".switch_mlp."); }

static void copy_tensor(void *ctx, const st_out_tensor *t, size_t off, void *buf, size_t n) {
    (void)t;
    memcpy(buf, (const unsigned char *)((const st_tensor *)ctx)->data + off, n);
}

/* A copy of the model in `out`: config.json, and every tensor of its
 * safetensors files in one model.safetensors, the experts' last, so the
 * file can be cut inside the experts while the other weights stay whole.
 * *cut: the first page boundary at or after the experts' start. 0 when made. */
static int copy_experts_last(const char *out, long *cut) {
    st_file *sh[64];
    int n_sh = 0, rc = 0;
    size_t n = 0;
    DIR *d = opendir(g_dir);
    struct dirent *de;
    char path[4500];
    while (d && (de = readdir(d)) && n_sh < 64) {
        size_t len = strlen(de->d_name);
        if (len < 12 || strcmp(de->d_name + len - 12, ".safetensors")) continue;
        snprintf(path, sizeof path, "%s/%s", g_dir, de->d_name);
        if (st_file_open(path, &sh[n_sh]) == MOE_OK) n += sh[n_sh++]->n;
        else rc = -1;
    }
    if (d) closedir(d);
    st_out_tensor *t = calloc(n ? n : 1, sizeof *t);
    size_t k = 0;
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < n_sh; i++)
            for (size_t j = 0; j < sh[i]->n; j++) {
                const st_tensor *s = &sh[i]->tensors[j];
                if (is_expert(s->name) != pass) continue;
                t[k] = (st_out_tensor){.name = s->name, .dtype = s->dtype, .ndim = s->ndim, .fill = copy_tensor, .ctx = (void *)s};
                memcpy(t[k++].shape, s->shape, sizeof s->shape);
            }
    char cmd[20000];
    snprintf(cmd, sizeof cmd, "rm -rf '%s' && mkdir -p '%s' && cp '%s/config.json' '%s/'", out, out, g_dir, out);
    if (rc || system(cmd) != 0) rc = -1;
    snprintf(path, sizeof path, "%s/model.safetensors", out);
    if (!rc && st_write(path, t, k, NULL, NULL) != MOE_OK) rc = -1;
    for (int i = 0; i < n_sh; i++) st_file_close(sh[i]);
    free(t);
    st_file *f = NULL;
    *cut = 0;
    if (!rc && st_file_open(path, &f) == MOE_OK) {
        long first = (long)f->map.size;
        for (size_t j = 0; j < f->n; j++)
            if (is_expert(f->tensors[j].name) && (const unsigned char *)f->tensors[j].data - f->map.data < first)
                first = (long)((const unsigned char *)f->tensors[j].data - f->map.data);
        *cut = (first + 4095) / 4096 * 4096;
        if (*cut >= (long)f->map.size) *cut = first;
        st_file_close(f);
    }
    return rc || *cut <= 0 ? -1 : 0;
}

/* A model file cut short under a model reading its experts from it: the
 * read fails with MOE_EIO naming the file, layer and expert; no logits, no
 * crash (the cut is past every other weight). Direct and buffered. */
static void test_truncated_model(void) {
    char copy[4300];
    snprintf(copy, sizeof copy, "%s/experts-last", g_work);
    const char *dir = g_dir;
    for (int direct = 1; direct >= 0; direct--) {
        long cut;
        CHECK(copy_experts_last(copy, &cut) == 0, "copy of %s with the experts last", g_dir);
        if (!direct) setenv("MOE_XSTORE_DIRECT", "0", 1);
        g_dir = copy;
        moe_model *m = load(1, 1, MOE_MISS_EXACT, 0, 0, 0, 2);
        g_dir = dir;
        char file[4400];
        snprintf(file, sizeof file, "%s/model.safetensors", copy);
        if (m) {
            CHECK(truncate(file, cut) == 0, "truncate %s", file);
            moe_status st;
            float *got = run(m, 16, &st);
            const char *msg = moe_errmsg();
            CHECK(!got && st == MOE_EIO && strstr(msg, file) && strstr(msg, "layer ") && strstr(msg, " expert ") &&
                      strstr(msg, "truncated"),
                  "model file truncated (direct %d): %s \"%s\"", direct, moe_status_name(st), msg);
            free(got);
            moe_model_free(m);
        }
        unsetenv("MOE_XSTORE_DIRECT");
    }
}

/* auto: the model's files when the disk has no room for a pack (said in the
 * note), the pack when it has; a pack already there is used whatever the
 * room. pack with no room: an error saying how much is needed. */
static void test_auto(void) {
    snprintf(g_cache, sizeof g_cache, "%s/auto", g_work);
    rm_rf(g_cache);
    g_store = MOE_STORE_AUTO;
    setenv("MOE_TEST_FREE_BYTES", "1000", 1);
    moe_load_params lp;
    moe_load_params_defaults(&lp);
    lp.cache_dir = g_cache;
    lp.capacity = 2;
    lp.warm = 0;
    moe_model *m = NULL;
    moe_offload_info in;
    CHECK(moe_model_load(g_dir, &lp, &m) == MOE_OK, "auto, no room: %s", moe_errmsg());
    if (m) {
        moe_model_offload_info(m, &in);
        CHECK(in.store == MOE_STORE_MODEL && strstr(in.note, "not enough disk for an expert pack") &&
                  strstr(in.note, "reading experts from the model's files"),
              "auto, no room: store %d, note \"%s\"", (int)in.store, in.note);
        moe_model_free(m);
    }
    lp.store = MOE_STORE_PACK;
    CHECK(moe_model_load(g_dir, &lp, &m) == MOE_EIO && strstr(moe_errmsg(), "the expert pack needs"),
          "pack, no room: %s", moe_errmsg());
    unsetenv("MOE_TEST_FREE_BYTES");
    lp.store = MOE_STORE_AUTO;
    CHECK(moe_model_load(g_dir, &lp, &m) == MOE_OK, "auto, room: %s", moe_errmsg());
    if (m) {
        moe_model_offload_info(m, &in);
        CHECK(in.store == MOE_STORE_PACK && in.built && !strstr(in.note, "not enough"),
              "auto, room: store %d, built %d (no pack before it), note \"%s\"", (int)in.store, in.built, in.note);
        moe_model_free(m);
    }
    setenv("MOE_TEST_FREE_BYTES", "0", 1);
    CHECK(moe_model_load(g_dir, &lp, &m) == MOE_OK, "auto, a pack there: %s", moe_errmsg());
    if (m) {
        moe_model_offload_info(m, &in);
        CHECK(in.store == MOE_STORE_PACK && !in.built, "auto, a pack there, no room: store %d, built %d", (int)in.store, in.built);
        moe_model_free(m);
    }
    unsetenv("MOE_TEST_FREE_BYTES");
    lp.store = (moe_store_kind)7;
    CHECK(moe_model_load(g_dir, &lp, &m) == MOE_EINVAL && strstr(moe_errmsg(), "store 7"), "a bad store: %s", moe_errmsg());
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: test_offload MODEL_DIR WORK_DIR\n");
        return 2;
    }
    g_dir = argv[1];
    g_work = argv[2];
    snprintf(g_cache, sizeof g_cache, "%s", g_work);
    g_store = MOE_STORE_AUTO; /* the pack: the disk has room */
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

    /* the same from the model's own files, in a cache directory of their own */
    snprintf(g_cache, sizeof g_cache, "%s/model-store", g_work);
    rm_rf(g_cache);
    g_store = MOE_STORE_MODEL;
    test_exact_model(ref, ref4, count);
    test_once_per_batch();
    test_skip(ref, count);
    test_no_pack();
    test_truncated_model();
    test_auto();
    free(ref);
    free(ref4);
    TEST_DONE();
}
