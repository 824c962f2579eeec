/* tok_load.c — tokenizer.json (+ tokenizer_config.json) to a tokenizer.
 *
 * Everything read is validated before use: every id is an integer in range
 * and used once, every merge names known tokens whose concatenation is in the
 * vocabulary, every template names known special tokens; types and settings
 * this code does not implement are refused by name (MOE_EUNSUPPORTED), never
 * approximated. Added tokens get their ids as HF's AddedVocabulary::add_tokens
 * assigns them (the "id" fields in the file are not what HF uses either). */
#include <jansson.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../base/err.h"
#include "../base/file.h"
#include "tok_internal.h"

#define MAX_JSON_BYTES ((size_t)1 << 30)
#define MAX_VOCAB (1 << 24)
#define MAX_DEPTH 8 /* nested Sequence normalizers / pre-tokenizers / decoders / processors */

typedef struct loader {
    tokenizer *t;
    const char *path;
    int32_t n_model;        /* entries in the model vocabulary */
    int32_t model_size;     /* largest model id + 1: the size tok_str has before added tokens */
    char **special_set;     /* contents of special added tokens */
    size_t n_special;
    strmap special_map;
} loader;

/* ------------------------------------------------------------- helpers -- */

static const char *type_of(json_t *o) {
    json_t *ty = json_object_get(o, "type");
    return json_is_string(ty) ? json_string_value(ty) : NULL;
}

/* A string member: 1 found, 0 absent or null; EFORMAT if of another type. */
static int get_str(loader *L, json_t *o, const char *key, const char **s, size_t *len, moe_status *st) {
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return 0;
    if (!json_is_string(v)) {
        *st = moe_err(MOE_EFORMAT, "%s: \"%s\" must be a string", L->path, key);
        return 0;
    }
    *s = json_string_value(v);
    if (len) *len = json_string_length(v);
    return 1;
}

static int get_bool(loader *L, json_t *o, const char *key, int dflt, moe_status *st) {
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return dflt;
    if (!json_is_boolean(v)) {
        *st = moe_err(MOE_EFORMAT, "%s: \"%s\" must be true or false", L->path, key);
        return dflt;
    }
    return json_is_true(v);
}

static int64_t get_uint(loader *L, json_t *o, const char *key, int64_t dflt, int64_t max, moe_status *st) {
    json_t *v = json_object_get(o, key);
    if (!v || json_is_null(v)) return dflt;
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) > max) {
        *st = moe_err(MOE_EFORMAT, "%s: \"%s\" must be an integer in [0, %lld]", L->path, key, (long long)max);
        return dflt;
    }
    return json_integer_value(v);
}

static char *dup_n(const char *s, size_t n) {
    char *p = malloc(n + 1);
    if (p) {
        memcpy(p, s, n);
        p[n] = 0;
    }
    return p;
}

/* One character: "replacement" of Metaspace, "content" of Strip, "delimiter". */
static moe_status get_char(loader *L, json_t *o, const char *key, uint32_t dflt, int required, uint32_t *out) {
    const char *s;
    size_t n;
    moe_status st = MOE_OK;
    if (!get_str(L, o, key, &s, &n, &st)) {
        if (st) return st;
        if (required) return moe_err(MOE_EFORMAT, "%s: \"%s\" is missing", L->path, key);
        *out = dflt;
        return MOE_OK;
    }
    int l = 0;
    if (n == 0 || !utf8_valid((const unsigned char *)s, n) || (utf8_get(s, n, &l), (size_t)l != n))
        return moe_err(MOE_EFORMAT, "%s: \"%s\" must be one character", L->path, key);
    *out = utf8_get(s, n, &l);
    return MOE_OK;
}

/* {"String": "..."} or {"Regex": "..."} */
static moe_status get_pattern(loader *L, json_t *o, tok_pattern *p, const char *what) {
    json_t *pat = json_object_get(o, "pattern");
    json_t *s = NULL;
    int is_regex = 0;
    if (json_is_object(pat)) {
        if ((s = json_object_get(pat, "String"))) is_regex = 0;
        else if ((s = json_object_get(pat, "Regex"))) is_regex = 1;
    }
    if (!json_is_string(s))
        return moe_err(MOE_EFORMAT, "%s: %s: \"pattern\" must be {\"String\": ...} or {\"Regex\": ...}", L->path, what);
    char buf[256];
    snprintf(buf, sizeof buf, "%s: %s", L->path, what);
    return tok_pattern_compile(p, json_string_value(s), json_string_length(s), is_regex, buf);
}

static moe_status get_behavior(loader *L, json_t *o, split_behavior dflt, split_behavior *out) {
    const char *s;
    moe_status st = MOE_OK;
    if (!get_str(L, o, "behavior", &s, NULL, &st)) {
        *out = dflt;
        return st;
    }
    static const char *names[] = {"Removed", "Isolated", "MergedWithPrevious", "MergedWithNext", "Contiguous"};
    static const split_behavior vals[] = {SB_REMOVED, SB_ISOLATED, SB_MERGED_PREV, SB_MERGED_NEXT, SB_CONTIGUOUS};
    for (int i = 0; i < 5; i++)
        if (strcmp(s, names[i]) == 0) {
            *out = vals[i];
            return MOE_OK;
        }
    return moe_err(MOE_EUNSUPPORTED, "%s: split behavior \"%s\" is not supported", L->path, s);
}

static moe_status get_prepend_scheme(loader *L, json_t *o, int *out) {
    const char *s;
    moe_status st = MOE_OK;
    *out = PREPEND_ALWAYS;
    int explicit = get_str(L, o, "prepend_scheme", &s, NULL, &st);
    if (st) return st;
    if (explicit) {
        if (strcmp(s, "always") == 0) *out = PREPEND_ALWAYS;
        else if (strcmp(s, "first") == 0) *out = PREPEND_FIRST;
        else if (strcmp(s, "never") == 0) *out = PREPEND_NEVER;
        else return moe_err(MOE_EUNSUPPORTED, "%s: Metaspace prepend_scheme \"%s\" is not supported", L->path, s);
    }
    json_t *aps = json_object_get(o, "add_prefix_space");
    if (json_is_false(aps)) {
        if (*out != PREPEND_NEVER)
            return moe_err(MOE_EFORMAT, "%s: Metaspace add_prefix_space does not match declared prepend_scheme", L->path);
    }
    return MOE_OK;
}

