"""A small workspace and a real ``phasestem serve`` process for the serve tests (test_serve*.py)."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest
import yaml

from phasestem.recon.synthetic import write_npz

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
TOKEN = "test-token-0123456789abcdef"


#: ``configs/plan.yaml`` of the workspace: a plan whose expected result takes seconds (a 7 × 7 field, 3 epochs)
TINY_PLAN = {"optics": {"energy": 300e3, "semiangle": 20.0, "aberrations": {"C10": 60.0}},
             "scan": {"step": 0.8, "shape": [32, 32]}, "detector": {"shape": 32, "angular_sampling": 2.0},
             "dose": {"electrons_per_area": 1e5}, "specimen": {"thickness": 6.0}, "reconstruction": {"epochs": 3},
             "expected": {"scan_shape": [7, 7], "simulation_slice": 6.0}}


def make_workspace(root: Path, n_epochs: int = 12, scan: int = 8, batch_size: int = 4) -> Path:
    """``root/data/scan.npz`` (a simulated scan, patterns (scan, scan, 32, 32)), ``root/configs/tiny.yaml`` (the
    tiny reconstruction of it: a checkpoint every epoch, no optics check) and ``root/configs/plan.yaml``
    (:data:`TINY_PLAN`); returns ``root``."""
    (root / "data").mkdir(parents=True, exist_ok=True)
    (root / "configs").mkdir(exist_ok=True)
    write_npz(root / "data" / "scan.npz", scan_shape=(scan, scan), seed=5)
    cfg = yaml.safe_load((CONFIGS / "reconstruct_tiny.yaml").read_text())
    cfg.pop("tune", None)
    cfg["data"] = {"file": "../data/scan.npz", "patterns_key": "patterns"}
    cfg["scan"]["shape"] = [scan, scan]
    cfg["run"].update(n_epochs=n_epochs, batch_size=batch_size, checkpoint_every=1, check_optics=False,
                      out_dir="../runs/direct", seed=3)
    (root / "configs" / "tiny.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    (root / "configs" / "plan.yaml").write_text(yaml.safe_dump(TINY_PLAN, sort_keys=False))
    return root


#: seconds a test waits for an event of a server or its jobs before failing: generous enough for a 2-core machine at
#: load 8 (everything there runs about 4-8 × slower than on a quiet one); a test that passes waits only for the event
PATIENCE = 300


class Server:
    """``phasestem serve --root ROOT --port 0 --token TOKEN …`` as a subprocess; ``url`` once it listens."""

    def __init__(self, root: Path, *args: str, token: str = TOKEN):
        self.root, self.token = Path(root), token
        env = dict(os.environ, MPLBACKEND="Agg", HF_HUB_OFFLINE="1")
        self.proc = subprocess.Popen([sys.executable, "-m", "phasestem.cli", "serve", "--root", str(root), "--port",
                                      "0", "--token", token, *args], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=env)
        self.url = None
        end = time.monotonic() + PATIENCE
        while time.monotonic() < end:
            line = self.proc.stdout.readline()
            if not line:
                break
            m = re.search(r"(http://127\.0\.0\.1:\d+)/\?token=", line)
            if m:
                self.url = m.group(1)
                break
        if self.url is None:
            self.proc.kill()
            raise RuntimeError(f"phasestem serve did not start: {self.proc.stderr.read()}")

    def request(self, path: str, method: str = "GET", body=None, token: str | None = "default",
                headers: dict | None = None, timeout: float = 120) -> tuple[int, object]:
        """(status, JSON answer or bytes); ``token`` None: none sent; else sent as ``Authorization: token …``."""
        data = json.dumps(body).encode() if isinstance(body, dict | list) else body
        req = urllib.request.Request(self.url + path, data=data, method=method)
        if token is not None:
            req.add_header("Authorization", f"token {self.token if token == 'default' else token}")
        if isinstance(body, dict | list):
            req.add_header("Content-Type", "application/json")
        for k, v in (headers or {}).items():
            req.add_header(k, v)
        try:
            with urllib.request.urlopen(req, timeout=timeout) as res:
                status, raw, ctype = res.status, res.read(), res.headers.get("content-type", "")
        except urllib.error.HTTPError as exc:
            status, raw, ctype = exc.code, exc.read(), exc.headers.get("content-type", "")
        return status, (json.loads(raw) if "json" in ctype else raw)

    def wait_job(self, job_id: int, states=("done", "failed", "cancelled"), timeout: float = PATIENCE) -> dict:
        """The job once its state is one of ``states`` (polled every 0.2 s); TimeoutError after ``timeout`` s."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            status, job = self.request(f"/api/jobs/{job_id}")
            assert status == 200, job
            if job["state"] in states:
                return job
            time.sleep(0.2)
        raise TimeoutError(f"job {job_id} still {job['state']} after {timeout} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc.stdout.close()
        self.proc.stderr.close()


#: Debian's Chromium and its driver, where installed (.ci/run installs them)
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHROMEDRIVER = shutil.which("chromedriver")
#: the mark of a browser test: skipped, saying why, without them
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None or CHROMEDRIVER is None,
    reason="headless Chromium and its driver are not installed (Debian: apt-get install chromium chromium-driver; "
           ".ci/run installs them)")

#: headless Chromium's flags in the browser tests: no sandbox (root), no GPU, no traffic of its own to the internet
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync")


def chromium_driver(profile: Path, downloads: Path | None = None, window: tuple[int, int] = (1200, 860)):
    """Debian's headless Chromium driven by Selenium, with a fresh profile folder (``downloads``: where files the
    pages download go; ``window``: its size in px)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for arg in (*CHROMIUM_FLAGS, f"--window-size={window[0]},{window[1]}", f"--user-data-dir={profile}"):
        options.add_argument(arg)
    if downloads is not None:
        options.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                                  "download.prompt_for_download": False})
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(CHROMEDRIVER))
    driver.set_script_timeout(30)
    return driver
