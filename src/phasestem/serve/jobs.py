"""Jobs: ``phasestem …`` commands run as subprocesses, one run folder each, queued in SQLite.

A job is exactly the command a user would type from the workspace root (``Job.argv``, shown on the page): the
browser adds nothing the CLI cannot reproduce. Its run folder ``runs/NNNN-COMMAND/`` receives what the command
writes, the parameter file the job was made with (``params.yaml``, validated by the YAML's own schema) and the
command's output (``job.log``). The command itself holds the folder's lock (:mod:`phasestem.base.lock`).

Only phasestem's own commands (:data:`COMMANDS`) can be queued, as argument lists (no shell), with every
path-like argument confined to the root and the output options reserved to the job. The queue lives in
``ROOT/.phasestem-serve/jobs.sqlite``: a server that restarts finds its jobs again, and a job that was running
when the server stopped is stopped if it is still alive and queued again with ``--resume`` (reconstruct, train;
simulate and tune continue by running again). A live job (:data:`~.jobstore.STREAMED`) is never queued again: the
detector's stream does not come twice; it ends cancelled, what it received kept in its run folder. A live job whose
scan the operator ended (its first stop) and that then reconstructed what came (exit 0, ``results.h5``) is a
finished run with a partial scan: ``done``, its note saying so (:func:`~.outcome.partial_scan`).
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ..base.errors import PhasestemError
from ..base.lock import FolderBusyError, OutputLock, folder_lock_path
from .job_isolation import (
    isolated_argv,
    job_confinement,
    job_environment,
    uses_local_processes,
)
from .job_spec import build_job, detector_ports
from .jobstore import (  # noqa: F401  (the queue's names, re-exported for the server and the tests)
    COMMANDS,
    FINAL,
    RESERVED,
    RUNS_DIR,
    SERVE_DIR,
    STATES,
    STOP_GRACE,
    STREAMED,
    Job,
    JobStore,
    resume_arguments,
)
from .outcome import partial_scan
from .security import Refused

log = logging.getLogger("phasestem.serve")
#: the note of a live job the server's stop or restart interrupted
STREAM_INTERRUPTED = ("interrupted by the server's {}: a detector stream cannot be resumed; what was received is kept "
                      "in its run folder")


#: the script a job's process starts with (:mod:`phasestem.serve.job_main`): phasestem without the workspace root
#: on ``sys.path``
JOB_MAIN = str(Path(__file__).with_name("job_main.py"))


def exec_argv(argv: list[str]) -> list[str]:
    """The program and arguments that run ``argv`` with this Python, never importing from the working directory
    (:mod:`phasestem.serve.job_main`): ``phasestem …`` → ``python job_main.py …``, ``torchrun … -m phasestem.cli
    …`` → ``python job_main.py --torchrun … job_main.py …``."""
    if not argv or argv[0] not in ("phasestem", "torchrun"):
        raise PhasestemError(f"not a phasestem command: {argv[:1]}")
    if argv[0] == "phasestem":
        return [sys.executable, JOB_MAIN] + argv[1:]
    rest = list(argv[1:])
    for i in range(len(rest) - 1):
        if rest[i] == "-m" and rest[i + 1] == "phasestem.cli":
            rest[i: i + 2] = [JOB_MAIN]
            break
    else:
        raise PhasestemError("a torchrun job runs phasestem.cli")
    return [sys.executable, JOB_MAIN, "--torchrun"] + rest


# ---- running them -----------------------------------------------------------------------------------------------
def _stop_group(pid: int, grace: float | None = STOP_GRACE) -> None:
    """SIGTERM the process group led by ``pid`` (a job started in its own session; SIGCONT lets a stopped one
    receive it); SIGKILL after ``grace`` s (None: never)."""
    try:
        os.killpg(pid, signal.SIGTERM)
        os.killpg(pid, signal.SIGCONT)
    except (ProcessLookupError, PermissionError):
        return
    if grace is None:
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
    """Starts queued jobs (at most ``max_running`` at once), watches them, cancels and resumes them. Each job is
    isolated (:mod:`.job_isolation`): ``python -I``, a cleaned environment and, unless ``confine`` is False, the
    kernel's confinement to the root and its run folder."""

    def __init__(self, root: Path, store: JobStore, max_running: int = 1, poll: float = 0.2, confine: bool = True):
        self.root = Path(root)
        self.store = store
        self.max_running = max_running
        self.poll = poll
        self.confine = confine
        self._procs: dict[int, subprocess.Popen] = {}
        self._cancel: set[int] = set()  # jobs stopped for good (cancelled)
        self._scan_ended: set[int] = set()  # live jobs whose scan the operator ended (a first stop)
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
            if job.state == "cancelling" or job.command in STREAMED:
                self.store.update(job.id, state="cancelled", ended=time.time(), pid=None,
                                  **({"note": STREAM_INTERRUPTED.format("restart")} if job.command in STREAMED else {}))
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
            if job_id in self._cancel or self.store.get(job_id).command in STREAMED:
                note = {} if job_id in self._cancel else {"note": STREAM_INTERRUPTED.format("shutdown")}
                self.store.update(job_id, state="cancelled", ended=time.time(), returncode=proc.returncode, pid=None,
                                  **note)
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
        """Stop a job: a queued one never starts; a running one receives SIGTERM, then SIGKILL after
        :data:`STOP_GRACE` s. A live job's first stop ends its scan where it is, and ``phasestem live`` records and
        reconstructs what it received, for as long as that takes (no SIGKILL; the job ends ``done`` where it then
        exits 0 with its results, see the module); a second stop ends it at once."""
        job = self.store.get(job_id)
        streamed = job.command in STREAMED
        if job.state == "queued":
            self.store.update(job_id, state="cancelled", ended=time.time())
        elif job.state == "running" or (streamed and job.state == "cancelling"):
            scan_only = streamed and job.state == "running"
            with self._mutex:
                proc = self._procs.get(job_id)
                (self._scan_ended if scan_only else self._cancel).add(job_id)
            grace = None if scan_only else STOP_GRACE
            self.store.update(job_id, state="cancelling")
            if proc is not None:
                threading.Thread(target=_stop_group, args=(proc.pid, grace), daemon=True).start()
        else:
            raise Refused(f"job {job_id} is {job.state}: nothing to cancel", 409)
        return self.store.get(job_id)

    def resume(self, job_id: int) -> Job:
        job = self.store.get(job_id)
        if job.state not in ("failed", "cancelled"):
            raise Refused(f"job {job_id} is {job.state}: only a failed or cancelled job can be resumed", 409)
        if job.command in STREAMED:
            raise Refused(f"job {job_id} read a detector's stream, which does not come again: it cannot be resumed. "
                          "What it received is in its run folder (stream.h5, or stream.partial.h5 where it was "
                          "killed): reconstruct that file, or start a new live job for the next scan", 409)
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
            cancelled, scan_ended = job_id in self._cancel, job_id in self._scan_ended
            self._cancel.discard(job_id)
            self._scan_ended.discard(job_id)
            state, note = ("done" if proc.returncode == 0 else "failed"), {}
            if cancelled:
                state = "cancelled"
            elif scan_ended:  # a live job's first stop: done where it reconstructed what came (exit 0, results)
                run_dir = self.root / self.store.get(job_id).run_dir
                if proc.returncode == 0 and (run_dir / "results.h5").is_file():
                    note = {"note": partial_scan(run_dir) or ""}
                else:
                    state = "cancelled"
            self.store.update(job_id, state=state, ended=time.time(), returncode=proc.returncode, pid=None, **note)

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
        rules = job_confinement(self.root, run_dir, uses_local_processes(self.root, job),
                                detector_ports(job)) if self.confine else None
        env = job_environment(self.root, run_dir, confinement=rules)
        line = job.command_line(self.root)
        argv = isolated_argv(exec_argv(line))
        try:  # never through a link the job left in its run folder: the server itself is not confined
            log_fd = os.open(run_dir / "job.log", os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW, 0o644)
        except OSError as exc:
            self.store.update(job.id, state="failed", ended=time.time(), note=f"job.log: {exc.strerror}")
            return
        with open(log_fd, "ab") as out:
            out.write(f"\n$ {shlex.join(line)}\n".encode())
            out.flush()
            proc = subprocess.Popen(argv, cwd=self.root, stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, start_new_session=True)
        with self._mutex:
            self._procs[job.id] = proc
        self.store.update(job.id, state="running", started=time.time(), pid=proc.pid, ended=None, returncode=None)
