/* moe.h — the public API of libmoe.
 *
 * libmoe loads a Hugging Face model directory (dense Mistral or a
 * Mixture-of-Experts family) and runs it on the CPU. Everything here is
 * opaque handles, status codes and plain option structs:
 *
 *   moe_model    config + weights (memory-mapped), shared read-only by sequences
 *   moe_seq      one conversation: KV cache, position, last logits
 *   moe_sampler  sampling options + random state
 *
 * Conventions (as SQLite's):
 * - Every function that can fail returns moe_status; on failure a one-line
 *   message naming the file / tensor / option at fault is readable with
 *   moe_errmsg() on the same thread until that thread's next libmoe call fails.
 * - Every *_new / *_load has a *_free; *_free(NULL) does nothing.
 * - Options are plain structs filled by *_defaults(), so fields can be added.
 * - Nothing in the library exits or aborts on bad input.
 * - A moe_model may be shared by many sequences on many threads; a moe_seq or
 *   moe_sampler is used by one thread at a time.
 */
#ifndef MOE_H
#define MOE_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#define MOE_VERSION "0.1.0"

typedef enum moe_status {
    MOE_OK = 0,
    MOE_EIO = 1,          /* a file could not be opened, read or mapped */
    MOE_EFORMAT = 2,      /* a file is malformed (bad JSON, bad header, wrong shape) */
    MOE_EUNSUPPORTED = 3, /* well-formed, but a family/setting moe does not run */
    MOE_ENOMEM = 4,       /* an allocation failed */
    MOE_EINVAL = 5,       /* a bad argument from the caller */
    MOE_ERANGE = 6,       /* a token id or position out of range (e.g. context full) */
} moe_status;

/* The calling thread's last error message; never NULL ("" when none). */
const char *moe_errmsg(void);
/* A short constant name for a status ("MOE_EFORMAT"). */
const char *moe_status_name(moe_status st);

/* ---------------------------------------------------------------- model -- */

typedef struct moe_model moe_model;

/* Expert offloading (MoE models): instead of mapping every expert, each MoE
 * layer keeps `capacity` experts resident in a cache fed from an expert
 * store on disk, read past the page cache, so a model larger than memory
 * runs. The store is a pack (one contiguous record per expert, built on
 * first use, minutes for a large model, progress through `progress`, in the
 * model's cache directory and rebuilt when the model changes) or the
 * model's own safetensors files (no copy: each expert read from the ranges
 * its weights occupy there, several reads instead of one). */
typedef enum moe_miss_policy {
    MOE_MISS_EXACT = 0, /* wait for the read: output identical to a full load */
    MOE_MISS_SKIP = 1,  /* drop experts not resident (their weights go to the
                           others where the family renormalises); the shared
                           expert always runs; the read starts for later tokens */
} moe_miss_policy;

typedef enum moe_evict_policy {
    MOE_EVICT_LFU = 0,  /* least frequently used, uses decaying with age (default) */
    MOE_EVICT_LRU = 1,  /* least recently used */
} moe_evict_policy;

typedef enum moe_store_kind {
    MOE_STORE_AUTO = 0,  /* a pack when a valid one exists, or when the cache directory's
                            filesystem has room for one (its size + 5% + 1 GiB free); else
                            the model's files, and moe_offload_info.note says why */
    MOE_STORE_PACK = 1,  /* a pack, built when missing or stale (MOE_EIO when the disk has no room) */
    MOE_STORE_MODEL = 2, /* the model's own files; no pack is built or read */
} moe_store_kind;

/* Where the weights the forward pass reads live on the CPU. A mapped file's
 * pages are the page cache's; on the machine this was measured on, 4-bit
 * decode streamed them 5-12% slower than the same bytes copied into
 * anonymous memory (docs/PERFORMANCE.md). A GPU copies the weights into its
 * own memory whatever this says. */
