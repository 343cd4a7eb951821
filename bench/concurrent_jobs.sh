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
. bench/lib.sh
work=$(mktemp -d)
cleanup() { stop_mocod; rm -rf "$work"; }
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
  local mode=$1 max=$2 threads=$3
  start_mocod "$work/$mode" --max-running "$max" --threads 2
  local start ids=() id state n
  start=$(now)
  for n in a b; do ids+=("$(submit_job "$(spec "$threads" "$mode-$n")")"); done
  while true; do
    local done=0 failed=""
    for id in "${ids[@]}"; do
      state=$(job_state "$id")
      case $state in succeeded) done=$((done + 1));; failed|cancelled) failed=$id;; esac
    done
    [ -n "$failed" ] && { echo "$mode: job $failed $state" >&2; curl -s "$MOCOD_BASE/v1/jobs/$failed" >&2; exit 1; }
    [ "$done" -eq "${#ids[@]}" ] && break
    sleep 0.5
  done
  elapsed "$start"
  stop_mocod
}

concurrent=$(run concurrent 2 1)
echo "concurrent: 2 jobs, --max-running 2, 1 pinned thread each: ${concurrent} s"
sequential=$(run sequential 1 2)
echo "sequential: 2 jobs one after the other, 2 threads each:    ${sequential} s"
python3 -c "c, s = $concurrent, $sequential; print(f'concurrent / sequential = {c / s:.3f} ({\"met\" if c <= s else \"not met\"}: target concurrent <= sequential)')"
