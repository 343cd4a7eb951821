#!/usr/bin/env bash
# API latency while a job trains, and the training slowdown it causes: a Fashion-MNIST job at
# width 16 runs in mocod; training images/s is read from its metrics before, during and after
# `wrk -t1 -c32 -d15s` on GET /v1/jobs/{id}, run at normal priority on the same cores as the
# training (so its own CPU counts against training too).
# MOCOD_ENV="MOCOD_API_CPU_SHARE=0" runs mocod without its API CPU budget; CONNECTIONS sets wrk's -c;
# DELAY_MS > 0 paces each connection (wrk's Lua delay()) to model polling clients rather than a flood;
# WRK_IDLE=1 runs wrk in the idle scheduling class (a stand-in for clients on other machines).
set -euo pipefail
cd "$(dirname "$0")/.."
swift build -c release --product mocod >/dev/null
data=$(mktemp -d)
port=${PORT:-18282}
env ${MOCOD_ENV:-} .build/release/mocod --port "$port" --data-dir "$data" --log-level warning > "$data/log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$data"' EXIT
base="http://127.0.0.1:$port"
for _ in $(seq 100); do curl -sf "$base/healthz" >/dev/null && break; sleep 0.1; done
spec=$(python3 -c '
import json; s = json.load(open("examples/fashion-mnist.json"))
s["model"]["width"] = 16; s["optim"]["epochs"] = 2; s["eval"] = None; s["checkpoint"]["every_epochs"] = None
print(json.dumps(s))')
id=$(curl -sf -X POST "$base/v1/jobs" -H 'Content-Type: application/json' --data "$spec" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
rate() {  # median images/s of the steps whose time falls in [$1, $2)
  curl -sf "$base/v1/jobs/$id/metrics?max_points=100000" | python3 -c '
import json, sys, statistics
lo, hi = float(sys.argv[1]), float(sys.argv[2])
pts = [p for p in json.load(sys.stdin)["points"] if p["kind"] == "step" and lo <= p["time"] < hi]
print("%.1f %d" % (statistics.median(p["images_per_second"] for p in pts), len(pts)))' "$1" "$2"
}
sleep 15
t0=$(date +%s.%N); sleep 15; t1=$(date +%s.%N)
script=()
if [ "${DELAY_MS:-0}" -gt 0 ]; then
  printf 'function delay() return %d end\n' "$DELAY_MS" > "$data/pace.lua"
  script=(-s "$data/pace.lua")
fi
runner=()
[ "${WRK_IDLE:-0}" = 1 ] && runner=(chrt --idle 0)
"${runner[@]}" wrk -t1 -c"${CONNECTIONS:-32}" -d15s --latency "${script[@]}" "$base/v1/jobs/$id" > "$data/wrk.txt"
t2=$(date +%s.%N); sleep 15; t3=$(date +%s.%N)
sleep 2
before=$(rate "$t0" "$t1"); during=$(rate "$t1" "$t2"); after=$(rate "$t2" "$t3")
grep -E "Requests/sec|Socket errors|99%|50%|requests in" "$data/wrk.txt"
echo "training images/s (median, steps): before $before | during wrk $during | after $after"
python3 -c '
import sys
b, d, a = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3])
print("slowdown during load vs mean of before/after: %.1f%%" % (100 * (1 - d / ((b + a) / 2))))' "${before% *}" "${during% *}" "${after% *}"
