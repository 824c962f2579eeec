/* cli.c — helpers shared by the subcommands (see cli.h). */
#include "cli.h"

#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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
    moe_status st = moe_model_load(dir, &lp, out);
    return st ? cli_fail_status(st) : 0;
}

double cli_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

void cli_progress(void *state, uint64_t done, uint64_t total) {
    cli_progress_state *p = state;
    double now = cli_now();
    if (p->start == 0) p->start = now;
    if (done != total && now - p->last < 0.5) return;
    p->last = now;
    double secs = now - p->start, rate = secs > 0 ? (double)done / secs : 0;
    fprintf(stderr, "\rwriting: %5.1f%% of %.2f GB", total ? 100.0 * (double)done / (double)total : 100.0, (double)total / 1e9);
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
