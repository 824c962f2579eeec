/* sched.c — the worker thread, its slots and the queue (see sched.h).
 *
 * A slot remembers what its cache holds two ways: the token ids (from the
 * sequence) and, after an answer, the text those ids are (rendered prompt +
 * answer as decoded). A new prompt whose text extends
 * that text keeps the answer's own ids and tokenizes only the new part, as
 * moe chat does: re-tokenizing the answer could split it differently and
 * send the cache back to where the answer began. */
#include "sched.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "toolcall.h"

typedef struct slot {
    int idx;
    moe_seq *seq;
    job *j;                /* the job being served; NULL when idle */
    int32_t *ids;          /* [n_ctx + 1] prompt then answer tokens: what the cache is to hold */
    size_t n_ids;
    size_t n_prompt;       /* prompt tokens in ids */
    size_t n_fed;          /* of those, in the cache */
    int decoding;          /* the prompt is in; generating */
    int pending;           /* a sampled token waits in the sequence, not yet run */
    moe_sampler *smp;
    moe_detok *dt;
    moe_stop *stop;        /* the request's stop strings */
    moe_stop *mark;        /* tool-call markers, when the request has tools */
    sbuf raw;              /* the answer as decoded */
    sbuf fed;              /* what went into `stop` (raw minus a stripped leading space) */
    sbuf vis;              /* what came out of `stop` */
    size_t mark_out;       /* bytes `mark` let through, as content */
    int in_tool;           /* a tool-call marker appeared: the rest is held for parsing */
    int stopped;           /* a stop string appeared */
    int strip;             /* a leading space is still to be dropped */
    gen_usage usage;
    int64_t max_gen;
    sbuf hist;             /* prompt + answer text that ids[0..n_ids) are, when has_hist */
    int has_hist;
    uint64_t used;         /* when the slot last took a job (admission count) */
} slot;

struct sched {
    moe_model *m;
    const prompt_env *env;
    metrics *met;
    int n_slots, n_ctx;
    slot *slots;           /* [n_slots] */
    slot **who;            /* [n_slots] the slots generating this round */
    moe_seq **run;         /* [n_slots] their sequences with a token to run */
    int32_t eos[16];       /* tokens that end an answer */
    int n_eos;
    uint64_t admissions, seed_state;

    pthread_mutex_t mu;    /* guards the queue and the flags below */
    pthread_cond_t cv;
    job *head, *tail;      /* FIFO of queued jobs */
    int queued;
    int stopping, started;
    pthread_t thread;
};

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ------------------------------------------------------------- tokens -- */

static void add_eos(sched *s, int32_t id) {
    if (id < 0 || s->n_eos == (int)(sizeof s->eos / sizeof *s->eos)) return;
    for (int i = 0; i < s->n_eos; i++)
        if (s->eos[i] == id) return;
    s->eos[s->n_eos++] = id;
}

/* EOS from config.json and the tokenizer, plus the end-of-turn tokens chat
 * templates close an assistant's turn with, where the tokenizer has them as
 * special tokens (decoding with skip_special drops them). */
static void find_eos(sched *s) {
    const moe_config *c = moe_model_config(s->m);
    for (int i = 0; i < c->n_eos; i++) add_eos(s, c->eos_token_ids[i]);
    add_eos(s, moe_tokenizer_eos(s->env->tok));
    static const char *const ends[] = {"<|im_end|>", "<|eot_id|>", "<|end|>", "<end_of_turn>", "<|endoftext|>"};
    for (size_t i = 0; i < sizeof ends / sizeof *ends; i++) {
        int32_t *ids = NULL;
        size_t n = 0;
        char *txt = NULL;
        if (moe_tokenize(s->env->tok, ends[i], strlen(ends[i]), 0, &ids, &n) == MOE_OK && n == 1 &&
            moe_detokenize(s->env->tok, ids, 1, 1, &txt) == MOE_OK && txt[0] == 0)
            add_eos(s, ids[0]);
        moe_free(ids);
        moe_free(txt);
    }
}

