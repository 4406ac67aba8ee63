#!/bin/sh
# expect_error.sh PATTERN COMMAND [ARGS...]: passes when COMMAND exits with status 1 (an error,
# not a crash: a signal gives 128+) and its output matches the extended regex PATTERN.
pattern=$1
shift
out=$("$@" 2>&1)
status=$?
if [ "$status" -ne 1 ]; then
  echo "expected exit status 1, got $status; output:"; echo "$out"; exit 1
fi
if ! printf '%s\n' "$out" | grep -Eq -- "$pattern"; then
  echo "output does not match '$pattern':"; echo "$out"; exit 1
fi
echo "ok: $out"
