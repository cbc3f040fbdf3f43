"""Figures shared across phasestem (dataset inspection, phase comparisons). PNG via matplotlib (Agg)."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def _plt():
    import os

    import matplotlib

    if not os.environ.get("DISPLAY") and "inline" not in matplotlib.get_backend():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig, path, dpi: int = 120, close: bool = False):
    """Write ``fig`` to ``path`` atomically (:func:`phasestem.safety.atomic_file`); optionally close it. The format
    is the suffix's (matplotlib's default format without one)."""
    from .safety import atomic_file

    path = Path(path)
    fmt = path.suffix[1:].lower() or _plt().rcParams["savefig.format"]
    with atomic_file(path, field="figure") as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=fmt)
    if close:
        _plt().close(fig)
    return path


def _save(fig, path):
    if path is not None:
        save_figure(fig, path)
    return fig


def _np(x):
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def inspect_dataset(dataset, index: tuple[int, int] | None = None, path=None, bf_fraction: float = 1.0):
    """Mean pattern (log), virtual BF/ADF images, centre of mass, and the pattern at ``index``.

    Interactive where the figure is (a notebook with ``%matplotlib widget``, a desktop window): a click on
    any of the four scan images shows the pattern of that scan position (marked by a red cross); the
    same happens from code with ``fig.select_position((row, col))``. A static backend (Agg, PNG) draws
    the figure once.
    """
    plt = _plt()
    mean = dataset.mean_pattern()
    H, W = dataset.pattern_shape
    if dataset.semiangle and dataset.angular_sampling:
        bf_outer = dataset.semiangle * bf_fraction
        df_inner, df_outer = dataset.semiangle * 1.1, None
    else:  # estimate the bright-field disk radius (px) from the mean pattern
        ky, kx = np.indices(mean.shape)
        r = np.hypot(ky - H // 2, kx - W // 2)
        radius = np.sqrt((mean > 0.5 * mean.max()).sum() / np.pi)
        bf_outer, df_inner, df_outer = radius, 1.1 * radius, r.max()
    bf = dataset.virtual_image(0.0, bf_outer)
    adf = dataset.virtual_image(df_inner, df_outer)
    com = dataset.center_of_mass()
    index = index or (dataset.scan_shape[0] // 2, dataset.scan_shape[1] // 2)
    one = np.asarray(dataset.patterns[index[0], index[1]], dtype=np.float64)
    fig, axes = plt.subplots(2, 3, figsize=(12, 7.5))
    panels = [
        (np.log1p(mean / (mean.max() + 1e-30) * 1e4), "mean pattern (log)"),
        (bf, "virtual bright field"),
        (adf, "virtual annular dark field"),
        (com[..., 1], "centre of mass x (px)"),
        (com[..., 0], "centre of mass y (px)"),
        (np.log1p(one / (one.max() + 1e-30) * 1e4), f"pattern at scan {tuple(index)} (log)"),
    ]
    images = []
    for ax, (img, title) in zip(axes.ravel(), panels, strict=True):
        im = ax.imshow(img, cmap="gray" if "pattern" in title else "viridis")
        ax.set_title(title)
        ax.axis("off")
        fig.colorbar(im, ax=ax, fraction=0.046)
        images.append(im)
    fig.suptitle(dataset.summary(), fontsize=9)
    scan_axes = [axes.ravel()[i] for i in (1, 2, 3, 4)]
    marks = [ax.plot([index[1]], [index[0]], "r+", markersize=10)[0] for ax in scan_axes]
    pattern_ax, pattern_im = axes.ravel()[5], images[5]

    def select_position(where: tuple[int, int]) -> None:
        """Show the pattern at scan position ``where`` (row, col) in the last panel."""
        iy = int(np.clip(where[0], 0, dataset.scan_shape[0] - 1))
        ix = int(np.clip(where[1], 0, dataset.scan_shape[1] - 1))
        p = np.asarray(dataset.patterns[iy, ix], dtype=np.float64)
        shown = np.log1p(p / (p.max() + 1e-30) * 1e4)
        pattern_im.set_data(shown)
        pattern_im.set_clim(shown.min(), shown.max())
        pattern_ax.set_title(f"pattern at scan {(iy, ix)} (log)")
        for m in marks:
            m.set_data([ix], [iy])
        fig.canvas.draw_idle()

    def on_click(event) -> None:
        if event.inaxes in scan_axes and event.xdata is not None:
            select_position((round(event.ydata), round(event.xdata)))

    fig.select_position = select_position
    fig.canvas.mpl_connect("button_press_event", on_click)
    return _save(fig, path)


def phase_panels(images: dict[str, np.ndarray], path=None, cmap: str = "gray", share_range: bool = True,
                 errors: dict[str, np.ndarray] | None = None, suptitle: str | None = None):
    """Side-by-side phase images (rad) with an optional second row of error maps."""
    plt = _plt()
    names = list(images)
    rows = 2 if errors else 1
    fig, axes = plt.subplots(rows, len(names), figsize=(3.4 * len(names), 3.3 * rows), squeeze=False)
    arrs = [_np(images[n]) for n in names]
    vmin = min(float(a.min()) for a in arrs) if share_range else None
    vmax = max(float(a.max()) for a in arrs) if share_range else None
    for j, (name, arr) in enumerate(zip(names, arrs, strict=True)):
        im = axes[0, j].imshow(arr, cmap=cmap, vmin=vmin, vmax=vmax)
        axes[0, j].set_title(name, fontsize=9)
        axes[0, j].axis("off")
        fig.colorbar(im, ax=axes[0, j], fraction=0.046)
        if errors:
            err = errors.get(name)
            ax = axes[1, j]
            ax.axis("off")
            if err is not None:
                e = _np(err)
                lim = float(np.abs(e).max()) or 1.0
                im = ax.imshow(e, cmap="RdBu_r", vmin=-lim, vmax=lim)
                ax.set_title(f"{name} − truth", fontsize=9)
                fig.colorbar(im, ax=ax, fraction=0.046)
    if suptitle:
        fig.suptitle(suptitle, fontsize=10)
    return _save(fig, path)


def simulation_overview(phase: np.ndarray, probe, patterns: np.ndarray, path=None, title: str = ""):
    """Phase of a simulated specimen, the probe (real-space amplitude and phase) and a few patterns."""
    plt = _plt()
    probe = _np(probe)
    sy, sx = patterns.shape[:2]
    picks = [(0, 0), (sy // 2, sx // 2), (sy - 1, sx - 1)]
    fig, axes = plt.subplots(1, 3 + len(picks), figsize=(3.2 * (3 + len(picks)), 3.4))
    im = axes[0].imshow(phase, cmap="gray")
    axes[0].set_title("phase (rad)")
    fig.colorbar(im, ax=axes[0], fraction=0.046)
    axes[1].imshow(np.abs(probe), cmap="magma")
    axes[1].set_title("probe |ψ|")
    axes[2].imshow(np.angle(probe), cmap="twilight")
    axes[2].set_title("probe phase")
    for ax, (r, c) in zip(axes[3:], picks, strict=True):
        ax.imshow(np.log1p(patterns[r, c] / (patterns[r, c].max() + 1e-30) * 1e3), cmap="gray")
        ax.set_title(f"pattern ({r}, {c}) log")
    for ax in axes:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=9)
    return _save(fig, path)