typedef enum moe_load_mode {
    MOE_LOAD_AUTO = 0,  /* copy when the weights fit in available memory with a 4096-token KV
                           cache and working room (the test that turns offloading on), else map */
    MOE_LOAD_MMAP = 1,  /* use the weights where the file's mapping holds them: instant, shared
                           with other processes through the page cache */
    MOE_LOAD_COPY = 2,  /* read them into anonymous memory (2 MiB pages where the kernel gives
                           them) and drop the file's pages from the page cache; MOE_ENOMEM when
                           they do not fit in available memory */
} moe_load_mode;

typedef struct moe_load_params {
    int n_threads;        /* worker threads for the kernels; <= 0: all online cores */
    const char *device;   /* where the model runs: "cpu", "cuda", "cuda:N" (a GPU of a build with
                             the CUDA backend) or "auto" (the first GPU if any, else the CPU);
                             NULL: $MOE_DEVICE, else "cpu" */
    /* offloading: */
    int offload;          /* -1 (default): when the model does not fit in available memory,
                             or when capacity >= 0, expert_mem, profile or skip asks for it;
                             0: never; 1: always (MoE models) */
    int capacity;         /* experts resident per MoE layer; -1 (default): from expert_mem,
                             else from available memory (cgroup limit, MemAvailable) less the
                             other weights, a 4096-token KV cache and working room;
                             0: no cache (every use read from disk: the baseline) */
    int64_t expert_mem;   /* bytes for all layers' resident experts; 0: not set */
    moe_miss_policy miss;
    moe_evict_policy evict;
    int prefetch;         /* 1 (default): while a layer runs, read what the next
                             MoE layer's router would pick from the current state */
    int warm;             /* 1 (default): save which experts are resident (and their use
                             counts) when the model is freed, preload them at the next load */
    const char *profile;  /* a `moe profile` JSON file: pin each layer's hottest experts
                             (never evicted, loaded at start); NULL: none */
    int pin;              /* experts pinned per layer from the profile; -1 (default): half
                             the capacity (at most capacity - 1) */
    const char *cache_dir;/* root of expert stores; NULL: $MOE_CACHE_DIR, else
                             $XDG_CACHE_HOME/moe, else ~/.cache/moe */
    int io_threads;       /* reader threads; <= 0: 4 */
    int host_experts;     /* on a GPU: every expert also kept in pinned host memory, read
                             from the store once at load, so a miss is one copy over the bus
                             instead of a read of the disk. -1 (default): when the store fits
                             in available host memory with room to spare; 0: never; 1: always
                             (MOE_ENOMEM when it cannot be pinned) */
    moe_store_kind store; /* where experts are read from; MOE_STORE_AUTO (default) */
    moe_load_mode load;   /* CPU weights mapped or copied; MOE_LOAD_AUTO (default). Offloaded
                             experts live in the expert cache either way: only the others
                             are copied */
    /* building the store, preloading and copying (1 GB or more) report (what, done, total)
     * in bytes; may be NULL */
    void (*progress)(void *ctx, const char *what, uint64_t done, uint64_t total);
    void *progress_ctx;
} moe_load_params;

void moe_load_params_defaults(moe_load_params *p);
/* The devices this build can run on: "cpu", or "cpu, cuda (N devices)". */
const char *moe_devices(void);

/* Loads the model in directory `dir` (config.json + model.safetensors or the
 * shards listed in model.safetensors.index.json). Weights are memory-mapped,
 * then on the CPU copied into the process's memory or used in place
 * (p->load); with offloading, experts are read into the expert cache
 * instead. On success *out owns the model (free with moe_model_free);
 * on failure *out is NULL and nothing is left open. `p` may be NULL. */
moe_status moe_model_load(const char *dir, const moe_load_params *p, moe_model **out);
/* Frees the model; with offloading and p->warm, first saves the expert
 * cache's state for the next load (a failure to save is ignored). */
void moe_model_free(moe_model *m);

/* Bytes of weights copied into the process's memory at load (moe_load_mode);
 * 0 when they are used from the files' mappings (or placed on a GPU). */
