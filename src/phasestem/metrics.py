"""Image-quality and phase metrics (SPEC §7): PSNR, SSIM, MS-SSIM, MSE, phase error, Pearson, FRC.

Inputs: torch tensors or numpy arrays shaped (H, W), (B, H, W) or (B, 1, H, W); ``pred`` and
``target`` must have the same shape. Per-image values are averaged over the batch unless
``reduction="none"``.

Return types: a torch input (``pred``) gives a torch tensor (0-d for ``reduction="mean"``, (B,) for
``"none"``) that keeps its autograd graph (``psnr``, ``mse``, ``ssim``, ``ms_ssim``, ``pearson``);
a numpy input gives a Python float or a (B,) numpy array. ``phase_error``, ``frc`` and
``shift_between`` always compute in numpy float64 (no gradients).

``data_range=None`` means the per-image range of ``target`` (max − min). SSIM and MS-SSIM shift
both images by the per-image minimum of ``target`` (a common offset that leaves PSNR/MSE unchanged)
so that phase images with negative values get the usual [0, data_range] luminance term.
Window choice (``win_size=None``): SSIM uses 11 px (σ = 1.5 px) or the largest odd size that fits
the image; MS-SSIM (5 scales, pytorch-msssim weights) needs min side > 16·(win − 1), so the window is
the largest odd size ≤ 11 satisfying that — 11 px at 256², 7 px at 128², 5 px at 76², 3 px at
64²/48² — with σ = 1.5·win/11. Images ≤ 32 px are too small for 5 scales (``ShapeError``).
"""
from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch

from .base.errors import ShapeError

Reduction = Literal["mean", "none"]

__all__ = [
    "mse", "psnr", "ssim", "ms_ssim", "ms_ssim_window", "ssim_window", "remove_offset", "shift_between",
    "apply_shift", "align_to", "aligned_error_map", "phase_error", "pearson", "frc", "frc_resolution",
    "figures_of_merit", "truth_on_grid", "chance_beyond",
]


# ---------------------------------------------------------------------------- input handling
def _to_bhw(x, name: str, like: torch.Tensor | None = None) -> torch.Tensor:
    """Convert (H,W), (B,H,W) or (B,1,H,W) array/tensor to a (B,H,W) float tensor."""
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(np.asarray(x))
    if like is not None:
        x = x.to(like.device)
    if x.is_complex():
        raise ShapeError(f"{name}: expected a real image, got a complex {tuple(x.shape)} array")
    if not x.is_floating_point():
        x = x.float()
    if x.ndim == 2:
        x = x[None]
    elif x.ndim == 4 and x.shape[1] == 1:
        x = x[:, 0]
    elif x.ndim != 3:
        raise ShapeError(f"{name}: expected shape (H, W), (B, H, W) or (B, 1, H, W), got {tuple(x.shape)}")
    return x


def _pair(pred, target) -> tuple[torch.Tensor, torch.Tensor, bool]:
    is_torch = isinstance(pred, torch.Tensor)
    p = _to_bhw(pred, "pred")
    t = _to_bhw(target, "target", like=p).to(p.dtype)
    if p.shape != t.shape:
        raise ShapeError(f"pred {tuple(p.shape)} and target {tuple(t.shape)} must have the same shape")
    return p, t, is_torch


def _reduce(values: torch.Tensor, reduction: Reduction, is_torch: bool):
    if reduction not in ("mean", "none"):
        raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")
    out = values.mean() if reduction == "mean" else values
    if is_torch:
        return out
    out = out.detach().cpu().double().numpy()
    return float(out) if reduction == "mean" else out


def _ranges(t: torch.Tensor, data_range) -> torch.Tensor:
    """(B,) data ranges: the given scalar, or max − min of each target image."""
    if data_range is None:
        flat = t.detach().flatten(1)
        r = flat.amax(1) - flat.amin(1)
        return torch.where(r > 0, r, torch.ones_like(r))
    return torch.full((t.shape[0],), float(data_range), dtype=t.dtype, device=t.device)


