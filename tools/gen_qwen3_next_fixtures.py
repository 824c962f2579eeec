#!/usr/bin/env python3
"""Generate the Qwen3-Next (`qwen3_next`) golden fixtures of `moe`.

Qwen3-Next mixes two token mixers: gated DeltaNet (linear attention with a
recurrent state, "linear_attention" layers) and gated full attention with
partial RoPE ("full_attention" layers); its FFN is a MoE with a shared
expert. Three tiny random models, each in the file format of
tools/gen_fixtures.py (model/, logits_<i>.f32, golden.json, tensors.txt):

  qwen3next           the hub layout, float32, as save_pretrained writes it
  qwen3next-q4-g64    the mlx-community layout quantized 4-bit group 64, as
                      mlx-lm's sanitize + quantize write it (input/: the bf16
                      hub model it comes from), config.json in the hub's
                      transformers-4 style (top-level rope_theta,
                      partial_rotary_factor, full_attention_interval), in
                      input/ too: mlx-lm reads no other, and keeps every key
  qwen3next-mlx-bf16  the mlx-community layout unquantized (bf16), with
                      layer_types [linear, full, linear, full] that disagree
                      with full_attention_interval 4 (transformers follows
                      layer_types)

References are transformers' float32 eager forward on CPU (for the mlx
layouts: on the same weights converted back to the hub layout). Each case is
checked against `ref_forward`, an independent pure-torch forward that reads
only config.json and the safetensors files of model/ and runs the delta rule
token by token. <out>/report.json holds what was found out about
transformers' Qwen3-Next (the "semantics" list and the probes).

Needs torch, transformers (5.x), safetensors, numpy; imports gen_fixtures.py
and gen_quant_fixtures.py from its own folder. Nothing is downloaded.
    python3 tools/gen_qwen3_next_fixtures.py --out /tmp/golden-next
"""

import argparse
import copy
import inspect
import json
import math
import os
import re
import shutil
import struct
import sys
import traceback

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_fixtures as gf  # noqa: E402  (references, greedy, seeds, file helpers)
import gen_quant_fixtures as gq  # noqa: E402  (MLX affine quantization, mlx layout)

SEQ_LENS = [1, 11, 29, 200]   # 200 > 64: transformers' chunked prefill crosses chunks
MAX_SEEDS = 8
REF_TOL = 1e-4                # independent reference vs transformers, float32
NOISE_GOOD = 5e-5             # wanted max |float32 - float64| of the reference's logits
STD_CONV = 0.5                # depthwise conv taps: output about as large as input
LIN, FULL = "linear_attention", "full_attention"

BASE = dict(
    vocab_size=384, hidden_size=64, intermediate_size=96, num_hidden_layers=4,
    full_attention_interval=4, mlp_only_layers=[1], decoder_sparse_step=1,
    num_experts=16, num_experts_per_tok=4, moe_intermediate_size=32,
    shared_expert_intermediate_size=48, norm_topk_prob=True,
    linear_num_key_heads=2, linear_num_value_heads=4, linear_key_head_dim=16,
    linear_value_head_dim=24, linear_conv_kernel_dim=4,
    num_attention_heads=4, num_key_value_heads=2, head_dim=32,
    partial_rotary_factor=0.25, rope_theta=1000000.0, attention_bias=False,
    rms_norm_eps=1e-6, tie_word_embeddings=False,
)

CASES = [
    dict(name="qwen3next", layout="hub", dtype="float32", seed=9101, token_seed=9201,
         dest="tests/golden",
         covers="Qwen3-Next, hub layout as save_pretrained writes it, float32: layers 0-2 gated "
                "DeltaNet (2 key heads x 16, 4 value heads x 24, conv 4), layer 3 gated attention "
                "(4 heads / 2 kv, head_dim 32, partial RoPE on 8 dims, theta 1e6), layer 1 dense "
                "MLP (mlp_only_layers [1]), 16 experts top-4 renormalised + shared expert 48 with "
                "sigmoid gate; zero-centred RMSNorm weights (1 + w)"),
    dict(name="qwen3next-q4-g64", layout="mlx", dtype="bfloat16", bits=4, group=64,
         config_style="hub4", seed=9301, token_seed=9401, dest="tests/golden-quant",
         covers="Qwen3-Next in the mlx-community layout, 4-bit group 64 (mlx-lm sanitize + "
                "quantize): switch_mlp stacked experts, the five zero-centred norms stored +1, "
                "conv1d [C, K, 1], mlp.gate and mlp.shared_expert_gate at 8 bits group 64 "
                "(per-module config entries); out_proj (in 96), dense down_proj (in 96), expert "
                "down_proj (in 32) and shared down_proj (in 48) stay bf16; config.json in the "
                "transformers-4 style of the hub (top-level rope_theta, partial_rotary_factor, "
                "full_attention_interval, no layer_types)"),
    dict(name="qwen3next-mlx-bf16", layout="mlx", dtype="bfloat16", seed=9501, token_seed=9601,
         layer_types=[LIN, FULL, LIN, FULL], dest="tests/golden",
         covers="Qwen3-Next in the mlx-community layout unquantized (bf16: switch_mlp stacked "
                "experts, norms stored +1, conv1d [C, K, 1]); layer_types [linear, full, linear, "
                "full] given in config.json beside full_attention_interval 4, which would say "
                "[linear, linear, linear, full]: layer_types wins"),
]

# the five RMSNorms that transformers applies as (1 + w) and mlx-lm stores as w + 1
ZERO_CENTRED = (".input_layernorm.weight", ".post_attention_layernorm.weight",
                "model.norm.weight", ".q_norm.weight", ".k_norm.weight")

