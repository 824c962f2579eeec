/* request.c — the request both APIs parse into, its field checks and error
 * filling (see request.h). */
#include "request.h"

#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

int req_fail(req_error *e, int status, const char *param, const char *fmt, ...) {
    e->status = status;
    snprintf(e->param, sizeof e->param, "%s", param ? param : "");
    e->code[0] = 0;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(e->message, sizeof e->message, fmt, ap);
    va_end(ap);
    return -1;
}

void req_init(req *r, req_kind kind) {
    memset(r, 0, sizeof *r);
    r->kind = kind;
    moe_sampler_params_defaults(&r->sp);
    /* the APIs' defaults: plain sampling at temperature 1 */
    r->sp.temperature = 1.0f;
    r->sp.top_k = 0;
    r->sp.top_p = 1.0f;
    r->sp.min_p = 0.0f;
    r->sp.repeat_penalty = 1.0f;
}

void req_free(req *r) {
    if (!r) return;
    json_decref(r->messages);
    json_decref(r->tools);
    free(r->prefill);
    free(r->prompt);
    free(r->prompt_ids);
    free(r->model);
    for (size_t i = 0; i < r->n_stops; i++) free(r->stops[i]);
    free(r->stops);
    memset(r, 0, sizeof *r);
}

json_t *req_parse_object(const char *body, size_t len, req_error *e) {
    json_error_t je;
    json_t *j = json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
    if (!j) {
        req_fail(e, 400, NULL, "the body is not valid JSON: %s (line %d, column %d)", je.text, je.line, je.column);
        return NULL;
    }
    if (!json_is_object(j)) {
        json_decref(j);
        req_fail(e, 400, NULL, "the body must be a JSON object");
        return NULL;
    }
    return j;
}

int req_opt_number(json_t *o, const char *key, double lo, double hi, double *out, req_error *e) {
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_number(v)) return req_fail(e, 400, key, "%s must be a number", key);
    double d = json_number_value(v);
    if (!(d >= lo && d <= hi)) return req_fail(e, 400, key, "%s must be between %g and %g, got %g", key, lo, hi, d);
    *out = d;
    return 0;
}

int req_opt_int(json_t *o, const char *key, long long lo, long long hi, long long *out, req_error *e) {
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return 0;
    long long x;
    if (json_is_integer(v)) {
        x = json_integer_value(v);
    } else if (json_is_real(v) && json_real_value(v) == floor(json_real_value(v)) &&
               fabs(json_real_value(v)) < 9e15) { /* 5.0 is an integer in JSON's eyes */
        x = (long long)json_real_value(v);
    } else {
        return req_fail(e, 400, key, "%s must be an integer", key);
    }
    if (x < lo || x > hi) return req_fail(e, 400, key, "%s must be between %lld and %lld, got %lld", key, lo, hi, x);
    *out = x;
    return 0;
}

int req_opt_bool(json_t *o, const char *key, int *out, req_error *e) {
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_boolean(v)) return req_fail(e, 400, key, "%s must be true or false", key);
    *out = json_is_true(v);
    return 0;
}

static int add_stop(req *r, const char *s, size_t n, const char *key, req_error *e) {
    if (n == 0) return req_fail(e, 400, key, "%s: a stop string must not be empty", key);
    char *c = malloc(n + 1);
    char **ns = realloc(r->stops, (r->n_stops + 1) * sizeof *ns);
    if (!c || !ns) {
        free(c);
        free(ns ? ns : r->stops);
        r->stops = NULL;
        r->n_stops = 0;
        return req_fail(e, 500, NULL, "out of memory");
    }
    memcpy(c, s, n);
    c[n] = 0;
    r->stops = ns;
    r->stops[r->n_stops++] = c;
    return 0;
}

int req_opt_stops(json_t *o, const char *key, req *r, req_error *e) {
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return 0;
    if (json_is_string(v)) return add_stop(r, json_string_value(v), json_string_length(v), key, e);
    if (!json_is_array(v)) return req_fail(e, 400, key, "%s must be a string or an array of strings", key);
    if (json_array_size(v) > 16) return req_fail(e, 400, key, "%s: at most 16 stop strings", key);
    size_t i;
    json_t *s;
    json_array_foreach(v, i, s) {
        if (!json_is_string(s)) return req_fail(e, 400, key, "%s[%zu] must be a string", key, i);
        if (add_stop(r, json_string_value(s), json_string_length(s), key, e)) return -1;
    }
    return 0;
}

/* Length of the valid UTF-8 sequence at s[0..n), or 0 when invalid. */
static size_t utf8_seq(const unsigned char *s, size_t n) {
    unsigned c = s[0];
    size_t len;
    unsigned min;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) len = 2, min = 0x80;
    else if (c >= 0xE0 && c <= 0xEF) len = 3, min = 0x800;
    else if (c >= 0xF0 && c <= 0xF4) len = 4, min = 0x10000;
    else return 0;
    if (len > n) return 0;
    unsigned cp = c & (0x3F >> (len - 1));
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80) return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    return len;
}

json_t *req_json_text(const char *text, size_t n) {
    json_t *j = json_stringn(text, n);
    if (j || !text) return j;
    /* invalid UTF-8 (or a NUL): replace each bad byte */
    sbuf b = {0};
    const unsigned char *s = (const unsigned char *)text;
    for (size_t i = 0; i < n;) {
        size_t k = s[i] ? utf8_seq(s + i, n - i) : 0;
        if (k) {
            sbuf_add(&b, text + i, k);
            i += k;
        } else {
            sbuf_add(&b, "\xEF\xBF\xBD", 3);
            i++;
        }
    }
    j = b.oom ? NULL : json_stringn(b.p ? b.p : "", b.len);
    sbuf_free(&b);
    return j;
}

void api_stream_init(api_stream *s, const api_ops *ops, const char *id_prefix, const char *model, int include_usage) {
    memset(s, 0, sizeof *s);
    s->ops = ops;
    s->model = model;
    s->include_usage = include_usage;
    s->created = (int64_t)time(NULL);
    unsigned char rnd[12];
    if (getrandom(rnd, sizeof rnd, 0) != (ssize_t)sizeof rnd) { /* no entropy: the clock will do for an id */
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        uint64_t x = (uint64_t)ts.tv_nsec * 0x9E3779B97F4A7C15ull ^ (uint64_t)ts.tv_sec;
        for (size_t i = 0; i < sizeof rnd; i++) rnd[i] = (unsigned char)(x >> (8 * (i % 8)));
    }
    int n = snprintf(s->id, sizeof s->id, "%s", id_prefix);
    for (size_t i = 0; i < sizeof rnd && n + 2 < (int)sizeof s->id; i++) n += snprintf(s->id + n, 3, "%02x", rnd[i]);
}
