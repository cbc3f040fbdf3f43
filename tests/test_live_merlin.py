"""The Merlin stream's reader (``phasestem.live.merlin``) and the receiver thread (``phasestem.live.receiver``) on
streams scripted here: a real TCP server on 127.0.0.1 writing Merlin's messages as the manual describes them
(``MPX,<length>,`` + an ``HDR,`` acquisition header, then ``MQ1,…`` frames), written byte by byte from the
protocol, not through any detector library; and the receiver's readouts and stall alarm against a stream of known
timing."""
from __future__ import annotations

import socket
import threading
import time

import numpy as np
import pytest
from detector_files import mib_header

from phasestem.live.merlin import Frames, MerlinStream, StreamError
from phasestem.live.receiver import STACK_SECONDS, Receiver


def _message(payload: bytes) -> bytes:
    return b"MPX,%010d," % (len(payload) + 1) + payload


def _acquisition_header(n: int, cols: int, scan: tuple[int, int] | None = None) -> bytes:
    lines = ["HDR,", f"Frames in Acquisition (Number):\t{n}", f"Frames per Trigger (Number):\t{cols}"]
    if scan is not None:
        lines += [f"ScanX:\t{scan[1]}", f"ScanY:\t{scan[0]}"]
    return ("\n".join(lines) + "\nEnd\t").encode("latin-1")


def _frame(seq: int, frame: np.ndarray, pixel_type: str = "U16") -> bytes:
    head = mib_header(seq, *frame.shape)
    if pixel_type != "U16":
        head = head.replace(b",U16,", f",{pixel_type},".encode())
    return head + frame[::-1].astype(">u2").tobytes()  # a .mib's rows upside down, as the detector sends them


class ScriptedDetector:
    """A TCP server on a free port of 127.0.0.1 that sends ``chunks`` (bytes) to the first client, waiting
    ``pause`` s before each (a float in the list: that pause instead), then closes."""

    def __init__(self, chunks: list):
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.chunks = chunks
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        conn, _ = self.server.accept()
        with conn:
            for chunk in self.chunks:
                if isinstance(chunk, float):
                    time.sleep(chunk)
                else:
                    conn.sendall(chunk)
        self.server.close()


FRAMES = np.arange(5 * 6 * 4, dtype=np.uint16).reshape(5, 6, 4) * 7


def test_frames_arrive_whole_with_their_numbers_and_a_cut_mid_frame_keeps_the_whole_ones():
    """Every whole frame is handed over as it came (rows flipped back, the detector's sequence numbers), the
    header's scan read; a connection closed mid-frame is an error only after the whole frames before it."""
    whole = b"".join(_message(_frame(i + 1, f)) for i, f in enumerate(FRAMES[:3]))
    cut = _message(_frame(4, FRAMES[3]))[:-10]
    det = ScriptedDetector([_message(_acquisition_header(5, 2, (3, 2))), whole, cut])
    stream = MerlinStream("127.0.0.1", det.port)
    acq = stream.open(10)
    assert acq.n_frames == 5 and acq.frame_shape == (6, 4) and acq.nav_shape == (3, 2) and acq.pixel_type == "U16"
    got = []
    with pytest.raises(StreamError, match="closed mid-frame after frame 3"):
        while True:
            block = stream.read(16, 1.0)
            assert block is not None
            got.append(block)
    frames = np.concatenate([b.frames for b in got])
    np.testing.assert_array_equal(frames, FRAMES[:3])
    assert frames.dtype == np.uint16 and list(np.concatenate([b.sequence for b in got])) == [1, 2, 3]
    assert stream.last_sequence == 3


def test_a_stream_that_ends_between_frames_ends_and_one_that_waits_gives_nothing_yet():
    det = ScriptedDetector([_message(_acquisition_header(5, 2)), _message(_frame(1, FRAMES[0])), 0.6,
                            _message(_frame(2, FRAMES[1]))])
    stream = MerlinStream("127.0.0.1", det.port)
    stream.open(10)
    first = stream.read(16, 0.2)
    assert len(first) == 1
    t0 = time.monotonic()
    empty = stream.read(16, 0.2)  # nothing within the wait: an empty stack, at once after the wait
    assert isinstance(empty, Frames) and len(empty) == 0 and time.monotonic() - t0 < 0.5
    second = stream.read(16, 2.0)
    assert list(second.sequence) == [2]
    assert stream.read(16, 2.0) is None  # closed between frames: the end
    assert stream.read(16, 2.0) is None


