/* safetensors.c — see safetensors.h. */
#include "safetensors.h"

#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../base/err.h"

static const struct { const char *name; size_t size; } k_dtypes[ST_N_DTYPES] = {
    [ST_F32] = {"F32", 4},   [ST_F16] = {"F16", 2},       [ST_BF16] = {"BF16", 2},
    [ST_F64] = {"F64", 8},   [ST_I8] = {"I8", 1},         [ST_U8] = {"U8", 1},
    [ST_I16] = {"I16", 2},   [ST_U16] = {"U16", 2},       [ST_I32] = {"I32", 4},
    [ST_U32] = {"U32", 4},   [ST_I64] = {"I64", 8},       [ST_U64] = {"U64", 8},
    [ST_BOOL] = {"BOOL", 1}, [ST_F8_E4M3] = {"F8_E4M3", 1}, [ST_F8_E5M2] = {"F8_E5M2", 1},
};

#define ST_MAX_HEADER (100u << 20) /* the format's own limit is 100 MB */

const char *st_dtype_name(st_dtype d) { return (unsigned)d < ST_N_DTYPES ? k_dtypes[d].name : "?"; }
size_t st_dtype_size(st_dtype d) { return (unsigned)d < ST_N_DTYPES ? k_dtypes[d].size : 0; }

int st_dtype_parse(const char *name) {
    for (int i = 0; i < ST_N_DTYPES; i++)
        if (strcmp(name, k_dtypes[i].name) == 0) return i;
    return -1;
}

static int cmp_name(const void *a, const void *b) {
    return strcmp(((const st_tensor *)a)->name, ((const st_tensor *)b)->name);
}

/* by (begin, size): an empty tensor sorts before a non-empty one at its offset,
 * so the overlap check does not depend on the header's key order */
static int cmp_offset(const void *a, const void *b) {
    const st_tensor *s = *(const st_tensor *const *)a, *t = *(const st_tensor *const *)b;
    uintptr_t x = (uintptr_t)s->data, y = (uintptr_t)t->data;
    if (x != y) return x < y ? -1 : 1;
    return s->nbytes < t->nbytes ? -1 : s->nbytes > t->nbytes;
}

void st_file_clear(st_file *f) {
    for (size_t i = 0; i < f->n; i++) free(f->tensors[i].name);
    free(f->tensors);
    f->tensors = NULL;
    f->n = 0;
}

/* One header entry -> t. Data block is [data, data+dlen). */
static moe_status parse_entry(const st_file *f, const char *name, json_t *v, const unsigned char *data,
                              size_t dlen, st_tensor *t) {
    const char *p = f->path;
    if (!json_is_object(v)) return moe_err(MOE_EFORMAT, "%s: tensor %s: header entry is not an object", p, name);
    json_t *jd = json_object_get(v, "dtype"), *js = json_object_get(v, "shape"),
           *jo = json_object_get(v, "data_offsets");
    if (!json_is_string(jd)) return moe_err(MOE_EFORMAT, "%s: tensor %s: missing dtype", p, name);
    int d = st_dtype_parse(json_string_value(jd));
    if (d < 0) return moe_err(MOE_EFORMAT, "%s: tensor %s: unknown dtype %s", p, name, json_string_value(jd));
    if (!json_is_array(js)) return moe_err(MOE_EFORMAT, "%s: tensor %s: missing shape", p, name);
    size_t nd = json_array_size(js);
    if (nd > ST_MAX_DIMS) return moe_err(MOE_EFORMAT, "%s: tensor %s: %zu dimensions (at most %d)", p, name, nd, ST_MAX_DIMS);
    uint64_t numel = 1;
    t->dtype = (st_dtype)d;
    t->ndim = (int)nd;
    for (size_t i = 0; i < nd; i++) {
        json_t *e = json_array_get(js, i);
        if (!json_is_integer(e) || json_integer_value(e) < 0)
            return moe_err(MOE_EFORMAT, "%s: tensor %s: shape entry %zu is not a non-negative integer", p, name, i);
        uint64_t s = (uint64_t)json_integer_value(e);
        if (s != 0 && numel > UINT64_MAX / 16 / s)
            return moe_err(MOE_EFORMAT, "%s: tensor %s: shape overflows", p, name);
        numel *= s;
        t->shape[i] = (int64_t)s;
    }
    uint64_t nbytes = numel * k_dtypes[d].size;
    if (!json_is_array(jo) || json_array_size(jo) != 2 || !json_is_integer(json_array_get(jo, 0)) ||
        !json_is_integer(json_array_get(jo, 1)))
        return moe_err(MOE_EFORMAT, "%s: tensor %s: data_offsets must be [begin, end]", p, name);
    json_int_t b = json_integer_value(json_array_get(jo, 0)), e = json_integer_value(json_array_get(jo, 1));
    if (b < 0 || e < b || (uint64_t)e > dlen)
        return moe_err(MOE_EFORMAT, "%s: tensor %s: data_offsets [%lld, %lld] outside the %zu-byte data block", p,
                       name, (long long)b, (long long)e, dlen);
    if ((uint64_t)(e - b) != nbytes)
        return moe_err(MOE_EFORMAT, "%s: tensor %s: %lld bytes of data for %llu bytes of %s shape", p, name,
                       (long long)(e - b), (unsigned long long)nbytes, k_dtypes[d].name);
    t->data = data + b;
    t->nbytes = (size_t)nbytes;
    return MOE_OK;
}

