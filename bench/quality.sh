#!/usr/bin/env bash
# bench/quality.sh — what quantization costs in quality: perplexity of the
# bundled models on the held-out text (tests/bundled/heldout.txt) at their
# stored bf16, quantized by `moe quantize` to 8 and 4 bits (group 64), and with
# an 8-bit and a 4-bit KV cache; each figure with its ratio to bf16.
# usage: bench/quality.sh [MOE=build/moe] [TEXT=tests/bundled/heldout.txt]
set -euo pipefail
cd "$(dirname "$0")/.."
moe=${1:-build/moe}; text=${2:-tests/bundled/heldout.txt}
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
ppl() { "$moe" perplexity "$@" -f "$text" 2>/dev/null | sed -n 's/.*perplexity[^0-9]*\([0-9.]*\).*/\1/p' | tail -1; }
printf '%-14s %-22s %10s %8s\n' model variant perplexity vs_bf16
for m in tiny-mixtral tiny-qwen-moe tiny-qwen-next; do
  for b in 8 4; do "$moe" quantize -m "models/$m" -o "$tmp/$m-q$b" --bits "$b" --group-size 64 >/dev/null 2>&1; done
  base=$(ppl -m "models/$m")
  row() { printf '%-14s %-22s %10s %8s\n' "$m" "$1" "$2" "$(python3 -c "print('%.4f' % ($2 / $base))")"; }
  row "bf16" "$base"
  row "8-bit g64" "$(ppl -m "$tmp/$m-q8")"
  row "4-bit g64" "$(ppl -m "$tmp/$m-q4")"
  row "bf16, kv 8-bit" "$(ppl -m "models/$m" --kv-bits 8)"
  row "bf16, kv 4-bit" "$(ppl -m "models/$m" --kv-bits 4 || echo nan)"
  row "4-bit g64, kv 8-bit" "$(ppl -m "$tmp/$m-q4" --kv-bits 8)"
done
