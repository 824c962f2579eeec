/* offload.c — expert offloading at load and free time, and its public face.
 *
 * At load (offload_setup, after model.c bound every weight to the mapped
 * files): decide whether to offload (asked for, or the model does not fit
 * in available memory), open the expert store (a pack, built the first time
 * when there is disk for it, or the model's own files: choose_store),
 * size the cache from --capacity, --expert-mem or the memory left once the
 * other weights, a KV cache and working room are counted, pin a profile's
 * hottest experts, and preload the experts the last run left resident
 * (warm start). From then on the forward pass reads experts through m->xc
 * and the mapped expert weights are never touched.
 * On a GPU the cache's slots are in its memory and sized from its free memory;
 * every expert is also read once into pinned host memory when the host has
 * room (the host tier), so that a miss is a copy over the bus, not a read of
 * the disk.
 * At free (offload_teardown): save the cache's state for the next warm start.
 *
 * The warm-start state is a small JSON file in the model's cache directory
 * (beside the pack, if there is one):
 *   {"format": "moe-cache-state", "version": 1, "store_bytes": N,
 *    "n_layers": L, "n_experts": E,
 *    "layers": [{"layer": l, "experts": [e, ...], "scores": [s, ...]}, ...]}
 * experts most valuable first. It is advisory: one that does not match the
 * store is ignored (with a note), never trusted.
 */
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "../backend/backend.h"
#include "../base/err.h"
#include "../base/mem.h"
#include "../model/model.h"
#include "xcache.h"
#include "xprofile.h"
#include "xstore.h"

#define STATE_FILE "cache-state.json"
#define WORK_ROOM ((int64_t)512 << 20) /* activations, scratch, the allocator's slack */
#define PACK_SLACK_BYTES ((uint64_t)1 << 30) /* auto builds a pack only with this much disk to spare, */
#define PACK_SLACK_PART 20                   /* and 1/20 of the pack's size */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Bytes of every expert of every MoE layer as the model stores them. */
static int64_t expert_bytes(const moe_model *m) {
    const moe_config *c = &m->cfg.pub;
    int64_t b = 0;
    for (int l = 0; l < c->n_layers; l++) {
        const layer *L = &m->layers[l];
        for (int e = 0; L->is_moe && e < c->n_experts; e++)
            b += (int64_t)(wtensor_bytes(&L->experts[e].gate) + wtensor_bytes(&L->experts[e].up) +
                           wtensor_bytes(&L->experts[e].down));
    }
    return b;
}

typedef struct progress_adapter {
    const moe_load_params *p;
    const char *what;
} progress_adapter;

static void progress(void *ctx, uint64_t done, uint64_t total) {
    progress_adapter *a = ctx;
    a->p->progress(a->p->progress_ctx, a->what, done, total);
}

static void state_path(const moe_model *m, char *buf, size_t cap) { snprintf(buf, cap, "%s/%s", xs_dir(m->xs), STATE_FILE); }

/* Appends to the load's note ("; " between two). */
static void add_note(moe_model *m, const char *fmt, ...) {
    char *n = m->off.note;
    size_t len = strlen(n), cap = sizeof m->off.note;
    if (len && len + 2 < cap) strcpy(n + len, "; "), len += 2;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(n + len, cap - len, fmt, ap);
    va_end(ap);
}

/* ------------------------------------------------------------ warm state -- */

static void save_state(moe_model *m) {
    const moe_config *c = &m->cfg.pub;
    json_t *root = json_pack("{s:s, s:i, s:I, s:i, s:i}", "format", "moe-cache-state", "version", 1, "store_bytes",
                             (json_int_t)m->off.store_bytes, "n_layers", c->n_layers, "n_experts", c->n_experts);
    json_t *layers = json_array();
    int *ex = malloc(sizeof *ex * (size_t)c->n_experts);
    double *sc = malloc(sizeof *sc * (size_t)c->n_experts);
    if (!root || !layers || !ex || !sc) goto out;
    for (int l = 0; l < c->n_layers; l++) {
        if (!m->layers[l].is_moe) continue;
        int n = xc_resident(m->xc, l, ex, sc);
        json_t *je = json_array(), *js = json_array();
        for (int i = 0; i < n; i++) {
            json_array_append_new(je, json_integer(ex[i]));
            json_array_append_new(js, json_real(sc[i]));
        }
        json_array_append_new(layers, json_pack("{s:i, s:o, s:o}", "layer", l, "experts", je, "scores", js));
    }
    json_object_set(root, "layers", layers);
    char path[4200], tmp[4300];
    state_path(m, path, sizeof path);
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    if (json_dump_file(root, tmp, JSON_COMPACT) == 0) rename(tmp, path);
    else unlink(tmp);
out:
    json_decref(layers);
    json_decref(root);
    free(ex);
    free(sc);
}

