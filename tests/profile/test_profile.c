/* test_profile.c — expert profiles (src/experts/xprofile.c, moe profile):
 *   counts MODEL...      the model's routing counts: after N tokens each MoE
 *                        layer's counts sum to N x top_k, one token picks
 *                        top_k distinct experts, dense or out-of-range
 *                        layers are refused, reset zeroes, the same tokens
 *                        give the same counts; moe_profile_write writes them
 *                        as a profile that reads back equal and fits the model
 *   format DIR DOC       xp_write -> xp_read round trip; malformed files, each
 *                        refused with its message; xp_check_model against
 *                        other shapes; xp_hottest's order and ties; the
 *                        example in DOC (docs/PROFILE.md) is a valid profile
 *   check FILE MODEL N   what `moe profile` wrote: it reads, is of MODEL,
 *                        counts N tokens, every layer sums to N x top_k
 */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "src/experts/xprofile.h"
#include "src/model/model.h"
#include "moe.h"
#include "../test.h"

static int contains(const char *s, const char *sub) { return strstr(s, sub) != NULL; }

static void write_file(const char *path, const char *text) {
    FILE *f = fopen(path, "w");
    if (f) {
        fputs(text, f);
        fclose(f);
    }
}

/* ------------------------------------------------------------- counts -- */

/* The counts of every layer ([n_layers x E], 0 for dense layers). */
static int64_t *all_counts(const moe_model *m) {
    const moe_config *c = moe_model_config(m);
    int64_t *all = calloc((size_t)c->n_layers * (size_t)c->n_experts, sizeof *all);
    for (int l = 0; all && l < c->n_layers; l++)
        if (m->cfg.layer_moe[l]) moe_model_expert_counts(m, l, all + (size_t)l * (size_t)c->n_experts);
    return all;
}

