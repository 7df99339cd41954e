#!/usr/bin/env bash
# The README's SSM-cache table: the bundled model decoded token by token over
# long windows, KL(BF16 weights with an f32 SSM state || model) by position,
# for the SSM state stored in f16 (round to nearest even) and in f16 with
# stochastic rounding (Philox, 5 rounds), with the BF16 weights and with
# calibrated W4A4 NVFP4 weights + FP8 KV cache (nvfp4-conservative, made by
# nemoq quantize: calibration on the first 375,000 bytes of calib.txt).
# Windows of CTX tokens from the held-out rest of calib.txt (one long text:
# the concatenated fixture documents), prefill of 1 token, then 1 token per
# step, so position t has had its state rounded t times.
#   bench/ssm_cache.sh [OUTDIR] [WINDOWS=4] [CTX=2048] [SEED=0]
# Cost on the 2-core development machine: about 4 + 3 model steps per token
# of each window; see the README for the measured time.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build.sh >/dev/null
dir=${1:-/tmp/nemoq-ssm-cache}; windows=${2:-4}; ctx=${3:-2048}; seed=${4:-0}
mkdir -p "$dir"
head -c 375000 tests/fixtures/calib.txt > "$dir/calib.txt"
tail -c +375001 tests/fixtures/calib.txt > "$dir/heldout.txt"
bf16=models/tiny-nemotron-h
start=$(date +%s)
if [ ! -f "$dir/nvfp4/config.json" ]; then
  ./build/nemoq quantize "$bf16" "$dir/nvfp4" --recipe nvfp4-conservative --calib "$dir/calib.txt" \
    --calib-samples 64 --calib-len 256 --ssm-cache-dtype float16 --force > "$dir/nvfp4.log" 2>&1
fi
bucket=$((ctx / 8))
common=(--text "$dir/heldout.txt" --ctx "$ctx" --windows "$windows" --against "$bf16" --decode
        --prefill 1 --philox-rounds 5 --seed "$seed" --kl-bucket "$bucket" --json)
./build/nemoq eval "$bf16" "${common[@]}" --ssm-cache fp16,fp16-sr --report "$dir/bf16" > "$dir/bf16.out"
./build/nemoq eval "$dir/nvfp4" "${common[@]}" --ssm-cache fp32,fp16,fp16-sr --report "$dir/nvfp4" > "$dir/nvfp4.out"
end=$(date +%s)
python3 - "$dir/bf16.out" "$dir/nvfp4.out" "$bucket" "$((end - start))" <<'PY'
import json, sys
b = int(sys.argv[3])
runs = [("BF16", json.load(open(sys.argv[1]))), ("NVFP4 W4A4 + FP8 KV", json.load(open(sys.argv[2])))]
nb = len(runs[0][1]["decode"]["modes"][0]["kl_by_position"])
hdr = " | ".join(f"{i*b}-{(i+1)*b-1}" for i in range(nb))
print(f"| weights | SSM state | KL (nats/token) | top-1 | perplexity | KL by position: {hdr} |")
print("|---|---|---|---|---|" + "---|" * nb)
for name, d in runs:
    for m in d["decode"]["modes"]:
        cells = " | ".join(f"{k:.2e}" for k in m["kl_by_position"])
        print(f"| {name} | {m['ssm_cache']} | {m['kl']:.3e} | {m['top1_agreement']:.4f} | "
              f"{m['perplexity']:.4f} | {cells} |")
d = runs[0][1]
print(f"\n{d['windows']} windows of {d['ctx']} tokens ({d['predictions']} predictions per row), "
      f"BF16 / f32-state perplexity {d['base_perplexity']:.4f}; {sys.argv[4]} s in all")
PY
