#!/usr/bin/env bash
# The dry run's memory estimate against measured peak RSS (issue 15): the Fashion-MNIST example
# spec (examples/fashion-mnist.json: MoCo v2, ResNet-18 cifar stem, K 4096, kNN on the test split)
# at widths 16/32/64 and batches 64/256, each trained by `moco train` for one epoch of
# STEPS_PER_EPOCH steps (data.limit = steps x batch; the kNN bank is that limited split) with its
# peak RSS from GNU time, beside `moco estimate` of the same spec. Then the example spec itself,
# unchanged but for one epoch (60,000 images), when FULL=1. Alone on the machine.
# Usage: bash bench/memory_estimate.sh [STEPS_PER_EPOCH]
set -euo pipefail
cd "$(dirname "$0")/.."
steps=${1:-12}
out=${OUT:-/tmp/mocod-memory-estimate}
mkdir -p "$out"
swift build -c release --product moco >/dev/null
configs="16:64 16:256 32:64 32:256 64:64 64:256"
[ "${FULL:-0}" = 1 ] && configs="$configs full"
echo "| width | batch | images | estimate (MB) | peak RSS (MB) | estimate / measured |"
echo "|---|---|---|---|---|---|"
for c in $configs; do
  if [ "$c" = full ]; then width=32; batch=256; limit=null; name=example
  else width=${c%%:*}; batch=${c##*:}; limit=$((steps * batch)); name="w$width-b$batch"; fi
  python3 - "$width" "$batch" "$limit" > "$out/$name.json" <<'PY'
import json, sys
spec = json.load(open("examples/fashion-mnist.json"))
spec["model"]["width"] = int(sys.argv[1])
spec["optim"]["batch_size"] = int(sys.argv[2])
spec["optim"]["epochs"] = 1
spec["data"]["limit"] = None if sys.argv[3] == "null" else int(sys.argv[3])
print(json.dumps(spec))
PY
  estimate=$(.build/release/moco estimate --config "$out/$name.json" | python3 -c 'import json,sys; print(json.load(sys.stdin)["total"])')
  rm -rf "$out/$name"
  /usr/bin/time -f "%M" -o "$out/$name.rss" .build/release/moco train --config "$out/$name.json" --out "$out/$name" \
    --workers 2 --no-baseline --plain > "$out/$name.log" 2>&1
  rss=$(( $(tail -1 "$out/$name.rss") * 1024 ))
  images=$([ "$limit" = null ] && echo 60000 || echo "$limit")
  python3 -c "print(f'| $width | $batch | $images | {$estimate/2**20:.0f} | {$rss/2**20:.0f} | {$estimate/$rss:.2f} |')"
done
