"""The confined readers of ``phasestem serve``: every request that reads a data or results file runs in one of a few
worker processes (:mod:`.reader_main`), never in the server.

The dataset page's overview, patterns and virtual detectors and Compare (its images and its line profile) open files
that a token holder may have uploaded: an HDF5 file can declare a terabyte, point outside the root, or take minutes
to read. So the server hands each such request to a reader process and only waits for its answer:

* each reader confines itself by the kernel before it reads anything (Landlock,
  :func:`phasestem.base.landlock.confine`): it reads the Python installation, the system's folders and the workspace
  root, writes only a private temporary folder, and has no TCP at all;
* its address space is bounded (``RLIMIT_AS``: its libraries plus ``--reader-memory-mb``), and so is the CPU time of
  each request (``RLIMIT_CPU``);
* the server gives each request ``--reader-seconds`` of wall clock: past it, or when the client leaves, the reader
  is killed and replaced, and the request answers one JSON line (503: took too long; 413: needed too much memory);
* one file is read by one reader at a time (other requests for it wait their turn, then find its answer cached):
  twenty requests for one slow file occupy one reader, not all of them;
* answers come back as JSON text over a pipe, never as a pickle, and are kept in the server (:class:`AnswerCache`,
  keyed by the files' size and modification time); a file that ran out of time or memory is refused at once until
  it changes.

Where the kernel has no Landlock the readers run only if the server was started without confinement on purpose
(``ReaderPool(unconfined=True)``); otherwise every data request is refused (503) saying why.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import sys
import tempfile
import weakref
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .reader_wire import MAX_ANSWER_BYTES, MAX_HEADER_BYTES, FrameError, frame_json, parse_header, receive_frame
from .security import Refused

log = logging.getLogger("phasestem.serve")

#: the worker's module (``python -I -m …``)
READER_MAIN = "phasestem.serve.reader_main"
#: reader processes kept ready
READERS = 2
#: seconds a new reader has to import its libraries, confine itself and say it is ready
START_SECONDS = 120.0
#: seconds a request may wait for its file's turn or a free reader beyond its own ``seconds``
QUEUE_GRACE = 5.0
#: seconds a refusal for time or memory is remembered (the file unchanged)
REFUSAL_SECONDS = 120.0
#: seconds between two looks at whether a waiting client has left
DISCONNECT_POLL = 0.25


@dataclass(frozen=True)
class ReaderLimits:
    """What one request may spend in a reader: ``seconds`` of wall clock, ``memory_mb`` MiB of address space beyond
    the reader's libraries; ``workers``: how many readers are kept."""

    seconds: float = 60.0
    memory_mb: int = 4096
    workers: int = READERS

    @property
    def threads(self) -> int:
        """Compute threads of one reader: the machine's cores shared among the readers (1 to 4)."""
        return max(1, min(4, (os.cpu_count() or 1) // self.workers))

    @property
    def cpu_seconds(self) -> int:
        """CPU seconds one request may use (all its threads busy for ``seconds``, and a little more)."""
        return int(self.seconds * self.threads) + 5


# ---- the answers kept in the server ------------------------------------------------------------------------------


class AnswerCache:
    """Answers (JSON bytes) by key, least recently used dropped first beyond ``max_bytes`` or ``max_items``;
    refusals for time or memory kept :data:`REFUSAL_SECONDS`."""

    def __init__(self, max_bytes: int = 64 << 20, max_items: int = 1024, clock: Callable[[], float] | None = None):
        self.max_bytes, self.max_items = max_bytes, max_items
        self._clock = clock or (lambda: asyncio.get_running_loop().time())
        self._items: OrderedDict[Hashable, bytes | tuple[Refused, float]] = OrderedDict()
        self._bytes = 0

    def get(self, key: Hashable) -> bytes | None:
        """The answer kept for ``key`` (None: none); raises the refusal kept for it."""
        item = self._items.get(key)
        if item is None:
            return None
        if isinstance(item, tuple):
            refusal, until = item
            if self._clock() < until:
                raise Refused(str(refusal), refusal.status)
            self._drop(key)
            return None
        self._items.move_to_end(key)
        return item

    def put(self, key: Hashable, answer: bytes) -> None:
        if len(answer) > self.max_bytes // 4:
            return
        self._drop(key)
        self._items[key] = answer
        self._bytes += len(answer)
        self._trim()

    def refuse(self, key: Hashable, refusal: Refused) -> None:
        self._drop(key)
        self._items[key] = (refusal, self._clock() + REFUSAL_SECONDS)
        self._trim()

    def _trim(self) -> None:
        while self._bytes > self.max_bytes or len(self._items) > self.max_items:
            self._drop(next(iter(self._items)))

    def _drop(self, key: Hashable) -> None:
        item = self._items.pop(key, None)
        if isinstance(item, bytes):
            self._bytes -= len(item)


# ---- one reader process ----------------------------------------------------------------------------------------


class Reader:
    """One reader process, its pipes and the slot it read last (its own caches hold that file)."""

    def __init__(self, proc: asyncio.subprocess.Process, confined: int):
        self.proc, self.confined = proc, confined
        self.last: Hashable | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    async def ask(self, request: dict[str, Any]) -> tuple[dict[str, Any], bytes]:
        """Send ``request``; (header, answer bytes) back."""
        self.proc.stdin.write(frame_json(request))
        await self.proc.stdin.drain()
        head = parse_header(await receive_frame(self.proc.stdout, MAX_HEADER_BYTES))
        body = await receive_frame(self.proc.stdout, MAX_ANSWER_BYTES) if head["status"] == 200 else b""
        return head, body

    def kill(self) -> None:
        """SIGKILL (its whole process group); reaped by :meth:`reap`."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()

    async def reap(self) -> int:
        return await self.proc.wait()


def stopped_reason(returncode: int | None) -> str:
    """How a reader ended, in words (``returncode`` as asyncio gives it: -N for signal N)."""
    if returncode is None:
        return "it stopped answering"
    if returncode == -signal.SIGXCPU:
        return "it used up its CPU time"
    if returncode < 0:
        return f"it was stopped by {signal.Signals(-returncode).name}"
    return f"it exited with status {returncode}"


# ---- the pool -----------------------------------------------------------------------------------------------------


class ReaderPool:
    """The readers of one workspace (see the module docstring): :meth:`start` them, :meth:`answer` requests,
    :meth:`close` at the end."""

    def __init__(self, root: Path, limits: ReaderLimits | None = None, unconfined: bool = False):
        self.root = Path(root).resolve()
        self.limits = limits or ReaderLimits()
        self.unconfined = unconfined
        self.answers = AnswerCache()
        self.refusal = self._confinement_refusal()
        self._idle: list[Reader] = []
        self._busy: set[Reader] = set()
        self._alive = 0  # readers running or starting
        self._waiters: deque[asyncio.Future] = deque()
        self._slots: dict[Hashable, list] = {}  # slot -> [lock, requests holding or waiting for it]
        self._tasks: set[asyncio.Task] = set()
        self._failures = 0
        self._tmp: Path | None = None
        self._closed = False

    def _confinement_refusal(self) -> str | None:
        """Why no reader may run (None: they may): no Landlock here and no ``unconfined`` leave to run without."""
        from ..base.landlock import abi_version

        if self.unconfined or abi_version():
            return None
        return ("reading data files needs the kernel's confinement (Landlock), which this machine lacks; "
                "restart phasestem serve with its no-confinement option to read them unconfined")

    # -- life cycle

    @property
    def pids(self) -> list[int]:
        """The process ids of the readers now running (idle or busy)."""
        return [r.pid for r in [*self._idle, *self._busy]]

    def start(self) -> None:
        """Start the readers in the background (from the running event loop)."""
        if self.refusal is None:
            self._tmp = Path(tempfile.mkdtemp(prefix="phasestem-reader-"))
            weakref.finalize(self, shutil.rmtree, self._tmp, ignore_errors=True)  # also without close()
            self._fill()

    async def close(self) -> None:
        """Stop every reader (end of its input, then SIGKILL after 2 s) and remove the temporary folder."""
        self._closed = True
        for task in list(self._tasks):
            task.cancel()
        readers = [*self._idle, *self._busy]
        self._idle.clear()
        for reader in readers:
            with contextlib.suppress(Exception):
                reader.proc.stdin.close()
        for reader in readers:
            try:
                await asyncio.wait_for(reader.reap(), 2.0)
            except asyncio.TimeoutError:
                reader.kill()
                await reader.reap()
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)

    def _fill(self) -> None:
        """Start readers until :attr:`ReaderLimits.workers` run or start."""
        while not self._closed and self._alive < self.limits.workers:
            self._alive += 1
            self._background(self._spawn(delay=min(30.0, 2.0 ** self._failures - 1.0)))

    def _background(self, coro: Awaitable) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _command(self) -> list[str]:
        return [sys.executable, "-I", "-m", READER_MAIN, "--root", str(self.root), "--tmp", str(self._tmp),
                "--memory-mb", str(self.limits.memory_mb), "--threads", str(self.limits.threads),
                "--cpu-seconds", str(self.limits.cpu_seconds),
                "--parent", str(os.getpid()), *(["--unconfined"] if self.unconfined else [])]

    def _environment(self) -> dict[str, str]:
        """The reader's environment: the server's variables a job keeps too (:func:`~.job_isolation.kept_environment`),
        the root as the one folder the HDF5 readers may follow links into, one BLAS thread (no thread may start
        before it confines itself), its temporary folder for everything that caches."""
        from .job_isolation import READ_ROOT_ENV, kept_environment

        env = kept_environment()
        env[READ_ROOT_ENV] = str(self.root)
        threads = str(self.limits.threads)
        env.update(OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS=threads, OMP_NUM_THREADS=threads,
                   MALLOC_ARENA_MAX="2", MPLBACKEND="Agg", TMPDIR=str(self._tmp), MPLCONFIGDIR=str(self._tmp),
                   XDG_CACHE_HOME=str(self._tmp), HF_HUB_OFFLINE="1")
        return env

    async def _spawn(self, delay: float = 0.0) -> None:
        """Start one reader and wait for it to say it is ready; one that fails is retried later (log)."""
        await asyncio.sleep(delay)
        proc = None
        try:
            proc = await asyncio.create_subprocess_exec(
                *self._command(), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                env=self._environment(), cwd=str(self._tmp), start_new_session=True)
            head = parse_header(await asyncio.wait_for(receive_frame(proc.stdout, MAX_HEADER_BYTES), START_SECONDS))
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError, FrameError) as exc:
            reason = stopped_reason(await _stop(proc)) if proc is not None else str(exc)
            self._failures += 1
            log.warning("phasestem serve: a data reader did not start (%s); see its message above", reason)
            self._alive -= 1
            self._fill()
            return
        except asyncio.CancelledError:
            if proc is not None:
                await _stop(proc)
            raise
        self._failures = 0
        self._release(Reader(proc, int(head.get("confined", 0))))

    def _release(self, reader: Reader) -> None:
        """``reader`` is free again: to the request waiting longest, else to the idle ones."""
        self._busy.discard(reader)
        if self._closed:
            reader.kill()
            self._background(reader.reap())
            return
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                self._busy.add(reader)
                waiter.set_result(reader)
                return
        self._idle.append(reader)

    def _discard(self, reader: Reader) -> None:
        """Kill ``reader`` (reaped in the background) and start another in its place."""
        self._busy.discard(reader)
        reader.kill()
        self._background(reader.reap())
        self._alive -= 1
        self._fill()

    async def _take(self, slot: Hashable, what: str, deadline: float) -> Reader:
        """A free reader, preferably the one that read ``slot`` last; 503 when none is free by ``deadline``."""
        for dead in [r for r in self._idle if r.proc.returncode is not None]:  # ended while idle: replaced
            self._idle.remove(dead)
            self._discard(dead)
        if self._idle:
            reader = next((r for r in self._idle if r.last == slot), self._idle[0])
            self._idle.remove(reader)
            self._busy.add(reader)
            return reader
        waiter = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            await asyncio.wait({waiter}, timeout=max(0.0, deadline - asyncio.get_running_loop().time()))
        except BaseException:  # cancelled: a reader handed over meanwhile goes on to the next request
            if waiter.done() and not waiter.cancelled():
                self._release(waiter.result())
            waiter.cancel()
            raise
        if not waiter.done():
            waiter.cancel()
            raise Refused(self._none_free(what), 503)
        return waiter.result()

    def _none_free(self, what: str) -> str:
        if self._failures and not self._busy:
            return f"{what}: no data reader could start (the server's log says why); try again later"
        return f"{what}: all {self.limits.workers} data readers are busy; try again shortly"

    @contextlib.asynccontextmanager
    async def _turn(self, slot: Hashable, what: str, deadline: float):
        """Hold ``slot`` (one request per file at a time); 503 when it is not free by ``deadline``."""
        entry = self._slots.setdefault(slot, [asyncio.Lock(), 0])
        entry[1] += 1
        try:
            left = deadline - asyncio.get_running_loop().time()
            try:
                await asyncio.wait_for(entry[0].acquire(), max(0.0, left))
            except asyncio.TimeoutError:
                raise Refused(f"{what}: another request is reading it; try again shortly", 503) from None
            try:
                yield
            finally:
                entry[0].release()
        finally:
            entry[1] -= 1
            if entry[1] == 0:
                self._slots.pop(slot, None)

    # -- requests

    async def answer(self, task: str, params: dict[str, Any], what: str, slot: Hashable,
                     key: Hashable | None = None) -> bytes:
        """The JSON answer (bytes) of ``task`` with ``params`` from a reader; ``what`` names the file(s) in
        messages, ``slot`` is what one reader at a time may read, ``key`` the answer's cache key (None: not
        cached). A refusal of the reader, or for time or memory, is raised as :class:`Refused`."""
        if self.refusal is not None:
            raise Refused(self.refusal, 503)
        if self._tmp is None:  # an application run without its lifespan (tests): the readers start now
            self.start()
        if key is not None and (cached := self.answers.get(key)) is not None:
            return cached
        deadline = asyncio.get_running_loop().time() + self.limits.seconds + QUEUE_GRACE
        async with self._turn(slot, what, deadline):
            if key is not None and (cached := self.answers.get(key)) is not None:
                return cached  # read by the request this one waited for
            reader = await self._take(slot, what, deadline)
            head, body = await self._ask(reader, {"task": task, "params": params, "what": what}, what, key)
            if head.get("retire"):
                self._discard(reader)
            else:
                reader.last = slot
                self._release(reader)
        if head["status"] == 200:
            if key is not None:
                self.answers.put(key, body)
            return body
        refusal = Refused(str(head.get("error") or f"{what}: the data reader refused it"), head["status"])
        if key is not None and head["status"] == 413:
            self.answers.refuse(key, refusal)
        raise refusal

    async def _ask(self, reader: Reader, request: dict[str, Any], what: str,
                   key: Hashable | None) -> tuple[dict[str, Any], bytes]:
        """``reader``'s answer within the time limit; a reader past it, broken or abandoned (the client left) is
        killed and replaced."""
        seconds = self.limits.seconds
        try:
            return await asyncio.wait_for(reader.ask(request), seconds)
        except asyncio.TimeoutError:
            self._discard(reader)
            refusal = Refused(f"{what}: reading it took longer than {seconds:g} s, so it was stopped (phasestem serve "
                              "--reader-seconds)", 503)
        except (asyncio.IncompleteReadError, ConnectionError, FrameError) as exc:
            returncode = await _returncode(reader)
            self._discard(reader)
            if returncode == -signal.SIGXCPU:
                refusal = Refused(f"{what}: reading it took more than {self.limits.cpu_seconds} s of CPU time, so it "
                                  "was stopped (phasestem serve --reader-seconds)", 503)
            else:
                log.warning("phasestem serve: the data reader of %s failed: %s", what,
                            exc if isinstance(exc, FrameError) else stopped_reason(returncode))
                refusal = Refused(f"{what}: the data reader failed while reading it "
                                  f"({stopped_reason(returncode)})", 503)
        except BaseException:  # cancelled (the client left, the server stops): the reader stops too
            self._discard(reader)
            raise
        if key is not None:
            self.answers.refuse(key, refusal)
        raise refusal


async def _returncode(reader: Reader) -> int | None:
    """The exit status of a reader whose pipe just closed (None if it is still running after a moment)."""
    try:
        return await asyncio.wait_for(asyncio.shield(reader.proc.wait()), 1.0)
    except asyncio.TimeoutError:
        return None


async def _stop(proc: asyncio.subprocess.Process) -> int:
    """Kill ``proc`` where it still runs; its exit status."""
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.kill()
    return await proc.wait()


def file_identity(paths: list[Path]) -> tuple:
    """What names the version of each of ``paths`` for the answer cache: its size and modification time (None where
    it is missing)."""
    out = []
    for path in paths:
        try:
            st = os.stat(path)
        except OSError:
            out.append((str(path), None))
        else:
            out.append((str(path), st.st_size, st.st_mtime_ns))
    return tuple(out)


async def while_connected(request, answer: Awaitable):
    """``await answer``, cancelled when the client of ``request`` (a Starlette request) leaves first: its reader is
    then stopped at once. None where the client left."""
    task = asyncio.ensure_future(answer)
    try:
        while True:
            done, _ = await asyncio.wait({task}, timeout=DISCONNECT_POLL)
            if done:
                return task.result()
            if await request.is_disconnected():
                return None
    finally:
        if not task.done():
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