SEMANTICS = [
    "layer kind: config.layer_types[i] ('linear_attention' / 'full_attention'); when absent, "
    "Qwen3NextConfig derives it from full_attention_interval (default 4): layer i is full "
    "attention iff (i + 1) % interval == 0. transformers 5 writes layer_types and not "
    "full_attention_interval (see config_as_written). mlx-lm reads only full_attention_interval.",
    "MoE layer iff i not in mlp_only_layers and num_experts > 0 and (i + 1) % decoder_sparse_step "
    "== 0; otherwise a SwiGLU MLP of intermediate_size.",
    "RMSNorm (input_layernorm, post_attention_layernorm, model.norm, q_norm, k_norm): "
    "x * rsqrt(mean(x^2) + eps) * (1 + w) in float32; stored zero-centred in the hub layout, "
    "stored as w + 1 by mlx-lm's sanitize (the mlx layout), applied there as a plain RMSNorm.",
    "linear_attn.in_proj_qkvz [nk*(2*dk + 2*(nv/nk)*dv), H]: rows grouped per key head h: "
    "[q_h (dk), k_h (dk), v (nv/nk value heads x dv), z (nv/nk x dv)]; value head j belongs to key "
    "head j // (nv/nk) (see probe_in_proj_layout).",
    "linear_attn.in_proj_ba [nk*2*(nv/nk), H]: per key head [b (nv/nk), a (nv/nk)].",
    "conv: channels [q of all key heads (nk*dk) | k (nk*dk) | v of all value heads (nv*dv)] "
    "(conv_dim = 2*nk*dk + nv*dv), depthwise causal conv of kernel K with zero history, no bias, "
    "then SiLU; out[t,c] = sum_j w[c,j] * x[t-K+1+j, c], so w[c, K-1] weighs the current token. "
    "z, b, a do not go through the conv. Hub conv1d.weight [C, 1, K]; mlx [C, K, 1].",
    "q, k: l2-normalised per head, x * rsqrt(sum(x^2) + 1e-6) (eps 1e-6 inside the root, not the "
    "config's rms_norm_eps), then q *= 1/sqrt(dk). mlx-lm instead computes dk^-1 * rms_norm(q, "
    "1e-6) and dk^-1/2 * rms_norm(k, 1e-6): the same up to eps (its eps is effectively dk*1e-6).",
    "beta = sigmoid(b); g = -exp(A_log) * softplus(a + dt_bias) (float32); decay = exp(g).",
    "delta rule per value head, state S [dk x dv] starting at zero: S = S*exp(g_t); "
    "kv = S^T k_t; delta = (v_t - kv)*beta_t; S = S + k_t delta^T; o_t = S^T q_t "
    "(q_t, k_t of the key head j // (nv/nk)).",
    "prefill (more than one token, or no cache) runs torch_chunk_gated_delta_rule with chunk 64 "
    "(sequences padded to a multiple of 64); decode of one token with a cache runs the recurrent "
    "form. Both equal the token-by-token rule (reference_check, generate_matches_nocache).",
    "gated RMSNorm (linear_attn.norm.weight [dv], NOT zero-centred): per value head "
    "rms_norm(o, eps=rms_norm_eps) * w * silu(z); then out_proj [H, nv*dv].",
    "full attention: q_proj [nh*2*hd, H]; its output per head is [query (hd), gate (hd)] "
    "(interleaved per head, not all queries then all gates). q_norm/k_norm are per-head "
    "zero-centred RMSNorms over hd, before RoPE. Attention output [T, nh*hd] * sigmoid(gate) "
    "before o_proj. Scale 1/sqrt(hd).",
    "partial RoPE: rot = int(hd * partial_rotary_factor) dims; inv_freq = theta^(-2i/rot) for "
    "i < rot/2; rotate-half over the first rot dims only (x1 = [:rot/2], x2 = [rot/2:rot]); "
    "dims rot..hd pass through. partial_rotary_factor is read from rope_parameters or the top "
    "level (the hub's config.json has only the latter); Qwen3NextConfig defaults it to 0.25.",
    "MoE: softmax over all expert logits (float32), top-k, renormalised when norm_topk_prob; "
    "plus shared_expert (SwiGLU) * sigmoid(shared_expert_gate(x)) with shared_expert_gate "
    "[1, H]; no bias anywhere.",
    "head_dim absent from config.json would mean 256 (the config class default), not "
    "hidden_size / num_attention_heads.",
    "config.json as transformers 5.17 writes it: layer_types (no full_attention_interval), "
    "rope_parameters {rope_type, rope_theta, partial_rotary_factor} and partial_rotary_factor "
    "again at the top level, num_experts (not num_local_experts), head_dim.",
]

# read in mlx-lm's mlx_lm/models/qwen3_next.py, not run: what its files and configs imply
MLX_LM_NOTES = [
    "sanitize() acts only when model.layers.0.mlp.experts.0.up_proj.weight is present (a hub "
    "checkpoint); it then drops mtp.* tensors, stacks the experts of every layer as "
    "mlp.switch_mlp.{gate,up,down}_proj.weight [E, rows, cols], adds 1.0 to the five "
    "zero-centred norms (not to linear_attn.norm) and moves conv1d.weight [C, 1, K] to [C, K, 1]. "
    "So the layout tells whether norms are stored shifted: switch_mlp / conv1d [C, K, 1] = mlx.",
    "sanitize() stacks experts for every layer index, so a hub model with mlp_only_layers "
    "(a dense layer) would fail there (KeyError); the real Qwen3-Next configs have "
    "mlp_only_layers []. qwen3next-q4-g64 is what it would write if it skipped dense layers.",
    "quant_predicate: paths ending in mlp.gate or shared_expert_gate quantize at 8 bits group 64 "
    "(written to config.json quantization per module); everything else at the default; a Linear "
    "whose input width does not divide by the group size stays float (no config entry).",
    "layer kind from full_attention_interval only ((i + 1) % n != 0 is linear); layer_types is "
    "not read, so qwen3next-mlx-bf16 is a transformers-semantics case that mlx-lm would not load.",
    "rope_theta and partial_rotary_factor are required top-level ModelArgs fields.",
    "q/k normalisation: q = dk^-1 * rms_norm(q, eps 1e-6), k = dk^-1/2 * rms_norm(k, eps 1e-6), "
    "equal to transformers' l2norm + 1/sqrt(dk) up to eps.",
]


def log(*a):
    gf.log(*a)


# --------------------------------------------------------------------------
# independent reference: config.json + safetensors only, recurrent delta rule
# --------------------------------------------------------------------------

