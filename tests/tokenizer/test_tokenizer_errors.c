/* test_tokenizer_errors.c — the tokenizer on synthetic tokenizer.json files:
 * error paths (each with its status and a message naming the culprit),
 * features checked by hand-worked expectations (unk fusing, the config's
 * add_bos_token, lstrip/rstrip/single_word, streaming Strip/Replace decoders),
 * and a few thousand mutated files that must load or fail, never crash.
 *
 *   test_tokenizer_errors SCRATCH_DIR
 */
#include <jansson.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <utf8proc.h>

#include "../../src/text/tokenizer.h"
#include "../test.h"

static char g_dir[2048];

static const char *write_file(const char *name, const char *text, size_t len) {
    static char path[4096];
    snprintf(path, sizeof path, "%s/%s", g_dir, name);
    FILE *f = fopen(path, "wb");
    if (!f) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(2);
    }
    fwrite(text, 1, len, f);
    fclose(f);
    return path;
}

static const char *write_json(const char *name, json_t *j) {
    char *s = json_dumps(j, JSON_COMPACT);
    const char *p = write_file(name, s, strlen(s));
    free(s);
    return p;
}

/* a small valid BPE tokenizer: a b ab c abc, <s> </s> <unk>, merges a+b, ab+c */
static json_t *base(void) {
    json_error_t e;
    json_t *j = json_loads(
        "{\"version\":\"1.0\",\"truncation\":null,\"padding\":null,"
        "\"added_tokens\":[{\"id\":5,\"content\":\"<s>\",\"special\":true,\"normalized\":false,\"lstrip\":false,\"rstrip\":false,\"single_word\":false},"
        "{\"id\":6,\"content\":\"</s>\",\"special\":true,\"normalized\":false,\"lstrip\":false,\"rstrip\":false,\"single_word\":false}],"
        "\"normalizer\":null,\"pre_tokenizer\":null,"
        "\"post_processor\":{\"type\":\"TemplateProcessing\",\"single\":[{\"SpecialToken\":{\"id\":\"<s>\",\"type_id\":0}},"
        "{\"Sequence\":{\"id\":\"A\",\"type_id\":0}}],\"pair\":[],\"special_tokens\":{\"<s>\":{\"id\":\"<s>\",\"ids\":[5],\"tokens\":[\"<s>\"]}}},"
        "\"decoder\":null,"
        "\"model\":{\"type\":\"BPE\",\"dropout\":null,\"unk_token\":\"<unk>\",\"fuse_unk\":true,\"byte_fallback\":false,"
        "\"vocab\":{\"a\":0,\"b\":1,\"ab\":2,\"c\":3,\"abc\":4,\"<s>\":5,\"</s>\":6,\"<unk>\":7,\" \":8},"
        "\"merges\":[\"a b\",[\"ab\",\"c\"]]}}",
        0, &e);
    if (!j) {
        fprintf(stderr, "base json: %s\n", e.text);
        exit(2);
    }
    return j;
}

static json_t *parse(const char *s) {
    json_error_t e;
    json_t *j = json_loads(s, 0, &e);
    if (!j) {
        fprintf(stderr, "bad test json %s: %s\n", s, e.text);
        exit(2);
    }
    return j;
}

/* Loads j and expects status want with `needle` in the message. */
static void expect_fail(const char *what, json_t *j, moe_status want, const char *needle) {
    tokenizer *t = (tokenizer *)1;
    moe_status st = tok_load(write_json("bad.json", j), NULL, &t);
    CHECK(st == want, "%s: got %s (%s), want %s", what, moe_status_name(st), moe_errmsg(), moe_status_name(want));
    CHECK(t == NULL, "%s: *out not NULL on failure", what);
    CHECK(strstr(moe_errmsg(), needle) != NULL, "%s: message \"%s\" does not name \"%s\"", what, moe_errmsg(), needle);
    if (st == MOE_OK) tok_free(t);
    json_decref(j);
}

