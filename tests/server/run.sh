#!/usr/bin/env bash
# run.sh MOE REPO CLIENTS WORK — runs server_test.js against the moe binary
# MOE with the API clients in CLIENTS/node_modules (fetch_clients.sh).
# Exit status 77 (ctest: skipped) when node or npm is not installed.
set -u
moe=$1 repo=$2 clients=$3 work=$4
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  echo "SKIP: node and npm are needed to drive moe serve with the openai and @anthropic-ai/sdk clients (tools/deps.sh --test installs them)"
  exit 77
fi
if [ ! -d "$clients/node_modules/openai" ] || [ ! -d "$clients/node_modules/@anthropic-ai/sdk" ]; then
  echo "FAIL: the API clients are not in $clients/node_modules (the server_clients test fetches them)"
  exit 1
fi
mkdir -p "$work"
NODE_PATH="$clients/node_modules" exec node "$(dirname "$0")/server_test.js" "$moe" "$repo" "$work"
