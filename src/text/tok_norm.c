/* tok_norm.c — normalizers: NFC/NFD/NFKC/NFKD (utf8proc), Lowercase,
 * Replace, Prepend, Strip, ByteLevel and Nmt, applied in order to one piece of
 * text between added tokens, as NormalizedString does in HF `tokenizers`.
 * Only the text is produced; alignments are not tracked (encode needs none). */
#include <stdlib.h>
#include <string.h>
#include <utf8proc.h>

#include "../base/err.h"
#include "tok_internal.h"

static int all_below(const char *s, size_t n, uint32_t limit) {
    for (size_t i = 0; i < n;) {
        int l;
        if (utf8_get(s + i, n - i, &l) >= limit) return 0;
        i += (size_t)l;
    }
    return 1;
}

#define NFC_TABLE_END 0x30000

/* Marks every code point before which NFC cannot be cut (besides those with a
 * nonzero combining class and the Hangul jamo): canonical composites NFC
 * changes (singletons, exclusions), starters that are the second half of some
 * composition (they appear after the first character of a canonical
 * decomposition: U+09BE, U+0B3E, ...), and composites whose decomposition
 * starts with either kind. Built from utf8proc's own mappings, so it agrees
 * with the utf8proc in use, whatever its version. */
moe_status tok_nfc_init(tokenizer *t) {
    if (t->nfc_unstable) return MOE_OK;
    uint8_t *bits = calloc(NFC_TABLE_END / 8, 1);
    uint32_t (*first)[2] = NULL; /* (composite, first code point of its decomposition) */
    size_t n_first = 0, cap_first = 0;
    if (!bits) return moe_err(MOE_ENOMEM, "tokenizer: out of memory");
#define MARK(c) ((c) < NFC_TABLE_END ? (void)(bits[(c) >> 3] |= (uint8_t)(1u << ((c) & 7))) : (void)0)
    for (uint32_t cp = 0x300; cp < NFC_TABLE_END; cp++) {
        const utf8proc_property_t *p = utf8proc_get_property((utf8proc_int32_t)cp);
        if (p->decomp_seqindex == UINT16_MAX || p->decomp_type != 0) continue; /* no canonical decomposition */
        utf8proc_int32_t d[8];
        utf8proc_ssize_t nd = utf8proc_decompose_char((utf8proc_int32_t)cp, d, 8, UTF8PROC_DECOMPOSE, NULL);
        utf8proc_uint8_t in[4], *dst = NULL;
        utf8proc_ssize_t n = utf8proc_encode_char((utf8proc_int32_t)cp, in);
        utf8proc_ssize_t r = utf8proc_map(in, n, &dst, UTF8PROC_STABLE | UTF8PROC_COMPOSE);
        if (r != n || memcmp(dst, in, (size_t)n) != 0) MARK(cp);
        free(dst);
        if (nd < 1 || nd > 8) {
            MARK(cp);
            continue;
        }
        if (utf8proc_get_property(d[0])->combining_class != 0) MARK(cp);
        for (utf8proc_ssize_t j = 1; j < nd; j++)
            if (utf8proc_get_property(d[j])->combining_class == 0) MARK((uint32_t)d[j]);
        if (n_first == cap_first) {
            cap_first = cap_first ? 2 * cap_first : 4096;
            void *q = realloc(first, cap_first * sizeof *first);
            if (!q) {
                free(first);
                free(bits);
                return moe_err(MOE_ENOMEM, "tokenizer: out of memory");
            }
            first = q;
        }
        first[n_first][0] = cp;
        first[n_first++][1] = (uint32_t)d[0];
    }
    for (size_t i = 0; i < n_first; i++) {
        uint32_t f = first[i][1];
        if (f >= 0x300 && (f >= NFC_TABLE_END || (bits[f >> 3] & (1u << (f & 7))))) MARK(first[i][0]);
    }
#undef MARK
    free(first);
    t->nfc_unstable = bits;
    return MOE_OK;
}

/* Whether NFC may be computed separately on either side of a character
 * (ICU's "composition boundary before"). Conservative: a false "no" costs
 * only speed. */
