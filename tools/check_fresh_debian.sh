#!/usr/bin/env bash
# tools/check_fresh_debian.sh — tries the README's quick start on a fresh
# Debian 12 root made with debootstrap (needs root and the Debian package
# registry): only the base toolchain (gcc, make, cmake, git) is installed,
# then the two quick-start commands run in a clean clone of this repository.
# usage: tools/check_fresh_debian.sh [ROOT=/tmp/moe-fresh-debian]
set -euo pipefail
root=${1:-/tmp/moe-fresh-debian}
repo=$(cd "$(dirname "$0")/.." && pwd)
[ -x "$root/bin/bash" ] || debootstrap --variant=minbase bookworm "$root"
mountpoint -q "$root/proc" || mount -t proc proc "$root/proc"
mountpoint -q "$root/dev" || mount --bind /dev "$root/dev"
trap 'umount "$root/proc" "$root/dev" 2>/dev/null || true' EXIT
cp /etc/resolv.conf "$root/etc/resolv.conf"
# Where this machine reaches the registries through a TLS proxy with its own CA
# (npm's cafile is set here), give the fresh root the same trust, as its own
# machine would have it.
cafile=$(npm config get cafile 2>/dev/null || true)
if [ -n "$cafile" ] && [ "$cafile" != null ] && [ -f "$cafile" ]; then
  mkdir -p "$root/etc/moe-ca"
  cp "$cafile" "$root/etc/moe-ca/ca.crt"
  echo "cafile=/etc/moe-ca/ca.crt" > "$root/etc/npmrc"
fi
chroot "$root" bash -c 'export DEBIAN_FRONTEND=noninteractive; apt-get update -qq && apt-get install -y -qq gcc make cmake git >/dev/null'
rm -rf "$root/root/moe"
git clone -q "$repo" "$root/root/moe"
chroot "$root" bash -c 'cd /root/moe && bash tools/setup.sh && bash tools/test.sh'
