#!/usr/bin/env bash
# AutoQuantize on the bundled model: held-out KL against effective bits, for
# the uniform presets and AutoQuantize at several budgets (the README's
# Pareto table).  Calibration on the first 375,000 bytes of calib.txt
# (64 x 256 tokens; sensitivities on 4 of those windows), evaluation on the
# rest (64 windows of 256), as bench/quality_table.sh.  The scores are
# measured once (at nvfp4-conservative + 0.3 bits) and reused for the other
# budgets with --auto-scores.  Runs JOBS (default 3) quantizations at once.
#   bench/autoq_table.sh [OUTDIR]
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/build.sh >/dev/null
dir=${1:-/tmp/nemoq-autoq}; mkdir -p "$dir"; jobs=${JOBS:-3}
head -c 375000 tests/fixtures/calib.txt > "$dir/calib.txt"
tail -c +375001 tests/fixtures/calib.txt > "$dir/heldout.txt"
common=(--calib "$dir/calib.txt" --calib-samples 64 --calib-len 256 --eval "$dir/heldout.txt"
        --eval-windows 64 --force)
q() { name=$1; shift; ./build/nemoq quantize models/tiny-nemotron-h "$dir/$name" "$@" "${common[@]}" \
        --report "$dir/$name" > "$dir/$name.txt" 2>&1 || { echo "$name failed: $(tail -1 "$dir/$name.txt")"; exit 1; }; }

# nvfp4-conservative is 5.7041 effective bits on the searchable modules of
# this model (printed by every --auto-quantize run): + 0.3 = 6.0041
q auto-6.0041 --auto-quantize 6.0041 --auto-score-samples 4 &
q nvfp4-conservative --recipe nvfp4-conservative &
q fp8-conservative --recipe fp8-conservative &
wait
scores=(--auto-scores "$dir/auto-6.0041.json")
n=0
for b in 4.75 5.25 5.5 6.5 7.0 8.0; do
  q "auto-$b" --auto-quantize "$b" "${scores[@]}" &
  n=$((n+1)); [ $((n % jobs)) -eq 0 ] && wait
done
q all-nvfp4 --auto-quantize 4.6 --auto-formats nvfp4 "${scores[@]}" &
q all-fp8 --auto-quantize 8.1 --auto-formats fp8 "${scores[@]}" &
wait

python3 - "$dir" <<'PY'
import json, os, sys
d = sys.argv[1]
ref = {}
for name in os.listdir(d):
    if name.startswith("auto-") and name.endswith(".json"):
        ref.update(json.load(open(f"{d}/{name}"))["auto_quantize"]["preset_bits"])
rows = []
for name in sorted(os.listdir(d)):
    if not name.endswith(".json"): continue
    r = json.load(open(f"{d}/{name}")); s, e = r["summary"], r["eval"]
    a = r.get("auto_quantize")
    stem = name[:-5]
    bits = a["effective_bits"] if a else ref[s["recipe"]]
    rows.append((bits, stem, s["bits_per_parameter"], e["perplexity"], e["kl"], e["top1_agreement"],
                 f'{a["sum_of_scores"]:.5f}' if a else "-",
                 f'{s["nvfp4_modules"]}/{s["fp8_modules"]}/{s["kept_modules"]}'))
print("| checkpoint | bits/param (searchable) | bits/param (file) | perplexity | held-out KL | top-1 | sum of group KLs | nvfp4/fp8/kept modules |")
print("|---|---|---|---|---|---|---|---|")
for b, n, fb, p, kl, t, sc, m in sorted(rows):
    print(f"| {n} | {b:.3f} | {fb:.2f} | {p:.4f} | {kl:.5f} | {t:.4f} | {sc} | {m} |")
print("BF16 perplexity on the held-out part:", round(json.load(open(f"{d}/nvfp4-conservative.json"))["eval"]["input_perplexity"], 4))
PY
