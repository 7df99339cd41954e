#!/usr/bin/env bash
# The README's --optimize ablation: nvfp4-conservative W4A4 on the bundled
# model, same protocol as bench/quality_table.sh (calibration on the first
# 375,000 bytes of calib.txt, 64 x 256 tokens; KL against BF16 on the rest,
# 64 windows of 256).
#   bench/optimize_ablation.sh [OUTDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build.sh >/dev/null
dir=${1:-/tmp/nemoq-optimize}; mkdir -p "$dir"
head -c 375000 tests/fixtures/calib.txt > "$dir/calib.txt"
tail -c +375001 tests/fixtures/calib.txt > "$dir/heldout.txt"
echo "| algorithm | scales | techniques | KL (nats/token) | vs RTN max | top-1 | output rel. RMS (calib) |"
echo "|---|---|---|---|---|---|---|"
base=""
row() {
  name=$1 algo=$2 scale=$3 tech=$4
  ./build/nemoq quantize models/tiny-nemotron-h "$dir/$name" --recipe nvfp4-conservative \
    --algo "$algo" --weight-scale "$scale" ${tech:+--optimize-techniques "$tech"} \
    --calib "$dir/calib.txt" --calib-samples 64 --calib-len 256 \
    --eval "$dir/heldout.txt" --eval-windows 64 --report "$dir/$name" --force > "$dir/$name.txt" 2>&1
  python3 - "$dir/$name.json" "$algo" "$scale" "${tech:-none}" "$dir/rtn-max.json" <<'PY'
import json, sys
d = json.load(open(sys.argv[1])); s, e = d["summary"], d["eval"]
b = json.load(open(sys.argv[5]))["eval"]["kl"]
print(f"| {sys.argv[2]} | {sys.argv[3]} | {sys.argv[4]} | {e['kl']:.5f} | {100 * (e['kl'] / b - 1):+.1f}% | "
      f"{e['top1_agreement']:.4f} | {s['output_rel_rms']:.4f} |")
PY
}
row rtn-max rtn max ""
row rtn-act-percentile rtn max act-percentile
row gptq-mse gptq mse ""
row served-hessian gptq mse served-hessian
row act-mse gptq mse act-mse
row four-over-six gptq mse four-over-six
row hessian-scales gptq mse hessian-scales
row hessian-scales-global-sweep gptq mse hessian-scales,global-sweep
row hessian-scales-equalize gptq mse hessian-scales,equalize-nvfp4
row all gptq mse served-hessian,hessian-scales,four-over-six,act-mse
