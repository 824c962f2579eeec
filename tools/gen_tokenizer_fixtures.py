#!/usr/bin/env python3
"""gen_tokenizer_fixtures.py — reference token ids and decodes from Hugging Face
`tokenizers` for the tokenizer tests (tests/tokenizer/fixtures/<name>.json).

    python3 tools/gen_tokenizer_fixtures.py TOKDIR OUTDIR [--bench TEXT] [name ...]

TOKDIR/<name>/tokenizer.json (+ tokenizer_config.json) as tools/fetch_tokenizers.sh
lays them out. For each tokenizer the fixture holds, per test string, the ids of
Tokenizer.from_file(...).encode(s, add_special_tokens=False/True) and
decode(ids_with_specials, skip_special_tokens=False/True); the ids every added
token's content maps to; decodes of random id sequences (byte tokens, specials,
invalid UTF-8); and, for reference only, what transformers' AutoTokenizer adds
with add_special_tokens=True (it reads tokenizer_config.json, `tokenizers` does
not). Variants (VARIANTS below) are real files with some sections replaced, for
settings no real file here has. With --bench it also times single-threaded encode on TEXT (the same text
bench/tokenizer.c uses) and prints the figures.

Needs: tokenizers (the reference), optionally transformers. Runs on a machine
that has them (the project's GPU machine); the C tests only read the JSON.
"""
import json
import os
import random
import sys
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
from tokenizers import Tokenizer  # noqa: E402
import tokenizers  # noqa: E402

NAMES = ["llama2", "qwen3", "llama3", "llama3_1", "deepseek_v3", "gpt4o", "gemma3"]

# Variants: a real file with some sections replaced ("patch", top-level keys)
# and added tokens changed or appended ("added_patch"), to cover settings the
# real files lack (Metaspace pre-tokenizer, added-token flags, Roberta, Split
# behaviours, ...). The C test applies the same patch to the same base file.
M = "\u2581"
TEMPLATE_BOS_EOS = {"type": "TemplateProcessing",
                    "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                               {"SpecialToken": {"id": "</s>", "type_id": 0}}],
                    "pair": [], "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]},
                                                   "</s>": {"id": "</s>", "ids": [2], "tokens": ["</s>"]}}}