int64_t moe_model_copied_bytes(const moe_model *m);

/* How a model was loaded with offloading (all zero without). */
typedef struct moe_offload_info {
    int enabled;
    int capacity;           /* experts resident per MoE layer (0: no cache) */
    int n_experts;          /* per MoE layer */
    int pinned;             /* experts pinned per layer */
    int auto_reason;        /* 1: turned on because the model does not fit in memory */
    int64_t available_bytes;/* memory available at load (on a GPU: its free memory) */
    int64_t cache_bytes;    /* all slots of all layers */
    int on_device;          /* the cache's slots are in the GPU's memory */
    int64_t host_bytes;     /* on a GPU: every expert held in pinned host memory (0: read from the store) */
    moe_store_kind store;   /* the store in use: MOE_STORE_PACK or MOE_STORE_MODEL */
    int64_t store_bytes;    /* the experts as the store lays them out (a pack's records; the
                               same sum when read from the model's files) */
    int built;              /* the store was (re)built by this load */
    double build_seconds;   /* building it */
    int64_t preloaded;      /* experts read at load (pinned + warm start) */
    double preload_seconds;
    char store_path[4096];  /* the pack, or the model's directory (MOE_STORE_MODEL) */
    char note[256];         /* why the store was rebuilt, why the model's files are read instead
                               of a pack (auto), that the warm state was unusable; "" */
} moe_offload_info;
void moe_model_offload_info(const moe_model *m, moe_offload_info *out);

/* Expert cache counters of one MoE layer, or of all (layer -1), since the
 * load or the last reset. Safe to call from any thread. MOE_EINVAL when the
 * model is not offloaded or the layer is not a MoE layer. */
typedef struct moe_expert_stats {
    int64_t hits;            /* experts a batch needed that were in memory */
    int64_t misses;          /* experts it waited for (exact): read on demand, or read ahead
                                but not yet there */
    int64_t skipped;         /* experts dropped (skip): a batch's choices of them ignored */
    int64_t prefetched;      /* experts read ahead; */
    int64_t prefetch_used;   /*   of those, used before being evicted */
    int64_t predicted;       /* next-layer guesses; */
    int64_t predicted_right; /*   of those, chosen by the router then */
    int64_t evictions;
    int64_t reads, bytes_read;
    double read_seconds;     /* per layer: the reads' own time; total: wall time with a read in flight */
    int capacity, resident, pinned;
} moe_expert_stats;
moe_status moe_model_expert_stats(const moe_model *m, int layer, moe_expert_stats *out);
void moe_model_reset_expert_stats(moe_model *m);

/* What a model is, as read from its config.json. All fields are plain values;
 * the struct lives as long as the model. */
typedef struct moe_config {
    const char *model_type;   /* "mistral", "mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "qwen3_next" */
    const char *dtype;        /* storage dtype of most weights: "float32", "bfloat16", ... */
    int vocab_size;
    int hidden_size;
    int n_layers;
    int n_heads;
    int n_kv_heads;
    int head_dim;
    int intermediate_size;    /* dense MLP width */
    int n_experts;            /* 0 for dense models */
    int n_experts_per_tok;
    int moe_intermediate_size;
    int shared_expert_intermediate_size; /* 0 when there is none */
    int n_moe_layers;         /* layers whose FFN is a MoE block */
    int sliding_window;       /* 0 = none */
    int max_position_embeddings;
    float rope_theta;
    float rms_norm_eps;
    int tie_word_embeddings;
    int quant_bits;           /* MLX affine quantization of the model's weights: bits, */
    int quant_group;          /* and group size; both 0 for a float model. Per-module
                                 exceptions (e.g. 8-bit routers) are not shown here */
    int bos_token_id;         /* -1 when unknown */
    int n_eos;                /* number of entries in eos_token_ids */
    int eos_token_ids[8];
    int64_t n_params;         /* all parameters */
    int64_t n_params_active;  /* parameters touched per token (top-k experts only) */
    int64_t weight_bytes;     /* bytes of all weight tensors as stored */
    int64_t weight_bytes_active; /* bytes of weights read per decoded token */
    int n_linear_layers;      /* gated DeltaNet layers (qwen3_next), whose cache is a recurrent state */
} moe_config;

