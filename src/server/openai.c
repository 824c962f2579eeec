/* openai.c — the OpenAI API adapter (see openai.h).
 *
 * Chat messages become what Hugging Face chat templates expect: content as
 * one string (text parts joined by newlines), "developer" as "system",
 * assistant tool calls with their arguments as objects, tool results with
 * their tool_call_id. Fields moe does not implement are refused with a 400
 * when they would change the answer (n > 1, logprobs, echo, JSON modes) and
 * ignored when they would not (user, metadata, penalties we cannot honour
 * are validated and ignored). */
#include "openai.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------ parsing -- */

/* content: a string, null, or an array of {"type": "text", "text"} parts. */
static int content_text(json_t *c, const char *param, sbuf *out, req_error *e) {
    if (!c || json_is_null(c)) return 0;
    if (json_is_string(c)) return sbuf_add(out, json_string_value(c), json_string_length(c)) ? req_fail(e, 500, NULL, "out of memory") : 0;
    if (!json_is_array(c)) return req_fail(e, 400, param, "%s must be a string or an array of content parts", param);
    size_t i;
    json_t *part;
    json_array_foreach(c, i, part) {
        json_t *type = json_object_get(part, "type"), *text = json_object_get(part, "text");
        if (!json_is_object(part) || !json_is_string(type))
            return req_fail(e, 400, param, "%s[%zu] must be an object with a \"type\"", param, i);
        if (strcmp(json_string_value(type), "text") != 0)
            return req_fail(e, 400, param, "%s[%zu]: content of type \"%s\" is not supported (text only)", param, i,
                            json_string_value(type));
        if (!json_is_string(text)) return req_fail(e, 400, param, "%s[%zu].text must be a string", param, i);
        if (i) sbuf_add(out, "\n", 1);
        sbuf_add(out, json_string_value(text), json_string_length(text));
    }
    return out->oom ? req_fail(e, 500, NULL, "out of memory") : 0;
}

/* An assistant's tool_calls, with each function's arguments (a JSON string)
 * parsed into an object as templates expect; kept as a string when it is not JSON. */
static int tool_calls_in(json_t *tc, size_t mi, json_t *out, req_error *e) {
    char param[64];
    snprintf(param, sizeof param, "messages[%zu].tool_calls", mi);
    if (!json_is_array(tc)) return req_fail(e, 400, param, "%s must be an array", param);
    json_t *calls = json_array();
    size_t i;
    json_t *c;
    json_array_foreach(tc, i, c) {
        json_t *fn = json_object_get(c, "function"), *id = json_object_get(c, "id");
        json_t *name = json_object_get(fn, "name"), *args = json_object_get(fn, "arguments");
        if (!json_is_object(c) || !json_is_object(fn) || !json_is_string(name) || (id && !json_is_string(id)) ||
            (args && !json_is_string(args))) {
            json_decref(calls);
            return req_fail(e, 400, param, "%s[%zu] must be {\"id\", \"type\": \"function\", \"function\": {\"name\", \"arguments\": string}}",
                            param, i);
        }
        json_t *a = args ? json_loads(json_string_value(args), 0, NULL) : json_object();
        if (!a) a = json_incref(args);
        json_t *f = json_pack("{s:O, s:o}", "name", name, "arguments", a);
        json_t *call = json_pack("{s:s, s:o}", "type", "function", "function", f);
        if (id) json_object_set(call, "id", id);
        json_array_append_new(calls, call);
    }
    json_object_set_new(out, "tool_calls", calls);
    return 0;
}

