/* test_xstore.c — the expert store (src/experts/xstore.c) and moe_pack.
 *
 *   test_xstore checksum                   xs_checksum: every flipped bit seen, lengths, order
 *   test_xstore pack DIR MODEL             pack MODEL into DIR; every record read back equals
 *                                          the model's own expert weights (a dense MODEL: refused);
 *                                          the same from the store over the model's own files,
 *                                          direct and buffered, in whole and in 4 KiB chunks
 *   test_xstore stale DIR MODEL            config.json, a shard's mtime or size changed: stale,
 *                                          rebuilt; unchanged: kept
 *   test_xstore corrupt DIR MODEL          truncated, longer, flipped header bytes, every header
 *                                          field altered (resealed), a flipped record byte, a
 *                                          pack truncated after it was opened
 *   test_xstore shm MODEL                  a pack on /dev/shm (tmpfs), with and without O_DIRECT
 *   test_xstore errors DIR MODEL DENSE     cannot create, write failure, a second writer, dense
 *                                          models, the cache directory, moe_pack
 *   test_xstore flip FILE OFFSET           (a tool for the CLI tests) flips the byte at OFFSET
 *   test_xstore record FILE MODEL L E      (a tool) prints the file offset of record (L, E)
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#include "moe.h"
#include "src/base/file.h"
#include "src/experts/xstore.h"
#include "src/model/model.h"
#include "tests/test.h"

/* ------------------------------------------------------------ helpers -- */

/* The whole file (NUL-terminated, so p[n] may be written), or NULL. */
static unsigned char *read_file(const char *path, size_t *n) {
    char *p = NULL;
    return file_read_all(path, (size_t)1 << 30, &p, n) == MOE_OK ? (unsigned char *)p : NULL;
}

static int write_file(const char *path, const void *p, size_t n) {
    FILE *f = fopen(path, "wb");
    if (!f) return -1;
    int ok = fwrite(p, 1, n, f) == n;
    return fclose(f) == 0 && ok ? 0 : -1;
}

static void rm_rf(const char *path) {
    char cmd[5000];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", path);
    if (system(cmd) != 0) fprintf(stderr, "could not remove %s\n", path);
}

static void mkdirs(const char *path) {
    char cmd[5000];
    snprintf(cmd, sizeof cmd, "mkdir -p '%s'", path);
    if (system(cmd) != 0) fprintf(stderr, "could not create %s\n", path);
}

/* Copies the regular files of directory src into dst (created). */
static int copy_dir(const char *src, const char *dst) {
    mkdirs(dst);
    DIR *d = opendir(src);
    if (!d) return -1;
    struct dirent *de;
    int rc = 0;
    while ((de = readdir(d))) {
        char a[4400], b[4400];
        if (snprintf(a, sizeof a, "%s/%s", src, de->d_name) >= (int)sizeof a ||
            snprintf(b, sizeof b, "%s/%s", dst, de->d_name) >= (int)sizeof b)
            rc = -1;
        struct stat s;
        if (stat(a, &s) != 0 || !S_ISREG(s.st_mode)) continue;
        size_t n;
        unsigned char *p = read_file(a, &n);
        if (!p || write_file(b, p, n)) rc = -1;
        free(p);
    }
    closedir(d);
    return rc;
}

static moe_model *load(const char *dir) {
    moe_load_params lp;
    moe_load_params_defaults(&lp);
    lp.n_threads = 1;
    lp.load = MOE_LOAD_MMAP; /* a store reads experts where the files hold them, as an offloaded load leaves them */
    moe_model *m = NULL;
    moe_status st = moe_model_load(dir, &lp, &m);
    CHECK(st == MOE_OK, "load %s: %s", dir, moe_errmsg());
    return m;
}

static int has(const char *msg, const char *what) { return strstr(msg, what) != NULL; }

/* Expects status `want` and a message containing `what`. */
#define EXPECT(call, want, what)                                                                                \
    do {                                                                                                        \
        moe_status st_ = (call);                                                                                \
        CHECK(st_ == (want) && has(moe_errmsg(), what), "%s: got %s \"%s\", expected %s \"...%s...\"", #call, \
              moe_status_name(st_), moe_errmsg(), moe_status_name(want), what);                                 \
    } while (0)

static void *aligned_buf(uint64_t n) { return aligned_alloc(XS_ALIGN, n ? n : XS_ALIGN); }

/* A weight as the pack hands it out equals the model's: format, shape, bytes. */
static int same_weight(const wtensor *a, const wtensor *b) {
    if (a->fmt != b->fmt || a->rows != b->rows || a->cols != b->cols || a->row_bytes != b->row_bytes) return 0;
    if (memcmp(a->data, b->data, (size_t)a->rows * a->row_bytes)) return 0;
    if (!wfmt_is_quant(a->fmt)) return !b->scales && !b->biases && b->group == 0;
    size_t sb = (size_t)a->rows * a->sb_row_bytes;
    return a->group == b->group && a->sfmt == b->sfmt && a->sb_row_bytes == b->sb_row_bytes &&
           !memcmp(a->scales, b->scales, sb) && !memcmp(a->biases, b->biases, sb);
}

