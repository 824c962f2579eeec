/* sched.h — the worker: one thread that owns the model's sequences (slots)
 * and serves queued jobs.
 *
 * --parallel N slots, each a moe_seq with its own KV cache. A job goes to
 * the idle slot whose cache shares the longest prefix with its prompt
 * (a conversation's next turn finds its own slot), or to the least recently
 * used one; only the tokens after the shared prefix are processed. Busy slots
 * advance in rounds: a prompt by one batch of up to 256 tokens, every answer
 * by one token, the answers' tokens run through the model together in one
 * pass (moe_seq_eval_pending: the weights read once for all slots); jobs
 * beyond N wait in a FIFO queue. */
#ifndef MOE_SERVER_SCHED_H
#define MOE_SERVER_SCHED_H

#include "job.h"
#include "metrics.h"
#include "prompt.h"

typedef struct sched_params {
    int n_slots;   /* sequences served at once */
    int n_ctx;     /* each slot's context */
    int kv_bits;   /* KV cache storage (moe_seq_params.kv_bits) */
} sched_params;

typedef struct sched sched;

/* Allocates the slots (all KV caches, once) and starts the worker. m, env
 * (and its tokenizer) and met must outlive the scheduler. MOE_OK, or a status
 * with a message in err. */
moe_status sched_new(moe_model *m, const prompt_env *env, const sched_params *p, metrics *met, sched **out, char *err,
                     size_t errlen);
/* Queues j, taking a reference of its own; -1 when the scheduler is stopping. */
int sched_submit(sched *s, job *j);
/* Stops the worker: jobs still queued or running end with a 503. Idempotent. */
void sched_stop(sched *s);
/* Stops (if needed) and frees everything. NULL is fine. */
void sched_free(sched *s);

#endif
