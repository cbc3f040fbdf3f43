"""The schema of ``phasestem reconstruct``'s parameter file (pydantic): the data, optics, scan, model, losses and
tune sections and the whole :class:`ReconstructParams` (the ``run`` section: :mod:`phasestem.recon.run_config`).
Loading, dumping and building from it: :mod:`phasestem.recon.params`."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, ConfigDict, Field, field_validator, model_validator

from ..base.configfile import ConfigPath, FiniteModel
from ..physics.optics import checked_aberrations
from .constraints import Constraints
from .losses import LossConfig
from .run_config import RunConfig
from .schedule import PARAM_NAMES


def _pair(v, name: str, positive: bool = False):
    if v is None:
        return None
    if isinstance(v, int | float):
        v = (float(v), float(v))
    v = tuple(v)
    if len(v) != 2:
        raise ValueError(f"{name} must be one number or two (y, x), got {len(v)} values")
    if positive and min(v) <= 0:
        raise ValueError(f"{name} must be positive, got {v}")
    return v


class DataConfig(FiniteModel):
    """Where the patterns come from and how to adapt them to phasestem's conventions."""

    file: Annotated[Path, ConfigPath()] = Field(
        description="4D-STEM file (HDF5, CXI, .mat, .npy/.npz, EMD, raw); relative to the YAML file's folder")
    format: str | None = Field(None, description="reader name (hdf5, numpy, cxi, mat, emd, raw); null: by extension")
    patterns_key: str | None = Field(None, description="dataset/array name of the patterns inside the file")
    reader_options: dict[str, Any] = Field(default_factory=dict,
                                           description="extra options for the reader (e.g. sample, shape, dtype)")
    flip_y: bool = Field(False, description="flip the detector rows")
    flip_x: bool = Field(False, description="flip the detector columns")
    transpose: bool = Field(False, description="swap the detector axes (before flips)")
    crop: tuple[int, int] | None = Field(None, description="keep the central (H, W) detector pixels")
    bin: int = Field(1, ge=1, description="sum detector pixels in bin × bin blocks")
    pad: tuple[int, int] | None = Field(None, description="zero-pad patterns to (H, W) (finer real-space pixel)")
    resample: tuple[int, int] | None = Field(None, description="resample patterns to (H, W) pixels (counts kept)")
    scan_subset: tuple[int, int, int, int] | None = Field(
        None, description="use scan rows [r0, r1) and columns [c0, c1): (r0, r1, c0, c1)")
    detector_shifts: Annotated[Path | None, ConfigPath()] = Field(
        None, description=".npy of (Sy, Sx, 2) or (N, 2) px: where each pattern's zero frequency (the bright-field "
        "disk centre) sits relative to the detector's central pixel (H//2, W//2), (row, col) in the file's detector "
        "axes; the model displaces its patterns alike instead of the counts being resampled (the descan; written by "
        "phasestem calibrate). Transposes, flips, subsets and binning of the data apply to it too")
    counts: bool | None = Field(
        None, description="whether the patterns are detector counts (Poisson: the counted data term, error bars); "
        "null: decided from the file (a dose recorded, integer storage or whole numbers: phasestem.io.counts). "
        "phasestem calibrate and --auto write it, since their corrected patterns need not show it")
    dose: float | None = Field(
        None, allow_inf_nan=False, description="e⁻/Å² of the acquisition as the data file records it (≤ 0: "
        "noise-free); null: the data file's record. phasestem calibrate and --auto copy it here from the original "
        "file")
    ground_truth_key: str | None = Field(
        None, description="name of a ground-truth phase (rad, 2-D, dataset frame) in the data file (.npy/.npz/HDF5): "
        "PSNR, SSIM, E_φ and FRC resolution per epoch in the log and at the end in results.h5. Its pixel size comes "
        "from the file (HDF5 attribute 'sampling' of the dataset or its group, a seed file's phase_sampling) and it "
        "is resampled to the reconstruction's pixel (logged); without one it is taken at the reconstruction's pixel "
        "and must cover the scanned field")


