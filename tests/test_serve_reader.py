"""The confined readers of ``phasestem serve`` (:mod:`phasestem.serve.reader`), issue 63 item 1 and reproduction 6.

Against a real server: twenty requests for a 12 kB file declaring 1 TiB (a virtual dataset over a 1 MiB source,
mapped 128 times: enough for the HDF5 structure checks, which refuse only a file declaring more than 10,000 times what
its sources map) never hold up the others, cost the server no memory, and leave no reader reading once their clients
are gone. Against a reader process started by hand: the kernel alone keeps it from following external storage or an
external link out of the root, with the HDF5 checks' allowed folder set to the whole disk.
"""
from __future__ import annotations

import asyncio
import json
import os
import struct
import subprocess
import sys
import threading
import time
import urllib.error
from pathlib import Path

import h5py
import numpy as np
import pytest
from serve_workspace import Server, make_workspace

from phasestem.base.landlock import abi_version
from phasestem.recon.synthetic import write_npz
from phasestem.serve.reader import ReaderLimits, ReaderPool
from phasestem.serve.security import Refused

#: the server's --reader-seconds in these tests
READ_SECONDS = 8
#: seconds after its clients left by which no reader reads the file any more (well before READ_SECONDS)
LEAVE_SECONDS = 3.0
#: the normal requests' bound (issue 63's acceptance)
NORMAL_SECONDS = 2.0
#: how much the server's resident memory may grow while the terabyte file is requested
RSS_GROWTH_MIB = 64
#: what the secret outside the root holds (64 bytes: the patterns 2 × 2 × 4 × 4 uint8 read it whole)
SECRET = b"TOP-SECRET-0123456789-abcdefghijklmnopqrstuvwxyz-ABCDEFGHIJKLMN!"

needs_landlock = pytest.mark.skipif(abi_version() == 0, reason="the kernel has no Landlock")


def terabyte_file(root: Path) -> Path:
    """``root/big.h5``: (1024, 1024, 512, 512) float32 (1 TiB) over ``root/tiny_source.h5`` (one 512 × 512
    pattern, 1 MiB) mapped at 128 scan positions; the rest reads as the fill value."""
    shape, pattern = (1024, 1024, 512, 512), (1, 1, 512, 512)
    with h5py.File(root / "tiny_source.h5", "w") as f:
        f.create_dataset("data", data=np.ones(pattern, np.float32))
    layout = h5py.VirtualLayout(shape=shape, dtype="float32")
    source = h5py.VirtualSource("tiny_source.h5", "data", shape=pattern)
    for i in range(128):
        layout[0:1, i:i + 1] = source
    with h5py.File(root / "big.h5", "w", libver="latest") as f:
        f.create_virtual_dataset("patterns", layout, fillvalue=1.0)
    return root / "big.h5"


def secret_files(root: Path, outside: Path) -> dict[str, Path]:
    """``outside/secret.bin`` and ``outside/secret.h5`` (:data:`SECRET`), and in ``root`` a file reaching each:
    ``storage.h5`` (external storage), ``link.h5`` (an external link), ``virtual.h5`` (a virtual dataset)."""
    outside.mkdir(exist_ok=True)
    (outside / "secret.bin").write_bytes(SECRET)
    patterns = np.frombuffer(SECRET, np.uint8).reshape(2, 2, 4, 4)
    with h5py.File(outside / "secret.h5", "w") as f:
        f["patterns"] = patterns
    with h5py.File(root / "storage.h5", "w") as f:
        f.create_dataset("patterns", shape=patterns.shape, dtype="u1", external=[(str(outside / "secret.bin"), 0, 64)])
    with h5py.File(root / "link.h5", "w") as f:
        f["patterns"] = h5py.ExternalLink(str(outside / "secret.h5"), "/patterns")
    layout = h5py.VirtualLayout(shape=patterns.shape, dtype="u1")
    layout[...] = h5py.VirtualSource(str(outside / "secret.h5"), "patterns", shape=patterns.shape)
    with h5py.File(root / "virtual.h5", "w", libver="latest") as f:
        f.create_virtual_dataset("patterns", layout)
    return {name: root / name for name in ("storage.h5", "link.h5", "virtual.h5")}


