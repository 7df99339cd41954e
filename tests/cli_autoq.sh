#!/usr/bin/env bash
# AutoQuantize end to end on the bundled model: the measured table and plan
# (--dry-run), a mixed NVFP4+FP8 checkpoint written as ModelOpt
# MIXED_PRECISION that verify, inspect and eval read, scores identical for
# any thread count, scores reused from a report, and clean errors for an
# infeasible budget and bad flags.
set -u
bin=$1; src=$2
model="$src/models/tiny-nemotron-h"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
pass=0; fail=0
check() { if eval "$2"; then pass=$((pass+1)); else echo "FAIL: $1"; fail=$((fail+1)); fi; }
head -c 100000 "$src/tests/fixtures/calib.txt" > "$tmp/calib.txt"
tail -c 50000 "$src/tests/fixtures/calib.txt" > "$tmp/eval.txt"
cal="--calib $tmp/calib.txt --calib-samples 4 --calib-len 32 --auto-score-samples 1"

"$bin" quantize "$model" "$tmp/aq" --auto-quantize 6 $cal --threads 2 --report "$tmp/rep" >"$tmp/out" 2>"$tmp/err"; rc=$?
check "auto-quantize 6 runs ($(tail -1 "$tmp/err"))" '[ $rc -eq 0 ]'
check "table: 24 groups, scores, budget line" 'grep -q "auto-quantize: 24 groups (weight cost)" "$tmp/out" && grep -q "budget 6.0000, chosen" "$tmp/out" && grep -q "layer evaluations" "$tmp/out"'
chosen=$(sed -n 's/.*chosen \([0-9.]*\) effective.*/\1/p' "$tmp/out")
check "chosen bits within the budget ($chosen)" 'awk "BEGIN{exit !($chosen <= 6.0 && $chosen > 4.5)}"'
nq=$(grep -c '"quant_algo": "NVFP4"' "$tmp/aq/hf_quant_config.json"); nf=$(grep -c '"quant_algo": "FP8"' "$tmp/aq/hf_quant_config.json")
check "MIXED_PRECISION with per-layer formats ($nq nvfp4, $nf fp8)" 'grep -q "\"quant_algo\": \"MIXED_PRECISION\"" "$tmp/aq/hf_quant_config.json" && [ "$nq" -gt 0 ] && [ "$nf" -gt 0 ] && ! grep -q exclude_modules "$tmp/aq/hf_quant_config.json"'
check "config.json carries the same quantized_layers" 'grep -q "\"quantized_layers\"" "$tmp/aq/config.json" && grep -q "MIXED_PRECISION" "$tmp/aq/config.json"'
out=$("$bin" verify "$tmp/aq" --against "$model" 2>&1); rc=$?
check "mixed checkpoint verifies ($(printf '%s' "$out" | tail -1))" '[ $rc -eq 0 ]'
out=$("$bin" inspect "$tmp/aq" 2>&1); rc=$?
check "inspect reads it" '[ $rc -eq 0 ] && [[ "$out" == *MIXED_PRECISION* ]]'
out=$("$bin" eval "$tmp/aq" --text "$tmp/eval.txt" --ctx 64 --windows 2 --against "$model" --json 2>&1); rc=$?
check "eval runs it" '[ $rc -eq 0 ] && [[ "$out" == *"\"kl\""* ]]'
check "report has the auto_quantize groups" 'grep -q "\"auto_quantize\"" "$tmp/rep.json" && grep -q "\"kl_fp8\"" "$tmp/rep.json"'
# the Pareto plot: well-formed SVG (an XML parser), one circle per point of
# auto_quantize.pareto, the chosen point on the knapsack curve, presets there
svg=$(python3 - "$tmp/rep" <<'PY' 2>&1
import json, re, sys, xml.etree.ElementTree as ET
p = json.load(open(sys.argv[1] + ".json"))["auto_quantize"]
html = open(sys.argv[1] + ".html").read()
svgs = [ET.fromstring(s) for s in re.findall(r"<svg.*?</svg>", html, re.S)]
ns = "{http://www.w3.org/2000/svg}"
circles = sum(len(s.findall(ns + "circle")) for s in svgs)
series = {s["label"]: s["points"] for s in p["pareto"]["series"]}
curve = series["AutoQuantize (sum of group KLs)"]
chosen = series["this run's choice (sum of group KLs)"][0]
names = {q["name"] for q in series["uniform formats and presets (sum of group KLs)"]}
ok = (len(svgs) == 1 and circles == sum(len(v) for v in series.values()) and len(curve) > 5
      and abs(chosen["x"] - p["effective_bits"]) < 1e-9
      and abs(chosen["y"] - p["sum_of_scores"]) < 1e-9
      and any(abs(q["x"] - chosen["x"]) < 1e-9 and abs(q["y"] - chosen["y"]) < 1e-12 for q in curve)
      and all(a["x"] < b["x"] and a["y"] >= b["y"] for a, b in zip(curve, curve[1:]))
      and {"all nvfp4", "all fp8", "nvfp4-conservative"} <= names)
print("ok" if ok else f"bad: {len(svgs)} svg, {circles} circles")
PY
)
check "report: Pareto SVG parses, points match the JSON ($svg)" '[ "$svg" = ok ]'

# the same scores with one thread (dry run: nothing written)
"$bin" quantize "$model" "$tmp/dry" --auto-quantize 6 $cal --threads 1 --dry-run >"$tmp/out1" 2>"$tmp/err1"; rc=$?
check "dry run exits 0 and writes nothing" '[ $rc -eq 0 ] && [ ! -e "$tmp/dry" ] && grep -q "recipe auto-quantize" "$tmp/out1"'
check "scores identical for 1 and 2 threads" 'diff <(grep "^backbone" "$tmp/out" | head -24) <(grep "^backbone" "$tmp/out1" | head -24) >/dev/null'

