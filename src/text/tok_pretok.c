/* tok_pretok.c — patterns and pre-tokenizers.
 *
 * HF `tokenizers` runs its regexes with Oniguruma; here they run on PCRE2
 * (UTF + UCP, JIT). tok_regex_compile translates the few places where the two
 * disagree: Oniguruma's \s also matches U+0085, its \w is L|M|Nd|Pc, its \h is
 * a hex digit, and ^/$ are line anchors. tok_pattern_find iterates matches as
 * rust-onig's find_iter does (an empty match right after the previous match is
 * skipped by one character), and tok_split follows NormalizedString::split's
 * behaviours (Removed, Isolated, MergedWithPrevious/Next, Contiguous).
 *
 * Pre-tokenizer ops turn a list of pieces (ranges of an arena) into a finer
 * list; ops that rewrite text (ByteLevel's byte-to-char map, Metaspace) append
 * the new text to the arena. Empty pieces are dropped, as HF drops them. */
#define _GNU_SOURCE /* memmem */
#include <stdlib.h>
#include <string.h>

#include "../base/err.h"
#include "tok_internal.h"

/* ------------------------------------------------------------- regexes -- */

static moe_status put_str(tbuf *b, const char *s) { return tbuf_put(b, s, strlen(s)); }

static moe_status translate(const char *src, size_t len, tbuf *out, const char *what) {
    int in_class = 0;
    moe_status st = MOE_OK;
    for (size_t i = 0; i < len && !st; i++) {
        char c = src[i];
        if (c == '\\' && i + 1 < len) {
            char e = src[++i];
            switch (e) {
            case 's': st = put_str(out, in_class ? "\\s\\x{85}" : "[\\s\\x{85}]"); break;
            case 'S': st = put_str(out, in_class ? "\\S" : "[^\\s\\x{85}]"); break;
            case 'w': st = put_str(out, in_class ? "\\p{L}\\p{M}\\p{Nd}\\p{Pc}" : "[\\p{L}\\p{M}\\p{Nd}\\p{Pc}]"); break;
            case 'W': st = put_str(out, in_class ? "\\W" : "[^\\p{L}\\p{M}\\p{Nd}\\p{Pc}]"); break;
            case 'h': st = put_str(out, in_class ? "0-9a-fA-F" : "[0-9a-fA-F]"); break;
            case 'H':
                if (in_class) return moe_err(MOE_EUNSUPPORTED, "%s: \\H inside a character class is not supported", what);
                st = put_str(out, "[^0-9a-fA-F]");
                break;
            default: {
                /* copy the escape and a whole (possibly multi-byte) character */
                size_t l = (size_t)utf8_seqlen((unsigned char)e);
                if (i + l > len) l = len - i;
                st = tbuf_put(out, "\\", 1);
                if (!st) st = tbuf_put(out, src + i, l);
                i += l - 1;
            }
            }
            continue;
        }
        if (in_class) {
            if (c == '[') {
                if (i + 1 < len && src[i + 1] == ':') { /* POSIX class [:alpha:] */
                    const char *end = NULL;
                    for (size_t j = i + 2; j + 1 < len; j++)
                        if (src[j] == ':' && src[j + 1] == ']') {
                            end = src + j + 2;
                            break;
                        }
                    if (!end) return moe_err(MOE_EFORMAT, "%s: unterminated POSIX class in regex", what);
                    st = tbuf_put(out, src + i, (size_t)(end - (src + i)));
                    i = (size_t)(end - src) - 1;
                    continue;
                }
                return moe_err(MOE_EUNSUPPORTED, "%s: nested character classes (Oniguruma) are not supported", what);
            }
            if (c == '&' && i + 1 < len && src[i + 1] == '&')
                return moe_err(MOE_EUNSUPPORTED, "%s: character class intersection (&&) is not supported", what);
            if (c == ']') in_class = 0;
            st = tbuf_put(out, &c, 1);
            continue;
        }
        if (c == '[') {
            in_class = 1;
            st = tbuf_put(out, &c, 1);
            /* a leading ']' or '^]' is literal */
            if (!st && i + 1 < len && src[i + 1] == '^') st = tbuf_put(out, src + ++i, 1);
            if (!st && i + 1 < len && src[i + 1] == ']') st = tbuf_put(out, src + ++i, 1);
            continue;
        }
        st = tbuf_put(out, &c, 1);
    }
    return st;
}

