"""The Live page of ``phasestem serve`` in a real browser (headless Chromium driven by Selenium, as
test_serve_browser.py):

* a ``.mib`` replayed by LiberTEM-live's simulator on a port of its own is followed from the Live form (a detector's
  host and port), and the run page shows the stream as it comes: frames received growing to all of them, the
  virtual bright and dark field, the iCoM phase and the AD phase, the lag; then the job ends with the reconstruction
  of the recording (results.h5), every frame accounted for;
* a rehearsal started from the Live form (a workspace ``.mib`` replayed at a frame rate, the simulator started by the
  job itself, confined by the kernel where it has Landlock) is stopped mid-scan from the run page: every frame the
  simulator sent is in the recording, the job is done (a partial scan) with its figures, and Compare opens it.

A screenshot of the page mid-scan goes to the test's folder, and to ``$PHASESTEM_LIVE_SCREENSHOT`` (a file path)
when set.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest

pytest.importorskip("starlette", reason="phasestem serve needs the serve extra (starlette, uvicorn)")
pytest.importorskip("uvicorn", reason="phasestem serve needs the serve extra (starlette, uvicorn)")
pytest.importorskip("selenium", reason="the browser test drives Chromium through Selenium (dev extra)")
pytest.importorskip("libertem_live", reason="phasestem[live] is not installed")

import h5py  # noqa: E402
from live_stream import ReplayedScan, sent_by_simulator, write_scan  # noqa: E402
from selenium.webdriver.common.by import By  # noqa: E402
from selenium.webdriver.support.ui import Select  # noqa: E402
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
        for cell, text in (("stream-sent", "144"), ("stream-received", "144"), ("stream-recorded", "144"),
                           ("stream-fitted", "144"), ("stream-waiting", "0"), ("stream-missing", "0")):
            assert d.find_element(By.ID, cell).text == text, cell
        assert not d.find_element(By.ID, "stream-unsent").is_displayed()  # the detector sent the whole scan
        assert d.find_element(By.ID, "stream-rate").text == f"{last['frames_per_second']:.1f} frames/s"
        assert d.find_element(By.ID, "run-epoch").text == "2 / 2"
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


#: the rehearsal's frame rate: its 144 frames in 9 s, so that the page sees two rows in and the scan still running
FPS = 16


def test_a_rehearsal_stopped_mid_scan_keeps_every_frame_sent(tmp_path):
    root = tmp_path / "ws"
    root.mkdir()
    write_scan(root, SCAN)  # root/params.yaml, root/mib/scan.mib
    # jobs confined by the kernel where it has Landlock (the simulator's ports, nothing else); two at once: the
    # recording is reconstructed offline beside the rehearsal's own reconstruction of it
    server = Server(root, "--max-jobs", "2")
    driver = chromium_driver(tmp_path / "chromium-profile", window=WINDOW)
    d = driver
    try:
        d.get(f"{server.url}/?token={server.token}#/live")
        wait(d, lambda d: d.execute_script("return document.body.dataset.ready") == "live", 60, "the Live page")
        d.find_element(By.ID, "live-config").send_keys("params.yaml")
        assert not d.find_element(By.ID, "live-replay").is_displayed()  # a detector's host and port by default
        Select(d.find_element(By.ID, "live-source")).select_by_value("replay")
        assert not d.find_element(By.ID, "live-port").is_displayed()
        d.find_element(By.ID, "live-replay").send_keys("mib/scan.mib")
        fps = d.find_element(By.ID, "live-fps")
        fps.clear()
        fps.send_keys(str(FPS))
        d.find_element(By.ID, "live-epochs").send_keys("2")
        preview = d.find_element(By.ID, "live-command").text
        assert preview.startswith(f"phasestem live params.yaml --replay mib/scan.mib --fps {FPS} --epochs 2 "), preview
        d.find_element(By.ID, "live-start").click()
        wait(d, lambda d: d.execute_script("return document.body.dataset.ready") == "run", 30, "the run page")
        job_id = int(d.current_url.rsplit("/", 1)[-1])
        assert f"--replay mib/scan.mib --fps {FPS}" in d.find_element(By.ID, "run-command").text

        def received(d):
            text = d.find_element(By.ID, "stream-received").text
            return int(text) if text.isdigit() else 0

        # two rows in, as the page says: stop the scan there
        wait(d, lambda d: received(d) >= 2 * SCAN[1], 120, "two scan rows received")
        assert d.find_element(By.ID, "stream-stage").text.startswith("streaming"), d.find_element(By.ID, "run-log").text
        assert d.find_element(By.ID, "run-epoch").text.endswith(" / 2")  # the run's epochs, while streaming too
        assert all(d.find_element(By.ID, cell).is_displayed() for cell in ("stream-sent", "stream-rate"))
        d.find_element(By.ID, "run-cancel").click()
        run = root / "runs" / f"{job_id:04d}-live"
        end = time.monotonic() + 120
        while not (run / "stream.h5").exists() and time.monotonic() < end:  # the recording, closed at the stop
            assert server.request(f"/api/jobs/{job_id}")[1]["state"] == "cancelling", (run / "job.log").read_text()
            time.sleep(0.1)
        with h5py.File(run / "stream.h5") as f:
            rows = f["patterns"].shape[0]
            recorded = rows * SCAN[1] + (len(f["incomplete_row"]) if "incomplete_row" in f else 0)
        status, offline = server.request("/api/jobs", "POST", body={
            "command": "reconstruct", "config": "params.yaml", "name": "the recording, offline",
            "set": {"data.file": f"runs/{job_id:04d}-live/stream.h5", "scan.shape": [rows, SCAN[1]],
                    "run.n_epochs": 2}})
        assert status == 200, offline
        wait(d, lambda d: d.find_element(By.ID, "run-state").text.split(" ")[0] in ("done", "failed", "cancelled"),
             120, "the end of the rehearsal")
        assert d.find_element(By.ID, "run-state").text == "done", d.find_element(By.ID, "run-log").text
        assert d.find_element(By.ID, "run-outcome").text == "· partial scan"

        # every frame the simulator sent, by its own count, is in the recording and its account
        sent = sent_by_simulator(run / "replay.log")
        summary = json.loads((run / "live.json").read_text())
        assert 2 * SCAN[1] <= sent < SCAN[0] * SCAN[1], sent  # stopped mid-scan
        assert sent == recorded == summary["frames_recorded"] == summary["frames_sent"], (sent, recorded, summary)
        assert summary["complete"] is False and summary["stop_reason"] == "stopped by the operator"
        job = server.request(f"/api/jobs/{job_id}")[1]
        assert job["state"] == "done" and job["note"] == f"partial scan: stopped by the operator after {sent} of 144 " \
            "frames", job
        # the page said the same: sent, received, recorded; nothing lost, the rest never sent
        wait(d, lambda d: d.find_element(By.ID, "stream-stage").text == "done", 30, "the last snapshot")
        for cell, text in (("stream-sent", str(sent)), ("stream-received", str(sent)), ("stream-recorded", str(sent)),
                           ("stream-missing", "0"), ("stream-unsent", str(144 - sent))):
            assert d.find_element(By.ID, cell).text == text, cell
        last = [u["stream"] for u in d.execute_script("return window.__liveUpdates") if u.get("stream")][-1]
        assert d.find_element(By.ID, "stream-message").text == last["message"]  # phasestem live's words, no others
        wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, "#run-figures img[alt='reconstruction.png']"), 30,
             "the run's figures")
        assert not d.find_element(By.ID, "run-resume").is_displayed()

        # a finished reconstruction: Compare takes it, beside the recording reconstructed offline
        assert server.wait_job(offline["id"], timeout=120)["state"] == "done"
        d.get(f"{server.url}/#/jobs")
        wait(d, lambda d: d.execute_script("return document.body.dataset.ready") == "jobs", 30, "the jobs page")
        wait(d, lambda d: d.find_elements(By.CSS_SELECTOR, f'#jobs-table tr[data-job="{job_id}"] .compare-box'), 30,
             "the job list")
        assert d.find_element(By.CSS_SELECTOR, f'#jobs-table tr[data-job="{job_id}"] .compare-box').is_enabled()
        d.get(f"{server.url}/#/compare?jobs={job_id},{offline['id']}")
        wait(d, lambda d: d.execute_script("return document.body.dataset.ready") == "compare", 60, "the compare page")
        assert d.find_element(By.ID, f"compare-img-{job_id}").get_attribute("src").startswith("data:image/png")
        assert d.find_element(By.ID, "diff-img").get_attribute("src").startswith("data:image/png")
        assert drain_console(d) == []
    finally:
        driver.quit()
        server.stop()
