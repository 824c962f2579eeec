/* xcache.h — the expert cache: per MoE layer, `capacity` slots holding
 * experts read from the expert store (xstore.h), so a model whose experts do
 * not fit in memory runs with only the ones its router picks resident.
 *
 * The forward pass uses it one MoE layer at a time, for a batch's set of
 * chosen experts:
 *
 *     xc_begin(c, l, need, n, skipped)   hits are ready; misses are read now
 *                                        (exact) or dropped (skip)
 *     while (xc_next(c, l, &i, &w) == OK && i >= 0) {
 *         run expert need[i] with weights *w;  xc_release(c, l, i);
 *     }
 *
 * Experts come out of xc_next in the order they become ready (hits first,
 * then misses as their reads complete), so computing overlaps reading. Each
 * needed expert is read at most once per batch, whatever the batch's size: a
 * batch needing more experts than there are slots reuses a slot once the
 * expert in it has run. Reads run on I/O threads; while layer l computes,
 * xc_prefetch starts reading what the next MoE layer is expected to need.
 *
 * Eviction picks, among slots not in use, not being read and not pinned,
 * the least valuable: LFU (uses with a recency decay: a use counts
 * 0.99^(passes since)) or LRU. Admission: an expert worth less than every
 * evictable one does not push one out; it goes through a staging buffer
 * shared by the layers (exact misses, guesses) or is not read (skip). Pinned experts (from a profile) are loaded
 * at start and never evicted; at least one slot per layer stays unpinned.
 * Capacity 0 is the no-cache baseline: two staging slots per layer, every
 * use read from disk.
 *
 * Threads: the compute side (begin / next / release / prefetch) is called by
 * one thread at a time (the model's forward lock); I/O threads fill slots;
 * xc_stats may be called from any thread.
 */
#ifndef MOE_EXPERTS_XCACHE_H
#define MOE_EXPERTS_XCACHE_H

#include "xstore.h"

typedef struct xcache xcache;

typedef struct xc_params {
    int capacity;            /* slots per MoE layer (clamped to n_experts); 0: no cache */
    int skip;                /* miss policy: 0 exact (wait for the read), 1 skip (drop it) */
    int lru;                 /* eviction: 0 LFU with decay, 1 LRU */
    int io_threads;          /* >= 1 */
    int stage;               /* staging buffers shared by the layers (0 < capacity < experts only):
                                a miss worth less than every cached expert, or such a guess, is
                                read into one and not kept, instead of evicting a hotter one */
    struct backend *be;      /* NULL: slots in host memory. A backend with movers (a GPU): slots
                                in its memory, filled by uploads on the I/O threads' own queues */
    int host_tier;           /* be only: every expert will be kept in pinned host memory
                                (xc_fill_host), so no bounce buffers are allocated for the store */
} xc_params;

/* A new cache over store x for model m: slots allocated (not touched: memory
 * grows as they fill), I/O threads started. x must outlive the cache. */
moe_status xc_new(const moe_model *m, xstore *x, const xc_params *p, xcache **out);
/* Stops the I/O threads (waiting for reads in flight) and frees the slots. */
void xc_free(xcache *c);

/* Starts layer l's batch over the distinct experts need[0..n). skipped[n]
 * (may be NULL under exact) receives 1 for each expert the skip policy
 * dropped: not resident at this moment (its read starts in the background
 * when a slot is free, for later batches). Fails only with MOE_EINVAL (n too
 * large, a bad expert). */
moe_status xc_begin(xcache *c, int l, const int *need, int n, unsigned char *skipped);
/* The next expert of the batch whose weights are in memory: *i its index in
 * need[] (-1 when every expert not skipped has been handed out) and *w its
 * weights, valid until xc_release(c, l, *i). Waits for reads as needed. A
 * failed read returns its error (MOE_EIO, MOE_EFORMAT) with the store's
 * message; the batch is then abandoned (what it held is released). */
moe_status xc_next(xcache *c, int l, int *i, const expert **w);
/* need[i] has run: its slot may be evicted again. */
void xc_release(xcache *c, int l, int i);

/* Starts reading experts[0..n) of layer l that are not resident, into slots
 * not in use (never evicting a pinned expert), most wanted first; notes the
 * guess so the next xc_begin on l can score it. */
void xc_prefetch(xcache *c, int l, const int *experts, int n);

/* Pins experts[0..n) of layer l (at most capacity - 1 of them) and reads
 * them now, before returning. MOE_EINVAL when there is no room. */
moe_status xc_pin(xcache *c, int l, const int *experts, int n);
/* Reads experts[0..n) of layer l into empty slots (warm start), in the
 * order given, stopping quietly when none is left, and restores their LFU
 * scores (scores[n], may be NULL). Does not wait: xc_wait_idle does. */
void xc_preload(xcache *c, int l, const int *experts, const double *scores, int n);
/* Waits until no read is queued or in flight; the first failure among the
 * slots read by xc_preload / xc_pin since the last call, if any. */
moe_status xc_wait_idle(xcache *c);

/* Per-layer counters (layer -1: the sum over layers). */
typedef struct xc_counters {
    int64_t hits, misses, skipped;      /* distinct experts per batch: in memory when needed;
                                           not (read on demand, or its read ahead still running); dropped */
    int64_t prefetched, prefetch_used;  /* reads started by xc_prefetch; of those, used */
    int64_t predicted, predicted_right; /* experts guessed; of those, then needed */
    int64_t evictions;
    int64_t reads, bytes_read;
    double read_seconds;                /* wall time with at least one read in flight */
    int capacity, resident, pinned;
} xc_counters;
void xc_stats(xcache *c, int l, xc_counters *out);
void xc_reset_stats(xcache *c);

/* The experts resident in layer l, most valuable first, into experts[] and
 * their LFU scores into scores[] (room for n_experts each); returns how
 * many. For saving warm-start state. */
int xc_resident(xcache *c, int l, int *experts, double *scores);

/* Bytes of all slots and staging buffers (what the cache may hold at most). */
uint64_t xc_bytes(const xcache *c);

/* A device's cache (xc_params.be): reads every expert from the store into
 * pinned host memory (on the I/O threads' count of threads, progress(ctx,
 * done, total) in bytes, may be NULL), after which every miss is one upload
 * from there instead of a read of the store. Call before the cache is used.
 * On failure (no memory to pin, a failed read) the host tier is dropped and
 * the cache goes on reading the store; the error is returned. */
moe_status xc_fill_host(xcache *c, void (*progress)(void *ctx, uint64_t done, uint64_t total), void *ctx);
/* Bytes of the host tier once filled; 0 without one. */
uint64_t xc_host_bytes(const xcache *c);

#endif
