/* test_chat_templates.c — moe's chat templates against transformers' renders.
 *
 * usage: test_chat_templates FIXTURE_DIR
 * Every FIXTURE_DIR/<template>.json (written by tools/gen_chat_fixtures.py)
 * holds a tokenizer_config.json subset and cases: messages, tools,
 * add_generation_prompt, and what transformers' apply_chat_template returned:
 * the exact string, or the exception. The output must be byte-identical; a
 * raise_exception() (TemplateError) must give MOE_EINVAL with the same
 * message; any other exception must be a failure too. FIXTURE_DIR/probes.json
 * holds small templates rendered by transformers' own Jinja environment,
 * checked the same way through jinja_render. */
#include <dirent.h>
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "src/text/chat.h"
#include "src/text/jinja.h"
#include "tests/test.h"

static int g_verbose;

/* Prints where two renders first differ. */
static void show_diff(const char *want, size_t wn, const char *got, size_t gn) {
    size_t i = 0;
    while (i < wn && i < gn && want[i] == got[i])
        i++;
    size_t from = i > 40 ? i - 40 : 0;
    fprintf(stderr, "    first difference at byte %zu (want %zu bytes, got %zu)\n", i, wn, gn);
    fprintf(stderr, "    want: ...%.*s...\n", (int)((wn - from) < 100 ? wn - from : 100), want + from);
    fprintf(stderr, "    got:  ...%.*s...\n", (int)((gn - from) < 100 ? gn - from : 100), got + from);
}

/* Checks one result against its record ({"output": ...} or {"error": {"type", "message"}}). */
static int check_result(const char *what, const json_t *rec, moe_status st, const char *out, size_t out_len) {
    const json_t *want = json_object_get(rec, "output"), *err = json_object_get(rec, "error");
    if (want) {
        int ok =
            st == MOE_OK && out_len == json_string_length(want) && memcmp(out, json_string_value(want), out_len) == 0;
        CHECK(ok, "%s: output differs from transformers' (status %s: %s)", what, moe_status_name(st),
              st ? moe_errmsg() : "");
        if (!ok && st == MOE_OK) show_diff(json_string_value(want), json_string_length(want), out, out_len);
        return ok;
    }
    const char *type = json_string_value(json_object_get(err, "type"));
    const char *msg = json_string_value(json_object_get(err, "message"));
    if (type && strcmp(type, "TemplateError") == 0) {
        int ok = st == MOE_EINVAL && strcmp(moe_errmsg(), msg) == 0;
        CHECK(ok, "%s: want raise_exception(\"%s\"), got %s \"%s\"", what, msg, moe_status_name(st),
              st ? moe_errmsg() : "");
        return ok;
    }
    int ok = st != MOE_OK;
    CHECK(ok, "%s: transformers raised %s (%s), moe rendered %zu bytes", what, type, msg, out_len);
    if (ok && g_verbose) printf("  %s: %s (%s) ~ %s: %s\n", what, type, msg, moe_status_name(st), moe_errmsg());
    return ok;
}

static int run_template_fixture(const char *path, const json_t *fx) {
    const char *name = json_string_value(json_object_get(fx, "template"));
    char *cfg = json_dumps(json_object_get(fx, "config"), JSON_COMPACT);
    chat_template *ct = NULL;
    moe_status st = chat_template_load(cfg, NULL, &ct);
    free(cfg);
    const json_t *load_error = json_object_get(fx, "load_error");
    if (load_error && !json_is_null(load_error)) {
        CHECK(st == MOE_EUNSUPPORTED, "%s: transformers could not apply a template (%s); moe's load gave %s", path,
              json_string_value(json_object_get(load_error, "type")), moe_status_name(st));
        chat_template_free(ct);
        return 0;
    }
    CHECK(st == MOE_OK, "%s: load failed: %s", path, moe_errmsg());
    if (st != MOE_OK) return 0;
    size_t i, passed = 0, n = 0;
    const json_t *c;
    json_array_foreach(json_object_get(fx, "cases"), i, c) {
        char what[256];
        snprintf(what, sizeof what, "%s/%s", name, json_string_value(json_object_get(c, "name")));
        const json_t *tools = json_object_get(c, "tools");
        char *out = NULL;
        size_t len = 0;
        st = chat_template_apply(ct, json_object_get(c, "messages"), json_is_null(tools) ? NULL : tools,
                                 json_is_true(json_object_get(c, "add_generation_prompt")), &out, &len);
        passed += (size_t)check_result(what, c, st, out, len);
        n++;
        free(out);
    }
    printf("%-36s %zu/%zu cases identical\n", name, passed, n);
    chat_template_free(ct);
    return (int)n;
}

static int run_probes(const json_t *fx) {
    size_t i, passed = 0, n = 0;
    const json_t *p;
    json_array_foreach(json_object_get(fx, "probes"), i, p) {
        char what[256];
        snprintf(what, sizeof what, "probe %s", json_string_value(json_object_get(p, "name")));
        const json_t *src = json_object_get(p, "template");
        jinja_tmpl *t = NULL;
        char *out = NULL;
        size_t len = 0;
        moe_status st = jinja_parse(json_string_value(src), json_string_length(src), &t);
        if (st == MOE_OK) st = jinja_render(t, json_object_get(p, "context"), &out, &len);
        passed += (size_t)check_result(what, p, st, out, len);
        n++;
        free(out);
        jinja_free(t);
    }
    printf("%-36s %zu/%zu identical\n", "probes", passed, n);
    return (int)n;
}

static int by_name(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s FIXTURE_DIR [-v]\n", argv[0]);
        return 2;
    }
    g_verbose = argc > 2 && strcmp(argv[2], "-v") == 0;
    DIR *d = opendir(argv[1]);
    CHECK(d != NULL, "cannot open %s", argv[1]);
    if (!d) TEST_DONE();
    char *names[256];
    int nn = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL && nn < 256) {
        size_t k = strlen(e->d_name);
        if (k > 5 && strcmp(e->d_name + k - 5, ".json") == 0) names[nn++] = strdup(e->d_name);
    }
    closedir(d);
    qsort(names, (size_t)nn, sizeof *names, by_name);
    int cases = 0;
    for (int i = 0; i < nn; i++) {
        char path[4096];
        snprintf(path, sizeof path, "%s/%s", argv[1], names[i]);
        json_error_t jerr;
        json_t *fx = json_load_file(path, 0, &jerr);
        CHECK(fx != NULL, "%s: %s", path, jerr.text);
        if (fx) cases += json_object_get(fx, "probes") ? run_probes(fx) : run_template_fixture(path, fx);
        json_decref(fx);
        free(names[i]);
    }
    CHECK(cases > 100, "only %d fixture cases found in %s", cases, argv[1]);
    TEST_DONE();
}
