#!/usr/bin/env bash
# Every file of the malformed corpus must give exit 1 and exactly one line on
# stderr that names the file and the specific problem (never a crash: under
# the sanitizer build a crash or a read out of bounds aborts instead).
set -u
bin=$1; src=$2
pass=0; fail=0
while IFS=$'\t' read -r rel expect; do
  case "$rel" in ''|'#'*) continue;; esac
  path="$src/tests/malformed/$rel"
  err=$("$bin" inspect "$path" 2>&1 >/dev/null); rc=$?
  lines=$(printf '%s\n' "$err" | wc -l)
  base=${rel%%/*}
  if [ "$rc" -eq 1 ] && [ "$lines" -eq 1 ] && [[ "$err" == *"$expect"* ]] && [[ "$err" == *"$base"* ]]; then
    pass=$((pass+1))
  else
    echo "FAIL $rel: rc=$rc lines=$lines err=[$err] expected [$expect]"
    fail=$((fail+1))
  fi
done < "$src/tests/malformed/EXPECTED"
echo "$pass passed, $fail failed"
[ "$fail" -eq 0 ]
