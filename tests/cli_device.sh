#!/usr/bin/env bash
# --device: cpu is the default and changes nothing; auto says which device
# ran; cuda on a build or machine without a usable GPU is a one-line error
# (exit 1) that leaves nothing behind; a malformed value is refused.
bin="$1"; src="$2"
model="$src/models/tiny-nemotron-h"
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
pass=0; fail=0
check() { if eval "$2"; then pass=$((pass+1)); else echo "FAIL: $1"; fail=$((fail+1)); fi; }
head -c 20000 "$src/tests/fixtures/calib.txt" > "$tmp/text.txt"

plain=$("$bin" eval "$model" --text "$tmp/text.txt" --ctx 64 --windows 2 2>&1); rc=$?
check "eval runs" '[ $rc -eq 0 ] && [[ "$plain" == *"device: cpu"* ]]'
cpu=$("$bin" eval "$model" --text "$tmp/text.txt" --ctx 64 --windows 2 --device cpu 2>&1); rc=$?
check "--device cpu is the default" '[ $rc -eq 0 ] && [ "$cpu" = "$plain" ]'

auto=$("$bin" eval "$model" --text "$tmp/text.txt" --ctx 64 --windows 2 --device auto 2>&1); rc=$?
check "--device auto runs and says where ($auto)" '[ $rc -eq 0 ] && [[ "$auto" == *"device: "* ]]'

for spec in cuda cuda:0; do
  err=$("$bin" eval "$model" --text "$tmp/text.txt" --ctx 64 --windows 2 --device $spec 2>&1); rc=$?
  if [[ "$auto" == *"device: cuda:"* ]]; then
    # a machine with a usable GPU
    check "--device $spec runs on the GPU" '[ $rc -eq 0 ] && [[ "$err" == *"device: cuda:0"* ]]'
  else
    check "--device $spec without a GPU: one-line error ($err)" \
      '[ $rc -eq 1 ] && [ "$(printf "%s\n" "$err" | wc -l)" -eq 1 ] && [[ "$err" == "nemoq: --device $spec: "* ]]'
    err=$("$bin" quantize "$model" "$tmp/q" --recipe nvfp4-conservative --calib "$tmp/text.txt" \
          --calib-samples 2 --calib-len 64 --device $spec 2>&1); rc=$?
    check "quantize --device $spec without a GPU: one-line error, no output" \
      '[ $rc -eq 1 ] && [ "$(printf "%s\n" "$err" | wc -l)" -eq 1 ] && [ ! -e "$tmp/q" ]'
  fi
done

err=$("$bin" eval "$model" --text "$tmp/text.txt" --device cuda:x 2>&1); rc=$?
check "malformed --device refused ($err)" '[ $rc -eq 1 ] && [[ "$err" == *"--device '"'"'cuda:x'"'"': expected auto, cpu, cuda or cuda:N"* ]]'
err=$("$bin" eval "$model" --text "$tmp/text.txt" --device gpu 2>&1); rc=$?
check "unknown --device refused" '[ $rc -eq 1 ] && [[ "$err" == *"expected auto, cpu, cuda or cuda:N"* ]]'
err=$("$bin" eval "$model" --text "$tmp/text.txt" --device cuda:7 2>&1); rc=$?
check "--device cuda:7 refused ($err)" '[ $rc -eq 1 ] && [ "$(printf "%s\n" "$err" | wc -l)" -eq 1 ]'

echo "$pass passed, $fail failed"
[ $fail -eq 0 ]