VARIANTS = {
    # Mistral v0.3 / legacy=false conversions: no normalizer, Metaspace(prepend_scheme=first)
    "llama2_metaspace": {"base": "llama2", "patch": {
        "normalizer": None,
        "pre_tokenizer": {"type": "Metaspace", "replacement": M, "prepend_scheme": "first", "split": False}}},
    "llama2_metaspace_split": {"base": "llama2", "patch": {
        "normalizer": None,
        "pre_tokenizer": {"type": "Metaspace", "replacement": M, "prepend_scheme": "always", "split": True},
        "decoder": {"type": "Metaspace", "replacement": M, "prepend_scheme": "always", "split": True},
        "post_processor": TEMPLATE_BOS_EOS}},
    "llama2_added_flags": {"base": "llama2", "added_patch": [
        {"content": "<s>", "lstrip": True, "rstrip": True},
        {"content": "</s>", "rstrip": True, "normalized": True},
        {"content": "hello", "single_word": True, "lstrip": False, "rstrip": False, "normalized": True, "special": False},
        {"content": "<tag>", "single_word": False, "lstrip": True, "rstrip": False, "normalized": False, "special": True},
        {"content": "ice cream", "single_word": False, "lstrip": False, "rstrip": False, "normalized": True, "special": False},
        {"content": "[x]", "single_word": True, "lstrip": True, "rstrip": True, "normalized": False, "special": False}]},
    "llama2_decoders": {"base": "llama2", "patch": {
        "decoder": {"type": "Sequence", "decoders": [
            {"type": "ByteFallback"}, {"type": "Fuse"},
            {"type": "Replace", "pattern": {"String": M + M}, "content": "="},
            {"type": "Replace", "pattern": {"String": M}, "content": " "},
            {"type": "Strip", "content": " ", "start": 2, "stop": 1}]}}},
    "qwen3_roberta": {"base": "qwen3", "patch": {
        "normalizer": {"type": "Sequence", "normalizers": [{"type": "NFKC"}, {"type": "Lowercase"}]},
        "pre_tokenizer": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
        "post_processor": {"type": "RobertaProcessing", "sep": ["<|im_end|>", 151645], "cls": ["<|im_start|>", 151644],
                           "trim_offsets": True, "add_prefix_space": True}}},
    "llama3_splits": {"base": "llama3", "patch": {
        "normalizer": {"type": "Sequence", "normalizers": [
            {"type": "NFD"}, {"type": "Replace", "pattern": {"Regex": "[0-9]{4,}"}, "content": "#"}]},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithNext", "invert": False},
            {"type": "Split", "pattern": {"Regex": "\\p{P}+"}, "behavior": "Contiguous", "invert": False},
            {"type": "Digits", "individual_digits": True},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]},
        "post_processor": {"type": "TemplateProcessing",
                           "single": [{"SpecialToken": {"id": "<|begin_of_text|>", "type_id": 0}},
                                      {"Sequence": {"id": "A", "type_id": 0}},
                                      {"SpecialToken": {"id": "<|end_of_text|>", "type_id": 0}}],
                           "pair": [], "special_tokens": {
                               "<|begin_of_text|>": {"id": "<|begin_of_text|>", "ids": [128000], "tokens": ["<|begin_of_text|>"]},
                               "<|end_of_text|>": {"id": "<|end_of_text|>", "ids": [128001], "tokens": ["<|end_of_text|>"]}}}}},
    "llama3_splits2": {"base": "llama3", "patch": {
        "normalizer": {"type": "Sequence", "normalizers": [{"type": "NFKC"}, {"type": "Strip", "strip_left": True, "strip_right": True}]},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Punctuation", "behavior": "MergedWithPrevious"},
            {"type": "Split", "pattern": {"Regex": "[a-z]+"}, "behavior": "MergedWithPrevious", "invert": True},
            {"type": "Split", "pattern": {"Regex": "\\s"}, "behavior": "Removed", "invert": False},
            {"type": "CharDelimiterSplit", "delimiter": "x"},
            {"type": "Digits", "individual_digits": False},
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": False}]}}},
    "llama3_whitespace": {"base": "llama3", "patch": {
        "normalizer": {"type": "Lowercase"},
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "WhitespaceSplit"},
            {"type": "Split", "pattern": {"Regex": "(?<=[a-z])(?=[0-9])"}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}]}}},
}

VARIANT_STRINGS = [
    "<s>hello</s>", "  <s>  hi  </s>  x", "say hello there", "sayhello", "hello", " hello ", "HELLO hello, hello!",
    "a <tag>b", "a   <tag>   b", "<tag><tag>", "I like ice cream", "ice  cream", "icecream", "[x] y [x]z x[x]",
    " leading and trailing ", "x1 x2 abc123def 1234567 12345 x", "UPPER lower MiXeD İstanbul ΣΟΦΙΑ",
]


def apply_variant(spec, v):
    spec = json.loads(json.dumps(spec))
    for k, val in v.get("patch", {}).items():
        spec[k] = val
    for ap in v.get("added_patch", []):
        for a in spec["added_tokens"]:
            if a["content"] == ap["content"]:
                a.update(ap)
                break
        else:
            a = {"id": 0}
            a.update(ap)
            spec["added_tokens"].append(a)
    return spec

