"""Does the data support each restored column? A verdict per site, calibrated by simulation (issue 81, item 1).

Images are (H, W) phases in rad on one grid of pixel ``sampling`` (dy, dx) Å; sites are (M, 2) pixel (row, col).

* **Height** of a column at a site (:func:`column_heights`): the mean over a disk of :data:`COLUMN_RADIUS` Å minus
  the local background (the :data:`BACKGROUND_PERCENTILE`-th percentile within :data:`BACKGROUND_RADIUS` Å), rad.
* **Candidates** (:func:`find_sites`): the restoration's columns, local maxima of the image smoothed at
  :data:`SMOOTH` Å, :data:`SEPARATION` Å apart, :data:`MARGIN` Å inside the scanned field, with a height of at least
  :data:`CANDIDATE_LEVEL` × the image's **column scale** (:func:`column_scale`: the
  :data:`SCALE_PERCENTILE`-th percentile of the heights of every maximum): the claims a reader of the restoration
  would make.
* **Score** (:func:`evidence`): the share of the restored column that AD's own phase (the data's reconstruction)
  shows at the site, each image in units of its own column scale, ``(h_AD / scale_AD) / max(h_restored /
  scale_restored, FLOOR)``: about 1 where AD shows what the restoration shows, light and heavy columns alike; near 0
  where the restoration put a column that AD's phase does not show. A fixed function: it needs no counting noise
  and works on noise-free data.
* **p-value** (:func:`conformal_p`): against the scores of calibration sites whose truth holds no column
  (:mod:`phasestem.trust.calibration`: the project's simulator at the run's optics, scan and dose, reconstructed
  by the same AD recipe and restored by the same model): ``p = (1 + #{null ≥ s}) / (1 + n)``, the chance that a
  site without a column in the truth scores at least ``s``. A truth-empty calibration site that the restoration
  left empty (a vacancy not filled) made no claim and scores −∞. Valid as far as the run's empty sites and the
  calibration's are exchangeable (same geometry, dose, recipe and model; the specimens differ).
* **Selection** (:func:`benjamini_hochberg`): the candidates whose "no column here" is rejected at false-discovery
  rate α are **supported**; among them the expected share without a column is ≤ α. The rest are **not supported by
  the data**: read them from AD's phase.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage

__all__ = ["COLUMN_RADIUS", "Verdict", "column_heights", "column_scale", "find_sites", "evidence", "conformal_p",
           "benjamini_hochberg", "verdict", "SITE_TABLE", "site_table"]

#: Å: the disk a column's height is read over
COLUMN_RADIUS = 0.4
#: Å: the neighbourhood whose low percentile is the column's background
BACKGROUND_RADIUS = 1.6
BACKGROUND_PERCENTILE = 20.0
#: Å: the Gaussian (σ) the maxima are found on; the least distance between two sites; how far inside the field
SMOOTH = 0.2
SEPARATION = 0.8
MARGIN = 1.0
#: the column scale is this percentile of the heights of every maximum (robust to a few heavy columns)
SCALE_PERCENTILE = 75.0
#: a maximum of the restoration is a candidate column from this fraction of its column scale
CANDIDATE_LEVEL = 0.3
#: the smallest restored height (in column scales) a score divides by
FLOOR = 0.1
#: the default false-discovery rate
ALPHA = 0.05


def _disk_offsets(radius_px: tuple[float, float]) -> np.ndarray:
    ry, rx = (max(r, 0.5) for r in radius_px)
    yy, xx = np.mgrid[-int(np.ceil(ry)):int(np.ceil(ry)) + 1, -int(np.ceil(rx)):int(np.ceil(rx)) + 1]
    inside = (yy / ry) ** 2 + (xx / rx) ** 2 <= 1.0
    return np.stack([yy[inside], xx[inside]], 1)


def _values(image: np.ndarray, sites: np.ndarray, offsets: np.ndarray) -> np.ndarray:
    """(M, K) image values at ``sites`` + ``offsets`` (nearest pixel, clipped at the image's edges)."""
    h, w = image.shape
    centre = np.rint(np.asarray(sites, np.float64)).astype(int)
    rows = np.clip(centre[:, None, 0] + offsets[None, :, 0], 0, h - 1)
    cols = np.clip(centre[:, None, 1] + offsets[None, :, 1], 0, w - 1)
    return np.asarray(image, np.float64)[rows, cols]


def column_heights(image: np.ndarray, sites: np.ndarray, sampling: tuple[float, float]) -> np.ndarray:
    """(M,) rad: the mean of ``image`` over a disk of :data:`COLUMN_RADIUS` Å at each site minus the
    :data:`BACKGROUND_PERCENTILE`-th percentile within :data:`BACKGROUND_RADIUS` Å."""
    sites = np.asarray(sites, np.float64).reshape(-1, 2)
    if len(sites) == 0:
        return np.zeros(0)
    disk = _values(image, sites, _disk_offsets((COLUMN_RADIUS / sampling[0], COLUMN_RADIUS / sampling[1])))
    around = _values(image, sites, _disk_offsets((BACKGROUND_RADIUS / sampling[0], BACKGROUND_RADIUS / sampling[1])))
    return disk.mean(1) - np.percentile(around, BACKGROUND_PERCENTILE, axis=1)


def _maxima(image: np.ndarray, field: np.ndarray, sampling: tuple[float, float]) -> np.ndarray:
    """(K, 2) local maxima of ``image`` smoothed at :data:`SMOOTH` Å, :data:`SEPARATION` Å apart, at least
    :data:`MARGIN` Å inside ``field``."""
    smooth = ndimage.gaussian_filter(np.asarray(image, np.float64), (SMOOTH / sampling[0], SMOOTH / sampling[1]))
    sep = _disk_offsets((SEPARATION / sampling[0], SEPARATION / sampling[1]))
    footprint = np.zeros((2 * np.abs(sep[:, 0]).max() + 1, 2 * np.abs(sep[:, 1]).max() + 1), bool)
    footprint[sep[:, 0] + footprint.shape[0] // 2, sep[:, 1] + footprint.shape[1] // 2] = True
    inside = np.asarray(field) > 0
    margin = (max(1, int(round(MARGIN / sampling[0]))), max(1, int(round(MARGIN / sampling[1]))))
    inside = ndimage.binary_erosion(inside, np.ones((2 * margin[0] + 1, 2 * margin[1] + 1), bool))
    peaks = (smooth == ndimage.maximum_filter(smooth, footprint=footprint, mode="nearest")) & inside
    return np.argwhere(peaks).astype(np.float64)


def column_scale(image: np.ndarray, field: np.ndarray, sampling: tuple[float, float]) -> float:
    """rad: the :data:`SCALE_PERCENTILE`-th percentile of the heights of every local maximum of ``image`` inside
    the field (the height of a typical column; 0 when there is none)."""
    heights = column_heights(image, _maxima(image, field, sampling), sampling)
    return float(np.percentile(heights, SCALE_PERCENTILE)) if len(heights) else 0.0


def find_sites(image: np.ndarray, field: np.ndarray, sampling: tuple[float, float]) -> np.ndarray:
    """(M, 2) pixel sites of ``image``'s columns: its maxima (:data:`SEPARATION` Å apart, :data:`MARGIN` Å inside
    ``field``) at least :data:`CANDIDATE_LEVEL` × its :func:`column_scale` high."""
    peaks = _maxima(image, field, sampling)
    heights = column_heights(image, peaks, sampling)
    if len(heights) == 0:
        return peaks
    scale = float(np.percentile(heights, SCALE_PERCENTILE))
    return peaks[heights >= CANDIDATE_LEVEL * max(scale, 1e-12)]


def evidence(ad: np.ndarray, restored: np.ndarray, sites: np.ndarray, field: np.ndarray,
             sampling: tuple[float, float], scales: tuple[float, float] | None = None
             ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(score, AD's height, the restored height) at ``sites``, heights in units of each image's own
    :func:`column_scale` (``scales``: the two, when already known); score = AD's ÷ max(restored, :data:`FLOOR`)
    (module docstring)."""
    scale_ad, scale_restored = scales or (column_scale(ad, field, sampling), column_scale(restored, field, sampling))
    a = column_heights(ad, sites, sampling) / max(scale_ad, 1e-12)
    r = column_heights(restored, sites, sampling) / max(scale_restored, 1e-12)
    return a / np.maximum(r, FLOOR), a, r


def conformal_p(scores: np.ndarray, null: np.ndarray) -> np.ndarray:
    """(M,) conformal p-values of ``scores`` against the ``null`` scores (truth-empty calibration sites; −∞ for
    one the restoration made no claim at): ``(1 + #{null ≥ s}) / (1 + n)``."""
    null = np.sort(np.asarray(null, np.float64))
    above = len(null) - np.searchsorted(null, np.asarray(scores, np.float64), side="left")
    return (1.0 + above) / (1.0 + len(null))


def benjamini_hochberg(p: np.ndarray, alpha: float) -> np.ndarray:
    """(M,) bool: the hypotheses Benjamini–Hochberg rejects at false-discovery rate ``alpha``."""
    p = np.asarray(p, np.float64)
    m = len(p)
    if m == 0:
        return np.zeros(0, bool)
    order = np.sort(p)
    passing = np.nonzero(order <= alpha * np.arange(1, m + 1) / m)[0]
    if len(passing) == 0:
        return np.zeros(m, bool)
    return p <= order[passing[-1]]


@dataclass
class Verdict:
    """The verdict on a restoration's columns: ``sites`` (M, 2) pixel (row, col) of the image the heights were read
    on; ``ad_height``, ``restored_height`` (M,) in column scales; ``score``, ``p_value``, ``supported`` (M,);
    ``alpha`` the false-discovery rate; ``absent`` (K, 2): AD's columns the restoration does not show (its height
    there < :data:`CANDIDATE_LEVEL` of a column); ``calibration``: what the null came from (geometry, dose,
    samples, null sites, CPU seconds, the share of the calibration's true columns supported)."""

    sites: np.ndarray
    ad_height: np.ndarray
    restored_height: np.ndarray
    score: np.ndarray
    p_value: np.ndarray
    supported: np.ndarray
    alpha: float
    absent: np.ndarray
    calibration: dict = field(default_factory=dict)

    @property
    def unsupported(self) -> int:
        return int((~np.asarray(self.supported, bool)).sum())

    def line(self) -> str:
        """One line a microscopist can act on."""
        m, n = len(self.sites), self.unsupported
        cal = self.calibration
        head = (f"verdict: {n} of {m} restored columns are not supported by the data at {self.alpha:.0%} FDR"
                + (": read them from AD's phase" if n else ""))
        extra = [f"{len(self.absent)} columns of AD's phase are absent from the restoration"] if len(self.absent) \
            else []
        if cal:
            extra.append(f"calibrated on {cal.get('null_sites', '?')} empty sites of {cal.get('samples', '?')} "
                         f"simulated specimens at this geometry ({cal.get('dose', '?')}), where "
                         f"{cal.get('power', float('nan')):.0%} of true columns were supported")
        return head + ("; " + "; ".join(extra) if extra else "")


def verdict(ad: np.ndarray, restored: np.ndarray, field: np.ndarray, sampling: tuple[float, float],
            null: np.ndarray, alpha: float = ALPHA, calibration: dict | None = None) -> Verdict:
    """The :class:`Verdict` of ``restored`` (candidates: :func:`find_sites`) against ``ad`` on the same grid, its
    p-values against the calibration's ``null`` scores (:func:`conformal_p`), supported by
    :func:`benjamini_hochberg` at ``alpha``."""
    if not 0 < alpha < 1:
        raise ValueError(f"the false-discovery rate must be in (0, 1), got {alpha}")
    sites = find_sites(restored, field, sampling)
    scales = (column_scale(ad, field, sampling), column_scale(restored, field, sampling))  # once for both site sets
    score, a, r = evidence(ad, restored, sites, field, sampling, scales)
    p = conformal_p(score, null)
    ad_sites = find_sites(ad, field, sampling)
    _, _, r_at_ad = evidence(ad, restored, ad_sites, field, sampling, scales)
    absent = ad_sites[r_at_ad < CANDIDATE_LEVEL]
    return Verdict(sites, a, r, score, p, benjamini_hochberg(p, alpha), float(alpha), absent, dict(calibration or {}))


#: the columns of the restored file's ``verdict_sites``: pixel (row, col) of ``phase``, heights in column scales
SITE_TABLE = np.dtype([("row", np.float32), ("col", np.float32), ("ad_height", np.float32),
                       ("restored_height", np.float32), ("score", np.float32), ("p_value", np.float32),
                       ("supported", np.int8)])


def site_table(v: Verdict) -> np.ndarray:
    """The :data:`SITE_TABLE` rows of ``v``."""
    rows = np.zeros(len(v.sites), SITE_TABLE)
    if len(v.sites):
        rows["row"], rows["col"] = v.sites[:, 0], v.sites[:, 1]
    rows["ad_height"], rows["restored_height"], rows["score"] = v.ad_height, v.restored_height, v.score
    rows["p_value"], rows["supported"] = v.p_value, np.asarray(v.supported, np.int8)
    return rows
