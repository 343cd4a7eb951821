# Shared by the bench scripts that drive a daemon (source it): start mocod on a free loopback port
# and wait until it answers, submit a job, read a job's state, stop mocod. Needs MOCOD_BIN.

# start_mocod DIR [MOCOD OPTIONS...]: sets MOCOD_PID and MOCOD_BASE (http://127.0.0.1:PORT).
start_mocod() {
  local dir=$1; shift
  mkdir -p "$dir"
  "$MOCOD_BIN" --port 0 --data-dir "$dir" --log-level warning "$@" > "$dir/out" 2> "$dir/log" &
  MOCOD_PID=$!
  MOCOD_BASE=""
  for _ in $(seq 100); do
    MOCOD_BASE=$(sed -n 's/^mocod listening on //p' "$dir/out" | head -1)
    [ -n "$MOCOD_BASE" ] && curl -sf "$MOCOD_BASE/healthz" >/dev/null && return 0
    sleep 0.1
  done
  echo "mocod did not start" >&2; cat "$dir/log" >&2
  return 1
}

# stop_mocod: SIGTERM and wait (running jobs checkpoint first).
stop_mocod() {
  if [ -n "${MOCOD_PID:-}" ]; then kill "$MOCOD_PID" 2>/dev/null || true; wait "$MOCOD_PID" 2>/dev/null || true; fi
  MOCOD_PID=""
}

# submit_job SPEC (JSON text, or @FILE): prints the new job's id.
submit_job() {
  curl -sf -X POST -H 'Content-Type: application/json' --data "$1" "$MOCOD_BASE/v1/jobs" \
    | sed -n 's/.*"id":"\(job_[0-9a-f]*\)".*/\1/p'
}

# job_state ID: prints the job's state. Cheap on purpose (curl and sed, no interpreter start): the
# job trains on the same cores and a python3 start per poll would cost it a visible share.
job_state() {
  curl -sf "$MOCOD_BASE/v1/jobs/$1" | sed -n 's/.*"state":"\([a-z]*\)".*/\1/p'
}

# now: seconds since the epoch, with a fraction; elapsed START: seconds since START, one decimal.
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f\n", b - a }'; }