# scores reused; formats restricted
"$bin" quantize "$model" --auto-quantize 8.5 $cal --auto-scores "$tmp/rep.json" --auto-formats nvfp4,fp8 --dry-run >"$tmp/out2" 2>&1; rc=$?
check "--auto-scores reuses the report" '[ $rc -eq 0 ] && grep -q "scores read from" "$tmp/out2" && ! grep -q "bf16 *auto-quantize" "$tmp/out2"'
"$bin" quantize "$model" --auto-quantize 16 $cal --auto-scores "$tmp/rep.json" --dry-run >"$tmp/out3" 2>&1; rc=$?
check "all-bf16 budget is refused" '[ $rc -eq 1 ] && grep -q "keeps every module in bf16" "$tmp/out3"'
"$bin" quantize "$model" --auto-quantize 4 $cal --auto-scores "$tmp/rep.json" --dry-run >"$tmp/out4" 2>&1; rc=$?
check "infeasible budget names the smallest feasible one ($(tail -1 "$tmp/out4"))" '[ $rc -eq 1 ] && grep -q "infeasible; the smallest feasible budget with these formats is 4.50" "$tmp/out4"'

# flags
"$bin" quantize "$model" "$tmp/x" --auto-quantize 6 --recipe nvfp4-conservative $cal >"$tmp/o" 2>&1; rc=$?
check "--recipe with --auto-quantize refused" '[ $rc -ne 0 ] && grep -q "drop --recipe" "$tmp/o" && [ ! -e "$tmp/x" ]'
"$bin" quantize "$model" "$tmp/x" --auto-quantize 6 >"$tmp/o" 2>&1; rc=$?
check "--auto-quantize without --calib refused" '[ $rc -ne 0 ] && grep -q "needs --calib" "$tmp/o" && [ ! -e "$tmp/x" ]'
"$bin" quantize "$model" "$tmp/x" --auto-quantize 6 --auto-cost tokens $cal >"$tmp/o" 2>&1; rc=$?
check "bad --auto-cost refused" '[ $rc -ne 0 ] && grep -q "expected weight or active-moe" "$tmp/o"'
"$bin" quantize "$model" "$tmp/x" --auto-quantize 6 --auto-formats nvfp4,int4 $cal >"$tmp/o" 2>&1; rc=$?
check "bad --auto-formats refused" '[ $rc -ne 0 ] && grep -q "not one of nvfp4, fp8, bf16" "$tmp/o"'
# 127 characters of valid names then ",bf16": cut to a 128-byte buffer the
# list would end at a comma and silently lose bf16
long=$(printf 'nvfp4,%.0s' $(seq 20); printf 'fp8,fp8'),bf16
"$bin" quantize "$model" "$tmp/x" --auto-quantize 6 --auto-formats "$long" $cal >"$tmp/o" 2>&1; rc=$?
check "--auto-formats refuses a list it would have to cut" '[ ${#long} -eq 132 ] && [ $rc -ne 0 ] && grep -q "longer than 127 characters" "$tmp/o" && [ ! -e "$tmp/x" ]'
"$bin" quantize "$model" "$tmp/x" --recipe nvfp4-conservative --auto-cost weight $cal >"$tmp/o" 2>&1; rc=$?
check "--auto-* without --auto-quantize refused" '[ $rc -ne 0 ] && grep -q "need --auto-quantize" "$tmp/o"'
"$bin" quantize "$model" --auto-quantize 6 $cal --auto-scores "$tmp/calib.txt" --dry-run >"$tmp/o" 2>&1; rc=$?
check "--auto-scores on a non-report refused" '[ $rc -eq 1 ] && grep -q "auto-scores" "$tmp/o"'
"$bin" quantize "$model" --auto-quantize 6 $cal --auto-score proxy --threads 2 --dry-run >"$tmp/o" 2>&1; rc=$?
check "--auto-score proxy runs, fewer layer evaluations ($(grep -o '(proxy) [0-9]* layer' "$tmp/o"))" '[ $rc -eq 0 ] && grep -q "scores = proxy" "$tmp/o" && grep -q "sensitivity cost (proxy) 126 layer evaluations" "$tmp/o" && grep -q "auto-quantize: group proxy nvfp4" "$tmp/o"'
check "report has proxies and residual errors" 'grep -q "\"res_err_nvfp4\"" "$tmp/rep.json" && grep -q "\"out_err_fp8\"" "$tmp/rep.json"'
"$bin" quantize "$model" "$tmp/x" --recipe nvfp4-conservative --auto-score proxy $cal >"$tmp/o" 2>&1; rc=$?
check "--auto-score without --auto-quantize refused" '[ $rc -ne 0 ] && grep -q "need --auto-quantize" "$tmp/o"'
"$bin" quantize "$model" "$tmp/x" --auto-quantize 6 --auto-score fisher $cal >"$tmp/o" 2>&1; rc=$?
check "bad --auto-score refused" '[ $rc -ne 0 ] && grep -q "expected kl or proxy" "$tmp/o"'
"$bin" quantize "$model" --auto-quantize 6 $cal --auto-scores "$tmp/rep.json" --auto-cost active-moe --dry-run >"$tmp/o" 2>&1; rc=$?
check "active-moe cost runs" '[ $rc -eq 0 ] && grep -q "(active-moe cost)" "$tmp/o"'

echo "cli_autoq: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
