#!/usr/bin/env bash
# Bounded memory on streamed data (issue 13): one epoch of a width-16 job (imagenet stem,
# augment.size 96, batch 256, 2 data workers, default data.cache_mb) on folders of 20,000 and
# 200,000 JPEGs of 200-500 px (bench/make_jpeg_folder.py, generated on first use, never committed),
# each by its own `moco train`. Prints each run's peak RSS (GNU time's maximum resident set size),
# wall time and median images/s, and the ratio of the two peaks. Targets: each peak under 2 GB,
# the two within 10 %. Peak memory does not depend on other load, but the speeds do.
# Needs the torch virtual environment (PY, default /tmp/tv/bin/python: numpy and Pillow) to generate.
# Usage: bash bench/stream_memory.sh [SMALL] [LARGE]
set -euo pipefail
cd "$(dirname "$0")/.."
small=${1:-20000}; large=${2:-200000}
py=${PY:-/tmp/tv/bin/python}
data=${DATA:-/tmp/mocod-input-bench}
out=${OUT:-/tmp/mocod-stream-memory}
rm -rf "$out"; mkdir -p "$out" "$data"
swift build -c release --product moco >/dev/null
for n in "$small" "$large"; do
  if [ ! -d "$data/jpegs$n" ]; then "$py" bench/make_jpeg_folder.py "$data/jpegs$n" "$n" --workers 2 >&2; fi
  cat > "$out/$n.json" <<JSON
{"name": "memory-$n", "data": {"format": "folder", "path": "jpegs$n", "split": "train"},
 "model": {"arch": "resnet18", "stem": "imagenet", "width": 16, "in_channels": 3, "dim": 128},
 "moco": {"queue": 4096, "momentum": 0.999, "temperature": 0.2},
 "augment": {"preset": "v2", "size": 96}, "optim": {"batch_size": 256, "epochs": 1},
 "checkpoint": {"every_epochs": 1}, "seed": 1, "threads": 2}
JSON
  start=$(date +%s.%N)
  /usr/bin/time -f "%M" -o "$out/$n.rss" .build/release/moco train --config "$out/$n.json" --out "$out/run$n" \
    --data-root "$data" --workers 2 --no-baseline --plain > "$out/$n.log" 2>&1
  end=$(date +%s.%N)
  echo "$start $end" > "$out/$n.time"
  echo "# $n images: $(python3 -c "print(round($end - $start, 1))") s" >&2
done
python3 - "$out" "$small" "$large" <<'PY'
import json, statistics, sys
out, runs = sys.argv[1], sys.argv[2:]
peaks = {}
for n in runs:
    rss = int(open(f"{out}/{n}.rss").read().split()[-1]) / 1024
    start, end = map(float, open(f"{out}/{n}.time").read().split())
    points = [json.loads(l) for l in open(f"{out}/run{n}/metrics.jsonl")]
    rates = [p["images_per_second"] for p in points if p.get("kind") == "step"]
    peaks[n] = rss
    print(f"{n:>7} images: peak RSS {rss:7.1f} MB, {end - start:6.1f} s, {len(rates)} steps, median {statistics.median(rates):.1f} img/s, data errors {points[-1].get('data_errors', 0) if points else 0}")
a, b = peaks[runs[0]], peaks[runs[1]]
print(f"peak ratio {runs[1]}/{runs[0]}: {b / a:.3f} (target within 10 %); largest peak {max(a, b):.0f} MB (target under 2048)")
PY