def st_read(path):
    """{name: tensor} of one .safetensors file: floats as float32, U32 as numpy uint32."""
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    header.pop("__metadata__", None)
    out = {}
    for name, meta in header.items():
        a, b = meta["data_offsets"]
        raw, shape, dt = data[a:b], meta["shape"], meta["dtype"]
        if dt == "U32":
            out[name] = np.frombuffer(raw, "<u4").reshape(shape)
            continue
        if dt == "BF16":   # bf16 is the high half of a float32
            arr = (np.frombuffer(raw, "<u2").astype(np.uint32) << 16).view(np.float32)
        else:
            arr = np.frombuffer(raw, {"F32": "<f4", "F16": "<f2"}[dt]).astype(np.float32)
        out[name] = torch.from_numpy(arr.reshape(shape).copy())
    return out


def unpack(words, bits):
    """uint32 [..., n] -> int64 [..., n*32/bits]: value i at bit i*bits, LSB first."""
    by = np.ascontiguousarray(words).view(np.uint8)
    bitv = np.unpackbits(by, axis=-1, bitorder="little")
    bitv = bitv.reshape(bitv.shape[:-1] + (-1, bits)).astype(np.int64)
    return torch.from_numpy((bitv << np.arange(bits)).sum(-1))


def ref_weights(d, dtype=torch.float32):
    """config and {name: tensor} of model dir d in one canonical form: dequantized,
    norm weights as applied (1 + w for the hub layout), conv1d [C, K]."""
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    raw = {}
    for p in sorted(os.listdir(d)):
        if p.endswith(".safetensors"):
            raw.update(st_read(os.path.join(d, p)))
    qc = cfg.get("quantization") or {}
    W = {}
    for name, t in raw.items():
        if name.endswith((".scales", ".biases")):
            continue
        path = name[:-len(".weight")]
        if name.endswith(".weight") and path + ".scales" in raw:   # MLX affine, float32 math
            p = qc[path] if isinstance(qc.get(path), dict) else qc
            q = unpack(t, p["bits"]).float()
            s, b = raw[path + ".scales"], raw[path + ".biases"]
            assert q.shape[-1] == s.shape[-1] * p["group_size"], name
            t = s.repeat_interleave(p["group_size"], -1) * q + b.repeat_interleave(p["group_size"], -1)
        W[name] = t.to(dtype)
    mlx = any(".switch_mlp." in k for k in W)        # what mlx-lm's sanitize wrote
    for k in W:
        if k.endswith(ZERO_CENTRED) and not mlx:
            W[k] = 1.0 + W[k]
        if k.endswith("conv1d.weight"):
            v = W[k]
            assert (v.shape[-1] == 1) == mlx, "conv1d %s in a %s layout" % (list(v.shape), "mlx" if mlx else "hub")
            W[k] = v[:, :, 0] if mlx else v[:, 0, :]
    return cfg, W


def layer_kinds(cfg):
    if cfg.get("layer_types"):
        return list(cfg["layer_types"])
    n = cfg.get("full_attention_interval", 4)
    return [FULL if (i + 1) % n == 0 else LIN for i in range(cfg["num_hidden_layers"])]


def partial_rotary(cfg):
    rp = cfg.get("rope_parameters") or {}
    for v in (rp.get("partial_rotary_factor"), cfg.get("partial_rotary_factor")):
        if v is not None:
            return float(v)
    return 0.25   # Qwen3NextConfig's default


def swiglu(h, gate, up, down):
    return (F.silu(h @ gate.T) * (h @ up.T)) @ down.T


def ref_deltanet(cfg, W, p, h, reset_at=None):
    nk, nv = cfg["linear_num_key_heads"], cfg["linear_num_value_heads"]
    dk, dv, K = cfg["linear_key_head_dim"], cfg["linear_value_head_dim"], cfg["linear_conv_kernel_dim"]
    r, T = nv // nk, h.shape[0]
    q, k, v, z = (h @ W[p + "in_proj_qkvz.weight"].T).view(T, nk, -1).split([dk, dk, r * dv, r * dv], -1)
    b, a = (h @ W[p + "in_proj_ba.weight"].T).view(T, nk, -1).split([r, r], -1)
    v, z, b, a = v.reshape(T, nv, dv), z.reshape(T, nv, dv), b.reshape(T, nv), a.reshape(T, nv)
    # depthwise causal conv over [q | k | v] channels, zero history, then SiLU
    x = torch.cat([q.reshape(T, -1), k.reshape(T, -1), v.reshape(T, -1)], -1)
    w = W[p + "conv1d.weight"]                                  # [C, K]
    xp = torch.cat([x.new_zeros(K - 1, x.shape[1]), x])
    x = F.silu(sum(xp[j:j + T] * w[:, j] for j in range(K)))
    q, k, v = x.split([nk * dk, nk * dk, nv * dv], -1)
    q, k, v = q.view(T, nk, dk), k.view(T, nk, dk), v.view(T, nv, dv)
    q = q * torch.rsqrt((q * q).sum(-1, keepdim=True) + 1e-6) / math.sqrt(dk)
    k = k * torch.rsqrt((k * k).sum(-1, keepdim=True) + 1e-6)
    q, k = q.repeat_interleave(r, 1), k.repeat_interleave(r, 1)   # value head j reads key head j // r
    beta = torch.sigmoid(b)
    g = -W[p + "A_log"].exp() * F.softplus(a + W[p + "dt_bias"])  # [T, nv]
    S = h.new_zeros(nv, dk, dv)
    o = h.new_zeros(T, nv, dv)
    for t in range(T):
        if t == reset_at:
            S = torch.zeros_like(S)
        S = S * g[t].exp()[:, None, None]
        kv = torch.einsum("hkv,hk->hv", S, k[t])
        delta = (v[t] - kv) * beta[t][:, None]
        S = S + k[t][:, :, None] * delta[:, None, :]
        o[t] = torch.einsum("hkv,hk->hv", S, q[t])
    o = gf.rms(o, W[p + "norm.weight"], cfg["rms_norm_eps"]) * F.silu(z)   # gated RMSNorm
    return o.reshape(T, nv * dv) @ W[p + "out_proj.weight"].T


