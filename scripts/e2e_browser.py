#!/usr/bin/env python3
"""The dashboard in a real browser (headless Chromium from Debian, driven by Selenium).

Starts the built mocod with a token on a free port and a temporary data directory, then:
  1. opens the dashboard: the token prompt shows before any request, and the page works once
     the token is given;
  2. opens the submit form: the preset loads, its dry run shows the field errors inline; a tiny
     Fashion-MNIST spec typed in validates with a memory estimate, and is submitted;
  3. on the job page, watches the loss curve draw live (its point count grows as steps arrive);
  4. pauses and resumes the job from the page (no point arrives while it is paused);
  5. once it has succeeded, downloads a checkpoint from the page: the file's sha256 matches the
     listing, and the page says so;
  6. fails on any console error (JavaScript errors, policy violations, failed loads), except the
     422 answers of the dry run, which the form shows, and on any request to another host or
     with the token in its URL.
With MOCOD_SCREENSHOTS=DIR it saves the job list and the job page as PNGs there.
Usage: python3 scripts/e2e_browser.py   (after swift build --product mocod)
"""
import hashlib
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException, TimeoutException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = {
    "name": "browser-e2e",
    "data": {"format": "idx", "path": "fashion-mnist", "split": "train", "limit": 2048},
    "eval": {"format": "idx", "path": "fashion-mnist", "split": "test", "limit": 256},
    "model": {"arch": "resnet18", "stem": "cifar", "width": 8, "in_channels": 1},
    "moco": {"queue": 1024, "momentum": 0.99, "temperature": 0.1, "bn_splits": 4},
    "augment": {"size": 28},
    "optim": {"batch_size": 64, "epochs": 2, "lr": 0.06},
    "checkpoint": {"every_epochs": 1},
    "threads": 1,
}


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def fail(msg):
    raise AssertionError(msg)


class Run:
    def __init__(self):
        self.data = tempfile.mkdtemp(prefix="mocod-browser-")
        self.downloads = os.path.join(self.data, "downloads")
        os.makedirs(self.downloads)
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.token = "browser-e2e-token-" + os.urandom(8).hex()
        token_file = os.path.join(self.data, "token")
        with open(token_file, "w") as f:
            f.write(self.token)
        os.chmod(token_file, 0o600)
        self.log = open(os.path.join(self.data, "mocod.log"), "w")
        exe = os.path.join(ROOT, ".build", "debug", "mocod")
        self.daemon = subprocess.Popen([exe, "--port", str(self.port), "--data-dir", self.data, "--token-file", token_file,
                                        "--threads", "1", "--log-level", "warning"], stdout=self.log, stderr=self.log)
        for _ in range(200):
            try:
                urllib.request.urlopen(self.base + "/healthz", timeout=1)
                break
            except OSError:
                time.sleep(0.1)
        else:
            fail("mocod did not come up")
        options = webdriver.ChromeOptions()
        options.binary_location = shutil.which("chromium") or "/usr/bin/chromium"
        for arg in ["--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1360,1000", "--disable-gpu",
                    "--no-first-run", "--disable-extensions", "--disable-background-networking", "--disable-sync",
                    "--disable-component-update", "--disable-default-apps", "--metrics-recording-only"]:
            options.add_argument(arg)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
        options.add_experimental_option("prefs", {"download.default_directory": self.downloads, "download.prompt_for_download": False})
        driver_path = shutil.which("chromedriver") or "/usr/bin/chromedriver"
        self.driver = webdriver.Chrome(service=Service(driver_path), options=options)
        self.driver.execute_cdp_cmd("Page.setDownloadBehavior", {"behavior": "allow", "downloadPath": self.downloads})
        self.console = []
        self.requests = []

    def close(self):
        try:
            self.driver.quit()
        finally:
            self.daemon.terminate()
            try:
                self.daemon.wait(20)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
            self.log.close()

    def api(self, path):
        req = urllib.request.Request(self.base + path, headers={"Authorization": "Bearer " + self.token})
        with urllib.request.urlopen(req, timeout=10) as r:
            return json.loads(r.read())

    def wait(self, what, cond, timeout=60):
        try:
            return WebDriverWait(self.driver, timeout, poll_frequency=0.1,
                                 ignored_exceptions=[StaleElementReferenceException]).until(lambda d: cond())
        except TimeoutException:
            self.collect()
            fail(f"timed out waiting for {what}; console: {self.console[-5:]}")

    def find(self, css):
        found = self.driver.find_elements(By.CSS_SELECTOR, css)
        return found[0] if found else None

    def attr(self, css, name):
        # The page re-renders parts of itself (the job header every few seconds): look again if
        # the element went stale between finding and reading it.
        for _ in range(20):
            try:
                e = self.find(css)
                return e.get_attribute(name) if e else None
            except StaleElementReferenceException:
                time.sleep(0.05)
        fail(f"{css} keeps going stale")

    def click(self, css):
        for _ in range(20):
            try:
                self.find(css).click()
                return
            except StaleElementReferenceException:
                time.sleep(0.05)
        fail(f"{css} keeps going stale")

    def state(self):
        return self.attr("#job-header .badge", "data-state")

    def points(self):
        return int(self.attr('canvas[data-chart="loss"]', "data-points") or 0)

    def collect(self):
        """Console entries and requests so far (each log can be read once)."""
        self.console += self.driver.get_log("browser")
        for entry in self.driver.get_log("performance"):
            msg = json.loads(entry["message"])["message"]
            if msg.get("method") == "Network.requestWillBeSent":
                self.requests.append(msg["params"]["request"]["url"])

    def screenshot(self, name):
        folder = os.environ.get("MOCOD_SCREENSHOTS")
        if folder:
            os.makedirs(folder, exist_ok=True)
            self.driver.save_screenshot(os.path.join(folder, name))


