"""Jobs: ``phasestem …`` commands run as subprocesses, one run folder each, queued in SQLite.

A job is exactly the command a user would type from the workspace root (``Job.argv``, shown on the page): the
browser adds nothing the CLI cannot reproduce. Its run folder ``runs/NNNN-COMMAND/`` receives what the command
writes, the parameter file the job was made with (``params.yaml``, validated by the YAML's own schema) and the
command's output (``job.log``). The command itself holds the folder's lock (:mod:`phasestem.lock`).

Only phasestem's own commands (:data:`COMMANDS`) can be queued, as argument lists (no shell), with every
path-like argument confined to the root and the output options reserved to the job. The queue lives in
``ROOT/.phasestem-serve/jobs.sqlite``: a server that restarts finds its jobs again, and a job that was running
when the server stopped is stopped if it is still alive and queued again with ``--resume`` (reconstruct, train;
simulate and tune continue by running again).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ..configfile import (
    apply_overrides,
    map_config_paths,
    parse_set_options,
    read_yaml_mapping,
    relative_to,
    resolve_config_paths,
)
from ..errors import PhasestemError
from ..lock import FolderBusyError, OutputLock, folder_lock_path
from .security import Refused, confine, relative

log = logging.getLogger("phasestem.serve")

#: the commands a job may run
COMMANDS = ("calibrate", "reconstruct", "simulate", "train", "tune")
#: options the job sets itself (its run folder); refused among a job's extra arguments
RESERVED = ("--out", "--out-dir", "--resume", "--restart", "--dump-config")
#: job states; a job ends in one of :data:`FINAL`
STATES = ("queued", "running", "cancelling", "done", "failed", "cancelled")
FINAL = ("done", "failed", "cancelled")
#: the server's own folder under the root (queue database, its lock)
SERVE_DIR = ".phasestem-serve"
#: the folder under the root that receives the run folders
RUNS_DIR = "runs"
#: seconds a stopped job has to exit after SIGTERM before SIGKILL
STOP_GRACE = 10.0
_DEVICE = re.compile(r"^(cpu|auto|mps|cuda(:\d{1,2})?)$")
_NETWORK = re.compile(r"^[a-z][a-z0-9_]{0,30}$")


@dataclass
class Job:
    """One queued command (see the module docstring); paths relative to the root."""

    id: int
    command: str
    argv: list[str]
    run_dir: str
    state: str = "queued"
    name: str = ""
    device: str = "cpu"
    processes: int = 1
    spec: dict[str, Any] = field(default_factory=dict)
    resume: bool = False  # the next start continues the run (--resume where the command has it)
    created: float = 0.0
    started: float | None = None
    ended: float | None = None
    returncode: int | None = None
    pid: int | None = None
    note: str = ""

    def command_line(self, root: Path) -> list[str]:
        """The command as typed in ``root``, with ``--resume`` when the next start continues the run."""
        return self.argv + resume_arguments(self, root)

    def public(self, root: Path) -> dict[str, Any]:
        """The job as the pages show it (``command_line``: the command to type in the root)."""
        out = asdict(self)
        out["command_line"] = " ".join(_quote(a) for a in self.command_line(root))
        return out


def _quote(arg: str) -> str:
    import shlex

    return shlex.quote(arg)


def resume_arguments(job: Job, root: Path) -> list[str]:
    """What continues ``job``'s run when it starts again: ``--resume`` where the command has it and its run folder
    holds something to resume (a reconstruction's checkpoint.pt, a training's last/)."""
    if not job.resume:
        return []
    marker = {"reconstruct": "checkpoint.pt", "train": "last"}.get(job.command)
    if marker is None:
        return []
    return ["--resume"] if (Path(root) / job.run_dir / marker).exists() else []


# ---- the queue on disk ------------------------------------------------------------------------------------------
_COLUMNS = ("command", "argv", "run_dir", "state", "name", "device", "processes", "spec", "resume", "created",
            "started", "ended", "returncode", "pid", "note")
_JSON = ("argv", "spec")


class JobStore:
    """The persisted queue (SQLite; one short connection per call, so any thread may use it)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        with self._connect() as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE IF NOT EXISTS jobs (id INTEGER PRIMARY KEY AUTOINCREMENT, command TEXT, "
                       "argv TEXT, run_dir TEXT, state TEXT, name TEXT, device TEXT, processes INTEGER, spec TEXT, "
                       "resume INTEGER, created REAL, started REAL, ended REAL, returncode INTEGER, pid INTEGER, "
                       "note TEXT)")

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(self.path, timeout=30)

    def _row(self, row) -> Job:
        values = dict(zip(("id",) + _COLUMNS, row, strict=True))
        for k in _JSON:
            values[k] = json.loads(values[k])
        values["resume"] = bool(values["resume"])
        return Job(**values)

    def add(self, job: Job) -> Job:
        values = asdict(job)
        with self._lock, self._connect() as db:
            cur = db.execute(f"INSERT INTO jobs ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' * len(_COLUMNS))})",
                             [json.dumps(values[k]) if k in _JSON else values[k] for k in _COLUMNS])
            job.id = int(cur.lastrowid)
        return job

    def update(self, job_id: int, **changes) -> None:
        if not changes:
            return
        sets = ", ".join(f"{k} = ?" for k in changes)
        values = [json.dumps(v) if k in _JSON else v for k, v in changes.items()]
        with self._lock, self._connect() as db:
            db.execute(f"UPDATE jobs SET {sets} WHERE id = ?", values + [job_id])

    def get(self, job_id: int) -> Job:
        with self._lock, self._connect() as db:
            row = db.execute(f"SELECT id, {', '.join(_COLUMNS)} FROM jobs WHERE id = ?", (job_id,)).fetchone()
        if row is None:
            raise Refused(f"job {job_id}: no such job", 404)
        return self._row(row)

    def jobs(self, state: str | None = None) -> list[Job]:
        query = f"SELECT id, {', '.join(_COLUMNS)} FROM jobs" + (" WHERE state = ?" if state else "") + " ORDER BY id"
        with self._lock, self._connect() as db:
            rows = db.execute(query, (state,) if state else ()).fetchall()
        return [self._row(r) for r in rows]

    def next_id(self) -> int:
        with self._lock, self._connect() as db:
            row = db.execute("SELECT seq FROM sqlite_sequence WHERE name = 'jobs'").fetchone()
        return (int(row[0]) if row else 0) + 1


