"""Does the data support what a restorer changed? The restored phase against AD's own, through the run's forward
model and its measured diffraction patterns (issue 68, item 2), not against AD's phase.

The run's model comes rebuilt as a :class:`GuardRun` (:func:`phasestem.learn.hybrid.guard_run`: the final object,
probe, positions, tilt and slice thickness of ``results.h5``, the patterns read and transformed as the run read
them). The restored object is AD's with the restored phase in place of AD's inside the scanned field: AD's amplitude,
probe and positions; the change (restored − AD, its median over the field removed) divided evenly over the slices.
Misfit of position j, ``m_j`` (twice a negative log-likelihood, up to a constant):

* counted data (:mod:`phasestem.io.counts`): the Poisson deviance 2 Σ_k (μ − D − D ln(μ/D)) of the model counts
  μ = c·I against the counts D (c electrons per pattern; both + :data:`POISSON_EPS` counts, as the run's data term);
* noise-free or uncounted data: the Gaussian misfit of amplitudes Σ_k (√I − √D)² / s_k², whose floor s_k² is AD's
  own mean squared amplitude residual at detector pixel k over every position: what the model leaves unexplained,
  in place of a counting noise such data do not have.

**Data-support map** (:func:`data_guard`, ``support``): each position's excess m_j(restored) − m_j(AD) spread over
its probe-intensity footprint (weights summing to 1), summed over a column-sized soft disk around each pixel and
shown as sign(E)·√|E|, σ-like units (> 0: the restored phase explains the patterns there worse than AD's).

**Local test** at each feature (:func:`site_verdict`): the sites where restored and AD differ most (local maxima of
|change| smoothed at the column scale, above ``site_level`` × its 99.5th percentile over the field, ``separation``
apart). A site's soft disk of ``radius`` has two states the patterns can tell apart: as restored, and the opposite
state: of AD's own disk and the disk emptied to its surroundings (AD's median over a ring around it), the one farther
from the restored disk (no column where the restoration shows one; AD's column where it removed one). Each, all else
AD's, is compared with the patterns of the positions whose probe (95 % of its intensity) reaches the disk: M = Σ_j
Δm_j = 2ΔNLL against AD's object, and z = sign·√|M_restored − M_opposite|, i.e. √(2ΔNLL) in units of the counting
noise (or of the model floor). **Flagged** when z > ``threshold``: the patterns prefer the opposite state (column
absent vs present) by more than that many σ. Asking present against absent, not restored against AD, keeps the test
from flagging a real column whose height the restoration set otherwise than AD's fit: frozen phonons, partial
coherence and AD's own probe make the height that a single coherent object fits differ from the truth's (on abTEM
crystals the truth's own columns fit worse than AD's), but a column that is there fits far better than none.
``change_z`` keeps the z of the restored disk against AD's. Chance (:func:`chance_flagged`): when the restored state
is the true one, M_restored − M_opposite is −d² ± 2d (d: the two fixed states' distance in σ; Gaussian approximation
of the likelihood ratio), above t² with probability Φ(−(t² + d²)/2d) ≤ Φ(−t) whatever the feature's size (0.13 % at
3 σ). Optimistic where the opposite state is AD's disk and AD has fitted the noise itself, or where the
floor is smaller than the model's real error (pixels of a noise-free residual are not independent).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from scipy import ndimage, signal

__all__ = ["GuardRun", "DataGuardResult", "data_guard", "site_verdict", "chance_flagged", "soft_disk", "change_sites",
           "guard_line"]

log = logging.getLogger("phasestem.learn")

#: counts added to model and measured counts in the Poisson deviance (the run's data term adds the same)
POISSON_EPS = 0.5
#: share of the probe's intensity inside the footprint radius that decides which positions see a site
FOOTPRINT_SHARE = 0.95
#: positions per forward-model call
CHUNK = 256


@dataclass
class GuardRun:
    """A finished run, rebuilt for the guard.

    ``forward(change, index)``: model intensities (B, h, w), fftfreq order, of AD's object with ``change`` (Ny, Nx)
    rad added to its phase in the object frame (None: AD's object), at flat scan indices ``index`` (B,);
    ``measured(index)``: the measured patterns (B, h, w) in the same order and units (÷ the mean total count);
    ``counts``: electrons per pattern for the Poisson deviance, None when the patterns are not counts;
    ``positions_px`` (N, 2) probe centres in object pixels; ``probe_intensity`` (wy, wx) Σ_m |P_m|², its centre at
    (wy // 2, wx // 2); ``origin_px``: the dataset's pixel (0, 0) in object pixels; ``sampling`` (dy, dx) Å."""

    forward: Callable[[torch.Tensor | None, torch.Tensor], torch.Tensor]
    measured: Callable[[torch.Tensor], torch.Tensor]
    counts: float | None
    reason: str
    positions_px: np.ndarray
    probe_intensity: np.ndarray
    object_shape: tuple[int, int]
    origin_px: tuple[int, int]
    sampling: tuple[float, float]
    source: str


@dataclass
class DataGuardResult:
    """``support`` (H, W) float32, dataset frame, σ-like (NaN outside the field); ``sites`` (M, 2) (row, col) dataset
    pixels of the tested sites, ``statistic`` (M,) their z (the restored disk against its opposite state),
    ``change_z`` (M,) z of the restored disk against AD's, ``opposite`` (M,) int8 the opposite state (0: AD's disk,
    1: the disk emptied), ``flagged`` (M,) bool; ``threshold``, ``chance`` (the share of supported features chance
    flags), ``noise`` (the misfit and its floor in words), ``positions`` (the patterns compared), ``counted``: whether
    the misfit was the counts' (else the floor is AD's own residual, and :func:`guard_line` says what that means)."""

    support: np.ndarray
    sites: np.ndarray
    statistic: np.ndarray
    change_z: np.ndarray
    opposite: np.ndarray
    flagged: np.ndarray
    threshold: float
    chance: float
    noise: str
    positions: int
    counted: bool = True


def chance_flagged(threshold: float) -> float:
    """Φ(−t): the most often the noise flags a site whose restored state is the true one, at ``threshold`` σ (module
    docstring)."""
    return 0.5 * math.erfc(float(threshold) / math.sqrt(2.0))


def soft_disk(shape: tuple[int, int], centre: tuple[float, float], radius_px: float, taper_px: float) -> np.ndarray:
    """Weights (H, W) float32: 1 within ``radius_px`` of ``centre`` (row, col), a raised-cosine edge over
    ``taper_px``, 0 beyond."""
    yy, xx = np.ogrid[:shape[0], :shape[1]]
    d = np.hypot(yy - centre[0], xx - centre[1])
    t = np.clip((d - radius_px) / max(taper_px, 1e-6), 0.0, 1.0)
    return (0.5 * (1.0 + np.cos(np.pi * t))).astype(np.float32)


def change_sites(change: np.ndarray, field: np.ndarray, sampling: tuple[float, float], smooth: float = 0.35,
                 separation: float = 1.0, margin: float = 1.0, site_level: float = 0.25,
                 max_sites: int = 2000) -> np.ndarray:
    """Sites (M, 2) (row, col) px where ``change`` (H, W) rad is largest: local maxima of |change| smoothed by a
    Gaussian of ``smooth`` Å, ``separation`` Å apart, at least ``margin`` Å inside ``field``, above ``site_level`` ×
    its 99.5th percentile over the field; the ``max_sites`` strongest, strongest first."""
    px = min(sampling)
    inside = np.asarray(field) > 0
    smoothed = np.abs(ndimage.gaussian_filter(np.where(inside, change, 0.0), smooth / px))
    core = ndimage.binary_erosion(inside, iterations=max(1, int(round(margin / px))))
    if not core.any():
        return np.zeros((0, 2), np.int64)
    level = site_level * float(np.percentile(smoothed[core], 99.5))
    size = 2 * int(round(separation / px)) + 1
    peaks = (smoothed == ndimage.maximum_filter(smoothed, size=size)) & core & (smoothed > max(level, 1e-12))
    rows, cols = np.nonzero(peaks)
    order = np.argsort(-smoothed[rows, cols], kind="stable")[:max_sites]
    return np.stack([rows[order], cols[order]], 1).astype(np.int64)


def _to_object_frame(image: np.ndarray, origin_px: tuple[int, int], object_shape: tuple[int, int]) -> np.ndarray:
    """A dataset-frame image (h, w) placed in the object frame (Ny, Nx) (zeros elsewhere)."""
    out = np.zeros(object_shape, np.float32)
    oy, ox = origin_px
    sy, sx = max(0, -oy), max(0, -ox)
    h, w = min(image.shape[0], object_shape[0] - oy), min(image.shape[1], object_shape[1] - ox)
    if h > sy and w > sx:
        out[oy + sy:oy + h, ox + sx:ox + w] = image[sy:h, sx:w]
    return out


def _to_dataset_frame(plane: np.ndarray, origin_px: tuple[int, int], shape: tuple[int, int]) -> np.ndarray:
    """An object-frame plane cut to the dataset frame (``shape``; NaN where the object frame does not reach)."""
    out = np.full(shape, np.nan, np.float32)
    oy, ox = origin_px
    sy, sx = max(0, -oy), max(0, -ox)
    h, w = min(shape[0], plane.shape[0] - oy), min(shape[1], plane.shape[1] - ox)
    if h > sy and w > sx:
        out[sy:h, sx:w] = plane[oy + sy:oy + h, ox + sx:ox + w]
    return out


def _footprint_radius(probe_intensity: np.ndarray) -> float:
    """Radius (px) about the window's centre holding :data:`FOOTPRINT_SHARE` of the probe's intensity."""
    wy, wx = probe_intensity.shape
    yy, xx = np.ogrid[:wy, :wx]
    d = np.hypot(yy - wy // 2, xx - wx // 2).ravel()
    order = np.argsort(d)
    cumulative = np.cumsum(probe_intensity.ravel()[order]) / max(float(probe_intensity.sum()), 1e-30)
    return float(d[order][min(np.searchsorted(cumulative, FOOTPRINT_SHARE), d.size - 1)])


class _Misfit:
    """m_j of model intensities against the measured patterns (Poisson deviance, or the Gaussian amplitude misfit
    over the floor s_k² of AD's residual)."""

    def __init__(self, run: GuardRun):
        self.run, self.floor = run, None
        if run.counts is None:
            self.floor = self._amplitude_floor()

    def _amplitude_floor(self) -> torch.Tensor:
        total, n = None, len(self.run.positions_px)
        for a in range(0, n, CHUNK):
            index = torch.arange(a, min(a + CHUNK, n))
            r = _amplitudes(self.run.forward(None, index)) - _amplitudes(self.run.measured(index))
            total = r.square().sum(0) if total is None else total + r.square().sum(0)
        floor = total.double() / n
        return floor.clamp_min(1e-6 * float(floor.mean()) + 1e-30)

    def __call__(self, model_i: torch.Tensor, measured: torch.Tensor) -> np.ndarray:
        if self.floor is None:
            mu = model_i.double().clamp_min(0) * self.run.counts + POISSON_EPS
            d = measured.double().clamp_min(0) * self.run.counts + POISSON_EPS
            m = 2.0 * (mu - d - d * torch.log(mu / d)).sum((-2, -1))
        else:
            r = _amplitudes(model_i).double() - _amplitudes(measured).double()
            m = (r.square() / self.floor.to(r.device)).sum((-2, -1))
        return m.cpu().numpy()

    def describe(self) -> str:
        if self.floor is None:
            return (f"Poisson deviance at {self.run.counts:.4g} e⁻ per pattern ({self.run.reason}); z = √(2ΔNLL) "
                    "in units of the counting noise")
        s = self.floor.sqrt()
        return (f"Gaussian amplitude misfit ({self.run.reason}): floor = AD's own rms amplitude residual per detector "
                f"pixel, median {float(s.median()):.3g} (range {float(s.min()):.3g}–{float(s.max()):.3g}, "
                "pattern √I units, a pattern's I summing to ≈ 1); z in units of that floor")


def _amplitudes(intensities: torch.Tensor) -> torch.Tensor:
    return intensities.float().clamp_min(0).sqrt()


def _misfits(run: GuardRun, misfit: _Misfit, change: torch.Tensor | None, index: np.ndarray) -> np.ndarray:
    """m_j (len(index),) float64 of AD's object plus ``change`` at flat scan indices ``index``."""
    out = []
    for a in range(0, len(index), CHUNK):
        idx = torch.as_tensor(index[a:a + CHUNK], dtype=torch.long)
        with torch.no_grad():
            out.append(misfit(run.forward(change, idx), run.measured(idx)))
    return np.concatenate(out) if out else np.zeros(0)


def _support_map(run: GuardRun, excess: np.ndarray, disk: np.ndarray) -> np.ndarray:
    """Σ_j excess_j × footprint_j (weights summing to 1) summed over ``disk`` (a kernel centred at its middle pixel),
    object frame, as sign·√|·|."""
    ny, nx = run.object_shape
    spikes = np.zeros((ny, nx), np.float64)
    rows, cols = np.round(run.positions_px).astype(np.int64).T
    keep = (rows >= 0) & (rows < ny) & (cols >= 0) & (cols < nx)
    np.add.at(spikes, (rows[keep], cols[keep]), excess[keep])
    footprint = run.probe_intensity / max(float(run.probe_intensity.sum()), 1e-30)
    spread = signal.fftconvolve(spikes, footprint, mode="full")
    cy, cx = footprint.shape[0] // 2, footprint.shape[1] // 2
    spread = spread[cy:cy + ny, cx:cx + nx]
    dy, dx = disk.shape[0] // 2, disk.shape[1] // 2
    summed = signal.fftconvolve(spread, disk, mode="full")[dy:dy + ny, dx:dx + nx]
    return np.sign(summed) * np.sqrt(np.abs(summed))


def site_verdict(m_restored: float, m_alternative: float, threshold: float) -> tuple[float, bool]:
    """(z, flagged) of one site from the excess misfits (2ΔNLL against AD's object) of its disk as restored
    (``m_restored``) and in the opposite state (``m_alternative``): z = sign·√|m_restored − m_alternative|, flagged
    when z > ``threshold`` (the patterns prefer the opposite state by more than that many σ)."""
    delta = float(m_restored) - float(m_alternative)
    z = math.copysign(math.sqrt(abs(delta)), delta)
    return z, bool(z > threshold)


def _opposite(ad_phase: np.ndarray, change: np.ndarray, field: np.ndarray, centre: tuple[int, int], r_px: float,
              taper: float) -> tuple[np.ndarray, np.ndarray | None]:
    """(the disk's weights, the change (dataset frame) that puts the site in its opposite state; None: AD's own
    disk): of AD's disk and the disk emptied to its surroundings (AD's median over a ring one radius wide around
    it, inside the field), the one farther from the restored disk."""
    w = soft_disk(change.shape, centre, r_px, taper)
    yy, xx = np.ogrid[:change.shape[0], :change.shape[1]]
    d = np.hypot(yy - centre[0], xx - centre[1])
    ring = (d > r_px + taper) & (d <= 2 * r_px + taper + 1) & field
    background = float(np.median(ad_phase[ring] if ring.any() else ad_phase[field]))
    restored = ad_phase + change
    if float((w * change ** 2).sum()) >= float((w * (restored - background) ** 2).sum()):
        return w, None
    return w, w * (background - ad_phase)


def _disk_excess(run: GuardRun, misfit: _Misfit, ad: np.ndarray, local: np.ndarray, near: np.ndarray) -> float:
    """Σ over positions ``near`` of the excess misfit of AD's object plus ``local`` (dataset frame, rad)."""
    placed = _to_object_frame(local.astype(np.float32), run.origin_px, run.object_shape)
    return float((_misfits(run, misfit, torch.as_tensor(placed), near) - ad[near]).sum())


def _local_tests(run: GuardRun, misfit: _Misfit, ad: np.ndarray, ad_phase: np.ndarray, change: np.ndarray,
                 field: np.ndarray, sites: np.ndarray, r_px: float, taper: float,
                 threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(z against the opposite state, z against AD's disk, the opposite state: 0 AD's disk / 1 emptied, flagged)
    per site (:func:`site_verdict`), over the positions whose footprint reaches its disk."""
    oy, ox = run.origin_px
    reach = _footprint_radius(run.probe_intensity) + r_px + taper
    out = np.zeros((len(sites), 4))
    for i, (row, col) in enumerate(sites):
        near = np.nonzero(np.hypot(*(run.positions_px - np.asarray((row + oy, col + ox), float)).T) <= reach)[0]
        if near.size == 0:
            continue
        w, emptied = _opposite(ad_phase, change, field, (row, col), r_px, taper)
        m_restored = _disk_excess(run, misfit, ad, w * change, near)
        m_alternative = 0.0 if emptied is None else _disk_excess(run, misfit, ad, emptied, near)
        z, flagged = site_verdict(m_restored, m_alternative, threshold)
        out[i] = (z, math.copysign(math.sqrt(abs(m_restored)), m_restored), emptied is not None, flagged)
    log.info("data guard: positions within %.3g Å of a site compared", reach * min(run.sampling))
    return out[:, 0], out[:, 1], out[:, 2].astype(np.int8), out[:, 3] > 0


def data_guard(run: GuardRun, restored: np.ndarray, ad_phase: np.ndarray, field: np.ndarray, radius: float = 0.7,
               threshold: float = 3.0, site_level: float = 0.25, separation: float = 1.0,
               max_sites: int = 2000, sites: np.ndarray | None = None) -> DataGuardResult:
    """The data-support map and the local test of ``restored`` against ``ad_phase`` (both (H, W) rad, dataset frame
    at the run's pixel; ``field`` (H, W) 1 inside the scanned field) on the patterns of ``run`` (module docstring).
    ``radius`` (Å): the column disk (a raised-cosine edge of half that beyond it); ``threshold``: σ that flags;
    ``sites`` (M, 2) (row, col) dataset pixels: test these instead of :func:`change_sites`' (e.g. known columns)."""
    inside = np.asarray(field) > 0
    ad_phase = np.asarray(ad_phase, np.float64)
    change = np.asarray(restored, np.float64) - ad_phase
    change = np.where(inside, change - (np.median(change[inside]) if inside.any() else 0.0), 0.0)
    misfit = _Misfit(run)
    log.info("data guard on %s: %s", run.source, misfit.describe())
    every = np.arange(len(run.positions_px))
    ad = _misfits(run, misfit, None, every)
    whole = _to_object_frame(change.astype(np.float32), run.origin_px, run.object_shape)
    excess = _misfits(run, misfit, torch.as_tensor(whole), every) - ad
    r_px, taper = radius / min(run.sampling), 0.5 * radius / min(run.sampling)
    half = int(math.ceil(r_px + taper)) + 1
    support = _to_dataset_frame(_support_map(run, excess, soft_disk((2 * half + 1,) * 2, (half, half), r_px, taper)),
                                run.origin_px, change.shape)
    support[~inside] = np.nan
    if sites is None:
        sites = change_sites(change, field, run.sampling, radius / 2, separation, 1.5 * radius, site_level, max_sites)
    sites = np.asarray(sites, np.int64).reshape(-1, 2)
    z, change_z, opposite, flagged = _local_tests(run, misfit, ad, ad_phase, change, inside, sites, r_px, taper,
                                                  threshold)
    log.info("data guard: %d sites tested (disk %.3g Å), %d flagged (the opposite state fits better by > %g σ); "
             "restored vs AD over all %d patterns: excess misfit %.4g", len(sites), radius, int(flagged.sum()),
             threshold, len(every), float(excess.sum()))
    return DataGuardResult(support, sites, z.astype(np.float32), change_z.astype(np.float32), opposite, flagged,
                           float(threshold), chance_flagged(threshold), misfit.describe(), len(every),
                           run.counts is not None)


def guard_line(result: DataGuardResult, out_file) -> str:
    """The printed line: sites tested, flagged and the share chance would flag."""
    n, k = len(result.sites), int(result.flagged.sum())
    verdict = ("features the data do not support (or columns they hold that the restoration removed)" if k else
               "every tested feature is in the data, or the patterns cannot tell")
    chance = 100 * result.chance
    caveat = ("" if result.counted else "; without counting noise the floor is AD's own residual, far below the "
              "model's error on data it cannot fully explain (frozen phonons, partial coherence): there most features "
              "are flagged (abTEM crystals: 82-100 % of intact columns), so trust it on counted data; restore "
              "--verdict judges every column against specimens simulated at this geometry, noise-free too")
    return (f"data guard: {n} site{'s' * (n != 1)} where the restoration differs most tested against "
            f"{result.positions} measured patterns, {k} flagged (the opposite state, column absent or present, fits "
            f"them better by more than {result.threshold:g} σ; {chance:.2f} % of true features would be by chance; "
            f"data_support and flagged_sites in {out_file}): {verdict}{caveat}")
