#!/usr/bin/env bash
# fuzz/make_xstore_corpus.sh [MOE] — writes fuzz_xstore's seed corpus
# (fuzz/corpus/xstore/) from a pack of tests/golden-quant/mixtral-q4-g32/model
# that MOE (default build/moe) writes: inputs as fuzz_xstore.c reads them,
# [flags] [layer] [expert] [image], with the pack's header (its first 4096
# bytes) as the image. The files are committed; re-run after a format change.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
moe=${1:-$root/build/moe}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
pack=$("$moe" pack -m "$root/tests/golden-quant/mixtral-q4-g32/model" -o "$tmp" 2>/dev/null | head -n 1)
out=$root/fuzz/corpus/xstore
rm -rf "$out"
mkdir -p "$out"
seed() { # name flags layer expert [header]
  { printf "\\x$2\\x$3\\x$4"; if [ -n "${5:-}" ]; then head -c 4096 "$pack"; fi; } >"$out/$1"
}
seed valid-pack 02 01 05             # nothing laid over the valid pack: opens, reads
seed header-resealed 03 00 07 header # the header again, resealed
seed header-cut 07 02 03 header      # resealed, then cut while open
seed header-alone 00 01 00 header    # the header without records: truncated
ls -l "$out"
