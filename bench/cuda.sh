#!/usr/bin/env bash
# bench/cuda.sh — the CUDA backend on the GPU machine, in one sitting: builds,
# runs the cuda-labelled tests, measures the GPU's read bandwidth
# (cuda_membw), writes synthetic models of real shapes (moe synth) and runs
# `moe bench --device cuda` on each, printing one JSON line per run with the
# decode speed as a fraction of the bandwidth roofline.
# usage: bench/cuda.sh [OUT_DIR] [SHAPES="mistral-7b:bf16 mistral-7b:q4 mixtral-8x7b:q4"]
# (MOE_BENCH_DIR: where models are written, default /tmp/moe-cuda-bench)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp/moe-cuda-out}; mkdir -p "$out"
shapes=${2:-"mistral-7b:bf16 mistral-7b:q4 mixtral-8x7b:q4"}
dir=${MOE_BENCH_DIR:-/tmp/moe-cuda-bench}
jobs=$(nproc)
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DMOE_CUDA_REQUIRED=ON -DMOE_CUDA_ARCHS=90 >/dev/null
cmake --build build-gpu -j"$jobs" >"$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 1; }
echo "== cuda tests"
ctest --test-dir build-gpu -L cuda --output-on-failure 2>&1 | tee "$out/tests.log" | tail -40
bw=$(build-gpu/cuda_membw 4096 20 | sed 's/.*"read_gbps": \([0-9.]*\).*/\1/')
echo "GPU read bandwidth: $bw GB/s"
for s in $shapes; do
  like=${s%%:*}; dt=${s##*:}
  m=$dir/$like-$dt
  if [ ! -f "$m/config.json" ]; then
    case $dt in q*) extra=(--bits "${dt#q}") ;; *) extra=(--dtype "$dt") ;; esac
    build-gpu/moe synth --like "$like" "${extra[@]}" -o "$m" >/dev/null
  fi
  for p in 512 4096; do
    res=$(build-gpu/moe bench -m "$m" --device cuda -p "$p" -b "$p" -n 128 -r 3 --json) || { echo "$like $dt: bench failed"; continue; }
    python3 - "$bw" "$res" "$like" "$dt" <<'PY' | tee -a "$out/bench.jsonl"
import json, sys
bw = float(sys.argv[1]); r = json.loads(sys.argv[2])
roof = bw * 1e9 / r["bytes_per_token"]
print(json.dumps({"shape": sys.argv[3], "dtype": sys.argv[4], "prompt_tokens": r["prompt_tokens"],
                  "prompt_tps": r["prompt_tps"], "gen_tps": r["gen_tps"], "roofline_tps": round(roof, 1),
                  "gen_vs_roofline": round(r["gen_tps"] / roof, 3), "ttft_ms": r["ttft_ms"],
                  "bytes_per_token": r["bytes_per_token"], "gpu_read_gbps": bw, "device": r["device"]}))
PY
  done
done
