/* toolcall.h — tool calls in a model's answer.
 *
 * Chat templates that take tools teach the model to answer with calls in
 * one of a few textual forms; the server holds the answer's text back from
 * the first marker on and, at the end, turns it into structured calls:
 *   <tool_call>{"name": ..., "arguments": {...}}</tool_call>   (Hermes, Qwen)
 *   [TOOL_CALLS][{"name": ..., "arguments": {...}}, ...]     (Mistral v0.3)
 *   [TOOL_CALLS]name[ARGS]{...}                                (Mistral, newer)
 *   <|python_tag|>{"name": ..., "parameters": {...}}           (Llama 3.1)
 */
#ifndef MOE_SERVER_TOOLCALL_H
#define MOE_SERVER_TOOLCALL_H

#include <jansson.h>
#include <stddef.h>

/* The markers that begin a tool call, NULL-terminated. */
extern const char *const toolcall_markers[];

/* Parses text[n] (starting at a marker) into a new array of
 * {"id": "call_…", "name": string, "arguments": object}; NULL when it holds
 * no well-formed call. Text after the last call is ignored. */
json_t *toolcall_parse(const char *text, size_t n);

#endif
