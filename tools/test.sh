#!/usr/bin/env bash
# tools/test.sh — the whole test suite: installs what the build needs, builds
# with -Wall -Wextra -Werror and runs every test; cross-builds the NEON
# kernels' test for AArch64 and runs it under qemu (tools/test_neon.sh);
# fuzzes the file parsers briefly (MOE_FUZZ_SECONDS, default 30; 0 skips);
# compiles the CUDA backend (Debian's CUDA toolkit; no GPU needed);
# then builds and runs every test again under AddressSanitizer +
# UndefinedBehaviorSanitizer.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/deps.sh --test
jobs=$(nproc)

echo "== release build and tests"
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release -DCMAKE_C_FLAGS=-Werror >/dev/null
cmake --build build -j"$jobs"
ctest --test-dir build --output-on-failure -j"$jobs"

echo "== NEON kernels under qemu-aarch64"
bash tools/test_neon.sh

secs=${MOE_FUZZ_SECONDS:-30}
if [ "$secs" != 0 ]; then
  echo "== libFuzzer on the safetensors and config parsers, ${secs}s each"
  bash tools/deps.sh --fuzz
  bash fuzz/run.sh "$secs"
fi

echo "== the CUDA backend: compiled for sm_80 and sm_90 (its tests skip without a GPU)"
bash tools/deps.sh --cuda
cmake -S . -B build-cuda -DCMAKE_BUILD_TYPE=Release -DMOE_CUDA_REQUIRED=ON -DCMAKE_C_FLAGS=-Werror >/dev/null
cmake --build build-cuda -j"$jobs" --target moe_cli test_cuda_golden test_cuda_offload test_cuda_mm test_cuda_ops bench_cuda_mm cuda_membw
ctest --test-dir build-cuda -L cuda --output-on-failure -j"$jobs"

echo "== AddressSanitizer + UndefinedBehaviorSanitizer build and tests"
cmake -S . -B build-asan -DCMAKE_BUILD_TYPE=Debug -DMOE_SANITIZE=ON -DMOE_CUDA=OFF -DCMAKE_C_FLAGS="-O1 -Werror" >/dev/null
cmake --build build-asan -j"$jobs"
ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
  ctest --test-dir build-asan --output-on-failure -j"$jobs"