# ---------------------------------------------------------------------------- pixel metrics
def mse(pred, target, reduction: Reduction = "mean"):
    """Mean squared error per image (units of the image squared)."""
    p, t, is_torch = _pair(pred, target)
    return _reduce(((p - t) ** 2).flatten(1).mean(1), reduction, is_torch)


def psnr(pred, target, data_range: float | None = None, reduction: Reduction = "mean"):
    """Peak signal-to-noise ratio in dB: 10·log10(data_range² / MSE), per image then averaged.

    ``data_range=None`` uses each target's max − min. An exact match gives +inf.
    """
    p, t, is_torch = _pair(pred, target)
    err = ((p - t) ** 2).flatten(1).mean(1)
    r = _ranges(t, data_range)
    return _reduce(10.0 * torch.log10(r**2 / err), reduction, is_torch)


def ssim_window(size: int, win_size: int | None = None) -> tuple[int, float]:
    """(window, σ) in px for SSIM on an image whose smaller side is ``size`` px."""
    if win_size is None:
        win_size = min(11, size if size % 2 else size - 1)
    if win_size < 1 or win_size % 2 == 0 or win_size > size:
        raise ShapeError(f"SSIM window must be odd and ≤ the image side {size} px, got {win_size}")
    return win_size, 1.5 * win_size / 11.0


def ms_ssim_window(size: int, win_size: int | None = None) -> tuple[int, float]:
    """(window, σ) in px for 5-scale MS-SSIM on an image whose smaller side is ``size`` px.

    pytorch-msssim requires ``size > 16·(win − 1)``; the default is the largest odd window ≤ 11 that fits.
    """
    if win_size is None:
        win_size = 11
        while win_size > 3 and size <= 16 * (win_size - 1):
            win_size -= 2
    if win_size % 2 == 0 or size <= 16 * (win_size - 1):
        raise ShapeError(
            f"MS-SSIM (5 scales) with a {win_size}-px window needs images larger than {16 * (win_size - 1)} px; "
            f"got a {size}-px side (use ssim for images ≤ 32 px)"
        )
    return win_size, 1.5 * win_size / 11.0


