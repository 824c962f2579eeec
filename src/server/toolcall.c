/* toolcall.c — tool calls out of an answer's text (see toolcall.h). */
#define _GNU_SOURCE /* memmem */
#include "toolcall.h"

#include <stdio.h>
#include <string.h>
#include <sys/random.h>

const char *const toolcall_markers[] = {"<tool_call>", "[TOOL_CALLS]", "<|python_tag|>", NULL};

static size_t skip_space(const char *t, size_t n, size_t i) {
    while (i < n && (t[i] == ' ' || t[i] == '\n' || t[i] == '\r' || t[i] == '\t' || t[i] == ';' || t[i] == ','))
        i++;
    return i;
}

static int starts(const char *t, size_t n, size_t i, const char *s) {
    size_t k = strlen(s);
    return n - i >= k && memcmp(t + i, s, k) == 0;
}

/* One JSON value at t[*i..n); advances *i past it. NULL when there is none. */
static json_t *json_at(const char *t, size_t n, size_t *i) {
    json_error_t je;
    json_t *j = json_loadb(t + *i, n - *i, JSON_DISABLE_EOF_CHECK | JSON_DECODE_ANY, &je);
    if (j) *i += (size_t)je.position;
    return j;
}

/* {"id", "name", "arguments": object} from name + arguments (an object, or
 * a string holding one); NULL when malformed. Takes neither reference. */
static json_t *make_call(json_t *name, json_t *args) {
    if (!json_is_string(name) || json_string_length(name) == 0) return NULL;
    json_t *a;
    if (!args || json_is_null(args)) {
        a = json_object();
    } else if (json_is_object(args)) {
        a = json_incref(args);
    } else if (json_is_string(args)) {
        a = json_loads(json_string_value(args), 0, NULL);
        if (a && !json_is_object(a)) {
            json_decref(a);
            a = NULL;
        }
    } else {
        a = NULL;
    }
    if (!a) return NULL;
    unsigned char rnd[12] = {0};
    if (getrandom(rnd, sizeof rnd, 0) < 0) memset(rnd, 0x5a, sizeof rnd);
    char id[8 + 2 * sizeof rnd];
    int k = snprintf(id, sizeof id, "call_");
    for (size_t i = 0; i < sizeof rnd; i++) k += snprintf(id + k, sizeof id - (size_t)k, "%02x", rnd[i]);
    return json_pack("{s:s, s:O, s:o}", "id", id, "name", name, "arguments", a);
}

/* Appends the call in object o ({"name", "arguments"|"parameters"}); -1 when malformed. */
static int add_object(json_t *calls, json_t *o) {
    if (!json_is_object(o)) return -1;
    json_t *args = json_object_get(o, "arguments");
    if (!args) args = json_object_get(o, "parameters");
    json_t *c = make_call(json_object_get(o, "name"), args);
    if (!c) return -1;
    json_array_append_new(calls, c);
    return 0;
}

/* [TOOL_CALLS] followed by a JSON array of calls, or by name[ARGS]{...}. */
static int mistral_calls(json_t *calls, const char *t, size_t n, size_t *i) {
    *i = skip_space(t, n, *i);
    if (*i < n && t[*i] == '[') {
        json_t *arr = json_at(t, n, i);
        int rc = json_is_array(arr) && json_array_size(arr) > 0 ? 0 : -1;
        size_t k;
        json_t *o;
        json_array_foreach(arr, k, o) if (rc == 0) rc = add_object(calls, o);
        json_decref(arr);
        return rc;
    }
    const char *args = memmem(t + *i, n - *i, "[ARGS]", 6);
    if (!args) return -1;
    size_t name_end = (size_t)(args - t);
    json_t *name = json_stringn(t + *i, name_end - *i);
    *i = name_end + 6;
    json_t *a = json_at(t, n, i);
    json_t *c = make_call(name, a);
    json_decref(name);
    json_decref(a);
    if (!c) return -1;
    json_array_append_new(calls, c);
    return 0;
}

json_t *toolcall_parse(const char *text, size_t n) {
    json_t *calls = json_array();
    size_t i = skip_space(text, n, 0);
    int rc = 0;
    while (rc == 0 && i < n) {
        if (starts(text, n, i, "<tool_call>")) {
            i = skip_space(text, n, i + strlen("<tool_call>"));
            json_t *o = json_at(text, n, &i);
            rc = add_object(calls, o);
            json_decref(o);
            i = skip_space(text, n, i);
            if (starts(text, n, i, "</tool_call>")) i += strlen("</tool_call>");
        } else if (starts(text, n, i, "[TOOL_CALLS]")) {
            i += strlen("[TOOL_CALLS]");
            rc = mistral_calls(calls, text, n, &i);
        } else if (starts(text, n, i, "<|python_tag|>") || (json_array_size(calls) > 0 && text[i] == '{')) {
            if (text[i] == '<') i += strlen("<|python_tag|>");
            json_t *o = json_at(text, n, &i);
            rc = add_object(calls, o);
            json_decref(o);
        } else {
            break; /* trailing text: ignored */
        }
        i = skip_space(text, n, i);
    }
    if (rc || json_array_size(calls) == 0) {
        json_decref(calls);
        return NULL;
    }
    return calls;
}
