/* chat.h — chat templates as transformers applies them.
 *
 * A model's tokenizer_config.json carries its prompt format as a Jinja
 * template (`chat_template`: one string, or a list of {"name", "template"}).
 * chat_template_apply renders it the way transformers'
 * tokenizer.apply_chat_template(messages, tools=..., add_generation_prompt=...,
 * tokenize=False) does: the template sees `messages`, `tools` (None when not
 * given), `documents` (None), `add_generation_prompt`, and the special tokens
 * that are set in the same file (bos_token, eos_token, unk_token, pad_token,
 * sep_token, cls_token, mask_token; transformers 5 does not pass
 * additional_special_tokens). The output is byte-identical to transformers' for the
 * templates in tests/jinja/fixtures.
 *
 * Thread-safety: a loaded chat_template is read-only; any number of threads
 * may call chat_template_apply on it at once.
 */
#ifndef MOE_TEXT_CHAT_H
#define MOE_TEXT_CHAT_H

#include <jansson.h>
#include <stddef.h>

#include "moe.h"

typedef struct chat_template chat_template;

/* Loads the chat template from the text of a tokenizer_config.json.
 * `name` picks one of a list of named templates; NULL takes "default" (and,
 * as transformers does, "tool_use" instead when chat_template_apply is given
 * tools and the list has one). The special tokens may be strings or
 * {"content": ...} objects. On success *out owns the result (free with
 * chat_template_free); on failure *out is NULL and:
 *   MOE_EFORMAT       the JSON is malformed, chat_template has the wrong type,
 *                     or the template has a syntax error (line:col in the message)
 *   MOE_EUNSUPPORTED  there is no chat_template (or none named `name`), or the
 *                     template uses a tag, filter or test moe lacks */
moe_status chat_template_load(const char *tokenizer_config_json, const char *name, chat_template **out);

/* Frees; NULL is a no-op. */
void chat_template_free(chat_template *c);

/* Renders the conversation. `messages` is a JSON array of message objects
 * ({"role", "content", ...}; content may be a string or a list of parts;
 * tool_calls and other fields pass through as given). `tools` is a JSON array
 * of tool definitions, or NULL. On success *out is a malloc'd, NUL-terminated
 * prompt the caller frees and *out_len (may be NULL) its length. On failure
 * *out is NULL and:
 *   MOE_EINVAL        the template rejected the conversation with
 *                     raise_exception() (the message is the template's own,
 *                     e.g. "Conversation roles must alternate
 *                     user/assistant/user/assistant/..."), or failed at run
 *                     time as it would in transformers; or bad arguments
 *   MOE_EUNSUPPORTED  the template used something moe lacks at run time
 *   MOE_ENOMEM        out of memory */
moe_status chat_template_apply(const chat_template *c, const json_t *messages, const json_t *tools,
                               int add_generation_prompt, char **out, size_t *out_len);

#endif
