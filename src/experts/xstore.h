/* xstore.h — the expert store: where the expert cache reads each expert
 * from, so that bringing an expert into memory bypasses the page cache. Two
 * kinds behind one interface:
 *
 *  - a pack: every MoE layer's experts rewritten as contiguous, 4 KiB-aligned
 *    records in one file, so that an expert is one read. A record holds one
 *    expert's gate, up and down weights (values, and for quantized formats
 *    their scales and biases), each part 64-byte aligned inside the record.
 *    The pack's header names the model it was built from (a fingerprint of
 *    config.json and of each safetensors file's name, size and modification
 *    time) and carries a checksum of itself and of every record, so a stale,
 *    truncated or corrupted pack is detected: xs_open refuses it (and
 *    xs_open_or_build rebuilds it); a record whose bytes fail their checksum
 *    on a read is reported, never handed out.
 *  - the model's own files (xs_open_model): no copy on disk. An expert is the
 *    list of (shard, file offset, length) ranges its weights occupy in the
 *    model's safetensors files (3 for a float expert, 9 for a quantized one,
 *    fewer where ranges lie back to back in the file and are read as one),
 *    each landing at the place the same part has in a pack's record, so a
 *    slot filled from either binds the same way (xs_bind).
 *
 * A pack lives in a cache directory: <cache_root>/<model dir's base
 * name>-<16 hex digits of a hash of its real path>/experts.pack, where
 * cache_root is --cache-dir, else $MOE_CACHE_DIR, else $XDG_CACHE_HOME/moe,
 * else ~/.cache/moe. The same directory holds the expert cache's saved state
 * (warm starts, offload.c), whichever kind of store is used (xs_dir).
 *
 * Thread-safety: after open, xs_read may be called from many threads at once
 * (it uses pread); everything else is read-only.
 */
#ifndef MOE_EXPERTS_XSTORE_H
#define MOE_EXPERTS_XSTORE_H

#include <stddef.h>
#include <stdint.h>

#include "../model/model.h"

#define XS_ALIGN 4096

/* Where one tensor of a record lies, relative to the record's first byte. */
typedef struct xs_part {
    wfmt fmt, sfmt;          /* value format; scales/biases format (quantized only) */
    int64_t rows, cols;
    int group;               /* quantized only, else 0 */
    uint64_t data_off;       /* [rows x row_bytes] */
    uint64_t scales_off, biases_off; /* [rows x sb_row_bytes] each, quantized only */
    uint64_t row_bytes, sb_row_bytes;
} xs_part;

/* One expert: gate, up, down at `offset` in the pack, `bytes` long (a
 * multiple of XS_ALIGN; the parts' bytes plus padding), and the checksum of
 * those bytes. */
typedef struct xs_record {
    uint64_t offset, bytes, checksum;
    xs_part part[3];         /* gate, up, down */
} xs_record;

typedef struct xstore xstore;

/* The cache directory of the model in `model_dir` under cache_root (NULL:
 * the default root above) into buf[cap]; it is created (with parents) when
 * create != 0. */
moe_status xs_cache_dir(const char *model_dir, const char *cache_root, int create, char *buf, size_t cap);

/* Writes the pack of model m to `path` (through path.tmp, renamed into place
 * only when complete and synced, so a crash never leaves a half pack under
 * the real name). Reads the experts through m's mapped files and drops them
 * from memory as it goes (madvise / posix_fadvise), so RSS stays small for a
 * model larger than memory. progress(ctx, done, total) in bytes, may be NULL.
 * Fails with MOE_EINVAL for a model without MoE layers, MOE_EIO for write
 * errors (no space: the message says how much is needed). */
moe_status xs_build(const moe_model *m, const char *path, void (*progress)(void *, uint64_t, uint64_t), void *ctx);

/* Opens the pack at `path` for model m and checks it against m: magic,
 * version, fingerprint, layer and expert counts, every record's parts equal
 * in format and shape to m's expert weights, record offsets and sizes inside
 * the file, the header's checksum, the file's size. MOE_EFORMAT with a
 * message saying what is wrong ("stale: built from another model", "truncated",
 * "corrupt header") when it does not match; MOE_EIO when it cannot be read.
 * The file is opened with O_DIRECT where the filesystem allows it (else
 * plain reads, with posix_fadvise to drop the pages after each read);
 * MOE_XSTORE_DIRECT=0 in the environment turns O_DIRECT off. */
moe_status xs_open(const moe_model *m, const char *path, xstore **out);

/* Opens a store over model m's own safetensors files: each expert read
 * straight from the ranges its weights occupy there, no pack. `dir` is the
 * model's cache directory (xs_dir: where the warm state lives; the pack need
 * not exist). Each shard is opened again for reading, with O_DIRECT where the
 * filesystem allows it (reads then go through an aligned bounce buffer of 4
 * MiB per concurrent reader) and MOE_XSTORE_DIRECT is not 0; else plain reads
 * with readahead off and the pages dropped after each read (posix_fadvise).
 * MOE_EUNSUPPORTED when an expert weight is not a view of a mapped shard,
 * MOE_EINVAL for a model without MoE layers, MOE_EIO when a shard cannot be
 * opened or is no longer the size it was mapped at. For tests only,
 * $MOE_TEST_READ_CHUNK (a multiple of XS_ALIGN) replaces the bounce
 * buffer's 4 MiB, so that small models exercise reads of several chunks. */