/* Every record of x read, checked and bound equals the model's expert. */
static void verify_all(const moe_model *m, xstore *x) {
    int n = 0;
    for (int l = 0; l < m->cfg.pub.n_layers; l++) {
        const layer *L = &m->layers[l];
        if (!L->is_moe) {
            CHECK(!xs_record_of(x, l, 0) && xs_slot_bytes(x, l) == 0, "layer %d is dense but has records", l);
            continue;
        }
        uint64_t slot = xs_slot_bytes(x, l);
        CHECK(slot > 0 && slot % XS_ALIGN == 0, "layer %d: slot bytes %llu", l, (unsigned long long)slot);
        unsigned char *buf = aligned_buf(slot);
        for (int e = 0; e < m->cfg.pub.n_experts; e++) {
            const xs_record *r = xs_record_of(x, l, e);
            CHECK(r && r->offset % XS_ALIGN == 0 && r->bytes % XS_ALIGN == 0 && r->bytes <= slot, "layer %d expert %d", l, e);
            for (int i = 0; r && i < 3; i++)
                CHECK(r->part[i].data_off % 64 == 0 && r->part[i].scales_off % 64 == 0 && r->part[i].biases_off % 64 == 0,
                      "layer %d expert %d part %d not 64-byte aligned", l, e, i);
            moe_status st = xs_read(x, l, e, buf);
            CHECK(st == MOE_OK, "xs_read %d %d: %s", l, e, moe_errmsg());
            if (st || !r) continue;
            expert got;
            xs_bind(r, buf, &got);
            const expert *want = &L->experts[e];
            CHECK(same_weight(&want->gate, &got.gate), "layer %d expert %d: gate differs", l, e);
            CHECK(same_weight(&want->up, &got.up), "layer %d expert %d: up differs", l, e);
            CHECK(same_weight(&want->down, &got.down), "layer %d expert %d: down differs", l, e);
            n++;
        }
        free(buf);
    }
    CHECK(n == m->cfg.pub.n_moe_layers * m->cfg.pub.n_experts, "%d records verified", n);
    CHECK(!xs_record_of(x, -1, 0) && !xs_record_of(x, m->cfg.pub.n_layers, 0), "records out of range");
}

/* Many threads reading every record at once (xs_read is thread-safe). */
typedef struct reader_arg {
    const moe_model *m;
    xstore *x;
    int id, bad;
} reader_arg;

static void *reader(void *p) {
    reader_arg *a = p;
    const moe_config *c = &a->m->cfg.pub;
    for (int round = 0; round < 4; round++)
        for (int l = 0; l < c->n_layers; l++) {
            if (!xs_record_of(a->x, l, 0)) continue;
            unsigned char *buf = aligned_buf(xs_slot_bytes(a->x, l));
            for (int e = (a->id + round) % 2; e < c->n_experts; e += 2)
                if (xs_read(a->x, l, e, buf)) a->bad++;
            free(buf);
        }
    return NULL;
}

static void read_concurrently(const moe_model *m, xstore *x) {
    pthread_t t[4];
    reader_arg a[4];
    for (int i = 0; i < 4; i++) {
        a[i] = (reader_arg){m, x, i, 0};
        pthread_create(&t[i], NULL, reader, &a[i]);
    }
    for (int i = 0; i < 4; i++) {
        pthread_join(t[i], NULL);
        CHECK(a[i].bad == 0, "thread %d: %d failed reads", i, a[i].bad);
    }
}

/* ----------------------------------------------------------- checksum -- */

static int test_checksum(void) {
    unsigned char buf[1024 + 64];
    uint64_t s = 0x1234567;
    for (size_t i = 0; i < sizeof buf; i++) {
        s = s * 6364136223846793005u + 1442695040888963407u;
        buf[i] = (unsigned char)(s >> 56);
    }
    /* every flipped bit of a 1 KiB block changes it (guaranteed: one word) */
    uint64_t ref = xs_checksum(buf, 1024);
    CHECK(ref == xs_checksum(buf, 1024), "not deterministic");
    int missed = 0;
    for (int bit = 0; bit < 1024 * 8; bit++) {
        buf[bit / 8] ^= (unsigned char)(1 << (bit % 8));
        missed += xs_checksum(buf, 1024) == ref;
        buf[bit / 8] ^= (unsigned char)(1 << (bit % 8));
    }
    CHECK(missed == 0, "%d single-bit flips not detected", missed);
    /* every length 0..1088 in steps of 8 gives a new value, and so does each flipped bit of the tail */
    uint64_t seen[137];
    int dup = 0;
    for (int k = 0; k <= 136; k++) {
        seen[k] = xs_checksum(buf, (size_t)k * 8);
        for (int j = 0; j < k; j++) dup += seen[j] == seen[k];
    }
    CHECK(dup == 0, "%d lengths collide", dup);
    for (size_t n = 8; n < 64; n += 8) {
        uint64_t r = xs_checksum(buf, n);
        for (size_t bit = 0; bit < n * 8; bit++) {
            buf[bit / 8] ^= (unsigned char)(1 << (bit % 8));
            missed += xs_checksum(buf, n) == r;
            buf[bit / 8] ^= (unsigned char)(1 << (bit % 8));
        }
    }
    CHECK(missed == 0, "%d flips in short inputs not detected", missed);
    /* all-zero inputs of different lengths differ; swapped words are seen */
    static unsigned char zero[4096];
    CHECK(xs_checksum(zero, 4096) != xs_checksum(zero, 4088), "zero lengths collide");
    CHECK(xs_checksum(zero, 4096) != 0, "zero input gives zero");
    unsigned char sw[64];
    memcpy(sw, buf, 64);
    memcpy(sw, buf + 8, 8);
    memcpy(sw + 8, buf, 8);
    CHECK(xs_checksum(sw, 64) != xs_checksum(buf, 64), "swapped words (two lanes) not seen");
    memcpy(sw, buf, 64);
    memcpy(sw, buf + 32, 8);
    memcpy(sw + 32, buf, 8);
    CHECK(xs_checksum(sw, 64) != xs_checksum(buf, 64), "swapped words (one lane) not seen");
    /* the byte order is fixed, not the host's: a known value */
    CHECK(xs_checksum("abcdefgh", 8) == xs_checksum("abcdefgh", 8) && xs_checksum("abcdefgh", 8) != xs_checksum("bacdefgh", 8),
          "order");
    TEST_DONE();
}

