"""Panels shared by the reconstruction, prediction and simulation figures: the probe (amplitude and phase, in
real space and in the aperture plane), the diffractogram of a phase image, the loss history, the FRC against a
ground truth and the line of figures of merit."""
from __future__ import annotations

import math

import numpy as np

from .core import CMAPS, MASKED, add_colorbar, show_image, to_numpy

#: the probe phase is drawn where its amplitude is above this fraction of its peak (elsewhere it is noise)
PHASE_SUPPORT = 0.1

#: scalars of a loss history drawn as data terms (dashed) beside the total
LOSS_TERMS = ("gaussian", "poisson", "pacbed", "sparsity", "loss_ptyrad")

#: how each figure of merit's number is written, on figures and in the tables beside them (:func:`format_metric`)
METRIC_FORMATS = {"phase_error": "{:.3g}", "frc_resolution": "{:.3g}", "psnr": "{:.3g}", "ssim": "{:.3f}",
                  "pearson": "{:.3f}"}
#: what each figure-of-merit key is called on a figure ({} its number, :data:`METRIC_FORMATS`)
METRIC_LABELS = (("phase_error", "E_φ = {}"), ("frc_resolution", "FRC (1/7) {} Å"),
                 ("psnr", "PSNR {} dB"), ("ssim", "SSIM {}"), ("pearson", "Pearson r {}"))


def format_metric(key: str, value: float) -> str:
    """A figure of merit's number as figures print it (E_φ 0.0456, PSNR 23.5, SSIM 0.912)."""
    return METRIC_FORMATS[key].format(float(value))


def metrics_text(metrics: dict | None, prefix: str = "against the ground truth: ", per_line: int = 0) -> str:
    """The finite figures of merit in ``metrics`` (E_φ, FRC resolution, PSNR, SSIM, Pearson r) in one line, or
    ``per_line`` to a line; '' when there are none."""
    if not metrics:
        return ""
    parts = [label.format(format_metric(k, metrics[k])) for k, label in METRIC_LABELS
             if metrics.get(k) is not None and np.isfinite(float(metrics[k]))]
    if not parts:
        return ""
    n = per_line or len(parts)
    return prefix + "\n".join(", ".join(parts[i:i + n]) for i in range(0, len(parts), n))


