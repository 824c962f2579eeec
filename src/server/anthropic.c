/* anthropic.c — the Anthropic Messages API adapter (see anthropic.h).
 *
 * Content blocks become chat-template messages: text blocks joined by
 * newlines; an assistant's tool_use blocks become its tool_calls; a user's
 * tool_result blocks become "tool" messages (before the user's own text,
 * where Anthropic puts them). A final assistant message is a prefill: the
 * answer continues its text. The system prompt becomes a system message.
 * Usage follows Anthropic's split: input_tokens are the prompt tokens that
 * were processed, cache_read_input_tokens those found in a slot's cache. */
#include "anthropic.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ parsing -- */

/* Appends the text of a string or of an array of text blocks to out. */
static int text_of(json_t *c, const char *param, sbuf *out, req_error *e) {
    if (json_is_string(c))
        return sbuf_add(out, json_string_value(c), json_string_length(c)) ? req_fail(e, 500, NULL, "out of memory") : 0;
    if (!json_is_array(c)) return req_fail(e, 400, param, "%s must be a string or an array of text blocks", param);
    size_t i;
    json_t *b;
    json_array_foreach(c, i, b) {
        json_t *type = json_object_get(b, "type"), *text = json_object_get(b, "text");
        if (!json_is_string(type) || strcmp(json_string_value(type), "text") || !json_is_string(text))
            return req_fail(e, 400, param, "%s[%zu] must be a text block {\"type\": \"text\", \"text\"}", param, i);
        if (out->len) sbuf_add(out, "\n", 1);
        sbuf_add(out, json_string_value(text), json_string_length(text));
    }
    return 0;
}

static json_t *tool_call_of(json_t *b, const char *param, size_t k, req_error *e) {
    json_t *id = json_object_get(b, "id"), *name = json_object_get(b, "name"), *input = json_object_get(b, "input");
    if (!json_is_string(id) || !json_is_string(name) || !json_is_object(input)) {
        req_fail(e, 400, param, "%s[%zu]: a tool_use block needs \"id\", \"name\" and an object \"input\"", param, k);
        return NULL;
    }
    return json_pack("{s:O, s:s, s:{s:O, s:O}}", "id", id, "type", "function", "function", "name", name, "arguments", input);
}

static json_t *tool_result_of(json_t *b, const char *param, size_t k, req_error *e) {
    json_t *id = json_object_get(b, "tool_use_id"), *c = json_object_get(b, "content");
    if (!json_is_string(id)) {
        req_fail(e, 400, param, "%s[%zu]: a tool_result block needs \"tool_use_id\"", param, k);
        return NULL;
    }
    sbuf text = {0};
    if (c && !json_is_null(c) && text_of(c, param, &text, e)) {
        sbuf_free(&text);
        return NULL;
    }
    json_t *m = json_pack("{s:s, s:O, s:s#}", "role", "tool", "tool_call_id", id, "content", text.p ? text.p : "", text.len);
    sbuf_free(&text);
    return m;
}