static int is_eos(const sched *s, int32_t t) {
    for (int i = 0; i < s->n_eos; i++)
        if (s->eos[i] == t) return 1;
    return 0;
}

static size_t common_prefix(const int32_t *a, size_t na, const int32_t *b, size_t nb) {
    size_t i = 0;
    while (i < na && i < nb && a[i] == b[i]) i++;
    return i;
}

/* Whether the job's prompt text extends what slot l's cache holds as text. */
static int extends_hist(const slot *l, const job *j) {
    return j->text && l->has_hist && strncmp(j->text, l->hist.p, l->hist.len) == 0;
}

/* ---------------------------------------------------------- admission -- */

/* The idle slot for j: the longest cached prefix, else the least recently used. */
static slot *choose_slot(sched *s, const job *j) {
    slot *best = NULL;
    size_t best_common = 0;
    for (int i = 0; i < s->n_slots; i++) {
        slot *l = &s->slots[i];
        if (l->j) continue;
        size_t have;
        const int32_t *old = moe_seq_tokens(l->seq, &have);
        size_t common = extends_hist(l, j) ? common_prefix(old, have, l->ids, l->n_ids)
                                           : common_prefix(old, have, j->ids, j->n_ids);
        if (!best || common > best_common || (common == best_common && l->used < best->used)) {
            best = l;
            best_common = common;
        }
    }
    return best;
}

/* Fills l->ids with the job's prompt; -1 (job failed) when it does not fit. */
static int prompt_ids(sched *s, slot *l, job *j) {
    if (extends_hist(l, j)) {
        const char *tail = j->text + l->hist.len;
        int32_t *t = NULL;
        size_t nt = 0;
        if (moe_tokenize(s->env->tok, tail, strlen(tail), 0, &t, &nt) == MOE_OK && l->n_ids + nt < (size_t)s->n_ctx) {
            memcpy(l->ids + l->n_ids, t, nt * sizeof *t);
            l->n_ids += nt;
            moe_free(t);
            return 0;
        }
        moe_free(t); /* fall back to the prompt as tokenized whole */
    }
    if (j->n_ids >= (size_t)s->n_ctx) {
        job_fail(j, 400, "context_length_exceeded", "the prompt is %zu tokens; the context holds %d (--ctx)", j->n_ids,
                 s->n_ctx);
        return -1;
    }
    memcpy(l->ids, j->ids, j->n_ids * sizeof *j->ids);
    l->n_ids = j->n_ids;
    return 0;
}

static void slot_clear_request(slot *l) {
    moe_sampler_free(l->smp);
    moe_detok_free(l->dt);
    moe_stop_free(l->stop);
    moe_stop_free(l->mark);
    l->smp = NULL;
    l->dt = NULL;
    l->stop = l->mark = NULL;
}

/* The per-request pieces: sampler, detokenizer, stop filters. */
static moe_status slot_open_request(sched *s, slot *l, job *j) {
    moe_sampler_params sp = j->rq.sp;
    if (!j->rq.has_seed) { /* splitmix64 over a counter and the clock: a different draw per request */
        uint64_t z = (s->seed_state += 0x9E3779B97F4A7C15ull) ^ (uint64_t)(now_s() * 1e9);
        z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
        z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
        sp.seed = z ^ (z >> 31);
    }
    moe_status st;
    if ((st = moe_sampler_new(&sp, &l->smp)) || (st = moe_detok_new(s->env->tok, !j->tools, &l->dt)) ||
        (st = moe_stop_new((const char *const *)j->rq.stops, j->rq.n_stops, &l->stop)))
        return st;
    if (j->tools) {
        size_t nm = 0;
        while (toolcall_markers[nm]) nm++;
        if ((st = moe_stop_new(toolcall_markers, nm, &l->mark))) return st;
    }
    return MOE_OK;
}