class OpticsConfig(FiniteModel):
    """Beam and probe. A value left out (or null) is the data file's; one given here wins over the file's, with a
    warning naming both when they differ."""

    energy: float | None = Field(None, gt=0, description="beam energy in eV; null: from the data file")
    semiangle: float | None = Field(None, gt=0, description="probe convergence semi-angle in mrad; null: from the "
                                    "data file")
    aberrations: Annotated[dict[str, float], AfterValidator(checked_aberrations)] = Field(
        default_factory=dict, description="aberrations in Å/rad (C10 (= −defocus), C30 or Cs, …), key by key over "
        "the data file's (a key given here wins; the file's other keys are kept)")
    angular_sampling: tuple[float, float] | float | None = Field(
        None, description="detector pixel in mrad (one or two values); null: from optics.sampling, else the data "
        "file")
    sampling: tuple[float, float] | float | None = Field(
        None, description="real-space pixel in Å instead of angular_sampling (wins over the file's detector pixel)")
    aperture_edge: Literal["soft", "hard", "measured"] = Field(
        "soft", description="edge of the nominal probe's aperture: soft (one-pixel roll-off), hard, or measured "
        "(amplitude from the mean measured pattern)")

    @field_validator("angular_sampling", "sampling", mode="before")
    @classmethod
    def _two(cls, v, info):
        return _pair(v, info.field_name, positive=True)


class ScanConfig(FiniteModel):
    """Scan geometry (positions are the probe centres in Å). A value left out (or null) is the data file's; one
    given here wins over the file's, with a warning naming both when they differ."""

    shape: tuple[int, int] | None = Field(None, description="(rows, cols) of the scan; null: from the file")
    step: tuple[float, float] | float | None = Field(
        None, description="scan step in Å (one or two values (dy, dx)); null: from the data file")
    origin: tuple[float, float] | None = Field(None, description="(y, x) Å of the first position; null: from the "
                                               "data file, else (0, 0)")
    rotation: float = Field(0.0, description="scan rotation in degrees, counter-clockwise as displayed (y down)")
    affine: tuple[tuple[float, float], tuple[float, float]] | None = Field(
        None, description="2×2 matrix applied to the (y, x) grid positions (scale/shear), after rotation"
    )
    positions_file: Annotated[Path | None, ConfigPath()] = Field(
        None, description=".npy file of explicit (N, 2) positions in Å")

    @field_validator("step", mode="before")
    @classmethod
    def _step(cls, v):
        return _pair(v, "step", positive=True)


class ScheduleConfig(FiniteModel):
    """Learning rate and active epoch range of one parameter."""

    lr: float | None = Field(None, ge=0, description="learning rate: Adam/SGD units per update; for lsq (object, "
                             "probe) a fraction of the Gauss–Newton step; 0 freezes the parameter; null: the "
                             "solver's default")
    start: int = Field(1, ge=1, description="first epoch (1-based) in which the parameter is optimised")
    end: int | None = Field(None, description="last epoch (null: to the end)")


class InitialPhase(FiniteModel):
    """Start the object from a phase image (hybrid: e.g. a learned prediction)."""

    file: Annotated[Path, ConfigPath()] = Field(
        description="phase image (.npy, .npz or HDF5), rad, in the dataset frame")
    key: str | None = Field(None, description="array/dataset name inside .npz/HDF5")
    sampling: tuple[float, float] | float | None = Field(None, description="pixel of the image in Å (null: same)")

    @field_validator("sampling", mode="before")
    @classmethod
    def _two(cls, v):
        return _pair(v, "sampling", positive=True)


class RandomPhase(FiniteModel):
    """Start the object phase from seeded uniform noise (PtyRAD's random start)."""

    scale: float = Field(0.1, gt=0, description="half-width of the uniform phase noise in rad ([−scale, scale])")
    seed: int = Field(0, description="seed of the noise (the same seed gives the same start)")