static int message_in(json_t *m, size_t i, json_t *msgs, req_error *e) {
    char param[64];
    snprintf(param, sizeof param, "messages[%zu]", i);
    json_t *role = json_object_get(m, "role");
    if (!json_is_object(m)) return req_fail(e, 400, param, "%s must be an object", param);
    if (!json_is_string(role)) return req_fail(e, 400, param, "%s.role must be a string", param);
    const char *r = json_string_value(role);
    if (!strcmp(r, "developer")) r = "system";
    if (strcmp(r, "system") && strcmp(r, "user") && strcmp(r, "assistant") && strcmp(r, "tool"))
        return req_fail(e, 400, param, "%s.role \"%s\" is not one of system, developer, user, assistant, tool", param, r);
    json_t *content = json_object_get(m, "content"), *tc = json_object_get(m, "tool_calls");
    if (!content && strcmp(r, "assistant"))
        return req_fail(e, 400, param, "%s.content is missing", param);
    char cparam[64];
    snprintf(cparam, sizeof cparam, "messages[%zu].content", i);
    sbuf text = {0};
    if (content_text(content, cparam, &text, e)) {
        sbuf_free(&text);
        return -1;
    }
    json_t *out = json_pack("{s:s, s:s#}", "role", r, "content", text.p ? text.p : "", text.len);
    sbuf_free(&text);
    if (!out) return req_fail(e, 400, cparam, "%s is not valid UTF-8", cparam);
    json_array_append_new(msgs, out);
    if (tc && !json_is_null(tc) && !strcmp(r, "assistant") && tool_calls_in(tc, i, out, e)) return -1;
    static const char *const keep[] = {"name", "tool_call_id"};
    for (size_t k = 0; k < 2; k++) {
        json_t *v = json_object_get(m, keep[k]);
        if (!v || json_is_null(v)) continue;
        if (!json_is_string(v)) return req_fail(e, 400, param, "%s.%s must be a string", param, keep[k]);
        json_object_set(out, keep[k], v);
    }
    return 0;
}

/* tools: [{"type": "function", "function": {"name", "description"?, "parameters"?}}] */
static int tools_in(json_t *o, req *r, req_error *e) {
    json_t *tools = json_object_get(o, "tools"), *choice = json_object_get(o, "tool_choice");
    if (!tools || json_is_null(tools)) return 0;
    if (!json_is_array(tools)) return req_fail(e, 400, "tools", "tools must be an array");
    size_t i;
    json_t *t;
    json_array_foreach(tools, i, t) {
        json_t *fn = json_object_get(t, "function");
        json_t *type = json_object_get(t, "type");
        if (!json_is_object(t) || !json_is_string(type) || strcmp(json_string_value(type), "function") ||
            !json_is_object(fn) || !json_is_string(json_object_get(fn, "name")))
            return req_fail(e, 400, "tools", "tools[%zu] must be {\"type\": \"function\", \"function\": {\"name\", ...}}", i);
        json_t *params = json_object_get(fn, "parameters");
        if (params && !json_is_object(params) && !json_is_null(params))
            return req_fail(e, 400, "tools", "tools[%zu].function.parameters must be an object", i);
    }
    if (choice && !json_is_null(choice)) {
        if (json_is_string(choice)) {
            const char *c = json_string_value(choice);
            if (strcmp(c, "none") && strcmp(c, "auto") && strcmp(c, "required"))
                return req_fail(e, 400, "tool_choice", "tool_choice must be \"none\", \"auto\", \"required\" or an object");
            if (!strcmp(c, "none")) return 0; /* the model is not to call tools: do not show them */
        } else if (!json_is_object(choice)) {
            return req_fail(e, 400, "tool_choice", "tool_choice must be a string or an object");
        }
    }
    if (json_array_size(tools) > 0) r->tools = json_deep_copy(tools);
    return 0;
}

