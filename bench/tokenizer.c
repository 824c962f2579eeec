/* bench/tokenizer.c — tokenizer load time and single-threaded encode/decode speed.
 *
 *   bench_tokenizer [--seconds S] TEXT_FILE DIR/tokenizer.json ...
 *
 * For each tokenizer: load time (best of 3), then encode TEXT_FILE (without
 * special tokens) in a loop for S seconds (default 2) after one warm-up encode,
 * as tools/gen_tokenizer_fixtures.py --bench times HF `tokenizers` on the same
 * file; then decode and stream-detokenize the resulting ids. The word cache is
 * warm in both, as it is in any long-running use. bench/tokenizer_text.txt is
 * the fixed multilingual text the figures in docs/PERFORMANCE.md use.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "src/text/tokenizer.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    rewind(f);
    char *b = malloc((size_t)n + 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    fclose(f);
    if (b) b[n] = 0;
    *len = (size_t)n;
    return b;
}

/* "models/qwen3/tokenizer.json" -> "qwen3" */
static void short_name(const char *path, char *out, size_t cap) {
    const char *end = strrchr(path, '/');
    if (!end) {
        snprintf(out, cap, "%s", path);
        return;
    }
    const char *start = end;
    while (start > path && start[-1] != '/') start--;
    snprintf(out, cap, "%.*s", (int)(end - start), start);
}

int main(int argc, char **argv) {
    double seconds = 2.0;
    int a = 1;
    if (a + 1 < argc && strcmp(argv[a], "--seconds") == 0) {
        seconds = atof(argv[a + 1]);
        a += 2;
    }
    if (argc - a < 2) {
        fprintf(stderr, "usage: %s [--seconds S] TEXT_FILE tokenizer.json ...\n", argv[0]);
        return 2;
    }
    size_t len;
    char *text = read_file(argv[a], &len);
    if (!text) {
        fprintf(stderr, "cannot read %s\n", argv[a]);
        return 1;
    }
    printf("text: %s, %zu bytes; %.1f s per measurement, one thread\n", argv[a], len, seconds);
    for (int i = a + 1; i < argc; i++) {
        char name[256], cfg[4096];
        short_name(argv[i], name, sizeof name);
        snprintf(cfg, sizeof cfg, "%.*s/tokenizer_config.json", (int)(strrchr(argv[i], '/') ? strrchr(argv[i], '/') - argv[i] : 1),
                 strrchr(argv[i], '/') ? argv[i] : ".");
        FILE *cf = fopen(cfg, "rb");
        if (cf) fclose(cf);
        double best = 1e9;
        tokenizer *t = NULL;
        for (int r = 0; r < 3; r++) {
            tok_free(t);
            double t0 = now_s();
            if (tok_load(argv[i], cf ? cfg : NULL, &t)) {
                fprintf(stderr, "%s: %s\n", argv[i], moe_errmsg());
                return 1;
            }
            double el = now_s() - t0;
            if (el < best) best = el;
        }
        int32_t *ids = NULL;
        size_t n = 0;
        tok_encode(t, text, len, 0, &ids, &n); /* warm-up: fills the word cache */
        free(ids);
        long reps = 0;
        double t0 = now_s(), el;
        do {
            tok_encode(t, text, len, 0, &ids, &n);
            free(ids);
            reps++;
            el = now_s() - t0;
        } while (el < seconds);
        double enc = (double)len * (double)reps / el / 1e6;
        tok_encode(t, text, len, 0, &ids, &n);
        /* decode the whole list, and one id at a time through the detokenizer */
        long drep = 0;
        t0 = now_s();
        do {
            char *s;
            size_t sl;
            tok_decode(t, ids, n, 0, &s, &sl);
            free(s);
            drep++;
            el = now_s() - t0;
        } while (el < seconds / 2);
        double dec = (double)n * (double)drep / el / 1e6;
        detok *d;
        detok_new(t, 0, &d);
        long srep = 0;
        t0 = now_s();
        do {
            char *s = NULL;
            size_t sl = 0;
            for (size_t k = 0; k < n; k++) detok_push(d, ids[k], &s, &sl);
            detok_flush(d, &s, &sl);
            free(s);
            srep++;
            el = now_s() - t0;
        } while (el < seconds / 2);
        double str = (double)n * (double)srep / el / 1e6;
        detok_free(d);
        printf("moe-bench %-12s load %7.1f ms  encode %6.2f MB/s  (%zu tokens, %zu bytes x %ld)  decode %5.1f Mtok/s  "
               "stream %5.1f Mtok/s\n",
               name, 1e3 * best, enc, n, len, reps, dec, str);
        fflush(stdout);
        free(ids);
        tok_free(t);
    }
    free(text);
    return 0;
}
