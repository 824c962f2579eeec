#!/usr/bin/env python3
"""Writes the fuzzers' seed corpora (fuzz/corpus/{safetensors,config}).
Re-run after changing it; the files are committed so running it is optional."""
import json, os, struct

here = os.path.dirname(os.path.abspath(__file__))
st_dir = os.path.join(here, "corpus", "safetensors")
cfg_dir = os.path.join(here, "corpus", "config")
os.makedirs(st_dir, exist_ok=True)
os.makedirs(cfg_dir, exist_ok=True)

SIZES = {"F32": 4, "F16": 2, "BF16": 2, "F64": 8, "I8": 1, "U8": 1, "I16": 2, "U16": 2, "I32": 4,
         "U32": 4, "I64": 8, "U64": 8, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}

def st_image(tensors, metadata=None, pad=True, raw_header=None, extra=b""):
    """tensors: [(name, dtype, shape)] laid out back to back."""
    if raw_header is not None:
        h = raw_header.encode()
        return struct.pack("<Q", len(h)) + h + extra
    hdr, off, data = {}, 0, b""
    if metadata is not None:
        hdr["__metadata__"] = metadata
    for name, dt, shape in tensors:
        n = SIZES[dt]
        for s in shape:
            n *= s
        hdr[name] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + n]}
        data += bytes((off + i) & 0xFF for i in range(n))
        off += n
    h = json.dumps(hdr, separators=(",", ":")).encode()
    if pad:
        h += b" " * (-len(h) % 8)
    return struct.pack("<Q", len(h)) + h + data + extra

st = {
    "two_tensors.safetensors": st_image([("a", "BF16", [4]), ("b", "F32", [2, 3])], {"format": "pt"}),
    "layer.safetensors": st_image([("model.layers.0.mlp.gate_proj.weight", "F16", [2, 4]),
                                   ("model.layers.0.mlp.up_proj.weight", "F16", [2, 4]),
                                   ("model.norm.weight", "F32", [4]),
                                   ("model.embed_tokens.weight", "BF16", [3, 2])]),
    "all_dtypes.safetensors": st_image([("t_" + d.lower(), d, [2]) for d in SIZES]),
    "scalar_and_empty.safetensors": st_image([("s", "F64", []), ("e", "F32", [0, 3]), ("z", "I8", [3, 0])]),
    "eight_dims.safetensors": st_image([("d", "U8", [1, 2, 1, 2, 1, 1, 2, 1])]),
    "empty_header.safetensors": st_image([], raw_header="{}"),
    "metadata_only.safetensors": st_image([], {"format": "pt", "k": "v"}),
    "trailing_data.safetensors": st_image([("a", "I32", [2])], extra=b"\0\1\2\3"),
    "unsorted_offsets.safetensors": st_image([], raw_header=
        '{"b":{"dtype":"U8","shape":[2],"data_offsets":[0,2]},"a":{"dtype":"U8","shape":[3],"data_offsets":[2,5]}}',
        extra=b"abcde"),
    # refused: overlap, reversed offsets, offsets past the end, size mismatch, too many dims
    "overlap.safetensors": st_image([], raw_header=
        '{"a":{"dtype":"U8","shape":[4],"data_offsets":[0,4]},"b":{"dtype":"U8","shape":[4],"data_offsets":[2,6]}}',
        extra=b"abcdef"),
    "bad_offsets.safetensors": st_image([], raw_header=
        '{"a":{"dtype":"F32","shape":[0],"data_offsets":[4,0]},"b":{"dtype":"F32","shape":[9],"data_offsets":[0,36]}}',
        extra=b"12345678"),
    "nine_dims.safetensors": st_image([], raw_header=
        '{"a":{"dtype":"U8","shape":[1,1,1,1,1,1,1,1,1],"data_offsets":[0,1]}}', extra=b"x"),
    "huge_shape.safetensors": st_image([], raw_header=
        '{"a":{"dtype":"F64","shape":[4294967296,4294967296],"data_offsets":[0,0]}}'),
    "truncated.safetensors": struct.pack("<Q", 200) + b'{"a":{"dtype":"F32"',
    "short.safetensors": b"\x10\0\0",
}
for name, b in st.items():
    with open(os.path.join(st_dir, name), "wb") as f:
        f.write(b)

base = {"hidden_act": "silu", "hidden_size": 64, "intermediate_size": 128, "max_position_embeddings": 256,
        "num_attention_heads": 4, "num_hidden_layers": 3, "num_key_value_heads": 2, "vocab_size": 256,
        "bos_token_id": 1, "eos_token_id": 2, "rms_norm_eps": 1e-5, "tie_word_embeddings": False}
moe = {"num_experts_per_tok": 2, "norm_topk_prob": True}
cfgs = {
    "mistral.json": {**base, "model_type": "mistral", "dtype": "bfloat16", "head_dim": 16, "sliding_window": 7,
                     "rope_theta": 1e6},
    "mistral_rope_parameters.json": {**base, "model_type": "mistral", "head_dim": None, "sliding_window": None,
                                     "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"},
                                     "eos_token_id": [2, 3]},
    "mixtral.json": {**base, **moe, "model_type": "mixtral", "num_local_experts": 8, "intermediate_size": 40,
                     "sliding_window": 9, "torch_dtype": "float16", "rope_scaling": None, "rope_theta": 5e5},
    "qwen2_moe.json": {**base, **moe, "model_type": "qwen2_moe", "num_experts": 8, "moe_intermediate_size": 32,
                       "shared_expert_intermediate_size": 64, "decoder_sparse_step": 1, "mlp_only_layers": [1],
                       "layer_types": ["full_attention", "sliding_attention", "full_attention"],
                       "sliding_window": 16, "use_sliding_window": True, "max_window_layers": 1, "qkv_bias": True},
    "qwen2_moe_window_layers.json": {**base, **moe, "model_type": "qwen2_moe", "num_experts": 4,
                                     "moe_intermediate_size": 32, "decoder_sparse_step": 2, "use_sliding_window": True,
                                     "sliding_window": 8, "max_window_layers": 2, "mlp_only_layers": [0, 2]},
    "qwen3_moe.json": {**base, **moe, "model_type": "qwen3_moe", "num_experts": 8, "moe_intermediate_size": 32,
                       "head_dim": 32, "attention_bias": False, "rope_scaling": {"type": "default"},
                       "eos_token_id": [2, 5, 7]},
    "olmoe.json": {**base, **moe, "model_type": "olmoe", "num_experts": 8, "intermediate_size": 32,
                   "clip_qkv": 8.0, "attention_bias": True, "norm_topk_prob": False,
                   "rope_parameters": {"rope_theta": 10000.0, "rope_type": "default"}},
}
for name, c in cfgs.items():
    with open(os.path.join(cfg_dir, name), "w") as f:
        json.dump(c, f, separators=(",", ":"))
# refused: unsupported RoPE, layer_types of the wrong length, not an object
for name, text in {"yarn.json": '{"model_type":"mistral","hidden_size":64,"num_hidden_layers":2,'
                                 '"num_attention_heads":4,"vocab_size":8,"intermediate_size":8,'
                                 '"rope_scaling":{"rope_type":"yarn","factor":4}}',
                   "bad_layer_types.json": '{"model_type":"qwen3_moe","hidden_size":64,"num_hidden_layers":2,'
                                           '"num_attention_heads":4,"vocab_size":8,"num_experts":2,'
                                           '"layer_types":["full_attention"]}',
                   "array.json": "[1,2,3]"}.items():
    with open(os.path.join(cfg_dir, name), "w") as f:
        f.write(text)
