/* cli.h — shared pieces of the moe subcommands: option parsing helpers and
 * model opening. Each subcommand lives in its own cmd_*.c and includes only
 * moe.h and this header. */
#ifndef MOE_CLI_H
#define MOE_CLI_H

#include <stddef.h>
#include <stdio.h>
#include <stdint.h>

#include "moe.h"

#define MOE_DEFAULT_MODEL "models/tiny-mixtral"

int cmd_logits(int argc, char **argv);
int cmd_generate(int argc, char **argv);
int cmd_info(int argc, char **argv);
int cmd_synth(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_detokenize(int argc, char **argv);
int cmd_chat(int argc, char **argv);
int cmd_serve(int argc, char **argv);
int cmd_perplexity(int argc, char **argv);
int cmd_quantize(int argc, char **argv);
int cmd_profile(int argc, char **argv);
int cmd_pack(int argc, char **argv);

/* Prints "moe: <msg>" to stderr and returns 1 (the exit status). */
int cli_fail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
/* The same with the library's last error message. */
int cli_fail_status(moe_status st);

/* Parses "1,2,3" into a malloc'd array; 0 on success. */
int cli_parse_tokens(const char *s, int32_t **out, size_t *n);
/* Strict number parsing: whole string, in range; 0 on success. */
int cli_int(const char *opt, const char *s, long long lo, long long hi, long long *out);
int cli_float(const char *opt, const char *s, double lo, double hi, double *out);
/* Returns argv[++*i] or NULL (after reporting) when the option has no value. */
const char *cli_value(int argc, char **argv, int *i);

/* Inside an option loop over argv with index i: v = the option's value, or
 * return 1 when it has none. */
#define CLI_VALUE()                                        \
    do {                                                   \
        if (!(v = cli_value(argc, argv, &i))) return 1;    \
    } while (0)

/* models/tiny-mixtral, found from the current directory or beside the
 * executable (build/../models); the plain relative path when neither has it. */
const char *cli_default_model(void);

/* The rest of stream f in a malloc'd, NUL-terminated buffer ([*len] bytes);
 * NULL on a read error or out of memory. */
char *cli_read_all(FILE *f, size_t *len);

/* The whole file at `path` in a malloc'd, NUL-terminated buffer ([*len]
 * bytes); NULL, after reporting "<path>: cannot read", when it cannot be. */
char *cli_read_file(const char *path, size_t *len);

/* A text as moe perplexity and moe profile run it (textwin.c): tokenized
 * whole without special tokens and cut into windows of at most ctx tokens,
 * each with BOS in front when the model has one (the tokenizer's, else
 * config.json's), to be run from an empty cache. */
typedef struct cli_text {
    int32_t *ids;      /* [n] the text's tokens */
    size_t n;
    int32_t bos;       /* -1: none */
    size_t per;        /* text tokens per window: ctx - 1 with BOS, else ctx */
    size_t windows;    /* windows in all: ceil(n / per) */
    int32_t *window;   /* [ctx] the window cli_text_window last filled */
} cli_text;
/* Tokenizes text[len] with the tokenizer of model directory dir (c: that
 * model's config; ctx >= 2), keeping the first `max` tokens (0: all). 0 on
 * success; else reports, returns 1 and *t holds nothing to close. */
int cli_text_open(cli_text *t, const char *text, size_t len, const char *dir, const moe_config *c, int ctx, size_t max);
/* Fills t->window with window i (< t->windows); returns its length, BOS included. */
size_t cli_text_window(cli_text *t, size_t i);
void cli_text_close(cli_text *t);

/* Monotonic clock, seconds. */
double cli_now(void);
/* Peak resident memory of this process, bytes. */
int64_t cli_peak_rss(void);

/* A progress line on stderr for long writes ("writing: 42.0% of 3.84 GB,
 * 210 MB/s, 12 s left"), redrawn at most every half second: pass as a
 * progress callback with a cli_progress_state zeroed before the work. */
typedef struct cli_progress_state { double start, last; const char *what; /* NULL: "writing" */ } cli_progress_state;
void cli_progress(void *state, uint64_t done, uint64_t total);

/* Loads a model with n_threads (0 = all cores), reporting errors. */
int cli_load(const char *dir, int n_threads, moe_model **out);

/* The options of the model itself, the same in every command that runs
 * one: threads and expert offloading (--capacity, --expert-mem, --miss, ...),
 * and --stats. */
typedef struct cli_model_opts {
    moe_load_params lp;
    int stats;                 /* print the expert cache's counters at the end */
    cli_progress_state prog;
} cli_model_opts;
void cli_model_opts_init(cli_model_opts *o);
/* In an option loop: 1 when argv[*i] is a model option (consumed with its
 * value, *i advanced), 0 when it is not, -1 after reporting a bad value. */
int cli_model_opt(cli_model_opts *o, int argc, char **argv, int *i);
/* The help lines of those options. */
void cli_model_help(FILE *f);
/* Loads dir with o: progress while the expert store is built or experts
 * preloaded, then a line saying how the model is offloaded, if it is. */
int cli_load_model(const char *dir, cli_model_opts *o, moe_model **out);
/* With --stats and an offloaded model: the expert cache's counters per
 * layer and in total, on f. */
void cli_model_report(const moe_model *m, const cli_model_opts *o, FILE *f);
/* "12G", "512M", "16MiB", "1048576": bytes (K/M/G/T are powers of 1024); 0 on success. */
int cli_size(const char *opt, const char *s, int64_t *out);

#endif
