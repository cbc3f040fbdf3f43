"""The dataset page: a 4D-STEM file read without calibration, its first look and single patterns.

Reads through :func:`phasestem.io.load` (``require_calibration=False``) and measures with
:func:`phasestem.calibrate.overview.first_look`: everything in detector and scan pixels unless the file says more.
The last few opened datasets and looks are kept (the file's size and modification time are part of the key). All of
it runs in a confined reader process (:mod:`.reader_main`), never in the server, which keeps only the answers.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path
from typing import Any

import numpy as np

from ..plot.core import CMAPS
from .images import picture, pixel
from .security import Refused

#: datasets (and looks) kept open
KEEP = 3
#: virtual images kept (a detector dragged back and forth is not computed again)
KEEP_VIRTUAL = 16


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


def _number(query: dict[str, str], name: str, unit: str = "detector pixels", lo: float = 0.0,
            hi: float = float("inf"), positive: bool = False) -> float | None:
    """An optional number of the query (None where not given): finite, within [lo, hi], > 0 where ``positive``;
    anything else is a 400 naming the field, its unit and the range."""
    text = query.get(name)
    if text in (None, ""):
        return None
    try:
        value = float(text)
    except ValueError:
        raise Refused(f"{name}: expected a number ({unit})", 400) from None
    if not np.isfinite(value) or not lo <= value <= hi or (positive and value <= 0):
        span = f"> {lo:g}" if positive and hi == float("inf") else f"from {lo:g} to {hi:.4g}"
        raise Refused(f"{name}: expected a number ({unit}) {span}", 400)
    return value


class Datasets:
    """Open datasets and answer the dataset page's requests."""

    def __init__(self):
        self._datasets = DatasetCache()
        self._looks = DatasetCache(keep=8)
        self._virtual = DatasetCache(keep=KEEP_VIRTUAL)

    def open(self, path: Path, opts: dict[str, Any]):
        from .. import io

        stat = path.stat()
        key = (str(path), stat.st_size, stat.st_mtime_ns, tuple(sorted(opts.items())))
        return key, self._datasets.get(key, lambda: io.load(path, require_calibration=False, **opts))

    def overview(self, path: Path, query: dict[str, str]) -> dict[str, Any]:
        """Summary, disk and virtual BF / ADF / CoM images (PNG data URLs) of the file at ``path``; detector radii
        ``bf``, ``adf_inner``, ``adf_outer`` (px) from the query, else the defaults of the first look. ``scales``:
        each image's colour scale and pixel size (:func:`~phasestem.serve.images.picture`), the scan's in Å where the
        file or the query's ``step`` (Å) gives it, the detector's in mrad where the file, or the query's
        ``semiangle`` (mrad) over the fitted disk, gives it."""
        from ..calibrate.overview import first_look

        key, ds = self.open(path, reader_options(query))
        radii = (_number(query, "bf"), _number(query, "adf_inner"), _number(query, "adf_outer"))
        look = self._looks.get(key + radii, lambda: first_look(ds, *radii))
        scan_px, det_px = self._pixels(ds, look, query)
        unit = _unit(ds)
        com = look.com * (det_px["size"] if det_px["unit"] == "mrad" else 1.0)
        com_lim = float(np.nanmax(np.abs(com))) or 1.0
        com_unit = "mrad" if det_px["unit"] == "mrad" else "detector px"
        pictures = {
            "mean": picture(look.mean, CMAPS["intensity"], log=True, unit=unit, label="mean pattern",
                            px=det_px),
            "bf": picture(look.bf, "gray", unit=unit, label="virtual bright field", px=scan_px),
            "adf": picture(look.adf, "gray", unit=unit, label="virtual annular dark field", px=scan_px),
            "com_y": picture(com[..., 0], CMAPS["signed"], -com_lim, com_lim, unit=com_unit,
                             label="centre of mass y", px=scan_px),
            "com_x": picture(com[..., 1], CMAPS["signed"], -com_lim, com_lim, unit=com_unit,
                             label="centre of mass x", px=scan_px),
        }
        return {
            "summary": ds.summary(), "describe": look.describe(),
            "scan_shape": list(ds.scan_shape), "pattern_shape": list(ds.pattern_shape),
            "centre": list(look.centre), "radius": look.radius, "note": look.note,
            "bf": look.bf_radius, "adf_inner": look.adf_inner,
            "adf_outer": None if not np.isfinite(look.adf_outer) else look.adf_outer,
            "pixel_mrad": look.pixel_mrad,
            "acquisition": _acquisition(ds),
            "pixels": {"scan": scan_px, "detector": det_px},
            "images": {k: v.pop("src") for k, v in pictures.items()},
            "scales": pictures,
        }

    @staticmethod
    def _pixels(ds, look, query: dict[str, str]) -> tuple[dict, dict]:
        """The scan's and the detector's pixel (:func:`~phasestem.serve.images.pixel`)."""
        step = _number(query, "step", "Å", hi=1e6, positive=True)
        if step is None and all(np.isfinite(ds.scan_step)):
            step = float(np.mean(ds.scan_step))
        scan_px = pixel(step, "Å", "scan step unknown: in scan pixels (give the scan step)")
        mrad = look.pixel_mrad
        semiangle = _number(query, "semiangle", "mrad", hi=1e6, positive=True)
        if semiangle is not None and look.radius and (mrad is None or not ds.angular_sampling):
            mrad = semiangle / look.radius
        det_px = pixel(mrad, "mrad", "detector pixel unknown: in detector pixels (give the semi-angle)")
        return scan_px, det_px

    def virtual(self, path: Path, query: dict[str, str]) -> dict[str, Any]:
        """One virtual detector placed by the page: ``detector`` ``bf`` (a disc of radius ``r`` px), ``adf`` (an
        annulus from ``inner`` to ``outer`` px, no ``outer``: to the detector's edge) or ``com`` (the centre of mass
        within ``r`` px, relative to the centre, descan plane removed), about (``cy``, ``cx``) px on the detector;
        its image(s) with their scales."""
        from ..calibrate.overview import first_look, virtual_image

        key, ds = self.open(path, reader_options(query))
        H, W = ds.pattern_shape
        kind = query.get("detector", "")
        if kind not in ("bf", "adf", "com"):
            raise Refused("detector: expected bf, adf or com", 400)
        cy, cx = _number(query, "cy", hi=H - 1.0), _number(query, "cx", hi=W - 1.0)
        if cy is None or cx is None:
            raise Refused("cy, cx: expected the detector's centre (px)", 400)
        edge = float(np.hypot(H, W))
        if kind == "adf":
            inner, outer = _number(query, "inner", hi=edge), _number(query, "outer", hi=edge)
            if inner is None:
                raise Refused("inner: expected the annulus' inner radius (px)", 400)
            if outer is not None and outer <= inner:
                raise Refused(f"outer: expected more than inner ({inner:g} px)", 400)
            radii = (inner, outer)
        else:
            r = _number(query, "r", hi=edge)
            if r is None or r <= 0:
                raise Refused("r: expected the detector's radius (px, > 0)", 400)
            radii = (r, None)
        spec = (kind, round(cy, 2), round(cx, 2), *(None if v is None else round(v, 2) for v in radii))
        look = self._looks.get(key + (None, None, None), lambda: first_look(ds))
        scan_px, det_px = self._pixels(ds, look, query)
        arrays = self._virtual.get(key + spec, lambda: virtual_image(ds, *spec))
        out: dict[str, Any] = {"detector": kind, "centre": [spec[1], spec[2]]}
        unit = _unit(ds)
        if kind == "com":
            out["r"] = spec[3]
            com = arrays * (det_px["size"] if det_px["unit"] == "mrad" else 1.0)
            lim = float(np.nanmax(np.abs(com))) or 1.0
            unit = "mrad" if det_px["unit"] == "mrad" else "detector px"
            pictures = {f"com_{a}": picture(com[..., i], CMAPS["signed"], -lim, lim, unit=unit,
                                            label=f"centre of mass {a}", px=scan_px) for i, a in enumerate("yx")}
        else:
            if kind == "bf":
                out["r"] = spec[3]
            else:
                out["inner"], out["outer"] = spec[3], spec[4]
            label = "virtual bright field" if kind == "bf" else "virtual annular dark field"
            pictures = {kind: picture(arrays, "gray", unit=unit, label=label, px=scan_px)}
        out["images"] = {k: v.pop("src") for k, v in pictures.items()}
        out["scales"] = pictures
        return out

    def pattern(self, path: Path, query: dict[str, str]) -> dict[str, Any]:
        """The pattern at scan position (``iy``, ``ix``) as an image (linear or ``log``) with its counts and its
        ``scale`` (:func:`~phasestem.serve.images.picture`)."""
        key, ds = self.open(path, reader_options(query))
        try:
            iy, ix = int(query.get("iy", "")), int(query.get("ix", ""))
        except ValueError:
            raise Refused("iy, ix: expected the scan position's row and column", 400) from None
        sy, sx = ds.scan_shape
        if not (0 <= iy < sy and 0 <= ix < sx):
            raise Refused(f"scan position ({iy}, {ix}) outside the scan of {sy} × {sx}", 400)
        pat = ds.get_patterns([iy * sx + ix]).numpy()[0]
        log = query.get("log", "1") not in ("0", "false", "")
        det_px = pixel(None, "mrad")
        if query.get("semiangle") or ds.angular_sampling or ds.semiangle:
            from ..calibrate.overview import first_look

            look = self._looks.get(key + (None, None, None), lambda: first_look(ds))
            det_px = self._pixels(ds, look, query)[1]
        unit = _unit(ds)
        pic = picture(pat, CMAPS["intensity"], log=log, vmin=None if log else 0.0,
                      vmax=None if log else float(pat.max()) or 1.0, unit=unit,
                      label=f"pattern at ({iy}, {ix})", px=det_px)
        return {"iy": iy, "ix": ix, "total": float(pat.sum()), "max": float(pat.max()), "log": log,
                "image": pic.pop("src"), "scale": pic}


def _unit(ds) -> str:
    """The unit of the patterns' values: counts where they are integers, else arbitrary units."""
    dtype = getattr(ds.patterns, "dtype", None)
    return "counts" if dtype is not None and np.issubdtype(dtype, np.integer) else "a.u."


def _acquisition(ds) -> dict[str, Any]:
    """What the file says of the acquisition (None where it does not): what the --auto form starts from."""
    def known(v):
        return float(v) if v is not None and np.isfinite(v) else None

    return {"energy": known(ds.energy), "semiangle": known(ds.semiangle),
            "scan_step": [known(v) for v in ds.scan_step] if all(np.isfinite(ds.scan_step)) else None,
            "angular_sampling": known(np.mean(ds.angular_sampling)) if ds.angular_sampling else None}
