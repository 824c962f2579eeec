/* prompt.c — rendering and tokenizing a request's prompt (see prompt.h). */
#include "prompt.h"

#include <stdlib.h>
#include <string.h>

/* The template's rendering of a conversation given as JSON text; NULL when it fails. */
static char *render(const moe_tokenizer *tok, const char *messages, const char *tools, int gen) {
    char *out = NULL;
    if (moe_chat_render(tok, messages, tools, gen, &out) != MOE_OK) return NULL;
    return out;
}

void prompt_probe(prompt_env *env) {
    const char *user = "[{\"role\":\"user\",\"content\":\"x\"}]";
    char *a = render(env->tok, user, NULL, 1);
    env->has_template = a != NULL;
    char *b = render(env->tok, user, "[{\"type\":\"function\",\"function\":{\"name\":\"moe_probe_tool\","
                                       "\"description\":\"d\",\"parameters\":{\"type\":\"object\",\"properties\":{}}}}]", 1);
    env->tools_ok = b && strstr(b, "moe_probe_tool") != NULL;
    /* Mistral-style templates write "[/INST] " + content: the model's own
     * leading space is then theirs, and an answer handed back without it
     * renders to exactly what the model saw. */
    char *c = render(env->tok, "[{\"role\":\"user\",\"content\":\"x\"},{\"role\":\"assistant\",\"content\":\"Y\"}]", NULL, 0);
    size_t al = a ? strlen(a) : 0;
    env->strip_space = a && c && strncmp(c, a, al) == 0 && strncmp(c + al, " Y", 2) == 0;
    moe_free(a);
    moe_free(b);
    moe_free(c);
}

static int tokens(const prompt_env *env, const char *text, int add_special, int32_t **ids, size_t *n, req_error *e) {
    int32_t *t = NULL;
    if (moe_tokenize(env->tok, text, strlen(text), add_special, &t, n) != MOE_OK)
        return req_fail(e, 400, NULL, "cannot tokenize the prompt: %s", moe_errmsg());
    *ids = malloc((*n ? *n : 1) * sizeof **ids);
    if (*ids) memcpy(*ids, t, *n * sizeof **ids);
    moe_free(t);
    return *ids ? 0 : req_fail(e, 500, NULL, "out of memory");
}

static int chat_text(const prompt_env *env, const req *r, char **text, req_error *e) {
    if (!env->has_template)
        return req_fail(e, 400, "messages", "the model has no chat template: use /v1/completions with a plain prompt");
    if (r->tools && !env->tools_ok)
        return req_fail(e, 400, "tools", "the model's chat template does not support tools");
    char *msgs = json_dumps(r->messages, JSON_COMPACT), *tools = r->tools ? json_dumps(r->tools, JSON_COMPACT) : NULL;
    char *out = NULL;
    moe_status st = msgs && (tools || !r->tools) ? moe_chat_render(env->tok, msgs, tools, 1, &out) : MOE_ENOMEM;
    free(msgs);
    free(tools);
    if (st == MOE_ENOMEM) return req_fail(e, 500, NULL, "out of memory");
    if (st) return req_fail(e, 400, "messages", "the chat template refused the conversation: %s", moe_errmsg());
    size_t ol = strlen(out), pl = r->prefill ? strlen(r->prefill) : 0;
    *text = malloc(ol + pl + 1);
    if (*text) {
        memcpy(*text, out, ol);
        memcpy(*text + ol, r->prefill ? r->prefill : "", pl + 1);
    }
    moe_free(out);
    return *text ? 0 : req_fail(e, 500, NULL, "out of memory");
}

int prompt_build(const prompt_env *env, const req *r, int check_ctx, char **text, int32_t **ids, size_t *n, req_error *e) {
    *text = NULL;
    *ids = NULL;
    *n = 0;
    int rc;
    if (r->kind == REQ_CHAT) {
        rc = chat_text(env, r, text, e) || tokens(env, *text, 0, ids, n, e) ? -1 : 0;
    } else if (r->prompt) {
        rc = (*text = strdup(r->prompt)) ? tokens(env, *text, 1, ids, n, e) : req_fail(e, 500, NULL, "out of memory");
    } else {
        *n = r->n_prompt_ids;
        rc = (*ids = malloc(*n * sizeof **ids)) ? 0 : req_fail(e, 500, NULL, "out of memory");
        for (size_t i = 0; !rc && i < *n; i++) {
            if (r->prompt_ids[i] >= env->vocab)
                rc = req_fail(e, 400, "prompt", "prompt[%zu]: token id %d is outside the vocabulary [0, %d)", i,
                              r->prompt_ids[i], env->vocab);
            else (*ids)[i] = r->prompt_ids[i];
        }
    }
    if (!rc && *n == 0) rc = req_fail(e, 400, r->kind == REQ_CHAT ? "messages" : "prompt", "the prompt is empty");
    if (!rc && check_ctx && *n >= (size_t)env->n_ctx) {
        rc = req_fail(e, 400, r->kind == REQ_CHAT ? "messages" : "prompt",
                      "the prompt is %zu tokens; the context holds %d, with room for at least one more (--ctx)", *n,
                      env->n_ctx);
        strcpy(e->code, "context_length_exceeded");
    }
    if (rc) {
        free(*text);
        free(*ids);
        *text = NULL;
        *ids = NULL;
        *n = 0;
    }
    return rc;
}