static void test_counts_of(const char *dir, const char *tmp) {
    moe_model *m = NULL;
    moe_seq *s = NULL;
    if (moe_model_load(dir, NULL, &m)) {
        CHECK(0, "%s: %s", dir, moe_errmsg());
        return;
    }
    const moe_config *c = moe_model_config(m);
    int E = c->n_experts, K = c->n_experts_per_tok, L = c->n_layers;
    moe_seq_params sp;
    moe_seq_params_defaults(&sp);
    sp.n_ctx = 64;
    sp.n_batch = 8; /* several batches per evaluation */
    CHECK(moe_seq_new(m, &sp, &s) == MOE_OK, "%s", moe_errmsg());
    int32_t tok[29];
    for (int i = 0; i < 29; i++)
        tok[i] = (int32_t)((i * 7919 + 3) % c->vocab_size);
    int64_t *counts = malloc((size_t)E * sizeof *counts);

    /* a fresh model has counted nothing; one token picks K distinct experts */
    int64_t *first = all_counts(m);
    for (int64_t i = 0; i < (int64_t)L * E; i++)
        CHECK(first[i] == 0, "%s: a fresh model's count %lld is %lld", dir, (long long)i, (long long)first[i]);
    free(first);
    CHECK(moe_seq_eval(s, tok, 1, NULL, 0) == MOE_OK, "%s", moe_errmsg());
    for (int l = 0; l < L; l++) {
        if (!m->cfg.layer_moe[l]) continue;
        CHECK(moe_model_expert_counts(m, l, counts) == MOE_OK, "%s", moe_errmsg());
        int ones = 0, zeros = 0;
        for (int e = 0; e < E; e++)
            ones += counts[e] == 1, zeros += counts[e] == 0;
        CHECK(ones == K && zeros == E - K,
              "%s layer %d: one token: %d experts chosen once, %d never, expected %d and %d", dir, l, ones, zeros, K,
              E - K);
    }

    /* N more tokens: every MoE layer has counted (1 + N) x K choices */
    CHECK(moe_seq_eval(s, tok + 1, 28, NULL, 0) == MOE_OK, "%s", moe_errmsg());
    int n_moe = 0, n_dense = 0;
    for (int l = 0; l < L; l++) {
        moe_status st = moe_model_expert_counts(m, l, counts);
        if (!m->cfg.layer_moe[l]) {
            n_dense++;
            CHECK(st == MOE_EINVAL && contains(moe_errmsg(), "not a MoE layer"), "%s: dense layer %d: %s", dir, l,
                  moe_errmsg());
            continue;
        }
        n_moe++;
        int64_t sum = 0;
        for (int e = 0; e < E; e++)
            sum += counts[e];
        CHECK(st == MOE_OK && sum == 29 * K, "%s layer %d: counts sum to %lld, expected 29 x %d", dir, l,
              (long long)sum, K);
    }
    CHECK(n_moe == c->n_moe_layers, "%s: %d MoE layers, config says %d", dir, n_moe, c->n_moe_layers);
    CHECK(moe_model_expert_counts(m, -1, counts) == MOE_EINVAL, "layer -1 accepted");
    CHECK(moe_model_expert_counts(m, L, counts) == MOE_EINVAL, "layer %d accepted", L);

    /* the same tokens again from zero (a new sequence): the same counts */
    int64_t *before = all_counts(m);
    moe_model_reset_expert_counts(m);
    int64_t *zero = all_counts(m);
    for (int64_t i = 0; i < (int64_t)L * E; i++)
        CHECK(zero[i] == 0, "%s: count %lld is %lld after a reset", dir, (long long)i, (long long)zero[i]);
    moe_seq_free(s);
    s = NULL;
    CHECK(moe_seq_new(m, &sp, &s) == MOE_OK, "%s", moe_errmsg());
    CHECK(moe_seq_eval(s, tok, 29, NULL, 0) == MOE_OK, "%s", moe_errmsg());
    int64_t *again = all_counts(m);
    CHECK(!memcmp(before, again, (size_t)L * (size_t)E * sizeof *before), "%s: the same tokens counted differently",
          dir);

    /* as a profile: written, read back equal, of this model */
    char path[4200];
    snprintf(path, sizeof path, "%s/%s.json", tmp, c->model_type);
    CHECK(moe_profile_write(m, path, 29, "some text.txt") == MOE_OK, "%s", moe_errmsg());
    xp_profile *p = NULL;
    CHECK(xp_read(path, &p) == MOE_OK, "%s", moe_errmsg());
    if (p) {
        CHECK(xp_check_model(p, path, c, m->cfg.layer_moe) == MOE_OK, "%s", moe_errmsg());
        CHECK(p->tokens == 29 && p->top_k == K && p->text && !strcmp(p->text, "some text.txt"), "%s: header", path);
        for (int l = 0; l < L; l++)
            if (m->cfg.layer_moe[l])
                CHECK(xp_counts(p, l) && !memcmp(xp_counts(p, l), again + (size_t)l * E, (size_t)E * sizeof *again),
                      "%s: layer %d's counts differ", path, l);
        xp_free(p);
    }
    /* counts that do not add up to the tokens claimed: refused, nothing written */
    snprintf(path, sizeof path, "%s/%s-wrong.json", tmp, c->model_type);
    CHECK(moe_profile_write(m, path, 30, NULL) == MOE_EINVAL && contains(moe_errmsg(), "expected tokens x top_k"),
          "wrong tokens: %s", moe_errmsg());
    CHECK(access(path, F_OK) != 0, "%s written anyway", path);
    free(before);
    free(zero);
    free(again);
    free(counts);
    moe_seq_free(s);
    moe_model_free(m);
    printf("%s: %d MoE layers, %d dense, %d experts, top %d\n", dir, n_moe, n_dense, E, K);
}

/* ------------------------------------------------------------- format -- */

