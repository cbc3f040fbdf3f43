"""A Quantum Detectors Merlin data stream (TCP, default port 6342), read here frame by frame.

The Merlin software sends, on its data port, messages ``MPX,<10-digit length>,<payload>`` (the length counts the
comma before the payload): an acquisition header (``HDR,``: ``key:<tab>value`` lines; frames in the acquisition,
frames per trigger, ``ScanX``/``ScanY`` where the scan engine gave them) when the detector is armed, then one
message per frame (``MQ1,<sequence>,<header bytes>,<chips>,<width>,<height>,<pixel type>,…`` and the pixels,
big-endian). :class:`MerlinStream` connects (passive: the Merlin software or the scan engine arms and triggers the
acquisition, as at the microscope; LiberTEM-live's simulator ``libertem-live-mib-sim`` replays a ``.mib`` the same
way), and hands over every whole frame **as soon as its last byte arrived**, with its sequence number (the
detector's own count of frames sent) and its arrival time.

Why not LiberTEM-live's connection (``libertem-qd-mpx``): it gathers frames into shared-memory stacks of ≈ 2 MB
and hands a stack over only when the next frame does not fit (256 frames of 64² pixels: 12.8 s at 20 frames/s),
and it discards the stack it is filling when the connection ends — the frames a stopped scan had already sent.
A stop here loses nothing that arrived (:mod:`.receiver` drains the connection before closing it).

Pixel types: ``U08``/``U16``/``U32`` (the Merlin software's processed frames, what ``.mib`` files and phasestem's
``.mib`` reader hold, any chip layout: the software assembles them). Raw frames (``R64``) are refused in one line.
The rows of each frame are flipped on arrival, as rsciio, HyperSpy and phasestem's ``.mib`` reader flip a ``.mib``
file's: a parameter file written for last night's ``.mib`` (``data.flip_y`` …) then reads the stream the same way.
"""
from __future__ import annotations

import socket
import time
from dataclasses import dataclass

import numpy as np

from ..base.errors import PhasestemError

#: bytes of a message's prefix ``MPX,0000001234,``
PREFIX_BYTES = 15
#: largest message accepted (bytes): a 1024² frame of 32-bit pixels and its header, with room
MAX_MESSAGE = 8 * 1024 * 1024
#: the pixel types of processed frames
PIXEL_TYPES = {"U08": np.dtype(">u1"), "U16": np.dtype(">u2"), "U32": np.dtype(">u4")}


class StreamError(PhasestemError):
    """The detector stream could not be opened, or broke off (one line naming the address)."""


@dataclass(frozen=True)
class Acquisition:
    """What the detector announced when it was armed (and its first frame)."""

    n_frames: int  # frames in the acquisition (0: continuous, unknown)
    frame_shape: tuple[int, int]  # (H, W) detector pixels
    nav_shape: tuple[int, int] | None  # (rows, cols) of the scan, when the header says
    frames_per_trigger: int
    pixel_type: str = "U16"


@dataclass
class Frames:
    """Whole frames as they arrived: ``frames`` (k, H, W) in the detector's integer type (native byte order, rows
    flipped), ``sequence`` (k,) the detector's frame numbers (1 = the first), ``arrived`` (k,) ``perf_counter()``
    when each frame's last byte was read."""

    frames: np.ndarray
    sequence: np.ndarray
    arrived: np.ndarray

    def __len__(self) -> int:
        return len(self.frames)


def wait_for_listener(host: str, port: int, timeout: float, gone=lambda: False) -> OSError | None:
    """Wait until ``host``:``port`` accepts a TCP connection (opened and closed again): None then, else the last
    refusal after ``timeout`` s or once ``gone()`` says the server will not come."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection((host, port), timeout=1.0).close()
            return None
        except OSError as exc:
            if time.monotonic() >= deadline or gone():
                return exc
            time.sleep(0.2)


def parse_acquisition_header(payload: bytes) -> dict[str, str]:
    """The ``key: value`` fields of an acquisition header's payload (``HDR,`` …, tab-separated lines)."""
    fields = {}
    for line in payload.decode("latin-1").splitlines():
        key, sep, value = line.partition(":")
        if sep:
            fields[key.strip()] = value.strip()
    return fields


def _int_field(fields: dict[str, str], key: str, default: int | None = None) -> int | None:
    try:
        return int(fields[key])
    except (KeyError, ValueError):
        return default