/* --------------------------------------------------------------- pack -- */

/* What the progress callback saw. */
typedef struct prog {
    uint64_t last, total;
    int calls;
} prog;

static void progress(void *ctx, uint64_t done, uint64_t tot) {
    prog *pc = ctx;
    CHECK(done >= pc->last && done <= tot, "progress went back or over: %llu after %llu of %llu",
          (unsigned long long)done, (unsigned long long)pc->last, (unsigned long long)tot);
    pc->last = done;
    pc->total = tot;
    pc->calls++;
}

/* The store over the model's own files: every expert read equals the
 * model's, with O_DIRECT (in 4 MiB chunks and, forced, in 4 KiB ones, so
 * ranges straddle chunks) and buffered, from several threads; the bytes it
 * reports reading cover each expert's parts with at most a block of slack
 * at each end of each range. */
static void check_model_store(const moe_model *m, const char *dir) {
    for (int mode = 0; mode < 3; mode++) {
        if (mode == 1) setenv("MOE_TEST_READ_CHUNK", "4096", 1);
        if (mode == 2) setenv("MOE_XSTORE_DIRECT", "0", 1);
        xstore *x = NULL;
        CHECK(xs_open_model(m, dir, &x) == MOE_OK, "xs_open_model (mode %d): %s", mode, moe_errmsg());
        if (x) {
            printf("model store, mode %d: %s reads\n", mode, xs_direct(x) ? "O_DIRECT" : "buffered");
            CHECK(!xs_is_pack(x) && !strcmp(xs_path(x), m->dir) && !strcmp(xs_dir(x), dir), "model store: %s %s",
                  xs_path(x), xs_dir(x));
            if (mode == 2) CHECK(!xs_direct(x), "MOE_XSTORE_DIRECT=0 still direct");
            verify_all(m, x);
            read_concurrently(m, x);
            for (int l = 0; l < m->cfg.pub.n_layers; l++)
                for (int e = 0; xs_record_of(x, l, 0) && e < m->cfg.pub.n_experts; e++) {
                    const xs_record *r = xs_record_of(x, l, e);
                    uint64_t payload = 0, got = xs_read_bytes(x, l, e);
                    for (int i = 0; i < 3; i++)
                        payload += (uint64_t)r->part[i].rows *
                                   (r->part[i].row_bytes + (wfmt_is_quant(r->part[i].fmt) ? 2 * r->part[i].sb_row_bytes : 0));
                    CHECK(got % XS_ALIGN == 0 && got >= payload && got <= payload + 18 * XS_ALIGN,
                          "layer %d expert %d: %llu bytes read for %llu of weights", l, e, (unsigned long long)got,
                          (unsigned long long)payload);
                }
            xs_close(x);
        }
    }
    unsetenv("MOE_TEST_READ_CHUNK");
    unsetenv("MOE_XSTORE_DIRECT");
}

static int test_pack(const char *dir, const char *model) {
    rm_rf(dir);
    mkdirs(dir);
    moe_model *m = load(model);
    if (!m) TEST_DONE();
    char path[4200];
    snprintf(path, sizeof path, "%s/experts.pack", dir);
    if (m->cfg.pub.n_moe_layers == 0) {
        EXPECT(xs_build(m, path, NULL, NULL), MOE_EINVAL, "no MoE layers");
        CHECK(access(path, F_OK) != 0, "a pack of a dense model was written");
        xstore *x = NULL;
        EXPECT(xs_open_model(m, dir, &x), MOE_EINVAL, "no MoE layers");
        moe_model_free(m);
        TEST_DONE();
    }
    prog pc = {0, 0, 0};
    CHECK(xs_build(m, path, progress, &pc) == MOE_OK, "xs_build: %s", moe_errmsg());
    char tmp[4300];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    CHECK(access(tmp, F_OK) != 0, "%s left behind", tmp);
    struct stat s;
    CHECK(stat(path, &s) == 0 && s.st_size % XS_ALIGN == 0, "pack size %lld", (long long)s.st_size);
    CHECK(pc.calls >= 2 && pc.last == pc.total && pc.total == (uint64_t)s.st_size, "progress: %d calls, last %llu of %llu",
          pc.calls, (unsigned long long)pc.last, (unsigned long long)pc.total);
    xstore *x = NULL;
    CHECK(xs_open(m, path, &x) == MOE_OK, "xs_open: %s", moe_errmsg());
    if (x) {
        CHECK(!strcmp(xs_path(x), path), "xs_path");
        uint64_t sum = 0;
        for (int l = 0; l < m->cfg.pub.n_layers; l++)
            for (int e = 0; xs_record_of(x, l, 0) && e < m->cfg.pub.n_experts; e++) sum += xs_record_of(x, l, e)->bytes;
        CHECK(sum == xs_total_bytes(x) && sum < (uint64_t)s.st_size, "total bytes %llu", (unsigned long long)sum);
        verify_all(m, x);
        read_concurrently(m, x);
        /* bad arguments */
        int l0 = 0;
        while (!m->layers[l0].is_moe) l0++;
        unsigned char *buf = aligned_buf(xs_slot_bytes(x, l0) + XS_ALIGN);
        EXPECT(xs_read(x, l0, m->cfg.pub.n_experts, buf), MOE_EINVAL, "no such record");
        EXPECT(xs_read(x, l0, 0, buf + 8), MOE_EINVAL, "aligned");
        free(buf);
        xs_close(x);
    }
    /* the same pack read without O_DIRECT */
    setenv("MOE_XSTORE_DIRECT", "0", 1);
    x = NULL;
    CHECK(xs_open(m, path, &x) == MOE_OK, "xs_open buffered: %s", moe_errmsg());
    if (x) {
        CHECK(!xs_direct(x), "MOE_XSTORE_DIRECT=0 still direct");
        verify_all(m, x);
        xs_close(x);
    }
    unsetenv("MOE_XSTORE_DIRECT");
    xs_close(NULL);
    check_model_store(m, dir);
    moe_model_free(m);
    rm_rf(dir);
    TEST_DONE();
}

