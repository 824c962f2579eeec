/* sse.c — byte buffer and server-sent event framing (see sse.h). */
#include "sse.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int grow(sbuf *b, size_t need) {
    if (b->oom) return -1;
    if (need < b->cap) return 0;
    size_t nc = b->cap ? b->cap : 256;
    while (nc <= need) {
        if (nc > ((size_t)-1) / 2) { b->oom = 1; return -1; }
        nc *= 2;
    }
    char *np = realloc(b->p, nc);
    if (!np) {
        b->oom = 1;
        return -1;
    }
    b->p = np;
    b->cap = nc;
    return 0;
}

int sbuf_add(sbuf *b, const char *s, size_t n) {
    if (grow(b, b->len + n)) return -1;
    if (n) memcpy(b->p + b->len, s, n);
    b->len += n;
    b->p[b->len] = 0;
    return 0;
}

int sbuf_adds(sbuf *b, const char *s) { return sbuf_add(b, s, strlen(s)); }

int sbuf_printf(sbuf *b, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0 || grow(b, b->len + (size_t)n)) return -1;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

void sbuf_consume(sbuf *b, size_t n) {
    if (n >= b->len) {
        sbuf_clear(b);
        return;
    }
    memmove(b->p, b->p + n, b->len - n + 1);
    b->len -= n;
}

void sbuf_clear(sbuf *b) {
    b->len = 0;
    if (b->p) b->p[0] = 0;
}

void sbuf_free(sbuf *b) {
    free(b->p);
    memset(b, 0, sizeof *b);
}

int sse_json(sbuf *b, const char *event, json_t *j) {
    char *s = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!s) {
        b->oom = 1;
        return -1;
    }
    if (event) sbuf_printf(b, "event: %s\n", event);
    sbuf_adds(b, "data: ");
    sbuf_adds(b, s);
    free(s);
    return sbuf_add(b, "\n\n", 2);
}

int sse_done(sbuf *b) { return sbuf_adds(b, "data: [DONE]\n\n"); }
