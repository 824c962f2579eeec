#!/usr/bin/env bash
# tools/peer_cuda_bench.sh — on the GPU machine: builds llama.cpp's CUDA
# llama-bench from the tarball tools/peer_cuda_pack.sh made (sm_90, outside
# the repository), writes synthetic Q4_0 GGUFs of the Mistral-7B and
# Mixtral-8x7B shapes (../shared/peer's gguf_synth.py) and times them fully
# offloaded: prompt 512 and 4096, decode 128, 3 runs, JSON per shape in OUT.
# The steps can run as separate commands (the build takes minutes).
# PEER_NCMOE="32 16": MoE shapes are also timed with that many layers' experts
# left in host memory (--n-cpu-moe), decode 32 and prompt 512, for the
# offloading side-by-side.
# usage: tools/peer_cuda_bench.sh PEER_TGZ OUT [build|bench|all] [SHAPES]
set -euo pipefail
tgz=$1 out=$2 step=${3:-all} shapes=${4:-"mistral-7b mixtral-8x7b"}
w=${MOE_PEER_DIR:-/tmp/moe-peer-cuda}
mkdir -p "$w" "$out"
if [ "$step" != bench ]; then
  tar xzf "$tgz" -C "$w"
  cmake -S "$w/llama.cpp" -B "$w/build" -DCMAKE_BUILD_TYPE=Release -DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90 \
    -DGGML_NATIVE=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
    -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_APP=OFF >"$out/cmake.log" 2>&1 || { tail -30 "$out/cmake.log"; exit 1; }
  cmake --build "$w/build" -j"$(nproc)" --target llama-bench >"$out/build.log" 2>&1 || { tail -30 "$out/build.log"; exit 1; }
  echo "built: $(ls "$w"/build/bin/llama-bench)"
fi
if [ "$step" != build ]; then
  for s in $shapes; do
    g=$w/$s-q4_0.gguf
    [ -f "$g" ] || python3 "$w/peer/gguf_synth.py" "$s" q4_0 "$g" "$w/peer/tokenizer.json" >/dev/null
    runs=("full:-p 512,4096 -n 128")
    case $s in mixtral*) for k in ${PEER_NCMOE:-}; do runs+=("ncmoe$k:-p 512 -n 32 -ncmoe $k"); done ;; esac
    for r in "${runs[@]}"; do
      tag=${r%%:*}
      # shellcheck disable=SC2086
      "$w/build/bin/llama-bench" -m "$g" -ngl 99 ${r#*:} -r 3 -o json >"$out/$s-$tag.json" 2>"$out/$s-$tag.err" ||
        { tail -20 "$out/$s-$tag.err"; continue; }
      python3 - "$out/$s-$tag.json" "$s" "$tag" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1])):
    kind = "decode" if r["n_gen"] else "prompt %d" % r["n_prompt"]
    print("%s q4_0 %s %s: %.1f tok/s (+- %.1f)" % (sys.argv[2], sys.argv[3], kind, r["avg_ts"], r["stddev_ts"]))
PY
    done
  done
fi