class InitialProbe(FiniteModel):
    """Start the probe from a file instead of the nominal optics."""

    file: Annotated[Path, ConfigPath()] = Field(
        description="complex probe (M, ny, nx) or (ny, nx) in .npy/.npz/HDF5 (e.g. a previous results.h5, key "
        "probe/real_space); window = the pattern shape")
    key: str | None = Field(None, description="array/dataset name inside .npz/HDF5")


class ModelConfig(FiniteModel):
    """The reconstruction model."""

    n_slices: int = Field(1, ge=1, description="number of object slices S")
    slice_thickness: float | None = Field(None, gt=0, description="slice thickness Δz in Å (default 10 Å)")
    n_probe_modes: int = Field(1, ge=1, le=64, description="number of probe modes M (mixed state), at most 64")
    n_object_modes: int = Field(1, ge=1, le=64, description="number of object modes K, at most 64")
    source_size: float | None = Field(None, gt=0, description="source FWHM in Å to seed the probe modes")
    mode_power: float = Field(0.02, ge=0, lt=1, description="start intensity fraction of the higher probe modes")
    object_padding: int | None = Field(None, ge=0, description="object pixels beyond every window (default ⌈N/8⌉)")
    tilt: tuple[float, float] = Field((0.0, 0.0), description="start specimen tilt (θy, θx) in mrad")
    per_position_tilt: bool = Field(False, description="one tilt per position instead of a global one")
    antialias: bool = Field(False, description="apply the 2/3 band limit in the propagator")
    detector_blur: float = Field(0.0, ge=0, description="Gaussian σ (detector pixels) of the detector blur")
    upsampling: Annotated[int, Field(ge=1, le=4)] | Literal["auto"] = Field(
        "auto", description="object pixels this many times finer than the detector's λ/(N·Δk), over the same window "
        "extent: the model's far field on as many times the detector's grid at the same Δk, of which the detector "
        "measures the central part (scattering beyond it is computed and dropped). auto (default): the smallest "
        "factor whose anti-aliased band (2/3 Nyquist) holds the probe's semi-angle (at most 4; 300 keV, 30 mrad, "
        "64 px of 0.984 mrad: 2, so the probe is not truncated), logged with its reason and recorded in results.h5's "
        "geometry; 1 keeps the detector's grid. A restorer trained at another pixel refuses the run")
    obj_preblur: float = Field(0.0, ge=0, description="Gaussian σ (object pixels) by which the forward model sees "
                               "the object's amplitude and phase blurred (PtyRAD's obj_preblur_std; 0: off)")
    initial_phase: InitialPhase | None = Field(None, description="start the object phase from an image")
    random_phase: RandomPhase | None = Field(None, description="add seeded uniform noise to the start phase")
    initial_probe: InitialProbe | None = Field(None, description="start the probe from a file")
    learning_rates: dict[str, ScheduleConfig | float] = Field(
        default_factory=dict, description=f"per-parameter lr or {{lr, start, end}}; keys: {', '.join(PARAM_NAMES)}. "
        "Left out: the solver's default, except obj_amplitude, held at 1 on counted data of at most 3e4 counts per "
        "pattern, and tilt, refined only where the specimen is ≥ 10 nm at 0.2 Å pixels (see the run log's "
        "'refines' line; the patterns alone do not fix a tilt, which trades against a shear of the slices: it is "
        "a measurement where constraints.obj_shear ties it to a crystal's columns)")

    @field_validator("learning_rates")
    @classmethod
    def _names(cls, v):
        for k in v:
            if k not in PARAM_NAMES:
                raise ValueError(f"unknown parameter '{k}': expected one of {list(PARAM_NAMES)}")
        return v


