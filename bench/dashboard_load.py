#!/usr/bin/env python3
"""What one open dashboard costs training (issue 15; a sibling of bench/api_under_load.sh).

A Fashion-MNIST job at width 16 trains in the release mocod. One headless Chromium (Debian's,
driven by Selenium) alternates between WINDOW seconds on about:blank (quiet) and WINDOW seconds on
the job's dashboard page (open: its live curves, summary and log over one SSE stream paced to a write every 2 s):
quiet, open, quiet, open, ..., quiet, CYCLES open windows in all.

Two measures, side by side:

- Throughput. Each window's training rate is its steps' images over their summed step times (a
  stall counts in full). Each open window is compared with the mean of the quiet windows either
  side of it, so that drift of the machine's speed over minutes cancels; the slowdown is the mean
  of those per-cycle ratios with a 95 % confidence interval (Student's t over the cycles).
- CPU. The daemon's own CPU time (its threads; the training worker is a child process and is
  counted apart), the browser's (every Chromium process, in a cpuacct cgroup so that renderers
  that exit still count) and the worker's are read at each window's edges (each window starts a second after its navigation: the steady state of an
  open page, not its load). What the dashboard
  takes is the extra CPU per second in open windows over quiet ones, as a share of the CPU the
  worker uses per second: training is CPU-bound on every core, so a CPU second taken elsewhere
  is, to first order, a second of training lost in the same proportion.

CONTROL=1 loads about:blank in the "open" windows too: what the method reports when nothing
changes (its bias and noise). PAGE=list opens the job list (#/, polled every 2 s) instead of the
job's page. The browser runs at normal priority on the training's cores.
Usage: /usr/bin/python3 bench/dashboard_load.py   (CYCLES=30 WINDOW=10; alone on the machine; as root for
the cgroup, else the browser's CPU is not reported)
"""
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

from selenium import webdriver
from selenium.webdriver.chrome.service import Service

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CYCLES = int(os.environ.get("CYCLES", 30))
WINDOW = float(os.environ.get("WINDOW", 10))
CONTROL = os.environ.get("CONTROL") == "1"
PAGE = os.environ.get("PAGE", "job")
if PAGE not in ("job", "list"):
    sys.exit("PAGE must be job or list")
TICK = os.sysconf("SC_CLK_TCK")
# Student's t at 97.5 % for n-1 degrees of freedom (n up to 61; beyond, 2.0).
T975 = {1: 12.71, 2: 4.30, 3: 3.18, 4: 2.78, 5: 2.57, 6: 2.45, 7: 2.36, 8: 2.31, 9: 2.26, 10: 2.23, 12: 2.18, 15: 2.13,
        20: 2.09, 25: 2.06, 30: 2.04, 40: 2.02, 60: 2.00}


def t975(df):
    return T975[max(k for k in T975 if k <= df)] if df >= 1 else float("nan")


def proc_cpu(pid):
    """CPU seconds of one process's own threads (not its children)."""
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / TICK
    except (FileNotFoundError, ProcessLookupError):
        return float("nan")


class BrowserCgroup:
    """A cpuacct cgroup (v1) the browser's processes are started in; None where it cannot be made."""

    def __init__(self):
        self.path = f"/sys/fs/cgroup/cpuacct/mocod-dashboard-load-{os.getpid()}"
        try:
            os.mkdir(self.path)
        except OSError:
            self.path = None

    def wrapper(self, directory):
        """A chromedriver launcher that joins the cgroup first (its browser inherits it)."""
        driver = shutil.which("chromedriver") or "/usr/bin/chromedriver"
        if not self.path:
            return driver
        script = os.path.join(directory, "chromedriver-in-cgroup")
        with open(script, "w") as f:
            f.write(f"#!/bin/sh\necho $$ > {self.path}/cgroup.procs\nexec {driver} \"$@\"\n")
        os.chmod(script, 0o755)
        return script

    def cpu(self):
        return int(open(f"{self.path}/cpuacct.usage").read()) / 1e9 if self.path else float("nan")

    def remove(self):
        if self.path:
            for _ in range(50):
                try:
                    os.rmdir(self.path)
                    return
                except OSError:
                    time.sleep(0.1)


