/* anthropic.h — the Anthropic Messages API: POST /v1/messages and
 * /v1/messages/count_tokens parsed into a `req`, answers written as
 * Anthropic's message object and its stream of events. */
#ifndef MOE_SERVER_ANTHROPIC_H
#define MOE_SERVER_ANTHROPIC_H

#include "request.h"

/* Parse a request body into r (initialised here; the caller frees it with
 * req_free, also on failure). count_tokens: the body of
 * /v1/messages/count_tokens (no max_tokens). 0, or -1 with e filled. */
int ant_parse_messages(const char *body, size_t len, int count_tokens, req *r, req_error *e);

/* {"type": "error", "error": {"type", "message"}} */
json_t *ant_error(const req_error *e);

extern const api_ops ant_messages_ops;

#endif
