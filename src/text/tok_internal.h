/* tok_internal.h — the tokenizer's data structures, shared by src/text/tok_*.c.
 *
 * A tokenizer is built once by tok_load and is read-only afterwards (the word
 * cache has its own locks). The encode pipeline mirrors HF `tokenizers`:
 *   text -> added tokens (raw) -> normalizer -> added tokens (normalized)
 *        -> pre-tokenizer ops -> BPE per piece -> post-processor template.
 * Decoding runs a chain of streaming stages (tok_decode.c).
 */
#ifndef MOE_TEXT_TOK_INTERNAL_H
#define MOE_TEXT_TOK_INTERNAL_H

#define PCRE2_CODE_UNIT_WIDTH 8
#include <pcre2.h>
#include <pthread.h>
#include <stddef.h>
#include <stdint.h>

#include "moe.h"
#include "tokenizer.h"

/* ------------------------------------------------------------ buffers -- */

typedef struct tbuf { /* growable byte buffer */
    char *p;
    size_t n, cap;
} tbuf;

moe_status tbuf_reserve(tbuf *b, size_t extra);
moe_status tbuf_put(tbuf *b, const void *s, size_t n);
void tbuf_free(tbuf *b);

typedef struct ivec { /* growable int32 vector */
    int32_t *p;
    size_t n, cap;
} ivec;

moe_status ivec_push(ivec *v, int32_t x);
moe_status ivec_reserve(ivec *v, size_t extra);

/* --------------------------------------------------------------- UTF-8 -- */

#define TOK_REPLACEMENT "\xEF\xBF\xBD" /* U+FFFD */

/* Length of the (valid) UTF-8 sequence starting with lead byte c. */
static inline int utf8_seqlen(unsigned char c) {
    return c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
}
/* Decodes the valid UTF-8 character at s (n bytes available); *len gets its length. */
uint32_t utf8_get(const char *s, size_t n, int *len);
int utf8_put(uint32_t cp, char *out); /* returns 1..4 */
/* Appends s[n] to out with each ill-formed subsequence replaced by U+FFFD
 * (Unicode's "maximal subpart" practice, as Rust's from_utf8_lossy and
 * Python's errors="replace"). If !final, an incomplete but so far valid
 * sequence at the end is not consumed. Returns the bytes consumed. */
size_t utf8_lossy(const unsigned char *s, size_t n, int final, tbuf *out, moe_status *st);
int utf8_valid(const unsigned char *s, size_t n); /* strict (String::from_utf8) */

/* Unicode predicates, as Rust's char methods. */
int uni_is_whitespace(uint32_t cp); /* White_Space */
int uni_is_numeric(uint32_t cp);    /* Nd, Nl, No */
int uni_is_punct(uint32_t cp);      /* ASCII punctuation or P* */
int uni_is_word(uint32_t cp);       /* regex \w: Alphabetic, M, Nd, Pc, Join_Control (approx.) */

/* ------------------------------------------------------------ hash map -- */

uint64_t tok_hash(const void *s, size_t n);

typedef struct strmap_slot {
    const char *key; /* not owned; NULL = empty */
    uint32_t len;
    int32_t val;
} strmap_slot;

typedef struct strmap { /* string -> int32, open addressing, keys owned elsewhere */
    strmap_slot *slots;
    uint32_t mask, n;
} strmap;

moe_status strmap_init(strmap *m, size_t expected);
/* Inserts or overwrites; *old gets the previous value or -1. */
moe_status strmap_put(strmap *m, const char *key, size_t len, int32_t val, int32_t *old);
int32_t strmap_get(const strmap *m, const char *key, size_t len); /* -1 if absent */
void strmap_free(strmap *m);

typedef struct pairmap_slot {
    uint64_t key; /* (a << 32) | b; UINT64_MAX = empty */
    uint32_t rank;
    int32_t new_id;
} pairmap_slot;

typedef struct pairmap { /* BPE merges: (left id, right id) -> (rank, merged id) */
    pairmap_slot *slots;
    uint32_t mask, n;
} pairmap;

moe_status pairmap_init(pairmap *m, size_t expected);
void pairmap_put(pairmap *m, int32_t a, int32_t b, uint32_t rank, int32_t new_id); /* later wins */
const pairmap_slot *pairmap_get(const pairmap *m, int32_t a, int32_t b);
void pairmap_free(pairmap *m);

/* ----------------------------------------------------------- patterns -- */

typedef struct tok_pattern { /* a Split/Replace pattern: literal text or a regex */
    char *lit; /* non-empty literal, or NULL for a regex */
    size_t litlen;
    pcre2_code *re;
} tok_pattern;