const moe_config *moe_model_config(const moe_model *m);
/* Bytes of KV cache one sequence of context `n_ctx` needs (float32 K and V). */
int64_t moe_model_kv_bytes(const moe_model *m, int n_ctx);
/* Number of worker threads the model's kernels use (1 on a GPU). */
int moe_model_threads(const moe_model *m);
/* The device the model runs on, in words: "cpu (avx512, 2 threads)", "cuda: NVIDIA H100 ..., sm_90, 79.1 GiB". */
const char *moe_model_device(const moe_model *m);
/* How many times the router chose each expert of MoE layer `layer` (one count
 * per token and top-k slot) in every forward pass on m since it was loaded or
 * the counts were last reset: counts[n_experts]. MOE_EINVAL when `layer` is not
 * a MoE layer (or counts is NULL). Read it when no forward pass is running on
 * m. The counts are the model's: every sequence on it (every request of a
 * server) adds to them. */
moe_status moe_model_expert_counts(const moe_model *m, int layer, int64_t *counts);
void moe_model_reset_expert_counts(moe_model *m);

/* ------------------------------------------------------------- sequence -- */

typedef struct moe_seq moe_seq;

typedef struct moe_seq_params {
    int n_ctx;    /* maximum tokens in the sequence; <= 0: the model's
                     max_position_embeddings, capped at 4096 */
    int n_batch;  /* prompt tokens processed per forward pass; <= 0: 256 */
    int kv_bits;  /* KV cache storage: 0 or 32 = float32 (default); 8 or 4 =
                     affine-quantized from the first token, as mlx-lm's
                     QuantizedKVCache: per group of 64 values along a head
                     (32, or the whole head, where 64 does not divide it),
                     x = scale * q + bias, float32 scale and bias; at
                     head_dim 128, 3.6x (8) or 6.4x (4) smaller. Perplexity
                     of the bundled models: +0.03% at 8, +1% at 4. Other
                     values: moe_seq_new fails with MOE_EINVAL. */
    int n_snapshots; /* models with linear-attention layers (qwen3_next):
                     how many saved states moe_seq_snapshot keeps (the
                     earliest is replaced first); <= 0: 2. Each is the size
                     of the recurrent state (about 78 MB for Qwen3-Next-80B). */
} moe_seq_params;

void moe_seq_params_defaults(moe_seq_params *p);
/* Bytes of KV cache that moe_seq_new(m, p) allocates, recurrent state of
 * linear-attention layers included (p may be NULL: the
 * defaults); -1 with a message when p->kv_bits is not supported.
 * moe_model_kv_bytes(m, n_ctx) is this with n_ctx and the other defaults. */
int64_t moe_seq_kv_bytes(const moe_model *m, const moe_seq_params *p);

/* A new empty sequence on model `m` (which must outlive it). The KV cache is
 * allocated here, once: for a sliding-window model it holds at most
 * window + n_batch positions per layer whatever n_ctx is. */
moe_status moe_seq_new(moe_model *m, const moe_seq_params *p, moe_seq **out);
void moe_seq_free(moe_seq *s);

/* Appends `n` tokens to the sequence, running them through the model in
 * batches of n_batch. If `logits` is not NULL it receives float32 logits:
 * with all != 0 every appended position, [n x vocab] row-major; else only the
 * last position, [vocab]. The last position's logits are also kept in the
 * sequence for moe_generate_next. On failure the sequence is left at the
 * position it had before the call; on a model with linear-attention layers
 * (whose state cannot be rewound) at the last snapshot at or before that
 * position, or empty. */
moe_status moe_seq_eval(moe_seq *s, const int32_t *tokens, size_t n, float *logits, int all);

