/* chat.c — tokenizer_config.json's chat template, applied as transformers
 * does (see chat.h): picks the template (a string, or "default" / "tool_use" /
 * a named one from a list), gathers the special tokens the template may use,
 * and renders with jinja.h. */
#include "chat.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../base/err.h"
#include "jinja.h"

struct chat_template {
    jinja_tmpl *main;     /* the chosen template: the string, the named one, or "default" */
    jinja_tmpl *tool_use; /* a "tool_use" template when no name was given and the list has one, else NULL */
    json_t *tokens;       /* object: bos_token, eos_token, ... as strings */
};

/* The special tokens transformers (5.x) passes to a template when they are set.
 * additional_special_tokens is not among them (tests/jinja/fixtures/moe-context-probe.json). */
static const char *const k_token_keys[] = {"bos_token", "eos_token", "unk_token", "pad_token",
                                           "sep_token", "cls_token", "mask_token"};

/* A special token as tokenizer_config.json writes it: "text", {"content": "text", ...}, or null. */
static const char *token_text(const json_t *v) {
    if (json_is_string(v)) return json_string_value(v);
    if (json_is_object(v)) {
        const json_t *c = json_object_get(v, "content");
        if (json_is_string(c)) return json_string_value(c);
    }
    return NULL;
}

static moe_status parse_template(const char *name, const json_t *src, jinja_tmpl **out) {
    moe_status st = jinja_parse(json_string_value(src), json_string_length(src), out);
    if (st != MOE_OK) {
        char prefix[160];
        snprintf(prefix, sizeof prefix, "tokenizer_config.json: chat_template%s%s%s", name ? " '" : "",
                 name ? name : "", name ? "'" : "");
        return moe_err_prefix(st, prefix);
    }
    return MOE_OK;
}

/* Finds the template named `name` in a list of {"name", "template"}. */
static const json_t *find_named(const json_t *list, const char *name, moe_status *st) {
    size_t i;
    const json_t *item;
    *st = MOE_OK;
    json_array_foreach(list, i, item) {
        const json_t *n = json_object_get(item, "name"), *t = json_object_get(item, "template");
        if (!json_is_string(n) || !json_is_string(t)) {
            *st = moe_err(MOE_EFORMAT,
                          "tokenizer_config.json: chat_template[%zu] is not a {\"name\", \"template\"} object", i);
            return NULL;
        }
        if (strcmp(json_string_value(n), name) == 0) return t;
    }
    return NULL;
}

static moe_status load(const json_t *cfg, const char *name, chat_template *c) {
    const json_t *ct = json_object_get(cfg, "chat_template");
    moe_status st;
    if (!ct || json_is_null(ct)) return moe_err(MOE_EUNSUPPORTED, "tokenizer_config.json has no chat_template");
    if (json_is_string(ct)) {
        if (name && strcmp(name, "default") != 0)
            return moe_err(MOE_EUNSUPPORTED, "tokenizer_config.json has one chat template, not one named '%s'", name);
        return parse_template(NULL, ct, &c->main);
    }
    if (!json_is_array(ct))
        return moe_err(MOE_EFORMAT, "tokenizer_config.json: chat_template is neither a string nor a list");
    if (name) {
        const json_t *t = find_named(ct, name, &st);
        if (st != MOE_OK) return st;
        if (!t) return moe_err(MOE_EUNSUPPORTED, "tokenizer_config.json has no chat template named '%s'", name);
        return parse_template(name, t, &c->main);
    }
    const json_t *def = find_named(ct, "default", &st);
    if (st != MOE_OK) return st;
    const json_t *tool = find_named(ct, "tool_use", &st);
    if (!def && !tool)
        return moe_err(MOE_EUNSUPPORTED, "tokenizer_config.json has several chat templates and none named 'default'");
    if (def && (st = parse_template("default", def, &c->main)) != MOE_OK) return st;
    if (tool && (st = parse_template("tool_use", tool, &c->tool_use)) != MOE_OK) return st;
    return MOE_OK;
}

static moe_status load_tokens(const json_t *cfg, json_t *tokens) {
    for (size_t i = 0; i < sizeof k_token_keys / sizeof *k_token_keys; i++) {
        const char *t = token_text(json_object_get(cfg, k_token_keys[i]));
        if (t && json_object_set_new(tokens, k_token_keys[i], json_string(t)) != 0)
            return moe_err(MOE_ENOMEM, "out of memory loading a chat template");
    }
    return MOE_OK;
}

moe_status chat_template_load(const char *tokenizer_config_json, const char *name, chat_template **out) {
    *out = NULL;
    if (!tokenizer_config_json) return moe_err(MOE_EINVAL, "chat_template_load: NULL tokenizer_config.json text");
    json_error_t jerr;
    json_t *cfg = json_loads(tokenizer_config_json, JSON_ALLOW_NUL, &jerr);
    if (!cfg) return moe_err(MOE_EFORMAT, "tokenizer_config.json: line %d: %s", jerr.line, jerr.text);
    if (!json_is_object(cfg)) {
        json_decref(cfg);
        return moe_err(MOE_EFORMAT, "tokenizer_config.json: not a JSON object");
    }
    chat_template *c = calloc(1, sizeof *c);
    moe_status st = c ? MOE_OK : moe_err(MOE_ENOMEM, "out of memory loading a chat template");
    if (st == MOE_OK) st = load(cfg, name, c);
    if (st == MOE_OK && !(c->tokens = json_object())) st = moe_err(MOE_ENOMEM, "out of memory loading a chat template");
    if (st == MOE_OK) st = load_tokens(cfg, c->tokens);
    json_decref(cfg);
    if (st != MOE_OK) {
        chat_template_free(c);
        return st;
    }
    *out = c;
    return MOE_OK;
}

void chat_template_free(chat_template *c) {
    if (!c) return;
    jinja_free(c->main);
    jinja_free(c->tool_use);
    json_decref(c->tokens);
    free(c);
}

moe_status chat_template_apply(const chat_template *c, const json_t *messages, const json_t *tools,
                               int add_generation_prompt, char **out, size_t *out_len) {
    *out = NULL;
    if (out_len) *out_len = 0;
    if (!c) return moe_err(MOE_EINVAL, "chat_template_apply: NULL template");
    if (!json_is_array(messages)) return moe_err(MOE_EINVAL, "chat_template_apply: messages must be a JSON array");
    if (tools && json_is_null(tools)) tools = NULL;
    if (tools && !json_is_array(tools)) return moe_err(MOE_EINVAL, "chat_template_apply: tools must be a JSON array");
    const jinja_tmpl *t = tools && c->tool_use ? c->tool_use : c->main;
    if (!t) return moe_err(MOE_EUNSUPPORTED, "this model's only chat template is for tool use: pass tools");

    /* the same variables transformers renders with: special tokens, then the call's arguments */
    json_t *ctx = json_copy(c->tokens);
    if (!ctx || json_object_set(ctx, "messages", (json_t *)messages) != 0 ||
        json_object_set_new(ctx, "tools", tools ? json_incref((json_t *)tools) : json_null()) != 0 ||
        json_object_set_new(ctx, "documents", json_null()) != 0 ||
        json_object_set_new(ctx, "add_generation_prompt", json_boolean(add_generation_prompt)) != 0) {
        json_decref(ctx);
        return moe_err(MOE_ENOMEM, "out of memory applying a chat template");
    }
    moe_status st = jinja_render(t, ctx, out, out_len);
    json_decref(ctx);
    return st;
}