BASE = [
    "",
    " ",
    "  ",
    "a",
    "Hello",
    "Hello world",
    " Hello world",
    "Hello world ",
    "Hello  world",
    "Hello   world!",
    "hello\nworld",
    "hello\n\nworld\n",
    "\n",
    "\n\n\n",
    "\t",
    "\ttab\tseparated\tvalues\t",
    " \t \n \r\n ",
    "line one\r\nline two\r\n",
    "The quick brown fox jumps over the lazy dog.",
    "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG!",
    "I'm sure you'll see they've done it, haven't they? It's John's.",
    "I'M SURE YOU'LL SEE THEY'VE DONE IT. IT'S",
    "it'ſ a long s; ＩＴ'Ｓ fullwidth",
    "Don't stop—won't stop… “quoted” ‘single’ «guillemets»",
    "naïve café résumé coöperate Zoë Ångström",
    "Ça va? Où est la gare? À bientôt, garçon!",
    "Straße, Fußgängerübergänge, Äpfel und Öl",
    "Dziękuję bardzo, że przyszłaś. Żółć gęślą jaźń.",
    "Čeština: příliš žluťoučký kůň úpěl ďábelské ódy",
    "Türkçe: İstanbul'da ılık bir gün; IĞDIR ığdır",
    "Tiếng Việt có nhiều dấu: Nguyễn, Phở, Hạ Long",
    "Română: știință, țară, înțelegere",
    "Íslenska: Þetta er ótrúlegt, ðæ!",
    "e\u0301 vs \u00e9 (decomposed vs precomposed)",
    "A\u030a vs \u00c5 and \u212b (angstrom sign)",
    "ﬁ ﬂ ligatures, ① circled, ｶﾀｶﾅ halfwidth, ＡＢＣ fullwidth",
    "Привет, мир! Как дела? Всё хорошо.",
    "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "Ελληνικά: Καλημέρα κόσμε, τι κάνεις; ΣΟΦΙΑ σοφία ς",
    "中文：你好，世界！今天天气很好。",
    "人工智能正在改变我们的生活方式，机器学习无处不在。",
    "日本語：こんにちは、世界。カタカナとひらがなと漢字。",
    "東京都渋谷区 １２３ー４５６",
    "한국어: 안녕하세요, 세계! 반갑습니다.",
    "العربية: مرحبا بالعالم! كيف حالك؟",
    "السَّلَامُ عَلَيْكُمْ ١٢٣٤٥٦٧٨٩٠",
    "עברית: שלום עולם! מה שלומך?",
    "हिन्दी: नमस्ते दुनिया! आप कैसे हैं?",
    "বাংলা: হ্যালো বিশ্ব",
    "தமிழ்: வணக்கம் உலகம்",
    "ไทย: สวัสดีชาวโลก ภาษาไทยไม่มีช่องว่างระหว่างคำ",
    "ქართული: გამარჯობა მსოფლიო",
    "Հայերեն: Բարեւ աշխարհ",
    "አማርኛ: ሰላም ልዑል",
    "ᠮᠣᠩᠭᠣᠯ mongolian, ᚠᚢᚦᚨᚱᚲ runes, 𓀀 hieroglyph",
    "😀",
    "😀😃😄😁",
    "👍 👍🏻 👍🏼 👍🏽 👍🏾 👍🏿",
    "👨‍👩‍👧‍👦 family, 👩🏽‍💻 technologist, 🏳️‍🌈 flag",
    "🇫🇷🇩🇪🇯🇵🇺🇸🇧🇷 flags",
    "❤️ ♥ ☺️ ✌🏾 #️⃣ 1️⃣",
    "text😀text😀 😀 text",
    "🧑‍🤝‍🧑🫶🏼🪿",
    "0",
    "7",
    "42",
    "123",
    "1234",
    "12345",
    "123456789012345678901234567890",
    "3.14159265358979323846",
    "1,234,567.89 and 1.234.567,89",
    "-17 +42 1e10 0x1F 0b1010 0o777",
    "Call 555-0100 or +1 (555) 010-0199",
    "2024-06-15T12:34:56Z",
    "١٢٣ ۴۵۶ ७८९ ๑๒๓ 一二三",
    "x² + y² = z², ½ ¾, Ⅻ",
    "def add(a, b):\n    return a + b\n",
    "int main(void) {\n\tprintf(\"%d\\n\", 42);\n\treturn 0;\n}\n",
    "for (let i = 0; i < 10; i++) { console.log(`i=${i}`); }",
    "    indented four\n        indented eight\n",
    "if x==1:\n\tpass\nelif x!=2 and y>=3:\n\t\treturn None",
    "SELECT * FROM users WHERE id = 1;",
    "<div class=\"a\">Hello &amp; welcome</div>",
    "{\"key\": [1, 2, 3], \"nested\": {\"a\": null}}",
    "https://www.example.com/path/to/page?query=1&lang=en#section",
    "http://user:pass@host.example:8080/a/b.c?x=y",
    "mail me: someone.name+tag@example.co.uk",
    "C:\\Users\\Name\\Documents\\file.txt",
    "/usr/local/bin/python3 --version",
    "$HOME/.config && echo $PATH | tr ':' '\\n'",
    "a\u00a0b",
    "non\u00a0breaking\u00a0spaces",
    "en\u2002space em\u2003space thin\u2009space hair\u200aspace",
    "ideographic\u3000space",
    "zero\u200bwidth\u200cnon\u200djoiner",
    "narrow\u202fnbsp and\u205fmath space",
    "line\u2028separator\u2029paragraph",
    "next\u0085line",
    "\ufeffBOM at start",
    "soft\u00adhyphen",
    "control \u0001\u0002\u0007 chars",
    "a\u0000b",
    "\u0000",
    "replacement \ufffd char",
    "private use \ue000\uf8ff",
    "astral 𝕳𝖊𝖑𝖑𝖔 𝟙𝟚𝟛",
    "combining: a\u0300\u0301\u0302\u0303 Z\u0351\u0352\u0353",
    "▁ already has metaspace ▁▁",
    "Ġ byte-level char Ċ",
    "<0x41> looks like a byte token",
    "...",
    "!!!???",
    "a.b,c;d:e",
    "(parens) [brackets] {braces} <angles>",
    "@#$%^&*_+=|~`",
    "--- *** ___ ===",
    "'quoted' \"double\" `back`",
    "'s 't 're 've 'm 'll 'd",
    "hello's world'S",
    "ALLCAPS lowercase MixedCase camelCase snake_case kebab-case",
    "MyHTTPServer XMLHttpRequest iPhone eBay",
    "word" * 30,
    "a" * 100,
    " " * 40,
    "\n" * 20,
    "ab " * 50,
    "😀" * 20,
    "Hello<s>world",
    "<s>",
    "</s>",
    "<s> Hello </s>",
    "text <s>text</s> text",
    "<unk> unknown",
    "<|im_start|>user\nHello<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|>",
    "before<|endoftext|>after",
    " <|endoftext|> ",
    "<|begin_of_text|>Hi<|eot_id|>",
    "<|start_header_id|>system<|end_header_id|>\n\nYou are helpful.<|eot_id|>",
    "<｜begin▁of▁sentence｜>DeepSeek<｜end▁of▁sentence｜>",
    "<bos><start_of_turn>user\nhi<end_of_turn>\n",
    "<think>\nreasoning\n</think>\n\nanswer",
    "<|endofprompt|> <pad> <mask> [INST] hi [/INST]",
    "<|im_start|><|im_start|><|im_end|>",
    "<|im_start",
    "<s<s>>",
]

