/* xprofile.c — expert profiles (xprofile.h): the profile in memory, its JSON
 * file written one line per layer, and a reader that checks every field of
 * an untrusted file before it allocates or uses anything. */
#include "xprofile.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../base/err.h"
#include "../base/file.h"

#define XP_MAX_TEXT 4096 /* bytes of the text's name */

/* ----------------------------------------------------------- in memory -- */

moe_status xp_new(const char *model_type, int n_layers, int n_experts, int top_k, const unsigned char *is_moe,
                  xp_profile **out) {
    *out = NULL;
    if (!model_type || !model_type[0] || strlen(model_type) >= sizeof((xp_profile *)0)->model_type)
        return moe_err(MOE_EINVAL, "profile: model_type must be 1 to 31 bytes");
    if (n_layers < 1 || n_layers > XP_MAX_LAYERS || n_experts < 1 || n_experts > XP_MAX_EXPERTS || top_k < 1 ||
        top_k > n_experts)
        return moe_err(MOE_EINVAL, "profile: %d layers, %d experts, top_k %d is not a shape a profile can hold",
                       n_layers, n_experts, top_k);
    int n_moe = 0;
    for (int l = 0; l < n_layers; l++)
        n_moe += is_moe[l] != 0;
    if (!n_moe) return moe_err(MOE_EINVAL, "profile: the model has no MoE layer");
    xp_profile *p = calloc(1, sizeof *p);
    if (!p) return moe_err(MOE_ENOMEM, "out of memory");
    p->row = malloc((size_t)n_layers * sizeof *p->row);
    p->counts = calloc((size_t)n_moe * (size_t)n_experts, sizeof *p->counts);
    if (!p->row || !p->counts) {
        xp_free(p);
        return moe_err(MOE_ENOMEM, "out of memory");
    }
    snprintf(p->model_type, sizeof p->model_type, "%s", model_type);
    p->n_layers = n_layers;
    p->n_experts = n_experts;
    p->top_k = top_k;
    for (int l = 0; l < n_layers; l++)
        p->row[l] = is_moe[l] ? p->n_moe++ : -1;
    *out = p;
    return MOE_OK;
}

void xp_free(xp_profile *p) {
    if (!p) return;
    free(p->text);
    free(p->row);
    free(p->counts);
    free(p);
}

int64_t *xp_counts(const xp_profile *p, int l) {
    if (l < 0 || l >= p->n_layers || p->row[l] < 0) return NULL;
    return p->counts + (size_t)p->row[l] * (size_t)p->n_experts;
}

/* Whether s is valid UTF-8 without control characters, so it prints on one line. */
static int printable(const char *s) {
    for (const unsigned char *c = (const unsigned char *)s; *c; c++)
        if (*c < 0x20 || *c == 0x7f) return 0;
    json_t *j = json_string(s); /* NULL when not valid UTF-8 */
    json_decref(j);
    return j != NULL;
}

moe_status xp_validate(const xp_profile *p, const char *name) {
    if (!p->model_type[0] || !printable(p->model_type))
        return moe_err(MOE_EFORMAT, "%s: model_type must be a non-empty line of text", name);
    if (p->text && (strlen(p->text) > XP_MAX_TEXT || !printable(p->text)))
        return moe_err(MOE_EFORMAT, "%s: text must be a line of UTF-8 text of at most %d bytes", name, XP_MAX_TEXT);
    if (p->tokens < 0 || p->tokens > XP_MAX_TOKENS)
        return moe_err(MOE_EFORMAT, "%s: tokens %lld is out of range [0, %lld]", name, (long long)p->tokens,
                       (long long)XP_MAX_TOKENS);
    for (int l = 0; l < p->n_layers; l++) {
        const int64_t *c = xp_counts(p, l);
        if (!c) continue;
        int64_t sum = 0;
        for (int e = 0; e < p->n_experts; e++) {
            if (c[e] < 0 || c[e] > p->tokens)
                return moe_err(MOE_EFORMAT, "%s: layer %d: count %lld of expert %d is outside [0, tokens = %lld]", name,
                               l, (long long)c[e], e, (long long)p->tokens);
            sum += c[e]; /* <= n_experts x tokens: no overflow under the caps */
        }
        if (sum != p->tokens * p->top_k)
            return moe_err(MOE_EFORMAT, "%s: layer %d: counts sum to %lld, expected tokens x top_k = %lld", name, l,
                           (long long)sum, (long long)(p->tokens * p->top_k));
    }
    return MOE_OK;
}