/* Number of tokens in the sequence so far, a sampled token not yet run included. */
int64_t moe_seq_pos(const moe_seq *s);
/* The tokens in the sequence so far ([*n], owned by the sequence, valid until
 * the next call on it); a sampled token not yet run is not included. */
const int32_t *moe_seq_tokens(const moe_seq *s, size_t *n);
/* Drops the tokens after the first `pos`, keeping the cache of those before,
 * so a conversation can continue from a shared prefix without reprocessing
 * it. MOE_ERANGE when a sliding window has already overwritten what the
 * shorter sequence needs, or, on a model with linear-attention layers
 * (qwen3_next), when pos is neither 0, the current position, nor a position
 * moe_seq_snapshot saved (then go to moe_seq_restore_point(s, pos) and
 * evaluate the rest again). Snapshots past pos are dropped. */
moe_status moe_seq_truncate(moe_seq *s, int64_t pos);
/* The largest position <= pos that moe_seq_truncate accepts now (0 when
 * none but the start): pos itself on attention-only models (within a
 * sliding window's reach), the nearest snapshot on hybrid ones. */
int64_t moe_seq_restore_point(const moe_seq *s, int64_t pos);
/* Saves the recurrent state of a model with linear-attention layers at the
 * current position (its tokens run; a pending sampled token is not in it),
 * so moe_seq_truncate can come back here, with the last position's logits
 * when the sequence has them: call it at turn boundaries. Keeps
 * moe_seq_params.n_snapshots of them, replacing the earliest. No-op (MOE_OK)
 * on attention-only models, whose KV cache can always be cut back.
 * MOE_ENOMEM when the copy cannot be allocated (nothing changes). */
moe_status moe_seq_snapshot(moe_seq *s);
/* Forgets everything: position 0, empty cache, no snapshots. */
void moe_seq_reset(moe_seq *s);
/* Whether the sequence holds the logits of its last position, so that
 * moe_generate_next can sample without evaluating a token: after
 * moe_seq_eval, and after moe_seq_truncate back to a snapshot taken with
 * them (or to the current position). A caller whose new prompt is exactly
 * the cached tokens evaluates nothing when this is 1, else steps back one
 * token (moe_seq_restore_point) to get fresh logits. */
int moe_seq_has_logits(const moe_seq *s);

/* -------------------------------------------------------------- sampler -- */

typedef struct moe_sampler moe_sampler;

typedef struct moe_sampler_params {
    float temperature;    /* 0: greedy (argmax); default 0.8 */
    int top_k;            /* 0: off; default 40 */
    float top_p;          /* 1: off; default 0.95 */
    float min_p;          /* 0: off; default 0.05 */
    float repeat_penalty;   /* 1: off; applied to tokens seen in the last repeat_last_n */
    int repeat_last_n;      /* default 64; -1: the whole history */
    uint64_t seed;        /* same seed, same choices */
} moe_sampler_params;

void moe_sampler_params_defaults(moe_sampler_params *p);
moe_status moe_sampler_new(const moe_sampler_params *p, moe_sampler **out);
void moe_sampler_free(moe_sampler *s);

/* Picks a token from `logits` [vocab] (which the call may modify) given the
 * tokens so far `history` [n_history] (for the repetition penalty; may be NULL
 * when n_history is 0). Order as Hugging Face applies it: repetition penalty,
 * temperature, top-k, top-p, min-p; then a draw from the sampler's RNG. */
int32_t moe_sampler_sample(moe_sampler *s, float *logits, int vocab,
                           const int32_t *history, size_t n_history);

/* ----------------------------------------------------------- generation -- */

/* The generation iterator: samples the next token from the sequence's last
 * logits, appends it to the sequence (running the model on it lazily, at the
 * next call) and returns it in *token. Call moe_seq_eval with the prompt
 * first. Returns MOE_ERANGE when the context is full. Stop conditions (EOS,
 * a token budget) are the caller's. */
moe_status moe_generate_next(moe_seq *s, moe_sampler *smp, int32_t *token);

