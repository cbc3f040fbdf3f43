"""A Quantum Detectors Merlin stream, read with LiberTEM-live's own connection (``libertem-live``,
``libertem-qd-mpx``): no detector protocol is written here.

:class:`MerlinStream` connects to the Merlin data port (TCP, default 6342), waits until an acquisition is armed
(passive: the Merlin software or the scan engine arms and triggers it, as at the microscope; LiberTEM-live's
simulator ``libertem-live-mib-sim`` replays a ``.mib`` file the same way) and hands the frames over in the order
the detector sends them (the scan's raster order), decoded into NumPy arrays. The rows of each frame are flipped
on arrival, as rsciio, HyperSpy and phasestem's ``.mib`` reader flip a ``.mib`` file's: a parameter file written
for last night's ``.mib`` (``data.flip_y`` …) then reads the stream the same way.
"""
from __future__ import annotations

import socket
import time
from dataclasses import dataclass

import numpy as np

from ..base.errors import PhasestemError
from ..base.extras import require

#: frames the connection gathers into one stack before handing it over (LiberTEM-live's own choice)
FRAME_STACK = 16


class StreamError(PhasestemError):
    """The detector stream could not be opened, or broke off (one line naming the address)."""


@dataclass(frozen=True)
class Acquisition:
    """What the detector announced when it was armed."""

    n_frames: int  # frames in the acquisition (0: continuous, unknown)
    frame_shape: tuple[int, int]  # (H, W) detector pixels
    nav_shape: tuple[int, int] | None  # (rows, cols) of the scan, when the header says
    frames_per_trigger: int


def wait_for_listener(host: str, port: int, timeout: float, gone=lambda: False) -> OSError | None:
    """Wait until ``host``:``port`` accepts a TCP connection (opened and closed again, as LiberTEM-live's own
    connection reconnects before an acquisition): None then, else the last refusal after ``timeout`` s or once
    ``gone()`` says the server will not come."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=1.0).close()
            return None
        except OSError as exc:
            if time.monotonic() >= deadline or gone():
                return exc
            time.sleep(0.2)


class MerlinStream:
    """The data connection to a Merlin detector (or LiberTEM-live's simulator) at ``host``:``data_port``."""

    def __init__(self, host: str = "127.0.0.1", data_port: int = 6342):
        self.host, self.data_port = host, int(data_port)
        self._merlin = self._conn = self._client = None

    @property
    def address(self) -> str:
        return f"merlin://{self.host}:{self.data_port}"

    def open(self, timeout: float) -> Acquisition:
        """Connect and wait at most ``timeout`` s for an armed acquisition; StreamError when none comes."""
        require("libertem_qd_mpx", "phasestem live (a Merlin stream)")
        connection = require("libertem_live.detectors.merlin.connection", "phasestem live (a Merlin stream)")
        refused = wait_for_listener(self.host, self.data_port, timeout)  # LiberTEM-live's would wait forever
        if refused is not None:
            raise StreamError(f"{self.address}: nothing accepted a connection there within {timeout:g} s "
                              f"({refused}); is the Merlin software (or libertem-live-mib-sim) serving data on this "
                              "port?")
        try:
            self._merlin = connection.MerlinDetectorConnection(data_host=self.host, data_port=self.data_port)
            pending = self._merlin.wait_for_acquisition(timeout=timeout)
            config = None if pending is None else pending.header
        except Exception as exc:  # noqa: BLE001 - the library's connection errors are its own classes
            self.close()
            raise StreamError(f"{self.address}: the detector stream could not be opened ({type(exc).__name__}: "
                              f"{exc}); is the Merlin software (or libertem-live-mib-sim) serving data there?"
                              ) from None
        self._conn = self._merlin.get_data_socket()
        if config is None:
            self.close()
            raise StreamError(f"{self.address}: no acquisition was armed within {timeout:g} s (is the detector "
                              "serving data on this port, and the scan started?)")
        import libertem_qd_mpx

        self._client = libertem_qd_mpx.CamClient(self._conn.get_socket_path())
        nav = config.nav_shape()
        return Acquisition(n_frames=int(config.frames_in_acquisition()),
                           frame_shape=tuple(int(s) for s in config.detector_shape()),
                           nav_shape=None if not nav else (int(nav[0]), int(nav[1])),
                           frames_per_trigger=int(config.frames_per_trigger()))

    def read(self, max_frames: int) -> np.ndarray | None:
        """The next frames (k ≤ ``max_frames``, H, W) in the detector's integer type, rows flipped (see the module);
        None when the stream ended; StreamError when it broke off."""
        conn, client = self._conn, self._client  # close() from another thread may clear them meanwhile
        if conn is None or client is None:
            return None
        try:
            stack = conn.get_next_stack(max_size=max_frames)
            if stack is None or len(stack) == 0:
                return None
            shape = tuple(int(s) for s in stack.get_shape())
            out = np.empty((len(stack), *shape), np.dtype(stack.get_dtype_string()))
            try:
                client.decode_range_into_buffer(stack, out, 0, len(stack))
            finally:
                client.done(stack)
        except Exception as exc:  # noqa: BLE001 - PyConnectionError and kin, or a connection closed under us
            raise StreamError(f"{self.address}: the detector connection broke off ({type(exc).__name__}: {exc})"
                              ) from None
        return out[:, ::-1, :]

    def close(self) -> None:
        """Close the connection (idempotent)."""
        for thing in (self._client, self._merlin):
            if thing is not None:
                try:
                    thing.close()
                except Exception:  # noqa: BLE001 - closing a broken connection may raise; nothing left to do
                    pass
        self._client = self._conn = self._merlin = None
