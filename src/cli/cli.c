/* cli.c — helpers shared by the subcommands (see cli.h). */
#include "cli.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

int cli_fail(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fputs("moe: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    return 1;
}

int cli_fail_status(moe_status st) {
    const char *m = moe_errmsg();
    return cli_fail("%s", *m ? m : moe_status_name(st));
}

int cli_int(const char *opt, const char *s, long long lo, long long hi, long long *out) {
    char *end;
    errno = 0;
    long long v = strtoll(s, &end, 10);
    if (errno || end == s || *end || v < lo || v > hi) {
        cli_fail("%s: expected an integer in [%lld, %lld], got \"%s\"", opt, lo, hi, s);
        return 1;
    }
    *out = v;
    return 0;
}

int cli_float(const char *opt, const char *s, double lo, double hi, double *out) {
    char *end;
    errno = 0;
    double v = strtod(s, &end);
    if (errno || end == s || *end || !(v >= lo && v <= hi)) {
        cli_fail("%s: expected a number in [%g, %g], got \"%s\"", opt, lo, hi, s);
        return 1;
    }
    *out = v;
    return 0;
}

const char *cli_value(int argc, char **argv, int *i) {
    if (*i + 1 >= argc) {
        cli_fail("%s needs a value", argv[*i]);
        return NULL;
    }
    return argv[++*i];
}

int cli_parse_tokens(const char *s, int32_t **out, size_t *n) {
    size_t cap = 16, k = 0;
    int32_t *v = malloc(cap * sizeof *v);
    const char *p = s;
    while (v) {
        char *end;
        errno = 0;
        long long x = strtoll(p, &end, 10);
        if (end == p || errno || x < 0 || x > INT32_MAX) {
            free(v);
            cli_fail("--tokens: expected comma-separated token ids, got \"%s\"", s);
            return 1;
        }
        if (k == cap) {
            int32_t *nv = realloc(v, (cap *= 2) * sizeof *nv);
            if (!nv) { free(v); v = NULL; break; }
            v = nv;
        }
        v[k++] = (int32_t)x;
        while (*end == ' ') end++;
        if (*end == 0) break;
        if (*end != ',') {
            free(v);
            cli_fail("--tokens: expected comma-separated token ids, got \"%s\"", s);
            return 1;
        }
        p = end + 1;
    }
    if (!v) return cli_fail("out of memory");
    *out = v;
    *n = k;
    return 0;
}

int cli_load(const char *dir, int n_threads, moe_model **out) {
    moe_load_params lp;
    moe_load_params_defaults(&lp);
    lp.n_threads = n_threads;
    lp.load = MOE_LOAD_MMAP; /* for looking at a model (moe info), not running it */
    moe_status st = moe_model_load(dir, &lp, out);
    return st ? cli_fail_status(st) : 0;
}

double cli_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

int64_t cli_peak_rss(void) {
    struct rusage ru;
    return getrusage(RUSAGE_SELF, &ru) ? 0 : (int64_t)ru.ru_maxrss * 1024;
}

void cli_progress(void *state, uint64_t done, uint64_t total) {
    cli_progress_state *p = state;
    double now = cli_now();
    if (p->start == 0) p->start = now;
    if (done != total && now - p->last < 0.5) return;
    p->last = now;
    double secs = now - p->start, rate = secs > 0 ? (double)done / secs : 0;
    int gb = total >= 1000000000u;
    fprintf(stderr, "\r%s: %5.1f%% of %.2f %s", p->what ? p->what : "writing", total ? 100.0 * (double)done / (double)total : 100.0,
            (double)total / (gb ? 1e9 : 1e6), gb ? "GB" : "MB");
    if (rate > 0) fprintf(stderr, ", %.0f MB/s, %.0f s %s   ", rate / 1e6, done == total ? secs : (double)(total - done) / rate,
                          done == total ? "in all" : "left");
    if (done == total) fputc('\n', stderr);
}

const char *cli_default_model(void) {
    static char path[4096];
    if (path[0]) return path;
    snprintf(path, sizeof path, "%s", MOE_DEFAULT_MODEL);
    FILE *f = fopen(MOE_DEFAULT_MODEL "/config.json", "r");
    if (f) {
        fclose(f);
        return path;
    }
    /* not run from the repository root: look beside the executable (build/moe -> models/) */
    char exe[4000];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = 0;
        char *slash = strrchr(exe, '/');
        if (slash) {
            *slash = 0;
            char probe[4096 + 64];
            snprintf(probe, sizeof probe, "%s/../%s/config.json", exe, MOE_DEFAULT_MODEL);
            if ((f = fopen(probe, "r"))) {
                fclose(f);
                snprintf(path, sizeof path, "%s/../%s", exe, MOE_DEFAULT_MODEL);
            }
        }
    }
    return path;
}

