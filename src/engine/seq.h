/* seq.h — a sequence: one conversation's caches, position and working
 * buffers. Everything the forward pass writes lives here (the model is
 * read-only), allocated once in moe_seq_new. The caches, the recurrent
 * state and the working buffers marked (be) are the backend's memory (be_alloc:
 * device memory on a GPU); the rest is host memory. */
#ifndef MOE_ENGINE_SEQ_H
#define MOE_ENGINE_SEQ_H

#include "../model/model.h"

/* A layer's cache. Attention layers: keys and values, float32 or quantized
 * (kv_cache in backend/backend.h), cap slots with position p in slot p % cap.
 * Gated DeltaNet layers (cap 0): the conv's last inputs and the delta rule's
 * state, both views into the sequence's one recurrent-state block `rec`. The
 * sequence owns every array. */
typedef struct layer_cache {
    kv_cache kv;
    float *conv;              /* [(K-1) x conv_dim] the last K-1 conv inputs, oldest first */
    float *ssm;               /* [nv x dk x dv] the delta rule's state per value head */
} layer_cache;

/* The recurrent state of every DeltaNet layer at one position (a copy of rec),
 * so that the sequence can go back there: DeltaNet layers cannot be cut back
 * the way a KV cache can. */
typedef struct seq_snap {
    int64_t pos;
    float *rec;               /* (be) [rec_floats] */
    float *logits;            /* [V] the last position's logits, when has_logits */
    int has_logits;
} seq_snap;

struct moe_seq {
    moe_model *m;
    int n_ctx, n_batch;
    int kv_bits;              /* 32, 8 or 4: the caches' storage */
    int64_t pos;              /* tokens in the caches */
    layer_cache *cache;       /* [n_layers] */
    int32_t *history;         /* [n_ctx] tokens so far */
    float *rec;               /* (be) [rec_floats] every DeltaNet layer's conv and delta state, NULL without */
    size_t rec_floats;
    seq_snap *snaps;          /* [max_snaps], n_snaps in use (hybrid models) */
    int n_snaps, max_snaps;

    /* working buffers, [n_batch x width], (be) unless marked (host) */
    float *x, *h;             /* [nb x H] residual stream, normed input */
    float *q, *att;           /* [nb x n_heads*hd] */
    float *qg, *gate;         /* gated attention: [nb x n_heads*2*hd] q_proj's output; [nb x n_heads*hd] its gates */
    /* gated DeltaNet, kd = nk*dk, vd = nv*dv, cd = 2*kd + vd */
    float *lin_in;            /* [nb x (2*kd + 2*vd)] in_proj_qkvz's output */
    float *lin_ba;            /* [nb x 2*nv] in_proj_ba's output */
    float *lin_mix, *lin_conv; /* [nb x cd] q|k|v before and after the conv */
    float *lin_z, *lin_out;   /* [nb x vd] output gate; the delta rule's output */
    float *lin_g, *lin_beta;  /* [nb x nv] log decay and beta per token and value head */
    float *lin_scratch;       /* [threads x be_delta_scratch] */
    float *k, *v;             /* [nb x n_kv*hd] */
    float *ga;                /* [nb x max intermediate] silu(gate) * up */
    float *moe_acc, *xe, *ye; /* [nb x H] expert sum, gathered inputs, expert outputs */
    float *xg, *yg, *gmid;    /* backend_groups: [nb*top_k x H] every choice's input, output sorted by
                                 expert; [nb*top_k x moe_inter] their SwiGLU products; else NULL */
    const wtensor **grp_w;    /* (host) [3 x E] backend_groups: the batch's experts' gate, up, down weights */
    float *router;            /* [nb x E] router logits */
    float *router_h;          /* (host) [nb x E] the router logits -> probabilities (router itself on a host backend) */
    int *sel;                 /* (host) [nb x top_k] chosen experts */
    float *selw;              /* (host) [nb x top_k] their weights */
    float *usew;              /* (host) [nb x top_k] the weights be_moe_combine applies (renormalised after skips) */
    unsigned char *use;       /* (host) [nb x top_k] the choice ran (not skipped) */
    float *usew_be;           /* [nb x top_k] usew and use uploaded for be_moe_combine */
    unsigned char *use_be;
    int32_t *sel_be;          /* [nb x top_k] the experts be_route chose (decode on a backend that routes) */
    float *selw_be;           /* [nb x top_k] their weights */
    float *ew;                /* [nb] shared-expert gate logits */
    float *yk;                /* [nb x top_k x H] each choice's expert output */
    float *moe_mid;           /* [(top_k + 1) x moe_mid_ld] one token's experts' silu(gate) * up, the shared one's last (decode) */
    int64_t moe_mid_ld;       /* max(moe_intermediate, shared_expert_intermediate) */
    /* host: */
    int *need;                /* [E] the batch's distinct experts (also prefetch guesses) */
    int *eidx;                /* [E] expert -> index in need, -1 */
    int64_t *grp_off;         /* [E + 1] need[i]'s choices at grp_tk[grp_off[i]..grp_off[i+1]) */
    int *grp_cur;             /* [E] cursor while grouping; votes while prefetching */
    int64_t *grp_tk;          /* [nb x top_k] choices t*K + k grouped by expert */
    unsigned char *skipped;   /* [E] need[i] dropped by the skip policy */
    unsigned char *dropped;   /* [nb x top_k] choice dropped */
    float *att_scratch;       /* [threads x (max cap + hd)] */
    int64_t *positions;       /* (host) [nb] each row's position, then uploaded: */
    int64_t *pos_be;          /* [nb] the positions the operations read */
    int32_t *tok_be;          /* [nb] the token ids the embedding reads */
    void *graph;              /* the recorded decode step (be_graph_begin), NULL before one */
    float *logits;            /* (host) [V] the last position's logits */
    float *lg;                /* [nb x V] the lm_head's output where the backend's memory is not the host's, else NULL */
    float *batch_logits;      /* [batch_rows x V] moe_seq_eval_pending's, when this sequence leads a batch */
    int32_t *batch_tokens;    /* [batch_rows] */
    int64_t batch_rows;
    int has_logits;
    int32_t pending;          /* sampled but not yet run through the model */
    int has_pending;
    moe_seq_stats stats;
};

#endif
