#!/usr/bin/env bash
# The README's quality table: the bundled model quantized with each format
# and algorithm, calibrated on the first 375,000 bytes of calib.txt (64 x 256
# tokens), evaluated against the BF16 model on the rest (64 windows of 256).
#   bench/quality_table.sh [OUTDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build.sh >/dev/null
dir=${1:-/tmp/nemoq-quality}; mkdir -p "$dir"
head -c 375000 tests/fixtures/calib.txt > "$dir/calib.txt"
tail -c +375001 tests/fixtures/calib.txt > "$dir/heldout.txt"
echo "| checkpoint | recipe | algorithm | scales | bits/param | perplexity | KL (nats/token) | top-1 agreement | weight rel. RMS | output rel. RMS (calib) |"
echo "|---|---|---|---|---|---|---|---|---|---|"
row() {
  name=$1 recipe=$2 algo=$3 scale=$4
  ./build/nemoq quantize models/tiny-nemotron-h "$dir/$name" --recipe "$recipe" --algo "$algo" \
    --weight-scale "$scale" --calib "$dir/calib.txt" --calib-samples 64 --calib-len 256 \
    --eval "$dir/heldout.txt" --eval-windows 64 --report "$dir/$name" --force > "$dir/$name.txt" 2>&1
  python3 - "$dir/$name.json" "$name" "$recipe" "$algo" "$scale" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); s, e = d["summary"], d["eval"]
print(f"| {sys.argv[2]} | {sys.argv[3]} | {sys.argv[4]} | {sys.argv[5]} | {s['bits_per_parameter']:.2f} | "
      f"{e['perplexity']:.4f} | {e['kl']:.5f} | {e['top1_agreement']:.4f} | {s['weight_rel_rms']:.4f} | {s['output_rel_rms']:.4f} |")
PY
}
row fp8 fp8-conservative rtn max
row nvfp4-max nvfp4-conservative rtn max
row nvfp4-mse nvfp4-conservative rtn mse
row nvfp4-gptq nvfp4-conservative gptq max
row nvfp4-gptq-mse nvfp4-conservative gptq mse
row int4-rtn int4 rtn max
row int4-mse int4 rtn mse
row int4-gptq int4 gptq max
row int4-gptq-mse int4 gptq mse
python3 -c "import json; print('BF16 perplexity on the held-out part:', round(json.load(open('$dir/fp8.json'))['eval']['input_perplexity'], 4))"
