#!/usr/bin/env bash
# bench/roofline.sh — generation speed against the memory-read roofline, in one
# sitting: measures read bandwidth (bench/membw), writes (once) a synthetic
# model of a real shape, runs `moe bench`, and prints the ratio
#   achieved tok/s  /  (bandwidth / bytes of weights read per token).
# usage: bench/roofline.sh [LIKE=mistral-7b] [LAYERS=all] [DTYPE=bf16|f16|f32|q4|q8] [PROMPT=64] [GEN=16]
# (q4, q8: MLX affine 4/8-bit, group 64, as `moe synth --bits` writes them)
set -euo pipefail
cd "$(dirname "$0")/.."
like=${1:-mistral-7b}; layers=${2:-all}; dtype=${3:-bf16}; np=${4:-64}; ng=${5:-16}
dir=${MOE_BENCH_DIR:-$HOME/.cache/moe-bench}/$like-$layers-$dtype
[ -x build/moe ] && [ -x build/membw ] || { cmake -S . -B build >/dev/null && cmake --build build -j"$(nproc)" >/dev/null; }
if [ ! -f "$dir/config.json" ]; then
  mkdir -p "$(dirname "$dir")"
  extra=(); [ "$layers" = all ] || extra=(--layers "$layers")
  case $dtype in q*) extra+=(--bits "${dtype#q}") ;; *) extra+=(--dtype "$dtype") ;; esac
  build/moe synth --like "$like" "${extra[@]}" -o "$dir"
fi
cat "$dir"/*.safetensors >/dev/null  # into the page cache, so the first run reads memory, not disk
bw=$(build/membw 1024 "$(nproc)" 5 | sed 's/.*"read_gbps": \([0-9.]*\).*/\1/')
res=$(build/moe bench -m "$dir" -p "$np" -n "$ng" -r 3 --json)
bw2=$(build/membw 1024 "$(nproc)" 5 | sed 's/.*"read_gbps": \([0-9.]*\).*/\1/')
python3 - "$bw" "$bw2" "$res" <<'PY' 2>/dev/null || echo "{\"membw_gbps\": [$bw, $bw2], \"moe\": $res}"
import json, sys
bw = max(float(sys.argv[1]), float(sys.argv[2])); r = json.loads(sys.argv[3])
roof = bw * 1e9 / r["bytes_per_token"]
print(json.dumps({"model": r["model"], "membw_gbps": [float(sys.argv[1]), float(sys.argv[2])],
                  "bytes_per_token": r["bytes_per_token"], "roofline_tps": round(roof, 3),
                  "gen_tps": r["gen_tps"], "gen_vs_roofline": round(r["gen_tps"] / roof, 3),
                  "prompt_tps": r["prompt_tps"], "ttft_ms": r["ttft_ms"], "peak_rss_mb": r["peak_rss_mb"]}))
PY
