"""THE shot-noise model: Poisson counts at a dose, and the one conversion between dose units.

Dose is stated in one of two units and converted only here:

* **electrons per pattern** (what a detector frame holds; the unit of :func:`poisson_counts`);
* **electrons per Å²** (what a microscopist sets; the simulator's ``detector.dose``), converted by
  :func:`electrons_per_pattern` (and back by :func:`electrons_per_area`) with the scan-step area (each pattern
  collects the electrons of one step × step cell).
"""
from __future__ import annotations

import numpy as np


def electrons_per_pattern(dose_per_area: float, scan_step: tuple[float, float]) -> float:
    """Electrons per pattern for a dose in e⁻/Å² on a raster of ``scan_step`` (dy, dx) Å."""
    if dose_per_area <= 0:
        raise ValueError(f"dose must be positive (e⁻/Å²), got {dose_per_area}")
    return float(dose_per_area) * float(scan_step[0]) * float(scan_step[1])


def electrons_per_area(per_pattern: float, scan_step: tuple[float, float]) -> float:
    """Dose in e⁻/Å² of ``per_pattern`` electrons per pattern on a raster of ``scan_step`` (dy, dx) Å: the inverse
    of :func:`electrons_per_pattern`."""
    if per_pattern <= 0:
        raise ValueError(f"dose must be positive (e⁻ per pattern), got {per_pattern}")
    return float(per_pattern) / (float(scan_step[0]) * float(scan_step[1]))


def poisson_counts(patterns: np.ndarray, electrons: float, rng: np.random.Generator,
                   dtype=np.float32) -> np.ndarray:
    """Poisson counts of ``patterns`` (each summing to ≈ 1: the probability per pixel) at ``electrons`` e⁻/pattern.

    Negative values (round-off of a simulation) count as 0. Returns ``dtype`` counts of the same shape.
    """
    if electrons <= 0:
        raise ValueError(f"electrons per pattern must be positive, got {electrons}")
    return rng.poisson(np.clip(np.asarray(patterns, dtype=np.float64), 0, None) * electrons).astype(dtype)
