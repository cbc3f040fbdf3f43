"""Exact symmetries of a sample (flips and transposes of scan, patterns and phase together)."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np

from ...base.errors import ConfigError
from ...physics.optics import ABERRATION_ORDERS
from .geometry import BlockGeometry

log = logging.getLogger("phasestem.learn")


# =============================================================================================
# augmentation (symmetry group of the square, applied to a whole sample)
# =============================================================================================
@dataclass(frozen=True)
class Symmetry:
    """One element of the square's symmetry group: transpose first, then flips (about the origin)."""

    transpose: bool = False
    flip_y: bool = False
    flip_x: bool = False

    @classmethod
    def all(cls) -> list[Symmetry]:
        return [cls(t, fy, fx) for t in (False, True) for fy in (False, True) for fx in (False, True)]

    def flips(self) -> tuple[bool, bool]:
        return self.flip_y, self.flip_x


def flip_index(n: int, shift: int = 0) -> np.ndarray:
    """Index map of i → (−i − shift) mod n (a flip about the periodic origin)."""
    return (-np.arange(n) - shift) % n


def detector_flip_index(n: int) -> np.ndarray:
    """Index map k → −k of an fftshift-ed axis of length n (centre n//2)."""
    return (2 * (n // 2) - np.arange(n)) % n


def transform_phase(phase: np.ndarray, sym: Symmetry) -> np.ndarray:
    """Apply ``sym`` to a phase image (Ny, Nx) whose pixel 0 sits at 0 Å (periodic)."""
    if sym.transpose:
        phase = phase.T
    if sym.flip_y:
        phase = phase[flip_index(phase.shape[0])]
    if sym.flip_x:
        phase = phase[:, flip_index(phase.shape[1])]
    return np.ascontiguousarray(phase)


def transform_patterns(patterns: np.ndarray, sym: Symmetry) -> np.ndarray:
    """Apply ``sym`` to the detector axes of (..., H, W) fftshift-ed patterns."""
    if sym.transpose:
        patterns = np.swapaxes(patterns, -1, -2)
    if sym.flip_y:
        patterns = patterns[..., detector_flip_index(patterns.shape[-2]), :]
    if sym.flip_x:
        patterns = patterns[..., detector_flip_index(patterns.shape[-1])]
    return np.ascontiguousarray(patterns)


def scan_source_indices(rows: np.ndarray, cols: np.ndarray, sym: Symmetry, geometry: BlockGeometry
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Original scan indices (rows', cols') that the transformed sample's ``rows`` × ``cols`` come from.

    The transformed scan at (i, j) is the original at (rows'[i], cols'[j]) — read original[rows', cols']
    and then swap the two scan axes when ``sym.transpose``.
    """
    shifts = [int(round(2 * o / s)) for o, s in zip(geometry.scan_origin, geometry.scan_step, strict=True)]
    r = flip_index(geometry.scan_shape[0], shifts[0])[rows] if sym.flip_y else np.asarray(rows)
    c = flip_index(geometry.scan_shape[1], shifts[1])[cols] if sym.flip_x else np.asarray(cols)
    return (c, r) if sym.transpose else (r, c)


def check_augmentable(geometry: BlockGeometry, aberrations: dict[str, float] | None, source: str) -> None:
    """Raise :class:`ConfigError` when flips/transposes would not be exact symmetries of the data."""
    problems = []
    for ax in (0, 1):
        scan_len = geometry.scan_shape[ax] * geometry.scan_step[ax]
        cell = geometry.phase_shape[ax] * geometry.phase_sampling[ax]
        if abs(scan_len - cell) > 1e-3 * cell:
            problems.append(f"the scan spans {scan_len:g} Å but the periodic cell is {cell:g} Å on axis {ax}")
        m = 2 * geometry.scan_origin[ax] / geometry.scan_step[ax]
        if abs(m - round(m)) > 1e-6:
            problems.append(f"scan origin {geometry.scan_origin[ax]:g} Å is not a multiple of half the step")
    if geometry.scan_shape[0] != geometry.scan_shape[1] or geometry.phase_shape[0] != geometry.phase_shape[1] or \
            abs(geometry.scan_step[0] - geometry.scan_step[1]) > 1e-9:
        problems.append("the scan or phase grid is not square (transposes need a square geometry)")
    for key, val in (aberrations or {}).items():
        order = ABERRATION_ORDERS.get(key)
        if order is not None and order[1] != 0 and abs(val) > 0:
            problems.append(f"aberration {key} = {val:g} Å breaks the probe's mirror symmetry")
    if problems:
        raise ConfigError(f"{source}: augment=true needs exact symmetries, but " + "; ".join(problems)
                          + ". Set data.augment: false.")
