#!/usr/bin/env bash
# The MoCo v2 note's claim in miniature (issue 14): on Fashion-MNIST at width WIDTH for EPOCHS epochs,
# same augmentations (aug+) and schedule (bench/method_spec.py), MoCo v2 at batch 256 (K 4096),
# SimCLR at batches 256, 512 and 1024, MoCo v3 at 256 and 1024, each by its own `moco train`, one
# after the other, nothing else running. Prints per run the kNN top-1 per epoch, peak RSS (GNU
# time) and median images/s, then a Markdown table.
# Usage: bash bench/seed_claim.sh [EPOCHS] [WIDTH]
# RUNS="simclr:512 ..." runs only those (the others' results in OUT are kept, and the table covers
# every run that has finished there), so the six runs can be spread over several sittings.
set -euo pipefail
cd "$(dirname "$0")/.."
epochs=${1:-10}; width=${2:-16}
out=${OUT:-/tmp/mocod-seed-claim}
mkdir -p "$out"
swift build -c release --product moco >/dev/null
all="moco_v2:256 simclr:256 simclr:512 simclr:1024 moco_v3:256 moco_v3:1024"
runs=${RUNS:-$all}
for run in $runs; do
  method=${run%%:*}; batch=${run##*:}; name="$method-$batch"
  rm -rf "$out/$name" "$out/$name".*
  date -u +%FT%TZ > "$out/$name.date"
  python3 bench/method_spec.py "$method" "$batch" "$width" "$epochs" > "$out/$name.json"
  start=$(date +%s.%N)
  /usr/bin/time -f "%M" -o "$out/$name.rss" .build/release/moco train --config "$out/$name.json" --out "$out/$name" \
    --workers 2 --no-baseline --plain > "$out/$name.log" 2>&1
  end=$(date +%s.%N)
  echo "$start $end" > "$out/$name.time"
  echo "# $name: $(python3 -c "print(round($end - $start, 1))") s" >&2
done
python3 - "$out" $all <<'PY'
import json, os, statistics, sys
out, runs = sys.argv[1], sys.argv[2:]
print("| method | batch | kNN top-1 per epoch | final kNN | peak RSS (MB) | median images/s | wall (s) | run at |")
print("|---|---|---|---|---|---|---|---|")
for run in runs:
    method, batch = run.split(":")
    name = f"{method}-{batch}"
    if not os.path.exists(f"{out}/{name}.time"):
        print(f"| {method} | {batch} | not run | | | | | |")
        continue
    points = [json.loads(l) for l in open(f"{out}/{name}/metrics.jsonl")]
    knn = [p["knn_top1"] for p in points if p["kind"] == "eval"]
    rate = statistics.median(p["images_per_second"] for p in points if p["kind"] == "step")
    rss = int(open(f"{out}/{name}.rss").read().split()[-1]) / 1024
    start, end = map(float, open(f"{out}/{name}.time").read().split())
    when = open(f"{out}/{name}.date").read().strip()
    print(f"| {method} | {batch} | {' / '.join(f'{k:.2f}' for k in knn)} | {knn[-1]:.2f} | {rss:.0f} | {rate:.0f} | {end - start:.0f} | {when} |")
PY
