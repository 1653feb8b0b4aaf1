#!/usr/bin/env bash
# Repeat what a new user does on a fresh machine: clone the repository into a temporary folder, start with an
# empty lorakit cache (LORAKIT_HOME) and no .venv, and run the README's two commands, timing each.
#
#   tools/fresh-check.sh [REPO] [--keep]      REPO defaults to this checkout (its committed HEAD)
#   TARGETS=test tools/fresh-check.sh         only `make test` (default: demo, then test, as the README lists them)
#
# The law texts the tests read live beside the checkout (../shared); they are linked beside the clone the
# same way. Logs go to the temporary folder; its path is printed. --keep leaves the folder for inspection.
set -euo pipefail
here="$(cd "$(dirname "$0")/.." && pwd)"
repo="$here"
keep=0
for arg in "$@"; do
  case "$arg" in
    --keep) keep=1 ;;
    *) repo="$arg" ;;
  esac
done
work="$(mktemp -d "${TMPDIR:-/tmp}/lorakit-fresh.XXXXXX")"
[ "$keep" = 1 ] || trap 'rm -rf "$work"' EXIT
git clone -q "$repo" "$work/main"
[ -d "$here/../shared" ] && ln -s "$(cd "$here/../shared" && pwd)" "$work/shared"
export LORAKIT_HOME="$work/home"   # empty: every model is pulled as on a new machine
echo "fresh clone at $work/main (commit $(git -C "$work/main" rev-parse --short HEAD)), LORAKIT_HOME=$LORAKIT_HOME"
echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ *//'), $(free -g | awk '/Mem:/{print $2}') GB RAM"

status=0
for target in ${TARGETS:-demo test}; do
  start=$(date +%s)
  if (cd "$work/main" && make "$target") >"$work/make-$target.log" 2>&1; then rc=0; else rc=$?; status=1; fi
  secs=$(( $(date +%s) - start ))
  printf 'make %-4s  exit %d  %dm %02ds   (log: %s)\n' "$target" "$rc" $((secs / 60)) $((secs % 60)) "$work/make-$target.log"
  tail -n 3 "$work/make-$target.log" | sed 's/^/    /'
done
exit "$status"