def main():
    subprocess.run(["swift", "build", "-c", "release", "--product", "mocod"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    data = tempfile.mkdtemp(prefix="mocod-dashboard-load-")
    log = open(os.path.join(data, "log"), "w")
    daemon = subprocess.Popen([os.path.join(ROOT, ".build/release/mocod"), "--port", "0", "--data-dir", data, "--log-level", "info"],
                              stdout=log, stderr=log)
    cgroup = BrowserCgroup()
    driver = None
    try:
        base = None
        for _ in range(200):
            text = open(os.path.join(data, "log")).read()
            if "listening on http://" in text:
                base = "http://" + text.split("listening on http://")[1].split()[0].rstrip("/")
                break
            time.sleep(0.1)
        if not base:
            sys.exit("mocod did not start")
        spec = json.load(open(os.path.join(ROOT, "examples/fashion-mnist.json")))
        spec["model"]["width"] = 16
        spec["optim"]["epochs"] = int((30 + (2 * CYCLES + 1) * (WINDOW + 2)) / 35) + 2   # about 40 s an epoch: never run out
        spec["eval"] = None
        spec["checkpoint"]["every_epochs"] = None
        req = urllib.request.Request(base + "/v1/jobs", data=json.dumps(spec).encode(), headers={"Content-Type": "application/json"})
        job = json.loads(urllib.request.urlopen(req).read())["id"]
        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
        for arg in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1360,1000", "--disable-gpu",
                    "--no-first-run", "--disable-extensions", "--disable-background-networking", "--disable-component-update"]:
            options.add_argument(arg)
        driver = webdriver.Chrome(service=Service(cgroup.wrapper(data)), options=options)
        driver.get("about:blank")
        worker = None
        for _ in range(300):
            kids = subprocess.run(["pgrep", "-P", str(daemon.pid)], capture_output=True, text=True).stdout.split()
            if kids:
                worker = int(kids[0])
                break
            time.sleep(0.1)
        if worker is None:
            sys.exit("no training worker appeared")
        time.sleep(20)   # past the first epoch's start-up

        def edge():
            return (time.time(), proc_cpu(daemon.pid), cgroup.cpu(), proc_cpu(worker))

        def window(kind):
            """Settles for a second after a navigation, then measures WINDOW seconds."""
            time.sleep(1)
            start = edge()
            time.sleep(WINDOW)
            spans.append((kind, start, edge()))

        spans = []
        drawn = []
        window("quiet")
        for _ in range(CYCLES):
            driver.get("about:blank" if CONTROL else f"{base}/#/jobs/{job}" if PAGE == "job" else f"{base}/#/")
            window("open")
            if not CONTROL and PAGE == "job":
                drawn.append(driver.execute_script(
                    "const c = document.querySelector('canvas[data-chart=loss]'); return c ? Number(c.dataset.points) : 0"))
            driver.get("about:blank")
            window("quiet")
        state = json.loads(urllib.request.urlopen(f"{base}/v1/jobs/{job}").read())["state"]
        if state != "running":
            sys.exit(f"the job is {state}: it ended before the last window")
        metrics = json.loads(urllib.request.urlopen(f"{base}/v1/jobs/{job}/metrics?max_points=100000").read())
        batch = spec["optim"]["batch_size"]
    finally:
        if driver:
            driver.quit()
        daemon.terminate()
        daemon.wait(30)
        log.close()
        cgroup.remove()
    steps = [p for p in metrics["points"] if p["kind"] == "step"]

    def rate(lo, hi):
        """Images per second of the steps that ended in [lo, hi): images over summed step time."""
        seconds = [batch / p["images_per_second"] for p in steps if lo <= p["time"] < hi]
        return len(seconds) * batch / sum(seconds), len(seconds)

    windows = []   # (kind, rate, steps, daemon cpu/s, browser cpu/s, worker cpu/s)
    for kind, (t0, d0, b0, w0), (t1, d1, b1, w1) in spans:
        r, n = rate(t0, t1)
        windows.append((kind, r, n, (d1 - d0) / (t1 - t0), (b1 - b0) / (t1 - t0), (w1 - w0) / (t1 - t0)))
    ratios = []
    label = "control (about:blank)" if CONTROL else "dashboard open" if PAGE == "job" else "job list open"
    for c in range(CYCLES):
        before, opened, after = windows[2 * c], windows[2 * c + 1], windows[2 * c + 2]
        quiet = (before[1] + after[1]) / 2
        ratios.append(opened[1] / quiet)
        page = f", the page drew {drawn[c]} loss points" if drawn else ""
        print(f"cycle {c + 1:2}: quiet {before[1]:.1f} | {label} {opened[1]:.1f} | quiet {after[1]:.1f} img/s "
              f"({opened[2]} steps): {100 * (1 - opened[1] / quiet):+.2f}%{page}")
    slow = [100 * (1 - r) for r in ratios]
    mean = statistics.mean(slow)
    half = t975(len(slow) - 1) * statistics.stdev(slow) / math.sqrt(len(slow)) if len(slow) > 1 else float("nan")
    quiet_w = [w for w in windows if w[0] == "quiet"]
    open_w = [w for w in windows if w[0] == "open"]

    def avg(ws, k):
        return statistics.mean(w[k] for w in ws)

    worker_cpu = avg(quiet_w, 5)
    daemon_extra = avg(open_w, 3) - avg(quiet_w, 3)
    browser_extra = avg(open_w, 4) - avg(quiet_w, 4)
    print(f"\n{label}: {CYCLES} cycles of {WINDOW:g} s")
    print(f"throughput: training slowed {mean:+.2f}% (95% CI {mean - half:+.2f}% to {mean + half:+.2f}%) "
          f"against the quiet windows either side (quiet median {statistics.median(w[1] for w in quiet_w):.1f} img/s)")
    print(f"CPU: worker {worker_cpu:.3f} CPU-s/s; daemon {avg(quiet_w, 3) * 1000:.2f} quiet, {avg(open_w, 3) * 1000:.2f} open ms/s "
          f"(+{daemon_extra * 1000:.2f} ms/s = {100 * daemon_extra / worker_cpu:.3f}% of training's CPU)")
    if cgroup.path:
        print(f"CPU: browser {avg(quiet_w, 4) * 1000:.1f} quiet, {avg(open_w, 4) * 1000:.1f} open ms/s "
              f"(+{browser_extra * 1000:.1f} ms/s = {100 * browser_extra / worker_cpu:.2f}% of training's CPU)")
        print(f"CPU: daemon and browser together: {100 * (daemon_extra + browser_extra) / worker_cpu:.2f}% of training's CPU")
    shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