static int nfc_boundary(const tokenizer *t, uint32_t cp) {
    if (cp < 0x300) return 1;
    if (cp >= NFC_TABLE_END) return 0;
    if ((cp >= 0x1100 && cp <= 0x11FF) || (cp >= 0xA960 && cp <= 0xA97F) || (cp >= 0xD7B0 && cp <= 0xD7FF)) return 0; /* jamo */
    if (t->nfc_unstable[cp >> 3] & (1u << (cp & 7))) return 0;
    return utf8proc_get_property((utf8proc_int32_t)cp)->combining_class == 0;
}

static moe_status map_span(const char *s, size_t n, int opt, tbuf *out) {
    utf8proc_uint8_t *dst = NULL;
    utf8proc_ssize_t r = utf8proc_map((const utf8proc_uint8_t *)s, (utf8proc_ssize_t)n, &dst, (utf8proc_option_t)opt);
    if (r < 0) {
        free(dst);
        return moe_err(r == UTF8PROC_ERROR_NOMEM ? MOE_ENOMEM : MOE_EINVAL, "tokenizer: normalization failed: %s",
                       utf8proc_errmsg(r));
    }
    moe_status st = tbuf_put(out, dst, (size_t)r);
    free(dst);
    return st;
}

/* NFC chunk by chunk: text between composition boundaries is copied when the
 * chunk is one stable character, and normalized by utf8proc otherwise. */
static moe_status nfc(const tokenizer *t, const tbuf *in, tbuf *out) {
    const int opt = UTF8PROC_STABLE | UTF8PROC_COMPOSE;
    size_t copy_from = 0, chunk = 0, i = 0;
    int trivial = 1;
    moe_status st = MOE_OK;
    while (i <= in->n && !st) {
        int l = 0, b = 1;
        if (i < in->n) {
            unsigned char c = (unsigned char)in->p[i];
            if (c < 0x80) l = 1;
            else b = nfc_boundary(t, utf8_get(in->p + i, in->n - i, &l));
        }
        if (b && i > chunk && !trivial) { /* close a chunk that needs the full algorithm */
            if (!(st = tbuf_put(out, in->p + copy_from, chunk - copy_from))) st = map_span(in->p + chunk, i - chunk, opt, out);
            copy_from = i;
        }
        if (b) {
            chunk = i;
            trivial = 1;
        } else {
            trivial = 0;
        }
        if (i == in->n) break;
        i += (size_t)l;
    }
    if (!st) st = tbuf_put(out, in->p + copy_from, in->n - copy_from);
    return st;
}

static moe_status unicode_norm(const tokenizer *t, norm_kind k, const tbuf *in, tbuf *out) {
    /* ASCII is invariant under every form */
    if (all_below(in->p, in->n, k == NORM_NFC ? 0x300 : 0x80)) return tbuf_put(out, in->p, in->n);
    if (k == NORM_NFC && t->nfc_unstable) return nfc(t, in, out);
    int opt = UTF8PROC_STABLE;
    switch (k) {
    case NORM_NFC: opt |= UTF8PROC_COMPOSE; break;
    case NORM_NFD: opt |= UTF8PROC_DECOMPOSE; break;
    case NORM_NFKC: opt |= UTF8PROC_COMPOSE | UTF8PROC_COMPAT; break;
    default: opt |= UTF8PROC_DECOMPOSE | UTF8PROC_COMPAT; break;
    }
    return map_span(in->p, in->n, opt, out);
}

static moe_status lowercase(const tbuf *in, tbuf *out) {
    moe_status st = tbuf_reserve(out, in->n);
    for (size_t i = 0; i < in->n && !st;) {
        int l;
        uint32_t cp = utf8_get(in->p + i, in->n - i, &l);
        i += (size_t)l;
        char buf[8];
        int m;
        if (cp == 0x130) { /* the one unconditional multi-character lowercase mapping */
            m = utf8_put('i', buf);
            m += utf8_put(0x307, buf + m);
        } else {
            m = utf8_put((uint32_t)utf8proc_tolower((utf8proc_int32_t)cp), buf);
        }
        st = tbuf_put(out, buf, (size_t)m);
    }
    return st;
}

