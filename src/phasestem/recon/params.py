"""The YAML parameter file of ``phasestem reconstruct`` / ``phasestem tune`` (pydantic schema).

Sections: ``data`` (file, keys, detector flips/transposes, crop/bin/pad/resample), ``optics``,
``scan`` (shape, step, origin, rotation/affine), ``model``, ``losses``, ``constraints``, ``run``
and (for tuning) ``tune``. Every error names the field, e.g.
``params.yaml: model.n_slicez: unknown key``. See ``configs/reconstruct_*.yaml``.

Python use::

    params = load_params("configs/reconstruct_tiny.yaml")
    dataset = build_dataset(params)
    model = build_model(params, dataset)
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..configfile import ConfigPath, read_yaml_mapping, resolve_config_paths, validate
from ..errors import ConfigError, InputFileError, PhasestemError, ShapeError
from .constraints import Constraints
from .losses import LossConfig
from .model import Ptychography
from .schedule import PARAM_NAMES

log = logging.getLogger("phasestem.recon")


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


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DataConfig(Strict):
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
    ground_truth_key: str | None = Field(
        None, description="name of a ground-truth phase (rad, 2-D, dataset frame) in the data file (.npy/.npz/HDF5): "
        "PSNR, SSIM, E_φ and FRC resolution per epoch in the log and at the end in results.h5. Its pixel size comes "
        "from the file (HDF5 attribute 'sampling' of the dataset or its group, a seed file's phase_sampling) and it "
        "is resampled to the reconstruction's pixel (logged); without one it is taken at the reconstruction's pixel "
        "and must cover the scanned field")


class OpticsConfig(Strict):
    """Beam and probe. A value left out (or null) is the data file's; one given here wins over the file's, with a
    warning naming both when they differ."""

    energy: float | None = Field(None, gt=0, description="beam energy in eV; null: from the data file")
    semiangle: float | None = Field(None, gt=0, description="probe convergence semi-angle in mrad; null: from the "
                                    "data file")
    aberrations: dict[str, float] = Field(
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

    @field_validator("aberrations")
    @classmethod
    def _known(cls, v):
        from ..optics import Aberrations

        Aberrations.from_dict(v)
        return v


class ScanConfig(Strict):
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


class ScheduleConfig(Strict):
    """Learning rate and active epoch range of one parameter."""

    lr: float | None = Field(None, ge=0, description="learning rate: Adam/SGD units per update; for lsq (object, "
                             "probe) a fraction of the Gauss–Newton step; 0 freezes the parameter; null: the "
                             "solver's default")
    start: int = Field(1, ge=1, description="first epoch (1-based) in which the parameter is optimised")
    end: int | None = Field(None, description="last epoch (null: to the end)")


class InitialPhase(Strict):
    """Start the object from a phase image (hybrid: e.g. a learned prediction)."""

    file: Annotated[Path, ConfigPath()] = Field(
        description="phase image (.npy, .npz or HDF5), rad, in the dataset frame")
    key: str | None = Field(None, description="array/dataset name inside .npz/HDF5")
    sampling: tuple[float, float] | float | None = Field(None, description="pixel of the image in Å (null: same)")

    @field_validator("sampling", mode="before")
    @classmethod
    def _two(cls, v):
        return _pair(v, "sampling", positive=True)


class RandomPhase(Strict):
    """Start the object phase from seeded uniform noise (PtyRAD's random start)."""

    scale: float = Field(0.1, gt=0, description="half-width of the uniform phase noise in rad ([−scale, scale])")
    seed: int = Field(0, description="seed of the noise (the same seed gives the same start)")


class InitialProbe(Strict):
    """Start the probe from a file instead of the nominal optics."""

    file: Annotated[Path, ConfigPath()] = Field(
        description="complex probe (M, ny, nx) or (ny, nx) in .npy/.npz/HDF5 (e.g. a previous results.h5, key "
        "probe/real_space); window = the pattern shape")
    key: str | None = Field(None, description="array/dataset name inside .npz/HDF5")


class ModelConfig(Strict):
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
    obj_preblur: float = Field(0.0, ge=0, description="Gaussian σ (object pixels) by which the forward model sees "
                               "the object's amplitude and phase blurred (PtyRAD's obj_preblur_std; 0: off)")
    initial_phase: InitialPhase | None = Field(None, description="start the object phase from an image")
    random_phase: RandomPhase | None = Field(None, description="add seeded uniform noise to the start phase")
    initial_probe: InitialProbe | None = Field(None, description="start the probe from a file")
    learning_rates: dict[str, ScheduleConfig | float] = Field(
        default_factory=dict, description=f"per-parameter lr or {{lr, start, end}}; keys: {', '.join(PARAM_NAMES)}")

    @field_validator("learning_rates")
    @classmethod
    def _names(cls, v):
        for k in v:
            if k not in PARAM_NAMES:
                raise ValueError(f"unknown parameter '{k}': expected one of {list(PARAM_NAMES)}")
        return v


class LossesConfig(Strict):
    """Loss terms: exactly the terms named here run, at their weights (a term left out is off); with none named,
    the Gaussian term on amplitudes alone at weight 1. The run log names the terms that ran."""

    gaussian: float | None = Field(None, ge=0, description="weight of the Gaussian term on intensity^power; left out "
                                   "(null): 0 when another term is named, 1 when none is")
    poisson: float | None = Field(None, ge=0, description="weight of the Poisson deviance (negative log-likelihood "
                                  "minus its value at the data); for counted data gaussian 0.5 + poisson 0.5 (robust "
                                  "to model mismatch and right at low counts); left out (null): 0")
    pacbed: float | None = Field(None, ge=0, description="weight of the PACBED consistency term; left out (null): 0")
    sparsity: float | None = Field(None, ge=0, description="weight of the L1 sparsity of the object phase; left out "
                                   "(null): 0")
    power: float = Field(0.5, gt=0, le=1, description="exponent p of the Gaussian term (0.5 = amplitudes)")

    @model_validator(mode="after")
    def _one_data_term(self):
        self.resolved()
        return self

    def resolved(self):
        """The :class:`phasestem.recon.losses.LossConfig` of these weights (the terms that run)."""
        return LossConfig(**self.model_dump())


class RunConfig(Strict):
    """How to run."""

    optimizer: Literal["lsq", "adam", "sgd", "lbfgs"] = Field(
        "lsq", description="lsq: illumination-preconditioned least-squares steps for object and probe (Adam for "
        "positions, tilt, thickness); or adam, sgd, lbfgs")
    precondition_reg: float = Field(0.1, gt=0, le=10, description="lsq: relative floor of the curvature (dim pixels "
                                    "step at most 1/reg of a bright pixel's step)")
    precondition_batches: Annotated[int, Field(ge=1)] | Literal["auto"] | None = Field(
        "auto", description="lsq: add the whole scan's curvature / this number to every step's, so that an epoch "
        "takes about this many Gauss–Newton steps of the whole data whatever the batch size (noisy counts: fewer, "
        "better-averaged steps); null: each batch's own curvature; auto: 16 when the loss has a Poisson term "
        "(counted data), else null")
    check_optics: bool = Field(True, description="before the run, fit the scan centre briefly with C10 and −C10 and "
                               "warn when the flipped defocus sign fits the data far better")
    divergence_factor: float = Field(10.0, ge=0, description="stop (exit 1, last good state kept) when an epoch's "
                                     "loss exceeds this many times the best so far (0: only NaN/Inf)")
    n_epochs: int = Field(20, ge=1, description="number of epochs (iterations over all patterns)")
    batch_size: int = Field(32, ge=1, description="patterns per mini-batch")
    batch_mode: Literal["random", "compact"] = Field("random", description="random or spatially compact batches")
    momentum: float = Field(0.9, ge=0, lt=1, description="SGD momentum")
    lr_scale: float = Field(1.0, gt=0, description="multiplies every learning rate")
    lr_decay: Literal["none", "cosine"] = Field("cosine", description="cosine: every learning rate falls to lr_final "
                                                "× its value over the run's epochs (--resume continues it), which "
                                                "keeps noisy data from being over-fitted late in a run; none: constant")
    lr_final: float = Field(0.1, gt=0, le=1, description="final learning-rate fraction of lr_decay: cosine")
    seed: int = Field(0, description="seed of the batch order")
    device: str = Field("cpu", description="torch device: cpu, cuda, cuda:1, auto")
    out_dir: Annotated[Path, ConfigPath()] = Field(Path("recon_out"),
                                                   description="output folder (relative to the YAML file's folder)")
    checkpoint_every: int = Field(5, ge=0, description="write a checkpoint every N epochs (0: never)")
    figures_every: int = Field(0, ge=0, description="write a figure every N epochs (0: only at the end)")
    n_processes: int = Field(1, ge=1, description="data-parallel processes (torch.distributed, gloo on CPU)")
    progress: bool = Field(True, description="show a progress bar")
    ptyrad_loss: bool = Field(False, description="after every epoch also log PtyRAD's normalised Gaussian loss "
                              "√⟨(I^p − D^p)²⟩/⟨D^p⟩ over all patterns as loss_ptyrad (one more forward pass "
                              "per epoch, no gradients: about a third of an epoch's time)")
    data_in_memory: Literal["auto", True, False] = Field(
        "auto", description="true: every measured pattern on the device (two float32 copies: 8 bytes per pixel per "
        "pattern); false: patterns streamed from the data file per mini-batch (a chunked pass for the mean "
        "pattern, then each batch read in index order into host memory and copied to the device while the previous "
        "batch is computed); auto: stream when the two copies would exceed run.memory_budget_gb or half the free GPU "
        "memory")
    memory_budget_gb: float | None = Field(
        None, gt=0, description="memory (GiB, 2^30 bytes) the measured patterns may take: auto streams above it, and "
        "streaming holds at most about this much of pattern buffers at once (keep it above 8 × run.batch_size "
        "patterns); null: half the host memory available when the run starts")

    @field_validator("data_in_memory", mode="before")
    @classmethod
    def _in_memory(cls, v):
        if isinstance(v, bool):
            return v
        text = str(v).strip().lower() if isinstance(v, str) else None
        if text in ("auto", "true", "false"):
            return {"auto": "auto", "true": True, "false": False}[text]
        raise ValueError("must be auto, true or false")


class TuneParam(Strict):
    """One tuned quantity."""

    low: float = Field(description="lower bound")
    high: float = Field(description="upper bound")
    log: bool = Field(False, description="sample on a log scale")


class TuneConfig(Strict):
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


class ReconstructParams(Strict):
    """A complete reconstruction parameter file."""

    data: DataConfig = Field(description="data source")
    optics: OpticsConfig = Field(description="beam and probe")
    scan: ScanConfig = Field(description="scan geometry")
    model: ModelConfig = Field(default_factory=ModelConfig, description="reconstruction model")
    losses: LossesConfig = Field(default_factory=LossesConfig, description="loss weights")
    constraints: Constraints = Field(default_factory=Constraints, description="scheduled constraints")
    run: RunConfig = Field(default_factory=RunConfig, description="run settings")
    tune: TuneConfig | None = Field(None, description="hyper-parameter search (phasestem tune)")


# ---- loading -----------------------------------------------------------------------------
def parse_params(data: dict, source: str = "params", base_dir: Path | None = None) -> ReconstructParams:
    """Validate a dict; relative paths are taken relative to ``base_dir`` (the YAML file's folder)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping with data, optics, scan, … "
                          f"(got {type(data).__name__})")
    if base_dir is not None:
        data = resolve_config_paths(ReconstructParams, data, base_dir)
    return validate(ReconstructParams, data, source)


def load_params(path: str | Path) -> ReconstructParams:
    """Read and validate a YAML parameter file (``yaml.safe_load``); relative paths are taken from its folder."""
    path = Path(path)
    data = read_yaml_mapping(path, "parameter file")
    return parse_params(data, str(path), path.parent)


def dump_params(params: ReconstructParams, base: str | Path | None = None) -> str:
    """The fully resolved configuration as YAML text: each field's description as a comment, paths absolute
    (:func:`phasestem.configdump.config_yaml`), so it loads to the same run wherever it is saved; with ``base``
    (the folder the text is saved in) relative to it."""
    from ..configdump import config_yaml

    return config_yaml(params, "phasestem reconstruct", base)


# ---- building the dataset and the model ---------------------------------------------------
def _resampled(dataset, shape: tuple[int, int]):
    import torch

    from ..resample import resize

    p = torch.as_tensor(np.array(dataset.patterns[...], dtype=np.float32))  # a copy: memory maps are read-only
    sy, sx, H, W = p.shape
    out = resize(p, tuple(shape))  # (sy, sx, h, w)
    out = out * (H * W) / (shape[0] * shape[1])
    ang = None if dataset.angular_sampling is None else (dataset.angular_sampling[0] * H / shape[0],
                                                         dataset.angular_sampling[1] * W / shape[1])
    return dataset._replace(patterns=out.numpy(), angular_sampling=ang)


def scan_positions(scan: ScanConfig, scan_shape: tuple[int, int]) -> np.ndarray:
    """(N, 2) Å positions of the scan grid after rotation and affine (about ``origin``), or those of
    ``scan.positions_file`` ((N, 2) or (Sy, Sx, 2) Å, finite real numbers; checked: :mod:`.inputs`)."""
    if scan.positions_file is not None:
        from .inputs import check_grid_shape, field, read_array

        with field("scan.positions_file"):
            pos = read_array(scan.positions_file, None, "scan positions")
            return check_grid_shape(pos, scan.positions_file, scan_shape, "positions").astype(np.float64)
    from ..scan import GridScan

    return GridScan(shape=scan_shape, step=scan.step, origin=scan.origin, rotation=scan.rotation,
                    affine=scan.affine).positions()


#: reader calibration → the parameter-file field that gives it
CALIBRATION_FIELDS = {"scan_shape": "scan.shape", "scan_step": "scan.step", "scan_origin": "scan.origin",
                      "energy": "optics.energy", "semiangle": "optics.semiangle",
                      "angular_sampling": "optics.angular_sampling", "sampling": "optics.sampling",
                      "aberrations": "optics.aberrations"}


def given_calibrations(params: ReconstructParams) -> dict[str, Any]:
    """The calibrations the parameter file gives (reader option names; a value left out or null is absent)."""
    o, s = params.optics, params.scan
    given = {"energy": o.energy, "semiangle": o.semiangle, "scan_step": s.step, "scan_origin": s.origin,
             "scan_shape": s.shape, "aberrations": dict(o.aberrations) or None}
    if o.angular_sampling is not None:
        given["angular_sampling"] = o.angular_sampling
    elif o.sampling is not None:
        given["sampling"] = o.sampling
    return {k: v for k, v in given.items() if v is not None}


def build_dataset(params: ReconstructParams, sources: dict[str, str] | None = None, warn: bool = True):
    """Load the data file with :func:`phasestem.io.load` and apply the data/optics/scan settings.

    Every calibration the parameter file leaves out (or null) is the file's; one it gives wins, with a warning
    (log and stderr) naming the field and both values when it differs from the file's (``warn``). The resolved
    settings and their sources are ``dataset.metadata['settings']`` (a list of
    :class:`phasestem.provenance.Setting`); ``sources`` labels values of the parameter file by field (default
    ``YAML``; e.g. ``{"optics.semiangle": "calibration"}`` for a file written by ``phasestem calibrate``)."""
    from .. import io
    from ..errors import MissingCalibrationError
    from ..provenance import conflict_messages
    from .report import geometry_settings

    d, o, s = params.data, params.optics, params.scan
    if "defocus" in o.aberrations:
        log.warning("optics.aberrations.defocus = %g is abTEM's/py4DSTEM's convention: C10 = %g Å (a crossover %g Å "
                    "%s the entrance surface). If your file's 'defocus' means the opposite, give C10 instead.",
                    o.aberrations["defocus"], -o.aberrations["defocus"], abs(o.aberrations["defocus"]),
                    "beyond" if o.aberrations["defocus"] > 0 else "before")
    options = dict(d.reader_options)
    options.update(given_calibrations(params))
    if d.patterns_key is not None:
        options["patterns_key"] = d.patterns_key
    try:
        ds = io.load(d.file, format=d.format, **options)
    except MissingCalibrationError as exc:
        field = CALIBRATION_FIELDS.get(exc.name, exc.name)
        raise ConfigError(f"{field}: not given, and {d.file} does not hold it ({_WHAT[exc.name]}); give {field}"
                          ) from None
    except ShapeError as exc:
        if s.shape is not None and "scan" in str(exc):
            n = s.shape[0] * s.shape[1]
            raise ConfigError(f"scan.shape: {tuple(s.shape)} = {n} positions does not match the data ({exc})") from None
        raise ConfigError(f"data.file: {exc}") from None
    except InputFileError as exc:
        field = "data.patterns_key" if d.patterns_key is not None and d.patterns_key in str(exc) else "data.file"
        raise InputFileError(f"{field}: {exc}") from None
    if s.shape is not None and tuple(ds.scan_shape) != tuple(s.shape):
        raise ConfigError(f"scan.shape: {tuple(s.shape)} = {s.shape[0] * s.shape[1]} positions but {d.file} has "
                          f"{ds.n_patterns} patterns in a {ds.scan_shape[0]}×{ds.scan_shape[1]} scan")
    if warn:
        for message in conflict_messages(ds.metadata, CALIBRATION_FIELDS, sources or "YAML",
                                         " (leave {field} out, or null, to use the file's)"):
            log.warning(message)
    for name, what in (("semiangle", ds.semiangle), ("angular_sampling", ds.angular_sampling)):
        if what is None:
            field = CALIBRATION_FIELDS[name]
            also = " or optics.sampling (Å)" if name == "angular_sampling" else ""
            raise ConfigError(f"{field}: not given, and {d.file} does not hold it ({_WHAT[name]}); give {field}{also}")
    ds.metadata["settings"] = geometry_settings(params, ds, sources)
    if s.rotation or s.affine is not None or s.positions_file is not None:
        resolved = s.model_copy(update={"step": ds.scan_step, "origin": ds.scan_origin})
        ds = ds._replace(positions=scan_positions(resolved, ds.scan_shape))
    if d.scan_subset is not None:
        r0, r1, c0, c1 = d.scan_subset
        ds = ds.scan_subset(slice(r0, r1), slice(c0, c1))
    if d.transpose or d.flip_y or d.flip_x:
        ds = ds.transformed(flip_y=d.flip_y, flip_x=d.flip_x, transpose=d.transpose)
    if d.crop is not None:
        ds = ds.cropped(tuple(d.crop))
    if d.bin > 1:
        ds = ds.binned(d.bin)
    if d.resample is not None:
        ds = _resampled(ds, tuple(d.resample))
    if d.pad is not None:
        ds = ds.padded(tuple(d.pad))
    return ds


#: what each calibration is, for the message when neither the parameter file nor the data file gives it
_WHAT = {"energy": "the beam energy, eV", "scan_step": "the scan step, Å", "semiangle": "the probe semi-angle, mrad",
         "angular_sampling": "the detector pixel, mrad"}


def load_detector_shifts(params: ReconstructParams, dataset=None) -> np.ndarray | None:
    """``data.detector_shifts`` (N, 2) px in the frame of the patterns :func:`build_dataset` returns (after the
    scan subset, transpose, flips and binning), or None. With ``dataset`` (what :func:`build_dataset` returned)
    the file must fit its scan ((Sy, Sx, 2) of the scan, or one shift per pattern) and every shift must keep the
    disk centre on its detector (:mod:`.inputs`); every refusal names the field and the file."""
    from .inputs import check_grid_shape, check_shifts_on_detector, field, read_array

    d = params.data
    if d.detector_shifts is None:
        return None
    path = Path(d.detector_shifts)
    with field("data.detector_shifts"):
        arr = read_array(path, None, "detector shifts").astype(np.float64)
        if arr.shape[-1:] != (2,) or arr.ndim not in (2, 3):
            raise ShapeError(f"{path} must hold (Sy, Sx, 2) or (N, 2) px, got shape {arr.shape}")
        if d.resample is not None:
            raise ConfigError("cannot be combined with data.resample (scale the shifts by the resampling factor "
                              "yourself, or resample nothing)")
        if d.scan_subset is not None:
            if arr.ndim != 3:
                raise ConfigError("data.scan_subset needs the (Sy, Sx, 2) form")
            r0, r1, c0, c1 = d.scan_subset
            if arr.shape[0] < r1 or arr.shape[1] < c1:
                raise ShapeError(f"{path} holds {arr.shape[0]} × {arr.shape[1]} shifts but data.scan_subset "
                                 f"takes rows up to {r1} and columns up to {c1}")
            arr = arr[r0:r1, c0:c1]
        if dataset is not None:
            arr = check_grid_shape(arr, path, dataset.scan_shape, "shifts")
        from ..detector import PixelatedDetector

        # displacement vectors follow the detector's transpose and flips (the frame size does not matter to them)
        orient = PixelatedDetector(shape=(1, 1), transpose=d.transpose, flip_y=d.flip_y, flip_x=d.flip_x)
        arr = orient.oriented_vectors(arr.reshape(-1, 2)) / d.bin
        if dataset is not None:
            check_shifts_on_detector(arr, path, dataset.pattern_shape)
    return np.ascontiguousarray(arr, dtype=np.float32)


def build_model(params: ReconstructParams, dataset) -> Ptychography:
    """The model of ``params.model`` for ``dataset`` (nominal probe from the optics). The input files
    (initial phase and probe, detector shifts) are read and checked first, each refusal naming its field."""
    from .budget import ObjectSizeError
    from .inputs import check_phase_image, check_probe, field, load_phase_image, load_probe_file

    m = params.model
    ip, phase, probe = m.initial_phase, None, None
    if m.initial_probe is not None:
        with field("model.initial_probe"):
            probe = load_probe_file(m.initial_probe.file, m.initial_probe.key)
            check_probe(probe, m.initial_probe.file, dataset.pattern_shape)
    if ip is not None:
        with field("model.initial_phase"):
            phase = load_phase_image(ip.file, ip.key)
            check_phase_image(phase, ip.file, ip.sampling or dataset.sampling, dataset.sampling,
                              np.asarray(dataset.positions_angstrom()))
    shifts = load_detector_shifts(params, dataset)
    try:
        model = Ptychography.from_dataset(
            dataset, n_slices=m.n_slices, slice_thickness=m.slice_thickness, n_probe_modes=m.n_probe_modes,
            n_object_modes=m.n_object_modes, source_size=m.source_size, mode_power=m.mode_power,
            object_padding=m.object_padding, tilt=m.tilt, per_position_tilt=m.per_position_tilt,
            initial_phase=phase, initial_phase_sampling=None if ip is None else ip.sampling, antialias=m.antialias,
            detector_blur=m.detector_blur, obj_preblur=m.obj_preblur, aperture_edge=params.optics.aperture_edge,
            probe=probe,
            random_phase=None if m.random_phase is None else m.random_phase.scale,
            random_seed=0 if m.random_phase is None else m.random_phase.seed,
            detector_shifts=shifts,
        )
    except ObjectSizeError as exc:
        if params.scan.positions_file is None:
            raise
        pos = np.asarray(dataset.positions_angstrom())
        span = pos.max(0) - pos.min(0)
        raise ConfigError(f"scan.positions_file: {params.scan.positions_file}: the positions span {span[0]:.3g} × "
                          f"{span[1]:.3g} Å; {exc.size} (positions are in Å)") from None
    except PhasestemError:
        raise
    except ValueError as exc:  # band-limit and similar optics errors (the input files were checked above)
        raise ConfigError(f"optics: {exc}") from None
    rates = {k: (v.model_dump() if isinstance(v, ScheduleConfig) else v) for k, v in m.learning_rates.items()}
    model.set_learning_rates(**rates)
    return model


def optimizer_options(params: ReconstructParams) -> dict:
    """Keyword arguments of :func:`phasestem.recon.engine.optimize` from the ``run``/``losses``/``constraints``."""
    r = params.run
    return {"optimizer": r.optimizer, "batch_size": r.batch_size, "batch_mode": r.batch_mode,
            "losses": params.losses.resolved(), "constraints": params.constraints,
            "lr_scale": r.lr_scale, "momentum": r.momentum, "seed": r.seed, "progress": r.progress,
            "precondition_reg": r.precondition_reg, "precondition_batches": r.precondition_batches,
            "divergence_factor": r.divergence_factor,
            "lr_decay": r.lr_decay, "lr_final": r.lr_final, "data_in_memory": r.data_in_memory,
            "memory_budget_gb": r.memory_budget_gb}


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name
