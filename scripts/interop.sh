#!/usr/bin/env bash
# GGUF interop with llama.cpp on the bundled model (issue 14's proof).  Not
# part of CI: it needs llama.cpp built (scripts/build-llama-cpp.sh: the
# source vendored in PyPI's llama-cpp-python 0.3.36, cached outside the
# repository) and Python with torch/transformers for convert_hf_to_gguf.py.
#
#   ./scripts/interop.sh [OUTDIR]            (default /tmp/nemoq-interop)
#   LLAMACPP_BUILD=/path/to/build LLAMACPP_SRC=/path/to/vendor/llama.cpp ...
#
# 1. nemoq's GGUF against llama.cpp's own conversion of the same weights,
#    tensor by tensor (scripts/gguf_compare.py): the BF16 model both ways
#    (q8_0 and bf16), and NVFP4 experts both ways (nemoq quantize --format
#    gguf  vs  nemoq's safetensors NVFP4 output -> convert_hf_to_gguf.py), with
#    round-to-nearest and with calibrated GPTQ + MSE scales, rest q8_0 and bf16.
# 2. llama-perplexity --kl-divergence of each against llama.cpp's F32
#    conversion, next to llama-quantize's Q8_0, Q4_K_M and IQ4_XS (with an
#    imatrix when llama-imatrix is built) of the same F32 file, on the same
#    windows: the second part of tests/fixtures/calib.txt (the first 375,000
#    bytes calibrate), CHUNKS (default 16) chunks of 512 tokens
#    (llama-perplexity scores the second half of each chunk).
# Prints a Markdown table (size, bits per weight, PPL, KL, top-1).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
out=${1:-/tmp/nemoq-interop}
build=${LLAMACPP_BUILD:-/work/llama.cpp-build}
lsrc=${LLAMACPP_SRC:-}
if [ ! -x "$build/bin/llama-perplexity" ] || [ ! -x "$build/bin/llama-quantize" ]; then
    if [ -x scripts/build-llama-cpp.sh ]; then
        scripts/build-llama-cpp.sh
    else
        echo "interop: no llama.cpp build at $build (set LLAMACPP_BUILD, or run scripts/build-llama-cpp.sh)" >&2
        exit 1
    fi
fi
if [ -z "$lsrc" ]; then   # the source tree this build was configured from
    lsrc=$(sed -n 's/^CMAKE_HOME_DIRECTORY:INTERNAL=//p' "$build/CMakeCache.txt")
fi
bin="$build/bin"
[ -x "$bin/llama-perplexity" ] && [ -x "$bin/llama-quantize" ] || { echo "interop: $bin lacks llama-perplexity/llama-quantize" >&2; exit 1; }
[ -f "$lsrc/convert_hf_to_gguf.py" ] || { echo "interop: no convert_hf_to_gguf.py in $lsrc" >&2; exit 1; }
./scripts/build.sh >/dev/null
nq="$root/build/nemoq"
model="$root/models/tiny-nemotron-h"
threads=${THREADS:-$(nproc)}
mkdir -p "$out"
cd "$out"

# convert_hf_to_gguf.py refuses the bundled tokenizer (its hash is not in
# get_vocab_base_pre's list); its split regex is Llama 3's, so it gets
# llama-bpe, the name nemoq chooses from the regex.
cat > conv.py <<'EOF'
import sys
sys.path.insert(0, sys.argv[1]); sys.path.insert(1, sys.argv[1] + '/gguf-py')
import conversion.base as b
b.TextModel.get_vocab_base_pre = lambda self, tok: 'llama-bpe'
sys.argv = [sys.argv[1] + '/convert_hf_to_gguf.py'] + sys.argv[2:]
import convert_hf_to_gguf
convert_hf_to_gguf.main()
EOF
convert() { python3 conv.py "$lsrc" "$1" --outfile "$2" --outtype "$3" >/dev/null 2>&1; }
compare() { python3 "$root/scripts/gguf_compare.py" --gguf-py "$lsrc/gguf-py" "$1" "$2" \
              --ignore-key general.name --ignore-key general.size_label | tail -1; }

head -c 375000 "$root/tests/fixtures/calib.txt" > calib.txt
tail -c +375001 "$root/tests/fixtures/calib.txt" > eval.txt
calib=(--calib calib.txt --calib-samples 64 --calib-len 256)

echo "== BF16 model: nemoq convert vs convert_hf_to_gguf.py =="
for t in q8_0 bf16 f32; do
    convert "$model" "llama-$t.gguf" "$t"
    "$nq" convert "$model" "nemoq-$t.gguf" --gguf-rest "$t" --force >/dev/null
    echo "$t: $(compare "nemoq-$t.gguf" "llama-$t.gguf")"
done

