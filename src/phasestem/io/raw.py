"""Raw detector dumps: a file of frames with a given shape and dtype, memory-mapped (lazy).

File layout: ``offset`` header bytes, then N frames, each ``frame_header`` bytes, H·W
pixels of ``dtype`` (row-major, ``order='C'``; ``'F'`` for column-major frames) and
``frame_footer`` bytes. ``footer_rows`` / ``header_rows`` give the per-frame extras in whole
detector rows instead (e.g. the EMPAD: 128 × 128 pixels of float32 plus 2 footer rows per
frame, i.e. frames of 130 × 128 — ``detector='empad'`` sets exactly that). A .raw paired with an EMPAD
.xml beside it is read through that .xml by :mod:`phasestem.io.rosetta` (rsciio's EMPAD reader, with the
scan shape and step the .xml holds) when no ``shape`` is given or ``detector='empad'``; the preset is the
fallback for a .raw without its .xml. The pairing (:func:`empad_xml`): among the .xml files in the .raw's
folder whose ``<raw_file filename="…"/>`` is exactly the .raw's name, the one with the .raw's stem, else
the only one; several others are refused, naming them.

Options:

* ``shape``: (Sy, Sx, H, W), or (N, H, W) (then ``scan_shape`` or a square N), or the frame
  (H, W) alone (N from the file size).
* ``dtype`` (NumPy name; byte order with '<' or '>', e.g. '>u2'); default float32.
* ``offset``, ``frame_header``, ``frame_footer`` (bytes), ``header_rows``, ``footer_rows``.
* ``detector``: a preset (``'empad'``).
* plus the common options (:mod:`phasestem.io._common`); energy and scan step must be given.

A file whose size does not hold a whole number of frames, or fewer frames than the shape
asks for, raises :class:`ShapeError` naming the file and the numbers.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..base.errors import ConfigError, InputFileError, ShapeError
from ..dataset import FourDSTEM
from ._common import PRESETS, dataset_from_reader

#: an EMPAD .xml is a few kB: larger .xml files beside a .raw are not read when looking for its pair
_XML_MAX_BYTES = 1 << 20


def _names_raw(xml: Path, name: str) -> bool:
    """Whether ``xml`` is an EMPAD .xml whose ``<root><raw_file filename=…>`` is exactly ``name``."""
    import xml.etree.ElementTree as ET

    try:
        if xml.stat().st_size > _XML_MAX_BYTES:
            return False
        text = xml.read_bytes()
        if b"raw_file" not in text:
            return False
        node = ET.fromstring(text).find("raw_file")
    except (OSError, ET.ParseError):
        return False
    return node is not None and node.get("filename") == name


def empad_xml(path: Path) -> Path | None:
    """The EMPAD .xml that pairs with the .raw ``path``, or None. Candidates are the .xml files in its folder
    whose ``raw_file`` names it exactly; the one with the same stem wins, else a single candidate; several
    candidates and none with its stem → :class:`InputFileError` naming them (the user picks one)."""
    naming = [xml for xml in sorted(path.parent.glob("*.xml")) if _names_raw(xml, path.name)]
    same_stem = [xml for xml in naming if xml.stem == path.stem]
    if same_stem:
        return same_stem[0]
    if len(naming) > 1:
        raise InputFileError(f"{path}: {len(naming)} EMPAD .xml files beside it name it as their raw file "
                             f"({', '.join(x.name for x in naming)}); load the .xml you mean instead of the .raw, "
                             f"or name it {path.stem}.xml")
    return naming[0] if naming else None


def read(path: str | Path, shape=None, dtype: str = "float32", offset: int = 0, frame_header: int = 0,
         frame_footer: int = 0, header_rows: int = 0, footer_rows: int = 0, order: str = "C",
         detector: str | None = None, **options) -> FourDSTEM:
    """Memory-map a raw dump → :class:`FourDSTEM` (nothing read until asked for)."""
    path = Path(path)
    if detector in (None, "empad", "EMPAD") and (shape is None or detector is not None):
        xml = empad_xml(path)
        if xml is not None:  # an EMPAD acquisition: read it with rsciio through its .xml (scan shape, step)
            from . import rosetta

            if shape is not None and len(shape) == 4:
                options.setdefault("scan_shape", tuple(shape[:2]))
            return rosetta.read(xml, plugin="empad", **options)
    if detector is not None:
        preset = PRESETS.get(detector.lower())
        if preset is None:
            raise ConfigError(f"{path}: unknown detector preset '{detector}'; expected one of {sorted(PRESETS)}")
        shape = shape if shape is not None else preset["shape"]
        dtype = preset["dtype"] if dtype == "float32" else dtype
        footer_rows = footer_rows or preset.get("footer_rows", 0)
    if shape is None:
        raise ConfigError(f"{path}: a raw file needs shape= ((Sy, Sx, H, W), (N, H, W) or the frame (H, W))")
    shape = tuple(int(s) for s in shape)
    if len(shape) not in (2, 3, 4) or min(shape) <= 0:
        raise ConfigError(f"{path}: shape must be (H, W), (N, H, W) or (Sy, Sx, H, W) positive ints, got {shape}")
    try:
        dt = np.dtype(dtype)
    except TypeError:
        raise ConfigError(f"{path}: dtype '{dtype}' is not a NumPy dtype name (e.g. 'float32', '<u2')") from None
    if order.upper() not in ("C", "F"):
        raise ConfigError(f"{path}: order must be 'C' or 'F', got {order!r}")
    H, W = shape[-2:]
    row_bytes = W * dt.itemsize if order.upper() == "C" else H * dt.itemsize
    head = int(frame_header) + int(header_rows) * row_bytes
    foot = int(frame_footer) + int(footer_rows) * row_bytes
    fields = []
    if head:
        fields.append(("head", f"V{head}"))
    frame = (H, W) if order.upper() == "C" else (W, H)
    fields.append(("data", dt, frame))
    if foot:
        fields.append(("foot", f"V{foot}"))
    rec = np.dtype(fields)
    size = path.stat().st_size - int(offset)
    if size < 0 or size % rec.itemsize:
        raise ShapeError(
            f"{path}: {size} bytes after the {offset}-byte header are not a whole number of "
            f"{rec.itemsize}-byte frames ({H}×{W} {dt.name} + {head} + {foot} bytes)"
        )
    n_file = size // rec.itemsize
    n_want = int(np.prod(shape[:-2])) if len(shape) > 2 else n_file
    if n_want > n_file:
        raise ShapeError(f"{path}: the file holds {n_file} frames but shape {shape} needs {n_want}")
    mm = np.memmap(path, dtype=rec, mode="r", offset=int(offset), shape=(n_file,))
    frames = mm["data"][:n_want]  # (N, H, W) view of the memmap — still lazy
    if order.upper() == "F":
        frames = frames.swapaxes(-1, -2)
    if len(shape) == 4:
        patterns = frames.reshape(shape)  # splits the frame axis only: a view, still lazy
        if options.get("scan_shape") is not None and tuple(options["scan_shape"]) != shape[:2]:
            want = tuple(int(s) for s in options["scan_shape"])
            raise ShapeError(f"{path}: shape {shape} holds {shape[0] * shape[1]} patterns but scan_shape {want} "
                             f"needs {want[0] * want[1]}")
    else:
        patterns = frames
    meta = {"format": "raw", "dtype": dt.str, "offset": int(offset), "frame_bytes": rec.itemsize,
            "frames_in_file": int(n_file)}
    return dataset_from_reader(patterns, path, metadata=meta, **options)
