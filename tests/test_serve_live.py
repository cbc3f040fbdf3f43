"""``phasestem live`` as a job of ``phasestem serve``: the job's command line, what it refuses, its confinement (the
one TCP port of its detector), what its page is sent of the stream, and a live job stopped mid-scan keeping what it
received (a real server, a ``.mib`` replayed by LiberTEM-live's simulator). The page in a real browser:
test_serve_live_browser.py."""
from __future__ import annotations

import json
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

pytest.importorskip("starlette", reason="phasestem serve needs the serve extra (starlette, uvicorn)")

from live_stream import write_scan  # noqa: E402

from phasestem.base.landlock import abi_version  # noqa: E402
from phasestem.serve.job_isolation import job_confinement  # noqa: E402
from phasestem.serve.job_spec import build_job, detector_ports  # noqa: E402
from phasestem.serve.jobstore import Job, JobStore  # noqa: E402
from phasestem.serve.security import Refused  # noqa: E402

SCAN = (12, 12)


@pytest.fixture
def root(tmp_path):
    """A workspace holding ``params.yaml`` for ``phasestem live`` (tests/live_stream.py) and the scan's ``.mib``."""
    ws = tmp_path / "ws"
    ws.mkdir()
    write_scan(ws, SCAN)
    return ws


def _store(root: Path) -> JobStore:
    return JobStore(root / ".phasestem-serve" / "jobs.sqlite")


def test_a_live_job_is_the_command_line_of_phasestem_live(root):
    spec = {"command": "live", "config": "params.yaml", "device": "cpu", "set": ["run.batch_size=8"],
            "args": ["--host", "10.0.0.5", "--data-port", "7000", "--epochs", "3", "--stall-timeout", "5"]}
    job = build_job(root, _store(root), spec)
    assert job.argv == ["phasestem", "live", "--out", "runs/0001-live", "--device", "cpu", "--set",
                        "run.batch_size=8", "--host", "10.0.0.5", "--data-port", "7000", "--epochs", "3",
                        "--stall-timeout", "5", "--", "params.yaml"]
    assert (root / job.run_dir).is_dir() and not any((root / job.run_dir).iterdir())  # the job writes there
    assert detector_ports(job) == [7000]
    # the defaults of the command's own parser where the page gives no detector
    job = build_job(root, _store(root), {"command": "live", "config": "params.yaml"})
    assert detector_ports(job) == [6342] and "--host" not in job.argv
    # only a live job connects anywhere, and to its data port only
    rules = job_confinement(root, root / job.run_dir, False, detector_ports(job))
    assert rules["tcp_connect"] == [6342] and rules["local_tcp"] is False
    assert rules["write"] == [str((root / job.run_dir).resolve())]
    other = Job(id=1, command="reconstruct", argv=["phasestem", "reconstruct", "--data-port", "1"], run_dir="runs/x")
    assert detector_ports(other) == []


@pytest.mark.parametrize("spec, status, words", [
    ({"set": {"data.file": "mib/scan.mib"}}, 400, "leave data.file out"),
    ({"args": ["--set", "data.file=mib/scan.mib"]}, 400, "leave data.file out"),
    ({"config": "with_file.yaml"}, 400, "leave data.file out"),
    ({"config": "../outside.yaml"}, 403, "stay inside the workspace root"),
    ({"config": "escape.yaml"}, 403, "leads out of the workspace root"),
    ({"set": {"constraints.probe_file": "../../x.npy"}}, 403, "outside the workspace root"),
    ({"args": ["--out", "elsewhere"]}, 403, "set by the job itself"),
    ({"set": {"run.out_dir": "elsewhere"}}, 403, "set by the job itself"),
    ({"args": ["--data-port", "0"]}, 400, "TCP port"),
    ({"args": ["--data-port", "70000"]}, 400, "TCP port"),
    ({"args": ["--host", "a b"]}, 400, "host name or address"),
    ({"args": ["--host", "10.0.0.5;rm"]}, 400, "host name or address"),
    ({"args": ["--arm-timeout", "nan"]}, 400, "more than 0"),
    ({"args": ["--stall-timeout", "-1"]}, 400, "more than 0"),
    ({"args": ["--epochs", "0"]}, 400, "at least 1"),
    ({"args": ["--scan-shape", "3,3"]}, 403, "live jobs take only"),
    ({"args": ["--data-port", "x"]}, 400, "invalid int"),
    ({"processes": 2}, 400, "torchrun"),
    ({"set": {"optics.energy": "lots"}}, 400, "optics.energy"),
])
def test_a_live_job_refuses_what_other_jobs_refuse_and_a_data_file(root, tmp_path, spec, status, words):
    params = yaml.safe_load((root / "params.yaml").read_text())
    (root / "with_file.yaml").write_text(yaml.safe_dump({**params, "data": {"file": "mib/scan.mib"}}))
    (tmp_path / "outside.yaml").write_text(yaml.safe_dump(params))
    (root / "escape.yaml").symlink_to(tmp_path / "outside.yaml")
    with pytest.raises(Refused) as info:
        build_job(root, _store(root), {"command": "live", "config": "params.yaml", **spec})
    assert info.value.status == status and words in str(info.value), str(info.value)
    assert not (root / "runs").exists()  # nothing refused left a run folder


