"""The house style of every phasestem figure and its building blocks.

One style (:data:`STYLE`, applied by :func:`styled`), one colour map per kind of quantity
(:data:`CMAPS`), images in physical units with a scale bar (:func:`show_image`), diffraction patterns on a
log scale centred on zero frequency (:func:`show_pattern`), colour bars with units beside every image, and
one atomic PNG writer (:func:`save_figure`).
"""
from __future__ import annotations

import functools
import math
import os
from pathlib import Path

import numpy as np

#: matplotlib settings of every phasestem figure (applied by :func:`styled`)
STYLE = {
    "font.size": 8,
    "axes.titlesize": 8,
    "axes.labelsize": 8,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "legend.fontsize": 7,
    "figure.titlesize": 9,
    "axes.linewidth": 0.6,
    "lines.linewidth": 1.0,
    "image.interpolation": "nearest",
    "image.origin": "upper",
    "figure.dpi": 100,
    "savefig.dpi": 150,
}

#: one colour map per kind of quantity
CMAPS = {
    "phase": "gray",  # object phase (rad), amplitude
    "intensity": "inferno",  # diffraction patterns, probe amplitude, diffractograms, virtual images
    "cyclic": "hsv",  # wrapped phases (probe); where a phase means nothing it is drawn in MASKED
    "signed": "RdBu_r",  # differences, centre-of-mass components
    "field": "viridis",  # other maps over the scan (dark field, residuals)
}

#: colour of masked pixels (a phase where the amplitude is too small to give it a meaning)
MASKED = "0.88"

#: colour of the text and bar of scale bars (on a translucent black frame, readable on any image)
SCALEBAR_COLOR = "white"


def pyplot():
    """``matplotlib.pyplot`` on the Agg backend unless a display or a notebook backend is there."""
    import matplotlib

    if not os.environ.get("DISPLAY") and "inline" not in matplotlib.get_backend() \
            and "widget" not in matplotlib.get_backend().lower() and "ipympl" not in matplotlib.get_backend():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def styled(fn):
    """Run a figure builder under :data:`STYLE` (the style is read when artists are made, so the whole builder
    runs inside it)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        plt = pyplot()
        with plt.rc_context(STYLE):
            return fn(*args, **kwargs)

    return wrapper


def save_figure(fig, path, dpi: int | None = None, close: bool = False) -> Path:
    """Write ``fig`` to ``path`` atomically (:func:`phasestem.base.safety.atomic_file`); optionally close it. The format
    is the suffix's (matplotlib's default format without one)."""
    from ..base.safety import atomic_file

    path = Path(path)
    fmt = path.suffix[1:].lower() or pyplot().rcParams["savefig.format"]
    with atomic_file(path, field="figure") as tmp:
        fig.savefig(tmp, dpi=dpi or STYLE["savefig.dpi"], bbox_inches="tight", format=fmt)
    if close:
        pyplot().close(fig)
    return path


def save_if_asked(fig, path):
    """``fig`` written to ``path`` (:func:`save_figure`) when a path is given; ``fig`` returned either way."""
    if path is not None:
        save_figure(fig, path)
    return fig


def finished(fig, path, *titles: str, w_pad: float | None = None):
    """``fig`` with its non-empty ``titles`` as the title (a line each), laid out and :func:`save_if_asked`."""
    if any(titles):
        fig.suptitle("\n".join(t for t in titles if t))
    fig.tight_layout(w_pad=w_pad)
    return save_if_asked(fig, path)


def to_numpy(x) -> np.ndarray:
    """A torch tensor or array-like as a NumPy array."""
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


# ---- ranges and lengths -----------------------------------------------------------------------
def nice_length(span: float, fraction: float = 0.2) -> float:
    """A round length (1, 2 or 5 × 10ⁿ) close to ``fraction`` of ``span`` (for scale bars)."""
    target = max(abs(span) * fraction, 1e-12)
    power = 10.0 ** math.floor(math.log10(target))
    for m in (5.0, 2.0, 1.0):
        if m * power <= target * 1.5:
            return m * power
    return power


def robust_range(img: np.ndarray, low: float = 0.5, high: float = 99.5) -> tuple[float, float]:
    """(vmin, vmax) at the ``low`` and ``high`` percentiles of the finite values (a single value widened)."""
    v = np.asarray(img, dtype=np.float64)
    v = v[np.isfinite(v)]
    if v.size == 0:
        return 0.0, 1.0
    lo, hi = (float(x) for x in np.percentile(v, [low, high]))
    if hi <= lo:
        lo, hi = lo - 0.5 * max(abs(lo), 1e-12), hi + 0.5 * max(abs(hi), 1e-12)
    return lo, hi


def log_norm(img: np.ndarray, floor: float = 1e-4):
    """Logarithmic colour scale for intensities: up to the largest value of the 3 × 3 median-filtered image (hot
    pixels saturate, the disk does not), down to the 1st percentile of the positive values but no further than
    ``floor`` × the top (zeros and the noise floor do not stretch it)."""
    from matplotlib.colors import LogNorm
    from scipy.ndimage import median_filter

    v = np.asarray(img, dtype=np.float64)
    pos = v[np.isfinite(v) & (v > 0)]
    if pos.size == 0:
        return LogNorm(vmin=1e-3, vmax=1.0)
    # the top of the scale from the 3 × 3 median: a few hot pixels must not push the disk down the scale
    vmax = float(np.nanmax(median_filter(np.where(np.isfinite(v), v, 0), size=3))) if v.ndim == 2 else 0.0
    vmax = vmax if vmax > 0 else float(pos.max())
    vmin = max(float(np.percentile(pos, 1)), vmax * floor)
    return LogNorm(vmin=min(vmin, vmax * 0.5), vmax=vmax)


# ---- building blocks ------------------------------------------------------------------------------
def add_colorbar(im, ax, label: str | None = None, extend: str = "neither"):
    """A colour bar as tall as ``ax``'s image, right of it, labelled with the quantity and its unit."""
    from mpl_toolkits.axes_grid1 import make_axes_locatable

    fig = ax.figure
    cax = make_axes_locatable(ax).append_axes("right", size="5%", pad=0.04)
    cax.set_label("<colorbar>")  # as matplotlib names the colour bars it makes
    cb = fig.colorbar(im, cax=cax, extend=extend)
    if label:
        cb.set_label(label)
    cb.ax.tick_params(labelsize=STYLE["ytick.labelsize"], length=2)
    cb.outline.set_linewidth(0.4)
    return cb