moe_status tok_regex_compile(const char *src, size_t len, pcre2_code **out, const char *what) {
    *out = NULL;
    tbuf pat = {0};
    moe_status st = translate(src, len, &pat, what);
    if (!st) st = tbuf_put(&pat, "", 0);
    if (st) {
        tbuf_free(&pat);
        return st;
    }
    int err = 0;
    PCRE2_SIZE off = 0;
    pcre2_code *re = pcre2_compile((PCRE2_SPTR)pat.p, pat.n, PCRE2_UTF | PCRE2_UCP | PCRE2_MULTILINE, &err, &off, NULL);
    tbuf_free(&pat);
    if (!re) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(err, msg, sizeof msg);
        return moe_err(MOE_EUNSUPPORTED, "%s: regex \"%.*s\" does not compile: %s", what, (int)(len > 200 ? 200 : len),
                       src, (const char *)msg);
    }
    pcre2_jit_compile(re, PCRE2_JIT_COMPLETE); /* best effort: the interpreter gives the same matches */
    *out = re;
    return MOE_OK;
}

moe_status tok_pattern_compile(tok_pattern *p, const char *src, size_t len, int is_regex, const char *what) {
    memset(p, 0, sizeof *p);
    if (!is_regex && len > 0) {
        p->lit = malloc(len + 1);
        if (!p->lit) return moe_err(MOE_ENOMEM, "tokenizer: out of memory");
        memcpy(p->lit, src, len);
        p->lit[len] = 0;
        p->litlen = len;
        return MOE_OK;
    }
    /* an empty literal is an empty regex: it matches between characters, as regex::escape("") does */
    return tok_regex_compile(src, len, &p->re, what);
}

void tok_pattern_free(tok_pattern *p) {
    free(p->lit);
    if (p->re) pcre2_code_free(p->re);
    memset(p, 0, sizeof *p);
}

static moe_status ranges_push(tok_ranges *r, size_t start, size_t end, int match) {
    if (r->n == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 32;
        tok_range *p = realloc(r->p, cap * sizeof *p);
        if (!p) return moe_err(MOE_ENOMEM, "tokenizer: out of memory");
        r->p = p;
        r->cap = cap;
    }
    r->p[r->n++] = (tok_range){start, end, match};
    return MOE_OK;
}

/* One regex search from `from`; the match goes to *ms, *me. 0: none, 1: found. */
static int re_search(const pcre2_code *re, const char *s, size_t n, size_t from, pcre2_match_data *md, size_t *ms,
                     size_t *me, moe_status *st) {
    int rc = pcre2_match(re, (PCRE2_SPTR)s, n, from, PCRE2_NO_UTF_CHECK, md, NULL);
    if (rc == PCRE2_ERROR_JIT_STACKLIMIT) rc = pcre2_match(re, (PCRE2_SPTR)s, n, from, PCRE2_NO_UTF_CHECK | PCRE2_NO_JIT, md, NULL);
    if (rc == PCRE2_ERROR_NOMATCH) return 0;
    if (rc < 0) {
        PCRE2_UCHAR msg[256];
        pcre2_get_error_message(rc, msg, sizeof msg);
        *st = moe_err(MOE_EINVAL, "tokenizer: regex match failed: %s", (const char *)msg);
        return 0;
    }
    PCRE2_SIZE *ov = pcre2_get_ovector_pointer(md);
    *ms = ov[0];
    *me = ov[1];
    return 1;
}