# ---- processes, seen from /proc ----------------------------------------------------------------------------------


def rss_mib(pid: int) -> float:
    """Resident memory of ``pid`` (MiB, ``VmRSS``)."""
    with open(f"/proc/{pid}/status") as fh:
        line = next(row for row in fh if row.startswith("VmRSS:"))
    return int(line.split()[1]) / 1024


def reader_pids(server_pid: int) -> list[int]:
    """The server's reader processes (its children running ``phasestem.serve.reader_main``)."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as fh:
                ppid = int(fh.read().rsplit(")", 1)[1].split()[1])
            with open(f"/proc/{entry}/cmdline", "rb") as fh:
                cmdline = fh.read()
        except (OSError, IndexError, ValueError):
            continue
        if ppid == server_pid and b"phasestem.serve.reader_main" in cmdline:
            out.append(int(entry))
    return out


def cpu_seconds(pid: int) -> float | None:
    """CPU time ``pid`` used so far (None: gone)."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def holds_open(pid: int, path: Path) -> bool:
    """Whether ``pid`` has ``path`` open."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return False
    for fd in fds:
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") == str(path):
                return True
        except OSError:
            continue
    return False


def busy_readers(server_pid: int, pids: list[int], path: Path) -> list[int]:
    """Those of ``pids`` still alive that used CPU in the last half second, and every reader holding ``path``."""
    before = {pid: cpu_seconds(pid) for pid in pids}
    time.sleep(0.5)
    busy = [pid for pid, t in before.items() if t is not None and (cpu_seconds(pid) or t) - t > 0.05]
    return busy + [pid for pid in reader_pids(server_pid) if holds_open(pid, path)]


class PeakMemory(threading.Thread):
    """Samples a process's resident memory every 50 ms until stopped; ``peak`` (MiB)."""

    def __init__(self, pid: int):
        super().__init__(daemon=True)
        self.pid, self.peak, self.done = pid, rss_mib(pid), threading.Event()

    def run(self) -> None:
        while not self.done.wait(0.05):
            self.peak = max(self.peak, rss_mib(self.pid))


# ---- the server ---------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    root = make_workspace(tmp_path_factory.mktemp("ws"), scan=8)
    terabyte_file(root)
    secret_files(root, tmp_path_factory.mktemp("outside"))
    flags = () if abi_version() else ("--no-kernel-confinement",)  # no Landlock here: the readers run unconfined
    srv = Server(root, "--reader-seconds", str(READ_SECONDS), *flags)
    try:
        status, answer = srv.request("/api/dataset?path=data/scan.npz", timeout=180)  # the readers have started
        assert status == 200, answer
        assert srv.request("/api/info")[0] == 200  # imports torch in the server: before any memory is measured
        yield srv
    finally:
        srv.stop()


def timed(server: Server, path: str, timeout: float = 60) -> tuple[int | None, object, float]:
    """(status, answer, seconds) of a GET; status None where the client gave up after ``timeout`` s."""
    start = time.monotonic()
    try:
        status, answer = server.request(path, timeout=timeout)
    except (TimeoutError, urllib.error.URLError):
        status, answer = None, None
    return status, answer, time.monotonic() - start


NORMAL = ("/api/info", "/api/files?path=data", "/api/dataset?path=data/scan.npz",
          "/api/pattern?path=data/scan.npz&iy={i}&ix=3",
          "/api/virtual?path=data/scan.npz&detector=bf&cy=16&cx=16&r={r}")


def normal_requests_while(server: Server, running: list[threading.Thread]) -> list[tuple[str, int, float]]:
    """Normal requests, one after another, while any of ``running`` runs: (path, status, seconds) of each."""
    out, i = [], 0
    while any(t.is_alive() for t in running):
        path = NORMAL[i % len(NORMAL)].format(i=i % 8, r=2 + i % 7)
        status, _, seconds = timed(server, path, timeout=30)
        out.append((path, status, seconds))
        i += 1
    return out