/* --------------------------------------------------------- normalizers -- */

static moe_status add_norm(loader *L, json_t *o, int depth) {
    tokenizer *t = L->t;
    if (json_is_null(o)) return MOE_OK;
    const char *ty = json_is_object(o) ? type_of(o) : NULL;
    if (!ty) return moe_err(MOE_EFORMAT, "%s: normalizer must be an object with a \"type\"", L->path);
    if (depth > MAX_DEPTH) return moe_err(MOE_EFORMAT, "%s: normalizers nested too deep", L->path);
    if (strcmp(ty, "Sequence") == 0) {
        json_t *a = json_object_get(o, "normalizers");
        if (!json_is_array(a)) return moe_err(MOE_EFORMAT, "%s: Sequence normalizer needs \"normalizers\"", L->path);
        for (size_t i = 0; i < json_array_size(a); i++) {
            moe_status st = add_norm(L, json_array_get(a, i), depth + 1);
            if (st) return st;
        }
        return MOE_OK;
    }
    norm_op *ops = realloc(t->norms, (t->n_norms + 1) * sizeof *ops);
    if (!ops) return moe_err(MOE_ENOMEM, "tokenizer: out of memory");
    t->norms = ops;
    norm_op *op = &t->norms[t->n_norms];
    memset(op, 0, sizeof *op);
    moe_status st = MOE_OK;
    const char *s;
    size_t n;
    if (strcmp(ty, "NFC") == 0) {
        op->kind = NORM_NFC;
        st = tok_nfc_init(t);
    }
    else if (strcmp(ty, "NFD") == 0) op->kind = NORM_NFD;
    else if (strcmp(ty, "NFKC") == 0) op->kind = NORM_NFKC;
    else if (strcmp(ty, "NFKD") == 0) op->kind = NORM_NFKD;
    else if (strcmp(ty, "Lowercase") == 0) op->kind = NORM_LOWERCASE;
    else if (strcmp(ty, "ByteLevel") == 0) op->kind = NORM_BYTELEVEL;
    else if (strcmp(ty, "Nmt") == 0) op->kind = NORM_NMT;
    else if (strcmp(ty, "Strip") == 0) {
        op->kind = NORM_STRIP;
        op->left = get_bool(L, o, "strip_left", 0, &st);
        op->right = get_bool(L, o, "strip_right", 0, &st);
    } else if (strcmp(ty, "Prepend") == 0) {
        op->kind = NORM_PREPEND;
        if (!get_str(L, o, "prepend", &s, &n, &st))
            return st ? st : moe_err(MOE_EFORMAT, "%s: Prepend normalizer needs \"prepend\"", L->path);
        if (!(op->str = dup_n(s, n))) return moe_err(MOE_ENOMEM, "tokenizer: out of memory");
        op->slen = n;
    } else if (strcmp(ty, "Replace") == 0) {
        op->kind = NORM_REPLACE;
        if (!get_str(L, o, "content", &s, &n, &st))
            return st ? st : moe_err(MOE_EFORMAT, "%s: Replace normalizer needs \"content\"", L->path);
        if (!(op->str = dup_n(s, n))) return moe_err(MOE_ENOMEM, "tokenizer: out of memory");
        op->slen = n;
        t->n_norms++; /* owned from here on, so tok_free releases it on failure */
        return get_pattern(L, o, &op->pat, "Replace normalizer");
    } else {
        return moe_err(MOE_EUNSUPPORTED, "%s: normalizer type \"%s\" is not supported", L->path, ty);
    }
    if (st) return st;
    t->n_norms++;
    return MOE_OK;
}

/* ------------------------------------------------------ pre-tokenizers -- */

static moe_status add_pre(loader *L, json_t *o, int depth) {
    tokenizer *t = L->t;
    if (json_is_null(o)) return MOE_OK;
    const char *ty = json_is_object(o) ? type_of(o) : NULL;
    if (!ty) return moe_err(MOE_EFORMAT, "%s: pre_tokenizer must be an object with a \"type\"", L->path);
    if (depth > MAX_DEPTH) return moe_err(MOE_EFORMAT, "%s: pre-tokenizers nested too deep", L->path);
    if (strcmp(ty, "Sequence") == 0) {
        json_t *a = json_object_get(o, "pretokenizers");
        if (!json_is_array(a)) return moe_err(MOE_EFORMAT, "%s: Sequence pre-tokenizer needs \"pretokenizers\"", L->path);
        for (size_t i = 0; i < json_array_size(a); i++) {
            moe_status st = add_pre(L, json_array_get(a, i), depth + 1);
            if (st) return st;
        }
        return MOE_OK;
    }
    pre_op *ops = realloc(t->pres, (t->n_pres + 1) * sizeof *ops);
    if (!ops) return moe_err(MOE_ENOMEM, "tokenizer: out of memory");
    t->pres = ops;
    pre_op *op = &t->pres[t->n_pres];
    memset(op, 0, sizeof *op);
    moe_status st = MOE_OK;
    if (strcmp(ty, "Split") == 0) {
        op->kind = PRE_SPLIT;
        if ((st = get_behavior(L, o, SB_REMOVED, &op->behavior))) return st;
        if (!json_object_get(o, "behavior")) return moe_err(MOE_EFORMAT, "%s: Split needs \"behavior\"", L->path);
        op->invert = get_bool(L, o, "invert", 0, &st);
        if (st) return st;
        t->n_pres++;
        return get_pattern(L, o, &op->pat, "Split pre-tokenizer");
    } else if (strcmp(ty, "ByteLevel") == 0) {
        op->kind = PRE_BYTELEVEL;
        op->add_prefix_space = get_bool(L, o, "add_prefix_space", 1, &st);
        op->use_regex = get_bool(L, o, "use_regex", 1, &st);
        if (!st && op->use_regex && !t->re_bytelevel) {
            static const char gpt2[] = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";
            st = tok_regex_compile(gpt2, sizeof gpt2 - 1, &t->re_bytelevel, "ByteLevel");
        }
    } else if (strcmp(ty, "Metaspace") == 0) {
        op->kind = PRE_METASPACE;
        if (!(st = get_char(L, o, "replacement", 0x2581, 1, &op->ch)) && !(st = get_prepend_scheme(L, o, &op->prepend_scheme)))
            op->split = get_bool(L, o, "split", 1, &st);
    } else if (strcmp(ty, "Digits") == 0) {
        op->kind = PRE_DIGITS;
        op->individual = get_bool(L, o, "individual_digits", 0, &st);
    } else if (strcmp(ty, "WhitespaceSplit") == 0) {
        op->kind = PRE_WHITESPACE_SPLIT;
    } else if (strcmp(ty, "CharDelimiterSplit") == 0) {
        op->kind = PRE_CHAR_DELIM;
        st = get_char(L, o, "delimiter", 0, 1, &op->ch);
    } else if (strcmp(ty, "Punctuation") == 0) {
        op->kind = PRE_PUNCTUATION;
        st = get_behavior(L, o, SB_ISOLATED, &op->behavior);
    } else {
        return moe_err(MOE_EUNSUPPORTED, "%s: pre-tokenizer type \"%s\" is not supported", L->path, ty);
    }
    if (st) return st;
    t->n_pres++;
    return MOE_OK;
}

