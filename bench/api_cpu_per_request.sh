#!/usr/bin/env bash
# CPU time per request of mocod (all its threads, from /proc) and of wrk, on an idle daemon:
# `wrk -t1 -c32 -d5s` on /healthz and on GET /v1/jobs/{id} of a finished tiny job.
set -euo pipefail
cd "$(dirname "$0")/.."
swift build -c release --product mocod >/dev/null
data=$(mktemp -d); port=${PORT:-18383}
.build/release/mocod --port $port --data-dir $data --log-level warning > $data/log 2>&1 &
pid=$!
trap 'kill $pid; wait $pid 2>/dev/null; rm -rf $data' EXIT
base=http://127.0.0.1:$port
for _ in $(seq 100); do curl -sf $base/healthz >/dev/null && break; sleep 0.1; done
spec=$(python3 -c '
import json; s = json.load(open("examples/fashion-mnist.json"))
s["model"]["width"] = 8; s["optim"]["epochs"] = 1; s["data"]["limit"]=512; s["eval"] = None
print(json.dumps(s))')
id=$(curl -sf -X POST $base/v1/jobs -H 'Content-Type: application/json' --data "$spec" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
for _ in $(seq 300); do s=$(curl -sf $base/v1/jobs/$id | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])'); [ "$s" = succeeded ] && break; sleep 0.5; done
echo "job $s"
tck=$(getconf CLK_TCK)
for path in /healthz /v1/jobs/$id; do
  t0=$(awk '{print $14+$15}' /proc/$pid/stat)
  out=$(/usr/bin/time -f "wrkcpu %U %S" wrk -t1 -c32 -d5s $base$path 2>&1)
  t1=$(awk '{print $14+$15}' /proc/$pid/stat)
  reqs=$(echo "$out" | awk '/requests in/{print $1}')
  python3 -c "
import sys
path, reqs, ticks, tck, wu, ws = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
print('%s: %d requests in 5 s, mocod %.1f us/request, wrk %.1f us/request' % (path, reqs, ticks * 1e6 / tck / reqs, (wu + ws) * 1e6 / reqs))
" "$path" "$reqs" "$((t1-t0))" "$tck" $(echo "$out" | awk '/wrkcpu/{print $2, $3}')
done
