/* cmd_tokenize.c — moe tokenize and moe detokenize: text to token ids and
 * back, with a model's tokenizer.json. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"

static void help_tok(FILE *f) {
    fprintf(f, "usage: moe tokenize (-m DIR | --tokenizer FILE) [--special] [TEXT]\n"
               "  -m DIR            model directory with tokenizer.json (default %s)\n"
               "  --tokenizer FILE  a tokenizer.json file\n"
               "  --special         add BOS/EOS as the model's post-processor does\n"
               "  TEXT              the text; standard input when absent\n"
               "prints the token ids space-separated on one line\n",
            MOE_DEFAULT_MODEL);
}

static void help_detok(FILE *f) {
    fprintf(f, "usage: moe detokenize (-m DIR | --tokenizer FILE) [--skip-special] ID...\n"
               "  -m DIR            model directory with tokenizer.json (default %s)\n"
               "  --tokenizer FILE  a tokenizer.json file\n"
               "  --skip-special    leave out special tokens (BOS, EOS, ...)\n"
               "  ID...             token ids, separate or comma-separated\n",
            MOE_DEFAULT_MODEL);
}

int cmd_tokenize(int argc, char **argv) {
    const char *path = cli_default_model(), *text = NULL, *v;
    int special = 0;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { help_tok(stdout); return 0; }
        else if (!strcmp(a, "--special")) special = 1;
        else if (!strcmp(a, "-m") || !strcmp(a, "--model") || !strcmp(a, "--tokenizer")) { CLI_VALUE(); path = v; }
        else if (a[0] == '-' && a[1]) return cli_fail("tokenize: unknown option %s (moe tokenize --help lists them)", a);
        else if (text) return cli_fail("tokenize: one TEXT argument (quote it), or standard input");
        else text = a;
    }
    moe_tokenizer *t;
    moe_status st = moe_tokenizer_load(path, &t);
    if (st) return cli_fail_status(st);
    size_t len = 0;
    char *in = NULL;
    if (!text) {
        if (!(in = cli_read_all(stdin, &len))) { moe_tokenizer_free(t); return cli_fail("out of memory reading standard input"); }
        text = in;
    } else {
        len = strlen(text);
    }
    int32_t *ids;
    size_t n;
    st = moe_tokenize(t, text, len, special, &ids, &n);
    free(in);
    moe_tokenizer_free(t);
    if (st) return cli_fail_status(st);
    for (size_t i = 0; i < n; i++) printf(i ? " %d" : "%d", ids[i]);
    printf("\n");
    moe_free(ids);
    return 0;
}

int cmd_detokenize(int argc, char **argv) {
    const char *path = cli_default_model(), *v;
    int skip = 0;
    size_t n = 0, cap = 16;
    int32_t *ids = malloc(cap * sizeof *ids);
    if (!ids) return cli_fail("out of memory");
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        if (!strcmp(a, "-h") || !strcmp(a, "--help")) { free(ids); help_detok(stdout); return 0; }
        else if (!strcmp(a, "--skip-special")) skip = 1;
        else if (!strcmp(a, "-m") || !strcmp(a, "--model") || !strcmp(a, "--tokenizer")) {
            if (!(v = cli_value(argc, argv, &i))) { free(ids); return 1; }
            path = v;
        } else if (a[0] == '-' && a[1]) {
            free(ids);
            return cli_fail("detokenize: unknown option %s (moe detokenize --help lists them)", a);
        } else {
            int32_t *more;
            size_t k;
            if (cli_parse_tokens(a, &more, &k)) { free(ids); return 1; }
            if (n + k > cap) {
                while (n + k > cap) cap *= 2;
                int32_t *ni = realloc(ids, cap * sizeof *ni);
                if (!ni) { free(more); free(ids); return cli_fail("out of memory"); }
                ids = ni;
            }
            memcpy(ids + n, more, k * sizeof *more);
            n += k;
            free(more);
        }
    }
    moe_tokenizer *t;
    char *text = NULL;
    moe_status st = moe_tokenizer_load(path, &t);
    if (!st) st = moe_detokenize(t, ids, n, skip, &text);
    moe_tokenizer_free(t);
    free(ids);
    if (st) return cli_fail_status(st);
    printf("%s\n", text);
    moe_free(text);
    return 0;
}