/* ------------------------------------------------------------ decoders -- */

static moe_status add_dec(loader *L, json_t *o, int depth) {
    tokenizer *t = L->t;
    if (json_is_null(o)) return MOE_OK;
    const char *ty = json_is_object(o) ? type_of(o) : NULL;
    if (!ty) return moe_err(MOE_EFORMAT, "%s: decoder must be an object with a \"type\"", L->path);
    if (depth > MAX_DEPTH) return moe_err(MOE_EFORMAT, "%s: decoders nested too deep", L->path);
    if (strcmp(ty, "Sequence") == 0) {
        json_t *a = json_object_get(o, "decoders");
        if (!json_is_array(a)) return moe_err(MOE_EFORMAT, "%s: Sequence decoder needs \"decoders\"", L->path);
        for (size_t i = 0; i < json_array_size(a); i++) {
            moe_status st = add_dec(L, json_array_get(a, i), depth + 1);
            if (st) return st;
        }
        return MOE_OK;
    }
    dec_op *ops = realloc(t->decs, (t->n_decs + 1) * sizeof *ops);
    if (!ops) return moe_err(MOE_ENOMEM, "tokenizer: out of memory");
    t->decs = ops;
    dec_op *op = &t->decs[t->n_decs];
    memset(op, 0, sizeof *op);
    moe_status st = MOE_OK;
    if (strcmp(ty, "Replace") == 0) {
        const char *s;
        size_t n;
        op->kind = DEC_REPLACE;
        if (!get_str(L, o, "content", &s, &n, &st))
            return st ? st : moe_err(MOE_EFORMAT, "%s: Replace decoder needs \"content\"", L->path);
        if (!(op->content = dup_n(s, n))) return moe_err(MOE_ENOMEM, "tokenizer: out of memory");
        op->clen = n;
        t->n_decs++;
        return get_pattern(L, o, &op->pat, "Replace decoder");
    } else if (strcmp(ty, "ByteFallback") == 0) {
        op->kind = DEC_BYTEFALLBACK;
    } else if (strcmp(ty, "Fuse") == 0) {
        op->kind = DEC_FUSE;
    } else if (strcmp(ty, "ByteLevel") == 0) {
        op->kind = DEC_BYTELEVEL;
    } else if (strcmp(ty, "Strip") == 0) {
        op->kind = DEC_STRIP;
        if (!(st = get_char(L, o, "content", ' ', 1, &op->ch))) {
            op->start = (size_t)get_uint(L, o, "start", 0, INT_MAX, &st);
            op->stop = (size_t)get_uint(L, o, "stop", 0, INT_MAX, &st);
        }
    } else if (strcmp(ty, "Metaspace") == 0) {
        int scheme;
        op->kind = DEC_METASPACE;
        if (!(st = get_char(L, o, "replacement", 0x2581, 1, &op->ch)) && !(st = get_prepend_scheme(L, o, &scheme)))
            op->prepend_never = scheme == PREPEND_NEVER;
    } else {
        return moe_err(MOE_EUNSUPPORTED, "%s: decoder type \"%s\" is not supported", L->path, ty);
    }
    if (st) return st;
    t->n_decs++;
    return MOE_OK;
}

/* --------------------------------------------------------------- model -- */

