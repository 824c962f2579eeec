/* tok_decode.c — decoders and the streaming detokenizer.
 *
 * HF decodes a whole list of token strings through a chain of decoders
 * (Replace, ByteFallback, Fuse, Strip, ByteLevel, Metaspace) and joins the
 * result. Here every decoder is a streaming stage: tokens enter one at a time
 * and each stage passes on what can no longer change, holding back the rest
 * (a run of <0xNN> tokens, an incomplete UTF-8 sequence, trailing characters a
 * Strip may still remove, a partial Replace match). Before the first Fuse or
 * ByteLevel stage the stream is a list of tokens; after it, pieces of the one
 * fused token ("chunked"). tok_decode is detok push-all + flush, so the
 * streaming and the whole-list results are the same by construction. */
#define _GNU_SOURCE /* memmem */
#include <stdlib.h>
#include <string.h>

#include "../base/err.h"
#include "tok_internal.h"

typedef struct dstate {
    tbuf pend;   /* ByteFallback: pending bytes; ByteLevel: incomplete UTF-8; Replace (chunked): partial match */
    tbuf work;   /* this stage's output being built */
    tbuf work2;  /* Replace (chunked): held text + the new chunk */
    uint64_t index;    /* Metaspace: tokens seen */
    size_t strip_seen; /* Strip (chunked): leading characters examined */
    int strip_done;    /* Strip (chunked): past the leading run */
    size_t held;       /* Strip (chunked): trailing content characters held back */
} dstate;

struct detok {
    const tokenizer *t;
    int skip_special;
    int joined;  /* no decoder: a token was emitted, so the next one needs " " */
    dstate *st;  /* [t->n_decs] */
    tbuf out;    /* text produced by the current push / flush */
};

moe_status tok_dec_check(const tokenizer *t) {
    int chunked = 0;
    for (size_t k = 0; k < t->n_decs; k++) {
        dec_op *op = &t->decs[k];
        op->chunked = chunked;
        if (chunked && op->kind == DEC_BYTEFALLBACK)
            return moe_err(MOE_EUNSUPPORTED, "%s: decoder ByteFallback after Fuse/ByteLevel is not supported", t->path);
        if (chunked && op->kind == DEC_BYTELEVEL)
            return moe_err(MOE_EUNSUPPORTED, "%s: decoder ByteLevel after Fuse/ByteLevel is not supported", t->path);
        if (chunked && op->kind == DEC_REPLACE && !op->pat.lit)
            return moe_err(MOE_EUNSUPPORTED, "%s: decoder Replace with a regex after Fuse/ByteLevel is not supported",
                           t->path);
        if (op->kind == DEC_FUSE || op->kind == DEC_BYTELEVEL) chunked = 1;
    }
    return MOE_OK;
}

static moe_status emit(detok *d, size_t k, const char *s, size_t n);

/* ------------------------------------------------------------- stages -- */

/* ByteFallback's test: "<0xNN>", six bytes, NN parsed as Rust's u8::from_str_radix(_, 16) would. */
static int byte_token(const char *s, size_t n, unsigned *b) {
    if (n != 6 || memcmp(s, "<0x", 3) != 0 || s[5] != '>') return 0;
    unsigned v = 0;
    size_t i = 3;
    if (s[3] == '+') i = 4; /* from_str_radix accepts a leading '+' */
    for (; i < 5; i++) {
        char c = s[i];
        unsigned x = c >= '0' && c <= '9' ? (unsigned)(c - '0')
                     : c >= 'a' && c <= 'f' ? (unsigned)(c - 'a' + 10)
                     : c >= 'A' && c <= 'F' ? (unsigned)(c - 'A' + 10)
                                            : 16;
        if (x == 16) return 0;
        v = v * 16 + x;
    }
    *b = v;
    return 1;
}

static moe_status fallback_flush(detok *d, size_t k) {
    dstate *ds = &d->st[k];
    if (!ds->pend.n) return MOE_OK;
    moe_status st = MOE_OK;
    size_t n = ds->pend.n;
    ds->pend.n = 0; /* emptied first: emit() below never re-enters this stage */
    if (utf8_valid((const unsigned char *)ds->pend.p, n)) return emit(d, k + 1, ds->pend.p, n); /* later stages never touch it */
    for (size_t i = 0; i < n && !st; i++) st = emit(d, k + 1, TOK_REPLACEMENT, 3);
    return st;
}

