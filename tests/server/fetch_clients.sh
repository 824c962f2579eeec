#!/usr/bin/env bash
# fetch_clients.sh DEST — the official API clients the server tests drive
# moe serve with: the npm packages `openai` and `@anthropic-ai/sdk` (versions
# without dependencies, pinned below).
#
# As tools/fetch_tokenizers.sh (both through tools/npm_pack.sh): each package
# is fetched once with `npm pack` (no dependencies, no install scripts) into a cache,
# ${MOE_NPM_CACHE:-$HOME/.cache/moe-npm}, and unpacked there; DEST/node_modules
# then gets links to them (NODE_PATH=DEST/node_modules). Nothing goes into the
# repository. Running it again with everything cached asks nothing of the
# network.
# Exit status: 0 when both clients are in DEST; 77 (skip) when npm is not
# installed; 1 (with a message) when they cannot be had.
set -euo pipefail

PKGS=${MOE_SERVER_CLIENTS:-"openai@6.30.1 @anthropic-ai/sdk@0.62.0"}

if [ $# -ne 1 ]; then
    echo "usage: $0 DEST" >&2
    exit 2
fi
dest=$1
cache=${MOE_NPM_CACHE:-$HOME/.cache/moe-npm}
mkdir -p "$dest/node_modules" "$cache"

for spec in $PKGS; do
    name=${spec%@*}            # openai, @anthropic-ai/sdk
    version=${spec##*@}
    dir="$cache/${name//\//+}-$version"
    rc=0
    bash "$(dirname "$0")/../../tools/npm_pack.sh" "$spec" "$dir" || rc=$?
    if [ "$rc" -eq 77 ]; then
        echo "fetch_clients: SKIP: npm is not installed (tools/deps.sh --test installs it); the server tests need $spec"
        exit 77
    fi
    [ "$rc" -eq 0 ] || exit 1
    mkdir -p "$(dirname "$dest/node_modules/$name")"
    ln -sfn "$dir" "$dest/node_modules/$name"
done
echo "fetch_clients: $PKGS in $dest/node_modules (cache $cache)"