/* -------------------------------------------------------------- stale -- */

static void expect_rebuild(const moe_model *m, const char *path, int want_built, const char *why) {
    xstore *x = NULL;
    int built = -1;
    moe_status st = xs_open_or_build(m, path, NULL, NULL, &built, NULL, 0, &x);
    CHECK(st == MOE_OK && built == want_built, "%s: xs_open_or_build: %s, built %d (expected %d)", why,
          moe_errmsg(), built, want_built);
    if (x) verify_all(m, x);
    xs_close(x);
}

static int test_stale(const char *dir, const char *model) {
    rm_rf(dir);
    char copy[4200], path[4300], file[4300];
    snprintf(copy, sizeof copy, "%s/model", dir);
    CHECK(copy_dir(model, copy) == 0, "copy %s", model);
    snprintf(path, sizeof path, "%s/experts.pack", dir);
    moe_model *m = load(copy);
    if (!m) TEST_DONE();
    xstore *x = NULL;
    expect_rebuild(m, path, 1, "missing");
    expect_rebuild(m, path, 0, "unchanged");

    /* config.json changed (one more newline: the same model, another file) */
    snprintf(file, sizeof file, "%s/config.json", copy);
    size_t n;
    unsigned char *cfg = read_file(file, &n);
    CHECK(cfg != NULL, "read %s", file);
    if (cfg) {
        cfg[n] = '\n';
        write_file(file, cfg, n + 1);
        free(cfg);
    }
    EXPECT(xs_open(m, path, &x), MOE_EFORMAT, "stale pack (built from another model)");
    CHECK(x == NULL, "a stale pack was opened");
    expect_rebuild(m, path, 1, "config.json changed");
    expect_rebuild(m, path, 0, "unchanged after the rebuild");

    /* a shard's modification time changed */
    const char *shard = m->shards[m->n_shards - 1]->path;
    struct timespec ts[2] = {{1000000000, 0}, {1000000000, 0}};
    CHECK(utimensat(AT_FDCWD, shard, ts, 0) == 0, "utimensat %s", shard);
    EXPECT(xs_open(m, path, &x), MOE_EFORMAT, "stale");
    expect_rebuild(m, path, 1, "mtime changed");

    /* a shard's size changed (the same modification time put back) */
    FILE *f = fopen(shard, "ab");
    CHECK(f && fwrite("\0\0\0\0\0\0\0\0", 1, 8, f) == 8, "append to %s", shard);
    if (f) fclose(f);
    CHECK(utimensat(AT_FDCWD, shard, ts, 0) == 0, "utimensat %s", shard);
    EXPECT(xs_open(m, path, &x), MOE_EFORMAT, "stale");
    expect_rebuild(m, path, 1, "size changed");
    expect_rebuild(m, path, 0, "unchanged at the end");

    /* a shard gone: the fingerprint cannot be taken, nothing is rebuilt */
    char gone[4300];
    snprintf(gone, sizeof gone, "%s.gone", shard);
    CHECK(rename(shard, gone) == 0, "rename %s", shard);
    int built = -1;
    EXPECT(xs_open_or_build(m, path, NULL, NULL, &built, NULL, 0, &x), MOE_EIO, "cannot stat");
    CHECK(built == 0, "rebuilt without its model");
    CHECK(rename(gone, shard) == 0, "rename back %s", shard);
    moe_model_free(m);
    rm_rf(dir);
    TEST_DONE();
}

/* ------------------------------------------------------------ corrupt -- */

static const char *g_tmp; /* a scratch pack path */

/* Writes img[n] to the scratch path and expects xs_open to fail with `what`. */
static void expect_open_fails(const moe_model *m, const unsigned char *img, size_t n, moe_status want, const char *what,
                              const char *why) {
    xstore *x = NULL;
    CHECK(write_file(g_tmp, img, n) == 0, "write %s", g_tmp);
    moe_status st = xs_open(m, g_tmp, &x);
    CHECK(st == want && has(moe_errmsg(), what) && has(moe_errmsg(), g_tmp) && !x,
          "%s: got %s \"%s\", expected %s \"...%s...\"", why, moe_status_name(st), moe_errmsg(), moe_status_name(want),
          what);
    xs_close(x);
}

static void put32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static void add64(unsigned char *p, uint64_t d) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    v += d;
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}

