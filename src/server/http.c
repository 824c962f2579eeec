/* http.c — the HTTP side of moe serve (see server.h): libmicrohttpd with a
 * thread per connection, routing, authentication, body limits, and the
 * waits on a job's channel.
 *
 * A connection thread may block: it waits for its job to start (so a prompt
 * that does not fit still gets a proper 400) and then, for a stream, inside
 * the content reader for the next piece of text. Every wait wakes at least
 * every POLL_MS to look at the socket: a client that closed it cancels its
 * job, which frees the slot at the worker's next step. */
#include <errno.h>
#include <microhttpd.h>
#include <netdb.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>

#include "anthropic.h"
#include "job.h"
#include "metrics.h"
#include "openai.h"
#include "prompt.h"
#include "sched.h"
#include "server.h"

#define POLL_MS 100
#define PING_SECONDS 5.0

struct srv {
    char *host, *api_key, *model_name;
    size_t max_body;
    int port;
    prompt_env env;
    const moe_model *model;
    metrics met;
    sched *sch;
    struct MHD_Daemon *d;
};

/* A request being received: its route and body. */
typedef struct conn {
    met_route route;
    sbuf body;
    int too_big;
} conn;

/* A streamed answer being written. */
typedef struct stream {
    srv *s;
    struct MHD_Connection *c;
    job *j;
    api_stream as;
    job_view v;
    sbuf out;          /* events formatted, not yet handed to libmicrohttpd */
    sbuf text;         /* new answer text (scratch) */
    int ended;         /* the last event is formatted */
    double last_sent;
} stream;

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* ------------------------------------------------------------ replies -- */

static enum MHD_Result reply(srv *s, struct MHD_Connection *c, met_route r, int status, char *body, size_t len,
                             const char *type) {
    metrics_request(&s->met, r, status);
    struct MHD_Response *res = MHD_create_response_from_buffer(len, body, MHD_RESPMEM_MUST_FREE);
    if (!res) {
        free(body);
        return MHD_NO;
    }
    MHD_add_response_header(res, MHD_HTTP_HEADER_CONTENT_TYPE, type);
    if (status == 405) MHD_add_response_header(res, MHD_HTTP_HEADER_ALLOW, r == MR_HEALTH || r == MR_METRICS || r == MR_MODELS ? "GET" : "POST");
    enum MHD_Result ok = MHD_queue_response(c, (unsigned)status, res);
    MHD_destroy_response(res);
    return ok;
}

/* Replies with j (taking its reference). */
static enum MHD_Result reply_json(srv *s, struct MHD_Connection *c, met_route r, int status, json_t *j) {
    char *body = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (!body) return MHD_NO;
    return reply(s, c, r, status, body, strlen(body), "application/json");
}

/* The API whose error objects a path gets: Anthropic's under /v1/messages. */
static const api_ops *api_of(const char *url) {
    return strncmp(url, "/v1/messages", 12) == 0 ? &ant_messages_ops : &oai_chat_ops;
}

static enum MHD_Result reply_error(srv *s, struct MHD_Connection *c, met_route r, const char *url, const req_error *e) {
    return reply_json(s, c, r, e->status, api_of(url)->error(e));
}

static enum MHD_Result fail(srv *s, struct MHD_Connection *c, met_route r, const char *url, int status, const char *msg) {
    req_error e;
    req_fail(&e, status, NULL, "%s", msg);
    return reply_error(s, c, r, url, &e);
}

/* --------------------------------------------------------- connection -- */

/* Whether the client closed its end (or the socket failed). */
static int client_gone(struct MHD_Connection *c) {
    const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c, MHD_CONNECTION_INFO_CONNECTION_FD);
    if (!ci) return 0;
    char b;
    ssize_t r = recv(ci->connect_fd, &b, 1, MSG_PEEK | MSG_DONTWAIT);
    return r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

/* Waits until the job leaves `state` (or ends), looking at the socket every
 * POLL_MS (text arriving all the time must not keep it from looking); 0, or
 * -1 when the client went away (the job is cancelled then). */
