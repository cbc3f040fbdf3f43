"""The thread that takes a scan's frames off the detector stream, into memory and into the recording.

It owns the stream's reads and the recording's writes; the session reads ``received`` (frames in memory, raster
order) and the frames below it, which never change once counted. Frames are handed on as soon as they arrive: a
read waits at most :data:`STACK_SECONDS` (the stack bound), whatever the frame rate.

A stop (:meth:`Receiver.stop`: the operator, a stall) does not drop what the connection already holds: the thread
**drains** it first, reading until the stream ends, stays quiet for :meth:`Receiver.quiet_after_stop` s or
:data:`DRAIN_SECONDS` passed, then closes it; ``stop_source`` (a rehearsal's simulator) is stopped first, so that
everything it sent arrives before the end. A broken connection (or a failure of its own, e.g. the recording's disk
full) ends the thread with ``error`` set, the whole frames before it kept; a stream that ends before the scan is
full sets ``ended``.

The readouts come from the frames' own clock (their arrival times): rate and duration from the first frame to the
last, the stall alarm's threshold from the measured frame interval (:attr:`Receiver.stall_seconds`).
"""
from __future__ import annotations

import threading
import time

import numpy as np

from .merlin import StreamError

#: the most one read waits for a frame (s): the stack bound; frames that arrived are handed on at once
STACK_SECONDS = 0.25
#: frames at most in one read
STACK_FRAMES = 512
#: the longest a stop drains the connection (s): a detector that keeps sending is cut there
DRAIN_SECONDS = 2.0
#: the stall alarm before a frame rate is known (s)
FIRST_STALL_SECONDS = 2.0


