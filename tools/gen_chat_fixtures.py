#!/usr/bin/env python3
"""gen_chat_fixtures.py — reference renders of chat templates by Hugging Face transformers.

Reads tests/jinja/templates/*.json (each a subset of a model's tokenizer_config.json:
chat_template and the special tokens), renders a fixed set of conversations with

    tokenizer.apply_chat_template(messages, tools=..., add_generation_prompt=..., tokenize=False)

and writes tests/jinja/fixtures/<template>.json: per case the messages, tools, flag and the
exact rendered string, or the exception the template raised. It also renders
tests/jinja/probes.json (small templates that pin down one interpreter behaviour each) with
transformers' own compiled Jinja environment and writes tests/jinja/fixtures/probes.json.
tests/jinja/test_chat_templates.c checks moe against these files byte for byte.

Usage (on a machine with transformers and tokenizers; no model download is needed, the
tokenizer is an empty BPE that only carries the template and special tokens):
    python3 tools/gen_chat_fixtures.py [--out DIR]
For development without transformers, --backend jinja2 renders with plain jinja2 set up
the way transformers sets it up; fixtures committed to the repository come from the
transformers backend (their "generator" field says which).
"""
import argparse
import glob
import json
import os
import sys
from datetime import datetime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# ---------------------------------------------------------------- conversations --

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Get the current weather in a city",
            "parameters": {
                "type": "object",
                "properties": {
                    "location": {"type": "string", "description": "City name, e.g. \"Paris\""},
                    "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                },
                "required": ["location"],
            },
        },
    },
    {
        "type": "function",
        "function": {
            "name": "sample",
            "description": "Draw a number — with a temperature",
            "parameters": {
                "type": "object",
                "properties": {
                    "temperature": {"type": "number", "minimum": 0.0, "maximum": 1.5, "default": 1e-05},
                    "count": {"type": "integer", "default": 3},
                    "strict": {"type": "boolean", "default": False},
                    "tags": {"type": "array", "items": {"type": "string"}, "default": []},
                    "extra": {"type": "object", "default": {}},
                    "note": {"type": ["string", "null"], "default": None},
                },
                "required": [],
            },
            "return": {"type": "number"},
        },
    },
]

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
USER1 = {"role": "user", "content": "Hello, how are you?"}
ASSIST1 = {"role": "assistant", "content": "I'm fine, thanks! How can I help?"}
USER2 = {"role": "user", "content": "Tell me a joke."}

CALL_HF = {
    "role": "assistant",
    "content": "",
    "tool_calls": [
        {"id": "call12345", "type": "function",
         "function": {"name": "get_weather", "arguments": {"location": "Paris", "unit": "celsius"}}}
    ],
}
CALL_OPENAI = {
    "role": "assistant",
    "content": None,
    "tool_calls": [
        {"id": "call12345", "type": "function",
         "function": {"name": "get_weather", "arguments": "{\"location\": \"Paris\", \"unit\": \"celsius\"}"}}
    ],
}
TOOL_RESULT = {"role": "tool", "tool_call_id": "call12345", "name": "get_weather", "content": "{\"temp_c\": 22}"}
WEATHER_Q = {"role": "user", "content": "What's the weather in Paris?"}
ANSWER = {"role": "assistant", "content": "It is 22 °C in Paris."}

CONVERSATIONS = [
    ("single", [USER1], None),
    ("system_single", [SYSTEM, USER1], None),
    ("multi", [USER1, ASSIST1, USER2], None),
    ("system_multi", [SYSTEM, USER1, ASSIST1, USER2], None),
    ("ends_with_assistant", [USER1, ASSIST1], None),
    ("unicode_whitespace", [
        {"role": "system", "content": "  Sÿstem — ünïcode 你好 \"q\" 'a' \\ back\u00a0 "},
        {"role": "user", "content": "\n  line1\nline2\ttab  \r\n"},
        {"role": "assistant", "content": " café ☕ 😀 "},
        {"role": "user", "content": "¿Qué? {{ not a tag }} {% neither %}\n"},
    ], None),
    ("empty_content", [{"role": "user", "content": ""}, {"role": "assistant", "content": ""}, {"role": "user", "content": "?"}], None),
    ("bad_alternation", [USER1, USER2], None),
    ("bad_role", [USER1, {"role": "narrator", "content": "Meanwhile..."}], None),
    ("system_only", [SYSTEM], None),
    ("thinking", [
        USER1,
        {"role": "assistant", "content": "<think>\nThe user greets me.\n</think>\n\nHi! I'm fine."},
        USER2,
        {"role": "assistant", "content": "<think>\nA short joke.\n</think>\n\nWhy did the chicken cross the road?"},
    ], None),
    ("reasoning_content", [
        USER1,
        {"role": "assistant", "content": "Hi!", "reasoning_content": "Be friendly."},
        USER2,
    ], None),
    ("multipart_content", [
        {"role": "system", "content": [{"type": "text", "text": "Be brief."}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "  Describe this image.  "}]},
    ], None),
    ("tools_no_call", [WEATHER_Q], TOOLS),
    ("tools_system", [SYSTEM, WEATHER_Q], TOOLS),
    ("tools_call_hf", [WEATHER_Q, CALL_HF, TOOL_RESULT, ANSWER], TOOLS),
    ("tools_call_openai", [SYSTEM, WEATHER_Q, CALL_OPENAI, TOOL_RESULT], TOOLS),
    ("tools_call_no_tools_arg", [WEATHER_Q, CALL_HF, TOOL_RESULT], None),
    ("tools_bad_call_id", [WEATHER_Q, {"role": "assistant", "content": "", "tool_calls": [
        {"id": "x", "type": "function", "function": {"name": "get_weather", "arguments": {"location": "Rome"}}}]}], TOOLS),
    ("tools_parallel_calls", [WEATHER_Q, {"role": "assistant", "content": "", "tool_calls": [
        {"id": "call00001", "type": "function", "function": {"name": "get_weather", "arguments": {"location": "Paris"}}},
        {"id": "call00002", "type": "function", "function": {"name": "get_weather", "arguments": {"location": "Lyon"}}}]},
        {"role": "tool", "tool_call_id": "call00001", "content": "20"},
        {"role": "tool", "tool_call_id": "call00002", "content": "24"}], TOOLS),
]