static json_t *with(json_t *j, const char *path, json_t *v) { /* path: "model.vocab" etc. */
    char buf[256];
    snprintf(buf, sizeof buf, "%s", path);
    json_t *o = j;
    char *save = NULL, *key = strtok_r(buf, ".", &save), *next;
    while ((next = strtok_r(NULL, ".", &save))) {
        o = json_object_get(o, key);
        key = next;
    }
    json_object_set_new(o, key, v);
    return j;
}

static void test_errors(void) {
    tokenizer *t = (tokenizer *)1;
    char missing[4096];
    snprintf(missing, sizeof missing, "%s/nonexistent.json", g_dir);
    CHECK(tok_load(missing, NULL, &t) == MOE_EIO && t == NULL, "missing file: %s", moe_errmsg());
    CHECK(strstr(moe_errmsg(), "nonexistent.json") != NULL, "missing file message: %s", moe_errmsg());
    CHECK(tok_load(write_file("trunc.json", "{\"model\": {", 11), NULL, &t) == MOE_EFORMAT, "malformed: %s", moe_errmsg());
    CHECK(strstr(moe_errmsg(), "line") != NULL, "malformed message: %s", moe_errmsg());
    CHECK(tok_load(write_file("arr.json", "[1,2]", 5), NULL, &t) == MOE_EFORMAT, "array: %s", moe_errmsg());
    CHECK(tok_load(NULL, NULL, &t) == MOE_EINVAL, "NULL path");

    expect_fail("WordPiece", with(base(), "model.type", json_string("WordPiece")), MOE_EUNSUPPORTED, "WordPiece");
    expect_fail("Unigram", with(base(), "model.type", json_string("Unigram")), MOE_EUNSUPPORTED, "Unigram");
    expect_fail("WordLevel", with(base(), "model.type", json_string("WordLevel")), MOE_EUNSUPPORTED, "WordLevel");
    expect_fail("no model", with(base(), "model", json_null()), MOE_EFORMAT, "model");
    expect_fail("dropout", with(base(), "model.dropout", json_real(0.1)), MOE_EUNSUPPORTED, "dropout");
    expect_fail("version", with(base(), "version", json_string("2.0")), MOE_EUNSUPPORTED, "version");
    expect_fail("truncation", with(base(), "truncation", parse("{\"max_length\":5}")), MOE_EUNSUPPORTED, "truncation");
    expect_fail("padding", with(base(), "padding", parse("{\"strategy\":\"BatchLongest\"}")), MOE_EUNSUPPORTED, "padding");
    expect_fail("Precompiled", with(base(), "normalizer", parse("{\"type\":\"Precompiled\",\"precompiled_charsmap\":\"\"}")),
                MOE_EUNSUPPORTED, "Precompiled");
    expect_fail("BertNormalizer", with(base(), "normalizer", parse("{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"NFC\"},{\"type\":\"BertNormalizer\"}]}")),
                MOE_EUNSUPPORTED, "BertNormalizer");
    expect_fail("Whitespace", with(base(), "pre_tokenizer", parse("{\"type\":\"Whitespace\"}")), MOE_EUNSUPPORTED, "Whitespace");
    expect_fail("UnicodeScripts", with(base(), "pre_tokenizer", parse("{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"UnicodeScripts\"}]}")),
                MOE_EUNSUPPORTED, "UnicodeScripts");
    expect_fail("WordPiece decoder", with(base(), "decoder", parse("{\"type\":\"WordPiece\",\"prefix\":\"##\"}")), MOE_EUNSUPPORTED, "WordPiece");
    expect_fail("CTC", with(base(), "decoder", parse("{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"CTC\"}]}")), MOE_EUNSUPPORTED, "CTC");
    expect_fail("ByteFallback after Fuse", with(base(), "decoder", parse("{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"Fuse\"},{\"type\":\"ByteFallback\"}]}")),
                MOE_EUNSUPPORTED, "ByteFallback");
    expect_fail("processor", with(base(), "post_processor", parse("{\"type\":\"Frobnicate\"}")), MOE_EUNSUPPORTED, "Frobnicate");
    expect_fail("bad regex", with(base(), "pre_tokenizer", parse("{\"type\":\"Split\",\"pattern\":{\"Regex\":\"(a\"},\"behavior\":\"Isolated\",\"invert\":false}")),
                MOE_EUNSUPPORTED, "does not compile");
    expect_fail("bad behavior", with(base(), "pre_tokenizer", parse("{\"type\":\"Split\",\"pattern\":{\"String\":\" \"},\"behavior\":\"Sideways\",\"invert\":false}")),
                MOE_EUNSUPPORTED, "Sideways");
    expect_fail("merge unknown", with(base(), "model.merges", parse("[\"a x\"]")), MOE_EFORMAT, "merges[0]");
    expect_fail("merge result unknown", with(base(), "model.merges", parse("[\"b c\"]")), MOE_EFORMAT, "bc");
    expect_fail("merge format", with(base(), "model.merges", parse("[\"a b c\"]")), MOE_EFORMAT, "merges[0]");
    expect_fail("merge type", with(base(), "model.merges", parse("[7]")), MOE_EFORMAT, "merges[0]");
    expect_fail("id negative", with(base(), "model.vocab", parse("{\"a\":-1}")), MOE_EFORMAT, "\"a\"");
    expect_fail("id huge", with(base(), "model.vocab", parse("{\"a\":99999999999}")), MOE_EFORMAT, "\"a\"");
    expect_fail("id type", with(base(), "model.vocab", parse("{\"a\":\"0\"}")), MOE_EFORMAT, "\"a\"");
    expect_fail("id twice", with(base(), "model.vocab", parse("{\"a\":0,\"b\":0}")), MOE_EFORMAT, "id 0");
    expect_fail("vocab type", with(base(), "model.vocab", parse("[1]")), MOE_EFORMAT, "vocab");
    expect_fail("template special", with(base(), "post_processor.special_tokens", parse("{}")), MOE_EFORMAT, "<s>");
    expect_fail("template id", with(base(), "post_processor.special_tokens", parse("{\"<s>\":{\"id\":\"<s>\",\"ids\":[1000],\"tokens\":[\"<s>\"]}}")),
                MOE_EFORMAT, "TemplateProcessing");
    expect_fail("template B", with(base(), "post_processor.single", parse("[{\"Sequence\":{\"id\":\"B\",\"type_id\":0}}]")), MOE_EFORMAT, "B");
    expect_fail("added content", with(base(), "added_tokens", parse("[{\"id\":3}]")), MOE_EFORMAT, "added_tokens[0]");
    expect_fail("bool type", with(base(), "model.fuse_unk", json_string("yes")), MOE_EFORMAT, "fuse_unk");
    expect_fail("strip content", with(base(), "decoder", parse("{\"type\":\"Strip\",\"content\":\"ab\",\"start\":1,\"stop\":0}")), MOE_EFORMAT, "content");

    /* the config */
    json_t *j = base();
    const char *p = write_json("good.json", j);
    char good[4096];
    snprintf(good, sizeof good, "%s", p);
    json_decref(j);
    CHECK(tok_load(good, missing, &t) == MOE_EIO && t == NULL, "missing config: %s", moe_errmsg());
    CHECK(tok_load(good, write_file("badcfg.json", "{", 1), &t) == MOE_EFORMAT && t == NULL, "bad config: %s", moe_errmsg());
    /* unk_token not in the vocabulary: an error only when a character needs it (as HF) */
    j = with(base(), "model.unk_token", json_string("<nope>"));
    CHECK(tok_load(write_json("unk.json", j), NULL, &t) == MOE_OK, "unk not in vocab loads: %s", moe_errmsg());
    json_decref(j);
    int32_t *ids = NULL;
    size_t n = 0;
    CHECK(tok_encode(t, "ab", 2, 0, &ids, &n) == MOE_OK && n == 1, "known chars encode");
    free(ids);
    CHECK(tok_encode(t, "az", 2, 0, &ids, &n) == MOE_EFORMAT && ids == NULL && n == 0, "unknown char: %s", moe_errmsg());
    CHECK(strstr(moe_errmsg(), "<nope>") != NULL, "unk message: %s", moe_errmsg());
    tok_free(t);

    tok_free(NULL);
    detok_free(NULL);
    detok_reset(NULL);
}

