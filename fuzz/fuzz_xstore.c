/* fuzz_xstore.c — libFuzzer harness for xs_open, the reader of untrusted
 * expert packs, and xs_read behind it (see fuzz/run.sh).
 *
 * Packs are checked against one model, loaded once from
 * $MOE_FUZZ_XSTORE_MODEL (run.sh: tests/golden-quant/mixtral-q4-g32/model);
 * without it every input is ignored. A valid pack of that model is built at
 * start. An input is
 *     [flags] [layer] [expert] [image ...]
 * and the file xs_open sees is the image, with these flags:
 *   bit 0  reseal: the model's fingerprint and a header checksum of the
 *          image's header written into it first, so that mutations get past
 *          those two checks to the table's;
 *   bit 1  the image laid over the valid pack: the file is the image, then
 *          the valid pack's bytes after it (a short image is a new header
 *          on real records);
 *   bit 2  after a successful open, the file is cut to 4096 x (1 +
 *          [layer]) bytes before the read (a pack truncated while open).
 * When the pack opens, record ([layer], [expert]) is read (when the layer
 * has one) and, when it reads, bound; every part's bytes are touched so ASan
 * sees a layout that points outside the buffer. Nothing may crash or leak;
 * errors are fine, except that a record that reads must carry the model's
 * formats and shapes.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "src/base/file.h"
#include "src/experts/xstore.h"

static moe_model *g_model;
static unsigned char *g_valid; /* [g_valid_n] a valid pack of g_model */
static size_t g_valid_n;
static char g_path[64];
static int g_fd = -1;

static void remove_pack(void) { unlink(g_path); }

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    const char *dir = getenv("MOE_FUZZ_XSTORE_MODEL");
    if (!dir) return 0;
    moe_load_params lp;
    moe_load_params_defaults(&lp);
    lp.n_threads = 1;
    if (moe_model_load(dir, &lp, &g_model)) {
        fprintf(stderr, "fuzz_xstore: %s\n", moe_errmsg());
        exit(1);
    }
    snprintf(g_path, sizeof g_path, "/tmp/fuzz_xstore.%d.pack", (int)getpid());
    char *valid = NULL;
    if (xs_build(g_model, g_path, NULL, NULL) || file_read_all(g_path, (size_t)1 << 30, &valid, &g_valid_n)) {
        fprintf(stderr, "fuzz_xstore: cannot build a valid pack: %s\n", moe_errmsg());
        exit(1);
    }
    g_valid = (unsigned char *)valid;
    g_fd = open(g_path, O_RDWR);
    atexit(remove_pack);
    return 0;
}

/* The file: the image, resealed and laid over the valid pack as flags say. */
static int write_pack(unsigned flags, const uint8_t *img, size_t n) {
    size_t len = flags & 2 && n < g_valid_n ? g_valid_n : n;
    unsigned char *b = malloc(len ? len : 1);
    if (!b) return -1;
    memcpy(b, img, n);
    if (len > n) memcpy(b + n, g_valid + n, len - n);
    if (flags & 1) xs_reseal(g_model, b, len); /* fails (harmlessly) on a short image */
    int rc = ftruncate(g_fd, 0) || (len && pwrite(g_fd, b, len, 0) != (ssize_t)len) ? -1 : 0;
    free(b);
    return rc;
}

static void touch(const unsigned char *p, size_t n, volatile unsigned *sum) {
    if (n) *sum += p[0] + p[n - 1];
}

static void check_weight(const wtensor *got, const wtensor *want, volatile unsigned *sum) {
    if (got->fmt != want->fmt || got->rows != want->rows || got->cols != want->cols || got->row_bytes != want->row_bytes)
        abort();
    touch(got->data, (size_t)got->rows * got->row_bytes, sum);
    if (wfmt_is_quant(got->fmt)) {
        if (got->group != want->group || got->sfmt != want->sfmt || got->sb_row_bytes != want->sb_row_bytes) abort();
        touch(got->scales, (size_t)got->rows * got->sb_row_bytes, sum);
        touch(got->biases, (size_t)got->rows * got->sb_row_bytes, sum);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (!g_model || g_fd < 0 || size < 3) return 0;
    unsigned flags = data[0];
    int l = data[1] % g_model->cfg.pub.n_layers, e = data[2] % g_model->cfg.pub.n_experts;
    if (write_pack(flags, data + 3, size - 3)) return 0;
    xstore *x = NULL;
    if (xs_open(g_model, g_path, &x) != MOE_OK) {
        if (x) abort(); /* a failed open leaves nothing behind */
        return 0;
    }
    const xs_record *r = xs_record_of(x, l, e);
    if (r) {
        if (flags & 4 && ftruncate(g_fd, (off_t)XS_ALIGN * (1 + data[1]))) abort();
        unsigned char *buf = aligned_alloc(XS_ALIGN, xs_slot_bytes(x, l));
        if (!buf) abort();
        if (xs_read(x, l, e, buf) == MOE_OK) {
            expert ex;
            volatile unsigned sum = 0;
            xs_bind(r, buf, &ex);
            const expert *want = &g_model->layers[l].experts[e];
            check_weight(&ex.gate, &want->gate, &sum);
            check_weight(&ex.up, &want->up, &sum);
            check_weight(&ex.down, &want->down, &sum);
        }
        free(buf);
    }
    xs_close(x);
    return 0;
}
