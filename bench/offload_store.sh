#!/usr/bin/env bash
# bench/offload_store.sh — where offloaded experts are read from: the expert
# pack (a copy in the cache directory, one read an expert) against the
# model's own safetensors files (--store model: no copy, up to 9 reads an
# expert for MLX 4-bit), in one sitting:
#   1. writes (once) `moe synth --like LIKE --bits 4` (skewed routers);
#   2. bench_xstore: N experts in a shuffled order (as a decode's misses come)
#      through each store, with O_DIRECT and buffered (pread, then
#      POSIX_FADV_DONTNEED), 1 and 4 reader threads; the files' pages dropped
#      from the page cache before each run, and the model's resident pages
#      counted after it (fincore), so what a store leaves behind shows;
#   3. moe bench at the same --expert-mem: pack and model, cold (--no-warm)
#      and warm, in the order pack, model, model, pack (so that a drift in
#      the machine's load shows as a difference between the two of a kind);
#      the model store buffered too. One JSON line a run.
# usage: bench/offload_store.sh [LIKE=qwen3-30b-a3b] [EXPERT_MEM=8G] [PROMPT=16] [GEN=32] [N=2000]
# MOE_BENCH_DIR (default ~/.cache/moe-bench) holds the model and, in
# store-cache/, the pack (about the model's size: check `df` first). Run it
# on a quiet machine (`uptime` load < 1): the reads and the decode share it.
# MOE_BUILD: the build directory (default build; configured and built if missing).
# ONLY=reads or ONLY=decode runs only step 2 or step 3.
set -euo pipefail
cd "$(dirname "$0")/.."
like=${1:-qwen3-30b-a3b}; mem=${2:-8G}; np=${3:-16}; ng=${4:-32}; n=${5:-2000}
root=${MOE_BENCH_DIR:-$HOME/.cache/moe-bench}
dir=$root/store-$like-q4
cache=$root/store-cache
b=${MOE_BUILD:-build}
[ -x $b/moe ] && [ -x $b/bench_xstore ] ||
  { cmake -S . -B $b -DCMAKE_BUILD_TYPE=Release >/dev/null && cmake --build $b -j"$(nproc)" >/dev/null; }
if [ ! -f "$dir/config.json" ]; then
  mkdir -p "$root"
  $b/moe synth --like "$like" --bits 4 -o "$dir"
fi
mkdir -p "$cache"
echo "model: $dir ($(du -sh "$dir" | cut -f1)), memory: $(free -g | awk '/Mem:/{print $2}') GiB, disk free: $(df -h "$root" | awk 'NR==2{print $4}'), load: $(cut -d' ' -f1-3 /proc/loadavg)"

drop() { # the model's and the pack's pages out of the page cache
  for f in "$dir"/*.safetensors "$cache"/*/experts.pack; do
    [ -f "$f" ] && dd if="$f" iflag=nocache count=0 status=none
  done
  return 0
}
resident() { fincore -b -n "$dir"/*.safetensors | awk '{s += $1} END {printf "%.1f MB", s / 1e6}'; }

# the pack, where moe bench --cache-dir finds it (moe pack keeps a valid one)
drop
t0=$(date +%s.%N)
$b/moe pack -m "$dir" -o "$cache" >&2
echo "pack: $(ls "$cache"/*/experts.pack) ($(du -sh "$cache"/*/experts.pack | cut -f1)), moe pack $(echo "$(date +%s.%N) - $t0" | bc) s"
pack=$(ls "$cache"/*/experts.pack)

# 2. reads alone
[ "${ONLY:-reads}" = reads ] && for store in pack model; do
  for direct in 1 0; do
    for t in 1 4; do
      drop
      out=$(MOE_XSTORE_DIRECT=$direct $b/bench_xstore "$dir" "$pack" "$store" "$t" "$n" | tail -n 1)
      echo "$out; model pages resident after: $(resident)"
    done
  done
done

# 3. decoding under the budget
run() { # NAME ARGS...
  local name=$1; shift
  echo "== $name: moe bench $*" >&2
  drop
  local out
  out=$($b/moe bench -m "$dir" -p "$np" -n "$ng" -r 1 --json --cache-dir "$cache" --expert-mem "$mem" "$@")
  echo "{\"run\": \"$name\", \"resident_after\": \"$(resident)\", \"moe\": $out}"
}
[ "${ONLY:-decode}" = decode ] || exit 0
for s in pack model model pack; do run "$s-cold" --store "$s" --no-warm; done
run warm-save --store pack
for s in pack model model pack; do run "$s-warm" --store "$s"; done
MOE_XSTORE_DIRECT=0 run model-buffered-cold --store model --no-warm
MOE_XSTORE_DIRECT=0 run model-buffered-warm --store model