static moe_status stage_fallback(detok *d, size_t k, const char *s, size_t n) {
    unsigned b;
    if (byte_token(s, n, &b)) {
        char c = (char)b;
        return tbuf_put(&d->st[k].pend, &c, 1);
    }
    moe_status st = fallback_flush(d, k);
    return st ? st : emit(d, k + 1, s, n);
}

static moe_status stage_replace(detok *d, size_t k, const char *s, size_t n) {
    const dec_op *op = &d->t->decs[k];
    dstate *ds = &d->st[k];
    ds->work.n = 0;
    moe_status st = MOE_OK;
    if (!op->chunked) { /* one whole token */
        tok_ranges r = {0};
        pcre2_match_data *md = op->pat.re ? pcre2_match_data_create(1, NULL) : NULL;
        if (op->pat.re && !md) return moe_err(MOE_ENOMEM, "tokenizer: out of memory");
        st = tok_pattern_find(&op->pat, s, n, md, &r);
        for (size_t i = 0; i < r.n && !st; i++)
            st = r.p[i].match ? tbuf_put(&ds->work, op->content, op->clen)
                              : tbuf_put(&ds->work, s + r.p[i].start, r.p[i].end - r.p[i].start);
        free(r.p);
        if (md) pcre2_match_data_free(md);
        if (!st) st = tbuf_put(&ds->work, "", 0);
        return st ? st : emit(d, k + 1, ds->work.p, ds->work.n);
    }
    /* chunked, literal pattern: replace what is complete, hold a possible match start */
    const char *P = op->pat.lit;
    size_t L = op->pat.litlen;
    ds->work2.n = 0;
    if ((st = tbuf_put(&ds->work2, ds->pend.p, ds->pend.n)) || (st = tbuf_put(&ds->work2, s, n))) return st;
    ds->pend.n = 0;
    const char *in = ds->work2.p;
    size_t m = ds->work2.n, i = 0;
    while (i + L <= m) {
        const char *hit = memmem(in + i, m - i, P, L);
        if (!hit) break;
        size_t at = (size_t)(hit - in);
        if ((st = tbuf_put(&ds->work, in + i, at - i)) || (st = tbuf_put(&ds->work, op->content, op->clen))) return st;
        i = at + L;
    }
    size_t hold = 0;
    for (size_t h = (L - 1 < m - i ? L - 1 : m - i); h > 0; h--)
        if (memcmp(in + m - h, P, h) == 0) {
            hold = h;
            break;
        }
    if ((st = tbuf_put(&ds->work, in + i, m - i - hold)) || (st = tbuf_put(&ds->pend, in + m - hold, hold))) return st;
    return ds->work.n ? emit(d, k + 1, ds->work.p, ds->work.n) : MOE_OK;
}

static moe_status stage_strip(detok *d, size_t k, const char *s, size_t n) {
    const dec_op *op = &d->t->decs[k];
    dstate *ds = &d->st[k];
    int l;
    if (!op->chunked) { /* Strip::decode_chain on one token */
        size_t a = 0, b = n;
        for (size_t i = 0; i < op->start && a < n; i++) {
            if (utf8_get(s + a, n - a, &l) != op->ch) break;
            a += (size_t)l;
        }
        for (size_t i = 0; i < op->stop && b > 0; i++) {
            size_t q = b - 1;
            while (q > 0 && ((unsigned char)s[q] & 0xC0) == 0x80) q--;
            if (utf8_get(s + q, b - q, &l) != op->ch) break;
            b = q;
        }
        return emit(d, k + 1, s + a, b > a ? b - a : 0);
    }
    char ch[4];
    int chl = utf8_put(op->ch, ch);
    ds->work.n = 0;
    moe_status st = MOE_OK;
    for (size_t i = 0; i < n && !st;) {
        uint32_t cp = utf8_get(s + i, n - i, &l);
        if (!ds->strip_done) {
            if (ds->strip_seen < op->start && cp == op->ch) {
                ds->strip_seen++;
                i += (size_t)l;
                continue;
            }
            ds->strip_done = 1;
        }
        if (op->stop && cp == op->ch) {
            if (ds->held == op->stop) st = tbuf_put(&ds->work, ch, (size_t)chl); /* the oldest held one is safe */
            else ds->held++;
        } else {
            for (; ds->held && !st; ds->held--) st = tbuf_put(&ds->work, ch, (size_t)chl);
            if (!st) st = tbuf_put(&ds->work, s + i, (size_t)l);
        }
        i += (size_t)l;
    }
    if (st) return st;
    return ds->work.n ? emit(d, k + 1, ds->work.p, ds->work.n) : MOE_OK;
}

