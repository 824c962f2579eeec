/* metrics.c — counters and their Prometheus text exposition (see metrics.h). */
#include "metrics.h"

#include <stddef.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static const int k_codes[MET_CODES - 1] = {200, 400, 401, 404, 405, 413, 500, 503};
static const char *const k_routes[MR_N] = {"/v1/chat/completions", "/v1/completions", "/v1/messages",
                                           "/v1/messages/count_tokens", "/v1/models", "/health", "/metrics", "other"};

static double mono(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int metrics_init(metrics *m, int n_slots, int64_t ctx_tokens, int64_t kv_bytes) {
    memset(m, 0, sizeof *m);
    pthread_mutex_init(&m->mu, NULL);
    m->start = mono();
    m->n_slots = n_slots;
    m->ctx_tokens = ctx_tokens;
    m->kv_bytes = kv_bytes;
    m->slot_busy = calloc((size_t)n_slots, sizeof *m->slot_busy);
    m->slot_tokens = calloc((size_t)n_slots, sizeof *m->slot_tokens);
    return m->slot_busy && m->slot_tokens ? 0 : -1;
}

void metrics_free(metrics *m) {
    free(m->slot_busy);
    free(m->slot_tokens);
    pthread_mutex_destroy(&m->mu);
}

#define LOCKED(m, stmt)                  \
    do {                                 \
        pthread_mutex_lock(&(m)->mu);    \
        stmt;                            \
        pthread_mutex_unlock(&(m)->mu);  \
    } while (0)

void metrics_request(metrics *m, met_route r, int status) {
    int c = MET_CODES - 1;
    for (int i = 0; i < MET_CODES - 1; i++)
        if (k_codes[i] == status) c = i;
    LOCKED(m, m->requests[r][c]++);
}

void metrics_cancelled(metrics *m) { LOCKED(m, m->cancelled++); }

void metrics_admit(metrics *m, int64_t prompt_tokens, int64_t cached) {
    LOCKED(m, m->prompt_tokens += prompt_tokens; m->prompt_cached += cached);
}

void metrics_prefill(metrics *m, int64_t tokens, double seconds) {
    LOCKED(m, m->prompt_processed += tokens; m->prompt_seconds += seconds);
}

void metrics_decode(metrics *m, int64_t tokens, double seconds) {
    LOCKED(m, m->gen_tokens += tokens; m->gen_seconds += seconds; m->decode_rounds++);
}

void metrics_queue(metrics *m, int depth) { LOCKED(m, m->queue_depth = depth); }

void metrics_slot(metrics *m, int slot, int busy, int64_t tokens) {
    LOCKED(m, m->slot_busy[slot] = busy; m->slot_tokens[slot] = tokens);
}

static int64_t rss_bytes(void) {
    long pages = 0, res = 0;
    FILE *f = fopen("/proc/self/statm", "r");
    if (!f) return 0;
    if (fscanf(f, "%ld %ld", &pages, &res) != 2) res = 0;
    fclose(f);
    return (int64_t)res * sysconf(_SC_PAGESIZE);
}

static void metric(sbuf *o, const char *name, const char *type, const char *help) {
    sbuf_printf(o, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

void metrics_render(metrics *m, sbuf *o) {
    pthread_mutex_lock(&m->mu);
    metrics s = *m; /* a consistent snapshot; the arrays are read under the lock below */
    metric(o, "moe_requests_total", "counter", "HTTP requests by path and status");
    for (int r = 0; r < MR_N; r++)
        for (int c = 0; c < MET_CODES; c++)
            if (s.requests[r][c] || (c == 0 && r <= MR_MESSAGES)) {
                char code[8];
                snprintf(code, sizeof code, "%d", c < MET_CODES - 1 ? k_codes[c] : 0);
                sbuf_printf(o, "moe_requests_total{path=\"%s\",code=\"%s\"} %llu\n", k_routes[r],
                            c < MET_CODES - 1 ? code : "other", (unsigned long long)s.requests[r][c]);
            }
    int busy = 0;
    int64_t kv_tokens = 0;
    for (int i = 0; i < s.n_slots; i++) {
        busy += m->slot_busy[i];
        kv_tokens += m->slot_tokens[i];
    }
    metric(o, "moe_kv_cache_tokens", "gauge", "tokens held in each slot's KV cache");
    for (int i = 0; i < s.n_slots; i++) sbuf_printf(o, "moe_kv_cache_tokens{slot=\"%d\"} %lld\n", i, (long long)m->slot_tokens[i]);
    pthread_mutex_unlock(&m->mu);

    metric(o, "moe_requests_cancelled_total", "counter", "requests stopped because the client went away");
    sbuf_printf(o, "moe_requests_cancelled_total %llu\n", (unsigned long long)s.cancelled);
    metric(o, "moe_prompt_tokens_total", "counter", "prompt tokens of admitted requests, cached ones included");
    sbuf_printf(o, "moe_prompt_tokens_total %lld\n", (long long)s.prompt_tokens);
    metric(o, "moe_prompt_tokens_cached_total", "counter", "prompt tokens found in a slot's KV cache and not processed again");
    sbuf_printf(o, "moe_prompt_tokens_cached_total %lld\n", (long long)s.prompt_cached);
    metric(o, "moe_prompt_tokens_processed_total", "counter", "prompt tokens run through the model");
    sbuf_printf(o, "moe_prompt_tokens_processed_total %lld\n", (long long)s.prompt_processed);
    metric(o, "moe_generation_tokens_total", "counter", "tokens generated");
    sbuf_printf(o, "moe_generation_tokens_total %lld\n", (long long)s.gen_tokens);
    metric(o, "moe_decode_rounds_total", "counter", "decoding passes; generation tokens / rounds = the mean batch of slots");
    sbuf_printf(o, "moe_decode_rounds_total %lld\n", (long long)s.decode_rounds);
    metric(o, "moe_prompt_seconds_total", "counter", "time spent processing prompts");
    sbuf_printf(o, "moe_prompt_seconds_total %.6f\n", s.prompt_seconds);
    metric(o, "moe_generation_seconds_total", "counter", "time spent generating");
    sbuf_printf(o, "moe_generation_seconds_total %.6f\n", s.gen_seconds);
    metric(o, "moe_prompt_tokens_per_second", "gauge", "prompt tokens processed per second of prompt work");
    sbuf_printf(o, "moe_prompt_tokens_per_second %.3f\n", s.prompt_seconds > 0 ? (double)s.prompt_processed / s.prompt_seconds : 0);
    metric(o, "moe_generation_tokens_per_second", "gauge", "tokens generated per second of generation work (all slots)");
    sbuf_printf(o, "moe_generation_tokens_per_second %.3f\n", s.gen_seconds > 0 ? (double)s.gen_tokens / s.gen_seconds : 0);
    metric(o, "moe_queue_depth", "gauge", "requests waiting for a free slot");
    sbuf_printf(o, "moe_queue_depth %d\n", s.queue_depth);
    metric(o, "moe_slots", "gauge", "sequences served at once (--parallel)");
    sbuf_printf(o, "moe_slots %d\n", s.n_slots);
    metric(o, "moe_slots_busy", "gauge", "slots serving a request");
    sbuf_printf(o, "moe_slots_busy %d\n", busy);
    metric(o, "moe_kv_cache_capacity_tokens", "gauge", "tokens all slots' KV caches can hold");
    sbuf_printf(o, "moe_kv_cache_capacity_tokens %lld\n", (long long)s.ctx_tokens * s.n_slots);
    metric(o, "moe_kv_cache_usage_ratio", "gauge", "fraction of the KV cache capacity in use");
    sbuf_printf(o, "moe_kv_cache_usage_ratio %.6f\n",
                s.ctx_tokens > 0 ? (double)kv_tokens / (double)(s.ctx_tokens * s.n_slots) : 0);
    metric(o, "moe_kv_cache_bytes", "gauge", "memory of all slots' KV caches");
    sbuf_printf(o, "moe_kv_cache_bytes %lld\n", (long long)s.kv_bytes);
    metric(o, "process_resident_memory_bytes", "gauge", "resident memory of the server process");
    sbuf_printf(o, "process_resident_memory_bytes %lld\n", (long long)rss_bytes());
    metric(o, "moe_uptime_seconds", "gauge", "seconds since the server started");
    sbuf_printf(o, "moe_uptime_seconds %.3f\n", mono() - s.start);
}

void metrics_render_experts(const moe_model *model, sbuf *o) {
    moe_expert_stats t;
    if (moe_model_expert_stats(model, -1, &t) != MOE_OK) return;
    const moe_config *c = moe_model_config(model);
    static const struct {
        const char *name, *help;
        size_t off;
    } k[] = {
        {"moe_expert_hits_total", "experts a batch needed that were in memory", offsetof(moe_expert_stats, hits)},
        {"moe_expert_misses_total", "experts waited for: read when needed, or read ahead but not there yet", offsetof(moe_expert_stats, misses)},
        {"moe_expert_skipped_total", "experts dropped by the skip miss policy", offsetof(moe_expert_stats, skipped)},
        {"moe_expert_prefetched_total", "experts read ahead for the next layer", offsetof(moe_expert_stats, prefetched)},
        {"moe_expert_prefetch_used_total", "experts read ahead and then used", offsetof(moe_expert_stats, prefetch_used)},
        {"moe_expert_predicted_total", "next-layer expert guesses", offsetof(moe_expert_stats, predicted)},
        {"moe_expert_predicted_right_total", "next-layer guesses the router then chose", offsetof(moe_expert_stats, predicted_right)},
        {"moe_expert_evictions_total", "experts evicted from the cache", offsetof(moe_expert_stats, evictions)},
        {"moe_expert_read_bytes_total", "bytes read from the expert store", offsetof(moe_expert_stats, bytes_read)},
    };
    /* each layer's counters read once, then written metric by metric */
    moe_expert_stats *ls = calloc((size_t)c->n_layers, sizeof *ls);
    unsigned char *moe = calloc((size_t)c->n_layers, 1);
    for (int l = 0; ls && moe && l < c->n_layers; l++) moe[l] = moe_model_expert_stats(model, l, &ls[l]) == MOE_OK;
    for (size_t i = 0; i < sizeof k / sizeof *k; i++) {
        metric(o, k[i].name, "counter", k[i].help);
        for (int l = 0; ls && moe && l < c->n_layers; l++)
            if (moe[l])
                sbuf_printf(o, "%s{layer=\"%d\"} %lld\n", k[i].name, l, (long long)*(const int64_t *)((const char *)&ls[l] + k[i].off));
        sbuf_printf(o, "%s{layer=\"all\"} %lld\n", k[i].name, (long long)*(const int64_t *)((const char *)&t + k[i].off));
    }
    free(ls);
    free(moe);
    metric(o, "moe_expert_read_seconds_total", "counter", "wall time with at least one expert read in flight");
    sbuf_printf(o, "moe_expert_read_seconds_total %.6f\n", t.read_seconds);
    metric(o, "moe_expert_resident", "gauge", "experts in memory, all MoE layers");
    sbuf_printf(o, "moe_expert_resident %d\n", t.resident);
    metric(o, "moe_expert_capacity", "gauge", "expert cache slots, all MoE layers");
    sbuf_printf(o, "moe_expert_capacity %d\n", t.capacity);
}
