"""An exclusive lock on a simulation output folder, so that two runs never write into one folder.

The driver process of a run (the one that calls :func:`~phasestem.simulate.writer.simulate_dataset`)
holds ``fcntl.flock`` on ``<out>/.phasestem-simulate.lock`` for the whole run; the kernel drops it
when the process exits in any way (normal exit, exception, SIGKILL). Dask workers of the same run
do not take it: they only write their own per-sample work files. The lock file keeps the
holder's pid, host and start time (JSON) so that a refused run can say who holds the folder.
The file itself is never deleted (deleting a lock file that another process is about to lock
would let two runs in); it is one of the run's own files.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path

from ..errors import PhasestemError

log = logging.getLogger("phasestem.simulate")

LOCK_NAME = ".phasestem-simulate.lock"


class FolderBusyError(PhasestemError):
    """The output folder is locked by another run."""


def _holder(fd: int) -> dict:
    """The holder's JSON record (empty while the holder has not written it yet)."""
    for _ in range(20):  # the holder writes its record right after locking: give it up to 1 s
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 4096).decode("utf-8", "replace")
        try:
            return json.loads(text)
        except ValueError:
            time.sleep(0.05)
    return {}


class OutputLock:
    """Context manager: ``with OutputLock(out): ...`` holds the folder or raises FolderBusyError at once."""

    def __init__(self, folder: str | Path):
        self.path = Path(folder) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> None:
        try:
            import fcntl
        except ImportError:  # not POSIX (Windows): no OS lock to take
            log.warning("%s: this platform has no flock; the folder is not locked against a second run", self.path)
            return
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            info = _holder(fd)
            os.close(fd)
            who = (f"pid {info.get('pid', '?')} on host {info.get('host', '?')}, started {info.get('started', '?')}"
                   if info else "a process that has not written its pid yet")
            raise FolderBusyError(f"{self.path.parent}: another phasestem simulate run holds this folder ({who}; "
                                  f"lock file {self.path.name}); wait for it to finish or use another --out") from None
        record = {"pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S %z")}
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, json.dumps(record).encode())
        self._fd = fd

    def release(self) -> None:
        if self._fd is None:
            return
        import fcntl

        try:
            os.ftruncate(self._fd, 0)  # no stale pid left for the next reader
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