/* messages[i] into r->messages (or r->prefill when it is the last and the assistant's). */
static int message_in(json_t *m, size_t i, int last, req *r, req_error *e) {
    char param[64];
    snprintf(param, sizeof param, "messages[%zu]", i);
    json_t *role = json_object_get(m, "role"), *content = json_object_get(m, "content");
    if (!json_is_object(m)) return req_fail(e, 400, param, "%s must be an object", param);
    if (!json_is_string(role) || (strcmp(json_string_value(role), "user") && strcmp(json_string_value(role), "assistant")))
        return req_fail(e, 400, param, "%s.role must be \"user\" or \"assistant\"", param);
    int user = !strcmp(json_string_value(role), "user");
    snprintf(param, sizeof param, "messages[%zu].content", i);
    if (!content) return req_fail(e, 400, param, "%s is missing", param);
    sbuf text = {0};
    json_t *calls = json_array();
    int rc = 0;
    if (json_is_string(content)) {
        sbuf_add(&text, json_string_value(content), json_string_length(content));
    } else if (json_is_array(content)) {
        size_t k;
        json_t *b;
        json_array_foreach(content, k, b) {
            json_t *type = json_object_get(b, "type");
            const char *t = json_is_string(type) ? json_string_value(type) : NULL;
            json_t *x = NULL;
            if (!json_is_object(b) || !t) {
                rc = req_fail(e, 400, param, "%s[%zu] must be a content block with a \"type\"", param, k);
            } else if (!strcmp(t, "text")) {
                json_t *tx = json_object_get(b, "text");
                if (!json_is_string(tx)) rc = req_fail(e, 400, param, "%s[%zu].text must be a string", param, k);
                else {
                    if (text.len) sbuf_add(&text, "\n", 1);
                    sbuf_add(&text, json_string_value(tx), json_string_length(tx));
                }
            } else if (!strcmp(t, "tool_use") && !user) {
                if (!(x = tool_call_of(b, param, k, e))) rc = -1;
                else json_array_append_new(calls, x);
            } else if (!strcmp(t, "tool_result") && user) {
                if (!(x = tool_result_of(b, param, k, e))) rc = -1;
                else json_array_append_new(r->messages, x);
            } else if (strcmp(t, "thinking") && strcmp(t, "redacted_thinking")) {
                rc = req_fail(e, 400, param, "%s[%zu]: content blocks of type \"%s\" are not supported here", param, k, t);
            }
            if (rc) break;
        }
    } else {
        rc = req_fail(e, 400, param, "%s must be a string or an array of content blocks", param);
    }
    if (!rc && text.oom) rc = req_fail(e, 500, NULL, "out of memory");
    if (!rc && !user && last && json_array_size(calls) == 0) {
        r->prefill = strndup(text.p ? text.p : "", text.len); /* the answer goes on from here */
    } else if (!rc && (text.len || !user || json_array_size(calls))) {
        json_t *msg = json_pack("{s:s, s:s#}", "role", user ? "user" : "assistant", "content", text.p ? text.p : "", text.len);
        if (msg && json_array_size(calls)) json_object_set(msg, "tool_calls", calls);
        json_array_append_new(r->messages, msg);
    }
    json_decref(calls);
    sbuf_free(&text);
    return rc;
}

/* tools: [{"name", "description"?, "input_schema"}] as templates expect them */
static int tools_in(json_t *o, req *r, req_error *e) {
    json_t *tools = json_object_get(o, "tools"), *choice = json_object_get(o, "tool_choice");
    if (!tools || json_is_null(tools)) return 0;
    if (!json_is_array(tools)) return req_fail(e, 400, "tools", "tools must be an array");
    if (choice && !json_is_null(choice)) {
        json_t *ct = json_object_get(choice, "type");
        if (!json_is_object(choice) || !json_is_string(ct))
            return req_fail(e, 400, "tool_choice", "tool_choice must be an object with a \"type\"");
        if (!strcmp(json_string_value(ct), "none")) return 0;
    }
    json_t *out = json_array();
    size_t i;
    json_t *t;
    json_array_foreach(tools, i, t) {
        json_t *name = json_object_get(t, "name"), *type = json_object_get(t, "type");
        json_t *schema = json_object_get(t, "input_schema"), *desc = json_object_get(t, "description");
        if (!json_is_object(t) || !json_is_string(name) || !json_is_object(schema) || (desc && !json_is_string(desc)) ||
            (type && !json_is_null(type) && (!json_is_string(type) || strcmp(json_string_value(type), "custom")))) {
            json_decref(out);
            return req_fail(e, 400, "tools", "tools[%zu] must be {\"name\", \"description\"?, \"input_schema\": object} (custom tools only)", i);
        }
        json_t *fn = json_pack("{s:O}", "name", name); /* keys in OpenAI's order: templates dump them as they come */
        if (fn && desc) json_object_set(fn, "description", desc);
        if (fn) json_object_set(fn, "parameters", schema);
        json_array_append_new(out, json_pack("{s:s, s:o}", "type", "function", "function", fn));
    }
    if (json_array_size(out)) r->tools = out;
    else json_decref(out);
    return 0;
}