/* ByteLevel's char -> byte map (the inverse of GPT-2's bytes_to_unicode), -1 if cp is none of the 256. */
static int bytelevel_byte(uint32_t cp) {
    if ((cp >= 0x21 && cp <= 0x7E) || (cp >= 0xA1 && cp <= 0xAC) || (cp >= 0xAE && cp <= 0xFF)) return (int)cp;
    if (cp >= 0x100 && cp <= 0x120) return (int)(cp - 0x100);
    if (cp >= 0x121 && cp <= 0x142) return (int)(cp - 0x121 + 0x7F);
    if (cp == 0x143) return 0xAD;
    return -1;
}

static moe_status bytelevel_out(detok *d, size_t k, int final) {
    dstate *ds = &d->st[k];
    moe_status st;
    ds->work.n = 0;
    size_t used = utf8_lossy((const unsigned char *)ds->pend.p, ds->pend.n, final, &ds->work, &st);
    if (st) return st;
    if (used && ds->pend.n > used) memmove(ds->pend.p, ds->pend.p + used, ds->pend.n - used);
    ds->pend.n -= used;
    return ds->work.n ? emit(d, k + 1, ds->work.p, ds->work.n) : MOE_OK;
}

static moe_status stage_bytelevel(detok *d, size_t k, const char *s, size_t n) {
    dstate *ds = &d->st[k];
    moe_status st = tbuf_reserve(&ds->pend, n);
    if (st) return st;
    size_t start = ds->pend.n;
    int l;
    for (size_t i = 0; i < n; i += (size_t)l) {
        int b = bytelevel_byte(utf8_get(s + i, n - i, &l));
        if (b < 0) { /* not a byte-level token: its own UTF-8 bytes */
            ds->pend.n = start;
            memcpy(ds->pend.p + ds->pend.n, s, n);
            ds->pend.n += n;
            return bytelevel_out(d, k, 0);
        }
        ds->pend.p[ds->pend.n++] = (char)b;
    }
    return bytelevel_out(d, k, 0);
}

static moe_status stage_metaspace(detok *d, size_t k, const char *s, size_t n) {
    const dec_op *op = &d->t->decs[k];
    dstate *ds = &d->st[k];
    int first = (op->chunked || ds->index == 0) && !op->prepend_never;
    ds->index++;
    ds->work.n = 0;
    moe_status st = tbuf_put(&ds->work, "", 0);
    int l;
    for (size_t i = 0; i < n && !st; i += (size_t)l) {
        uint32_t cp = utf8_get(s + i, n - i, &l);
        if (cp == op->ch) {
            if (!first) st = tbuf_put(&ds->work, " ", 1);
        } else {
            st = tbuf_put(&ds->work, s + i, (size_t)l);
        }
    }
    return st ? st : emit(d, k + 1, ds->work.p, ds->work.n);
}

/* Passes token / chunk s[n] to stage k (k == n_decs: the output). */
static moe_status emit(detok *d, size_t k, const char *s, size_t n) {
    const tokenizer *t = d->t;
    if (k == t->n_decs) {
        if (!t->has_decoder && d->joined) {
            moe_status st = tbuf_put(&d->out, " ", 1);
            if (st) return st;
        }
        d->joined = 1;
        return tbuf_put(&d->out, s, n);
    }
    switch (t->decs[k].kind) {
    case DEC_REPLACE: return stage_replace(d, k, s, n);
    case DEC_BYTEFALLBACK: return stage_fallback(d, k, s, n);
    case DEC_FUSE: return emit(d, k + 1, s, n);
    case DEC_STRIP: return stage_strip(d, k, s, n);
    case DEC_BYTELEVEL: return stage_bytelevel(d, k, s, n);
    case DEC_METASPACE: return stage_metaspace(d, k, s, n);
    }
    return moe_err(MOE_EINVAL, "tokenizer: internal: decoder kind");
}

