#!/usr/bin/env bash
# bench/cuda_offload.sh — expert offloading on the GPU: a Mixtral-8x7B-shaped
# 4-bit model (moe synth) run with only part of its experts in GPU memory,
# for the side-by-side with llama.cpp's --n-cpu-moe (tools/peer_cuda_bench.sh,
# PEER_NCMOE). One JSON line per run (moe bench --json: prompt and generation
# tok/s, hit rate, MB read per token) with the setup in front.
# usage: bench/cuda_offload.sh [OUT_DIR] [RUNS="cap:4:auto cap:1:auto cap:4:off"]
#   each run CAP:N:HOST — N experts per layer in GPU memory, --host-experts HOST
# (MOE_BENCH_DIR: where the model is written, default /tmp/moe-cuda-bench;
#  MOE_BIN: binaries made by tools/gpu_bundle.sh, run as they are)
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-/tmp/moe-cuda-out}; mkdir -p "$out"
runs=${2:-"cap:4:auto cap:1:auto cap:4:off"}
dir=${MOE_BENCH_DIR:-/tmp/moe-cuda-bench}
bin=${MOE_BIN:-build-gpu}
[ -n "${MOE_BIN:-}" ] && export LD_LIBRARY_PATH="$MOE_BIN/../lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
m=$dir/mixtral-8x7b-q4
if [ ! -f "$m/config.json" ]; then
  mkdir -p "$dir"
  "$bin/moe" synth --like mixtral-8x7b --bits 4 -o "$m" >/dev/null
fi
for r in $runs; do
  IFS=: read -r _ cap host <<<"$r"
  cache=$(mktemp -d /tmp/moe-offload-cache.XXXXXX)
  res=$("$bin/moe" bench -m "$m" --device cuda --offload --capacity "$cap" --host-experts "$host" --store model \
        --no-warm --cache-dir "$cache" -p 512 -b 512 -n 32 -r 2 --json 2>"$out/offload-$cap-$host.err") ||
    { echo "capacity $cap host $host: bench failed"; tail -5 "$out/offload-$cap-$host.err"; rm -rf "$cache"; continue; }
  rm -rf "$cache"
  echo "{\"capacity\": $cap, \"host_experts\": \"$host\", \"bench\": $res}" | tee -a "$out/offload.jsonl"
done