/* Alters the header of a copy of img with fn, reseals it and expects `what`. */
typedef void (*alter_fn)(unsigned char *img, size_t entry);
static void expect_resealed_fails(const moe_model *m, const unsigned char *img, size_t n, size_t entry, alter_fn fn,
                                  const char *what) {
    unsigned char *c = malloc(n);
    memcpy(c, img, n);
    fn(c, entry);
    CHECK(xs_reseal(m, c, n) == MOE_OK, "reseal: %s", moe_errmsg());
    expect_open_fails(m, c, n, MOE_EFORMAT, what, what);
    free(c);
}

/* table entry k starts at 128 + 248 k; its parts at +32 + 72 i */
static void alter_offset(unsigned char *c, size_t k) { add64(c + 128 + 248 * k + 8, XS_ALIGN); }
static void alter_bytes(unsigned char *c, size_t k) { add64(c + 128 + 248 * k + 16, XS_ALIGN); }
static void alter_layer(unsigned char *c, size_t k) { add64(c + 128 + 248 * k, 1); }
static void alter_gate_fmt(unsigned char *c, size_t k) { put32(c + 128 + 248 * k + 32, 99); }
static void alter_down_rows(unsigned char *c, size_t k) { add64(c + 128 + 248 * k + 32 + 144 + 8, 1); }
static void alter_up_cols(unsigned char *c, size_t k) { add64(c + 128 + 248 * k + 32 + 72 + 16, (uint64_t)-1); }
static void alter_up_data(unsigned char *c, size_t k) { add64(c + 128 + 248 * k + 32 + 72 + 32, (uint64_t)1 << 40); }
static void alter_part_pad(unsigned char *c, size_t k) { c[128 + 248 * k + 32 + 28] = 1; }
static void alter_records(unsigned char *c, size_t k) { (void)k, add64(c + 40, 1); }
static void alter_experts(unsigned char *c, size_t k) { (void)k, put32(c + 28, 1u << 30); }
static void alter_data_off(unsigned char *c, size_t k) { (void)k, add64(c + 56, XS_ALIGN); }
static void alter_reserved(unsigned char *c, size_t k) { (void)k, c[100] = 7; }
static void alter_version(unsigned char *c, size_t k) { (void)k, put32(c + 8, 2); }
static void alter_nothing(unsigned char *c, size_t k) { (void)c, (void)k; }