static moe_status load_vocab(loader *L, json_t *vocab) {
    tokenizer *t = L->t;
    if (!json_is_object(vocab)) return moe_err(MOE_EFORMAT, "%s: model.vocab must be an object", L->path);
    size_t n = json_object_size(vocab), bytes = 0;
    if (n > MAX_VOCAB) return moe_err(MOE_EFORMAT, "%s: model.vocab has %zu entries (at most %d)", L->path, n, MAX_VOCAB);
    int32_t max_id = -1;
    void *it;
    for (it = json_object_iter(vocab); it; it = json_object_iter_next(vocab, it)) {
        json_t *v = json_object_iter_value(it);
        if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= MAX_VOCAB)
            return moe_err(MOE_EFORMAT, "%s: model.vocab[\"%s\"]: id must be an integer in [0, %d)", L->path,
                           json_object_iter_key(it), MAX_VOCAB);
        if ((int32_t)json_integer_value(v) > max_id) max_id = (int32_t)json_integer_value(v);
        bytes += json_object_iter_key_len(it) + 1;
    }
    L->n_model = (int32_t)n;
    t->vocab_size = L->model_size = max_id + 1;
    moe_status st;
    if (!(t->arena = malloc(bytes ? bytes : 1))) return moe_err(MOE_ENOMEM, "tokenizer: out of memory");
    if ((st = strmap_init(&t->model_vocab, n))) return st;
    /* id -> string, for the model vocabulary (added tokens extend it later) */
    const char **ids = calloc((size_t)max_id + 1 ? (size_t)max_id + 1 : 1, sizeof *ids);
    uint32_t *lens = calloc((size_t)max_id + 1 ? (size_t)max_id + 1 : 1, sizeof *lens);
    if (!ids || !lens) {
        free(ids);
        free(lens);
        return moe_err(MOE_ENOMEM, "tokenizer: out of memory");
    }
    t->tok_str = ids;
    t->tok_len = lens;
    size_t off = 0;
    for (it = json_object_iter(vocab); it; it = json_object_iter_next(vocab, it)) {
        size_t kl = json_object_iter_key_len(it);
        int32_t id = (int32_t)json_integer_value(json_object_iter_value(it));
        char *k = t->arena + off;
        memcpy(k, json_object_iter_key(it), kl);
        k[kl] = 0;
        off += kl + 1;
        if (ids[id])
            return moe_err(MOE_EFORMAT, "%s: model.vocab: id %d is given to both \"%s\" and \"%s\"", L->path, id, ids[id], k);
        ids[id] = k;
        lens[id] = (uint32_t)kl;
        if ((st = strmap_put(&t->model_vocab, k, kl, id, NULL))) return st;
    }
    return MOE_OK;
}

/* One merge, "a b" or ["a", "b"], at rank r. */
static moe_status load_merge(loader *L, json_t *m, size_t r, tbuf *buf) {
    tokenizer *t = L->t;
    const char *a, *b;
    size_t al, bl;
    if (json_is_string(m)) {
        const char *s = json_string_value(m);
        size_t n = json_string_length(m);
        const char *sp = memchr(s, ' ', n);
        if (!sp || memchr(sp + 1, ' ', n - (size_t)(sp + 1 - s)))
            return moe_err(MOE_EFORMAT, "%s: merges[%zu] \"%s\" is not two tokens separated by one space", L->path, r, s);
        a = s;
        al = (size_t)(sp - s);
        b = sp + 1;
        bl = n - al - 1;
    } else if (json_is_array(m) && json_array_size(m) == 2 && json_is_string(json_array_get(m, 0)) &&
               json_is_string(json_array_get(m, 1))) {
        a = json_string_value(json_array_get(m, 0));
        al = json_string_length(json_array_get(m, 0));
        b = json_string_value(json_array_get(m, 1));
        bl = json_string_length(json_array_get(m, 1));
    } else {
        return moe_err(MOE_EFORMAT, "%s: merges[%zu] must be \"a b\" or [\"a\", \"b\"]", L->path, r);
    }
    int32_t ia = strmap_get(&t->model_vocab, a, al), ib = strmap_get(&t->model_vocab, b, bl);
    if (ia < 0 || ib < 0)
        return moe_err(MOE_EFORMAT, "%s: merges[%zu]: \"%.*s\" is not in the vocabulary", L->path, r,
                       (int)(ia < 0 ? al : bl), ia < 0 ? a : b);
    if (bl < t->cont_prefix_len)
        return moe_err(MOE_EFORMAT, "%s: merges[%zu]: \"%.*s\" is shorter than continuing_subword_prefix", L->path, r,
                       (int)bl, b);
    buf->n = 0;
    moe_status st = tbuf_put(buf, a, al);
    if (!st) st = tbuf_put(buf, b + t->cont_prefix_len, bl - t->cont_prefix_len);
    if (st) return st;
    int32_t im = strmap_get(&t->model_vocab, buf->p, buf->n);
    if (im < 0)
        return moe_err(MOE_EFORMAT, "%s: merges[%zu]: the merged token \"%.*s\" is not in the vocabulary", L->path, r,
                       (int)buf->n, buf->p);
    pairmap_put(&t->merges, ia, ib, (uint32_t)r, im);
    return MOE_OK;
}

static moe_status load_model(loader *L, json_t *model) {
    tokenizer *t = L->t;
    if (!json_is_object(model)) return moe_err(MOE_EFORMAT, "%s: \"model\" is missing or not an object", L->path);
    const char *ty = type_of(model);
    if (ty && strcmp(ty, "BPE") != 0)
        return moe_err(MOE_EUNSUPPORTED, "%s: model type \"%s\" is not supported (only BPE)", L->path, ty);
    if (!ty && !json_object_get(model, "merges"))
        return moe_err(MOE_EUNSUPPORTED, "%s: model without a type and without merges (not BPE) is not supported", L->path);
    moe_status st = MOE_OK;
    json_t *dropout = json_object_get(model, "dropout");
    if (dropout && !json_is_null(dropout) && !(json_is_number(dropout) && json_number_value(dropout) == 0.0))
        return moe_err(MOE_EUNSUPPORTED, "%s: BPE dropout is not supported", L->path);
    const char *s;
    size_t n;
    if (get_str(L, model, "continuing_subword_prefix", &s, &n, &st) && n) {
        if (!(t->cont_prefix = dup_n(s, n))) return moe_err(MOE_ENOMEM, "tokenizer: out of memory");
        t->cont_prefix_len = n;
    }
    if (get_str(L, model, "end_of_word_suffix", &s, &n, &st) && n) {
        if (!(t->eow_suffix = dup_n(s, n))) return moe_err(MOE_ENOMEM, "tokenizer: out of memory");
        t->eow_suffix_len = n;
    }
    t->fuse_unk = get_bool(L, model, "fuse_unk", 0, &st);
    t->byte_fallback = get_bool(L, model, "byte_fallback", 0, &st);
    t->ignore_merges = get_bool(L, model, "ignore_merges", 0, &st);
    if (st) return st;
    if (t->byte_fallback && (t->cont_prefix_len || t->eow_suffix_len))
        return moe_err(MOE_EUNSUPPORTED, "%s: byte_fallback together with continuing_subword_prefix/end_of_word_suffix",
                       L->path);
    if ((st = load_vocab(L, json_object_get(model, "vocab")))) return st;
    t->unk_id = -1;
    if (get_str(L, model, "unk_token", &s, &n, &st)) {
        if (!(t->unk_token = dup_n(s, n))) return moe_err(MOE_ENOMEM, "tokenizer: out of memory");
        t->unk_id = strmap_get(&t->model_vocab, s, n);
        if (t->unk_id < 0) t->unk_id = -2; /* an error only once a character needs it, as in HF */
    }
    if (st) return st;
    json_t *merges = json_object_get(model, "merges");
    if (!json_is_array(merges)) return moe_err(MOE_EFORMAT, "%s: model.merges must be an array", L->path);
    size_t nm = json_array_size(merges);
    if ((st = pairmap_init(&t->merges, nm))) return st;
    tbuf buf = {0};
    size_t rank = 0;
    for (size_t i = 0; i < nm && !st; i++) {
        json_t *m = json_array_get(merges, i);
        if (json_is_string(m) && strncmp(json_string_value(m), "#version", 8) == 0) continue;
        st = load_merge(L, m, rank++, &buf);
    }
    tbuf_free(&buf);
    return st;
}

