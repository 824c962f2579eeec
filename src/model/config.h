/* config.h — config.json -> the architecture description the forward pass
 * reads. A model family is one entry of a table (config.c) plus the switches
 * below; there is no per-family forward pass.
 */
#ifndef MOE_MODEL_CONFIG_H
#define MOE_MODEL_CONFIG_H

#include "moe.h"

typedef enum qk_norm_kind {
    QK_NORM_NONE,
    QK_NORM_HEAD, /* RMSNorm over each head's head_dim (Qwen3) */
    QK_NORM_FULL, /* RMSNorm over the whole q / k projection (OLMoE) */
} qk_norm_kind;

/* What distinguishes one family from another. */
typedef struct family {
    const char *model_type;
    int qkv_bias;            /* default for q/k/v projection bias */
    int o_bias_follows_qkv;  /* attention_bias adds bias to o_proj as well */
    qk_norm_kind qk_norm;
    int is_moe;
    int always_renorm;       /* top-k weights always renormalised (Mixtral) */
    int shared_expert;       /* shared expert with a sigmoid gate (Qwen2-MoE) */
    float default_eps;
    const char *moe_block;   /* "block_sparse_moe" or "mlp" in hub tensor names */
    const char *expert_names[3]; /* gate, up, down tensor names within one expert */
    /* Qwen3-Next: */
    int hybrid;              /* gated DeltaNet layers between full-attention ones (layer_types /
                                full_attention_interval) */
    int attn_gate;           /* q_proj yields query and gate per head; the output is scaled by sigmoid(gate) */
    int centred_norms;       /* the hub stores RMSNorm weights zero-centred (applied as 1 + w) */
    int default_head_dim;    /* head_dim when config.json has none; 0: hidden_size / heads */
    float default_rotary;    /* partial_rotary_factor when config.json has none; 0: 1 */
} family;

/* A per-module entry of config.json's "quantization": the module at `path`
 * (e.g. "model.layers.0.mlp.gate") stored with its own bits and group size,
 * or (bits 0) not quantized at all. */
typedef struct quant_override {
    char *path;
    int bits, group;
} quant_override;

typedef struct model_config {
    moe_config pub;          /* what moe_model_config() shows */
    const family *fam;
    int qkv_bias, o_bias;
    int norm_topk_prob;
    float clip_qkv;          /* 0: no clipping */
    unsigned char *layer_moe;  /* [n_layers] 1 when the layer's FFN is a MoE block */
    int *layer_window;         /* [n_layers] sliding window of the layer, 0 for full attention */
    unsigned char *layer_linear; /* [n_layers] 1 when the layer's mixer is gated DeltaNet, not attention */
    /* gated DeltaNet (fam->hybrid): key / value heads and head dims, conv kernel width */
    int lin_nk, lin_nv, lin_dk, lin_dv, lin_conv;
    int rot_dim;               /* dims of each head RoPE rotates (head_dim unless partial_rotary_factor) */
    char model_type[32];
    char dtype[16];
    /* MLX affine quantization from config.json "quantization" (or an MLX-style
     * "quantization_config"): defaults for modules that have `.scales`; 0 when absent */
    int quant_bits, quant_group;
    quant_override *quant_over; /* [n_quant_over] */
    int n_quant_over;
} model_config;

/* The quantization config.json gives the module at `path`: its entry if it
 * has one, else the defaults. *bits 0: not quantized (no quantization, or
 * the module's entry is false). */
void config_module_quant(const model_config *c, const char *path, int *bits, int *group);

/* The family of a model_type, NULL when unknown. */
const family *family_find(const char *model_type);

/* Parses `json` (the text of `path`, named in messages) into c. On failure c
 * holds nothing to free. */
moe_status config_parse(model_config *c, const char *json, const char *path);
void config_free(model_config *c);
/* Reads generation_config.json's eos_token_id(s), if the file exists. */
moe_status config_read_generation(model_config *c, const char *path);

#endif
