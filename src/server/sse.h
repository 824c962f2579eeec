/* sse.h — a growable byte buffer, and server-sent events written into it.
 *
 * Every response body the server builds, JSON or an event stream, is bytes
 * appended to an sbuf; a streaming response hands them to the HTTP library
 * as they come. An allocation failure is sticky (b->oom) so a run of appends
 * can be checked once at the end. */
#ifndef MOE_SERVER_SSE_H
#define MOE_SERVER_SSE_H

#include <jansson.h>
#include <stddef.h>

typedef struct sbuf {
    char *p;      /* [cap] bytes, p[len] == 0 whenever p != NULL */
    size_t len, cap;
    int oom;      /* an append failed: the contents are incomplete */
} sbuf;

/* Appends n bytes (s may hold NULs); 0, or -1 on out of memory. */
int sbuf_add(sbuf *b, const char *s, size_t n);
int sbuf_adds(sbuf *b, const char *s);
int sbuf_printf(sbuf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
/* Drops the first n bytes (n <= len). */
void sbuf_consume(sbuf *b, size_t n);
/* Empties the buffer, keeping its memory. */
void sbuf_clear(sbuf *b);
void sbuf_free(sbuf *b);

/* One event: "event: NAME\n" (when event is not NULL), "data: " + j as
 * compact JSON + "\n\n". Takes the reference to j (NULL counts as out of
 * memory). */
int sse_json(sbuf *b, const char *event, json_t *j);
/* OpenAI's end of stream: "data: [DONE]\n\n". */
int sse_done(sbuf *b);

#endif
