"""A data reader of ``phasestem serve`` (:mod:`.reader`): ``python -I -m phasestem.serve.reader_main --root ROOT
--tmp TMP --memory-mb N --threads N --cpu-seconds N --parent PID [--unconfined]``.

It imports its libraries, then confines itself for good before it reads any request: Landlock
(:func:`confine_reader`: the Python installation and the system's folders, the workspace root; writes only ``TMP``;
no TCP), its address space (``RLIMIT_AS``: what the libraries took plus ``--memory-mb``), no core files, death with
the server. Then it answers requests, one at a time, each with a CPU-time limit of its own: a request is one frame
of JSON on stdin (``task``, ``params``, ``what``), the answer a header frame (``status``, ``error``, ``retire``)
and, for status 200, a frame of the JSON body on the real stdout. Python's own ``sys.stdout`` goes to stderr, so
nothing a library prints can reach the pipe.
"""
from __future__ import annotations

import argparse
import os
import resource
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, BinaryIO

from .reader_wire import MAX_REQUEST_BYTES, frame, frame_json, read_frame

#: PR_SET_PDEATHSIG (prctl): a signal when the parent ends
PR_SET_PDEATHSIG = 1
#: the modules a reader uses, imported before it confines itself (one thread: no thread may run at confine)
READER_MODULES = ("numpy", "h5py", "torch", "scipy.ndimage", "matplotlib", "phasestem.io", "phasestem.io.hdf5",
                  "phasestem.calibrate.overview", "phasestem.recon.results", "phasestem.serve.data",
                  "phasestem.serve.runs", "phasestem.serve.align", "phasestem.serve.jsontext",
                  "phasestem.serve.restored")


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="phasestem-serve-reader", allow_abbrev=False)
    p.add_argument("--root", type=Path, required=True)
    p.add_argument("--tmp", type=Path, required=True)
    p.add_argument("--memory-mb", type=int, required=True)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--cpu-seconds", type=int, required=True)
    p.add_argument("--parent", type=int, required=True)
    p.add_argument("--unconfined", action="store_true")
    return p.parse_args(argv)


def _protocol_streams() -> tuple[BinaryIO, BinaryIO]:
    """(requests, answers): stdin, and the pipe stdout was; fd 1 becomes stderr for whatever else prints."""
    answers = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    return sys.stdin.buffer, answers


def _die_with_parent(parent: int) -> None:
    """SIGKILL when the server ends (Linux), and exit now if it already has."""
    import ctypes

    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # pragma: no cover - not Linux
        pass
    if os.getppid() != parent:
        raise SystemExit("phasestem serve reader: the server is gone")


def _import_readers() -> None:
    import importlib

    for name in READER_MODULES:
        importlib.import_module(name)


def _set_threads(threads: int) -> None:
    """torch's compute threads (it starts them at once: only after :func:`confine_reader`)."""
    import torch

    torch.set_num_threads(threads)


def confine_reader(root: Path, tmp: Path, unconfined: bool = False) -> int:
    """Confine this process for good (Landlock): read the Python installation, the system's folders and ``root``,
    write only under ``tmp``, no TCP; returns the Landlock ABI used. Where the kernel has no Landlock: 0 when
    ``unconfined`` (the server was started so), else SystemExit saying why."""
    from ..base import landlock

    package = Path(__file__).resolve().parents[1]  # phasestem itself (an editable install's source folder)
    try:
        return landlock.confine(read=[*landlock.system_read_paths(), package, root, tmp], write=[tmp])
    except landlock.LandlockUnavailable as exc:
        if unconfined:
            return 0
        raise SystemExit(f"phasestem serve reader: {exc}; refused to read unconfined") from None


def _limit_memory(memory_mb: int) -> None:
    """``RLIMIT_AS``: what the process maps now plus ``memory_mb`` MiB (soft and hard: never raised again); no core
    files."""
    from ..base.safety import mapped_bytes

    try:
        mapped = mapped_bytes()
    except (OSError, ValueError):
        mapped = 0
    limit = mapped + memory_mb * 2**20
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))


