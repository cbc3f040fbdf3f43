"""phasestem serve: the token, path confinement, what may run, size limits, the queue across a restart (a real
server process and real ``phasestem`` jobs; the browser itself: test_serve_browser.py)."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("starlette", reason="phasestem serve needs the serve extra (starlette, uvicorn)")
pytest.importorskip("uvicorn", reason="phasestem serve needs the serve extra (starlette, uvicorn)")

from serve_workspace import Server, make_workspace  # noqa: E402

from phasestem.recon.live import read_snapshot  # noqa: E402
from phasestem.recon.results import load_results  # noqa: E402
from phasestem.serve.app import exposure_warning, is_loopback  # noqa: E402
from phasestem.serve.jobs import lock_holder  # noqa: E402


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = make_workspace(tmp_path_factory.mktemp("serve") / "ws", n_epochs=40)
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.txt").write_text("not for the workspace")
    (root / "escape").symlink_to(outside, target_is_directory=True)
    (root / "escape_file.npz").symlink_to(outside / "secret.txt")
    (root / "inside_link").symlink_to(root / "data", target_is_directory=True)
    srv = Server(root, "--max-upload-mb", "0.01")  # 10 KiB
    yield srv
    srv.stop()


#: every kind of route, with a body where it takes one
ROUTES = [("GET", "/"), ("GET", "/static/app.js"), ("GET", "/api/info"), ("GET", "/api/files"),
          ("GET", "/api/file?path=configs/tiny.yaml"), ("GET", "/api/dataset?path=data/scan.npz"),
          ("GET", "/api/pattern?path=data/scan.npz&iy=0&ix=0"), ("GET", "/api/jobs"), ("GET", "/api/events"),
          ("GET", "/api/jobs/1/events"), ("GET", "/api/compare?jobs=1,2"),
          ("GET", "/api/params?path=configs/tiny.yaml"),
          ("POST", "/api/jobs"), ("POST", "/api/jobs/1/cancel"), ("PUT", "/api/upload?path=x.bin")]


def every_route() -> list[tuple[str, str]]:
    """The hand-written requests above plus every (method, path) of the server's own route table."""
    from phasestem.serve.endpoints import ROUTES as TABLE

    table = [(m, path.replace("{job_id}", "1")) for path, _, _, methods in TABLE for m in methods]
    return ROUTES + [r for r in table if r not in ROUTES]


def test_every_route_and_the_push_channel_need_the_token(server):
    assert len(every_route()) >= 20
    for method, path in every_route():
        body = b"{}" if method != "GET" else None
        status, answer = server.request(path, method, body=body, token=None)
        assert status == 401, (method, path, status)
        assert "token" in answer["error"]
        status, answer = server.request(path, method, body=body, token="wrong-token")
        assert status == 403, (method, path, status)
        assert answer == {"error": "wrong token"}
        sep = "&" if "?" in path else "?"
        status, _ = server.request(f"{path}{sep}token=wrong", method, body=body, token=None)
        assert status == 403, (method, path)
        status, _ = server.request(path, method, body=body, token=None,
                                   headers={"Cookie": "phasestem_token=wrong"})
        assert status == 403, (method, path)
    # the right token, in each of its three places
    status, page = server.request(f"/?token={server.token}", token=None)
    assert status == 200 and b"phasestem" in page
    status, files = server.request("/api/files", token=None, headers={"Cookie": f"phasestem_token={server.token}"})
    assert status == 200 and {"configs", "data"} <= {e["name"] for e in files["entries"]}
    # the push channel answers with the token: an event stream whose first event is the job list
    import urllib.request

    req = urllib.request.Request(server.url + "/api/events", headers={"Authorization": f"token {server.token}"})
    with urllib.request.urlopen(req, timeout=120) as res:
        assert res.headers["content-type"].startswith("text/event-stream")
        assert res.readline().startswith(b"data: {\"jobs\"")
    status, answer = server.request("/api/jobs/999/events")
    assert status == 404 and "no such job" in answer["error"]
    # a state change from another site's page is refused even with the cookie
    status, answer = server.request("/api/jobs", "POST", body={"command": "reconstruct"},
                                    headers={"Origin": "http://evil.example"})
    assert status == 403 and "another site" in answer["error"]


