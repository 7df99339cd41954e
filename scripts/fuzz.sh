#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan+UBSan) and runs each for
# SECONDS (default 600) from the seed corpus in fuzz/seeds/.
#   ./scripts/fuzz.sh [SECONDS] [TARGET...]
#   ./scripts/fuzz.sh --seeds      build, then run every target once over its
#                                  seeds and stop (what ./scripts/test.sh does)
# Findings land in fuzz/crash-* ; the grown corpus in fuzz/corpus-TARGET/.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/install-deps.sh --fuzz
seeds_only=false
[ "${1:-}" = "--seeds" ] && { seeds_only=true; shift; }
seconds=${1:-600}; shift || true
CC=clang cmake -S . -B build-fuzz -DNEMOQ_FUZZ=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
targets=("$@")
[ ${#targets[@]} -eq 0 ] && targets=($(cd fuzz && ls fuzz_*.c 2>/dev/null | sed 's/\.c$//'))
# only the fuzz targets (and the library they link), not the CLI and tools
[ ${#targets[@]} -eq 0 ] && { echo "fuzz: no targets in fuzz/" >&2; exit 1; }
cmake --build build-fuzz -j"$(nproc)" --target "${targets[@]}" >/dev/null
if $seeds_only; then
  for t in "${targets[@]}"; do
    seeds="fuzz/seeds/${t#fuzz_}"
    [ -d "$seeds" ] || { echo "fuzz: $t has no seed corpus in $seeds" >&2; exit 1; }
    # -runs=0: execute the given inputs once each, no mutation
    ./build-fuzz/"$t" -runs=0 "$seeds" >/dev/null 2>"build-fuzz/$t.log" ||
      { cat "build-fuzz/$t.log" >&2; echo "fuzz: $t failed on its seeds" >&2; exit 1; }
    echo "$t: $(ls "$seeds" | wc -l) seeds ok"
  done
  exit 0
fi
for t in "${targets[@]}"; do
  name=${t#fuzz_}
  mkdir -p "fuzz/corpus-$name"
  seeds="fuzz/seeds/$name"; [ -d "$seeds" ] || seeds=""
  echo "== $t for ${seconds}s =="
  ./build-fuzz/"$t" -max_total_time="$seconds" -max_len=65536 -artifact_prefix=fuzz/crash-"$name"- \
    "fuzz/corpus-$name" $seeds 2>&1 | grep -E '^(#[0-9]+.*(DONE|pulse)|==[0-9]+==|SUMMARY|Done)' | tail -5
done
