#!/usr/bin/env bash
# The same Fashion-MNIST job (examples/fashion-mnist.json at WIDTH, EPOCHS epochs) through the daemon
# (a worker process) and with `moco train` directly, alternating ROUNDS times in one run; prints each
# wall time and the ratio daemon / CLI. Usage: bash bench/daemon_vs_cli.sh [EPOCHS] [WIDTH] [ROUNDS]
# (defaults 5 16 1). Loopback only; the daemon is stopped at the end. Needs dataset-fashion-mnist.
set -euo pipefail
trap 'echo "daemon_vs_cli.sh: line $LINENO failed: $BASH_COMMAND" >&2' ERR
cd "$(dirname "$0")/.."
epochs=${1:-5}; width=${2:-16}; rounds=${3:-1}
swift build -c release --product mocod >/dev/null
swift build -c release --product moco >/dev/null
work=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }; rm -rf "$work"; }
trap cleanup EXIT
python3 - "$width" "$epochs" > "$work/spec.json" <<'PY'
import json, sys
s = json.load(open("examples/fashion-mnist.json"))
s["model"]["width"] = int(sys.argv[1]); s["optim"]["epochs"] = int(sys.argv[2])
print(json.dumps(s))
PY
daemon_run() {   # prints wall seconds from submission to success
  local dir="$work/daemon-$1"
  mkdir -p "$dir"
  .build/release/mocod --port 0 --data-dir "$dir" --threads 2 --log-level warning > "$dir/out" 2> "$dir/log" &
  pid=$!
  local base=""
  for _ in $(seq 100); do
    base=$(sed -n 's/^mocod listening on //p' "$dir/out" | head -1)
    [ -n "$base" ] && curl -sf "$base/healthz" >/dev/null && break
    sleep 0.1
  done
  local start id state
  start=$(date +%s.%N)
  id=$(curl -sf -X POST -H 'Content-Type: application/json' --data @"$work/spec.json" "$base/v1/jobs" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
  # Polled cheaply (curl and sed, every 2 s): a python3 start per poll costs a visible share of
  # the 2 cores the job trains on, which the CLI run does not pay.
  while true; do
    state=$(curl -sf "$base/v1/jobs/$id" | sed -n 's/.*"state":"\([a-z]*\)".*/\1/p')
    [ "$state" = succeeded ] && break
    [ "$state" = failed ] && { curl -s "$base/v1/jobs/$id" >&2; exit 1; }
    sleep 2
  done
  python3 -c "print(f'{$(date +%s.%N) - $start:.1f}')"
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
}
cli_run() {
  local start
  start=$(date +%s.%N)
  .build/release/moco train --config "$work/spec.json" --out "$work/cli-$1" --plain > "$work/cli-$1.log" 2>&1
  python3 -c "print(f'{$(date +%s.%N) - $start:.1f}')"
}
for r in $(seq "$rounds"); do
  c=$(cli_run "$r"); d=$(daemon_run "$r")
  python3 -c "c, d = $c, $d; print(f'round $r: moco train {c} s, through the daemon {d} s, daemon / CLI = {d / c:.3f}')"
done
