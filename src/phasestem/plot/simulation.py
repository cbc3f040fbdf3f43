"""Figures of simulated data and of phase images side by side (the demo's routes, a prediction, a refinement,
an evaluation's examples)."""
from __future__ import annotations

import numpy as np

from .core import CMAPS, finished, log_norm, pyplot, remove_unused, show_image, show_pattern, styled, to_numpy
from .panels import diffractogram_panel, metrics_text, probe_panels


@styled
def simulation_overview(phase: np.ndarray, phase_sampling: tuple[float, float], probe, probe_sampling,
                        wavelength: float, patterns: np.ndarray, pattern_mrad: float | None = None,
                        scan_box: tuple[float, float, float, float] | None = None, title: str = "", path=None):
    """The specimen phase (rad, pixel ``phase_sampling`` Å; the scanned field ``scan_box`` = (y0, x0, y1, x1) Å
    outlined), the probe (amplitude and phase where it is significant, and its phase in the aperture plane),
    the mean pattern and three single patterns ((Sy, Sx, H, W), log scale, one colour scale, detector pixel
    ``pattern_mrad``)."""
    from matplotlib.patches import Rectangle

    plt = pyplot()
    patterns = np.asarray(patterns, dtype=np.float64)
    sy, sx = patterns.shape[:2]
    fig, ax = plt.subplots(2, 4, figsize=(12, 5.8))
    show_image(ax[0, 0], phase, pixel=phase_sampling, label="phase (rad)", title="specimen phase")
    if scan_box is not None:
        y0, x0, y1, x1 = scan_box
        ax[0, 0].add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec="tab:orange", lw=1.0, ls="--"))
        ax[0, 0].set_title("specimen phase (scanned field dashed)")
    probe_panels([ax[0, 1], ax[0, 2], None, ax[0, 3]], to_numpy(probe), probe_sampling, wavelength)
    mean = patterns.mean((0, 1))
    picks = [(0, 0), (sy // 2, sx // 2), (sy - 1, sx - 1)]
    norm = log_norm(np.concatenate([patterns[r, c].ravel() for r, c in picks]))
    show_pattern(ax[1, 0], mean, pattern_mrad, title="mean pattern (PACBED)", label="intensity")
    for a, (r, c) in zip(ax[1, 1:], picks, strict=True):
        show_pattern(a, patterns[r, c], pattern_mrad, title=f"pattern at scan ({r}, {c})", norm=norm)
    return finished(fig, path, title)


@styled
def phase_panels(images: dict[str, np.ndarray], path=None, cmap: str | None = None, share_range: bool = True,
                 errors: dict[str, np.ndarray] | None = None, suptitle: str | None = None,
                 sampling: tuple[float, float] | None = None, metrics: dict[str, dict] | None = None):
    """Phase images (rad) side by side on one colour scale, with a second row of error maps (rad, on one
    symmetric scale) when ``errors`` are given; a scale bar when the pixel ``sampling`` (Å) is known;
    ``metrics[name]`` (E_φ, PSNR, …) under each name."""
    plt = pyplot()
    names = list(images)
    rows = 2 if errors else 1
    fig, axes = plt.subplots(rows, len(names), figsize=(3.1 * len(names), 2.9 * rows), squeeze=False)
    arrs = [to_numpy(images[n]).astype(np.float64) for n in names]
    lo = min(float(np.percentile(a, 0.5)) for a in arrs) if share_range else None
    hi = max(float(np.percentile(a, 99.5)) for a in arrs) if share_range else None
    err_lim = None
    if errors:
        err_lim = max(float(np.percentile(np.abs(to_numpy(e)), 99.5)) for e in errors.values() if e is not None)
    for j, (name, arr) in enumerate(zip(names, arrs, strict=True)):
        label = name
        m = (metrics or {}).get(name)
        if m:
            label += "\n" + metrics_text(m, prefix="", per_line=2)
        show_image(axes[0, j], arr, pixel=sampling, cmap=cmap or CMAPS["phase"], vmin=lo, vmax=hi,
                   label="phase (rad)", title=label)
        if errors and errors.get(name) is not None:
            show_image(axes[1, j], errors[name], pixel=sampling, cmap=CMAPS["signed"], vmin=-err_lim, vmax=err_lim,
                       label="error (rad)", title=f"{name} − truth")
    remove_unused(axes)
    return finished(fig, path, suptitle)


@styled
def phase_figure(phase: np.ndarray, sampling: tuple[float, float] | None, label: str = "phase (rad)",
                 truth: np.ndarray | None = None, metrics: dict | None = None, title: str = "", path=None):
    """One phase image (a prediction, a refinement) with its diffractogram; with ``truth`` (same grid) also
    the truth and the difference, and the figures of merit ``metrics`` under the title."""
    plt = pyplot()
    n = 4 if truth is not None else 2
    fig, ax = plt.subplots(1, n, figsize=(3.1 * n, 3.0), squeeze=False)
    ax = ax[0]
    img = to_numpy(phase).astype(np.float64)
    lo, hi = None, None
    if truth is not None:
        t = to_numpy(truth).astype(np.float64)
        lo = float(min(np.percentile(img, 0.5), np.percentile(t, 0.5)))
        hi = float(max(np.percentile(img, 99.5), np.percentile(t, 99.5)))
    show_image(ax[0], img, pixel=sampling, label=label, title="phase", vmin=lo, vmax=hi)
    if sampling is not None:
        diffractogram_panel(ax[1], img, sampling)
    else:
        from .panels import diffractogram

        show_image(ax[1], diffractogram(img), cmap=CMAPS["intensity"], label="log₁₀ |FFT| (a.u.)",
                   title="diffractogram", axis_labels=("kx (px)", "ky (px)"))
    if truth is not None:
        show_image(ax[2], t, pixel=sampling, label=label, title="ground truth", vmin=lo, vmax=hi)
        show_image(ax[3], img - t - np.mean(img - t), pixel=sampling, cmap=CMAPS["signed"], symmetric=True,
                   label="difference (rad)" if "rad" in label else "difference", title="phase − truth (offset removed)")
    return finished(fig, path, title, metrics_text(metrics))


@styled
def examples_figure(examples: list[tuple], label: str = "phase (rad)", metrics: dict | None = None,
                    sampling: tuple[float, float] | None = None, title: str = "", path=None):
    """One row per example (name, prediction, truth), same grid: the truth and the prediction on one colour scale
    and their difference on a symmetric one, each with a colour bar in ``label``'s unit; ``metrics[name]``
    (E_φ, PSNR, …) in the row's titles."""
    plt = pyplot()
    fig, axes = plt.subplots(len(examples), 3, figsize=(9.3, 2.9 * len(examples)), squeeze=False)
    for row, (name, pred, truth) in zip(axes, examples, strict=True):
        p, t = to_numpy(pred).astype(np.float64), to_numpy(truth).astype(np.float64)
        lo, hi = float(t.min()), float(t.max())
        m = metrics_text((metrics or {}).get(name), prefix="", per_line=3)
        show_image(row[0], t, pixel=sampling, label=label, title=f"{name}: truth", vmin=lo, vmax=hi)
        show_image(row[1], p, pixel=sampling, label=label, title=f"{name}: prediction" + (f"\n{m}" if m else ""),
                   vmin=lo, vmax=hi)
        unit = label[label.rfind("("):] if label.endswith(")") and "(" in label else ""
        show_image(row[2], p - t, pixel=sampling, cmap=CMAPS["signed"], symmetric=True, robust=False,
                   label=f"difference {unit}".strip(), title="prediction − truth")
    return finished(fig, path, title)
