#!/usr/bin/env bash
# tools/setup.sh — the quick start's first command: installs the Debian
# packages moe needs, builds it into build/, and runs a Mixture-of-Experts model.
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)"
model=tests/golden/mixtral-top2/model   # a tiny Mixtral (8 experts, top-2) checked against transformers
echo
build/moe info -m "$model"
echo
echo "moe generate -m $model --tokens 1,5,9 -n 24 --temp 0.7 --seed 1"
build/moe generate -m "$model" --tokens 1,5,9 -n 24 --temp 0.7 --seed 1
