/* test_server_parse.c — the server's request parsers, tool-call parser and
 * response writers on their own (no model, no sockets): what a request
 * becomes for the chat template, which field an error names, what the
 * streams of both APIs look like. */
#include <stdlib.h>

#include "../../src/server/anthropic.h"
#include "../../src/server/openai.h"
#include "../../src/server/toolcall.h"
#include "../test.h"

/* Whether r->messages dumps (compact, in order) to `want`. */
static int messages_are(const req *r, const char *want) {
    char *s = json_dumps(r->messages, JSON_COMPACT);
    int ok = s && !strcmp(s, want);
    if (!ok) fprintf(stderr, "  messages: %s\n  expected: %s\n", s ? s : "(null)", want);
    free(s);
    return ok;
}

static int oai_chat(const char *body, req *r, req_error *e) { return oai_parse_chat(body, strlen(body), r, e); }

static void test_openai(void) {
    req r;
    req_error e;
    int rc = oai_chat("{\"model\":\"m\",\"messages\":[{\"role\":\"developer\",\"content\":\"Be brief.\"},"
                      "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"},{\"type\":\"text\",\"text\":\"b\"}]},"
                      "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"c1\",\"type\":\"function\","
                      "\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"x\\\": 1}\"}}]},"
                      "{\"role\":\"tool\",\"tool_call_id\":\"c1\",\"content\":\"42\"}],"
                      "\"temperature\":0,\"top_p\":0.5,\"top_k\":7,\"min_p\":0.1,\"seed\":-3,\"max_completion_tokens\":9,"
                      "\"stop\":[\"x\",\"yy\"],\"stream\":true,\"stream_options\":{\"include_usage\":true},"
                      "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"parameters\":{\"type\":\"object\"}}}]}",
                      &r, &e);
    CHECK(rc == 0, "a full chat request parses: %s", e.message);
    CHECK(messages_are(&r, "[{\"role\":\"system\",\"content\":\"Be brief.\"},{\"role\":\"user\",\"content\":\"a\\nb\"},"
                           "{\"role\":\"assistant\",\"content\":\"\",\"tool_calls\":[{\"type\":\"function\",\"function\":"
                           "{\"name\":\"f\",\"arguments\":{\"x\":1}},\"id\":\"c1\"}]},"
                           "{\"role\":\"tool\",\"content\":\"42\",\"tool_call_id\":\"c1\"}]"),
          "messages as chat templates expect them");
    CHECK(r.sp.temperature == 0 && r.sp.top_p == 0.5f && r.sp.top_k == 7 && r.sp.min_p == 0.1f, "sampling fields");
    CHECK(r.has_seed && r.sp.seed == (uint64_t)-3, "seed");
    CHECK(r.max_tokens == 9 && r.n_stops == 2 && !strcmp(r.stops[1], "yy") && r.stream && r.include_usage, "limits, stops, stream");
    CHECK(json_array_size(r.tools) == 1, "tools kept");
    req_free(&r);

    rc = oai_chat("{\"messages\":[{\"role\":\"user\",\"content\":\"hi\"}],\"tools\":[{\"type\":\"function\","
                  "\"function\":{\"name\":\"f\"}}],\"tool_choice\":\"none\"}", &r, &e);
    CHECK(rc == 0 && !r.tools, "tool_choice none drops the tools");
    CHECK(r.sp.temperature == 1 && r.sp.top_k == 0 && r.sp.top_p == 1 && r.max_tokens == 0, "OpenAI's defaults");
    req_free(&r);

    static const struct { const char *body, *param, *msg; int status; } bad[] = {
        {"{\"messages\":", "", "not valid JSON", 400},
        {"[]", "", "JSON object", 400},
        {"{}", "messages", "missing", 400},
        {"{\"messages\":{}}", "messages", "non-empty array", 400},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"n\":2}", "n", "n must be 1", 400},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"max_tokens\":1.5}", "max_tokens", "integer", 400},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"top_k\":-1}", "top_k", "between", 400},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"stop\":[\"a\",\"\"]}", "stop", "empty", 400},
        {"{\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\"}]}]}", "messages[0].content",
         "not supported", 400},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"response_format\":{\"type\":\"json_object\"}}",
         "response_format", "only", 400},
        {"{\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"type\":\"web\"}]}", "tools", "tools[0]", 400},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        rc = oai_chat(bad[i].body, &r, &e);
        CHECK(rc == -1 && e.status == bad[i].status && !strcmp(e.param, bad[i].param) && strstr(e.message, bad[i].msg),
              "bad chat %zu: got %d %s \"%s\"", i, e.status, e.param, e.message);
        req_free(&r);
    }
    req_fail(&e, 400, "messages", "bad");
    json_t *ej = oai_error(&e);
    char *s = json_dumps(ej, JSON_COMPACT | JSON_SORT_KEYS);
    CHECK(s && !strcmp(s, "{\"error\":{\"code\":null,\"message\":\"bad\",\"param\":\"messages\",\"type\":\"invalid_request_error\"}}"),
          "OpenAI error object: %s", s);
    free(s);
    json_decref(ej);

    const char *cb = "{\"prompt\":[[1,2,3]],\"max_tokens\":4}";
    rc = oai_parse_completion(cb, strlen(cb), &r, &e);
    CHECK(rc == 0 && r.n_prompt_ids == 3 && r.prompt_ids[2] == 3 && !r.prompt && r.max_tokens == 4, "a batch of one token prompt");
    req_free(&r);
    rc = oai_parse_completion("{\"prompt\":\"x\"}", 14, &r, &e);
    CHECK(rc == 0 && !strcmp(r.prompt, "x") && r.max_tokens == 16, "completions: 16 tokens by default");
    req_free(&r);
    rc = oai_parse_completion("{\"prompt\":[\"a\",\"b\"]}", 20, &r, &e);
    CHECK(rc == -1 && !strcmp(e.param, "prompt"), "completions: several prompts refused");
    req_free(&r);
}

