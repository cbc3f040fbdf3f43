"""``phasestem plan``: know before the session what an acquisition will give.

:func:`plan` computes the closed-form quantities of the settings (:mod:`.quantities`: probe size, overlap in
real and Fourier space, sampling, detector extent vs band limit, pixel, dose, depth of field, data volume, time),
each with a one-line warning outside the range where ptychography is known to work; then the expected result by
simulation and ``--auto`` reconstruction of a small field (:mod:`.expected`), an optional sweep of one or two
settings and advice from it (:mod:`.advice`).
"""
from __future__ import annotations

import json
import math
import sys
import types
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import PlanConfig, load_plan_config, plan_config
from .quantities import Quantities, compute, format_quantities

__all__ = ["PlanConfig", "PlanReport", "Quantities", "compute", "load_plan_config", "plan"]


@dataclass
class PlanReport:
    """What :func:`plan` found: ``text`` is what ``phasestem plan`` prints."""

    config: PlanConfig
    quantities: Quantities
    expected: Any = None  # phasestem.plan.expected.Expected
    sweep: list[dict] = field(default_factory=list)
    advice: str = ""
    text: str = ""
    files: dict[str, str] = field(default_factory=dict)

    @property
    def warnings(self) -> list[str]:
        return self.quantities.warnings

    def to_dict(self) -> dict:
        return {"quantities": self.quantities.to_dict(),
                "expected": self.expected.to_dict() if self.expected is not None else None,
                "sweep": self.sweep, "advice": self.advice, "files": self.files}


def plan(settings: PlanConfig | dict | str | Path, out: str | Path | None = None,
         expected: bool | None = None) -> PlanReport:
    """Plan an acquisition: ``settings`` a :class:`PlanConfig`, its mapping or a YAML file; ``out`` the folder of
    the figures and ``plan.json`` (default: the settings' ``out``, else ``plan_out``); ``expected`` overrides
    ``expected.run`` (False: the closed-form quantities only, nothing written)."""
    cfg = plan_config(settings)
    q = compute(cfg)
    report = PlanReport(cfg, q)
    lines = [format_quantities(q, cfg)]
    run = cfg.expected.run if expected is None else expected
    if run:
        from ..base.lock import hold_output

        folder = Path(out or cfg.out or "plan_out")
        with hold_output(folder, "phasestem plan"):
            _expected(report, folder, lines)
    report.text = "\n".join(lines)
    return report


def _expected(report: PlanReport, folder: Path, lines: list[str]) -> None:
    from ..base.safety import atomic_file
    from .advice import advise, is_poor
    from .expected import expected_result, sweep

    cfg = report.config
    e = expected_result(cfg, folder / "expected")
    report.expected = e
    report.files["expected_figure"] = e.figure
    lines.append(f"expected (a {e.scan_shape[0]} × {e.scan_shape[1]} field simulated at these settings"
                 f"{_imperfections(cfg)}, reconstructed as --auto would, {e.seconds:.0f} s): E_φ = "
                 f"{e.phase_error:.3f}, FRC resolution {e.frc_resolution:.3g} Å (pixel {e.pixel:.3g} Å); figure "
                 f"{e.figure or 'none'}")
    lines += [f"warning: {n}" for n in e.extra.get("notes", [])]
    undetermined = dict(e.extra.get("undetermined", {}))
    if "C10" in undetermined:
        lines.append(f"warning: --auto cannot measure the defocus from data of this dose and field "
                     f"({undetermined.pop('C10')}): give it the C10 the microscope is set to (--c10 "
                     f"{cfg.optics.aberrations.get('C10', 0.0):g}); the expected result is with it given, and as "
                     "good as that value is")
    for why in dict.fromkeys(undetermined.values()):  # rotation and transpose, usually for one reason
        names = " and ".join(k for k, v in undetermined.items() if v == why)
        lines.append(f"warning: --auto could not calibrate the {names} from data of this dose and field ({why}) and "
                     "kept the defaults, the simulation's: the result expected here holds only with them given "
                     "(e.g. from a calibration at higher dose)")
    if "auto_failed" in e.extra:
        lines.append(f"warning: --auto failed on the simulated field: {e.extra['auto_failed']}")
    elif not math.isfinite(e.phase_error):
        lines.append("warning: the expected reconstruction does not match the simulated truth (E_φ undefined: it "
                     "could not be aligned; see the figure and expected/recon/calibration): --auto failed on this "
                     "field, e.g. too little signal to calibrate the scan rotation")
    names = list(cfg.expected.sweep)
    if names:
        from ..plot.plan import sweep_figure

        report.sweep = sweep(cfg, folder / "sweep")
        path = sweep_figure(report.sweep, names, folder / "sweep.png")
        report.files["sweep_figure"] = str(path)
        for r in report.sweep:
            values = ", ".join(f"{n} {r[n]:g}" for n in names)
            lines.append(f"sweep {values}: E_φ = {r['phase_error']:.3f}, FRC resolution {r['frc_resolution']:.3g} Å")
        planned = {n: _planned(cfg, n) for n in names}
        report.advice = advise(report.sweep, names, planned, {"phase_error": e.phase_error,
                                                              "frc_resolution": e.frc_resolution,
                                                              "frc_ring": e.extra.get("frc_ring", 0.0)})
        lines.append(report.advice)
        lines.append(f"sweep figure {path}")
    elif is_poor(e.phase_error, e.frc_resolution):
        lines.append("advice: the expected result is poor; sweep the scan step, dose or defocus "
                     "(expected.sweep: {scan.step: [...]}) to see which change helps most")
    with atomic_file(folder / "plan.json", field="--out") as tmp:
        tmp.write_text(json.dumps(report.to_dict(), indent=1, default=float))
    report.files["json"] = str(folder / "plan.json")


def _imperfections(cfg: PlanConfig) -> str:
    """``, with a source of 0.6 Å FWHM, position errors of 0.3 Å, a drift of (2, 0) Å`` (what was asked for)."""
    parts = []
    if cfg.optics.source_size:
        parts.append(f"a source of {cfg.optics.source_size:g} Å FWHM")
    if cfg.scan.position_error:
        parts.append(f"position errors of {cfg.scan.position_error:g} Å")
    if any(cfg.scan.drift):
        parts.append(f"a drift of ({cfg.scan.drift[0]:g}, {cfg.scan.drift[1]:g}) Å over the acquisition")
    return ", with " + ", ".join(parts) if parts else ""


def _planned(cfg: PlanConfig, dotted: str) -> float:
    if dotted == "dose.electrons_per_area":
        return float(compute(cfg).dose or float("nan"))
    if dotted == "dose.electrons_per_pattern":
        return float(compute(cfg).electrons_per_pattern or float("nan"))
    if dotted == "detector.angular_sampling":
        return cfg.detector.mrad_per_pixel()
    node: Any = cfg
    for part in dotted.split("."):
        node = node[part] if isinstance(node, dict) else getattr(node, part)
    return float(node)


class _CallableModule(types.ModuleType):
    """``phasestem.plan`` is this package and :func:`plan` at once: ``phasestem.plan(settings)`` calls
    :func:`plan` whichever of the two the attribute holds (a submodule import sets it to the package)."""

    def __call__(self, *args, **kwargs) -> PlanReport:
        return plan(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
