#!/usr/bin/env bash
# Input speed (issue 13): images/s of decode + aug+ (two views, 224 px, 2 workers) on the same
# JPEG folder, mocod (`mocobench input`, streamed, no decoded-image cache, so every image is
# decoded each time as torchvision does) against torchvision's ImageFolder + DataLoader
# (bench/torch_input.py, num_workers=2), alternating ROUNDS times, then mocod on the same images
# as tar shards. Nothing else may run. Needs the torch virtual environment (PY, default
# /tmp/tv/bin/python) for the reference and for bench/make_jpeg_folder.py.
# Usage: bash bench/input_pipeline.sh [IMAGES] [BATCHES] [ROUNDS]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-20000}; batches=${2:-10}; rounds=${3:-3}
py=${PY:-/tmp/tv/bin/python}
out=${OUT:-/tmp/mocod-input-bench}
mkdir -p "$out"
if [ ! -d "$out/jpegs$n" ]; then "$py" bench/make_jpeg_folder.py "$out/jpegs$n" "$n" --tar 1000 >&2; fi
swift build -c release --product mocobench >/dev/null
for r in $(seq "$rounds"); do
  .build/release/mocobench input --data "{\"format\": \"folder\", \"path\": \"jpegs$n\", \"split\": \"train\", \"cache_mb\": 0}" \
    --data-root "$out" --size 224 --batch 256 --batches "$batches" --workers 2 | sed 's/^/mocod_folder /'
  "$py" bench/torch_input.py "$out/jpegs$n" --size 224 --batch 256 --batches "$batches" --workers 2 | sed 's/^/torchvision /'
done
for r in $(seq "$rounds"); do
  .build/release/mocobench input --data "{\"format\": \"tar\", \"path\": \"jpegs$n-shards\", \"split\": \"train\", \"cache_mb\": 0}" \
    --data-root "$out" --size 224 --batch 256 --batches "$batches" --workers 2 | sed 's/^/mocod_tar /'
done
