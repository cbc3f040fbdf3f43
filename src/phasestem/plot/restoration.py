"""The figure of ``phasestem restore`` from plain arrays: the run's phase, the restored phase, their difference and
the guard's map (the change in units of the data's σ), over the scanned field."""
from __future__ import annotations

import textwrap

import numpy as np

from .core import CMAPS, _plt, _save, robust_range, show_image, styled


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
    plt = _plt()
    magnitude = np.abs(change_sigma)
    cmap = plt.get_cmap(CMAPS["field"]).with_extremes(bad="0.6")
    show_image(ax, magnitude, pixel, cmap=cmap, label="|Δφ| / σ", vmin=0.0, vmax=max(2 * threshold, 1.0),
               title=f"change / σ of the data (white: > {threshold:g} σ)")
    beyond = np.nan_to_num(magnitude) > threshold
    if beyond.any():
        h, w = beyond.shape
        ax.contour((np.arange(w) + 0.5) * pixel[1], (np.arange(h) + 0.5) * pixel[0], beyond.astype(float),
                   levels=[0.5], colors="white", linewidths=0.5)


@styled
def restoration_figure(before: np.ndarray, after: np.ndarray, field: np.ndarray, sampling: tuple[float, float],
                       change_sigma: np.ndarray | None = None, threshold: float = 3.0, title: str | None = None,
                       no_sigma: str = "", path=None):
    """Four panels over the scanned field (the bounding box of ``field``): the run's phase ``before`` and the
    restored phase ``after`` (rad, one colour range), their difference (rad, offset removed over the field) and the
    guard's map |``change_sigma``| (the change in units of the data's σ, pixels beyond ``threshold`` outlined), or
    ``no_sigma`` (why there is none) in its place. Arrays (H, W) on one grid of ``sampling`` (dy, dx) Å; ``path``:
    where to write the PNG. Returns the figure."""
    plt = _plt()
    rows, cols = field_box(field)
    pixel = (float(sampling[0]), float(sampling[1]))
    before, after = np.asarray(before, np.float64), np.asarray(after, np.float64)
    h, w = before[rows, cols].shape
    aspect = (h * pixel[0]) / (w * pixel[1])  # of the field: the figure's height follows it (no empty band)
    fig, axes = plt.subplots(1, 4, figsize=(16, 2.5 * min(max(aspect, 0.3), 3.0) + 0.9), squeeze=True)
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
    fig.suptitle(title or "restoration", fontsize=9)
    return _save(fig, path)