def test_twenty_requests_for_a_terabyte_file_never_hold_up_the_server(server):
    """Reproduction 6: 20 concurrent /api/dataset requests on the 1 TiB-declared virtual dataset (the main before:
    no answer in 90 s, the server reading on at 3-4 GB), normal requests beside them."""
    pid = server.proc.pid
    before = rss_mib(pid)
    memory = PeakMemory(pid)
    memory.start()
    answers: list[tuple] = []
    clients = [threading.Thread(target=lambda: answers.append(timed(server, "/api/dataset?path=big.h5")))
               for _ in range(20)]
    for client in clients:
        client.start()
    normal = normal_requests_while(server, clients)
    memory.done.set()
    memory.join()

    assert len(answers) == 20
    for status, answer, seconds in answers:  # each one JSON line: took too long (503), or refused
        assert status in (400, 413, 503) and isinstance(answer, dict) and "\n" not in answer["error"], answer
        assert seconds < 2 * READ_SECONDS + 10
    assert any("took longer than" in a[1]["error"] for a in answers), answers[0]
    assert len(normal) >= 10
    slow = [n for n in normal if n[1] != 200 or n[2] > NORMAL_SECONDS]
    assert not slow, slow
    assert memory.peak - before < RSS_GROWTH_MIB, (before, memory.peak)


def test_a_reader_stops_reading_when_its_clients_leave(server):
    """The clients give up after 1 s: the reader of the terabyte file is stopped then, not at its deadline
    (``READ_SECONDS``), and no reader holds the file open."""
    pid = server.proc.pid
    big = server.root / "big.h5"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:  # the readers stopped before are replaced and have started
        readers = reader_pids(pid)
        if len(readers) == 2 and not busy_readers(pid, readers, big):
            break
    clients = [threading.Thread(target=timed, args=(server, f"/api/dataset?path=big.h5&bf={r}", 1.0))
               for r in range(2, 12)]
    for client in clients:
        client.start()
    for client in clients:
        client.join()
    left = time.monotonic()
    busy = busy_readers(pid, readers, big)
    while busy and time.monotonic() - left < LEAVE_SECONDS:
        busy = busy_readers(pid, readers, big)
    assert not busy, f"readers {busy} still reading {time.monotonic() - left:.1f} s after their clients left"
    assert time.monotonic() - left < LEAVE_SECONDS  # its deadline would stop it only READ_SECONDS after it began
    assert timed(server, "/api/pattern?path=data/scan.npz&iy=1&ix=1")[0] == 200


@pytest.mark.parametrize("name", ["storage.h5", "link.h5", "virtual.h5"])
def test_no_byte_of_a_file_outside_the_root_comes_back(server, name):
    """Issue 63 reproduction 1 through the data routes: refused in one line, nothing of the secret answered."""
    for route in ("dataset", "pattern"):
        status, answer, _ = timed(server, f"/api/{route}?path={name}&key=patterns&iy=0&ix=0")
        assert status is not None and 400 <= status < 500, answer
        text = json.dumps(answer)
        assert "TOP-SECRET" not in text and "total" not in answer and "\n" not in answer["error"]


def test_a_file_needing_more_memory_than_a_request_may_use_is_refused_in_one_line(tmp_path):
    """A reader's address space is its libraries plus ``memory_mb``: a 72 MB dataset read whole is refused by a
    reader with 64 MiB to spare (one line naming the memory), read by one with 4 GiB; the small reader still
    answers a small file after."""
    root = tmp_path / "root"
    root.mkdir()
    write_npz(root / "scan.npz", scan_shape=(4, 4), seed=1)
    with h5py.File(root / "wide.h5", "w") as f:
        f.create_dataset("patterns", shape=(1, 2, 3000, 3000), dtype="f4")[...] = 1.0

    async def ask(pool: ReaderPool, name: str) -> tuple[int, str]:
        try:
            await pool.answer("dataset", {"path": str(root / name), "query": {}}, name, name)
        except Refused as exc:
            return exc.status, str(exc)
        return 200, ""

    async def main():
        small = ReaderPool(root, ReaderLimits(seconds=60, memory_mb=64, workers=1), unconfined=True)
        roomy = ReaderPool(root, ReaderLimits(seconds=60, memory_mb=4096, workers=1), unconfined=True)
        small.start()
        roomy.start()
        try:
            return await ask(small, "wide.h5"), await ask(small, "scan.npz"), await ask(roomy, "wide.h5")
        finally:
            await small.close()
            await roomy.close()

    refused, small_file, control = asyncio.run(main())
    assert refused[0] in (400, 413) and "memory" in refused[1] and "\n" not in refused[1], refused
    assert small_file[0] == 200 and control[0] == 200, (small_file, control)


