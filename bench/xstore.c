/* bench/xstore.c — speed of the expert store: xs_checksum on one core (in
 * GB/s, over a buffer that fits in L2 and one that does not fit in any
 * cache), and optionally reading every record of a model's pack back
 * (xs_read: the read plus the checksum, O_DIRECT where the filesystem has it).
 *   usage: bench_xstore [MODEL_DIR PACK_PATH]
 *   With a model, PACK_PATH is built first when it is missing or stale. */
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

static int bench_pack(const char *dir, const char *path) {
    moe_load_params lp;
    moe_load_params_defaults(&lp);
    lp.n_threads = 1;
    lp.offload = 0; /* it packs the mapped experts itself */
    moe_model *m;
    xstore *x;
    int built;
    if (moe_model_load(dir, &lp, &m) || xs_open_or_build(m, path, NULL, NULL, &built, NULL, 0, &x)) {
        fprintf(stderr, "%s\n", moe_errmsg());
        return 1;
    }
    const moe_config *c = moe_model_config(m);
    uint64_t slot = 0;
    for (int l = 0; l < c->n_layers; l++)
        if (xs_slot_bytes(x, l) > slot) slot = xs_slot_bytes(x, l);
    unsigned char *buf = aligned_alloc(XS_ALIGN, slot);
    double t0 = now_s();
    uint64_t bytes = 0;
    int64_t n = 0;
    for (int l = 0; l < c->n_layers; l++)
        for (int e = 0; xs_record_of(x, l, 0) && e < c->n_experts; e++) {
            if (xs_read(x, l, e, buf)) {
                fprintf(stderr, "%s\n", moe_errmsg());
                return 1;
            }
            bytes += xs_record_of(x, l, e)->bytes;
            n++;
        }
    double s = now_s() - t0;
    printf("xs_read: %lld records, %.1f MB in %.3f s = %.2f GB/s (%s%s)\n", (long long)n, (double)bytes / 1e6, s,
           (double)bytes / s / 1e9, xs_direct(x) ? "O_DIRECT" : "buffered", built ? ", just built" : "");
    free(buf);
    xs_close(x);
    moe_model_free(m);
    return 0;
}

int main(int argc, char **argv) {
    size_t big = (size_t)256 << 20, small = (size_t)256 << 10;
    unsigned char *buf = aligned_alloc(XS_ALIGN, big);
    if (!buf) return 1;
    for (size_t i = 0; i < big; i++) buf[i] = (unsigned char)(i * 2654435761u >> 13);
    printf("xs_checksum, one core: %.2f GB/s over %zu KiB (cached), %.2f GB/s over %zu MiB (from memory)\n",
           checksum_gbs(buf, small, (size_t)4 << 30), small >> 10, checksum_gbs(buf, big, (size_t)2 << 30), big >> 20);
    free(buf);
    return argc == 3 ? bench_pack(argv[1], argv[2]) : 0;
}