moe_status tok_pattern_find(const tok_pattern *p, const char *s, size_t n, pcre2_match_data *md, tok_ranges *out) {
    out->n = 0;
    if (n == 0) return ranges_push(out, 0, 0, 0);
    moe_status st = MOE_OK;
    size_t prev = 0;
    if (p->lit) {
        size_t i = 0;
        while (i + p->litlen <= n) {
            const char *hit = memmem(s + i, n - i, p->lit, p->litlen);
            if (!hit) break;
            size_t ms = (size_t)(hit - s);
            if (prev != ms && (st = ranges_push(out, prev, ms, 0))) return st;
            if ((st = ranges_push(out, ms, ms + p->litlen, 1))) return st;
            prev = i = ms + p->litlen;
        }
    } else {
        size_t last_end = 0, last_match_end = 0, ms, me;
        int have_last = 0;
        while (last_end <= n) {
            if (!re_search(p->re, s, n, last_end, md, &ms, &me, &st)) break;
            if (ms == me && have_last && last_match_end == me) {
                if (last_end >= n) break;
                last_end += (size_t)utf8_seqlen((unsigned char)s[last_end]);
                continue;
            }
            last_end = me;
            last_match_end = me;
            have_last = 1;
            if (prev != ms && (st = ranges_push(out, prev, ms, 0))) return st;
            if ((st = ranges_push(out, ms, me, 1))) return st;
            prev = me;
        }
        if (st) return st;
    }
    if (prev != n) st = ranges_push(out, prev, n, 0);
    return st;
}

/* HF's Fn(char) -> bool pattern: every matching character is its own match. */
typedef int (*char_pred)(uint32_t cp, uint32_t arg);

static moe_status pred_find(char_pred f, uint32_t arg, const char *s, size_t n, tok_ranges *out) {
    out->n = 0;
    if (n == 0) return ranges_push(out, 0, 0, 0);
    size_t last = 0, i = 0;
    moe_status st = MOE_OK;
    while (i < n && !st) {
        int l;
        uint32_t cp = utf8_get(s + i, n - i, &l);
        if (f(cp, arg)) {
            if (last < i) st = ranges_push(out, last, i, 0);
            if (!st) st = ranges_push(out, i, i + (size_t)l, 1);
            last = i + (size_t)l;
        }
        i += (size_t)l;
    }
    if (!st && n > last) st = ranges_push(out, last, n, 0);
    return st;
}

static int pred_eq(uint32_t cp, uint32_t arg) { return cp == arg; }
static int pred_ws(uint32_t cp, uint32_t arg) { (void)arg; return uni_is_whitespace(cp); }
static int pred_num(uint32_t cp, uint32_t arg) { (void)arg; return uni_is_numeric(cp); }
static int pred_punct(uint32_t cp, uint32_t arg) { (void)arg; return uni_is_punct(cp); }

/* NormalizedString::split: rewrites r (match flags) in place into the ranges
 * to keep, per behaviour; removed ranges get match = 1, kept ones 0. */
static void apply_behavior(tok_ranges *r, split_behavior b) {
    size_t w = 0;
    int prev_match = 0;
    switch (b) {
    case SB_ISOLATED:
        for (size_t i = 0; i < r->n; i++) r->p[i].match = 0;
        return;
    case SB_REMOVED:
        return;
    case SB_CONTIGUOUS:
        for (size_t i = 0; i < r->n; i++) {
            int m = r->p[i].match;
            if (m == prev_match && w > 0) r->p[w - 1].end = r->p[i].end;
            else r->p[w++] = (tok_range){r->p[i].start, r->p[i].end, 0};
            prev_match = m;
        }
        r->n = w;
        return;
    case SB_MERGED_PREV:
        for (size_t i = 0; i < r->n; i++) {
            int m = r->p[i].match;
            if (m && !prev_match && w > 0) r->p[w - 1].end = r->p[i].end;
            else r->p[w++] = (tok_range){r->p[i].start, r->p[i].end, 0};
            prev_match = m;
        }
        r->n = w;
        return;
    case SB_MERGED_NEXT: {
        /* the same fold from the right, written into the tail, then moved down */
        size_t k = r->n;
        for (size_t i = r->n; i-- > 0;) {
            int m = r->p[i].match;
            if (m && !prev_match && k < r->n) r->p[k].start = r->p[i].start;
            else r->p[--k] = (tok_range){r->p[i].start, r->p[i].end, 0};
            prev_match = m;
        }
        memmove(r->p, r->p + k, (r->n - k) * sizeof *r->p);
        r->n -= k;
        return;
    }
    }
}