# ---- building a job from the page's request ---------------------------------------------------------------------
def _text(value, what: str, limit: int = 1000) -> str:
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise Refused(f"{what}: expected a string, got {type(value).__name__}", 400)
    text = str(value)
    if "\x00" in text or len(text) > limit:
        raise Refused(f"{what}: a NUL character or more than {limit} characters", 400)
    return text


def check_arguments(root: Path, args) -> list[str]:
    """A job's extra arguments: strings, none of :data:`RESERVED`, every path-like one inside the root."""
    if not isinstance(args, list) or len(args) > 100:
        raise Refused("args: expected a list of at most 100 strings", 400)
    out = []
    for i, a in enumerate(args):
        a = _text(a, f"args[{i}]")
        option = a.split("=", 1)[0]
        if option in RESERVED:
            raise Refused(f"args[{i}] {a!r}: {option} is set by the job itself (its run folder)", 403)
        for part in (a, a.split("=", 1)[-1]):
            if "/" in part or "\\" in part or part.startswith(("~", "..")):
                confine(root, part)
        out.append(a)
    return out


def _device(spec: dict) -> tuple[str, int]:
    device = _text(spec.get("device", "cpu"), "device", 20)
    if not _DEVICE.match(device):
        raise Refused(f"device {device!r}: expected cpu, cuda, cuda:N, mps or auto", 400)
    processes = spec.get("processes", 1)
    if not isinstance(processes, int) or isinstance(processes, bool) or not 1 <= processes <= 64:
        raise Refused("processes: expected an integer from 1 to 64", 400)
    return device, processes


