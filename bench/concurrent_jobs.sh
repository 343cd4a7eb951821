#!/usr/bin/env bash
# Two Fashion-MNIST jobs (width 16, EPOCHS epochs, default 2) through the daemon, in one run:
#   concurrent: mocod --max-running 2 --threads 2, each job 1 thread, pinned to its own core;
#   sequential: mocod --max-running 1 --threads 2, the same two jobs one after the other, 2 threads each.
# Prints both wall times (first submission to last job done) and their ratio. Loopback only; each
# daemon is stopped at the end of its part. Needs the dataset-fashion-mnist package.
# MOCOD_BIN=path runs that binary instead of building `swift build -c release --product mocod`.
set -euo pipefail
trap 'echo "concurrent_jobs.sh: line $LINENO failed: $BASH_COMMAND" >&2' ERR
cd "$(dirname "$0")/.."
epochs=${EPOCHS:-2}
if [ -z "${MOCOD_BIN:-}" ]; then
  swift build -c release --product mocod >/dev/null
  MOCOD_BIN=.build/release/mocod
fi
work=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; }; rm -rf "$work"; }
trap cleanup EXIT

spec() {   # spec THREADS NAME
  python3 - "$1" "$2" "$epochs" <<'PY'
import json, sys
s = json.load(open("examples/fashion-mnist.json"))
s["model"]["width"] = 16
s["threads"] = int(sys.argv[1]); s["name"] = sys.argv[2]; s["optim"]["epochs"] = int(sys.argv[3])
print(json.dumps(s))
PY
}

# run MODE MAX_RUNNING THREADS_PER_JOB: prints the wall seconds
run() {
  local mode=$1 max=$2 threads=$3 dir="$work/$1"
  mkdir -p "$dir"
  "$MOCOD_BIN" --port 0 --data-dir "$dir" --max-running "$max" --threads 2 --log-level warning > "$dir/out" 2> "$dir/log" &
  pid=$!
  local base=""
  for _ in $(seq 100); do
    base=$(sed -n 's/^mocod listening on //p' "$dir/out" | head -1)
    [ -n "$base" ] && curl -sf "$base/healthz" >/dev/null && break
    sleep 0.1
  done
  [ -n "$base" ] || { echo "mocod did not start" >&2; cat "$dir/log" >&2; exit 1; }
  local start ids=() id
  start=$(date +%s.%N)
  for n in a b; do
    id=$(curl -sf -X POST -H 'Content-Type: application/json' --data "$(spec "$threads" "$mode-$n")" "$base/v1/jobs" \
         | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
    ids+=("$id")
  done
  while true; do
    local done=0 failed=""
    for id in "${ids[@]}"; do
      state=$(curl -sf "$base/v1/jobs/$id" | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])')
      case $state in succeeded) done=$((done + 1));; failed|cancelled) failed=$id;; esac
    done
    [ -n "$failed" ] && { echo "$mode: job $failed $state" >&2; curl -s "$base/v1/jobs/$failed" >&2; exit 1; }
    [ "$done" -eq "${#ids[@]}" ] && break
    sleep 0.5
  done
  local end
  end=$(date +%s.%N)
  kill "$pid"; wait "$pid" 2>/dev/null || true; pid=""
  python3 -c "print(f'{$end - $start:.1f}')"
}

concurrent=$(run concurrent 2 1)
echo "concurrent: 2 jobs, --max-running 2, 1 pinned thread each: ${concurrent} s"
sequential=$(run sequential 1 2)
echo "sequential: 2 jobs one after the other, 2 threads each:    ${sequential} s"
python3 -c "c, s = $concurrent, $sequential; print(f'concurrent / sequential = {c / s:.3f} ({\"met\" if c <= s else \"not met\"}: target concurrent <= sequential)')"