/* ---------------------------------------------------- hand-worked cases -- */

static int ids_eq(const int32_t *a, size_t n, const int32_t *b, size_t m) {
    return n == m && (n == 0 || memcmp(a, b, n * sizeof *a) == 0);
}

#define EXPECT_IDS(t, text, special, ...)                                                                         \
    do {                                                                                                        \
        static const int32_t want_[] = {__VA_ARGS__};                                                           \
        int32_t *got_ = NULL;                                                                                   \
        size_t n_ = 0;                                                                                          \
        moe_status st_ = tok_encode(t, text, strlen(text), special, &got_, &n_);                                \
        CHECK(st_ == MOE_OK && ids_eq(got_, n_, want_, sizeof want_ / sizeof *want_), "encode(\"%s\", %d): %s [%zu ids: %d %d %d %d ...]", \
              text, special, moe_errmsg(), n_, n_ > 0 ? got_[0] : -9, n_ > 1 ? got_[1] : -9, n_ > 2 ? got_[2] : -9,  \
              n_ > 3 ? got_[3] : -9);                                                                           \
        free(got_);                                                                                             \
    } while (0)

static tokenizer *load_json(json_t *j, const char *cfg) {
    tokenizer *t = NULL;
    const char *cpath = NULL;
    char cbuf[4096];
    if (cfg) {
        snprintf(cbuf, sizeof cbuf, "%s", write_file("cfg.json", cfg, strlen(cfg)));
        cpath = cbuf;
    }
    moe_status st = tok_load(write_json("tok.json", j), cpath, &t);
    CHECK(st == MOE_OK, "load: %s", moe_errmsg());
    json_decref(j);
    return t;
}

