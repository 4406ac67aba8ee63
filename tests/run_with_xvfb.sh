#!/bin/sh
# run_with_xvfb.sh COMMAND [ARGS...]: runs COMMAND with DISPLAY set to a private Xvfb server
# (1280x800, 24-bit, a free display number chosen by Xvfb itself) and exits with COMMAND's exit
# status. Stands in for xvfb-run, which can report its own clean-up failure (exit status 5)
# instead of the command's status when the command exits quickly.
dir=$(mktemp -d) || exit 2
xvfb_pid=""
cleanup() {
  if [ -n "$xvfb_pid" ]; then
    kill "$xvfb_pid" 2>/dev/null
    wait "$xvfb_pid" 2>/dev/null
  fi
  rm -rf "$dir"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
Xvfb -displayfd 3 -screen 0 1280x800x24 -nolisten tcp 3>"$dir/display" 2>"$dir/xvfb.log" &
xvfb_pid=$!
i=0
while [ ! -s "$dir/display" ]; do
  if ! kill -0 "$xvfb_pid" 2>/dev/null || [ $i -ge 200 ]; then
    echo "run_with_xvfb.sh: Xvfb did not start:" >&2
    cat "$dir/xvfb.log" >&2
    exit 2
  fi
  i=$((i + 1))
  sleep 0.05
done
DISPLAY=":$(cat "$dir/display")"
export DISPLAY
unset WAYLAND_DISPLAY
"$@"