/* A profile of 5 layers (1 and 3 dense) of 6 experts, top 2, 10 tokens. */
static xp_profile *sample(void) {
    static const unsigned char is_moe[5] = {1, 0, 1, 0, 1};
    static const int64_t rows[3][6] = {{5, 9, 5, 1, 0, 0}, {10, 10, 0, 0, 0, 0}, {3, 3, 4, 4, 3, 3}};
    xp_profile *p = NULL;
    if (xp_new("qwen2_moe", 5, 6, 2, is_moe, &p)) return NULL;
    p->tokens = 10;
    for (int r = 0; r < 3; r++)
        memcpy(xp_counts(p, 2 * r), rows[r], sizeof rows[r]);
    return p;
}

static void test_round_trip(const char *dir) {
    char path[4200];
    snprintf(path, sizeof path, "%s/round.json", dir);
    xp_profile *p = sample(), *q = NULL;
    CHECK(p && (p->text = strdup("calib \"set\" \xc3\xa9\\1.txt")), "sample");
    if (!p) return;
    CHECK(xp_write(path, p) == MOE_OK, "%s", moe_errmsg());
    CHECK(xp_read(path, &q) == MOE_OK, "%s", moe_errmsg());
    if (q) {
        CHECK(!strcmp(q->model_type, p->model_type) && q->n_layers == 5 && q->n_experts == 6 && q->top_k == 2 &&
                  q->tokens == 10 && q->n_moe == 3,
              "header differs");
        CHECK(q->text && !strcmp(q->text, p->text), "text \"%s\"", q->text ? q->text : "(null)");
        for (int l = 0; l < 5; l++) {
            CHECK(!xp_counts(q, l) == !xp_counts(p, l), "layer %d is MoE in one only", l);
            if (xp_counts(p, l) && xp_counts(q, l))
                CHECK(!memcmp(xp_counts(q, l), xp_counts(p, l), 6 * sizeof(int64_t)), "layer %d's counts differ", l);
        }
        xp_free(q);
    }
    /* one line per layer: the file stays readable for a model of 64 layers */
    FILE *f = fopen(path, "r");
    int lines = 0, layer_lines = 0;
    char line[4096];
    while (f && fgets(line, sizeof line, f))
        lines++, layer_lines += contains(line, "\"layer\": ") && contains(line, "]}");
    if (f) fclose(f);
    CHECK(layer_lines == 3 && lines == 3 + 12, "%d lines, %d with a whole layer", lines, layer_lines);
    char tmp[4300];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    CHECK(access(path, F_OK) == 0 && access(tmp, F_OK) != 0, "the .tmp file is left");

    /* a profile that does not hold together is not written; nor into a missing directory */
    xp_counts(p, 4)[0]++;
    snprintf(path, sizeof path, "%s/invalid.json", dir);
    CHECK(xp_write(path, p) == MOE_EFORMAT &&
              contains(moe_errmsg(), "layer 4: counts sum to 21, expected tokens x top_k = 20"),
          "%s", moe_errmsg());
    CHECK(access(path, F_OK) != 0, "an invalid profile was written");
    xp_counts(p, 4)[0]--;
    snprintf(path, sizeof path, "%s/no/such/dir.json", dir);
    CHECK(xp_write(path, p) == MOE_EIO && contains(moe_errmsg(), "no/such/dir.json.tmp: cannot create"), "%s",
          moe_errmsg());
    xp_free(p);
}

/* A valid profile's text with `from` replaced by `to` (the first occurrence). */
static char *edited(const char *from, const char *to) {
    static const char *good =
        "{\"format\": \"moe-expert-profile\", \"version\": 1, \"model_type\": \"mixtral\", \"n_layers\": 3,\n"
        " \"n_experts\": 4, \"top_k\": 2, \"tokens\": 5, \"text\": \"t.txt\", \"layers\": [\n"
        "  {\"layer\": 0, \"counts\": [5, 3, 1, 1]},\n"
        "  {\"layer\": 2, \"counts\": [0, 5, 5, 0]}]}\n";
    const char *at = strstr(good, from);
    if (!at) return NULL;
    size_t n = strlen(good) + strlen(to) + 1;
    char *s = malloc(n);
    snprintf(s, n, "%.*s%s%s", (int)(at - good), good, to, at + strlen(from));
    return s;
}

