#!/usr/bin/env bash
# fuzz/run.sh [SECONDS] — builds the libFuzzer harnesses with clang in
# build-fuzz/ and runs each for SECONDS (default 60), all at once, on a
# working copy of its seed corpus (build-fuzz/corpus/<name>, kept between runs
# so coverage accumulates). Crash inputs land in build-fuzz/crashes/, logs in
# build-fuzz/<name>.log. Exits non-zero if any fuzzer fails.
set -euo pipefail
secs=${1:-60}
root=$(cd "$(dirname "$0")/.." && pwd)
out=$root/build-fuzz
cd "$root"

# the parsers are fuzzed without the CUDA backend (its objects would make nvcc's host g++ the linker)
CC=${CC:-clang} cmake -S . -B "$out" -DMOE_FUZZ=ON -DMOE_TESTS=OFF -DMOE_CUDA=OFF -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$out" -j2 --target fuzz_safetensors fuzz_config fuzz_jinja fuzz_tokenizer fuzz_server fuzz_xstore fuzz_profile

mkdir -p "$out/crashes"
pids=()
names=(safetensors config jinja tokenizer server xstore profile)
# the tokenizer fuzzer also encodes and decodes through the bundled models' tokenizers
export MOE_FUZZ_TOKENIZERS="$root/models/tiny-mixtral/tokenizer.json:$root/models/tiny-qwen-moe/tokenizer.json"
# the expert pack fuzzer checks packs against this model
export MOE_FUZZ_XSTORE_MODEL="$root/tests/golden-quant/mixtral-q4-g32/model"
for n in "${names[@]}"; do
  mkdir -p "$out/corpus/$n"
  cp "$root/fuzz/corpus/$n"/* "$out/corpus/$n/"
  "$out/fuzz/fuzz_$n" "$out/corpus/$n" -dict="$root/fuzz/$n.dict" -max_total_time="$secs" \
    -timeout=10 -print_final_stats=1 -artifact_prefix="$out/crashes/$n-" >"$out/$n.log" 2>&1 &
  pids+=($!)
done

rc=0
for i in "${!names[@]}"; do
  n=${names[$i]}
  if wait "${pids[$i]}"; then
    echo "fuzz_$n: ok"
  else
    echo "fuzz_$n: FAILED (see $out/$n.log)"
    grep -E "ERROR|SUMMARY|Test unit written" "$out/$n.log" | head -n 5 || true
    rc=1
  fi
  grep -E "^#[0-9]+ +DONE|stat::number_of_executed_units|cov:" "$out/$n.log" | tail -n 2 || true
done
exit $rc