def main():
    run = Run()
    try:
        steps(run)
    except Exception:
        with open(os.path.join(run.data, "mocod.log")) as f:
            sys.stderr.write(f.read()[-3000:])
        raise
    finally:
        run.close()
        shutil.rmtree(run.data, ignore_errors=True)


def steps(run):
    d = run.driver
    # 1. The token prompt, before any request; then the job list.
    d.get(run.base + "/")
    run.wait("the token prompt", lambda: run.find("#auth") and run.find("#auth").is_displayed())
    run.collect()
    api_calls = [u for u in run.requests if "/v1/" in u]
    if api_calls:
        fail(f"requests before the token was given: {api_calls}")
    run.find("#auth-token").send_keys(run.token)
    run.find("#auth-form button[type=submit]").click()
    run.wait("the job list", lambda: run.find("#jobs") is not None and not run.find("#auth").is_displayed())
    print("browser: token prompt shown first; the job list loads with the token")

    # 2. The submit form: the preset's errors inline, then a tiny spec that validates.
    d.get(run.base + "/#/submit")
    run.wait("the preset's field errors", lambda: run.find('#spec-issues li[data-field="data.path"]') is not None)
    d.execute_script("const e = document.getElementById('spec'); e.value = arguments[0]; e.dispatchEvent(new Event('input'));",
                     json.dumps(TINY, indent=2))
    run.wait("the dry run's verdict", lambda: run.find("#spec-valid") is not None)
    estimate = run.find("#memory-estimate").text
    run.wait("the submit button", lambda: run.find("#submit").is_enabled())
    run.find("#submit").click()
    run.wait("the job page", lambda: "#/jobs/job_" in d.current_url)
    job_id = d.current_url.split("#/jobs/")[1]
    print(f"browser: preset errors shown inline; tiny spec valid (memory estimate {estimate}); submitted {job_id}")

    # 3. The loss curve draws live.
    seen = []
    run.wait("live points", lambda: (seen.append(run.points()) or len(set(p for p in seen if p > 0)) >= 3), timeout=180)
    if run.state() not in ("running", "queued"):
        fail(f"the job was {run.state()} before it could be paused")
    counts = sorted(set(p for p in seen if p > 0))
    print(f"browser: the loss curve grew live through {counts[:6]} points")

    # 4. Pause and resume from the page.
    run.click("#btn-pause")
    run.wait("paused", lambda: run.state() == "paused", timeout=120)
    run.screenshot("dashboard-job-paused.png")
    time.sleep(1.5)   # the page redraws at most once a second: let the last points before the pause land
    held = run.points()
    time.sleep(2)
    if run.points() != held:
        fail("points arrived while the job was paused")
    run.wait("the resume button", lambda: run.attr("#btn-resume", "disabled") is None)
    run.click("#btn-resume")
    run.wait("resumed", lambda: run.state() in ("queued", "running", "succeeded"), timeout=60)
    run.wait("succeeded", lambda: run.state() == "succeeded", timeout=600)
    total = run.api(f"/v1/jobs/{job_id}")["progress"]["total_steps"]
    run.wait("every point on the curve", lambda: run.points() == total, timeout=30)
    print(f"browser: paused at {held} points and resumed from the page; succeeded with all {total} points drawn")

    # 5. A checkpoint downloaded from the page matches its sha256.
    run.wait("the checkpoint table", lambda: run.find("#checkpoint-table tbody tr") is not None, timeout=30)
    run.wait("the log tail", lambda: "state: succeeded" in (run.find("#log").text or ""), timeout=30)
    run.screenshot("dashboard-job.png")
    row = run.find("#checkpoint-table tbody tr")
    name = row.get_attribute("data-checkpoint")
    listed = row.find_element(By.CSS_SELECTOR, "[data-sha256]").get_attribute("data-sha256")
    row.find_element(By.CSS_SELECTOR, "button").click()
    path = os.path.join(run.downloads, name)
    run.wait("the download", lambda: os.path.exists(path) and not os.path.exists(path + ".crdownload"), timeout=60)
    with open(path, "rb") as f:
        actual = hashlib.sha256(f.read()).hexdigest()
    if actual != listed:
        fail(f"downloaded {name}: sha256 {actual}, listed {listed}")
    run.wait("the page's verdict", lambda: row.find_element(By.CSS_SELECTOR, ".verdict").get_attribute("data-ok") == "true")
    print(f"browser: downloaded {name} from the page; sha256 {actual[:16]}… matches the listing")

    d.get(run.base + "/#/")
    run.wait("the job in the list", lambda: run.find(f'tr[data-id="{job_id}"] .badge[data-state="succeeded"]') is not None)
    run.screenshot("dashboard-jobs.png")

    # 6. Console errors and requests.
    run.collect()
    errors = [e for e in run.console if e.get("level") == "SEVERE"]
    expected = [e for e in errors if e.get("source") == "network" and "dry_run=true" in e.get("message", "") and " 422 " in e.get("message", "")]
    unexpected = [e for e in errors if e not in expected]
    if unexpected:
        fail(f"console errors: {unexpected}")
    foreign = [u for u in run.requests if not (u.startswith(run.base + "/") or u.startswith("data:") or u.startswith("blob:" + run.base))]
    if foreign:
        fail(f"requests to other hosts: {foreign}")
    leaked = [u for u in run.requests if run.token in u]
    if leaked:
        fail(f"the token in a URL: {leaked}")
    print(f"browser: {len(run.requests)} requests, all to {run.base}; no console errors "
          f"({len(expected)} dry-run 422s shown by the form)")
    print("browser: 1 passed, 0 failed")


if __name__ == "__main__":
    main()