def ref_attention(cfg, W, p, h):
    nh, nkv, hd = cfg["num_attention_heads"], cfg["num_key_value_heads"], cfg["head_dim"]
    eps, T = cfg["rms_norm_eps"], h.shape[0]
    qg = (h @ W[p + "q_proj.weight"].T).view(T, nh, 2 * hd)
    q, gate = qg[..., :hd], qg[..., hd:].reshape(T, nh * hd)      # per head [query, gate]
    k = (h @ W[p + "k_proj.weight"].T).view(T, nkv, hd)
    v = (h @ W[p + "v_proj.weight"].T).view(T, nkv, hd)
    q, k = gf.rms(q, W[p + "q_norm.weight"], eps), gf.rms(k, W[p + "k_norm.weight"], eps)
    rot = int(hd * partial_rotary(cfg))
    inv = 1.0 / (gf.cfg_rope_theta(cfg) ** (torch.arange(0, rot, 2, dtype=torch.int64).float() / rot))
    ang = torch.arange(T, dtype=torch.float32)[:, None] * inv[None, :]
    cos = torch.cat([ang, ang], -1).cos()[:, None, :].to(h.dtype)
    sin = torch.cat([ang, ang], -1).sin()[:, None, :].to(h.dtype)

    def rope(x):   # rotate-half over the first rot dims; the rest pass through
        xr, x1, x2 = x[..., :rot], x[..., :rot // 2], x[..., rot // 2:rot]
        return torch.cat([xr * cos + torch.cat([-x2, x1], -1) * sin, x[..., rot:]], -1)

    q, k = rope(q), rope(k).repeat_interleave(nh // nkv, 1)
    v = v.repeat_interleave(nh // nkv, 1)
    s = torch.einsum("thd,shd->hts", q, k) / math.sqrt(hd)
    s = s.masked_fill(torch.ones(T, T, dtype=torch.bool).triu(1), float("-inf"))
    o = torch.einsum("hts,shd->thd", torch.softmax(s, -1), v).reshape(T, nh * hd)
    return (o * torch.sigmoid(gate)) @ W[p + "o_proj.weight"].T


def ref_expert(W, p, e):
    if p + "experts.%d.gate_proj.weight" % e in W:
        return [W[p + "experts.%d.%s.weight" % (e, n)] for n in ("gate_proj", "up_proj", "down_proj")]
    return [W[p + "switch_mlp.%s.weight" % n][e] for n in ("gate_proj", "up_proj", "down_proj")]


def ref_mlp(cfg, W, l, h):
    p = "model.layers.%d.mlp." % l
    n_exp = gf.n_experts_of(cfg)
    if l in (cfg.get("mlp_only_layers") or []) or not n_exp or (l + 1) % cfg.get("decoder_sparse_step", 1):
        return swiglu(h, W[p + "gate_proj.weight"], W[p + "up_proj.weight"], W[p + "down_proj.weight"])
    probs = torch.softmax(h @ W[p + "gate.weight"].T, -1)
    vals, idx = torch.topk(probs, cfg["num_experts_per_tok"], -1)
    if cfg.get("norm_topk_prob"):
        vals = vals / vals.sum(-1, keepdim=True)
    out = torch.zeros_like(h)
    for t in range(h.shape[0]):
        for j in range(idx.shape[1]):
            out[t] += vals[t, j] * swiglu(h[t:t + 1], *ref_expert(W, p, int(idx[t, j])))[0]
    sh = swiglu(h, W[p + "shared_expert.gate_proj.weight"], W[p + "shared_expert.up_proj.weight"],
                W[p + "shared_expert.down_proj.weight"])
    return out + torch.sigmoid(h @ W[p + "shared_expert_gate.weight"].T) * sh


def ref_forward(cfg, W, tokens, reset_at=None):
    """logits [T, V] of one token list; reset_at: zero the DeltaNet states at that position
    (a diagnostic: how much the state carried into it matters)."""
    eps = cfg["rms_norm_eps"]
    x = W["model.embed_tokens.weight"][torch.tensor(tokens, dtype=torch.long)]
    for l, kind in enumerate(layer_kinds(cfg)):
        p = "model.layers.%d." % l
        h = gf.rms(x, W[p + "input_layernorm.weight"], eps)
        if kind == LIN:
            x = x + ref_deltanet(cfg, W, p + "linear_attn.", h, reset_at)
        elif kind == FULL:
            x = x + ref_attention(cfg, W, p + "self_attn.", h)
        else:
            raise ValueError("layer type " + kind)
        x = x + ref_mlp(cfg, W, l, gf.rms(x, W[p + "post_attention_layernorm.weight"], eps))
    x = gf.rms(x, W["model.norm.weight"], eps)
    return x @ W.get("lm_head.weight", W["model.embed_tokens.weight"]).T


# --------------------------------------------------------------------------
# layouts: hub <-> mlx-community (mlx-lm's sanitize, restated)
# --------------------------------------------------------------------------

EXPERT = re.compile(r"^(model\.layers\.\d+\.mlp)\.experts\.(\d+)\.(\w+)\.weight$")
SWITCH = re.compile(r"^(model\.layers\.\d+\.mlp)\.switch_mlp\.(\w+)\.weight$")


def mlx_sanitize(sd):
    """hub tensors -> mlx layout: experts stacked as switch_mlp, the zero-centred norms + 1.0
    in their own dtype (as MLX adds a Python float), conv1d [C, 1, K] -> [C, K, 1]."""
    out, stacks = {}, {}
    for k, v in sd.items():
        m = EXPERT.match(k)
        if m:
            stacks.setdefault("%s.switch_mlp.%s.weight" % (m.group(1), m.group(3)), {})[int(m.group(2))] = v
            continue
        if k.endswith(ZERO_CENTRED) and v.ndim == 1:
            v = v + 1.0
        if k.endswith("conv1d.weight") and v.shape[-1] != 1:
            v = v.squeeze(1).unsqueeze(-1)   # (not transpose: a size-1 dim keeps its odd stride)
        out[k] = v.contiguous()
    for k, es in stacks.items():
        out[k] = torch.stack([es[e] for e in range(len(es))])
    return out


def hub_from_mlx(W):
    """mlx-layout float32 tensors -> the hub layout that transformers loads."""
    out = {}
    for k, v in W.items():
        m = SWITCH.match(k)
        if m:
            for e in range(v.shape[0]):
                out["%s.experts.%d.%s.weight" % (m.group(1), e, m.group(2))] = v[e].contiguous()
            continue
        if k.endswith(ZERO_CENTRED):
            v = v - 1.0    # exact: a bf16 value near 1, in float32
        if k.endswith("conv1d.weight"):
            v = v.squeeze(-1).unsqueeze(1)
        out[k] = v.float().contiguous()
    return out


def gate_overrides(sd):
    """mlx-lm's Qwen3-Next quant_predicate: routers and shared-expert gates at 8 bits group 64."""
    out = {}
    for k in sd:
        m = re.match(r"^(model\.layers\.\d+\.mlp\.(?:gate|shared_expert_gate))\.weight$", k)
        if m:
            out[m.group(1)] = {"group_size": 64, "bits": 8}
    return out


def hub4_config(c, written):
    """transformers-5 config.json -> the style of the hub's Qwen3-Next config.json
    (transformers 4.57): top-level rope_theta and partial_rotary_factor, the interval, no layer_types."""
    kinds = written.get("layer_types")
    n = c["full_attention_interval"]
    if kinds and kinds != [FULL if (i + 1) % n == 0 else LIN for i in range(len(kinds))]:
        raise RuntimeError("layer_types %r do not follow the interval %d" % (kinds, n))
    new = {k: v for k, v in written.items() if k not in ("layer_types", "rope_parameters", "dtype")}
    new.update(full_attention_interval=n, rope_theta=c["rope_theta"],
               partial_rotary_factor=c["partial_rotary_factor"], rope_scaling=None,
               torch_dtype="bfloat16")
    return dict(sorted(new.items()))


# --------------------------------------------------------------------------
# transformers side
# --------------------------------------------------------------------------

def build(spec, seed, info):
    import transformers
    kw = dict(gf.COMMON)
    kw.update(spec["config"])
    theta, prf = kw.pop("rope_theta"), kw.pop("partial_rotary_factor")
    rp = {"rope_type": "default", "rope_theta": theta, "partial_rotary_factor": prf}
    try:
        cfg = transformers.Qwen3NextConfig(**kw, rope_parameters=rp)
        info["config_rope_arg"] = "rope_parameters"
    except Exception as e:   # older config API
        info["config_rope_arg"] = "rope_theta + partial_rotary_factor (rope_parameters: %r)" % (e,)
        cfg = transformers.Qwen3NextConfig(**kw, rope_theta=theta, partial_rotary_factor=prf)
    torch.manual_seed(seed)
    model = transformers.Qwen3NextForCausalLM(cfg).eval()
    reinit(model, seed, spec["config"])
    kinds = [LIN if hasattr(lay, "linear_attn") else FULL for lay in model.model.layers]
    if kinds != layer_kinds(spec["config"]):
        raise RuntimeError("built layer kinds %r, config says %r" % (kinds, layer_kinds(spec["config"])))
    rot = int(spec["config"]["head_dim"] * prf)
    inv = model.model.rotary_emb.inv_freq
    want = 1.0 / (theta ** (torch.arange(0, rot, 2, dtype=torch.int64).float() / rot))
    if inv.shape != want.shape or float((inv.float() - want).abs().max()) > 0:
        raise RuntimeError("rotary inv_freq %r, expected %r" % (inv.tolist(), want.tolist()))
    return model


def reinit(model, seed, c):
    """gen_fixtures' weights (linear 0.25, routers 0.5, ...), then Qwen3-Next's own: zero-centred
    norms 0 +- 0.1, gated norm 1 +- 0.1, A = U(1, 16), conv taps STD_CONV, and dt_bias as Mamba2
    / FLA initialise it: softplus^-1(dt), dt log-uniform in [1e-3, 0.1]. The `a` rows of
    in_proj_ba get half the usual size (a has std ~1). So every head keeps a memory of tens of
    tokens, and the state carried across the 64-token chunk boundary matters (see
    state_reset_at_64_max_abs_diff). dt_bias ~ 1 makes heads that forget within a token or two;
    their output is then (q.k) * delta, which crosses zero, and the gated RMSNorm blows up its
    rounding error: float32 logits 3-5x noisier (measured with the reference)."""
    gf.reinit(model, seed, c["num_experts"])
    g = torch.Generator().manual_seed(seed + 17)
    nv = c["linear_num_value_heads"]
    r = nv // c["linear_num_key_heads"]
    with torch.no_grad():
        for name, p in sorted(model.named_parameters(), key=lambda t: gf.natural_key(t[0])):
            if name.endswith("in_proj_ba.weight"):   # per key head [b (r rows), a (r rows)]
                v = p.detach().clone()
                v[torch.arange(v.shape[0]) % (2 * r) >= r] *= 0.5
            elif name.endswith("linear_attn.norm.weight"):
                v = 1.0 + 0.1 * torch.randn(p.shape, generator=g)
            elif name.endswith("norm.weight"):
                v = 0.1 * torch.randn(p.shape, generator=g)
            elif name.endswith("A_log"):
                v = torch.log(1.0 + 15.0 * torch.rand(p.shape, generator=g))
            elif name.endswith("dt_bias"):
                dt = torch.exp(math.log(1e-3) + (math.log(0.1) - math.log(1e-3)) * torch.rand(nv, generator=g))
                v = torch.log(torch.expm1(dt))
            elif name.endswith("conv1d.weight"):
                v = STD_CONV * torch.randn(p.shape, generator=g)
            else:
                continue
            p.copy_(v.to(p.dtype))


def fused_to_hub(sd, c):
    return gf.hub_from_fused(sd, "qwen3_next", c["moe_intermediate_size"], c["hidden_size"], "gate_first")


def write_dir(mdir, tensors, cfg, src_dir=None, meta=None):
    os.makedirs(mdir, exist_ok=True)
    gq.st_write(os.path.join(mdir, "model.safetensors"),
                {k: gq.st_entry(v) if isinstance(v, torch.Tensor) else v for k, v in tensors.items()}, meta)
    with open(os.path.join(mdir, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")
    if src_dir and os.path.exists(os.path.join(src_dir, "generation_config.json")):
        shutil.copy(os.path.join(src_dir, "generation_config.json"), mdir)


def attempt(spec, seed, cdir, seqs, info):
    """Write model/ (and input/ for mlx layouts) for one seed; return transformers' references."""
    shutil.rmtree(cdir, ignore_errors=True)
    mdir = os.path.join(cdir, "model")
    model = build(spec, seed, info)
    c = spec["config"]
    if spec["layout"] == "hub":
        model.save_pretrained(mdir)
        keys = [r[0] for r in gf.model_tensor_table(mdir)]
        info["saved_per_expert"] = any(re.search(r"\.experts\.\d+\.gate_proj\.weight$", k) for k in keys)
        if not info["saved_per_expert"]:   # keep the hub's own per-expert format
            for f in os.listdir(mdir):
                if ".safetensors" in f:
                    os.remove(os.path.join(mdir, f))
            from safetensors.torch import save_file
            save_file(fused_to_hub(model.state_dict(), c), os.path.join(mdir, "model.safetensors"),
                      metadata={"format": "pt"})
            info["saved_per_expert_method"] = "gen_fixtures.hub_from_fused + save_file"
        want = {k: v.detach().clone() for k, v in model.state_dict().items()}
        ref_dir = mdir
    else:
        idir, ref_dir = os.path.join(cdir, "input"), os.path.join(cdir, "deq")
        model.to(torch.bfloat16).save_pretrained(idir)
        with open(os.path.join(idir, "config.json")) as f:
            written = json.load(f)
        mlx = mlx_sanitize(gq.load_dir(idir))
        if spec.get("bits"):
            entries, qcfg, deq = gq.mlx_convert(mlx, written, spec["bits"], spec["group"],
                                               overrides=gate_overrides(mlx))
        else:
            entries, qcfg, deq = {k: gq.st_entry(v) for k, v in mlx.items()}, None, \
                {k: v.float() for k, v in mlx.items()}
        mcfg = hub4_config(c, written) if spec.get("config_style") == "hub4" else dict(written)
        if spec.get("bits"):   # input/ in the style mlx-lm converted, so `moe quantize` keeps it
            with open(os.path.join(idir, "config.json"), "w") as f:
                json.dump(mcfg, f, indent=2)
                f.write("\n")
        if spec.get("layer_types"):
            mcfg["full_attention_interval"] = c["full_attention_interval"]
            mcfg["layer_types"] = spec["layer_types"]
        if qcfg:
            mcfg["quantization"] = qcfg
            mcfg["quantization_config"] = copy.deepcopy(qcfg)
        write_dir(mdir, entries, mcfg, idir, {"format": "mlx"})
        # the reference model: the dequantized / upcast mlx weights back in the hub layout
        rcfg = dict(written)
        rcfg["dtype"] = "float32"
        want = hub_from_mlx(deq)
        write_dir(ref_dir, want, rcfg, idir, {"format": "pt"})
        info["config_written_by_transformers"] = written
    m, li = gf.load_model(ref_dir, info)
    got = m.state_dict() if spec["layout"] == "hub" else fused_to_hub(m.state_dict(), c)
    diff = gf.state_dict_diff(want, got)
    if not gf.same_weights(diff):
        raise RuntimeError("transformers loaded other weights than written: %r (load info %r)" % (diff, li))
    res = gf.compute_refs(m, seqs, spec)
    res.update(load_info=li, model=m, ref_dir=ref_dir)
    res["variation"] = variation(res["logits"][-1])
    res["noise"] = float32_noise(mdir, seqs)
    return res


def float32_noise(mdir, seqs):
    """max |logit| difference of the reference run in float32 and in float64 on the same
    weights: how much rounding alone moves these logits (transformers and the engine alike)."""
    cfg, W32 = ref_weights(mdir)
    _, W64 = ref_weights(mdir, torch.float64)
    return max(float((ref_forward(cfg, W32, s).double() - ref_forward(cfg, W64, s)).abs().max()) for s in seqs)


def variation(lg):
    """Does the longest sequence keep moving? std over positions vs overall, distinct argmaxes."""
    half = lg[lg.shape[0] // 2:]
    return dict(distinct_argmax=int(lg.argmax(-1).unique().numel()),
                std_over_positions=float(lg.std(0).mean()), std_all=float(lg.std()),
                std_over_positions_second_half=float(half.std(0).mean()),
                ok=bool(lg.argmax(-1).unique().numel() >= 20 and half.std(0).mean() >= 0.3 * lg.std()))


def probe_in_proj_layout(m):
    """Feed row numbers through transformers' own splitter: which rows of in_proj_qkvz/ba
    become q, k, v, z, b, a of each head."""
    la = next(mod for name, mod in m.named_modules() if name.endswith("linear_attn"))
    n1, n2 = la.in_proj_qkvz.out_features, la.in_proj_ba.out_features
    parts = la.fix_query_key_value_ordering(torch.arange(n1).float().view(1, 1, n1),
                                            torch.arange(n2).float().view(1, 1, n2))

    def ranges(t):
        rows = t[0, 0].long().reshape(t.shape[2], -1).tolist() if t.ndim == 4 else [[int(x)] for x in t[0, 0]]
        return ["%d..%d" % (r[0], r[-1]) if r == list(range(r[0], r[-1] + 1)) else r for r in rows]

    return {n: ranges(t) for n, t in zip(("q_per_key_head", "k_per_key_head", "v_per_value_head",
                                          "z_per_value_head", "b_per_value_head", "a_per_value_head"), parts)}


def transformers_facts(m):
    """What this transformers version runs for the DeltaNet layers (each item on its own, as
    these internals move between versions)."""
    mod = sys.modules[type(m).__module__]
    la = next(x for n, x in m.named_modules() if n.endswith("linear_attn"))
    out = {"delta_rule_functions": sorted(n for n in dir(mod) if "delta_rule" in n),
           "gated_norm_class": type(la.norm).__name__}
    probes = dict(
        chunk_size_default=lambda: inspect.signature(mod.torch_chunk_gated_delta_rule).parameters["chunk_size"].default,
        l2norm_eps_default=lambda: inspect.signature(mod.l2norm).parameters["eps"].default,
        fast_path_available=lambda: bool(getattr(mod, "is_fast_path_available")),
        forward_uses_qk_l2norm_in_kernel=lambda: "use_qk_l2norm_in_kernel=True" in inspect.getsource(type(la).forward),
        chunk_kernel=lambda: getattr(la, "chunk_gated_delta_rule").__name__)
    for k, f in probes.items():
        try:
            out[k] = f()
        except Exception as e:
            out[k] = repr(e)
    return out


def reload_diff(weights_dir, cfg, seqs, ref_logits):
    """Load weights_dir with another config.json: max |logit diff| to ref_logits, or the error."""
    tmp = weights_dir.rstrip("/") + "_cfg"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        shutil.copytree(weights_dir, tmp)
        c = {k: v for k, v in cfg.items() if k not in ("quantization", "quantization_config")}
        with open(os.path.join(tmp, "config.json"), "w") as f:
            json.dump(c, f)
        m2, li = gf.load_model(tmp)
        kinds = list(getattr(m2.config, "layer_types", None) or [])
        d = max(float((gf.fwd(m2, s) - lg).abs().max()) for s, lg in zip(seqs, ref_logits))
        return dict(max_abs_diff=gf.fin(d), layer_types_loaded=kinds, load_info=li)
    except Exception as e:
        return dict(error=repr(e))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def ref_check(mdir, seqs, res):
    lists = list(seqs) + [seqs[gf.GREEDY_SEQ] + res["greedy"]]
    targets = list(res["logits"]) + [res["greedy_full_logits"]]
    out = {}
    cfg, W = ref_weights(mdir)
    got = [ref_forward(cfg, W, t) for t in lists]
    out["max_abs_diff"] = gf.fin(max(float((g - t).abs().max()) for g, t in zip(got, targets)))
    out["max_abs_diff_per_sequence"] = [gf.fin((g - t).abs().max()) for g, t in zip(got, targets)]
    out["ok"] = isinstance(out["max_abs_diff"], float) and out["max_abs_diff"] < REF_TOL
    cfg, W64 = ref_weights(mdir, torch.float64)   # the same weights, float64 arithmetic
    got64 = [ref_forward(cfg, W64, t) for t in lists]
    out["float64_vs_transformers_max_abs_diff"] = gf.fin(max(float((g.float() - t).abs().max())
                                                             for g, t in zip(got64, targets)))
    out["float64_vs_float32_reference_max_abs_diff"] = gf.fin(max(float((g.float() - t).abs().max())
                                                                  for g, t in zip(got64, got)))
    long = seqs[-1]
    if len(long) > 72:   # zero the DeltaNet state at the chunk boundary: how far does it matter?
        cut = ref_forward(cfg, W64, long, reset_at=64).float()
        d = (cut - got64[len(seqs) - 1].float()).abs().max(-1).values
        out["state_reset_at_64_max_abs_diff"] = dict(
            at_64_71=gf.fin(d[64:72].max()), at_72_95=gf.fin(d[72:96].max()),
            at_96_127=gf.fin(d[96:128].max()), at_128_on=gf.fin(d[128:].max()))
    return out


# --------------------------------------------------------------------------
# a case
# --------------------------------------------------------------------------

def process_case(spec, out_root, report, max_seeds):
    name = spec["name"]
    cdir = os.path.join(out_root, name)
    info = dict(covers=spec["covers"], destination=spec["dest"])
    report["cases"][name] = info
    spec = dict(spec, config=dict(BASE, **({"layer_types": spec["layer_types"]} if spec.get("layer_types") else {})),
                config_class="Qwen3NextConfig", arch="Qwen3NextForCausalLM")
    V = spec["config"]["vocab_size"]
    tg = torch.Generator().manual_seed(spec["token_seed"])
    seqs = [torch.randint(0, V, (n,), generator=tg).tolist() for n in SEQ_LENS]

    best, tried = None, []
    for i in range(max_seeds):
        seed = spec["seed"] + 1000 * i
        res = attempt(spec, seed, cdir, seqs, info)
        score = min(res["min_gap"] / gf.GAP_GOOD, res["router_gap"] / gf.RGAP_GOOD,
                    NOISE_GOOD / max(res["noise"], 1e-12))
        if not res["variation"]["ok"]:
            score = 0.0
        tried.append(dict(seed=seed, min_gap=res["min_gap"], router_gap=gf.fin(res["router_gap"]),
                          float32_noise=res["noise"], variation_ok=res["variation"]["ok"]))
        log("  %s seed %d: greedy gap %.4g, router gap %.4g, float32 noise %.3g, distinct argmax %d" % (
            name, seed, res["min_gap"], res["router_gap"], res["noise"], res["variation"]["distinct_argmax"]))
        if best is None or score > best[0]:
            best = (score, seed)
        if score >= 1.0:
            break
    if seed != best[1]:
        seed = best[1]
        res = attempt(spec, seed, cdir, seqs, info)
    info["seeds_tried"] = tried
    info["seed"] = seed
    if res["min_gap"] <= gf.GAP_MIN or res["router_gap"] <= gf.RGAP_MIN or not res["variation"]["ok"]:
        raise RuntimeError("no seed gave large enough gaps and varied logits: %r" % (tried,))

    mdir = os.path.join(cdir, "model")
    m = res["model"]
    with open(os.path.join(mdir, "config.json")) as f:
        final_cfg = json.load(f)
    info["config_final"] = final_cfg
    info["files"] = sorted(os.listdir(mdir))
    info["load_info"] = res["load_info"]
    info["variation_longest"] = res["variation"]
    info["layer_types_in_transformers"] = list(m.config.layer_types)
    info["generate_matches_nocache"] = res["generate_matches_nocache"]
    if spec["layout"] == "hub":
        from safetensors.torch import load_file
        saved = load_file(os.path.join(mdir, "model.safetensors"))
        info["layout_relation"] = gf.relate_layouts(m.state_dict(), saved)
    for i, lg in enumerate(res["logits"]):
        gf.write_logits(os.path.join(cdir, "logits_%d.f32" % i), lg)

    notes = []
    if spec["layout"] == "mlx":   # what transformers makes of the config.json written to model/
        info["transformers_with_final_config"] = reload_diff(res["ref_dir"], final_cfg, seqs, res["logits"])
        notes.append("references: transformers float32 on the weights of model/ %s, converted back "
                     "to the hub layout (norms - 1, conv1d [C, 1, K], experts split); config.json "
                     "of model/ reloaded in transformers gives max |diff| %s" % (
                         "dequantized (scale*q + bias in float32)" if spec.get("bits") else "upcast from bf16",
                         info["transformers_with_final_config"].get("max_abs_diff",
                                                                    info["transformers_with_final_config"].get("error"))))
    else:
        alt = {k: v for k, v in final_cfg.items() if k != "layer_types"}
        alt["full_attention_interval"] = spec["config"]["full_attention_interval"]
        info["transformers_with_interval_instead_of_layer_types"] = reload_diff(mdir, alt, seqs, res["logits"])
    info["reference_check"] = ref = ref_check(mdir, seqs, res)
    notes.append("independent pure-torch reference (recurrent delta rule, tools/"
                 "gen_qwen3_next_fixtures.py ref_forward) vs these logits: max |diff| %s; float64 "
                 "reference vs these logits: %s" % (ref["max_abs_diff"], ref["float64_vs_transformers_max_abs_diff"]))
    if not ref["ok"]:
        report["failures"].append(name + " (reference check)")

    golden = dict(
        case=name, model_type=final_cfg.get("model_type"), dtype=spec["dtype"], vocab_size=V,
        layer_types=layer_kinds(final_cfg),
        sequences=[dict(tokens=s, logits="logits_%d.f32" % i) for i, s in enumerate(seqs)],
        greedy=dict(prompt=seqs[gf.GREEDY_SEQ], n=gf.N_NEW, tokens=res["greedy"],
                    min_gap=res["min_gap"], step_gaps=[round(g, 6) for g in res["gaps"]]),
        min_router_gap=gf.fin(res["router_gap"]),
        float32_noise=res["noise"],
        transformers_float32_error=ref["float64_vs_transformers_max_abs_diff"],
        logits_std=float(torch.cat([x.flatten() for x in res["logits"]]).std()),
        eos_token_id=final_cfg.get("eos_token_id"), greedy_ignores_eos=True,
        generate_matches_nocache=res["generate_matches_nocache"],
        seed=seed, covers=spec["covers"], notes=notes, destination=spec["dest"],
        transformers_version=__import__("transformers").__version__, torch_version=torch.__version__)
    if spec.get("bits"):
        golden.update(atol=1e-4, quantize=dict(bits=spec["bits"], group_size=spec["group"]),
                      reference="transformers float32 on the dequantized weights (scale*q + bias in float32)")
    gf.dump_json(golden, os.path.join(cdir, "golden.json"))
    info["n_tensors"] = len(gf.write_tensors_txt(mdir, os.path.join(cdir, "tensors.txt")))
    if spec["layout"] == "mlx":
        shutil.rmtree(res["ref_dir"])
        if not spec.get("bits"):   # input/ is kept only where `moe quantize` is to reproduce model/
            shutil.rmtree(os.path.join(cdir, "input"))
    info["golden"] = {k: golden[k] for k in ("greedy", "min_router_gap", "float32_noise", "logits_std",
                                             "layer_types")}
    if "probe_in_proj_layout" not in report:
        try:
            report["probe_in_proj_layout"] = probe_in_proj_layout(m)
        except Exception as e:
            report["probe_in_proj_layout"] = repr(e)
        report["transformers_facts"] = transformers_facts(m)
    log("  %s: seed %d, greedy gap %.4g, router gap %s, generate==nocache %s, ref diff %s (f64 %s), "
        "state reset at 64: %s" % (name, seed, res["min_gap"], golden["min_router_gap"],
                                    res["generate_matches_nocache"], ref["max_abs_diff"],
                                    ref["float64_vs_transformers_max_abs_diff"],
                                    ref.get("state_reset_at_64_max_abs_diff")))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--cases", default="", help="comma-separated subset of case names")
    ap.add_argument("--max-seeds", type=int, default=MAX_SEEDS)
    args = ap.parse_args()

    import transformers
    torch.set_grad_enabled(False)
    torch.set_num_threads(8)
    try:
        transformers.logging.set_verbosity_error()
    except Exception:
        pass
    os.makedirs(args.out, exist_ok=True)
    report = dict(transformers_version=transformers.__version__, torch_version=torch.__version__,
                  python=sys.version.split()[0], base_config=BASE, semantics=SEMANTICS,
                  mlx_lm_notes=MLX_LM_NOTES,
                  cases={}, failures=[])
    log("transformers", transformers.__version__, "torch", torch.__version__)
    wanted = [c for c in args.cases.split(",") if c]
    for spec in CASES:
        if wanted and spec["name"] not in wanted:
            continue
        log("== case", spec["name"])
        try:
            process_case(spec, args.out, report, args.max_seeds)
        except Exception as e:
            report["failures"].append(spec["name"])
            report["cases"].setdefault(spec["name"], {})["error"] = repr(e)
            report["cases"][spec["name"]]["traceback"] = traceback.format_exc()
            log("  FAILED:", repr(e))
            traceback.print_exc()
    report["total_bytes"] = gf.dir_size(args.out)
    report["log"] = gf.LOG
    gf.dump_json(report, os.path.join(args.out, "report.json"))
    log("probe:", json.dumps(report.get("probe_in_proj_layout")))
    log("facts:", json.dumps(report.get("transformers_facts")))
    for n, c in report["cases"].items():
        log(n, json.dumps({k: c.get(k) for k in ("saved_per_expert", "layer_types_in_transformers",
                                                 "transformers_with_final_config",
                                                 "transformers_with_interval_instead_of_layer_types",
                                                 "error")}, default=str)[:1500])
        if "config_written_by_transformers" in c or "config_final" in c:
            cw = c.get("config_written_by_transformers", c.get("config_final"))
            log("   written config keys:", json.dumps({k: cw.get(k, "<absent>") for k in (
                "layer_types", "full_attention_interval", "rope_parameters", "rope_theta",
                "partial_rotary_factor", "num_experts", "num_local_experts", "head_dim")}))
    log("total bytes", report["total_bytes"], "failures", report["failures"])
    gf.dump_json(report, os.path.join(args.out, "report.json"))
    return 1 if report["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
