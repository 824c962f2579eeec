/* tok_util.c — the tokenizer's small building blocks: growable buffers,
 * UTF-8 decoding and lossy repair, the Unicode predicates HF's Rust code uses
 * (char::is_whitespace, is_numeric, ...), and two open-addressing hash maps
 * (vocabulary strings and BPE merge pairs) sized once at load. */
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "../base/err.h"
#include "tok_internal.h"

/* ------------------------------------------------------------ buffers -- */

moe_status tbuf_reserve(tbuf *b, size_t extra) {
    if (b->n + extra + 1 <= b->cap) return MOE_OK;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < b->n + extra + 1) {
        if (cap > SIZE_MAX / 2) return moe_err(MOE_ENOMEM, "tokenizer: buffer too large");
        cap *= 2;
    }
    char *p = realloc(b->p, cap);
    if (!p) return moe_err(MOE_ENOMEM, "tokenizer: out of memory");
    b->p = p;
    b->cap = cap;
    return MOE_OK;
}

moe_status tbuf_put(tbuf *b, const void *s, size_t n) {
    moe_status st = tbuf_reserve(b, n);
    if (st) return st;
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
    return MOE_OK;
}

void tbuf_free(tbuf *b) {
    free(b->p);
    b->p = NULL;
    b->n = b->cap = 0;
}

moe_status ivec_reserve(ivec *v, size_t extra) {
    if (v->n + extra <= v->cap) return MOE_OK;
    size_t cap = v->cap ? v->cap : 16;
    while (cap < v->n + extra) {
        if (cap > SIZE_MAX / 8) return moe_err(MOE_ENOMEM, "tokenizer: id vector too large");
        cap *= 2;
    }
    int32_t *p = realloc(v->p, cap * sizeof *p);
    if (!p) return moe_err(MOE_ENOMEM, "tokenizer: out of memory");
    v->p = p;
    v->cap = cap;
    return MOE_OK;
}

moe_status ivec_push(ivec *v, int32_t x) {
    if (v->n == v->cap) {
        moe_status st = ivec_reserve(v, 1);
        if (st) return st;
    }
    v->p[v->n++] = x;
    return MOE_OK;
}

/* --------------------------------------------------------------- UTF-8 -- */

uint32_t utf8_get(const char *s, size_t n, int *len) {
    const unsigned char *u = (const unsigned char *)s;
    int l = utf8_seqlen(u[0]);
    if ((size_t)l > n) l = 1; /* cannot happen on validated text; stay in bounds */
    *len = l;
    switch (l) {
    case 1: return u[0];
    case 2: return (uint32_t)(u[0] & 0x1F) << 6 | (u[1] & 0x3F);
    case 3: return (uint32_t)(u[0] & 0x0F) << 12 | (uint32_t)(u[1] & 0x3F) << 6 | (u[2] & 0x3F);
    default:
        return (uint32_t)(u[0] & 0x07) << 18 | (uint32_t)(u[1] & 0x3F) << 12 | (uint32_t)(u[2] & 0x3F) << 6 |
               (u[3] & 0x3F);
    }
}