static void expect_decode(tokenizer *t, const int32_t *ids, size_t n, const char *want) {
    char *s = NULL;
    size_t l = 0;
    CHECK(tok_decode(t, ids, n, 0, &s, &l) == MOE_OK && s && strcmp(s, want) == 0, "decode: \"%s\", want \"%s\"", s ? s : "(null)", want);
    /* streamed, one id at a time, the same */
    detok *d;
    char *out = NULL;
    size_t ol = 0;
    if (detok_new(t, 0, &d) == MOE_OK) {
        for (size_t i = 0; i < n; i++) detok_push(d, ids[i], &out, &ol);
        detok_flush(d, &out, &ol);
        CHECK(out && strcmp(out, want) == 0, "stream: \"%s\", want \"%s\"", out ? out : "(null)", want);
        detok_free(d);
    }
    free(out);
    free(s);
}

static void test_features(void) {
    tokenizer *t = load_json(base(), NULL);
    if (!t) return;
    EXPECT_IDS(t, "abcab", 0, 4, 2);
    EXPECT_IDS(t, "abcab", 1, 5, 4, 2);
    EXPECT_IDS(t, "abxxc", 0, 2, 7, 3);             /* unknown "xx" fused into one <unk> */
    EXPECT_IDS(t, "<s>ab</s>", 0, 5, 2, 6);         /* special tokens matched before BPE */
    EXPECT_IDS(t, "", 1, 5);
    CHECK(tok_bos_id(t) == 5 && tok_eos_id(t) == -1, "bos/eos from the template: %d %d", tok_bos_id(t), tok_eos_id(t));
    CHECK(tok_piece_to_id(t, "abc") == 4 && tok_piece_to_id(t, "</s>") == 6 && tok_piece_to_id(t, "zz") == -1, "piece_to_id");
    CHECK(tok_id_to_piece(t, 2) && strcmp(tok_id_to_piece(t, 2), "ab") == 0 && !tok_id_to_piece(t, 9) && !tok_id_to_piece(t, -1),
          "id_to_piece");
    CHECK(tok_is_special(t, 5) && !tok_is_special(t, 2), "is_special");
    CHECK(tok_vocab_size(t) == 9, "vocab size %d", tok_vocab_size(t));
    {
        int32_t ids[] = {5, 0, 1, 99, -3, 3};
        expect_decode(t, ids, 6, "<s> a b c"); /* no decoder: tokens joined by spaces; unknown ids skipped */
    }
    tok_free(t);

    t = load_json(with(base(), "model.fuse_unk", json_false()), NULL);
    EXPECT_IDS(t, "abxxc", 0, 2, 7, 7, 3);
    tok_free(t);

    /* no post_processor: the config's add_bos_token / add_eos_token (transformers' Llama convention) */
    t = load_json(with(base(), "post_processor", json_null()),
                  "{\"add_bos_token\":true,\"add_eos_token\":true,\"bos_token\":\"<s>\",\"eos_token\":{\"content\":\"</s>\"},\"model_max_length\":1000000000000000019884624838656}");
    EXPECT_IDS(t, "ab", 1, 5, 2, 6);
    EXPECT_IDS(t, "ab", 0, 2);
    CHECK(tok_bos_id(t) == 5 && tok_eos_id(t) == 6, "config bos/eos %d %d", tok_bos_id(t), tok_eos_id(t));
    tok_free(t);
    /* ... but a post_processor in tokenizer.json wins, as in Tokenizer.from_file */
    t = load_json(base(), "{\"add_bos_token\":false,\"add_eos_token\":true,\"bos_token\":\"<s>\",\"eos_token\":\"</s>\"}");
    EXPECT_IDS(t, "ab", 1, 5, 2);
    tok_free(t);

    /* added tokens: lstrip / rstrip eat the spaces around; single_word needs word boundaries */
    json_t *j = base();
    json_array_append_new(json_object_get(j, "added_tokens"),
                          parse("{\"id\":9,\"content\":\"<m>\",\"special\":false,\"normalized\":false,\"lstrip\":true,\"rstrip\":true,\"single_word\":false}"));
    json_array_append_new(json_object_get(j, "added_tokens"),
                          parse("{\"id\":10,\"content\":\"ca\",\"special\":false,\"normalized\":false,\"lstrip\":false,\"rstrip\":false,\"single_word\":true}"));
    t = load_json(j, NULL);
    EXPECT_IDS(t, "ab <m> c", 0, 2, 9, 3);
    EXPECT_IDS(t, "ab  <m>", 0, 2, 9);
    EXPECT_IDS(t, "abca", 0, 4, 0);      /* "ca" inside a word: not the added token */
    EXPECT_IDS(t, "ab ca", 0, 2, 8, 10); /* a whole word: the added token */
    CHECK(tok_piece_to_id(t, "<m>") == 9 && tok_piece_to_id(t, "ca") == 10, "added ids %d %d", tok_piece_to_id(t, "<m>"),
          tok_piece_to_id(t, "ca"));
    tok_free(t);

    /* streaming decoders: Strip after Fuse holds trailing spaces; Replace after Fuse holds a partial match */
    t = load_json(with(base(), "decoder", parse("{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"Fuse\"},"
                                                  "{\"type\":\"Replace\",\"pattern\":{\"String\":\"abc\"},\"content\":\"X\"},"
                                                  "{\"type\":\"Strip\",\"content\":\" \",\"start\":1,\"stop\":2}]}")),
                  NULL);
    {
        int32_t a[] = {8, 8, 0, 1, 3, 8, 0, 8, 8, 8};
        expect_decode(t, a, 10, " X a "); /* "  abc a   " -> Replace -> "  X a   " -> strip 1 left, 2 right */
        int32_t b[] = {0, 1, 0, 1, 3};
        expect_decode(t, b, 5, "abX");
    }
    tok_free(t);
    /* Metaspace decoder: the first token loses its leading replacement, the others turn it into a space */
    j = with(base(), "decoder", parse("{\"type\":\"Metaspace\",\"replacement\":\"a\",\"prepend_scheme\":\"always\",\"split\":true}"));
    t = load_json(j, NULL);
    {
        int32_t a[] = {2, 2, 1};
        expect_decode(t, a, 3, "b bb");
    }
    tok_free(t);

    /* byte-level pieces that split a character: held back until complete */
    json_t *bl = parse("{\"model\":{\"type\":\"BPE\",\"vocab\":{\"\xc3\x83\":0,\"\xc2\xa9\":1,\"a\":2,\"\xc3\x83\xc2\xa9\":3},\"merges\":[]},"
                       "\"decoder\":{\"type\":\"ByteLevel\"}}");
    t = load_json(bl, NULL);
    {
        int32_t a[] = {0, 1, 2};
        expect_decode(t, a, 3, "\xc3\xa9" "a"); /* bytes C3 A9 -> é */
        int32_t b[] = {0, 2};
        expect_decode(t, b, 2, "\xef\xbf\xbd" "a"); /* C3 'a': one U+FFFD */
        int32_t c[] = {2, 0};
        expect_decode(t, c, 2, "a\xef\xbf\xbd"); /* an incomplete tail becomes U+FFFD at flush */
        detok *d;
        char *out = NULL;
        size_t ol = 0;
        CHECK(detok_new(t, 0, &d) == MOE_OK, "detok_new");
        detok_push(d, 0, &out, &ol);
        CHECK(out && ol == 0, "half a character is held back (%zu bytes out)", ol);
        detok_push(d, 1, &out, &ol);
        CHECK(ol == 2 && memcmp(out, "\xc3\xa9", 2) == 0, "the character once complete");
        detok_free(d);
        free(out);
    }
    tok_free(t);
}