/* -------------------------------------------------------- added tokens -- */

static moe_status load_added(loader *L, json_t *arr) {
    tokenizer *t = L->t;
    if (!arr || json_is_null(arr)) arr = NULL;
    else if (!json_is_array(arr)) return moe_err(MOE_EFORMAT, "%s: \"added_tokens\" must be an array", L->path);
    size_t n = arr ? json_array_size(arr) : 0;
    moe_status st = strmap_init(&t->added_map, n);
    if (!st) st = strmap_init(&L->special_map, n);
    if (st) return st;
    if (n > MAX_VOCAB) return moe_err(MOE_EFORMAT, "%s: too many added tokens", L->path);
    if (n && !(t->added = calloc(n, sizeof *t->added))) return moe_err(MOE_ENOMEM, "tokenizer: out of memory");
    int64_t next_id = L->n_model; /* HF: the model's vocabulary size (its number of entries) */
    for (size_t i = 0; i < n; i++) {
        json_t *o = json_array_get(arr, i);
        const char *c;
        size_t cl;
        if (!json_is_object(o) || !get_str(L, o, "content", &c, &cl, &st))
            return st ? st : moe_err(MOE_EFORMAT, "%s: added_tokens[%zu] needs a \"content\" string", L->path, i);
        json_t *jid = json_object_get(o, "id");
        if (jid && !(json_is_integer(jid) && json_integer_value(jid) >= 0))
            return moe_err(MOE_EFORMAT, "%s: added_tokens[%zu]: \"id\" must be a non-negative integer", L->path, i);
        added_tok a = {0};
        a.special = get_bool(L, o, "special", 0, &st);
        a.single_word = get_bool(L, o, "single_word", 0, &st);
        a.lstrip = get_bool(L, o, "lstrip", 0, &st);
        a.rstrip = get_bool(L, o, "rstrip", 0, &st);
        a.normalized = get_bool(L, o, "normalized", !a.special, &st);
        if (st) return st;
        if (cl == 0) continue; /* HF ignores empty tokens */
        int32_t id = strmap_get(&t->added_map, c, cl);
        size_t slot = t->n_added;
        if (id >= 0) {
            for (slot = 0; slot < t->n_added && t->added[slot].id != id; slot++) {}
        } else {
            id = strmap_get(&t->model_vocab, c, cl);
            if (id < 0) {
                if (next_id >= MAX_VOCAB) return moe_err(MOE_EFORMAT, "%s: too many added tokens", L->path);
                id = (int32_t)next_id++;
            }
        }
        if (slot == t->n_added) {
            if (!(a.content = dup_n(c, cl))) return moe_err(MOE_ENOMEM, "tokenizer: out of memory");
            a.len = cl;
            a.id = id;
            t->added[t->n_added++] = a;
            if ((st = strmap_put(&t->added_map, a.content, cl, id, NULL))) return st;
        } else { /* same content again: the later properties win */
            a.content = t->added[slot].content;
            a.len = cl;
            a.id = id;
            t->added[slot] = a;
        }
        if (a.special && (st = strmap_put(&L->special_map, t->added[slot].content, cl, 1, NULL))) return st;
        if (id >= t->vocab_size) t->vocab_size = id + 1;
    }
    return MOE_OK;
}

