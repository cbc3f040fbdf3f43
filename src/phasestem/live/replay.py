"""A recorded Merlin scan replayed over the detector's TCP protocol by LiberTEM-live's own simulator
(``libertem-live-mib-sim``, a process of its own on 127.0.0.1), at a frame rate the user sets: a rehearsal of a
live session with last night's ``.mib`` (``phasestem live --replay SCAN.mib --fps 1000``), serve's Live page, the
tests and the benchmark.

The simulator waits to be armed and triggered, as a Merlin does (``--wait-trigger``): :meth:`MibReplay.start_scan`
sends ``STARTACQUISITION`` and ``SOFTTRIGGER`` on its control port (LiberTEM-live's ``MerlinControl``) once the
data connection stands, so it sends one acquisition, never a second one after the first ended.
:meth:`MibReplay.stop_sending` is the operator's stop: the simulator stops after the frame it is sending, closes
the data connection and writes its count of frames sent into its log. It runs in a session of its own (a signal to
phasestem's process group is phasestem's to act on) and dies with the process that started it.

LiberTEM's reader takes every ``.mib`` that shares the file's name prefix as one scan: keep the file in a folder
of its own. The simulator keeps the file in memory below 1 ms a frame (above, it reads the file per frame, as
LiberTEM-live decides).
"""
from __future__ import annotations

import ctypes
import logging
import re
import shutil
import signal
import socket
import subprocess
import sys
from pathlib import Path

from ..base.errors import PhasestemError
from ..base.extras import require
from .merlin import wait_for_listener

log = logging.getLogger("phasestem.live")

#: seconds the simulator may take to listen (it loads LiberTEM and indexes the file first)
START_SECONDS = 120.0
#: seconds the simulator gets to stop after the operator's stop before it is killed
STOP_SECONDS = 5.0


def free_ports(n: int) -> list[int]:
    """``n`` TCP ports of 127.0.0.1 free a moment ago."""
    socks = [socket.create_server(("127.0.0.1", 0)) for _ in range(n)]
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def simulator_account(log_file: str | Path) -> dict:
    """What LiberTEM-live's simulator says in its log (its progress bar's last figures, written once more when the
    acquisition ends or it is stopped): ``sent`` frames and ``fps`` of the last acquisition (0 and NaN before it
    sent any; frames over the seconds since its trigger, so a wait for the client to connect counts in it),
    ``acquisitions`` started."""
    text = Path(log_file).read_text(errors="replace")
    bars = re.findall(r"(\d+)/\d+,\s+([\d.]+) fps", text)
    return {"sent": int(bars[-1][0]) if bars else 0, "fps": float(bars[-1][1]) if bars else float("nan"),
            "acquisitions": text.count("yielding from single scan")}


def _own_session_dying_with_parent() -> None:  # pragma: no cover - runs in the child before exec
    """The child's set-up (its own session: ``start_new_session``): SIGINT acted on (a background job inherits it
    ignored, which would leave :meth:`MibReplay.stop_sending` unheard), SIGKILL when the process that started it
    dies (Linux)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class MibReplay:
    """``libertem-live-mib-sim MIB`` serving a ``scan_shape`` scan at ``fps`` frames/s on free ports of
    127.0.0.1 (:attr:`data_port`), its output appended to ``log``; a context manager (the process is stopped on
    exit). ``mib``: the ``.mib`` (or its ``.hdr``)."""

    def __init__(self, mib: str | Path, scan_shape: tuple[int, int], fps: float, log_file: str | Path):
        require("libertem_live", "phasestem live --replay")
        mib = Path(mib)
        if mib.suffix.lower() == ".hdr":
            mib = mib.with_suffix(".mib")
        if not mib.is_file():
            raise PhasestemError(f"{mib}: no such .mib file to replay")
        self.data_port, self.control_port, trigger = free_ports(3)
        exe = shutil.which("libertem-live-mib-sim") or str(Path(sys.executable).parent / "libertem-live-mib-sim")
        dwell = max(1, int(round(1e6 / fps)))
        cached = ["--cached", "MEM"] if dwell < 1000 else []  # LiberTEM-live drops the cache at ≥ 1 ms a frame
        self._log = open(log_file, "ab")  # an earlier rehearsal's lines stay
        log.info("starting LiberTEM-live's simulator for %s at %g frames/s (it loads LiberTEM and indexes the file "
                 "first: up to %g s; its output goes to %s)", mib, fps, START_SECONDS, log_file)
        self.proc = subprocess.Popen(
            [exe, str(mib), "--nav-shape", *map(str, scan_shape), *cached, "--host", "127.0.0.1",
             "--data-port", str(self.data_port), "--control-port", str(self.control_port), "--trigger-port",
             str(trigger), "--dwelltime", str(dwell), "--wait-trigger"], stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True, preexec_fn=_own_session_dying_with_parent)
        # its control port answers once it listens
        if wait_for_listener("127.0.0.1", self.control_port, START_SECONDS,
                             lambda: self.proc.poll() is not None) is None:
            return
        self.stop()
        raise PhasestemError(f"{mib}: LiberTEM-live's simulator did not start (see {log_file})")

    def start_scan(self) -> None:
        """Arm and trigger the acquisition (``STARTACQUISITION``, ``SOFTTRIGGER`` on the control port)."""
        from libertem_live.detectors.merlin.control import MerlinControl

        with MerlinControl("127.0.0.1", self.control_port, timeout=10.0) as control:
            control.cmd("STARTACQUISITION")
            control.cmd("SOFTTRIGGER")

    def stop_sending(self) -> None:
        """The operator's stop: SIGINT, after which the simulator ends the frame it sends, closes the connection and
        logs its count (idempotent, returns at once)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)

    def stop(self) -> None:
        """Stop the simulator (idempotent): SIGINT, SIGKILL after :data:`STOP_SECONDS`."""
        self.stop_sending()
        try:
            self.proc.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
        self._log.close()

    def __enter__(self) -> MibReplay:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