def _yaml_value(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip().removesuffix("...").strip()


def reconstruct_params(root: Path, config: Path, overrides: dict[str, Any], run_dir: Path):
    """The reconstruction parameters of ``config`` with ``overrides`` (dotted keys), validated by the YAML's own
    schema (:class:`~phasestem.recon.params.ReconstructParams`), every file it reads inside the root, and the text
    of ``run_dir/params.yaml`` (paths relative to the run folder, ``run.out_dir: .``)."""
    from ..recon.params import dump_params, parse_params

    data = apply_overrides(read_yaml_mapping(config, "parameter file"), overrides)
    params = parse_params(data, relative(root, config), config.parent)
    for name in ("data.file", "data.detector_shifts", "scan.positions_file", "model.initial_phase.file",
                 "model.initial_probe.file"):
        section, *rest = name.split(".")
        node = getattr(params, section)
        for part in rest[:-1]:
            node = getattr(node, part) if node is not None else None
        if node is None or getattr(node, rest[-1]) is None:
            continue
        path = Path(getattr(node, rest[-1])).resolve()
        try:
            confine(root, relative(root, path))
        except ValueError:
            raise Refused(f"{relative(root, config)}: {name} {path.name} lies outside the workspace root", 403) \
                from None
        setattr(node, rest[-1], path)
    params.run.out_dir = run_dir.resolve()
    return params, dump_params(params, base=run_dir)  # paths relative to the run folder, run.out_dir: .


def build_job(root: Path, store: JobStore, spec: dict[str, Any]) -> Job:
    """A :class:`Job` (not yet stored) from the page's request ``spec``::

        {"command": "reconstruct", "config": "configs/reconstruct_tiny.yaml", "set": {"run.n_epochs": 5},
         "args": ["--init", "ssb"], "device": "cpu", "processes": 1, "name": "first try"}

    (``network`` too for ``train``; for ``calibrate`` ``config`` is the data file). Its run folder is created and
    receives the validated parameter file. Refusals (:class:`Refused`) say which field and why."""
    if not isinstance(spec, dict):
        raise Refused("expected a JSON object describing the job", 400)
    unknown = set(spec) - {"command", "config", "set", "args", "device", "processes", "name", "network"}
    if unknown:
        raise Refused(f"unknown job field(s): {', '.join(sorted(unknown))}", 400)
    command = spec.get("command")
    if command not in COMMANDS:
        raise Refused(f"command {command!r}: only phasestem's own commands can be run here: {', '.join(COMMANDS)}",
                      403)
    device, processes = _device(spec)
    overrides = spec.get("set") or {}
    if isinstance(overrides, list):  # ["section.key=value", ...]: values are YAML, as with --set
        overrides = parse_set_options([_text(x, "set") for x in overrides], "set")
    if not isinstance(overrides, dict) or not all(isinstance(k, str) and k for k in overrides):
        raise Refused("set: expected an object of dotted keys (section.key) and values", 400)
    args = check_arguments(root, spec.get("args") or [])
    name = _text(spec.get("name", ""), "name", 200)
    config_rel = spec.get("config")
    if not config_rel:
        raise Refused("config: give the parameter file (for calibrate: the data file)", 400)
    config = confine(root, _text(config_rel, "config"), must_exist=True)
    if not config.is_file():
        raise Refused(f"config {config_rel!r}: not a file", 400)
    job_id = store.next_id()
    run_dir = confine(root, f"{RUNS_DIR}/{job_id:04d}-{command}")
    rel_run, rel_config = relative(root, run_dir), relative(root, config)
    files: dict[str, str] = {}
    if command in ("reconstruct", "tune"):
        if command == "tune":
            overrides = {**overrides, "run.device": device}
        params, text = reconstruct_params(root, config, overrides, run_dir)
        files["params.yaml"] = text
        argv = ["phasestem", command, f"{rel_run}/params.yaml", "--out", rel_run]
        if command == "reconstruct":
            argv += ["--device", device]
            if processes > 1 and params.run.n_processes > 1:
                raise Refused("processes > 1 and run.n_processes > 1: choose one way to start processes", 400)
    elif command == "train":
        network = spec.get("network")
        if not isinstance(network, str) or not _NETWORK.match(network):
            raise Refused("network: give the network to train (patch, stitch, end2end, autoencoder, phaseformer)",
                          400)
        argv = ["phasestem", "train", network, rel_config, "--out", rel_run, "--device", device]
        for key, value in overrides.items():
            argv += ["--set", f"{_text(key, 'set key', 200)}={_yaml_value(value)}"]
    elif command == "simulate":
        if overrides:
            from ..simulate.config import SimulationConfig

            # the copy lives in the run folder: the original's relative paths (from its folder) and those of the
            # overrides (from the root, the job's working directory) are written absolute
            data = resolve_config_paths(SimulationConfig, read_yaml_mapping(config), config.parent.resolve())
            data = map_config_paths(SimulationConfig, apply_overrides(data, overrides), relative_to(root.resolve()))
            files["simulate.yaml"] = yaml.safe_dump(data, sort_keys=False)
            rel_config = f"{rel_run}/simulate.yaml"
        argv = ["phasestem", "simulate", rel_config, "--out", f"{rel_run}/data", "--device", device]
    else:  # calibrate: the data file and the reader options among args
        if overrides:
            raise Refused("set: calibrate takes its options as args (e.g. --energy 300e3)", 400)
        argv = ["phasestem", "calibrate", rel_config, "--out", rel_run]
    argv += args
    if processes > 1:
        if command not in ("reconstruct", "train"):
            raise Refused(f"processes > 1: {command} does not run under torchrun", 400)
        argv = ["torchrun", "--standalone", f"--nproc_per_node={processes}", "-m", "phasestem.cli"] + argv[1:]
    run_dir.mkdir(parents=True, exist_ok=False)
    for fname, text in files.items():
        (run_dir / fname).write_text(text, encoding="utf-8")
    return Job(id=0, command=command, argv=argv, run_dir=rel_run, name=name, device=device, processes=processes,
               spec=spec, created=time.time())


def exec_argv(argv: list[str]) -> list[str]:
    """The program and arguments that run ``argv`` with this Python (``phasestem`` → ``python -m phasestem.cli``,
    ``torchrun`` → ``python -m torch.distributed.run``)."""
    head = {"phasestem": [sys.executable, "-m", "phasestem.cli"],
            "torchrun": [sys.executable, "-m", "torch.distributed.run"]}
    if not argv or argv[0] not in head:
        raise PhasestemError(f"not a phasestem command: {argv[:1]}")
    return head[argv[0]] + argv[1:]


# ---- running them -----------------------------------------------------------------------------------------------
def _alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _stop_group(pid: int, grace: float = STOP_GRACE) -> None:
    """SIGTERM the process group led by ``pid`` (a job started in its own session; SIGCONT lets a stopped one
    receive it); SIGKILL after ``grace`` s."""
    try:
        os.killpg(pid, signal.SIGTERM)
        os.killpg(pid, signal.SIGCONT)
    except (ProcessLookupError, PermissionError):
        return
    end = time.monotonic() + grace
    while time.monotonic() < end:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    try:
        os.killpg(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def lock_holder(run_dir: Path) -> int | None:
    """The pid of the process holding ``run_dir``'s lock (None when nobody holds it)."""
    if not folder_lock_path(run_dir).exists():
        return None
    try:
        with OutputLock(run_dir, "phasestem serve (check)"):
            return None
    except FolderBusyError:
        try:
            return int(json.loads(folder_lock_path(run_dir).read_text())["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            return -1


class JobRunner:
    """Starts queued jobs (at most ``max_running`` at once), watches them, cancels and resumes them."""

    def __init__(self, root: Path, store: JobStore, max_running: int = 1, poll: float = 0.2):
        self.root = Path(root)
        self.store = store
        self.max_running = max_running
        self.poll = poll
        self._procs: dict[int, subprocess.Popen] = {}
        self._cancel: set[int] = set()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._mutex = threading.Lock()
        self._submitting = threading.Lock()

    # lifecycle
    def start(self) -> None:
        self.recover()
        self._thread = threading.Thread(target=self._loop, name="phasestem-jobs", daemon=True)
        self._thread.start()

    def recover(self) -> None:
        """Jobs left 'running' by a server that stopped: stop what is still alive, queue them to resume."""
        for job in self.store.jobs("running") + self.store.jobs("cancelling"):
            run_dir = self.root / job.run_dir
            holder = lock_holder(run_dir)
            if holder and holder > 0:  # the command outlived the server: stop it, it resumes from its checkpoint
                log.info("job %d: stopping its leftover process %d", job.id, holder)
                try:
                    _stop_group(os.getpgid(holder))
                except ProcessLookupError:
                    pass
            if job.state == "cancelling":
                self.store.update(job.id, state="cancelled", ended=time.time(), pid=None)
                continue
            self.store.update(job.id, state="queued", resume=True, pid=None,
                              note="interrupted by a server restart: resumed where it stopped")

    def shutdown(self) -> None:
        """Stop the loop; stop running jobs and queue them to resume at the next start."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with self._mutex:
            procs = dict(self._procs)
        for proc in procs.values():
            for sig in (signal.SIGTERM, signal.SIGCONT):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, sig)
        for job_id, proc in procs.items():
            try:
                proc.wait(STOP_GRACE)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            if job_id in self._cancel:
                self.store.update(job_id, state="cancelled", ended=time.time(), returncode=proc.returncode, pid=None)
            else:
                self.store.update(job_id, state="queued", resume=True, pid=None,
                                  note="interrupted by the server's shutdown: resumed where it stopped")

    # requests
    def submit(self, spec: dict[str, Any]) -> Job:
        with self._submitting:  # one at a time: the next id names the run folder
            job = self.store.add(build_job(self.root, self.store, spec))
        self._wake.set()
        return job

    def cancel(self, job_id: int) -> Job:
        job = self.store.get(job_id)
        if job.state == "queued":
            self.store.update(job_id, state="cancelled", ended=time.time())
        elif job.state == "running":
            with self._mutex:
                proc = self._procs.get(job_id)
                self._cancel.add(job_id)
            self.store.update(job_id, state="cancelling")
            if proc is not None:
                threading.Thread(target=_stop_group, args=(proc.pid,), daemon=True).start()
        else:
            raise Refused(f"job {job_id} is {job.state}: nothing to cancel", 409)
        return self.store.get(job_id)

    def resume(self, job_id: int) -> Job:
        job = self.store.get(job_id)
        if job.state not in ("failed", "cancelled"):
            raise Refused(f"job {job_id} is {job.state}: only a failed or cancelled job can be resumed", 409)
        self.store.update(job_id, state="queued", resume=True, returncode=None, ended=None, note="resumed")
        self._wake.set()
        return self.store.get(job_id)

    # the loop
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._reap()
                self._launch()
            except Exception:  # noqa: BLE001 - the loop must outlive one bad job
                log.exception("job runner")
            self._wake.wait(self.poll)
            self._wake.clear()

    def _reap(self) -> None:
        with self._mutex:
            done = [(i, p) for i, p in self._procs.items() if p.poll() is not None]
            for job_id, _ in done:
                del self._procs[job_id]
        for job_id, proc in done:
            if self._stop.is_set():
                return
            cancelled = job_id in self._cancel
            self._cancel.discard(job_id)
            state = "cancelled" if cancelled else ("done" if proc.returncode == 0 else "failed")
            self.store.update(job_id, state=state, ended=time.time(), returncode=proc.returncode, pid=None)

    def _launch(self) -> None:
        with self._mutex:
            free = self.max_running - len(self._procs)
        for job in self.store.jobs("queued")[: max(0, free)]:
            if self._stop.is_set():
                return
            self._start(job)

    def _start(self, job: Job) -> None:
        run_dir = self.root / job.run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        line = job.command_line(self.root)
        argv = exec_argv(line)
        with open(run_dir / "job.log", "ab") as out:
            out.write(f"\n$ {' '.join(_quote(a) for a in line)}\n".encode())
            out.flush()
            proc = subprocess.Popen(argv, cwd=self.root, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        with self._mutex:
            self._procs[job.id] = proc
        self.store.update(job.id, state="running", started=time.time(), pid=proc.pid, ended=None, returncode=None)
