#!/usr/bin/env python3
"""Generate the MLX-quantization fixtures of `moe`.

Two kinds, both from a PyTorch implementation of MLX's affine quantization
(ml-explore/mlx: affine_quantize in mlx/ops.cpp and the CPU kernel in
mlx/backend/cpu/quantized.cpp; the arithmetic is restated in
`mlx_affine_quantize` below) and of mlx-lm's conversion layout:

1. <quant-ref>/affine.safetensors — bit-exactness vectors. Inputs `w.<dt>`
   (dt in bf16, f16, f32; [ROWS x 384]) whose rows hold the special groups
   (all zero, constant, min-dominated and max-dominated, exact rounding
   ties for each bit width, a range below eps) and random weights; outputs
   `q.<dt>.b<bits>.g<group>.{weight,scales,biases}` for bits 2,3,4,5,6,8 and
   group sizes 32, 64, 128.

2. <golden-quant>/<case>/ — end-to-end fixtures: `input/` a tiny random
   model saved by transformers in the hub layout, `model/` that model
   quantized in the mlx-community layout (experts stacked as switch_mlp, or
   kept per expert; per-module overrides in config.json), and reference
   logits and a greedy continuation computed by transformers in float32 on
   the DEquantized weights (w = scale*q + bias in float32). golden.json has
   the test_golden fields plus "atol" and, where `model/` is exactly what
   `moe quantize` must write from `input/`, "quantize": {bits, group_size}.

Needs torch, transformers (5.x), safetensors, numpy. Nothing is downloaded.
    python3 tools/gen_quant_fixtures.py --ref-out tests/quant-ref --out tests/golden-quant
"""

import argparse
import copy
import glob
import json
import os
import re
import shutil
import struct
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import gen_fixtures as gf  # noqa: E402  (tiny-model building, references, helpers)

BITS = [2, 3, 4, 5, 6, 8]
GROUPS = [32, 64, 128]
DT = {"bf16": torch.bfloat16, "f16": torch.float16, "f32": torch.float32}
ST_NAME = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}

# ---------------------------------------------------------------------------
# MLX affine quantization, restated in torch (float32 arithmetic, round half
# to even, as MLX's CPU kernel and its fallback compute it)
# ---------------------------------------------------------------------------