PARAGRAPHS = [
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg combined a screw press, oil-based ink and movable metal type.",
    "La Révolution française a profondément transformé la société : « Liberté, égalité, fraternité ».",
    "Die Straßenbahn fährt alle zehn Minuten vom Hauptbahnhof über den Marktplatz.",
    "Москва — столица России и крупнейший по численности населения город страны.",
    "人工智能正在改变我们的生活方式。从语音助手到自动驾驶汽车，机器学习算法已经渗透到各个领域。",
    "東京は日本の首都であり、世界で最も人口の多い都市圏の一つです。",
    "اللغة العربية هي إحدى أكثر اللغات انتشاراً في العالم.",
    "हिन्दी भारत की सबसे अधिक बोली जाने वाली भाषा है।",
    "ภาษาไทยเป็นภาษาราชการของประเทศไทย",
    "def f(x):\n    return [i * i for i in range(x)]\n",
    "In 2023, throughput was 1,234,567 req/s at p99 = 4.2 ms.",
    "Emoji 😀👍🏽👨‍👩‍👧‍👦🇫🇷 and symbols ½ ² €.",
]


def make_strings(added_contents, rng):
    """The test strings: BASE, the tokenizer's own added tokens inside prose, random mixes, a 10 kB string."""
    out = list(BASE)
    picks = added_contents[:6] + rng.sample(added_contents, min(6, len(added_contents)))
    for c in picks:
        out.append(c)
        out.append("Text before " + c + " text after")
        out.append("x" + c + "y")
        out.append("  " + c + "\n" + c + c)
    pieces = [p for p in BASE if p] + PARAGRAPHS + picks
    while len(out) < 240:
        k = rng.randint(2, 6)
        seps = ["", " ", "  ", "\n", "\t", "\u00a0", " \n"]
        s = ""
        for _ in range(k):
            s += rng.choice(pieces) + rng.choice(seps)
        out.append(s)
    big = ""
    i = 0
    while len(big.encode()) < 10240:
        big += PARAGRAPHS[i % len(PARAGRAPHS)] + (" " if i % 3 else "\n\n")
        i += 1
    out.append(big)
    # dedupe, keep order
    seen, res = set(), []
    for s in out:
        if s not in seen:
            seen.add(s)
            res.append(s)
    return res