/* ------------------------------------------------------------- writing -- */

/* s as a JSON string literal on f. */
static void put_string(FILE *f, const char *s) {
    json_t *j = json_string(s);
    char *lit = j ? json_dumps(j, JSON_ENCODE_ANY) : NULL;
    fputs(lit ? lit : "\"\"", f);
    free(lit);
    json_decref(j);
}

static void put_profile(FILE *f, const xp_profile *p) {
    fprintf(f, "{\n  \"format\": \"%s\",\n  \"version\": %d,\n  \"model_type\": ", XP_FORMAT, XP_VERSION);
    put_string(f, p->model_type);
    fprintf(f, ",\n  \"n_layers\": %d,\n  \"n_experts\": %d,\n  \"top_k\": %d,\n  \"tokens\": %lld,\n", p->n_layers,
            p->n_experts, p->top_k, (long long)p->tokens);
    if (p->text) {
        fputs("  \"text\": ", f);
        put_string(f, p->text);
        fputs(",\n", f);
    }
    fputs("  \"layers\": [", f);
    for (int l = 0, first = 1; l < p->n_layers; l++) {
        const int64_t *c = xp_counts(p, l);
        if (!c) continue;
        fprintf(f, "%s\n    {\"layer\": %d, \"counts\": [", first ? "" : ",", l);
        for (int e = 0; e < p->n_experts; e++)
            fprintf(f, "%s%lld", e ? ", " : "", (long long)c[e]);
        fputs("]}", f);
        first = 0;
    }
    fputs("\n  ]\n}\n", f);
}

moe_status xp_format(const xp_profile *p, const char *name, char **out, size_t *len) {
    *out = NULL;
    *len = 0;
    moe_status st = xp_validate(p, name);
    if (st) return st;
    FILE *f = open_memstream(out, len);
    if (!f) return moe_err(MOE_ENOMEM, "out of memory");
    put_profile(f, p);
    if (ferror(f) | fclose(f)) {
        free(*out);
        *out = NULL;
        *len = 0;
        return moe_err(MOE_ENOMEM, "out of memory");
    }
    return MOE_OK;
}

moe_status xp_write(const char *path, const xp_profile *p) {
    char *json;
    size_t len, n = strlen(path) + 5;
    moe_status st = xp_format(p, path, &json, &len);
    if (st) return st;
    char *tmp = malloc(n);
    if (!tmp) {
        free(json);
        return moe_err(MOE_ENOMEM, "out of memory");
    }
    snprintf(tmp, n, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f) {
        st = moe_err(MOE_EIO, "%s: cannot create: %s", tmp, strerror(errno));
    } else {
        errno = 0;
        int e = fwrite(json, 1, len, f) == len ? 0 : errno ? errno : EIO;
        if (fclose(f) && !e) e = errno;
        if (!e && rename(tmp, path)) e = errno;
        if (e) {
            st = moe_err(MOE_EIO, "%s: cannot write: %s", path, strerror(e));
            remove(tmp);
        }
    }
    free(tmp);
    free(json);
    return st;
}

/* ------------------------------------------------------------- reading -- */

/* obj[key] as an integer in [lo, hi] into *out; `where` prefixes messages. */
static moe_status get_int(const json_t *obj, const char *key, long long lo, long long hi, const char *name,
                          const char *where, long long *out) {
    json_t *v = json_object_get(obj, key);
    if (!v) return moe_err(MOE_EFORMAT, "%s: %s\"%s\" is missing", name, where, key);
    if (!json_is_integer(v)) return moe_err(MOE_EFORMAT, "%s: %s\"%s\" must be an integer", name, where, key);
    long long x = json_integer_value(v);
    if (x < lo || x > hi)
        return moe_err(MOE_EFORMAT, "%s: %s\"%s\" %lld is out of range [%lld, %lld]", name, where, key, x, lo, hi);
    *out = x;
    return MOE_OK;
}

