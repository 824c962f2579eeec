/* tok_encode.c — tok_encode: the encode pipeline of HF `tokenizers`.
 *
 *   1. ill-formed UTF-8 -> U+FFFD (as the Python binding's str would hold it);
 *   2. added tokens whose `normalized` is false are cut out of the raw text
 *      (leftmost-longest, as daachorse's trie; single_word / lstrip / rstrip as
 *      AddedVocabulary::find_matches, quirks included);
 *   3. each remaining piece is normalized, and the `normalized` added tokens
 *      are cut out of the normalized text;
 *   4. the pre-tokenizer ops split the rest; BPE turns each piece into ids;
 *   5. add_special: the post-processor's single-sequence template.
 */
#include <stdlib.h>
#include <string.h>

#include "../base/err.h"
#include "tok_internal.h"

/* ---------------------------------------------------------------- trie -- */

static int64_t trie_get(const atrie *tr, uint32_t node, unsigned char b) {
    uint64_t k = ((uint64_t)node << 8 | b) + 1;
    uint32_t j = (uint32_t)(k * 0x9E3779B97F4A7C15ULL >> 32) & tr->mask;
    for (;; j = (j + 1) & tr->mask) {
        if (tr->keys[j] == k) return tr->child[j];
        if (tr->keys[j] == 0) return -1;
    }
}

static moe_status trie_add(atrie *tr, const char *s, size_t n, int32_t idx, const tokenizer *t) {
    uint32_t node = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char b = (unsigned char)s[i];
        int64_t c = trie_get(tr, node, b);
        if (c < 0) {
            if (tr->n_nodes == tr->cap_nodes) return moe_err(MOE_EFORMAT, "tokenizer: internal: trie full");
            c = tr->n_nodes++;
            tr->term[c] = -1;
            uint64_t k = ((uint64_t)node << 8 | b) + 1;
            uint32_t j = (uint32_t)(k * 0x9E3779B97F4A7C15ULL >> 32) & tr->mask;
            while (tr->keys[j]) j = (j + 1) & tr->mask;
            tr->keys[j] = k;
            tr->child[j] = (int32_t)c;
            tr->n_trans++;
            if (node == 0) tr->first[b] = 1;
        }
        node = (uint32_t)c;
    }
    if (tr->term[node] >= 0)
        return moe_err(MOE_EFORMAT, "%s: added tokens %d and %d match the same text \"%.*s\"%s", t->path,
                       t->added[tr->term[node]].id, t->added[idx].id, (int)(n > 100 ? 100 : n), s,
                       t->added[idx].normalized ? " once normalized" : "");
    tr->term[node] = idx;
    return MOE_OK;
}

moe_status tok_trie_build(atrie *tr, const tokenizer *t, int normalized) {
    memset(tr, 0, sizeof *tr);
    size_t total = 0;
    for (size_t i = 0; i < t->n_added; i++)
        if (t->added[i].normalized == normalized) total += normalized && t->added[i].norm ? t->added[i].nlen : t->added[i].len;
    if (total == 0) return MOE_OK;
    if (total > (1u << 28)) return moe_err(MOE_EFORMAT, "%s: added tokens too long", t->path);
    uint32_t cap = 16;
    while (cap < total * 2) cap <<= 1;
    tr->keys = calloc(cap, sizeof *tr->keys);
    tr->child = malloc((size_t)cap * sizeof *tr->child);
    tr->term = malloc((total + 1) * sizeof *tr->term);
    if (!tr->keys || !tr->child || !tr->term) return moe_err(MOE_ENOMEM, "tokenizer: out of memory");
    tr->mask = cap - 1;
    tr->cap_nodes = (uint32_t)total + 1;
    tr->n_nodes = 1;
    tr->term[0] = -1;
    for (size_t i = 0; i < t->n_added; i++) {
        const added_tok *a = &t->added[i];
        if (a->normalized != normalized) continue;
        moe_status st = normalized && a->norm ? trie_add(tr, a->norm, a->nlen, (int32_t)i, t)
                                              : trie_add(tr, a->content, a->len, (int32_t)i, t);
        if (st) return st;
    }
    return MOE_OK;
}