@pytest.mark.parametrize("path", ["../", "..", "data/../../x", "/etc/passwd", "escape", "escape/secret.txt",
                                  "escape_file.npz", "~/x"])
def test_paths_leaving_the_root_are_refused(server, path):
    from urllib.parse import quote

    q = quote(path)
    for route in (f"/api/files?path={q}", f"/api/file?path={q}", f"/api/dataset?path={q}",
                  f"/api/params?path={q}"):
        status, answer = server.request(route)
        assert status == 403, (route, status, answer)
    status, answer = server.request(f"/api/upload?path={q}/new.bin", "PUT", body=b"x")
    assert status == 403
    status, answer = server.request("/api/jobs", "POST", body={"command": "reconstruct", "config": path})
    assert status == 403, answer
    if "/" in path or path.startswith(("..", "~")):  # a path-like argument of the command
        spec = {"command": "reconstruct", "config": "configs/tiny.yaml", "args": ["--key", path]}
        status, answer = server.request("/api/jobs", "POST", body=spec)
        assert status == 403, answer


def test_links_inside_the_root_are_followed(server):
    status, listing = server.request("/api/files?path=inside_link")
    assert status == 200 and "scan.npz" in {e["name"] for e in listing["entries"]}
    names = {e["name"] for e in server.request("/api/files")[1]["entries"]}
    assert "escape" not in names and "escape_file.npz" not in names  # links out of the root are not even listed


def test_only_phasestem_commands_can_be_run(server):
    runs = server.root / "runs"
    before = sorted(runs.iterdir()) if runs.exists() else []
    for spec in ({"command": "bash", "config": "configs/tiny.yaml", "args": ["-c", "touch pwned"]},
                 {"command": "reconstruct; touch pwned", "config": "configs/tiny.yaml"},
                 {"command": "serve", "config": "configs/tiny.yaml"},
                 {"command": "/bin/sh", "config": "configs/tiny.yaml"}):
        status, answer = server.request("/api/jobs", "POST", body=spec)
        assert status == 403, spec
        assert "only phasestem's own commands" in answer["error"]
    status, answer = server.request("/api/jobs", "POST", body={"argv": ["sh", "-c", "touch pwned"]})
    assert status == 400 and "unknown job field" in answer["error"]
    status, answer = server.request("/api/jobs", "POST", body={"command": "reconstruct", "config": "configs/tiny.yaml",
                                                               "args": ["--out", "elsewhere"]})
    assert status == 403 and "--out is set by the job itself" in answer["error"]
    status, answer = server.request("/api/jobs", "POST", body={"command": "reconstruct", "config": "configs/tiny.yaml",
                                                               "set": ["run.n_epochz=3"]})
    assert status == 400 and "run.n_epochz: unknown key" in answer["error"]  # the YAML's own schema
    assert not (server.root / "pwned").exists()
    after = sorted(runs.iterdir()) if runs.exists() else []
    assert after == before  # nothing refused left a run folder


def test_uploads_and_bodies_are_bounded(server):
    status, answer = server.request("/api/upload?path=data/big.bin", "PUT", body=b"\0" * 20000)
    assert status == 413 and "limit" in answer["error"]
    assert not (server.root / "data" / "big.bin").exists()
    assert not list((server.root / "data").glob("big.bin*"))  # no temporary left either
    status, answer = server.request("/api/upload?path=data/small.bin", "PUT", body=b"abc" * 100)
    assert status == 200 and (server.root / "data" / "small.bin").read_bytes() == b"abc" * 100
    status, answer = server.request("/api/upload?path=data/small.bin", "PUT", body=b"x")
    assert status == 409  # an upload never replaces a file
    status, answer = server.request("/api/jobs", "POST", body=b"{" + b" " * (1 << 20) + b"}",
                                    headers={"Content-Type": "application/json"})
    assert status == 413


