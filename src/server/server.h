/* server.h — moe serve: an OpenAI- and Anthropic-compatible HTTP server over
 * one model (see docs/ARCHITECTURE.md, "The server").
 *
 *   HTTP threads (libmicrohttpd, one per connection): parse and check the
 *     request (openai.c, anthropic.c), render and tokenize its prompt
 *     (prompt.c), queue it, and write the answer back as it comes (JSON or
 *     server-sent events, sse.c), watching for the client going away.
 *   One worker thread (sched.c): owns the model's sequences (slots), serves
 *     the queue, streams tokens back through each request's channel (job.c).
 *   GET /health, /metrics (metrics.c), /v1/models.
 *
 * Like the CLI it uses only the public API, moe.h. */
#ifndef MOE_SERVER_H
#define MOE_SERVER_H

#include <stddef.h>

#include "moe.h"

typedef struct srv_params {
    const char *host;       /* address to listen on; NULL: 127.0.0.1 */
    int port;               /* 0: a free port, see srv_port */
    const char *api_key;    /* NULL: no authentication; else required as Bearer or x-api-key */
    const char *model_name; /* the name /v1/models reports */
    int n_ctx;              /* each slot's context; <= 0: the sequence default */
    int n_parallel;         /* slots: sequences served at once */
    int kv_bits;            /* KV cache storage (moe_seq_params.kv_bits) */
    size_t max_body;        /* largest request body accepted (bytes) */
} srv_params;

typedef struct srv srv;

/* Starts serving model m with tokenizer tok (both must outlive the server):
 * slots allocated, worker running, socket listening. MOE_OK, or a status with
 * a message in err (MOE_EIO: cannot listen; MOE_ENOMEM). */
moe_status srv_start(moe_model *m, const moe_tokenizer *tok, const srv_params *p, srv **out, char *err, size_t errlen);
/* The port it listens on. */
int srv_port(const srv *s);
/* Stops accepting, ends running and queued requests (503), closes every
 * connection, frees everything. NULL is fine. */
void srv_stop(srv *s);

#endif