def _centred_axis(n: int, d: float) -> float:
    """``origin_offset`` that puts pixel n//2 of an axis of n pixels of size d at 0."""
    return -(n // 2 + 0.5) * d


def _central_box(weight: np.ndarray, fraction: float = 0.995, margin: float = 1.3, minimum: int = 8) -> tuple:
    """Slices of the square box about the array centre holding ``fraction`` of ``weight`` (× ``margin``)."""
    H, W = weight.shape
    cy, cx = H // 2, W // 2
    yy, xx = np.indices(weight.shape)
    r = np.maximum(np.abs(yy - cy), np.abs(xx - cx))
    total = float(weight.sum()) or 1.0
    inside = np.cumsum(np.bincount(r.ravel(), weight.ravel())) / total
    half = int(np.searchsorted(inside, fraction)) + 1
    half = min(max(int(math.ceil(half * margin)), minimum // 2), max(H, W) // 2)
    return slice(max(cy - half, 0), min(cy + half, H)), slice(max(cx - half, 0), min(cx + half, W))


def probe_panels(axes, probe, sampling: tuple[float, float], wavelength: float, name: str = "probe") -> None:
    """Four panels (``axes``; a None entry is skipped) of a probe mode (ny, nx) complex, centred at (ny//2, nx//2),
    pixel ``sampling`` Å:
    amplitude |ψ(r)| and phase arg ψ(r) in real space, amplitude |ψ(k)| and phase in the aperture plane
    (``wavelength`` Å gives the angles in mrad). Phases are drawn only where the amplitude is above
    :data:`PHASE_SUPPORT` of its peak, relative to the phase at the peak; each panel shows the central part
    (real space: twice the box holding 90 % of the intensity; aperture plane: 1.3 × the box holding 99.5 %)."""
    import matplotlib

    cyclic = matplotlib.colormaps[CMAPS["cyclic"]].with_extremes(bad=MASKED)
    psi = to_numpy(probe).astype(np.complex128)
    ny, nx = psi.shape
    dy, dx = float(sampling[0]), float(sampling[1])
    spectrum = np.fft.fftshift(np.fft.fft2(np.fft.ifftshift(psi), norm="ortho"))
    dky, dkx = wavelength / (ny * dy) * 1e3, wavelength / (nx * dx) * 1e3
    for ax_amp, ax_phase, wave, (py, px), unit, where in (
            (axes[0], axes[1], psi, (dy, dx), "Å", "r"), (axes[2], axes[3], spectrum, (dky, dkx), "mrad", "k")):
        if ax_amp is None and ax_phase is None:
            continue
        amp = np.abs(wave)
        box = _central_box(amp**2) if where == "k" else _central_box(amp**2, fraction=0.9, margin=2.0, minimum=12)
        amp_c, wave_c = amp[box], wave[box]
        off = (_centred_axis(ny, py) + box[0].start * py, _centred_axis(nx, px) + box[1].start * px)
        if ax_amp is not None:
            show_image(ax_amp, amp_c / max(amp.max(), 1e-30), pixel=(py, px), unit=unit, cmap=CMAPS["intensity"],
                       label="|ψ| / peak", title=f"{name} amplitude |ψ({where})|", robust=False, vmin=0, vmax=1,
                       origin_offset=off)
        if ax_phase is None:
            continue
        peak = np.unravel_index(np.argmax(amp_c), amp_c.shape)
        phase = np.angle(wave_c * np.exp(-1j * np.angle(wave_c[peak])))
        phase = np.where(amp_c >= PHASE_SUPPORT * amp.max(), phase, np.nan)
        im = show_image(ax_phase, phase, pixel=(py, px), unit=unit, cmap=cyclic, label="phase (rad)",
                        title=f"{name} phase arg ψ({where})" + (" (aperture plane)" if where == "k" else ""),
                        vmin=-math.pi, vmax=math.pi, robust=False, origin_offset=off, colorbar=False)
        cb = add_colorbar(im, ax_phase, "phase (rad)")
        cb.set_ticks([-math.pi, 0, math.pi], labels=["−π", "0", "π"])


def diffractogram(phase: np.ndarray) -> np.ndarray:
    """log₁₀ |FFT| (H, W) of a phase image (mean removed, Hann window against edge streaks), zero frequency at
    (H//2, W//2)."""
    img = to_numpy(phase).astype(np.float64)
    img = img - img.mean()
    win = np.outer(np.hanning(img.shape[0]), np.hanning(img.shape[1]))
    mag = np.abs(np.fft.fftshift(np.fft.fft2(img * win)))
    return np.log10(mag + mag.max() * 1e-6 + 1e-30)


def diffractogram_panel(ax, phase: np.ndarray, sampling: tuple[float, float],
                        title: str = "diffractogram of the phase"):
    """log |FFT| of ``phase`` with spatial-frequency coordinates (Å⁻¹) and a scale bar."""
    d = diffractogram(phase)
    H, W = d.shape
    qy, qx = 1.0 / (H * sampling[0]), 1.0 / (W * sampling[1])
    lo, hi = np.percentile(d, [5, 99.9])
    return show_image(ax, d, pixel=(qy, qx), unit="Å⁻¹", cmap=CMAPS["intensity"], label="log₁₀ |FFT| (a.u.)",
                      title=title, vmin=float(lo), vmax=float(hi),
                      origin_offset=(_centred_axis(H, qy), _centred_axis(W, qx)))


def loss_panel(ax, history: list[dict]) -> None:
    """Total loss (and its terms, dashed) per epoch on a log scale; the ground-truth E_φ per epoch on a second
    axis when the history has it."""
    ep = [int(h["epoch"]) for h in history]
    marker = "o" if len(ep) < 3 else None
    ax.semilogy(ep, [h["loss"] for h in history], "k-", marker=marker, ms=3, label="total")
    for k in LOSS_TERMS:
        vals = [h.get(k, np.nan) for h in history]
        if k in history[-1] and np.isfinite(vals).any() and not (k != "loss_ptyrad" and np.allclose(
                vals, [h["loss"] for h in history], rtol=1e-6)):
            ax.semilogy(ep, vals, "--", marker=marker, ms=3, label="PtyRAD loss" if k == "loss_ptyrad" else k)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("loss")
    ax.set_title("convergence")
    ax.grid(alpha=0.3, which="major", lw=0.4)
    handles, labels = ax.get_legend_handles_labels()
    errors = [h.get("phase_error", np.nan) for h in history]
    if np.isfinite(errors).any():
        tw = ax.twinx()
        tw.plot(ep, errors, "-", color="tab:red", marker=marker, ms=3, label="E_φ (truth)")
        tw.set_ylabel("E_φ against the truth", color="tab:red")
        tw.tick_params(axis="y", colors="tab:red")
        h2, l2 = tw.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="upper right", frameon=False)


def frc_panel(ax, frequencies: np.ndarray, curve: np.ndarray, resolution: float | None = None,
              threshold: float = 1.0 / 7.0) -> None:
    """Fourier ring correlation against spatial frequency (Å⁻¹), the threshold and the resolution it gives."""
    ax.plot(frequencies, curve, "k-")
    ax.axhline(threshold, color="tab:red", ls=":", lw=0.8, label=f"threshold {threshold:.3g}")
    title = "FRC against the ground truth"
    if resolution is not None and np.isfinite(resolution) and resolution > 0:
        ax.axvline(1.0 / resolution, color="tab:blue", ls="--", lw=0.8, label=f"{resolution:.3g} Å")
        title += f": {resolution:.3g} Å"
    ax.set_xlabel("spatial frequency (Å⁻¹)")
    ax.set_ylabel("FRC")
    ax.set_ylim(-0.2, 1.05)
    ax.set_xlim(0, float(np.max(frequencies)) if len(frequencies) else 1)
    ax.grid(alpha=0.3, lw=0.4)
    ax.legend(frameon=False, loc="lower left")
    ax.set_title(title)
