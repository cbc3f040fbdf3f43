"""The Live page of ``phasestem serve`` in a real browser (headless Chromium driven by Selenium, as
test_serve_browser.py): a ``.mib`` replayed by LiberTEM-live's simulator is started from the Live form, and the run
page shows the stream as it comes: frames received growing to all of them, the virtual bright and dark field, the
iCoM phase and the AD phase, the lag; then the job ends with the reconstruction of the recording (results.h5), every
frame accounted for.

A screenshot of the page mid-scan goes to the test's folder, and to ``$PHASESTEM_LIVE_SCREENSHOT`` (a file path)
when set.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="phasestem serve needs the serve extra (starlette, uvicorn)")
pytest.importorskip("uvicorn", reason="phasestem serve needs the serve extra (starlette, uvicorn)")
pytest.importorskip("selenium", reason="the browser test drives Chromium through Selenium (dev extra)")
pytest.importorskip("libertem_live", reason="phasestem[live] is not installed")

from live_stream import ReplayedScan, write_scan  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from serve_workspace import Server, chromium_driver, needs_chromium  # noqa: E402
from test_serve_browser import drain_console, wait  # noqa: E402

pytestmark = needs_chromium

SCAN = (12, 12)
#: µs per frame of the replayed scan: 144 frames in 4.3 s, handed over in stacks of 64 (tests/live_stream.py), so
#: the page sees the scan part received
DWELL_US = 30000
WINDOW = (1440, 1000)


def test_a_replayed_scan_is_watched_live_in_the_browser(tmp_path):
    root = tmp_path / "ws"
    root.mkdir()
    write_scan(root, SCAN)  # root/params.yaml (optics and scan, no data.file), root/mib/scan.mib
    sim = ReplayedScan(root / "mib" / "scan.mib", SCAN, DWELL_US, tmp_path / "sim.log")
    server = Server(root)  # jobs confined by the kernel where it has Landlock: the live job's one TCP port
    driver = chromium_driver(tmp_path / "chromium-profile", window=WINDOW)
    d = driver
    try:
        d.get(f"{server.url}/?token={server.token}#/live")
        wait(d, lambda d: d.execute_script("return document.body.dataset.ready") == "live", 60, "the Live page")
        d.find_element(By.ID, "live-config").send_keys("params.yaml")
        port = d.find_element(By.ID, "live-port")
        port.clear()
        port.send_keys(str(sim.data_port))
        d.find_element(By.ID, "live-epochs").send_keys("2")
        preview = d.find_element(By.ID, "live-command").text
        assert preview.startswith(f"phasestem live params.yaml --host 127.0.0.1 --data-port {sim.data_port} "
                                  "--epochs 2"), preview
        d.find_element(By.ID, "live-start").click()
        wait(d, lambda d: d.execute_script("return document.body.dataset.ready") == "run", 30, "the run page")
        job_id = int(d.current_url.rsplit("/", 1)[-1])
        assert "phasestem live --out runs/0001-live" in d.find_element(By.ID, "run-command").text

        def streams():
            return [u["stream"] for u in d.execute_script("return window.__liveUpdates || []") if u.get("stream")]

        # mid-scan: part of the frames in, the virtual images and the iCoM phase drawn, the AD phase growing
        def mid_scan(d):
            ups = d.execute_script("return window.__liveUpdates || []")
            return any(u.get("stream") and u["stream"]["stage"] == "streaming"
                       and 0 < u["stream"]["frames_received"] < u["stream"]["frames_expected"] and u.get("bf")
                       for u in ups)

        wait(d, mid_scan, 60, "a snapshot of the scan part received")
        shot = tmp_path / "serve_live.png"
        d.save_screenshot(str(shot))
        target = os.environ.get("PHASESTEM_LIVE_SCREENSHOT")
        if target:
            Path(target).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(shot, target)
        for img in ("live-bf", "live-adf", "live-icom", "live-phase"):
            assert d.find_element(By.ID, img).get_attribute("src").startswith("data:image/png"), img
        assert int(d.find_element(By.ID, "stream-expected").text) == SCAN[0] * SCAN[1]

        wait(d, lambda d: d.find_element(By.ID, "run-state").text.split(" ")[0] in ("done", "failed", "cancelled"),
             90, "the end of the live job")
        assert d.find_element(By.ID, "run-state").text == "done", d.find_element(By.ID, "run-log").text
        wait(d, lambda d: (streams() or [{}])[-1].get("stage") == "done", 30, "the last snapshot")
        seen = streams()
        received = [s["frames_received"] for s in seen]
        assert received == sorted(received) and received[0] < received[-1] == SCAN[0] * SCAN[1], received
        last = seen[-1]
        assert last["frames_expected"] == last["frames_fitted"] == SCAN[0] * SCAN[1] and last["frames_waiting"] == 0
        assert last["message"] == "" and last["lag_median"] is not None and last["lag_p95"] >= last["lag_median"]
        # what the page shows at the end: every frame accounted for, nothing dropped, the recording named
        for cell, text in (("stream-received", "144"), ("stream-fitted", "144"), ("stream-waiting", "0"),
                           ("stream-missing", "0")):
            assert d.find_element(By.ID, cell).text == text, cell
        assert d.find_element(By.ID, "stream-recording").text.startswith("stream.h5")
        assert not d.find_element(By.ID, "stream-message").is_displayed()
        assert "lag" in d.find_element(By.ID, "live-stream").text and d.find_element(By.ID, "stream-lag-median") \
            .text.endswith(" s")
        assert not d.find_element(By.ID, "run-resume").is_displayed()  # a stream does not come again
        run = root / "runs" / "0001-live"
        assert (run / "results.h5").is_file() and (run / "stream.h5").is_file()
        summary = json.loads((run / "live.json").read_text())
        assert summary["frames_expected"] == summary["frames_received"] == summary["frames_fitted"] == 144
        job = server.request(f"/api/jobs/{job_id}")[1]
        assert job["state"] == "done" and job["command"] == "live"
        assert drain_console(d) == []  # nothing refused by the Content-Security-Policy, no script error
    finally:
        driver.quit()
        server.stop()
        sim.stop()
