/* request.h — what the server's API adapters agree on.
 *
 * An adapter (openai.c, anthropic.c) turns a request body into a `req`: the
 * conversation as a chat template expects it (or a raw prompt), sampling
 * options, limits, stop strings. The HTTP glue renders and tokenizes it and
 * queues it for the worker; what comes back (a `gen_result`, or pieces of
 * text as they are made) the adapter writes out in its API's shape, through
 * the `api_ops` table. Parsing checks every field's type and range and says
 * which one is wrong in a `req_error`; nothing here touches the model, so the
 * parsers can be fuzzed alone (fuzz/fuzz_server.c). */
#ifndef MOE_SERVER_REQUEST_H
#define MOE_SERVER_REQUEST_H

#include <jansson.h>
#include <stdint.h>

#include "moe.h"
#include "sse.h"

/* An error as the client sees it: an HTTP status and what to say. Each API
 * writes it as its own error object (OpenAI: {"error": {message, type, param,
 * code}}, Anthropic: {"type": "error", "error": {type, message}}). */
typedef struct req_error {
    int status;        /* 400, 401, 404, 405, 413, 500, 503 */
    char param[64];    /* the field at fault ("messages[1].content"); "" when none */
    char code[48];     /* OpenAI's code ("context_length_exceeded"); "" when none */
    char message[512];
} req_error;

/* Fills e (message printf-style, param may be NULL) and returns -1. */
int req_fail(req_error *e, int status, const char *param, const char *fmt, ...) __attribute__((format(printf, 4, 5)));

typedef enum req_kind { REQ_CHAT, REQ_COMPLETION } req_kind;

typedef struct req {
    req_kind kind;
    json_t *messages;     /* REQ_CHAT: [{role, content: string, tool_calls?, tool_call_id?, name?}] (owned) */
    json_t *tools;        /* [{"type": "function", "function": {name, description, parameters}}], or NULL (owned) */
    char *prefill;        /* REQ_CHAT: text the answer continues (Anthropic's last assistant turn), or NULL */
    char *prompt;         /* REQ_COMPLETION: the prompt text, or NULL when given as token ids */
    int32_t *prompt_ids;  /* REQ_COMPLETION: [n_prompt_ids] token ids, or NULL */
    size_t n_prompt_ids;
    char *model;          /* the model name asked for, or NULL */
    moe_sampler_params sp;
    int has_seed;         /* sp.seed came from the request */
    long long max_tokens; /* most tokens to generate; 0: until the context is full */
    char **stops;         /* [n_stops] non-empty stop strings (owned) */
    size_t n_stops;
    int stream, include_usage;
} req;

/* Defaults every API starts from: temperature 1, no top-k/top-p/min-p,
 * no repetition penalty, no limit. */
void req_init(req *r, req_kind kind);
void req_free(req *r);

/* Parses a body that must be a JSON object; NULL with e filled (400) when
 * it is not. The caller owns the result. */
json_t *req_parse_object(const char *body, size_t len, req_error *e);

/* Optional fields of object o: absent or null leaves *out as it is and
 * returns 0; a wrong type or a value outside [lo, hi] fills e (400, param =
 * key) and returns -1. */
int req_opt_number(json_t *o, const char *key, double lo, double hi, double *out, req_error *e);
int req_opt_int(json_t *o, const char *key, long long lo, long long hi, long long *out, req_error *e);
int req_opt_bool(json_t *o, const char *key, int *out, req_error *e);
/* A string or an array of strings (at most 16, each non-empty) into
 * r->stops. */
int req_opt_stops(json_t *o, const char *key, req *r, req_error *e);

/* A JSON string of text[n], with invalid UTF-8 replaced by U+FFFD (model
 * output may end a byte sequence badly); NULL only when out of memory. */
json_t *req_json_text(const char *text, size_t n);

/* --------------------------------------------------- generation results -- */

typedef enum gen_finish {
    FIN_NONE,     /* still running */
    FIN_EOS,      /* the model ended its answer */
    FIN_STOP,     /* a stop string appeared (gen_result.stop_seq) */
    FIN_LENGTH,   /* max_tokens, or the context is full */
    FIN_TOOLS,    /* the answer is tool calls (gen_result.tool_calls) */
    FIN_ERROR,    /* failed; see the job's req_error */
    FIN_CANCELLED /* the client went away */
} gen_finish;

typedef struct gen_usage {
    int64_t prompt;     /* prompt tokens in all */
    int64_t cached;     /* of those, found in a slot's cache (not processed again) */
    int64_t completion; /* tokens generated */
} gen_usage;

typedef struct gen_result {
    const char *text;     /* the answer's visible text [len], stop strings and tool calls removed */
    size_t len;
    json_t *tool_calls;   /* [{"id", "name", "arguments": object}] or NULL (borrowed) */
    gen_finish finish;
    const char *stop_seq; /* FIN_STOP: which stop string */
    gen_usage usage;
} gen_result;

/* ------------------------------------------------------- adapter table -- */

/* One response being written: identity and, for streams, how far it got. */
typedef struct api_stream {
    const struct api_ops *ops;
    char id[48];          /* "chatcmpl-…", "cmpl-…", "msg_…" */
    const char *model;    /* the name the server reports (borrowed) */
    int64_t created;      /* unix seconds */
    int include_usage;
    int opened;           /* begin was written */
    int block;            /* Anthropic: content blocks written so far */
    int text_open;        /* Anthropic: a text block is open */
} api_stream;

typedef struct api_ops {
    /* The body of an error response (the status goes on the HTTP response). */
    json_t *(*error)(const req_error *e);
    /* A whole non-streamed answer. */
    json_t *(*response)(api_stream *s, const gen_result *r);
    /* Streams: the first events once the prompt is in a slot (u: prompt counts). */
    void (*begin)(api_stream *s, const gen_usage *u, sbuf *out);
    /* More answer text. */
    void (*text)(api_stream *s, const char *t, size_t n, sbuf *out);
    /* The last events: tool calls, finish reason, usage, end marker. */
    void (*end)(api_stream *s, const gen_result *r, sbuf *out);
    /* An error after the stream began. */
    void (*fail)(api_stream *s, const req_error *e, sbuf *out);
    /* A keep-alive event, or NULL when the API has none. */
    void (*ping)(api_stream *s, sbuf *out);
} api_ops;

/* Fills s->id with prefix + 24 random hex digits. */
void api_stream_init(api_stream *s, const api_ops *ops, const char *id_prefix, const char *model, int include_usage);

#endif