static int wait_past(job *j, job_view *v, job_state state, struct MHD_Connection *c) {
    double last = now_s();
    while (v->state == state) {
        job_poll(j, v, NULL, POLL_MS);
        if (now_s() - last < POLL_MS / 1000.0) continue;
        last = now_s();
        if (client_gone(c)) {
            job_cancel(j);
            return -1;
        }
    }
    return 0;
}

/* -------------------------------------------------------------- stream -- */

static ssize_t stream_read(void *cls, uint64_t pos, char *buf, size_t max) {
    (void)pos;
    stream *st = cls;
    const api_ops *ops = st->as.ops;
    for (;;) {
        if (st->out.oom) return MHD_CONTENT_READER_END_WITH_ERROR;
        if (st->out.len) {
            size_t n = st->out.len < max ? st->out.len : max;
            memcpy(buf, st->out.p, n);
            sbuf_consume(&st->out, n);
            st->last_sent = now_s();
            return (ssize_t)n;
        }
        if (st->ended) return MHD_CONTENT_READER_END_OF_STREAM;
        sbuf_clear(&st->text);
        int changed = job_poll(st->j, &st->v, &st->text, POLL_MS);
        if (st->text.len) ops->text(&st->as, st->text.p, st->text.len, &st->out);
        if (st->v.state == JOB_DONE) {
            gen_result r;
            job_result(st->j, &r);
            if (r.finish == FIN_ERROR) ops->fail(&st->as, &st->j->err, &st->out);
            else ops->end(&st->as, &r, &st->out);
            st->ended = 1;
        } else if (!changed) {
            if (client_gone(st->c)) {
                job_cancel(st->j);
                return MHD_CONTENT_READER_END_WITH_ERROR;
            }
            if (ops->ping && now_s() - st->last_sent >= PING_SECONDS) ops->ping(&st->as, &st->out);
        }
    }
}

static void stream_free(void *cls) {
    stream *st = cls;
    if (!st->ended) job_cancel(st->j); /* the connection ended before the answer did */
    job_unref(st->j);
    sbuf_free(&st->out);
    sbuf_free(&st->text);
    free(st);
}

static enum MHD_Result reply_stream(srv *s, struct MHD_Connection *c, met_route r, job *j, const job_view *v,
                                    const api_stream *as) {
    stream *st = calloc(1, sizeof *st);
    if (!st) {
        job_cancel(j);
        job_unref(j);
        return MHD_NO;
    }
    *st = (stream){.s = s, .c = c, .j = j, .as = *as, .v = *v, .last_sent = now_s()};
    st->as.ops->begin(&st->as, &v->usage, &st->out);
    struct MHD_Response *res = MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 16384, stream_read, st, stream_free);
    if (!res) {
        stream_free(st);
        return MHD_NO;
    }
    MHD_add_response_header(res, MHD_HTTP_HEADER_CONTENT_TYPE, "text/event-stream");
    MHD_add_response_header(res, MHD_HTTP_HEADER_CACHE_CONTROL, "no-cache");
    metrics_request(&s->met, r, 200);
    enum MHD_Result ok = MHD_queue_response(c, MHD_HTTP_OK, res);
    MHD_destroy_response(res);
    return ok;
}

/* ---------------------------------------------------------- endpoints -- */

/* Runs a parsed request: prompt, queue, then the answer (whole or streamed). */
static enum MHD_Result generate(srv *s, struct MHD_Connection *c, met_route route, const char *url, req *rq,
                                const api_ops *ops, const char *id_prefix) {
    req_error e;
    job *j = job_new();
    if (!j) {
        req_free(rq);
        return fail(s, c, route, url, 500, "out of memory");
    }
    j->rq = *rq;
    memset(rq, 0, sizeof *rq);
    j->tools = j->rq.tools != NULL;
    if (prompt_build(&s->env, &j->rq, 1, &j->text, &j->ids, &j->n_ids, &e)) {
        job_unref(j);
        return reply_error(s, c, route, url, &e);
    }
    if (sched_submit(s->sch, j)) {
        job_unref(j);
        return fail(s, c, route, url, 503, "the server is shutting down");
    }
    api_stream as;
    api_stream_init(&as, ops, id_prefix, s->model_name, j->rq.include_usage);
    job_view v = {.state = JOB_QUEUED};
    if (wait_past(j, &v, JOB_QUEUED, c) || (!j->rq.stream && wait_past(j, &v, JOB_RUNNING, c))) {
        job_unref(j);
        return MHD_NO; /* the client is gone: close */
    }
    gen_result r;
    job_result(j, &r); /* only read once done, or (usage) after the start */
    if (v.state == JOB_DONE && r.finish == FIN_ERROR) {
        enum MHD_Result ok = reply_error(s, c, route, url, &j->err);
        job_unref(j);
        return ok;
    }
    if (j->rq.stream) {
        v.len = 0; /* the waits above took no text: the stream starts from the first byte */
        return reply_stream(s, c, route, j, &v, &as);
    }
    enum MHD_Result ok = reply_json(s, c, route, 200, ops->response(&as, &r));
    job_unref(j);
    return ok;
}

