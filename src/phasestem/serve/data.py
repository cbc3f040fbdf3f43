"""The dataset page: a 4D-STEM file read without calibration, its first look and single patterns.

Reads through :func:`phasestem.io.load` (``require_calibration=False``) and measures with
:func:`phasestem.calibrate.overview.first_look`: everything in detector and scan pixels unless the file says more.
The last few opened datasets and looks are kept (the file's size and modification time are part of the key).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from ..plot.core import CMAPS
from .images import image
from .security import Refused

#: datasets (and looks) kept open
KEEP = 3


class DatasetCache:
    """Opened datasets and first looks, least recently used dropped first."""

    def __init__(self, keep: int = KEEP):
        self.keep = keep
        self._items: OrderedDict[tuple, Any] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple, make):
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = make()
        with self._lock:
            self._items[key] = value
            while len(self._items) > self.keep:
                self._items.popitem(last=False)
        return value


def reader_options(query: dict[str, str]) -> dict[str, Any]:
    """Reader options from the page: ``key`` (the patterns' dataset), ``scan_shape`` ("ROWS,COLS"), ``sample``."""
    opts: dict[str, Any] = {}
    if query.get("key"):
        opts["patterns_key"] = query["key"]
    if query.get("scan_shape"):
        try:
            rows, cols = (int(v) for v in query["scan_shape"].replace("x", ",").split(","))
        except ValueError:
            raise Refused("scan_shape: expected ROWS,COLS", 400) from None
        opts["scan_shape"] = (rows, cols)
    if query.get("sample"):
        try:
            opts["sample"] = int(query["sample"])
        except ValueError:
            raise Refused("sample: expected an integer", 400) from None
    return opts


def _number(query: dict[str, str], name: str) -> float | None:
    text = query.get(name)
    if text in (None, ""):
        return None
    try:
        value = float(text)
    except ValueError:
        raise Refused(f"{name}: expected a number of detector pixels", 400) from None
    if not np.isfinite(value) or value < 0:
        raise Refused(f"{name}: expected a number ≥ 0", 400)
    return value


class Datasets:
    """Open datasets and answer the dataset page's requests."""

    def __init__(self):
        self._datasets = DatasetCache()
        self._looks = DatasetCache(keep=8)

    def open(self, path: Path, opts: dict[str, Any]):
        from .. import io

        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns, tuple(sorted(opts.items())))
        return key, self._datasets.get(key, lambda: io.load(path, require_calibration=False, **opts))

    def overview(self, path: Path, query: dict[str, str]) -> dict[str, Any]:
        """Summary, disk and virtual BF / ADF / CoM images (PNG data URLs) of the file at ``path``; detector radii
        ``bf``, ``adf_inner``, ``adf_outer`` (px) from the query, else the defaults of the first look."""
        from ..calibrate.overview import first_look

        key, ds = self.open(path, reader_options(query))
        radii = (_number(query, "bf"), _number(query, "adf_inner"), _number(query, "adf_outer"))
        look = self._looks.get(key + radii, lambda: first_look(ds, *radii))
        com = look.com
        com_lim = float(np.nanmax(np.abs(com))) or 1.0
        return {
            "summary": ds.summary(), "describe": look.describe(),
            "scan_shape": list(ds.scan_shape), "pattern_shape": list(ds.pattern_shape),
            "centre": list(look.centre), "radius": look.radius, "note": look.note,
            "bf": look.bf_radius, "adf_inner": look.adf_inner,
            "adf_outer": None if not np.isfinite(look.adf_outer) else look.adf_outer,
            "pixel_mrad": look.pixel_mrad,
            "images": {
                "mean": image(look.mean, CMAPS["intensity"], log=True),
                "bf": image(look.bf, "gray"), "adf": image(look.adf, "gray"),
                "com_y": image(com[..., 0], "RdBu_r", -com_lim, com_lim),
                "com_x": image(com[..., 1], "RdBu_r", -com_lim, com_lim),
            },
        }

    def pattern(self, path: Path, query: dict[str, str]) -> dict[str, Any]:
        """The pattern at scan position (``iy``, ``ix``) as an image (linear or ``log``) with its counts."""
        _, ds = self.open(path, reader_options(query))
        try:
            iy, ix = int(query.get("iy", "")), int(query.get("ix", ""))
        except ValueError:
            raise Refused("iy, ix: expected the scan position's row and column", 400) from None
        sy, sx = ds.scan_shape
        if not (0 <= iy < sy and 0 <= ix < sx):
            raise Refused(f"scan position ({iy}, {ix}) outside the scan of {sy} × {sx}", 400)
        pat = ds.get_patterns([iy * sx + ix]).numpy()[0]
        log = query.get("log", "1") not in ("0", "false", "")
        return {"iy": iy, "ix": ix, "total": float(pat.sum()), "max": float(pat.max()), "log": log,
                "image": image(pat, CMAPS["intensity"], log=log, vmin=None if log else 0.0,
                               vmax=None if log else float(pat.max()) or 1.0)}
