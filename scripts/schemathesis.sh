#!/usr/bin/env bash
# Runs schemathesis (PyPI: pip install schemathesis, e.g. in a venv; set ST=/path/to/schemathesis)
# against a live mocod with a token: once over every operation, and once more with the {id}
# and {name} path parameters pinned to a real finished job (DELETE excluded, so it stays).
# `positive_data_acceptance` is excluded: a schema-valid spec naming a dataset that does not
# exist under the data roots is rightly answered 422.
set -euo pipefail
cd "$(dirname "$0")/.."
st=${ST:-schemathesis}
swift build --product mocod >/dev/null
data=$(mktemp -d)
mkdir -p "$data/datasets"
python3 - "$data/datasets/imgs.npy" <<'PY'
import struct, sys
n, h, w = 64, 8, 8
header = "{'descr': '|u1', 'fortran_order': False, 'shape': (%d, %d, %d), }" % (n, h, w)
header += " " * ((64 - (10 + len(header) + 1) % 64) % 64) + "\n"
with open(sys.argv[1], "wb") as f:
    f.write(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header.encode())
    f.write(bytes((i * 37) % 256 for i in range(n * h * w)))
PY
token="schemathesis-token-$(date +%s)-0123456789"
printf '%s\n' "$token" > "$data/token"; chmod 600 "$data/token"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1]); s.close()')
.build/debug/mocod --port "$port" --data-dir "$data" --data-root "$data/datasets" --token-file "$data/token" --log-level error &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -rf "$data"' EXIT
base="http://127.0.0.1:$port"
for _ in $(seq 100); do curl -sf "$base/healthz" >/dev/null && break; sleep 0.1; done
auth="Authorization: Bearer $token"
id=$(curl -sf -X POST "$base/v1/jobs" -H "$auth" -H 'Content-Type: application/json' -d '{"name": "seed",
  "data": {"format": "npy", "path": "imgs.npy"}, "model": {"arch": "resnet18", "stem": "cifar", "width": 4, "in_channels": 1, "dim": 8},
  "moco": {"queue": 32, "momentum": 0.9, "temperature": 0.2}, "augment": {"size": 8}, "optim": {"batch_size": 16, "epochs": 1}, "threads": 1}' \
  | python3 -c 'import json,sys; print(json.load(sys.stdin)["id"])')
for _ in $(seq 100); do curl -sf "$base/v1/jobs/$id" -H "$auth" | grep -q '"state":"succeeded"' && break; sleep 0.2; done
printf '[parameters]\n"path.id" = "%s"\n"path.name" = "latest"\n' "$id" > "$data/st.toml"
"$st" --config-file "$data/st.toml" run openapi.yaml --url "$base" -H "$auth" --exclude-checks positive_data_acceptance \
  --exclude-method DELETE --max-examples 30 --workers 1
"$st" run openapi.yaml --url "$base" -H "$auth" --exclude-checks positive_data_acceptance --max-examples 50 --workers 1
