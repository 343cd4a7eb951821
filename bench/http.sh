#!/usr/bin/env bash
# HTTP server benchmarks: wrk against a trivial route, then slowhttptest slow-headers and
# slow-body runs (availability must stay YES). Needs: apt-get install wrk slowhttptest
set -euo pipefail
cd "$(dirname "$0")/.."
port=${PORT:-18089}
swift build -c release --product mocobench >/dev/null
.build/release/mocobench serve --port "$port" > /tmp/mocod-http-bench-server.log 2>&1 &
server=$!
trap 'kill $server 2>/dev/null || true' EXIT
sleep 1
echo "== wrk -t1 -c32 -d10s --latency http://127.0.0.1:$port/hello"
wrk -t1 -c32 -d10s --latency "http://127.0.0.1:$port/hello"
out=$(mktemp -d)
echo "== slowhttptest slow headers (-H), 200 connections, 30 s"
slowhttptest -H -c 200 -r 100 -i 5 -l 30 -u "http://127.0.0.1:$port/hello" -p 3 -g -o "$out/headers" > "$out/headers.txt" 2>&1 || true
tail -n 25 "$out/headers.txt" | grep -E "service available|status|closed|pending|connected|error" | tail -8 || true
echo "seconds,closed,pending,connected,service_available(200 = probe answered)"; cat "$out/headers.csv" | tail -n +2 | sed -n '1p;$p'
awk -F, 'NR > 1 && $5 != 200 {bad++} END {print (bad ? bad " seconds with the service unavailable" : "service available every second")}' "$out/headers.csv"
echo "== slowhttptest slow body (-B), 200 connections, 30 s"
slowhttptest -B -c 200 -r 100 -i 5 -l 30 -s 8192 -u "http://127.0.0.1:$port/echo" -p 3 -g -o "$out/body" > "$out/body.txt" 2>&1 || true
tail -n 25 "$out/body.txt" | grep -E "service available|status|closed|pending|connected|error" | tail -8 || true
awk -F, 'NR > 1 && $5 != 200 {bad++} END {print (bad ? bad " seconds with the service unavailable" : "service available every second")}' "$out/body.csv"
echo "reports in $out"