/* Reads the saved state and preloads it; a state that does not fit the
 * store is ignored with a note. Only a failed read is an error. */
static moe_status load_state(moe_model *m, const moe_load_params *p) {
    const moe_config *c = &m->cfg.pub;
    char path[4200];
    state_path(m, path, sizeof path);
    if (access(path, F_OK)) return MOE_OK;
    json_error_t jerr;
    json_t *root = json_load_file(path, 0, &jerr), *layers;
    json_int_t sb = -1, nl = -1, ne = -1;
    int version = 0;
    const char *fmt = NULL;
    if (!root || json_unpack(root, "{s:s, s:i, s:I, s:I, s:I, s:o}", "format", &fmt, "version", &version, "store_bytes", &sb,
                             "n_layers", &nl, "n_experts", &ne, "layers", &layers) ||
        strcmp(fmt, "moe-cache-state") || version != 1 || !json_is_array(layers)) {
        add_note(m, "warm state unreadable: ignored");
        json_decref(root);
        return MOE_OK;
    }
    if (sb != m->off.store_bytes || nl != c->n_layers || ne != c->n_experts) {
        add_note(m, "warm state of another store: ignored");
        json_decref(root);
        return MOE_OK;
    }
    int *ex = malloc(sizeof *ex * (size_t)c->n_experts);
    double *sc = malloc(sizeof *sc * (size_t)c->n_experts);
    moe_status st = ex && sc ? MOE_OK : moe_err(MOE_ENOMEM, "out of memory");
    size_t i;
    json_t *jl;
    int64_t done = 0, total = 0; /* bytes: at most each saved layer's experts, as many as fit */
    json_array_foreach(layers, i, jl) {
        json_int_t l = -1;
        json_t *je = NULL;
        if (!json_unpack(jl, "{s:I, s:o}", "layer", &l, "experts", &je) && l >= 0 && l < c->n_layers && m->layers[l].is_moe &&
            json_is_array(je)) {
            size_t k = json_array_size(je) < (size_t)m->off.capacity ? json_array_size(je) : (size_t)m->off.capacity;
            total += (int64_t)k * (int64_t)xs_slot_bytes(m->xs, (int)l);
        }
    }
    json_array_foreach(layers, i, jl) {
        if (st) break;
        json_int_t l = -1;
        json_t *je = NULL, *js = NULL;
        if (json_unpack(jl, "{s:I, s:o, s:o}", "layer", &l, "experts", &je, "scores", &js) || l < 0 || l >= c->n_layers ||
            !m->layers[l].is_moe || !json_is_array(je) || !json_is_array(js) || json_array_size(je) != json_array_size(js) ||
            json_array_size(je) > (size_t)c->n_experts)
            continue;
        int n = 0;
        for (size_t k = 0; k < json_array_size(je); k++) {
            json_t *e = json_array_get(je, k), *s = json_array_get(js, k);
            if (!json_is_integer(e) || json_integer_value(e) < 0 || json_integer_value(e) >= c->n_experts || !json_is_number(s))
                continue;
            ex[n] = (int)json_integer_value(e);
            sc[n++] = json_number_value(s);
        }
        xc_counters before_l;
        xc_stats(m->xc, (int)l, &before_l);
        xc_preload(m->xc, (int)l, ex, sc, n);
        st = xc_wait_idle(m->xc);
        xc_counters after_l;
        xc_stats(m->xc, (int)l, &after_l);
        m->off.preloaded += after_l.reads - before_l.reads;
        done += (int64_t)(after_l.bytes_read - before_l.bytes_read);
        if (p->progress && done < total) p->progress(p->progress_ctx, "loading experts", (uint64_t)done, (uint64_t)total);
    }
    if (p->progress && total) p->progress(p->progress_ctx, "loading experts", (uint64_t)total, (uint64_t)total);
    free(ex);
    free(sc);
    json_decref(root);
    return st;
}

