/* test_tokenizer.c — moe's tokenizer against Hugging Face `tokenizers`.
 *
 *   test_tokenizer FIXTURE_DIR TOKENIZER_DIR [name ...]
 *
 * For each tests/tokenizer/fixtures/<name>.json (made by
 * tools/gen_tokenizer_fixtures.py) it loads TOKENIZER_DIR/<name>/tokenizer.json
 * (+ tokenizer_config.json, as tools/fetch_tokenizers.sh lays them out) and
 * checks, string by string: ids with and without special tokens identical to
 * HF's, decode (skip_special_tokens false/true) identical to HF's,
 * decode(encode(s)) == s wherever HF round-trips, the ids HF gives every added
 * token, raw invalid-UTF-8 inputs, decodes of random id sequences, and that
 * the streaming detokenizer emits only whole UTF-8 characters and adds up to
 * tok_decode. Then the same strings from four threads at once (the word
 * cache). A tokenizer file that is missing is a failure, not a skip.
 */
#include <dirent.h>
#include <jansson.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "../../src/text/tok_internal.h" /* to switch the piece-cutting shortcut off (split_meta) */
#include "../../src/text/tokenizer.h"
#include "../test.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int utf8_ok(const unsigned char *s, size_t n) {
    for (size_t i = 0; i < n;) {
        unsigned char c = s[i];
        int w = c < 0x80 ? 1 : c >= 0xC2 && c <= 0xDF ? 2 : c >= 0xE0 && c <= 0xEF ? 3 : c >= 0xF0 && c <= 0xF4 ? 4 : 0;
        if (!w || i + (size_t)w > n) return 0;
        for (int k = 1; k < w; k++)
            if ((s[i + k] & 0xC0) != 0x80) return 0;
        if (c == 0xE0 && s[i + 1] < 0xA0) return 0;
        if (c == 0xED && s[i + 1] > 0x9F) return 0;
        if (c == 0xF0 && s[i + 1] < 0x90) return 0;
        if (c == 0xF4 && s[i + 1] > 0x8F) return 0;
        i += (size_t)w;
    }
    return 1;
}

static size_t json_ids(json_t *a, int32_t **out) {
    size_t n = json_array_size(a);
    *out = malloc((n ? n : 1) * sizeof **out);
    for (size_t i = 0; i < n; i++) (*out)[i] = (int32_t)json_integer_value(json_array_get(a, i));
    return n;
}

static void show_ids(const char *what, const int32_t *a, size_t n) {
    fprintf(stderr, "    %s (%zu):", what, n);
    for (size_t i = 0; i < n && i < 40; i++) fprintf(stderr, " %d", a[i]);
    fprintf(stderr, n > 40 ? " ...\n" : "\n");
}

/* Encodes text and compares with the expected ids; 1 if identical. */
static int check_encode(const tokenizer *t, const char *name, const char *text, size_t len, int special, json_t *want) {
    int32_t *ids = NULL, *exp;
    size_t n = 0, ne = json_ids(want, &exp);
    moe_status st = tok_encode(t, text, len, special, &ids, &n);
    int same = st == MOE_OK && n == ne && (n == 0 || memcmp(ids, exp, n * sizeof *ids) == 0);
    CHECK(same, "%s: encode(special=%d) of \"%.60s\"%s differs from HF (%s %s)", name, special, text, len > 60 ? "..." : "",
          moe_status_name(st), moe_errmsg());
    if (!same) {
        show_ids("moe", ids, n);
        show_ids("HF ", exp, ne);
    }
    free(ids);
    free(exp);
    return same;
}

static void check_decode(const tokenizer *t, const char *name, const int32_t *ids, size_t n, int skip, json_t *want) {
    char *text = NULL;
    size_t len = 0;
    moe_status st = tok_decode(t, ids, n, skip, &text, &len);
    const char *w = json_string_value(want);
    size_t wl = json_string_length(want);
    int same = st == MOE_OK && text && len == wl && memcmp(text, w, wl) == 0 && text[len] == 0;
    CHECK(same, "%s: decode(skip=%d) differs from HF:\n    moe: \"%s\"\n    HF:  \"%s\"", name, skip, text ? text : "(null)", w);
    free(text);
}