/* ------------------------------------------------------------ mutation -- */

static uint64_t g_rng = 0x9E3779B97F4A7C15ULL;
static uint32_t rnd(void) {
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (uint32_t)(g_rng >> 20);
}

/* A richer valid file to mutate: byte fallback, normalizers, pre-tokenizers, decoders. */
static json_t *rich(void) {
    json_t *j = base();
    json_t *vocab = json_object_get(json_object_get(j, "model"), "vocab");
    char buf[16];
    for (int b = 0; b < 256; b++) {
        snprintf(buf, sizeof buf, "<0x%02X>", b);
        json_object_set_new(vocab, buf, json_integer(20 + b));
    }
    json_object_set_new(vocab, "\xe2\x96\x81", json_integer(300));
    json_object_set_new(vocab, "\xe2\x96\x81" "a", json_integer(301));
    json_array_append_new(json_object_get(json_object_get(j, "model"), "merges"), json_string("\xe2\x96\x81 a"));
    json_object_set_new(json_object_get(j, "model"), "byte_fallback", json_true());
    json_object_set_new(j, "normalizer", parse("{\"type\":\"Sequence\",\"normalizers\":[{\"type\":\"NFKC\"},{\"type\":\"Prepend\",\"prepend\":\"\xe2\x96\x81\"},"
                                               "{\"type\":\"Replace\",\"pattern\":{\"String\":\" \"},\"content\":\"\xe2\x96\x81\"}]}"));
    json_object_set_new(j, "pre_tokenizer", parse("{\"type\":\"Sequence\",\"pretokenizers\":[{\"type\":\"Digits\",\"individual_digits\":true},"
                                                  "{\"type\":\"Split\",\"pattern\":{\"Regex\":\"\\\\s+|\\\\p{L}+\"},\"behavior\":\"MergedWithNext\",\"invert\":false},"
                                                  "{\"type\":\"Metaspace\",\"replacement\":\"\xe2\x96\x81\",\"prepend_scheme\":\"first\",\"split\":false}]}"));
    json_object_set_new(j, "decoder", parse("{\"type\":\"Sequence\",\"decoders\":[{\"type\":\"Replace\",\"pattern\":{\"String\":\"\xe2\x96\x81\"},\"content\":\" \"},"
                                            "{\"type\":\"ByteFallback\"},{\"type\":\"Fuse\"},{\"type\":\"Strip\",\"content\":\" \",\"start\":1,\"stop\":0}]}"));
    return j;
}

