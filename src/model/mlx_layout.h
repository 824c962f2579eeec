/* mlx_layout.h — a model's tensors in the mlx-community layout, as mlx-lm's
 * `convert -q` writes them, and the writer of that layout's files.
 *
 * Experts are stacked per projection as `<block>.switch_mlp.{gate,up,down}_proj`
 * [E, rows, cols] (block: "block_sparse_moe" for Mixtral, "mlp" otherwise).
 * Every Linear / Embedding / stacked weight whose input width (last
 * dimension) divides by the group size is quantized (mlx_quant.h) into
 * `<module>.weight` U32 [..., rows, cols*bits/32] and `<module>.scales`,
 * `<module>.biases` [..., rows, cols/group] in the float dtype; the others
 * stay float. Norms and Linear biases are copied. Qwen3-MoE's routers are
 * quantized at 8 bits, group 64, with their own config entry (mlx-lm's
 * qwen3_moe quant_predicate); so are Qwen3-Next's routers and shared-expert
 * gates. Qwen3-Next also gets what mlx-lm's sanitize does to its hub
 * checkpoints: the zero-centred norms (the layers' two, q/k norms, the final
 * one) stored shifted by +1, the depthwise conv weights [C, 1, K] stored in
 * MLX's Conv1d shape [C, K, 1] (the same bytes), `mtp.*` tensors dropped.
 *
 * Used by moe quantize (model/quantize.c, which fills the tensors from a hub
 * model) and moe synth --bits (model/synth.c, which fills them at random):
 * the names, shapes, quantization choices, config entries and file
 * splitting live here once.
 */
#ifndef MOE_MODEL_MLX_LAYOUT_H
#define MOE_MODEL_MLX_LAYOUT_H

#include <jansson.h>
#include <stdint.h>

#include "../format/safetensors.h"
#include "config.h"

/* What an entry is in the model, so a writer can find its source without
 * parsing names: the role within layer `layer` (or outside the layers). */
typedef enum ml_role {
    ML_EMBED, ML_HEAD, ML_FINAL_NORM,                 /* outside the layers */
    ML_ATTN_NORM, ML_FFN_NORM, ML_Q_NORM, ML_K_NORM,  /* norm vectors */
    ML_Q, ML_K, ML_V, ML_O,                           /* attention projections */
    ML_QB, ML_KB, ML_VB, ML_OB,                       /* their biases */
    ML_MLP_GATE, ML_MLP_UP, ML_MLP_DOWN,              /* dense FFN */
    ML_ROUTER, ML_SW_GATE, ML_SW_UP, ML_SW_DOWN,      /* MoE block: router, stacked experts */
    ML_SH_GATE, ML_SH_UP, ML_SH_DOWN, ML_SH_ROUTER,   /* shared expert and its sigmoid gate */
    ML_LIN_QKVZ, ML_LIN_BA, ML_LIN_OUT,               /* gated DeltaNet (linear_attn): projections, */
    ML_LIN_CONV, ML_LIN_A_LOG, ML_LIN_DT_BIAS, ML_LIN_NORM, /* conv weight, decay, gated norm */
} ml_role;

typedef enum ml_kind {
    ML_MATRIX, /* a Linear or Embedding weight [rows x cols], or stacked experts [E x rows x cols] */
    ML_VECTOR, /* a norm weight or a Linear bias [cols], copied as it is (or shifted, see `shift`) */
    ML_CONV,   /* a depthwise conv weight [rows (channels) x cols (kernel)], written [rows, cols, 1], never quantized */
} ml_kind;

typedef struct ml_entry {
    char name[128];       /* the module ("model.layers.0.mlp.switch_mlp.up_proj"); else the tensor's name */
    ml_kind kind;
    ml_role role;
    int layer;            /* -1 outside the layers */
    int64_t E, rows, cols; /* E = 0 except for stacked experts; ML_VECTOR: rows = 1 */
    int bits, group;      /* 0, 0: stays float */
    int own_params;       /* quantized with parameters of its own: a config entry names it */
    int shift;            /* ML_VECTOR: a norm the hub stores zero-centred, written as w + 1 (mlx-lm's sanitize) */
} ml_entry;

typedef struct ml_layout {
    ml_entry *e;          /* [n] in file order */
    size_t n;
    int bits, group;      /* the model's default quantization */
} ml_layout;

/* The entries of the model `c` describes, quantized at bits/group (checked
 * with mlxq_valid); with_head: write lm_head (not when the embedding is the
 * head). On failure *l holds nothing to free. */
moe_status ml_layout_build(const model_config *c, int bits, int group, int with_head, ml_layout *l);
void ml_layout_free(ml_layout *l);

/* config.json's "quantization" object: {"group_size", "bits", "mode":
 * "affine", and "<module>": {"group_size", "bits"} for every entry with
 * parameters of its own}. New reference; NULL when out of memory. */
json_t *ml_layout_quant_json(const ml_layout *l);

/* What an output tensor holds of its entry. */
enum { ML_VALUES, ML_SCALES, ML_BIASES };

/* The output tensors of a layout: for each entry its weight (U32 packed or
 * float) and, when quantized, its scales and biases. fill and ctx are left
 * NULL for the caller to set. */
typedef struct ml_tensors {
    st_out_tensor *t;     /* [n] */
    size_t *entry;        /* [n] index of the entry in the layout */
    int *what;            /* [n] ML_VALUES, ML_SCALES or ML_BIASES */
    char **names;         /* [n] owned */
    size_t n;
} ml_tensors;

/* dtype[i]: the float dtype entry i is stored in (its values when float,
 * its scales and biases when quantized). */
moe_status ml_tensors_build(const ml_layout *l, const st_dtype *dtype, ml_tensors *out);
void ml_tensors_free(ml_tensors *t);
/* Bytes of out tensor t. */
uint64_t ml_tensor_bytes(const st_out_tensor *t);

/* Shards larger than this are split, as mlx-lm's save_model (5 GiB). */
#define ML_SHARD_BYTES (5ull << 30)

/* Writes t[n] into dir: model.safetensors when they fit in one shard of at
 * most max_shard bytes, else model-0000i-of-0000N.safetensors and
 * model.safetensors.index.json ({"metadata": {"total_size",
 * "total_parameters"}, "weight_map"}). Streams through the fill callbacks;
 * progress(ctx, done, total) counts bytes over all shards (may be NULL).
 * On failure the files it created are removed. */
moe_status ml_write(const char *dir, const st_out_tensor *t, size_t n, uint64_t max_shard, int64_t n_params,
                    void (*progress)(void *ctx, uint64_t done, uint64_t total), void *pctx);
/* Parameters of the unquantized model (for the index's total_parameters). */
int64_t ml_layout_params(const ml_layout *l);

#endif
