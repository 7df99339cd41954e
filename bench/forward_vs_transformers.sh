#!/usr/bin/env bash
# The C forward pass against transformers' own CPU forward of the same model
# (the bundled tiny model, float32, 512 tokens, prefill), at the same thread
# counts, in one run.  Needs python3 with torch and transformers (the GPU
# machine has them; the computation runs on its CPU).
#   bench/forward_vs_transformers.sh [THREADS]   (a third count besides 1, 2)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
max=${1:-2}
# BENCH_FORWARD_BIN: a prebuilt bench_forward (for machines without the
# -dev packages; see README "Benchmarks")
if [ -n "${BENCH_FORWARD_BIN:-}" ]; then "$BENCH_FORWARD_BIN" "$root" 3 "$max"; else "$root/bench/bench_forward.sh" 3 "$max"; fi | tee /tmp/nemoq-bench-forward.txt | grep -E "^tiny: prefill 512" || true
python3 - "$root/models/tiny-nemotron-h" "$max" /tmp/nemoq-bench-forward.txt <<'PY'
import re, sys, time, torch
from transformers import AutoModelForCausalLM
path, maxt, ours = sys.argv[1], int(sys.argv[2]), open(sys.argv[3]).read()
model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
vocab = model.config.vocab_size
ids = torch.tensor([[(7919 * t + 11) % vocab for t in range(512)]])
mine = {int(t): float(v) for t, v in re.findall(r"tiny: prefill 512 tokens, (\d+) threads?\s*:\s*([\d.]+) tokens/s", ours)}
print(f"{'threads':>7} {'nemoq tok/s':>12} {'transformers tok/s':>19} {'ratio':>6}")
for t in sorted({1, 2, maxt}):
    torch.set_num_threads(t)
    with torch.no_grad():
        model(ids)
        best = min((lambda s: (model(ids), time.perf_counter() - s)[1])(time.perf_counter()) for _ in range(3))
    theirs = 512 / best
    print(f"{t:>7} {mine.get(t, float('nan')):>12.1f} {theirs:>19.1f} {mine.get(t, float('nan')) / theirs:>6.2f}")
print(f"torch {torch.__version__}, transformers {__import__('transformers').__version__}")
PY
