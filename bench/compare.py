#!/usr/bin/env python3
"""Compare the Swift `mocobench` against the PyTorch reference (bench/torch_step.py).

Runs alternate processes (swift, torch, swift, torch, ...; --rounds of each),
takes the last JSON line of each run's stdout, runs each side's GEMM probe once
(`<swift-cmd> gemm --threads T` and `torch_step.py --gemm --threads T`) and
prints a JSON summary line.  With --matrix it runs width {64,32} x input
{1x28x28, 3x32x32} at batch 256 and prints one summary line per config.

Commands run with the repository root as working directory, so the default
--swift-cmd `.build/release/mocobench` resolves there.

Examples:
  python bench/compare.py --arch resnet18 --stem cifar --width 64 --batch 256 \
      --channels 1 --size 28 --threads 2 --rounds 3
  python bench/compare.py --matrix --threads 2
  python bench/compare.py --matrix --precision bf16   # mocod bf16 vs PyTorch autocast vs mocod fp32

With --precision bf16 every round runs three processes in turn: mocod bf16, PyTorch under
CPU autocast (bf16), and mocod fp32; the summary gives mocod bf16 over PyTorch autocast, mocod
bf16 over its own fp32, each side's peak RSS, and GFLOP/s against bf16 GEMM rates measured in
the same run (mocod: oneDNN's bf16 matmul; PyTorch: a bf16 torch.mm).
"""
import argparse
import json
import os
import shlex
import statistics
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TORCH_STEP = os.path.join(ROOT, "bench", "torch_step.py")

STEP_FLAGS = ["arch", "stem", "width", "batch", "channels", "size", "threads", "queue",
              "steps", "warmup"]


def step_flags(cfg):
    out = []
    for k in STEP_FLAGS:
        out += [f"--{k}", str(cfg[k])]
    return out


def run_json(cmd, timeout):
    """Run cmd, return (last JSON object on stdout, error string or None)."""
    try:
        p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except FileNotFoundError as e:
        return None, f"not found: {e.filename}"
    except subprocess.TimeoutExpired:
        return None, f"timed out after {timeout}s: {shlex.join(cmd)}"
    last = None
    for line in p.stdout.splitlines():
        line = line.strip()
        if line.startswith("{"):
            try:
                last = json.loads(line)
            except json.JSONDecodeError:
                pass
    if p.returncode != 0:
        tail = (p.stderr or p.stdout).strip().splitlines()[-3:]
        return last, f"exit {p.returncode}: {shlex.join(cmd)}: {' | '.join(tail)}"
    if last is None:
        return None, f"no JSON line on stdout: {shlex.join(cmd)}"
    return last, None