static void exercise(tokenizer *t) {
    static const char *texts[] = {"", "ab c", "abc\xe2\x82\xac 12 \xff x<s>", "\xf0\x9f\x98\x80  a\xcc\x81", "</s></s>"};
    for (size_t i = 0; i < sizeof texts / sizeof *texts; i++) {
        int32_t *ids = NULL;
        size_t n = 0;
        if (tok_encode(t, texts[i], strlen(texts[i]), (int)(i & 1), &ids, &n) == MOE_OK) {
            char *s = NULL;
            size_t l;
            tok_decode(t, ids, n, (int)(i & 1), &s, &l);
            free(s);
        }
        free(ids);
    }
    int32_t rid[16];
    for (int k = 0; k < 16; k++) rid[k] = (int32_t)(rnd() % 320) - 5;
    detok *d;
    if (detok_new(t, 0, &d) == MOE_OK) {
        char *out = NULL;
        size_t ol = 0;
        for (int k = 0; k < 16; k++) detok_push(d, rid[k], &out, &ol);
        detok_flush(d, &out, &ol);
        free(out);
        detok_free(d);
    }
}

static void test_mutations(void) {
    json_t *j = rich();
    char *good = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    size_t gl = strlen(good);
    tokenizer *t = NULL;
    CHECK(tok_load(write_file("rich.json", good, gl), NULL, &t) == MOE_OK, "rich tokenizer loads: %s", moe_errmsg());
    if (t) {
        EXPECT_IDS(t, "a", 0, 300, 0); /* "▁a" split by the regex into "▁" "a" */
        exercise(t);
        tok_free(t);
    }
    static const char junk[] = "{}[]\",:0123456789-.eE truefalsnul\\u00ff\xe2\x96\x81";
    int loaded = 0, failed = 0;
    char *buf = malloc(gl * 2 + 64);
    for (int it = 0; it < 3000; it++) {
        memcpy(buf, good, gl);
        size_t n = gl;
        int edits = 1 + (int)(rnd() % 4);
        for (int e = 0; e < edits; e++) {
            size_t at = rnd() % n;
            switch (rnd() % 5) {
            case 0: buf[at] = junk[rnd() % (sizeof junk - 1)]; break;           /* replace a byte */
            case 1: memmove(buf + at, buf + at + 1, n - at - 1); n--; break;     /* delete one */
            case 2: /* duplicate a span */
                if (n + 32 < gl * 2) {
                    size_t len = 1 + rnd() % 32;
                    if (at + len > n) len = n - at;
                    memmove(buf + at + len, buf + at, n - at);
                    n += len;
                }
                break;
            case 3: n = at + 1; break; /* truncate */
            default: { /* a digit run to something extreme */
                const char *rep[] = {"-1", "4294967296", "1e309", "0.5", "999999999999999999999", "null", "\"\""};
                const char *r = rep[rnd() % 7];
                size_t rl = strlen(r);
                if (n + rl < gl * 2) {
                    memmove(buf + at + rl, buf + at, n - at);
                    memcpy(buf + at, r, rl);
                    n += rl;
                }
            }
            }
            if (n == 0) n = 1;
        }
        t = NULL;
        moe_status st = tok_load(write_file("mut.json", buf, n), NULL, &t);
        if (st == MOE_OK) {
            loaded++;
            exercise(t);
            tok_free(t);
        } else {
            failed++;
            CHECK(t == NULL && moe_errmsg()[0], "mutation %d: failure without a message", it);
        }
    }
    printf("mutations: %d loaded, %d refused, none crashed\n", loaded, failed);
    free(buf);
    free(good);
}

