"""The state behind ``phasestem serve``'s pages (:class:`Workspace`: the root, the job queue and its runner, the
data readers, push channels) and its push channels (:class:`Channel`)."""
from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

from .jobs import FINAL, SERVE_DIR, Job, JobRunner, JobStore
from .jsontext import dumps
from .outcome import job_outcome
from .reader import ReaderLimits, ReaderPool
from .runs import LiveRuns
from .security import public_message

log = logging.getLogger("phasestem.serve")

STATIC = Path(__file__).with_name("static")
#: seconds between two looks at a watched run folder
WATCH_PERIOD = 0.25
#: seconds between keep-alive comments on an idle push channel
KEEPALIVE = 15.0


class Channel:
    """One push channel: a watcher task computes payloads when their signature changes; subscribers wait.

    Each new payload sets the event that subscribers wait on and puts a fresh one in its place: a subscriber that
    leaves while waiting (its page closed) holds no lock, so it cannot leave one broken for the others."""

    def __init__(self, signature, payload):
        self.signature, self.payload = signature, payload
        self.version, self.data, self.final = 0, "", False
        self.changed = asyncio.Event()
        self.subscribers = 0
        self.task: asyncio.Task | None = None

    def publish(self, data: str, final: bool) -> None:
        self.data, self.final = data, final
        self.version += 1
        changed, self.changed = self.changed, asyncio.Event()
        changed.set()

    async def next(self, seen: int, timeout: float) -> tuple[int, str, bool] | None:
        """(version, payload, final) newer than ``seen``, or None after ``timeout`` s without one."""
        if self.version <= seen:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.changed.wait(), timeout)
        if self.version <= seen:
            return None
        return self.version, self.data, self.final

    async def watch(self, run_sync, root: Path) -> None:
        last = object()
        try:
            while self.subscribers > 0 and not self.final:
                sig = await run_sync(self.signature)
                if sig != last:
                    data, final = await run_sync(self.payload)
                    self.publish(dumps(data), final)  # NaN as null: the page's JSON.parse reads it
                    last = sig
                if not self.final:
                    await asyncio.sleep(WATCH_PERIOD)
        except Exception as exc:  # noqa: BLE001 - a watcher that fails tells its pages once and stops
            log.exception("push channel")
            self.publish(dumps({"error": f"{type(exc).__name__}: {public_message(exc, root)}"}), True)


class Workspace:
    """The state behind the pages: the root, the queue and its runner, the data readers (``reader_limits``:
    :class:`~.reader.ReaderLimits`), push channels."""

    def __init__(self, root: Path, token: str, max_upload: int, max_running: int = 1, kernel_confinement: bool = True,
                 reader_limits: ReaderLimits | None = None):
        self.root = Path(root).resolve()
        self.token = token
        self.max_upload = max_upload
        #: whether jobs (and data readers) confine themselves by the kernel (False: --no-kernel-confinement)
        self.kernel_confinement = kernel_confinement
        self.store = JobStore(self.root / SERVE_DIR / "jobs.sqlite")
        self.runner = JobRunner(self.root, self.store, max_running=max_running, confine=kernel_confinement)
        #: the processes that read data and results files for the pages (:mod:`.reader`), confined like jobs
        self.reader = ReaderPool(self.root, reader_limits, unconfined=not kernel_confinement)
        self.live = LiveRuns(self.root)
        self.channels: dict[Any, Channel] = {}
        self._devices: list[str] | None = None

    def devices(self) -> list[str]:
        if self._devices is None:
            import torch

            n = torch.cuda.device_count() if torch.cuda.is_available() else 0
            self._devices = ["cpu"] + (["cuda"] + [f"cuda:{i}" for i in range(n)] if n else [])
        return self._devices

    def described(self, job: Job) -> dict[str, Any]:
        """``job`` as the pages show it, with how it ended (``outcome``: :func:`~.outcome.job_outcome`)."""
        return {**job.public(self.root), "outcome": job_outcome(self.root, job)}

    def jobs_payload(self) -> tuple[dict, bool]:
        return {"jobs": [self.described(j) for j in self.store.jobs()]}, False

    def jobs_signature(self):
        return [(j.id, j.state, j.returncode, j.note) for j in self.store.jobs()]

    def job_channel(self, job_id: int) -> Channel:
        def signature():
            return self.live.signature(self.store.get(job_id))

        def payload():
            job = self.store.get(job_id)
            return {**self.live.payload(job), "outcome": job_outcome(self.root, job)}, job.state in FINAL

        return Channel(signature, payload)