/* The sampling and limit fields both endpoints share. */
static int common_in(json_t *o, req *r, req_error *e) {
    json_t *model = json_object_get(o, "model");
    if (model && !json_is_null(model)) {
        if (!json_is_string(model)) return req_fail(e, 400, "model", "model must be a string");
        r->model = strdup(json_string_value(model));
    }
    double d;
    long long ll, n = 1;
    d = r->sp.temperature;
    if (req_opt_number(o, "temperature", 0, 2, &d, e)) return -1;
    r->sp.temperature = (float)d;
    d = r->sp.top_p;
    if (req_opt_number(o, "top_p", 0, 1, &d, e)) return -1;
    r->sp.top_p = d > 1e-6 ? (float)d : 1e-6f; /* 0: only the most likely token */
    ll = r->sp.top_k;
    if (req_opt_int(o, "top_k", 0, 1 << 30, &ll, e)) return -1;
    r->sp.top_k = (int)ll;
    d = r->sp.min_p;
    if (req_opt_number(o, "min_p", 0, 1, &d, e)) return -1;
    r->sp.min_p = (float)d;
    d = r->sp.repeat_penalty;
    if (req_opt_number(o, "repetition_penalty", 1e-3, 100, &d, e)) return -1;
    r->sp.repeat_penalty = (float)d;
    if (req_opt_number(o, "frequency_penalty", -2, 2, &d, e) || req_opt_number(o, "presence_penalty", -2, 2, &d, e))
        return -1;
    json_t *seed = json_object_get(o, "seed");
    if (seed && !json_is_null(seed)) {
        if (req_opt_int(o, "seed", INT64_MIN, INT64_MAX, &ll, e)) return -1;
        r->sp.seed = (uint64_t)ll;
        r->has_seed = 1;
    }
    if (req_opt_int(o, "n", 1, 128, &n, e)) return -1;
    if (n != 1) return req_fail(e, 400, "n", "n must be 1: moe returns one choice per request");
    int b = 0;
    if (req_opt_stops(o, "stop", r, e) || req_opt_bool(o, "stream", &r->stream, e)) return -1;
    json_t *so = json_object_get(o, "stream_options");
    if (so && !json_is_null(so)) {
        if (!json_is_object(so)) return req_fail(e, 400, "stream_options", "stream_options must be an object");
        if (req_opt_bool(so, "include_usage", &r->include_usage, e)) return -1;
    }
    json_t *lp = json_object_get(o, "logprobs");
    if (json_is_boolean(lp) ? json_is_true(lp) : (lp && !json_is_null(lp) && !(json_is_integer(lp) && json_integer_value(lp) == 0)))
        return req_fail(e, 400, "logprobs", "logprobs are not supported");
    if (req_opt_bool(o, "echo", &b, e)) return -1;
    if (b) return req_fail(e, 400, "echo", "echo is not supported");
    return 0;
}

static int max_tokens_in(json_t *o, req *r, req_error *e) {
    long long mt = r->max_tokens;
    if (req_opt_int(o, "max_tokens", 1, 1 << 30, &mt, e) ||
        req_opt_int(o, "max_completion_tokens", 1, 1 << 30, &mt, e))
        return -1;
    r->max_tokens = mt;
    return 0;
}

int oai_parse_chat(const char *body, size_t len, req *r, req_error *e) {
    req_init(r, REQ_CHAT);
    json_t *o = req_parse_object(body, len, e);
    if (!o) return -1;
    int rc = -1;
    json_t *msgs = json_object_get(o, "messages"), *rf = json_object_get(o, "response_format");
    if (!msgs) {
        req_fail(e, 400, "messages", "messages is missing");
        goto done;
    }
    if (!json_is_array(msgs) || json_array_size(msgs) == 0) {
        req_fail(e, 400, "messages", "messages must be a non-empty array");
        goto done;
    }
    r->messages = json_array();
    size_t i;
    json_t *m;
    json_array_foreach(msgs, i, m) if (message_in(m, i, r->messages, e)) goto done;
    if (rf && !json_is_null(rf)) {
        json_t *t = json_object_get(rf, "type");
        if (!json_is_string(t) || strcmp(json_string_value(t), "text")) {
            req_fail(e, 400, "response_format", "response_format: only {\"type\": \"text\"} is supported");
            goto done;
        }
    }
    if (common_in(o, r, e) || max_tokens_in(o, r, e) || tools_in(o, r, e)) goto done;
    rc = 0;
done:
    json_decref(o);
    return rc;
}