/* The streaming detokenizer adds up to tok_decode and emits whole characters only. */
static void check_stream(const tokenizer *t, const char *name, const int32_t *ids, size_t n, int skip) {
    char *want = NULL, *got = NULL;
    size_t wl = 0, gl = 0;
    detok *d = NULL;
    if (tok_decode(t, ids, n, skip, &want, &wl) || detok_new(t, skip, &d)) {
        CHECK(0, "%s: decode/detok_new failed: %s", name, moe_errmsg());
        free(want);
        return;
    }
    int chunks_ok = 1;
    for (size_t i = 0; i < n; i++) {
        size_t before = gl;
        if (detok_push(d, ids[i], &got, &gl)) {
            CHECK(0, "%s: detok_push failed: %s", name, moe_errmsg());
            break;
        }
        if (!utf8_ok((const unsigned char *)got + before, gl - before)) chunks_ok = 0;
    }
    size_t before = gl;
    CHECK(detok_flush(d, &got, &gl) == MOE_OK, "%s: detok_flush failed", name);
    if (!utf8_ok((const unsigned char *)got + before, gl - before)) chunks_ok = 0;
    CHECK(chunks_ok, "%s: the detokenizer emitted a partial UTF-8 sequence", name);
    CHECK(got && gl == wl && memcmp(got, want, wl) == 0 && got[gl] == 0,
          "%s: streamed text differs from tok_decode (skip=%d):\n    stream: \"%s\"\n    decode: \"%s\"", name, skip,
          got ? got : "(null)", want);
    free(got);
    free(want);
    detok_free(d);
}

/* ------------------------------------------------------------ threads -- */

typedef struct job {
    const tokenizer *t;
    json_t *cases;
    int seed, failures;
} job;

static void *encode_all(void *arg) {
    job *j = arg;
    size_t n = json_array_size(j->cases);
    for (size_t k = 0; k < n; k++) {
        json_t *c = json_array_get(j->cases, (k * 7 + (size_t)j->seed * 13) % n); /* a different order per thread */
        json_t *text = json_object_get(c, "text");
        int32_t *ids = NULL, *exp;
        size_t m = 0, ne = json_ids(json_object_get(c, "ids"), &exp);
        if (tok_encode(j->t, json_string_value(text), json_string_length(text), 0, &ids, &m) || m != ne ||
            (m && memcmp(ids, exp, m * sizeof *ids)))
            j->failures++;
        free(ids);
        free(exp);
    }
    return NULL;
}

/* ---------------------------------------------------------------- main -- */

static uint64_t rng_state = 88172645463325252ULL;
static uint32_t rnd(void) {
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state >> 11);
}

static int hexval(char c) { return c <= '9' ? c - '0' : (c | 0x20) - 'a' + 10; }

/* A variant fixture names a real file ("base") and the changes to make to it
 * ("patch": top-level sections; "added_patch": added tokens to change or
 * append), as tools/gen_tokenizer_fixtures.py made them for HF. Writes the
 * variant to TOKENIZER_DIR/<name>/tokenizer.json. */
static int make_variant(json_t *fx, const char *tokdir, const char *name, char *path, size_t cap) {
    const char *base = json_string_value(json_object_get(fx, "base"));
    char src[4096];
    snprintf(src, sizeof src, "%s/%s/tokenizer.json", tokdir, base);
    json_error_t je;
    json_t *spec = json_load_file(src, JSON_ALLOW_NUL, &je);
    CHECK(spec != NULL, "%s: base %s: %s", name, src, je.text);
    if (!spec) return 0;
    json_object_update(spec, json_object_get(fx, "patch"));
    json_t *added = json_object_get(spec, "added_tokens"), *ap = json_object_get(fx, "added_patch");
    for (size_t i = 0; i < json_array_size(ap); i++) {
        json_t *p = json_array_get(ap, i);
        const char *c = json_string_value(json_object_get(p, "content"));
        size_t k;
        for (k = 0; k < json_array_size(added); k++)
            if (strcmp(json_string_value(json_object_get(json_array_get(added, k), "content")), c) == 0) break;
        if (k < json_array_size(added)) {
            json_object_update(json_array_get(added, k), p);
        } else {
            json_t *a = json_pack("{s:i}", "id", 0);
            json_object_update(a, p);
            json_array_append_new(added, a);
        }
    }
    snprintf(path, cap, "%s/%s", tokdir, name);
    mkdir(path, 0755);
    snprintf(path, cap, "%s/%s/tokenizer.json", tokdir, name);
    int ok = json_dump_file(spec, path, JSON_COMPACT) == 0;
    CHECK(ok, "%s: cannot write %s", name, path);
    json_decref(spec);
    return ok;
}

