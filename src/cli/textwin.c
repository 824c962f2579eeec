/* textwin.c — a text file as moe perplexity and moe profile feed it to a
 * model: tokenized whole without special tokens, then cut into windows of
 * at most --ctx tokens, each starting with BOS when the model has one, and
 * each run from an empty cache (see cli.h). */
#include <stdlib.h>
#include <string.h>

#include "cli.h"

char *cli_read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    char *text = f ? cli_read_all(f, len) : NULL;
    if (f) fclose(f);
    if (!text) cli_fail("%s: cannot read", path);
    return text;
}

int cli_text_open(cli_text *t, const char *text, size_t len, const char *dir, const moe_config *c, int ctx,
                  size_t max) {
    memset(t, 0, sizeof *t);
    moe_tokenizer *tok = NULL;
    moe_status st;
    if ((st = moe_tokenizer_load(dir, &tok)) || (st = moe_tokenize(tok, text, len, 0, &t->ids, &t->n))) {
        moe_tokenizer_free(tok);
        return cli_fail_status(st);
    }
    t->bos = moe_tokenizer_bos(tok) >= 0 ? moe_tokenizer_bos(tok) : c->bos_token_id;
    moe_tokenizer_free(tok);
    if (max && t->n > max) t->n = max;
    t->per = t->bos >= 0 ? (size_t)ctx - 1 : (size_t)ctx;
    t->windows = (t->n + t->per - 1) / t->per;
    if (!(t->window = malloc((size_t)ctx * sizeof *t->window))) {
        cli_text_close(t);
        return cli_fail("out of memory");
    }
    return 0;
}

size_t cli_text_window(cli_text *t, size_t i) {
    size_t off = i * t->per, k = t->n - off < t->per ? t->n - off : t->per, lead = t->bos >= 0;
    if (lead) t->window[0] = t->bos;
    memcpy(t->window + lead, t->ids + off, k * sizeof *t->window);
    return k + lead;
}

void cli_text_close(cli_text *t) {
    moe_free(t->ids);
    free(t->window);
    memset(t, 0, sizeof *t);
}
