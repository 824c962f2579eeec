/* fuzz_server.c — libFuzzer harness for moe serve's request parsing: the
 * OpenAI and Anthropic request bodies (untrusted, straight off the socket)
 * and the tool-call parser (model output). The first byte picks the parser,
 * the rest is the body. On success the parsed request is checked for the
 * invariants the rest of the server relies on, and written back out through
 * the API's response writers. */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../src/server/anthropic.h"
#include "../src/server/openai.h"
#include "../src/server/toolcall.h"

static void check_request(const req *r) {
    if (r->kind == REQ_CHAT) {
        if (!json_is_array(r->messages) || json_array_size(r->messages) == 0) abort();
        size_t i;
        json_t *m;
        json_array_foreach(r->messages, i, m) {
            if (!json_is_string(json_object_get(m, "role")) || !json_is_string(json_object_get(m, "content"))) abort();
        }
        char *s = json_dumps(r->messages, JSON_COMPACT); /* what the chat template gets */
        if (!s) abort();
        free(s);
    } else if (!r->prompt && !r->n_prompt_ids) {
        abort();
    }
    if (r->tools && !json_is_array(r->tools)) abort();
    for (size_t i = 0; i < r->n_stops; i++)
        if (!r->stops[i][0]) abort();
    if (r->max_tokens < 0 || !(r->sp.temperature >= 0) || !(r->sp.top_p > 0 && r->sp.top_p <= 1) || r->sp.top_k < 0) abort();
}

/* Writes a made-up answer the way the request's API would. */
static void write_back(const api_ops *ops, const req *r, json_t *calls) {
    api_stream as;
    api_stream_init(&as, ops, "id-", r->model ? r->model : "m", r->include_usage);
    gen_result g = {.text = r->n_stops ? r->stops[0] : "x", .len = r->n_stops ? strlen(r->stops[0]) : 1,
                    .tool_calls = calls, .finish = calls ? FIN_TOOLS : FIN_STOP, .stop_seq = r->n_stops ? r->stops[0] : NULL,
                    .usage = {3, 1, 2}};
    sbuf b = {0};
    ops->begin(&as, &g.usage, &b);
    ops->text(&as, g.text, g.len, &b);
    ops->end(&as, &g, &b);
    json_t *j = ops->response(&as, &g);
    if (!j || b.oom) abort();
    json_decref(j);
    sbuf_free(&b);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    const char *body = (const char *)data + 1;
    size_t len = size - 1;
    req r;
    req_error e;
    int rc;
    switch (data[0] % 5) {
    case 0: rc = oai_parse_chat(body, len, &r, &e); break;
    case 1: rc = oai_parse_completion(body, len, &r, &e); break;
    case 2: rc = ant_parse_messages(body, len, 0, &r, &e); break;
    case 3: rc = ant_parse_messages(body, len, 1, &r, &e); break;
    default: {
        json_t *calls = toolcall_parse(body, len);
        if (calls) {
            size_t i;
            json_t *c;
            json_array_foreach(calls, i, c) {
                if (!json_is_string(json_object_get(c, "name")) || !json_is_object(json_object_get(c, "arguments"))) abort();
            }
            req_init(&r, REQ_CHAT);
            write_back(&oai_chat_ops, &r, calls);
            write_back(&ant_messages_ops, &r, calls);
            req_free(&r);
        }
        json_decref(calls);
        return 0;
    }
    }
    if (rc == 0) {
        check_request(&r);
        write_back(data[0] % 5 < 2 ? (r.kind == REQ_CHAT ? &oai_chat_ops : &oai_completion_ops) : &ant_messages_ops, &r, NULL);
    } else if (e.status < 400 || e.status > 599 || !e.message[0]) {
        abort(); /* every failure says what is wrong */
    }
    req_free(&r);
    return 0;
}