static enum MHD_Result count_tokens(srv *s, struct MHD_Connection *c, const char *url, req *rq) {
    req_error e;
    char *text;
    int32_t *ids;
    size_t n;
    if (prompt_build(&s->env, rq, 0, &text, &ids, &n, &e)) return reply_error(s, c, MR_COUNT_TOKENS, url, &e);
    free(text);
    free(ids);
    return reply_json(s, c, MR_COUNT_TOKENS, 200, json_pack("{s:I}", "input_tokens", (json_int_t)n));
}

static enum MHD_Result post(srv *s, struct MHD_Connection *c, met_route route, const char *url, conn *k) {
    req rq;
    req_error e;
    const char *body = k->body.p ? k->body.p : "";
    int rc;
    enum MHD_Result ok;
    switch (route) {
    case MR_CHAT: rc = oai_parse_chat(body, k->body.len, &rq, &e); break;
    case MR_COMPLETIONS: rc = oai_parse_completion(body, k->body.len, &rq, &e); break;
    default: rc = ant_parse_messages(body, k->body.len, route == MR_COUNT_TOKENS, &rq, &e); break;
    }
    if (rc) {
        req_free(&rq);
        return reply_error(s, c, route, url, &e);
    }
    if (route == MR_COUNT_TOKENS) ok = count_tokens(s, c, url, &rq);
    else if (route == MR_CHAT) ok = generate(s, c, route, url, &rq, &oai_chat_ops, "chatcmpl-");
    else if (route == MR_COMPLETIONS) ok = generate(s, c, route, url, &rq, &oai_completion_ops, "cmpl-");
    else ok = generate(s, c, route, url, &rq, &ant_messages_ops, "msg_");
    req_free(&rq);
    return ok;
}

static enum MHD_Result get(srv *s, struct MHD_Connection *c, met_route route, const char *url) {
    if (route == MR_HEALTH) return reply_json(s, c, route, 200, json_pack("{s:s}", "status", "ok"));
    if (route == MR_METRICS) {
        metrics_request(&s->met, route, 200); /* counted before, so it shows itself */
        sbuf o = {0};
        metrics_render(&s->met, &o);
        metrics_render_experts(s->model, &o);
        if (o.oom) {
            sbuf_free(&o);
            return MHD_NO;
        }
        struct MHD_Response *res = MHD_create_response_from_buffer(o.len, o.p, MHD_RESPMEM_MUST_FREE);
        if (!res) {
            sbuf_free(&o);
            return MHD_NO;
        }
        MHD_add_response_header(res, MHD_HTTP_HEADER_CONTENT_TYPE, "text/plain; version=0.0.4");
        enum MHD_Result ok = MHD_queue_response(c, MHD_HTTP_OK, res);
        MHD_destroy_response(res);
        return ok;
    }
    json_t *list = oai_models(s->model_name, (int64_t)time(NULL));
    if (!strcmp(url, "/v1/models")) return reply_json(s, c, route, 200, list);
    json_t *model = json_incref(json_array_get(json_object_get(list, "data"), 0));
    json_decref(list);
    if (!strcmp(url + strlen("/v1/models/"), s->model_name)) return reply_json(s, c, route, 200, model);
    json_decref(model);
    return fail(s, c, route, url, 404, "no such model");
}

/* ------------------------------------------------------------- routing -- */