/* Puts job j into slot l: prompt ids, cache truncated to the shared prefix,
 * the request's sampler and filters. On failure the job is ended. */
static void admit(sched *s, slot *l, job *j) {
    if (prompt_ids(s, l, j)) { /* the slot is untouched */
        job_unref(j);
        return;
    }
    l->has_hist = 0; /* the cache is about to change */
    size_t have;
    const int32_t *old = moe_seq_tokens(l->seq, &have);
    size_t common = common_prefix(old, have, l->ids, l->n_ids);
    /* as far back as the cache can go: a sliding window, or a linear-attention
     * state saved only at earlier prompts' ends, may force going further; a
     * prompt that is all cached needs its last logits, kept in a snapshot, or
     * one token evaluated again */
    common = (size_t)moe_seq_restore_point(l->seq, (int64_t)common);
    moe_status tst = moe_seq_truncate(l->seq, (int64_t)common);
    if (!tst && common == l->n_ids && !moe_seq_has_logits(l->seq)) {
        common = (size_t)moe_seq_restore_point(l->seq, (int64_t)common - 1);
        tst = moe_seq_truncate(l->seq, (int64_t)common);
    }
    if (tst != MOE_OK) {
        moe_seq_reset(l->seq);
        common = 0;
    }
    moe_status st = slot_open_request(s, l, j);
    if (st) {
        slot_clear_request(l);
        job_fail(j, 500, NULL, "cannot start the request: %s", moe_errmsg());
        job_unref(j);
        return;
    }
    l->j = j;
    l->used = ++s->admissions;
    l->n_prompt = l->n_ids;
    l->n_fed = common;
    l->decoding = l->pending = 0;
    l->in_tool = l->stopped = 0;
    l->mark_out = 0;
    l->strip = s->env->strip_space && j->rq.kind == REQ_CHAT && !j->rq.prefill;
    sbuf_clear(&l->raw);
    sbuf_clear(&l->fed);
    sbuf_clear(&l->vis);
    l->usage = (gen_usage){.prompt = (int64_t)l->n_prompt, .cached = (int64_t)common};
    l->max_gen = j->rq.max_tokens > 0 ? j->rq.max_tokens : s->n_ctx;
    metrics_admit(s->met, l->usage.prompt, l->usage.cached);
    metrics_slot(s->met, l->idx, 1, (int64_t)common);
    job_start(j, &l->usage);
}

/* ------------------------------------------------------------- output -- */

/* Text that passed the stop strings: content, unless tool calls began. */
static void visible(slot *l, const char *t, size_t n) {
    sbuf_add(&l->vis, t, n);
    if (!l->mark) {
        job_emit(l->j, t, n);
    } else if (!l->in_tool) {
        size_t el;
        int hit = 0;
        const char *o = moe_stop_feed(l->mark, t, n, &el, &hit);
        job_emit(l->j, o, el);
        l->mark_out += el;
        l->in_tool = hit;
    }
}

/* A decoded piece of the answer. */
static void piece(slot *l, const char *t, size_t n) {
    sbuf_add(&l->raw, t, n);
    if (l->strip && n) {
        if (t[0] == ' ') t++, n--;
        l->strip = 0;
    }
    if (!n || l->stopped) return;
    sbuf_add(&l->fed, t, n);
    size_t el;
    const char *o = moe_stop_feed(l->stop, t, n, &el, &l->stopped);
    visible(l, o, el);
}

/* Which stop string ended the answer: the one at the end of what was let through. */
static const char *which_stop(const slot *l) {
    const req *r = &l->j->rq;
    for (size_t i = 0; i < r->n_stops; i++) {
        size_t k = strlen(r->stops[i]);
        if (l->fed.len - l->vis.len >= k && memcmp(l->fed.p + l->vis.len, r->stops[i], k) == 0) return r->stops[i];
    }
    return r->n_stops ? r->stops[0] : NULL;
}