def median_or_none(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def side_summary(runs, gemm):
    ok = [r for r in runs if r is not None]
    ips = median_or_none([r.get("images_per_second") for r in ok])
    gf = median_or_none([r.get("gflops_per_second") for r in ok])
    rss = [r.get("peak_rss_mb") for r in ok if r.get("peak_rss_mb") is not None]
    gemm_rate = gemm.get("gemm_gflops_per_second") if gemm else None
    return {
        "runs_ok": len(ok),
        "images_per_second_median": ips,
        "images_per_second_runs": [r.get("images_per_second") for r in ok],
        "step_ms_median": median_or_none([r.get("step_ms") for r in ok]),
        "peak_rss_mb_max": max(rss) if rss else None,
        "gflops_per_second_median": gf,
        "gemm_gflops_per_second": gemm_rate,
        "fraction_of_gemm": (gf / gemm_rate) if (gf is not None and gemm_rate) else None,
        "flops_per_step": ok[0].get("flops_per_step") if ok else None,
    }


def compare_config(args, cfg, swift_prefix, torch_prefix, gemms):
    swift_runs, torch_runs, fp32_runs, errors = [], [], [], []
    prec = ["--precision", args.precision]
    sides = [("mocod", swift_prefix + ["step"] + prec, swift_runs), ("pytorch", torch_prefix + prec, torch_runs)]
    if args.precision == "bf16":
        sides.append(("mocod_fp32", swift_prefix + ["step", "--precision", "fp32"], fp32_runs))
    for _ in range(args.rounds):
        for name, prefix, runs in sides:
            res, err = run_json(prefix + step_flags(cfg), args.timeout)
            if err:
                errors.append(f"{name}: {err}")
                res = None if res is None or "images_per_second" not in res else res
            runs.append(res)
            if args.verbose:
                print(f"# {name}: {json.dumps(res)}", file=sys.stderr)
    sw = side_summary(swift_runs, gemms.get("mocod"))
    th = side_summary(torch_runs, gemms.get("pytorch"))
    ratio = None
    if sw["images_per_second_median"] and th["images_per_second_median"]:
        ratio = sw["images_per_second_median"] / th["images_per_second_median"]
    out = {
        "config": cfg,
        "precision": args.precision,
        "rounds": args.rounds,
        "ratio_images_per_second_mocod_over_pytorch": ratio,
        "mocod": sw,
        "pytorch": th,
    }
    if args.precision == "bf16":
        own = side_summary(fp32_runs, gemms.get("mocod_fp32"))
        out["mocod_fp32"] = own
        out["ratio_images_per_second_bf16_over_own_fp32"] = (
            sw["images_per_second_median"] / own["images_per_second_median"]
            if sw["images_per_second_median"] and own["images_per_second_median"] else None)
        out["peak_rss_mocod_at_or_below_pytorch"] = (
            sw["peak_rss_mb_max"] <= th["peak_rss_mb_max"] if sw["peak_rss_mb_max"] and th["peak_rss_mb_max"] else None)
    if errors:
        out["errors"] = errors
    return out


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--swift-cmd", default=".build/release/mocobench",
                   help="command prefix of the Swift bench (shell-split)")
    p.add_argument("--torch-python", default=sys.executable,
                   help="python interpreter used to run torch_step.py")
    p.add_argument("--arch", default="resnet18")
    p.add_argument("--stem", default="cifar")
    p.add_argument("--width", type=int, default=64)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--channels", type=int, default=1)
    p.add_argument("--size", type=int, default=28)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--queue", type=int, default=4096)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--matrix", action="store_true",
                   help="width {64,32} x input {1x28x28, 3x32x32}, batch 256")
    p.add_argument("--no-gemm", action="store_true", help="skip the GEMM probes")
    p.add_argument("--timeout", type=float, default=3600.0, help="per-process timeout (s)")
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"],
                   help="bf16: mocod --precision bf16 against PyTorch under CPU autocast, and mocod fp32")
    p.add_argument("--verbose", action="store_true", help="echo every run's JSON on stderr")
    args = p.parse_args()

    swift_prefix = shlex.split(args.swift_cmd)
    torch_prefix = [args.torch_python, TORCH_STEP]

    gemms, gemm_errors = {}, []
    if not args.no_gemm:
        probes = [("mocod", swift_prefix + ["gemm", "--threads", str(args.threads), "--precision", args.precision]),
                  ("pytorch", torch_prefix + ["--gemm", "--threads", str(args.threads), "--precision", args.precision])]
        if args.precision == "bf16":
            probes.append(("mocod_fp32", swift_prefix + ["gemm", "--threads", str(args.threads)]))
        for name, cmd in probes:
            res, err = run_json(cmd, args.timeout)
            if err:
                gemm_errors.append(f"{name} gemm: {err}")
            if res is not None and "gemm_gflops_per_second" in res:
                gemms[name] = res

    base = {k: getattr(args, k) for k in STEP_FLAGS}
    if args.matrix:
        configs = []
        for width in (64, 32):
            for channels, size in ((1, 28), (3, 32)):
                configs.append(dict(base, width=width, channels=channels, size=size, batch=256))
    else:
        configs = [base]

    failed = bool(gemm_errors)
    for cfg in configs:
        out = compare_config(args, cfg, swift_prefix, torch_prefix, gemms)
        if gemm_errors:
            out.setdefault("errors", []).extend(gemm_errors)
        failed = failed or "errors" in out
        print(json.dumps(out), flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
