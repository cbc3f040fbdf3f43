"""Advice from a sweep: which change of the swept settings helps the expected result most."""
from __future__ import annotations

import math
from typing import Any

from ..plot.plan import SETTING_LABELS

#: an expected result is called poor above this E_φ or this FRC resolution (Å)
POOR_PHASE_ERROR = 0.3
POOR_RESOLUTION = 1.0
#: a change is worth advising when it improves the FRC resolution or E_φ by at least this fraction
WORTHWHILE = 0.1

_UNITS = {"scan.step": "Å step", "dose.electrons_per_area": "e⁻/Å²", "optics.aberrations.C10": "Å C10",
          "optics.semiangle": "mrad semi-angle", "detector.angular_sampling": "mrad detector pixel",
          "specimen.thickness": "Å thickness"}


def _setting(names: list[str], values: dict[str, float]) -> str:
    return " and ".join(f"{values[n]:.3g} {_UNITS.get(n, n)}" for n in names)


def is_poor(phase_error: float, resolution: float) -> bool:
    """Whether an expected result is poor (:data:`POOR_PHASE_ERROR`, :data:`POOR_RESOLUTION`)."""
    return not phase_error <= POOR_PHASE_ERROR or not resolution <= POOR_RESOLUTION


def advise(rows: list[dict[str, Any]], names: list[str], planned: dict[str, float], base: dict[str, float]) -> str:
    """One line: the sweep row that improves the expected result most over ``base`` (E_φ and FRC resolution of
    the planned settings ``planned``), e.g. "a 0.6 Å step instead of 1 Å step raises the expected FRC resolution
    from 1.1 to 0.7 Å (E_φ 0.41 → 0.26)"; or that none of the swept values does better."""
    if not rows:
        return ""

    if not (math.isfinite(base["phase_error"]) and math.isfinite(base["frc_resolution"])):
        usable = [r for r in rows if math.isfinite(r["phase_error"]) and math.isfinite(r["frc_resolution"])]
        if not usable:
            return "advice: no swept setting gave a usable reconstruction either"
        best = min(usable, key=lambda r: (r["frc_resolution"], r["phase_error"]))
        return (f"advice: {_setting(names, best)} instead of {_setting(names, planned)} gives a usable "
                f"reconstruction (E_φ {best['phase_error']:.2f}, FRC resolution {best['frc_resolution']:.2g} Å); the "
                "planned settings gave none")

    def gain(r):  # relative improvement of the resolution, E_φ breaking ties
        return ((base["frc_resolution"] - r["frc_resolution"]) / base["frc_resolution"],
                (base["phase_error"] - r["phase_error"]) / base["phase_error"])

    best = max(rows, key=gain)
    g_res, g_err = gain(best)
    what = " and ".join(SETTING_LABELS.get(n, n).split(" (")[0] for n in names)
    if max(g_res, g_err) < WORTHWHILE:
        return (f"advice: none of the swept {what} values improves the expected result by {100 * WORTHWHILE:.0f} % "
                f"or more (FRC resolution {base['frc_resolution']:.2g} Å, E_φ {base['phase_error']:.2f})")
    change = f"advice: {_setting(names, best)} instead of {_setting(names, planned)}"
    if g_res >= WORTHWHILE:
        return (f"{change} raises the expected FRC resolution from {base['frc_resolution']:.2g} to "
                f"{best['frc_resolution']:.2g} Å (E_φ {base['phase_error']:.2f} → {best['phase_error']:.2f})")
    return (f"{change} lowers the expected E_φ from {base['phase_error']:.2f} to {best['phase_error']:.2f} (FRC "
            f"resolution {base['frc_resolution']:.2g} → {best['frc_resolution']:.2g} Å)")
