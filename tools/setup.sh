#!/usr/bin/env bash
# tools/setup.sh — the quick start's first command: installs the Debian
# packages moe needs, builds it into build/, and generates text with the
# bundled Mixture-of-Experts model (models/tiny-mixtral, the default).
set -euo pipefail
cd "$(dirname "$0")/.."
bash tools/deps.sh
cmake -S . -B build -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build build -j"$(nproc)"
echo
build/moe info
echo
echo '$ build/moe generate -p "The history of the church" -n 48 --seed 1'
build/moe generate -p "The history of the church" -n 48 --seed 1