char *cli_read_all(FILE *f, size_t *len) {
    size_t cap = 1 << 16, n = 0;
    char *buf = malloc(cap + 1);
    while (buf) {
        size_t r = fread(buf + n, 1, cap - n, f);
        n += r;
        if (r == 0) break;
        if (n == cap) {
            char *nb = realloc(buf, (cap *= 2) + 1);
            if (!nb) free(buf);
            buf = nb;
        }
    }
    if (buf && ferror(f)) {
        free(buf);
        buf = NULL;
    }
    if (buf) buf[n] = 0;
    *len = n;
    return buf;
}

int cli_size(const char *opt, const char *s, int64_t *out) {
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    int shift = 0;
    switch (toupper((unsigned char)*end)) {
    case 'K': shift = 10, end++; break;
    case 'M': shift = 20, end++; break;
    case 'G': shift = 30, end++; break;
    case 'T': shift = 40, end++; break;
    }
    if (shift && toupper((unsigned char)*end) == 'I') end++;
    if (toupper((unsigned char)*end) == 'B') end++;
    if (errno || end == s || *end || v == 0 || v > (1ull << 50) >> shift || s[0] == '-') {
        cli_fail("%s: expected a size such as 1048576, 512K, 16M or 12G, got \"%s\"", opt, s);
        return 1;
    }
    *out = (int64_t)(v << shift);
    return 0;
}

void cli_model_opts_init(cli_model_opts *o) {
    memset(o, 0, sizeof *o);
    moe_load_params_defaults(&o->lp);
}

void cli_model_help(FILE *f) {
    fprintf(f, "  -t N                threads (default: all cores)\n"
               "  --device DEV        cpu, cuda, cuda:N or auto (a GPU if there is one); default: $MOE_DEVICE,\n"
               "                      else cpu. This build: %s\n"
               "  --load auto|mmap|copy  CPU weights: copied into memory (faster decode, dropped from the\n"
               "                      page cache) or used from the files' mapping (instant load); auto\n"
               "                      (default): copy when they fit in available memory\n"
               "expert offloading (MoE models; on by itself when the model does not fit in memory):\n"
               "  --offload           always offload experts (--no-offload: never)\n"
               "  --capacity N        experts kept in memory per MoE layer; 0: none (each use read from disk)\n"
               "  --expert-mem SIZE   memory for resident experts, all layers (e.g. 12G); default: what is available\n"
               "  --miss exact|skip   a missing expert: wait for its read (default), or skip it\n"
               "  --evict lfu|lru     eviction: least frequently (decayed, default) or least recently used\n"
               "  --profile FILE      pin each layer's hottest experts from a `moe profile` file\n"
               "  --pin N             experts pinned per layer (default: half the capacity)\n"
               "  --no-prefetch       do not read the next layer's likely experts ahead\n"
               "  --no-warm           do not save / preload the resident experts across runs\n"
               "  --cache-dir DIR     where expert stores live (default ~/.cache/moe)\n"
               "  --store auto|pack|model  read experts from a pack in the cache directory (a copy, one\n"
               "                      read an expert) or from the model's own files (no copy); auto\n"
               "                      (default): the pack when it exists or the disk has room for it\n"
               "  --io-threads N      reader threads (default 4)\n"
               "  --host-experts auto|on|off  on a GPU: also hold every expert in pinned host memory, so a\n"
               "                      miss is a copy over the bus, not a disk read; auto (default): when\n"
               "                      the host has room for them\n"
               "  --stats             print the expert cache's hits, misses, reads at the end\n",
            moe_devices());
}

