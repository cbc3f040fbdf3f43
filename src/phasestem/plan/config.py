"""Schema of ``phasestem plan`` settings (YAML on disk): the acquisition a microscopist chooses, the specimen, and
how the expected result is estimated. Units: Å, mrad, eV, e⁻/Å² or e⁻ per pattern, pA, µs."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator

from ..base.configfile import CheckedModel, ConfigPath, apply_overrides, load_yaml_config, validate
from ..simulate.config import Optics

#: the settings a sweep may vary (dotted names of :class:`PlanConfig` fields)
SWEEPABLE = ("scan.step", "dose.electrons_per_area", "dose.electrons_per_pattern", "optics.aberrations.C10",
             "optics.semiangle", "detector.angular_sampling", "specimen.thickness")
#: the three ways of giving the dose (:class:`PlanDose`); a sweep of one clears the others
DOSE_FIELDS = ("electrons_per_area", "electrons_per_pattern", "beam_current", "dwell_time")


class PlanScan(CheckedModel):
    step: float = Field(..., gt=0, description="Scan step in Å (the same along both axes).")
    shape: tuple[int, int] = Field((128, 128), description="Scan positions (rows, cols) of the full acquisition.")
    position_error: float = Field(0.0, ge=0, description="Expected scan distortion: random error of each position, "
                                  "standard deviation in Å (each axis); the expected result is simulated with it.")
    drift: tuple[float, float] = Field((0.0, 0.0), description="Expected specimen drift (y, x) in Å over the whole "
                                       "acquisition; the simulated field drifts as its rows would (the same Å per "
                                       "scan row).")

    @field_validator("shape")
    @classmethod
    def _positive(cls, v):
        if min(v) < 2:
            raise ValueError("at least 2 positions along each axis")
        return v


class PlanDetector(CheckedModel):
    shape: int = Field(128, ge=8, description="Detector pixels along each side after binning (square patterns).")
    angular_sampling: float | None = Field(
        None, gt=0, description="Angle one detector pixel spans, mrad (after binning). null: from pixel_size and "
        "camera_length.")
    pixel_size: float | None = Field(None, gt=0, description="Physical detector pixel in µm (before binning), "
                                     "with camera_length.")
    camera_length: float | None = Field(None, gt=0, description="Camera length in mm, with pixel_size.")
    binning: int = Field(1, ge=1, description="Detector binning factor applied to pixel_size (angular_sampling is "
                         "already the binned pixel).")
    bytes_per_value: int = Field(2, ge=1, le=8, description="Bytes per stored pixel value (2: 16-bit counts).")

    @model_validator(mode="after")
    def _one_sampling(self):
        if self.angular_sampling is None and (self.pixel_size is None or self.camera_length is None):
            raise ValueError("give angular_sampling (mrad per pixel), or pixel_size (µm) and camera_length (mm)")
        return self

    def mrad_per_pixel(self) -> float:
        """Angle of one stored pixel in mrad: ``angular_sampling``, else pixel · binning / camera length."""
        if self.angular_sampling is not None:
            return float(self.angular_sampling)
        return float(self.pixel_size) * self.binning / float(self.camera_length)  # µm / mm = mrad


class PlanDose(CheckedModel):
    """One of three: e⁻/Å², e⁻ per pattern, or current × dwell time (none: noise-free); converted into each other
    with the scan-step area (phasestem.physics.noise)."""

    electrons_per_area: float | None = Field(None, gt=0, description="Dose in e⁻/Å²; null: from "
                                             "electrons_per_pattern, or beam_current and dwell_time (all null: "
                                             "noise-free).")
    electrons_per_pattern: float | None = Field(
        None, gt=0, description="Dose in electrons per pattern (what one detector frame holds; e⁻/Å² = this / "
        "scan step²); instead of electrons_per_area.")
    beam_current: float | None = Field(None, gt=0, description="Probe current in pA (with dwell_time).")
    dwell_time: float | None = Field(None, gt=0, description="Dwell time per scan position in µs (with "
                                     "beam_current).")

    @model_validator(mode="after")
    def _one_dose(self):
        pair = (self.beam_current is None, self.dwell_time is None)
        if pair[0] != pair[1]:
            raise ValueError("beam_current and dwell_time go together")
        given = [name for name, absent in (("electrons_per_area", self.electrons_per_area is None),
                                           ("electrons_per_pattern", self.electrons_per_pattern is None),
                                           ("beam_current with dwell_time", pair[0])) if not absent]
        if len(given) > 1:
            raise ValueError(f"give one dose: electrons_per_area, electrons_per_pattern or beam_current with "
                             f"dwell_time, not {' and '.join(given)}")
        return self


class PlanSpecimen(CheckedModel):
    kind: Literal["typical", "crystal", "structures", "amorphous"] = Field(
        "typical", description="typical: a perovskite oxide (SrTiO3) near a zone axis at the given thickness; "
        "crystal: one of phasestem's crystal prototypes (see prototypes); structures: a structure file (ASE: CIF, "
        "XYZ, POSCAR …); amorphous: a random amorphous solid of `elements`.")
    thickness: float = Field(20.0, gt=0, description="Specimen thickness in Å.")
    files: Annotated[list[Path], ConfigPath()] = Field(
        default_factory=list, description="Structure files (kind: structures); relative to this file's folder.")
    prototypes: list[str] | None = Field(None, description="Crystal prototypes to draw from (kind: crystal; null = "
                                         "all).")
    elements: list[str] = Field(["C", "Si"], description="Elements of an amorphous specimen.")
    max_tilt: float = Field(0.0, ge=0, description="Largest tilt of a crystal off the zone axis, degrees.")


class PlanReconstruction(CheckedModel):
    slice_thickness: float | None = Field(None, gt=0, description="Slice thickness in Å you mean to reconstruct "
                                          "with (multislice); null: a single slice, as --auto.")
    epochs: int = Field(10, ge=1, description="AD epochs (--auto's default: 10), for the time estimate and the "
                        "expected result.")


class PlanExpected(CheckedModel):
    run: bool = Field(True, description="Estimate the expected result by simulation and reconstruction (false: "
                      "the closed-form quantities only).")
    field: float | None = Field(
        None, gt=0, description="Side in Å of the small simulated field; null: 10 Å or 3 probe diameters, whichever "
        "is larger (at least 12, at most 24 positions per side, never more than the acquisition).")
    scan_shape: tuple[int, int] | None = Field(
        None, description="Scan positions of the small simulated field (wins over 'field'); null: from 'field'.")
    phonons: int = Field(1, ge=1, description="Frozen-phonon configurations averaged in the simulation.")
    phonon_sigma: float = Field(0.08, ge=0, description="Thermal displacement in Å.")
    simulation_slice: float = Field(2.0, gt=0, description="Multislice slice thickness of the simulation in Å.")
    seed: int = Field(0, description="Seed of the specimen, the phonons and the Poisson draw.")
    device: str = Field("cpu", description="torch device of the simulation and the reconstruction.")
    sweep: dict[str, list[float]] = Field(
        default_factory=dict, description="One or two settings to vary, each with its values, e.g. {scan.step: "
        "[0.4, 0.6, 1.0]}; names: " + ", ".join(SWEEPABLE) + ".")

    @field_validator("sweep")
    @classmethod
    def _sweep(cls, v):
        if len(v) > 2:
            raise ValueError(f"at most two settings to sweep, got {len(v)}")
        for name, values in v.items():
            if name not in SWEEPABLE:
                raise ValueError(f"cannot sweep {name!r}; expected one of {', '.join(SWEEPABLE)}")
            if not values:
                raise ValueError(f"{name}: no values to sweep")
        return v


class PlanOptics(Optics):
    """The simulator's optics with a real (hard-edged) condenser aperture unless the settings say otherwise."""

    aperture_edge: Literal["soft", "hard"] = Field(
        "hard", description="Condenser aperture edge of the simulated field: 'hard' (default: a real aperture, "
        "intensity 1/2 at the semi-angle, what --auto's calibration expects) or 'soft' (phasestem's and abTEM's "
        "simulator default, 1/4 at the semi-angle).")