int ant_parse_messages(const char *body, size_t len, int count_tokens, req *r, req_error *e) {
    req_init(r, REQ_CHAT);
    json_t *o = req_parse_object(body, len, e);
    if (!o) return -1;
    int rc = -1;
    json_t *model = json_object_get(o, "model"), *msgs = json_object_get(o, "messages"), *sys = json_object_get(o, "system");
    if (!json_is_string(model)) {
        req_fail(e, 400, "model", model ? "model: must be a string" : "model: field required");
        goto done;
    }
    r->model = strdup(json_string_value(model));
    if (!count_tokens) {
        if (!json_object_get(o, "max_tokens")) {
            req_fail(e, 400, "max_tokens", "max_tokens: field required");
            goto done;
        }
        if (req_opt_int(o, "max_tokens", 1, 1 << 30, &r->max_tokens, e)) goto done;
    }
    if (!json_is_array(msgs) || json_array_size(msgs) == 0) {
        req_fail(e, 400, "messages", msgs ? "messages: must be a non-empty array" : "messages: field required");
        goto done;
    }
    r->messages = json_array();
    if (sys && !json_is_null(sys)) {
        sbuf st = {0};
        if (text_of(sys, "system", &st, e)) {
            sbuf_free(&st);
            goto done;
        }
        json_array_append_new(r->messages, json_pack("{s:s, s:s#}", "role", "system", "content", st.p ? st.p : "", st.len));
        sbuf_free(&st);
    }
    size_t i, n = json_array_size(msgs);
    json_t *m;
    json_array_foreach(msgs, i, m) if (message_in(m, i, i + 1 == n, r, e)) goto done;
    if (json_array_size(r->messages) == 0) {
        req_fail(e, 400, "messages", "messages: the conversation has no user turn");
        goto done;
    }
    double d = r->sp.temperature;
    long long k = r->sp.top_k;
    if (req_opt_number(o, "temperature", 0, 1, &d, e)) goto done;
    r->sp.temperature = (float)d;
    d = r->sp.top_p;
    if (req_opt_number(o, "top_p", 0, 1, &d, e)) goto done;
    r->sp.top_p = d > 1e-6 ? (float)d : 1e-6f;
    if (req_opt_int(o, "top_k", 0, 1 << 30, &k, e)) goto done;
    r->sp.top_k = (int)k;
    json_t *ss = json_object_get(o, "stop_sequences");
    if (ss && !json_is_null(ss) && !json_is_array(ss)) {
        req_fail(e, 400, "stop_sequences", "stop_sequences: must be an array of strings");
        goto done;
    }
    if (req_opt_stops(o, "stop_sequences", r, e) || req_opt_bool(o, "stream", &r->stream, e) || tools_in(o, r, e)) goto done;
    r->include_usage = 1;
    rc = 0;
done:
    json_decref(o);
    return rc;
}

/* ------------------------------------------------------------ writing -- */

json_t *ant_error(const req_error *e) {
    const char *type = e->status == 401   ? "authentication_error"
                       : e->status == 403 ? "permission_error"
                       : e->status == 404 ? "not_found_error"
                       : e->status == 413 ? "request_too_large"
                       : e->status == 503 ? "overloaded_error"
                       : e->status >= 500 ? "api_error"
                                          : "invalid_request_error";
    return json_pack("{s:s, s:{s:s, s:s}}", "type", "error", "error", "type", type, "message", e->message);
}

static const char *stop_reason(gen_finish f) {
    switch (f) {
    case FIN_LENGTH: return "max_tokens";
    case FIN_STOP: return "stop_sequence";
    case FIN_TOOLS: return "tool_use";
    default: return "end_turn";
    }
}

static json_t *usage_json(const gen_usage *u) {
    return json_pack("{s:I, s:I, s:I, s:I}", "input_tokens", (json_int_t)(u->prompt - u->cached),
                     "cache_creation_input_tokens", (json_int_t)0, "cache_read_input_tokens", (json_int_t)u->cached,
                     "output_tokens", (json_int_t)u->completion);
}

static json_t *tool_use_block(json_t *call, int empty_input) {
    return json_pack("{s:s, s:O, s:O, s:o}", "type", "tool_use", "id", json_object_get(call, "id"), "name",
                     json_object_get(call, "name"), "input",
                     empty_input ? json_object() : json_incref(json_object_get(call, "arguments")));
}

