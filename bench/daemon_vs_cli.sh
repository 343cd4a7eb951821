#!/usr/bin/env bash
# The same Fashion-MNIST job (examples/fashion-mnist.json at WIDTH, EPOCHS epochs) through the daemon
# (a worker process) and with `moco train` directly, ROUNDS times in one run, alternating which goes
# first (odd rounds: the CLI first; even rounds: the daemon first), so order and drift cancel over
# an even number of rounds. Prints each wall time, each ratio daemon / CLI, and the ratio of the
# summed times. The CLI skips its raw-pixel kNN baseline (--no-baseline, about 10 s here), which the
# daemon does not compute, so both time the same work. Usage: bash bench/daemon_vs_cli.sh [EPOCHS] [WIDTH] [ROUNDS] (defaults 5 16 2).
# Loopback only; the daemon is stopped after each run. Needs dataset-fashion-mnist.
set -euo pipefail
trap 'echo "daemon_vs_cli.sh: line $LINENO failed: $BASH_COMMAND" >&2' ERR
cd "$(dirname "$0")/.."
. bench/lib.sh
epochs=${1:-5}; width=${2:-16}; rounds=${3:-2}
swift build -c release --product mocod >/dev/null
swift build -c release --product moco >/dev/null
MOCOD_BIN=.build/release/mocod
work=$(mktemp -d)
cleanup() { stop_mocod; rm -rf "$work"; }
trap cleanup EXIT
python3 - "$width" "$epochs" > "$work/spec.json" <<'PY'
import json, sys
s = json.load(open("examples/fashion-mnist.json"))
s["model"]["width"] = int(sys.argv[1]); s["optim"]["epochs"] = int(sys.argv[2])
print(json.dumps(s))
PY
daemon_run() {   # wall seconds from submission to success, into $work/daemon-N.time
  start_mocod "$work/daemon-$1" --threads 2
  local start id state
  start=$(now)
  id=$(submit_job "@$work/spec.json")
  while true; do
    state=$(job_state "$id")
    [ "$state" = succeeded ] && break
    [ "$state" = failed ] && { curl -s "$MOCOD_BASE/v1/jobs/$id" >&2; exit 1; }
    sleep 2
  done
  elapsed "$start" > "$work/daemon-$1.time"
  stop_mocod
}
cli_run() {
  local start
  start=$(now)
  .build/release/moco train --config "$work/spec.json" --out "$work/cli-$1" --plain --no-baseline > "$work/cli-$1.log" 2>&1
  elapsed "$start" > "$work/cli-$1.time"
}
sum_c=0; sum_d=0
for r in $(seq "$rounds"); do
  if [ $((r % 2)) -eq 1 ]; then cli_run "$r"; daemon_run "$r"; order="CLI first"; else daemon_run "$r"; cli_run "$r"; order="daemon first"; fi
  c=$(cat "$work/cli-$r.time"); d=$(cat "$work/daemon-$r.time")
  sum_c=$(awk -v a="$sum_c" -v b="$c" 'BEGIN { print a + b }'); sum_d=$(awk -v a="$sum_d" -v b="$d" 'BEGIN { print a + b }')
  awk -v r="$r" -v c="$c" -v d="$d" -v o="$order" 'BEGIN { printf "round %d (%s): moco train %.1f s, through the daemon %.1f s, daemon / CLI = %.3f\n", r, o, c, d, d / c }'
done
awk -v c="$sum_c" -v d="$sum_d" -v n="$rounds" 'BEGIN { printf "all %d rounds: moco train %.1f s, through the daemon %.1f s, daemon / CLI = %.3f (target: within 3%%)\n", n, c, d, d / c }'