static void test_malformed(const char *dir) {
    static const struct {
        const char *from, *to, *msg;
    } cases[] = {
        {"{", "{", NULL}, /* the valid profile itself */
        {"]}\n", "]", "not JSON: "},
        {"{\"format\"", "[{\"format\"", "not JSON: "},
        {"\"text\"", "\"tokens\": 5, \"text\"", "duplicate object key"},
        {"{", "[1]", "not JSON"},
        {"\"moe-expert-profile\"", "\"moe-expert-profiles\"",
         "not an expert profile (\"format\" is not \"moe-expert-profile\")"},
        {"\"format\": \"moe-expert-profile\", ", "", "not an expert profile"},
        {"\"version\": 1", "\"version\": 2", "profile version 2 is not supported (this moe reads version 1)"},
        {"\"version\": 1", "\"version\": \"1\"", "\"version\" must be an integer"},
        {"\"model_type\": \"mixtral\"", "\"model_type\": 7", "\"model_type\" must be a string"},
        {"\"mixtral\"", "\"\"", "\"model_type\" must be 1 to 31 bytes"},
        {"\"mixtral\"", "\"mixtral_mixtral_mixtral_mixtral_\"", "\"model_type\" must be 1 to 31 bytes"},
        {"\"mixtral\"", "\"mix\\ntral\"", "model_type must be a non-empty line of text"},
        {"\"n_layers\": 3,", "", "\"n_layers\" is missing"},
        {"\"n_layers\": 3", "\"n_layers\": 3.0", "\"n_layers\" must be an integer"},
        {"\"n_layers\": 3", "\"n_layers\": 0", "\"n_layers\" 0 is out of range [1, 4096]"},
        {"\"n_layers\": 3", "\"n_layers\": 1000000000000", "\"n_layers\" 1000000000000 is out of range"},
        {"\"n_experts\": 4", "\"n_experts\": 70000", "\"n_experts\" 70000 is out of range [1, 65536]"},
        {"\"top_k\": 2", "\"top_k\": 5", "\"top_k\" 5 is out of range [1, 4]"},
        {"\"tokens\": 5", "\"tokens\": -5", "\"tokens\" -5 is out of range"},
        {"\"tokens\": 5", "\"tokens\": 99999999999999999999", "not JSON: too big integer"},
        {"\"t.txt\"", "[]", "\"text\" must be a string"},
        {"\"layers\": [", "\"layers\": 7, \"x\": [", "\"layers\" must be an array"},
        {"\"layers\": [\n  {\"layer\": 0, \"counts\": [5, 3, 1, 1]},\n  {\"layer\": 2, \"counts\": [0, 5, 5, 0]}]",
         "\"layers\": []", "\"layers\" is empty"},
        {"{\"layer\": 0, \"counts\": [5, 3, 1, 1]}", "7", "layers[0]: must be an object"},
        {"{\"layer\": 0, ", "{", "layers[0]: \"layer\" is missing"},
        {"\"layer\": 2", "\"layer\": 3", "layers[1]: \"layer\" 3 is out of range [0, 2]"},
        {"\"layer\": 2", "\"layer\": -1", "layers[1]: \"layer\" -1 is out of range [0, 2]"},
        {"\"layer\": 2", "\"layer\": 0", "layers[1]: layer 0 is given twice"},
        {"\"layer\": 2", "\"layer\": \"2\"", "layers[1]: \"layer\" must be an integer"},
        {"[0, 5, 5, 0]", "[0, 5, 5]", "layers[1]: counts has 3 values, expected n_experts = 4"},
        {"[0, 5, 5, 0]", "[0, 5, 5, 0, 0]", "layers[1]: counts has 5 values, expected n_experts = 4"},
        {"\"counts\": [0, 5, 5, 0]", "\"count\": [0, 5, 5, 0]", "layers[1]: \"counts\" must be an array"},
        {"[0, 5, 5, 0]", "[0, 5, 5.0, 0]", "layers[1]: counts[2] must be an integer"},
        {"[0, 5, 5, 0]", "[0, 5, null, 0]", "layers[1]: counts[2] must be an integer"},
        {"[0, 5, 5, 0]", "[1, 5, 5, -1]", "layers[1]: counts[3] is negative (-1)"},
        {"[0, 5, 5, 0]", "[0, 5, 4, 0]", "layer 2: counts sum to 9, expected tokens x top_k = 10"},
        {"[5, 3, 1, 1]", "[6, 2, 1, 1]", "layer 0: count 6 of expert 0 is outside [0, tokens = 5]"},
    };
    char path[4200];
    snprintf(path, sizeof path, "%s/bad.json", dir);
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        char *text = edited(cases[i].from, cases[i].to);
        CHECK(text, "case %zu: \"%s\" is not in the sample", i, cases[i].from);
        if (!text) continue;
        write_file(path, text);
        xp_profile *p = (xp_profile *)&p; /* must become NULL */
        moe_status st = xp_read(path, &p);
        if (!cases[i].msg) {
            CHECK(st == MOE_OK && p && p->n_moe == 2, "the valid sample: %s", moe_errmsg());
        } else {
            CHECK(st == MOE_EFORMAT && !p, "case %zu (%s): status %d", i, cases[i].msg, st);
            CHECK(!strncmp(moe_errmsg(), path, strlen(path)) && contains(moe_errmsg(), cases[i].msg) &&
                      !strchr(moe_errmsg(), '\n'),
                  "case %zu: message \"%s\", expected \"%s\"", i, moe_errmsg(), cases[i].msg);
        }
        if (st == MOE_OK) xp_free(p);
        free(text);
    }
    /* JSON, but not an object; not there; not a file */
    write_file(path, "[1]");
    xp_profile *p = NULL;
    CHECK(xp_read(path, &p) == MOE_EFORMAT && !p && contains(moe_errmsg(), "not an expert profile (not a JSON object)"),
          "%s", moe_errmsg());
    snprintf(path, sizeof path, "%s/missing.json", dir);
    CHECK(xp_read(path, &p) == MOE_EIO && !p && contains(moe_errmsg(), "missing.json: cannot open"), "%s",
          moe_errmsg());
    CHECK(xp_read(dir, &p) == MOE_EIO && !p, "a directory: %s", moe_errmsg());
}

