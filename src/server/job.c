/* job.c — a request's channel between an HTTP thread and the worker (see
 * job.h). */
#include "job.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

job *job_new(void) {
    job *j = calloc(1, sizeof *j);
    if (!j) return NULL;
    pthread_condattr_t ca;
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC); /* timeouts immune to clock changes */
    pthread_mutex_init(&j->mu, NULL);
    pthread_cond_init(&j->cv, &ca);
    pthread_condattr_destroy(&ca);
    j->refs = 1;
    return j;
}

void job_ref(job *j) {
    pthread_mutex_lock(&j->mu);
    j->refs++;
    pthread_mutex_unlock(&j->mu);
}

void job_unref(job *j) {
    if (!j) return;
    pthread_mutex_lock(&j->mu);
    int last = --j->refs == 0;
    pthread_mutex_unlock(&j->mu);
    if (!last) return;
    req_free(&j->rq);
    free(j->text);
    free(j->ids);
    sbuf_free(&j->out);
    json_decref(j->tool_calls);
    free(j->stop_seq);
    pthread_cond_destroy(&j->cv);
    pthread_mutex_destroy(&j->mu);
    free(j);
}

void job_start(job *j, const gen_usage *u) {
    pthread_mutex_lock(&j->mu);
    j->usage = *u;
    j->state = JOB_RUNNING;
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
}

void job_emit(job *j, const char *text, size_t n) {
    if (!n) return;
    pthread_mutex_lock(&j->mu);
    sbuf_add(&j->out, text, n);
    if (j->rq.stream) pthread_cond_broadcast(&j->cv); /* a whole answer's waiter wants only the end */
    pthread_mutex_unlock(&j->mu);
}

void job_finish(job *j, gen_finish f, const gen_usage *u, const char *stop_seq, json_t *tool_calls) {
    pthread_mutex_lock(&j->mu);
    if (u) j->usage = *u;
    j->finish = f;
    j->tool_calls = tool_calls;
    j->stop_seq = stop_seq ? strdup(stop_seq) : NULL;
    if (j->out.oom && f != FIN_CANCELLED) { /* the text is incomplete: say so rather than send half */
        j->finish = FIN_ERROR;
        req_fail(&j->err, 500, NULL, "out of memory while generating");
    }
    j->state = JOB_DONE;
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
}

void job_fail(job *j, int status, const char *code, const char *fmt, ...) {
    pthread_mutex_lock(&j->mu);
    va_list ap;
    va_start(ap, fmt);
    char msg[sizeof j->err.message];
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    req_fail(&j->err, status, NULL, "%s", msg);
    snprintf(j->err.code, sizeof j->err.code, "%s", code ? code : "");
    j->finish = FIN_ERROR;
    j->state = JOB_DONE;
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
}

int job_cancelled(job *j) {
    pthread_mutex_lock(&j->mu);
    int c = j->cancel;
    pthread_mutex_unlock(&j->mu);
    return c;
}

void job_cancel(job *j) {
    pthread_mutex_lock(&j->mu);
    j->cancel = 1;
    pthread_cond_broadcast(&j->cv);
    pthread_mutex_unlock(&j->mu);
}

int job_poll(job *j, job_view *v, sbuf *text, int timeout_ms) {
    struct timespec until;
    clock_gettime(CLOCK_MONOTONIC, &until);
    until.tv_sec += timeout_ms / 1000;
    until.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (until.tv_nsec >= 1000000000L) {
        until.tv_sec++;
        until.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&j->mu);
    while (j->state == v->state && j->out.len == v->len)
        if (pthread_cond_timedwait(&j->cv, &j->mu, &until)) break;
    int changed = j->state != v->state || j->out.len != v->len;
    if (text && j->out.len > v->len) sbuf_add(text, j->out.p + v->len, j->out.len - v->len);
    v->len = j->out.len;
    v->state = j->state;
    v->usage = j->usage;
    pthread_mutex_unlock(&j->mu);
    return changed;
}

void job_result(const job *j, gen_result *r) {
    memset(r, 0, sizeof *r);
    r->text = j->out.p ? j->out.p : "";
    r->len = j->out.len;
    r->tool_calls = j->tool_calls;
    r->finish = j->finish;
    r->stop_seq = j->stop_seq;
    r->usage = j->usage;
}
