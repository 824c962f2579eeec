#!/usr/bin/env bash
# bench/cuda.sh — the CUDA backend on the GPU machine, in one sitting: builds,
# runs the cuda-labelled tests, measures the GPU's read bandwidth
# (cuda_membw), writes synthetic models of real shapes (moe synth) and runs
# `moe bench --device cuda` on each, printing one JSON line per run with the
# decode speed as a fraction of the bandwidth roofline.
# usage: bench/cuda.sh [OUT_DIR] [SHAPES="mistral-7b:bf16 mistral-7b:q4 mixtral-8x7b:q4"]
# (MOE_BENCH_DIR: where models are written, default /tmp/moe-cuda-bench;
#  MOE_BIN: binaries made by tools/gpu_bundle.sh, run as they are instead of building here)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp/moe-cuda-out}; mkdir -p "$out"
shapes=${2:-"mistral-7b:bf16 mistral-7b:q4 mixtral-8x7b:q4"}
dir=${MOE_BENCH_DIR:-/tmp/moe-cuda-bench}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$out/gpu.txt"
if [ -z "${MOE_BIN:-}" ]; then
  cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DMOE_CUDA_REQUIRED=ON -DMOE_CUDA_ARCHS=90 >/dev/null
  cmake --build build-gpu -j"$(nproc)" >"$out/build.log" 2>&1 || { tail -40 "$out/build.log"; exit 1; }
  bin=build-gpu; tbin=build-gpu/tests
else
  bin=$MOE_BIN; tbin=$MOE_BIN
  export LD_LIBRARY_PATH="$MOE_BIN/../lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
echo "== cuda tests"
fixtures=$(for d in tests/golden/* tests/golden-quant/*; do if [ -f "$d/golden.json" ]; then echo "$d"; fi; done)
for t in "$tbin/test_cuda_mm" "$tbin/test_cuda_ops" "$tbin/test_cuda_golden 0.08 1e-4 0.1 $fixtures"; do
  log=$out/$(basename "${t%% *}").log
  $t >"$log" 2>&1 && echo "pass: ${t%% *}: $(tail -1 "$log")" || { echo "FAIL: ${t%% *}"; tail -30 "$log"; }
done
echo "== the CLI on the GPU: greedy tokens as on the CPU"
for d in tests/golden/mixtral-top2 tests/golden/qwen3next tests/golden-quant/mistral-q4-g64-tied; do
  # float32 on both sides (the int8-input decodes of the two differ in rounding, and tiny models' argmax gaps are tiny)
  a=$(MOE_ISA=avx2 "$bin/moe" generate -m "$d/model" --tokens 1,2,3,4,5 -n 24 --temp 0 --device cpu 2>/dev/null)
  b=$(MOE_CUDA_FLOAT_DECODE=1 "$bin/moe" generate -m "$d/model" --tokens 1,2,3,4,5 -n 24 --temp 0 --device cuda 2>/dev/null)
  [ -n "$a" ] && [ "$a" = "$b" ] && echo "same: $d: $b" || echo "DIFFERENT: $d: cpu [$a] cuda [$b]"
done
bw=$("$bin/cuda_membw" 4096 20 | sed 's/.*"read_gbps": \([0-9.]*\).*/\1/')
echo "GPU read bandwidth: $bw GB/s"
for s in $shapes; do
  like=${s%%:*}; dt=${s##*:}
  m=$dir/$like-$dt
  if [ ! -f "$m/config.json" ]; then
    mkdir -p "$dir"
    case $dt in q*) extra=(--bits "${dt#q}") ;; *) extra=(--dtype "$dt") ;; esac
    "$bin/moe" synth --like "$like" "${extra[@]}" -o "$m" >/dev/null
  fi
  for p in 512 4096; do
    res=$("$bin/moe" bench -m "$m" --device cuda -p "$p" -b "$p" -n 128 -r 3 --json) || { echo "$like $dt: bench failed"; continue; }
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
