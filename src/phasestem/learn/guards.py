"""Hallucination guards of a restored phase (issue 48, item 6): measured beside every score of a restorer.

* :func:`residual_ratio`: the restored phase's data residual (:func:`phasestem.learn.consistency.
  measurement_residual`, nominal probe) ÷ AD's own phase's; issue 48 asks ≤ 1.2 (a restoration may not explain the
  data much worse than AD did);
* :func:`new_peaks`: peaks of the restored image's power spectrum that the reference's (the truth, or AD's phase)
  does not have: an amorphous specimen in must give no Bragg peaks out (expected 0);
* :func:`site_fraction`: the phase at given sites (e.g. a vacancy, a column removed from a held-out structure)
  relative to the mean phase at the atomic columns, both above the field's median: ≈ 0 where the column stays
  absent, ≈ 1 where the network put one back;
* :func:`vacuum_level`: the RMS of the phase (offset removed) inside a vacuum mask ÷ its RMS over the field
  (vacuum should stay flat: ≈ 0).

Images are (H, W) arrays in rad on one grid; masks are boolean or 0/1 (H, W); sites and columns are (N, 2) pixel
coordinates (y, x).
"""
from __future__ import annotations

import numpy as np
from scipy import ndimage

__all__ = ["residual_ratio", "power_peaks", "new_peaks", "site_fraction", "vacuum_level"]


def residual_ratio(restored: np.ndarray, ad_phase: np.ndarray, dataset, sampling: tuple[float, float]) -> float:
    """Data residual of ``restored`` ÷ that of ``ad_phase`` (both dataset frame, pixel ``sampling`` Å)."""
    from .consistency import measurement_residual

    def residual(phase: np.ndarray) -> float:
        return float(measurement_residual(np.asarray(phase, np.float32), dataset, tuple(sampling),
                                          periodic=False)["residual"])

    return residual(restored) / max(residual(ad_phase), 1e-30)


def _crop(image: np.ndarray, mask: np.ndarray | None) -> np.ndarray:
    if mask is None:
        return np.asarray(image, np.float64)
    ys, xs = np.nonzero(np.asarray(mask) > 0)
    return np.asarray(image, np.float64)[ys.min():ys.max() + 1, xs.min():xs.max() + 1]


def power_peaks(image: np.ndarray, field: np.ndarray | None = None, threshold: float = 30.0,
                min_radius: float = 2.0, ring: bool = False) -> np.ndarray:
    """Peaks (M, 2) (fy, fx) in centred-spectrum pixels of the Hann-windowed power spectrum of ``image`` over the
    field's bounding box: local maxima (3 × 3) above ``threshold`` × the spectrum's median (``ring``: the median of
    the pixels at the same rounded |k|, so a spectrum falling with |k| does not count its low-k speckle), at least
    ``min_radius`` px from zero frequency."""
    img = _crop(image, field)
    img = img - img.mean()
    win = np.hanning(img.shape[0])[:, None] * np.hanning(img.shape[1])[None, :]
    power = np.abs(np.fft.fftshift(np.fft.fft2(img * win))) ** 2
    cy, cx = power.shape[0] // 2, power.shape[1] // 2
    yy, xx = np.mgrid[:power.shape[0], :power.shape[1]]
    radius = np.hypot(yy - cy, xx - cx)
    if ring:
        rings = np.rint(radius).astype(int)
        level = threshold * np.asarray(ndimage.median(power, labels=rings, index=np.arange(rings.max() + 1)))[rings]
    else:
        level = threshold * max(float(np.median(power)), 1e-30)
    peaks = (power == ndimage.maximum_filter(power, size=3)) & (power > level) & (radius >= min_radius)
    py, px = np.nonzero(peaks)
    return np.stack([py - cy, px - cx], 1)


def new_peaks(restored: np.ndarray, reference: np.ndarray, field: np.ndarray | None = None,
              threshold: float = 30.0, tolerance: float = 1.5) -> int:
    """How many spectral peaks of ``restored`` lie farther than ``tolerance`` px from every peak of ``reference``
    (:func:`power_peaks`, the same field and threshold)."""
    a = power_peaks(restored, field, threshold)
    b = power_peaks(reference, field, threshold)
    if len(a) == 0:
        return 0
    if len(b) == 0:
        return len(a)
    d = np.hypot(a[:, None, 0] - b[None, :, 0], a[:, None, 1] - b[None, :, 1])
    return int((d.min(1) > tolerance).sum())


def _disk_mean(image: np.ndarray, points: np.ndarray, radius: float) -> np.ndarray:
    yy, xx = np.mgrid[:image.shape[0], :image.shape[1]]
    return np.array([image[np.hypot(yy - y, xx - x) <= radius].mean() for y, x in np.asarray(points, float)])


def site_fraction(image: np.ndarray, sites: np.ndarray, columns: np.ndarray, radius: float = 2.0) -> float:
    """Mean phase over disks of ``radius`` px at ``sites`` above the image's median, ÷ the same at ``columns``."""
    base = float(np.median(image))
    at_sites = _disk_mean(image, sites, radius).mean() - base
    at_columns = _disk_mean(image, columns, radius).mean() - base
    return float(at_sites / max(at_columns, 1e-30))


def vacuum_level(image: np.ndarray, vacuum: np.ndarray, field: np.ndarray | None = None) -> float:
    """RMS of ``image`` inside ``vacuum`` about its mean there ÷ its RMS over ``field`` (default: everywhere)."""
    img = np.asarray(image, np.float64)
    v = np.asarray(vacuum) > 0
    f = np.ones_like(v) if field is None else np.asarray(field) > 0
    inside = img[v] - img[v].mean()
    whole = img[f] - img[f].mean()
    return float(np.sqrt((inside ** 2).mean()) / max(np.sqrt((whole ** 2).mean()), 1e-30))
