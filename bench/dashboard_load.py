#!/usr/bin/env python3
"""What one open dashboard costs training (issue 15; a sibling of bench/api_under_load.sh).

A Fashion-MNIST job at width 16 trains in the release mocod. One headless Chromium (Debian's,
driven by Selenium) alternates, CYCLES times, between WINDOW seconds on about:blank (quiet) and
WINDOW seconds on the job's dashboard page (loaded: its live curves over SSE, the 5 s job poll,
the 3 s log tail). The slowdown compares the median images/s of the steps in the loaded windows
with that of the steps in the quiet ones (the first second of each skipped), as api_under_load.sh
does. The browser runs at normal priority on the training's cores by default, so its rendering
counts against training too; BROWSER_IDLE=1 runs it in the idle scheduling class instead, a
stand-in for a browser on another machine (what the daemon itself pays).
Usage: python3 bench/dashboard_load.py   (CYCLES=6 WINDOW=20; alone on the machine)
"""
import json
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
CYCLES = int(os.environ.get("CYCLES", 6))
WINDOW = float(os.environ.get("WINDOW", 20))


def main():
    subprocess.run(["swift", "build", "-c", "release", "--product", "mocod"], cwd=ROOT, check=True, stdout=subprocess.DEVNULL)
    data = tempfile.mkdtemp(prefix="mocod-dashboard-load-")
    log = open(os.path.join(data, "log"), "w")
    daemon = subprocess.Popen([os.path.join(ROOT, ".build/release/mocod"), "--port", "0", "--data-dir", data, "--log-level", "info"],
                              stdout=log, stderr=log)
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
        spec["optim"]["epochs"] = int((15 + 2 * CYCLES * WINDOW) / 35) + 2   # about 40 s an epoch: never run out
        spec["eval"] = None
        spec["checkpoint"]["every_epochs"] = None
        req = urllib.request.Request(base + "/v1/jobs", data=json.dumps(spec).encode(), headers={"Content-Type": "application/json"})
        job = json.loads(urllib.request.urlopen(req).read())["id"]
        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
        for arg in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1360,1000", "--disable-gpu",
                    "--no-first-run", "--disable-extensions", "--disable-background-networking", "--disable-component-update"]:
            options.add_argument(arg)
        service = Service(shutil.which("chromedriver") or "/usr/bin/chromedriver")
        driver = webdriver.Chrome(service=service, options=options)
        if os.environ.get("BROWSER_IDLE") == "1":
            # Every process of the browser (and its driver) in the idle class.
            pids = subprocess.run(["pgrep", "-f", "chromium|chromedriver"], capture_output=True, text=True).stdout.split()
            for pid in pids:
                subprocess.run(["chrt", "--idle", "-a", "-p", "0", pid], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        driver.get("about:blank")
        time.sleep(15)
        windows = []
        for _ in range(CYCLES):
            t0 = time.time()
            time.sleep(WINDOW)
            t1 = time.time()
            driver.get(f"{base}/#/jobs/{job}")
            time.sleep(WINDOW)
            t2 = time.time()
            points = driver.execute_script("const c = document.querySelector('canvas[data-chart=loss]'); return c ? c.dataset.points : null")
            driver.get("about:blank")
            windows.append((t0, t1, t2, points))
        state = json.loads(urllib.request.urlopen(f"{base}/v1/jobs/{job}").read())["state"]
        if state != "running":
            sys.exit(f"the job is {state}: it ended before the last window")
        metrics = json.loads(urllib.request.urlopen(f"{base}/v1/jobs/{job}/metrics?max_points=100000").read())
    finally:
        if driver:
            driver.quit()
        daemon.terminate()
        daemon.wait(30)
        log.close()
    steps = [p for p in metrics["points"] if p["kind"] == "step"]

    def rates(lo, hi):
        return [p["images_per_second"] for p in steps if lo + 1 <= p["time"] < hi]

    quiet, loaded = [], []
    for c, (t0, t1, t2, points) in enumerate(windows, 1):
        q, l = rates(t0, t1), rates(t1, t2)
        quiet += q
        loaded += l
        print(f"cycle {c}: training {statistics.median(q):.1f} quiet / {statistics.median(l):.1f} with the dashboard open img/s "
              f"(the page drew {points} loss points)")
    qm, lm = statistics.median(quiet), statistics.median(loaded)
    where = "in the idle class" if os.environ.get("BROWSER_IDLE") == "1" else "at normal priority on the same cores"
    print(f"browser {where}; training images/s, median over steps: quiet {qm:.1f} ({len(quiet)} steps), "
          f"dashboard open {lm:.1f} ({len(loaded)} steps)")
    print(f"slowdown with one dashboard open: {100 * (1 - lm / qm):.2f}%")
    shutil.rmtree(data, ignore_errors=True)


if __name__ == "__main__":
    main()
