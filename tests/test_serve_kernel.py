"""The kernel layer of ``phasestem serve`` (issue 63, Build 1-2): Landlock confines every job, and holds alone.

``phasestem.base.landlock`` is tried in child processes (a confinement is for good: never in pytest's own): a
confined child cannot read outside ``read``, write outside ``write`` or connect to a loopback listener, and can do
all three where allowed. Then real jobs, started by the server's own runner (:class:`~phasestem.serve.jobs.
JobRunner`) from command lines that no path check has seen, try to read a file outside the root, write a database
outside it and connect to a TCP port: the kernel denies each (the same jobs unconfined do all three, so the denial
is the kernel's). Last, a server started with ``PYTHONPATH=.`` never runs an uploaded ``sitecustomize.py``.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest
import yaml

from phasestem.base.landlock import abi_version

pytestmark = pytest.mark.skipif(abi_version() == 0, reason="this kernel has no Landlock")


def run_confined(body: str, timeout: float = 60, **rules) -> dict:
    """Run ``body`` (Python; it fills the dict ``out``) in a child that first calls ``confine(**rules)`` with the
    system's read paths added to ``read``; the child's ``out`` as JSON."""
    script = textwrap.dedent("""
        import errno, json, os, socket, sys
        from phasestem.base.landlock import confine, system_read_paths, system_write_paths
        rules = json.loads(sys.argv[1])
        read, write = rules.pop("read", []), rules.pop("write", [])
        out = {"abi": confine(system_read_paths() + read, system_write_paths() + write, **rules)}
        def attempt(name, fn):
            try:
                out[name] = fn()
            except OSError as exc:
                out[name] = errno.errorcode[exc.errno]
    """) + textwrap.dedent(body) + "\nprint(json.dumps(out))\n"
    proc = subprocess.run([sys.executable, "-I", "-c", script, json.dumps(rules)], capture_output=True, text=True,
                          timeout=timeout)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


class Listener:
    """A TCP listener on 127.0.0.1 that records every connection made to it (and closes it)."""

    def __init__(self):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self.port = self.sock.getsockname()[1]
        self.connections = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self):
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.connections += 1
            conn.close()

    def close(self):
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


# ---- the layer itself ----------------------------------------------------------------------------------------------
def test_the_kernel_reports_a_landlock_abi():
    assert abi_version() >= 1


def test_a_confined_process_reads_writes_and_runs_only_where_allowed(tmp_path):
    for name in ("read", "data", "write", "outside"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "file.txt").write_text(name)
    tool = tmp_path / "data" / "tool"
    tool.write_text("#!/bin/sh\necho ran\n")
    tool.chmod(0o755)
    shutil.copy(tool, tmp_path / "read" / "tool")
    (tmp_path / "read" / "link.txt").symlink_to(tmp_path / "outside" / "file.txt")
    out = run_confined(f"""
        base = {str(tmp_path)!r}
        for name in ("read", "data", "write", "outside"):
            attempt("read " + name, lambda: open(f"{{base}}/{{name}}/file.txt").read())
            attempt("write " + name, lambda: open(f"{{base}}/{{name}}/new.txt", "w").write("x"))
        attempt("list outside", lambda: len(os.listdir(f"{{base}}/outside")))
        attempt("read through a link", lambda: open(f"{{base}}/read/link.txt").read())
        attempt("rename out", lambda: os.replace(f"{{base}}/write/file.txt", f"{{base}}/outside/moved.txt"))
        import subprocess
        attempt("run read", lambda: subprocess.run([f"{{base}}/read/tool"], capture_output=True).stdout.decode())
        attempt("run data", lambda: subprocess.run([f"{{base}}/data/tool"], capture_output=True).stdout.decode())
    """, read=[str(tmp_path / "read")], data=[str(tmp_path / "data")], write=[str(tmp_path / "write")])
    assert out["abi"] == abi_version()
    assert out["read read"] == "read" and out["read data"] == "data" and out["read write"] == "write"
    assert out["read outside"] == out["list outside"] == out["read through a link"] == "EACCES"
    assert out["write write"] == 1
    assert out["write read"] == out["write data"] == out["write outside"] == "EACCES"
    assert out["rename out"] in ("EACCES", "EXDEV")
    assert out["run read"] == "ran\n" and out["run data"] == "EACCES"
    assert sorted(p.name for p in (tmp_path / "outside").iterdir()) == ["file.txt"]
    assert not (tmp_path / "read" / "new.txt").exists() and not (tmp_path / "data" / "new.txt").exists()


@pytest.mark.skipif(abi_version() < 4, reason="TCP needs Landlock ABI 4")
def test_a_confined_process_connects_and_binds_only_to_the_ports_listed():
    denied, allowed = Listener(), Listener()
    try:
        out = run_confined(f"""
            def connect(port):
                with socket.create_connection(("127.0.0.1", port), timeout=5):
                    return "connected"
            def bind(port):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
                    return s.getsockname()[1]
            attempt("denied", lambda: connect({denied.port}))
            attempt("allowed", lambda: connect({allowed.port}))
            attempt("bind any", lambda: bind(0))
        """, tcp_connect=[allowed.port])
        time.sleep(0.5)
        assert out["denied"] == "EACCES" and denied.connections == 0
        assert out["allowed"] == "connected" and allowed.connections == 1
        assert out["bind any"] == "EACCES"
        out = run_confined("""
            with socket.socket() as s:
                attempt("bind ephemeral", lambda: s.bind(("127.0.0.1", 0)) or s.getsockname()[1])
        """, tcp_bind=[0])
        assert isinstance(out["bind ephemeral"], int) and out["bind ephemeral"] > 0
    finally:
        denied.close()
        allowed.close()


@pytest.mark.skipif(abi_version() < 6, reason="scoping signals needs Landlock ABI 6")
def test_a_confined_process_cannot_signal_a_process_outside_its_domain():
    victim = subprocess.Popen(["sleep", "60"])
    try:
        out = run_confined(f"""
            attempt("kill outside", lambda: os.kill({victim.pid}, 15))
            import subprocess
            child = subprocess.Popen(["sleep", "60"])
            attempt("kill own child", lambda: os.kill(child.pid, 15) or child.wait())
        """)
        assert out["kill outside"] == "EPERM" and victim.poll() is None
        assert out["kill own child"] == -signal.SIGTERM
    finally:
        victim.kill()
        victim.wait()


def test_confining_a_process_that_runs_threads_is_refused():
    script = ("import threading, time\nfrom phasestem.base.landlock import confine\n"
              "threading.Thread(target=time.sleep, args=(5,), daemon=True).start()\nconfine(['/usr'])\n")
    proc = subprocess.run([sys.executable, "-I", "-c", script], capture_output=True, text=True, timeout=60)
    assert proc.returncode != 0 and "already runs 2 threads" in proc.stderr, proc.stderr


def test_the_banner_names_the_abi_or_warns_that_jobs_are_not_confined():
    from phasestem.serve.job_isolation import kernel_confinement

    abi, line = kernel_confinement(True)
    assert abi == abi_version() and f"jobs confined by the kernel (Landlock ABI {abi})" in line
    abi, line = kernel_confinement(False)
    assert abi == 0 and "--no-kernel-confinement: jobs are NOT confined by the kernel" in line


def test_a_job_keeps_only_the_allowed_environment(tmp_path):
    from phasestem.serve.job_isolation import (
        CONFINEMENT_ENV,
        READ_ROOT_ENV,
        isolated_argv,
        job_environment,
        scratch_folders,
    )

    root, run_dir = tmp_path / "ws", tmp_path / "ws" / "runs" / "0001-plan"
    run_dir.mkdir(parents=True)
    server = {"PATH": f".:{root}/bin:/usr/local/bin:/usr/bin", "HOME": "/home/owner", "LANG": "C.UTF-8",
              "LC_ALL": "C.UTF-8", "TZ": "UTC", "CUDA_VISIBLE_DEVICES": "1", "NVIDIA_VISIBLE_DEVICES": "all",
              "OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "PYTHONPATH": ".", "PYTHONSTARTUP": "x.py",
              "LD_PRELOAD": "evil.so", "PHASESTEM_SERVE_TOKEN": "secret", "AWS_SECRET_ACCESS_KEY": "secret",
              "DASK_SCHEDULER_ADDRESS": "tcp://elsewhere:8786", "TMPDIR": "/tmp"}
    env = job_environment(root, run_dir, server, confinement={"data": [], "write": [], "local_tcp": False})
    assert env["PATH"] == "/usr/local/bin:/usr/bin"
    for kept in ("HOME", "LANG", "LC_ALL", "TZ", "CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES", "OMP_NUM_THREADS",
                 "MKL_NUM_THREADS"):
        assert env[kept] == server[kept]
    for dropped in ("PYTHONPATH", "PYTHONSTARTUP", "LD_PRELOAD", "PHASESTEM_SERVE_TOKEN", "AWS_SECRET_ACCESS_KEY",
                    "DASK_SCHEDULER_ADDRESS"):
        assert dropped not in env
    assert env[READ_ROOT_ENV] == str(root.resolve()) and json.loads(env[CONFINEMENT_ENV])["local_tcp"] is False
    for name, folder in scratch_folders(run_dir).items():
        assert env[name] == str(folder) and run_dir in folder.parents
    assert isolated_argv(["python", "job_main.py", "plan"])[:3] == ["python", "-I", "-B"]


# ---- the kernel layer holds alone: jobs no path check has seen -----------------------------------------------------
CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _jobs(root: Path, outside: Path, port: int) -> dict:
    """Three jobs, written as the server would queue them but with what no path check would let through: a
    reconstruction of a file outside the root, a tune study stored outside it, a simulation that connects to
    ``port``. Each its run folder and parameter file; name → Job."""
    from phasestem.serve.jobs import Job

    tiny = yaml.safe_load((root / "configs" / "tiny.yaml").read_text())
    tiny["run"].update(n_epochs=1, out_dir=".")
    jobs = {}
    for name, command in (("read", "reconstruct"), ("write", "tune"), ("connect", "simulate")):
        run = f"runs/{name}-{command}"
        (root / run).mkdir(parents=True)
        if command == "simulate":
            sim = yaml.safe_load((CONFIGS / "simulate_tiny.yaml").read_text())
            sim["compute"]["scheduler"] = f"tcp://127.0.0.1:{port}"
            (root / run / "simulate.yaml").write_text(yaml.safe_dump(sim))
            argv = ["phasestem", "simulate", "--out", f"{run}/data", "--device", "cpu", "--", f"{run}/simulate.yaml"]
        else:
            params = json.loads(json.dumps(tiny))
            params["data"]["file"] = str(outside / "scan.npz") if name == "read" else str(root / "data" / "scan.npz")
            if command == "tune":
                params["tune"] = {"n_trials": 1, "n_epochs": 1, "C10": {"low": 30.0, "high": 70.0},
                                  "storage": f"sqlite:///{outside / 'study.db'}"}
            (root / run / "params.yaml").write_text(yaml.safe_dump(params))
            argv = ["phasestem", command, "--out", run, "--", f"{run}/params.yaml"]
        jobs[name] = Job(id=0, command=command, argv=argv, run_dir=run)
    return jobs


def _run_jobs(base: Path, confine: bool, timeout: float = 300) -> dict:
    """The three jobs of :func:`_jobs` run by a job runner (``confine``: with the kernel's confinement): name →
    (final state, job.log, what lies outside the root, connections the listener saw)."""
    from serve_workspace import make_workspace

    from phasestem.serve.jobs import JobRunner, JobStore

    root = make_workspace(base / "ws", scan=6)
    outside = base / "outside"
    outside.mkdir()
    shutil.copy(root / "data" / "scan.npz", outside / "scan.npz")
    listener = Listener()
    store = JobStore(root / ".phasestem-serve" / "jobs.sqlite")
    runner = JobRunner(root, store, max_running=3, confine=confine)
    try:
        ids = {name: store.add(job).id for name, job in _jobs(root, outside, listener.port).items()}
        runner.start()
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            jobs = {name: store.get(i) for name, i in ids.items()}
            if jobs["connect"].state == "running" and listener.connections:
                runner.cancel(ids["connect"])  # it connected: that is all this job had to show
            if all(j.state in ("done", "failed", "cancelled") for j in jobs.values()):
                break
            time.sleep(0.3)
        else:
            raise TimeoutError({n: j.state for n, j in jobs.items()})
    finally:
        runner.shutdown()
        listener.close()
    return {name: (job.state, (root / job.run_dir / "job.log").read_text(), sorted(p.name for p in outside.iterdir()),
                   listener.connections) for name, job in jobs.items()}


@pytest.fixture(scope="module")
def kernel_runs(tmp_path_factory):
    """The three jobs run unconfined (what they do when nothing stops them) and confined."""
    base = tmp_path_factory.mktemp("kernel")
    return {"unconfined": _run_jobs(base / "unconfined", confine=False),
            "confined": _run_jobs(base / "confined", confine=True)}


def _denied(log: str) -> bool:
    return "Permission denied" in log or "PermissionError" in log or "Errno 13" in log


def test_the_kernel_alone_stops_a_job_reading_outside_the_root(kernel_runs):
    state, log, _, _ = kernel_runs["unconfined"]["read"]
    assert state == "done", log  # nothing but the kernel stands in its way
    state, log, _, _ = kernel_runs["confined"]["read"]
    assert state == "failed" and _denied(log), log


def test_the_kernel_alone_stops_a_job_writing_outside_the_root(kernel_runs):
    _, log, outside, _ = kernel_runs["unconfined"]["write"]
    assert "study.db" in outside, log
    state, log, outside, _ = kernel_runs["confined"]["write"]
    assert state == "failed" and outside == ["scan.npz"], log
    assert "unable to open database file" in log, log


def test_the_kernel_alone_stops_a_job_connecting_to_a_tcp_port(kernel_runs):
    _, log, _, connections = kernel_runs["unconfined"]["connect"]
    assert connections >= 1, log
    state, log, _, connections = kernel_runs["confined"]["connect"]
    assert state == "failed" and connections == 0, log
    assert _denied(log), log


# ---- no code from the root at a job's start ------------------------------------------------------------------------
def test_an_uploaded_sitecustomize_never_runs_even_with_pythonpath_dot(tmp_path, monkeypatch):
    """Issue 63, 3: a server whose environment has ``PYTHONPATH=.`` ran an uploaded ``sitecustomize.py`` at every
    job's start (the job's working directory is the root), before the job cleaned its import path."""
    from serve_workspace import Server, make_workspace

    root = make_workspace(tmp_path / "ws")
    marker = tmp_path / "ran"
    code = f"open({str(marker)!r}, 'w').write('sitecustomize from the root ran')\n".encode()
    monkeypatch.setenv("PYTHONPATH", ".")
    server = Server(root)
    try:
        status, answer = server.request("/api/upload?path=sitecustomize.py", "POST", body=code)
        assert status == 200, answer
        status, job = server.request("/api/jobs", "POST", body={"command": "plan", "config": "configs/plan.yaml",
                                                                "args": ["--quantities-only"]})
        assert status == 200, job
        job = server.wait_job(job["id"], timeout=300)
    finally:
        server.stop()
    assert job["state"] == "done", (root / job["run_dir"] / "job.log").read_text()
    assert not marker.exists()
    # the file is really where PYTHONPATH=. finds it: the same interpreter started there without -I imports it
    subprocess.run([sys.executable, "-c", "pass"], cwd=root, env={**os.environ, "PYTHONPATH": "."}, timeout=60)
    assert marker.exists()
