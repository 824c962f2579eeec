/* fuzz_jinja.c — libFuzzer harness for the chat-template interpreter: the
 * input is template source (as an untrusted tokenizer_config.json carries it);
 * it is parsed and, when it parses, rendered against a conversation with every
 * kind of value a template meets (strings, numbers, null, nested tool calls,
 * content parts). Any status is fine; a crash, leak, hang or sanitizer report
 * is not. A successful render must be NUL-terminated at its length. */
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../src/text/jinja.h"

static const char k_ctx[] =
    "{\"messages\": [{\"role\": \"system\", \"content\": \"Be brief.\"},"
    " {\"role\": \"user\", \"content\": \"  Hi \\u00e9\\ud83d\\ude00\\n\"},"
    " {\"role\": \"assistant\", \"content\": null, \"tool_calls\": [{\"id\": \"call12345\", \"type\": \"function\","
    "   \"function\": {\"name\": \"f\", \"arguments\": {\"x\": 1.5, \"y\": [true, null, -3]}}}]},"
    " {\"role\": \"tool\", \"tool_call_id\": \"call12345\", \"content\": \"22\"},"
    " {\"role\": \"user\", \"content\": [{\"type\": \"text\", \"text\": \"look\"}, {\"type\": \"image\"}]}],"
    " \"tools\": [{\"type\": \"function\", \"function\": {\"name\": \"f\", \"description\": \"d\","
    "   \"parameters\": {\"type\": \"object\", \"properties\": {\"x\": {\"type\": \"number\"}}}}}],"
    " \"documents\": null, \"add_generation_prompt\": true, \"bos_token\": \"<s>\", \"eos_token\": \"</s>\"}";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static json_t *ctx;
    if (!ctx) ctx = json_loads(k_ctx, 0, NULL);
    if (!ctx) abort();
    jinja_tmpl *t;
    if (jinja_parse((const char *)data, size, &t) != MOE_OK) return 0;
    char *out;
    size_t len;
    if (jinja_render(t, ctx, &out, &len) == MOE_OK) {
        if (out[len] != 0) abort();
        free(out);
    }
    jinja_free(t);
    return 0;
}