def _luminance_under_bar(image) -> float:
    """Mean luminance (0 dark … 1 light) of the lower-left corner of an ``AxesImage`` as drawn (masked pixels in
    the colour map's 'bad' colour)."""
    arr = np.ma.masked_invalid(np.ma.asarray(image.get_array()))
    if arr.ndim != 2 or arr.size == 0:
        return 0.0
    h, w = arr.shape
    corner = arr[h - max(1, h // 6):, : max(1, w // 3)]
    rgba = image.cmap(image.norm(corner))
    return float(np.mean(rgba[..., :3] @ np.array([0.299, 0.587, 0.114])))


def add_scalebar(ax, length: float, label: str, loc: str = "lower left", image=None):
    """A scale bar of ``length`` data units labelled ``label`` (an ``AnchoredSizeBar`` with gid 'scalebar'):
    white on a dark corner, black on a light one (of ``image``, an ``AxesImage``; white without one)."""
    from matplotlib import patheffects
    from mpl_toolkits.axes_grid1.anchored_artists import AnchoredSizeBar

    light = image is not None and _luminance_under_bar(image) > 0.55
    color, edge = ("black", "white") if light else (SCALEBAR_COLOR, "black")
    x0, x1 = ax.get_xlim()
    y0, y1 = ax.get_ylim()
    bar = AnchoredSizeBar(ax.transData, length, label, loc, pad=0.3, borderpad=0.4, sep=2,
                          color=color, frameon=False, size_vertical=abs(y1 - y0) * 0.015,
                          fontproperties={"size": STYLE["font.size"], "weight": "bold"})
    stroke = [patheffects.withStroke(linewidth=1.5, foreground=edge)]
    for child in bar.findobj():
        if hasattr(child, "set_path_effects") and child is not bar:
            child.set_path_effects(stroke)
    bar.set_gid("scalebar")
    ax.add_artist(bar)
    return bar


def scalebars(ax) -> list:
    """The scale bars of ``ax`` (the artists :func:`add_scalebar` added)."""
    return [a for a in ax.artists if a.get_gid() == "scalebar"]


def bare_axes(ax) -> None:
    """An image panel's axes without ticks, its frame thin."""
    ax.set_xticks([])
    ax.set_yticks([])
    for s in ax.spines.values():
        s.set_linewidth(0.4)


def show_image(ax, img, pixel: float | tuple[float, float] | None = None, unit: str = "Å", cmap: str | None = None,
               label: str | None = None, title: str | None = None, vmin: float | None = None,
               vmax: float | None = None, symmetric: bool = False, robust: bool = True, norm=None,
               scalebar: bool = True, colorbar: bool = True, axis_labels: tuple[str, str] = ("x (px)", "y (px)"),
               origin_offset: tuple[float, float] = (0.0, 0.0)):
    """Draw a 2-D map (H, W) into ``ax``.

    With ``pixel`` (size in ``unit``, a number or (dy, dx)) the image has physical coordinates (pixel
    (0, 0) spans 0…pixel, shifted by ``origin_offset``) and a scale bar, and no ticks; without it, pixel
    indices on labelled axes. Colour range: ``vmin``/``vmax``, else the 0.5–99.5 % percentiles (``robust``)
    or the full range; ``symmetric`` centres it on 0. A colour bar labelled ``label`` sits beside it.
    Returns the ``AxesImage``.
    """
    img = to_numpy(img).astype(np.float64, copy=False)
    H, W = img.shape
    if norm is None:
        lo, hi = robust_range(img) if robust else (float(np.nanmin(img)), float(np.nanmax(img)))
        if symmetric:
            m = max(abs(lo), abs(hi), 1e-12)
            lo, hi = -m, m
        vmin = lo if vmin is None else vmin
        vmax = hi if vmax is None else vmax
    extent = None
    if pixel is not None:
        py, px = (pixel, pixel) if np.isscalar(pixel) else (float(pixel[0]), float(pixel[1]))
        oy, ox = origin_offset
        extent = (ox, ox + W * px, oy + H * py, oy)
    im = ax.imshow(img, cmap=cmap or CMAPS["phase"], vmin=None if norm is not None else vmin,
                   vmax=None if norm is not None else vmax, norm=norm, extent=extent)
    if title:
        ax.set_title(title)
    if pixel is not None:
        bare_axes(ax)
        if scalebar:
            length = nice_length(W * px)
            add_scalebar(ax, length, f"{length:g} {unit}", image=im)
    else:
        from matplotlib.ticker import MaxNLocator

        ax.set_xlabel(axis_labels[0])
        ax.set_ylabel(axis_labels[1])
        ax.tick_params(length=2)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    if colorbar:
        data_lo, data_hi = float(np.nanmin(img)), float(np.nanmax(img))
        extend = "neither" if norm is not None else (
            "both" if data_lo < vmin and data_hi > vmax else "min" if data_lo < vmin else
            "max" if data_hi > vmax else "neither")
        add_colorbar(im, ax, label, extend=extend)
    return im


def intensity_cmap():
    """The intensity colour map with values off the log scale (zeros, below the range) in its darkest colour."""
    import matplotlib

    cmap = matplotlib.colormaps[CMAPS["intensity"]]
    return cmap.with_extremes(bad=cmap(0.0), under=cmap(0.0))


def pattern_extent(shape: tuple[int, int], pixel: float | None) -> tuple[float, float, float, float]:
    """imshow extent of an (H, W) pattern with zero frequency at pixel (H//2, W//2), in ``pixel`` units (px
    when None)."""
    H, W = shape
    d = 1.0 if pixel is None else float(pixel)
    return (-(W // 2) - 0.5) * d, (W - W // 2 - 0.5) * d, (H - H // 2 - 0.5) * d, (-(H // 2) - 0.5) * d


def show_pattern(ax, pattern, pixel_mrad: float | None = None, title: str | None = None,
                 label: str = "intensity", norm=None, colorbar: bool = True, scalebar: bool = True):
    """A diffraction pattern (H, W), zero frequency at (H//2, W//2), on a log scale (:func:`log_norm`).

    Coordinates are scattering angles from (H//2, W//2) (mrad, a scale bar, no ticks) when ``pixel_mrad`` is
    known, else the array's detector pixels on labelled axes. Zero counts are drawn in the colour of the lowest
    value. Returns the ``AxesImage``."""
    p = np.maximum(to_numpy(pattern).astype(np.float64, copy=False), 0)
    norm = norm or log_norm(p)
    im = ax.imshow(p, cmap=intensity_cmap(), norm=norm,
                   extent=None if pixel_mrad is None else pattern_extent(p.shape, pixel_mrad))
    if title:
        ax.set_title(title)
    if pixel_mrad is not None:
        bare_axes(ax)
        if scalebar:
            length = nice_length(p.shape[1] * pixel_mrad)
            add_scalebar(ax, length, f"{length:g} mrad", image=im)
    else:
        ax.set_xlabel("detector x (px)")
        ax.set_ylabel("detector y (px)")
        ax.tick_params(length=2)
    if colorbar:
        add_colorbar(im, ax, f"{label} (log scale)")
    return im


def draw_disk(ax, centre: tuple[float, float], radius: float, label: str | None = None, color: str = "cyan"):
    """Outline of a disk of ``radius`` about ``centre`` (y, x), both in the axes' data units, and its centre."""
    from matplotlib.patches import Circle

    circle = Circle((centre[1], centre[0]), radius, fill=False, color=color, lw=1.0, ls="--", label=label)
    circle.set_gid("disk")
    ax.add_patch(circle)
    ax.plot([centre[1]], [centre[0]], "+", color=color, ms=6, mew=1.0)
    return circle


def remove_unused(axes) -> None:
    """Remove axes that got nothing drawn (no empty frames in a figure)."""
    for ax in np.ravel(axes):
        if not (ax.images or ax.lines or ax.collections or ax.patches or ax.texts or ax.artists):
            ax.remove()