# raw byte inputs (invalid UTF-8): the C encoder must treat them as HF would treat
# bytes.decode("utf-8", "replace") (one U+FFFD per maximal ill-formed subpart)
RAW_BYTES = [
    b"abc\xffdef",
    b"\xc3\x28 invalid 2-byte",
    b"\xe2\x82 truncated",
    b"\xf0\x9f\x98",
    b"\xed\xa0\x80 surrogate",
    b"\xc0\xaf overlong",
    b"ok \xf4\x90\x80\x80 too big",
    b"\x80\x80\x80",
]


def decode_cases(tok, rng, n_vocab, special_ids, byte_ids):
    cases = []
    for _ in range(40):
        k = rng.randint(1, 24)
        ids = []
        for _ in range(k):
            r = rng.random()
            if r < 0.15 and special_ids:
                ids.append(rng.choice(special_ids))
            elif r < 0.45 and byte_ids:
                ids.append(rng.choice(byte_ids))
            else:
                ids.append(rng.randrange(n_vocab))
        cases.append(ids)
    out = []
    for ids in cases:
        try:
            out.append({"ids": ids, "decode": tok.decode(ids, skip_special_tokens=False),
                        "decode_skip": tok.decode(ids, skip_special_tokens=True)})
        except BaseException:  # see gen()
            pass
    return out


def byte_token_ids(tok, n_vocab):
    """Ids whose decode alone is not whole UTF-8: <0xNN> tokens, or byte-level pieces of multibyte chars."""
    ids = []
    for b in range(256):
        i = tok.token_to_id("<0x%02X>" % b)
        if i is not None:
            ids.append(i)
    if not ids:  # byte-level: single mapped chars of bytes >= 0x80
        bs = list(range(ord("!"), ord("~") + 1)) + list(range(0xA1, 0xAD)) + list(range(0xAE, 0x100))
        cs = bs[:]
        n = 0
        for b in range(256):
            if b not in bs:
                bs.append(b)
                cs.append(256 + n)
                n += 1
        m = dict(zip(bs, cs))
        for b in range(0x80, 0x100):
            i = tok.token_to_id(chr(m[b]))
            if i is not None:
                ids.append(i)
    return ids


def transformers_ids(path, strings):
    try:
        from transformers import AutoTokenizer
        t = AutoTokenizer.from_pretrained(path)
        return {"class": type(t).__name__,
                "ids_special": [t.encode(s, add_special_tokens=True) for s in strings]}
    except Exception as e:  # reference only; never fatal
        return {"error": "%s: %s" % (type(e).__name__, e)}


