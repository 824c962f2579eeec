#!/usr/bin/env bash
# bench/offload.sh — a MoE model larger than memory, offloaded, in one sitting:
#   1. writes (once) `moe synth --like LIKE --bits 4` (skewed routers);
#   2. the disk's sequential read bandwidth past the page cache (dd iflag=direct
#      over the expert store), the bound for reading experts;
#   3. start-up: cold (no store: built now), packed (store, no saved state),
#      warm (the last run's resident experts preloaded): load time and time to
#      first token after launch;
#   4. generation under a memory budget: the expert cache (exact, LFU, prefetch),
#      the same with --miss skip, the no-cache baseline (--capacity 0: every
#      expert read when used) and plain mmap of the whole model (--no-offload);
#      tok/s, hit rate, MB read per token, read GB/s, peak RSS.
# Each run is one `moe bench --json` line, printed as it finishes.
# usage: bench/offload.sh [LIKE=mixtral-8x7b] [EXPERT_MEM=8G] [PROMPT=16] [GEN=16]
# MOE_BENCH_DIR (default ~/.cache/moe-bench) holds the model; the store goes to
# $MOE_BENCH_DIR/cache. SKIP_MMAP=1 leaves out the mmap baseline (slow when the
# model is much larger than memory).
set -euo pipefail
cd "$(dirname "$0")/.."
like=${1:-mixtral-8x7b}; mem=${2:-8G}; np=${3:-16}; ng=${4:-16}
root=${MOE_BENCH_DIR:-$HOME/.cache/moe-bench}
dir=$root/$like-all-q4
cache=$root/cache
[ -x build/moe ] || { cmake -S . -B build >/dev/null && cmake --build build -j"$(nproc)" >/dev/null; }
if [ ! -f "$dir/config.json" ]; then
  mkdir -p "$root"
  build/moe synth --like "$like" --bits 4 -o "$dir"
fi
echo "model: $dir ($(du -sh "$dir" | cut -f1)), memory: $(free -g | awk '/Mem:/{print $2}') GiB, expert budget $mem"

run() { # NAME ARGS...
  local name=$1; shift
  echo "== $name: moe bench $*" >&2
  local out
  out=$(build/moe bench -m "$dir" -p "$np" -n "$ng" -r 1 --json --cache-dir "$cache" "$@")
  echo "{\"run\": \"$name\", \"moe\": $out}"
}

# start-up: cold builds the store, packed starts empty, warm preloads
sdir=$(ls -d "$cache"/"$(basename "$dir")"-* 2>/dev/null | head -n 1 || true)
[ -n "$sdir" ] && rm -rf "$sdir"
run cold --expert-mem "$mem" --no-warm
run packed --expert-mem "$mem" --no-warm
run warm-save --expert-mem "$mem"
run warm --expert-mem "$mem"

sdir=$(ls -d "$cache"/"$(basename "$dir")"-* | head -n 1)
echo "== disk: sequential read of the expert store past the page cache" >&2
dd if="$sdir/experts.pack" of=/dev/null bs=8M count=512 iflag=direct 2>&1 | tail -n 1 |
  sed 's/.*copied, \([0-9.]*\) s, \(.*\)/{"run": "disk", "dd_direct": "\2", "seconds": \1}/'

run skip --expert-mem "$mem" --miss skip
run lru --expert-mem "$mem" --evict lru --no-warm
run no-prefetch --expert-mem "$mem" --no-prefetch --no-warm
run no-cache --capacity 0
[ "${SKIP_MMAP:-0}" = 1 ] || run mmap --no-offload