static int ant(const char *body, int count, req *r, req_error *e) { return ant_parse_messages(body, strlen(body), count, r, e); }

static void test_anthropic(void) {
    req r;
    req_error e;
    int rc = ant("{\"model\":\"m\",\"max_tokens\":5,\"system\":[{\"type\":\"text\",\"text\":\"S\"}],\"messages\":["
                 "{\"role\":\"user\",\"content\":\"q\"},"
                 "{\"role\":\"assistant\",\"content\":[{\"type\":\"text\",\"text\":\"t\"},"
                 "{\"type\":\"tool_use\",\"id\":\"u1\",\"name\":\"f\",\"input\":{\"x\":1}}]},"
                 "{\"role\":\"user\",\"content\":[{\"type\":\"tool_result\",\"tool_use_id\":\"u1\",\"content\":"
                 "[{\"type\":\"text\",\"text\":\"42\"}]},{\"type\":\"text\",\"text\":\"and?\"}]},"
                 "{\"role\":\"assistant\",\"content\":\"So\"}],"
                 "\"stop_sequences\":[\"END\"],\"temperature\":0.5,\"top_k\":3,"
                 "\"tools\":[{\"name\":\"f\",\"description\":\"d\",\"input_schema\":{\"type\":\"object\"}}]}",
                 0, &r, &e);
    CHECK(rc == 0, "a full messages request parses: %s", e.message);
    CHECK(messages_are(&r, "[{\"role\":\"system\",\"content\":\"S\"},{\"role\":\"user\",\"content\":\"q\"},"
                           "{\"role\":\"assistant\",\"content\":\"t\",\"tool_calls\":[{\"id\":\"u1\",\"type\":\"function\","
                           "\"function\":{\"name\":\"f\",\"arguments\":{\"x\":1}}}]},"
                           "{\"role\":\"tool\",\"tool_call_id\":\"u1\",\"content\":\"42\"},"
                           "{\"role\":\"user\",\"content\":\"and?\"}]"),
          "blocks as chat-template messages: tool results first, the final assistant turn a prefill");
    CHECK(r.prefill && !strcmp(r.prefill, "So"), "prefill");
    char *t = json_dumps(r.tools, JSON_COMPACT);
    CHECK(t && !strcmp(t, "[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"description\":\"d\",\"parameters\":{\"type\":\"object\"}}}]"),
          "tools in OpenAI's shape and key order: %s", t);
    free(t);
    CHECK(r.max_tokens == 5 && r.n_stops == 1 && r.sp.temperature == 0.5f && r.sp.top_k == 3, "limits and sampling");
    req_free(&r);

    static const struct { const char *body, *msg; int count; } bad[] = {
        {"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"q\"}]}", "max_tokens: field required", 0},
        {"{\"max_tokens\":1,\"messages\":[{\"role\":\"user\",\"content\":\"q\"}]}", "model: field required", 0},
        {"{\"model\":\"m\",\"max_tokens\":1,\"messages\":[{\"role\":\"user\",\"content\":\"q\"}],\"temperature\":2}", "between", 0},
        {"{\"model\":\"m\",\"max_tokens\":1,\"messages\":[{\"role\":\"tool\",\"content\":\"q\"}]}", "role", 0},
        {"{\"model\":\"m\",\"max_tokens\":1,\"messages\":[{\"role\":\"user\",\"content\":[{\"type\":\"tool_use\"}]}]}",
         "not supported here", 0},
        {"{\"model\":\"m\",\"messages\":[{\"role\":\"assistant\",\"content\":\"x\"}]}", "no user turn", 1},
        {"{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"x\"}],\"tools\":[{\"name\":\"f\"}]}", "input_schema", 1},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        rc = ant(bad[i].body, bad[i].count, &r, &e);
        CHECK(rc == -1 && e.status == 400 && strstr(e.message, bad[i].msg), "bad messages %zu: %d \"%s\"", i, e.status, e.message);
        req_free(&r);
    }
    rc = ant("{\"model\":\"m\",\"messages\":[{\"role\":\"user\",\"content\":\"q\"}]}", 1, &r, &e);
    CHECK(rc == 0, "count_tokens needs no max_tokens");
    req_free(&r);
    req_fail(&e, 413, NULL, "big");
    json_t *j = ant_error(&e);
    char *s = json_dumps(j, JSON_COMPACT);
    CHECK(s && !strcmp(s, "{\"type\":\"error\",\"error\":{\"type\":\"request_too_large\",\"message\":\"big\"}}"),
          "Anthropic error object: %s", s);
    free(s);
    json_decref(j);
}

