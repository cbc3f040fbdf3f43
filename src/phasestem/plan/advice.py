"""Advice from a sweep: which change of the swept settings helps the expected result most."""
from __future__ import annotations

import math
from typing import Any

from ..plot.plan import SETTING_LABELS

#: an expected result is called poor above this E_φ or this FRC resolution (Å)
POOR_PHASE_ERROR = 0.3
POOR_RESOLUTION = 1.0
#: a change is worth advising when it lowers E_φ, or improves the FRC resolution by more than one ring, by at least
#: this fraction
WORTHWHILE = 0.1

_UNITS = {"scan.step": "Å step", "dose.electrons_per_area": "e⁻/Å²", "dose.electrons_per_pattern": "e⁻ per pattern",
          "optics.aberrations.C10": "Å C10", "optics.semiangle": "mrad semi-angle",
          "detector.angular_sampling": "mrad detector pixel", "specimen.thickness": "Å thickness"}


def _setting(names: list[str], values: dict[str, float]) -> str:
    return " and ".join(f"{values[n]:.3g} {_UNITS.get(n, n)}" for n in names)


def is_poor(phase_error: float, resolution: float) -> bool:
    """Whether an expected result is poor (:data:`POOR_PHASE_ERROR`, :data:`POOR_RESOLUTION`)."""
    return not phase_error <= POOR_PHASE_ERROR or not resolution <= POOR_RESOLUTION


def _same_resolution(a: float, b: float, ring: float) -> bool:
    """Whether FRC resolutions ``a`` and ``b`` (Å) lie within one ring (``ring``, 1/Å) of each other: at the band
    limit the crossing jitters by a ring from field to field, so such a difference says nothing."""
    return abs(1.0 / a - 1.0 / b) <= ring * (1 + 1e-9)


def advise(rows: list[dict[str, Any]], names: list[str], planned: dict[str, float], base: dict[str, float]) -> str:
    """One line: the sweep row that improves the expected result most over ``base`` (E_φ, FRC resolution in Å and
    optionally ``frc_ring``, the width of one FRC ring in 1/Å, of the planned settings ``planned``); or that none
    of the swept values does better by :data:`WORTHWHILE`.

    Ranked by E_φ: a row whose resolution is worse than the plan's by more than one FRC ring is not advised, and
    resolutions within one ring count as the same (the crossing jitters by a ring at the band limit). Where no row
    lowers E_φ by :data:`WORTHWHILE`, a row that gains more than a ring of resolution (and ≥ :data:`WORTHWHILE`)
    without a worse E_φ is advised for its resolution, e.g. "a 0.6 Å step instead of 1 Å step raises the expected
    FRC resolution from 1.1 to 0.7 Å (E_φ 0.41 → 0.26)"."""
    if not rows:
        return ""

    if not (math.isfinite(base["phase_error"]) and math.isfinite(base["frc_resolution"])):
        usable = [r for r in rows if math.isfinite(r["phase_error"]) and math.isfinite(r["frc_resolution"])]
        if not usable:
            return "advice: no swept setting gave a usable reconstruction either"
        best = min(usable, key=lambda r: (r["phase_error"], r["frc_resolution"]))
        return (f"advice: {_setting(names, best)} instead of {_setting(names, planned)} gives a usable "
                f"reconstruction (E_φ {best['phase_error']:.2f}, FRC resolution {best['frc_resolution']:.2g} Å); the "
                "planned settings gave none")

    ring = base.get("frc_ring", 0.0)
    ring = ring if isinstance(ring, int | float) and math.isfinite(ring) else 0.0
    e0, d0 = base["phase_error"], base["frc_resolution"]
    usable = [r for r in rows if math.isfinite(r["phase_error"]) and math.isfinite(r["frc_resolution"])]
    kept = [r for r in usable if r["frc_resolution"] <= d0 or _same_resolution(r["frc_resolution"], d0, ring)]
    change = "advice: {} instead of {}"
    best = min(kept, key=lambda r: (r["phase_error"], r["frc_resolution"]), default=None)
    if best is not None and (e0 - best["phase_error"]) / e0 >= WORTHWHILE:
        return (f"{change.format(_setting(names, best), _setting(names, planned))} lowers the expected E_φ from "
                f"{e0:.2f} to {best['phase_error']:.2f} (FRC resolution {d0:.2g} → {best['frc_resolution']:.2g} Å"
                f"{', the same within one ring' if _same_resolution(best['frc_resolution'], d0, ring) else ''})")
    sharper = [r for r in kept if r["phase_error"] <= e0 and not _same_resolution(r["frc_resolution"], d0, ring)
               and (d0 - r["frc_resolution"]) / d0 >= WORTHWHILE]
    if sharper:
        best = min(sharper, key=lambda r: (r["frc_resolution"], r["phase_error"]))
        return (f"{change.format(_setting(names, best), _setting(names, planned))} raises the expected FRC "
                f"resolution from {d0:.2g} to {best['frc_resolution']:.2g} Å (E_φ {e0:.2f} → "
                f"{best['phase_error']:.2f})")
    what = " and ".join(SETTING_LABELS.get(n, n).split(" (")[0] for n in names)
    return (f"advice: none of the swept {what} values improves the expected result by {100 * WORTHWHILE:.0f} % "
            f"or more (FRC resolution {d0:.2g} Å, E_φ {e0:.2f})")