def test_a_live_job_is_never_resumed_nor_queued_again(root):
    from phasestem.serve.jobs import JobRunner

    store = _store(root)
    stopped = store.add(build_job(root, store, {"command": "live", "config": "params.yaml"}))
    store.update(stopped.id, state="cancelled", ended=time.time())
    running = store.add(build_job(root, store, {"command": "live", "config": "params.yaml"}))
    store.update(running.id, state="running", started=time.time())
    runner = JobRunner(root, store, confine=False)
    with pytest.raises(Refused) as info:
        runner.resume(stopped.id)
    assert info.value.status == 409 and "stream.partial.h5" in str(info.value)
    runner.recover()  # a server restarted while the live job ran: the stream is gone, the job ends
    after = store.get(running.id)
    assert after.state == "cancelled" and not after.resume and "cannot be resumed" in after.note


@pytest.mark.skipif(abi_version() < 4, reason="TCP rules need Landlock ABI 4")
def test_a_confined_live_job_connects_to_its_data_port_and_nowhere_else(root):
    """The rules the runner gives a live job, applied by the job's own first code (serve.job_main): a connection
    to the detector's data port goes through, one to any other port and a bind are refused by the kernel."""
    from test_serve_kernel import Listener

    from phasestem.serve.job_main import CONFINEMENT_ENV

    detector, other = Listener(), Listener()
    try:
        job = build_job(root, _store(root), {"command": "live", "config": "params.yaml",
                                             "args": ["--data-port", str(detector.port)]})
        rules = job_confinement(root, root / job.run_dir, False, detector_ports(job))
        script = textwrap.dedent(f"""
            import errno, json, socket
            from phasestem.serve import job_main
            job_main._confine()
            out = {{}}
            for name, port in (("detector", {detector.port}), ("other", {other.port}), ("bind", None)):
                try:
                    if port is None:
                        socket.socket().bind(("127.0.0.1", 0))
                    else:
                        socket.create_connection(("127.0.0.1", port), timeout=5).close()
                    out[name] = "ok"
                except OSError as exc:
                    out[name] = errno.errorcode[exc.errno]
            print(json.dumps(out))
        """)
        proc = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, timeout=60,
                              env={CONFINEMENT_ENV: json.dumps(rules), "PATH": "/usr/bin:/bin"})
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        time.sleep(0.5)
        assert out == {"detector": "ok", "other": "EACCES", "bind": "EACCES"}, out
        assert detector.connections == 1 and other.connections == 0
    finally:
        detector.close()
        other.close()


def _snapshot(received: int, stage: str = "streaming", message: str = "") -> dict:
    bf = np.full(SCAN, np.nan, np.float32)
    bf.reshape(-1)[:received] = np.arange(received)
    return {"epoch": np.asarray(3), "n_epochs": np.asarray(0), "loss": np.ones(3), "seconds": np.ones(3),
            "object_phase": np.zeros((20, 20), np.float32), "probe": np.ones((8, 8), np.complex64),
            "sampling": np.asarray([0.4, 0.4]), "probe_sampling": np.asarray([0.4, 0.4]),
            "gpu_memory": np.asarray(-1), "time": np.asarray(time.time()), "stage": np.asarray(stage),
            "message": np.asarray(message), "frames_expected": np.asarray(144), "frames_received": np.asarray(received),
            "frames_fitted": np.asarray(received - 12), "frames_waiting": np.asarray(12), "updates": np.asarray(3),
            "lag_median": np.asarray(0.4), "lag_p95": np.asarray(np.nan), "scan_shape": np.asarray(SCAN),
            "virtual_bf": bf, "virtual_adf": bf.copy(), "icom_phase": np.full(SCAN, np.nan, np.float32)}


