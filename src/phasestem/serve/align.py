"""Compare's alignment: each run's phase moved onto the first run's before they are subtracted or profiled.

Two reconstructions of one specimen rarely sit on the same pixels (a different scan origin, position refinement,
a drift between the two acquisitions): subtracted as they are, the difference map shows the shift, not the
changes. :func:`phase_shift` finds the sub-pixel shift: the cross-correlation peak
(:func:`phasestem.metrics.shift_between`, 1/100 px) refined by least squares over the two fields' overlap
(Gauss–Newton), since the correlation of fields that are not periodic is pulled towards zero shift by their edges
(by 0.1–0.2 px on a 20 px field). :func:`shifted` applies it with the project's resampler
(:func:`phasestem.physics.resample.sample_on_grid`, cubic B-spline: the fields are not periodic), the pixels
moved in from outside the field left NaN.
"""
from __future__ import annotations

import math

import numpy as np

#: fields smaller than this (px, either side) are compared as they are
MIN_SIDE = 8
#: a shift beyond this fraction of the field (either axis) is no match: the runs are compared unaligned
MAX_SHIFT_FRACTION = 0.25
#: Gauss–Newton steps of the refinement at most, and the step (px) below which it stops
REFINE_STEPS = 8
REFINE_TOLERANCE = 1e-3


def shifted(image: np.ndarray, shift) -> np.ndarray:
    """``image`` (H, W) with its content moved by ``shift`` (dy, dx) px (cubic B-spline), float64; the pixels
    whose source lies outside the image are NaN."""
    from ..physics.resample import sample_on_grid

    a = np.nan_to_num(np.asarray(image, dtype=np.float64))
    dy, dx = float(shift[0]), float(shift[1])
    out = np.asarray(sample_on_grid(a, (1.0, 1.0), (1.0, 1.0), a.shape, start=(-dy, -dx), order="cubic"),
                     dtype=np.float64)
    out[~overlap(a.shape, (dy, dx))] = np.nan
    return out


def overlap(shape: tuple[int, int], shift) -> np.ndarray:
    """(H, W) bool: the pixels of an image moved by ``shift`` px whose source lies inside it (one pixel more
    left out at each moved edge: the cubic spline reaches one pixel further)."""
    h, w = shape
    out = np.zeros((h, w), dtype=bool)
    dy, dx = float(shift[0]), float(shift[1])
    y0, y1 = max(0, math.ceil(dy) + (dy != 0)), min(h, h + math.floor(dy) - (dy != 0))
    x0, x1 = max(0, math.ceil(dx) + (dx != 0)), min(w, w + math.floor(dx) - (dx != 0))
    out[y0:y1, x0:x1] = True
    return out


def refine_shift(moving: np.ndarray, reference: np.ndarray, shift) -> np.ndarray:
    """``shift`` (dy, dx) px refined so that :func:`shifted` ``(moving, shift)`` best matches ``reference`` (both
    (H, W)) in least squares over their overlap, a constant offset allowed (Gauss–Newton)."""
    s = np.asarray(shift, dtype=np.float64).copy()
    ref = np.nan_to_num(np.asarray(reference, dtype=np.float64))
    for _ in range(REFINE_STEPS):
        moved = shifted(moving, s)
        keep = np.isfinite(moved)
        if keep.sum() < 16:
            break
        gy, gx = np.gradient(np.nan_to_num(moved))
        inner = keep & np.roll(keep, 1, 0) & np.roll(keep, -1, 0) & np.roll(keep, 1, 1) & np.roll(keep, -1, 1)
        a = np.stack([gy[inner], gx[inner], np.ones(int(inner.sum()))], axis=1)
        step = np.linalg.lstsq(a, ref[inner] - moved[inner], rcond=None)[0][:2]
        s -= step  # moved(x) ≈ moving(x − s): one more step δ changes it by −δ·∇moved
        if not np.all(np.isfinite(s)) or np.abs(step).max() < REFINE_TOLERANCE:
            break
    return s


def _misfit(moving: np.ndarray, reference: np.ndarray, shift) -> float:
    moved = shifted(moving, shift)
    keep = np.isfinite(moved)
    if not keep.any():
        return math.inf
    d = moved[keep] - np.nan_to_num(np.asarray(reference, dtype=np.float64))[keep]
    return float(np.mean((d - d.mean()) ** 2))


def phase_shift(moving: np.ndarray, reference: np.ndarray) -> np.ndarray | None:
    """The shift (dy, dx) px that moves ``moving`` (H, W) onto ``reference`` (H, W) (:func:`shifted`), or None
    where the fields are too small (:data:`MIN_SIDE`) or the best match lies beyond :data:`MAX_SHIFT_FRACTION` of
    the field (no match). NaN pixels count as 0."""
    from ..metrics import shift_between

    a = np.nan_to_num(np.asarray(moving, dtype=np.float64))
    b = np.nan_to_num(np.asarray(reference, dtype=np.float64))
    if min(a.shape) < MIN_SIDE:
        return None
    coarse = shift_between(a, b)
    fine = refine_shift(a, b, coarse)
    if not (np.all(np.isfinite(fine)) and np.abs(fine - coarse).max() <= 1.0
            and _misfit(a, b, fine) <= _misfit(a, b, coarse)):
        fine = coarse
    if np.any(np.abs(fine) > MAX_SHIFT_FRACTION * np.asarray(a.shape)):
        return None
    return fine


def align_onto_first(phases: list[np.ndarray]) -> tuple[list[np.ndarray], list[list[float] | None]]:
    """Every phase (H, W) of ``phases`` (one grid) moved onto the first (:func:`phase_shift`, :func:`shifted`),
    each with its mean over the field it keeps removed; returns (phases, the shift (dy, dx) px applied to each:
    [0, 0] for the first, None where none was found and the phase is left where it was)."""
    out, shifts = [], []
    for k, phase in enumerate(phases):
        shift = np.zeros(2) if k == 0 else phase_shift(phase, phases[0])
        moved = np.asarray(phase, dtype=np.float64) if shift is None or not np.any(shift) else shifted(phase, shift)
        out.append(moved - np.nanmean(moved))
        shifts.append(None if shift is None else [float(shift[0]), float(shift[1])])
    return out, shifts