/* The header fields every profile has; `shape` gets n_layers, n_experts, top_k, tokens. */
static moe_status parse_header(const json_t *root, const char *name, const char **model_type, long long shape[4]) {
    const json_t *fmt = json_object_get(root, "format");
    if (!json_is_string(fmt) || strcmp(json_string_value(fmt), XP_FORMAT))
        return moe_err(MOE_EFORMAT, "%s: not an expert profile (\"format\" is not \"%s\")", name, XP_FORMAT);
    const json_t *ver = json_object_get(root, "version");
    if (!json_is_integer(ver)) return moe_err(MOE_EFORMAT, "%s: \"version\" must be an integer", name);
    if (json_integer_value(ver) != XP_VERSION)
        return moe_err(MOE_EFORMAT, "%s: profile version %lld is not supported (this moe reads version %d)", name,
                       (long long)json_integer_value(ver), XP_VERSION);
    const json_t *mt = json_object_get(root, "model_type");
    if (!json_is_string(mt)) return moe_err(MOE_EFORMAT, "%s: \"model_type\" must be a string", name);
    if (!json_string_length(mt) || json_string_length(mt) >= sizeof((xp_profile *)0)->model_type)
        return moe_err(MOE_EFORMAT, "%s: \"model_type\" must be 1 to 31 bytes", name);
    *model_type = json_string_value(mt);
    moe_status st;
    if ((st = get_int(root, "n_layers", 1, XP_MAX_LAYERS, name, "", &shape[0])) ||
        (st = get_int(root, "n_experts", 1, XP_MAX_EXPERTS, name, "", &shape[1])) ||
        (st = get_int(root, "top_k", 1, shape[1], name, "", &shape[2])) ||
        (st = get_int(root, "tokens", 0, XP_MAX_TOKENS, name, "", &shape[3])))
        return st;
    const json_t *text = json_object_get(root, "text");
    if (text && !json_is_string(text)) return moe_err(MOE_EFORMAT, "%s: \"text\" must be a string", name);
    return MOE_OK;
}

/* First pass over "layers": each entry an object with a "layer" in range,
 * given once, and "counts" an array of n_experts values; is_moe[n_layers] marks them. */
static moe_status scan_layers(const json_t *layers, const char *name, int n_layers, int n_experts,
                              unsigned char *is_moe) {
    size_t i;
    const json_t *ent;
    char where[48];
    json_array_foreach(layers, i, ent) {
        snprintf(where, sizeof where, "layers[%zu]: ", i);
        if (!json_is_object(ent)) return moe_err(MOE_EFORMAT, "%s: %smust be an object", name, where);
        long long l;
        moe_status st = get_int(ent, "layer", 0, n_layers - 1, name, where, &l);
        if (st) return st;
        if (is_moe[l]) return moe_err(MOE_EFORMAT, "%s: %slayer %lld is given twice", name, where, l);
        is_moe[l] = 1;
        const json_t *c = json_object_get(ent, "counts");
        if (!json_is_array(c)) return moe_err(MOE_EFORMAT, "%s: %s\"counts\" must be an array", name, where);
        if (json_array_size(c) != (size_t)n_experts)
            return moe_err(MOE_EFORMAT, "%s: %scounts has %zu values, expected n_experts = %d", name, where,
                           json_array_size(c), n_experts);
    }
    if (i == 0) return moe_err(MOE_EFORMAT, "%s: \"layers\" is empty: a profile needs a MoE layer", name);
    return MOE_OK;
}

/* Second pass: the counts into p (the shape already checked by scan_layers). */
static moe_status fill_counts(const json_t *layers, const char *name, xp_profile *p) {
    size_t i;
    const json_t *ent;
    json_array_foreach(layers, i, ent) {
        int l = (int)json_integer_value(json_object_get(ent, "layer"));
        const json_t *c = json_object_get(ent, "counts");
        int64_t *dst = xp_counts(p, l);
        for (int e = 0; e < p->n_experts; e++) {
            const json_t *v = json_array_get(c, (size_t)e);
            if (!json_is_integer(v))
                return moe_err(MOE_EFORMAT, "%s: layers[%zu]: counts[%d] must be an integer", name, i, e);
            if (json_integer_value(v) < 0)
                return moe_err(MOE_EFORMAT, "%s: layers[%zu]: counts[%d] is negative (%lld)", name, i, e,
                               (long long)json_integer_value(v));
            dst[e] = json_integer_value(v);
        }
    }
    return MOE_OK;
}

