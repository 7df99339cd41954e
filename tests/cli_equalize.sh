#!/usr/bin/env bash
# --equalize (every pair kind), --gptq-act-order and --int4-wide-groups end
# to end on the bundled model: the checkpoints verify (INT4 GPTQ with its
# dynamic group rules, NVFP4 W4A4 with rescaled norms in BF16; structurally,
# since against the input verify rightly sees rescaled weights), are
# byte-identical for 1 and 2 threads, change only what they should (norm and
# router weights rescaled in place, same tensor set and dtypes), and the
# flags' preconditions fail cleanly.
set -u
bin=$1; src=$2
model="$src/models/tiny-nemotron-h"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
pass=0; fail=0
check() { if eval "$2"; then pass=$((pass+1)); else echo "FAIL: $1"; fail=$((fail+1)); fi; }
head -c 200000 "$src/tests/fixtures/calib.txt" > "$tmp/calib.txt"
cal="--calib $tmp/calib.txt --calib-samples 2 --calib-len 64"

int4="--recipe int4 --algo gptq --weight-scale mse --gptq-act-order --int4-wide-groups"
# thread independence with the default pair kind (cheap), then every kind once
for t in 1 2; do
  "$bin" quantize "$model" "$tmp/int4-$t" $int4 --equalize $cal --threads $t >"$tmp/out" 2>"$tmp/err"; rc=$?
  check "int4 --equalize quantizes ($(tail -1 "$tmp/err"))" '[ $rc -eq 0 ] && grep -q "^equalize: [1-9]" "$tmp/out"'
done
check "int4: byte-identical for 1 and 2 threads" 'cmp -s "$tmp/int4-1/model.safetensors" "$tmp/int4-2/model.safetensors"'
"$bin" quantize "$model" "$tmp/int4-1" $int4 --equalize-pairs norm,gated,relu2 $cal --force >"$tmp/out" 2>"$tmp/err"; rc=$?
check "int4 --equalize-pairs norm,gated,relu2 quantizes ($(tail -1 "$tmp/err"))" '[ $rc -eq 0 ] && grep -q "^equalize: [1-9]" "$tmp/out"'
out=$("$bin" verify "$tmp/int4-1" 2>&1); rc=$?
check "int4 verifies ($(printf '%s' "$out" | tail -1))" '[ $rc -eq 0 ] && [[ "$out" != *warning* ]]'
check "int4: wide groups as dynamic rules, desc_act stays false" 'grep -q "\"group_size\": 128" "$tmp/int4-1/quantize_config.json" && grep -q "\"desc_act\": false" "$tmp/int4-1/quantize_config.json"'
python3 - "$model/model.safetensors" "$tmp/int4-1/model.safetensors" > "$tmp/py" 2>&1 <<'PY'
import json, struct, sys
def hdr(p):
    f = open(p, "rb"); n = struct.unpack("<Q", f.read(8))[0]; return f, n, json.loads(f.read(n))
fa, na, a = hdr(sys.argv[1]); fb, nb, b = hdr(sys.argv[2])
def raw(f, n, h, k):
    s, e = h[k]["data_offsets"]; f.seek(8 + n + s); return f.read(e - s)
# kept tensors keep name, dtype and shape; the rescaled ones are the norms
# and the routers only
changed = set()
for k, v in a.items():
    if k == "__metadata__" or k not in b:
        continue
    assert b[k]["dtype"] == v["dtype"] and b[k]["shape"] == v["shape"], k
    if raw(fa, na, a, k) != raw(fb, nb, b, k):
        changed.add(k.split(".")[-2])
print(sorted(changed))
assert changed <= {"norm", "gate"} and "norm" in changed, changed
PY
prc=$?
check "int4: only norm and router weights differ among kept tensors ($(tail -1 "$tmp/py"))" '[ $prc -eq 0 ]'

"$bin" quantize "$model" "$tmp/nv" --recipe nvfp4-conservative --equalize $cal >"$tmp/out" 2>"$tmp/err"; rc=$?
check "nvfp4 --equalize quantizes ($(tail -1 "$tmp/err"))" '[ $rc -eq 0 ]'
out=$("$bin" verify "$tmp/nv" 2>&1); rc=$?
check "nvfp4 --equalize verifies ($(printf '%s' "$out" | tail -1))" '[ $rc -eq 0 ] && [[ "$out" != *warning* ]]'

# qkv_shared_scale FILE: exits 0 when each attention layer's q/k/v in the
# checkpoint FILE carry one and the same weight_scale_2 (prints them)
qkv_shared_scale() {
python3 - "$1" > "$tmp/py" 2>&1 <<'PY'
import json, struct, sys
f = open(sys.argv[1], "rb"); n = struct.unpack("<Q", f.read(8))[0]; h = json.loads(f.read(n))
g = {}
for k in sorted(h):
    if k.endswith("proj.weight_scale_2") and k.split(".")[-2] in ("q_proj", "k_proj", "v_proj"):
        s, e = h[k]["data_offsets"]; f.seek(8 + n + s)
        g.setdefault(k.rsplit(".", 2)[0], []).append(struct.unpack("<f", f.read(4))[0])
print(g)
assert len(g) == 2 and all(len(v) == 3 and len(set(v)) == 1 for v in g.values()), g
PY
}