void tok_trie_free(atrie *tr) {
    free(tr->keys);
    free(tr->child);
    free(tr->term);
    memset(tr, 0, sizeof *tr);
}

/* Leftmost-longest match in s[from..n): *ms, *me, *idx; 0 if none. */
static int trie_find(const atrie *tr, const char *s, size_t n, size_t from, size_t *ms, size_t *me, int32_t *idx) {
    for (size_t i = from; i < n; i++) {
        if (!tr->first[(unsigned char)s[i]]) continue;
        uint32_t node = 0;
        int32_t best = -1;
        size_t best_end = 0;
        for (size_t j = i; j < n; j++) {
            int64_t c = trie_get(tr, node, (unsigned char)s[j]);
            if (c < 0) break;
            node = (uint32_t)c;
            if (tr->term[node] >= 0) {
                best = tr->term[node];
                best_end = j + 1;
            }
        }
        if (best >= 0) {
            *ms = i;
            *me = best_end;
            *idx = best;
            return 1;
        }
    }
    return 0;
}

/* --------------------------------------------------------- added split -- */

typedef struct seg {
    int32_t id; /* >= 0: an added token; -1: text */
    size_t start, end;
} seg;

typedef struct seg_vec {
    seg *p;
    size_t n, cap;
} seg_vec;

static moe_status seg_push(seg_vec *v, int32_t id, size_t start, size_t end) {
    if (v->n == v->cap) {
        size_t cap = v->cap ? v->cap * 2 : 16;
        seg *p = realloc(v->p, cap * sizeof *p);
        if (!p) return moe_err(MOE_ENOMEM, "tokenizer: out of memory");
        v->p = p;
        v->cap = cap;
    }
    v->p[v->n++] = (seg){id, start, end};
    return MOE_OK;
}

static uint32_t last_char(const char *s, size_t end, size_t *start) {
    size_t k = end - 1;
    while (k > 0 && ((unsigned char)s[k] & 0xC0) == 0x80) k--;
    int l;
    *start = k;
    return utf8_get(s + k, end - k, &l);
}

/* AddedVocabulary::find_matches over s[n]. */
static moe_status split_added(const tokenizer *t, const atrie *tr, const char *s, size_t n, seg_vec *out) {
    out->n = 0;
    if (n == 0) return MOE_OK;
    if (!tr->keys) return seg_push(out, -1, 0, n);
    size_t start_offset = 0, pos = 0, ms, me;
    int32_t idx;
    moe_status st = MOE_OK;
    while (!st && trie_find(tr, s, n, pos, &ms, &me, &idx)) {
        pos = me;
        const added_tok *a = &t->added[idx];
        size_t start = ms, stop = me, k;
        int l;
        if (a->single_word) {
            int start_space = start == 0 || !uni_is_word(last_char(s, start, &k));
            int stop_space = stop == n || !uni_is_word(utf8_get(s + stop, n - stop, &l));
            if (!start_space || !stop_space) continue;
        }
        if (a->lstrip) {
            size_t ns = start;
            while (ns > 0) {
                uint32_t cp = last_char(s, ns, &k);
                if (!uni_is_whitespace(cp)) break;
                ns = k;
            }
            start = ns > start_offset ? ns : start_offset;
        }
        if (a->rstrip)
            while (stop < n) {
                uint32_t cp = utf8_get(s + stop, n - stop, &l);
                if (!uni_is_whitespace(cp)) break;
                stop += (size_t)l;
            }
        if (start_offset < start) st = seg_push(out, -1, start_offset, start);
        if (!st) st = seg_push(out, a->id, start, stop);
        start_offset = stop;
    }
    if (!st && start_offset < n) st = seg_push(out, -1, start_offset, n);
    return st;
}

/* ------------------------------------------------------------- encode -- */

typedef struct enc_ctx {
    tbuf clean, norm;
    seg_vec s1, s2;
    pretok_ctx pc;
    tok_ranges nranges;
    ivec ids;
} enc_ctx;

static void enc_free(enc_ctx *c) {
    tbuf_free(&c->clean);
    tbuf_free(&c->norm);
    free(c->s1.p);
    free(c->s2.p);
    tbuf_free(&c->pc.arena);
    free(c->pc.a.p);
    free(c->pc.b.p);
    free(c->pc.ranges.p);
    free(c->nranges.p);
    if (c->pc.md) pcre2_match_data_free(c->pc.md);
    free(c->ids.p);
}

