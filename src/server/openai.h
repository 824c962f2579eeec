/* openai.h — the OpenAI API: POST /v1/chat/completions and /v1/completions
 * parsed into a `req`, answers written as OpenAI's objects and chunks. */
#ifndef MOE_SERVER_OPENAI_H
#define MOE_SERVER_OPENAI_H

#include "request.h"

/* Parse a request body into r (initialised here; the caller frees it with
 * req_free, also on failure). 0, or -1 with e filled (400 for the client's
 * mistakes). */
int oai_parse_chat(const char *body, size_t len, req *r, req_error *e);
int oai_parse_completion(const char *body, size_t len, req *r, req_error *e);

/* {"error": {"message", "type", "param", "code"}} */
json_t *oai_error(const req_error *e);
/* {"object": "list", "data": [{"id": model, "object": "model", ...}]} */
json_t *oai_models(const char *model, int64_t created);

extern const api_ops oai_chat_ops, oai_completion_ops;

#endif