/* Normalized forms of `normalized` added tokens, the id -> string tables, special flags. */
static moe_status finish_vocab(loader *L) {
    tokenizer *t = L->t;
    moe_status st = MOE_OK;
    pcre2_match_data *md = pcre2_match_data_create(1, NULL);
    tok_ranges r = {0};
    tbuf out = {0};
    if (!md) return moe_err(MOE_ENOMEM, "tokenizer: out of memory");
    for (size_t i = 0; i < t->n_added && !st; i++) {
        added_tok *a = &t->added[i];
        if (!a->normalized || !t->n_norms) continue;
        if ((st = tok_normalize(t, a->content, a->len, &out, md, &r))) break;
        if (out.n != a->len || memcmp(out.p, a->content, a->len) != 0) {
            if (out.n == 0) {
                st = moe_err(MOE_EFORMAT, "%s: added token %d \"%s\" normalizes to an empty string", L->path, a->id,
                             a->content);
                break;
            }
            if (!(a->norm = dup_n(out.p, out.n))) st = moe_err(MOE_ENOMEM, "tokenizer: out of memory");
            a->nlen = out.n;
        }
    }
    pcre2_match_data_free(md);
    free(r.p);
    tbuf_free(&out);
    if (st) return st;
    size_t vs = (size_t)t->vocab_size ? (size_t)t->vocab_size : 1;
    const char **ts = realloc(t->tok_str, vs * sizeof *ts);
    if (ts) t->tok_str = ts;
    uint32_t *tl = ts ? realloc(t->tok_len, vs * sizeof *tl) : NULL;
    if (tl) t->tok_len = tl;
    if (!ts || !tl) return moe_err(MOE_ENOMEM, "tokenizer: out of memory");
    for (int32_t i = L->model_size; i < t->vocab_size; i++) {
        ts[i] = NULL;
        tl[i] = 0;
    }
    t->dec_str = calloc(vs, sizeof *t->dec_str);
    t->dec_len = calloc(vs, sizeof *t->dec_len);
    t->special = calloc(vs, 1);
    if (!t->dec_str || !t->dec_len || !t->special) return moe_err(MOE_ENOMEM, "tokenizer: out of memory");
    memcpy(t->dec_str, ts, vs * sizeof *ts);
    memcpy(t->dec_len, tl, vs * sizeof *tl);
    /* HF's id_to_token: an added token's content (its normalized form when the normalizer changes it) */
    for (size_t i = 0; i < t->n_added; i++) {
        const added_tok *a = &t->added[i];
        ts[a->id] = a->content;
        tl[a->id] = (uint32_t)a->len;
        t->dec_str[a->id] = a->norm ? a->norm : a->content;
        t->dec_len[a->id] = (uint32_t)(a->norm ? a->nlen : a->len);
    }
    for (int32_t i = 0; i < t->vocab_size; i++)
        t->special[i] = t->dec_str[i] && strmap_get(&L->special_map, t->dec_str[i], t->dec_len[i]) >= 0;
    return MOE_OK;
}

/* ----------------------------------------------------- post-processor -- */

static moe_status check_id(loader *L, json_t *v, const char *what, int32_t *id) {
    if (!json_is_integer(v) || json_integer_value(v) < 0 || json_integer_value(v) >= L->t->vocab_size)
        return moe_err(MOE_EFORMAT, "%s: %s: token id must be an integer in [0, %d)", L->path, what, L->t->vocab_size);
    *id = (int32_t)json_integer_value(v);
    return MOE_OK;
}

/* One TemplateProcessing piece of the single-sequence template, into out. */
static moe_status template_piece(loader *L, json_t *piece, json_t *specials, ivec *out) {
    const char *name = NULL;
    int is_seq = 0;
    char buf[256];
    if (json_is_object(piece)) {
        json_t *sq = json_object_get(piece, "Sequence"), *sp = json_object_get(piece, "SpecialToken");
        json_t *id = json_object_get(sq ? sq : sp, "id");
        if ((!sq == !sp) || !json_is_string(id))
            return moe_err(MOE_EFORMAT, "%s: TemplateProcessing: a piece must be {\"Sequence\": ...} or {\"SpecialToken\": ...}",
                           L->path);
        name = json_string_value(id);
        if (sq) {
            if (strcmp(name, "A") != 0)
                return moe_err(MOE_EFORMAT, "%s: TemplateProcessing: the single template names sequence \"%s\"", L->path, name);
            is_seq = 1;
        }
    } else if (json_is_string(piece)) { /* "$A", "$0", "$A:1", "<s>", "<s>:1" */
        snprintf(buf, sizeof buf, "%s", json_string_value(piece));
        char *colon = strchr(buf, ':');
        if (colon) *colon = 0;
        if (buf[0] == '$') {
            if (strcmp(buf, "$B") == 0 || strcmp(buf, "$b") == 0)
                return moe_err(MOE_EFORMAT, "%s: TemplateProcessing: the single template names sequence B", L->path);
            is_seq = 1;
        }
        name = buf;
    } else {
        return moe_err(MOE_EFORMAT, "%s: TemplateProcessing: bad template piece", L->path);
    }
    if (is_seq) return ivec_push(out, -1);
    json_t *tok = json_object_get(specials, name);
    json_t *ids = json_object_get(tok, "ids");
    if (!json_is_array(ids))
        return moe_err(MOE_EFORMAT, "%s: TemplateProcessing: special token \"%s\" is not in special_tokens", L->path, name);
    for (size_t i = 0; i < json_array_size(ids); i++) {
        int32_t id;
        moe_status st = check_id(L, json_array_get(ids, i), "TemplateProcessing", &id);
        if (!st) st = ivec_push(out, id);
        if (st) return st;
    }
    return MOE_OK;
}

