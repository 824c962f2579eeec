#!/usr/bin/env bash
# bench/offload_quality.sh — perplexity against the expert cache's capacity on a
# bundled MoE model: 100%, 75%, 50%, 25% and 12.5% of each layer's experts
# resident, with --miss exact (equal to a full load at every capacity, only
# slower) and --miss skip (missing experts dropped: the degradation), skip also
# with a profile pinning half the capacity. The profile is made from the first
# half of the held-out text and the perplexity measured on the whole of it.
# Prints one line per run: policy, capacity, perplexity, experts skipped (a
# batch's distinct experts dropped; the cache starts empty, so skip drops
# experts even at full capacity until they have been read).
# usage: bench/offload_quality.sh [MODEL=models/tiny-qwen-moe] [CTX=512]
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-models/tiny-qwen-moe}; ctx=${2:-512}
text=tests/bundled/heldout.txt
[ -x build/moe ] || { cmake -S . -B build >/dev/null && cmake --build build -j"$(nproc)" >/dev/null; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
E=$(python3 -c "import json,sys; c=json.load(open(sys.argv[1]+'/config.json')); print(c.get('num_experts') or c.get('num_local_experts'))" "$model")
head -c $(( $(wc -c <"$text") / 2 )) "$text" >"$work/calib.txt"
build/moe profile -m "$model" -f "$work/calib.txt" -o "$work/profile.json" --ctx "$ctx" >/dev/null 2>&1

ppl() { # ARGS... -> "perplexity skipped"
  local out
  out=$(build/moe perplexity -m "$model" -f "$text" --ctx "$ctx" --cache-dir "$work/cache" --no-warm --stats "$@" 2>&1)
  local p s
  p=$(echo "$out" | tr '\r' '\n' | sed -n 's/^perplexity \([0-9.]*\) over.*/\1/p')
  s=$(echo "$out" | awk '$1 == "total" {print $4}')
  echo "$p ${s:-0}"
}

echo "full load: $(ppl --no-offload | cut -d' ' -f1)"
for frac in 1 0.75 0.5 0.25 0.125; do
  cap=$(python3 -c "print(max(1, round($E * $frac)))")
  echo "exact  capacity $cap/$E: $(ppl --capacity "$cap" --miss exact)"
  echo "skip   capacity $cap/$E: $(ppl --capacity "$cap" --miss skip)"
  echo "skip+profile capacity $cap/$E: $(ppl --capacity "$cap" --miss skip --profile "$work/profile.json")"
done