static int test_corrupt(const char *dir, const char *model) {
    rm_rf(dir);
    mkdirs(dir);
    char path[4200], tmp[4200];
    snprintf(path, sizeof path, "%s/experts.pack", dir);
    snprintf(tmp, sizeof tmp, "%s/scratch.pack", dir);
    g_tmp = tmp;
    moe_model *m = load(model);
    if (!m) TEST_DONE();
    CHECK(xs_build(m, path, NULL, NULL) == MOE_OK, "xs_build: %s", moe_errmsg());
    size_t n;
    unsigned char *img = read_file(path, &n);
    CHECK(img && n > 2 * XS_ALIGN, "read %s", path);
    if (!img) TEST_DONE();
    const moe_config *c = &m->cfg.pub;
    size_t n_rec = (size_t)c->n_moe_layers * (size_t)c->n_experts, last = n_rec - 1;
    int l_last = c->n_layers - 1;
    while (!m->layers[l_last].is_moe) l_last--;

    /* the file's length */
    expect_open_fails(m, img, 0, MOE_EFORMAT, "truncated", "empty");
    expect_open_fails(m, img, 100, MOE_EFORMAT, "truncated", "100 bytes");
    expect_open_fails(m, img, 3000, MOE_EFORMAT, "truncated", "part of the header");
    expect_open_fails(m, img, n - XS_ALIGN, MOE_EFORMAT, "truncated", "one block short");
    expect_open_fails(m, img, n - 1, MOE_EFORMAT, "truncated", "one byte short");
    unsigned char *longer = calloc(n + XS_ALIGN, 1);
    memcpy(longer, img, n);
    expect_open_fails(m, longer, n + XS_ALIGN, MOE_EFORMAT, "longer than its header says", "longer");
    free(longer);

    /* flipped header bytes, not resealed */
    unsigned char *c2 = malloc(n);
    struct { size_t off; const char *what; } flips[] = {
        {0, "not an expert pack"}, {9, "version"}, {20, "stale pack"}, {26, "corrupt header (layers"},
        {72, "corrupt header (checksum"}, {130, "corrupt header (checksum"}, {128 + 24, "corrupt header (checksum"},
        {128 + 248 * last + 200, "corrupt header (checksum"}, {XS_ALIGN - 1, "corrupt header (checksum"},
    };
    for (size_t i = 0; i < sizeof flips / sizeof *flips; i++) {
        memcpy(c2, img, n);
        c2[flips[i].off] ^= 0x10;
        char why[64];
        snprintf(why, sizeof why, "byte %zu flipped", flips[i].off);
        expect_open_fails(m, c2, n, MOE_EFORMAT, flips[i].what, why);
    }

    /* header fields altered and resealed: each caught by its own check */
    expect_resealed_fails(m, img, n, 0, alter_offset, "layer 0 expert 0: offset is");
    expect_resealed_fails(m, img, n, last, alter_bytes, "bytes is");
    expect_resealed_fails(m, img, n, 3, alter_layer, "layer is");
    expect_resealed_fails(m, img, n, 1, alter_gate_fmt, "gate fmt is 99");
    expect_resealed_fails(m, img, n, 2, alter_down_rows, "down rows is");
    expect_resealed_fails(m, img, n, 2, alter_up_cols, "up cols is");
    expect_resealed_fails(m, img, n, last, alter_up_data, "up data_off is");
    expect_resealed_fails(m, img, n, 0, alter_part_pad, "gate reserved is");
    expect_resealed_fails(m, img, n, 0, alter_records, "records is");
    expect_resealed_fails(m, img, n, 0, alter_experts, "experts is 1073741824");
    expect_resealed_fails(m, img, n, 0, alter_data_off, "data offset is");
    expect_resealed_fails(m, img, n, 0, alter_reserved, "reserved bytes are not zero");
    expect_resealed_fails(m, img, n, 0, alter_version, "pack version 2");
    size_t pad = 128 + 248 * n_rec;
    if (pad < XS_ALIGN) {
        memcpy(c2, img, n);
        c2[pad] = 1;
        CHECK(xs_reseal(m, c2, n) == MOE_OK, "reseal");
        expect_open_fails(m, c2, n, MOE_EFORMAT, "padding after the table", "padding");
    }
    /* resealing an unaltered pack changes nothing */
    memcpy(c2, img, n);
    alter_nothing(c2, 0);
    CHECK(xs_reseal(m, c2, n) == MOE_OK && !memcmp(c2, img, n), "reseal altered a good pack");
    EXPECT(xs_reseal(m, c2, 100), MOE_EFORMAT, "shorter than its header");

    /* a flipped byte inside a record: opens, that record fails its checksum, the others read */
    memcpy(c2, img, n);
    xstore *x = NULL;
    CHECK(write_file(tmp, c2, n) == 0 && xs_open(m, tmp, &x) == MOE_OK, "open scratch: %s", moe_errmsg());
    const xs_record *r = x ? xs_record_of(x, l_last, c->n_experts - 1) : NULL;
    uint64_t flip_at = r ? r->offset + r->part[2].data_off + 5 : 0;
    xs_close(x);
    x = NULL;
    c2[flip_at] ^= 1;
    CHECK(write_file(tmp, c2, n) == 0 && xs_open(m, tmp, &x) == MOE_OK, "open with a bad record: %s", moe_errmsg());
    if (x) {
        unsigned char *buf = aligned_buf(xs_slot_bytes(x, l_last));
        char what[64];
        snprintf(what, sizeof what, "layer %d expert %d: checksum mismatch", l_last, c->n_experts - 1);
        EXPECT(xs_read(x, l_last, c->n_experts - 1, buf), MOE_EFORMAT, what);
        CHECK(has(moe_errmsg(), tmp), "message does not name the pack: %s", moe_errmsg());
        CHECK(xs_read(x, l_last, 0, buf) == MOE_OK, "a good record: %s", moe_errmsg());
        free(buf);
        xs_close(x);
    }
    /* the padding inside a record is covered too */
    memcpy(c2, img, n);
    c2[2 * XS_ALIGN - 1] ^= 0x80; /* the last byte of the first record (the fixtures' records are one block) */
    x = NULL;
    CHECK(write_file(tmp, c2, n) == 0 && xs_open(m, tmp, &x) == MOE_OK, "open: %s", moe_errmsg());
    if (x) {
        const xs_record *r0 = xs_record_of(x, 0, 0) ? xs_record_of(x, 0, 0) : xs_record_of(x, 1, 0);
        int l0 = xs_record_of(x, 0, 0) ? 0 : 1;
        unsigned char *buf = aligned_buf(xs_slot_bytes(x, l0));
        if (r0->offset + r0->bytes == 2 * XS_ALIGN) EXPECT(xs_read(x, l0, 0, buf), MOE_EFORMAT, "checksum mismatch");
        free(buf);
        xs_close(x);
    }

    /* truncated after it was opened: a short read is an error, not garbage */
    x = NULL;
    CHECK(write_file(tmp, img, n) == 0 && xs_open(m, tmp, &x) == MOE_OK, "open: %s", moe_errmsg());
    if (x) {
        const xs_record *rl = xs_record_of(x, l_last, c->n_experts - 1);
        unsigned char *buf = aligned_buf(xs_slot_bytes(x, l_last));
        CHECK(truncate(tmp, (off_t)(rl->offset + XS_ALIGN / 2)) == 0, "truncate");
        EXPECT(xs_read(x, l_last, c->n_experts - 1, buf), MOE_EIO, "short read");
        CHECK(truncate(tmp, (off_t)rl->offset) == 0, "truncate");
        EXPECT(xs_read(x, l_last, c->n_experts - 1, buf), MOE_EIO, "truncated after it was opened");
        CHECK(xs_read(x, l_last, 0, buf) == MOE_OK, "a record before the cut: %s", moe_errmsg());
        free(buf);
        xs_close(x);
    }
    /* xs_open_or_build replaces a corrupt pack */
    memcpy(c2, img, n);
    c2[130] ^= 1;
    write_file(tmp, c2, n);
    int built = -1;
    x = NULL;
    CHECK(xs_open_or_build(m, tmp, NULL, NULL, &built, NULL, 0, &x) == MOE_OK && built == 1, "rebuild corrupt: %s",
          moe_errmsg());
    if (x) verify_all(m, x);
    xs_close(x);
    free(c2);
    free(img);
    moe_model_free(m);
    rm_rf(dir);
    TEST_DONE();
}

/* ---------------------------------------------------------------- shm -- */

