"""The bright-field disk: its radius, its centre at every scan position and the descan plane.

The disk is the largest connected region of the mean pattern above half its level (the median
inside a first estimate of the disk); its radius is √(area/π), averaged over the per-pattern
disks, which the descan drift does not blur. The centre of every pattern is the centroid of its
own thresholded disk; a plane ``c(iy, ix) = c0 + a·iy + b·ix`` (px) fitted to the centres is the
descan, and the per-position residual is reported.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

from ..base.errors import PhasestemError
from ..scan import GridScan
from .reading import row_chunks


class NoDiskError(PhasestemError):
    """No bright-field disk could be found in the data."""


@dataclass
class DiskFit:
    """Bright-field disk in the detector frame of the file (px, (y, x))."""

    radius: float  # px, from the per-pattern disk areas
    threshold: float  # fraction of each pattern's disk level
    centres: np.ndarray  # (Sy, Sx, 2) measured centre per position
    plane: np.ndarray  # (3, 2): rows c0, d/d(iy), d/d(ix)
    residual: np.ndarray  # (Sy, Sx) |measured − plane| px
    mean_mask: np.ndarray  # (H, W) bool, disk of the mean pattern
    profile: np.ndarray | None = None  # (2, n) radial profile: radius px, intensity / disk level
    plane_error: np.ndarray | None = None  # (3, 2) standard errors of ``plane`` (None: no residual degrees of freedom)
    notes: list[str] = field(default_factory=list)  # what the data left undetermined or how it was worked around

    def plane_at(self, shape: tuple[int, int]) -> np.ndarray:
        """Descan plane evaluated on a scan of ``shape``: (Sy, Sx, 2) px."""
        iy, ix = GridScan(shape).indices().T.reshape(2, *shape)
        return self.plane[0] + iy[..., None] * self.plane[1] + ix[..., None] * self.plane[2]

    @property
    def drift(self) -> tuple[float, float]:
        """Largest descan displacement across the scan (px), |Δ| over rows and columns."""
        n = self.centres.shape[:2]
        d = np.abs(self.plane[1]) * (n[0] - 1) + np.abs(self.plane[2]) * (n[1] - 1)
        return float(d[0]), float(d[1])

    def to_dict(self) -> dict:
        return {"radius_px": self.radius, "plane_px": self.plane.tolist(),
                "plane_error_px": None if self.plane_error is None else self.plane_error.tolist(),
                "residual_rms_px": float(np.sqrt((self.residual**2).mean())),
                "residual_max_px": float(self.residual.max())}


def mean_disk(mean: np.ndarray, min_area: int = 12) -> tuple[np.ndarray, float]:
    """Mask (H, W) and level of the bright-field disk of a mean pattern; :class:`NoDiskError` if none."""
    mean = np.asarray(mean, dtype=np.float64)
    smooth = ndimage.median_filter(mean, size=3)
    top = smooth.max()
    if not np.isfinite(top) or top <= 0:
        raise NoDiskError(f"no bright-field disk: the patterns are dark (largest mean count {top:.3g})")
    mask = _largest(smooth > 0.5 * top)
    level = float(np.median(mean[mask]))
    mask = _largest(mean > 0.5 * level)
    outside = float(np.median(mean[~ndimage.binary_dilation(mask, iterations=2)])) if (~mask).any() else level
    area, H, W = int(mask.sum()), *mean.shape
    if area < min_area:
        raise NoDiskError(f"no bright-field disk: the brightest region has only {area} px (need ≥ {min_area})")
    if area > 0.8 * H * W or level < 3 * max(outside, 0.0):
        raise NoDiskError("no bright-field disk: the detector is evenly lit (bright region "
                          f"{100 * area / (H * W):.0f} % of the pixels, contrast {level / max(outside, 1e-30):.2g}×)")
    ys, xs = np.nonzero(mask)
    r = np.sqrt(area / np.pi)
    extent = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) / 2
    if extent > 1.5 * r + 1:
        raise NoDiskError(f"no bright-field disk: the bright region is not round ({extent:.1f} px across vs a "
                          f"disk radius of {r:.1f} px from its area)")
    return mask, level


def disk_of_mean(mean: np.ndarray) -> tuple[tuple[float, float], float]:
    """Centre (y, x) px and radius px of the bright-field disk of a mean pattern (H, W), to a fraction of a pixel.

    The disk is :func:`mean_disk`'s; every pixel near it counts by its level between the background just outside
    (0) and the disk level (1), so edge pixels count in part: the radius is √(area/π), the centre the weighted
    centroid. One pattern, no pass over the data (:func:`fit_disk` follows the disk position by position).
    :class:`NoDiskError` when there is no disk."""
    mean = np.asarray(mean, dtype=np.float64)
    mask, level = mean_disk(mean)
    r0 = float(np.sqrt(mask.sum() / np.pi))
    near = ndimage.binary_dilation(mask, iterations=max(2, int(np.ceil(0.3 * r0))))
    ring = ndimage.binary_dilation(near, iterations=2) & ~near
    background = float(np.median(mean[ring])) if ring.any() else 0.0
    w = np.clip((mean - background) / max(level - background, 1e-30), 0.0, 1.0) * near
    area = float(w.sum())
    yy, xx = np.indices(mean.shape)
    return (float((w * yy).sum() / area), float((w * xx).sum() / area)), float(np.sqrt(area / np.pi))


def _largest(mask: np.ndarray) -> np.ndarray:
    lab, n = ndimage.label(mask)
    if n == 0:
        return mask
    sizes = ndimage.sum(mask, lab, index=np.arange(1, n + 1))
    return lab == (1 + int(np.argmax(sizes)))


def fit_disk(dataset, mean: np.ndarray, plan=None, threshold: float = 0.5) -> DiskFit:
    """Per-position disk centres, their descan plane and the disk radius (px)."""
    mask, _ = mean_disk(mean)
    H, W = dataset.pattern_shape
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float64)
    sy, sx = dataset.scan_shape
    centres = np.zeros((sy, sx, 2))
    areas = np.zeros((sy, sx))
    region = ndimage.binary_dilation(mask, iterations=max(3, int(0.3 * np.sqrt(mask.sum() / np.pi))))
    levels, counted = np.zeros((sy, sx)), True
    for rows, block in row_chunks(dataset, plan):
        level = np.median(block[..., mask], axis=-1)  # (r, Sx)
        levels[rows] = level
        counted = counted and float(np.mean(block == np.round(block))) > 0.99  # counts (filled bad pixels aside)
        b = (block > threshold * level[..., None, None]) & region
        n = b.sum((-2, -1)).astype(np.float64)
        areas[rows] = n
        n = np.maximum(n, 1)
        centres[rows, :, 0] = (b * yy).sum((-2, -1)) / n
        centres[rows, :, 1] = (b * xx).sum((-2, -1)) / n
    design = np.column_stack([np.ones(sy * sx), GridScan((sy, sx)).indices()])  # 1, iy, ix
    flat = centres.reshape(-1, 2)
    keep = np.ones(len(flat), bool)
    for _ in range(2):  # one pass of outlier rejection
        plane, *_ = np.linalg.lstsq(design[keep], flat[keep], rcond=None)  # an axis of one position: slope 0
        res = np.linalg.norm(flat - design @ plane, axis=-1)
        keep = res <= max(3 * np.median(res), 1e-9) if sy * sx > 8 else keep
    notes = [f"descan drift along the scan {axis} undetermined (one {unit}): none assumed"
             for axis, unit, n in (("rows", "row", sy), ("columns", "column", sx)) if n == 1]
    radius = float(np.sqrt(np.median(areas) / np.pi))
    counts = float(np.median(levels))
    if counted and counts < MIN_DISK_COUNTS:
        r_mean = float(np.sqrt(mask.sum() / np.pi))
        notes.append(f"{counts:.3g} counts per disk pixel in a single pattern (< {MIN_DISK_COUNTS}): too few to "
                     f"find each pattern's disk edge (their thresholded disks give {radius:.1f} px); disk radius from "
                     f"the mean pattern ({r_mean:.1f} px), descan centres noisy")
        radius = r_mean
    fit = DiskFit(radius=radius, threshold=threshold, centres=centres, plane=plane, residual=res.reshape(sy, sx),
                  mean_mask=mask, plane_error=_plane_error(design[keep], res[keep]), notes=notes)
    fit.radius, fit.profile = edge_radius(dataset, fit.plane_at((sy, sx)), fit.radius, plan, threshold)
    return fit


#: counted data (integer values) need at least this median count per disk pixel in a pattern for the per-pattern
#: threshold at half the disk level (Poisson noise 32 % at 10 counts; at 0.3 counts/px, 200 e⁻ on a 14.5 px disk,
#: the thresholds kept only the pixels that caught an electron: radius 7.4 px, angular sampling 2× too coarse)
MIN_DISK_COUNTS = 10


def _plane_error(design: np.ndarray, residual: np.ndarray) -> np.ndarray | None:
    """(3, 2) standard errors (px) of the descan plane's least-squares coefficients from the residuals (isotropic:
    the same for both detector axes); None with no residual degrees of freedom."""
    rank = np.linalg.matrix_rank(design)
    dof = len(design) - rank
    if dof <= 0:
        return None
    var = float((residual**2).sum()) / 2 / dof  # per axis
    err = np.sqrt(np.maximum(np.diag(np.linalg.pinv(design.T @ design)) * var, 0.0))
    return np.repeat(err[:, None], 2, 1)


def edge_radius(dataset, centres: np.ndarray, r0: float, plan=None, threshold: float = 0.5,
                bin_width: float = 0.05, smooth: float = 0.5) -> tuple[float, np.ndarray]:
    """Disk radius (px) where the radial profile about each pattern's descan centre falls to ``threshold``.

    Pixels of all patterns are binned by their distance to that pattern's centre (``centres``
    (Sy, Sx, 2) px) in bins of ``bin_width`` px, averaged over ``smooth`` px; each pattern is
    normalised by its level inside 0.7·``r0``. Returns the radius and the profile (2, n):
    radius (px), mean normalised intensity.
    """
    H, W = dataset.pattern_shape
    yy, xx = np.mgrid[0:H, 0:W].astype(np.float32)
    acc = cnt = 0.0
    for rows, block in row_chunks(dataset, plan):
        c = centres[rows]
        r = np.hypot(yy - c[..., 0, None, None], xx - c[..., 1, None, None])
        inner = r < 0.7 * r0
        level = (block * inner).sum((-2, -1)) / np.maximum(inner.sum((-2, -1)), 1)
        a, n = _radial_bins(r, block / np.maximum(level, 1e-30)[..., None, None], r0, bin_width)
        acc, cnt = acc + a, cnt + n
    return _crossing(acc, cnt, r0, threshold, bin_width, smooth)


def image_edge_radius(image: np.ndarray, centre: tuple[float, float], r0: float, threshold: float = 0.5,
                      bin_width: float = 0.05, smooth: float = 0.5) -> float:
    """Disk radius (px) of one image (H, W), e.g. a mean pattern or a probe's spectral intensity: where its radial
    profile about ``centre`` (y, x) px, normalised by the level inside 0.7·``r0``, falls to ``threshold``; the same
    bins and smoothing as :func:`edge_radius`, so two images measured alike share its small sampling bias."""
    H, W = image.shape
    yy, xx = np.mgrid[0:H, 0:W]
    r = np.hypot(yy - centre[0], xx - centre[1])
    img = np.asarray(image, dtype=np.float64)
    level = img[r < 0.7 * r0].mean() if (r < 0.7 * r0).any() else img.max()
    acc, cnt = _radial_bins(r, img / max(level, 1e-30), r0, bin_width)
    return _crossing(acc, cnt, r0, threshold, bin_width, smooth)[0]


def _radial_bins(r: np.ndarray, values: np.ndarray, r0: float, bin_width: float) -> tuple[np.ndarray, np.ndarray]:
    """Sums of ``values`` and pixel counts in radial bins of ``bin_width`` px up to 1.6·``r0`` (``r`` the pixels'
    distances, same shape), the last bin holding everything beyond: the binning of :func:`edge_radius` and
    :func:`image_edge_radius` alike."""
    n_bins = int(np.ceil(1.6 * r0 / bin_width))
    idx = np.minimum((r / bin_width).astype(int), n_bins).ravel()
    return np.bincount(idx, values.ravel(), n_bins + 1), np.bincount(idx, None, n_bins + 1)


def _crossing(acc: np.ndarray, cnt: np.ndarray, r0: float, threshold: float, bin_width: float,
              smooth: float) -> tuple[float, np.ndarray]:
    """The outermost radius where the binned profile ``acc / cnt`` (n + 1 bins, the last one the overflow) falls
    to ``threshold`` (``r0`` if it never does), and the profile (2, n)."""
    n_bins = len(acc) - 1
    # running means over ``smooth`` px (weighted by pixel counts): single bins hold few pixels
    width = 2 * int(round(smooth / bin_width / 2)) + 1  # odd: no shift
    kernel = np.ones(width)
    a = np.convolve(acc[:-1], kernel, "same")
    c = np.convolve(cnt[:-1], kernel, "same")
    radii = (np.arange(n_bins) + 0.5) * bin_width
    ok = c > 0
    radii, prof = radii[ok], a[ok] / c[ok]
    above = np.nonzero(prof >= threshold)[0]
    if len(above) == 0 or above[-1] + 1 >= len(prof):
        return r0, np.stack([radii, prof])
    i = above[-1] + 1  # the outermost crossing: dips inside the disk do not count
    r1, r2, p1, p2 = radii[i - 1], radii[i], prof[i - 1], prof[i]
    return float(r1 + (p1 - threshold) * (r2 - r1) / max(p1 - p2, 1e-30)), np.stack([radii, prof])

