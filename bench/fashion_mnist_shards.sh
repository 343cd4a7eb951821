#!/usr/bin/env bash
# Same results from shards (issue 13): examples/fashion-mnist.json at width WIDTH for EPOCHS epochs,
# trained by `moco train` from the IDX files (in memory) and from PNG tar shards made from them by
# bench/make_fmnist_shards.py (streamed: indexed, decoded as views need them), same seed, one after
# the other, nothing else running. Prints each run's kNN top-1 per epoch, the difference, and each
# run's wall time, median images/s and peak RSS. Target: |difference| <= 0.5 point at the last epoch.
# Usage: bash bench/fashion_mnist_shards.sh [EPOCHS] [WIDTH]
set -euo pipefail
cd "$(dirname "$0")/.."
epochs=${1:-5}; width=${2:-16}
out=${OUT:-/tmp/mocod-fmnist-shards}
rm -rf "$out"; mkdir -p "$out/data"
swift build -c release --product moco >/dev/null
python3 bench/make_fmnist_shards.py "$out/data/fmnist-shards" 1000 >&2
python3 - "$width" > "$out/idx.json" <<'PY'
import json, sys
spec = json.load(open("examples/fashion-mnist.json"))
spec["model"]["width"] = int(sys.argv[1])
print(json.dumps(spec))
PY
python3 - "$width" > "$out/tar.json" <<'PY'
import json, sys
spec = json.load(open("examples/fashion-mnist.json"))
spec["model"]["width"] = int(sys.argv[1])
spec["data"] = {"format": "tar", "path": "fmnist-shards/train-{000000..000059}.tar"}
spec["eval"].update({"format": "tar", "path": "fmnist-shards/test-{000000..000009}.tar"})
print(json.dumps(spec))
PY
for run in idx tar; do
  start=$(date +%s.%N)
  /usr/bin/time -f "%M" -o "$out/$run.rss" .build/release/moco train --config "$out/$run.json" --out "$out/$run" --epochs "$epochs" \
    --data-root /usr/share/datasets --data-root "$out/data" --no-baseline --plain > "$out/$run.log" 2>&1
  end=$(date +%s.%N)
  echo "$start $end" > "$out/$run.time"
  echo "# $run: $(python3 -c "print(round($end - $start, 1))") s" >&2
done
python3 - "$out" <<'PY'
import json, statistics, sys
out = sys.argv[1]
res = {}
for run in ("idx", "tar"):
    points = [json.loads(l) for l in open(f"{out}/{run}/metrics.jsonl")]
    start, end = map(float, open(f"{out}/{run}.time").read().split())
    steps = [p for p in points if p["kind"] == "step"]
    res[run] = {"knn_top1": [p["knn_top1"] for p in points if p["kind"] == "eval"], "wall_seconds": round(end - start, 1),
                "median_images_per_second": round(statistics.median(p["images_per_second"] for p in steps), 1),
                "peak_rss_mb": round(int(open(f"{out}/{run}.rss").read().split()[-1]) / 1024),
                "data_errors": steps[-1].get("data_errors")}
res["difference_tar_minus_idx"] = [round(b - a, 2) for a, b in zip(res["idx"]["knn_top1"], res["tar"]["knn_top1"])]
print(json.dumps(res))
PY