static moe_status replace(const norm_op *op, const tbuf *in, tbuf *out, pcre2_match_data *md, tok_ranges *r) {
    moe_status st = tok_pattern_find(&op->pat, in->p, in->n, md, r);
    for (size_t i = 0; i < r->n && !st; i++) {
        const tok_range *g = &r->p[i];
        st = g->match ? tbuf_put(out, op->str, op->slen) : tbuf_put(out, in->p + g->start, g->end - g->start);
    }
    if (!st) st = tbuf_put(out, "", 0);
    return st;
}

static moe_status strip(const norm_op *op, const tbuf *in, tbuf *out) {
    size_t a = 0, b = in->n;
    int l;
    if (op->left)
        while (a < b && uni_is_whitespace(utf8_get(in->p + a, b - a, &l))) a += (size_t)l;
    if (op->right)
        while (b > a) {
            size_t k = b - 1;
            while (k > a && ((unsigned char)in->p[k] & 0xC0) == 0x80) k--;
            if (!uni_is_whitespace(utf8_get(in->p + k, b - k, &l))) break;
            b = k;
        }
    return tbuf_put(out, in->p + a, b - a);
}

static moe_status bytelevel(const tbuf *in, tbuf *out) {
    moe_status st = tbuf_reserve(out, in->n * 2);
    for (size_t i = 0; i < in->n && !st; i++) {
        unsigned b = (unsigned char)in->p[i];
        uint32_t cp = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || b >= 0xAE ? b
                      : b < '!'                                                   ? 256 + b
                      : b < 0xA1                                                  ? 256 + 33 + (b - 0x7F)
                                                                                  : 256 + 67;
        char buf[4];
        st = tbuf_put(out, buf, (size_t)utf8_put(cp, buf));
    }
    return st;
}

static moe_status nmt(const tbuf *in, tbuf *out) {
    moe_status st = tbuf_put(out, "", 0);
    for (size_t i = 0; i < in->n && !st;) {
        int l;
        uint32_t cp = utf8_get(in->p + i, in->n - i, &l);
        i += (size_t)l;
        if ((cp >= 1 && cp <= 8) || cp == 0x0B || (cp >= 0x0E && cp <= 0x1F) || cp == 0x7F || cp == 0x8F || cp == 0x9F)
            continue;
        if (cp == 0x09 || cp == 0x0A || cp == 0x0C || cp == 0x0D || cp == 0x1680 || (cp >= 0x200B && cp <= 0x200F) ||
            cp == 0x2028 || cp == 0x2029 || cp == 0x2581 || cp == 0xFEFF || cp == 0xFFFD)
            cp = ' ';
        char buf[4];
        st = tbuf_put(out, buf, (size_t)utf8_put(cp, buf));
    }
    return st;
}

moe_status tok_normalize(const tokenizer *t, const char *s, size_t n, tbuf *out, pcre2_match_data *md,
                         tok_ranges *scratch) {
    out->n = 0;
    moe_status st = tbuf_put(out, s, n);
    tbuf tmp = {0};
    for (size_t k = 0; k < t->n_norms && !st; k++) {
        const norm_op *op = &t->norms[k];
        tmp.n = 0;
        switch (op->kind) {
        case NORM_NFC: case NORM_NFD: case NORM_NFKC: case NORM_NFKD: st = unicode_norm(t, op->kind, out, &tmp); break;
        case NORM_LOWERCASE: st = lowercase(out, &tmp); break;
        case NORM_REPLACE: st = replace(op, out, &tmp, md, scratch); break;
        case NORM_PREPEND:
            if (out->n) st = tbuf_put(&tmp, op->str, op->slen);
            if (!st) st = tbuf_put(&tmp, out->p, out->n);
            break;
        case NORM_STRIP: st = strip(op, out, &tmp); break;
        case NORM_BYTELEVEL: st = bytelevel(out, &tmp); break;
        case NORM_NMT: st = nmt(out, &tmp); break;
        }
        if (!st) st = tbuf_put(&tmp, "", 0);
        if (!st) {
            tbuf sw = *out;
            *out = tmp;
            tmp = sw;
        }
    }
    tbuf_free(&tmp);
    return st;
}