static moe_status parse_root(const json_t *root, const char *name, xp_profile **out) {
    if (!json_is_object(root)) return moe_err(MOE_EFORMAT, "%s: not an expert profile (not a JSON object)", name);
    const char *model_type = NULL;
    long long shape[4];
    moe_status st = parse_header(root, name, &model_type, shape);
    if (st) return st;
    const json_t *layers = json_object_get(root, "layers");
    if (!json_is_array(layers)) return moe_err(MOE_EFORMAT, "%s: \"layers\" must be an array", name);
    unsigned char *is_moe = calloc((size_t)shape[0], 1);
    if (!is_moe) return moe_err(MOE_ENOMEM, "out of memory");
    xp_profile *p = NULL;
    if (!(st = scan_layers(layers, name, (int)shape[0], (int)shape[1], is_moe)) &&
        !(st = xp_new(model_type, (int)shape[0], (int)shape[1], (int)shape[2], is_moe, &p))) {
        const json_t *text = json_object_get(root, "text");
        p->tokens = shape[3];
        if (text && !(p->text = strdup(json_string_value(text)))) st = moe_err(MOE_ENOMEM, "out of memory");
        if (!st && !(st = fill_counts(layers, name, p))) st = xp_validate(p, name);
    }
    free(is_moe);
    if (st)
        xp_free(p);
    else
        *out = p;
    return st;
}

moe_status xp_parse(const char *json, size_t len, const char *name, xp_profile **out) {
    *out = NULL;
    json_error_t err;
    json_t *root = json_loadb(json, len, JSON_REJECT_DUPLICATES, &err);
    if (!root)
        return moe_err(MOE_EFORMAT, "%s: not JSON: %s (line %d, column %d)", name, err.text, err.line, err.column);
    moe_status st = parse_root(root, name, out);
    json_decref(root);
    return st;
}

moe_status xp_read(const char *path, xp_profile **out) {
    *out = NULL;
    char *buf;
    size_t len;
    moe_status st = file_read_all(path, XP_MAX_FILE_BYTES, &buf, &len);
    if (st) return st;
    st = xp_parse(buf, len, path, out);
    free(buf);
    return st;
}

/* -------------------------------------------------------------- using -- */

moe_status xp_check_model(const xp_profile *p, const char *name, const moe_config *c, const unsigned char *is_moe) {
    if (strcmp(p->model_type, c->model_type))
        return moe_err(MOE_EINVAL, "%s: the profile is of a %s model, not %s", name, p->model_type, c->model_type);
    if (p->n_layers != c->n_layers || p->n_experts != c->n_experts)
        return moe_err(MOE_EINVAL, "%s: the profile is of a model of %d layers and %d experts, not %d and %d", name,
                       p->n_layers, p->n_experts, c->n_layers, c->n_experts);
    for (int l = 0; l < p->n_layers; l++)
        if ((p->row[l] >= 0) != (is_moe[l] != 0))
            return moe_err(MOE_EINVAL, "%s: layer %d is %s in the profile but %s in the model", name, l,
                           p->row[l] >= 0 ? "MoE" : "dense", is_moe[l] ? "MoE" : "dense");
    return MOE_OK;
}

int xp_hottest(const xp_profile *p, int l, int n, int *experts) {
    const int64_t *c = xp_counts(p, l);
    if (!c || n < 0 || n > p->n_experts) return 0;
    /* insertion into a sorted prefix: n and n_experts are small (hundreds) */
    int k = 0;
    for (int e = 0; e < p->n_experts; e++) {
        int at = k < n ? k++ : n;
        while (at > 0 && c[experts[at - 1]] < c[e]) { /* strict: an equal count keeps the lower index first */
            if (at < n) experts[at] = experts[at - 1];
            at--;
        }
        if (at < n) experts[at] = e;
    }
    return n;
}