def _limit_cpu(seconds: int) -> None:
    """``RLIMIT_CPU`` (soft): the CPU time used so far plus ``seconds``; past it the kernel sends SIGXCPU, which ends
    the process (the server answers for it)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = int(usage.ru_utime + usage.ru_stime) + max(1, seconds)
    resource.setrlimit(resource.RLIMIT_CPU, (soft if hard == resource.RLIM_INFINITY else min(soft, hard), hard))


class Tasks:
    """What a reader answers: the dataset page's requests (:class:`~.data.Datasets`, whose caches live here) and
    Compare's (:func:`~.runs.compare_runs`, :func:`~.runs.line_profile`), a restore job's run page
    (:func:`~.restored.restore_view`)."""

    def __init__(self, root: Path):
        from .data import Datasets

        self.root = root.resolve()
        self.datasets = Datasets()

    def run(self, task: str, params: dict[str, Any]) -> dict[str, Any]:
        from .runs import compare_runs, line_profile

        if task == "dataset":
            return self.datasets.overview(self._path(params), params["query"])
        if task == "pattern":
            return self.datasets.pattern(self._path(params), params["query"])
        if task == "virtual":
            return self.datasets.virtual(self._path(params), params["query"])
        if task == "compare":
            return compare_runs(self.root, self._runs(params))
        if task == "profile":
            return line_profile(self.root, self._runs(params), params.get("line"))
        if task == "restored":
            from .restored import restore_view

            return restore_view(self.root, self._path(params))
        raise ValueError(f"unknown task {task!r}")

    def _path(self, params: dict[str, Any]) -> Path:
        """The request's file: under the root (the server checked it; checked again here)."""
        path = Path(params["path"]).resolve()
        if self.root not in path.parents:
            from .security import Refused

            raise Refused("path: outside the workspace root", 403)
        return path

    @staticmethod
    def _runs(params: dict[str, Any]) -> list:
        from .jobstore import Job

        return [Job(id=int(r["id"]), command="", argv=[], run_dir=str(r["run_dir"]), name=str(r.get("name", "")))
                for r in params["jobs"]]


def handle(tasks: Tasks, request: dict[str, Any], memory_mb: int) -> tuple[dict[str, Any], bytes]:
    """(header, body) of one request; an error as its status and one line (``retire``: this reader should end)."""
    from ..base.errors import PhasestemError
    from .jsontext import dumps
    from .security import Refused, public_message

    what = str(request.get("what") or "the file")
    try:
        answer = tasks.run(str(request.get("task")), request.get("params") or {})
        return {"status": 200}, dumps(answer).encode("utf-8")
    except Refused as exc:
        return {"status": exc.status, "error": public_message(exc, tasks.root)}, b""
    except MemoryError:
        return {"status": 413, "retire": True,
                "error": f"{what}: reading it needs more memory than the {memory_mb} MiB a request may use "
                         "(phasestem serve --reader-memory-mb)"}, b""
    except (PhasestemError, OSError, ValueError, KeyError, RecursionError) as exc:
        return {"status": 400, "error": public_message(exc, tasks.root)}, b""
    except Exception as exc:  # noqa: BLE001 - a bug: its traceback in the server's log, one line to the page
        traceback.print_exc(file=sys.stderr)
        return {"status": 500, "error": f"{what}: the data reader failed ({type(exc).__name__})"}, b""


def serve_requests(requests: BinaryIO, answers: BinaryIO, tasks: Tasks, memory_mb: int, cpu_seconds: int) -> None:
    """Answer requests until the input ends or one asks this reader to retire."""
    import json

    while (data := read_frame(requests, MAX_REQUEST_BYTES)) is not None:
        _limit_cpu(cpu_seconds)
        head, body = handle(tasks, json.loads(data), memory_mb)
        answers.write(frame_json(head) + (frame(body) if head["status"] == 200 else b""))
        answers.flush()
        if head.get("retire"):
            return


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    requests, answers = _protocol_streams()
    _die_with_parent(args.parent)
    _import_readers()
    abi = confine_reader(args.root, args.tmp, args.unconfined)
    _limit_memory(args.memory_mb)
    _set_threads(args.threads)
    tasks = Tasks(args.root)
    answers.write(frame_json({"status": 200, "confined": abi, "pid": os.getpid()}))
    answers.flush()
    serve_requests(requests, answers, tasks, args.memory_mb, args.cpu_seconds)
    return 0


if __name__ == "__main__":
    sys.exit(main())