/* Ends the slot's job with finish f: flushes the filters, parses tool calls,
 * remembers the text the cache holds, frees the slot. */
static void finish(sched *s, slot *l, gen_finish f) {
    job *j = l->j;
    size_t n;
    const char *t;
    if (f != FIN_CANCELLED && f != FIN_ERROR) {
        t = moe_detok_flush(l->dt, &n);
        piece(l, t, n);
        if (!l->stopped) {
            t = moe_stop_flush(l->stop, &n);
            visible(l, t, n);
        }
        if (l->mark && !l->in_tool) {
            t = moe_stop_flush(l->mark, &n);
            job_emit(j, t, n);
        }
    }
    const char *stop_seq = f == FIN_STOP ? which_stop(l) : NULL;
    json_t *calls = NULL;
    if (l->in_tool && f != FIN_CANCELLED && f != FIN_ERROR) {
        calls = toolcall_parse(l->vis.p + l->mark_out, l->vis.len - l->mark_out);
        if (calls) f = FIN_TOOLS;
        else job_emit(j, l->vis.p + l->mark_out, l->vis.len - l->mark_out); /* not a call after all: it is text */
    }
    /* The text ids[0..n_ids) are: the prompt and the whole answer as decoded
     * (a client that sends back what it was given, stop strings aside, extends it). */
    if (f != FIN_CANCELLED && f != FIN_ERROR && j->text) {
        sbuf_clear(&l->hist);
        sbuf_adds(&l->hist, j->text);
        sbuf_add(&l->hist, l->raw.p ? l->raw.p : "", l->raw.len);
        l->has_hist = !l->hist.oom;
    }
    if (f == FIN_CANCELLED) metrics_cancelled(s->met);
    if (f != FIN_ERROR) job_finish(j, f, &l->usage, stop_seq, calls);
    slot_clear_request(l);
    l->j = NULL;
    metrics_slot(s->met, l->idx, 0, moe_seq_pos(l->seq));
    job_unref(j);
}

/* ------------------------------------------------------------- stepping -- */

/* Prompt tokens a slot processes per turn: other slots' answers wait no
 * longer than one batch of this. */
#define PREFILL_CHUNK 256

/* One batch of the prompt. */
static void prefill(sched *s, slot *l) {
    size_t k = l->n_prompt - l->n_fed;
    if (k > PREFILL_CHUNK) k = PREFILL_CHUNK;
    double t0 = now_s();
    moe_status st = moe_seq_eval(l->seq, l->ids + l->n_fed, k, NULL, 0);
    if (st) {
        job_fail(l->j, 500, NULL, "prompt processing failed: %s", moe_errmsg());
        finish(s, l, FIN_ERROR);
        return;
    }
    metrics_prefill(s->met, (int64_t)k, now_s() - t0);
    l->n_fed += k;
    metrics_slot(s->met, l->idx, 1, (int64_t)l->n_fed);
    if (l->n_fed < l->n_prompt) return;
    /* a turn boundary: models whose layers keep a recurrent state can come back
     * here when the next request shares this prompt but not the answer (a
     * failure only costs that reuse) */
    moe_seq_snapshot(l->seq);
    /* the answer decodes as a continuation of the prompt (a leading space stays a space) */
    size_t from = l->n_prompt > 16 ? l->n_prompt - 16 : 0, pl;
    for (size_t i = from; i < l->n_prompt; i++) moe_detok_push(l->dt, l->ids[i], &pl);
    l->decoding = 1;
}

/* The slot's next token, sampled from the logits its last evaluation left
 * (decode_all ran the previous token already, batched with the other slots'). */
