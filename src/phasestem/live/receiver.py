"""The thread that takes a scan's frames off the detector stream, into memory and into the recording.

It owns the stream's reads and the recording's writes; the session reads ``received`` (frames in memory, raster
order) and the frames below it, which never change once counted. A broken connection (or a failure of its own,
e.g. the recording's disk full) ends the thread with ``error`` set; a stream that ends before the scan is full
sets ``ended``; :meth:`Receiver.stop` ends it early (the operator stopped: everything received is kept).
"""
from __future__ import annotations

import threading
import time

import numpy as np

from .merlin import FRAME_STACK, StreamError


class Receiver(threading.Thread):
    """Frames of ``stream`` for a scan of ``scan_shape`` and frames of ``frame_shape`` into :attr:`frames`
    (N, H, W), and whole rows into :attr:`recording`, made by ``make_recording(dtype)`` with the first frames
    (a :class:`~phasestem.live.recording.Recording`; None: not recorded)."""

    def __init__(self, stream, scan_shape: tuple[int, int], frame_shape: tuple[int, int], make_recording=None):
        super().__init__(name="phasestem-live-receiver", daemon=True)
        self.stream, self.make_recording, self.recording = stream, make_recording, None
        self.scan_shape, self.frame_shape = tuple(scan_shape), tuple(frame_shape)
        self.n = self.scan_shape[0] * self.scan_shape[1]
        self.frames: np.ndarray | None = None  # allocated with the first frames, in their type
        self.received = 0
        self.row_arrival = np.full(self.scan_shape[0], np.nan)  # perf_counter() when each row's last frame came
        self.started = self.last_frame = time.perf_counter()
        self.first_frame: float | None = None  # perf_counter() of the first frames' arrival
        self.first_count = 0  # frames that came with them
        self.error: StreamError | None = None
        self.ended = False  # the stream ended before the scan was full
        self.stopped_because: str | None = None  # why the session ended it (a stall, the operator)
        self._stopping = threading.Event()

    @property
    def done(self) -> bool:
        """No more frames will come (full, ended, broken or stopped)."""
        return not self.is_alive() and (self.received == self.n or self.ended or self.error is not None
                                        or self._stopping.is_set())

    def run(self) -> None:
        sx = self.scan_shape[1]
        try:
            while self.received < self.n and not self._stopping.is_set():
                block = self.stream.read(min(FRAME_STACK, self.n - self.received))
                if block is None:
                    self.ended = True
                    break
                if self.frames is None:
                    self.frames = np.empty((self.n, *self.frame_shape), block.dtype)
                    if self.make_recording is not None:
                        self.recording = self.make_recording(block.dtype)
                a, k = self.received, len(block)
                self.frames[a:a + k] = block
                now = time.perf_counter()
                if self.first_frame is None:
                    self.first_frame, self.first_count = now, k
                self.received, self.last_frame = a + k, now
                rows_before, rows_now = a // sx, (a + k) // sx
                if rows_now > rows_before:
                    self.row_arrival[rows_before:rows_now] = now
                    if self.recording is not None:
                        self.recording.write_rows(self.frames[rows_before * sx:rows_now * sx].reshape(
                            rows_now - rows_before, sx, *self.frame_shape))
        except StreamError as exc:
            if not self._stopping.is_set():
                self.error = exc
        except Exception as exc:  # noqa: BLE001 - e.g. the recording's disk full: the stream ends, said, not a hang
            self.error = StreamError(f"{self.stream.address}: receiving stopped after {self.received} frames "
                                     f"({type(exc).__name__}: {exc})")

    @property
    def scan_seconds(self) -> float:
        """Seconds from the first frames' arrival to the last's (0 before two stacks came)."""
        return 0.0 if self.first_frame is None else self.last_frame - self.first_frame

    @property
    def frame_rate(self) -> float:
        """Frames per second after the first stack (NaN before a second one came)."""
        t = self.scan_seconds
        return (self.received - self.first_count) / t if t > 0 else float("nan")

    @property
    def quiet_seconds(self) -> float:
        """Seconds since the last frames came (or since the receiver was made)."""
        return time.perf_counter() - self.last_frame

    def stop(self, because: str | None = None) -> None:
        """Stop reading and close the stream (which wakes a blocked read); ``because``: why the scan ends here
        (:meth:`end_reason`), None when it is over anyway."""
        if because is not None and self.stopped_because is None:
            self.stopped_because = because
        self._stopping.set()
        self.stream.close()

    def end_reason(self) -> str | None:
        """Why no more frames come: ``complete``, the broken connection's error, why the session stopped it, or
        ``the stream ended early``; None while frames may still come."""
        if self.received == self.n:
            return "complete"
        if self.error is not None:
            return str(self.error)
        if self.stopped_because is not None:
            return self.stopped_because
        return "the stream ended early" if self.ended else None

    def incomplete_row(self) -> np.ndarray:
        """The frames of the unfinished last row (k, H, W), k may be 0."""
        sx = self.scan_shape[1]
        if self.frames is None:
            return np.zeros((0, *self.frame_shape), np.uint16)
        a = (self.received // sx) * sx
        return self.frames[a:self.received].copy()