def test_parameter_form_is_validated_by_the_yaml_schema(server):
    path = server.root / "configs" / "tiny.yaml"
    before = path.read_text()
    status, form = server.request("/api/params?path=configs/tiny.yaml")
    assert status == 200 and form["fields"]["run.n_epochs"] == "40" and "optics.energy" in form["fields"]
    status, answer = server.request("/api/params", "POST", body={"path": "configs/tiny.yaml",
                                                                 "values": {"run.batch_size": "0"}})
    assert status == 400 and "run.batch_size" in answer["error"] and "greater than or equal to 1" in answer["error"]
    assert path.read_text() == before
    status, answer = server.request("/api/params", "POST", body={"path": "configs/tiny.yaml",
                                                                 "values": {"run.lr_scale": "0.5"}})
    assert status == 200
    assert "lr_scale: 0.5" in path.read_text()


def test_cancel_stops_a_running_job(server):
    status, job = server.request("/api/jobs", "POST", body={"command": "reconstruct", "config": "configs/tiny.yaml",
                                                            "set": ["run.n_epochs=400"]})
    assert status == 200, job
    live = server.root / job["run_dir"] / "live.npz"
    end = time.monotonic() + 90
    while not live.exists() and time.monotonic() < end:
        time.sleep(0.2)
    assert live.exists()
    pid = server.request(f"/api/jobs/{job['id']}")[1]["pid"]
    status, answer = server.request(f"/api/jobs/{job['id']}/cancel", "POST", body={})
    assert status == 200 and answer["state"] in ("cancelling", "cancelled")
    job = server.wait_job(job["id"], timeout=300)
    assert job["state"] == "cancelled"
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert lock_holder(server.root / job["run_dir"]) is None  # its folder is free again
    snap = read_snapshot(live)
    assert 1 <= int(snap["epoch"]) < 400 and snap["loss"].shape == (int(snap["epoch"]),)
    assert snap["object_phase"].ndim == 2 and snap["probe"].ndim == 2 and np.iscomplexobj(snap["probe"])


def test_a_plan_runs_as_a_job_and_its_figures_are_served(server):
    """``phasestem plan`` from the jobs page: its text in the job's log, its figure and plan.json in the run folder,
    a changed setting (--set) reaching the plan (the workspace's configs/plan.yaml, serve_workspace.TINY_PLAN)."""
    status, job = server.request("/api/jobs", "POST", body={"command": "plan", "config": "configs/plan.yaml",
                                                            "set": ["scan.step=0.7"], "name": "plan"})
    assert status == 200, job
    job = server.wait_job(job["id"], timeout=300)
    log = (server.root / job["run_dir"] / "job.log").read_text()
    assert job["state"] == "done", log
    assert "overlap: real space" in log and "expected (a 7 × 7 field" in log and "0.7 Å step" in log
    status, png = server.request(f"/api/file?path={job['run_dir']}/expected/expected.png")
    assert status == 200 and png[:8] == b"\x89PNG\r\n\x1a\n"
    assert (server.root / job["run_dir"] / "plan.json").exists()


def test_loopback_and_the_warning_for_other_addresses():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost") and is_loopback("127.0.0.2")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.168.1.5") and not is_loopback("gpu-box")
    text = exposure_warning("0.0.0.0", 8888, Path("/data"))
    assert "warning" in text and "/data" in text and "not encrypted" in text and "ssh -L" in text


#: epochs of the interrupted run (a checkpoint after each; 16 mini-batches an epoch): long enough after epoch 2
#: that the test freezes the job before it ends, also under load (6 epochs of 4 batches once ended first)
EPOCHS = 30