static void sample(sched *s, slot *l) {
    int32_t t;
    moe_status st = moe_generate_next(l->seq, l->smp, &t);
    l->pending = 0;
    if (st == MOE_ERANGE) { /* the context is full */
        finish(s, l, FIN_LENGTH);
        return;
    }
    if (st) {
        job_fail(l->j, 500, NULL, "generation failed: %s", moe_errmsg());
        finish(s, l, FIN_ERROR);
        return;
    }
    l->usage.completion++;
    if (is_eos(s, t)) {
        finish(s, l, FIN_EOS);
        return;
    }
    l->pending = 1; /* t waits in the sequence, to be run with the next batch */
    l->ids[l->n_ids++] = t;
    size_t n;
    const char *p = moe_detok_push(l->dt, t, &n);
    piece(l, p, n);
    if (l->stopped) finish(s, l, FIN_STOP);
    else if (l->usage.completion >= l->max_gen || l->n_ids >= (size_t)s->n_ctx) finish(s, l, FIN_LENGTH);
}

/* One token for every slot that is generating: the tokens sampled last
 * time run through the model together (one pass, the weights read once for
 * all), then each slot samples its next. A batch that fails (it should not)
 * leaves the tokens pending, and each slot's moe_generate_next runs its own. */
static void decode_all(sched *s) {
    slot **who = s->who;
    moe_seq **run = s->run;
    int n = 0;
    for (int i = 0; i < s->n_slots; i++) {
        slot *l = &s->slots[i];
        if (l->j && l->decoding) who[n++] = l;
    }
    if (!n) return;
    double t0 = now_s();
    int k = 0;
    for (int i = 0; i < n; i++)
        if (who[i]->pending) run[k++] = who[i]->seq;
    if (k) moe_seq_eval_pending(run, (size_t)k);
    for (int i = 0; i < n; i++) sample(s, who[i]);
    metrics_decode(s->met, n, now_s() - t0);
}

/* Moves queued jobs into idle slots; called with s->mu held. */
static void admit_queued(sched *s) {
    for (;;) {
        slot *idle = NULL;
        for (int i = 0; i < s->n_slots && !idle; i++)
            if (!s->slots[i].j) idle = &s->slots[i];
        if (!idle || !s->head) break;
        job *j = s->head;
        s->head = j->next;
        if (!s->head) s->tail = NULL;
        s->queued--;
        metrics_queue(s->met, s->queued);
        pthread_mutex_unlock(&s->mu);
        if (job_cancelled(j)) {
            metrics_cancelled(s->met);
            job_finish(j, FIN_CANCELLED, NULL, NULL, NULL);
            job_unref(j);
        } else {
            admit(s, choose_slot(s, j), j);
        }
        pthread_mutex_lock(&s->mu);
    }
}

static int busy_slots(const sched *s) {
    int n = 0;
    for (int i = 0; i < s->n_slots; i++) n += s->slots[i].j != NULL;
    return n;
}

/* One round: cancelled jobs end, each prompt advances by a batch, every
 * answer by a token. */
static void round_all(sched *s) {
    for (int i = 0; i < s->n_slots; i++) {
        slot *l = &s->slots[i];
        if (l->j && job_cancelled(l->j)) finish(s, l, FIN_CANCELLED);
    }
    for (int i = 0; i < s->n_slots; i++) {
        slot *l = &s->slots[i];
        if (l->j && !l->decoding) prefill(s, l);
    }
    decode_all(s);
}

static void *worker(void *arg) {
    sched *s = arg;
    pthread_mutex_lock(&s->mu);
    for (;;) {
        while (!s->stopping && !s->head && !busy_slots(s)) pthread_cond_wait(&s->cv, &s->mu);
        if (s->stopping) break;
        admit_queued(s);
        pthread_mutex_unlock(&s->mu);
        round_all(s);
        pthread_mutex_lock(&s->mu);
    }
    /* shutting down: end what is running and what waits */
    for (int i = 0; i < s->n_slots; i++) {
        slot *l = &s->slots[i];
        if (!l->j) continue;
        job_fail(l->j, 503, NULL, "the server is shutting down");
        finish(s, l, FIN_ERROR);
    }
    while (s->head) {
        job *j = s->head;
        s->head = j->next;
        job_fail(j, 503, NULL, "the server is shutting down");
        job_unref(j);
    }
    s->tail = NULL;
    s->queued = 0;
    pthread_mutex_unlock(&s->mu);
    return NULL;
}

