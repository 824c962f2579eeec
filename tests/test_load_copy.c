/* test_load_copy.c — the weights copied into memory at load (moe_load_params.load
 * = MOE_LOAD_COPY) give bit for bit the logits of the same weights used from the
 * files' mappings (MOE_LOAD_MMAP): a prompt in one batch, then token by token
 * (the decode kernels), on the default ISA. Also: what each mode reports as
 * copied, auto's choice with little memory, and bad modes refused.
 * usage: test_load_copy MODEL_DIR... */
#include <stdlib.h>
#include <string.h>

#include "moe.h"
#include "test.h"

#define N_PROMPT 6
#define N_DECODE 4

static moe_model *load(const char *dir, moe_load_mode mode, moe_status *st) {
    moe_load_params lp;
    moe_load_params_defaults(&lp);
    lp.load = mode;
    moe_model *m = NULL;
    *st = moe_model_load(dir, &lp, &m);
    return m;
}

/* Logits [(N_PROMPT + N_DECODE) x V] of a fixed token sequence; NULL on error. */
static float *run(moe_model *m, const char *what) {
    const moe_config *c = moe_model_config(m);
    int V = c->vocab_size, n = N_PROMPT + N_DECODE;
    float *y = malloc(sizeof *y * (size_t)n * (size_t)V);
    int32_t tok[N_PROMPT + N_DECODE];
    for (int i = 0; i < n; i++) tok[i] = (int32_t)((7 + 13 * i) % V);
    moe_seq_params sp;
    moe_seq_params_defaults(&sp);
    sp.n_ctx = n + 1;
    moe_seq *s = NULL;
    moe_status st = y ? moe_seq_new(m, &sp, &s) : MOE_ENOMEM;
    if (!st) st = moe_seq_eval(s, tok, N_PROMPT, y, 1);
    for (int i = N_PROMPT; i < n && !st; i++) st = moe_seq_eval(s, tok + i, 1, y + (size_t)i * (size_t)V, 0);
    CHECK(st == MOE_OK, "%s: eval: %s", what, moe_errmsg());
    moe_seq_free(s);
    if (st) free(y);
    return st ? NULL : y;
}

static void check_model(const char *dir) {
    moe_status st;
    moe_model *mm = load(dir, MOE_LOAD_MMAP, &st);
    CHECK(st == MOE_OK, "%s: load (mmap): %s", dir, moe_errmsg());
    moe_model *mc = load(dir, MOE_LOAD_COPY, &st);
    CHECK(st == MOE_OK, "%s: load (copy): %s", dir, moe_errmsg());
    if (!mm || !mc) goto out;
    const moe_config *c = moe_model_config(mm);
    int64_t copied = moe_model_copied_bytes(mc);
    CHECK(moe_model_copied_bytes(mm) == 0, "%s: mmap: %lld bytes copied", dir, (long long)moe_model_copied_bytes(mm));
    /* every matrix copied; the float32 vectors (norms) are the model's own buffers already */
    CHECK(copied > c->weight_bytes * 9 / 10 && copied <= c->weight_bytes, "%s: copy: %lld bytes copied of %lld", dir,
          (long long)copied, (long long)c->weight_bytes);
    float *a = run(mm, "mmap"), *b = run(mc, "copy");
    size_t n = (size_t)(N_PROMPT + N_DECODE) * (size_t)c->vocab_size, diff = 0;
    for (size_t i = 0; a && b && i < n; i++) diff += memcmp(&a[i], &b[i], sizeof *a) != 0;
    CHECK(a && b && diff == 0, "%s: %zu of %zu logits differ between the mapped and the copied weights", dir, diff, n);
    printf("%s: %.3f MB copied, %zu logits identical\n", dir, (double)copied / 1e6, n);
    free(a);
    free(b);
out:
    moe_model_free(mm);
    moe_model_free(mc);
}

/* Refusals: a mode out of range; copy without the memory for it (auto then maps). */
static void check_errors(const char *dir) {
    moe_status st;
    moe_model *m = load(dir, (moe_load_mode)7, &st);
    CHECK(st == MOE_EINVAL && !m && strstr(moe_errmsg(), "load mode 7"), "bad mode: %s, %s", moe_status_name(st), moe_errmsg());
    setenv("MOE_TEST_MEM_AVAILABLE", "1000", 1);
    m = load(dir, MOE_LOAD_COPY, &st);
    CHECK(st == MOE_ENOMEM && !m && strstr(moe_errmsg(), "not enough memory to copy the weights"),
          "copy without memory: %s, %s", moe_status_name(st), moe_errmsg());
    m = load(dir, MOE_LOAD_AUTO, &st);
    CHECK(st == MOE_OK && m && moe_model_copied_bytes(m) == 0, "auto without memory: %s, %s, %lld bytes copied",
          moe_status_name(st), moe_errmsg(), m ? (long long)moe_model_copied_bytes(m) : -1LL);
    moe_model_free(m);
    unsetenv("MOE_TEST_MEM_AVAILABLE");
    m = load(dir, MOE_LOAD_AUTO, &st);
    CHECK(st == MOE_OK && m && moe_model_copied_bytes(m) > 0, "auto with memory: %s, %s", moe_status_name(st), moe_errmsg());
    moe_model_free(m);
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: test_load_copy MODEL_DIR...\n");
        return 2;
    }
    for (int i = 1; i < argc; i++) check_model(argv[i]);
    check_errors(argv[1]);
    TEST_DONE();
}
