"""Arrays as small PNG images for the pages, in the house colour maps and scales (:mod:`phasestem.plot.core`).

:func:`picture` gives an image with what the page needs to draw its colour bar and scale bar beside it: the value
range of the colour scale (linear or log), the colour map as a gradient image, the unit of the values and the size
of a pixel (Å over the scan or the object, mrad on the detector, else pixels, saying so).
"""
from __future__ import annotations

import base64
import functools
import io
import math
from typing import Any

import numpy as np

from ..plot.core import MASKED, log_norm, robust_range


def common_range(arrays) -> tuple[float, float]:
    """One colour scale (vmin, vmax) for several images: :func:`~phasestem.plot.core.robust_range` of them all."""
    return robust_range(np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays]))


def colour_range(img: np.ndarray, vmin: float | None = None, vmax: float | None = None,
                 log: bool = False) -> tuple[float, float]:
    """The (vmin, vmax) :func:`to_png` draws ``img`` between: the house log scale (``log``), else the robust range
    where ``vmin`` or ``vmax`` is None."""
    a = np.asarray(img, dtype=np.float64)
    if log:
        norm = log_norm(a)
        return float(norm.vmin), float(norm.vmax)
    lo, hi = robust_range(a) if vmin is None or vmax is None else (vmin, vmax)
    return float(lo if vmin is None else vmin), float(hi if vmax is None else vmax)


def _encode(rgb: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def to_png(img: np.ndarray, cmap: str = "gray", vmin: float | None = None, vmax: float | None = None,
           log: bool = False) -> bytes:
    """``img`` (H, W) as PNG bytes through ``cmap``: linear between ``vmin`` and ``vmax`` (the robust range where
    None), or ``log`` (the house log scale of patterns, :func:`~phasestem.plot.core.log_norm`). NaN/Inf are drawn in
    :data:`~phasestem.plot.core.MASKED` (a phase without meaning), values ≤ 0 on the log scale in the lowest colour."""
    import matplotlib
    import matplotlib.colors

    a = np.asarray(img, dtype=np.float64)
    if log:
        scaled = np.ma.filled(log_norm(a)(np.where(a > 0, a, np.nan)), 0.0)
    else:
        lo, hi = colour_range(a, vmin, vmax)
        scaled = (a - lo) / (hi - lo if hi > lo else 1.0)
    scaled = np.where(np.isfinite(scaled), np.clip(scaled, 0, 1), 0)
    rgb = (matplotlib.colormaps[cmap](scaled)[..., :3] * 255).astype(np.uint8)
    rgb[~np.isfinite(a)] = (np.asarray(matplotlib.colors.to_rgb(MASKED)) * 255).astype(np.uint8)
    return _encode(rgb)


def _url(png: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png).decode("ascii")


def image(img: np.ndarray, cmap: str = "gray", vmin: float | None = None, vmax: float | None = None,
          log: bool = False) -> str:
    """:func:`to_png` as a ``data:`` URL for an ``<img>``."""
    return _url(to_png(img, cmap, vmin, vmax, log))


@functools.lru_cache(maxsize=16)
def colour_bar(cmap: str) -> str:
    """The colour map ``cmap`` as a ``data:`` URL of a vertical gradient (8 × 256 px, the top the highest value)."""
    import matplotlib

    ramp = np.linspace(1.0, 0.0, 256)[:, None] * np.ones((1, 8))
    return _url(_encode((matplotlib.colormaps[cmap](ramp)[..., :3] * 255).astype(np.uint8)))


def pixel(size: float | None, unit: str, unknown: str = "") -> dict[str, Any]:
    """A pixel's size for the page's scale bar: ``size`` ``unit`` (Å, mrad) where known (finite, > 0), else one
    pixel, ``unit`` ``px`` and ``unknown`` saying why."""
    if size is not None and math.isfinite(size) and size > 0:
        return {"size": float(size), "unit": unit}
    return {"size": 1.0, "unit": "px", "note": unknown or f"{unit} per pixel unknown: in pixels"}


def picture(img: np.ndarray, cmap: str = "gray", vmin: float | None = None, vmax: float | None = None,
            log: bool = False, unit: str = "", label: str = "", px: dict | None = None) -> dict[str, Any]:
    """``img`` as a data URL (``src``) with its colour scale (``vmin``, ``vmax``, ``log``, the colour map as a
    gradient ``bar``, the values' ``unit`` and ``label``), its ``shape`` and the size of a pixel (``pixel``, from
    :func:`pixel`; None: pixels)."""
    a = np.asarray(img, dtype=np.float64)
    lo, hi = colour_range(a, vmin, vmax, log)
    return {"src": image(a, cmap, lo, hi, log), **scale_of(a.shape, cmap, lo, hi, log, unit, label, px)}


def scale_of(shape, cmap: str, vmin: float, vmax: float, log: bool = False, unit: str = "", label: str = "",
             px: dict | None = None) -> dict[str, Any]:
    """What the page draws a colour bar and a scale bar from (see :func:`picture`)."""
    return {"cmap": cmap, "vmin": float(vmin), "vmax": float(vmax), "log": bool(log), "unit": unit, "label": label,
            "bar": colour_bar(cmap), "shape": [int(shape[0]), int(shape[1])],
            "pixel": px if px is not None else pixel(None, "px", "in pixels")}
