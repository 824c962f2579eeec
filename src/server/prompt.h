/* prompt.h — a request's prompt: the conversation through the model's chat
 * template (or a raw prompt), then tokens. Runs on the HTTP threads (the
 * tokenizer is thread-safe), so the worker gets a prompt known to fit. */
#ifndef MOE_SERVER_PROMPT_H
#define MOE_SERVER_PROMPT_H

#include "request.h"

typedef struct prompt_env {
    const moe_tokenizer *tok;
    int vocab;        /* the model's vocabulary size */
    int n_ctx;        /* a slot's context */
    int tools_ok;     /* the chat template shows tools to the model */
    int strip_space;  /* the template puts ' ' before an assistant's text itself */
    int has_template; /* the tokenizer has a chat template */
} prompt_env;

/* Finds out what the chat template does with tools and with an assistant
 * message's leading space, by rendering small conversations. */
void prompt_probe(prompt_env *env);

/* The prompt of r: *text (malloc'd; NULL when r gives token ids) and
 * *ids[*n] (malloc'd). 0, or -1 with e filled: 400 when the template
 * refuses the conversation, the prompt is empty, or (check_ctx) it leaves
 * no room in n_ctx for an answer. */
int prompt_build(const prompt_env *env, const req *r, int check_ctx, char **text, int32_t **ids, size_t *n, req_error *e);

#endif