def _shift_to_target_min(p: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    m = t.detach().flatten(1).amin(1)[:, None, None]
    return p - m, t - m


def _per_range_call(fn, p: torch.Tensor, t: torch.Tensor, r: torch.Tensor, **kw) -> torch.Tensor:
    """Call a pytorch-msssim function once per distinct data range; (B,) results.

    Runs in at least float32 with autocast off (σ² = E[x²] − μ² cancels badly in half precision).
    """
    dtype = torch.promote_types(p.dtype, torch.float32)
    x, y = p[:, None].to(dtype), t[:, None].to(dtype)
    with torch.autocast(device_type=x.device.type, enabled=False):
        if torch.all(r == r[0]):
            return fn(x, y, data_range=float(r[0]), size_average=False, **kw)
        return torch.cat([fn(x[i:i + 1], y[i:i + 1], data_range=float(r[i]), size_average=False, **kw)
                          for i in range(x.shape[0])])


def _structural(name: str, window, pred, target, data_range, win_size, reduction: Reduction):
    """pytorch-msssim's ``name`` (ssim or ms_ssim) per image at its ``window`` (size, σ) for the image side."""
    import pytorch_msssim  # the [learn] extra; imported here so the other metrics work without it

    p, t, is_torch = _pair(pred, target)
    win, sigma = window(min(p.shape[-2:]), win_size)
    r = _ranges(t, data_range)
    p, t = _shift_to_target_min(p, t)
    vals = _per_range_call(getattr(pytorch_msssim, name), p, t, r, win_size=win, win_sigma=sigma)
    return _reduce(vals, reduction, is_torch)


def ssim(pred, target, data_range: float | None = None, win_size: int | None = None,
         reduction: Reduction = "mean"):
    """Structural similarity (Gaussian window, K = (0.01, 0.03)) via pytorch-msssim; 1 = identical."""
    return _structural("ssim", ssim_window, pred, target, data_range, win_size, reduction)


def ms_ssim(pred, target, data_range: float | None = None, win_size: int | None = None,
            reduction: Reduction = "mean"):
    """Multi-scale SSIM (5 scales, standard weights) via pytorch-msssim; window from :func:`ms_ssim_window`."""
    return _structural("ms_ssim", ms_ssim_window, pred, target, data_range, win_size, reduction)


def pearson(pred, target, reduction: Reduction = "mean"):
    """Pearson correlation coefficient per image (offset- and scale-invariant), in [−1, 1]."""
    p, t, is_torch = _pair(pred, target)
    a = p.flatten(1) - p.flatten(1).mean(1, keepdim=True)
    b = t.flatten(1) - t.flatten(1).mean(1, keepdim=True)
    r = (a * b).sum(1) / torch.sqrt((a * a).sum(1) * (b * b).sum(1)).clamp_min(1e-30)
    return _reduce(r, reduction, is_torch)


# ---------------------------------------------------------------------------- phase metrics
def _np_bhw(x, name: str) -> np.ndarray:
    return _to_bhw(x.detach() if isinstance(x, torch.Tensor) else x, name).cpu().double().numpy()


def remove_offset(rec, gt):
    """``rec`` minus its least-squares constant offset to ``gt`` (per image): rec − mean(rec − gt).

    Returns the type and shape of ``rec``.
    """
    if isinstance(rec, torch.Tensor):
        gt_t = torch.as_tensor(np.asarray(gt) if not isinstance(gt, torch.Tensor) else gt).to(rec)
        return rec - (rec - gt_t).mean(dim=(-2, -1), keepdim=True)
    rec = np.asarray(rec)
    return rec - (rec - np.asarray(gt)).mean(axis=(-2, -1), keepdims=True)


def _upsampled_dft(data: np.ndarray, region: int, factor: float, offsets: np.ndarray) -> np.ndarray:
    """Inverse DFT of ``data`` (H, W) on a ``region``² grid of spacing 1/factor px starting at ``offsets``."""
    h, w = data.shape
    ky = np.fft.ifftshift(np.arange(h) - h // 2)
    kx = np.fft.ifftshift(np.arange(w) - w // 2)
    ry = np.arange(region) - offsets[0]
    rx = np.arange(region) - offsets[1]
    ey = np.exp(2j * np.pi * np.outer(ry, ky) / (h * factor))  # (region, h)
    ex = np.exp(2j * np.pi * np.outer(kx, rx) / (w * factor))  # (w, region)
    return ey @ data @ ex


def shift_between(moving, reference, upsample: int = 100) -> np.ndarray:
    """Sub-pixel shift (dy, dx) in px such that ``apply_shift(moving, shift)`` ≈ ``reference``.

    Cross-correlation peak of the mean-subtracted images, refined by an upsampled DFT around the peak
    (precision 1/``upsample`` px). ``moving``/``reference``: (H, W) or (B, H, W) → (2,) or (B, 2).
    """
    single = np.ndim(moving) == 2
    a, b = _np_bhw(moving, "moving"), _np_bhw(reference, "reference")
    if a.shape != b.shape:
        raise ShapeError(f"moving {a.shape} and reference {b.shape} must have the same shape")
    out = np.zeros((a.shape[0], 2))
    h, w = a.shape[-2:]
    for i in range(a.shape[0]):
        fa = np.fft.fft2(a[i] - a[i].mean())
        fb = np.fft.fft2(b[i] - b[i].mean())
        cross = fb * np.conj(fa)
        cc = np.fft.ifft2(cross).real
        peak = np.array(np.unravel_index(np.argmax(cc), cc.shape), dtype=float)
        peak = np.where(peak > np.array([h, w]) // 2, peak - np.array([h, w]), peak)
        if upsample > 1:
            region = int(math.ceil(upsample * 1.5))
            centre = np.fix(region / 2.0)
            offsets = centre - peak * upsample
            up = _upsampled_dft(cross, region, upsample, offsets).real
            sub = np.array(np.unravel_index(np.argmax(up), up.shape), dtype=float)
            peak = peak + (sub - centre) / upsample
        out[i] = peak
    return out[0] if single else out


def apply_shift(image, shift) -> np.ndarray:
    """Shift a real image (H, W) or (B, H, W) by ``shift`` (2,) or (B, 2) px, periodic (Fourier)."""
    single = np.ndim(image) == 2
    x = _np_bhw(image, "image")
    s = np.broadcast_to(np.asarray(shift, dtype=float).reshape(-1, 2), (x.shape[0], 2))
    ky = np.fft.fftfreq(x.shape[-2])[None, :, None]
    kx = np.fft.fftfreq(x.shape[-1])[None, None, :]
    ramp = np.exp(-2j * np.pi * (ky * s[:, 0, None, None] + kx * s[:, 1, None, None]))
    out = np.fft.ifft2(np.fft.fft2(x) * ramp).real
    return out[0] if single else out


def phase_error(rec, gt, align: bool = True, crop: int | None = None, reduction: Reduction = "mean"):
    """Relative phase error E_φ = sqrt(Σ|φ_rec − φ_gt|² / Σ|φ_gt|²) (dimensionless; SPEC §7).

    The constant phase offset (unobservable) is removed first. With ``align=True`` ``rec`` is also
    moved by the best sub-pixel shift (:func:`shift_between`, Fourier shift). ``crop`` px are excluded
    at every edge (default: ⌈max |shift|⌉ + 1 when aligning, else 0) so wrapped-around edges don't count.
    ``gt`` should be the phase with its own mean kept (E_φ normalises by Σ|φ_gt|², not by its variance).
    Returns a float (mean over the batch) or a (B,) array; numpy float64, no gradients.
    """
    r, g = _np_bhw(rec, "rec"), _np_bhw(gt, "gt")
    if r.shape != g.shape:
        raise ShapeError(f"rec {r.shape} and gt {g.shape} must have the same shape")
    shifts = np.zeros((r.shape[0], 2))
    if align:
        shifts = shift_between(r, g)
        r = apply_shift(r, shifts)
    if crop is None:
        crop = int(math.ceil(np.abs(shifts).max())) + 1 if align else 0
    if crop:
        if 2 * crop >= min(r.shape[-2:]):
            raise ShapeError(f"crop {crop} px leaves nothing of a {r.shape[-2:]} image")
        r, g = r[:, crop:-crop, crop:-crop], g[:, crop:-crop, crop:-crop]
    r = r - (r - g).mean(axis=(-2, -1), keepdims=True)
    err = np.sqrt(((r - g) ** 2).sum(axis=(-2, -1)) / np.maximum((g**2).sum(axis=(-2, -1)), 1e-300))
    if reduction == "mean":
        return float(err.mean())
    if reduction == "none":
        return err
    raise ValueError(f"reduction must be 'mean' or 'none', got {reduction!r}")


# ---------------------------------------------------------------------------- resolution
def frc(a, b, sampling: float | tuple[float, float] | None = None, apodize: bool = True,
        ring_width: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Fourier ring correlation of two images (H, W) → (frequencies, curve).

    Rings are ``ring_width``/min(H, W) wide in spatial frequency, from 0 to Nyquist. ``frequencies``
    are ring centres in 1/Å when ``sampling`` (Å/px, scalar or (dy, dx)) is given, else cycles/px.
    ``curve[i] = Re Σ F_a F_b* / sqrt(Σ|F_a|² Σ|F_b|²)`` over ring i; identical images give 1.
    ``apodize`` multiplies both images by a separable Hann window (mean removed) against edge leakage.
    """
    x, y = _np_bhw(a, "a"), _np_bhw(b, "b")
    if x.shape != y.shape or x.shape[0] != 1:
        raise ShapeError(f"frc needs two single images of the same shape, got {x.shape[1:]} and {y.shape[1:]}")
    x, y = x[0] - x[0].mean(), y[0] - y[0].mean()
    h, w = x.shape
    if apodize:
        win = np.outer(np.hanning(h), np.hanning(w))
        x, y = x * win, y * win
    fa, fb = np.fft.fft2(x), np.fft.fft2(y)
    dy, dx = (1.0, 1.0) if sampling is None else np.broadcast_to(np.asarray(sampling, float), (2,))
    fy = np.fft.fftfreq(h, d=dy)[:, None]
    fx = np.fft.fftfreq(w, d=dx)[None, :]
    radius = np.sqrt(fy**2 + fx**2)
    nyquist = min(0.5 / dy, 0.5 / dx)
    step = ring_width * 2 * nyquist / min(h, w)
    n_rings = int(nyquist / step)
    idx = np.floor(radius / step + 0.5).astype(int)  # ring 0 is centred on zero frequency
    keep = idx < n_rings
    num = np.bincount(idx[keep], (fa * np.conj(fb)).real[keep], minlength=n_rings)
    pa = np.bincount(idx[keep], (np.abs(fa) ** 2)[keep], minlength=n_rings)
    pb = np.bincount(idx[keep], (np.abs(fb) ** 2)[keep], minlength=n_rings)
    curve = num / np.sqrt(np.maximum(pa * pb, 1e-300))
    return np.arange(n_rings) * step, curve


def frc_resolution(frequencies: np.ndarray, curve: np.ndarray, threshold: float = 1.0 / 7.0,
                   sustain: int = 1) -> float:
    """Resolution 1/f at the first crossing of ``threshold`` by the FRC curve, downwards, after it has first held
    above it (after ring 0).

    Linear interpolation between rings; units follow ``frequencies`` (Å if they are 1/Å, else px).
    ``sustain``: the curve must hold above the threshold for that many rings before a crossing counts, and stay
    below it for that many after (the rings past the last count as below); 2 ignores a single ring's dip.
    Rings below the threshold before the curve first holds above it are not a crossing: they are the lowest
    frequencies (a small field's lowest ring holds a handful of coefficients; ptychography leaves the background
    and the longest periods weakly determined, more so at low dose), not the resolution (a curve that never holds
    above it is searched from ring 1).
    Returns 1/f_max (Nyquist resolution) when the curve never drops below the threshold.
    """
    f, c = np.asarray(frequencies, float), np.asarray(curve, float)
    below = c < threshold
    n = max(int(sustain), 1)
    start = next((i for i in range(1, len(c) - n + 1) if not below[i : i + n].any()), 1)
    for i in range(start, len(c)):
        if below[i : i + n].all():
            f0, f1, c0, c1 = f[i - 1], f[i], c[i - 1], c[i]
            fc = f0 + (c0 - threshold) * (f1 - f0) / (c0 - c1) if c0 != c1 else f1
            return float(1.0 / max(fc, 1e-300))
    return float(1.0 / f[-1])


def align_to(rec, truth) -> np.ndarray:
    """``rec`` (H, W) moved by its best sub-pixel shift onto ``truth`` (H, W), the constant offset removed (rad):
    how :func:`figures_of_merit` compares them, for figures."""
    return remove_offset(apply_shift(rec, shift_between(rec, truth)), truth)


def aligned_error_map(rec, truth) -> np.ndarray:
    """``rec`` − ``truth`` after :func:`align_to` (rad, float32)."""
    return (align_to(rec, truth) - np.asarray(truth)).astype(np.float32)


# ---------------------------------------------------------------------------- one comparison
#: the figures of merit :func:`figures_of_merit` returns (all floats; NaN where the field is too small)
FIGURES_OF_MERIT = ("psnr", "ssim", "phase_error", "frc_resolution", "shift_px")


def figures_of_merit(rec, truth, sampling: float | tuple[float, float] | None = None, curve: bool = False,
                     frc_sustain: int = 1) -> dict:
    """A reconstructed phase (H, W) against the ground truth (H, W), both rad on the same grid.

    PSNR and SSIM of ``rec`` moved by its best sub-pixel shift onto ``truth`` with the constant offset removed,
    edges the shift wraps excluded; E_φ (:func:`phase_error`); the FRC resolution (1/7 threshold; Å with
    ``sampling`` Å/px, else px; ``frc_sustain``: see :func:`frc_resolution`) of the aligned pair; ``shift_px`` the
    length of that shift. A field under 4 px gives NaN everywhere; one too small for the crop gives NaN PSNR, SSIM
    and E_φ. ``curve``: also ``frc_frequencies`` and ``frc_curve``."""
    rec = np.asarray(rec, dtype=np.float64)
    t = np.asarray(truth, dtype=np.float64)
    out: dict = dict.fromkeys(FIGURES_OF_MERIT, float("nan"))
    if rec.shape != t.shape:
        raise ShapeError(f"reconstruction {rec.shape} and truth {t.shape} must have the same shape")
    if min(rec.shape) < 4:
        return out
    shift = shift_between(rec, t)
    aligned = remove_offset(apply_shift(rec, shift), t)
    out["shift_px"] = float(np.hypot(*shift))
    c = int(math.ceil(np.abs(shift).max())) + 1
    if 2 * c + 4 <= min(rec.shape):
        a, tt = aligned[c:-c, c:-c], t[c:-c, c:-c]
        out["psnr"] = float(psnr(a, tt))
        out["ssim"] = float(ssim(a, tt))
        out["phase_error"] = float(phase_error(rec, t))
    freq, fcurve = frc(aligned, t, sampling=sampling)
    if len(freq) > 1:
        out["frc_resolution"] = frc_resolution(freq, fcurve, sustain=frc_sustain)
    if curve:
        out["frc_frequencies"] = freq
        out["frc_curve"] = fcurve
    return out


def truth_on_grid(truth, truth_sampling: float | tuple[float, float], truth_positions, positions,
                  sampling: float | tuple[float, float], shape: tuple[int, int], periodic: bool = False) -> np.ndarray:
    """A ground-truth phase resampled onto a reconstruction's grid, for :func:`figures_of_merit`.

    ``truth`` (H, W) rad has pixel (0, 0) at 0 Å of its own frame and ``truth_sampling`` Å/px; ``truth_positions``
    (N, 2) Å are the probe positions in that frame and ``positions`` (N, 2) Å the same positions, in the same
    order, in the reconstruction's frame (e.g. ``dataset.positions_angstrom()``: pixel (i, j) of
    ``model.phase_in_dataset_frame()`` sits at (i·sampling_y, j·sampling_x) Å). The frames are related by the
    affine least-squares fit of the two position lists, so a calibration's small rotation or scale error is
    followed and the truth lands where the reconstruction put the specimen. The truth is band-limited to the
    grid's Nyquist frequency (FFT), then interpolated (cubic; ``periodic``: wrapped at its edges, else the
    nearest edge value). Returns (shape) float64 rad.
    """
    from scipy import ndimage

    t = np.asarray(truth, dtype=np.float64)
    ts = np.broadcast_to(np.asarray(truth_sampling, dtype=np.float64), (2,))
    s = np.broadcast_to(np.asarray(sampling, dtype=np.float64), (2,))
    src = np.asarray(positions, dtype=np.float64).reshape(-1, 2)
    dst = np.asarray(truth_positions, dtype=np.float64).reshape(-1, 2)
    if t.ndim != 2 or len(src) != len(dst) or len(src) < 3:
        raise ShapeError(f"truth {t.shape} must be (H, W) and both position lists (N ≥ 3, 2) of one length "
                         f"(got {len(src)} and {len(dst)})")
    affine, *_ = np.linalg.lstsq(np.column_stack([src, np.ones(len(src))]), dst, rcond=None)  # (3, 2)
    qy = np.fft.fftfreq(t.shape[0], ts[0])[:, None]
    qx = np.fft.fftfreq(t.shape[1], ts[1])[None, :]
    band = (np.abs(qy) <= 0.5 / s[0]) & (np.abs(qx) <= 0.5 / s[1])
    t = np.fft.ifft2(np.fft.fft2(t) * band).real
    iy, ix = np.meshgrid(np.arange(shape[0]) * s[0], np.arange(shape[1]) * s[1], indexing="ij")
    where = np.column_stack([iy.ravel(), ix.ravel(), np.ones(iy.size)]) @ affine / ts  # truth pixels (N, 2)
    out = ndimage.map_coordinates(t, where.T, order=3, mode="grid-wrap" if periodic else "nearest")
    return out.reshape(shape)


def chance_beyond(threshold: float) -> float:
    """The share of a map of pure noise in units of its σ (a standard normal per pixel) beyond ±``threshold``:
    erfc(t/√2), 0.0027 at 3 σ. The baseline of a "share of the field changed by more than t σ" (a restorer's or a
    learned prior's change judged against the data's σ): more than this are features the data do not support."""
    return math.erfc(float(threshold) / math.sqrt(2.0))
