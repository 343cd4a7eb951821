#!/usr/bin/env bash
# Availability of a real mocod under a slowloris attack from the same address (loopback):
# `slowhttptest -H -c 300 -r 300 -i 10` holds 300 half-sent request heads (more than the server's
# cap of 256 connections) for DURATION seconds, while a normal client sends GET /healthz every
# 250 ms on a fresh connection (curl --max-time 1). Prints how many were answered 200 within 1 s
# and exits non-zero below 99 %. Bounded in time; mocod is killed at the end.
#
# MOCOD_BIN=path runs that binary instead of building `swift build -c release --product mocod`
# (e.g. MOCOD_BIN=.build/debug/mocod); DURATION (30) and CONNECTIONS (300) scale the attack.
# Needs slowhttptest and curl (slowhttptest is installed with apt-get when missing, as root).
set -euo pipefail
trap 'echo "slowloris.sh: line $LINENO failed: $BASH_COMMAND" >&2' ERR
cd "$(dirname "$0")/.."
duration=${DURATION:-30}
connections=${CONNECTIONS:-300}
if ! command -v slowhttptest >/dev/null; then
  [ "$(id -u)" = 0 ] || { echo "slowloris.sh: slowhttptest is missing (apt-get install slowhttptest)" >&2; exit 2; }
  DEBIAN_FRONTEND=noninteractive apt-get install -y slowhttptest >/dev/null 2>&1 \
    || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y slowhttptest >/dev/null; }
fi
if [ -z "${MOCOD_BIN:-}" ]; then
  swift build -c release --product mocod >/dev/null
  MOCOD_BIN=.build/release/mocod
fi
data=$(mktemp -d)
mocod="" attacker=""
cleanup() {
  # The attack first (mocod's graceful shutdown would wait for its half-sent heads), then mocod:
  # SIGTERM, and SIGKILL if it has not exited 15 s later.
  [ -n "$attacker" ] && { kill "$attacker" 2>/dev/null || true; wait "$attacker" 2>/dev/null || true; }
  if [ -n "$mocod" ]; then
    kill "$mocod" 2>/dev/null || true
    for _ in $(seq 150); do kill -0 "$mocod" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$mocod" 2>/dev/null || true
    wait "$mocod" 2>/dev/null || true
  fi
  rm -rf "$data"
}
trap cleanup EXIT
"$MOCOD_BIN" --port 0 --data-dir "$data/mocod" --log-level warning > "$data/log" 2>&1 &
mocod=$!
for _ in $(seq 100); do grep -q "listening on" "$data/log" 2>/dev/null && break; sleep 0.1; done
port=$(sed -n 's/.*listening on http:\/\/[0-9.]*:\([0-9]*\).*/\1/p' "$data/log" | head -1)
[ -n "$port" ] || { echo "slowloris.sh: mocod did not start:" >&2; cat "$data/log" >&2; exit 1; }
url="http://127.0.0.1:$port/healthz"
for _ in $(seq 100); do curl -sf "$url" >/dev/null && break; sleep 0.1; done

# The attack lasts a little longer than the probes, so that every probe is made under it.
timeout $((duration + 15)) slowhttptest -H -c "$connections" -r "$connections" -i 10 -l $((duration + 3)) -u "$url" \
  >/dev/null 2>&1 &
attacker=$!
sleep 2   # the connections open at -r per second: the cap is full after about a second
# Connections the server holds (its side of loopback); slowhttptest's own status is stale when
# written to a file, and counts a 503 as "service available".
held() { ss -Htn state established "( sport = :$port )" 2>/dev/null | wc -l; }
held_before=$(held)

# A probe every 250 ms on its own schedule (a slow answer does not delay the next probe).
probes=$((duration * 4))
: > "$data/probes.txt"
start=$(date +%s.%N)
for i in $(seq 0 $((probes - 1))); do
  at=$(awk -v s="$start" -v i="$i" 'BEGIN { printf "%.3f", s + i * 0.25 }')
  wait_s=$(awk -v at="$at" -v now="$(date +%s.%N)" 'BEGIN { d = at - now; if (d < 0) d = 0; printf "%.3f", d }')
  sleep "$wait_s"
  { curl -s -o /dev/null -w '%{http_code} %{time_total}\n' --max-time 1 "$url" || true; } >> "$data/probes.txt" &
done
wait_deadline=$((SECONDS + 3))
while [ "$(wc -l < "$data/probes.txt")" -lt "$probes" ] && [ $SECONDS -lt $wait_deadline ]; do sleep 0.1; done

held_after=$(held)
awk -v total="$probes" -v c="$connections" -v d="$duration" -v before="$held_before" -v after="$held_after" '
  $1 == 200 && $2 <= 1 { ok++ }
  END {
    pct = total ? 100 * ok / total : 0
    printf "slowloris: %d/%d GET /healthz answered 200 within 1 s (%.1f %%) under slowhttptest -H -c %d -i 10 for %d s (server connections held: %d when probing began, %d at its end)\n", ok, total, pct, c, d, before, after
    exit pct >= 99 ? 0 : 1
  }' "$data/probes.txt" || exit 1   # below 99 %