int cli_model_opt(cli_model_opts *o, int argc, char **argv, int *i) {
    const char *a = argv[*i], *v;
    long long ll;
    moe_load_params *p = &o->lp;
#define VAL()                                          \
    do {                                               \
        if (!(v = cli_value(argc, argv, i))) return -1; \
    } while (0)
    if (!strcmp(a, "-t") || !strcmp(a, "--threads")) { VAL(); if (cli_int(a, v, 0, 4096, &ll)) return -1; p->n_threads = (int)ll; }
    else if (!strcmp(a, "--device")) { VAL(); p->device = v; }
    else if (!strcmp(a, "--load")) {
        VAL();
        if (!strcmp(v, "auto")) p->load = MOE_LOAD_AUTO;
        else if (!strcmp(v, "mmap")) p->load = MOE_LOAD_MMAP;
        else if (!strcmp(v, "copy")) p->load = MOE_LOAD_COPY;
        else { cli_fail("--load: expected auto, mmap or copy, got \"%s\"", v); return -1; }
    }
    else if (!strcmp(a, "--offload")) p->offload = 1;
    else if (!strcmp(a, "--no-offload")) p->offload = 0;
    else if (!strcmp(a, "--capacity")) { VAL(); if (cli_int(a, v, 0, 1 << 20, &ll)) return -1; p->capacity = (int)ll; }
    else if (!strcmp(a, "--expert-mem")) { VAL(); if (cli_size(a, v, &p->expert_mem)) return -1; }
    else if (!strcmp(a, "--miss")) {
        VAL();
        if (!strcmp(v, "exact")) p->miss = MOE_MISS_EXACT;
        else if (!strcmp(v, "skip")) p->miss = MOE_MISS_SKIP;
        else { cli_fail("--miss: expected exact or skip, got \"%s\"", v); return -1; }
    } else if (!strcmp(a, "--evict")) {
        VAL();
        if (!strcmp(v, "lfu")) p->evict = MOE_EVICT_LFU;
        else if (!strcmp(v, "lru")) p->evict = MOE_EVICT_LRU;
        else { cli_fail("--evict: expected lfu or lru, got \"%s\"", v); return -1; }
    } else if (!strcmp(a, "--profile")) { VAL(); p->profile = v; }
    else if (!strcmp(a, "--pin")) { VAL(); if (cli_int(a, v, 0, 1 << 20, &ll)) return -1; p->pin = (int)ll; }
    else if (!strcmp(a, "--no-prefetch")) p->prefetch = 0;
    else if (!strcmp(a, "--no-warm")) p->warm = 0;
    else if (!strcmp(a, "--cache-dir")) { VAL(); p->cache_dir = v; }
    else if (!strcmp(a, "--store")) {
        VAL();
        if (!strcmp(v, "auto")) p->store = MOE_STORE_AUTO;
        else if (!strcmp(v, "pack")) p->store = MOE_STORE_PACK;
        else if (!strcmp(v, "model")) p->store = MOE_STORE_MODEL;
        else { cli_fail("--store: expected auto, pack or model, got \"%s\"", v); return -1; }
    }
    else if (!strcmp(a, "--host-experts")) {
        VAL();
        if (!strcmp(v, "auto")) p->host_experts = -1;
        else if (!strcmp(v, "on")) p->host_experts = 1;
        else if (!strcmp(v, "off")) p->host_experts = 0;
        else { cli_fail("--host-experts: expected auto, on or off, got \"%s\"", v); return -1; }
    }
    else if (!strcmp(a, "--io-threads")) { VAL(); if (cli_int(a, v, 1, 256, &ll)) return -1; p->io_threads = (int)ll; }
    else if (!strcmp(a, "--stats")) o->stats = 1;
    else return 0;
#undef VAL
    return 1;
}

