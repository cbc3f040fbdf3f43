"""``phasestem live`` as a job of ``phasestem serve``: the job's command line (a detector's, or a rehearsal's:
``--replay``), what it refuses, its confinement (the one TCP port of its detector; a rehearsal's simulator on ports of
the ephemeral range), what its page is sent of the stream, how a stopped live job ends (a finished run with a partial
scan where it reconstructed what came; cancelled where it was killed), and a live job stopped mid-scan keeping every
frame it received (a real server, a ``.mib`` replayed by LiberTEM-live's simulator). The page in a real browser:
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

from phasestem.base.landlock import abi_version, ephemeral_ports  # noqa: E402
from phasestem.serve.job_isolation import job_confinement, uses_local_processes  # noqa: E402
from phasestem.serve.job_spec import build_job, detector_ports, rehearses  # noqa: E402
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


def test_a_rehearsal_is_the_command_line_of_phasestem_live_replay(root):
    """``--replay`` a workspace ``.mib`` (or its ``.hdr``: the ``.mib`` beside it) at ``--fps``: the job starts the
    simulator itself, so it connects to no detector port and gets the rule of a job of several local processes."""
    spec = {"command": "live", "config": "params.yaml", "args": ["--replay", "mib/scan.mib", "--fps", "50",
                                                                  "--epochs", "2"]}
    job = build_job(root, _store(root), spec)
    assert job.argv == ["phasestem", "live", "--out", "runs/0001-live", "--device", "cpu", "--replay", "mib/scan.mib",
                        "--fps", "50", "--epochs", "2", "--", "params.yaml"]
    assert rehearses(job) and detector_ports(job) == [] and uses_local_processes(root, job)
    rules = job_confinement(root, root / job.run_dir, uses_local_processes(root, job), detector_ports(job))
    assert rules["local_tcp"] is True and rules["tcp_connect"] == []
    (root / "mib" / "scan.hdr").write_text("HDR\n")
    job = build_job(root, _store(root), {**spec, "args": ["--replay=mib/scan.hdr"]})
    assert "--replay=mib/scan.mib" in job.argv  # the file replayed, as the command line shows it
    # a detector's live job is none of that
    job = build_job(root, _store(root), {"command": "live", "config": "params.yaml", "args": ["--data-port", "7000"]})
    assert not rehearses(job) and not uses_local_processes(root, job) and detector_ports(job) == [7000]


@pytest.mark.parametrize("args, status, words", [
    (["--replay", "../outside/scan.mib"], 403, "'..' is refused"),
    (["--replay", "/etc/passwd"], 403, "absolute paths are refused"),
    (["--replay", "escape/scan.mib"], 403, "leads out of the workspace root"),
    (["--replay", "mib/none.mib"], 404, "not found under the workspace root"),
    (["--replay", "params.yaml"], 400, "expected a Merlin .mib"),
    (["--replay", "mib"], 400, "expected a Merlin .mib"),
    (["--replay", "lone/scan.hdr"], 400, "no scan.mib beside its .hdr"),
    (["--replay", "mib/scan.mib", "--data-port", "7000"], 400, "give either --replay or the detector's"),
    (["--replay", "mib/scan.mib", "--host", "10.0.0.5"], 400, "give either --replay or the detector's"),
    (["--replay", "mib/scan.mib", "--fps", "0"], 400, "more than 0 and at most 100000"),
    (["--replay", "mib/scan.mib", "--fps", "-5"], 400, "more than 0 and at most 100000"),
    (["--replay", "mib/scan.mib", "--fps", "nan"], 400, "more than 0 and at most 100000"),
    (["--replay", "mib/scan.mib", "--fps", "inf"], 400, "more than 0 and at most 100000"),
    (["--replay", "mib/scan.mib", "--fps", "1e6"], 400, "more than 0 and at most 100000"),
    (["--replay", "mib/scan.mib", "--fps", "x"], 400, "invalid float"),
    (["--fps", "50"], 400, "give it with --replay"),
])
def test_a_rehearsal_refuses_a_file_it_cannot_replay_and_a_detector(root, tmp_path, args, status, words):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "scan.mib").write_bytes((root / "mib" / "scan.mib").read_bytes()[:4096])
    (root / "escape").symlink_to(outside)
    (root / "lone").mkdir()
    (root / "lone" / "scan.hdr").write_text("HDR\n")
    with pytest.raises(Refused) as info:
        build_job(root, _store(root), {"command": "live", "config": "params.yaml", "args": args})
    assert info.value.status == status and words in str(info.value), str(info.value)
    assert not (root / "runs").exists()


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


@pytest.mark.skipif(abi_version() < 4, reason="TCP rules need Landlock ABI 4")
def test_a_confined_rehearsal_binds_and_connects_in_the_ephemeral_range_only(root):
    """The rules the runner gives a rehearsal, applied by the job's own first code: it binds a port of the ephemeral
    range named in advance (LiberTEM-live's simulator is started on ports found free a moment before) and port 0,
    and connects to a listener there; below the range (where a detector's port lies) it neither binds nor connects.
    A whole rehearsal under these rules: test_serve_live_browser.py."""
    import socket

    from test_serve_kernel import Listener

    from phasestem.serve.job_main import CONFINEMENT_ENV

    ephemeral = ephemeral_ports()
    below = socket.socket()
    for port in range(ephemeral.start - 2000, ephemeral.start - 1000):
        try:
            below.bind(("127.0.0.1", port))
            break
        except OSError:
            continue
    below.listen(4)
    named = socket.socket()
    named.bind(("127.0.0.1", 0))  # a free port of the range, as the simulator's are found
    free = named.getsockname()[1]
    named.close()
    local = Listener()
    try:
        job = build_job(root, _store(root), {"command": "live", "config": "params.yaml",
                                             "args": ["--replay", "mib/scan.mib"]})
        rules = job_confinement(root, root / job.run_dir, uses_local_processes(root, job), detector_ports(job))
        low = below.getsockname()[1]
        script = textwrap.dedent(f"""
            import errno, json, socket
            from phasestem.serve import job_main
            job_main._confine()
            out = {{}}
            def attempt(name, act):
                try:
                    out[name] = act()
                except OSError as exc:
                    out[name] = errno.errorcode[exc.errno]
            def bind(port):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
                    return "bound"
            def connect(port):
                socket.create_connection(("127.0.0.1", port), timeout=5).close()
                return "connected"
            attempt("bind named", lambda: bind({free}))
            attempt("bind 0", lambda: bind(0))
            attempt("connect local", lambda: connect({local.port}))
            attempt("bind below", lambda: bind({low}))
            attempt("connect below", lambda: connect({low}))
            print(json.dumps(out))
        """)
        proc = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, timeout=60,
                              env={CONFINEMENT_ENV: json.dumps(rules), "PATH": "/usr/bin:/bin"})
        assert proc.returncode == 0, proc.stderr
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        assert out == {"bind named": "bound", "bind 0": "bound", "connect local": "connected",
                       "bind below": "EACCES", "connect below": "EACCES"}, out
    finally:
        local.close()
        below.close()


def _snapshot(received: int, stage: str = "streaming", message: str = "") -> dict:
    bf = np.full(SCAN, np.nan, np.float32)
    bf.reshape(-1)[:received] = np.arange(received)
    return {"epoch": np.asarray(3), "n_epochs": np.asarray(0), "loss": np.ones(3), "seconds": np.ones(3),
            "object_phase": np.zeros((20, 20), np.float32), "probe": np.ones((8, 8), np.complex64),
            "sampling": np.asarray([0.4, 0.4]), "probe_sampling": np.asarray([0.4, 0.4]),
            "gpu_memory": np.asarray(-1), "time": np.asarray(time.time()), "stage": np.asarray(stage),
            "message": np.asarray(message), "frames_expected": np.asarray(144), "frames_sent": np.asarray(received + 2),
            "frames_received": np.asarray(received), "frames_recorded": np.asarray(received - received % 12),
            "frames_fitted": np.asarray(received - 12), "frames_waiting": np.asarray(12), "updates": np.asarray(3),
            "frames_per_second": np.asarray(20.0), "scan_seconds": np.asarray(received / 20.0),
            "stall_seconds": np.asarray(0.4), "epochs_live": np.asarray(0.75),
            "lag_median": np.asarray(0.4), "lag_p95": np.asarray(np.nan), "scan_shape": np.asarray(SCAN),
            "virtual_bf": bf, "virtual_adf": bf.copy(), "icom_phase": np.full(SCAN, np.nan, np.float32)}


def test_the_page_is_sent_the_streams_account_and_images(tmp_path):
    from phasestem.serve.runs import snapshot_view

    snap = _snapshot(60, message="no frame from the detector for 0.9 s (stalled? frames came every 0.05 s)")
    snap.update(epoch=np.asarray(0), n_epochs=np.asarray(4), loss=np.zeros(0))
    view = snapshot_view(snap)
    stream = view["stream"]
    assert stream == {"stage": "streaming", "message": "no frame from the detector for 0.9 s (stalled? frames came "
                      "every 0.05 s)", "frames_expected": 144, "frames_sent": 62, "frames_received": 60,
                      "frames_recorded": 60, "frames_fitted": 48, "frames_waiting": 12, "updates": 3,
                      "frames_per_second": 20.0, "scan_seconds": 3.0, "stall_seconds": 0.4, "epochs_live": 0.75,
                      "lag_median": 0.4, "lag_p95": None, "scan_shape": [12, 12]}
    assert (view["epoch"], view["n_epochs"], view["loss"]) == (0, 4, [])  # the run's epochs, while streaming too
    assert view["eta_s"] is None  # no ETA before the scan is in
    # a snapshot written before phasestem live had the new fields: they are None, the rest as it was
    old = {k: v for k, v in _snapshot(60).items() if k not in ("frames_sent", "frames_recorded", "frames_per_second",
                                                               "scan_seconds", "stall_seconds", "epochs_live")}
    stream = snapshot_view(old)["stream"]
    assert stream["frames_sent"] is None and stream["frames_per_second"] is None and stream["frames_received"] == 60
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


#: a stand-in for ``phasestem live`` in its run folder (a real process): it says it is ready, then on SIGTERM does
#: what the contract says phasestem live does after the operator's stop (ON_STOP: exit 0 with results.h5 and live.json;
#: exit 1 without results; or go on "reconstructing" until a second signal kills it)
STAND_IN = """
import json, pathlib, signal, sys, time
on_stop = sys.argv[1]
summary = {"frames_expected": 144, "frames_sent": 40, "frames_received": 40, "frames_recorded": 40,
           "complete": False, "stop_reason": "stopped by the operator"}
def stop(signum, frame):
    pathlib.Path("live.json").write_text(json.dumps(summary))
    if on_stop == "results":
        pathlib.Path("results.h5").write_bytes(b"")
        sys.exit(0)
    if on_stop == "fail":
        sys.exit(1)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # "keep": the next SIGTERM kills it
signal.signal(signal.SIGTERM, stop)
pathlib.Path("ready").write_text("")
while True:
    time.sleep(0.05)
"""


@pytest.mark.parametrize("on_stop, stops, state, returncode, kind", [
    ("results", 1, "done", 0, "partial"),  # the operator's stop: a finished run with a partial scan
    ("fail", 1, "cancelled", 1, "stopped"),  # too few rows: nothing reconstructed
    ("keep", 2, "cancelled", -15, "stopped"),  # a second stop ends it at once
])
def test_a_stopped_live_job_is_done_where_it_reconstructed_what_came(root, on_stop, stops, state, returncode, kind):
    """The runner's first stop of a live job sends SIGTERM to a real process and never SIGKILL; the job ends done
    (its note and outcome: a partial scan, from live.json) where the process then exits 0 with results.h5, and
    cancelled where it exits otherwise or a second stop ended it."""
    from phasestem.serve.jobs import JobRunner
    from phasestem.serve.outcome import job_outcome

    store = _store(root)
    job = store.add(build_job(root, store, {"command": "live", "config": "params.yaml",
                                            "args": ["--replay", "mib/scan.mib"]}))
    run = root / job.run_dir
    runner = JobRunner(root, store, confine=False)
    proc = subprocess.Popen([sys.executable, "-c", STAND_IN, on_stop], cwd=run, start_new_session=True)
    runner._procs[job.id] = proc  # noqa: SLF001 - the runner's own record of a job it started
    store.update(job.id, state="running", started=time.time(), pid=proc.pid)
    try:
        end = time.monotonic() + 30
        while not (run / "ready").exists() and time.monotonic() < end:
            time.sleep(0.02)
        for k in range(stops):
            assert runner.cancel(job.id).state == "cancelling"
            if k + 1 < stops:
                end = time.monotonic() + 30
                while not (run / "live.json").exists() and time.monotonic() < end:
                    time.sleep(0.02)
        end = time.monotonic() + 30
        while store.get(job.id).state == "cancelling" and time.monotonic() < end:
            runner._reap()  # noqa: SLF001 - the runner's loop, one turn at a time
            time.sleep(0.05)
    finally:
        if proc.poll() is None:
            proc.kill()
    after = store.get(job.id)
    assert (after.state, after.returncode) == (state, returncode), after
    outcome = job_outcome(root, after)
    assert outcome["kind"] == kind, outcome
    if state == "done":
        assert after.note == "partial scan: stopped by the operator after 40 of 144 frames"
        assert outcome["label"] == "done · partial scan" and outcome["detail"].startswith(after.note)
    else:
        assert "partial scan" not in after.note


# ---- a real server and a replayed scan -----------------------------------------------------------------------------
def test_a_live_job_stopped_mid_scan_keeps_what_it_received(root, tmp_path):
    """Queued through the API of the page against a ``.mib`` replayed slowly, the job (confined by the kernel where
    it has Landlock: its one TCP port) connects, records and fits; stopped mid-scan from the page's Stop once two
    rows are in, it records every frame it received (its last row's too), equal to the replayed frames, reconstructs
    them and ends done: a finished run with a partial scan, never resumed."""
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
            "command": "live", "config": "params.yaml", "args": ["--data-port", str(sim.data_port), "--epochs", "2"]})
        assert status == 200, job
        live = root / job["run_dir"] / "live.npz"
        end, snap = time.monotonic() + 120, None
        while time.monotonic() < end:
            snap = read_snapshot(live) if live.exists() else None
            if snap is not None and int(snap["frames_received"]) >= 2 * SCAN[1]:
                break
            assert server.request(f"/api/jobs/{job['id']}")[1]["state"] in ("queued", "running"), \
                (root / job["run_dir"] / "job.log").read_text()
            time.sleep(0.1)
        assert snap is not None and str(snap["stage"]) == "streaming", "no snapshot of the stream"
        status, _ = server.request(f"/api/jobs/{job['id']}/cancel", "POST", body={})
        assert status == 200
        done = server.wait_job(job["id"], timeout=300)
        run = root / job["run_dir"]
        assert done["state"] == "done", (done, (run / "job.log").read_text()[-3000:])
        flat = frames.reshape(-1, *frames.shape[2:])
        with h5py.File(run / "stream.h5") as f:
            received, rows = int(f.attrs["frames_received"]), np.asarray(f["patterns"][...])
            tail = np.asarray(f["incomplete_row"][...]) if "incomplete_row" in f else flat[:0]
            assert f.attrs["stop_reason"] == "stopped by the operator" and not f.attrs["complete"]
        kept = np.concatenate([rows.reshape(-1, *flat.shape[1:]), tail])
        assert 2 * SCAN[1] <= received < SCAN[0] * SCAN[1] and len(kept) == received
        np.testing.assert_array_equal(kept, flat[:received])  # every frame received, as replayed
        summary = json.loads((run / "live.json").read_text())
        assert summary["frames_received"] == summary["frames_recorded"] == received and not summary["complete"]
        assert (run / "results.h5").is_file() and not (run / "stream.partial.h5").exists()
        assert done["note"] == f"partial scan: stopped by the operator after {received} of 144 frames", done
        assert done["outcome"]["label"] == "done · partial scan", done["outcome"]
        status, answer = server.request(f"/api/jobs/{job['id']}/resume", "POST", body={})
        assert status == 409 and "done" in answer["error"]  # a finished run: nothing to resume
    finally:
        server.stop()
        sim.stop()