/* --------------------------------------------------------------- setup -- */

/* Pins each layer's hottest experts of profile pr (already checked against m). */
static moe_status pin_profile(moe_model *m, const moe_load_params *p, const xp_profile *pr) {
    const moe_config *c = &m->cfg.pub;
    moe_status st = MOE_OK;
    int cap = m->off.capacity, n = p->pin >= 0 ? p->pin : cap / 2;
    if (n > cap - 1) n = cap - 1;
    if (n < 0) n = 0;
    int *ex = malloc(sizeof *ex * (size_t)(n ? n : 1));
    if (!st && !ex) st = moe_err(MOE_ENOMEM, "out of memory");
    for (int l = 0; l < c->n_layers && !st && n > 0; l++) {
        if (!m->layers[l].is_moe) continue;
        int got = xp_hottest(pr, l, n, ex);
        xc_counters a, b;
        xc_stats(m->xc, l, &a);
        st = xc_pin(m->xc, l, ex, got);
        xc_stats(m->xc, l, &b);
        m->off.preloaded += b.reads - a.reads;
    }
    m->off.pinned = st ? 0 : n;
    free(ex);
    return st;
}

/* The capacity asked for or affordable, with `stage` bytes of staging
 * buffers taken from the budget first (when what is left still holds one
 * expert per layer; else *use_stage = 0); an error set when none. */
static moe_status choose_capacity(moe_model *m, const moe_load_params *p, int64_t per_slot, int64_t stage, int *cap,
                                  int *use_stage) {
    const moe_config *c = &m->cfg.pub;
    int64_t E = c->n_experts;
    if (p->capacity >= 0) {
        *cap = p->capacity > E ? (int)E : p->capacity;
        return MOE_OK;
    }
    if (p->expert_mem > 0) {
        int64_t k = (p->expert_mem - stage) / per_slot;
        if (k < 1) k = p->expert_mem / per_slot, *use_stage = 0;
        if (k < 1)
            return moe_err(MOE_EINVAL, "expert memory %.2f GB holds less than one expert per layer (%.2f GB)",
                           (double)p->expert_mem / 1e9, (double)per_slot / 1e9);
        *cap = (int)(k > E ? E : k);
        return MOE_OK;
    }
    int64_t other = c->weight_bytes - expert_bytes(m), kv = moe_model_kv_bytes(m, 4096);
    int64_t budget = m->off.available_bytes - other - kv - WORK_ROOM - m->off.available_bytes / 20;
    int64_t k = budget - stage > 0 ? (budget - stage) / per_slot : 0;
    if (k < 1) k = budget > 0 ? budget / per_slot : 0, *use_stage = 0;
    if (k < 1)
        return moe_err(MOE_ENOMEM,
                       "not enough memory to offload: %.2f GB available, the other weights take %.2f GB, a 4096-token "
                       "KV cache %.2f GB, one expert per layer %.2f GB (set --expert-mem or --capacity)",
                       (double)m->off.available_bytes / 1e9, (double)other / 1e9, (double)kv / 1e9, (double)per_slot / 1e9);
    *cap = (int)(k > E ? E : k);
    return MOE_OK;
}

static moe_status setup(moe_model *m, const moe_load_params *p, const xp_profile *pr);

int64_t model_memory_need(const moe_model *m, int64_t weight_bytes) {
    return weight_bytes + moe_model_kv_bytes(m, 4096) + WORK_ROOM;
}

