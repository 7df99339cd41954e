#!/usr/bin/env bash
# Quantization speed and memory on a synthetic checkpoint with Nemotron 3
# Nano 30B-A3B's real shapes (random BF16 weights, bench/gen_synthetic.c).
#
#   bench/quantize_bench.sh [--layers N] [--dir DIR] [--threads "1 2"]
#                           [--recipes "nvfp4-conservative int4"]
#                           [--cold] [--repeat R]
#
# Prints, for each recipe (--weight-scale max) at each thread count: wall
# time, input GB/s, peak RSS, and the ratio to a plain `cat IN/* >
# /dev/null` of the same files measured in the same run.  Each figure is the
# median of R runs (default 1).  Before every run the previous output is
# deleted and `sync`ed, so its writeback does not land in the next timing.
#
# --cold drops the page cache before every run (cat included; needs root),
# which is what a 59 GB checkpoint on a 24 GB machine sees; without it the
# input may be served from memory and cat is a memory copy.  --layers N
# makes a proportional subset (the first N layers) when the disk cannot hold
# the full 59 GB plus outputs.
set -euo pipefail
cd "$(dirname "$0")/.."
layers=52; dir=/tmp/nemoq-bench; threads="1 2"; recipes="nvfp4-conservative int4"
cold=0; repeat=1
while [ $# -gt 0 ]; do
  case "$1" in
    --layers) layers=$2; shift 2;;
    --dir) dir=$2; shift 2;;
    --threads) threads=$2; shift 2;;
    --recipes) recipes=$2; shift 2;;
    --cold) cold=1; shift;;
    --repeat) repeat=$2; shift 2;;
    *) echo "unknown argument $1" >&2; exit 2;;
  esac
done
# NEMOQ_BIN_DIR: prebuilt nemoq and nemoq-gen-synthetic (machines without
# the -dev packages); otherwise build here.
bin=${NEMOQ_BIN_DIR:-}
if [ -z "$bin" ]; then ./scripts/build.sh >/dev/null; bin=./build; fi
calc() { awk "BEGIN { print $* }"; }
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
drop_cache() {
  sync
  if [ "$cold" = 1 ]; then
    if ! { echo 3 > /proc/sys/vm/drop_caches; } 2>/dev/null; then
      echo "--cold: cannot write /proc/sys/vm/drop_caches (needs root)" >&2; exit 2
    fi
  fi
}
# timed FILE CMD...: writes "seconds peak_rss_kb" of CMD to FILE
timed() {
  f=$1; shift
  if [ -x /usr/bin/time ]; then /usr/bin/time -f '%e %M' -o "$f" "$@"
  else python3 -c 'import resource,subprocess,sys,time
t=time.time(); r=subprocess.run(sys.argv[2:]).returncode
open(sys.argv[1],"w").write("%.2f %d\n" % (time.time()-t, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)); sys.exit(r)' "$f" "$@"; fi
}
in="$dir/nano-synthetic-$layers"
if [ ! -f "$in/config.json" ]; then
  mkdir -p "$dir"
  "$bin"/nemoq-gen-synthetic tests/fixtures/nemotron-3-nano-30b-a3b.config.json "$in" --layers "$layers"
fi
bytes=$(du -sb "$in" | cut -f1)
printf 'input: %s, %.2f GB, %s layers; cache: %s; median of %s run(s); %s CPUs\n' "$in" \
  "$(calc "$bytes/1000000000")" "$layers" "$([ "$cold" = 1 ] && echo "cold (dropped before each run)" || echo "as found")" \
  "$repeat" "$(nproc)"
cat_times=()
for ((k = 0; k < repeat; k++)); do
  drop_cache
  t0=$(date +%s.%N); cat "$in"/*.safetensors > /dev/null; t1=$(date +%s.%N)
  cat_times+=("$(calc "$t1 - $t0")")
done
cat_s=$(printf '%s\n' "${cat_times[@]}" | median)
printf '%-20s %7s %9s %8s %10s %12s\n' run threads seconds "GB/s" "peak RSS" "time/cat"
printf '%-20s %7s %9.2f %8.2f %10s %12s\n' "cat IN/*" - "$cat_s" "$(calc "$bytes/$cat_s/1000000000")" - 1.00
for recipe in $recipes; do
  for t in $threads; do
    secs_all=(); rss_all=()
    for ((k = 0; k < repeat; k++)); do
      out="$dir/out-$recipe-$t"; rm -rf "$out"
      drop_cache
      extra=""; [ "$recipe" != int4 ] && extra="--weights-only"
      timed "$dir/time.txt" "$bin"/nemoq quantize "$in" "$out" --recipe "$recipe" $extra --threads "$t" > /dev/null
      read -r secs rss_kb < "$dir/time.txt"
      secs_all+=("$secs"); rss_all+=("$rss_kb")
      rm -rf "$out"
    done
    secs=$(printf '%s\n' "${secs_all[@]}" | median)
    rss_kb=$(printf '%s\n' "${rss_all[@]}" | sort -g | tail -1)
    printf '%-20s %7s %9.2f %8.2f %8.0f MB %12.2f\n' "$recipe" "$t" "$secs" "$(calc "$bytes/$secs/1000000000")" "$(calc "$rss_kb/1024")" "$(calc "$secs/$cat_s")"
  done
done
