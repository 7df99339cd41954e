#!/usr/bin/env bash
# AutoQuantize on the bundled model: held-out KL against effective bits, for
# the uniform presets and AutoQuantize at several budgets (the README's
# Pareto table and docs/autoq_pareto.svg).  Calibration on the first 375,000
# bytes of calib.txt (64 x 256 tokens; sensitivities on 4 of those windows),
# evaluation on the rest (64 windows of 256), as bench/quality_table.sh.  The
# KL scores are measured once (at nvfp4-conservative + 0.3 bits) and reused
# for the other budgets with --auto-scores.  Also: the same budget chosen
# from --auto-score proxy scores, --auto-cost active-moe at
# nvfp4-conservative + 0.3 on that scale, and how well the cheaper measures
# rank the groups against the measured KL (Spearman).  Runs JOBS (default 3)
# quantizations at once.
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
q auto-6.0041-proxy --auto-quantize 6.0041 --auto-score proxy --auto-score-samples 4 &
q nvfp4-conservative --recipe nvfp4-conservative &
wait
scores=(--auto-scores "$dir/auto-6.0041.json")
# the same on the active-moe scale (routed experts count top_k / n_experts)
moe=$(./build/nemoq quantize models/tiny-nemotron-h --auto-quantize 8 --auto-cost active-moe \
        --calib "$dir/calib.txt" --calib-samples 64 --calib-len 256 "${scores[@]}" --dry-run |
      sed -n 's/.*nvfp4-conservative \([0-9.]*\),.*/\1/p')
moe=$(python3 -c "print(round($moe + 0.3, 4))")
n=0
for b in 4.75 5.25 5.5 6.5 7.0 8.0; do
  q "auto-$b" --auto-quantize "$b" "${scores[@]}" &
  n=$((n+1)); [ $((n % jobs)) -eq 0 ] && wait
done
wait
q all-nvfp4 --auto-quantize 4.6 --auto-formats nvfp4 "${scores[@]}" &
q all-fp8 --auto-quantize 8.1 --auto-formats fp8 "${scores[@]}" &
q fp8-conservative --recipe fp8-conservative &
wait
q "auto-active-moe-$moe" --auto-quantize "$moe" --auto-cost active-moe "${scores[@]}"

python3 - "$dir" <<'PY'
import json, os, sys
d = sys.argv[1]
ref = {}
for name in os.listdir(d):
    if name.startswith("auto-") and name.endswith(".json") and "active-moe" not in name:
        ref.update(json.load(open(f"{d}/{name}"))["auto_quantize"]["preset_bits"])
rows = []
for name in sorted(os.listdir(d)):
    if not name.endswith(".json") or name == "plot.json": continue
    r = json.load(open(f"{d}/{name}")); s, e = r["summary"], r["eval"]
    a = r.get("auto_quantize")
    stem = name[:-5]
    bits = a["effective_bits"] if a else ref[s["recipe"]]
    rows.append((bits, stem, s["bits_per_parameter"], e["perplexity"], e["kl"], e["top1_agreement"],
                 f'{a["sum_of_scores"]:.5f}' if a else "-",
                 f'{s["nvfp4_modules"]}/{s["fp8_modules"]}/{s["kept_modules"]}'))
print("| checkpoint | bits/param (searchable) | bits/param (file) | perplexity | held-out KL | top-1 | sum of group scores | nvfp4/fp8/kept modules |")
print("|---|---|---|---|---|---|---|---|")
for b, n, fb, p, kl, t, sc, m in sorted(rows, key=lambda r: ("active-moe" in r[1], r[0])):
    print(f"| {n} | {b:.3f}{' (active-moe)' if 'active-moe' in n else ''} | {fb:.2f} | {p:.4f} | {kl:.5f} | {t:.4f} | {sc} | {m} |")
print("BF16 perplexity on the held-out part:", round(json.load(open(f"{d}/nvfp4-conservative.json"))["eval"]["input_perplexity"], 4))

# the cheaper measures against the measured KL, over the 24 groups
def ranks(v):
    o = sorted(range(len(v)), key=lambda i: v[i]); r = [0.0] * len(v); i = 0
    while i < len(o):
        j = i
        while j + 1 < len(o) and v[o[j + 1]] == v[o[i]]: j += 1
        for k in range(i, j + 1): r[o[k]] = (i + j) / 2
        i = j + 1
    return r
def spearman(a, b):
    ra, rb = ranks(a), ranks(b); n = len(a); ma, mb = sum(ra) / n, sum(rb) / n
    cov = sum((x - ma) * (y - mb) for x, y in zip(ra, rb))
    return cov / (sum((x - ma) ** 2 for x in ra) * sum((y - mb) ** 2 for y in rb)) ** 0.5
kl = json.load(open(f"{d}/auto-6.0041.json"))["auto_quantize"]
px = json.load(open(f"{d}/auto-6.0041-proxy.json"))["auto_quantize"]
pg = {g["group"]: g for g in px["groups"]}
print("\n| measure | layer evaluations | seconds | Spearman vs KL, nvfp4+fp8 (48) | nvfp4 (24) | fp8 (24) |")
print("|---|---|---|---|---|---|")
for key, src, cost in (("out_err", kl, "-"), ("res_err", kl, "-"),
                       ("proxy", pg, f'{px["layer_evaluations"]} | {px["seconds"]:.0f}')):
    cells = []
    for fmts in (("nvfp4", "fp8"), ("nvfp4",), ("fp8",)):
        a = [g["kl_" + f] for g in kl["groups"] for f in fmts]
        b = [(pg if key == "proxy" else {g["group"]: g for g in kl["groups"]})[g["group"]][f"{key}_{f}"]
             for g in kl["groups"] for f in fmts]
        cells.append(f"{spearman(a, b):.3f}")
    print(f"| {key} | {cost if key == 'proxy' else '- | -'} | {' | '.join(cells)} |")
print(f'| kl | {kl["layer_evaluations"]} | {kl["seconds"]:.0f} | 1 | 1 | 1 |')

# docs/autoq_pareto.svg: held-out KL against searchable bits
pts = {"auto": [], "uni": [], "proxy": []}
for b, n, fb, p, k, t, sc, m in sorted(rows):
    if "active-moe" in n: continue
    key = "proxy" if n.endswith("proxy") else "uni" if not n.startswith("auto-") else "auto"
    pts[key].append({"x": b, "y": k, "name": n})
plot = {"x_label": "effective bits per parameter (searchable modules)", "y_label": "held-out KL (nats/token)",
        "series": [{"label": "AutoQuantize (measured KL scores)", "line": True, "points": pts["auto"]},
                   {"label": "uniform formats and presets", "line": False, "points": pts["uni"]},
                   {"label": "AutoQuantize (proxy scores)", "line": False, "points": pts["proxy"]}]}
json.dump(plot, open(f"{d}/plot.json", "w"), indent=1)
PY
./build/nemoq-pareto-svg "$dir/plot.json" > docs/autoq_pareto.svg
echo "wrote docs/autoq_pareto.svg"