moe_status offload_setup(moe_model *m, const moe_load_params *p) {
    const moe_config *c = &m->cfg.pub;
    if (p->offload == 0) return MOE_OK;
    if (c->n_moe_layers == 0) {
        if (p->offload == 1 || p->capacity >= 0 || p->expert_mem > 0 || p->profile)
            return moe_err(MOE_EINVAL, "%s: expert offloading needs a Mixture-of-Experts model (%s is dense)", m->dir,
                           c->model_type);
        return MOE_OK;
    }
    if (p->capacity < -1 || p->expert_mem < 0 || p->pin < -1 || p->host_experts < -1 || p->host_experts > 1 || (p->miss != MOE_MISS_EXACT && p->miss != MOE_MISS_SKIP) ||
        (p->evict != MOE_EVICT_LFU && p->evict != MOE_EVICT_LRU) ||
        (p->store != MOE_STORE_AUTO && p->store != MOE_STORE_PACK && p->store != MOE_STORE_MODEL))
        return moe_err(MOE_EINVAL, "offloading: bad parameters (capacity %d, expert_mem %lld, pin %d, miss %d, evict %d, store %d)",
                       p->capacity, (long long)p->expert_mem, p->pin, (int)p->miss, (int)p->evict, (int)p->store);
    int dev = !backend_host_memory(m->be);
    if (!dev && p->host_experts == 1)
        return moe_err(MOE_EINVAL, "--host-experts on: the host tier is for a GPU's expert cache (device %s)",
                       backend_kind(m->be));
    m->off.available_bytes = dev ? backend_free_memory(m->be) : mem_available();
    int want = p->offload == 1 || p->capacity >= 0 || p->expert_mem > 0 || p->profile || p->miss == MOE_MISS_SKIP;
    if (!want) {
        int64_t need = model_memory_need(m, c->weight_bytes);
        if (m->off.available_bytes < 0 || need <= m->off.available_bytes) return MOE_OK;
        m->off.auto_reason = 1;
    }
    xp_profile *pr = NULL; /* checked before minutes go into building a store */
    moe_status st = p->profile ? xp_read(p->profile, &pr) : MOE_OK;
    if (!st && pr) st = xp_check_model(pr, p->profile, c, m->cfg.layer_moe);
    if (!st) st = setup(m, p, pr);
    xp_free(pr);
    return st;
}

/* Opens the store p->store asks for, in cache directory `dir`: auto takes a
 * valid pack that is there, builds one when the disk has room for it with
 * a margin, and else reads the model's own files (saying why in the note). */
static moe_status choose_store(moe_model *m, const moe_load_params *p, const char *dir, int no_pack, struct xstore **xs) {
    if (snprintf(m->off.store_path, sizeof m->off.store_path, "%s/experts.pack", dir) >= (int)sizeof m->off.store_path)
        return moe_err(MOE_EINVAL, "cache directory path too long");
    const char *pack = m->off.store_path;
    int model = p->store == MOE_STORE_MODEL;
    struct stat s;
    if (p->store == MOE_STORE_AUTO && (stat(pack, &s) != 0 || xs_open(m, pack, xs) != MOE_OK)) {
        if (no_pack) { /* every expert is read once, into host memory: a pack would only copy them */
            add_note(m, "no expert pack: the experts are read once from the model's files into host memory");
            return xs_open_model(m, dir, xs);
        }
        uint64_t need;
        moe_status st = xs_pack_bytes(m, &need);
        if (st) return st;
        int64_t avail = xs_free_bytes(dir);
        uint64_t want = need + need / PACK_SLACK_PART + PACK_SLACK_BYTES;
        if ((model = avail >= 0 && (uint64_t)avail < want))
            add_note(m, "not enough disk for an expert pack (needs %.1f GB, %.1f GB free): reading experts from the model's files",
                     (double)want / 1e9, (double)avail / 1e9);
    }
    if (*xs) return MOE_OK; /* the valid pack auto found */
    if (model) return xs_open_model(m, dir, xs);
    progress_adapter pa = {p, "packing experts"};
    double t0 = now_s();
    moe_status st = xs_open_or_build(m, pack, p->progress ? progress : NULL, &pa, &m->off.built, m->off.note,
                                     sizeof m->off.note, xs);
    if (m->off.built) m->off.build_seconds = now_s() - t0;
    return st;
}

/* On a GPU: whether to hold every expert in pinned host memory (asked for, or
 * the store fits in what the host has available with a tenth and 2 GB to spare). */
static int want_host_tier(const moe_model *m, const moe_load_params *p) {
    if (p->host_experts >= 0) return p->host_experts;
    int64_t avail = mem_available(), need = expert_bytes(m);
    return avail > 0 && need + need / 10 + ((int64_t)2 << 30) <= avail;
}

/* Fills the host tier of a cache made for one (want_host_tier, decided once
 * in setup: the cache has no bounce buffers then); a failure is an error when
 * it was asked for, else a note (the cache reads the store instead). */