/* Appends the kept, non-empty ranges of piece pc to out. */
static moe_status emit_ranges(const tok_ranges *r, const piece *pc, piece_vec *out) {
    for (size_t i = 0; i < r->n; i++) {
        const tok_range *g = &r->p[i];
        if (g->match || g->end == g->start) continue;
        moe_status st = piece_push(out, pc->off + g->start, g->end - g->start, pc->origin && g->start == 0);
        if (st) return st;
    }
    return MOE_OK;
}

moe_status piece_push(piece_vec *v, size_t off, size_t len, int origin) {
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 64;
        piece *p = realloc(v->p, cap * sizeof *p);
        if (!p) return moe_err(MOE_ENOMEM, "tokenizer: out of memory");
        v->p = p;
        v->cap = cap;
    }
    v->p[v->n++] = (piece){off, len, origin};
    return MOE_OK;
}

/* ------------------------------------------------------ pre-tokenizers -- */

/* ByteLevel's byte -> code point map (GPT-2's bytes_to_unicode), UTF-8 encoded. */
static void bytelevel_char(unsigned b, char out[2], int *len) {
    uint32_t cp;
    if ((b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE)) cp = b;
    else if (b < '!') cp = 256 + b;            /* 0x00-0x20 -> U+0100-U+0120 */
    else if (b < 0xA1) cp = 256 + 33 + (b - 0x7F); /* 0x7F-0xA0 -> U+0121-U+0142 */
    else cp = 256 + 33 + 34;                     /* 0xAD -> U+0143 */
    *len = utf8_put(cp, out);
}

static moe_status pre_bytelevel(const tokenizer *t, const pre_op *op, pretok_ctx *c) {
    moe_status st = MOE_OK;
    c->b.n = 0;
    for (size_t i = 0; i < c->a.n && !st; i++) {
        piece pc = c->a.p[i];
        if (op->add_prefix_space && c->arena.p[pc.off] != ' ') {
            size_t off = c->arena.n;
            if ((st = tbuf_reserve(&c->arena, pc.len + 1))) break;
            c->arena.p[c->arena.n++] = ' ';
            memcpy(c->arena.p + c->arena.n, c->arena.p + pc.off, pc.len);
            c->arena.n += pc.len;
            pc.off = off;
            pc.len += 1;
        }
        if (op->use_regex) {
            tok_pattern p = {.re = t->re_bytelevel};
            if (!(st = tok_pattern_find(&p, c->arena.p + pc.off, pc.len, c->md, &c->ranges))) {
                apply_behavior(&c->ranges, SB_ISOLATED);
                st = emit_ranges(&c->ranges, &pc, &c->b);
            }
        } else {
            st = piece_push(&c->b, pc.off, pc.len, pc.origin);
        }
    }
    if (st) return st;
    /* map every byte to its printable stand-in */
    c->a.n = 0;
    for (size_t i = 0; i < c->b.n; i++) {
        piece pc = c->b.p[i];
        if ((st = tbuf_reserve(&c->arena, pc.len * 2))) return st;
        size_t off = c->arena.n;
        for (size_t k = 0; k < pc.len; k++) {
            int l;
            bytelevel_char((unsigned char)c->arena.p[pc.off + k], c->arena.p + c->arena.n, &l);
            c->arena.n += (size_t)l;
        }
        if ((st = piece_push(&c->a, off, c->arena.n - off, pc.origin))) return st;
    }
    return MOE_OK;
}