echo "== NVFP4 experts: nemoq quantize --format gguf vs nemoq safetensors -> convert_hf_to_gguf.py =="
experts=(--recipe nvfp4-conservative --exclude '*' --include 'backbone.layers.*.mixer.experts.*=nvfp4' --kv-cache none)
"$nq" quantize "$model" st-rtn "${experts[@]}" --weights-only --force >/dev/null
"$nq" quantize "$model" st-gptq "${experts[@]}" "${calib[@]}" --algo gptq --weight-scale mse --force >/dev/null 2>&1
for rest in q8_0 bf16; do
    "$nq" quantize "$model" "nemoq-nvfp4-rtn-$rest.gguf" --format gguf --recipe gguf-nvfp4 --gguf-rest "$rest" --force >/dev/null
    "$nq" quantize "$model" "nemoq-nvfp4-gptq-$rest.gguf" --format gguf --recipe gguf-nvfp4 --gguf-rest "$rest" \
        "${calib[@]}" --algo gptq --weight-scale mse --force >/dev/null 2>&1
    convert st-rtn "llama-nvfp4-rtn-$rest.gguf" "$rest"
    convert st-gptq "llama-nvfp4-gptq-$rest.gguf" "$rest"
    echo "rtn  + $rest: $(compare "nemoq-nvfp4-rtn-$rest.gguf" "llama-nvfp4-rtn-$rest.gguf")"
    echo "gptq + $rest: $(compare "nemoq-nvfp4-gptq-$rest.gguf" "llama-nvfp4-gptq-$rest.gguf")"
done

echo "== llama-quantize from llama.cpp's F32 conversion =="
"$bin/llama-quantize" llama-f32.gguf lq-q4_k_m.gguf Q4_K_M "$threads" >/dev/null 2>&1
iq4="lq-iq4_xs.gguf"; iq4_label="llama-quantize IQ4_XS"
if [ -x "$bin/llama-imatrix" ]; then
    "$bin/llama-imatrix" -m llama-f32.gguf -f calib.txt -c 512 --chunks 32 -t "$threads" --no-repack -o imatrix.dat >/dev/null 2>&1
    "$bin/llama-quantize" --imatrix imatrix.dat llama-f32.gguf "$iq4" IQ4_XS "$threads" >/dev/null 2>&1
    iq4_label="llama-quantize IQ4_XS + imatrix (calib part)"
else
    "$bin/llama-quantize" llama-f32.gguf "$iq4" IQ4_XS "$threads" >/dev/null 2>&1
    iq4_label="llama-quantize IQ4_XS (no imatrix: llama-imatrix not built)"
fi

echo "== llama-perplexity --kl-divergence against the F32 GGUF =="
# --no-repack: ggml's AMX kernels (picked by GGML_NATIVE on this Xeon) die
# with SIGILL in this VM; repacking only changes the CPU kernels' layout.
chunks=${CHUNKS:-16}
ppl=("$bin/llama-perplexity" -f eval.txt -c 512 --chunks "$chunks" -t "$threads" -b 512 --no-repack)
"${ppl[@]}" -m llama-f32.gguf --kl-divergence-base base.kld > base.log 2>&1
base_ppl=$(sed -n 's/^Final estimate: PPL = \([0-9.]*\).*/\1/p' base.log)
row() { # label file
    "${ppl[@]}" -m "$2" --kl-divergence-base base.kld --kl-divergence > "$2.kld.log" 2>&1
    local p k t size bpw
    p=$(sed -n 's/^Mean PPL(Q) *: *\([0-9.]*\).*/\1/p' "$2.kld.log")
    k=$(sed -n 's/^Mean    KLD: *\([0-9.]*\).*/\1/p' "$2.kld.log")
    t=$(sed -n 's/^Same top p: *\([0-9.]*\).*/\1/p' "$2.kld.log")
    size=$(stat -c %s "$2")
    bpw=$("$nq" inspect "$2" | sed -n 's/^total .* \([0-9.]*\) bits\/w$/\1/p')
    printf '| %s | %.2f MB | %s | %s | %s | %s%% |\n' "$1" "$(awk -v s="$size" 'BEGIN{print s/1e6}')" "$bpw" "$p" "$k" "$t"
}
echo
echo "F32 perplexity on these windows: $base_ppl"
echo
echo "| GGUF | size | bits/weight | PPL | KL (nats) | same top-1 |"
echo "|---|---|---|---|---|---|"
row "llama.cpp F32 (convert_hf_to_gguf.py, the base)" llama-f32.gguf
row "llama.cpp Q8_0 (convert_hf_to_gguf.py --outtype q8_0; nemoq convert is byte-identical)" llama-q8_0.gguf
row "llama-quantize Q4_K_M" lq-q4_k_m.gguf
row "$iq4_label" "$iq4"
row "nemoq gguf-nvfp4, rtn max scales, rest q8_0" nemoq-nvfp4-rtn-q8_0.gguf
row "nemoq gguf-nvfp4, rtn max scales, rest bf16" nemoq-nvfp4-rtn-bf16.gguf
row "nemoq gguf-nvfp4, GPTQ + MSE, rest q8_0" nemoq-nvfp4-gptq-q8_0.gguf
row "llama.cpp converter on nemoq's GPTQ + MSE NVFP4 safetensors, rest q8_0" llama-nvfp4-gptq-q8_0.gguf
row "nemoq gguf-nvfp4, GPTQ + MSE, rest bf16" nemoq-nvfp4-gptq-bf16.gguf