/* Finishes every stage in order, each passing its held text on. */
static moe_status flush_all(detok *d) {
    moe_status st = MOE_OK;
    for (size_t k = 0; k < d->t->n_decs && !st; k++) {
        const dec_op *op = &d->t->decs[k];
        dstate *ds = &d->st[k];
        switch (op->kind) {
        case DEC_BYTEFALLBACK: st = fallback_flush(d, k); break;
        case DEC_BYTELEVEL: st = bytelevel_out(d, k, 1); break;
        case DEC_REPLACE:
            if (op->chunked && ds->pend.n) {
                size_t n = ds->pend.n;
                ds->pend.n = 0;
                st = emit(d, k + 1, ds->pend.p, n);
            }
            break;
        default: break; /* Strip drops what it holds; the rest hold nothing */
        }
    }
    return st;
}

/* ---------------------------------------------------------------- API -- */

void detok_reset(detok *d) {
    if (!d) return;
    for (size_t k = 0; k < d->t->n_decs; k++) {
        dstate *ds = &d->st[k];
        ds->pend.n = ds->work.n = ds->work2.n = 0;
        ds->index = 0;
        ds->strip_seen = 0;
        ds->strip_done = 0;
        ds->held = 0;
    }
    d->joined = 0;
    d->out.n = 0;
}

moe_status detok_new(const tokenizer *t, int skip_special, detok **out) {
    if (!out) return moe_err(MOE_EINVAL, "detok_new: NULL argument");
    *out = NULL;
    if (!t) return moe_err(MOE_EINVAL, "detok_new: NULL tokenizer");
    detok *d = calloc(1, sizeof *d);
    if (!d || !(d->st = calloc(t->n_decs ? t->n_decs : 1, sizeof *d->st))) {
        free(d);
        return moe_err(MOE_ENOMEM, "tokenizer: out of memory");
    }
    d->t = t;
    d->skip_special = skip_special;
    *out = d;
    return MOE_OK;
}

void detok_free(detok *d) {
    if (!d) return;
    for (size_t k = 0; k < d->t->n_decs; k++) {
        tbuf_free(&d->st[k].pend);
        tbuf_free(&d->st[k].work);
        tbuf_free(&d->st[k].work2);
    }
    free(d->st);
    tbuf_free(&d->out);
    free(d);
}

static moe_status push_id(detok *d, int32_t id) {
    const tokenizer *t = d->t;
    if (id < 0 || id >= t->vocab_size || !t->dec_str[id]) return MOE_OK; /* HF skips ids without a token */
    if (d->skip_special && t->special[id]) return MOE_OK;
    return emit(d, 0, t->dec_str[id], t->dec_len[id]);
}

/* Appends d->out to the caller's buffer. */
static moe_status hand_out(detok *d, char **out, size_t *out_len) {
    size_t have = *out ? *out_len : 0;
    if (*out && d->out.n == 0) return MOE_OK;
    char *p = realloc(*out, have + d->out.n + 1);
    if (!p) return moe_err(MOE_ENOMEM, "tokenizer: out of memory");
    if (d->out.n) memcpy(p + have, d->out.p, d->out.n);
    p[have + d->out.n] = 0;
    *out = p;
    *out_len = have + d->out.n;
    d->out.n = 0;
    return MOE_OK;
}

moe_status detok_push(detok *d, int32_t id, char **out, size_t *out_len) {
    if (!d || !out || !out_len) return moe_err(MOE_EINVAL, "detok_push: NULL argument");
    d->out.n = 0;
    moe_status st = push_id(d, id);
    if (st) return st;
    return hand_out(d, out, out_len);
}

moe_status detok_flush(detok *d, char **out, size_t *out_len) {
    if (!d || !out || !out_len) return moe_err(MOE_EINVAL, "detok_flush: NULL argument");
    d->out.n = 0;
    moe_status st = flush_all(d);
    if (!st) st = hand_out(d, out, out_len);
    detok_reset(d);
    return st;
}

moe_status tok_decode(const tokenizer *t, const int32_t *ids, size_t n, int skip_special, char **text, size_t *len) {
    if (text) *text = NULL;
    if (len) *len = 0;
    if (!t || !text || (!ids && n)) return moe_err(MOE_EINVAL, "tok_decode: NULL argument");
    detok *d;
    moe_status st = detok_new(t, skip_special, &d);
    if (st) return st;
    for (size_t i = 0; i < n && !st; i++) st = push_id(d, ids[i]);
    if (!st) st = flush_all(d);
    if (!st) st = tbuf_put(&d->out, "", 0); /* non-NULL, NUL-terminated */
    if (!st) {
        *text = d->out.p;
        if (len) *len = d->out.n;
        d->out.p = NULL;
        d->out.n = d->out.cap = 0;
    }
    detok_free(d);
    return st;
}