static moe_status pre_metaspace(const pre_op *op, pretok_ctx *c) {
    char rep[4];
    int rl = utf8_put(op->ch, rep);
    moe_status st = MOE_OK;
    c->b.n = 0;
    for (size_t i = 0; i < c->a.n && !st; i++) {
        piece pc = c->a.p[i];
        /* replace ' ' and maybe prepend the replacement, into fresh arena space */
        size_t spaces = 0;
        for (size_t k = 0; k < pc.len; k++) spaces += c->arena.p[pc.off + k] == ' ';
        if ((st = tbuf_reserve(&c->arena, pc.len + spaces * (size_t)rl + (size_t)rl))) break;
        size_t off = c->arena.n;
        int starts = pc.len > 0 && (c->arena.p[pc.off] == ' ' ||
                                    (pc.len >= (size_t)rl && memcmp(c->arena.p + pc.off, rep, (size_t)rl) == 0));
        int prepend = !starts && (op->prepend_scheme == PREPEND_ALWAYS || (op->prepend_scheme == PREPEND_FIRST && pc.origin));
        char *w = c->arena.p + c->arena.n;
        if (prepend) {
            memcpy(w, rep, (size_t)rl);
            w += rl;
        }
        for (size_t k = 0; k < pc.len; k++) {
            char ch = c->arena.p[pc.off + k];
            if (ch == ' ') {
                memcpy(w, rep, (size_t)rl);
                w += rl;
            } else {
                *w++ = ch;
            }
        }
        c->arena.n = (size_t)(w - c->arena.p);
        piece np = {off, c->arena.n - off, pc.origin};
        if (op->split) {
            if (!(st = pred_find(pred_eq, op->ch, c->arena.p + np.off, np.len, &c->ranges))) {
                apply_behavior(&c->ranges, SB_MERGED_NEXT);
                st = emit_ranges(&c->ranges, &np, &c->b);
            }
        } else if (np.len) {
            st = piece_push(&c->b, np.off, np.len, np.origin);
        }
    }
    if (st) return st;
    piece_vec tmp = c->a;
    c->a = c->b;
    c->b = tmp;
    return MOE_OK;
}

moe_status tok_pretokenize(const tokenizer *t, pretok_ctx *c) {
    moe_status st = MOE_OK;
    for (size_t k = 0; k < t->n_pres && !st; k++) {
        const pre_op *op = &t->pres[k];
        if (op->kind == PRE_BYTELEVEL) {
            st = pre_bytelevel(t, op, c);
            continue;
        }
        if (op->kind == PRE_METASPACE) {
            st = pre_metaspace(op, c);
            continue;
        }
        c->b.n = 0;
        for (size_t i = 0; i < c->a.n && !st; i++) {
            const piece *pc = &c->a.p[i];
            const char *s = c->arena.p + pc->off;
            split_behavior b = op->behavior;
            switch (op->kind) {
            case PRE_SPLIT:
                st = tok_pattern_find(&op->pat, s, pc->len, c->md, &c->ranges);
                if (!st && op->invert)
                    for (size_t j = 0; j < c->ranges.n; j++) c->ranges.p[j].match = !c->ranges.p[j].match;
                break;
            case PRE_DIGITS:
                st = pred_find(pred_num, 0, s, pc->len, &c->ranges);
                b = op->individual ? SB_ISOLATED : SB_CONTIGUOUS;
                break;
            case PRE_WHITESPACE_SPLIT:
                st = pred_find(pred_ws, 0, s, pc->len, &c->ranges);
                b = SB_REMOVED;
                break;
            case PRE_CHAR_DELIM:
                st = pred_find(pred_eq, op->ch, s, pc->len, &c->ranges);
                b = SB_REMOVED;
                break;
            case PRE_PUNCTUATION:
                st = pred_find(pred_punct, 0, s, pc->len, &c->ranges);
                break;
            default:
                st = moe_err(MOE_EUNSUPPORTED, "tokenizer: internal: pre-tokenizer kind %d", (int)op->kind);
            }
            if (st) break;
            apply_behavior(&c->ranges, b);
            st = emit_ranges(&c->ranges, pc, &c->b);
        }
        if (st) break;
        piece_vec tmp = c->a;
        c->a = c->b;
        c->b = tmp;
    }
    return st;
}
