#!/usr/bin/env bash
# API latency while a job trains, and the training slowdown it causes. A Fashion-MNIST job at
# width 16 trains in mocod; after a warm-up, CYCLES times: WINDOW seconds without load, then
# WINDOW seconds of `wrk -t1 -c32` on GET /v1/jobs/{id}, run at normal priority on the same cores
# as the training (so wrk's own CPU counts against training too). Alternating cancels the drift
# of training speed over time; the slowdown compares the median images/s of the steps in the
# loaded windows with that of the steps in the quiet ones (the first second of each is skipped).
#
# MOCOD_ENV="MOCOD_API_CPU_SHARE=0" runs mocod without its API CPU budget; CONNECTIONS sets wrk's -c;
# DELAY_MS > 0 paces each connection (wrk's Lua delay()) to model polling clients rather than a flood;
# WRK_IDLE=1 runs wrk in the idle scheduling class (a stand-in for clients on other machines);
# NOLOAD=1 sleeps instead of running wrk (the control: the noise floor of the method).
set -euo pipefail
trap 'echo "api_under_load.sh: line $LINENO failed: $BASH_COMMAND" >&2' ERR
cd "$(dirname "$0")/.."
swift build -c release --product mocod >/dev/null
cycles=${CYCLES:-6}
window=${WINDOW:-10}
data=$(mktemp -d)
port=${PORT:-0}   # 0: a free port, read from mocod's first line
env ${MOCOD_ENV:-} .build/release/mocod --port "$port" --data-dir "$data" --log-level warning > "$data/log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$data"' EXIT
for _ in $(seq 100); do grep -q "listening on" "$data/log" 2>/dev/null && break; sleep 0.1; done
port=$(sed -n 's/.*listening on http:\/\/[0-9.]*:\([0-9]*\).*/\1/p' "$data/log" | head -1)
base="http://127.0.0.1:$port"
for _ in $(seq 100); do curl -sf "$base/healthz" >/dev/null && break; sleep 0.1; done
epochs=$(( (15 + 2 * cycles * window) / 35 + 2 ))   # about 40 s an epoch: never run out
spec=$(python3 -c '
import json, sys; s = json.load(open("examples/fashion-mnist.json"))
s["model"]["width"] = 16; s["optim"]["epochs"] = int(sys.argv[1]); s["eval"] = None; s["checkpoint"]["every_epochs"] = None
print(json.dumps(s))' "$epochs")
id=$(curl -sf -X POST "$base/v1/jobs" -H 'Content-Type: application/json' --data "$spec" | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
script=()
if [ "${DELAY_MS:-0}" -gt 0 ]; then
  printf 'function delay() return %d end\n' "$DELAY_MS" > "$data/pace.lua"
  script=(-s "$data/pace.lua")
fi
runner=()
[ "${WRK_IDLE:-0}" = 1 ] && runner=(chrt --idle 0)
sleep 15
: > "$data/windows"
for c in $(seq "$cycles"); do
  t0=$(date +%s.%N); sleep "$window"; t1=$(date +%s.%N)
  if [ "${NOLOAD:-0}" = 1 ]; then
    sleep "$window"; echo "no load" > "$data/wrk$c.txt"
  else
    "${runner[@]}" wrk -t1 -c"${CONNECTIONS:-32}" -d"${window}s" --latency "${script[@]}" "$base/v1/jobs/$id" > "$data/wrk$c.txt"
  fi
  t2=$(date +%s.%N)
  echo "$t0 $t1 $t2" >> "$data/windows"
done
state=$(curl -sf "$base/v1/jobs/$id" | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])')
[ "$state" = running ] || { echo "the job is $state: it ended before the last window" >&2; exit 1; }
curl -sf "$base/v1/jobs/$id/metrics?max_points=100000" > "$data/metrics.json"
python3 - "$data" "$cycles" <<'EOF'
import json, re, statistics, sys
data, cycles = sys.argv[1], int(sys.argv[2])
windows = [tuple(map(float, l.split())) for l in open(f"{data}/windows")]
steps = [p for p in json.load(open(f"{data}/metrics.json"))["points"] if p["kind"] == "step"]
def rates(lo, hi): return [p["images_per_second"] for p in steps if lo + 1 <= p["time"] < hi]
def ms(text):   # wrk's units: us, ms, s, m, h
    m = re.fullmatch(r"([\d.]+)(us|ms|s|m|h)", text)
    if not m: sys.exit(f"cannot read wrk's latency {text!r}")
    return float(m.group(1)) * {"us": 1e-3, "ms": 1, "s": 1e3, "m": 6e4, "h": 3.6e6}[m.group(2)]
quiet, loaded, reqs, p50s, p99s, errors = [], [], [], [], [], []
for c, (t0, t1, t2) in enumerate(windows, 1):
    q, l = rates(t0, t1), rates(t1, t2)
    quiet += q; loaded += l
    w = open(f"{data}/wrk{c}.txt").read()
    line = f"cycle {c}: training {statistics.median(q):.1f} quiet / {statistics.median(l):.1f} loaded img/s"
    if "Requests/sec" in w:
        r = float(re.search(r"Requests/sec:\s+([\d.]+)", w).group(1))
        if "Latency Distribution" not in w: sys.exit(f"wrk printed no latency distribution in window {c}:\n{w}")
        p50 = ms(re.search(r"^\s+50%\s+(\S+)", w, re.M).group(1)); p99 = ms(re.search(r"^\s+99%\s+(\S+)", w, re.M).group(1))
        reqs.append(r); p50s.append(p50); p99s.append(p99)
        err = re.search(r"Socket errors: (.*)", w)
        if err: errors.append(f"cycle {c}: {err.group(1)}")
        line += f"; wrk {r:.0f} req/s, p50 {p50:.2f} ms, p99 {p99:.2f} ms"
    print(line)
for e in errors: print("socket errors,", e)
if reqs:
    print(f"wrk: {statistics.mean(reqs):.0f} req/s (mean of {len(reqs)} windows), p50 {statistics.median(p50s):.2f} ms, "
          f"p99 {statistics.median(p99s):.2f} ms (median of windows; worst {max(p99s):.2f} ms)")
qm, lm = statistics.median(quiet), statistics.median(loaded)
print(f"training images/s, median over steps: quiet {qm:.1f} ({len(quiet)} steps), loaded {lm:.1f} ({len(loaded)} steps)")
print(f"slowdown under load: {100 * (1 - lm / qm):.1f}%")
EOF