int utf8_put(uint32_t cp, char *out) {
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | cp >> 6);
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | cp >> 12);
        out[1] = (char)(0x80 | (cp >> 6 & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | cp >> 18);
    out[1] = (char)(0x80 | (cp >> 12 & 0x3F));
    out[2] = (char)(0x80 | (cp >> 6 & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* Width of the sequence a lead byte starts (0: not a lead byte), and the
 * allowed range of its second byte (Unicode Table 3-7). */
static int utf8_lead(unsigned char c, unsigned char *lo, unsigned char *hi) {
    *lo = 0x80;
    *hi = 0xBF;
    if (c < 0x80) return 1;
    if (c >= 0xC2 && c <= 0xDF) return 2;
    if (c >= 0xE0 && c <= 0xEF) {
        if (c == 0xE0) *lo = 0xA0;
        if (c == 0xED) *hi = 0x9F;
        return 3;
    }
    if (c >= 0xF0 && c <= 0xF4) {
        if (c == 0xF0) *lo = 0x90;
        if (c == 0xF4) *hi = 0x8F;
        return 4;
    }
    return 0;
}

/* Length of the longest valid prefix of the sequence at s (1..4), or the
 * negated length of its maximal ill-formed subpart; 0 if s[n] ends inside a
 * sequence that is valid so far. */
static int utf8_step(const unsigned char *s, size_t n) {
    unsigned char lo, hi;
    int w = utf8_lead(s[0], &lo, &hi);
    if (w == 0) return -1;
    for (int k = 1; k < w; k++) {
        if ((size_t)k >= n) return 0;
        unsigned char a = k == 1 ? lo : 0x80, b = k == 1 ? hi : 0xBF;
        if (s[k] < a || s[k] > b) return -k;
    }
    return w;
}

size_t utf8_lossy(const unsigned char *s, size_t n, int final, tbuf *out, moe_status *st) {
    size_t i = 0, run = 0; /* s[run..i) is valid and not yet copied */
    *st = MOE_OK;
    if (n == 0) return 0;
    while (i < n) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        int k = utf8_step(s + i, n - i);
        if (k > 0) {
            i += (size_t)k;
            continue;
        }
        if ((*st = tbuf_put(out, s + run, i - run))) return 0;
        if (k == 0) { /* incomplete at the end */
            if (!final) return i;
            if ((*st = tbuf_put(out, TOK_REPLACEMENT, 3))) return 0;
            return n;
        }
        if ((*st = tbuf_put(out, TOK_REPLACEMENT, 3))) return 0;
        i += (size_t)(-k);
        run = i;
    }
    if ((*st = tbuf_put(out, s + run, n - run))) return 0;
    return n;
}

int utf8_valid(const unsigned char *s, size_t n) {
    size_t i = 0;
    while (i < n) {
        if (s[i] < 0x80) {
            i++;
            continue;
        }
        int k = utf8_step(s + i, n - i);
        if (k <= 0) return 0;
        i += (size_t)k;
    }
    return 1;
}

/* ----------------------------------------------------- Unicode classes -- */

int uni_is_whitespace(uint32_t cp) {
    return (cp >= 0x09 && cp <= 0x0D) || cp == 0x20 || cp == 0x85 || cp == 0xA0 || cp == 0x1680 ||
           (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 || cp == 0x202F || cp == 0x205F ||
           cp == 0x3000;
}

int uni_is_numeric(uint32_t cp) {
    if (cp < 0x80) return cp >= '0' && cp <= '9';
    utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
    return c == UTF8PROC_CATEGORY_ND || c == UTF8PROC_CATEGORY_NL || c == UTF8PROC_CATEGORY_NO;
}

int uni_is_punct(uint32_t cp) {
    if (cp < 0x80) return (cp >= 0x21 && cp <= 0x2F) || (cp >= 0x3A && cp <= 0x40) || (cp >= 0x5B && cp <= 0x60) ||
                          (cp >= 0x7B && cp <= 0x7E);
    utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
    return c >= UTF8PROC_CATEGORY_PC && c <= UTF8PROC_CATEGORY_PO;
}

int uni_is_word(uint32_t cp) {
    if (cp < 0x80) return (cp >= '0' && cp <= '9') || (cp >= 'a' && cp <= 'z') || (cp >= 'A' && cp <= 'Z') || cp == '_';
    if (cp == 0x200C || cp == 0x200D) return 1;
    utf8proc_category_t c = utf8proc_category((utf8proc_int32_t)cp);
    switch (c) {
    case UTF8PROC_CATEGORY_LU: case UTF8PROC_CATEGORY_LL: case UTF8PROC_CATEGORY_LT: case UTF8PROC_CATEGORY_LM:
    case UTF8PROC_CATEGORY_LO: case UTF8PROC_CATEGORY_MN: case UTF8PROC_CATEGORY_MC: case UTF8PROC_CATEGORY_ME:
    case UTF8PROC_CATEGORY_ND: case UTF8PROC_CATEGORY_NL: case UTF8PROC_CATEGORY_PC:
        return 1;
    default:
        return 0;
    }
}

/* ----------------------------------------------------------- hash maps -- */

uint64_t tok_hash(const void *s, size_t n) {
    /* 64-bit FNV-1a over 8-byte words, then a final avalanche */
    const unsigned char *p = s;
    uint64_t h = 0xcbf29ce484222325ULL ^ n;
    while (n >= 8) {
        uint64_t w;
        memcpy(&w, p, 8);
        h = (h ^ w) * 0x100000001b3ULL;
        h ^= h >> 29;
        p += 8;
        n -= 8;
    }
    uint64_t w = 0;
    memcpy(&w, p, n);
    h = (h ^ w) * 0x100000001b3ULL;
    h ^= h >> 32;
    h *= 0xd6e8feb86659fd93ULL;
    h ^= h >> 32;
    return h;
}

static uint32_t map_cap(size_t expected) {
    uint32_t cap = 16;
    while (cap < expected * 2 && cap < (1u << 30)) cap <<= 1;
    return cap;
}

moe_status strmap_init(strmap *m, size_t expected) {
    uint32_t cap = map_cap(expected);
    m->slots = calloc(cap, sizeof *m->slots);
    if (!m->slots) return moe_err(MOE_ENOMEM, "tokenizer: out of memory");
    m->mask = cap - 1;
    m->n = 0;
    return MOE_OK;
}

static moe_status strmap_grow(strmap *m) {
    strmap g;
    moe_status st = strmap_init(&g, (size_t)(m->mask + 1));
    if (st) return st;
    for (uint32_t i = 0; i <= m->mask; i++) {
        strmap_slot *s = &m->slots[i];
        if (!s->key) continue;
        uint32_t j = (uint32_t)tok_hash(s->key, s->len) & g.mask;
        while (g.slots[j].key) j = (j + 1) & g.mask;
        g.slots[j] = *s;
        g.n++;
    }
    free(m->slots);
    *m = g;
    return MOE_OK;
}

moe_status strmap_put(strmap *m, const char *key, size_t len, int32_t val, int32_t *old) {
    if (old) *old = -1;
    if (len > UINT32_MAX) return moe_err(MOE_EFORMAT, "tokenizer: token too long");
    if ((m->n + 1) * 2 > m->mask + 1) {
        moe_status st = strmap_grow(m);
        if (st) return st;
    }
    uint32_t j = (uint32_t)tok_hash(key, len) & m->mask;
    for (;; j = (j + 1) & m->mask) {
        strmap_slot *s = &m->slots[j];
        if (!s->key) {
            s->key = key;
            s->len = (uint32_t)len;
            s->val = val;
            m->n++;
            return MOE_OK;
        }
        if (s->len == len && memcmp(s->key, key, len) == 0) {
            if (old) *old = s->val;
            s->val = val;
            return MOE_OK;
        }
    }
}

int32_t strmap_get(const strmap *m, const char *key, size_t len) {
    if (!m->slots) return -1;
    uint32_t j = (uint32_t)tok_hash(key, len) & m->mask;
    for (;; j = (j + 1) & m->mask) {
        const strmap_slot *s = &m->slots[j];
        if (!s->key) return -1;
        if (s->len == len && memcmp(s->key, key, len) == 0) return s->val;
    }
}

void strmap_free(strmap *m) {
    free(m->slots);
    m->slots = NULL;
    m->mask = m->n = 0;
}

static inline uint32_t pair_hash(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    return (uint32_t)k;
}

moe_status pairmap_init(pairmap *m, size_t expected) {
    uint32_t cap = map_cap(expected);
    m->slots = malloc((size_t)cap * sizeof *m->slots);
    if (!m->slots) return moe_err(MOE_ENOMEM, "tokenizer: out of memory");
    for (uint32_t i = 0; i < cap; i++) m->slots[i].key = UINT64_MAX;
    m->mask = cap - 1;
    m->n = 0;
    return MOE_OK;
}

void pairmap_put(pairmap *m, int32_t a, int32_t b, uint32_t rank, int32_t new_id) {
    /* sized by pairmap_init for every merge, so it never fills up */
    uint64_t k = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    uint32_t j = pair_hash(k) & m->mask;
    while (m->slots[j].key != UINT64_MAX && m->slots[j].key != k) j = (j + 1) & m->mask;
    if (m->slots[j].key == UINT64_MAX) m->n++;
    m->slots[j].key = k;
    m->slots[j].rank = rank;
    m->slots[j].new_id = new_id;
}

const pairmap_slot *pairmap_get(const pairmap *m, int32_t a, int32_t b) {
    uint64_t k = (uint64_t)(uint32_t)a << 32 | (uint32_t)b;
    uint32_t j = pair_hash(k) & m->mask;
    for (;; j = (j + 1) & m->mask) {
        const pairmap_slot *s = &m->slots[j];
        if (s->key == k) return s;
        if (s->key == UINT64_MAX) return NULL;
    }
}

void pairmap_free(pairmap *m) {
    free(m->slots);
    m->slots = NULL;
}
