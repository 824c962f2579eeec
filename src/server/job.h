/* job.h — one request on its way through the server, and the channel its
 * answer comes back through.
 *
 * An HTTP thread fills the input (the parsed request, its rendered prompt
 * and token ids) and queues the job; the worker that owns the model takes
 * it, says when it started (job_start: the prompt is in a slot, usage known),
 * appends answer text as it is made (job_emit) and ends it (job_finish /
 * job_fail). The HTTP thread waits on the channel and writes what arrives.
 * Either side may let go first: the job is reference-counted, and a client
 * that goes away sets `cancel`, which the worker reads between steps.
 * Everything below `mu` is guarded by it; after the state is JOB_DONE the
 * result fields no longer change and may be read without it. */
#ifndef MOE_SERVER_JOB_H
#define MOE_SERVER_JOB_H

#include <pthread.h>

#include "request.h"

typedef enum job_state { JOB_QUEUED, JOB_RUNNING, JOB_DONE } job_state;

typedef struct job {
    /* input: set before job_submit, read-only afterwards */
    req rq;                /* the request (owned) */
    char *text;            /* the rendered prompt, or NULL when given as token ids (owned) */
    int32_t *ids;          /* [n_ids] its tokens (owned, malloc) */
    size_t n_ids;
    int tools;             /* the answer may hold tool calls */
    struct job *next;      /* the scheduler's queue link (under the scheduler's lock) */

    pthread_mutex_t mu;
    pthread_cond_t cv;     /* signalled on every change below */
    int refs;
    job_state state;
    sbuf out;              /* the visible answer so far */
    gen_usage usage;
    gen_finish finish;
    json_t *tool_calls;    /* FIN_TOOLS: the calls (owned) */
    char *stop_seq;        /* FIN_STOP: the stop string (owned) */
    req_error err;         /* FIN_ERROR */
    int cancel;            /* the client went away */
} job;

/* A new queued job with one reference; NULL when out of memory. */
job *job_new(void);
void job_ref(job *j);
/* Drops a reference; the last one frees the job and its input. NULL is fine. */
void job_unref(job *j);

/* Worker side. */
void job_start(job *j, const gen_usage *u);
void job_emit(job *j, const char *text, size_t n);
/* Ends the job; takes tool_calls' reference, copies stop_seq. */
void job_finish(job *j, gen_finish f, const gen_usage *u, const char *stop_seq, json_t *tool_calls);
void job_fail(job *j, int status, const char *code, const char *fmt, ...) __attribute__((format(printf, 4, 5)));
int job_cancelled(job *j);

/* HTTP side. */
void job_cancel(job *j);

/* What the HTTP side has seen of a job; job_poll brings it up to date. */
typedef struct job_view {
    job_state state;
    size_t len;            /* bytes of answer text taken so far */
    gen_usage usage;       /* as of the last poll */
} job_view;

/* Waits until the job moved past *v (a new state or more text) or
 * timeout_ms passed; appends the new text to `text` (may be NULL) and updates
 * *v. Returns 1 when something changed, 0 on timeout. */
int job_poll(job *j, job_view *v, sbuf *text, int timeout_ms);

/* The finished job's result, pointing into the job (valid while referenced). */
void job_result(const job *j, gen_result *r);

#endif