class PlanConfig(CheckedModel):
    """An acquisition plan: what ``phasestem plan`` reads."""

    out: Annotated[str | None, ConfigPath()] = Field(
        None, description="Output folder (relative to this file's folder); --out overrides it; null: plan_out in "
        "the working directory.")
    optics: PlanOptics = Field(default_factory=lambda: PlanOptics(semiangle=20.0, aberrations={"C10": 0.0}),
                               description="Probe optics (C10 > 0: over-focus, crossover before the specimen).")
    scan: PlanScan = Field(..., description="Scan raster.")
    detector: PlanDetector = Field(..., description="Pixelated detector.")
    dose: PlanDose = Field(default_factory=PlanDose, description="Electron dose.")
    specimen: PlanSpecimen = Field(default_factory=PlanSpecimen, description="What is imaged.")
    reconstruction: PlanReconstruction = Field(default_factory=PlanReconstruction, description="How it will be "
                                               "reconstructed.")
    expected: PlanExpected = Field(default_factory=PlanExpected, description="The expected result by simulation.")


#: the session ``phasestem plan --dump-config`` shows without a settings file (that of configs/plan.yaml)
EXAMPLE: dict[str, Any] = {
    "optics": {"energy": 300e3, "semiangle": 20.0, "aberrations": {"C10": 60.0}},
    "scan": {"step": 0.8, "shape": [128, 128]},
    "detector": {"shape": 64, "pixel_size": 55.0, "camera_length": 44.0},
    "dose": {"beam_current": 5.0, "dwell_time": 100.0},
    "specimen": {"kind": "typical", "thickness": 16.0},
    "expected": {"sweep": {"dose.electrons_per_area": [1000, 2000, 5000, 20000]}},
}


def load_plan_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> PlanConfig:
    """Read and validate a plan YAML (relative paths from its folder, ``overrides`` from the command line); ``path``
    None: the built-in :data:`EXAMPLE` with the overrides."""
    if path is None:
        import copy

        return validate(PlanConfig, apply_overrides(copy.deepcopy(EXAMPLE), overrides), "the built-in example plan")
    return load_yaml_config(PlanConfig, path, overrides, what="plan settings file")


def plan_config(settings: PlanConfig | dict[str, Any] | str | Path) -> PlanConfig:
    """A :class:`PlanConfig` from a config, a mapping (validated) or a YAML path."""
    if isinstance(settings, PlanConfig):
        return settings
    if isinstance(settings, dict):
        return validate(PlanConfig, settings, "plan settings")
    return load_plan_config(settings)


def with_value(cfg: PlanConfig, dotted: str, value: float) -> PlanConfig:
    """A copy of ``cfg`` with the setting ``dotted`` (one of :data:`SWEEPABLE`) set to ``value``."""
    data = cfg.model_dump(mode="python")
    node = data
    *head, last = dotted.split(".")
    for key in head:
        node = node[key]
    node[last] = float(value)
    if dotted.startswith("dose."):
        data["dose"].update({k: None for k in DOSE_FIELDS if k != last})
    if dotted == "detector.angular_sampling":
        data["detector"].update(pixel_size=None, camera_length=None)
    return validate(PlanConfig, data, f"sweep {dotted}={value}")