@pytest.mark.parametrize("chunks, words", [
    ([_message(_acquisition_header(2, 2)), _message(_frame(1, FRAMES[0], "R64"))], "raw frames (R64)"),
    ([_message(_acquisition_header(2, 2)), _message(_frame(1, FRAMES[0], "F32"))], "pixel type 'F32'"),
    ([b"GARBAGEGARBAGEGARBAGE"], "not Merlin's protocol"),
    ([_message(_acquisition_header(2, 2))], "armed but sent no frame"),
])
def test_what_is_not_a_stream_of_processed_frames_is_one_line(chunks, words):
    det = ScriptedDetector(chunks)
    with pytest.raises(StreamError, match=words.replace("(", r"\(").replace(")", r"\)")) as info:
        MerlinStream("127.0.0.1", det.port).open(3)
    assert f"merlin://127.0.0.1:{det.port}" in str(info.value) and "\n" not in str(info.value)


class TimedStream:
    """A stream (the reader's interface) giving one frame every ``interval`` s, going quiet after ``quiet_after``
    frames for ``quiet`` s; ``n`` frames in all."""

    address = "scripted://"

    def __init__(self, n: int, interval: float, quiet_after: int | None = None, quiet: float = 0.0):
        self.n, self.interval, self.quiet_after, self.quiet = n, interval, quiet_after, quiet
        self.sent, self.closed, self.t0 = 0, False, time.perf_counter()
        self.due = self.t0

    def read(self, max_frames: int, wait: float) -> Frames | None:
        if self.closed or self.sent == self.n:
            return None
        delay = self.due - time.perf_counter()
        if delay > wait:
            time.sleep(wait)
            return Frames(np.zeros((0, 2, 2), np.uint16), np.zeros(0, np.int64), np.zeros(0))
        time.sleep(max(delay, 0))
        self.sent += 1
        self.due += self.interval + (self.quiet if self.sent == self.quiet_after else 0.0)
        return Frames(np.full((1, 2, 2), self.sent, np.uint16), np.array([self.sent]),
                      np.array([time.perf_counter()]))

    def close(self) -> None:
        self.closed = True


def _watch(receiver: Receiver, seconds: float) -> list[tuple[float, bool]]:
    """(perf_counter, stalled) every 5 ms for ``seconds``."""
    seen, end = [], time.perf_counter() + seconds
    while time.perf_counter() < end:
        seen.append((time.perf_counter(), receiver.stalled))
        time.sleep(0.005)
    return seen


def test_the_stall_alarm_follows_the_frame_rate_and_rings_only_on_a_stall():
    """20 frames/s: no alarm on the steady stream; once the frames stop, the alarm within three frame intervals
    and the stack bound of the last frame; rate and duration by the frames' clock."""
    steady = Receiver(TimedStream(30, 0.05), (3, 10), (2, 2))
    steady.start()
    assert not any(s for _, s in _watch(steady, 1.2))
    steady.join(5)
    assert steady.received == 30 and steady.sent == 30
    assert abs(steady.frame_rate - 20) < 1 and abs(steady.scan_seconds - 1.5) < 0.08

    stalling = Receiver(TimedStream(30, 0.05, quiet_after=10, quiet=1.5), (3, 10), (2, 2))
    stalling.start()
    seen = _watch(stalling, 1.6)
    rang = [t for t, s in seen if s]
    assert rang, "no alarm in a 1.5 s stall"
    last_frame = float(stalling.arrived[9])
    assert rang[0] - last_frame <= 3 * 0.05 + STACK_SECONDS + 0.05, rang[0] - last_frame
    assert rang[0] - last_frame >= 3 * 0.05  # not before three frame intervals
    stalling.stop("stalled")
    stalling.join(5)


def test_a_stop_drains_what_was_sent_before_closing():
    """A stop records the frames still on their way (the sender stopped first, as a rehearsal's simulator is), and
    a stop before any frame records nothing and still ends."""
    stream = TimedStream(40, 0.02)
    stopped = threading.Event()
    receiver = Receiver(stream, (4, 10), (2, 2), stop_source=lambda: (stopped.set(), setattr(stream, "n", 25)))
    receiver.start()
    while receiver.received < 15:
        time.sleep(0.005)
    receiver.stop("stopped by the operator")
    receiver.join(5)
    assert stopped.is_set() and receiver.done and receiver.received == 25 and receiver.sent == 25
    assert receiver.end_reason() == "stopped by the operator" and receiver.drained >= 1
    assert len(receiver.incomplete_row()) == 5
    np.testing.assert_array_equal(receiver.frames[:25, 0, 0], np.arange(1, 26))

    idle = Receiver(TimedStream(10, 5.0), (1, 10), (2, 2))
    idle.stop("stopped by the operator")
    assert idle.done and idle.received == 0 and len(idle.incomplete_row()) == 0