class Receiver(threading.Thread):
    """Frames of ``stream`` for a scan of ``scan_shape`` and frames of ``frame_shape`` into :attr:`frames`
    (N, H, W), and whole rows into :attr:`recording`, made by ``make_recording(dtype)`` with the first frames
    (a :class:`~phasestem.live.recording.Recording`; None: not recorded). ``stop_source()``: stops the sender
    before a stop drains the connection (a rehearsal's simulator), or None."""

    def __init__(self, stream, scan_shape: tuple[int, int], frame_shape: tuple[int, int], make_recording=None,
                 stop_source=None):
        super().__init__(name="phasestem-live-receiver", daemon=True)
        self.stream, self.make_recording, self.recording = stream, make_recording, None
        self.stop_source = stop_source
        self.scan_shape, self.frame_shape = tuple(scan_shape), tuple(frame_shape)
        self.n = self.scan_shape[0] * self.scan_shape[1]
        self.frames: np.ndarray | None = None  # allocated with the first frames, in their type
        self.arrived = np.full(self.n, np.nan)  # perf_counter() when each frame's last byte came
        self.received = 0
        self.sent = 0  # frames the detector reports sent (the last received frame's sequence number)
        self.started = time.perf_counter()
        self.error: StreamError | None = None
        self.ended = False  # the stream ended before the scan was full
        self.stopped_because: str | None = None  # why the session ended it (a stall, the operator)
        self.drained = 0  # frames read after the stop
        self._stopping = threading.Event()
        self._closed = threading.Event()

    @property
    def done(self) -> bool:
        """No more frames will come (full, ended, broken or stopped and drained)."""
        return self._closed.is_set()

    # ---- the thread ----------------------------------------------------------------------------------------------
    def run(self) -> None:
        try:
            self._receive()
        except StreamError as exc:
            self.error = exc
        except Exception as exc:  # noqa: BLE001 - e.g. the recording's disk full: the stream ends, said, not a hang
            self.error = StreamError(f"{self.stream.address}: receiving stopped after {self.received} frames "
                                     f"({type(exc).__name__}: {exc})")
        finally:
            self.stream.close()
            self._closed.set()

    def _receive(self) -> None:
        drain_end = None
        while self.received < self.n:
            if self._stopping.is_set() and drain_end is None:
                drain_end = time.monotonic() + DRAIN_SECONDS
            if drain_end is not None and time.monotonic() >= drain_end:
                return
            wait = STACK_SECONDS if drain_end is None else self.quiet_after_stop()
            block = self.stream.read(min(STACK_FRAMES, self.n - self.received), wait)
            if block is None:
                self.ended = self.received < self.n
                return
            if len(block) == 0:
                if drain_end is not None:  # quiet after the stop: all that was sent is in
                    return
                continue
            self._keep(block)
            if drain_end is not None:
                self.drained += len(block)

    def _keep(self, block) -> None:
        frames = block.frames
        if self.frames is None:
            self.frames = np.empty((self.n, *self.frame_shape), frames.dtype)
            if self.make_recording is not None:
                self.recording = self.make_recording(frames.dtype)
        a = self.received
        k = min(len(frames), self.n - a)
        self.frames[a:a + k] = frames[:k]
        self.arrived[a:a + k] = block.arrived[:k]
        self.sent = max(self.sent, int(block.sequence[k - 1]))
        self.received = a + k
        sx = self.scan_shape[1]
        rows_before, rows_now = a // sx, (a + k) // sx
        if rows_now > rows_before and self.recording is not None:
            self.recording.write_rows(self.frames[rows_before * sx:rows_now * sx].reshape(
                rows_now - rows_before, sx, *self.frame_shape))

    # ---- readouts from the frames' clock -------------------------------------------------------------------------
    @property
    def frame_rate(self) -> float:
        """Frames per second from the first frame's arrival to the last's (NaN before two came)."""
        k = self.received
        span = self.arrived[k - 1] - self.arrived[0] if k >= 2 else 0.0
        return (k - 1) / span if span > 0 else float("nan")

    @property
    def scan_seconds(self) -> float:
        """The time the received frames took: one frame interval each (0 before two came)."""
        rate = self.frame_rate
        return self.received / rate if np.isfinite(rate) else 0.0

    @property
    def last_frame(self) -> float:
        """perf_counter() of the last frame's arrival (of the receiver's start before one came)."""
        return float(self.arrived[self.received - 1]) if self.received else self.started

    @property
    def quiet_seconds(self) -> float:
        """Seconds since the last frame came (or since the receiver was made)."""
        return time.perf_counter() - self.last_frame

    @property
    def stall_seconds(self) -> float:
        """The stall alarm's threshold: three frame intervals and the stack bound (:data:`FIRST_STALL_SECONDS`
        before a rate is known)."""
        rate = self.frame_rate
        return 3.0 / rate + STACK_SECONDS if np.isfinite(rate) else FIRST_STALL_SECONDS

    @property
    def stalled(self) -> bool:
        """No frame for longer than :attr:`stall_seconds` while more are due."""
        return not self.done and not self._stopping.is_set() and self.quiet_seconds > self.stall_seconds

    def quiet_after_stop(self) -> float:
        """How long a stop's drain waits for one more frame (s): three frame intervals, 0.3–2 s."""
        rate = self.frame_rate
        return float(np.clip(3.0 / rate if np.isfinite(rate) else 2.0, 0.3, 2.0))

    def lags_from(self, positions: np.ndarray, now: float) -> np.ndarray:
        """Seconds from the arrival of the frames at ``positions`` until ``now``."""
        return now - self.arrived[positions]

    # ---- ending --------------------------------------------------------------------------------------------------
    def stop(self, because: str | None = None) -> None:
        """End the scan here: the sender stopped first (``stop_source``), what the connection holds drained, then
        closed (by the thread). ``because``: why (:meth:`end_reason`), None when it is over anyway. Quick: a signal
        handler calls it."""
        if because is not None and self.stopped_because is None and not self.done:
            self.stopped_because = because
        if self.stop_source is not None and not self._stopping.is_set():
            try:
                self.stop_source()
            except Exception:  # noqa: BLE001 - a sender already gone: nothing to stop
                pass
        self._stopping.set()
        if not self.is_alive():  # never started: nothing drains it
            self.stream.close()
            self._closed.set()

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