def gen(tokdir, outdir, name):
    variant = VARIANTS.get(name)
    path = os.path.join(tokdir, variant["base"] if variant else name)
    with open(os.path.join(path, "tokenizer.json"), encoding="utf-8") as f:
        spec = json.load(f)
    if variant:
        spec = apply_variant(spec, variant)
        try:
            tok = Tokenizer.from_str(json.dumps(spec))
        except Exception as e:
            print("%s: HF refuses the variant: %s" % (name, e), flush=True)
            return
    else:
        tok = Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
    rng = random.Random(1234 + (NAMES + list(VARIANTS)).index(name))
    added_contents = [a["content"] for a in spec.get("added_tokens", [])]
    strings = make_strings(added_contents, rng)
    if variant:
        strings = VARIANT_STRINGS + strings
    cases = []
    for s in strings:
        try:
            ids = tok.encode(s, add_special_tokens=False).ids
            ids_sp = tok.encode(s, add_special_tokens=True).ids
            cases.append({"text": s, "ids": ids, "ids_special": ids_sp,
                          "decode": tok.decode(ids_sp, skip_special_tokens=False),
                          "decode_skip": tok.decode(ids_sp, skip_special_tokens=True)})
        except BaseException as e:  # HF panics on some settings (Strip stop > token length); no reference then
            print("%s: HF fails on %r: %s" % (name, s[:40], str(e)[:80]), flush=True)
    raw = []
    for b in RAW_BYTES:
        s = b.decode("utf-8", "replace")
        raw.append({"hex": b.hex(), "ids": tok.encode(s, add_special_tokens=False).ids})
    n_vocab = tok.get_vocab_size(with_added_tokens=True)
    special_ids = sorted({tok.token_to_id(a["content"]) for a in spec.get("added_tokens", [])
                          if a.get("special")} - {None})
    dec = decode_cases(tok, rng, n_vocab, special_ids, byte_token_ids(tok, n_vocab))
    added = [[c, tok.token_to_id(c)] for c in added_contents]
    tf = {} if variant else transformers_ids(path, strings[:40])
    fx = {"tokenizer": name, "tokenizers_version": tokenizers.__version__,
          "vocab_size": n_vocab, "added": added, "cases": cases, "raw_bytes": raw,
          "decode_cases": dec, "transformers": tf}
    if variant:
        fx["base"] = variant["base"]
        fx["patch"] = variant.get("patch", {})
        fx["added_patch"] = variant.get("added_patch", [])
    os.makedirs(outdir, exist_ok=True)
    with open(os.path.join(outdir, name + ".json"), "w", encoding="utf-8") as f:
        json.dump(fx, f, ensure_ascii=False, separators=(",", ":"))
    print("%s: %d strings, %d decode cases, vocab %d, transformers %s" % (
        name, len(cases), len(dec), n_vocab, tf.get("class", tf.get("error"))), flush=True)


def bench(tokdir, text_path, names):
    text = open(text_path, encoding="utf-8").read()
    nbytes = len(text.encode())
    for name in names:
        p = os.path.join(tokdir, name, "tokenizer.json")
        loads = []
        for _ in range(3):
            t0 = time.perf_counter()
            tok = Tokenizer.from_file(p)
            loads.append(time.perf_counter() - t0)
        tok.encode(text)  # warm the word cache, as the C bench does
        reps, t0 = 0, time.perf_counter()
        while True:
            tok.encode(text, add_special_tokens=False)
            reps += 1
            el = time.perf_counter() - t0
            if el > 2.0:
                break
        ntok = len(tok.encode(text, add_special_tokens=False).ids)
        print("hf-bench %-12s load %7.1f ms  encode %6.2f MB/s  (%d tokens, %d bytes x %d)" % (
            name, 1e3 * min(loads), nbytes * reps / el / 1e6, ntok, nbytes, reps), flush=True)


def main():
    args = sys.argv[1:]
    bench_text = None
    if "--bench" in args:
        i = args.index("--bench")
        bench_text = args[i + 1]
        del args[i:i + 2]
    if len(args) < 2:
        print(__doc__, file=sys.stderr)
        return 2
    tokdir, outdir = args[0], args[1]
    names = args[2:] or [n for n in NAMES if os.path.exists(os.path.join(tokdir, n, "tokenizer.json"))]
    variants = [v for v in VARIANTS if VARIANTS[v]["base"] in names] if not args[2:] else []
    print("tokenizers", tokenizers.__version__, flush=True)
    for n in names + variants:
        gen(tokdir, outdir, n)
    if bench_text:
        bench(tokdir, bench_text, [n for n in names if n not in VARIANTS])
    return 0


if __name__ == "__main__":
    sys.exit(main())