static void test_toolcalls(void) {
    static const struct { const char *text; int n; const char *first; } cases[] = {
        {"<tool_call>\n{\"name\": \"f\", \"arguments\": {\"x\": 1}}\n</tool_call>", 1, "{\"name\":\"f\",\"arguments\":{\"x\":1}}"},
        {"<tool_call>{\"name\":\"f\",\"arguments\":{}}</tool_call>\n<tool_call>{\"name\":\"g\",\"arguments\":\"{\\\"y\\\":2}\"}</tool_call>",
         2, "{\"name\":\"f\",\"arguments\":{}}"},
        {"[TOOL_CALLS] [{\"name\": \"f\", \"arguments\": {\"x\": \"a\"}}, {\"name\": \"g\", \"arguments\": {}}]", 2,
         "{\"name\":\"f\",\"arguments\":{\"x\":\"a\"}}"},
        {"[TOOL_CALLS]f[ARGS]{\"x\": 3}", 1, "{\"name\":\"f\",\"arguments\":{\"x\":3}}"},
        {"<|python_tag|>{\"name\": \"f\", \"parameters\": {\"q\": true}}", 1, "{\"name\":\"f\",\"arguments\":{\"q\":true}}"},
        {"<tool_call>{\"name\": \"f\", \"arguments\": {\"x\": 1}}", 1, "{\"name\":\"f\",\"arguments\":{\"x\":1}}"}, /* cut before the closing tag */
        {"<tool_call>{\"arguments\": {}}</tool_call>", 0, NULL},
        {"<tool_call>{\"name\": \"f\", \"arguments\": [1]}</tool_call>", 0, NULL},
        {"<tool_call>{\"name\": \"f\", \"argu", 0, NULL},
        {"[TOOL_CALLS] []", 0, NULL},
        {"just text", 0, NULL},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        json_t *calls = toolcall_parse(cases[i].text, strlen(cases[i].text));
        CHECK((int)json_array_size(calls) == cases[i].n, "tool calls %zu: %zu, expected %d", i, json_array_size(calls), cases[i].n);
        if (calls && cases[i].first) {
            json_t *c = json_array_get(calls, 0);
            const char *id = json_string_value(json_object_get(c, "id"));
            CHECK(id && !strncmp(id, "call_", 5) && strlen(id) == 29, "tool call %zu: an id", i);
            json_object_del(c, "id");
            char *s = json_dumps(c, JSON_COMPACT);
            CHECK(s && !strcmp(s, cases[i].first), "tool call %zu: %s", i, s);
            free(s);
        }
        json_decref(calls);
    }
}