/* The single-sequence template of processor o (-1 marks the sequence). */
static moe_status processor_template(loader *L, json_t *o, ivec *out, int depth) {
    const char *ty = json_is_object(o) ? type_of(o) : NULL;
    moe_status st = MOE_OK;
    out->n = 0;
    if (!ty) return moe_err(MOE_EFORMAT, "%s: post_processor must be an object with a \"type\"", L->path);
    if (depth > MAX_DEPTH) return moe_err(MOE_EFORMAT, "%s: post-processors nested too deep", L->path);
    if (strcmp(ty, "ByteLevel") == 0) return ivec_push(out, -1);
    if (strcmp(ty, "RobertaProcessing") == 0 || strcmp(ty, "BertProcessing") == 0) {
        json_t *cls = json_object_get(o, "cls"), *sep = json_object_get(o, "sep");
        int32_t c, s;
        if (!json_is_array(cls) || json_array_size(cls) != 2 || !json_is_array(sep) || json_array_size(sep) != 2)
            return moe_err(MOE_EFORMAT, "%s: %s needs \"cls\" and \"sep\" as [token, id]", L->path, ty);
        if ((st = check_id(L, json_array_get(cls, 1), ty, &c)) || (st = check_id(L, json_array_get(sep, 1), ty, &s)))
            return st;
        if (!(st = ivec_push(out, c)) && !(st = ivec_push(out, -1))) st = ivec_push(out, s);
        return st;
    }
    if (strcmp(ty, "TemplateProcessing") == 0) {
        json_t *single = json_object_get(o, "single"), *specials = json_object_get(o, "special_tokens");
        if (json_is_string(single)) { /* "<s> $A" */
            char *s = dup_n(json_string_value(single), json_string_length(single)), *save = NULL;
            if (!s) return moe_err(MOE_ENOMEM, "tokenizer: out of memory");
            for (char *w = strtok_r(s, " ", &save); w && !st; w = strtok_r(NULL, " ", &save)) {
                json_t *js = json_string(w);
                st = js ? template_piece(L, js, specials, out) : moe_err(MOE_ENOMEM, "tokenizer: out of memory");
                json_decref(js);
            }
            free(s);
            return st;
        }
        if (!json_is_array(single)) return moe_err(MOE_EFORMAT, "%s: TemplateProcessing needs \"single\"", L->path);
        for (size_t i = 0; i < json_array_size(single) && !st; i++)
            st = template_piece(L, json_array_get(single, i), specials, out);
        return st;
    }
    if (strcmp(ty, "Sequence") == 0) {
        json_t *a = json_object_get(o, "processors");
        if (!json_is_array(a)) return moe_err(MOE_EFORMAT, "%s: Sequence post-processor needs \"processors\"", L->path);
        ivec cur = {0}, step = {0}, next = {0};
        st = ivec_push(&cur, -1);
        for (size_t i = 0; i < json_array_size(a) && !st; i++) {
            if ((st = processor_template(L, json_array_get(a, i), &step, depth + 1))) break;
            next.n = 0;
            for (size_t k = 0; k < step.n && !st; k++) {
                if (step.p[k] >= 0) st = ivec_push(&next, step.p[k]);
                else
                    for (size_t j = 0; j < cur.n && !st; j++) st = ivec_push(&next, cur.p[j]);
            }
            ivec sw = cur;
            cur = next;
            next = sw;
        }
        if (!st)
            for (size_t j = 0; j < cur.n && !st; j++) st = ivec_push(out, cur.p[j]);
        free(cur.p);
        free(step.p);
        free(next.p);
        return st;
    }
    return moe_err(MOE_EUNSUPPORTED, "%s: post-processor type \"%s\" is not supported", L->path, ty);
}

/* ------------------------------------------------------------- config -- */

/* bos_token / eos_token: a string, {"content": ...}, or null. */
static int32_t config_token(tokenizer *t, json_t *cfg, const char *key) {
    json_t *v = json_object_get(cfg, key);
    if (json_is_object(v)) v = json_object_get(v, "content");
    if (!json_is_string(v)) return -1;
    return tok_piece_to_id(t, json_string_value(v));
}

static moe_status load_config(loader *L, const char *path, int pp_absent, ivec *tmpl) {
    tokenizer *t = L->t;
    json_t *cfg = NULL;
    t->bos_id = t->eos_id = -1;
    if (path) {
        char *buf;
        size_t len;
        moe_status st = file_read_all(path, 64u << 20, &buf, &len);
        if (st) return st;
        json_error_t je;
        cfg = json_loadb(buf, len, JSON_ALLOW_NUL | JSON_DECODE_INT_AS_REAL, &je); /* model_max_length can be 1e30 */
        free(buf);
        if (!json_is_object(cfg)) {
            json_decref(cfg);
            return moe_err(MOE_EFORMAT, "%s: line %d: %s", path, je.line, cfg ? "not a JSON object" : je.text);
        }
        t->bos_id = config_token(t, cfg, "bos_token");
        t->eos_id = config_token(t, cfg, "eos_token");
    }
    /* without a config (or a BOS/EOS in it): what the template puts around the sequence */
    size_t a = 0;
    while (a < tmpl->n && tmpl->p[a] >= 0) a++;
    if (t->bos_id < 0 && a > 0 && a < tmpl->n && !json_object_get(cfg, "bos_token")) t->bos_id = tmpl->p[0];
    if (t->eos_id < 0 && a + 1 < tmpl->n && !json_object_get(cfg, "eos_token")) t->eos_id = tmpl->p[tmpl->n - 1];
    moe_status st = MOE_OK;
    if (cfg && pp_absent) { /* transformers' Llama convention, for files that leave it to the config */
        int add_bos = json_is_true(json_object_get(cfg, "add_bos_token"));
        int add_eos = json_is_true(json_object_get(cfg, "add_eos_token"));
        if ((add_bos && t->bos_id < 0) || (add_eos && t->eos_id < 0))
            st = moe_err(MOE_EFORMAT, "%s: add_%s_token is set but %s_token is not a known token", path,
                         add_bos && t->bos_id < 0 ? "bos" : "eos", add_bos && t->bos_id < 0 ? "bos" : "eos");
        tmpl->n = 0;
        if (!st && add_bos) st = ivec_push(tmpl, t->bos_id);
        if (!st) st = ivec_push(tmpl, -1);
        if (!st && add_eos) st = ivec_push(tmpl, t->eos_id);
    }
    json_decref(cfg);
    return st;
}

/* --------------------------------------------------------------- load -- */

static moe_status build_tables(tokenizer *t) {
    char buf[8];
    for (int b = 0; b < 256; b++) {
        snprintf(buf, sizeof buf, "<0x%02X>", b);
        t->byte_ids[b] = strmap_get(&t->model_vocab, buf, 6);
    }
    if (!(t->small_ids = malloc(0x800 * sizeof *t->small_ids))) return moe_err(MOE_ENOMEM, "tokenizer: out of memory");
    for (uint32_t cp = 0; cp < 0x800; cp++) t->small_ids[cp] = strmap_get(&t->model_vocab, buf, (size_t)utf8_put(cp, buf));
    tok_bpe_split_init(t);
    return MOE_OK;
}

