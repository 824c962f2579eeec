/* test_config.c — config.json quirks of real checkpoints, and the settings
 * moe refuses. */
#include "../src/model/config.h"
#include "test.h"

static moe_status parse(model_config *c, const char *json) { return config_parse(c, json, "config.json"); }

#define BASE "\"vocab_size\":100,\"hidden_size\":64,\"num_hidden_layers\":4,\"num_attention_heads\":4,\"intermediate_size\":32"

int main(void) {
    model_config c;
    /* old mistral: top-level rope_theta, no head_dim, integer window */
    CHECK(parse(&c, "{\"model_type\":\"mistral\"," BASE ",\"num_key_value_heads\":2,\"rope_theta\":1000000.0,"
                    "\"sliding_window\":4096,\"eos_token_id\":2}") == MOE_OK, "%s", moe_errmsg());
    CHECK(c.pub.head_dim == 16 && c.pub.n_kv_heads == 2 && c.pub.rope_theta == 1e6f, "derived head_dim, theta");
    CHECK(c.layer_window[0] == 4096 && c.layer_window[3] == 4096 && c.pub.sliding_window == 4096, "window on all layers");
    CHECK(c.pub.n_eos == 1 && c.pub.eos_token_ids[0] == 2, "single eos");
    CHECK(c.pub.n_experts == 0 && c.pub.n_moe_layers == 0, "dense");
    config_free(&c);

    /* transformers 5: rope_parameters, head_dim null, window null, eos list */
    CHECK(parse(&c, "{\"model_type\":\"mistral\"," BASE ",\"head_dim\":null,\"sliding_window\":null,"
                    "\"rope_parameters\":{\"rope_type\":\"default\",\"rope_theta\":50000.0},\"eos_token_id\":[2,7]}") == MOE_OK,
          "%s", moe_errmsg());
    CHECK(c.pub.head_dim == 16 && c.pub.rope_theta == 50000.0f && c.layer_window[0] == 0, "v5 form");
    CHECK(c.pub.n_eos == 2 && c.pub.eos_token_ids[1] == 7, "eos list");
    config_free(&c);

    /* window 0 means none */
    CHECK(parse(&c, "{\"model_type\":\"mixtral\"," BASE ",\"sliding_window\":0,\"num_local_experts\":8}") == MOE_OK, "%s", moe_errmsg());
    CHECK(c.layer_window[0] == 0 && c.pub.n_experts == 8 && c.pub.n_experts_per_tok == 2 && c.norm_topk_prob == 1 &&
              c.pub.moe_intermediate_size == 32 && c.pub.n_moe_layers == 4,
          "mixtral defaults");
    config_free(&c);

    /* qwen2_moe: num_experts, explicit head_dim, sparse step, mlp_only_layers, window unused */
    CHECK(parse(&c, "{\"model_type\":\"qwen2_moe\"," BASE ",\"head_dim\":24,\"num_experts\":16,\"num_experts_per_tok\":4,"
                    "\"moe_intermediate_size\":8,\"shared_expert_intermediate_size\":40,\"decoder_sparse_step\":2,"
                    "\"mlp_only_layers\":[3],\"sliding_window\":128,\"use_sliding_window\":false}") == MOE_OK,
          "%s", moe_errmsg());
    CHECK(c.pub.head_dim == 24 && c.qkv_bias == 1 && c.o_bias == 0, "qwen2 bias and head_dim");
    CHECK(!c.layer_moe[0] && c.layer_moe[1] && !c.layer_moe[2] && !c.layer_moe[3] && c.pub.n_moe_layers == 1,
          "sparse step 2 and mlp_only_layers");
    CHECK(c.layer_window[1] == 0 && c.norm_topk_prob == 0 && c.pub.shared_expert_intermediate_size == 40, "qwen2 switches");
    config_free(&c);

    /* qwen with sliding from max_window_layers; layer_types wins when given */
    CHECK(parse(&c, "{\"model_type\":\"qwen3_moe\"," BASE ",\"num_experts\":4,\"sliding_window\":8,\"use_sliding_window\":true,"
                    "\"max_window_layers\":2,\"norm_topk_prob\":true,\"attention_bias\":true}") == MOE_OK, "%s", moe_errmsg());
    CHECK(!c.layer_window[1] && c.layer_window[2] == 8 && c.norm_topk_prob && c.qkv_bias && c.o_bias, "qwen3 windows, bias");
    config_free(&c);
    CHECK(parse(&c, "{\"model_type\":\"olmoe\"," BASE ",\"num_experts\":4,\"sliding_window\":8,"
                    "\"layer_types\":[\"full_attention\",\"sliding_attention\",\"full_attention\",\"sliding_attention\"]}") == MOE_OK,
          "%s", moe_errmsg());
    CHECK(!c.layer_window[0] && c.layer_window[1] == 8 && c.fam->qk_norm == QK_NORM_FULL, "layer_types");
    config_free(&c);

    /* qwen3_next: every 4th layer full attention, the rest gated DeltaNet; partial RoPE */
#define NEXT "{\"model_type\":\"qwen3_next\"," BASE ",\"head_dim\":32,\"num_experts\":8,\"partial_rotary_factor\":0.25," \
             "\"linear_num_key_heads\":2,\"linear_num_value_heads\":4,\"linear_key_head_dim\":16,\"linear_value_head_dim\":24"
    CHECK(parse(&c, NEXT ",\"mlp_only_layers\":[1]}") == MOE_OK, "%s", moe_errmsg());
    CHECK(c.layer_linear[0] && c.layer_linear[2] && !c.layer_linear[3] && c.pub.n_linear_layers == 3, "full_attention_interval 4");
    CHECK(c.lin_nk == 2 && c.lin_nv == 4 && c.lin_dk == 16 && c.lin_dv == 24 && c.lin_conv == 4 && c.rot_dim == 8,
          "linear shapes, rotary dims");
    CHECK(c.fam->attn_gate && c.fam->centred_norms && c.fam->shared_expert && !c.layer_moe[1] && c.layer_moe[2], "qwen3_next switches");
    config_free(&c);
    CHECK(parse(&c, NEXT ",\"layer_types\":[\"linear_attention\",\"full_attention\",\"linear_attention\",\"full_attention\"]}") == MOE_OK,
          "%s", moe_errmsg());
    CHECK(c.layer_linear[0] && !c.layer_linear[1] && c.layer_linear[2] && !c.layer_linear[3] && c.pub.n_linear_layers == 2,
          "layer_types wins over the interval");
    config_free(&c);
    CHECK(parse(&c, NEXT ",\"full_attention_interval\":2}") == MOE_OK && c.pub.n_linear_layers == 2 && !c.layer_linear[1],
          "full_attention_interval 2: %s", moe_errmsg());
    config_free(&c);
    /* Qwen3NextConfig's defaults: head_dim 256, partial_rotary_factor 0.25 (or inside rope_parameters) */
    CHECK(parse(&c, "{\"model_type\":\"qwen3_next\"," BASE ",\"num_experts\":8,\"linear_num_key_heads\":2,"
                    "\"linear_num_value_heads\":4,\"linear_key_head_dim\":16,\"linear_value_head_dim\":24}") == MOE_OK &&
              c.pub.head_dim == 256 && c.rot_dim == 64,
          "qwen3_next defaults: %s", moe_errmsg());
    config_free(&c);
    CHECK(parse(&c, NEXT ",\"partial_rotary_factor\":null,\"rope_parameters\":{\"rope_type\":\"default\",\"rope_theta\":1e4,"
                    "\"partial_rotary_factor\":0.5}}") == MOE_OK && c.rot_dim == 16,
          "partial_rotary_factor in rope_parameters: %s", moe_errmsg());
    config_free(&c);

    /* refusals */
    struct { const char *json; moe_status st; const char *msg; } bad[] = {
        {"{\"model_type\":\"llama4\"," BASE "}", MOE_EUNSUPPORTED, "model_type \"llama4\" is not supported"},
        {"{" BASE "}", MOE_EFORMAT, "no \"model_type\""},
        {"{\"model_type\":\"mistral\",\"hidden_size\":64}", MOE_EFORMAT, "is missing"},
        {"{\"model_type\":\"mistral\"," BASE ",\"rope_scaling\":{\"type\":\"yarn\",\"factor\":4}}", MOE_EUNSUPPORTED, "yarn"},
        {"{\"model_type\":\"mistral\"," BASE ",\"hidden_act\":\"gelu\"}", MOE_EUNSUPPORTED, "gelu"},
        {"{\"model_type\":\"mistral\"," BASE ",\"num_key_value_heads\":3}", MOE_EFORMAT, "multiple"},
        {"{\"model_type\":\"mistral\"," BASE ",\"hidden_size\":\"64\"}", MOE_EFORMAT, "hidden_size"},
        {"{\"model_type\":\"mixtral\"," BASE "}", MOE_EFORMAT, "num_local_experts"},
        {"{\"model_type\":\"mixtral\"," BASE ",\"num_local_experts\":2,\"num_experts_per_tok\":3}", MOE_EFORMAT, "num_experts_per_tok"},
        {"{\"model_type\":\"mistral\"," BASE ",\"layer_types\":[\"full_attention\"]}", MOE_EFORMAT, "layer_types"},
        {"{\"model_type\":\"mistral\"," BASE ",\"head_dim\":15}", MOE_EUNSUPPORTED, "odd head_dim"},
        {"{\"model_type\":\"mistral\"," BASE ",\"vocab_size\":-5}", MOE_EFORMAT, "vocab_size"},
        {"{\"model_type\":\"mistral\"," BASE ",\"num_hidden_layers\":2.5}", MOE_EFORMAT, "num_hidden_layers"},
        {"[1]", MOE_EFORMAT, "not a JSON object"},
        {"{\"model_type\":\"mistral\"," BASE ",\"layer_types\":[\"linear_attention\",\"full_attention\",\"full_attention\",\"full_attention\"]}",
         MOE_EUNSUPPORTED, "layer_types[0] = linear_attention"},
        {"{\"model_type\":\"qwen3_next\"," BASE ",\"num_experts\":8}", MOE_EFORMAT, "linear_num_key_heads\" is missing"},
        {NEXT ",\"linear_num_value_heads\":3}", MOE_EFORMAT, "not a multiple of linear_num_key_heads"},
        {NEXT ",\"partial_rotary_factor\":0.1}", MOE_EUNSUPPORTED, "rotated dims"},
        {"{\"model_type\":", MOE_EFORMAT, "not valid JSON"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        moe_status st = parse(&c, bad[i].json);
        CHECK(st == bad[i].st && strstr(moe_errmsg(), bad[i].msg) && strstr(moe_errmsg(), "config.json"),
              "case %zu: got %s \"%s\", want %s \"%s\"", i, moe_status_name(st), moe_errmsg(), moe_status_name(bad[i].st),
              bad[i].msg);
        if (st == MOE_OK) config_free(&c);
    }
    TEST_DONE();
}
