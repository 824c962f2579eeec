/* xstore.c — the expert store (xstore.h): writes a model's experts into one
 * pack file of aligned records, opens and validates a pack, reads a record;
 * or, with no pack, maps each expert to the ranges of the model's own
 * safetensors files that hold it and reads those. Both read through one
 * path (read_span): a record is a list of (file, offset, length) ranges
 * landing at fixed places in a slot, one range for a pack.
 *
 * Pack format, version 1. Every integer is little-endian.
 *
 *   [0, 128)              the fixed header
 *   [128, 128 + 248 n)    the record table: n = MoE layers x experts entries,
 *                         layer by layer, expert by expert
 *   ... zeros up to data_off (a multiple of XS_ALIGN)
 *   [data_off, file end)  the records, back to back in table order, each a
 *                         multiple of XS_ALIGN bytes; the file ends with the last
 *
 * Fixed header:
 *    0  8  magic "MOEXPACK"
 *    8  4  version (1)
 *   12  4  bytes of a table entry (248)
 *   16  8  fingerprint of the model: xs_checksum of config.json's bytes and of
 *          each safetensors shard's file name, size and modification time
 *   24  4  layers of the model          28  4  experts per MoE layer
 *   32  4  MoE layers                   36  4  zero
 *   40  8  table entries                48  8  table offset (128)
 *   56  8  data_off                     64  8  file size
 *   72  8  xs_checksum of [0, data_off) with these 8 bytes read as zero
 *   80 48  zero
 *
 * Table entry:
 *    0  4  layer                         4  4  expert
 *    8  8  record offset in the file    16  8  record bytes
 *   24  8  xs_checksum of the record's bytes
 *   32     gate, up, down: 72 bytes each, an xs_part as
 *          4 fmt, 4 sfmt, 8 rows, 8 cols, 4 group, 4 zero, 8 data_off,
 *          8 scales_off, 8 biases_off (from the record's first byte),
 *          8 row_bytes, 8 sb_row_bytes
 *
 * Inside a record each part's values, then its scales and biases (quantized
 * formats only), each 64-byte aligned, zeros between and to the end.
 *
 * A pack is untrusted input, yet it describes nothing the model does not:
 * xs_open computes the layout this code would write for the model (`plan`)
 * and requires the header and every table entry to equal it field for field
 * (checksums aside, which the header's own checksum covers), and the file to
 * be exactly as long. So no offset, size, format or shape is ever taken from
 * the file; what it can still get wrong is named in the message.
 */
#define _GNU_SOURCE /* O_DIRECT, fallocate */
#include "xstore.h"

#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include "../base/err.h"
#include "../base/file.h"

#define XS_MAGIC "MOEXPACK"
#define XS_VERSION 1u
#define XS_FIXED 128u     /* bytes of the fixed header */
#define XS_ENTRY 248u     /* bytes of a table entry */
#define XS_PART_BYTES 72u /* bytes of a part inside an entry */
#define XS_PART_ALIGN 64u
#define XS_CHUNK (8u << 20) /* the writer's buffer */
#define XS_SYNC_BYTES (256u << 20) /* written, then synced and dropped from the page cache */
#define H_CHECKSUM 72u    /* offset of the header checksum */

static uint64_t round_up(uint64_t x, uint64_t a) { return (x + a - 1) / a * a; }

/* A size for messages: "812.3 MB", "24.51 GB". */
static const char *human(uint64_t n, char buf[32]) {
    if (n >= 1000000000u) snprintf(buf, 32, "%.2f GB", (double)n / 1e9);
    else snprintf(buf, 32, "%.1f MB", (double)n / 1e6);
    return buf;
}

/* ------------------------------------------------------------ checksum -- */

/* Four lanes take the 64-bit words of each 32-byte block in turn, each
 *     v = rotl(v ^ w * K_IN, 29) * K_LANE
 * which for a fixed w is a bijection of v and for a fixed v one of w (K_IN
 * and K_LANE are odd). The lanes are then folded into one value by steps that
 * are bijections of each lane, the length mixed in, and the result avalanched
 * (xorshift-multiply, invertible too). Hence a change confined to one aligned
 * 8-byte word — any flipped bit or byte — always changes the checksum; other
 * changes escape with probability about 2^-64. The four chains are independent,
 * so the loop runs at the multiplier's throughput, not its latency. */

static const uint64_t K_IN = 0xe740bec255c0ed41u, K_LANE = 0x968b0eccace8ecd7u;
static const uint64_t K_MIX1 = 0x847343272d70125du, K_MIX2 = 0x1e362348fdd52dbdu;
static const uint64_t K_SEED[4] = {0x451ea3b6f88d5ba9u, 0x342e07b07186b6d3u, 0xfe68a99539388aa1u, 0x5de49711215b9415u};

typedef struct hasher {
    uint64_t v[4]; /* the lanes */
    uint64_t n;    /* bytes folded so far */
} hasher;

static inline uint64_t rotl(uint64_t x, int r) { return x << r | x >> (64 - r); }

static inline uint64_t ld64(const unsigned char *p) {
    uint64_t w;
    memcpy(&w, p, 8);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    w = __builtin_bswap64(w);
#endif
    return w;
}

static inline uint64_t lane(uint64_t v, uint64_t w) { return rotl(v ^ w * K_IN, 29) * K_LANE; }

static void hash_init(hasher *h) {
    memcpy(h->v, K_SEED, sizeof h->v);
    h->n = 0;
}

/* Folds p[n], n a multiple of 32. A record comes from a direct read, so
 * from memory, not a cache: the software prefetch a kilobyte ahead (never a
 * fault, even past the end) doubles the speed there, to one core's read
 * bandwidth (measured: 4.7 -> 11.8 GB/s). */
static void hash_blocks(hasher *h, const unsigned char *p, size_t n) {
    uint64_t a = h->v[0], b = h->v[1], c = h->v[2], d = h->v[3];
    size_t i = 0;
    for (; i + 64 <= n; i += 64) {
        __builtin_prefetch((const void *)((uintptr_t)p + i + 1024));
        a = lane(a, ld64(p + i));
        b = lane(b, ld64(p + i + 8));
        c = lane(c, ld64(p + i + 16));
        d = lane(d, ld64(p + i + 24));
        a = lane(a, ld64(p + i + 32));
        b = lane(b, ld64(p + i + 40));
        c = lane(c, ld64(p + i + 48));
        d = lane(d, ld64(p + i + 56));
    }
    if (i < n) {
        a = lane(a, ld64(p + i));
        b = lane(b, ld64(p + i + 8));
        c = lane(c, ld64(p + i + 16));
        d = lane(d, ld64(p + i + 24));
    }
    h->v[0] = a, h->v[1] = b, h->v[2] = c, h->v[3] = d;
    h->n += n;
}

/* The checksum of what h folded followed by tail[n] (n < 32; a last partial
 * word is read as zero-padded). */
static uint64_t hash_final(const hasher *h, const unsigned char *tail, size_t n) {
    uint64_t x = (h->n + n) * K_MIX1;
    for (int i = 0; i < 4; i++) x = rotl(x ^ h->v[i], 23) * K_LANE;
    size_t i = 0;
    for (; i + 8 <= n; i += 8) x = lane(x, ld64(tail + i));
    if (i < n) {
        unsigned char w[8] = {0};
        memcpy(w, tail + i, n - i);
        x = lane(x, ld64(w));
    }
    x ^= x >> 32;
    x *= K_MIX2;
    x ^= x >> 29;
    x *= K_MIX1;
    x ^= x >> 32;
    return x;
}

uint64_t xs_checksum(const void *p, size_t n) {
    hasher h;
    hash_init(&h);
    size_t body = n & ~(size_t)31;
    hash_blocks(&h, p, body);
    return hash_final(&h, (const unsigned char *)p + body, n - body);
}

/* ---------------------------------------------------------- encoding -- */

