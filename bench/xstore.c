/* bench/xstore.c — speed of the expert store: xs_checksum on one core (in
 * GB/s, over a buffer that fits in L2 and one that does not fit in any
 * cache), and optionally reading a model's experts back through a store
 * (xs_read: O_DIRECT where the filesystem has it, MOE_XSTORE_DIRECT=0: not):
 * from its pack (the read plus the checksum) or from the model's own files.
 *   usage: bench_xstore [MODEL_DIR PACK_PATH [pack|model [THREADS [N]]]]
 *   With a model, PACK_PATH is built first when it is missing or stale
 *   (pack only). THREADS readers (default 1) share N experts (default all)
 *   taken in a shuffled order, as a decode's misses come, each read once. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "../src/experts/xstore.h"

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* Best of 5 passes of at least `bytes` hashed, over buf[n]. */
static double checksum_gbs(const unsigned char *buf, size_t n, size_t bytes) {
    double best = 0;
    volatile uint64_t sink = 0;
    for (int pass = 0; pass < 5; pass++) {
        size_t done = 0;
        double t0 = now_s();
        while (done < bytes) {
            sink += xs_checksum(buf, n);
            done += n;
        }
        double gbs = (double)done / (now_s() - t0) / 1e9;
        if (gbs > best) best = gbs;
    }
    (void)sink;
    return best;
}

typedef struct job {
    xstore *x;
    const int *order;      /* [n] layer * E + expert */
    int n, E;
    uint64_t slot;
    int next, failed;      /* next item; a read failed */
    pthread_mutex_t mu;
} job;

static void *reader(void *arg) {
    job *j = arg;
    unsigned char *buf = aligned_alloc(XS_ALIGN, j->slot);
    for (;;) {
        pthread_mutex_lock(&j->mu);
        int i = j->failed || !buf ? j->n : j->next++;
        pthread_mutex_unlock(&j->mu);
        if (i >= j->n) break;
        if (xs_read(j->x, j->order[i] / j->E, j->order[i] % j->E, buf)) {
            fprintf(stderr, "%s\n", moe_errmsg());
            pthread_mutex_lock(&j->mu);
            j->failed = 1;
            pthread_mutex_unlock(&j->mu);
        }
    }
    free(buf);
    return NULL;
}

static int bench_read(const char *dir, const char *path, int model, int threads, int want) {
    moe_load_params lp;
    moe_load_params_defaults(&lp);
    lp.n_threads = 1;
    lp.offload = 0; /* the store is opened here, over the mapped experts */
    moe_model *m;
    xstore *x;
    int built = 0;
    char cdir[4096];
    snprintf(cdir, sizeof cdir, "%s", path);
    char *slash = strrchr(cdir, '/');
    if (slash) *slash = 0;
    if (moe_model_load(dir, &lp, &m) ||
        (model ? xs_open_model(m, cdir, &x) : xs_open_or_build(m, path, NULL, NULL, &built, NULL, 0, &x))) {
        fprintf(stderr, "%s\n", moe_errmsg());
        return 1;
    }
    const moe_config *c = moe_model_config(m);
    job j = {.x = x, .E = c->n_experts};
    int *order = malloc(sizeof *order * (size_t)c->n_layers * (size_t)c->n_experts);
    for (int l = 0; l < c->n_layers; l++) {
        if (xs_slot_bytes(x, l) > j.slot) j.slot = xs_slot_bytes(x, l);
        for (int e = 0; xs_record_of(x, l, 0) && e < c->n_experts; e++) order[j.n++] = l * c->n_experts + e;
    }
    uint64_t s = 0x9e3779b97f4a7c15u;
    for (int i = j.n - 1; i > 0; i--) { /* Fisher-Yates with xorshift */
        s ^= s << 13, s ^= s >> 7, s ^= s << 17;
        int k = (int)(s % (uint64_t)(i + 1)), t = order[i];
        order[i] = order[k], order[k] = t;
    }
    if (want > 0 && want < j.n) j.n = want;
    j.order = order;
    uint64_t bytes = 0, payload = 0;
    for (int i = 0; i < j.n; i++) {
        bytes += xs_read_bytes(x, order[i] / j.E, order[i] % j.E);
        payload += xs_record_of(x, order[i] / j.E, order[i] % j.E)->bytes;
    }
    pthread_mutex_init(&j.mu, NULL);
    pthread_t *t = calloc((size_t)threads, sizeof *t);
    double t0 = now_s();
    for (int i = 0; i < threads; i++) pthread_create(&t[i], NULL, reader, &j);
    for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
    double sec = now_s() - t0;
    if (!j.failed)
        printf("xs_read (%s, %s, %d thread%s): %d experts, %.1f MB read (records %.1f MB) in %.3f s = %.2f GB/s, "
               "%.2f ms an expert%s\n",
               model ? "model files" : "pack", xs_direct(x) ? "O_DIRECT" : "buffered", threads, threads > 1 ? "s" : "", j.n,
               (double)bytes / 1e6, (double)payload / 1e6, sec, (double)bytes / sec / 1e9, 1e3 * sec / j.n,
               built ? ", just built" : "");
    pthread_mutex_destroy(&j.mu);
    free(t);
    free(order);
    xs_close(x);
    moe_model_free(m);
    return j.failed;
}

int main(int argc, char **argv) {
    size_t big = (size_t)256 << 20, small = (size_t)256 << 10;
    unsigned char *buf = aligned_alloc(XS_ALIGN, big);
    if (!buf) return 1;
    for (size_t i = 0; i < big; i++) buf[i] = (unsigned char)(i * 2654435761u >> 13);
    printf("xs_checksum, one core: %.2f GB/s over %zu KiB (cached), %.2f GB/s over %zu MiB (from memory)\n",
           checksum_gbs(buf, small, (size_t)4 << 30), small >> 10, checksum_gbs(buf, big, (size_t)2 << 30), big >> 20);
    free(buf);
    if (argc < 3) return 0;
    int model = argc > 3 && !strcmp(argv[3], "model"), threads = argc > 4 ? atoi(argv[4]) : 1;
    return bench_read(argv[1], argv[2], model, threads > 0 ? threads : 1, argc > 5 ? atoi(argv[5]) : 0);
}
