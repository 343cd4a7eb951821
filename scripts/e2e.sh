#!/usr/bin/env bash
# End to end with curl: start mocod on a free port with a temporary data dir, submit a tiny
# Fashion-MNIST job, poll until it succeeds, fetch metrics and the SVG, download the latest
# checkpoint and check its sha256 against the listing, then evaluate it (kNN) and embed images with
# it, download the embeddings (whole and a range) and check them. Needs dataset-fashion-mnist and curl.
set -euo pipefail
cd "$(dirname "$0")/.."
swift build --product mocod >/dev/null
data=$(mktemp -d)
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
.build/debug/mocod --port "$port" --data-dir "$data" --log-level warning > "$data/mocod.log" 2>&1 &
pid=$!
cleanup() { kill "$pid" 2>/dev/null || true; wait "$pid" 2>/dev/null || true; rm -rf "$data"; }
trap cleanup EXIT
base="http://127.0.0.1:$port"
for _ in $(seq 100); do curl -sf "$base/healthz" >/dev/null && break; sleep 0.1; done
job=$(curl -sf -X POST "$base/v1/jobs" -H 'Content-Type: application/json' --data @- <<'JSON'
{"name": "e2e", "data": {"format": "idx", "path": "fashion-mnist", "split": "train", "limit": 512},
 "eval": {"format": "idx", "path": "fashion-mnist", "split": "test", "limit": 256},
 "model": {"arch": "resnet18", "stem": "cifar", "width": 8, "in_channels": 1},
 "moco": {"queue": 1024, "momentum": 0.99, "temperature": 0.1, "bn_splits": 4},
 "augment": {"size": 28}, "optim": {"batch_size": 128, "epochs": 1, "lr": 0.06}}
JSON
)
id=$(python3 -c 'import json,sys; print(json.loads(sys.argv[1])["id"])' "$job")
echo "e2e: submitted $id"
state=""
for _ in $(seq 600); do
  state=$(curl -sf "$base/v1/jobs/$id" | python3 -c 'import json,sys; print(json.load(sys.stdin)["state"])')
  case "$state" in succeeded|failed|cancelled) break;; esac
  sleep 0.2
done
[ "$state" = succeeded ] || { echo "e2e: job ended $state"; curl -s "$base/v1/jobs/$id"; cat "$data/mocod.log"; exit 1; }
points=$(curl -sf "$base/v1/jobs/$id/metrics" | python3 -c 'import json,sys; d=json.load(sys.stdin); print(len(d["points"]))')
[ "$points" -ge 4 ] || { echo "e2e: only $points metric points"; exit 1; }
curl -sf "$base/v1/jobs/$id/loss.svg" | head -c 4 | grep -q '<svg' || { echo "e2e: no SVG"; exit 1; }
listed=$(curl -sf "$base/v1/jobs/$id/checkpoints" | python3 -c 'import json,sys; print(json.load(sys.stdin)["checkpoints"][-1]["sha256"])')
curl -sf -o "$data/latest.safetensors" "$base/v1/jobs/$id/checkpoints/latest"
actual=$(sha256sum "$data/latest.safetensors" | cut -d' ' -f1)
[ "$listed" = "$actual" ] || { echo "e2e: sha256 $actual differs from the listing's $listed"; exit 1; }
echo "e2e: $id succeeded; $points metric points; checkpoint sha256 $actual matches the listing"
# Evaluations and embeddings are jobs too: submitted, followed, their results in their records.
field() { python3 -c 'import json,sys; d=json.load(sys.stdin)
for k in sys.argv[1].split("."): d=d[k]
print(d)' "$1"; }
wait_done() {
  local s=""
  for _ in $(seq 600); do
    s=$(curl -sf "$base/v1/jobs/$1" | field state)
    case "$s" in succeeded|failed|cancelled) break;; esac
    sleep 0.2
  done
  [ "$s" = succeeded ] || { echo "e2e: $1 ended $s"; curl -s "$base/v1/jobs/$1"; exit 1; }
}
ev=$(curl -sf -X POST "$base/v1/jobs/$id/evaluations" -H 'Content-Type: application/json' \
  --data '{"kind": "knn", "data": {"format": "idx", "path": "fashion-mnist", "split": "test", "limit": 256}, "k": 20}' | field id)
wait_done "$ev"
top1=$(curl -sf "$base/v1/jobs/$ev" | field result.top1)
echo "e2e: evaluation $ev: kNN top-1 $top1 % on 256 test images"
em=$(curl -sf -X POST "$base/v1/jobs/$id/embeddings" -H 'Content-Type: application/json' \
  --data '{"data": {"format": "idx", "path": "fashion-mnist", "split": "test", "limit": 100}}' | field id)
wait_done "$em"
link=$(curl -sf "$base/v1/jobs/$em" | field links.artifact)
sha=$(curl -sf "$base/v1/jobs/$em" | field result.sha256)
shape=$(curl -sf "$base/v1/jobs/$em" | field result.shape)
curl -sf -o "$data/emb.npy" "$base$link"
[ "$(sha256sum "$data/emb.npy" | cut -d' ' -f1)" = "$sha" ] || { echo "e2e: embeddings sha256 differs from the record's"; exit 1; }
curl -sf -r 64-191 -o "$data/part.bin" "$base$link"
cmp -s "$data/part.bin" <(head -c 192 "$data/emb.npy" | tail -c 128) || { echo "e2e: the range differs from the file"; exit 1; }
echo "e2e: embedding $em: $shape float32, sha256 matches, a range matches"
echo "e2e: 1 passed, 0 failed"
