/* model.h — the loaded model: its configuration, its weights as views into
 * the mapped safetensors files (or, on a GPU, copies placed in its memory at
 * load: the pointers below then address device memory), and the backend that runs it. Shared
 * read-only by every sequence; forward passes on one model are serialised by
 * `lock` because the backend's worker pool runs one job at a time. */
#ifndef MOE_MODEL_MODEL_H
#define MOE_MODEL_MODEL_H

#include <pthread.h>

#include "../backend/backend.h"
#include "../format/safetensors.h"
#include "config.h"

typedef struct expert {
    wtensor gate, up; /* [I x H] */
    wtensor down;     /* [H x I] */
} expert;

typedef struct layer {
    float *attn_norm, *ffn_norm;   /* [H] (as applied: 1 + w where the hub stores them zero-centred) */
    wtensor wq;                    /* [n_heads*hd x H]; with an output gate [n_heads*2*hd x H]: per head
                                      hd query rows then hd gate rows */
    wtensor wk, wv;                /* [n_kv*hd x H] */
    wtensor wo;                    /* [H x n_heads*hd] */
    float *bq, *bk, *bv, *bo;      /* biases or NULL */
    float *q_norm, *k_norm;        /* [hd] (per head) or [n_heads*hd] / [n_kv*hd] (full), or NULL */
    int window;                    /* sliding window, 0 = full attention */
    /* gated DeltaNet instead of attention (is_linear; Qwen3-Next). kd = nk*dk, vd = nv*dv,
     * conv_dim = 2*kd + vd */
    int is_linear;
    wtensor qkvz;                  /* [2*kd + 2*vd x H]: per key head q(dk) k(dk) v(nv/nk*dv) z(nv/nk*dv) */
    wtensor ba;                    /* [2*nv x H]: per key head b(nv/nk) a(nv/nk) */
    float *conv_w;                 /* [conv_dim x K] depthwise causal conv over q|k|v */
    float *neg_a;                  /* [nv] -exp(A_log): the decay rate */
    float *dt_bias;                /* [nv] */
    float *lin_norm;               /* [dv] gated RMSNorm weight (applied as is) */
    wtensor out_proj;              /* [H x vd] */
    int is_moe;
    expert mlp;                    /* dense FFN when !is_moe: [intermediate x H] */
    wtensor router;                /* [E x H] */
    expert *experts;               /* [E] */
    expert shared;                 /* shared expert (rows = shared_expert_intermediate_size) */
    wtensor shared_gate;           /* [1 x H] */
} layer;

struct moe_model {
    model_config cfg;
    st_file **shards;              /* [n_shards] */
    int n_shards;
    wtensor embed;                 /* [V x H] */
    wtensor lm_head;               /* [V x H] (the embedding when tied) */
    float *final_norm;             /* [H] */
    layer *layers;                 /* [n_layers] */
    float *inv_freq;               /* [rot_dim/2] RoPE frequencies */
    const float *inv_freq_be;      /* the same in the backend's memory (inv_freq itself on the CPU) */
    int64_t *route_counts;         /* [n_layers x E] times each expert was chosen (forward.c counts) */
    int64_t *route_counts_be;      /* the same in backend memory, counted by be_route (backends that route), else NULL */
    void **owned;                  /* float32 copies of small vectors, freed with the model */
    int n_owned, cap_owned;
    backend *be;
    /* expert offloading (experts/offload.c), all NULL / 0 without: */
    struct xstore *xs;             /* the expert store on disk */
    struct xcache *xc;             /* the per-layer expert cache the forward pass reads experts from */
    int prefetch, warm;
    int delta_chunk;               /* tokens per chunk of the DeltaNet prompt form (64; MOE_DELTA_CHUNK, 0: token by token) */
    moe_offload_info off;
    /* weights copied into anonymous memory at load (wcopy.c), NULL / 0 when mapped: */
    void *wcopy_map;               /* [wcopy_map_bytes] the mapping (munmap'ed with the model) */
    size_t wcopy_map_bytes;
    int64_t wcopy_bytes;           /* bytes of weights copied there */
    pthread_mutex_t lock;
    char dir[4096];
};

/* Calls fn(m, w, ctx) on every weight the forward pass reads from the
 * model's files (or from where placement put them): the embedding, the head
 * unless tied (then set to the embedding again afterwards), every layer's
 * matrices, and the experts unless offloaded (m->xc). Stops at fn's first
 * error and returns it. */
typedef moe_status (*model_weight_fn)(moe_model *m, wtensor *w, void *ctx);
moe_status model_each_weight(moe_model *m, model_weight_fn fn, void *ctx);

/* Bytes the model needs in memory to run without offloading when its
 * weights take weight_bytes: those, a 4096-token KV cache and working room
 * (experts/offload.c; what decides automatic offloading and copying). */
int64_t model_memory_need(const moe_model *m, int64_t weight_bytes);

/* On a backend that computes in host memory: copies the weights
 * model_each_weight visits into one anonymous mapping and repoints them
 * there, or leaves them mapped, as p->load says (wcopy.c). After the weights
 * are bound and offloading is set up. On failure the weights still point
 * into the files' mappings. */
moe_status wcopy_load(moe_model *m, const moe_load_params *p);
/* Unmaps the copy (at model free; harmless without one). */
void wcopy_free(moe_model *m);

/* Offloading at load (after the weights are bound) and at free: decides,
 * opens or builds the store, sizes and fills the cache (experts/offload.c). */
moe_status offload_setup(moe_model *m, const moe_load_params *p);
void offload_teardown(moe_model *m);

/* The forward pass: runs tokens[n] at positions pos0.. through the model,
 * reading and extending the caches of `s`. logits: [n x V] when all, else
 * [V] of the last token; NULL to skip the head. Defined in forward.c. */
struct moe_seq;
moe_status model_forward(struct moe_seq *s, const int32_t *tokens, int64_t n, float *logits, int all);
/* One token for each of n distinct sequences (tokens[t] appended to seqs[t],
 * whose positions advance by one) in one pass: the matmuls on the n stacked
 * tokens in seqs[0]'s buffers (n <= its n_batch), attention per sequence on
 * its own cache. logits: [n x vocab]. */
moe_status model_forward_batch(struct moe_seq *const *seqs, const int32_t *tokens, int64_t n, float *logits);

#endif