static int test_shm(const char *model) {
    char path[256];
    snprintf(path, sizeof path, "/dev/shm/moe-test-xstore-%d.pack", (int)getpid());
    moe_model *m = load(model);
    if (!m) TEST_DONE();
    CHECK(xs_build(m, path, NULL, NULL) == MOE_OK, "xs_build on tmpfs: %s", moe_errmsg());
    for (int direct = 1; direct >= 0; direct--) {
        if (!direct) setenv("MOE_XSTORE_DIRECT", "0", 1);
        xstore *x = NULL;
        CHECK(xs_open(m, path, &x) == MOE_OK, "xs_open on tmpfs: %s", moe_errmsg());
        if (x) {
            printf("tmpfs: %s reads\n", xs_direct(x) ? "O_DIRECT" : "buffered");
            if (!direct) CHECK(!xs_direct(x), "still direct");
            verify_all(m, x);
            xs_close(x);
        }
        unsetenv("MOE_XSTORE_DIRECT");
    }
    unlink(path);
    moe_model_free(m);
    TEST_DONE();
}

/* ------------------------------------------------------------- errors -- */

static void test_cache_dir(const char *dir, const char *model) {
    char a[4200], b[4200], c[4200], slash[4200], real[4096];
    unsetenv("MOE_CACHE_DIR");
    unsetenv("XDG_CACHE_HOME");
    CHECK(realpath(model, real) != NULL, "realpath");
    const char *base = strrchr(real, '/') + 1;
    CHECK(xs_cache_dir(model, dir, 0, a, sizeof a) == MOE_OK, "xs_cache_dir: %s", moe_errmsg());
    size_t rl = strlen(dir);
    CHECK(!strncmp(a, dir, rl) && a[rl] == '/' && !strncmp(a + rl + 1, base, strlen(base)) &&
              a[rl + 1 + strlen(base)] == '-' && strlen(a + rl + 2 + strlen(base)) == 16,
          "cache dir %s: expected %s/%s-<16 hex digits>", a, dir, base);
    snprintf(slash, sizeof slash, "%s/", model);
    CHECK(xs_cache_dir(slash, dir, 0, b, sizeof b) == MOE_OK && !strcmp(a, b), "%s and %s differ", a, b);
    CHECK(xs_cache_dir(dir, dir, 0, c, sizeof c) == MOE_OK && strcmp(a, c), "two models share %s", a);
    struct stat s;
    CHECK(stat(a, &s) != 0, "created without create");
    CHECK(xs_cache_dir(model, dir, 1, b, sizeof b) == MOE_OK && stat(b, &s) == 0 && S_ISDIR(s.st_mode),
          "create: %s", moe_errmsg());
    /* the default root */
    char root[4200], want[4300];
    snprintf(root, sizeof root, "%s/env/a/b", dir);
    setenv("MOE_CACHE_DIR", root, 1);
    CHECK(xs_cache_dir(model, NULL, 1, b, sizeof b) == MOE_OK && !strncmp(b, root, strlen(root)) && stat(b, &s) == 0,
          "MOE_CACHE_DIR: %s %s", b, moe_errmsg());
    unsetenv("MOE_CACHE_DIR");
    setenv("XDG_CACHE_HOME", root, 1);
    snprintf(want, sizeof want, "%s/moe/", root);
    CHECK(xs_cache_dir(model, NULL, 0, b, sizeof b) == MOE_OK && !strncmp(b, want, strlen(want)), "XDG: %s", b);
    unsetenv("XDG_CACHE_HOME");
    const char *home = getenv("HOME");
    char *saved = home ? strdup(home) : NULL;
    setenv("HOME", root, 1);
    snprintf(want, sizeof want, "%s/.cache/moe/", root);
    CHECK(xs_cache_dir(model, NULL, 0, b, sizeof b) == MOE_OK && !strncmp(b, want, strlen(want)), "HOME: %s", b);
    unsetenv("HOME");
    EXPECT(xs_cache_dir(model, NULL, 0, b, sizeof b), MOE_EINVAL, "MOE_CACHE_DIR");
    if (saved) setenv("HOME", saved, 1);
    free(saved);
    EXPECT(xs_cache_dir(model, "/etc/passwd/x", 1, b, sizeof b), MOE_EIO, "cannot create");
    EXPECT(xs_cache_dir("/nonexistent/model", dir, 0, b, sizeof b), MOE_EIO, "/nonexistent/model");
    EXPECT(xs_cache_dir(model, dir, 0, b, 10), MOE_EINVAL, "too long");
}