static void test_check_model(void) {
    xp_profile *p = sample();
    if (!p) return;
    unsigned char is_moe[6] = {1, 0, 1, 0, 1, 1};
    moe_config c = {.model_type = "qwen2_moe", .n_layers = 5, .n_experts = 6, .n_experts_per_tok = 4};
    CHECK(xp_check_model(p, "p.json", &c, is_moe) == MOE_OK, "the same shape (another top_k): %s", moe_errmsg());
    c.model_type = "mixtral";
    CHECK(xp_check_model(p, "p.json", &c, is_moe) == MOE_EINVAL &&
              !strcmp(moe_errmsg(), "p.json: the profile is of a qwen2_moe model, not mixtral"),
          "%s", moe_errmsg());
    c.model_type = "qwen2_moe";
    c.n_layers = 6;
    CHECK(xp_check_model(p, "p.json", &c, is_moe) == MOE_EINVAL &&
              contains(moe_errmsg(), "of a model of 5 layers and 6 experts, not 6 and 6"),
          "%s", moe_errmsg());
    c.n_layers = 5;
    c.n_experts = 8;
    CHECK(xp_check_model(p, "p.json", &c, is_moe) == MOE_EINVAL && contains(moe_errmsg(), "not 5 and 8"), "%s",
          moe_errmsg());
    c.n_experts = 6;
    is_moe[1] = 1;
    CHECK(xp_check_model(p, "p.json", &c, is_moe) == MOE_EINVAL &&
              contains(moe_errmsg(), "p.json: layer 1 is dense in the profile but MoE in the model"),
          "%s", moe_errmsg());
    is_moe[1] = 0;
    is_moe[4] = 0;
    CHECK(xp_check_model(p, "p.json", &c, is_moe) == MOE_EINVAL &&
              contains(moe_errmsg(), "layer 4 is MoE in the profile but dense"),
          "%s", moe_errmsg());
    xp_free(p);
}

