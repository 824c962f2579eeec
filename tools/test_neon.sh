#!/usr/bin/env bash
# tools/test_neon.sh — the NEON (AArch64) kernels, built and tested under
# emulation on an x86-64 Debian host. Cross-compiles tests/test_kernels.c
# with the CPU backend (kernels_neon.c and the scalar reference) for
# aarch64, statically so qemu needs no arm64 libraries, and runs it under
# qemu-aarch64: every NEON kernel (matmul of every format, bit width, group
# size and scale format, decode and prompt; dot, axpy; the quantized KV
# kernels) against the scalar reference, the half-precision converters
# against AArch64's FCVT, and the choice of table (auto and MOE_ISA=neon or
# scalar work, x86 names are refused). This is what CI runs (tools/test.sh).
#
# --golden also builds the whole project for aarch64 through CMake
# (cmake/aarch64-linux-gnu.cmake) against an arm64 Debian root holding the
# library's dependencies (made once with debootstrap, which needs root and
# the Debian package registry; MOE_ARM64_ROOT, default /tmp/moe-arm64-root)
# and runs the golden tests under qemu: the forward pass on the NEON kernels
# against transformers' logits. Tests that start the moe command from a
# script (cli_*, bundled_*, quantize_golden_*) are left out: without
# binfmt_misc the host cannot start an arm64 program by itself.
#
# A failure exits non-zero with "NEON kernels: FAILED".
#   usage: tools/test_neon.sh [--no-install] [--golden]
#   --no-install  use the cross compiler and qemu already there
#                 (otherwise tools/deps.sh --neon installs them)
# Output: build-aarch64/test_kernels; with --golden, build-aarch64/cmake/.
set -euo pipefail
cd "$(dirname "$0")/.."
install=1 golden=0
for opt in "$@"; do
  case $opt in
    --no-install) install=0 ;;
    --golden) golden=1 ;;
    *) echo "usage: tools/test_neon.sh [--no-install] [--golden]" >&2; exit 2 ;;
  esac
done
[ "$install" = 1 ] && bash tools/deps.sh --neon
trap 'echo "NEON kernels: FAILED" >&2' ERR

# kernels_amx.c is the AMX stub off x86-64; backend.c dispatches the operations, delta.c
# holds the CPU's DeltaNet ones (in its table); err.c and pool.c are what backend_cpu.c uses
srcs=(tests/test_kernels.c src/backend/backend.c src/backend/cpu/backend_cpu.c src/backend/cpu/delta.c
      src/backend/cpu/kernels_scalar.c src/backend/cpu/kernels_neon.c src/backend/cpu/kernels_amx.c
      src/base/err.c src/base/pool.c)
mkdir -p build-aarch64
aarch64-linux-gnu-gcc -std=gnu11 -O2 -Wall -Wextra -Werror -Iinclude -static -pthread \
  -o build-aarch64/test_kernels "${srcs[@]}" -lm
qemu-aarch64 build-aarch64/test_kernels

if [ "$golden" = 1 ]; then
  root=${MOE_ARM64_ROOT:-/tmp/moe-arm64-root}
  if [ ! -f "$root/usr/include/jansson.h" ]; then
    echo "-- an arm64 root with the library's dependencies in $root"
    # --foreign only downloads and unpacks the base; the packages are unpacked by hand (no arm64 code runs)
    debootstrap --foreign --arch=arm64 --variant=minbase \
      --include=libjansson-dev,libpcre2-dev,libutf8proc-dev,libmicrohttpd-dev bookworm "$root" >/dev/null
    for d in "$root"/var/cache/apt/archives/*.deb; do dpkg-deb -x "$d" "$root"; done
  fi
  echo "-- the whole build for aarch64; golden tests under qemu"
  cmake -S . -B build-aarch64/cmake -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake -DCMAKE_SYSROOT="$root" -DMOE_CUDA=OFF \
    -DCMAKE_BUILD_TYPE=Release -DCMAKE_C_FLAGS=-Werror >/dev/null
  cmake --build build-aarch64/cmake -j"$(nproc)"
  ctest --test-dir build-aarch64/cmake -L golden -E '^(cli_|bundled_|quantize_golden)' --output-on-failure -j"$(nproc)"
fi
echo "NEON kernels: passed"
