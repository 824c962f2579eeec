#!/usr/bin/env bash
# tools/gpu_bundle.sh — builds the CUDA-enabled binaries here (nvcc, sm_90) and
# gathers them, with the shared libraries a bare GPU machine may lack
# (libutf8proc, libmicrohttpd, libjansson, libpcre2-8), into one folder that
# can be copied to that machine and run there without building:
#   DIR/bin/{moe,test_cuda_golden,test_cuda_offload,test_cuda_mm,test_cuda_ops,cuda_membw,bench_cuda_mm}
#   DIR/lib/*.so.*      (run with LD_LIBRARY_PATH=DIR/lib)
# usage: tools/gpu_bundle.sh DIR
set -euo pipefail
cd "$(dirname "$0")/.."
dir=${1:?usage: tools/gpu_bundle.sh DIR}
cmake -S . -B build-gpu -DCMAKE_BUILD_TYPE=Release -DMOE_CUDA_REQUIRED=ON -DMOE_CUDA_ARCHS=90 >/dev/null
cmake --build build-gpu -j"$(nproc)" --target moe_cli test_cuda_golden test_cuda_offload test_cuda_mm test_cuda_ops cuda_membw bench_cuda_mm
rm -rf "$dir"; mkdir -p "$dir/bin" "$dir/lib"
cp build-gpu/moe build-gpu/cuda_membw build-gpu/bench_cuda_mm "$dir/bin/"
cp build-gpu/tests/test_cuda_golden build-gpu/tests/test_cuda_offload build-gpu/tests/test_cuda_mm build-gpu/tests/test_cuda_ops "$dir/bin/"
for lib in $(ldd build-gpu/moe | awk '/utf8proc|microhttpd|jansson|pcre2-8/ {print $3}'); do cp -L "$lib" "$dir/lib/"; done
du -sh "$dir"