int oai_parse_completion(const char *body, size_t len, req *r, req_error *e) {
    req_init(r, REQ_COMPLETION);
    r->max_tokens = 16; /* OpenAI's default for completions */
    json_t *o = req_parse_object(body, len, e);
    if (!o) return -1;
    int rc = -1;
    json_t *p = json_object_get(o, "prompt"), *suffix = json_object_get(o, "suffix");
    long long best_of = 1;
    if (!p) {
        req_fail(e, 400, "prompt", "prompt is missing");
        goto done;
    }
    if (json_is_array(p) && json_array_size(p) == 1 && (json_is_string(json_array_get(p, 0)) || json_is_array(json_array_get(p, 0))))
        p = json_array_get(p, 0); /* a batch of one */
    if (json_is_string(p)) {
        r->prompt = strndup(json_string_value(p), json_string_length(p));
    } else if (json_is_array(p) && json_array_size(p) > 0) {
        r->n_prompt_ids = json_array_size(p);
        r->prompt_ids = malloc(r->n_prompt_ids * sizeof *r->prompt_ids);
        if (!r->prompt_ids) {
            req_fail(e, 500, NULL, "out of memory");
            goto done;
        }
        for (size_t i = 0; i < r->n_prompt_ids; i++) {
            json_t *t = json_array_get(p, i);
            if (!json_is_integer(t) || json_integer_value(t) < 0 || json_integer_value(t) > INT32_MAX) {
                req_fail(e, 400, "prompt", "prompt must be a string, or an array of token ids; prompt[%zu] is not a token id", i);
                goto done;
            }
            r->prompt_ids[i] = (int32_t)json_integer_value(t);
        }
    } else {
        req_fail(e, 400, "prompt", "prompt must be a string or a non-empty array of token ids (one prompt per request)");
        goto done;
    }
    if (suffix && !json_is_null(suffix)) {
        req_fail(e, 400, "suffix", "suffix is not supported");
        goto done;
    }
    if (req_opt_int(o, "best_of", 1, 128, &best_of, e)) goto done;
    if (best_of != 1) {
        req_fail(e, 400, "best_of", "best_of must be 1");
        goto done;
    }
    if (common_in(o, r, e) || max_tokens_in(o, r, e)) goto done;
    rc = 0;
done:
    json_decref(o);
    return rc;
}

/* ------------------------------------------------------------ writing -- */

json_t *oai_error(const req_error *e) {
    const char *type = e->status == 401 ? "authentication_error"
                       : e->status >= 500 ? "server_error"
                       : e->status == 404 ? "not_found_error"
                                          : "invalid_request_error";
    const char *code = e->code[0] ? e->code : e->status == 401 ? "invalid_api_key" : NULL;
    json_t *err = json_pack("{s:s, s:s, s:s?, s:s?}", "message", e->message, "type", type, "param",
                            e->param[0] ? e->param : NULL, "code", code);
    if (err && !json_object_get(err, "param")) json_object_set_new(err, "param", json_null());
    if (err && !json_object_get(err, "code")) json_object_set_new(err, "code", json_null());
    return json_pack("{s:o}", "error", err);
}

json_t *oai_models(const char *model, int64_t created) {
    return json_pack("{s:s, s:[{s:s, s:s, s:I, s:s}]}", "object", "list", "data", "id", model, "object", "model",
                     "created", (json_int_t)created, "owned_by", "moe");
}

static const char *finish_name(gen_finish f) {
    switch (f) {
    case FIN_LENGTH: return "length";
    case FIN_TOOLS: return "tool_calls";
    default: return "stop";
    }
}

static json_t *usage_json(const gen_usage *u) {
    return json_pack("{s:I, s:I, s:I, s:{s:I}}", "prompt_tokens", (json_int_t)u->prompt, "completion_tokens",
                     (json_int_t)u->completion, "total_tokens", (json_int_t)(u->prompt + u->completion),
                     "prompt_tokens_details", "cached_tokens", (json_int_t)u->cached);
}

/* tool calls as OpenAI writes them; with_index for stream deltas */
static json_t *tool_calls_out(json_t *calls, int with_index) {
    json_t *out = json_array();
    size_t i;
    json_t *c;
    json_array_foreach(calls, i, c) {
        char *args = json_dumps(json_object_get(c, "arguments"), JSON_COMPACT);
        json_t *o = json_pack("{s:O, s:s, s:{s:O, s:s}}", "id", json_object_get(c, "id"), "type", "function", "function",
                              "name", json_object_get(c, "name"), "arguments", args ? args : "{}");
        free(args);
        if (with_index && o) json_object_set_new(o, "index", json_integer((json_int_t)i));
        json_array_append_new(out, o);
    }
    return out;
}

/* The envelope of a response or chunk: id, object, created, model, choices. */
static json_t *envelope(api_stream *s, const char *object, json_t *choice, int chunk) {
    json_t *o = json_pack("{s:s, s:s, s:I, s:s, s:s, s:[o]}", "id", s->id, "object", object, "created",
                          (json_int_t)s->created, "model", s->model, "system_fingerprint", "moe-" MOE_VERSION,
                          "choices", choice);
    if (o && chunk && s->include_usage) json_object_set_new(o, "usage", json_null()); /* as OpenAI's chunks */
    return o;
}

