"""Detector files written from their documented byte layouts, for the tests (no detector software needed)."""
from __future__ import annotations

import numpy as np


def mib_header(seq: int, h: int, w: int) -> bytes:
    """A 384-byte Merlin frame header (Quantum Detectors manual: comma-separated ASCII, padded)."""
    fields = ["MQ1", f"{seq:06d}", "00384", "01", f"{w:04d}", f"{h:04d}", "U16", "   1x1", "01",
              "2020-05-18 16:51:49.971626", "0.001000", "0", "0", "0",
              "1.200000E+2", "5.110000E+2", *(["0.000000E+0"] * 6),
              "3RX", *(["100"] * 26), "MQ1A", "2020-05-18T14:51:49.971626178Z", "1000000ns", "12"]
    head = (",".join(fields) + ",").encode("ascii")
    assert len(head) <= 384
    return head + b"\x00" * (384 - len(head))


def write_mib(path, frames: np.ndarray, hdr: dict | None = None) -> None:
    n, h, w = frames.shape
    with open(path, "wb") as f:
        for i in range(n):
            f.write(mib_header(i + 1, h, w))
            f.write(frames[i].astype(">u2").tobytes())
    if hdr is not None:
        lines = ["HDR,\t"] + [f"{k}:\t{v}" for k, v in hdr.items()] + ["End\t"]
        path.with_suffix(".hdr").write_text("\n".join(lines) + "\n")


def mib_hdr(n: int, per_trigger: int) -> dict:
    return {"Time and Date Stamp (day, mnth, yr, hr, min, s)": "18/05/2020 16:51:48",
            "Chip ID": "W529_F5,-,-,-", "Frames in Acquisition (Number)": str(n),
            "Frames per Trigger (Number)": str(per_trigger), "Counter Depth (number)": "12"}
