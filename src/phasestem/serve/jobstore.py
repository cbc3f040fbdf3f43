"""The job record (:class:`Job`: the command, its run folder, its state) and the SQLite queue that keeps them
(:class:`JobStore`), with the names of the serve workspace (:mod:`phasestem.serve.jobs`)."""
from __future__ import annotations

import json
import logging
import shlex
import sqlite3
import threading
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from .security import SERVE_DIR, Refused  # noqa: F401  (SERVE_DIR: the queue's names)

log = logging.getLogger("phasestem.serve")

#: the commands a job may run
COMMANDS = ("calibrate", "reconstruct", "simulate", "train", "tune", "plan", "live", "restore")
#: the commands that read a detector's stream, which does not come again: such a job is never resumed (what it
#: received stays in its run folder: its recording, stream.h5 or stream.partial.h5)
STREAMED = ("live",)
#: options the job sets itself (its run folder; a restore job's output and calibration folder in it); refused among a
#: job's extra arguments
RESERVED = ("--out", "--out-dir", "--resume", "--restart", "--dump-config", "--out-file", "--calibration")
#: job states; a job ends in one of :data:`FINAL`
STATES = ("queued", "running", "cancelling", "done", "failed", "cancelled")
FINAL = ("done", "failed", "cancelled")
#: the folder under the root that receives the run folders
RUNS_DIR = "runs"
#: seconds a stopped job has to exit after SIGTERM before SIGKILL
STOP_GRACE = 10.0
#: the largest job id (SQLite's integer)
MAX_JOB_ID = 2**63 - 1
#: the separator before a job's file arguments: what follows is a file, even a name that begins with '-'
FILES_FOLLOW = "--"


def parse_job_id(text: str | None) -> int:
    """A job id as a request gives it (the route's ``{job_id}``, one of ``?jobs=``): ASCII digits of a positive
    63-bit integer. Anything else is refused: 400 when it is not a number, 404 when no job can have it."""
    text = (text or "").strip()
    if not text.isascii() or not text.isdigit():
        raise Refused(f"job id {text[:30]!r}: expected a positive integer", 400)
    if len(text) > 19 or not 0 < int(text) <= MAX_JOB_ID:
        raise Refused(f"job {text[:30]}: no such job (job ids are positive integers below 2**63)", 404)
    return int(text)


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
        """The command as typed in ``root``, with ``--resume`` when the next start continues the run (before the
        file arguments' ``--``, where the job has one)."""
        extra = resume_arguments(self, root)
        if FILES_FOLLOW not in self.argv:
            return self.argv + extra
        at = self.argv.index(FILES_FOLLOW)
        return self.argv[:at] + extra + self.argv[at:]

    def public(self, root: Path) -> dict[str, Any]:
        """The job as the pages show it (``command_line``: the command to type in the root)."""
        out = asdict(self)
        out["command_line"] = shlex.join(self.command_line(root))
        return out


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
        if not 0 < job_id <= MAX_JOB_ID:  # SQLite's integers end there (a larger one raised OverflowError: a 500)
            raise Refused(f"job {job_id}: no such job", 404)
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
