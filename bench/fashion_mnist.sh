#!/usr/bin/env bash
# The real-data benchmark of the MoCo issue: examples/fashion-mnist.json with 5 epochs at width 16,
# `moco train` then the PyTorch reference (bench/torch_moco.py), one after the other on this machine.
# Prints both runs' per-epoch lines and a summary. Usage: bash bench/fashion_mnist.sh [EPOCHS] [WIDTH]
set -euo pipefail
cd "$(dirname "$0")/.."
epochs=${1:-5}; width=${2:-16}
py=${TORCH_PYTHON:-/opt/torchenv/bin/python}
out=${OUT:-/tmp/mocod-fmnist-bench}
rm -rf "$out"; mkdir -p "$out"
python3 - "$width" > "$out/spec.json" <<'PY'
import json, sys
spec = json.load(open("examples/fashion-mnist.json"))
spec["model"]["width"] = int(sys.argv[1])
print(json.dumps(spec))
PY
swift build -c release --product moco >/dev/null
start=$(date +%s.%N)
.build/release/moco train --config "$out/spec.json" --out "$out/mocod" --epochs "$epochs" --plain 2>&1 | tee "$out/mocod.log"
mid=$(date +%s.%N)
"$py" bench/torch_moco.py --config "$out/spec.json" --epochs "$epochs" --out "$out/torch" 2>&1 | tee "$out/torch.log"
end=$(date +%s.%N)
python3 - "$out" "$start" "$mid" "$end" <<'PY'
import json, sys, re
out, start, mid, end = sys.argv[1], *map(float, sys.argv[2:])
ours = [json.loads(l) for l in open(f"{out}/mocod/metrics.jsonl")]
evals = [p["knn_top1"] for p in ours if p["kind"] == "eval"]
steps = [p for p in ours if p["kind"] == "step"]
ips = sorted(p["images_per_second"] for p in steps)[len(steps) // 2]
wait = sum(p["data_wait_share"] for p in steps) / len(steps)
raw = re.search(r"raw-pixel kNN top-1 \(baseline\): ([0-9.]+)", open(f"{out}/mocod.log").read())
theirs = [json.loads(l) for l in open(f"{out}/torch/metrics.jsonl")]
tepochs = [p for p in theirs if not p.get("summary")]
tsum = [p for p in theirs if p.get("summary")][0]
summary = {
    "mocod": {"wall_seconds": mid - start, "knn_top1_per_epoch": evals, "median_images_per_second": ips,
              "mean_data_wait_share": wait, "raw_pixel_knn_top1": float(raw.group(1)) if raw else None},
    "pytorch": {"wall_seconds": end - mid, "knn_top1_per_epoch": [p["knn_top1"] for p in tepochs],
                "images_per_second_per_epoch": [p["images_per_second"] for p in tepochs],
                "raw_pixel_knn_top1": tsum.get("raw_pixel_knn_top1")},
}
summary["wall_time_ratio_pytorch_over_mocod"] = summary["pytorch"]["wall_seconds"] / summary["mocod"]["wall_seconds"]
summary["final_knn_difference_points"] = evals[-1] - tepochs[-1]["knn_top1"]
print(json.dumps(summary))
PY