typedef struct tok_range {
    size_t start, end;
    int match;
} tok_range;

typedef struct tok_ranges {
    tok_range *p;
    size_t n, cap;
} tok_ranges;

/* Compiles a pattern ("String" literal or "Regex" in Oniguruma syntax,
 * translated for PCRE2); errors name `what`. */
moe_status tok_pattern_compile(tok_pattern *p, const char *src, size_t len, int is_regex, const char *what);
void tok_pattern_free(tok_pattern *p);
/* HF's Pattern::find_matches: s[n] cut into alternating non-match / match
 * ranges covering it (a single non-match (0,0) range for an empty s). */
moe_status tok_pattern_find(const tok_pattern *p, const char *s, size_t n, pcre2_match_data *md,
                            tok_ranges *out);

/* --------------------------------------------------------- normalizers -- */

typedef enum norm_kind {
    NORM_NFC,
    NORM_NFD,
    NORM_NFKC,
    NORM_NFKD,
    NORM_LOWERCASE,
    NORM_REPLACE,
    NORM_PREPEND,
    NORM_STRIP,
    NORM_BYTELEVEL,
    NORM_NMT,
} norm_kind;

typedef struct norm_op {
    norm_kind kind;
    tok_pattern pat;  /* REPLACE */
    char *str;        /* REPLACE content / PREPEND text */
    size_t slen;
    int left, right;  /* STRIP */
} norm_op;

/* ------------------------------------------------------ pre-tokenizers -- */

typedef enum split_behavior { SB_REMOVED, SB_ISOLATED, SB_MERGED_PREV, SB_MERGED_NEXT, SB_CONTIGUOUS } split_behavior;

typedef enum pre_kind {
    PRE_SPLIT,
    PRE_BYTELEVEL,
    PRE_METASPACE,
    PRE_DIGITS,
    PRE_WHITESPACE_SPLIT,
    PRE_CHAR_DELIM,
    PRE_PUNCTUATION,
} pre_kind;

enum { PREPEND_ALWAYS, PREPEND_FIRST, PREPEND_NEVER };

typedef struct pre_op {
    pre_kind kind;
    tok_pattern pat; /* SPLIT */
    split_behavior behavior;
    int invert;           /* SPLIT */
    int add_prefix_space; /* BYTELEVEL */
    int use_regex;        /* BYTELEVEL */
    uint32_t ch;          /* METASPACE replacement, CHAR_DELIM delimiter */
    int prepend_scheme;   /* METASPACE */
    int split;            /* METASPACE */
    int individual;       /* DIGITS */
} pre_op;

/* ------------------------------------------------------------ decoders -- */

typedef enum dec_kind { DEC_REPLACE, DEC_BYTEFALLBACK, DEC_FUSE, DEC_STRIP, DEC_BYTELEVEL, DEC_METASPACE } dec_kind;

typedef struct dec_op {
    dec_kind kind;
    int chunked;     /* input is pieces of one fused token (after Fuse / ByteLevel) */
    tok_pattern pat; /* REPLACE */
    char *content;   /* REPLACE */
    size_t clen;
    uint32_t ch;     /* STRIP content, METASPACE replacement */
    size_t start, stop;   /* STRIP */
    int prepend_never;    /* METASPACE */
} dec_op;

/* -------------------------------------------------------- added tokens -- */

typedef struct added_tok {
    int32_t id;
    char *content; /* as in tokenizer.json */
    size_t len;
    char *norm;    /* content after the normalizer (normalized tokens), else NULL */
    size_t nlen;
    int single_word, lstrip, rstrip, normalized, special;
} added_tok;

typedef struct atrie { /* byte trie for leftmost-longest matching of added tokens */
    uint64_t *keys;  /* transitions: (node << 8 | byte) + 1; 0 = empty */
    int32_t *child;
    uint32_t mask, n_trans;
    int32_t *term;   /* [n_nodes] index into tokenizer.added, or -1 */
    uint32_t n_nodes, cap_nodes;
    uint8_t first[256]; /* root has an edge on this byte */
} atrie;

/* ---------------------------------------------------------- word cache -- */

#define WCACHE_SHARDS 16

typedef struct wcache_entry {
    uint64_t h;
    char *blob; /* key bytes then the int32 ids; NULL = empty */
    uint32_t klen, nids;
} wcache_entry;

typedef struct wcache_shard {
    pthread_mutex_t mu;
    wcache_entry *e; /* [cap] */
    uint32_t cap, n;
} wcache_shard;

/* ----------------------------------------------------------- tokenizer -- */

struct tokenizer {
    char *path; /* tokenizer.json, for messages */

