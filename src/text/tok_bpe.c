/* tok_bpe.c — the BPE model: one pre-tokenized piece to ids.
 *
 * As HF's BPE::merge_word + Word::merge_all: the piece is cut into characters
 * (each looked up in the vocabulary, else its <0xNN> byte tokens under
 * byte_fallback, else unk, fused or not), then the pair of lowest merge rank
 * (leftmost on ties) is merged repeatedly through a binary heap, with stale
 * heap entries skipped: O(n log n) per piece. Results for pieces under 256
 * bytes are kept in a word cache of 16 mutex-guarded shards, so one tokenizer
 * serves many threads; a full shard is emptied and refilled. */
#include <stdlib.h>
#include <string.h>

#include "../base/err.h"
#include "tok_internal.h"

#define CACHE_MAX_KEY 256
#define SHARD_CAP 4096 /* slots per shard; a shard is emptied at half full */

/* ---------------------------------------------------------- word cache -- */

void tok_cache_init(tokenizer *t) {
    for (int i = 0; i < WCACHE_SHARDS; i++) pthread_mutex_init(&t->cache[i].mu, NULL);
}

static void shard_clear(wcache_shard *s) {
    if (!s->e) return;
    for (uint32_t i = 0; i < s->cap; i++) free(s->e[i].blob);
    memset(s->e, 0, (size_t)s->cap * sizeof *s->e);
    s->n = 0;
}

void tok_cache_free(tokenizer *t) {
    for (int i = 0; i < WCACHE_SHARDS; i++) {
        shard_clear(&t->cache[i]);
        free(t->cache[i].e);
        t->cache[i].e = NULL;
        pthread_mutex_destroy(&t->cache[i].mu);
    }
}

static int cache_get(const tokenizer *t, uint64_t h, const char *s, size_t n, ivec *out, moe_status *st) {
    wcache_shard *sh = (wcache_shard *)&t->cache[h >> 60];
    int hit = 0;
    pthread_mutex_lock(&sh->mu);
    if (sh->e) {
        for (uint32_t j = (uint32_t)h & (sh->cap - 1);; j = (j + 1) & (sh->cap - 1)) {
            wcache_entry *e = &sh->e[j];
            if (!e->blob) break;
            if (e->h == h && e->klen == n && memcmp(e->blob, s, n) == 0) {
                if (e->nids && !(*st = ivec_reserve(out, e->nids))) {
                    memcpy(out->p + out->n, e->blob + n, (size_t)e->nids * sizeof(int32_t));
                    out->n += e->nids;
                }
                hit = 1;
                break;
            }
        }
    }
    pthread_mutex_unlock(&sh->mu);
    return hit;
}

static void cache_put(const tokenizer *t, uint64_t h, const char *s, size_t n, const int32_t *ids, size_t nids) {
    char *blob = malloc(n + nids * sizeof(int32_t));
    if (!blob) return; /* the cache is an optimisation only */
    memcpy(blob, s, n);
    if (nids) memcpy(blob + n, ids, nids * sizeof(int32_t));
    wcache_shard *sh = (wcache_shard *)&t->cache[h >> 60];
    pthread_mutex_lock(&sh->mu);
    if (!sh->e) {
        sh->e = calloc(SHARD_CAP, sizeof *sh->e);
        sh->cap = sh->e ? SHARD_CAP : 0;
    }
    if (sh->e && sh->n >= sh->cap / 2) shard_clear(sh);
    if (sh->e) {
        uint32_t j = (uint32_t)h & (sh->cap - 1);
        while (sh->e[j].blob) {
            if (sh->e[j].h == h && sh->e[j].klen == n && memcmp(sh->e[j].blob, s, n) == 0) break; /* raced: present */
            j = (j + 1) & (sh->cap - 1);
        }
        if (!sh->e[j].blob) {
            sh->e[j] = (wcache_entry){h, blob, (uint32_t)n, (uint32_t)nids};
            sh->n++;
            blob = NULL;
        }
    }
    pthread_mutex_unlock(&sh->mu);
    free(blob);
}

/* --------------------------------------------------------------- merge -- */

typedef struct sym {
    int32_t c, prev, next;
    uint32_t len; /* 0: merged away */
} sym;

typedef struct hent {
    uint32_t rank, pos;
    int32_t new_id;
} hent;

static inline int hless(const hent *a, const hent *b) { return a->rank != b->rank ? a->rank < b->rank : a->pos < b->pos; }

static void hpush(hent *h, size_t *n, hent x) {
    size_t i = (*n)++;
    while (i > 0) {
        size_t p = (i - 1) / 2;
        if (!hless(&x, &h[p])) break;
        h[i] = h[p];
        i = p;
    }
    h[i] = x;
}