def test_a_job_interrupted_by_a_server_crash_resumes_to_the_uninterrupted_result(tmp_path):
    """The server is SIGKILLed mid-run and its job frozen (as on a crash); the restarted server stops the leftover,
    queues the job again with --resume and it ends with the bit-identical result of an uninterrupted run."""
    root = make_workspace(tmp_path / "ws", n_epochs=EPOCHS, batch_size=4)
    env = dict(os.environ, MPLBACKEND="Agg", HF_HUB_OFFLINE="1")
    reference = subprocess.Popen([sys.executable, "-m", "phasestem.cli", "reconstruct", "configs/tiny.yaml", "--out",
                                  "reference"], cwd=root, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    server = Server(root)
    try:
        status, job = server.request("/api/jobs", "POST", body={"command": "reconstruct", "config": "configs/tiny.yaml",
                                                                "name": "crash test"})
        assert status == 200, job
        live = root / job["run_dir"] / "live.npz"
        pid, end = None, time.monotonic() + 90
        while time.monotonic() < end:
            pid = pid or server.request(f"/api/jobs/{job['id']}")[1].get("pid")
            snap = read_snapshot(live) if live.exists() else None
            if pid and snap is not None and int(snap["epoch"]) >= 2:
                break
            time.sleep(0.05)
        # the job stands still where it is first (so it cannot end before the restart, however fast the machine),
        # then the server dies at once, no clean-up: as on a crash
        os.killpg(pid, signal.SIGSTOP)
        server.proc.kill()
        server.proc.wait()
        stopped_at = int(read_snapshot(live)["epoch"])
        assert stopped_at < EPOCHS
        server.stop()
        server = Server(root)
        job = server.wait_job(job["id"], timeout=300)
        assert job["state"] == "done", (root / job["run_dir"] / "job.log").read_text()[-2000:]
        assert "interrupted by a server restart" in job["note"]
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # the leftover was stopped
        log = (root / job["run_dir"] / "job.log").read_text()
        assert log.count("$ phasestem reconstruct") == 2 and "--resume" in log.split("$ phasestem reconstruct")[2]
        resumed = re.search(r"resumed from \S+ after epoch (\d+)", log.split("$ phasestem reconstruct")[2])
        assert resumed and 1 <= int(resumed.group(1)) <= stopped_at  # from its last checkpoint
    finally:
        server.stop()
    assert reference.wait(120) == 0, reference.stderr.read()
    reference.stderr.close()
    got, want = load_results(root / job["run_dir"] / "results.h5"), load_results(root / "reference" / "results.h5")
    assert got["attrs"]["epoch"] == want["attrs"]["epoch"] == EPOCHS
    for key in ("obj_phase", "obj_amplitude", "probe", "positions"):
        np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    np.testing.assert_array_equal(got["loss"]["loss"], want["loss"]["loss"])


def test_dataset_page_needs_no_calibration_and_its_detectors_are_adjustable(server):
    status, look = server.request("/api/dataset?path=data/scan.npz")
    assert status == 200, look
    assert look["scan_shape"] == [8, 8] and look["pattern_shape"] == [32, 32] and "unknown" in look["summary"]
    assert look["radius"] > 0 and look["bf"] == look["radius"] and look["adf_outer"] is None
    status, narrow = server.request("/api/dataset?path=data/scan.npz&bf=3&adf_inner=12&adf_outer=14")
    assert (narrow["bf"], narrow["adf_inner"], narrow["adf_outer"]) == (3, 12, 14)
    assert narrow["images"]["bf"] != look["images"]["bf"] and narrow["images"]["adf"] != look["images"]["adf"]
    patterns = np.load(server.root / "data" / "scan.npz")["patterns"]
    status, pat = server.request("/api/pattern?path=data/scan.npz&iy=3&ix=4&log=0")
    assert status == 200 and not pat["log"]
    assert pat["total"] == pytest.approx(float(patterns[3, 4].sum()), rel=1e-5)
    status, answer = server.request("/api/pattern?path=data/scan.npz&iy=8&ix=0")
    assert status == 400 and "outside the scan of 8 × 8" in answer["error"]
    status, answer = server.request("/api/dataset?path=configs/tiny.yaml")
    assert status == 400 and "tiny.yaml" in answer["error"]  # one line naming the file


def test_without_the_serve_extra_the_command_is_one_line(monkeypatch, tmp_path, capsys):
    from phasestem.cli import main

    for name in [m for m in sys.modules if m == "starlette" or m.startswith("starlette.")] + ["starlette"]:
        monkeypatch.setitem(sys.modules, name, None)  # as if not installed
    assert main(["serve", "--root", str(tmp_path), "--port", "0"]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "pip install 'phasestem[serve]'" in err
    assert not (tmp_path / ".phasestem-serve").exists()  # nothing written
