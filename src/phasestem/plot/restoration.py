"""The figure of ``phasestem restore`` from plain arrays: the run's phase, the restored phase, their difference, the
guard's map (the change in units of the data's σ) and, when the data guard ran, its data-support map with the
flagged sites circled, over the scanned field."""
from __future__ import annotations

import textwrap

import numpy as np

from .core import CMAPS, pyplot, robust_range, save_if_asked, show_image, styled


def field_box(field: np.ndarray) -> tuple[slice, slice]:
    """The bounding box (rows, cols) of the nonzero pixels of ``field`` (H, W); the whole image when none is."""
    ys, xs = np.nonzero(np.asarray(field) > 0)
    if ys.size == 0:
        return slice(None), slice(None)
    return slice(int(ys.min()), int(ys.max()) + 1), slice(int(xs.min()), int(xs.max()) + 1)


def offset_free_difference(before: np.ndarray, after: np.ndarray, field: np.ndarray) -> np.ndarray:
    """after − before − their median difference over ``field`` (rad; the constant offset, which the data do not
    determine, taken out as :func:`phasestem.recon.uncertainty.change_in_sigma` takes it out)."""
    diff = np.asarray(after, np.float64) - np.asarray(before, np.float64)
    inside = np.asarray(field) > 0
    return diff - (np.median(diff[inside]) if inside.any() else 0.0)


def _guard_panel(ax, change_sigma: np.ndarray | None, pixel: tuple[float, float], threshold: float,
                 no_sigma: str) -> None:
    """|Δφ| / σ with the pixels beyond ``threshold`` outlined in white; without a σ map, ``no_sigma`` in words."""
    if change_sigma is None:
        ax.set_axis_off()
        ax.set_title("change / σ of the data")
        ax.text(0.5, 0.5, textwrap.fill(no_sigma or "no σ map", 36), ha="center", va="center",
                transform=ax.transAxes)
        return
    plt = pyplot()
    magnitude = np.abs(change_sigma)
    cmap = plt.get_cmap(CMAPS["field"]).with_extremes(bad="0.6")
    show_image(ax, magnitude, pixel, cmap=cmap, label="|Δφ| / σ", vmin=0.0, vmax=max(2 * threshold, 1.0),
               title=f"change / σ of the data (white: > {threshold:g} σ)")
    beyond = np.nan_to_num(magnitude) > threshold
    if beyond.any():
        h, w = beyond.shape
        ax.contour((np.arange(w) + 0.5) * pixel[1], (np.arange(h) + 0.5) * pixel[0], beyond.astype(float),
                   levels=[0.5], colors="white", linewidths=0.5)


def _support_panel(ax, support, rows: slice, cols: slice, pixel: tuple[float, float]) -> None:
    """The data-support map (σ-like, > 0: the restored phase fits the patterns worse than the run's) over the field,
    its flagged sites circled (``support``: a :class:`phasestem.learn.data_guard.DataGuardResult`)."""
    plt = pyplot()
    level = float(support.threshold)
    cmap = plt.get_cmap(CMAPS["signed"]).with_extremes(bad="0.6")
    show_image(ax, np.asarray(support.support)[rows, cols], pixel, cmap=cmap, label="√(excess misfit)",
               vmin=-2 * level, vmax=2 * level, title=f"data support (circled: flagged, > {level:g} σ)")
    y0, x0 = rows.start or 0, cols.start or 0
    radius = 6 * max(pixel)
    for (r, c), flagged in zip(np.asarray(support.sites), np.asarray(support.flagged), strict=True):
        if flagged:
            centre = ((c - x0 + 0.5) * pixel[1], (r - y0 + 0.5) * pixel[0])
            ax.add_patch(plt.Circle(centre, radius, fill=False, color="black", linewidth=1.2))


#: Å: the side of the verdict's zoomed panel (columns 1-3 Å apart stay apart on a 4-inch panel)
ZOOM = 16.0


def _verdict_marks(ax, verdict, y0: int, x0: int, pixel: tuple[float, float], big: bool) -> None:
    """Unsupported sites circled in red, supported ones dotted in white (pixel sites, offset by the panel's
    corner ``y0``, ``x0``)."""
    plt = pyplot()
    for (r, c), ok in zip(np.asarray(verdict.sites), np.asarray(verdict.supported, bool), strict=True):
        centre = ((c - x0 + 0.5) * pixel[1], (r - y0 + 0.5) * pixel[0])
        if ok:
            ax.plot(*centre, ".", color="white", markersize=2 if big else 1)
        else:
            ax.add_patch(plt.Circle(centre, 0.8 if big else 1.2, fill=False, color="red",
                                    linewidth=1.2 if big else 0.8))