/* Pre-tokenizes and BPE-encodes one piece of normalized text. */
static moe_status encode_text(const tokenizer *t, enc_ctx *c, const char *s, size_t n, int origin) {
    pretok_ctx *pc = &c->pc;
    pc->arena.n = 0;
    pc->a.n = 0;
    moe_status st = tbuf_put(&pc->arena, s, n);
    if (!st) st = piece_push(&pc->a, 0, n, origin);
    if (!st) st = tok_pretokenize(t, pc);
    for (size_t i = 0; i < pc->a.n && !st; i++) st = tok_bpe_piece(t, pc->arena.p + pc->a.p[i].off, pc->a.p[i].len, &c->ids);
    return st;
}

static moe_status encode_run(const tokenizer *t, enc_ctx *c, const char *text, size_t len) {
    moe_status st;
    const char *s = text;
    size_t n = len;
    if (!utf8_valid((const unsigned char *)text, len)) {
        utf8_lossy((const unsigned char *)text, len, 1, &c->clean, &st);
        if (st) return st;
        s = c->clean.p;
        n = c->clean.n;
    }
    c->pc.md = pcre2_match_data_create(1, NULL);
    if (!c->pc.md) return moe_err(MOE_ENOMEM, "tokenizer: out of memory");
    if ((st = split_added(t, &t->trie_raw, s, n, &c->s1))) return st;
    for (size_t i = 0; i < c->s1.n; i++) {
        const seg *g = &c->s1.p[i];
        if (g->id >= 0) {
            if ((st = ivec_push(&c->ids, g->id))) return st;
            continue;
        }
        const char *ns = s + g->start;
        size_t nn = g->end - g->start;
        if (t->n_norms) {
            if ((st = tok_normalize(t, ns, nn, &c->norm, c->pc.md, &c->nranges))) return st;
            ns = c->norm.p;
            nn = c->norm.n;
        }
        if ((st = split_added(t, &t->trie_norm, ns, nn, &c->s2))) return st;
        for (size_t j = 0; j < c->s2.n; j++) {
            const seg *h = &c->s2.p[j];
            if (h->id >= 0) st = ivec_push(&c->ids, h->id);
            else st = encode_text(t, c, ns + h->start, h->end - h->start, g->start == 0 && h->start == 0);
            if (st) return st;
        }
    }
    return MOE_OK;
}

moe_status tok_encode(const tokenizer *t, const char *text, size_t len, int add_special, int32_t **ids, size_t *n) {
    if (ids) *ids = NULL;
    if (n) *n = 0;
    if (!t || !ids || !n || (!text && len)) return moe_err(MOE_EINVAL, "tok_encode: NULL argument");
    enc_ctx c;
    memset(&c, 0, sizeof c);
    moe_status st = encode_run(t, &c, text ? text : "", len);
    int32_t *outp = NULL;
    size_t outn = 0;
    if (!st) {
        size_t total = c.ids.n;
        if (add_special) { /* tok_load gives every tokenizer a template, [$A] at least */
            total = 0;
            for (size_t i = 0; i < t->n_tmpl; i++) total += t->tmpl[i] < 0 ? c.ids.n : 1;
        }
        outp = malloc((total ? total : 1) * sizeof *outp);
        if (!outp) st = moe_err(MOE_ENOMEM, "tokenizer: out of memory");
        else if (!add_special) {
            if (c.ids.n) memcpy(outp, c.ids.p, c.ids.n * sizeof *outp);
            outn = c.ids.n;
        } else {
            for (size_t i = 0; i < t->n_tmpl; i++) {
                if (t->tmpl[i] >= 0) outp[outn++] = t->tmpl[i];
                else {
                    if (c.ids.n) memcpy(outp + outn, c.ids.p, c.ids.n * sizeof *outp);
                    outn += c.ids.n;
                }
            }
        }
    }
    enc_free(&c);
    if (st) return st;
    *ids = outp;
    *n = outn;
    return MOE_OK;
}