class MerlinStream:
    """The data connection to a Merlin detector (or LiberTEM-live's simulator) at ``host``:``data_port``."""

    def __init__(self, host: str = "127.0.0.1", data_port: int = 6342):
        self.host, self.data_port = host, int(data_port)
        self._sock: socket.socket | None = None
        self._buf = bytearray()
        self._pos = 0  # where the unread part of _buf starts
        self._pending: tuple[dict, bytes] | None = None  # the first frame's message, read by open()
        self.acquisition: Acquisition | None = None
        self.last_sequence = 0  # the detector's number of the last frame received (frames it reports sent)
        self._ended = False
        self._error: StreamError | None = None  # met after whole frames: raised by the next read

    @property
    def address(self) -> str:
        return f"merlin://{self.host}:{self.data_port}"

    # ---- opening -------------------------------------------------------------------------------------------------
    def open(self, timeout: float, connected=None) -> Acquisition:
        """Connect and wait at most ``timeout`` s for an armed acquisition and its first frame; StreamError when none
        comes. ``connected()``: called once the connection stands (a rehearsal arms its simulator there)."""
        deadline = time.monotonic() + timeout
        while self._sock is None:
            try:
                self._sock = socket.create_connection((self.host, self.data_port), timeout=1.0)
            except OSError as exc:
                if time.monotonic() >= deadline:
                    raise StreamError(f"{self.address}: nothing accepted a connection there within {timeout:g} s "
                                      f"({exc}); is the Merlin software (or libertem-live-mib-sim) serving data on "
                                      "this port?") from None
                time.sleep(0.2)
        if connected is not None:
            connected()
        header = self._message(deadline)
        if header is None or not header.startswith(b"HDR"):
            self.close()
            what = "the connection closed" if header is None else f"a message starting {header[:4]!r} came"
            raise StreamError(f"{self.address}: no acquisition was armed within {timeout:g} s ({what}; is the "
                              "detector serving data on this port, and the scan started?)")
        fields = parse_acquisition_header(header)
        first = self._message(deadline)
        if first is None or not first.startswith(b"MQ1"):
            self.close()
            raise StreamError(f"{self.address}: the detector was armed but sent no frame within {timeout:g} s")
        meta = self._frame_meta(first)
        self._pending = (meta, first)
        sx, sy = _int_field(fields, "ScanX"), _int_field(fields, "ScanY")
        self.acquisition = Acquisition(
            n_frames=_int_field(fields, "Frames in Acquisition (Number)", 0),
            frame_shape=(meta["height"], meta["width"]),
            nav_shape=(sy, sx) if sx and sy else None,
            frames_per_trigger=_int_field(fields, "Frames per Trigger (Number)", 1),
            pixel_type=meta["type"])
        return self.acquisition

    # ---- frames --------------------------------------------------------------------------------------------------
    def read(self, max_frames: int, wait: float) -> Frames | None:
        """The whole frames that arrived (1 ≤ k ≤ ``max_frames``), waiting at most ``wait`` s for the first of them
        and not at all for more; an empty :class:`Frames` when none came in ``wait`` s; None when the stream ended
        (the acquisition's last frame came, or the detector closed the connection between frames). StreamError when
        it broke off mid-frame or sent what is not a frame."""
        if self._error is not None:
            error, self._error = self._error, None
            raise error
        if self._ended or self._sock is None:
            return None
        out: list[tuple[dict, bytes, float]] = []
        if self._pending is not None:
            meta, payload = self._pending
            self._pending = None
            out.append((meta, payload, time.perf_counter()))
            self.last_sequence = meta["sequence"]
        deadline = time.monotonic() + wait
        try:
            while len(out) < max_frames and not self._ended:
                payload = self._message(deadline if not out else 0.0)
                if payload is None:
                    break
                if payload.startswith(b"HDR"):  # the next acquisition: this one is over
                    self._ended = True
                    break
                out.append((self._frame_meta(payload), payload, time.perf_counter()))
                self.last_sequence = out[-1][0]["sequence"]
                n = self.acquisition.n_frames if self.acquisition else 0
                if n and out[-1][0]["sequence"] >= n:
                    self._ended = True
        except StreamError as exc:
            if not out:
                raise
            self._error = exc  # the whole frames before it first
        if not out:
            return None if self._ended else self._empty()
        return self._decode(out)

    def _empty(self) -> Frames:
        h, w = self.acquisition.frame_shape if self.acquisition else (0, 0)
        return Frames(np.zeros((0, h, w), np.uint16), np.zeros(0, np.int64), np.zeros(0))

    def _decode(self, items: list[tuple[dict, bytes, float]]) -> Frames:
        meta0 = items[0][0]
        h, w, dtype = meta0["height"], meta0["width"], PIXEL_TYPES[meta0["type"]]
        frames = np.empty((len(items), h, w), dtype.newbyteorder("="))
        for i, (meta, payload, _) in enumerate(items):
            if (meta["height"], meta["width"], meta["type"]) != (h, w, meta0["type"]):
                raise StreamError(f"{self.address}: frame {meta['sequence']} is {meta['height']}×{meta['width']} "
                                  f"{meta['type']}, the acquisition's frames {h}×{w} {meta0['type']}")
            frames[i] = np.frombuffer(payload, dtype, h * w, meta["header_bytes"]).reshape(h, w)[::-1]
        sequence = np.array([m["sequence"] for m, _, _ in items], np.int64)
        return Frames(frames, sequence, np.array([t for _, _, t in items]))

    def _frame_meta(self, payload: bytes) -> dict:
        """The fields of a frame message (``MQ1,…``) that place its pixels; StreamError for what is not a frame of
        processed pixels."""
        try:
            parts = bytes(payload[:64]).split(b",")
            meta = {"sequence": int(parts[1]), "header_bytes": int(parts[2]), "width": int(parts[4]),
                    "height": int(parts[5]), "type": parts[6].decode("ascii").strip()}
        except (IndexError, ValueError, UnicodeDecodeError):
            raise StreamError(f"{self.address}: a message that is not a Merlin frame ({bytes(payload[:24])!r}…)"
                              ) from None
        if meta["type"] == "R64":
            raise StreamError(f"{self.address}: the detector sends raw frames (R64); set the Merlin software to "
                              "processed frames (12-bit counter: U16), as phasestem's .mib reader reads them")
        if meta["type"] not in PIXEL_TYPES:
            raise StreamError(f"{self.address}: pixel type {meta['type']!r} of frame {meta['sequence']}: expected "
                              f"one of {', '.join(PIXEL_TYPES)}")
        need = meta["header_bytes"] + meta["width"] * meta["height"] * PIXEL_TYPES[meta["type"]].itemsize
        if len(payload) < need:
            raise StreamError(f"{self.address}: frame {meta['sequence']} holds {len(payload)} bytes, its header "
                              f"announces {need}")
        return meta

    # ---- the wire ------------------------------------------------------------------------------------------------
    def _message(self, deadline: float) -> bytes | None:
        """The next whole message's payload, reading until ``deadline`` (time.monotonic(); 0: only what is at hand
        now); None when none is whole by then, or at the end of the stream between messages (sets the end)."""
        while True:
            buf, pos = self._buf, self._pos
            if len(buf) - pos >= PREFIX_BYTES:
                head = bytes(buf[pos:pos + PREFIX_BYTES])
                if not head.startswith(b"MPX,") or head[14:15] != b",":
                    raise StreamError(f"{self.address}: the stream is not Merlin's protocol (a message starts "
                                      f"{head!r})")
                try:
                    length = int(head[4:14]) - 1
                except ValueError:
                    raise StreamError(f"{self.address}: a message length {head[4:14]!r} is not a number") from None
                if not 0 < length <= MAX_MESSAGE:
                    raise StreamError(f"{self.address}: a message of {length} bytes (at most {MAX_MESSAGE})")
                end = pos + PREFIX_BYTES + length
                if len(buf) >= end:
                    payload = bytes(buf[pos + PREFIX_BYTES:end])
                    self._pos = end
                    return payload
            if not self._receive(deadline):
                return None

    def _receive(self, deadline: float) -> bool:
        """Append what the connection holds to the buffer, waiting until ``deadline`` for something; False when
        nothing came by then or the stream ended (a connection closed mid-message: StreamError)."""
        sock = self._sock
        if sock is None:
            return False
        remaining = deadline - time.monotonic()
        try:
            sock.settimeout(max(remaining, 0.0) if remaining > 0 else 0.0)
            chunk = sock.recv(1 << 20)
        except (BlockingIOError, TimeoutError):
            return False
        except OSError as exc:
            if self._sock is None:  # closed under us (a stop)
                return False
            raise StreamError(f"{self.address}: the detector connection broke off after frame {self.last_sequence} "
                              f"({type(exc).__name__}: {exc})") from None
        if self._pos:  # drop what was read before appending
            del self._buf[:self._pos]
            self._pos = 0
        if not chunk:
            self._ended = True
            if self._buf:
                raise StreamError(f"{self.address}: the detector connection closed mid-frame after frame "
                                  f"{self.last_sequence} ({len(self._buf)} bytes of the next one came)")
            return False
        self._buf += chunk
        return True

    def close(self) -> None:
        """Close the connection (idempotent)."""
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass
