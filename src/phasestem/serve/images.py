"""Arrays as small PNG images for the pages, in the house colour maps and scales (:mod:`phasestem.plot.core`)."""
from __future__ import annotations

import base64
import io

import numpy as np

from ..plot.core import MASKED, log_norm, robust_range


def common_range(arrays) -> tuple[float, float]:
    """One colour scale (vmin, vmax) for several images: :func:`~phasestem.plot.core.robust_range` of them all."""
    return robust_range(np.concatenate([np.asarray(a, dtype=np.float64).ravel() for a in arrays]))


def to_png(img: np.ndarray, cmap: str = "gray", vmin: float | None = None, vmax: float | None = None,
           log: bool = False) -> bytes:
    """``img`` (H, W) as PNG bytes through ``cmap``: linear between ``vmin`` and ``vmax`` (the robust range where
    None), or ``log`` (the house log scale of patterns, :func:`~phasestem.plot.core.log_norm`). NaN/Inf are drawn in
    :data:`~phasestem.plot.core.MASKED` (a phase without meaning), values ≤ 0 on the log scale in the lowest colour."""
    import matplotlib
    import matplotlib.colors
    from PIL import Image

    a = np.asarray(img, dtype=np.float64)
    if log:
        scaled = np.ma.filled(log_norm(a)(np.where(a > 0, a, np.nan)), 0.0)
    else:
        lo, hi = robust_range(a) if vmin is None or vmax is None else (vmin, vmax)
        lo, hi = (lo if vmin is None else vmin), (hi if vmax is None else vmax)
        scaled = (a - lo) / (hi - lo if hi > lo else 1.0)
    scaled = np.where(np.isfinite(scaled), np.clip(scaled, 0, 1), 0)
    rgb = (matplotlib.colormaps[cmap](scaled)[..., :3] * 255).astype(np.uint8)
    rgb[~np.isfinite(a)] = (np.asarray(matplotlib.colors.to_rgb(MASKED)) * 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def image(img: np.ndarray, cmap: str = "gray", vmin: float | None = None, vmax: float | None = None,
          log: bool = False) -> str:
    """:func:`to_png` as a ``data:`` URL for an ``<img>``."""
    return "data:image/png;base64," + base64.b64encode(to_png(img, cmap, vmin, vmax, log)).decode("ascii")