static json_t *message_json(api_stream *s, json_t *content, const gen_result *r, const gen_usage *u) {
    json_t *m = json_pack("{s:s, s:s, s:s, s:s, s:o, s:s?, s:s?, s:o}", "id", s->id, "type", "message", "role",
                          "assistant", "model", s->model, "content", content, "stop_reason",
                          r ? stop_reason(r->finish) : NULL, "stop_sequence", r ? r->stop_seq : NULL, "usage",
                          usage_json(u));
    return m;
}

static json_t *response(api_stream *s, const gen_result *r) {
    json_t *content = json_array();
    if (r->len || !r->tool_calls)
        json_array_append_new(content, json_pack("{s:s, s:o}", "type", "text", "text", req_json_text(r->text, r->len)));
    size_t i;
    json_t *c;
    if (r->tool_calls) json_array_foreach(r->tool_calls, i, c) json_array_append_new(content, tool_use_block(c, 0));
    return message_json(s, content, r, &r->usage);
}

static void begin(api_stream *s, const gen_usage *u, sbuf *out) {
    s->opened = 1;
    gen_usage start = *u;
    start.completion = 0;
    sse_json(out, "message_start", json_pack("{s:s, s:o}", "type", "message_start", "message",
                                             message_json(s, json_array(), NULL, &start)));
    sse_json(out, "ping", json_pack("{s:s}", "type", "ping"));
}

static void block_start(api_stream *s, json_t *block, sbuf *out) {
    sse_json(out, "content_block_start", json_pack("{s:s, s:i, s:o}", "type", "content_block_start", "index", s->block,
                                                   "content_block", block));
}

static void block_stop(api_stream *s, sbuf *out) {
    sse_json(out, "content_block_stop", json_pack("{s:s, s:i}", "type", "content_block_stop", "index", s->block));
    s->block++;
}

static void delta(api_stream *s, json_t *d, sbuf *out) {
    sse_json(out, "content_block_delta", json_pack("{s:s, s:i, s:o}", "type", "content_block_delta", "index", s->block,
                                                   "delta", d));
}

static void text(api_stream *s, const char *t, size_t n, sbuf *out) {
    if (!s->text_open) {
        block_start(s, json_pack("{s:s, s:s}", "type", "text", "text", ""), out);
        s->text_open = 1;
    }
    delta(s, json_pack("{s:s, s:o}", "type", "text_delta", "text", req_json_text(t, n)), out);
}

static void end(api_stream *s, const gen_result *r, sbuf *out) {
    if (!s->text_open && !r->tool_calls) { /* an empty answer is still one (empty) text block */
        block_start(s, json_pack("{s:s, s:s}", "type", "text", "text", ""), out);
        s->text_open = 1;
    }
    if (s->text_open) {
        block_stop(s, out);
        s->text_open = 0;
    }
    size_t i;
    json_t *c;
    if (r->tool_calls) json_array_foreach(r->tool_calls, i, c) {
            block_start(s, tool_use_block(c, 1), out);
            char *args = json_dumps(json_object_get(c, "arguments"), JSON_COMPACT);
            delta(s, json_pack("{s:s, s:s}", "type", "input_json_delta", "partial_json", args ? args : "{}"), out);
            free(args);
            block_stop(s, out);
        }
    sse_json(out, "message_delta",
             json_pack("{s:s, s:{s:s, s:s?}, s:o}", "type", "message_delta", "delta", "stop_reason",
                       stop_reason(r->finish), "stop_sequence", r->stop_seq, "usage", usage_json(&r->usage)));
    sse_json(out, "message_stop", json_pack("{s:s}", "type", "message_stop"));
}

static void fail(api_stream *s, const req_error *e, sbuf *out) {
    (void)s;
    sse_json(out, "error", ant_error(e));
}

static void ping(api_stream *s, sbuf *out) {
    (void)s;
    sse_json(out, "ping", json_pack("{s:s}", "type", "ping"));
}

const api_ops ant_messages_ops = {ant_error, response, begin, text, end, fail, ping};