static json_t *chat_response(api_stream *s, const gen_result *r) {
    json_t *msg = json_pack("{s:s, s:o, s:n}", "role", "assistant", "content",
                            r->len || !r->tool_calls ? req_json_text(r->text, r->len) : json_null(), "refusal");
    if (msg && r->tool_calls) json_object_set_new(msg, "tool_calls", tool_calls_out(r->tool_calls, 0));
    json_t *choice = json_pack("{s:i, s:o, s:n, s:s}", "index", 0, "message", msg, "logprobs", "finish_reason",
                               finish_name(r->finish));
    json_t *o = envelope(s, "chat.completion", choice, 0);
    if (o) json_object_set_new(o, "usage", usage_json(&r->usage));
    return o;
}

static json_t *chat_chunk(api_stream *s, json_t *delta, const char *finish) {
    json_t *choice = json_pack("{s:i, s:o, s:n, s:s?}", "index", 0, "delta", delta, "logprobs", "finish_reason", finish);
    if (choice && !finish) json_object_set_new(choice, "finish_reason", json_null());
    return envelope(s, "chat.completion.chunk", choice, 1);
}

static void chat_begin(api_stream *s, const gen_usage *u, sbuf *out) {
    (void)u;
    s->opened = 1;
    sse_json(out, NULL, chat_chunk(s, json_pack("{s:s, s:s}", "role", "assistant", "content", ""), NULL));
}

static void chat_text(api_stream *s, const char *t, size_t n, sbuf *out) {
    sse_json(out, NULL, chat_chunk(s, json_pack("{s:o}", "content", req_json_text(t, n)), NULL));
}

/* The usage chunk (stream_options.include_usage) and the end marker. */
static void stream_tail(api_stream *s, const char *object, const gen_result *r, sbuf *out) {
    if (s->include_usage) {
        json_t *o = json_pack("{s:s, s:s, s:I, s:s, s:s, s:[], s:o}", "id", s->id, "object", object, "created",
                              (json_int_t)s->created, "model", s->model, "system_fingerprint", "moe-" MOE_VERSION,
                              "choices", "usage", usage_json(&r->usage));
        sse_json(out, NULL, o);
    }
    sse_done(out);
}

static void chat_end(api_stream *s, const gen_result *r, sbuf *out) {
    if (r->tool_calls)
        sse_json(out, NULL, chat_chunk(s, json_pack("{s:o}", "tool_calls", tool_calls_out(r->tool_calls, 1)), NULL));
    sse_json(out, NULL, chat_chunk(s, json_object(), finish_name(r->finish)));
    stream_tail(s, "chat.completion.chunk", r, out);
}

static void oai_fail(api_stream *s, const req_error *e, sbuf *out) {
    (void)s;
    sse_json(out, NULL, oai_error(e));
    sse_done(out);
}

const api_ops oai_chat_ops = {oai_error, chat_response, chat_begin, chat_text, chat_end, oai_fail, NULL};

static json_t *completion_choice(json_t *text, const char *finish) {
    json_t *c = json_pack("{s:o, s:i, s:n, s:s?}", "text", text, "index", 0, "logprobs", "finish_reason", finish);
    if (c && !finish) json_object_set_new(c, "finish_reason", json_null());
    return c;
}

static json_t *completion_response(api_stream *s, const gen_result *r) {
    json_t *o = envelope(s, "text_completion", completion_choice(req_json_text(r->text, r->len), finish_name(r->finish)), 0);
    if (o) json_object_set_new(o, "usage", usage_json(&r->usage));
    return o;
}

static void completion_begin(api_stream *s, const gen_usage *u, sbuf *out) {
    (void)u;
    (void)out;
    s->opened = 1; /* the first text is the first chunk */
}

static void completion_text(api_stream *s, const char *t, size_t n, sbuf *out) {
    sse_json(out, NULL, envelope(s, "text_completion", completion_choice(req_json_text(t, n), NULL), 1));
}

static void completion_end(api_stream *s, const gen_result *r, sbuf *out) {
    sse_json(out, NULL, envelope(s, "text_completion", completion_choice(json_string(""), finish_name(r->finish)), 1));
    stream_tail(s, "text_completion", r, out);
}

const api_ops oai_completion_ops = {oai_error,       completion_response, completion_begin, completion_text,
                                    completion_end, oai_fail,            NULL};