static void run(const char *fixdir, const char *tokdir, const char *name) {
    char path[4096], cfg[4096];
    snprintf(path, sizeof path, "%s/%s.json", fixdir, name);
    json_error_t je;
    json_t *fx = json_load_file(path, JSON_ALLOW_NUL, &je);
    CHECK(fx != NULL, "%s: %s", path, je.text);
    if (!fx) return;
    const char *base = json_string_value(json_object_get(fx, "base"));
    snprintf(path, sizeof path, "%s/%s/tokenizer.json", tokdir, name);
    snprintf(cfg, sizeof cfg, "%s/%s/tokenizer_config.json", tokdir, base ? base : name);
    if (base && !make_variant(fx, tokdir, name, path, sizeof path)) {
        json_decref(fx);
        return;
    }
    tokenizer *t = NULL;
    double t0 = now_s();
    moe_status st = tok_load(path, cfg, &t);
    double load_ms = 1e3 * (now_s() - t0);
    CHECK(st == MOE_OK, "%s: tok_load: %s: %s (run tools/fetch_tokenizers.sh %s)", name, moe_status_name(st), moe_errmsg(),
          tokdir);
    if (st) {
        json_decref(fx);
        return;
    }
    const char *nm = name;
    int fail0 = g_failures;

    /* added tokens get HF's ids */
    json_t *added = json_object_get(fx, "added");
    for (size_t i = 0; i < json_array_size(added); i++) {
        json_t *a = json_array_get(added, i);
        const char *c = json_string_value(json_array_get(a, 0));
        json_t *id = json_array_get(a, 1);
        if (json_is_integer(id))
            CHECK(tok_piece_to_id(t, c) == (int32_t)json_integer_value(id), "%s: added token \"%s\": id %d, HF %d", nm, c,
                  tok_piece_to_id(t, c), (int)json_integer_value(id));
    }
    CHECK(tok_vocab_size(t) >= (int)json_integer_value(json_object_get(fx, "vocab_size")), "%s: vocab size %d < HF's %d", nm,
          tok_vocab_size(t), (int)json_integer_value(json_object_get(fx, "vocab_size")));

    /* strings */
    json_t *cases = json_object_get(fx, "cases");
    size_t n_cases = json_array_size(cases), enc_ok = 0, dec_ok = 0, roundtrips = 0;
    for (size_t i = 0; i < n_cases; i++) {
        json_t *c = json_array_get(cases, i);
        json_t *text = json_object_get(c, "text");
        const char *s = json_string_value(text);
        size_t sl = json_string_length(text);
        int ok = check_encode(t, nm, s, sl, 0, json_object_get(c, "ids"));
        ok &= check_encode(t, nm, s, sl, 1, json_object_get(c, "ids_special"));
        enc_ok += ok;
        int32_t *ids;
        size_t n = json_ids(json_object_get(c, "ids_special"), &ids);
        int f = g_failures;
        check_decode(t, nm, ids, n, 0, json_object_get(c, "decode"));
        check_decode(t, nm, ids, n, 1, json_object_get(c, "decode_skip"));
        dec_ok += f == g_failures;
        check_stream(t, nm, ids, n, 0);
        check_stream(t, nm, ids, n, 1);
        free(ids);
        n = json_ids(json_object_get(c, "ids"), &ids);
        check_stream(t, nm, ids, n, 0);
        free(ids);
        /* decode(encode(s)) == s wherever HF round-trips */
        json_t *dskip = json_object_get(c, "decode_skip");
        if (json_string_length(dskip) == sl && memcmp(json_string_value(dskip), s, sl) == 0) {
            int32_t *e = NULL;
            size_t en = 0;
            char *back = NULL;
            size_t bl = 0;
            if (!tok_encode(t, s, sl, 1, &e, &en) && !tok_decode(t, e, en, 1, &back, &bl)) {
                CHECK(bl == sl && memcmp(back, s, sl) == 0, "%s: decode(encode(\"%.60s\")) does not round-trip", nm, s);
                roundtrips++;
            }
            free(e);
            free(back);
        }
    }

    /* invalid UTF-8 input */
    json_t *raw = json_object_get(fx, "raw_bytes");
    for (size_t i = 0; i < json_array_size(raw); i++) {
        json_t *r = json_array_get(raw, i);
        const char *hex = json_string_value(json_object_get(r, "hex"));
        size_t hl = strlen(hex);
        char *bytes = malloc(hl / 2 + 1);
        for (size_t k = 0; k < hl / 2; k++) bytes[k] = (char)(hexval(hex[2 * k]) << 4 | hexval(hex[2 * k + 1]));
        check_encode(t, nm, bytes, hl / 2, 0, json_object_get(r, "ids"));
        free(bytes);
    }

    /* decodes of random id sequences: byte tokens, specials, invalid UTF-8 */
    json_t *dc = json_object_get(fx, "decode_cases");
    for (size_t i = 0; i < json_array_size(dc); i++) {
        json_t *c = json_array_get(dc, i);
        int32_t *ids;
        size_t n = json_ids(json_object_get(c, "ids"), &ids);
        check_decode(t, nm, ids, n, 0, json_object_get(c, "decode"));
        check_decode(t, nm, ids, n, 1, json_object_get(c, "decode_skip"));
        check_stream(t, nm, ids, n, 0);
        check_stream(t, nm, ids, n, 1);
        free(ids);
    }
    /* and more random sequences for the detokenizer alone (incl. out-of-range ids) */
    for (int r = 0; r < 200; r++) {
        int32_t ids[32];
        size_t n = 1 + rnd() % 32;
        for (size_t k = 0; k < n; k++) {
            uint32_t x = rnd() % 10;
            ids[k] = x < 3 ? (int32_t)(rnd() % 256) + (tok_piece_to_id(t, "<0x00>") >= 0 ? tok_piece_to_id(t, "<0x00>") : 0)
                     : x < 4 ? (int32_t)(rnd() % 300)
                     : x < 5 ? tok_vocab_size(t) - 1 - (int32_t)(rnd() % 300)
                     : x < 6 ? (int32_t)(rnd() % 2 ? -1 : tok_vocab_size(t) + 5)
                             : (int32_t)(rnd() % (uint32_t)tok_vocab_size(t));
        }
        check_stream(t, nm, ids, n, (int)(r & 1));
    }

    /* cutting long pieces before "▁" (tok_bpe.c) must not change a single id:
     * random concatenations of the strings, with the shortcut on and off */
    if (t->split_meta) {
        int diff = 0;
        for (int r = 0; r < 300; r++) {
            char buf[8192];
            size_t bl = 0;
            for (int k = 0; k < 6; k++) {
                json_t *text = json_object_get(json_array_get(cases, rnd() % n_cases), "text");
                size_t l = json_string_length(text);
                if (bl + l + 1 >= sizeof buf) break;
                memcpy(buf + bl, json_string_value(text), l);
                bl += l;
                buf[bl++] = " \n"[rnd() % 2];
            }
            int32_t *a = NULL, *b = NULL;
            size_t na = 0, nb = 0;
            tok_encode(t, buf, bl, 0, &a, &na);
            t->split_meta = 0;
            tok_encode(t, buf, bl, 0, &b, &nb);
            t->split_meta = 1;
            if (!(na == nb && memcmp(a, b, na * sizeof *a) == 0)) {
                if (diff++ == 0) {
                    fprintf(stderr, "    text: \"%.*s\"\n", (int)bl, buf);
                    show_ids("cut  ", a, na);
                    show_ids("whole", b, nb);
                }
            }
            free(a);
            free(b);
        }
        CHECK(diff == 0, "%s: cutting pieces before U+2581 changed %d of 300 encodes", nm, diff);
    }

    /* four threads at once over one tokenizer (the word cache is shared) */
    pthread_t th[4];
    job jobs[4];
    for (int k = 0; k < 4; k++) {
        jobs[k] = (job){t, cases, k, 0};
        pthread_create(&th[k], NULL, encode_all, &jobs[k]);
    }
    for (int k = 0; k < 4; k++) {
        pthread_join(th[k], NULL);
        CHECK(jobs[k].failures == 0, "%s: thread %d: %d encodes differ", nm, k, jobs[k].failures);
    }

    printf("%-22s load %5.0f ms  %3zu strings: %3zu/%zu encodes identical, %3zu/%zu decodes identical, %zu round-trips, "
           "%zu decode cases%s\n",
           nm, load_ms, n_cases, enc_ok, n_cases, dec_ok, n_cases, roundtrips, json_array_size(dc),
           g_failures == fail0 ? "" : "  FAILED");
    tok_free(t);
    json_decref(fx);
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: %s FIXTURE_DIR TOKENIZER_DIR [name ...]\n", argv[0]);
        return 2;
    }
    if (argc > 3) {
        for (int i = 3; i < argc; i++) run(argv[1], argv[2], argv[i]);
        TEST_DONE();
    }
    /* every fixture in the directory: real files first (variants need their base) */
    DIR *dir = opendir(argv[1]);
    CHECK(dir != NULL, "cannot open %s", argv[1]);
    char names[64][256];
    int n = 0;
    for (struct dirent *e; dir && (e = readdir(dir)) && n < 64;) {
        size_t l = strlen(e->d_name);
        if (l > 5 && l < 250 && strcmp(e->d_name + l - 5, ".json") == 0) {
            memcpy(names[n], e->d_name, l - 5);
            names[n++][l - 5] = 0;
        }
    }
    if (dir) closedir(dir);
    qsort(names, (size_t)n, sizeof names[0], (int (*)(const void *, const void *))strcmp);
    CHECK(n > 0, "no fixtures in %s", argv[1]);
    for (int i = 0; i < n; i++) run(argv[1], argv[2], names[i]);
    TEST_DONE();
}
