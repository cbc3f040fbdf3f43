"""One lock per output, so that two runs never write the same folder or file.

Every command that writes results holds an exclusive ``fcntl.flock`` for the whole run:

* an output **folder** (``simulate``, ``reconstruct``, ``tune``, ``train``, ``calibrate``, ``evaluate``,
  ``demo``): ``<folder>/.phasestem.lock``;
* a single output **file** (``predict``, ``embed``, ``refine``, ``make-pairs``; the figures derived from
  its name go with it): ``.<name>.phasestem.lock`` beside it, so that runs writing other files of the
  same folder are not held up.

A second run is refused at once (:class:`FolderBusyError`, one line naming the holder's command, pid, host
and start time, read from the JSON record the holder keeps in the lock file). The kernel drops the lock
when the holder exits in any way (SIGKILL included), so a crash never blocks the next run. The holder
deletes the lock file when it finishes; a run that locked a file another process had just deleted
notices (the path no longer names its file) and locks the new one, so deleting never lets two runs in.

Nesting in one process is free (``reconstruct --auto`` holds its folder, then ``run_reconstruction``
asks again). In a ``torch.distributed`` process group only rank 0 takes the lock and every rank learns
its outcome (a broadcast), so a refused run stops on all ranks instead of leaving them waiting; under
``torchrun`` before the group exists, ranks other than 0 (``RANK``) take nothing: rank 0 holds the folder
for the launch and the launcher stops the others when it is refused.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import PhasestemError
from .runtime import process_group

log = logging.getLogger("phasestem")

#: the lock file inside an output folder
LOCK_NAME = ".phasestem.lock"
#: suffix of the lock file beside a single output file (``.<name>`` + this)
FILE_LOCK_SUFFIX = ".phasestem.lock"

#: lock files this process holds (real path → nesting depth)
_held: dict[str, int] = {}


class FolderBusyError(PhasestemError):
    """The output folder (or file) is locked by another run."""


def folder_lock_path(folder: str | os.PathLike) -> Path:
    """The lock file of an output folder."""
    return Path(folder) / LOCK_NAME


def file_lock_path(file: str | os.PathLike) -> Path:
    """The lock file of a single output file: hidden, beside it."""
    file = Path(file)
    return file.with_name(f".{file.name}{FILE_LOCK_SUFFIX}")


def _holder(fd: int) -> dict:
    """The holder's JSON record (empty while the holder has not written it yet)."""
    for _ in range(20):  # the holder writes its record right after locking: give it up to 1 s
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 4096).decode("utf-8", "replace")
        try:
            record = json.loads(text)
            if isinstance(record, dict):
                return record
        except ValueError:
            pass
        time.sleep(0.05)
    return {}


def describe_holder(info: dict) -> str:
    """``'phasestem reconstruct' (pid 12, host h, started …)`` from a lock record."""
    if not info:
        return "a process that has not written its record yet"
    return (f"'{info.get('command', 'phasestem')}' (pid {info.get('pid', '?')} on host {info.get('host', '?')}, "
            f"started {info.get('started', '?')})")


class OutputLock:
    """``with OutputLock(path, "phasestem reconstruct"): ...`` holds an output or raises FolderBusyError at once.

    ``path`` is an output folder (created if missing), or with ``file=True`` a single output file (its
    folder is created; the lock file goes beside it). ``command`` names this run in a refusal.
    """

    def __init__(self, path: str | os.PathLike, command: str, file: bool = False):
        self.target = Path(path)
        self.command = command
        self.file = file
        self.path = file_lock_path(path) if file else folder_lock_path(path)
        self._fd: int | None = None
        self._key: str | None = None
        self._created = False  # the folder did not exist: removed again on release when left empty

    def acquire(self) -> None:
        self._created = not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        key = os.path.realpath(self.path)
        if key in _held:  # this process holds it already (a nested call)
            _held[key] += 1
            self._key = key
            return
        try:
            import fcntl
        except ImportError:  # not POSIX (Windows): no OS lock to take
            log.warning("%s: this platform has no flock; the output is not locked against a second run", self.path)
            return
        while True:
            try:
                fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except FileNotFoundError:  # the folder was removed as we came (left empty by the holder before us)
                self.path.parent.mkdir(parents=True, exist_ok=True)
                continue
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                info = _holder(fd)
                os.close(fd)
                what = "file" if self.file else "folder"
                raise FolderBusyError(
                    f"{self.target}: another run is writing this {what}: {describe_holder(info)}; wait for it to "
                    f"finish or write elsewhere (lock file {self.path.name})") from None
            if _same_file(fd, self.path):
                break
            os.close(fd)  # the holder before us deleted this lock file as we opened it: lock the new one
        record = {"command": self.command, "pid": os.getpid(), "host": socket.gethostname(),
                  "started": time.strftime("%Y-%m-%d %H:%M:%S %z"), "argv": sys.argv}
        try:
            os.ftruncate(fd, 0)
            os.write(fd, json.dumps(record).encode())
        except OSError:  # no room for the record (a full disk): the lock holds without it; the writes say why
            pass
        self._fd, self._key = fd, key
        _held[key] = 1

    def release(self) -> None:
        if self._key is None:
            return
        _held[self._key] -= 1
        if _held[self._key] > 0 or self._fd is None:
            self._key = None
            return
        import fcntl

        del _held[self._key]
        self._key = None
        try:
            if _same_file(self._fd, self.path):
                os.unlink(self.path)  # while still locked: a waiting opener of this file retries
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd = None
        if self._created:
            try:
                self.path.parent.rmdir()  # a run that wrote nothing leaves no empty folder behind
            except OSError:
                pass

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    try:
        a, b = os.fstat(fd), os.stat(path)
    except FileNotFoundError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _group_rank() -> int | None:
    """This process's rank in an initialised torch.distributed group (None without one; torch is not imported)."""
    group = process_group()
    return None if group is None else group[0]


def _launcher_rank() -> int:
    """The rank ``torchrun`` announced (``RANK`` with ``WORLD_SIZE`` > 1); 0 otherwise."""
    try:
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            return int(os.environ.get("RANK", "0"))
    except ValueError:
        pass
    return 0


@contextmanager
def hold_output(path: str | os.PathLike, command: str, file: bool = False) -> Iterator[None]:
    """Hold ``path`` (an output folder, or with ``file=True`` an output file) for the ``with`` block.

    In an initialised torch.distributed group, rank 0 takes the lock and broadcasts the outcome: every
    rank raises the same :class:`FolderBusyError` when it is refused. Under a launcher that announced a
    rank (``RANK``, ``WORLD_SIZE`` > 1) before the group exists, ranks other than 0 take nothing.
    """
    lock = OutputLock(path, command, file=file)
    group_rank = _group_rank()
    rank = _launcher_rank() if group_rank is None else group_rank
    refusal = None
    if rank == 0:
        try:
            lock.acquire()
        except FolderBusyError as exc:
            refusal = str(exc)
    try:
        if group_rank is not None:
            import torch.distributed as dist

            box = [refusal]
            dist.broadcast_object_list(box, src=0)
            refusal = box[0]
        if refusal is not None:
            raise FolderBusyError(refusal)
        yield
    finally:
        lock.release()