static moe_status host_tier(moe_model *m, const moe_load_params *p, struct xcache *xc) {
    progress_adapter pa = {p, "experts into host memory"};
    moe_status st = xc_fill_host(xc, p->progress ? progress : NULL, &pa);
    if (st && p->host_experts == 1) return st;
    if (st) add_note(m, "experts not held in host memory (%s): read from the store", moe_errmsg());
    m->off.host_bytes = (int64_t)xc_host_bytes(xc);
    return MOE_OK;
}

/* Offloading, once decided: store, cache, pins, warm state. */
static moe_status setup(moe_model *m, const moe_load_params *p, const xp_profile *pr) {
    const moe_config *c = &m->cfg.pub;
    char dir[4096];
    moe_status st = xs_cache_dir(m->dir, p->cache_dir, 1, dir, sizeof dir);
    if (st) return st;
    struct xstore *xs = NULL;
    int dev = !backend_host_memory(m->be), host = dev && want_host_tier(m, p);
    if ((st = choose_store(m, p, dir, host, &xs))) return st;
    m->xs = xs;
    m->off.store = xs_is_pack(xs) ? MOE_STORE_PACK : MOE_STORE_MODEL;
    snprintf(m->off.store_path, sizeof m->off.store_path, "%s", xs_path(xs));
    m->off.store_bytes = (int64_t)xs_total_bytes(xs);

    int64_t per_slot = 0, largest = 0; /* one slot in every MoE layer; the largest slot */
    for (int l = 0; l < c->n_layers; l++) {
        per_slot += (int64_t)xs_slot_bytes(xs, l);
        if ((int64_t)xs_slot_bytes(xs, l) > largest) largest = (int64_t)xs_slot_bytes(xs, l);
    }
    /* staging: this layer's misses and the next layer's guesses, top-k each */
    int n_stage = 2 * c->n_experts_per_tok, cap = 0, use_stage = 1;
    if ((st = choose_capacity(m, p, per_slot, (int64_t)n_stage * largest, &cap, &use_stage))) return st;
    xc_params xp = {.capacity = cap, .skip = p->miss == MOE_MISS_SKIP, .lru = p->evict == MOE_EVICT_LRU,
                    .io_threads = p->io_threads > 0 ? p->io_threads : 4, .stage = use_stage ? n_stage : 0,
                    .be = dev ? m->be : NULL, .host_tier = host};
    m->off.on_device = dev;
    struct xcache *xc;
    if ((st = xc_new(m, xs, &xp, &xc))) return st;
    m->xc = xc;
    m->prefetch = p->prefetch && cap > 0;
    m->warm = p->warm && cap > 0;
    m->off.enabled = 1;
    m->off.capacity = cap;
    m->off.n_experts = c->n_experts;
    m->off.cache_bytes = (int64_t)xc_bytes(xc);

    /* the host tier first: with it the store's reads go there, and pins and warm starts are uploads */
    if (host && (st = host_tier(m, p, xc))) return st;
    double t0 = now_s();
    if (pr && cap > 0 && (st = pin_profile(m, p, pr))) return st;
    if (m->warm && (st = load_state(m, p))) return st;
    m->off.preload_seconds = now_s() - t0;
    xc_reset_stats(xc);
    return MOE_OK;
}

void offload_teardown(moe_model *m) {
    if (m->xc && m->warm) save_state(m);
    xc_free(m->xc);
    xs_close(m->xs);
    m->xc = NULL;
    m->xs = NULL;
}

/* ------------------------------------------------------------- public -- */

void moe_model_offload_info(const moe_model *m, moe_offload_info *out) { *out = m->off; }

moe_status moe_model_expert_stats(const moe_model *m, int layer, moe_expert_stats *out) {
    memset(out, 0, sizeof *out);
    if (!m->xc) return moe_err(MOE_EINVAL, "the model is not offloaded");
    if (layer != -1 && (layer < 0 || layer >= m->cfg.pub.n_layers || !m->layers[layer].is_moe))
        return moe_err(MOE_EINVAL, "layer %d is not a MoE layer", layer);
    xc_counters k;
    xc_stats(m->xc, layer, &k);
    *out = (moe_expert_stats){k.hits, k.misses, k.skipped, k.prefetched, k.prefetch_used, k.predicted, k.predicted_right,
                              k.evictions, k.reads, k.bytes_read, k.read_seconds, k.capacity, k.resident, k.pinned};
    return MOE_OK;
}

void moe_model_reset_expert_stats(moe_model *m) {
    if (m->xc) xc_reset_stats(m->xc);
}
