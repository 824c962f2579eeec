/* fuzz_tokenizer.c — libFuzzer harness for the tokenizer (built with
 * -DMOE_FUZZ=ON and clang; see tests/tokenizer/tests.cmake).
 *
 * The first input byte picks the target:
 *   even: the rest is a tokenizer.json; when it loads, a few strings are
 *         encoded and ids decoded and streamed through it;
 *   odd:  the rest is text (any bytes) and ids for the tokenizers named by
 *         $MOE_FUZZ_TOKENIZERS (colon-separated tokenizer.json paths).
 * Nothing may crash, leak or hang; errors are fine.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "src/text/tok_internal.h"
#include "src/text/tokenizer.h"

static tokenizer *g_toks[8];
static int g_n;

int LLVMFuzzerInitialize(int *argc, char ***argv) {
    (void)argc;
    (void)argv;
    const char *env = getenv("MOE_FUZZ_TOKENIZERS");
    if (!env) return 0;
    char *list = strdup(env), *save = NULL;
    for (char *p = strtok_r(list, ":", &save); p && g_n < 8; p = strtok_r(NULL, ":", &save))
        if (tok_load(p, NULL, &g_toks[g_n]) == MOE_OK) g_n++;
    free(list);
    return 0;
}

static void exercise(const tokenizer *t, const uint8_t *data, size_t n) {
    int32_t *ids = NULL;
    size_t m = 0;
    if (tok_encode(t, (const char *)data, n, n & 1, &ids, &m) == MOE_OK) {
        char *s = NULL;
        size_t l = 0;
        tok_decode(t, ids, m, 0, &s, &l);
        free(s);
    }
    free(ids);
    /* the bytes as little-endian ids, decoded and streamed */
    size_t k = n / 4 > 64 ? 64 : n / 4;
    int32_t rid[64];
    for (size_t i = 0; i < k; i++) {
        uint32_t v;
        memcpy(&v, data + 4 * i, 4);
        rid[i] = (int32_t)(v % (uint32_t)(tok_vocab_size(t) + 8)) - 4;
    }
    char *s = NULL;
    size_t l = 0;
    tok_decode(t, rid, k, (int)(n & 2), &s, &l);
    free(s);
    detok *d;
    if (detok_new(t, (int)(n & 4), &d) == MOE_OK) {
        char *o = NULL;
        size_t ol = 0;
        for (size_t i = 0; i < k; i++) detok_push(d, rid[i], &o, &ol);
        detok_flush(d, &o, &ol);
        free(o);
        detok_free(d);
    }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    if (size < 1) return 0;
    if ((data[0] & 1) == 0) {
        tokenizer *t = NULL;
        if (tok_load_mem((const char *)data + 1, size - 1, "fuzz.json", NULL, &t) == MOE_OK) {
            static const char *texts[] = {"Hello world", " a\xcc\x81 \xe2\x96\x81x 12 <s>\xff", ""};
            for (int i = 0; i < 3; i++) exercise(t, (const uint8_t *)texts[i], strlen(texts[i]));
            exercise(t, data, size > 64 ? 64 : size);
            tok_free(t);
        }
        return 0;
    }
    for (int i = 0; i < g_n; i++) exercise(g_toks[i], data + 1, size - 1);
    return 0;
}
