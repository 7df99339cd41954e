#!/usr/bin/env bash
# nemoq's CPU forward against llama.cpp's on the same model and tokens: the
# bundled tiny model (float32 in both: llama.cpp runs an F32 GGUF made by its
# own convert_hf_to_gguf.py), the text tests/fixtures/calib.txt cut into
# windows of 256 tokens, `nemoq eval` against `llama-perplexity` (which runs
# its chunks 8 at a time in one batch of 2048), at each thread count.
# Runs are interleaved (llama, nemoq, llama, nemoq, ...) and the best of
# --repeat is kept, so a machine shared with other work disturbs both alike.
# Times are whole-process wall times (load + tokenize + forward + scoring);
# llama.cpp's own "prompt eval" figure is printed too.
#
#   bench/forward_vs_llamacpp.sh [--windows 64] [--repeat 3] [--threads "1 2"]
#
# Needs llama.cpp built by scripts/build-llama-cpp.sh (LLAMACPP_BUILD, default
# /work/llama.cpp-build, holds BUILD_OK naming its bin dir and converter),
# python3 with numpy/torch/safetensors for the converter, and build/nemoq.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
windows=64 repeat=3 threads="1 2"
while [ $# -gt 0 ]; do
    case "$1" in
    --windows) windows=$2; shift 2 ;;
    --repeat) repeat=$2; shift 2 ;;
    --threads) threads=$2; shift 2 ;;
    *) echo "usage: $0 [--windows N] [--repeat R] [--threads \"1 2\"]" >&2; exit 2 ;;
    esac
done
build=${LLAMACPP_BUILD:-/work/llama.cpp-build}
ok="$build/BUILD_OK"
[ -f "$ok" ] || { echo "forward_vs_llamacpp: $ok missing; run scripts/build-llama-cpp.sh first" >&2; exit 1; }
bin=$(sed -n 's/^bin: //p' "$ok")
conv=$(sed -n 's/^convert_hf_to_gguf.py: //p' "$ok")
nemoq="$root/build/nemoq"
[ -x "$nemoq" ] || { echo "forward_vs_llamacpp: $nemoq missing; build first" >&2; exit 1; }
model="$root/models/tiny-nemotron-h"
text="$root/tests/fixtures/calib.txt"
cache=${NEMOQ_BENCH_CACHE:-${TMPDIR:-/tmp}/nemoq-bench}
mkdir -p "$cache"
gguf="$cache/tiny-nemotron-h-f32.gguf"
if [ ! -s "$gguf" ]; then
    echo "converting $model to $gguf (F32)"
    # The bundled tokenizer's hash is not in the converter's list of known
    # pre-tokenizers; its split regex is Llama 3's, i.e. llama.cpp's
    # "llama-bpe", which then cuts the text into the same tokens as nemoq.
    python3 - "$(dirname "$conv")" "$model" --outtype f32 --outfile "$gguf.tmp" \
        > "$cache/convert.log" 2>&1 <<'PY' || { tail -5 "$cache/convert.log" >&2; exit 1; }
import sys
root = sys.argv[1]
sys.path.insert(0, root); sys.path.insert(1, root + "/gguf-py")
import conversion.base as b
b.TextModel.get_vocab_base_pre = lambda self, tok: "llama-bpe"
sys.argv = [root + "/convert_hf_to_gguf.py"] + sys.argv[2:]
import convert_hf_to_gguf
convert_hf_to_gguf.main()
PY
    mv "$gguf.tmp" "$gguf"
fi
tokens=$((windows * 256))
now() { date +%s.%N; }
declare -A best
for r in $(seq "$repeat"); do
    for t in $threads; do
        s=$(now)
        "$bin/llama-perplexity" -m "$gguf" -f "$text" -c 256 --chunks "$windows" -t "$t" -tb "$t" \
            > "$cache/llama-$t.log" 2>&1 || { tail -5 "$cache/llama-$t.log" >&2; exit 1; }
        e=$(now)
        lt=$(echo "$e - $s" | bc -l)
        s=$(now)
        "$nemoq" eval "$model" --text "$text" --ctx 256 --windows "$windows" --threads "$t" \
            > "$cache/nemoq-$t.log" 2>&1 || { tail -5 "$cache/nemoq-$t.log" >&2; exit 1; }
        e=$(now)
        nt=$(echo "$e - $s" | bc -l)
        printf 'run %d, %d thread(s): llama-perplexity %.2f s, nemoq eval %.2f s\n' "$r" "$t" "$lt" "$nt"
        [ -z "${best[l$t]:-}" ] || [ "$(echo "$lt < ${best[l$t]}" | bc -l)" = 1 ] && best[l$t]=$lt
        [ -z "${best[n$t]:-}" ] || [ "$(echo "$nt < ${best[n$t]}" | bc -l)" = 1 ] && best[n$t]=$nt
    done
done
# llama.cpp's own clock: from "calculating perplexity" to "Final estimate"
# (its log stamps are minutes.seconds.ms.us), i.e. without loading and its
# 1.6 s tokenization; nemoq's figure is always the whole process.
compute_s() {
    awk '/calculating perplexity over/ {split($1, a, "."); s = a[1] * 60 + a[2] + a[3] / 1000}
         /Final estimate/ {split($1, a, "."); e = a[1] * 60 + a[2] + a[3] / 1000}
         END {if (e > s) printf "%.3f", e - s}' "$1"
}
echo
echo "llama.cpp: $(head -1 "$ok"), $(grep -h -m1 -o 'n_ctx=[0-9]*, batch_size=[0-9]*, n_seq=[0-9]*' "$cache/llama-1.log" 2>/dev/null || true)"
echo "llama.cpp: $(grep -h -m1 -o 'Final estimate.*' "$cache/llama-${threads%% *}.log") (scores the second half of each window)"
echo "nemoq:     $(grep -h -m1 -o 'perplexity: .*' "$cache/nemoq-${threads%% *}.log") (scores all 255 predictions of each window)"
printf '%7s %12s %12s %22s %14s\n' threads "llama tok/s" "nemoq tok/s" "llama tok/s (compute)" "nemoq / llama"
for t in $threads; do
    lr=$(echo "$tokens / ${best[l$t]}" | bc -l)
    nr=$(echo "$tokens / ${best[n$t]}" | bc -l)
    lc=$(compute_s "$cache/llama-$t.log")
    lcr=n/a
    [ -n "$lc" ] && lcr=$(printf '%.0f' "$(echo "$tokens / $lc" | bc -l)")
    printf '%7d %12.0f %12.0f %22s %14.2f\n' "$t" "$lr" "$nr" "$lcr" "$(echo "$nr / $lr" | bc -l)"
done
echo "(${windows} windows x 256 = ${tokens} tokens per run; whole-process wall time, best of ${repeat},"
echo " interleaved; the compute column is llama.cpp's last run of that count;"
echo " machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg))"
