/* xprofile.h — expert profiles: how often the router chose each expert of
 * each MoE layer over a calibration text (`moe profile` writes one), so that
 * offloading can pin a layer's hottest experts in its cache.
 *
 * On disk a profile is a small JSON file (docs/PROFILE.md gives the format):
 * the model's shape (model_type, n_layers, n_experts, top_k), the tokens
 * counted and, per MoE layer, counts[n_experts]. xp_read trusts nothing in
 * it: every field is checked, and sizes are capped before anything is
 * allocated. This module knows nothing of the model's internals; the caller
 * hands it the shape (moe_config and which layers are MoE).
 *
 * Thread-safety: a profile is plain data; read-only use from many threads is
 * safe, the functions keep no state.
 */
#ifndef MOE_EXPERTS_XPROFILE_H
#define MOE_EXPERTS_XPROFILE_H

#include <stddef.h>
#include <stdint.h>

#include "moe.h"

#define XP_FORMAT "moe-expert-profile"
#define XP_VERSION 1
/* Caps on what a file may claim, so a hostile one cannot ask for a huge
 * allocation: real models have at most a few hundred layers and experts. */
#define XP_MAX_LAYERS 4096
#define XP_MAX_EXPERTS 65536
#define XP_MAX_TOKENS ((int64_t)1 << 46) /* tokens x top_k fits an int64 */
#define XP_MAX_FILE_BYTES ((size_t)256 << 20)

typedef struct xp_profile {
    char model_type[32]; /* config.json's model_type, NUL-terminated */
    char *text;          /* the calibration text's name (owned), or NULL */
    int n_layers;        /* all layers of the model, dense ones included */
    int n_experts;       /* experts per MoE layer */
    int top_k;           /* experts the router picks per token */
    int n_moe;           /* MoE layers: those with counts */
    int64_t tokens;      /* token positions counted */
    int *row;            /* [n_layers] the layer's row of counts, -1 for a dense layer */
    int64_t *counts;     /* [n_moe x n_experts] times the router chose each expert;
                            in each row 0 <= count <= tokens, sum = tokens x top_k */
} xp_profile;

/* A profile of a model of this shape with every count 0: is_moe[n_layers]
 * says which layers have counts. MOE_EINVAL on a shape outside the caps
 * above or without a MoE layer, MOE_ENOMEM. Free with xp_free. */
moe_status xp_new(const char *model_type, int n_layers, int n_experts, int top_k, const unsigned char *is_moe,
                  xp_profile **out);
void xp_free(xp_profile *p);

/* Layer l's counts [n_experts] (writable), or NULL when l is dense or out of range. */
int64_t *xp_counts(const xp_profile *p, int l);

/* Whether p holds together: the caps, ranges, and every row's counts within
 * [0, tokens] and summing to tokens x top_k. MOE_EFORMAT with a message
 * prefixed by `name` when not. xp_write and xp_parse call it. */
moe_status xp_validate(const xp_profile *p, const char *name);

/* p as the JSON text of a profile file: *out[*len], NUL-terminated, malloc'd
 * (the caller frees). MOE_EFORMAT when p is not valid (xp_validate, `name`
 * in the message), MOE_ENOMEM. */
moe_status xp_format(const xp_profile *p, const char *name, char **out, size_t *len);
/* Writes p as JSON to `path`, through path.tmp renamed into place, so a
 * failure never leaves a partial profile under the real name. MOE_EFORMAT
 * when p is not valid (xp_validate), MOE_EIO when the file cannot be
 * written (the message names it). */
moe_status xp_write(const char *path, const xp_profile *p);

/* Parses json[len] (the contents of `name`, used in messages) into a new
 * profile (*out; free with xp_free). MOE_EFORMAT with a one-line message
 * ("<name>: layers[2]: counts has 7 values, expected n_experts = 8") on
 * anything malformed: bad JSON, another format or version, missing or
 * mistyped fields, values out of range, a layer out of range or given
 * twice, no MoE layer. Fields it does not know are ignored. On failure *out
 * is NULL and nothing is left allocated. */
moe_status xp_parse(const char *json, size_t len, const char *name, xp_profile **out);
/* xp_parse of the file at `path`; MOE_EIO when it cannot be read, MOE_EFORMAT
 * also when it is larger than XP_MAX_FILE_BYTES. */
moe_status xp_read(const char *path, xp_profile **out);

/* Whether p was made for a model of this shape: c's model_type, n_layers and
 * n_experts, and is_moe[c->n_layers] the same MoE layers. MOE_EINVAL with a
 * message naming `name` (the profile's file) and the first difference. */
moe_status xp_check_model(const xp_profile *p, const char *name, const moe_config *c, const unsigned char *is_moe);

/* The n most frequently chosen experts of MoE layer l, most frequent first,
 * ties to the lower index, into experts[n] (n <= n_experts). Returns the
 * number written: n, or 0 when l is not a MoE layer of p or n is out of range. */
int xp_hottest(const xp_profile *p, int l, int n, int *experts);

#endif