static moe_status load_all(loader *L, json_t *root, const char *config_path) {
    tokenizer *t = L->t;
    if (!json_is_object(root)) return moe_err(MOE_EFORMAT, "%s: not a JSON object", L->path);
    json_t *v = json_object_get(root, "version");
    if (v && !(json_is_string(v) && strcmp(json_string_value(v), "1.0") == 0))
        return moe_err(MOE_EUNSUPPORTED, "%s: tokenizer version %s is not supported (only \"1.0\")", L->path,
                       json_is_string(v) ? json_string_value(v) : "(not a string)");
    v = json_object_get(root, "truncation");
    if (v && !json_is_null(v)) return moe_err(MOE_EUNSUPPORTED, "%s: \"truncation\" is not supported", L->path);
    v = json_object_get(root, "padding");
    if (v && !json_is_null(v)) return moe_err(MOE_EUNSUPPORTED, "%s: \"padding\" is not supported", L->path);
    moe_status st;
    if ((st = add_norm(L, json_object_get(root, "normalizer") ? json_object_get(root, "normalizer") : json_null(), 0)))
        return st;
    if ((st = load_model(L, json_object_get(root, "model")))) return st;
    if ((st = load_added(L, json_object_get(root, "added_tokens")))) return st;
    if ((st = finish_vocab(L))) return st;
    v = json_object_get(root, "pre_tokenizer");
    if (v && (st = add_pre(L, v, 0))) return st;
    v = json_object_get(root, "decoder");
    t->has_decoder = v && !json_is_null(v);
    if (v && (st = add_dec(L, v, 0))) return st;
    if ((st = tok_dec_check(t))) return st;
    v = json_object_get(root, "post_processor");
    int pp_absent = !v || json_is_null(v);
    ivec tmpl = {0};
    st = pp_absent ? ivec_push(&tmpl, -1) : processor_template(L, v, &tmpl, 0);
    if (!st) st = load_config(L, config_path, pp_absent, &tmpl);
    t->tmpl = tmpl.p;
    t->n_tmpl = tmpl.n;
    if (st) return st;
    if ((st = tok_trie_build(&t->trie_raw, t, 0)) || (st = tok_trie_build(&t->trie_norm, t, 1))) return st;
    return build_tables(t);
}

moe_status tok_load_mem(const char *json, size_t len, const char *name, const char *config_path, tokenizer **out) {
    if (!out) return moe_err(MOE_EINVAL, "tok_load: NULL argument");
    *out = NULL;
    if (!json && len) return moe_err(MOE_EINVAL, "tok_load: NULL buffer");
    json_error_t je;
    json_t *root = json_loadb(json ? json : "", len, JSON_ALLOW_NUL, &je);
    if (!root) return moe_err(MOE_EFORMAT, "%s: line %d, column %d: %s", name, je.line, je.column, je.text);
    tokenizer *t = calloc(1, sizeof *t);
    if (!t || !(t->path = dup_n(name, strlen(name)))) {
        free(t);
        json_decref(root);
        return moe_err(MOE_ENOMEM, "tokenizer: out of memory");
    }
    tok_cache_init(t);
    loader L = {.t = t, .path = t->path};
    moe_status st = load_all(&L, root, config_path);
    json_decref(root);
    strmap_free(&L.special_map);
    if (st) {
        tok_free(t);
        return st;
    }
    *out = t;
    return MOE_OK;
}

moe_status tok_load(const char *json_path, const char *config_path, tokenizer **out) {
    if (!out) return moe_err(MOE_EINVAL, "tok_load: NULL argument");
    *out = NULL;
    if (!json_path) return moe_err(MOE_EINVAL, "tok_load: NULL path");
    char *buf;
    size_t len;
    moe_status st = file_read_all(json_path, MAX_JSON_BYTES, &buf, &len);
    if (st) return st;
    st = tok_load_mem(buf, len, json_path, config_path, out);
    free(buf);
    return st;
}

void tok_free(tokenizer *t) {
    if (!t) return;
    tok_cache_free(t);
    for (size_t i = 0; i < t->n_norms; i++) {
        tok_pattern_free(&t->norms[i].pat);
        free(t->norms[i].str);
    }
    free(t->norms);
    for (size_t i = 0; i < t->n_pres; i++) tok_pattern_free(&t->pres[i].pat);
    free(t->pres);
    for (size_t i = 0; i < t->n_decs; i++) {
        tok_pattern_free(&t->decs[i].pat);
        free(t->decs[i].content);
    }
    free(t->decs);
    for (size_t i = 0; i < t->n_added; i++) {
        free(t->added[i].content);
        free(t->added[i].norm);
    }
    free(t->added);
    tok_trie_free(&t->trie_raw);
    tok_trie_free(&t->trie_norm);
    if (t->re_bytelevel) pcre2_code_free(t->re_bytelevel);
    strmap_free(&t->model_vocab);
    strmap_free(&t->added_map);
    pairmap_free(&t->merges);
    free(t->arena);
    free(t->tok_str);
    free(t->tok_len);
    free(t->dec_str);
    free(t->dec_len);
    free(t->special);
    free(t->small_ids);
    free(t->nfc_unstable);
    free(t->tmpl);
    free(t->unk_token);
    free(t->cont_prefix);
    free(t->eow_suffix);
    free(t->path);
    free(t);
}

/* ----------------------------------------------------------- accessors -- */

int tok_vocab_size(const tokenizer *t) { return t ? t->vocab_size : 0; }
int32_t tok_bos_id(const tokenizer *t) { return t ? t->bos_id : -1; }
int32_t tok_eos_id(const tokenizer *t) { return t ? t->eos_id : -1; }

int32_t tok_piece_to_id(const tokenizer *t, const char *piece) {
    if (!t || !piece) return -1;
    size_t n = strlen(piece);
    int32_t id = strmap_get(&t->added_map, piece, n);
    return id >= 0 ? id : strmap_get(&t->model_vocab, piece, n);
}

const char *tok_id_to_piece(const tokenizer *t, int32_t id) {
    if (!t || id < 0 || id >= t->vocab_size) return NULL;
    return t->tok_str[id];
}

int tok_is_special(const tokenizer *t, int32_t id) {
    if (!t || id < 0 || id >= t->vocab_size) return 0;
    return t->special[id];
}