# NVFP4 q/k/v rescaled by the norm pair still share one weight_scale_2 (vLLM's
# fused qkv_proj keeps one, the max of the three, without re-encoding)
"$bin" quantize "$model" "$tmp/qkv" --recipe nvfp4-aggressive --include '*_proj=nvfp4' --equalize-pairs norm $cal >"$tmp/out" 2>"$tmp/err"; rc=$?
check "nvfp4 q/k/v --equalize-pairs norm quantizes ($(tail -1 "$tmp/err"))" '[ $rc -eq 0 ]'
qkv_shared_scale "$tmp/qkv/model.safetensors"
prc=$?
check "nvfp4 equalized q/k/v share one weight_scale_2 ($(tail -1 "$tmp/py"))" '[ $prc -eq 0 ]'

# the served (W4A4) objective: every kind, thread-independent, verifies,
# q/k/v keep one shared weight_scale_2 (checked by the script above)
for t in 1 2; do
  "$bin" quantize "$model" "$tmp/nvs-$t" --recipe nvfp4-conservative --equalize-pairs norm,gated,relu2 --equalize-objective served $cal --threads $t >"$tmp/out" 2>"$tmp/err"; rc=$?
  check "nvfp4 --equalize-objective served quantizes ($(tail -1 "$tmp/err"))" '[ $rc -eq 0 ] && grep -q "^equalize: [1-9]" "$tmp/out"'
done
check "nvfp4 served objective: byte-identical for 1 and 2 threads" 'cmp -s "$tmp/nvs-1/model.safetensors" "$tmp/nvs-2/model.safetensors"'
out=$("$bin" verify "$tmp/nvs-1" 2>&1); rc=$?
check "nvfp4 served objective verifies ($(printf '%s' "$out" | tail -1))" '[ $rc -eq 0 ] && [[ "$out" != *warning* ]]'
"$bin" quantize "$model" "$tmp/qkv2" --recipe nvfp4-aggressive --include '*_proj=nvfp4' --equalize-pairs norm --equalize-objective served $cal >"$tmp/out" 2>"$tmp/err"; rc=$?
qkv_shared_scale "$tmp/qkv2/model.safetensors"
prc=$?
check "nvfp4 served objective: q/k/v share one weight_scale_2 ($rc, $(tail -1 "$tmp/py"))" '[ $rc -eq 0 ] && [ $prc -eq 0 ]'
out=$("$bin" quantize "$model" "$tmp/x" --recipe nvfp4-conservative --equalize-objective served $cal 2>&1); rc=$?
check "--equalize-objective without --equalize fails ($out)" '[ $rc -ne 0 ] && [[ "$out" == *"needs --equalize"* ]] && [ ! -e "$tmp/x" ]'
out=$("$bin" quantize "$model" "$tmp/x" --recipe nvfp4-conservative --equalize --equalize-objective w8 $cal 2>&1); rc=$?
check "--equalize-objective rejects an unknown value ($out)" '[ $rc -ne 0 ] && [[ "$out" == *"expected hessian or served"* ]] && [ ! -e "$tmp/x" ]'

out=$("$bin" quantize "$model" "$tmp/x" --recipe int4 --equalize 2>&1); rc=$?
check "--equalize without --calib fails ($out)" '[ $rc -ne 0 ] && [[ "$out" == *"--equalize needs --calib"* ]] && [ ! -e "$tmp/x" ]'
out=$("$bin" quantize "$model" "$tmp/x" --recipe int4 --gptq-act-order $cal 2>&1); rc=$?
check "--gptq-act-order without gptq fails ($out)" '[ $rc -ne 0 ] && [[ "$out" == *"needs --algo gptq"* ]] && [ ! -e "$tmp/x" ]'
out=$("$bin" quantize "$model" "$tmp/x" --recipe int4 --equalize-pairs norm,bogus $cal 2>&1); rc=$?
check "--equalize-pairs rejects an unknown kind ($out)" '[ $rc -ne 0 ] && [[ "$out" == *"expected a comma list"* ]]'
# 63 characters of valid kinds then ",relu2": a list cut to a 64-byte buffer
# would end exactly at a comma and silently drop relu2
long=$(printf 'norm,%.0s' 1 2 3 4 5 6 7 8; printf 'gated,gated,gated,gated'),relu2
out=$("$bin" quantize "$model" "$tmp/x" --recipe int4 --equalize-pairs "$long" $cal 2>&1); rc=$?
check "--equalize-pairs refuses a list it would have to cut ($out)" '[ ${#long} -eq 69 ] && [ $rc -ne 0 ] && [[ "$out" == *"longer than 63 characters"* ]] && [ ! -e "$tmp/x" ]'

echo "cli_equalize: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
