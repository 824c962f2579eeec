#!/usr/bin/env bash
# bench/serve.sh MODEL_DIR PARALLEL "CLIENTS..." [SECONDS] [MAX_TOKENS] [extra moe serve flags...]
# Starts build/moe serve (MOE=path overrides) on MODEL_DIR with --parallel
# PARALLEL on a free port, runs bench/serve_load.js once per client count
# (completions, a fresh prompt per request, MAX_TOKENS each, SECONDS long),
# prints one JSON line each, then the server's /metrics summary, and stops it.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
moe=${MOE:-$here/../build/moe}
model=$1 parallel=$2 clients=$3 secs=${4:-20} maxtok=${5:-64}
shift $(( $# < 5 ? $# : 5 ))
log=$(mktemp)
"$moe" serve -m "$model" --port 0 --parallel "$parallel" "$@" 2>"$log" &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null; rm -f "$log"' EXIT
for _ in $(seq 600); do grep -q "listening on" "$log" && break; sleep 0.1; done
port=$(grep -o "listening on http://[^ ]*" "$log" | grep -o "[0-9]*$")
head -n 1 "$log"
for c in $clients; do
  node "$here/serve_load.js" --port "$port" --clients "$c" --seconds "$secs" --max-tokens "$maxtok"
done
curl -s "localhost:$port/metrics" | grep -E "^moe_(generation_tokens_total|decode_rounds_total|prompt_tokens_processed_total|generation_tokens_per_second|prompt_tokens_per_second) "