# ----------------------------------------------------------------- rendering --


def token_text(v):
    if isinstance(v, dict):
        return v.get("content")
    return v


def error_record(e):
    return {"type": type(e).__name__, "message": str(e)}


class TransformersBackend:
    name = "transformers"
    method = ""
    probe_env = ""

    def __init__(self):
        import transformers  # noqa: F401
        self.versions = {"transformers": transformers.__version__}
        try:
            import jinja2
            import tokenizers
            self.versions["jinja2"] = jinja2.__version__
            self.versions["tokenizers"] = tokenizers.__version__
        except Exception:  # pragma: no cover
            pass

    def tokenizer(self, cfg):
        kw = {}
        for k in ("bos_token", "eos_token", "unk_token", "pad_token"):
            t = token_text(cfg.get(k))
            if t is not None:
                kw[k] = t
        if cfg.get("additional_special_tokens"):
            kw["additional_special_tokens"] = [token_text(x) for x in cfg["additional_special_tokens"]]
        ct = cfg.get("chat_template")
        if isinstance(ct, list):
            ct = {x["name"]: x["template"] for x in ct}
        try:
            from tokenizers import Tokenizer, models
            from transformers import PreTrainedTokenizerFast

            tok = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE()), **kw)
            tok.chat_template = ct
            self.method = "PreTrainedTokenizerFast(tokenizer_object=Tokenizer(models.BPE())).apply_chat_template"
            return tok
        except Exception as e:  # a transformers without that constructor: its renderer, as apply_chat_template calls it
            print(f"note: PreTrainedTokenizerFast failed ({e!r}); using render_jinja_template", file=sys.stderr)
            self.method = "transformers.utils.chat_template_utils.render_jinja_template"
            return {"template": ct, "tokens": kw}

    def apply(self, tok, messages, tools, add_generation_prompt):
        if isinstance(tok, dict):
            from transformers.utils.chat_template_utils import render_jinja_template

            ct = tok["template"]
            if ct is None:
                raise ValueError("Cannot use chat template functions because tokenizer.chat_template is not set")
            if isinstance(ct, dict):
                ct = ct["tool_use"] if tools is not None and "tool_use" in ct else ct["default"]
            rendered, _ = render_jinja_template(conversations=[messages], tools=tools, chat_template=ct,
                                                add_generation_prompt=add_generation_prompt, **tok["tokens"])
            return rendered[0]
        out = tok.apply_chat_template(messages, tools=tools, add_generation_prompt=add_generation_prompt, tokenize=False)
        if not isinstance(out, str):
            raise TypeError(f"apply_chat_template returned {type(out).__name__}")
        return out

    def compile(self, source):
        try:
            from transformers.utils.chat_template_utils import _compile_jinja_template
        except ImportError:
            self.probe_env = "jinja2 emulation (transformers has no _compile_jinja_template)"
            return Jinja2Backend().compile(source)
        self.probe_env = "transformers.utils.chat_template_utils._compile_jinja_template"
        return _compile_jinja_template(source)


