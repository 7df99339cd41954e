#!/usr/bin/env bash
# `nemoq inspect` on the bundled model: the text report and the --json
# document (checked with an independent JSON parser) carry the same numbers.
set -u
bin=$1; src=$2
pass=0; fail=0
check() { if eval "$2"; then pass=$((pass+1)); else echo "FAIL: $1"; fail=$((fail+1)); fi; }
model="$src/models/tiny-nemotron-h"
text=$("$bin" inspect "$model"); rc=$?
check "text exit code" '[ $rc -eq 0 ]'
check "pattern line" '[[ "$text" == *"pattern     MEM*EMEM*EME (12 layers: 5 mamba, 5 moe, 2 attention, 0 mlp)"* ]]'
check "tensor count" '[[ "$text" == *"tensors     243 in 1 shard(s)"* ]]'
check "parameter count" '[[ "$text" == *"parameters  13,454,840 (+ 80 buffer elements"* ]]'
check "experts" '[[ "$text" == *"experts     16 routed per MoE layer (top-4) + 1 shared"* ]]'
check "not quantized" '[[ "$text" == *"quantized   no"* ]]'
json=$("$bin" inspect "$model" --json); rc=$?
check "json exit code" '[ $rc -eq 0 ]'
out=$(printf '%s' "$json" | python3 -c '
import json, sys
d = json.load(sys.stdin)
moe = [l["routed_experts"] for l in d["layers"] if l["kind"] == "moe"]
print(d["tensors"], d["parameters"], d["pattern"], d["routed_experts_per_moe_layer"],
      sum(r["parameters"] for r in d["roles"].values()), moe == [16] * 5,
      d["quantization"]["quantized"], d["roles"]["routed_experts"]["tensors"])')
check "json numbers ($out)" '[ "$out" = "243 13454840 MEM*EMEM*EME 16 13454840 True False 160" ]'
err=$("$bin" inspect 2>&1); rc=$?
check "missing argument is a usage error" '[ $rc -eq 2 ] && [[ "$err" == *"no checkpoint directory"* ]]'
err=$("$bin" inspect "$model" --jsn 2>&1); rc=$?
check "unknown flag named" '[ $rc -eq 2 ] && [[ "$err" == *"unknown flag '"'"'--jsn'"'"'"* ]]'
err=$("$bin" inspect /nonexistent/dir 2>&1); rc=$?
check "missing dir" '[ $rc -eq 1 ] && [[ "$err" == "nemoq: /nonexistent/dir: cannot open: No such file or directory" ]]'
err=$("$bin" frobnicate 2>&1); rc=$?
check "unknown command" '[ $rc -eq 2 ] && [[ "$err" == *"unknown command '"'"'frobnicate'"'"'"* ]]'
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
