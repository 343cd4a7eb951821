#!/usr/bin/env bash
# Data-parallel training speed (issue 12): the Fashion-MNIST example at width 32 (no evaluation),
# trained by `moco train` as 1 process x 2 threads and as 2 ranks x 1 thread under mpiexec over shared
# memory and over TCP on loopback (--mca btl self,tcp), one after the other, alone on the machine.
# Prints each run's wall time, median images/s and (2 ranks) the all-reduce's bytes and median time per
# step, from its metrics, and the ratios to 1 x 2.
# Usage: bash bench/distributed.sh [EPOCHS] [WIDTH]
set -euo pipefail
cd "$(dirname "$0")/.."
epochs=${1:-1}; width=${2:-32}
out=${OUT:-/tmp/mocod-distributed-bench}
rm -rf "$out"; mkdir -p "$out"
swift build -c release --product moco >/dev/null
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
for p in 1 2; do
  python3 - "$width" "$p" > "$out/spec$p.json" <<'PY'
import json, sys
spec = json.load(open("examples/fashion-mnist.json"))
spec["model"]["width"] = int(sys.argv[1])
spec["eval"] = None
processes = int(sys.argv[2])
spec["distributed"] = {"processes": processes}
spec["threads"] = 2 // processes
print(json.dumps(spec))
PY
done
run() {  # name, command...
  local name=$1; shift
  local start end
  start=$(date +%s.%N)
  "$@" > "$out/$name.log" 2>&1
  end=$(date +%s.%N)
  echo "$start $end" > "$out/$name.time"
  echo "# $name: $(python3 -c "print(round($end - $start, 1))") s" >&2
}
run one .build/release/moco train --config "$out/spec1.json" --out "$out/one" --epochs "$epochs" --plain
run shm mpiexec -n 2 --bind-to core .build/release/moco train --config "$out/spec2.json" --out "$out/shm" --epochs "$epochs" --plain
run tcp mpiexec -n 2 --bind-to core --mca btl self,tcp .build/release/moco train --config "$out/spec2.json" --out "$out/tcp" --epochs "$epochs" --plain
python3 - "$out" <<'PY'
import json, statistics, sys
out = sys.argv[1]
res = {}
for name in ("one", "shm", "tcp"):
    steps = [json.loads(l) for l in open(f"{out}/{name}/metrics.jsonl")]
    steps = [p for p in steps if p["kind"] == "step"]
    start, end = map(float, open(f"{out}/{name}.time").read().split())
    res[name] = {"wall_seconds": end - start, "median_images_per_second": statistics.median(p["images_per_second"] for p in steps),
                 "steps": len(steps), "final_loss": steps[-1]["loss"]}
    if "allreduce_bytes" in steps[-1]:
        res[name]["allreduce_bytes_per_step"] = steps[-1]["allreduce_bytes"]
        res[name]["allreduce_ms_median"] = 1e3 * statistics.median(p["allreduce_seconds"] for p in steps)
res["ratio_2x1_over_1x2"] = {k: res[k]["median_images_per_second"] / res["one"]["median_images_per_second"] for k in ("shm", "tcp")}
res["wall_ratio_1x2_over_2x1"] = {k: res["one"]["wall_seconds"] / res[k]["wall_seconds"] for k in ("shm", "tcp")}
print(json.dumps(res))
PY