/* The reference order: a stable sort of the indices by count, descending. */
static void hottest_ref(const int64_t *c, int E, int *order) {
    for (int e = 0; e < E; e++)
        order[e] = e;
    for (int i = 1; i < E; i++)
        for (int j = i; j > 0 && c[order[j - 1]] < c[order[j]]; j--) {
            int t = order[j];
            order[j] = order[j - 1];
            order[j - 1] = t;
        }
}

static void test_hottest(void) {
    xp_profile *p = sample(); /* layer 0: {5, 9, 5, 1, 0, 0}; layer 4: {3, 3, 4, 4, 3, 3} */
    if (!p) return;
    int out[8] = {-1, -1, -1, -1, -1, -1, -1, -1};
    CHECK(xp_hottest(p, 0, 3, out) == 3 && out[0] == 1 && out[1] == 0 && out[2] == 2 && out[3] == -1,
          "layer 0, 3: %d %d %d %d", out[0], out[1], out[2], out[3]);
    CHECK(xp_hottest(p, 0, 6, out) == 6 && out[3] == 3 && out[4] == 4 && out[5] == 5, "layer 0, all: ... %d %d %d",
          out[3], out[4], out[5]);
    CHECK(xp_hottest(p, 4, 4, out) == 4 && out[0] == 2 && out[1] == 3 && out[2] == 0 && out[3] == 1,
          "layer 4, 4: %d %d %d %d", out[0], out[1], out[2], out[3]);
    CHECK(xp_hottest(p, 0, 1, out) == 1 && out[0] == 1, "layer 0, 1: %d", out[0]);
    CHECK(xp_hottest(p, 0, 0, out) == 0, "n = 0");
    CHECK(xp_hottest(p, 0, 7, out) == 0, "n > n_experts");
    CHECK(xp_hottest(p, 1, 2, out) == 0 && xp_hottest(p, 5, 2, out) == 0 && xp_hottest(p, -1, 2, out) == 0,
          "a dense or missing layer");
    xp_free(p);

    /* random counts with many ties, every n, against the stable sort */
    unsigned char is_moe[1] = {1};
    uint64_t rng = 12345;
    for (int trial = 0; trial < 200; trial++) {
        int E = 1 + trial % 70;
        if (xp_new("olmoe", 1, E, 1, is_moe, &p)) break;
        int64_t *c = xp_counts(p, 0);
        for (int e = 0; e < E; e++)
            c[e] = (int64_t)((rng = rng * 6364136223846793005ull + 1442695040888963407ull) >> 60) % 5;
        int ref[70], got[70];
        hottest_ref(c, E, ref);
        for (int n = 0; n <= E; n++) {
            CHECK(xp_hottest(p, 0, n, got) == n, "E %d n %d", E, n);
            CHECK(!memcmp(got, ref, (size_t)n * sizeof *got), "trial %d: E %d n %d: order differs from the stable sort",
                  trial, E, n);
        }
        xp_free(p);
    }
}