/* NFC is computed chunk by chunk (tok_norm.c): compare with utf8proc on the
 * whole string, through a byte-level tokenizer whose decode(encode(s)) is
 * exactly the normalized s. */
static void test_nfc(void) {
    json_t *j = parse("{\"normalizer\":{\"type\":\"NFC\"},\"pre_tokenizer\":{\"type\":\"ByteLevel\",\"add_prefix_space\":false,\"use_regex\":false},"
                      "\"decoder\":{\"type\":\"ByteLevel\"},\"model\":{\"type\":\"BPE\",\"vocab\":{},\"merges\":[]}}");
    json_t *vocab = json_object_get(json_object_get(j, "model"), "vocab");
    for (int b = 0; b < 256; b++) { /* GPT-2's byte -> char map */
        int cp = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE ? b : b < '!' ? 256 + b : b < 0xA1 ? 256 + 33 + (b - 0x7F) : 256 + 67;
        char key[4];
        key[utf8proc_encode_char(cp, (utf8proc_uint8_t *)key)] = 0;
        json_object_set_new(vocab, key, json_integer(b));
    }
    tokenizer *t = load_json(j, NULL);
    if (!t) return;
    static const uint32_t pool[] = {
        'a', 'e', 'A', ' ', 0xE9, 0xC5, 0x300, 0x301, 0x308, 0x323, 0x327, 0x345, 0x344, 0x340, 0x1E17, 0x1EBF, 0x212B, 0x2126,
        0x958, 0x915, 0x93C, 0x9C7, 0x9BE, 0x9D7, 0x9CB, 0xB47, 0xB3E, 0xB56, 0xB57, 0xBC6, 0xBBE, 0xCC6, 0xCC2, 0xCD5, 0xD46,
        0xD3E, 0xDD9, 0xDCF, 0xDCA, 0xF73, 0xF71, 0xF72, 0x1025, 0x102E, 0x1B05, 0x1B35, 0x1100, 0x1161, 0x11A8, 0xAC00, 0xAC01,
        0x3099, 0x304B, 0x304C, 0x4E00, 0xF900, 0x2F800, 0x1F600, 0x1D15E, 0x1D165, 0x1D16E, 0x110BA, 0x11099, 0x1133E, 0x11347,
        0x0CBF, 0x0CD5, 0x05B8, 0x05D0, 0xFB2E, 0x0627, 0x0653, 0x0654, 0x0622, 0x30F, 0x1E0B, 0x1E0D, 0x307, 0x31B, 0x1A1};
    int bad = 0;
    for (int it = 0; it < 20000; it++) {
        char s[256];
        size_t n = 0;
        int k = 1 + (int)(rnd() % 12);
        for (int i = 0; i < k; i++) n += (size_t)utf8proc_encode_char((utf8proc_int32_t)pool[rnd() % (sizeof pool / sizeof *pool)], (utf8proc_uint8_t *)s + n);
        s[n] = 0;
        utf8proc_uint8_t *want = utf8proc_NFC((const utf8proc_uint8_t *)s);
        int32_t *ids = NULL;
        size_t m = 0;
        char *got = NULL;
        size_t gl = 0;
        if (tok_encode(t, s, n, 0, &ids, &m) || tok_decode(t, ids, m, 0, &got, &gl) || strcmp(got, (const char *)want) != 0) {
            if (bad++ < 5) CHECK(0, "NFC of \"%s\": \"%s\", utf8proc \"%s\"", s, got ? got : "(null)", (const char *)want);
        }
        free(want);
        free(ids);
        free(got);
    }
    CHECK(bad == 0, "NFC: %d of 20000 random strings differ from utf8proc", bad);
    tok_free(t);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s SCRATCH_DIR\n", argv[0]);
        return 2;
    }
    snprintf(g_dir, sizeof g_dir, "%s", argv[1]);
    mkdir(g_dir, 0755);
    test_errors();
    test_features();
    test_nfc();
    test_mutations();
    TEST_DONE();
}
