#!/usr/bin/env bash
# Faithful and fast (issue 14): one method (simclr or moco_v3) on Fashion-MNIST at width WIDTH for
# EPOCHS epochs (bench/method_spec.py), `moco train` then its PyTorch reference (bench/torch_simclr.py
# or bench/torch_moco_v3.py, same spec, 2 threads, 2 data workers each), one after the other, nothing
# else running. Prints each run's kNN top-1 per epoch, wall time, the difference at the last epoch
# (target: within 1 point) and the wall-time ratio (target: mocod at most 1/1.2 of the reference's).
# Needs the torch virtual environment (PY, default /tmp/tv/bin/python).
# Usage: bash bench/method_vs_torch.sh METHOD [EPOCHS] [WIDTH] [BATCH]
set -euo pipefail
cd "$(dirname "$0")/.."
method=$1; epochs=${2:-5}; width=${3:-16}; batch=${4:-256}
py=${PY:-/tmp/tv/bin/python}
out=${OUT:-/tmp/mocod-method-$method}
rm -rf "$out"; mkdir -p "$out"
python3 bench/method_spec.py "$method" "$batch" "$width" "$epochs" > "$out/spec.json"
swift build -c release --product moco >/dev/null
ref=bench/torch_$method.py
start=$(date +%s.%N)
.build/release/moco train --config "$out/spec.json" --out "$out/mocod" --workers 2 --no-baseline --plain > "$out/mocod.log" 2>&1
mid=$(date +%s.%N)
"$py" "$ref" --config "$out/spec.json" --workers 2 --out "$out/torch" > "$out/torch.log" 2>&1
end=$(date +%s.%N)
python3 - "$out" "$start" "$mid" "$end" <<'PY'
import json, sys
out, start, mid, end = sys.argv[1], *map(float, sys.argv[2:])
ours = [json.loads(l) for l in open(f"{out}/mocod/metrics.jsonl")]
evals = [p["knn_top1"] for p in ours if p["kind"] == "eval"]
steps = sorted(p["images_per_second"] for p in ours if p["kind"] == "step")
theirs = [json.loads(l) for l in open(f"{out}/torch/metrics.jsonl") if not json.loads(l).get("summary")]
tk = [p["knn_top1"] for p in theirs]
print(json.dumps({"mocod": {"wall_seconds": round(mid - start, 1), "knn_top1_per_epoch": evals, "median_images_per_second": steps[len(steps) // 2]},
                  "pytorch": {"wall_seconds": round(end - mid, 1), "knn_top1_per_epoch": tk,
                              "images_per_second_per_epoch": [round(p["images_per_second"], 1) for p in theirs]},
                  "final_knn_difference_points": round(evals[-1] - tk[-1], 2),
                  "wall_time_ratio_mocod_over_pytorch": round((mid - start) / (end - mid), 3)}))
PY