/* The event names of an SSE stream, space-separated ("data" for unnamed). */
static void event_names(const sbuf *b, char *out, size_t cap) {
    out[0] = 0;
    for (const char *p = b->p; p && *p;) {
        const char *nl = strchr(p, '\n');
        size_t n = nl ? (size_t)(nl - p) : strlen(p);
        if (n > 7 && !strncmp(p, "event: ", 7)) snprintf(out + strlen(out), cap - strlen(out), "%.*s ", (int)(n - 7), p + 7);
        else if (n >= 6 && !strncmp(p, "data: ", 6) && (p == b->p || p[-2] == '\n'))
            snprintf(out + strlen(out), cap - strlen(out), "data ");
        p = nl ? nl + 1 : p + n;
    }
}

static void test_streams(void) {
    json_t *calls = toolcall_parse("<tool_call>{\"name\":\"f\",\"arguments\":{\"x\":1}}</tool_call>", 51);
    gen_usage u = {.prompt = 10, .cached = 4, .completion = 3};
    gen_result r = {.text = "hi", .len = 2, .tool_calls = calls, .finish = FIN_TOOLS, .usage = u};
    api_stream as;
    sbuf b = {0};
    char names[512];
    api_stream_init(&as, &ant_messages_ops, "msg_", "m", 1);
    CHECK(!strncmp(as.id, "msg_", 4) && strlen(as.id) == 28, "an id: %s", as.id);
    ant_messages_ops.begin(&as, &u, &b);
    ant_messages_ops.text(&as, "h", 1, &b);
    ant_messages_ops.text(&as, "i", 1, &b);
    ant_messages_ops.end(&as, &r, &b);
    event_names(&b, names, sizeof names);
    CHECK(!strcmp(names, "message_start ping content_block_start content_block_delta content_block_delta content_block_stop "
                         "content_block_start content_block_delta content_block_stop message_delta message_stop "),
          "Anthropic events: %s", names);
    CHECK(strstr(b.p, "\"input_json_delta\",\"partial_json\":\"{\\\"x\\\":1}\"") && strstr(b.p, "\"stop_reason\":\"tool_use\"") &&
              strstr(b.p, "\"input_tokens\":6") && strstr(b.p, "\"cache_read_input_tokens\":4"),
          "Anthropic: tool input as JSON deltas, stop_reason, usage split");
    sbuf_clear(&b);
    api_stream_init(&as, &oai_chat_ops, "chatcmpl-", "m", 1);
    oai_chat_ops.begin(&as, &u, &b);
    oai_chat_ops.text(&as, "hi", 2, &b);
    oai_chat_ops.end(&as, &r, &b);
    event_names(&b, names, sizeof names);
    CHECK(!strcmp(names, "data data data data data data "), "OpenAI chunks: %s", names);
    CHECK(strstr(b.p, "\"tool_calls\":[{\"id\":") && strstr(b.p, "\"arguments\":\"{\\\"x\\\":1}\"") &&
              strstr(b.p, "\"finish_reason\":\"tool_calls\"") && strstr(b.p, "\"choices\":[],\"usage\":{") &&
              strstr(b.p, "data: [DONE]\n\n"),
          "OpenAI: tool-call delta, finish reason, the usage chunk, [DONE]");
    json_t *resp = oai_chat_ops.response(&as, &r);
    char *s = json_dumps(resp, JSON_COMPACT);
    CHECK(s && strstr(s, "\"content\":\"hi\"") && strstr(s, "\"cached_tokens\":4"), "OpenAI response: %s", s);
    free(s);
    json_decref(resp);
    /* invalid UTF-8 in model output becomes U+FFFD, not a failed response */
    json_t *txt = req_json_text("a\xff" "b\xe2\x82", 5);
    CHECK(txt && !strcmp(json_string_value(txt), "a\xEF\xBF\xBD" "b\xEF\xBF\xBD\xEF\xBF\xBD"), "invalid UTF-8 replaced");
    json_decref(txt);
    sbuf_free(&b);
    json_decref(calls);
}

int main(void) {
    test_openai();
    test_anthropic();
    test_toolcalls();
    test_streams();
    TEST_DONE();
}