moe_status st_parse(st_file *f, const unsigned char *buf, size_t len) {
    const char *p = f->path ? f->path : "(safetensors)";
    f->tensors = NULL;
    f->n = 0;
    if (len < 8) return moe_err(MOE_EFORMAT, "%s: truncated: %zu bytes, no header", p, len);
    uint64_t hlen = 0;
    for (int i = 7; i >= 0; i--) hlen = hlen << 8 | buf[i];
    if (hlen > ST_MAX_HEADER) return moe_err(MOE_EFORMAT, "%s: header length %llu is too large", p, (unsigned long long)hlen);
    if (hlen > len - 8)
        return moe_err(MOE_EFORMAT, "%s: truncated: header of %llu bytes but file has %zu", p, (unsigned long long)hlen, len);
    json_error_t jerr;
    json_t *root = json_loadb((const char *)buf + 8, (size_t)hlen, JSON_REJECT_DUPLICATES, &jerr);
    if (!root) return moe_err(MOE_EFORMAT, "%s: header is not valid JSON: %s", p, jerr.text);
    moe_status st = MOE_OK;
    if (!json_is_object(root)) {
        st = moe_err(MOE_EFORMAT, "%s: header is not a JSON object", p);
        goto done;
    }
    size_t cap = json_object_size(root);
    f->tensors = calloc(cap ? cap : 1, sizeof *f->tensors);
    if (!f->tensors) { st = moe_err(MOE_ENOMEM, "%s: out of memory", p); goto done; }
    const unsigned char *data = buf + 8 + hlen;
    size_t dlen = len - 8 - (size_t)hlen;
    const char *key;
    json_t *val;
    json_object_foreach(root, key, val) {
        if (strcmp(key, "__metadata__") == 0) continue;
        st_tensor *t = &f->tensors[f->n];
        st = parse_entry(f, key, val, data, dlen, t);
        if (st != MOE_OK) goto done;
        t->name = strdup(key);
        if (!t->name) { st = moe_err(MOE_ENOMEM, "%s: out of memory", p); goto done; }
        f->n++;
    }
    /* Overlapping tensors mean a corrupt or hostile header. */
    if (f->n > 1) {
        const st_tensor **by_off = malloc(f->n * sizeof *by_off);
        if (!by_off) { st = moe_err(MOE_ENOMEM, "%s: out of memory", p); goto done; }
        for (size_t i = 0; i < f->n; i++) by_off[i] = &f->tensors[i];
        qsort(by_off, f->n, sizeof *by_off, cmp_offset);
        for (size_t i = 1; i < f->n && st == MOE_OK; i++) {
            const st_tensor *a = by_off[i - 1], *b = by_off[i];
            if ((const unsigned char *)a->data + a->nbytes > (const unsigned char *)b->data)
                st = moe_err(MOE_EFORMAT, "%s: tensors %s and %s overlap", p, a->name, b->name);
        }
        free(by_off);
        if (st != MOE_OK) goto done;
    }
    qsort(f->tensors, f->n, sizeof *f->tensors, cmp_name);
done:
    json_decref(root);
    if (st != MOE_OK) st_file_clear(f);
    return st;
}