class LossesConfig(FiniteModel):
    """Loss terms: exactly the terms named here run, at their weights (a term left out is off); with none named,
    the data choose: detector counts (a dose in the file, integer patterns, or whole numbers only) get gaussian 0.5 +
    poisson 0.5, anything else the Gaussian term on amplitudes alone at weight 1. The run log names the terms that
    ran and why. A term added with :func:`phasestem.recon.losses.register_term` is named here by its name and
    weight like the four below (no field to add); a name no term has is refused, naming the registered ones."""

    model_config = ConfigDict(extra="allow", allow_inf_nan=False)

    gaussian: float | None = Field(None, ge=0, description="weight of the Gaussian term on intensity^power; left out "
                                   "(null): 0 when another term is named; when none is, 1 (0.5 on counted data)")
    poisson: float | None = Field(None, ge=0, description="weight of the Poisson deviance (negative log-likelihood "
                                  "minus its value at the data); for counted data gaussian 0.5 + poisson 0.5 (robust "
                                  "to model mismatch and right at low counts: what counted data naming no term get); "
                                  "left out (null): 0")
    pacbed: float | None = Field(None, ge=0, description="weight of the PACBED consistency term; left out (null): 0")
    sparsity: float | None = Field(None, ge=0, description="weight of the L1 sparsity of the object phase; left out "
                                   "(null): 0")
    power: float = Field(0.5, gt=0, le=1, description="exponent p of the Gaussian term (0.5 = amplitudes)")

    @model_validator(mode="after")
    def _one_data_term(self):
        for name, weight in (self.model_extra or {}).items():
            if isinstance(weight, bool) or not isinstance(weight, int | float) or not math.isfinite(weight):
                raise ValueError(f"losses.{name}: a weight must be a finite number, got {weight!r}")
        self.resolved()
        return self

    def resolved(self):
        """The :class:`phasestem.recon.losses.LossConfig` of these weights (the terms that run; a registered
        term's weight in its ``extra``)."""
        weights = self.model_dump()
        extra = {name: float(weights.pop(name)) for name in (self.model_extra or {})}
        return LossConfig(**weights, extra=extra)


class TuneParam(FiniteModel):
    """One tuned quantity."""

    low: float = Field(description="lower bound")
    high: float = Field(description="upper bound")
    log: bool = Field(False, description="sample on a log scale")


class TuneConfig(FiniteModel):
    """Optuna search (``phasestem tune``)."""

    n_trials: int = Field(20, ge=1, description="number of trials (added to those already stored)")
    n_epochs: int = Field(5, ge=1, description="epochs per trial")
    storage: str | None = Field(None, description="Optuna storage URL; default sqlite:///OUT/tune.db")
    study_name: str = Field("phasestem-tune", description="study name (resumed when it exists)")
    pruning: bool = Field(True, description="stop unpromising trials early (median pruner)")
    seed: int = Field(0, description="sampler seed")
    C10: TuneParam | None = Field(None, description="search range of the aberration C10 (= −defocus) in Å")
    C10_both_signs: bool = Field(True, description="with a C10 range of magnitudes (low ≥ 0), also try −C10")
    slice_thickness: TuneParam | None = Field(None, description="search range of the slice thickness in Å")
    learning_rates: dict[str, TuneParam] = Field(default_factory=dict, description="search ranges of learning rates")


class ReconstructParams(FiniteModel):
    """A complete reconstruction parameter file."""

    data: DataConfig = Field(description="data source")
    optics: OpticsConfig = Field(default_factory=OpticsConfig, description="beam and probe (left out: every "
                                 "value from the data file)")
    scan: ScanConfig = Field(default_factory=ScanConfig, description="scan geometry (left out: every value from "
                             "the data file)")
    model: ModelConfig = Field(default_factory=ModelConfig, description="reconstruction model")
    losses: LossesConfig = Field(default_factory=LossesConfig, description="loss weights")
    constraints: Constraints = Field(default_factory=Constraints, description="scheduled constraints")
    run: RunConfig = Field(default_factory=RunConfig, description="run settings")
    tune: TuneConfig | None = Field(None, description="hyper-parameter search (phasestem tune)")