def mlx_affine_quantize(w, group, bits):
    """w [..., cols] float tensor -> (packed uint8 bytes [..., cols*bits/8],
    scales, biases [..., cols/group] in w.dtype, q int64 [..., cols])."""
    shape = list(w.shape)
    cols = shape[-1]
    assert cols % group == 0
    wf = w.float().reshape(-1, cols // group, group)
    n_bins = torch.tensor(float(2 ** bits - 1), dtype=torch.float32)
    eps = torch.tensor(1e-7, dtype=torch.float32)
    w_max = wf.amax(-1, keepdim=True)
    w_min = wf.amin(-1, keepdim=True)
    mask = w_min.abs() > w_max.abs()
    scale = torch.maximum((w_max - w_min) / n_bins, eps)
    scale = torch.where(mask, scale, -scale)
    edge = torch.where(mask, w_min, w_max)
    q0 = torch.round(edge / scale)
    nz = q0 != 0
    scale = torch.where(nz, edge / torch.where(nz, q0, torch.ones_like(q0)), scale)
    bias = torch.where(nz, edge, torch.zeros_like(edge))
    q = torch.clamp(torch.round((wf - bias) / scale), 0, float(2 ** bits - 1)).to(torch.int64)
    q = q.reshape(-1, cols)
    packed = pack_bits(q, bits)
    out_shape = shape[:-1]
    return (packed.reshape(out_shape + [cols * bits // 8]),
            scale.to(w.dtype).reshape(out_shape + [cols // group]),
            bias.to(w.dtype).reshape(out_shape + [cols // group]),
            q.reshape(shape))


def pack_bits(q, bits):
    """q int64 [R, cols] -> uint8 [R, cols*bits/8]: value k at bit k*bits, LSB first."""
    qn = q.numpy().astype(np.uint64)
    bitplanes = ((qn[:, :, None] >> np.arange(bits, dtype=np.uint64)) & 1).astype(np.uint8)
    flat = bitplanes.reshape(qn.shape[0], -1)
    return torch.from_numpy(np.packbits(flat, axis=1, bitorder="little").copy())


def dequantize(q, scales, biases, group):
    """float32 w = scale*q + bias, per group (two roundings, no FMA)."""
    s = scales.float().repeat_interleave(group, dim=-1)
    b = biases.float().repeat_interleave(group, dim=-1)
    return (s * q.float()) + b


# ---------------------------------------------------------------------------
# safetensors writing (uint32 tensors written from raw bytes)
# ---------------------------------------------------------------------------


def st_entry(t, dtype_name=None):
    """(dtype, shape, bytes) of a torch tensor; uint8-packed tensors become U32."""
    if dtype_name == "U32":
        b = t.contiguous().numpy().tobytes()
        shape = list(t.shape[:-1]) + [t.shape[-1] // 4]
        return ("U32", shape, b)
    t = t.contiguous()
    return (ST_NAME[t.dtype], list(t.shape), t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")


def st_write(path, entries, metadata=None):
    """entries: {name: (dtype, shape, bytes)} -> a .safetensors file, names sorted."""
    header = {}
    off = 0
    names = sorted(entries, key=gf.natural_key)
    for n in names:
        dt, shape, b = entries[n]
        header[n] = {"dtype": dt, "shape": shape, "data_offsets": [off, off + len(b)]}
        off += len(b)
    if metadata:
        header["__metadata__"] = metadata
    hj = json.dumps(header, separators=(",", ":")).encode()
    hj += b" " * (-len(hj) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hj)))
        f.write(hj)
        for n in names:
            f.write(entries[n][2])


# ---------------------------------------------------------------------------
# 1. bit-exactness vectors
# ---------------------------------------------------------------------------


def special_rows(cols=384):
    """float64 rows built from 32-wide blocks, each block a special group."""
    g = torch.Generator().manual_seed(4242)
    rows = []
    nblk = cols // 32
    rows.append(torch.zeros(cols, dtype=torch.float64))                        # all zero
    consts = [0.75, -0.75, 3.0, -0.015625, 1e-3, -2.5, 0.0, 7.0, 0.5, -0.5, 100.0, -1.0]
    rows.append(torch.cat([torch.full((32,), c, dtype=torch.float64) for c in consts[:nblk]]))
    blk = []
    for i in range(nblk):                                                       # min dominates / max dominates
        v = torch.rand(32, generator=g, dtype=torch.float64) * 0.1
        if i % 2 == 0:
            v[3] = -0.4    # |min| > |max|: positive scale, edge = min
        else:
            v[7] = 0.4     # |max| >= |min|: negative scale, edge = max
            v[9] = -0.1
        blk.append(v)
    rows.append(torch.cat(blk))
    rows.append(-rows[-1])
    for bits in BITS:                                                            # exact ties for this width
        nb = 2 ** bits - 1
        blk = []
        for i in range(nblk):
            # max nb, min 0: scale -1, bias nb, so (w - nb) / -1 = nb - w; halves tie
            top = min(nb, 100)
            v = torch.tensor([(j % (2 * top + 1)) / 2.0 for j in range(32)], dtype=torch.float64)
            v[0] = float(nb) if nb <= 255 else v[0]
            v[1] = 0.0
            if nb > 127:   # keep halves representable in bf16 (8 significant bits)
                v = torch.where(v > 127, torch.floor(v), v)
            blk.append(v)
        rows.append(torch.cat(blk))
    tiny = []
    for i in range(nblk):                                                       # range below eps * n_bins
        v = 1e-9 * (1 + torch.rand(32, generator=g, dtype=torch.float64)) * (1 if i % 2 else -1)
        tiny.append(v)
    rows.append(torch.cat(tiny))
    for i in range(6):                                                          # random weights, some outliers
        v = torch.randn(cols, generator=g, dtype=torch.float64) * 0.05
        if i % 2:
            v[int(torch.randint(0, cols, (1,), generator=g))] = 0.9
        rows.append(v)
    return torch.stack(rows)


def gen_ref(out_dir):
    os.makedirs(out_dir, exist_ok=True)
    base = special_rows()
    entries = {}
    summary = {}
    for dname, dt in DT.items():
        w = base.to(dt)
        entries["w." + dname] = st_entry(w)
        for bits in BITS:
            for group in GROUPS:
                packed, s, b, q = mlx_affine_quantize(w, group, bits)
                key = "q.%s.b%d.g%d" % (dname, bits, group)
                entries[key + ".weight"] = st_entry(packed, "U32")
                entries[key + ".scales"] = st_entry(s)
                entries[key + ".biases"] = st_entry(b)
                neg = int((s.float() < 0).sum())
                summary[key] = dict(negative_scales=neg, groups=int(s.numel()),
                                    max_dequant_err=float((dequantize(q, s, b, group) - w.float()).abs().max()))
    st_write(os.path.join(out_dir, "affine.safetensors"), entries,
             {"source": "tools/gen_quant_fixtures.py (torch restatement of MLX affine_quantize)"})
    gf.dump_json(dict(rows=int(base.shape[0]), cols=int(base.shape[1]), torch=torch.__version__,
                      cases=summary), os.path.join(out_dir, "affine.json"))
    gf.log("quant-ref: %d tensors" % len(entries))


# ---------------------------------------------------------------------------
# 2. end-to-end quantized model fixtures
# ---------------------------------------------------------------------------

QCASES = [
    dict(name="mistral-q4-g64-tied", quantize=True, bits=4, group=64,
         covers="Mistral, 4-bit group 64, tied embeddings: the quantized embedding is also the head",
         config_class="MistralConfig", arch="MistralForCausalLM", dtype="bfloat16",
         seed=5101, token_seed=6101,
         config=dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=16, sliding_window=None,
                     rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=True)),
    dict(name="mixtral-q4-g32", quantize=True, bits=4, group=32,
         covers="Mixtral, 8 experts top-2 stacked as block_sparse_moe.switch_mlp, 4-bit group 32; "
                "down_proj input width 40 does not divide by 32 so it stays bf16 (stacked)",
         config_class="MixtralConfig", arch="MixtralForCausalLM", dtype="bfloat16",
         seed=5201, token_seed=6201,
         config=dict(vocab_size=320, hidden_size=64, intermediate_size=40, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, num_local_experts=8,
                     num_experts_per_tok=2, sliding_window=9, rms_norm_eps=1e-5,
                     rope_theta=1000000.0, tie_word_embeddings=False)),
    dict(name="qwen3moe-q4-g64", quantize=True, bits=4, group=64,
         covers="Qwen3-MoE, 4-bit group 64, routers at 8 bits group 64 (per-module config entries, "
                "as mlx-lm's quant_predicate), o_proj (input 96) and expert down_proj (input 32) "
                "stay bf16, head_dim 24, q/k norm",
         config_class="Qwen3MoeConfig", arch="Qwen3MoeForCausalLM", dtype="bfloat16",
         seed=5301, token_seed=6301,
         config=dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=24, num_experts=8,
                     num_experts_per_tok=3, moe_intermediate_size=32, norm_topk_prob=True,
                     decoder_sparse_step=1, mlp_only_layers=[], use_sliding_window=False,
                     attention_bias=False, rms_norm_eps=1e-6, rope_theta=1000000.0,
                     tie_word_embeddings=False)),
    dict(name="qwen2moe-q8-g32-f16", quantize=True, bits=8, group=32,
         covers="Qwen2-MoE, 8-bit group 32 from float16 (float16 scales and biases), shared expert "
                "and its gate quantized, q/k/v bias, a dense layer (mlp_only_layers [1])",
         config_class="Qwen2MoeConfig", arch="Qwen2MoeForCausalLM", dtype="float16",
         seed=5401, token_seed=6401,
         config=dict(vocab_size=256, hidden_size=64, intermediate_size=96, num_hidden_layers=3,
                     num_attention_heads=4, num_key_value_heads=2, num_experts=8,
                     num_experts_per_tok=2, moe_intermediate_size=32,
                     shared_expert_intermediate_size=64, norm_topk_prob=False,
                     decoder_sparse_step=1, mlp_only_layers=[1], use_sliding_window=False,
                     rms_norm_eps=1e-6, rope_theta=1000000.0, tie_word_embeddings=False)),
    dict(name="mistral-q8-g128-f32", quantize=True, bits=8, group=128,
         covers="Mistral, 8-bit group 128 from float32 (float32 scales and biases), sliding window 7",
         config_class="MistralConfig", arch="MistralForCausalLM", dtype="float32",
         seed=5501, token_seed=6501,
         config=dict(vocab_size=256, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, head_dim=32, sliding_window=7,
                     rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False)),
    dict(name="olmoe-mixed-per-expert", quantize=False, bits=4, group=32, layout="per-expert",
         overrides={"model.layers.0.self_attn.q_proj": {"group_size": 64, "bits": 3},
                    "model.layers.0.self_attn.k_proj": {"group_size": 32, "bits": 2},
                    "model.layers.0.self_attn.v_proj": {"group_size": 32, "bits": 5},
                    "model.layers.0.self_attn.o_proj": {"group_size": 64, "bits": 6},
                    "model.layers.1.mlp.gate": {"group_size": 64, "bits": 8},
                    "model.layers.1.self_attn.o_proj": False,
                    "lm_head": False},
         covers="OLMoE, experts kept per expert (hub names) and quantized 4-bit group 32, "
                "per-module overrides at 2, 3, 5, 6 and 8 bits and `false` (o_proj of layer 1 "
                "and lm_head stay bf16)",
         config_class="OlmoeConfig", arch="OlmoeForCausalLM", dtype="bfloat16",
         seed=5601, token_seed=6601,
         config=dict(vocab_size=256, hidden_size=64, intermediate_size=32, num_hidden_layers=2,
                     num_attention_heads=4, num_key_value_heads=2, num_experts=8,
                     num_experts_per_tok=2, norm_topk_prob=False, clip_qkv=None,
                     rms_norm_eps=1e-5, rope_theta=10000.0, tie_word_embeddings=False)),
]

EXPERT_RE = re.compile(r"^(model\.layers\.\d+\.(?:block_sparse_moe|mlp))\.experts\.(\d+)\.(\w+)\.weight$")
MIXTRAL_NAMES = {"w1": "gate_proj", "w3": "up_proj", "w2": "down_proj"}
# in_proj_qkvz / in_proj_ba: Qwen3-Next's gated DeltaNet input projections
QUANTIZABLE = re.compile(r"(_proj|in_proj_\w+|\.gate|shared_expert_gate|lm_head|embed_tokens|\.w[123])$")


def load_dir(d):
    from safetensors.torch import load_file
    out = {}
    for p in sorted(glob.glob(os.path.join(d, "*.safetensors"))):
        out.update(load_file(p))
    return out


def mlx_convert(sd, cfg, bits, group, layout="stacked", overrides=None, family_router8=False):
    """Hub tensors -> (mlx tensors {name: entry}, quantization config, dequantized hub tensors)."""
    overrides = dict(overrides or {})
    mods = {}    # module path -> tensor (2-D, or 3-D stacked)
    plain = {}   # copied unchanged
    stacks = {}
    for name, t in sd.items():
        m = EXPERT_RE.match(name)
        if m and layout == "stacked":
            blk, e, proj = m.group(1), int(m.group(2)), m.group(3)
            proj = MIXTRAL_NAMES.get(proj, proj)
            stacks.setdefault("%s.switch_mlp.%s" % (blk, proj), {})[e] = (t, name)
        elif name.endswith(".weight") and t.ndim in (2, 3) and QUANTIZABLE.search(name[:-7]):
            # 3-D: experts already stacked (switch_mlp), as a sanitized mlx model holds them
            mods[name[:-7]] = (t, [name])
        else:
            plain[name] = t
    for path, es in stacks.items():
        n = len(es)
        mods[path] = (torch.stack([es[i][0] for i in range(n)]), [es[i][1] for i in range(n)])
    qcfg = {"group_size": group, "bits": bits, "mode": "affine"}
    out, deq = {}, {}
    for name, t in plain.items():
        out[name] = st_entry(t)
        deq[name] = t.float()
    for path in sorted(mods, key=gf.natural_key):
        t, src = mods[path]
        params = overrides.get(path, None)
        if params is None and family_router8 and path.endswith("mlp.gate"):
            params = {"group_size": 64, "bits": 8}
        g, b = group, bits
        if params is False:
            quant = False
        elif isinstance(params, dict):
            g, b = params["group_size"], params["bits"]
            quant = t.shape[-1] % g == 0
        else:
            quant = t.shape[-1] % group == 0
        if params is not None:
            qcfg[path] = params if params is False or quant else False
        if not quant:
            out[path + ".weight"] = st_entry(t)
            w_hat = t.float()
        else:
            packed, s, bb, q = mlx_affine_quantize(t, g, b)
            out[path + ".weight"] = st_entry(packed, "U32")
            out[path + ".scales"] = st_entry(s)
            out[path + ".biases"] = st_entry(bb)
            w_hat = dequantize(q, s, bb, g)
        if len(src) == 1:
            deq[src[0]] = w_hat
        else:
            for i, n in enumerate(src):
                deq[n] = w_hat[i]
    return out, qcfg, deq


def write_quant_case(spec, seed, cdir, seqs, info):
    idir, mdir, rdir = (os.path.join(cdir, x) for x in ("input", "model", "deq"))
    shutil.rmtree(cdir, ignore_errors=True)
    for d in (idir, mdir, rdir):
        os.makedirs(d)
    model = gf.build_model(spec, seed, info).to(gf.torch_dtype(spec["dtype"]))
    model.save_pretrained(idir)
    with open(os.path.join(idir, "config.json")) as f:
        cfg = json.load(f)
    sd = load_dir(idir)
    out, qcfg, deq = mlx_convert(sd, cfg, spec["bits"], spec["group"], spec.get("layout", "stacked"),
                                 spec.get("overrides"), cfg["model_type"] == "qwen3_moe")
    st_write(os.path.join(mdir, "model.safetensors"), out, {"format": "mlx"})
    qc = dict(cfg)
    qc["quantization"] = qcfg
    qc["quantization_config"] = copy.deepcopy(qcfg)
    with open(os.path.join(mdir, "config.json"), "w") as f:
        json.dump(qc, f, indent=2)
    for extra in glob.glob(os.path.join(idir, "*")):
        b = os.path.basename(extra)
        if b != "config.json" and not b.endswith(".safetensors") and not b.endswith(".index.json"):
            shutil.copy(extra, os.path.join(mdir, b))
    # the reference: the same hub model with the dequantized float32 weights
    from safetensors.torch import save_file
    save_file({k: v.contiguous() for k, v in deq.items()}, os.path.join(rdir, "model.safetensors"))
    rc = dict(cfg)
    rc["dtype"] = "float32"
    with open(os.path.join(rdir, "config.json"), "w") as f:
        json.dump(rc, f, indent=2)
    m, li = gf.load_model(rdir, info)
    res = gf.compute_refs(m, seqs, spec)
    res["load_info"] = li
    return res


def process_qcase(spec, out_root, report, max_seeds):
    name = spec["name"]
    cdir = os.path.join(out_root, name)
    info = dict(covers=spec["covers"])
    report["cases"][name] = info
    V = spec["config"]["vocab_size"]
    tg = torch.Generator().manual_seed(spec["token_seed"])
    seqs = [torch.randint(0, V, (n,), generator=tg).tolist() for n in gf.SEQ_LENS]
    best = None
    for a in range(max_seeds):
        seed = spec["seed"] + 1000 * a
        res = write_quant_case(spec, seed, cdir, seqs, info)
        score = min(res["min_gap"] / gf.GAP_GOOD, res["router_gap"] / gf.RGAP_GOOD)
        gf.log("  %s seed %d: min greedy gap %.4g, min router gap %.4g" % (name, seed, res["min_gap"], res["router_gap"]))
        if best is None or score > best[0]:
            best = (score, seed)
        if score >= 1:
            break
    if best[1] != seed:
        res = write_quant_case(spec, best[1], cdir, seqs, info)
    shutil.rmtree(os.path.join(cdir, "deq"))
    files = []
    for i, lg in enumerate(res["logits"]):
        fn = "logits_%d.f32" % i
        gf.write_logits(os.path.join(cdir, fn), lg)
        files.append(dict(tokens=seqs[i], logits=fn))
    golden = dict(
        case=name, model_type=json.load(open(os.path.join(cdir, "model", "config.json")))["model_type"],
        dtype=spec["dtype"], vocab_size=V, sequences=files,
        greedy=dict(prompt=seqs[gf.GREEDY_SEQ], n=gf.N_NEW, tokens=res["greedy"], min_gap=res["min_gap"],
                    step_gaps=[round(x, 6) for x in res["gaps"]]),
        min_router_gap=gf.fin(res["router_gap"]), logits_std=float(torch.stack([l.std() for l in res["logits"]]).mean()),
        greedy_ignores_eos=True, generate_matches_nocache=res.get("generate_matches_nocache"),
        seed=best[1], covers=spec["covers"],
        atol=1e-4,
        reference="transformers float32 on the dequantized weights (scale*q + bias in float32)",
        transformers_version=__import__("transformers").__version__, torch_version=torch.__version__)
    if spec.get("quantize"):
        golden["quantize"] = dict(bits=spec["bits"], group_size=spec["group"])
    else:
        shutil.rmtree(os.path.join(cdir, "input"))
    gf.dump_json(golden, os.path.join(cdir, "golden.json"))
    gf.write_tensors_txt(os.path.join(cdir, "model"), os.path.join(cdir, "tensors.txt"))
    info.update(seed=best[1], min_gap=res["min_gap"], router_gap=gf.fin(res["router_gap"]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="tests/golden-quant")
    ap.add_argument("--ref-out", default="tests/quant-ref")
    ap.add_argument("--cases", default="")
    ap.add_argument("--max-seeds", type=int, default=8)
    a = ap.parse_args()
    torch.set_num_threads(4)
    gen_ref(a.ref_out)
    os.makedirs(a.out, exist_ok=True)
    report = dict(cases={})
    want = set(a.cases.split(",")) if a.cases else None
    failed = 0
    for spec in QCASES:
        if want and spec["name"] not in want:
            continue
        try:
            process_qcase(spec, a.out, report, a.max_seeds)
        except Exception:
            import traceback
            failed += 1
            report["cases"][spec["name"]]["error"] = traceback.format_exc()
            gf.log(traceback.format_exc())
    gf.dump_json(report, os.path.join(a.out, "report.json"))
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
