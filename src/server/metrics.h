/* metrics.h — the server's counters, served at GET /metrics in Prometheus'
 * text format. HTTP threads count requests; the worker counts tokens and
 * time and publishes what its slots hold (it owns the sequences, so nothing
 * else reads them). All calls are thread-safe. */
#ifndef MOE_SERVER_METRICS_H
#define MOE_SERVER_METRICS_H

#include <pthread.h>
#include <stdint.h>

#include "moe.h"
#include "sse.h"

typedef enum met_route {
    MR_CHAT, MR_COMPLETIONS, MR_MESSAGES, MR_COUNT_TOKENS, MR_MODELS, MR_HEALTH, MR_METRICS, MR_OTHER, MR_N
} met_route;

enum { MET_CODES = 9 }; /* 200 400 401 404 405 413 500 503, other */

typedef struct metrics {
    pthread_mutex_t mu;
    double start;                       /* monotonic seconds at init */
    uint64_t requests[MR_N][MET_CODES];
    uint64_t cancelled;                 /* requests whose client went away */
    int64_t prompt_tokens;              /* prompt tokens of admitted requests, cached included */
    int64_t prompt_cached;              /* of those, found in a slot's cache */
    int64_t prompt_processed;           /* tokens run through the model as prompt */
    int64_t gen_tokens;                 /* tokens generated */
    int64_t decode_rounds;              /* decoding passes (one per round, all slots' tokens batched) */
    double prompt_seconds, gen_seconds; /* time spent on each */
    int queue_depth;                    /* requests waiting for a slot */
    int n_slots;
    int *slot_busy;                     /* [n_slots] */
    int64_t *slot_tokens;               /* [n_slots] tokens in each slot's KV cache */
    int64_t ctx_tokens;                 /* a slot's context size */
    int64_t kv_bytes;                   /* KV cache memory of all slots */
} metrics;

/* 0, or -1 when out of memory. */
int metrics_init(metrics *m, int n_slots, int64_t ctx_tokens, int64_t kv_bytes);
void metrics_free(metrics *m);

void metrics_request(metrics *m, met_route r, int status);
void metrics_cancelled(metrics *m);
void metrics_admit(metrics *m, int64_t prompt_tokens, int64_t cached);
void metrics_prefill(metrics *m, int64_t tokens, double seconds);
/* One decoding round: `tokens` slots each got a token in one pass. */
void metrics_decode(metrics *m, int64_t tokens, double seconds);
void metrics_queue(metrics *m, int depth);
void metrics_slot(metrics *m, int slot, int busy, int64_t tokens);

/* Appends the Prometheus text exposition of everything. */
void metrics_render(metrics *m, sbuf *out);
/* Appends the expert cache's counters of an offloaded model (nothing when
 * model is not offloaded): per MoE layer and in total. */
void metrics_render_experts(const moe_model *model, sbuf *out);

#endif
