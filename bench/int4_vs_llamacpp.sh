#!/usr/bin/env bash
# INT4 W4A16 (GPTQ layout) next to llama.cpp's IQ4_XS + imatrix on the same
# windows: calibration on the first 375,000 bytes of calib.txt (nemoq: 64 x
# 256 tokens; llama-imatrix: the same text, 64 chunks of 256), evaluation on
# the rest: the first 64 windows of 256 tokens, every prediction in a window
# scored (255 each, 16,320), each window from an empty state, KL against the
# unquantized model.  nemoq's side is `quantize --eval`; llama.cpp's side is
# bench/llamacpp_kl.cpp (linked against the same libllama as
# llama-perplexity, which scores only the second half of each chunk), fed the
# token ids nemoq evaluates (tokenized by HF tokenizers, which nemoq's
# tokenizer matches), against nemoq's F32 GGUF of the model (byte-identical
# to convert_hf_to_gguf.py's, scripts/interop.sh).  Bits per weight outside
# the embeddings and the output head: bench/bits_outside_embeddings.py.
#
#   bench/int4_vs_llamacpp.sh [OUTDIR]     (LLAMACPP_BUILD, default /work/llama.cpp-build;
#                                           NEMOQ_BIN: a nemoq binary instead of building)
# Needs llama.cpp built (scripts/build-llama-cpp.sh), g++, Python with
# numpy, tokenizers and gguf.  Not in CI.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
dir=${1:-/tmp/nemoq-int4-vs-llamacpp}
build=${LLAMACPP_BUILD:-/work/llama.cpp-build}
threads=${THREADS:-$(nproc)}
lsrc=$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$build/CMakeCache.txt")
bin="$build/bin"
for t in llama-quantize llama-imatrix; do
    [ -x "$bin/$t" ] || { echo "int4_vs_llamacpp: no $bin/$t (run scripts/build-llama-cpp.sh)" >&2; exit 1; }
done
if [ -n "${NEMOQ_BIN:-}" ]; then nq=$NEMOQ_BIN; else ./scripts/build.sh >/dev/null; nq=./build/nemoq; fi
mkdir -p "$dir"
model=models/tiny-nemotron-h
head -c 375000 tests/fixtures/calib.txt > "$dir/calib.txt"
tail -c +375001 tests/fixtures/calib.txt > "$dir/heldout.txt"
g++ -O2 -std=c++17 -I"$lsrc/include" -I"$lsrc/ggml/include" bench/llamacpp_kl.cpp \
    -o "$dir/llamacpp_kl" "$build/src/libllama.a" "$build/ggml/src/libggml.a" \
    "$build/ggml/src/libggml-cpu.a" "$build/ggml/src/libggml-base.a" -fopenmp -lpthread -ldl
python3 - "$model/tokenizer.json" "$dir/heldout.txt" "$dir/heldout.i32" <<'PY'
import sys, numpy as np
from tokenizers import Tokenizer
t = Tokenizer.from_file(sys.argv[1])
ids = t.encode(open(sys.argv[2], encoding="utf-8").read(), add_special_tokens=False).ids
np.array(ids, dtype="<i4").tofile(sys.argv[3])
PY

# llama.cpp: F32 GGUF, imatrix on the calibration part, IQ4_XS
"$nq" convert "$model" "$dir/f32.gguf" --gguf-rest f32 --force >/dev/null
"$bin/llama-imatrix" -m "$dir/f32.gguf" -f "$dir/calib.txt" -c 256 --chunks 64 -t "$threads" \
    --no-repack -o "$dir/imatrix.dat" > "$dir/imatrix.log" 2>&1
"$bin/llama-quantize" --imatrix "$dir/imatrix.dat" "$dir/f32.gguf" "$dir/iq4_xs.gguf" IQ4_XS \
    "$threads" > "$dir/quantize.log" 2>&1

row() { # name, label, then nemoq quantize flags (runs in the background)
    local name=$1 label=$2; shift 2
    "$nq" quantize "$model" "$dir/$name" --recipe int4 --calib "$dir/calib.txt" \
        --calib-samples 64 --calib-len 256 --eval "$dir/heldout.txt" --eval-windows 64 \
        --report "$dir/$name" --force "$@" > "$dir/$name.txt" 2>&1 &
    names+=("$name"); labels+=("$label")
}
names=(); labels=()
row gptq-mse "GPTQ + MSE (the quality table's row)" --algo gptq --weight-scale mse
row ao "GPTQ + MSE, act-order" --algo gptq --weight-scale mse --gptq-act-order
row ao-wide "GPTQ + MSE, act-order, wide groups" --algo gptq --weight-scale mse --gptq-act-order \
    --int4-wide-groups
row eq-ao-wide "GPTQ + MSE, act-order, wide groups, equalize" --algo gptq --weight-scale mse \
    --gptq-act-order --int4-wide-groups --equalize
echo "| model | bits/weight outside embeddings | perplexity | KL (nats/token) | top-1 agreement |"
echo "|---|---|---|---|---|"
bits() { python3 bench/bits_outside_embeddings.py "$model" "$1" | awk '{print $2}'; }
read -r _ _ _ _ _ bppl _ ppl _ kl _ top < <("$dir/llamacpp_kl" "$dir/f32.gguf" "$dir/iq4_xs.gguf" \
    "$dir/heldout.i32" 256 64 "$threads")
echo "| llama.cpp IQ4_XS + imatrix | $(bits "$dir/iq4_xs.gguf") | $ppl | $kl | $top |"
echo "llama.cpp F32 perplexity on these windows: $bppl" >&2
wait   # the nemoq rows
for k in "${!names[@]}"; do
    python3 - "$dir/${names[$k]}.json" "${labels[$k]}" "$(bits "$dir/${names[$k]}")" <<'PY'
import json, sys
e = json.load(open(sys.argv[1]))["eval"]
print(f"| nemoq INT4 {sys.argv[2]} | {sys.argv[3]} | {e['perplexity']:.4f} | {e['kl']:.5f} | {e['top1_agreement']:.4f} |")
PY
done
python3 -c "import json; print('nemoq BF16 perplexity on these windows:', round(json.load(open('$dir/gptq-mse.json'))['eval']['input_perplexity'], 4))" >&2