static hent hpop(hent *h, size_t *n) {
    hent top = h[0], x = h[--*n];
    size_t i = 0, m = *n;
    for (;;) {
        size_t l = 2 * i + 1, r = l + 1, b = i;
        const hent *best = &x;
        if (l < m && hless(&h[l], best)) { b = l; best = &h[l]; }
        if (r < m && hless(&h[r], best)) b = r;
        if (b == i) break;
        h[i] = h[b];
        i = b;
    }
    if (m) h[i] = x;
    return top;
}

static void merge_all(const tokenizer *t, sym *s, size_t n, hent *heap) {
    size_t hn = 0;
    for (size_t i = 0; i + 1 < n; i++) {
        const pairmap_slot *m = pairmap_get(&t->merges, s[i].c, s[i + 1].c);
        if (m) hpush(heap, &hn, (hent){m->rank, (uint32_t)i, m->new_id});
    }
    while (hn) {
        hent top = hpop(heap, &hn);
        sym *cur = &s[top.pos];
        if (cur->len == 0 || cur->next == -1) continue;
        sym *right = &s[cur->next];
        const pairmap_slot *m = pairmap_get(&t->merges, cur->c, right->c);
        if (!m || m->new_id != top.new_id) continue; /* stale entry */
        cur->c = top.new_id;
        cur->len += right->len;
        cur->next = right->next;
        right->len = 0;
        if (cur->next >= 0) s[cur->next].prev = (int32_t)top.pos;
        if (cur->prev >= 0) {
            const pairmap_slot *p = pairmap_get(&t->merges, s[cur->prev].c, cur->c);
            if (p) hpush(heap, &hn, (hent){p->rank, (uint32_t)cur->prev, p->new_id});
        }
        if (cur->next >= 0) {
            const pairmap_slot *p = pairmap_get(&t->merges, cur->c, s[cur->next].c);
            if (p) hpush(heap, &hn, (hent){p->rank, top.pos, p->new_id});
        }
    }
}

/* Vocabulary id of one character (with continuing_subword_prefix /
 * end_of_word_suffix added as HF does), -1 if none. */
static int32_t char_id(const tokenizer *t, const char *c, int l, int first, int last, char *buf) {
    if (!t->cont_prefix_len && !t->eow_suffix_len) {
        if (l <= 2) {
            int dummy;
            uint32_t cp = utf8_get(c, (size_t)l, &dummy);
            if (cp < 0x800) return t->small_ids[cp];
        }
        return strmap_get(&t->model_vocab, c, (size_t)l);
    }
    size_t k = 0;
    if (!first) {
        memcpy(buf, t->cont_prefix, t->cont_prefix_len);
        k = t->cont_prefix_len;
    }
    memcpy(buf + k, c, (size_t)l);
    k += (size_t)l;
    if (last) {
        memcpy(buf + k, t->eow_suffix, t->eow_suffix_len);
        k += t->eow_suffix_len;
    }
    return strmap_get(&t->model_vocab, buf, k);
}

static moe_status merge_word(const tokenizer *t, const char *w, size_t n, ivec *out) {
    sym sbuf[64];
    hent hbuf[3 * 64];
    /* at most one symbol per byte; the heap sees n - 1 pairs plus two per merge */
    sym *s = n <= 64 ? sbuf : malloc(n * sizeof *s);
    hent *heap = n <= 64 ? hbuf : malloc(3 * n * sizeof *heap);
    char *buf = NULL;
    moe_status st = MOE_OK;
    if (t->cont_prefix_len || t->eow_suffix_len) buf = malloc(t->cont_prefix_len + t->eow_suffix_len + 4);
    if (!s || !heap || ((t->cont_prefix_len || t->eow_suffix_len) && !buf)) {
        st = moe_err(MOE_ENOMEM, "tokenizer: out of memory");
        goto done;
    }
    size_t ns = 0;
    int32_t unk = -1;
    uint32_t unk_len = 0;
    for (size_t i = 0; i < n;) {
        int l;
        utf8_get(w + i, n - i, &l);
        int32_t id = char_id(t, w + i, l, i == 0, i + (size_t)l == n, buf);
        if (id >= 0) {
            if (unk >= 0) {
                s[ns++] = (sym){unk, 0, 0, unk_len};
                unk = -1;
            }
            s[ns++] = (sym){id, 0, 0, (uint32_t)l};
        } else {
            int done = 0;
            if (t->byte_fallback) { /* tok_load refuses byte_fallback with a prefix/suffix */
                int all = 1;
                for (int k = 0; k < l; k++) all &= t->byte_ids[(unsigned char)w[i + (size_t)k]] >= 0;
                if (all) { /* a pending unk stays pending, as in HF */
                    for (int k = 0; k < l; k++) s[ns++] = (sym){t->byte_ids[(unsigned char)w[i + (size_t)k]], 0, 0, 1};
                    done = 1;
                }
            }
            if (!done && t->unk_id != -1) {
                if (t->unk_id < 0) {
                    st = moe_err(MOE_EFORMAT, "%s: unk_token \"%s\" is not in the vocabulary", t->path, t->unk_token);
                    goto done;
                }
                if (unk >= 0 && t->fuse_unk) {
                    unk_len += (uint32_t)l;
                } else {
                    if (unk >= 0) s[ns++] = (sym){unk, 0, 0, unk_len};
                    unk = t->unk_id;
                    unk_len = (uint32_t)l;
                }
            }
        }
        i += (size_t)l;
    }
    if (unk >= 0) s[ns++] = (sym){unk, 0, 0, unk_len};
    for (size_t i = 0; i < ns; i++) {
        s[i].prev = (int32_t)i - 1;
        s[i].next = i + 1 < ns ? (int32_t)i + 1 : -1;
    }
    merge_all(t, s, ns, heap);
    if ((st = ivec_reserve(out, ns))) goto done;
    for (size_t i = 0; i < ns; i++)
        if (s[i].len) out->p[out->n++] = s[i].c;
done:
    if (s != sbuf) free(s);
    if (heap != hbuf) free(heap);
    free(buf);
    return st;
}

