"""Figures of a reconstruction from plain arrays: the state (``reconstruction.png``) and the comparisons with the
data and the ground truth (``compare.png``). :mod:`phasestem.recon.figures` gathers the arrays from a model."""
from __future__ import annotations

import numpy as np

from .core import (
    CMAPS,
    add_colorbar,
    add_scalebar,
    bare_axes,
    finished,
    log_norm,
    nice_length,
    pattern_extent,
    pyplot,
    remove_unused,
    save_if_asked,
    show_image,
    show_pattern,
    styled,
    to_numpy,
)
from .panels import diffractogram_panel, frc_panel, loss_panel, metrics_text, probe_panels

#: panels per row of the reconstruction figure
COLUMNS = 4


def _grid(fig, n_rows: int, width: float = 3.0, height: float = 2.7):
    if fig is None:
        fig = pyplot().figure(figsize=(width * COLUMNS, height * n_rows))
    else:
        fig.clf()
    return fig, fig.subplots(n_rows, COLUMNS, squeeze=False)


@styled
def reconstruction_figure(phase: np.ndarray, amplitude: np.ndarray, sampling: tuple[float, float], probe,
                          wavelength: float, history: list[dict] | None = None, mode_power=None,
                          positions: tuple[np.ndarray, np.ndarray] | None = None, metrics: dict | None = None,
                          frc: tuple[np.ndarray, np.ndarray] | None = None, title: str = "", path=None, fig=None):
    """The reconstruction on its scanned field, the probe and the convergence.

    ``phase`` (rad) and ``amplitude`` (H, W) over the scanned field, pixel ``sampling`` (dy, dx) Å; ``probe``
    (M, ny, nx) complex modes (mode 0 drawn in full, the others' amplitudes on a third row) with relative
    powers ``mode_power`` (M,); ``wavelength`` Å; ``history`` the loss records per epoch; ``positions``
    (start, now) (N, 2) Å in the frame of ``phase`` (drawn when they moved); ``metrics`` and ``frc``
    (frequencies Å⁻¹, curve) against a ground truth (printed under the title, FRC on the third row).
    ``fig``: redraw that figure. Rows: phase, amplitude, diffractogram, loss | probe amplitude and phase in
    real space and in the aperture plane | FRC, positions, other probe modes (only those there are).
    """
    probe = to_numpy(probe)
    probe = probe[None] if probe.ndim == 2 else probe
    M = probe.shape[0]
    power = np.ones(M) / M if mode_power is None else np.asarray(mode_power, dtype=np.float64)
    extras = []
    if frc is not None:
        extras.append("frc")
    if positions is not None:
        moved = np.abs(np.asarray(positions[1]) - np.asarray(positions[0])).max() if len(positions[0]) else 0.0
        if moved > 1e-3 * min(sampling):
            extras.append("positions")
    extras += [f"mode{m}" for m in range(1, M)]
    n_rows = 2 + -(-len(extras) // COLUMNS)
    fig, ax = _grid(fig, n_rows)

    show_image(ax[0, 0], phase, pixel=sampling, label="phase (rad)", title="object phase")
    show_image(ax[0, 1], amplitude, pixel=sampling, label="amplitude", title="object amplitude")
    diffractogram_panel(ax[0, 2], phase, sampling)
    if history:
        loss_panel(ax[0, 3], history)
    name = "probe" if M == 1 else f"probe mode 0 ({power[0]:.0%})"
    probe_panels(ax[1], probe[0], sampling, wavelength, name=name)
    for i, what in enumerate(extras):
        a = ax[2 + i // COLUMNS, i % COLUMNS]
        if what == "frc":
            frc_panel(a, frc[0], frc[1], None if metrics is None else metrics.get("frc_resolution"))
        elif what == "positions":
            _positions_panel(a, phase, sampling, *positions)
        else:
            m = int(what[4:])
            amp = np.abs(probe[m])
            show_image(a, amp / max(amp.max(), 1e-30), pixel=sampling, cmap=CMAPS["intensity"], label="|ψ| / peak",
                       title=f"probe mode {m} amplitude ({power[m]:.0%})", robust=False, vmin=0, vmax=1)
    remove_unused(ax)
    return finished(fig, path, title, metrics_text(metrics), w_pad=2.5)


def _positions_panel(ax, phase, sampling, start: np.ndarray, now: np.ndarray, arrows: int = 400) -> None:
    """Scan positions now (dots) and their moves from the start (arrows, magnified) over the phase."""
    show_image(ax, phase, pixel=sampling, label="phase (rad)", colorbar=False, scalebar=True)
    start, now = np.asarray(start), np.asarray(now)
    d = now - start
    moved = float(np.linalg.norm(d, axis=1).max())
    span = max(phase.shape[0] * sampling[0], phase.shape[1] * sampling[1])
    gain = max(1.0, round(0.05 * span / max(moved, 1e-12)))
    pick = slice(None, None, max(1, len(now) // arrows))
    ax.quiver(start[pick, 1], start[pick, 0], d[pick, 1] * gain, d[pick, 0] * gain, angles="xy", scale_units="xy",
              scale=1, color="tab:red", width=0.006)
    ax.plot(now[:, 1], now[:, 0], ".", color="tab:cyan", ms=1.5)
    ax.set_title(f"positions: largest move {moved:.3g} Å (arrows ×{gain:g})")


def radial_profile(pattern: np.ndarray) -> np.ndarray:
    """Azimuthal mean of an (H, W) pattern about (H//2, W//2) in rings of one pixel (index = radius px)."""
    H, W = pattern.shape
    yy, xx = np.indices((H, W))
    r = np.hypot(yy - H // 2, xx - W // 2).round().astype(int)
    return np.bincount(r.ravel(), pattern.ravel()) / np.maximum(np.bincount(r.ravel()), 1)


@styled
def compare_figure(measured: np.ndarray | None = None, modelled: np.ndarray | None = None, index: int | None = None,
                   pattern_mrad: float | None = None, reconstruction: np.ndarray | None = None,
                   truth: np.ndarray | None = None, sampling: tuple[float, float] | None = None,
                   metrics: dict | None = None, frc: tuple[np.ndarray, np.ndarray] | None = None, title: str = "",
                   path=None):
    """Model against the data and, when given, against the ground truth.

    Truth row (with ``truth``): the reconstruction aligned on the truth (offset removed), the truth and their
    difference (rad) over the scanned field, and the FRC; figures of merit under the title. Data row (with
    ``measured``): the measured and modelled pattern at scan position ``index`` (log, one scale), their
    difference relative to the measured peak, and both radial profiles. Without either: the reconstruction
    alone.
    """
    rows = []
    if truth is not None and reconstruction is not None:
        rows.append("truth")
    if measured is not None and modelled is not None:
        rows.append("data")
    if not rows:
        rows.append("reconstruction")
    fig, ax = _grid(None, len(rows), width=3.0, height=2.8)
    for r, kind in enumerate(rows):
        a = ax[r]
        if kind == "truth":
            t, rec = to_numpy(truth), to_numpy(reconstruction)
            lo, hi = float(min(np.percentile(t, 0.5), np.percentile(rec, 0.5))), \
                float(max(np.percentile(t, 99.5), np.percentile(rec, 99.5)))
            show_image(a[0], rec, pixel=sampling, label="phase (rad)", title="reconstruction (aligned)", vmin=lo,
                       vmax=hi)
            show_image(a[1], t, pixel=sampling, label="phase (rad)", title="ground truth", vmin=lo, vmax=hi)
            show_image(a[2], rec - t, pixel=sampling, cmap=CMAPS["signed"], symmetric=True,
                       label="difference (rad)", title="reconstruction − truth")
            if frc is not None:
                frc_panel(a[3], frc[0], frc[1], None if metrics is None else metrics.get("frc_resolution"))
        elif kind == "data":
            meas = np.maximum(to_numpy(measured).astype(np.float64), 0)
            mod = np.maximum(to_numpy(modelled).astype(np.float64), 0)
            norm = log_norm(np.concatenate([meas.ravel(), mod.ravel()]))
            where = "" if index is None else f" #{index}"
            show_pattern(a[0], meas, pattern_mrad, title=f"measured pattern{where}", norm=norm)
            show_pattern(a[1], mod, pattern_mrad, title=f"model pattern{where}", norm=norm)
            peak = max(float(meas.max()), 1e-30)
            im = a[2].imshow((mod - meas) / peak, cmap=CMAPS["signed"],
                             extent=None if pattern_mrad is None else pattern_extent(meas.shape, pattern_mrad))
            lim = float(np.abs((mod - meas) / peak).max()) or 1.0
            im.set_clim(-lim, lim)
            a[2].set_title("model − measured")
            _pattern_axes(a[2], pattern_mrad, meas.shape, im)
            add_colorbar(im, a[2], "difference / measured peak")
            _profile_panel(a[3], meas, mod, pattern_mrad)
        else:
            if reconstruction is not None:
                show_image(a[0], reconstruction, pixel=sampling, label="phase (rad)", title="object phase")
                diffractogram_panel(a[1], reconstruction, sampling)
    remove_unused(ax)
    return finished(fig, path, title, metrics_text(metrics), w_pad=2.5)


def _pattern_axes(ax, pixel, shape, image) -> None:
    if pixel is None:
        ax.set_xlabel("detector x (px)")
        ax.set_ylabel("detector y (px)")
        return
    bare_axes(ax)
    length = nice_length(shape[1] * pixel)
    add_scalebar(ax, length, f"{length:g} mrad", image=image)


def _profile_panel(ax, measured: np.ndarray, modelled: np.ndarray, pixel: float | None) -> None:
    pm, pd = radial_profile(measured), radial_profile(modelled)
    r = np.arange(len(pm)) * (1.0 if pixel is None else pixel)
    floor = max(float(pm.max()), 1e-30) * 1e-6
    ax.semilogy(r, np.maximum(pm, floor), "k-", label="measured")
    ax.semilogy(r, np.maximum(pd, floor), "--", color="tab:orange", label="model")
    ax.set_xlabel("scattering angle (mrad)" if pixel is not None else "radius (px)")
    ax.set_ylabel("azimuthal mean")
    ax.set_title("radial profiles")
    ax.grid(alpha=0.3, lw=0.4, which="both")
    ax.legend(frameon=False)


@styled
def uncertainty_figure(phase: np.ndarray, sigma: np.ndarray, constrained: np.ndarray, field: tuple[int, int, int, int],
                       significance: np.ndarray, sampling: tuple[float, float], threshold: float = 3.0,
                       noise: str = "", scale: float = 2.0, title: str | None = None, path=None):
    """Three panels: the phase (rad) over the scanned field; its standard deviation σ (rad) over the whole object,
    grey where the scan constrains nothing (``constrained`` False), the scanned field ``field`` (y0, y1, x0, x1 px)
    outlined; and over the field the significance |φ − local mean| / σ (local mean: a Gaussian of ``scale`` Å),
    pixels beyond ``threshold`` outlined. ``phase``/``significance`` (h, w), ``sigma``/``constrained`` (Ny, Nx),
    pixels of ``sampling`` Å."""
    from matplotlib.patches import Rectangle

    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.9), squeeze=True)
    fig.subplots_adjust(wspace=0.5)
    pixel = tuple(float(s) for s in sampling)
    show_image(axes[0], phase, pixel, label="phase (rad)", title="phase (scanned field)")
    shown = np.where(constrained, sigma, np.nan)
    finite = shown[np.isfinite(shown)]
    hi = float(np.percentile(finite, 99.5)) if finite.size else 1.0
    cmap = plt.get_cmap("magma").with_extremes(bad="0.6")
    show_image(axes[1], shown, pixel, cmap=cmap, label="σ (rad)", vmin=0.0, vmax=hi,
               title="σ (grey: not constrained by the data)")
    y0, y1, x0, x1 = field
    axes[1].add_patch(Rectangle((x0 * pixel[1], y0 * pixel[0]), (x1 - x0) * pixel[1], (y1 - y0) * pixel[0],
                                fill=False, edgecolor="cyan", linewidth=0.6))
    sig_cmap = plt.get_cmap("viridis").with_extremes(bad="0.6")
    show_image(axes[2], significance, pixel, cmap=sig_cmap, label="|φ − local mean| / σ", vmin=0.0,
               vmax=max(2 * threshold, 1.0), title=f"significance (white: > {threshold:g} σ)")
    beyond = np.nan_to_num(significance) > threshold
    if beyond.any():
        h, w = beyond.shape
        axes[2].contour((np.arange(w) + 0.5) * pixel[1], (np.arange(h) + 0.5) * pixel[0], beyond.astype(float),
                        levels=[0.5], colors="white", linewidths=0.5)
    fig.suptitle(title or (f"phase error bars ({noise}); local mean over {scale:g} Å" if noise else
                           "phase error bars"), fontsize=9)
    if path is not None:
        save_if_asked(fig, path)
    return fig