/* Batched decoding: runs the pending token of each of seqs[0..n) (the one
 * moe_generate_next sampled and has not yet run) through the model in one
 * forward pass, so the weights are read once for all n: the matmuls run on
 * the n stacked tokens, attention per sequence on its own cache. The next
 * moe_generate_next on each then samples at once. The sequences must be
 * distinct, on one model, each with a pending token; n <= seqs[0]'s n_batch
 * (whose working buffers the batch uses). The first call with a larger n
 * allocates [n x vocab] logits once in seqs[0]. Each sequence ends as after
 * its own evaluation of that token, up to float rounding: the matmul kernels
 * may sum a batch in another order than one token. MOE_ERANGE when a
 * sequence's context is full, MOE_EINVAL on bad arguments; on failure
 * nothing was run. */
moe_status moe_seq_eval_pending(moe_seq *const *seqs, size_t n);

/* Timing of the work a sequence did so far (seconds, tokens). */
typedef struct moe_seq_stats {
    double prompt_seconds;  int64_t prompt_tokens;  /* tokens given to moe_seq_eval */
    double decode_seconds;  int64_t decode_tokens;  /* tokens moe_generate_next fed back */
} moe_seq_stats;
void moe_seq_get_stats(const moe_seq *s, moe_seq_stats *out);

/* ------------------------------------------------------------ tokenizer -- */

/* A model's tokenizer, as Hugging Face `tokenizers` runs it from
 * tokenizer.json (+ tokenizer_config.json for BOS/EOS and the chat template).
 * Thread-safe once loaded. */
typedef struct moe_tokenizer moe_tokenizer;

/* path: a model directory (tokenizer.json, and tokenizer_config.json if
 * present) or a tokenizer.json file. */
moe_status moe_tokenizer_load(const char *path, moe_tokenizer **out);
void moe_tokenizer_free(moe_tokenizer *t);
int moe_tokenizer_vocab_size(const moe_tokenizer *t);
int32_t moe_tokenizer_bos(const moe_tokenizer *t); /* -1 when none */
int32_t moe_tokenizer_eos(const moe_tokenizer *t); /* -1 when none */

/* text[len] -> *ids[*n] (free with moe_free). add_special: BOS/EOS as the
 * model's post-processor adds them (encode(add_special_tokens=True)). */
moe_status moe_tokenize(const moe_tokenizer *t, const char *text, size_t len, int add_special, int32_t **ids, size_t *n);
/* ids -> *text (NUL-terminated, free with moe_free); skip_special drops
 * special tokens as decode(skip_special_tokens=True) does. */
moe_status moe_detokenize(const moe_tokenizer *t, const int32_t *ids, size_t n, int skip_special, char **text);
/* Frees what moe_tokenize, moe_detokenize and moe_chat_render return. */
void moe_free(void *p);

/* Streaming detokenizer: push ids one by one; each call returns the text that
 * is now final (whole UTF-8 characters only; valid until the next call); the
 * concatenation equals moe_detokenize of all ids. */
typedef struct moe_detok moe_detok;
moe_status moe_detok_new(const moe_tokenizer *t, int skip_special, moe_detok **out);
void moe_detok_free(moe_detok *d);
const char *moe_detok_push(moe_detok *d, int32_t id, size_t *len);
const char *moe_detok_flush(moe_detok *d, size_t *len);
void moe_detok_reset(moe_detok *d);

/* Renders the model's chat template (tokenizer_config.json) as transformers'
 * apply_chat_template(tokenize=False) does. messages_json: a JSON array of
 * {"role", "content", ...}; tools_json: a JSON array or NULL. *out: free with
 * moe_free. MOE_EUNSUPPORTED when the model has no chat template. */
moe_status moe_chat_render(const moe_tokenizer *t, const char *messages_json, const char *tools_json,
                           int add_generation_prompt, char **out);

/* ----------------------------------------------------------- stop text -- */