# ---- a reader started by hand ---------------------------------------------------------------------------------------


class ReaderProcess:
    """``python -I -m phasestem.serve.reader_main`` over ``root``, spoken to as the server does."""

    def __init__(self, root: Path, tmp: Path, env: dict[str, str]):
        self.root = root
        self.proc = subprocess.Popen(
            [sys.executable, "-I", "-m", "phasestem.serve.reader_main", "--root", str(root), "--tmp", str(tmp),
             "--memory-mb", "2048", "--threads", "1", "--cpu-seconds", "60", "--parent", str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, cwd=tmp)
        self.ready = self.receive()

    def receive(self) -> dict:
        (size,) = struct.unpack(">Q", self.proc.stdout.read(8))
        return json.loads(self.proc.stdout.read(size))

    def ask(self, task: str, path: Path, query: dict[str, str]) -> dict:
        """The answer (its JSON body) or the header of the refusal."""
        request = json.dumps({"task": task, "params": {"path": str(path), "query": query}, "what": path.name})
        self.proc.stdin.write(struct.pack(">Q", len(request)) + request.encode())
        self.proc.stdin.flush()
        head = self.receive()
        return self.receive() if head["status"] == 200 else head

    def close(self) -> None:
        self.proc.stdin.close()
        self.proc.wait(30)
        self.proc.stdout.close()


def whole_disk_environment(tmp: Path) -> dict[str, str]:
    """A reader's environment with the HDF5 checks' allowed folder the whole disk: nothing but the kernel refuses
    a link out of the root."""
    return {"PATH": os.environ.get("PATH", ""), "PHASESTEM_READ_ROOT": "/", "OPENBLAS_NUM_THREADS": "1",
            "MPLCONFIGDIR": str(tmp), "TMPDIR": str(tmp)}


@needs_landlock
def test_the_kernel_alone_keeps_a_reader_inside_the_root(tmp_path):
    """Issue 63's acceptance, "the kernel layer holds alone": with the HDF5 checks allowing every folder, the same
    request that reads the secret outside the root through external storage, an external link or a virtual
    dataset in an unconfined process fails in the confined reader, and no byte of the secret comes back."""
    root, tmp = tmp_path / "root", tmp_path / "tmp"
    root.mkdir()
    tmp.mkdir()
    files = secret_files(root, tmp_path / "outside")
    query = {"iy": "0", "ix": "0", "key": "patterns"}
    first_total = float(sum(SECRET[:16]))

    unconfined = subprocess.run(  # the control: the reader's own code, without the kernel's confinement
        [sys.executable, "-I", "-c", "import json, sys; from pathlib import Path; "
         "from phasestem.serve.reader_main import Tasks, handle; tasks = Tasks(Path(sys.argv[1])); "
         "print(json.dumps([json.loads(handle(tasks, {'task': 'pattern', 'params': {'path': p, 'query': "
         "json.loads(sys.argv[2])}}, 64)[1] or b'null') for p in sys.argv[3:]]))",
         str(root), json.dumps(query), *map(str, files.values())],
        capture_output=True, text=True, env=whole_disk_environment(tmp), cwd=tmp, timeout=300)
    leaked = json.loads(unconfined.stdout.strip().splitlines()[-1])
    assert [a and a["total"] for a in leaked] == [first_total] * 3, unconfined.stderr[-2000:]

    reader = ReaderProcess(root, tmp, whole_disk_environment(tmp))
    try:
        assert reader.ready["confined"] == abi_version()
        for path in files.values():
            for task in ("pattern", "dataset"):
                answer = reader.ask(task, path, query)
                assert answer.get("status") == 400, (path.name, task, answer)
                assert "TOP-SECRET" not in json.dumps(answer) and "total" not in answer
        assert reader.ask("pattern", root / "storage.h5", {**query, "iy": "1"})["status"] == 400
    finally:
        reader.close()
