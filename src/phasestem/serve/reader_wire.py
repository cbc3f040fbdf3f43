"""The wire between ``phasestem serve`` and its reader processes (:mod:`.reader`, :mod:`.reader_main`): frames of
an 8-byte big-endian length and that many bytes, over the reader's stdin and stdout.

A request is one frame of JSON (``task``, ``params``, ``what``); an answer a header frame of JSON (``status``, and
``error``, ``retire``) and, for status 200, one frame of the answer's JSON text, passed on to the client as it is.
Nothing but JSON crosses: no pickle, nothing the server would have to trust beyond a size it bounds.
"""
from __future__ import annotations

import asyncio
import json
import struct
from typing import Any, BinaryIO

#: a frame on the pipe: its length (8 bytes, big-endian), then that many bytes
FRAME_HEADER = struct.Struct(">Q")
#: the largest header frame (status, error line) and answer frame (the JSON body) a reader may send
MAX_HEADER_BYTES = 1 << 16
MAX_ANSWER_BYTES = 64 << 20
#: the largest request frame a reader takes
MAX_REQUEST_BYTES = 1 << 20


class FrameError(Exception):
    """A frame over its limit, or not the JSON expected."""


def frame(data: bytes) -> bytes:
    """``data`` as one frame (:data:`FRAME_HEADER`)."""
    return FRAME_HEADER.pack(len(data)) + data


def frame_json(message: dict[str, Any]) -> bytes:
    return frame(json.dumps(message).encode("utf-8"))


async def receive_frame(stream: asyncio.StreamReader, limit: int) -> bytes:
    """One frame from ``stream``; :class:`FrameError` over ``limit`` bytes, ``IncompleteReadError`` at its end."""
    (size,) = FRAME_HEADER.unpack(await stream.readexactly(FRAME_HEADER.size))
    if size > limit:
        raise FrameError(f"a frame of {size:,} bytes (at most {limit:,})")
    return await stream.readexactly(size)


def read_frame(stream: BinaryIO, limit: int) -> bytes | None:
    """One frame from a blocking ``stream`` (None at its end); :class:`FrameError` over ``limit`` bytes."""
    head = stream.read(FRAME_HEADER.size)
    if len(head) < FRAME_HEADER.size:
        return None
    (size,) = FRAME_HEADER.unpack(head)
    if size > limit:
        raise FrameError(f"a frame of {size:,} bytes (at most {limit:,})")
    data = stream.read(size)
    return data if len(data) == size else None


def parse_header(data: bytes) -> dict[str, Any]:
    """A header frame: a JSON object with an integer ``status`` (and ``error``, ``retire``, ``confined``)."""
    try:
        head = json.loads(data)
    except (ValueError, RecursionError):
        raise FrameError("a header that is not JSON") from None
    if not isinstance(head, dict) or not isinstance(head.get("status"), int):
        raise FrameError("a header without a status")
    return head
