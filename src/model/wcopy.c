/* wcopy.c — the CPU's weights copied out of the files' mappings into the
 * process's own (anonymous) memory at load, as moe_load_params.load asks.
 *
 * Why: decode streams every weight once a token, so its speed is the
 * memory's read bandwidth. On the machine the engine was tuned on, 4-bit
 * decode read the same bytes 5-12% faster from anonymous memory than from the
 * page cache behind a file mapping, 2 MiB pages or 4 KiB alike
 * (docs/PERFORMANCE.md, "weights copied into anonymous memory").
 *
 * How: one anonymous mapping, 2 MiB-aligned and advised MADV_HUGEPAGE; each
 * weight's values, scales and biases read into it with pread (so no page of
 * the file mapping is faulted in) on the model's number of threads, 64-byte
 * aligned, in the order the forward pass reads them; each copied range is
 * then dropped from the mapping and the page cache (file_map_drop) so the
 * bytes are not held twice; the copy is made read-only. The views are
 * repointed only once all is copied. */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "../base/err.h"
#include "../base/mem.h"
#include "../base/pool.h"
#include "model.h"

#define PIECE_ALIGN 64                        /* a cache line: the kernels' vector loads */
#define HUGE_PAGE ((size_t)2 << 20)
#define READ_CHUNK ((size_t)16 << 20)         /* one pread: a pool item */
#define BATCH_BYTES ((size_t)512 << 20)       /* one pool run, one progress step */
#define PROGRESS_MIN ((uint64_t)1000000000)   /* copies this large report progress */
#define WHAT "copying weights"

/* One contiguous range of a weight (its values, scales or biases) in a shard. */
typedef struct piece {
    const void **field; /* the view's pointer to repoint */
    size_t len;
    int shard;
    size_t off;         /* in the shard's file */
    size_t dst;         /* in the copy */
} piece;

typedef struct plan {
    piece *p;           /* [n], cap allocated */
    size_t n, cap;
    size_t bytes;       /* the copy's size, pieces aligned */
    int64_t copied;     /* the pieces' own bytes */
} plan;

static size_t round_up(size_t x, size_t a) { return (x + a - 1) / a * a; }

static moe_status add_piece(moe_model *m, plan *pl, const void **field, size_t len) {
    const unsigned char *p = *field;
    if (!p || !len) return MOE_OK;
    int s = 0;
    for (; s < m->n_shards; s++) {
        const file_map *fm = &m->shards[s]->map;
        if (fm->data && p >= fm->data && len <= fm->size && (size_t)(p - fm->data) <= fm->size - len) break;
    }
    if (s == m->n_shards) return MOE_OK; /* not from a file (a buffer of the model's own): stays */
    if (pl->n == pl->cap) {
        size_t cap = pl->cap ? 2 * pl->cap : 256;
        piece *np = realloc(pl->p, cap * sizeof *np);
        if (!np) return moe_err(MOE_ENOMEM, "out of memory");
        pl->p = np;
        pl->cap = cap;
    }
    pl->p[pl->n++] = (piece){field, len, s, (size_t)(p - m->shards[s]->map.data), pl->bytes};
    pl->bytes += round_up(len, PIECE_ALIGN);
    pl->copied += (int64_t)len;
    return MOE_OK;
}

static moe_status plan_weight(moe_model *m, wtensor *w, void *ctx) {
    plan *pl = ctx;
    moe_status st;
    if (!w->data || w->rows == 0) return MOE_OK;
    if ((st = add_piece(m, pl, &w->data, (size_t)w->rows * w->row_bytes))) return st;
    if (!wfmt_is_quant(w->fmt)) return MOE_OK;
    size_t sb = (size_t)w->rows * w->sb_row_bytes;
    if ((st = add_piece(m, pl, &w->scales, sb))) return st;
    return add_piece(m, pl, &w->biases, sb);
}

/* One pread of a piece: bytes [at, at + len) of pl->p[piece]. */
typedef struct chunk {
    size_t piece, at, len;
    int err;            /* the worker's errno; -1: the file ended early */
} chunk;

typedef struct job {
    moe_model *m;
    const plan *pl;
    const int *fds;     /* [n_shards] */
    unsigned char *base;
    chunk *c;           /* this batch's */
} job;

/* A pool item: reads one chunk (first touching the copy's fresh pages, which
 * the kernel zeroes: on the VM measured, most of the copy's time, hence the
 * threads). */
static void read_chunk(void *ctx, int64_t i, int tid) {
    (void)tid;
    const job *j = ctx;
    chunk *c = &j->c[i];
    const piece *pc = &j->pl->p[c->piece];
    unsigned char *dst = j->base + pc->dst + c->at;
    size_t off = pc->off + c->at, len = c->len;
    while (len > 0) {
        ssize_t r = pread(j->fds[pc->shard], dst, len, (off_t)off);
        if (r < 0 && errno == EINTR) continue;
        if (r <= 0) {
            c->err = r < 0 ? errno : -1;
            return;
        }
        dst += r, off += (size_t)r, len -= (size_t)r;
    }
}

/* Copies every piece of pl into base on n_threads threads, in batches of
 * about BATCH_BYTES; after each, drops the batch's source pages and reports
 * progress. */