static const struct {
    const char *path;
    met_route route;
    int post;
} k_routes[] = {
    {"/v1/chat/completions", MR_CHAT, 1}, {"/v1/completions", MR_COMPLETIONS, 1},
    {"/v1/messages", MR_MESSAGES, 1},     {"/v1/messages/count_tokens", MR_COUNT_TOKENS, 1},
    {"/v1/models", MR_MODELS, 0},         {"/health", MR_HEALTH, 0},
    {"/metrics", MR_METRICS, 0},
};

/* The route of url; -1 (MR_OTHER) when none. *post: whether it takes POST. */
static met_route route_of(const char *url, int *post) {
    for (size_t i = 0; i < sizeof k_routes / sizeof *k_routes; i++)
        if (!strcmp(url, k_routes[i].path)) {
            *post = k_routes[i].post;
            return k_routes[i].route;
        }
    *post = 0;
    return strncmp(url, "/v1/models/", 11) == 0 && url[11] ? MR_MODELS : MR_OTHER;
}

/* Compares in time independent of where the strings differ. */
static int same_secret(const char *a, const char *b) {
    size_t la = strlen(a), lb = strlen(b);
    unsigned char d = la != lb;
    for (size_t i = 0; i < la; i++) d |= (unsigned char)(a[i] ^ b[i % (lb ? lb : 1)]);
    return d == 0;
}

static int authorized(const srv *s, struct MHD_Connection *c) {
    if (!s->api_key) return 1;
    const char *bearer = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_AUTHORIZATION);
    const char *key = MHD_lookup_connection_value(c, MHD_HEADER_KIND, "x-api-key");
    if (bearer && strncasecmp(bearer, "Bearer ", 7) == 0 && same_secret(bearer + 7, s->api_key)) return 1;
    return key && same_secret(key, s->api_key);
}

static enum MHD_Result dispatch(srv *s, struct MHD_Connection *c, const char *url, const char *method, conn *k) {
    int wants_post;
    met_route route = route_of(url, &wants_post);
    k->route = route;
    if (route != MR_HEALTH && !authorized(s, c))
        return fail(s, c, route, url, 401, "invalid API key: send it as \"Authorization: Bearer KEY\" or \"x-api-key: KEY\"");
    if (route == MR_OTHER) return fail(s, c, route, url, 404, "no such endpoint");
    if (strcmp(method, wants_post ? "POST" : "GET"))
        return fail(s, c, route, url, 405, wants_post ? "this endpoint takes POST" : "this endpoint takes GET");
    if (k->too_big) {
        char msg[96];
        snprintf(msg, sizeof msg, "the request body is larger than %zu bytes (--max-body)", s->max_body);
        return fail(s, c, route, url, 413, msg);
    }
    return wants_post ? post(s, c, route, url, k) : get(s, c, route, url);
}

static enum MHD_Result on_request(void *cls, struct MHD_Connection *c, const char *url, const char *method,
                                  const char *version, const char *upload, size_t *upload_size, void **req_cls) {
    (void)version;
    srv *s = cls;
    conn *k = *req_cls;
    if (!k) { /* the headers are in; the body (if any) comes in the next calls */
        if (!(k = calloc(1, sizeof *k))) return MHD_NO;
        *req_cls = k;
        const char *cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND, MHD_HTTP_HEADER_CONTENT_LENGTH);
        if (cl && strtoull(cl, NULL, 10) > s->max_body) { /* refuse now rather than read it */
            k->too_big = 1;
            return dispatch(s, c, url, method, k);
        }
        return MHD_YES;
    }
    if (*upload_size) {
        if (!k->too_big && k->body.len + *upload_size > s->max_body) {
            k->too_big = 1;
            sbuf_free(&k->body);
        }
        if (!k->too_big && sbuf_add(&k->body, upload, *upload_size)) return MHD_NO;
        *upload_size = 0;
        return MHD_YES;
    }
    return dispatch(s, c, url, method, k);
}

static void on_completed(void *cls, struct MHD_Connection *c, void **req_cls, enum MHD_RequestTerminationCode why) {
    (void)cls;
    (void)c;
    (void)why;
    conn *k = *req_cls;
    if (!k) return;
    sbuf_free(&k->body);
    free(k);
    *req_cls = NULL;
}

