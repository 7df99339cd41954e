#!/usr/bin/env bash
# LoRA merging cost: quantize alone vs quantize --lora (a rank-R adapter on
# every Linear: attention q/k/v/o, Mamba in/out_proj, every routed and shared
# expert's up/down_proj) vs nemoq merge, on the synthetic checkpoint with
# Nemotron 3 Nano 30B-A3B's real shapes (bench/gen_synthetic.c, first N
# layers) and a random adapter (bench/gen_lora_adapter.c).
#
#   bench/lora_bench.sh [--layers N] [--dir DIR] [--threads "1 2"] [--rank R]
#                       [--recipe nvfp4-conservative] [--repeat R]
#
# Prints wall seconds, CPU seconds (user + system) and peak RSS (median /
# median / max of R runs) per run kind and thread count, with the ratios to
# quantize alone.  The input stays in the page cache between runs (warm), so
# the difference is the merge's CPU time; on a shared machine the CPU
# seconds are the steadier figure.
set -euo pipefail
cd "$(dirname "$0")/.."
layers=4; dir=/tmp/nemoq-lora-bench; threads="1 2"; rank=16; recipe=nvfp4-conservative; repeat=1
while [ $# -gt 0 ]; do
  case "$1" in
    --layers) layers=$2; shift 2;;
    --dir) dir=$2; shift 2;;
    --threads) threads=$2; shift 2;;
    --rank) rank=$2; shift 2;;
    --recipe) recipe=$2; shift 2;;
    --repeat) repeat=$2; shift 2;;
    *) echo "unknown argument $1" >&2; exit 2;;
  esac
done
bin=${NEMOQ_BIN_DIR:-}
if [ -z "$bin" ]; then ./scripts/build.sh >/dev/null; bin=./build; fi
calc() { awk "BEGIN { print $* }"; }
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }
timed() {
  f=$1; shift
  if [ -x /usr/bin/time ]; then /usr/bin/time -f '%e %M %U %S' -o "$f" "$@"
  else python3 -c 'import resource,subprocess,sys,time
t=time.time(); r=subprocess.run(sys.argv[2:]).returncode; u=resource.getrusage(resource.RUSAGE_CHILDREN)
open(sys.argv[1],"w").write("%.2f %d %.2f %.2f\n" % (time.time()-t, u.ru_maxrss, u.ru_utime, u.ru_stime)); sys.exit(r)' "$f" "$@"; fi
}
in="$dir/nano-synthetic-$layers"
ad="$dir/lora-r$rank-$layers"
mkdir -p "$dir"
[ -f "$in/config.json" ] || "$bin"/nemoq-gen-synthetic tests/fixtures/nemotron-3-nano-30b-a3b.config.json "$in" --layers "$layers"
[ -f "$ad/adapter_config.json" ] || "$bin"/nemoq-gen-lora "$in" "$ad" --rank "$rank"
bytes=$(du -sb "$in" | cut -f1)
abytes=$(du -sb "$ad" | cut -f1)
pairs=$("$bin"/nemoq inspect "$ad" | sed -n 's/.* \([0-9]*\) LoRA modules:/\1/p')
printf 'input: %s, %.2f GB, %s layers; adapter: rank %s on %s Linears, %.1f MB; warm cache; median of %s; %s CPUs\n' \
  "$in" "$(calc "$bytes/1e9")" "$layers" "$rank" "$pairs" "$(calc "$abytes/1e6")" "$repeat" "$(nproc)"
extra=""; [ "$recipe" != int4 ] && extra="--weights-only"
cat "$in"/*.safetensors "$ad"/*.safetensors > /dev/null
printf '%-28s %7s %9s %9s %10s %11s %10s\n' run threads seconds "CPU s" "peak RSS" "time/alone" "CPU/alone"
for t in $threads; do
  base_s=""; base_c=""
  for kind in alone lora merge; do
    secs_all=(); rss_all=(); cpu_all=()
    for ((k = 0; k < repeat; k++)); do
      out="$dir/out"; rm -rf "$out"; sync
      case $kind in
        alone) timed "$dir/time.txt" "$bin"/nemoq quantize "$in" "$out" --recipe "$recipe" $extra --threads "$t" >/dev/null;;
        lora) timed "$dir/time.txt" "$bin"/nemoq quantize "$in" "$out" --recipe "$recipe" $extra --threads "$t" --lora "$ad" >/dev/null;;
        merge) timed "$dir/time.txt" "$bin"/nemoq merge "$in" "$out" --threads "$t" --lora "$ad" >/dev/null;;
      esac
      read -r secs rss_kb usr sys < "$dir/time.txt"
      secs_all+=("$secs"); rss_all+=("$rss_kb"); cpu_all+=("$(calc "$usr + $sys")")
    done
    rm -rf "$dir/out"
    secs=$(printf '%s\n' "${secs_all[@]}" | median)
    rss_kb=$(printf '%s\n' "${rss_all[@]}" | sort -g | tail -1)
    cpu=$(printf '%s\n' "${cpu_all[@]}" | median)
    [ -z "$base_s" ] && base_s=$secs && base_c=$cpu
    case $kind in alone) label="quantize $recipe";; lora) label="quantize --lora";; merge) label="merge (bf16 out)";; esac
    printf '%-28s %7s %9.2f %9.2f %7.0f MB %11.2f %10.2f\n' "$label" "$t" "$secs" "$cpu" "$(calc "$rss_kb/1024")" "$(calc "$secs/$base_s")" "$(calc "$cpu/$base_c")"
  done
done