    /* vocabulary: id -> string; unused ids have NULL */
    int32_t vocab_size;    /* max id + 1 */
    char *arena;           /* the model vocabulary's strings, NUL-terminated */
    const char **tok_str;  /* [vocab_size] raw piece (tok_id_to_piece) */
    uint32_t *tok_len;
    const char **dec_str;  /* [vocab_size] what the decoder gets (a normalized added token's normalized form) */
    uint32_t *dec_len;
    uint8_t *special;      /* [vocab_size] decode string is a special token's content */
    strmap model_vocab; /* model vocab string -> id */
    strmap added_map;   /* added token content -> id */

    /* BPE model */
    pairmap merges;
    int32_t unk_id;     /* -1: no unk_token; -2: unk_token not in the vocab */
    char *unk_token;
    char *cont_prefix, *eow_suffix; /* continuing_subword_prefix, end_of_word_suffix (NULL if none) */
    size_t cont_prefix_len, eow_suffix_len;
    int fuse_unk, byte_fallback, ignore_merges;
    int32_t byte_ids[256]; /* <0xNN> ids, -1 if absent */
    int32_t *small_ids;    /* [0x800] id of the one-character string of each code point < U+0800, -1 if none */
    /* Long pieces are cut before "▁" where no vocabulary token spans the cut
     * (sentencepiece-style files have no pre-tokenizer, so the whole text is
     * one BPE word): the parts then merge exactly as the whole would, and hit
     * the word cache. split_meta: enabled; split_bad: characters that some
     * token has right before "▁" (no cut after them). */
    int split_meta;
    uint32_t split_bad[16];
    int n_split_bad;

    /* pipeline */
    norm_op *norms;
    size_t n_norms;
    pre_op *pres;
    size_t n_pres;
    dec_op *decs;
    size_t n_decs;
    int has_decoder; /* 0: decode joins tokens with " " as HF does without a decoder */
    int32_t *tmpl;   /* single-sequence template: ids, -1 = the sequence */
    size_t n_tmpl;

    added_tok *added;
    size_t n_added;
    atrie trie_raw, trie_norm;

    pcre2_code *re_bytelevel; /* GPT-2 split regex for ByteLevel(use_regex) */

    int32_t bos_id, eos_id;

    uint8_t *nfc_unstable; /* [0x30000 / 8] bit set: a canonical composite that NFC changes (tok_norm.c) */

    wcache_shard cache[WCACHE_SHARDS];
};

/* tok_load.c: tok_load on tokenizer.json text already in memory (json[len]);
 * `name` stands for the file in messages. For fuzzing and embedding. */
moe_status tok_load_mem(const char *json, size_t len, const char *name, const char *config_path, tokenizer **out);

/* tok_norm.c: applies the normalizer ops to s[n]; the result goes to out (replaced). */
moe_status tok_nfc_init(tokenizer *t); /* the NFC fast path's table; at load, when there is an NFC op */
moe_status tok_normalize(const tokenizer *t, const char *s, size_t n, tbuf *out, pcre2_match_data *md,
                         tok_ranges *scratch);

/* tok_pretok.c */
typedef struct piece {
    size_t off, len; /* into the encoder's arena */
    int origin;      /* starts at offset 0 of the original text (Metaspace prepend_scheme "first") */
} piece;

typedef struct piece_vec {
    piece *p;
    size_t n, cap;
} piece_vec;

typedef struct pretok_ctx { /* scratch of one encode call */
    tbuf arena;
    piece_vec a, b;
    tok_ranges ranges;
    pcre2_match_data *md;
} pretok_ctx;

moe_status piece_push(piece_vec *v, size_t off, size_t len, int origin);
/* Runs the pre-tokenizer ops over ctx->a (pieces of ctx->arena); the result is left in ctx->a. */
moe_status tok_pretokenize(const tokenizer *t, pretok_ctx *ctx);
/* Translates an Oniguruma pattern to PCRE2 and compiles it (UTF, UCP, JIT). */
moe_status tok_regex_compile(const char *src, size_t len, pcre2_code **out, const char *what);

/* tok_bpe.c */
moe_status tok_bpe_piece(const tokenizer *t, const char *s, size_t n, ivec *out);
void tok_cache_init(tokenizer *t);
void tok_bpe_split_init(tokenizer *t);
void tok_cache_free(tokenizer *t);

/* tok_encode.c */
moe_status tok_trie_build(atrie *tr, const tokenizer *t, int normalized);
void tok_trie_free(atrie *tr);

/* tok_decode.c */
moe_status tok_dec_check(const tokenizer *t); /* validates the decoder chain at load */

#endif