static moe_status bpe_word(const tokenizer *t, const char *s, size_t n, ivec *out) {
    moe_status st = MOE_OK;
    uint64_t h = 0;
    if (n < CACHE_MAX_KEY) {
        h = tok_hash(s, n);
        if (cache_get(t, h, s, n, out, &st)) return st;
    }
    size_t before = out->n;
    if ((st = merge_word(t, s, n, out))) return st;
    if (n < CACHE_MAX_KEY) cache_put(t, h, s, n, out->n > before ? out->p + before : NULL, out->n - before);
    return MOE_OK;
}

#define META "\xE2\x96\x81" /* U+2581 */

/* Whether a merge can never join the character cp to a following "▁". */
static int cut_after(const tokenizer *t, uint32_t cp, const char *c, int l) {
    if (cp == 0x2581) return 0;
    for (int i = 0; i < t->n_split_bad; i++)
        if (t->split_bad[i] == cp) return 0;
    /* an unknown character becomes byte tokens or unk, whose strings are not cp */
    return (cp < 0x800 ? t->small_ids[cp] : strmap_get(&t->model_vocab, c, (size_t)l)) >= 0;
}

moe_status tok_bpe_piece(const tokenizer *t, const char *s, size_t n, ivec *out) {
    if (n == 0) return MOE_OK;
    if (t->ignore_merges) {
        int32_t id = strmap_get(&t->model_vocab, s, n);
        if (id >= 0) return ivec_push(out, id);
    }
    if (!t->split_meta || n < 16) return bpe_word(t, s, n, out);
    size_t start = 0, prev = 0; /* prev: start of the previous character */
    moe_status st = MOE_OK;
    for (size_t i = 0; i < n && !st;) {
        int l = utf8_seqlen((unsigned char)s[i]);
        if (i > start && (size_t)l == 3 && i + 3 <= n && memcmp(s + i, META, 3) == 0) {
            int pl;
            uint32_t pcp = utf8_get(s + prev, i - prev, &pl);
            if (cut_after(t, pcp, s + prev, pl)) {
                st = bpe_word(t, s + start, i - start, out);
                start = i;
            }
        }
        prev = i;
        i += (size_t)l;
    }
    if (!st) st = bpe_word(t, s + start, n - start, out);
    return st;
}

/* Finds the characters that some vocabulary token has right before "▁"; enables cutting if they are few. */
void tok_bpe_split_init(tokenizer *t) {
    t->split_meta = 0;
    t->n_split_bad = 0;
    if (t->cont_prefix_len || t->eow_suffix_len || t->ignore_merges || strmap_get(&t->model_vocab, META, 3) < 0) return;
    for (uint32_t i = 0; i <= t->model_vocab.mask; i++) {
        const strmap_slot *e = &t->model_vocab.slots[i];
        if (!e->key) continue;
        const char *k = e->key;
        for (uint32_t j = 1; j + 3 <= e->len; j++) {
            if (memcmp(k + j, META, 3) != 0) continue;
            uint32_t q = j - 1;
            while (q > 0 && ((unsigned char)k[q] & 0xC0) == 0x80) q--;
            int l;
            uint32_t cp = utf8_get(k + q, j - q, &l);
            if (cp == 0x2581) continue;
            int known = 0;
            for (int b = 0; b < t->n_split_bad; b++) known |= t->split_bad[b] == cp;
            if (known) continue;
            if (t->n_split_bad == 16) return; /* too many: leave pieces whole */
            t->split_bad[t->n_split_bad++] = cp;
        }
    }
    t->split_meta = 1;
}