moe_status st_file_open(const char *path, st_file **out) {
    *out = NULL;
    st_file *f = calloc(1, sizeof *f);
    if (!f || !(f->path = strdup(path))) {
        free(f);
        return moe_err(MOE_ENOMEM, "%s: out of memory", path);
    }
    moe_status st = file_map_open(path, &f->map);
    if (st == MOE_OK) st = st_parse(f, f->map.data, f->map.size);
    if (st != MOE_OK) {
        st_file_close(f);
        return st;
    }
    *out = f;
    return MOE_OK;
}

void st_file_close(st_file *f) {
    if (!f) return;
    st_file_clear(f);
    file_map_close(&f->map);
    free(f->path);
    free(f);
}

const st_tensor *st_file_find(const st_file *f, const char *name) {
    size_t lo = 0, hi = f->n;
    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        int c = strcmp(name, f->tensors[mid].name);
        if (c == 0) return &f->tensors[mid];
        if (c < 0) hi = mid; else lo = mid + 1;
    }
    return NULL;
}

/* ------------------------------------------------------------ writing -- */

static uint64_t out_nbytes(const st_out_tensor *t) {
    uint64_t n = st_dtype_size(t->dtype);
    for (int i = 0; i < t->ndim; i++) n *= (uint64_t)t->shape[i];
    return n;
}

static moe_status build_header(const st_out_tensor *t, size_t n, char **out, size_t *out_len, uint64_t *total) {
    json_t *root = json_object();
    uint64_t off = 0;
    for (size_t i = 0; root && i < n; i++) {
        json_t *shape = json_array();
        for (int d = 0; d < t[i].ndim; d++) json_array_append_new(shape, json_integer(t[i].shape[d]));
        uint64_t nb = out_nbytes(&t[i]);
        json_object_set_new(root, t[i].name,
                            json_pack("{s:s, s:o, s:[I,I]}", "dtype", st_dtype_name(t[i].dtype), "shape", shape,
                                      "data_offsets", (json_int_t)off, (json_int_t)(off + nb)));
        off += nb;
    }
    char *s = root ? json_dumps(root, JSON_COMPACT | JSON_PRESERVE_ORDER) : NULL;
    json_decref(root);
    if (!s) return moe_err(MOE_ENOMEM, "out of memory building a safetensors header");
    size_t len = strlen(s), padded = (len + 7) / 8 * 8; /* keeps the data block 8-byte aligned */
    char *h = malloc(padded);
    if (!h) { free(s); return moe_err(MOE_ENOMEM, "out of memory building a safetensors header"); }
    memcpy(h, s, len);
    memset(h + len, ' ', padded - len);
    free(s);
    *out = h;
    *out_len = padded;
    *total = off;
    return MOE_OK;
}

moe_status st_write(const char *path, const st_out_tensor *t, size_t n,
                    void (*progress)(void *ctx, uint64_t done, uint64_t total), void *pctx) {
    char *hdr = NULL;
    size_t hlen = 0;
    uint64_t total = 0;
    moe_status st = build_header(t, n, &hdr, &hlen, &total);
    if (st != MOE_OK) return st;
    FILE *f = fopen(path, "wb");
    if (!f) {
        free(hdr);
        return moe_err(MOE_EIO, "%s: cannot create: %s", path, strerror(errno));
    }
    unsigned char len8[8];
    for (int i = 0; i < 8; i++) len8[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
    int ok = fwrite(len8, 1, 8, f) == 8 && fwrite(hdr, 1, hlen, f) == hlen;
    free(hdr);
    enum { CHUNK = 1 << 22 };
    unsigned char *buf = ok ? malloc(CHUNK) : NULL;
    uint64_t done = 0;
    for (size_t i = 0; buf && ok && i < n; i++) {
        uint64_t nb = out_nbytes(&t[i]);
        for (uint64_t off = 0; ok && off < nb; off += CHUNK) {
            size_t c = nb - off < CHUNK ? (size_t)(nb - off) : CHUNK;
            t[i].fill(t[i].ctx, &t[i], (size_t)off, buf, c);
            ok = fwrite(buf, 1, c, f) == c;
            done += c;
            if (progress) progress(pctx, done, total);
        }
    }
    int had_buf = buf != NULL;
    free(buf);
    if (fclose(f) != 0) ok = 0;
    if (!had_buf && ok) return moe_err(MOE_ENOMEM, "%s: out of memory", path);
    if (!ok) return moe_err(MOE_EIO, "%s: write failed: %s", path, strerror(errno));
    return MOE_OK;
}