static moe_status copy_pieces(moe_model *m, const moe_load_params *p, const plan *pl, unsigned char *base, int n_threads) {
    size_t n_chunks = 0;
    for (size_t i = 0; i < pl->n; i++) n_chunks += (pl->p[i].len + READ_CHUNK - 1) / READ_CHUNK;
    int *fds = malloc(sizeof *fds * (size_t)m->n_shards);
    chunk *all = malloc(sizeof *all * n_chunks);
    pool *pool = pool_new(n_threads);
    moe_status st = fds && all && pool ? MOE_OK : moe_err(MOE_ENOMEM, "out of memory");
    for (int s = 0; fds && s < m->n_shards; s++) fds[s] = -1;
    for (int s = 0; s < m->n_shards && !st; s++)
        if ((fds[s] = open(m->shards[s]->path, O_RDONLY | O_CLOEXEC)) < 0)
            st = moe_err(MOE_EIO, "%s: cannot open: %s", m->shards[s]->path, strerror(errno));
    size_t k = 0;
    for (size_t i = 0; !st && i < pl->n; i++)
        for (size_t at = 0; at < pl->p[i].len; at += READ_CHUNK)
            all[k++] = (chunk){i, at, pl->p[i].len - at < READ_CHUNK ? pl->p[i].len - at : READ_CHUNK, 0};
    int report = p->progress && (uint64_t)pl->copied >= PROGRESS_MIN;
    uint64_t done = 0, total = (uint64_t)pl->copied;
    for (size_t b0 = 0, b1; !st && b0 < n_chunks; b0 = b1) {
        size_t bytes = 0;
        for (b1 = b0; b1 < n_chunks && bytes < BATCH_BYTES; b1++) bytes += all[b1].len;
        job j = {m, pl, fds, base, all + b0};
        pool_run(pool, read_chunk, &j, (int64_t)(b1 - b0));
        for (size_t i = b0; i < b1 && !st; i++) {
            const piece *pc = &pl->p[all[i].piece];
            const st_file *f = m->shards[pc->shard];
            if (all[i].err)
                st = moe_err(MOE_EIO, "%s: cannot read: %s", f->path,
                             all[i].err < 0 ? "shorter than when it was mapped" : strerror(all[i].err));
            else file_map_drop(&f->map, fds[pc->shard], f->map.data + pc->off + all[i].at, all[i].len);
        }
        done += bytes;
        if (!st && report) p->progress(p->progress_ctx, WHAT, done, total);
    }
    for (int s = 0; fds && s < m->n_shards; s++)
        if (fds[s] >= 0) close(fds[s]);
    pool_free(pool);
    free(all);
    free(fds);
    return st;
}

/* Copies the planned pieces into a new anonymous mapping and repoints them. */
static moe_status copy_weights(moe_model *m, const moe_load_params *p, const plan *pl) {
    size_t span = round_up(pl->bytes, HUGE_PAGE), map_bytes = span + HUGE_PAGE; /* room to align the start */
    void *map = mmap(NULL, map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (map == MAP_FAILED)
        return moe_err(MOE_ENOMEM, "%s: cannot allocate %.2f GB to copy the weights into: %s", m->dir,
                       (double)map_bytes / 1e9, strerror(errno));
    unsigned char *base = (unsigned char *)round_up((size_t)(uintptr_t)map, HUGE_PAGE);
    madvise(base, span, MADV_HUGEPAGE); /* advice: a kernel without transparent huge pages ignores it */
    int tied = m->lm_head.data == m->embed.data;
    moe_status st = copy_pieces(m, p, pl, base, backend_threads(m->be));
    if (st) {
        munmap(map, map_bytes);
        return moe_err_prefix(st, "copying the weights");
    }
    mprotect(base, span, PROT_READ); /* the weights are read-only, as the mapping was */
    for (size_t i = 0; i < pl->n; i++) *pl->p[i].field = base + pl->p[i].dst;
    if (tied) m->lm_head = m->embed;
    m->wcopy_map = map;
    m->wcopy_map_bytes = map_bytes;
    m->wcopy_bytes = pl->copied;
    return MOE_OK;
}

moe_status wcopy_load(moe_model *m, const moe_load_params *p) {
    if (p->load == MOE_LOAD_MMAP) return MOE_OK;
    plan pl = {0};
    moe_status st = model_each_weight(m, plan_weight, &pl);
    if (!st && pl.n > 0) {
        int64_t avail = mem_available(), need = model_memory_need(m, (int64_t)pl.bytes);
        int fits = avail < 0 || need <= avail;
        if (fits) st = copy_weights(m, p, &pl);
        else if (p->load == MOE_LOAD_COPY)
            st = moe_err(MOE_ENOMEM,
                         "%s: not enough memory to copy the weights: they take %.2f GB, with a 4096-token KV cache and "
                         "working room %.2f GB, and %.2f GB is available (load mode mmap uses them from the files)",
                         m->dir, (double)pl.bytes / 1e9, (double)need / 1e9, (double)avail / 1e9);
    }
    free(pl.p);
    return st;
}

void wcopy_free(moe_model *m) {
    if (m->wcopy_map) munmap(m->wcopy_map, m->wcopy_map_bytes);
    m->wcopy_map = NULL;
    m->wcopy_map_bytes = 0;
    m->wcopy_bytes = 0;
}
