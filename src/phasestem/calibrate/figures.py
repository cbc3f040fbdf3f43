"""PNG figures of every calibration fit (disk and descan, bad pixels, rotation, parallax) and an overview, drawn
with :mod:`phasestem.plot` (its style, log-scaled patterns, scale bars, colour bars)."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..plot import CMAPS, draw_disk, pyplot, save_figure, show_image, show_pattern, styled
from .pipeline import Calibration


def _disk_panels(calib: Calibration, ax_pattern, ax_profile, ax_resid) -> None:
    d = calib.disk
    shown = calib.mean_pattern if calib.mean_pattern is not None else d.mean_mask.astype(float)
    show_pattern(ax_pattern, shown, None, label="mean counts")
    c = d.plane_at(calib.scan_shape)[calib.scan_shape[0] // 2, calib.scan_shape[1] // 2]  # mid-scan centre
    draw_disk(ax_pattern, (float(c[0]), float(c[1])), d.radius, label="fitted disk")
    for name, pts, mk in (("hot", calib.bad_pixels.hot, "^"), ("dead", calib.bad_pixels.dead, "v")):
        if pts:
            p = np.asarray(pts)
            ax_pattern.plot(p[:, 1], p[:, 0], mk, ms=5, color="tab:red" if name == "hot" else "tab:blue", mec="white",
                            mew=0.6, label=f"{name} ({len(pts)})")
    ax_pattern.legend(loc="lower right", framealpha=0.6)
    ax_pattern.set_title(f"disk r = {d.radius:.2f} px → {calib.angular_sampling:.4g} mrad/px")
    if d.profile is not None:
        ax_profile.plot(d.profile[0], d.profile[1], "k-", lw=1)
        ax_profile.axhline(d.threshold, color="gray", ls=":")
        ax_profile.axvline(d.radius, color="tab:cyan")
        ax_profile.set_xlabel("radius (px)")
        ax_profile.set_ylabel("intensity / disk level")
        ax_profile.set_title("edge fit (radial profile)")
        ax_profile.grid(alpha=0.3, lw=0.4)
    dy, dx = d.drift
    show_image(ax_resid, d.residual, pixel=calib.scan_step, cmap=CMAPS["field"], label="residual (px)",
               title=f"descan {dy:.2f} × {dx:.2f} px; residual of the plane", robust=False)


def _rotation_panels(calib: Calibration, ax_curve, ax_idpc, ax_dark) -> None:
    from .rotation import idpc_scan_frame

    for t, curve in calib.com.curve.items():
        ax_curve.plot(np.arange(180), curve, label=f"transpose {t}")
    for t, fit in calib.com_alternatives.items():
        if t != calib.com.transpose:
            ax_curve.plot(np.arange(180), fit.curve[t], label=f"transpose {t}")
    ax_curve.axvline(calib.rotation % 180, color="k", ls=":", lw=1)
    ax_curve.set_xlabel("θ mod 180 (°)")
    ax_curve.set_ylabel("relative curl energy")
    ax_curve.legend()
    ax_curve.grid(alpha=0.3, lw=0.4)
    ax_curve.set_title(f"CoM: θ = {calib.com.rotation:.2f}°, final {calib.rotation:.2f}°")
    phase = idpc_scan_frame(calib.com_field, calib.rotation, calib.transpose, calib.scan_step)
    show_image(ax_idpc, phase, pixel=calib.scan_step, label="iDPC phase (a.u.)", title="iDPC (scan grid)")
    show_image(ax_dark, calib.dark_field, pixel=calib.scan_step, label="counts",
               title=f"dark field (r = {calib.com.branch_score:.2f}: θ branch)")


def _parallax_panels(calib: Calibration, ax_search, ax_shifts) -> None:
    p = calib.parallax
    if p is None:
        for ax in (ax_search, ax_shifts):
            ax.text(0.5, 0.5, "no parallax fit", ha="center", va="center", transform=ax.transAxes)
        return
    ax_search.plot(p.search[0], p.search[1] / p.search[1].max(), "k-", lw=1)
    ax_search.axvline(p.C10, color="r", ls=":")
    ax_search.set_xlabel("C10 (Å)")
    ax_search.set_ylabel("sharpness / peak")
    ax_search.grid(alpha=0.3, lw=0.4)
    ax_search.set_title(f"tcBF sharpness; C10 = {p.C10:.1f} Å")
    ax_shifts.quiver(p.k[:, 1], p.k[:, 0], p.measured[:, 1], p.measured[:, 0], color="k", angles="xy",
                     scale_units="xy", scale=0.5, width=0.004, label="measured")
    ax_shifts.quiver(p.k[:, 1], p.k[:, 0], p.fitted[:, 1], p.fitted[:, 0], color="r", angles="xy",
                     scale_units="xy", scale=0.5, width=0.002, label="linear fit")
    ax_shifts.invert_yaxis()
    ax_shifts.set_aspect("equal")
    ax_shifts.legend()
    ax_shifts.set_xlabel("detector kx (px)")
    ax_shifts.set_ylabel("detector ky (px)")
    ax_shifts.set_title(f"parallax shifts (scan px), rms misfit {p.residual:.2f}")


@styled
def write_figures(calib: Calibration, out_dir: str | Path) -> dict[str, Path]:
    """Write calibration_disk.png, calibration_rotation.png, calibration_parallax.png and calibration.png."""
    plt = pyplot()
    out = Path(out_dir)
    files = {}
    for key, name, panels, n, width in (("figure_disk", "calibration_disk.png", _disk_panels, 3, 10),
                                        ("figure_rotation", "calibration_rotation.png", _rotation_panels, 3, 10),
                                        ("figure_parallax", "calibration_parallax.png", _parallax_panels, 2, 7)):
        fig, ax = plt.subplots(1, n, figsize=(width * 1.15, 3.3))
        panels(calib, *ax)
        fig.tight_layout()
        files[key] = save_figure(fig, out / name, dpi=110, close=True)
    fig, ax = plt.subplots(2, 4, figsize=(14, 6.4))
    _disk_panels(calib, ax[0, 0], ax[0, 1], ax[0, 2])
    _rotation_panels(calib, ax[1, 0], ax[1, 1], ax[1, 2])
    _parallax_panels(calib, ax[1, 3], ax[0, 3])
    text = calib.summary()
    cut = text.find("; bad pixels")
    fig.suptitle(text[:cut] + "\n" + text[cut + 2 :] if cut > 0 else text)
    fig.tight_layout()
    files["figure"] = save_figure(fig, out / "calibration.png", dpi=100, close=True)
    return files