static void test_new(void) {
    unsigned char is_moe[3] = {0, 0, 0};
    xp_profile *p = (xp_profile *)&p;
    CHECK(xp_new("mixtral", 3, 8, 2, is_moe, &p) == MOE_EINVAL && !p && contains(moe_errmsg(), "no MoE layer"),
          "no MoE layer");
    is_moe[1] = 1;
    CHECK(xp_new("mixtral", 3, 8, 9, is_moe, &p) == MOE_EINVAL && !p, "top_k > n_experts");
    CHECK(xp_new("mixtral", 0, 8, 2, is_moe, &p) == MOE_EINVAL && !p, "no layers");
    CHECK(xp_new("", 3, 8, 2, is_moe, &p) == MOE_EINVAL && !p, "no model_type");
    CHECK(xp_new("mixtral", 3, 8, 2, is_moe, &p) == MOE_OK && p && p->n_moe == 1 && xp_counts(p, 1) && !xp_counts(p, 0),
          "%s", moe_errmsg());
    xp_free(p);
    xp_free(NULL);
}

/* The first ```json block of the document at `doc` parses. */
static void test_doc_example(const char *doc) {
    FILE *f = fopen(doc, "rb");
    static char text[1 << 16];
    size_t n = f ? fread(text, 1, sizeof text - 1, f) : 0;
    if (f) fclose(f);
    text[n] = 0;
    char *start = strstr(text, "```json\n"), *end = start ? strstr(start + 8, "```") : NULL;
    CHECK(end, "%s: no ```json block", doc);
    if (!end) return;
    xp_profile *p = NULL;
    CHECK(xp_parse(start + 8, (size_t)(end - start - 8), doc, &p) == MOE_OK, "the example: %s", moe_errmsg());
    CHECK(p && p->n_moe == 3 && !xp_counts(p, 1), "the example has 3 MoE layers, layer 1 dense");
    xp_free(p);
}

/* -------------------------------------------------------------- check -- */

static void check_cli_profile(const char *path, const char *dir, long long tokens) {
    moe_model *m = NULL;
    xp_profile *p = NULL;
    CHECK(moe_model_load(dir, NULL, &m) == MOE_OK, "%s", moe_errmsg());
    CHECK(xp_read(path, &p) == MOE_OK, "%s", moe_errmsg());
    if (!m || !p) goto done;
    const moe_config *c = moe_model_config(m);
    CHECK(xp_check_model(p, path, c, m->cfg.layer_moe) == MOE_OK, "%s", moe_errmsg());
    CHECK(p->tokens == tokens && tokens > 0, "tokens %lld, the command said %lld", (long long)p->tokens, tokens);
    CHECK(p->top_k == c->n_experts_per_tok && p->n_moe == c->n_moe_layers, "top_k %d, %d MoE layers", p->top_k,
          p->n_moe);
    for (int l = 0; l < p->n_layers; l++) {
        const int64_t *cnt = xp_counts(p, l);
        if (!cnt) continue;
        int64_t sum = 0;
        for (int e = 0; e < p->n_experts; e++)
            sum += cnt[e];
        CHECK(sum == p->tokens * p->top_k, "layer %d sums to %lld", l, (long long)sum);
    }
done:
    xp_free(p);
    moe_model_free(m);
}

int main(int argc, char **argv) {
    const char *what = argc > 1 ? argv[1] : "";
    if (!strcmp(what, "counts") && argc > 3) {
        for (int i = 3; i < argc; i++)
            test_counts_of(argv[i], argv[2]);
    } else if (!strcmp(what, "format") && argc == 4) {
        test_doc_example(argv[3]);
        test_new();
        test_round_trip(argv[2]);
        test_malformed(argv[2]);
        test_check_model();
        test_hottest();
    } else if (!strcmp(what, "check") && argc == 5) {
        check_cli_profile(argv[2], argv[3], atoll(argv[4]));
    } else {
        fprintf(stderr, "usage: test_profile counts TMPDIR MODEL... | format TMPDIR DOC | check FILE MODEL TOKENS\n");
        return 2;
    }
    TEST_DONE();
}