/* ----------------------------------------------------------- lifecycle -- */

moe_status srv_start(moe_model *m, const moe_tokenizer *tok, const srv_params *p, srv **out, char *err, size_t errlen) {
    *out = NULL;
    srv *s = calloc(1, sizeof *s);
    if (!s) return snprintf(err, errlen, "out of memory"), MOE_ENOMEM;
    s->host = strdup(p->host ? p->host : "127.0.0.1");
    s->api_key = p->api_key && p->api_key[0] ? strdup(p->api_key) : NULL;
    s->model_name = strdup(p->model_name ? p->model_name : "moe");
    s->max_body = p->max_body;
    s->model = m;
    moe_seq_params qp;
    moe_seq_params_defaults(&qp);
    qp.n_ctx = p->n_ctx;
    qp.kv_bits = p->kv_bits;
    int64_t kv = moe_seq_kv_bytes(m, &qp);
    int n_ctx = p->n_ctx > 0 ? p->n_ctx : moe_model_config(m)->max_position_embeddings;
    if (p->n_ctx <= 0 && n_ctx > 4096) n_ctx = 4096; /* the sequence default */
    s->env = (prompt_env){.tok = tok, .vocab = moe_model_config(m)->vocab_size, .n_ctx = n_ctx};
    prompt_probe(&s->env);
    moe_status st = MOE_OK;
    if (!s->host || !s->model_name || metrics_init(&s->met, p->n_parallel, n_ctx, kv > 0 ? kv * p->n_parallel : 0)) {
        snprintf(err, errlen, "out of memory");
        st = MOE_ENOMEM;
    }
    sched_params sp = {.n_slots = p->n_parallel, .n_ctx = n_ctx, .kv_bits = p->kv_bits};
    if (!st) st = sched_new(m, &s->env, &sp, &s->met, &s->sch, err, errlen);
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM, .ai_flags = AI_PASSIVE}, *ai = NULL;
    char port[16];
    snprintf(port, sizeof port, "%d", p->port);
    int gai = st ? 0 : getaddrinfo(s->host, port, &hints, &ai);
    if (!st && gai) {
        snprintf(err, errlen, "cannot resolve --host %s: %s", s->host, gai_strerror(gai));
        st = MOE_EIO;
    }
    if (!st) {
        unsigned flags = MHD_USE_AUTO | MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_THREAD_PER_CONNECTION | MHD_USE_ITC |
                         (ai->ai_family == AF_INET6 ? MHD_USE_IPv6 : 0);
        s->d = MHD_start_daemon(flags, 0, NULL, NULL, on_request, s, MHD_OPTION_SOCK_ADDR, ai->ai_addr,
                                MHD_OPTION_NOTIFY_COMPLETED, on_completed, s, MHD_OPTION_CONNECTION_TIMEOUT,
                                (unsigned)600, MHD_OPTION_CONNECTION_LIMIT, (unsigned)512, MHD_OPTION_END);
        if (!s->d) {
            snprintf(err, errlen, "cannot listen on %s port %d: %s", s->host, p->port, strerror(errno));
            st = MOE_EIO;
        } else {
            const union MHD_DaemonInfo *di = MHD_get_daemon_info(s->d, MHD_DAEMON_INFO_BIND_PORT);
            s->port = di ? di->port : p->port;
        }
    }
    if (ai) freeaddrinfo(ai);
    if (st) {
        srv_stop(s);
        return st;
    }
    *out = s;
    return MOE_OK;
}

int srv_port(const srv *s) { return s->port; }

void srv_stop(srv *s) {
    if (!s) return;
    if (s->d) MHD_quiesce_daemon(s->d); /* no new connections */
    sched_stop(s->sch);                 /* running and queued requests end (503): their waits return */
    if (s->d) MHD_stop_daemon(s->d);    /* closes the connections, joins their threads */
    sched_free(s->sch);
    if (s->met.slot_busy || s->met.slot_tokens) metrics_free(&s->met);
    free(s->host);
    free(s->api_key);
    free(s->model_name);
    free(s);
}
