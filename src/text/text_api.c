/* text_api.c — the public tokenizer, detokenizer and chat-template API of
 * moe.h over the internal tokenizer (tokenizer.h) and chat-template
 * interpreter (chat.h). A model directory's tokenizer_config.json supplies
 * the chat template; a model without one still tokenizes. */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "../base/err.h"
#include "../base/file.h"
#include "chat.h"
#include "moe.h"
#include "tokenizer.h"

struct moe_tokenizer {
    tokenizer *tok;
    chat_template *chat;   /* NULL when the model has none */
    char chat_err[512];    /* why there is none, for moe_chat_render */
};

struct moe_detok {
    detok *d;
    char *buf;             /* the last call's text */
    size_t len;
};

static int is_dir(const char *p) {
    char probe[4200];
    return path_join(probe, sizeof probe, p, "tokenizer.json") == MOE_OK && file_exists(probe);
}

/* The chat template of tokenizer_config.json at `cfg`, or of the
 * chat_template.jinja file beside it (newer hub repositories keep it there). */
static moe_status load_chat(const char *cfg, chat_template **out) {
    char *text;
    moe_status st = file_read_all(cfg, 64u << 20, &text, NULL);
    if (st) return st;
    char jpath[4200];
    snprintf(jpath, sizeof jpath, "%s", cfg);
    char *slash = strrchr(jpath, '/');
    snprintf(slash ? slash + 1 : jpath, sizeof jpath - (size_t)(slash ? slash + 1 - jpath : 0), "chat_template.jinja");
    json_t *root = json_loads(text, 0, NULL);
    if (json_is_object(root) && !json_object_get(root, "chat_template") && file_exists(jpath)) {
        char *tmpl;
        if ((st = file_read_all(jpath, 16u << 20, &tmpl, NULL)) == MOE_OK) {
            json_object_set_new(root, "chat_template", json_string(tmpl));
            free(tmpl);
            char *merged = json_dumps(root, JSON_COMPACT);
            if (merged) {
                free(text);
                text = merged;
            }
        }
    }
    json_decref(root);
    if (st == MOE_OK) st = chat_template_load(text, NULL, out);
    free(text);
    return st;
}

moe_status moe_tokenizer_load(const char *path, moe_tokenizer **out) {
    *out = NULL;
    if (!path) return moe_err(MOE_EINVAL, "no tokenizer path given");
    char json[4200], cfg[4200];
    moe_status st;
    int dir = is_dir(path);
    if (dir) {
        if ((st = path_join(json, sizeof json, path, "tokenizer.json")) ||
            (st = path_join(cfg, sizeof cfg, path, "tokenizer_config.json")))
            return st;
    } else {
        if (strlen(path) >= sizeof json) return moe_err(MOE_EINVAL, "path too long");
        strcpy(json, path);
        /* tokenizer_config.json beside a tokenizer.json file */
        strcpy(cfg, path);
        char *slash = strrchr(cfg, '/');
        size_t at = slash ? (size_t)(slash - cfg) + 1 : 0;
        if (at + sizeof "tokenizer_config.json" > sizeof cfg) return moe_err(MOE_EINVAL, "path too long");
        strcpy(cfg + at, "tokenizer_config.json");
    }
    int has_cfg = file_exists(cfg);
    moe_tokenizer *t = calloc(1, sizeof *t);
    if (!t) return moe_err(MOE_ENOMEM, "out of memory");
    if ((st = tok_load(json, has_cfg ? cfg : NULL, &t->tok))) {
        free(t);
        return st;
    }
    snprintf(t->chat_err, sizeof t->chat_err, "%s: no tokenizer_config.json, so no chat template", path);
    if (has_cfg) {
        if ((st = load_chat(cfg, &t->chat))) snprintf(t->chat_err, sizeof t->chat_err, "%s: %s", path, moe_errmsg());
        moe_err_clear();
    }
    *out = t;
    return MOE_OK;
}

void moe_tokenizer_free(moe_tokenizer *t) {
    if (!t) return;
    tok_free(t->tok);
    chat_template_free(t->chat);
    free(t);
}

int moe_tokenizer_vocab_size(const moe_tokenizer *t) { return tok_vocab_size(t->tok); }
int32_t moe_tokenizer_bos(const moe_tokenizer *t) { return tok_bos_id(t->tok); }
int32_t moe_tokenizer_eos(const moe_tokenizer *t) { return tok_eos_id(t->tok); }

moe_status moe_tokenize(const moe_tokenizer *t, const char *text, size_t len, int add_special, int32_t **ids, size_t *n) {
    if (!t || (!text && len)) return moe_err(MOE_EINVAL, "moe_tokenize: NULL argument");
    return tok_encode(t->tok, text ? text : "", len, add_special, ids, n);
}

moe_status moe_detokenize(const moe_tokenizer *t, const int32_t *ids, size_t n, int skip_special, char **text) {
    if (!t || (!ids && n)) return moe_err(MOE_EINVAL, "moe_detokenize: NULL argument");
    size_t len;
    return tok_decode(t->tok, ids, n, skip_special, text, &len);
}

void moe_free(void *p) { free(p); }

moe_status moe_detok_new(const moe_tokenizer *t, int skip_special, moe_detok **out) {
    *out = NULL;
    moe_detok *d = calloc(1, sizeof *d);
    if (!d) return moe_err(MOE_ENOMEM, "out of memory");
    moe_status st = detok_new(t->tok, skip_special, &d->d);
    if (st) {
        free(d);
        return st;
    }
    *out = d;
    return MOE_OK;
}

void moe_detok_free(moe_detok *d) {
    if (!d) return;
    detok_free(d->d);
    free(d->buf);
    free(d);
}

static const char *took(moe_detok *d, moe_status st, size_t *len) {
    if (st) d->len = 0; /* a failed push shows nothing; the message stays readable */
    *len = d->len;
    return d->buf ? d->buf : "";
}

const char *moe_detok_push(moe_detok *d, int32_t id, size_t *len) {
    d->len = 0;
    if (d->buf) d->buf[0] = 0;
    return took(d, detok_push(d->d, id, &d->buf, &d->len), len);
}

const char *moe_detok_flush(moe_detok *d, size_t *len) {
    d->len = 0;
    if (d->buf) d->buf[0] = 0;
    return took(d, detok_flush(d->d, &d->buf, &d->len), len);
}

void moe_detok_reset(moe_detok *d) { detok_reset(d->d); }

moe_status moe_chat_render(const moe_tokenizer *t, const char *messages_json, const char *tools_json,
                           int add_generation_prompt, char **out) {
    *out = NULL;
    if (!t->chat) return moe_err(MOE_EUNSUPPORTED, "%s", t->chat_err);
    json_error_t je;
    json_t *msgs = json_loads(messages_json ? messages_json : "", 0, &je);
    if (!json_is_array(msgs)) {
        json_decref(msgs);
        return moe_err(MOE_EINVAL, "chat messages must be a JSON array: %s", msgs ? "not an array" : je.text);
    }
    json_t *tools = NULL;
    if (tools_json && !(tools = json_loads(tools_json, 0, &je))) {
        json_decref(msgs);
        return moe_err(MOE_EINVAL, "chat tools are not valid JSON: %s", je.text);
    }
    size_t len;
    moe_status st = chat_template_apply(t->chat, msgs, tools, add_generation_prompt, out, &len);
    json_decref(msgs);
    json_decref(tools);
    return st;
}
