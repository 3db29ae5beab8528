#!/usr/bin/env bash
# The test command. Two pytest passes over one suite:
#   1. everything on Qt's offscreen platform (tests marked `xvfb` are skipped there);
#   2. the `xvfb` tests (VTK's Qt widget, whole-window screenshots) on a virtual X server.
# Qt's platform is chosen once per process, hence two processes. The last line sums both.
set -uo pipefail
cd "$(dirname "$0")/.."
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}
PY=.venv/bin/python
log1=$(mktemp) log2=$(mktemp)
trap 'rm -f "$log1" "$log2"' EXIT

env -u DISPLAY "$PY" -m pytest -q "$@" | tee "$log1"
rc1=${PIPESTATUS[0]}

if command -v xvfb-run >/dev/null 2>&1 || [ -n "${DISPLAY:-}" ]; then
  runner=()
  [ -z "${DISPLAY:-}" ] && runner=(xvfb-run -a -s "-screen 0 1920x1080x24")
  BODYAGE_TEST_XVFB=1 "${runner[@]}" "$PY" -m pytest -q -m xvfb "$@" | tee "$log2"
  rc2=${PIPESTATUS[0]}
  [ "$rc2" -eq 5 ] && rc2=0  # no xvfb test selected (e.g. a -k filter): not a failure
else
  echo "xvfb-run not found: the virtual-display tests were not run (scripts/setup.sh installs it)"
  rc2=0
fi

count() { grep -Eo "[0-9]+ $1" "$2" | tail -1 | grep -Eo "^[0-9]+" || echo 0; }
passed=$(( $(count passed "$log1") + $(count passed "$log2") ))
failed=$(( $(count failed "$log1") + $(count failed "$log2") + $(count error "$log1") + $(count error "$log2") ))
skipped=$(( $(count skipped "$log1") - $(count passed "$log2") ))
[ "$skipped" -lt 0 ] && skipped=0
echo "tests: $passed passed, $failed failed, $skipped skipped"
# pytest exits 1 for failures; anything else (a signal, an internal error) means a pass stopped early
for rc in "$rc1" "$rc2"; do
  [ "$rc" -gt 1 ] && echo "tests: a pytest pass ended abnormally (exit $rc): the counts above are incomplete"
done
[ "$rc1" -eq 0 ] && [ "$rc2" -eq 0 ]
