"""A recorded Merlin scan replayed over the detector's TCP protocol by LiberTEM-live's own simulator
(``libertem-live-mib-sim``, a process of its own on 127.0.0.1), at a frame rate the user sets: a rehearsal of a
live session with last night's ``.mib`` (``phasestem live --replay SCAN.mib --fps 1000``), the tests and the
benchmark.

LiberTEM's reader takes every ``.mib`` that shares the file's name prefix as one scan: keep the file in a folder
of its own. The simulator keeps the file in memory below 1 ms a frame (above, it reads the file per frame, as
LiberTEM-live decides).
"""
from __future__ import annotations

import shutil
import socket
import subprocess
import sys
from pathlib import Path

from ..base.errors import PhasestemError
from ..base.extras import require
from .merlin import wait_for_listener

#: seconds the simulator may take to listen (it loads LiberTEM and indexes the file first)
START_SECONDS = 120.0


def free_ports(n: int) -> list[int]:
    """``n`` TCP ports of 127.0.0.1 free a moment ago."""
    socks = [socket.create_server(("127.0.0.1", 0)) for _ in range(n)]
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


class MibReplay:
    """``libertem-live-mib-sim MIB`` serving a ``scan_shape`` scan at ``fps`` frames/s on free ports of
    127.0.0.1 (:attr:`data_port`), its output appended to ``log``; a context manager (the process is killed on exit)."""

    def __init__(self, mib: str | Path, scan_shape: tuple[int, int], fps: float, log: str | Path):
        require("libertem_live", "phasestem live --replay")
        mib = Path(mib)
        if not mib.is_file():
            raise PhasestemError(f"{mib}: no such .mib file to replay")
        self.data_port, control, trigger = free_ports(3)
        exe = shutil.which("libertem-live-mib-sim") or str(Path(sys.executable).parent / "libertem-live-mib-sim")
        dwell = max(1, int(round(1e6 / fps)))
        cached = ["--cached", "MEM"] if dwell < 1000 else []  # LiberTEM-live drops the cache at ≥ 1 ms a frame
        self._log = open(log, "ab")  # an earlier rehearsal's lines stay
        self.proc = subprocess.Popen(
            [exe, str(mib), "--nav-shape", *map(str, scan_shape), *cached, "--host", "127.0.0.1",
             "--data-port", str(self.data_port), "--control-port", str(control), "--trigger-port", str(trigger),
             "--dwelltime", str(dwell)], stdout=self._log, stderr=subprocess.STDOUT)
        # its control port answers once it listens (the data port would start sending)
        if wait_for_listener("127.0.0.1", control, START_SECONDS, lambda: self.proc.poll() is not None) is None:
            return
        self.stop()
        raise PhasestemError(f"{mib}: LiberTEM-live's simulator did not start (see {log})")

    def stop(self) -> None:
        """Kill the simulator (idempotent): to the client, the connection breaks off."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()

    def __enter__(self) -> MibReplay:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