/* Stop strings over streamed text: feed each decoded piece; what may still
 * turn out to be the start of a stop string is held back until the next
 * piece decides it, so a stop string may span tokens. Emitted text never ends
 * inside a UTF-8 character. */
typedef struct moe_stop moe_stop;

/* stops[n]: non-empty NUL-terminated strings (copied). n may be 0. */
moe_status moe_stop_new(const char *const *stops, size_t n, moe_stop **out);
void moe_stop_free(moe_stop *s);
/* Feeds text[len]; returns the text that can be shown now (*emit_len bytes,
 * NUL-terminated, valid until the next call). *stopped becomes 1 once a stop
 * string has appeared: the text before it is emitted, it and everything
 * after are dropped, and later feeds emit nothing. */
const char *moe_stop_feed(moe_stop *s, const char *text, size_t len, size_t *emit_len, int *stopped);
/* At the end of generation: the held-back text (nothing after a stop). */
const char *moe_stop_flush(moe_stop *s, size_t *emit_len);
void moe_stop_reset(moe_stop *s);

/* ------------------------------------------------------- expert store -- */

/* A MoE model's experts rewritten into one pack file, one contiguous 4 KiB-
 * aligned record per expert (gate, up and down weights), so that offloading
 * reads an expert with one read past the page cache. The pack lives in the
 * model's cache directory, <root>/<model dir's name>-<hash of its path>/
 * experts.pack, and names the model it was built from (config.json and each
 * safetensors file's name, size and modification time): a pack of a changed
 * model is stale and rebuilt. */
typedef struct moe_pack_params {
    const char *cache_dir; /* root of the cache directories; NULL: $MOE_CACHE_DIR,
                              else $XDG_CACHE_HOME/moe, else ~/.cache/moe */
    int force;             /* rebuild even when a valid pack exists */
    int check;             /* read every record back and verify its checksum; without
                              force the existing pack only (nothing is built: a missing
                              or invalid pack is the error) */
    int n_threads;         /* threads reading records back for check; <= 0: 1 */
    /* called as the pack is written (bytes done, total); may be NULL */
    void (*progress)(void *ctx, uint64_t done, uint64_t total);
    void *progress_ctx;
} moe_pack_params;

/* What moe_pack did. */
typedef struct moe_pack_result {
    char path[4200];      /* the pack file */
    int built;            /* 1: written by this call; 0: an existing valid pack */
    uint64_t bytes;       /* the file's size */
    int64_t records;      /* experts in it: moe_layers x experts */
    int moe_layers, experts;
    int direct;           /* 1: it is read with O_DIRECT (past the page cache) */
    char why[256];        /* when built: why ("no expert pack yet", or what was wrong with the old one) */
} moe_pack_result;

void moe_pack_params_defaults(moe_pack_params *p);
/* Builds the expert pack of the model in model_dir unless a valid one is
 * there already (or with p->check, verifies it), creating the cache
 * directory with its parents. `p` may be NULL (defaults); *out is filled on
 * success and, as far as known, on failure (path). Failures: MOE_EINVAL (a
 * model without MoE layers, no cache directory), MOE_EIO (cannot create or
 * write; not enough disk space: the message says how much is needed),
 * MOE_EFORMAT (check: a missing, stale, truncated or corrupt pack, or the
 * first record whose checksum fails, by layer and expert), and the model's
 * own load errors. A failed build leaves any previous pack as it was. */
moe_status moe_pack(const char *model_dir, const moe_pack_params *p, moe_pack_result *out);

/* ------------------------------------------------------ expert profiles -- */

/* A profile (docs/PROFILE.md) says, per MoE layer, how often the router chose
 * each expert over a calibration text: a JSON file that `moe profile` writes
 * and offloading reads to pin each layer's hottest experts in its cache.
 *
 * Writes the routing counts m has now (moe_model_expert_counts: reset them,
 * then run the text) as a profile at `path`, through path.tmp renamed into
 * place. tokens: the token positions run since the reset (each MoE layer's
 * counts must sum to tokens x n_experts_per_tok); text_name: what the text
 * was (a file name, recorded as is; may be NULL). MOE_EINVAL when m has no
 * MoE layer or its counts do not add up to tokens (not reset, or another
 * forward pass ran on m), MOE_EIO when the file cannot be written. Call it
 * when no forward pass is running on m. */