static void put32(unsigned char *p, uint32_t v) {
    for (int i = 0; i < 4; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static void put64(unsigned char *p, uint64_t v) {
    for (int i = 0; i < 8; i++) p[i] = (unsigned char)(v >> (8 * i));
}
static uint64_t get_le(const unsigned char *p, int size) {
    uint64_t v = 0;
    for (int i = size - 1; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

/* A growing byte string (the fingerprint's input). ok turns 0 when out of memory. */
typedef struct bytes {
    unsigned char *p;
    size_t n, cap;
    int ok;
} bytes;

static void bytes_put(bytes *b, const void *src, size_t n) {
    if (!b->ok) return;
    if (b->n + n > b->cap) {
        size_t cap = (b->n + n) * 2 + 256;
        unsigned char *q = realloc(b->p, cap);
        if (!q) { b->ok = 0; return; }
        b->p = q;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->n, src, n);
    b->n += n;
}
static void bytes_u64(bytes *b, uint64_t v) {
    unsigned char w[8];
    put64(w, v);
    bytes_put(b, w, 8);
}
/* Length, then the bytes zero-padded to a multiple of 8. */
static void bytes_str(bytes *b, const void *src, size_t n) {
    static const unsigned char zero[8];
    bytes_u64(b, n);
    bytes_put(b, src, n);
    bytes_put(b, zero, (8 - n % 8) % 8);
}

/* The model's fingerprint: config.json's bytes and each shard's file name,
 * size and modification time, as the files are now. */
static moe_status fingerprint(const moe_model *m, uint64_t *out) {
    char path[4200], *cfg;
    size_t len;
    moe_status st;
    if ((st = path_join(path, sizeof path, m->dir, "config.json")) || (st = file_read_all(path, 16u << 20, &cfg, &len)))
        return st;
    bytes b = {NULL, 0, 0, 1};
    bytes_str(&b, cfg, len);
    free(cfg);
    bytes_u64(&b, (uint64_t)m->n_shards);
    for (int i = 0; i < m->n_shards && !st; i++) {
        const char *p = m->shards[i]->path, *base = strrchr(p, '/');
        struct stat s;
        if (stat(p, &s) != 0) {
            st = moe_err(MOE_EIO, "%s: cannot stat: %s", p, strerror(errno));
            break;
        }
        base = base ? base + 1 : p;
        bytes_str(&b, base, strlen(base));
        bytes_u64(&b, (uint64_t)s.st_size);
        bytes_u64(&b, (uint64_t)s.st_mtim.tv_sec);
        bytes_u64(&b, (uint64_t)s.st_mtim.tv_nsec);
    }
    if (!st && !b.ok) st = moe_err(MOE_ENOMEM, "out of memory");
    if (!st) *out = xs_checksum(b.p, b.n);
    free(b.p);
    return st;
}

/* -------------------------------------------------------------- plan -- */

/* The pack this code writes for a model: which layers are MoE, every
 * record's place and parts (checksums zero until written or read). */
typedef struct plan {
    int n_layers, n_experts, n_moe;
    int *moe_index;       /* [n_layers]: rank among the MoE layers, or -1 */
    xs_record *rec;       /* [n_moe x n_experts] */
    uint64_t *slot;       /* [n_layers]: the layer's largest record, 0 when dense */
    uint64_t data_off;    /* first record, after the header */
    uint64_t file_bytes;  /* the whole pack */
    uint64_t total;       /* the records' bytes */
} plan;

static void plan_free(plan *p) {
    free(p->moe_index);
    free(p->rec);
    free(p->slot);
    memset(p, 0, sizeof *p);
}

static uint64_t place(uint64_t *at, uint64_t n) {
    uint64_t off = round_up(*at, XS_PART_ALIGN);
    *at = off + n;
    return off;
}

/* Expert ex's parts, each aligned, in the order gate, up, down (values,
 * scales, biases); r->bytes the whole rounded up to XS_ALIGN. */
static void layout_record(const expert *ex, xs_record *r) {
    const wtensor *w[3] = {&ex->gate, &ex->up, &ex->down};
    uint64_t at = 0;
    for (int i = 0; i < 3; i++) {
        xs_part *p = &r->part[i];
        memset(p, 0, sizeof *p);
        p->fmt = w[i]->fmt;
        p->rows = w[i]->rows;
        p->cols = w[i]->cols;
        p->row_bytes = w[i]->row_bytes;
        p->data_off = place(&at, (uint64_t)w[i]->rows * w[i]->row_bytes);
        if (wfmt_is_quant(w[i]->fmt)) {
            p->sfmt = w[i]->sfmt;
            p->group = w[i]->group;
            p->sb_row_bytes = w[i]->sb_row_bytes;
            p->scales_off = place(&at, (uint64_t)w[i]->rows * w[i]->sb_row_bytes);
            p->biases_off = place(&at, (uint64_t)w[i]->rows * w[i]->sb_row_bytes);
        }
    }
    r->bytes = round_up(at, XS_ALIGN);
}

static xs_record *plan_rec(const plan *p, int l, int e) {
    if (l < 0 || l >= p->n_layers || e < 0 || e >= p->n_experts || p->moe_index[l] < 0) return NULL;
    return &p->rec[(size_t)p->moe_index[l] * (size_t)p->n_experts + (size_t)e];
}

/* The one walk over a model's experts, in the pack's order (layer by layer,
 * expert by expert): fn(ctx, l, e, the expert's weights, its record) for
 * each, until one fails. Laying out the pack, writing it and mapping the
 * experts to the model's files all go through it. */
typedef moe_status (*record_fn)(void *ctx, int l, int e, const expert *ex, xs_record *r);

static moe_status each_record(const moe_model *m, const plan *p, record_fn fn, void *ctx) {
    moe_status st = MOE_OK;
    for (int l = 0; l < p->n_layers && !st; l++)
        for (int e = 0; p->moe_index[l] >= 0 && e < p->n_experts && !st; e++)
            st = fn(ctx, l, e, &m->layers[l].experts[e], plan_rec(p, l, e));
    return st;
}

/* plan_make's step: the record after the ones placed so far (*at). */
static moe_status place_record(void *ctx, int l, int e, const expert *ex, xs_record *r) {
    (void)e;
    plan *p = ctx;
    layout_record(ex, r);
    r->offset = p->file_bytes;
    p->file_bytes += r->bytes;
    if (r->bytes > p->slot[l]) p->slot[l] = r->bytes;
    return MOE_OK;
}

static moe_status plan_make(const moe_model *m, plan *p) {
    memset(p, 0, sizeof *p);
    const moe_config *c = &m->cfg.pub;
    p->n_layers = c->n_layers;
    p->n_experts = c->n_experts;
    p->moe_index = malloc((size_t)p->n_layers * sizeof *p->moe_index);
    p->slot = calloc((size_t)p->n_layers, sizeof *p->slot);
    if (!p->moe_index || !p->slot) goto oom;
    for (int l = 0; l < p->n_layers; l++) p->moe_index[l] = m->layers[l].is_moe && p->n_experts > 0 ? p->n_moe++ : -1;
    size_t n = (size_t)p->n_moe * (size_t)p->n_experts;
    if (n && !(p->rec = calloc(n, sizeof *p->rec))) goto oom;
    p->data_off = round_up(XS_FIXED + (uint64_t)n * XS_ENTRY, XS_ALIGN);
    p->file_bytes = p->data_off;
    each_record(m, p, place_record, p);
    p->total = p->file_bytes - p->data_off;
    return MOE_OK;
oom:
    plan_free(p);
    return moe_err(MOE_ENOMEM, "out of memory");
}

/* One contiguous run of an expert's bytes: where it is in memory now (a view
 * into the model's mapped files) and where it goes in the expert's record. */
typedef struct piece {
    const unsigned char *src;
    uint64_t len, dst;
} piece;

/* The pieces of expert ex in record r, in record order: gate, up, down, each
 * values then (quantized formats) scales and biases. Returns how many (3 or 9). */
static int pieces(const expert *ex, const xs_record *r, piece out[9]) {
    const wtensor *t[3] = {&ex->gate, &ex->up, &ex->down};
    int n = 0;
    for (int i = 0; i < 3; i++) {
        const xs_part *p = &r->part[i];
        out[n++] = (piece){t[i]->data, (uint64_t)p->rows * p->row_bytes, p->data_off};
        if (wfmt_is_quant(p->fmt)) {
            uint64_t sb = (uint64_t)p->rows * p->sb_row_bytes;
            out[n++] = (piece){t[i]->scales, sb, p->scales_off};
            out[n++] = (piece){t[i]->biases, sb, p->biases_off};
        }
    }
    return n;
}

/* ----------------------------------------------------------- headers -- */

/* The fields of the fixed header and of a table entry, to name the one that differs. */
typedef struct field {
    unsigned off, size;
    const char *name;
} field;

static const field k_fixed[] = {
    {0, 8, "magic"},           {8, 4, "version"},  {12, 4, "entry size"},   {16, 8, "fingerprint"},
    {24, 4, "layers"},         {28, 4, "experts"}, {32, 4, "MoE layers"},   {36, 4, "reserved"},
    {40, 8, "records"},        {48, 8, "table offset"}, {56, 8, "data offset"}, {64, 8, "file size"},
    {80, XS_FIXED - 80, "reserved"},
};
static const field k_entry[] = {{0, 4, "layer"}, {4, 4, "expert"}, {8, 8, "offset"}, {16, 8, "bytes"}};
static const field k_part[] = {
    {0, 4, "fmt"},       {4, 4, "sfmt"},        {8, 8, "rows"},        {16, 8, "cols"},
    {24, 4, "group"},    {28, 4, "reserved"},   {32, 8, "data_off"},   {40, 8, "scales_off"},
    {48, 8, "biases_off"}, {56, 8, "row_bytes"}, {64, 8, "sb_row_bytes"},
};
static const char *const k_part_names[3] = {"gate", "up", "down"};

static void encode_fixed(unsigned char *h, const plan *p, uint64_t fp) {
    memset(h, 0, XS_FIXED);
    memcpy(h, XS_MAGIC, 8);
    put32(h + 8, XS_VERSION);
    put32(h + 12, XS_ENTRY);
    put64(h + 16, fp);
    put32(h + 24, (uint32_t)p->n_layers);
    put32(h + 28, (uint32_t)p->n_experts);
    put32(h + 32, (uint32_t)p->n_moe);
    put64(h + 40, (uint64_t)p->n_moe * (uint64_t)p->n_experts);
    put64(h + 48, XS_FIXED);
    put64(h + 56, p->data_off);
    put64(h + 64, p->file_bytes);
}

static void encode_entry(unsigned char *q, int l, int e, const xs_record *r) {
    memset(q, 0, XS_ENTRY);
    put32(q, (uint32_t)l);
    put32(q + 4, (uint32_t)e);
    put64(q + 8, r->offset);
    put64(q + 16, r->bytes);
    put64(q + 24, r->checksum);
    for (int i = 0; i < 3; i++) {
        const xs_part *p = &r->part[i];
        unsigned char *d = q + 32 + i * XS_PART_BYTES;
        put32(d, (uint32_t)p->fmt);
        put32(d + 4, (uint32_t)p->sfmt);
        put64(d + 8, (uint64_t)p->rows);
        put64(d + 16, (uint64_t)p->cols);
        put32(d + 24, (uint32_t)p->group);
        put64(d + 32, p->data_off);
        put64(d + 40, p->scales_off);
        put64(d + 48, p->biases_off);
        put64(d + 56, p->row_bytes);
        put64(d + 64, p->sb_row_bytes);
    }
}

/* The whole header [data_off] of plan p with its checksum. */
static void encode_header(unsigned char *h, const plan *p, uint64_t fp) {
    memset(h, 0, p->data_off);
    encode_fixed(h, p, fp);
    unsigned char *q = h + XS_FIXED;
    for (int l = 0; l < p->n_layers; l++)
        for (int e = 0; p->moe_index[l] >= 0 && e < p->n_experts; e++, q += XS_ENTRY) encode_entry(q, l, e, plan_rec(p, l, e));
    put64(h + H_CHECKSUM, xs_checksum(h, p->data_off));
}

/* The first field of fields[n] in which got and want differ, or NULL. */
static const field *first_diff(const field *fields, size_t n, const unsigned char *got, const unsigned char *want) {
    for (size_t i = 0; i < n; i++)
        if (memcmp(got + fields[i].off, want + fields[i].off, fields[i].size)) return &fields[i];
    return NULL;
}

static moe_status corrupt(const char *path, const char *what, const field *f, const unsigned char *got,
                          const unsigned char *want) {
    if (f->size > 8) return moe_err(MOE_EFORMAT, "%s: corrupt header (%s%s bytes are not zero)", path, what, f->name);
    return moe_err(MOE_EFORMAT, "%s: corrupt header (%s%s is %llu, expected %llu)", path, what, f->name,
                   (unsigned long long)get_le(got + f->off, (int)f->size),
                   (unsigned long long)get_le(want + f->off, (int)f->size));
}

/* Checks the fixed header h[XS_FIXED] against what plan p and fingerprint fp
 * would write, the checksum aside. */
static moe_status check_fixed(const char *path, const unsigned char *h, const plan *p, uint64_t fp) {
    unsigned char want[XS_FIXED];
    encode_fixed(want, p, fp);
    const field *f = first_diff(k_fixed, sizeof k_fixed / sizeof *k_fixed, h, want);
    if (!f) return MOE_OK;
    if (f->off == 0) return moe_err(MOE_EFORMAT, "%s: not an expert pack (bad magic)", path);
    if (f->off == 8)
        return moe_err(MOE_EFORMAT, "%s: pack version %u, this moe reads version %u", path, (unsigned)get_le(h + 8, 4),
                       XS_VERSION);
    if (f->off == 16) return moe_err(MOE_EFORMAT, "%s: stale pack (built from another model)", path);
    return corrupt(path, "", f, h, want);
}

/* Checks the table of header h[p->data_off] entry by entry against plan p
 * and takes each record's checksum into p. */
static moe_status check_table(const char *path, const unsigned char *h, plan *p) {
    const unsigned char *q = h + XS_FIXED;
    unsigned char want[XS_ENTRY];
    char what[96];
    for (int l = 0; l < p->n_layers; l++) {
        for (int e = 0; p->moe_index[l] >= 0 && e < p->n_experts; e++, q += XS_ENTRY) {
            xs_record *r = plan_rec(p, l, e);
            r->checksum = get_le(q + 24, 8);
            encode_entry(want, l, e, r);
            snprintf(what, sizeof what, "layer %d expert %d: ", l, e);
            const field *f = first_diff(k_entry, sizeof k_entry / sizeof *k_entry, q, want);
            if (f) return corrupt(path, what, f, q, want);
            for (int i = 0; i < 3; i++) {
                const unsigned char *gp = q + 32 + i * XS_PART_BYTES, *wp = want + 32 + i * XS_PART_BYTES;
                if ((f = first_diff(k_part, sizeof k_part / sizeof *k_part, gp, wp))) {
                    snprintf(what, sizeof what, "layer %d expert %d: %s ", l, e, k_part_names[i]);
                    return corrupt(path, what, f, gp, wp);
                }
            }
        }
    }
    for (const unsigned char *z = q; z < h + p->data_off; z++)
        if (*z) return moe_err(MOE_EFORMAT, "%s: corrupt header (padding after the table is not zero)", path);
    return MOE_OK;
}

/* --------------------------------------------------------------- I/O -- */

/* Reads n bytes at off into buf, retrying partial reads and EINTR; *got the
 * bytes read (fewer at the end of the file). 0 or an errno. */
/* Reads in pieces of READ_CHUNK: on the disks measured here one stream of
 * 1-4 MiB reads ran at 1.6 GB/s, one 99 MB read (a Mixtral expert) at
 * 1.2-1.3, and parallel streams slower still (docs/PERFORMANCE.md). */
#define READ_CHUNK ((size_t)4 << 20)

static int read_full(int fd, void *buf, size_t n, uint64_t off, size_t *got) {
    size_t done = 0;
    while (done < n) {
        size_t want = n - done < READ_CHUNK ? n - done : READ_CHUNK;
        ssize_t r = pread(fd, (char *)buf + done, want, (off_t)(off + done));
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) { *got = done; return errno; }
        if (r == 0) break;
        done += (size_t)r;
    }
    *got = done;
    return 0;
}

static int write_full(int fd, const void *buf, size_t n, uint64_t off) {
    size_t done = 0;
    while (done < n) {
        ssize_t r = pwrite(fd, (const char *)buf + done, n - done, (off_t)(off + done));
        if (r < 0 && errno == EINTR) continue;
        if (r < 0) return errno;
        if (r == 0) return EIO;
        done += (size_t)r;
    }
    return 0;
}

/* Whether O_DIRECT may be tried ($MOE_XSTORE_DIRECT=0 turns it off). */
static int direct_allowed(void) {
    const char *v = getenv("MOE_XSTORE_DIRECT");
    return !(v && !strcmp(v, "0"));
}

/* ------------------------------------------------------------- writer -- */

/* Streams the records through one aligned buffer into the file, folding each
 * record's bytes into its checksum as they leave the buffer. Every flush
 * starts at a multiple of XS_ALIGN in the file and in the current record, so
 * the hashed pieces are whole 32-byte blocks. */
typedef struct writer {
    int fd;
    const char *path;     /* the .tmp, for messages */
    unsigned char *buf;   /* [XS_CHUNK], XS_ALIGN-aligned */
    size_t fill;          /* bytes in buf */
    size_t rec_from;      /* where the current record's unhashed bytes start in buf */
    uint64_t off;         /* file offset of buf[0] */
    uint64_t start;       /* of the first record */
    uint64_t rec_pos;     /* bytes of the current record so far */
    hasher h;             /* the current record's */
    uint64_t unsynced;    /* bytes written since the last w_sync */
    uint64_t total;       /* for progress */
    void (*progress)(void *, uint64_t, uint64_t);
    void *ctx;
} writer;

static moe_status w_flush(writer *w) {
    hash_blocks(&w->h, w->buf + w->rec_from, w->fill - w->rec_from);
    int e = write_full(w->fd, w->buf, w->fill, w->off);
    if (e) return moe_err(MOE_EIO, "%s: write failed: %s", w->path, strerror(e));
    w->off += w->fill;
    w->fill = w->rec_from = 0;
    if (w->progress) w->progress(w->ctx, w->off - w->start, w->total); /* the header's bytes come last */
    return MOE_OK;
}

/* Appends n bytes of src (zeros when src is NULL) to the current record. */
static moe_status w_put(writer *w, const void *src, uint64_t n) {
    const unsigned char *s = src;
    while (n) {
        size_t k = XS_CHUNK - w->fill;
        if (k > n) k = (size_t)n;
        if (s) {
            memcpy(w->buf + w->fill, s, k);
            s += k;
        } else {
            memset(w->buf + w->fill, 0, k);
        }
        w->fill += k;
        w->rec_pos += k;
        n -= k;
        moe_status st;
        if (w->fill == XS_CHUNK && (st = w_flush(w))) return st;
    }
    return MOE_OK;
}

/* Zeros up to offset `to` of the record, then n bytes of src. */
static moe_status w_put_at(writer *w, uint64_t to, const void *src, uint64_t n) {
    moe_status st = w_put(w, NULL, to - w->rec_pos);
    return st ? st : w_put(w, src, n);
}

static moe_status w_record(writer *w, const expert *ex, xs_record *r) {
    piece pc[9];
    int n = pieces(ex, r, pc);
    hash_init(&w->h);
    w->rec_from = w->fill;
    w->rec_pos = 0;
    moe_status st = MOE_OK;
    for (int i = 0; i < n && !st; i++) st = w_put_at(w, pc[i].dst, pc[i].src, pc[i].len);
    if (!st) st = w_put(w, NULL, r->bytes - w->rec_pos);
    if (st) return st;
    hash_blocks(&w->h, w->buf + w->rec_from, w->fill - w->rec_from);
    w->rec_from = w->fill;
    r->checksum = hash_final(&w->h, NULL, 0);
    return MOE_OK;
}

/* Drops the pages of p[n] from the shard mapping that holds them and from
 * the page cache (file_map_drop). shard_fds: the shards opened again for
 * posix_fadvise (-1: not open). */
static void drop_range(const moe_model *m, const int *shard_fds, const void *p, size_t n) {
    for (int s = 0; s < m->n_shards; s++)
        if (file_map_drop(&m->shards[s]->map, shard_fds[s], p, n)) return;
}

/* Drops expert ex's source pages (its pieces in record r) once they are copied. */
static void drop_expert(const moe_model *m, const int *shard_fds, const expert *ex, const xs_record *r) {
    piece pc[9];
    int n = pieces(ex, r, pc);
    for (int i = 0; i < n; i++) drop_range(m, shard_fds, pc[i].src, pc[i].len);
}

/* Writes what is buffered, syncs it and drops the pack's pages from the
 * page cache (they must be clean before it lets them go). */
static moe_status w_sync(writer *w) {
    moe_status st = w_flush(w);
    if (!st && fdatasync(w->fd) != 0) st = moe_err(MOE_EIO, "%s: cannot sync: %s", w->path, strerror(errno));
    if (!st) posix_fadvise(w->fd, 0, 0, POSIX_FADV_DONTNEED);
    w->unsynced = 0;
    return st;
}

typedef struct write_ctx {
    writer *w;
    const moe_model *m;
    const int *fds; /* [n_shards] the model's shards opened for posix_fadvise, -1 when not */
} write_ctx;

static moe_status write_one(void *ctx, int l, int e, const expert *ex, xs_record *r) {
    (void)l, (void)e;
    write_ctx *c = ctx;
    moe_status st = w_record(c->w, ex, r);
    if (!st) drop_expert(c->m, c->fds, ex, r);
    c->w->unsynced += r->bytes;
    if (!st && c->w->unsynced >= XS_SYNC_BYTES) st = w_sync(c->w);
    return st;
}

static moe_status write_records(writer *w, const moe_model *m, plan *p) {
    int *fds = malloc((size_t)m->n_shards * sizeof *fds);
    if (!fds) return moe_err(MOE_ENOMEM, "out of memory");
    for (int s = 0; s < m->n_shards; s++) fds[s] = open(m->shards[s]->path, O_RDONLY | O_CLOEXEC);
    if (w->progress) w->progress(w->ctx, 0, w->total);
    write_ctx c = {w, m, fds};
    moe_status st = each_record(m, p, write_one, &c);
    if (!st) st = w_sync(w);
    for (int s = 0; s < m->n_shards; s++)
        if (fds[s] >= 0) close(fds[s]);
    free(fds);
    return st;
}

/* The directory part of path ("." when it has none) into dir[cap]. */
static void dir_of(const char *path, char *dir, size_t cap) {
    snprintf(dir, cap, "%s", path);
    char *slash = strrchr(dir, '/');
    if (!slash) snprintf(dir, cap, ".");
    else if (slash == dir) dir[1] = 0;
    else *slash = 0;
}

int64_t xs_free_bytes(const char *dir) {
    const char *t = getenv("MOE_TEST_FREE_BYTES");
    if (t && *t) {
        char *end;
        long long v = strtoll(t, &end, 10);
        if (!*end && v >= 0) return v;
    }
    struct statvfs vs;
    if (statvfs(dir, &vs) != 0) return -1;
    uint64_t avail = (uint64_t)vs.f_bavail * vs.f_frsize;
    return avail > INT64_MAX ? INT64_MAX : (int64_t)avail;
}

/* Fails with the sizes when the filesystem of `path` has less than `need` bytes free. */
static moe_status check_space(const char *path, uint64_t need) {
    char dir[4200];
    dir_of(path, dir, sizeof dir);
    int64_t avail = xs_free_bytes(dir);
    if (avail < 0) return MOE_OK; /* no answer: the writes will tell */
    char a[32], b[32];
    if ((uint64_t)avail < need)
        return moe_err(MOE_EIO, "%s: the expert pack needs %s but only %s are free in %s", path, human(need, a),
                       human((uint64_t)avail, b), dir);
    return MOE_OK;
}

/* Opens path.tmp for writing, alone (a second writer is refused, not mixed
 * in), empty, with the pack's size reserved where the filesystem can. *fd -1
 * when it was not opened (nothing to remove). */
static moe_status open_tmp(const char *tmp, uint64_t bytes, int *fd) {
    *fd = open(tmp, O_WRONLY | O_CREAT | O_CLOEXEC, 0644);
    if (*fd < 0) return moe_err(MOE_EIO, "%s: cannot create: %s", tmp, strerror(errno));
    if (flock(*fd, LOCK_EX | LOCK_NB) != 0) {
        int e = errno;
        close(*fd);
        *fd = -1;
        return moe_err(MOE_EIO, "%s: %s", tmp, e == EWOULDBLOCK ? "another process is writing this pack" : strerror(e));
    }
    if (ftruncate(*fd, 0) != 0) return moe_err(MOE_EIO, "%s: cannot truncate: %s", tmp, strerror(errno));
    char h[32];
    if (fallocate(*fd, 0, 0, (off_t)bytes) != 0 && errno != EOPNOTSUPP && errno != ENOSYS)
        return moe_err(MOE_EIO, "%s: cannot reserve %s for the expert pack: %s", tmp, human(bytes, h), strerror(errno));
    return MOE_OK;
}

static void sync_dir_of(const char *path) {
    char dir[4200];
    dir_of(path, dir, sizeof dir);
    int fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        fsync(fd);
        close(fd);
    }
}

static moe_status write_header(int fd, const char *tmp, const plan *p, uint64_t fp) {
    unsigned char *h = aligned_alloc(XS_ALIGN, p->data_off);
    if (!h) return moe_err(MOE_ENOMEM, "out of memory");
    encode_header(h, p, fp);
    int e = write_full(fd, h, p->data_off, 0);
    free(h);
    if (e) return moe_err(MOE_EIO, "%s: write failed: %s", tmp, strerror(e));
    if (fsync(fd) != 0) return moe_err(MOE_EIO, "%s: cannot sync: %s", tmp, strerror(errno));
    return MOE_OK;
}

moe_status xs_build(const moe_model *m, const char *path, void (*progress)(void *, uint64_t, uint64_t), void *ctx) {
    plan p;
    moe_status st = plan_make(m, &p);
    if (st) return st;
    char tmp[4200];
    uint64_t fp = 0;
    if (p.n_moe == 0 || p.n_experts == 0)
        st = moe_err(MOE_EINVAL, "%s: the model has no MoE layers: there are no experts to pack", m->dir);
    else if (snprintf(tmp, sizeof tmp, "%s.tmp", path) >= (int)sizeof tmp)
        st = moe_err(MOE_EINVAL, "path too long: %s", path);
    else if (!(st = fingerprint(m, &fp)))
        st = check_space(path, p.file_bytes);
    if (st) {
        plan_free(&p);
        return st;
    }
    int fd;
    writer w = {.path = tmp, .off = p.data_off, .start = p.data_off, .total = p.file_bytes, .progress = progress, .ctx = ctx};
    if (!(st = open_tmp(tmp, p.file_bytes, &fd))) {
        w.fd = fd;
        if (!(w.buf = aligned_alloc(XS_ALIGN, XS_CHUNK))) st = moe_err(MOE_ENOMEM, "out of memory");
        if (!st) st = write_records(&w, m, &p);
        if (!st) st = write_header(fd, tmp, &p, fp);
    }
    free(w.buf);
    /* renamed or removed while we hold its lock, so never another writer's file */
    if (!st && rename(tmp, path) != 0) st = moe_err(MOE_EIO, "%s: cannot rename to %s: %s", tmp, path, strerror(errno));
    if (st && fd >= 0) unlink(tmp);
    if (fd >= 0 && close(fd) != 0 && !st) st = moe_err(MOE_EIO, "%s: close failed: %s", path, strerror(errno));
    if (!st) {
        sync_dir_of(path);
        if (progress) progress(ctx, p.file_bytes, p.file_bytes);
    }
    plan_free(&p);
    return st;
}

moe_status xs_pack_bytes(const moe_model *m, uint64_t *out) {
    plan p;
    moe_status st = plan_make(m, &p);
    *out = st ? 0 : p.file_bytes;
    plan_free(&p);
    return st;
}

/* ------------------------------------------------------------- reader -- */

/* Some of a record's bytes: [off, off + len) of the store's file `file`,
 * landing at dst in the record. A pack's record is one range; an expert in
 * the model's files is up to 9. */
typedef struct xs_range {
    uint32_t file;
    uint64_t off, len, dst;
} xs_range;

struct xstore {
    char *path;             /* the pack, or the model's directory */
    char *dir;              /* the cache directory */
    int pack;               /* 1: a pack; 0: the model's own files */
    int n_files;
    char **files;           /* [n_files] the pack, or the model's shards */
    int *fds;               /* [n_files] */
    int direct;             /* the fds have O_DIRECT */
    plan p;                 /* a pack's records carry their checksums from it */
    xs_range *ranges;       /* model: every record's ranges, sorted by file and offset within one */
    size_t *first;          /* model: [records + 1]; record i's are ranges[first[i] .. first[i + 1]) */
    size_t n_ranges;
    uint64_t chunk;         /* bytes of a bounce buffer: READ_CHUNK (tests: $MOE_TEST_READ_CHUNK) */
    pthread_mutex_t mu;     /* guards the bounce buffers: */
    unsigned char **spare;  /* [cap_spare] the n_spare not in use, each [chunk], XS_ALIGN-aligned */
    int n_spare, cap_spare, n_bounce;
};

/* A new store of model m (its plan made) with room for n_files files, none
 * open yet. */
static moe_status store_new(const moe_model *m, const char *path, const char *dir, int n_files, xstore **out) {
    xstore *x = *out = calloc(1, sizeof *x);
    if (!x) return moe_err(MOE_ENOMEM, "out of memory");
    pthread_mutex_init(&x->mu, NULL);
    x->path = strdup(path);
    x->dir = strdup(dir);
    x->files = calloc((size_t)n_files, sizeof *x->files);
    x->fds = malloc((size_t)n_files * sizeof *x->fds);
    if (!x->path || !x->dir || !x->files || !x->fds) return moe_err(MOE_ENOMEM, "out of memory");
    x->n_files = n_files;
    for (int i = 0; i < n_files; i++) x->fds[i] = -1;
    const char *t = getenv("MOE_TEST_READ_CHUNK");
    long long c = t ? atoll(t) : 0;
    x->chunk = c > 0 && c % XS_ALIGN == 0 ? (uint64_t)c : READ_CHUNK;
    moe_status st = plan_make(m, &x->p);
    if (!st && x->p.n_moe == 0) st = moe_err(MOE_EINVAL, "%s: the model has no MoE layers", m->dir);
    return st;
}

/* The end of an open: x handed out, or on failure closed. */
static moe_status store_done(xstore *x, moe_status st, xstore **out) {
    if (st) {
        xs_close(x);
        x = NULL;
    }
    *out = x;
    return st;
}

/* (Re)opens every file of x, with O_DIRECT when `direct` and the filesystem
 * takes it (one that refuses it: all without). Without it, readahead is off,
 * so a read brings in the pages it asks for and no others. */
static moe_status open_files(xstore *x, int direct) {
    for (int i = 0; i < x->n_files; i++) {
        if (x->fds[i] >= 0) close(x->fds[i]);
        x->fds[i] = -1;
    }
    x->direct = direct;
    for (int i = 0; i < x->n_files; i++) {
        x->fds[i] = open(x->files[i], O_RDONLY | O_CLOEXEC | (direct ? O_DIRECT : 0));
        if (x->fds[i] < 0 && direct && errno == EINVAL) return open_files(x, 0);
        if (x->fds[i] < 0) return moe_err(MOE_EIO, "%s: cannot open: %s", x->files[i], strerror(errno));
        if (!direct) posix_fadvise(x->fds[i], 0, 0, POSIX_FADV_RANDOM);
    }
    return MOE_OK;
}

/* A bounce buffer for a direct read, made the first time more readers are
 * at work at once than there are buffers; NULL when out of memory. */
static unsigned char *bounce_take(xstore *x) {
    unsigned char *b = NULL;
    pthread_mutex_lock(&x->mu);
    if (x->n_spare) {
        b = x->spare[--x->n_spare];
    } else if ((b = aligned_alloc(XS_ALIGN, x->chunk))) {
        if (x->n_bounce == x->cap_spare) { /* room to give every buffer back */
            int cap = x->cap_spare * 2 + 4;
            unsigned char **q = realloc(x->spare, (size_t)cap * sizeof *q);
            if (q) x->spare = q, x->cap_spare = cap;
            else free(b), b = NULL;
        }
        if (b) x->n_bounce++;
    }
    pthread_mutex_unlock(&x->mu);
    return b;
}

static void bounce_give(xstore *x, unsigned char *b) {
    pthread_mutex_lock(&x->mu);
    x->spare[x->n_spare++] = b;
    pthread_mutex_unlock(&x->mu);
}

/* Reads the header [0, data_off) into h (as much as the file has: *got).
 * A filesystem that accepts O_DIRECT at open but not on reads (EINVAL) is
 * read without it. */
static moe_status read_header(xstore *x, unsigned char *h, size_t *got) {
    int e = read_full(x->fds[0], h, x->p.data_off, 0, got);
    moe_status st;
    if (e == EINVAL && x->direct) {
        if ((st = open_files(x, 0))) return st;
        e = read_full(x->fds[0], h, x->p.data_off, 0, got);
    }
    if (e) return moe_err(MOE_EIO, "%s: read failed: %s", x->path, strerror(e));
    if (!x->direct) posix_fadvise(x->fds[0], 0, (off_t)x->p.data_off, POSIX_FADV_DONTNEED);
    return MOE_OK;
}

static moe_status check_pack(xstore *x, const moe_model *m) {
    uint64_t fp;
    moe_status st;
    if ((st = fingerprint(m, &fp))) return st;
    struct stat s;
    if (fstat(x->fds[0], &s) != 0) return moe_err(MOE_EIO, "%s: cannot stat: %s", x->path, strerror(errno));
    if (!S_ISREG(s.st_mode)) return moe_err(MOE_EIO, "%s: not a regular file", x->path);
    uint64_t size = (uint64_t)s.st_size;
    unsigned char *h = aligned_alloc(XS_ALIGN, x->p.data_off);
    if (!h) return moe_err(MOE_ENOMEM, "out of memory");
    size_t got = 0;
    if ((st = read_header(x, h, &got))) goto done;
    if (got < XS_FIXED) {
        st = moe_err(MOE_EFORMAT, "%s: truncated (%llu bytes, not even a header)", x->path, (unsigned long long)size);
        goto done;
    }
    if ((st = check_fixed(x->path, h, &x->p, fp))) goto done;
    if (size != x->p.file_bytes) {
        st = moe_err(MOE_EFORMAT, "%s: %s (%llu bytes, the header says %llu)", x->path,
                     size < x->p.file_bytes ? "truncated" : "corrupt: longer than its header says",
                     (unsigned long long)size, (unsigned long long)x->p.file_bytes);
        goto done;
    }
    if (got < x->p.data_off) {
        st = moe_err(MOE_EIO, "%s: short read of the header (%zu of %llu bytes)", x->path, got,
                     (unsigned long long)x->p.data_off);
        goto done;
    }
    uint64_t sum = get_le(h + H_CHECKSUM, 8);
    memset(h + H_CHECKSUM, 0, 8);
    if (xs_checksum(h, x->p.data_off) != sum) {
        st = moe_err(MOE_EFORMAT, "%s: corrupt header (checksum mismatch)", x->path);
        goto done;
    }
    st = check_table(x->path, h, &x->p);
done:
    free(h);
    return st;
}

moe_status xs_open(const moe_model *m, const char *path, xstore **out) {
    char dir[4200];
    dir_of(path, dir, sizeof dir);
    xstore *x;
    moe_status st = store_new(m, path, dir, 1, &x);
    if (!st && !(x->files[0] = strdup(path))) st = moe_err(MOE_ENOMEM, "out of memory");
    if (!st) x->pack = 1;
    if (!st) st = open_files(x, direct_allowed());
    if (!st) st = check_pack(x, m);
    return store_done(x, st, out);
}

/* The shard of m whose mapping holds p[n], and the offset there in *off; -1 when none. */
static int shard_of(const moe_model *m, const unsigned char *p, uint64_t n, uint64_t *off) {
    uintptr_t a = (uintptr_t)p;
    for (int s = 0; s < m->n_shards; s++) {
        uintptr_t lo = (uintptr_t)m->shards[s]->map.data, size = m->shards[s]->map.size;
        if (lo && a >= lo && n <= size && a - lo <= size - n) {
            *off = a - lo;
            return s;
        }
    }
    return -1;
}

/* xs_open_model's step: expert ex's pieces as ranges of the shards, sorted,
 * those back to back both in the file and in the record made one. */
static moe_status add_ranges(void *ctx, int l, int e, const expert *ex, xs_record *r) {
    const moe_model *m = ((void **)ctx)[0];
    xstore *x = ((void **)ctx)[1];
    piece pc[9];
    int n = pieces(ex, r, pc);
    xs_range *rg = x->ranges + x->n_ranges;
    for (int i = 0; i < n; i++) {
        uint64_t off = 0;
        int s = shard_of(m, pc[i].src, pc[i].len, &off);
        if (s < 0)
            return moe_err(MOE_EUNSUPPORTED, "%s: layer %d expert %d: weights not in the model's files as loaded: "
                                             "they can only be read from an expert pack", x->path, l, e);
        xs_range v = {(uint32_t)s, off, pc[i].len, pc[i].dst};
        int j = i;
        for (; j > 0 && (rg[j - 1].file > v.file || (rg[j - 1].file == v.file && rg[j - 1].off > v.off)); j--) rg[j] = rg[j - 1];
        rg[j] = v;
    }
    int k = 0;
    for (int i = 1; i < n; i++) {
        if (rg[i].file == rg[k].file && rg[i].off == rg[k].off + rg[k].len && rg[i].dst == rg[k].dst + rg[k].len)
            rg[k].len += rg[i].len;
        else
            rg[++k] = rg[i];
    }
    x->n_ranges += (size_t)k + 1;
    x->first[(size_t)(r - x->p.rec) + 1] = x->n_ranges;
    return MOE_OK;
}

/* Each shard as the model mapped it (same size), and readable with
 * O_DIRECT if opened so: some filesystems accept the flag at open and
 * refuse the reads (EINVAL), then every shard is reopened without it. */
static moe_status check_shards(xstore *x, const moe_model *m) {
    for (int i = 0; i < x->n_files; i++) {
        struct stat s;
        if (fstat(x->fds[i], &s) != 0) return moe_err(MOE_EIO, "%s: cannot stat: %s", x->files[i], strerror(errno));
        if ((uint64_t)s.st_size != m->shards[i]->map.size)
            return moe_err(MOE_EIO, "%s: %llu bytes, but %llu when the model was loaded: the file changed", x->files[i],
                           (unsigned long long)s.st_size, (unsigned long long)m->shards[i]->map.size);
    }
    unsigned char *b = x->direct ? aligned_alloc(XS_ALIGN, XS_ALIGN) : NULL;
    if (x->direct && !b) return moe_err(MOE_ENOMEM, "out of memory");
    int refused = 0;
    for (int i = 0; b && i < x->n_files && !refused; i++) refused = pread(x->fds[i], b, XS_ALIGN, 0) < 0 && errno == EINVAL;
    free(b);
    return refused ? open_files(x, 0) : MOE_OK;
}

moe_status xs_open_model(const moe_model *m, const char *dir, xstore **out) {
    xstore *x;
    moe_status st = store_new(m, m->dir, dir, m->n_shards, &x);
    for (int s = 0; !st && s < m->n_shards; s++)
        if (!(x->files[s] = strdup(m->shards[s]->path))) st = moe_err(MOE_ENOMEM, "out of memory");
    size_t n_rec = st ? 0 : (size_t)x->p.n_moe * (size_t)x->p.n_experts;
    if (!st && (!(x->first = calloc(n_rec + 1, sizeof *x->first)) || !(x->ranges = malloc(9 * n_rec * sizeof *x->ranges))))
        st = moe_err(MOE_ENOMEM, "out of memory");
    if (!st) st = each_record(m, &x->p, add_ranges, (void *[]){(void *)m, x});
    if (!st) st = open_files(x, direct_allowed());
    if (!st) st = check_shards(x, m);
    return store_done(x, st, out);
}

moe_status xs_open_or_build(const moe_model *m, const char *path, void (*progress)(void *, uint64_t, uint64_t),
                            void *ctx, int *built, char *why, size_t why_cap, xstore **out) {
    if (built) *built = 0;
    if (why && why_cap) *why = 0;
    *out = NULL;
    struct stat s;
    int exists = stat(path, &s) == 0;
    moe_status st = exists ? xs_open(m, path, out) : MOE_EFORMAT;
    if (st == MOE_OK) return MOE_OK;
    if (st != MOE_EFORMAT) return st; /* unreadable: rebuilding would not help */
    if (why && why_cap) snprintf(why, why_cap, "%s", exists ? moe_errmsg() : "no expert pack yet");
    if ((st = xs_build(m, path, progress, ctx))) return st;
    if (built) *built = 1;
    return xs_open(m, path, out);
}

void xs_close(xstore *x) {
    if (!x) return;
    for (int i = 0; x->fds && i < x->n_files; i++) {
        if (x->fds[i] >= 0) close(x->fds[i]);
        free(x->files[i]);
    }
    free(x->fds);
    free(x->files);
    plan_free(&x->p);
    free(x->ranges);
    free(x->first);
    for (int i = 0; i < x->n_spare; i++) free(x->spare[i]); /* all given back: no read runs now */
    free(x->spare);
    pthread_mutex_destroy(&x->mu);
    free(x->path);
    free(x->dir);
    free(x);
}

const xs_record *xs_record_of(const xstore *x, int l, int e) { return plan_rec(&x->p, l, e); }
uint64_t xs_slot_bytes(const xstore *x, int l) { return l >= 0 && l < x->p.n_layers ? x->p.slot[l] : 0; }
uint64_t xs_total_bytes(const xstore *x) { return x->p.total; }
const char *xs_path(const xstore *x) { return x->path; }
const char *xs_dir(const xstore *x) { return x->dir; }
int xs_is_pack(const xstore *x) { return x->pack; }
int xs_direct(const xstore *x) { return x->direct; }

/* Record r's ranges: *rg points at them (at *one for a pack); returns how many. */
static int ranges_of(const xstore *x, const xs_record *r, xs_range *one, const xs_range **rg) {
    if (x->pack) {
        *one = (xs_range){0, r->offset, r->bytes, 0};
        *rg = one;
        return 1;
    }
    size_t i = (size_t)(r - x->p.rec);
    *rg = x->ranges + x->first[i];
    return (int)(x->first[i + 1] - x->first[i]);
}

/* The end of the span of ranges that starts at rg[i]: the ranges after it
 * that continue it in the same file, fetched by one read. */
static int span_end(const xs_range *rg, int n, int i) {
    int j = i + 1;
    while (j < n && rg[j].file == rg[i].file && rg[j].off == rg[j - 1].off + rg[j - 1].len) j++;
    return j;
}

uint64_t xs_read_bytes(const xstore *x, int l, int e) {
    const xs_record *r = plan_rec(&x->p, l, e);
    if (!r) return 0;
    xs_range one;
    const xs_range *rg;
    int n = ranges_of(x, r, &one, &rg);
    uint64_t sum = 0;
    for (int i = 0, j; i < n; i = j) {
        j = span_end(rg, n, i);
        sum += round_up(rg[j - 1].off + rg[j - 1].len, XS_ALIGN) - rg[i].off / XS_ALIGN * XS_ALIGN;
    }
    return sum;
}

/* The error of a read of [off, end) in file f that stopped at `at` with
 * errno err (0: the end of the file came first). */
static moe_status read_failed(const xstore *x, int f, int l, int e, uint64_t off, uint64_t end, uint64_t at, int err) {
    struct stat s;
    unsigned long long got = at > off ? at - off : 0, want = end - off;
    /* a cut file shows as a short read, or with O_DIRECT as EINVAL at the unaligned rest */
    if (fstat(x->fds[f], &s) == 0 && (uint64_t)s.st_size < end)
        return moe_err(MOE_EIO, "%s: layer %d expert %d: short read (%llu of %llu bytes at offset %llu): "
                                "the file was truncated after it was opened", x->files[f], l, e, got, want,
                       (unsigned long long)off);
    if (err) return moe_err(MOE_EIO, "%s: layer %d expert %d: read failed: %s", x->files[f], l, e, strerror(err));
    return moe_err(MOE_EIO, "%s: layer %d expert %d: short read (%llu of %llu bytes at offset %llu)", x->files[f], l, e,
                   got, want, (unsigned long long)off);
}

/* Reads the span rg[0..n) (ranges back to back in one file) into the record
 * at buf. Buffered, or direct and aligned at both ends in the file and in
 * the record (a pack's record), each range goes straight to its place;
 * else the span's aligned cover is read through a bounce buffer, a chunk at
 * a time, and each range copied out of it. Buffered reads drop their pages
 * after (the cover's: a page shared with another tensor that is mapped and
 * in use stays, as the kernel keeps mapped pages). */
static moe_status read_span(xstore *x, int l, int e, const xs_range *rg, int n, unsigned char *buf) {
    int f = (int)rg[0].file, fd = x->fds[f], err;
    uint64_t lo = rg[0].off, hi = rg[n - 1].off + rg[n - 1].len;
    uint64_t alo = lo / XS_ALIGN * XS_ALIGN, ahi = round_up(hi, XS_ALIGN);
    size_t got;
    moe_status st = MOE_OK;
    if (!x->direct || (n == 1 && lo == alo && hi == ahi && rg[0].dst % XS_ALIGN == 0)) {
        for (int i = 0; i < n && !st; i++) {
            err = read_full(fd, buf + rg[i].dst, rg[i].len, rg[i].off, &got);
            if (err || got < rg[i].len) st = read_failed(x, f, l, e, rg[i].off, rg[i].off + rg[i].len, rg[i].off + got, err);
        }
        if (!x->direct) posix_fadvise(fd, (off_t)alo, (off_t)(ahi - alo), POSIX_FADV_DONTNEED);
        return st;
    }
    unsigned char *b = bounce_take(x);
    if (!b) return moe_err(MOE_ENOMEM, "out of memory");
    for (uint64_t at = alo; at < hi && !st; at += x->chunk) {
        uint64_t want = ahi - at < x->chunk ? ahi - at : x->chunk, need = at + want < hi ? at + want : hi;
        err = read_full(fd, b, want, at, &got);
        if (at + got < need) { /* past the end of the file's data is fine (O_DIRECT reads whole blocks) */
            st = read_failed(x, f, l, e, lo, hi, at + got, err);
            break;
        }
        for (int i = 0; i < n; i++) { /* range i's bytes within [at, need) */
            uint64_t a = rg[i].off > at ? rg[i].off : at, z = rg[i].off + rg[i].len < need ? rg[i].off + rg[i].len : need;
            if (a < z) memcpy(buf + rg[i].dst + (a - rg[i].off), b + (a - at), z - a);
        }
    }
    bounce_give(x, b);
    return st;
}

int xs_spans(const xstore *x, int l, int e) {
    const xs_record *r = plan_rec(&x->p, l, e);
    if (!r) return 0;
    xs_range one;
    const xs_range *rg;
    int n = ranges_of(x, r, &one, &rg), k = 0;
    for (int i = 0; i < n; i = span_end(rg, n, i)) k++;
    return k;
}

moe_status xs_read_span(xstore *x, int l, int e, int k, void *buf) {
    const xs_record *r = plan_rec(&x->p, l, e);
    if (!r) return moe_err(MOE_EINVAL, "%s: layer %d expert %d: no such record", x->path, l, e);
    if ((uintptr_t)buf % XS_ALIGN)
        return moe_err(MOE_EINVAL, "%s: layer %d expert %d: buffer not %d-byte aligned", x->path, l, e, XS_ALIGN);
    xs_range one;
    const xs_range *rg;
    int n = ranges_of(x, r, &one, &rg), i = 0;
    for (int s = 0; s < k && i < n; s++) i = span_end(rg, n, i);
    if (k < 0 || i >= n) return moe_err(MOE_EINVAL, "%s: layer %d expert %d: no read %d", x->path, l, e, k);
    moe_status st = read_span(x, l, e, rg + i, span_end(rg, n, i) - i, buf);
    if (st || !x->pack) return st;
    if (xs_checksum(buf, r->bytes) != r->checksum) { /* a pack's record is its one span */
        /* never used again: the next load finds no pack and builds a new one
         * (only if the path still names the file read here) */
        struct stat a, b;
        int gone = fstat(x->fds[0], &a) == 0 && stat(x->path, &b) == 0 && a.st_dev == b.st_dev && a.st_ino == b.st_ino &&
                   unlink(x->path) == 0;
        return moe_err(MOE_EFORMAT, "%s: layer %d expert %d: checksum mismatch (record at offset %llu, %llu bytes)%s", x->path,
                       l, e, (unsigned long long)r->offset, (unsigned long long)r->bytes,
                       gone ? "; the pack is removed and will be rebuilt at the next load" : "");
    }
    return MOE_OK;
}

int xs_span_parts(const xstore *x, int l, int e, int k, uint64_t *dst, uint64_t *len) {
    const xs_record *r = plan_rec(&x->p, l, e);
    if (!r || k < 0) return 0;
    xs_range one;
    const xs_range *rg;
    int n = ranges_of(x, r, &one, &rg), i = 0;
    for (int s = 0; s < k && i < n; s++) i = span_end(rg, n, i);
    if (i >= n) return 0;
    int j = span_end(rg, n, i);
    for (int t = i; t < j; t++) dst[t - i] = rg[t].dst, len[t - i] = rg[t].len;
    return j - i;
}

moe_status xs_read(xstore *x, int l, int e, void *buf) {
    int n = xs_spans(x, l, e);
    if (!n) return moe_err(MOE_EINVAL, "%s: layer %d expert %d: no such record", x->path, l, e);
    moe_status st = MOE_OK;
    for (int k = 0; k < n && !st; k++) st = xs_read_span(x, l, e, k, buf);
    return st;
}

static wtensor bind_part(const xs_part *p, const unsigned char *rec) {
    wtensor w = {.fmt = p->fmt, .rows = p->rows, .cols = p->cols, .data = rec + p->data_off, .row_bytes = p->row_bytes};
    if (wfmt_is_quant(p->fmt)) {
        w.group = p->group;
        w.sfmt = p->sfmt;
        w.scales = rec + p->scales_off;
        w.biases = rec + p->biases_off;
        w.sb_row_bytes = p->sb_row_bytes;
    }
    return w;
}

void xs_bind(const xs_record *r, const void *buf, expert *out) {
    out->gate = bind_part(&r->part[0], buf);
    out->up = bind_part(&r->part[1], buf);
    out->down = bind_part(&r->part[2], buf);
}

moe_status xs_reseal(const moe_model *m, unsigned char *buf, size_t n) {
    plan p;
    uint64_t fp;
    moe_status st = plan_make(m, &p);
    if (st) return st;
    if (n < p.data_off) st = moe_err(MOE_EFORMAT, "pack image of %zu bytes: shorter than its header", n);
    else if (!(st = fingerprint(m, &fp))) {
        put64(buf + 16, fp);
        put64(buf + H_CHECKSUM, 0);
        put64(buf + H_CHECKSUM, xs_checksum(buf, p.data_off));
    }
    plan_free(&p);
    return st;
}

/* ------------------------------------------------------ cache directory -- */

/* mkdir -p: every missing directory of path, 0755. */
static moe_status make_dirs(const char *path) {
    char p[4200];
    if (snprintf(p, sizeof p, "%s", path) >= (int)sizeof p) return moe_err(MOE_EINVAL, "path too long: %s", path);
    for (char *s = p + 1;; s++) {
        if (*s && *s != '/') continue;
        char c = *s;
        *s = 0;
        if (mkdir(p, 0755) != 0 && errno != EEXIST) return moe_err(MOE_EIO, "%s: cannot create: %s", p, strerror(errno));
        *s = c;
        if (!c) break;
    }
    struct stat s;
    if (stat(path, &s) != 0 || !S_ISDIR(s.st_mode)) return moe_err(MOE_EIO, "%s: cannot create: not a directory", path);
    return MOE_OK;
}

moe_status xs_cache_dir(const char *model_dir, const char *cache_root, int create, char *buf, size_t cap) {
    char real[PATH_MAX], root[4200];
    if (!realpath(model_dir, real)) return moe_err(MOE_EIO, "%s: %s", model_dir, strerror(errno));
    const char *env;
    if (cache_root && *cache_root) snprintf(root, sizeof root, "%s", cache_root);
    else if ((env = getenv("MOE_CACHE_DIR")) && *env) snprintf(root, sizeof root, "%s", env);
    else if ((env = getenv("XDG_CACHE_HOME")) && *env) snprintf(root, sizeof root, "%s/moe", env);
    else if ((env = getenv("HOME")) && *env) snprintf(root, sizeof root, "%s/.cache/moe", env);
    else return moe_err(MOE_EINVAL, "no cache directory: name one, or set MOE_CACHE_DIR or HOME");
    const char *base = strrchr(real, '/');
    base = base && base[1] ? base + 1 : "model";
    int n = snprintf(buf, cap, "%s/%s-%016llx", root, base, (unsigned long long)xs_checksum(real, strlen(real)));
    if (n < 0 || (size_t)n >= cap) return moe_err(MOE_EINVAL, "cache directory path too long: %s/%s-...", root, base);
    return create ? make_dirs(buf) : MOE_OK;
}
