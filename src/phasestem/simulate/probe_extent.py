"""How large an area does the probe illuminate over one block of scan positions?

Seed 000 crops 76 × 76 px phase targets for a 14 × 14 block at 2 Å step, calling 76 px "the
bright area the probe illuminates", a pixel being bright above 5 % of the maximum probe
intensity. :func:`illuminated_extent` computes that side from the probe itself. A threshold on the peak says
little about where a probe's intensity is when aberrations spread it into a faint halo (at 30 mrad and Cs 0.1 mm
the 5 % rule sees a central peak 3.7 Å across and leaves most of the intensity outside); ``fraction`` sizes the
probe by its encircled intensity instead (:func:`encircled_diameter`). The probe's size as phasestem states it
(``phasestem plan`` too) is :func:`phasestem.physics.optics.probe_radius`; :attr:`Extent.inside_probe_radius` says
how much of the intensity a disk of that radius holds.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..physics.optics import BandLimitAction, make_probe, probe_radius


@dataclass
class Extent:
    side_px: int  # side of the bounding square in output pixels
    side_angstrom: float
    probe_diameter_angstrom: float  # extent of one probe above the threshold
    pixels_per_angstrom: float
    inside_probe_radius: float  # share of one probe's intensity within the probe radius (physics.optics.probe_radius)


def _centred_radii(intensity: np.ndarray, sampling: float) -> np.ndarray:
    """Distance (Å) of every pixel from the intensity's centroid, on pixels of ``sampling`` Å."""
    yy, xx = np.indices(intensity.shape, dtype=np.float64)
    total = intensity.sum()
    cy, cx = (intensity * yy).sum() / total, (intensity * xx).sum() / total
    return np.hypot(yy - cy, xx - cx) * sampling


def encircled_fraction(intensity: np.ndarray, sampling: float, radius: float) -> float:
    """Share of a 2-D ``intensity`` (pixels of ``sampling`` Å) within ``radius`` Å of its centroid."""
    inten = np.asarray(intensity, np.float64)
    return float(inten[_centred_radii(inten, sampling) <= radius].sum() / inten.sum())


def encircled_diameter(intensity: np.ndarray, sampling: float, fraction: float) -> float:
    """Diameter (Å) of the smallest disk about the intensity's centroid that holds ``fraction`` of it, for a
    2-D ``intensity`` on pixels of ``sampling`` Å (periodic grid: the probe must fit in it)."""
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must be in (0, 1), got {fraction}")
    inten = np.asarray(intensity, np.float64)
    r = _centred_radii(inten, 1.0).ravel()
    order = np.argsort(r)
    held = np.cumsum(inten.ravel()[order]) / inten.sum()
    return float(2 * (r[order][np.searchsorted(held, fraction)] + 0.5) * sampling)


def illuminated_extent(energy: float, semiangle: float, aberrations: dict | None, sampling: float = 100 / 512,
                       window: int = 512, block: int = 14, step: float = 2.0, threshold: float = 0.05,
                       pixels_per_angstrom: float = 2.56, on_band_limit: BandLimitAction = "raise",
                       fraction: float | None = None) -> Extent:
    """Side (px at ``pixels_per_angstrom``) of the square holding every pixel above ``threshold`` × the
    maximum probe intensity, over a ``block`` × ``block`` raster at ``step`` Å; with ``fraction``, of the square
    holding each probe's disk of that encircled intensity (:func:`encircled_diameter`) instead.

    The probe is computed on a (window × window) grid of ``sampling`` Å; the union of the shifted single-probe
    regions is the single-probe region swept over (block − 1)·step Å.
    """
    probe = make_probe((window, window), (sampling, sampling), energy, semiangle, aberrations,
                       on_band_limit=on_band_limit)
    inten = probe.abs().square().double()
    if fraction is not None:
        single = encircled_diameter(inten.numpy(), sampling, fraction)
    else:
        above = (inten > threshold * inten.max()).numpy()
        ys, xs = np.nonzero(above)
        # extent of one probe in Å, measured edge to edge of the bright pixels
        single = float(max((ys.max() - ys.min() + 1) * sampling, (xs.max() - xs.min() + 1) * sampling))
    side = single + (block - 1) * step
    inside = encircled_fraction(inten.numpy(), sampling, probe_radius(energy, semiangle, aberrations or {})[0])
    return Extent(int(round(side * pixels_per_angstrom)), side, single, pixels_per_angstrom, inside)
