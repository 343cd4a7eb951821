#!/usr/bin/env bash
# End to end with curl, distributed: mocod with a localhost hostfile of 2 slots runs a tiny
# Fashion-MNIST job alone and the same job on 2 MPI ranks; their curves (losses within 1e-3
# relative), live events and checkpoints must match. Then kill -9 of one rank of a longer
# distributed job: it must restart from its checkpoint and succeed, every step once.
# Needs dataset-fashion-mnist, curl and Open MPI (openmpi-bin).
set -euo pipefail
cd "$(dirname "$0")/.."
swift build --product mocod >/dev/null
data=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
echo "localhost slots=2" > "$data/hostfile"
# Containers often forbid cross-memory attach (Open MPI's shared-memory single copy).
.build/debug/mocod --port "$port" --data-dir "$data/d" --log-level warning --mpi-hostfile "$data/hostfile" \
  --mpiexec-args="--mca btl_vader_single_copy_mechanism none" > "$data/mocod.log" 2>&1 &
pid=$!
cleanup() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$data"; }
trap cleanup EXIT
base="http://127.0.0.1:$port"
for _ in $(seq 100); do curl -sf "$base/healthz" >/dev/null && break; sleep 0.1; done
fail() { echo "e2e-distributed: $*"; tail -20 "$data/mocod.log"; exit 1; }

spec() {  # processes epochs
  cat <<JSON
{"name": "e2e-dist-$1", "data": {"format": "idx", "path": "fashion-mnist", "split": "train", "limit": 512},
 "model": {"arch": "resnet18", "stem": "cifar", "width": 8, "in_channels": 1},
 "moco": {"queue": 1024, "momentum": 0.99, "temperature": 0.1, "bn_splits": 4},
 "augment": {"size": 28}, "optim": {"batch_size": 128, "epochs": $2, "lr": 0.06},
 "checkpoint": {"every_steps": 2, "keep_last": 100}, "threads": 1, "seed": 3,
 "distributed": {"processes": $1}}
JSON
}
submit() { spec "$1" "$2" | curl -sf -X POST "$base/v1/jobs" -H 'Content-Type: application/json' --data @- \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])'; }
field() { curl -sf "$base/v1/jobs/$1" | python3 -c "import json,sys; print(json.load(sys.stdin)$2)"; }
wait_end() {
  local state=""
  for _ in $(seq 900); do
    state=$(field "$1" '["state"]')
    case "$state" in succeeded|failed|cancelled) break;; esac
    sleep 0.2
  done
  echo "$state"
}
losses() { curl -sf "$base/v1/jobs/$1/metrics?max_points=100000" \
  | python3 -c 'import json,sys; print(json.dumps([[p["step"], p["loss"]] for p in json.load(sys.stdin)["points"] if p["kind"] == "step"]))'; }
steps() { curl -sf "$base/v1/jobs/$1/checkpoints" | python3 -c 'import json,sys; print([c["step"] for c in json.load(sys.stdin)["checkpoints"]])'; }

# 1. The same job alone and on 2 ranks.
solo=$(submit 1 2)
[ "$(wait_end "$solo")" = succeeded ] || fail "the local job did not succeed"
dist=$(submit 2 2)
curl -sN --max-time 120 "$base/v1/jobs/$dist/events" > "$data/events.txt" &
sse=$!
[ "$(wait_end "$dist")" = succeeded ] || fail "the distributed job did not succeed: $(curl -s "$base/v1/jobs/$dist/logs" | tail -5)"
wait "$sse" || true
python3 - "$(losses "$solo")" "$(losses "$dist")" <<'PY' || fail "curves differ"
import json, sys
a, b = json.loads(sys.argv[1]), json.loads(sys.argv[2])
assert len(a) == len(b) == 8, (len(a), len(b))
worst = max(abs(x[1] - y[1]) / abs(x[1]) for x, y in zip(a, b))
assert [x[0] for x in a] == [y[0] for y in b]
# Sums run in another order on 2 ranks (the all-reduce, kernels on 64 images instead of 128):
# here the curves part by about 1e-4 after 8 steps; the CI equivalence test holds 1e-4 over 10.
assert worst <= 1e-3, worst
print(f"e2e-distributed: 8 steps, losses alone and on 2 ranks agree to {worst:.2e} relative")
PY
grep -q "event: metric" "$data/events.txt" && grep -q "event: checkpoint" "$data/events.txt" \
  && grep -q '"state":"succeeded"' "$data/events.txt" || fail "live events of the distributed job lack metrics, checkpoints or its end"
[ "$(steps "$solo")" = "$(steps "$dist")" ] || fail "checkpoint steps differ: $(steps "$solo") vs $(steps "$dist")"
listed=$(curl -sf "$base/v1/jobs/$dist/checkpoints" | python3 -c 'import json,sys; print(json.load(sys.stdin)["checkpoints"][-1]["sha256"])')
curl -sf -o "$data/latest.safetensors" "$base/v1/jobs/$dist/checkpoints/latest"
actual=$(sha256sum "$data/latest.safetensors" | cut -d' ' -f1)
[ "$listed" = "$actual" ] || fail "sha256 $actual differs from the listing's $listed"
echo "e2e-distributed: same checkpoint steps $(steps "$dist"); live events carried metrics, checkpoints and the end; download sha256 matches"

# 2. kill -9 of rank 1 after a checkpoint: restart from it, succeed, every step once.
long=$(submit 2 6)
for _ in $(seq 300); do
  [ "$(curl -sf "$base/v1/jobs/$long/checkpoints" | python3 -c 'import json,sys; print(len(json.load(sys.stdin)["checkpoints"]))')" -ge 2 ] && break
  sleep 0.1
done
rank1=""
for p in $(pgrep -f "mocod worker --job-dir $data/d/jobs/$long" || true); do
  tr '\0' '\n' < "/proc/$p/environ" | grep -qx OMPI_COMM_WORLD_RANK=1 && rank1=$p
done
[ -n "$rank1" ] || fail "no rank 1 found for $long"
kill -9 "$rank1"
[ "$(wait_end "$long")" = succeeded ] || fail "the job did not succeed after its rank was killed: $(curl -s "$base/v1/jobs/$long/logs" | tail -5)"
[ "$(field "$long" '["restarts"]')" = 1 ] || fail "expected 1 restart, got $(field "$long" '["restarts"]')"
curl -sf "$base/v1/jobs/$long/logs" | grep -q "resumed from ckpt-" || fail "the restart did not resume from a checkpoint"
python3 - "$(losses "$long")" <<'PY' || fail "steps after the restart are not each there once"
import json, sys
steps = [s for s, _ in json.loads(sys.argv[1])]
assert steps == list(range(1, 25)), steps
PY
echo "e2e-distributed: kill -9 of rank 1 ($rank1): restarted once from its checkpoint, succeeded, steps 1-24 each once"
echo "e2e-distributed: 1 passed, 0 failed"