def test_the_page_is_sent_the_streams_account_and_images(tmp_path):
    from phasestem.serve.runs import snapshot_view

    view = snapshot_view(_snapshot(60, message="no frame from the detector for 5 s (stalled?)"))
    stream = view["stream"]
    assert stream == {"stage": "streaming", "message": "no frame from the detector for 5 s (stalled?)",
                      "frames_expected": 144, "frames_received": 60, "frames_fitted": 48, "frames_waiting": 12,
                      "updates": 3, "lag_median": 0.4, "lag_p95": None, "scan_shape": [12, 12]}
    assert view["eta_s"] is None  # the epochs of a stream are its updates: no ETA before the scan is in
    for key in ("virtual_bf", "virtual_adf", "icom_phase", "object_phase"):
        assert view["images"][key].startswith("data:image/png;base64,"), key
        assert view["scales"][key]["shape"] == ([12, 12] if key != "object_phase" else [20, 20])
    assert view["scales"]["virtual_bf"]["pixel"]["unit"] == "px"  # no scan step in the snapshot: in positions
    # a reconstruction's snapshot has no stream
    plain = {k: v for k, v in _snapshot(1).items() if k in ("epoch", "n_epochs", "loss", "seconds", "object_phase",
                                                            "probe", "sampling", "probe_sampling", "gpu_memory",
                                                            "time")}
    assert snapshot_view(plain)["stream"] is None and "virtual_bf" not in snapshot_view(plain)["images"]


def test_a_stopped_live_job_says_where_its_frames_are(tmp_path):
    from phasestem.serve.outcome import job_outcome

    run = tmp_path / "runs" / "0001-live"
    run.mkdir(parents=True)
    (run / "stream.partial.h5").write_bytes(b"")
    job = Job(id=1, command="live", argv=[], run_dir="runs/0001-live", state="cancelled")
    out = job_outcome(tmp_path, job)
    assert out["kind"] == "stopped" and "kept in stream.partial.h5" in out["detail"]


# ---- a real server and a replayed scan -----------------------------------------------------------------------------
def test_a_live_job_stopped_mid_scan_keeps_what_it_received(root, tmp_path):
    """Queued through the API of the page against a ``.mib`` replayed slowly, the job (confined by the kernel where
    it has Landlock: its one TCP port) connects, records and fits; stopped mid-scan from the page's Cancel, its
    whole rows received stay in the run folder, equal to the replayed frames, and the job says where they are."""
    pytest.importorskip("libertem_live", reason="phasestem[live] is not installed")
    import h5py
    from live_stream import ReplayedScan
    from serve_workspace import Server

    from phasestem.recon.live import read_snapshot

    _, _, frames = write_scan(tmp_path / "replayed", SCAN)
    sim = ReplayedScan(tmp_path / "replayed" / "mib" / "scan.mib", SCAN, 60000, tmp_path / "sim.log")  # 8.6 s
    server = Server(root)
    try:
        status, job = server.request("/api/jobs", "POST", body={
            "command": "live", "config": "params.yaml", "args": ["--data-port", str(sim.data_port)]})
        assert status == 200, job
        live = root / job["run_dir"] / "live.npz"
        end, snap = time.monotonic() + 60, None
        while time.monotonic() < end:
            snap = read_snapshot(live) if live.exists() else None
            if snap is not None and int(snap["frames_received"]) >= SCAN[1]:
                break
            assert server.request(f"/api/jobs/{job['id']}")[1]["state"] in ("queued", "running"), \
                (root / job["run_dir"] / "job.log").read_text()
            time.sleep(0.1)
        assert snap is not None and str(snap["stage"]) == "streaming", "no snapshot of the stream"
        status, _ = server.request(f"/api/jobs/{job['id']}/cancel", "POST", body={})
        assert status == 200
        done = server.wait_job(job["id"], timeout=300)
        assert done["state"] == "cancelled"
        run = root / job["run_dir"]
        flat = frames.reshape(-1, *frames.shape[2:])
        if (run / "stream.h5").exists():  # phasestem live took the stop as the scan's end: recorded, reconstructed
            with h5py.File(run / "stream.h5") as f:
                received, rows = int(f.attrs["frames_received"]), np.asarray(f["patterns"][...])
                tail = np.asarray(f["incomplete_row"][...]) if "incomplete_row" in f else flat[:0]
                assert f.attrs["stop_reason"] == "stopped by the operator"
            kept = np.concatenate([rows.reshape(-1, *flat.shape[1:]), tail])
            assert SCAN[1] <= received < SCAN[0] * SCAN[1] and len(kept) == received
            np.testing.assert_array_equal(kept, flat[:received])  # every frame received, as replayed
            assert (run / "results.h5").exists() == (len(rows) >= 2)
            assert "kept in stream.h5" in done["outcome"]["detail"], done["outcome"]
        else:  # killed while streaming: the whole rows written so far
            with h5py.File(run / "stream.partial.h5") as f:
                rows = np.asarray(f["patterns"][...])
            assert 1 <= len(rows) < SCAN[0]
            np.testing.assert_array_equal(rows, frames[:len(rows)])
            assert "stream.partial.h5" in done["outcome"]["detail"], done["outcome"]
        status, answer = server.request(f"/api/jobs/{job['id']}/resume", "POST", body={})
        assert status == 409 and "cannot be resumed" in answer["error"]
    finally:
        server.stop()
        sim.stop()