static void load_progress(void *ctx, const char *what, uint64_t done, uint64_t total) {
    cli_model_opts *o = ctx;
    if (o->prog.what != what) o->prog = (cli_progress_state){.what = what};
    cli_progress(&o->prog, done, total);
}

int cli_load_model(const char *dir, cli_model_opts *o, moe_model **out) {
    o->lp.progress = load_progress;
    o->lp.progress_ctx = o;
    moe_status st = moe_model_load(dir, &o->lp, out);
    if (st) return cli_fail_status(st);
    moe_offload_info in;
    moe_model_offload_info(*out, &in);
    if (!in.enabled) return 0;
    if (*in.note) fprintf(stderr, "offload: %s%s\n", in.built ? "built the expert store: " : "", in.note);
    fprintf(stderr, "offload: %d of %d experts per MoE layer in %s memory (%.2f GB of slots", in.capacity, in.n_experts,
            in.on_device ? "GPU" : "host", (double)in.cache_bytes / 1e9);
    if (in.pinned) fprintf(stderr, ", %d pinned", in.pinned);
    if (in.store == MOE_STORE_MODEL)
        fprintf(stderr, "); experts read from the model's files in %s (%.2f GB)", in.store_path, (double)in.store_bytes / 1e9);
    else
        fprintf(stderr, "); store %s (%.2f GB%s)", in.store_path, (double)in.store_bytes / 1e9, in.built ? ", built now" : "");
    if (in.host_bytes) fprintf(stderr, "; every expert also in pinned host memory (%.2f GB)", (double)in.host_bytes / 1e9);
    if (in.preloaded) fprintf(stderr, "; %lld experts preloaded in %.2f s", (long long)in.preloaded, in.preload_seconds);
    if (in.auto_reason)
        fprintf(stderr, "; on because the model does not fit in the %.2f GB available%s", (double)in.available_bytes / 1e9,
                in.on_device ? " on the GPU" : "");
    fputc('\n', stderr);
    return 0;
}

static void stats_line(FILE *f, const char *name, const moe_expert_stats *k) {
    int64_t used = k->hits + k->misses + k->skipped;
    fprintf(f, "%-6s %9lld %9lld %9lld %6.1f%% %9lld %6.1f%% %10.1f %8.0f\n", name, (long long)k->hits, (long long)k->misses,
            (long long)k->skipped, used ? 100.0 * (double)k->hits / (double)used : 0.0, (long long)k->prefetched,
            k->predicted ? 100.0 * (double)k->predicted_right / (double)k->predicted : 0.0, (double)k->bytes_read / 1e6,
            k->read_seconds > 0 ? (double)k->bytes_read / 1e6 / k->read_seconds : 0.0);
}

void cli_model_report(const moe_model *m, const cli_model_opts *o, FILE *f) {
    moe_expert_stats k;
    if (!o->stats || !m || moe_model_expert_stats(m, -1, &k)) return;
    const moe_config *c = moe_model_config(m);
    moe_offload_info in;
    moe_model_offload_info(m, &in);
    fprintf(f, "expert cache: %s misses, %s eviction, experts read from %s\n", o->lp.miss == MOE_MISS_SKIP ? "skip" : "exact",
            o->lp.evict == MOE_EVICT_LRU ? "LRU" : "LFU", in.store == MOE_STORE_MODEL ? "the model's files" : "the pack");
    fprintf(f, "%-6s %9s %9s %9s %7s %9s %7s %10s %8s\n", "layer", "hits", "misses", "skipped", "hit", "prefetch",
            "guess", "read MB", "MB/s");
    for (int l = 0; l < c->n_layers; l++) {
        moe_expert_stats kl;
        char name[16];
        snprintf(name, sizeof name, "%d", l);
        if (!moe_model_expert_stats(m, l, &kl)) stats_line(f, name, &kl);
    }
    stats_line(f, "total", &k);
}
