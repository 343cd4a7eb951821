#!/usr/bin/env bash
# Data-parallel step speed (issue 12): the MoCo v2 step at global batch 256 as 1 process x 2 threads
# (`mocobench step`) against 2 ranks x 1 thread (`mpiexec -n 2 mocobench dp-step`) over shared memory
# and over TCP on loopback (--mca btl self,tcp), alternating, ROUNDS rounds. Prints every run's JSON
# and a summary: median images/s of each, the ratios to 1 x 2, and the all-reduce bytes and time per step.
# Usage: bash bench/distributed_step.sh [WIDTH] [ROUNDS] [CHANNELS] [SIZE]
set -euo pipefail
cd "$(dirname "$0")/.."
width=${1:-32}; rounds=${2:-3}; channels=${3:-1}; size=${4:-28}
swift build -c release --product mocobench >/dev/null
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 OMPI_MCA_btl_vader_single_copy_mechanism=none
out=$(mktemp -d)
common=(--width "$width" --batch 256 --channels "$channels" --size "$size" --queue 4096 --steps 5 --warmup 2)
for r in $(seq "$rounds"); do
  .build/release/mocobench step --threads 2 "${common[@]}" | tail -1 | tee -a "$out/one.jsonl"
  mpiexec -n 2 --bind-to core .build/release/mocobench dp-step --threads 1 "${common[@]}" | tail -1 | tee -a "$out/shm.jsonl"
  mpiexec -n 2 --bind-to core --mca btl self,tcp .build/release/mocobench dp-step --threads 1 "${common[@]}" | tail -1 | tee -a "$out/tcp.jsonl"
done
python3 - "$out" <<'PY'
import json, statistics, sys
d = sys.argv[1]
runs = {k: [json.loads(l) for l in open(f"{d}/{k}.jsonl")] for k in ("one", "shm", "tcp")}
ips = {k: statistics.median(r["images_per_second"] for r in v) for k, v in runs.items()}
print(json.dumps({
    "images_per_second_median": ips,
    "ratio_2x1_over_1x2": {"shared_memory": ips["shm"] / ips["one"], "tcp_loopback": ips["tcp"] / ips["one"]},
    "allreduce_bytes_per_step": runs["shm"][0]["allreduce_bytes_per_step"],
    "allreduce_ms_median": {k: statistics.median(r["allreduce_ms_median"] for r in runs[k]) for k in ("shm", "tcp")},
    "step_ms_median": {k: statistics.median(r["step_ms"] for r in v) for k, v in runs.items()},
}))
PY