def _zoom_panel(ax, after: np.ndarray, verdict, rows: slice, cols: slice, pixel: tuple[float, float]) -> None:
    """A :data:`ZOOM` Å square of the restoration, where columns can be seen: around the verdict's first unsupported
    site, the verdict marked, or the field's centre (no verdict, or every site supported)."""
    bad = np.zeros((0, 2)) if verdict is None else np.asarray(verdict.sites)[~np.asarray(verdict.supported, bool)]
    y0, y1, x0, x1 = rows.start or 0, rows.stop or after.shape[0], cols.start or 0, cols.stop or after.shape[1]
    centre = bad[0] if len(bad) else np.array([(y0 + y1) / 2, (x0 + x1) / 2])
    hy, hx = (int(round(ZOOM / 2 / p)) for p in pixel)
    r0 = int(np.clip(centre[0] - hy, y0, max(y0, y1 - 2 * hy)))
    c0 = int(np.clip(centre[1] - hx, x0, max(x0, x1 - 2 * hx)))
    crop = after[r0:min(r0 + 2 * hy, y1), c0:min(c0 + 2 * hx, x1)]
    show_image(ax, crop, pixel, label="phase (rad)",
               title=f"restored, {ZOOM:g} Å" + ("" if verdict is None else " (red: not supported by the data)"))
    if verdict is not None:
        _verdict_marks(ax, verdict, r0, c0, pixel, big=True)
    ax.set_xlim(0, crop.shape[1] * pixel[1])  # marks of sites beyond the crop stay outside it
    ax.set_ylim(crop.shape[0] * pixel[0], 0)


@styled
def restoration_figure(before: np.ndarray, after: np.ndarray, field: np.ndarray, sampling: tuple[float, float],
                       change_sigma: np.ndarray | None = None, threshold: float = 3.0, title: str | None = None,
                       no_sigma: str = "", support=None, verdict=None, path=None):
    """Four panels over the scanned field (the bounding box of ``field``): the run's phase ``before`` and the
    restored phase ``after`` (rad, one colour range), their difference (rad, offset removed over the field) and the
    guard's map |``change_sigma``| (the change in units of the data's σ, pixels beyond ``threshold`` outlined), or
    ``no_sigma`` (why there is none) in its place; a fifth with ``support`` (the data guard's result): its
    data-support map, the flagged sites circled; the last zooms onto the restoration (:data:`ZOOM` Å, columns
    visible), and with ``verdict`` (a :class:`phasestem.learn.verdict.Verdict`) onto its first unsupported site, the
    restored panel and the zoom marking the unsupported sites in red. Arrays (H, W) on one grid of ``sampling``
    (dy, dx) Å; ``path``: where to write the PNG. Returns the figure."""
    plt = pyplot()
    rows, cols = field_box(field)
    pixel = (float(sampling[0]), float(sampling[1]))
    before, after = np.asarray(before, np.float64), np.asarray(after, np.float64)
    h, w = before[rows, cols].shape
    aspect = (h * pixel[0]) / (w * pixel[1])  # of the field: the figure's height follows it (no empty band)
    n = 5 + (support is not None)
    fig, axes = plt.subplots(1, n, figsize=(4 * n, 2.5 * min(max(aspect, 0.3), 3.0) + 0.9), squeeze=True)
    fig.subplots_adjust(wspace=0.4)
    lo, hi = robust_range(np.concatenate([before[rows, cols].ravel(), after[rows, cols].ravel()]))
    show_image(axes[0], before[rows, cols], pixel, label="phase (rad)", vmin=lo, vmax=hi,
               title="input: the run's phase")
    show_image(axes[1], after[rows, cols], pixel, label="phase (rad)", vmin=lo, vmax=hi, title="restored phase")
    diff = offset_free_difference(before, after, field)[rows, cols]
    show_image(axes[2], diff, pixel, cmap=CMAPS["signed"], label="Δφ (rad)", symmetric=True,
               title="restored − input (offset removed)")
    _guard_panel(axes[3], None if change_sigma is None else np.asarray(change_sigma)[rows, cols], pixel, threshold,
                 no_sigma)
    if support is not None:
        _support_panel(axes[4], support, rows, cols, pixel)
    if verdict is not None:
        _verdict_marks(axes[1], verdict, rows.start or 0, cols.start or 0, pixel, big=False)
        axes[1].set_xlim(0, w * pixel[1])
        axes[1].set_ylim(h * pixel[0], 0)
    _zoom_panel(axes[-1], after, verdict, rows, cols, pixel)
    fig.suptitle(title or "restoration", fontsize=9)
    return save_if_asked(fig, path)