/* ---------------------------------------------------------- lifecycle -- */

moe_status sched_new(moe_model *m, const prompt_env *env, const sched_params *p, metrics *met, sched **out, char *err,
                     size_t errlen) {
    *out = NULL;
    sched *s = calloc(1, sizeof *s);
    if (!s) return snprintf(err, errlen, "out of memory"), MOE_ENOMEM;
    s->m = m;
    s->env = env;
    s->met = met;
    s->n_slots = p->n_slots;
    s->n_ctx = p->n_ctx;
    s->seed_state = (uint64_t)(now_s() * 1e9);
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cv, NULL);
    moe_status st = MOE_OK;
    s->slots = calloc((size_t)p->n_slots, sizeof *s->slots);
    s->who = calloc((size_t)p->n_slots, sizeof *s->who);
    s->run = calloc((size_t)p->n_slots, sizeof *s->run);
    if (!s->slots || !s->who || !s->run) st = MOE_ENOMEM;
    moe_seq_params qp;
    moe_seq_params_defaults(&qp);
    qp.n_ctx = p->n_ctx;
    qp.kv_bits = p->kv_bits;
    for (int i = 0; !st && i < p->n_slots; i++) {
        slot *l = &s->slots[i];
        l->idx = i;
        if (!(l->ids = malloc(((size_t)p->n_ctx + 1) * sizeof *l->ids))) st = MOE_ENOMEM;
        else st = moe_seq_new(m, &qp, &l->seq);
    }
    if (st) {
        snprintf(err, errlen, "cannot allocate %d slots of %d tokens: %s", p->n_slots, p->n_ctx,
                 *moe_errmsg() ? moe_errmsg() : "out of memory");
        sched_free(s);
        return st;
    }
    find_eos(s);
    if (pthread_create(&s->thread, NULL, worker, s)) {
        snprintf(err, errlen, "cannot start the worker thread");
        sched_free(s);
        return MOE_ENOMEM;
    }
    s->started = 1;
    *out = s;
    return MOE_OK;
}

int sched_submit(sched *s, job *j) {
    pthread_mutex_lock(&s->mu);
    if (s->stopping) {
        pthread_mutex_unlock(&s->mu);
        return -1;
    }
    job_ref(j);
    j->next = NULL;
    if (s->tail) s->tail->next = j;
    else s->head = j;
    s->tail = j;
    s->queued++;
    metrics_queue(s->met, s->queued);
    pthread_cond_signal(&s->cv);
    pthread_mutex_unlock(&s->mu);
    return 0;
}

void sched_stop(sched *s) {
    if (!s) return;
    pthread_mutex_lock(&s->mu);
    s->stopping = 1;
    pthread_cond_signal(&s->cv);
    int joinable = s->started;
    s->started = 0;
    pthread_mutex_unlock(&s->mu);
    if (joinable) pthread_join(s->thread, NULL);
}

void sched_free(sched *s) {
    if (!s) return;
    sched_stop(s);
    for (int i = 0; s->slots && i < s->n_slots; i++) {
        slot *l = &s->slots[i];
        slot_clear_request(l);
        moe_seq_free(l->seq);
        free(l->ids);
        sbuf_free(&l->raw);
        sbuf_free(&l->fed);
        sbuf_free(&l->vis);
        sbuf_free(&l->hist);
    }
    free(s->slots);
    free(s->who);
    free(s->run);
    pthread_cond_destroy(&s->cv);
    pthread_mutex_destroy(&s->mu);
    free(s);
}
