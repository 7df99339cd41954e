#!/usr/bin/env bash
# Quantization speed and memory on a synthetic checkpoint with Nemotron 3
# Nano 30B-A3B's real shapes (random BF16 weights, bench/gen_synthetic.c).
#
#   bench/quantize_bench.sh [--layers N] [--dir DIR] [--threads "1 2"]
#
# Prints, for the nvfp4-conservative and int4 recipes with --weight-scale
# max, at each thread count: wall time, input GB/s, peak RSS, and the ratio
# to a plain `cat IN/* > /dev/null` of the same files measured in the same
# run (page cache state is reported: the cat runs first, so both read the
# same warm or cold cache). --layers N makes a proportional subset (the
# first N layers) when the disk cannot hold the full 59 GB plus outputs.
set -euo pipefail
cd "$(dirname "$0")/.."
layers=52; dir=/tmp/nemoq-bench; threads="1 2"
while [ $# -gt 0 ]; do
  case "$1" in
    --layers) layers=$2; shift 2;;
    --dir) dir=$2; shift 2;;
    --threads) threads=$2; shift 2;;
    *) echo "unknown argument $1" >&2; exit 2;;
  esac
done
./scripts/build.sh
in="$dir/nano-synthetic-$layers"
if [ ! -f "$in/config.json" ]; then
  mkdir -p "$dir"
  ./build/nemoq-gen-synthetic tests/fixtures/nemotron-3-nano-30b-a3b.config.json "$in" --layers "$layers"
fi
bytes=$(du -sb "$in" | cut -f1)
printf 'input: %s, %.2f GB, %s layers\n' "$in" "$(echo "$bytes/1000000000" | bc -l)" "$layers"
t0=$(date +%s.%N); cat "$in"/*.safetensors > /dev/null; t1=$(date +%s.%N)
cat_s=$(echo "$t1 - $t0" | bc -l)
printf '%-20s %7s %9s %8s %10s %12s\n' run threads seconds "GB/s" "peak RSS" "time/cat"
printf '%-20s %7s %9.2f %8.2f %10s %12s\n' "cat IN/*" - "$cat_s" "$(echo "$bytes/$cat_s/1000000000" | bc -l)" - 1.00
for recipe in nvfp4-conservative int4; do
  for t in $threads; do
    out="$dir/out-$recipe-$t"; rm -rf "$out"
    extra=""; [ "$recipe" != int4 ] && extra="--weights-only"
    /usr/bin/time -f '%e %M' -o "$dir/time.txt" ./build/nemoq quantize "$in" "$out" --recipe "$recipe" $extra --threads "$t" > /dev/null
    read -r secs rss_kb < "$dir/time.txt"
    printf '%-20s %7s %9.2f %8.2f %8.0f MB %12.2f\n' "$recipe" "$t" "$secs" "$(echo "$bytes/$secs/1000000000" | bc -l)" "$(echo "$rss_kb/1024" | bc -l)" "$(echo "$secs/$cat_s" | bc -l)"
    rm -rf "$out"
  done
done