moe_status moe_profile_write(const moe_model *m, const char *path, int64_t tokens, const char *text_name);

/* ---------------------------------------------------------- synthetic -- */

typedef struct moe_synth_params {
    const char *like;   /* "mistral-7b", "mixtral-8x7b", "qwen3-30b-a3b", ... (moe_synth_shapes) */
    int n_layers;       /* 0: as the real model */
    const char *dtype;  /* "bf16" (default), "f16" or "f32" */
    int bits;           /* 0 (default): float weights in the hub layout; 2, 3, 4, 5, 6 or 8:
                           the mlx-community quantized layout (as moe_quantize writes),
                           random values, so the files are as large as a real one's */
    int group_size;     /* with bits: 32, 64 (default when 0) or 128 */
    uint64_t seed;
    double skew;        /* MoE shapes: routing skew s in 0..4, default 1 (0
                           when the struct is zeroed). The expert of
                           popularity rank r in a layer is chosen for a share
                           of the tokens ~ 1/r^s (Zipf; at most 90% of them),
                           each layer ranking its experts in its own order;
                           0: every expert equally often. Carried by the
                           embedding and router weights: the files are as
                           large, the forward pass the same */
    /* called as bytes are written; may be NULL */
    void (*progress)(void *ctx, uint64_t done, uint64_t total);
    void *progress_ctx;
} moe_synth_params;

void moe_synth_params_defaults(moe_synth_params *p);
/* The names `like` accepts, NULL-terminated. */
const char *const *moe_synth_shapes(void);
/* Writes config.json and model.safetensors of a model with `like`'s shapes
 * and random weights (hub layout, experts one by one; with bits, the
 * quantized mlx-community layout, split into 5 GiB shards when larger) into
 * out_dir, which is created if missing. For benchmarks: the weights mean
 * nothing. */
moe_status moe_synth(const moe_synth_params *p, const char *out_dir);

/* ----------------------------------------------------------- quantize -- */

typedef struct moe_quantize_params {
    int bits;          /* 2, 3, 4, 5, 6 or 8; default 4 */
    int group_size;    /* values per scale and bias: 32, 64 (default) or 128 */
    int force;         /* replace a model already in the output directory */
    /* called as bytes are written (done, total over all files); may be NULL */
    void (*progress)(void *ctx, uint64_t done, uint64_t total);
    void *progress_ctx;
} moe_quantize_params;

void moe_quantize_params_defaults(moe_quantize_params *p);
/* Reads the float model in in_dir (hub layout: F32/F16/BF16, experts one by
 * one or transformers-5 fused) and writes it into out_dir as mlx-lm's
 * `convert -q` does: MLX affine quantization, bit for bit; experts stacked as
 * switch_mlp; config.json with "quantization" and "quantization_config"; the
 * directory's other files (tokenizer, generation config, ...) copied. A
 * torch_dtype in config.json is the dtype written (as mlx-lm casts to it).
 * Streams: the input is mapped, the output written in chunks, so a model
 * larger than memory converts. out_dir is created if missing; one that
 * already holds a model is refused unless p->force. Failures: MOE_EINVAL (bad
 * bits / group size, out_dir is in_dir or holds a model), MOE_EFORMAT (not a
 * float model, already quantized, missing / unexpected tensors, wrong
 * shapes), MOE_EUNSUPPORTED (unknown family), MOE_EIO (cannot read, write or
 * not enough disk space); on failure no partial model is left in out_dir. */
moe_status moe_quantize(const char *in_dir, const char *out_dir, const moe_quantize_params *p);

#ifdef __cplusplus
}
#endif
#endif
