#!/usr/bin/env bash
# The learning check of the bf16 issue: examples/fashion-mnist.json at width 16 for 5 epochs,
# trained by `moco train` in fp32 and in bf16 with the same seeds (fp32 then bf16 for each seed,
# nothing else running). Prints each run's kNN top-1 per epoch, the bf16 - fp32 difference at every
# epoch, and each run's wall time and median images/s. The target: |difference| <= 0.5 point at
# every epoch. Usage: bash bench/fashion_mnist_bf16.sh [EPOCHS] [WIDTH] [SEEDS...]
set -euo pipefail
cd "$(dirname "$0")/.."
epochs=${1:-5}; width=${2:-16}; shift $(( $# > 2 ? 2 : $# )) || true
seeds=("$@"); [ ${#seeds[@]} -gt 0 ] || seeds=(0 1)
out=${OUT:-/tmp/mocod-fmnist-bf16}
rm -rf "$out"; mkdir -p "$out"
swift build -c release --product moco >/dev/null
for seed in "${seeds[@]}"; do
  python3 - "$width" "$seed" > "$out/spec-$seed.json" <<'PY'
import json, sys
spec = json.load(open("examples/fashion-mnist.json"))
spec["model"]["width"] = int(sys.argv[1])
spec["seed"] = int(sys.argv[2])
print(json.dumps(spec))
PY
  for precision in fp32 bf16; do
    run="$out/$precision-seed$seed"
    start=$(date +%s.%N)
    .build/release/moco train --config "$out/spec-$seed.json" --out "$run" --epochs "$epochs" --precision "$precision" \
      --no-baseline --plain > "$run.log" 2>&1
    end=$(date +%s.%N)
    echo "$start $end" > "$run.time"
    echo "# seed $seed $precision: $(python3 -c "print(round($end - $start, 1))") s" >&2
  done
done
python3 - "$out" "${seeds[@]}" <<'PY'
import json, sys
out, seeds = sys.argv[1], sys.argv[2:]
def run(precision, seed):
    d = f"{out}/{precision}-seed{seed}"
    points = [json.loads(l) for l in open(f"{d}/metrics.jsonl")]
    start, end = map(float, open(f"{d}.time").read().split())
    steps = [p for p in points if p["kind"] == "step"]
    assert all(p.get("precision") == precision for p in points), f"{d}: a point ran in another precision"
    return {"knn": [p["knn_top1"] for p in points if p["kind"] == "eval"], "wall": end - start,
            "ips": sorted(p["images_per_second"] for p in steps)[len(steps) // 2]}
rows, worst = [], 0.0
print("| seed | epoch | fp32 kNN top-1 | bf16 kNN top-1 | bf16 - fp32 |")
print("|---|---|---|---|---|")
for s in seeds:
    a, b = run("fp32", s), run("bf16", s)
    for e, (x, y) in enumerate(zip(a["knn"], b["knn"]), 1):
        worst = max(worst, abs(y - x))
        print(f"| {s} | {e} | {x:.2f} | {y:.2f} | {y - x:+.2f} |")
    rows.append({"seed": int(s), "fp32": a, "bf16": b, "wall_ratio_fp32_over_bf16": a["wall"] / b["wall"],
                 "images_per_second_ratio_bf16_over_fp32": b["ips"] / a["ips"]})
print(json.dumps({"runs": rows, "max_abs_difference_points": worst, "target_met": worst <= 0.5}))
PY