class Jinja2Backend:
    """transformers' environment rebuilt from plain jinja2 (development only)."""

    name = "jinja2-emulation"
    method = "jinja2 ImmutableSandboxedEnvironment set up as transformers' _compile_jinja_template"
    probe_env = method

    def __init__(self):
        import jinja2
        self.versions = {"jinja2": jinja2.__version__}

    def compile(self, source):
        import jinja2
        from jinja2.ext import Extension
        from jinja2.sandbox import ImmutableSandboxedEnvironment

        class AssistantTracker(Extension):
            tags = {"generation"}

            def parse(self, parser):
                lineno = next(parser.stream).lineno
                body = parser.parse_statements(["name:endgeneration"], drop_needle=True)
                return jinja2.nodes.CallBlock(self.call_method("_generation_support"), [], [], body).set_lineno(lineno)

            @jinja2.pass_eval_context
            def _generation_support(self, context, caller):
                return caller()

        def raise_exception(message):
            raise jinja2.exceptions.TemplateError(message)

        def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
            return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators, sort_keys=sort_keys)

        def strftime_now(fmt):
            return datetime.now().strftime(fmt)

        env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                            extensions=[AssistantTracker, jinja2.ext.loopcontrols])
        env.filters["tojson"] = tojson
        env.globals["raise_exception"] = raise_exception
        env.globals["strftime_now"] = strftime_now
        return env.from_string(source)

    def tokenizer(self, cfg):
        ct = cfg.get("chat_template")
        if ct is None:
            raise ValueError("Cannot use chat template functions because tokenizer.chat_template is not set")
        toks = {}  # what transformers 5 passes when set (not additional_special_tokens)
        for k in ("bos_token", "eos_token", "unk_token", "pad_token"):
            t = token_text(cfg.get(k))
            if t is not None:
                toks[k] = t
        if isinstance(ct, list):
            ct = {x["name"]: x["template"] for x in ct}
        return {"template": ct, "tokens": toks}

    def apply(self, tok, messages, tools, add_generation_prompt):
        ct = tok["template"]
        if isinstance(ct, dict):
            ct = ct["tool_use"] if tools is not None and "tool_use" in ct else ct["default"]
        return self.compile(ct).render(messages=messages, tools=tools, documents=None,
                                       add_generation_prompt=add_generation_prompt, **tok["tokens"])


def render_template_file(backend, path):
    with open(path, encoding="utf-8") as f:
        cfg = json.load(f)
    name = os.path.splitext(os.path.basename(path))[0]
    fx = {"template": name, "source": cfg.get("_source", ""), "config": {k: v for k, v in cfg.items() if k != "_source"},
          "cases": []}
    if cfg.get("chat_template") is None:
        # no template: transformers refuses to apply one (moe refuses to load one)
        try:
            tok = backend.tokenizer(cfg)
            backend.apply(tok, [USER1], None, True)
            fx["load_error"] = None
        except Exception as e:
            fx["load_error"] = error_record(e)
        return name, fx
    tok = backend.tokenizer(cfg)
    for conv, messages, tools in CONVERSATIONS:
        for agp in (False, True):
            case = {"name": f"{conv}{'+gen' if agp else ''}", "messages": messages, "tools": tools,
                    "add_generation_prompt": agp}
            try:
                case["output"] = backend.apply(tok, json.loads(json.dumps(messages)), tools and json.loads(json.dumps(tools)), agp)
            except Exception as e:
                case["error"] = error_record(e)
            fx["cases"].append(case)
    return name, fx


def render_probes(backend, path):
    with open(path, encoding="utf-8") as f:
        probes = json.load(f)
    out = []
    for p in probes:
        rec = {"name": p["name"], "template": p["template"], "context": p.get("context", {})}
        try:
            rec["output"] = backend.compile(p["template"]).render(**rec["context"])
        except Exception as e:
            rec["error"] = error_record(e)
        out.append(rec)
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(ROOT, "tests", "jinja", "fixtures"))
    ap.add_argument("--templates", default=os.path.join(ROOT, "tests", "jinja", "templates"))
    ap.add_argument("--probes", default=os.path.join(ROOT, "tests", "jinja", "probes.json"))
    ap.add_argument("--backend", choices=["transformers", "jinja2"], default="transformers")
    args = ap.parse_args()
    backend = TransformersBackend() if args.backend == "transformers" else Jinja2Backend()
    os.makedirs(args.out, exist_ok=True)
    gen = {"generator": backend.name, "versions": backend.versions}
    n = 0
    for path in sorted(glob.glob(os.path.join(args.templates, "*.json"))):
        name, fx = render_template_file(backend, path)
        fx.update(gen)
        fx["method"] = backend.method
        with open(os.path.join(args.out, name + ".json"), "w", encoding="utf-8") as f:
            json.dump(fx, f, ensure_ascii=False, indent=1)
            f.write("\n")
        ok = sum(1 for c in fx["cases"] if "output" in c)
        print(f"{name}: {len(fx['cases'])} cases, {ok} rendered, {len(fx['cases']) - ok} raised"
              + (f", load error {fx['load_error']['type']}" if fx.get("load_error") else ""))
        n += len(fx["cases"])
    if os.path.exists(args.probes):
        probes = render_probes(backend, args.probes)
        with open(os.path.join(args.out, "probes.json"), "w", encoding="utf-8") as f:
            json.dump(dict(gen, method=backend.probe_env, probes=probes), f, ensure_ascii=False, indent=1)
            f.write("\n")
        print(f"probes: {len(probes)}, {sum(1 for p in probes if 'error' in p)} raised")
    print(f"{n} template cases; {gen}; {backend.method}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