moe_status xs_open_model(const moe_model *m, const char *dir, xstore **out);

/* xs_open, and when the pack is missing or fails its checks, xs_build then
 * xs_open again. *built says whether it was (re)built and why[why_cap] why
 * (both may be NULL). */
moe_status xs_open_or_build(const moe_model *m, const char *path, void (*progress)(void *, uint64_t, uint64_t), void *ctx,
                            int *built, char *why, size_t why_cap, xstore **out);
void xs_close(xstore *x);

/* The record of expert e of layer l (a MoE layer; NULL otherwise). */
const xs_record *xs_record_of(const xstore *x, int l, int e);
/* The largest record of layer l in bytes (a multiple of XS_ALIGN): the size
 * of a cache slot for that layer. 0 for a layer without experts. */
uint64_t xs_slot_bytes(const xstore *x, int l);
/* Sum over MoE layers of all their records' bytes. */
uint64_t xs_total_bytes(const xstore *x);
/* The pack's path, or for a store over the model's files the model's directory. */
const char *xs_path(const xstore *x);
/* The cache directory the store belongs to (the pack's directory, or the one
 * given to xs_open_model). */
const char *xs_dir(const xstore *x);
/* Whether the store is a pack (1) or the model's own files (0). */
int xs_is_pack(const xstore *x);
/* Whether reads bypass the page cache (O_DIRECT) rather than drop it after. */
int xs_direct(const xstore *x);
/* Bytes a read of expert e of layer l transfers from disk: a pack's record;
 * from the model's files, its ranges widened to XS_ALIGN boundaries (what an
 * O_DIRECT read fetches, and the pages a buffered read fills). 0 for no record. */
uint64_t xs_read_bytes(const xstore *x, int l, int e);

/* The size of the pack xs_build would write for model m (header and
 * records), without writing it. */
moe_status xs_pack_bytes(const moe_model *m, uint64_t *out);
/* Bytes free to an unprivileged writer on the filesystem holding `dir`; -1
 * when it cannot be asked. For tests only, $MOE_TEST_FREE_BYTES (a count of
 * bytes) replaces the answer, so the decisions that depend on it can be
 * checked without a small filesystem. */
int64_t xs_free_bytes(const char *dir);

/* Reads expert e of layer l into buf (XS_ALIGN-aligned, at least
 * xs_slot_bytes(x, l) bytes), laid out as its record; from a pack, verifies
 * its checksum. MOE_EIO on a read error or a short read (a file truncated
 * after it was opened), MOE_EFORMAT when a pack record's checksum does not
 * match (the pack file is then removed, so the next load rebuilds it); the
 * message names the file, layer and expert. Bytes of buf between the parts
 * are zero from a pack, unspecified from the model's files. Thread-safe. */
moe_status xs_read(xstore *x, int l, int e, void *buf);

/* The reads xs_read makes for expert e of layer l: 1 for a pack's record; from
 * the model's files, one per run of its ranges that lie back to back in one
 * file (up to 9 for an MLX-quantized expert). xs_read_span(x, l, e, k, buf)
 * makes read k alone (a pack's also checks the checksum), so the reads of one
 * expert can run on several threads at once; errors as xs_read's. */
#define XS_MAX_SPANS 9 /* gate, up, down x values, scales, biases */
int xs_spans(const xstore *x, int l, int e);
moe_status xs_read_span(xstore *x, int l, int e, int k, void *buf);
/* The byte ranges of the record that read k of expert e of layer l fills in
 * the buffer (dst[i], len[i], at most XS_MAX_SPANS): what a copy of that
 * read's result elsewhere must carry. Returns how many; 0 for no such read. */
int xs_span_parts(const xstore *x, int l, int e, int k, uint64_t *dst, uint64_t *len);

/* Points *out's three weights at the parts of record r held in buf (what
 * xs_read filled). */
void xs_bind(const xs_record *r, const void *buf, expert *out);

/* The 64-bit checksum the pack uses, over n bytes (n a multiple of 8; other
 * lengths read the last partial word zero-padded). A change confined to one
 * aligned 8-byte word always changes it. Runs at several GB/s on one core. */
uint64_t xs_checksum(const void *p, size_t n);

/* For tests and the fuzzer: writes into the pack image buf[n] (at least its
 * header) the fingerprint model m has now and the header checksum of what
 * the header then holds, so a deliberately altered header gets past those
 * two checks to the ones behind them. MOE_EFORMAT when n is shorter than the
 * header m's pack has. */
moe_status xs_reseal(const moe_model *m, unsigned char *buf, size_t n);

#endif