static int test_errors(const char *dir, const char *model, const char *dense) {
    rm_rf(dir);
    mkdirs(dir);
    moe_model *m = load(model), *d = load(dense);
    if (!m || !d) TEST_DONE();
    char path[4200], tmp[4300];
    snprintf(path, sizeof path, "%s/experts.pack", dir);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    xstore *x = NULL;

    EXPECT(xs_build(m, "/etc/passwd/x", NULL, NULL), MOE_EIO, "/etc/passwd/x.tmp: cannot create");
    EXPECT(xs_build(m, "/nonexistent-dir/experts.pack", NULL, NULL), MOE_EIO, "cannot create");
    EXPECT(xs_open(m, path, &x), MOE_EIO, "cannot open");
    EXPECT(xs_build(d, path, NULL, NULL), MOE_EINVAL, "no MoE layers");
    EXPECT(xs_open(d, path, &x), MOE_EINVAL, "no MoE layers");
    CHECK(x == NULL, "x set on failure");

    /* a write that fails (the file size limit: as a full disk would) leaves the previous pack */
    CHECK(xs_build(m, path, NULL, NULL) == MOE_OK, "xs_build: %s", moe_errmsg());
    struct rlimit old, lim;
    getrlimit(RLIMIT_FSIZE, &old);
    lim = old;
    lim.rlim_cur = 2 * XS_ALIGN;
    signal(SIGXFSZ, SIG_IGN);
    CHECK(setrlimit(RLIMIT_FSIZE, &lim) == 0, "setrlimit");
    EXPECT(xs_build(m, path, NULL, NULL), MOE_EIO, path);
    CHECK(setrlimit(RLIMIT_FSIZE, &old) == 0, "setrlimit back");
    CHECK(access(tmp, F_OK) != 0, "%s left behind after a failed write", tmp);
    CHECK(xs_open(m, path, &x) == MOE_OK, "the previous pack is gone: %s", moe_errmsg());
    xs_close(x);
    x = NULL;

    /* a second writer is refused and the first one's file left alone */
    int fd = open(tmp, O_WRONLY | O_CREAT, 0644);
    CHECK(fd >= 0 && flock(fd, LOCK_EX) == 0, "lock %s", tmp);
    EXPECT(xs_build(m, path, NULL, NULL), MOE_EIO, "another process is writing this pack");
    CHECK(access(tmp, F_OK) == 0, "the other writer's file was removed");
    close(fd);
    unlink(tmp);
    /* an unwritable directory */
    char ro[4200], ro_path[4300];
    snprintf(ro, sizeof ro, "%s/file", dir);
    write_file(ro, "x", 1);
    snprintf(ro_path, sizeof ro_path, "%s/experts.pack", ro);
    EXPECT(xs_build(m, ro_path, NULL, NULL), MOE_EIO, "cannot create");

    test_cache_dir(dir, model);

    /* moe_pack */
    moe_pack_params p;
    moe_pack_params_defaults(&p);
    moe_pack_result r;
    p.cache_dir = dir;
    EXPECT(moe_pack(dense, &p, &r), MOE_EINVAL, "no MoE layers");
    p.check = 1;
    EXPECT(moe_pack(model, &p, &r), MOE_EFORMAT, "no expert pack yet");
    p.check = 0;
    CHECK(moe_pack(model, &p, &r) == MOE_OK && r.built == 1, "moe_pack: %s", moe_errmsg());
    struct stat s;
    CHECK(stat(r.path, &s) == 0 && (uint64_t)s.st_size == r.bytes && r.records == (int64_t)m->cfg.pub.n_moe_layers * m->cfg.pub.n_experts,
          "moe_pack result: %s %llu bytes %lld records", r.path, (unsigned long long)r.bytes, (long long)r.records);
    CHECK(moe_pack(model, &p, &r) == MOE_OK && r.built == 0, "moe_pack again: %s", moe_errmsg());
    p.check = 1;
    p.n_threads = 3;
    CHECK(moe_pack(model, &p, &r) == MOE_OK && r.built == 0, "moe_pack check: %s", moe_errmsg());
    p.force = 1;
    CHECK(moe_pack(model, &p, &r) == MOE_OK && r.built == 1, "moe_pack force check: %s", moe_errmsg());
    p.force = 0;
    EXPECT(moe_pack("/nonexistent", &p, &r), MOE_EIO, "/nonexistent");
    EXPECT(moe_pack(NULL, &p, &r), MOE_EINVAL, "no model directory");

    moe_model_free(m);
    moe_model_free(d);
    rm_rf(dir);
    TEST_DONE();
}

/* -------------------------------------------------------------- tools -- */

static int tool_flip(const char *file, const char *off) {
    long long o = atoll(off);
    int fd = open(file, O_RDWR);
    unsigned char b;
    if (fd < 0 || pread(fd, &b, 1, o) != 1) return 1;
    b ^= 0x40;
    int rc = pwrite(fd, &b, 1, o) != 1;
    return close(fd) != 0 || rc;
}

static int tool_record(const char *file, const char *model, int l, int e) {
    moe_model *m = load(model);
    xstore *x = NULL;
    if (!m || xs_open(m, file, &x)) {
        fprintf(stderr, "%s\n", moe_errmsg());
        return 1;
    }
    const xs_record *r = xs_record_of(x, l, e);
    if (r) printf("%llu\n", (unsigned long long)(r->offset + r->bytes / 2));
    xs_close(x);
    moe_model_free(m);
    return r == NULL;
}

int main(int argc, char **argv) {
    const char *cmd = argc > 1 ? argv[1] : "";
    if (!strcmp(cmd, "checksum")) return test_checksum();
    if (!strcmp(cmd, "pack") && argc == 4) return test_pack(argv[2], argv[3]);
    if (!strcmp(cmd, "stale") && argc == 4) return test_stale(argv[2], argv[3]);
    if (!strcmp(cmd, "corrupt") && argc == 4) return test_corrupt(argv[2], argv[3]);
    if (!strcmp(cmd, "shm") && argc == 3) return test_shm(argv[2]);
    if (!strcmp(cmd, "errors") && argc == 5) return test_errors(argv[2], argv[3], argv[4]);
    if (!strcmp(cmd, "flip") && argc == 4) return tool_flip(argv[2], argv[3]);
    if (!strcmp(cmd, "record") && argc == 6) return tool_record(argv[2], argv[3], atoi(argv[4]), atoi(argv[5]));
    fprintf(stderr, "usage: see the comment at the top of test_xstore.c\n");
    return 2;
}
