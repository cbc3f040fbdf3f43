"""The ``model`` section of a reconstruction's parameter file, and the options a model is built from.

:class:`ModelSettings` declares the section's fields once (the experiment's among them:
:class:`~phasestem.physics.experiment.ExperimentSettings`); :class:`ModelConfig` is the section (its input files
named), :class:`ModelOptions` what :meth:`phasestem.recon.model.Ptychography.from_dataset` builds from (the same
settings, the inputs as arrays): the section passes whole (:meth:`ModelOptions.from_config`), a program's keywords
replace fields (``from_dataset(ds, n_slices=8, n_probe_modes=4)``).
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, field_validator

from ...base.configfile import ConfigPath, FiniteModel, number_pair
from ...physics.experiment import ExperimentOptions, ExperimentSettings
from ..schedule import PARAM_NAMES, ParamSchedule


class InitialPhase(FiniteModel):
    """Start the object from a phase image (hybrid: e.g. a learned prediction)."""

    file: Annotated[Path, ConfigPath()] = Field(
        description="phase image (.npy, .npz or HDF5), rad, in the dataset frame")
    key: str | None = Field(None, description="array/dataset name inside .npz/HDF5")
    sampling: tuple[float, float] | float | None = Field(None, description="pixel of the image in Å (null: same)")

    @field_validator("sampling", mode="before")
    @classmethod
    def _two(cls, v):
        return number_pair(v, "sampling", positive=True)


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


class ModelSettings(ExperimentSettings):
    """The model section's settings (the experiment's, inherited, and the object's)."""

    n_slices: int = Field(1, ge=1, description="number of object slices S")
    slice_thickness: float | None = Field(None, gt=0, description="slice thickness Δz in Å (default 10 Å)")
    n_object_modes: int = Field(1, ge=1, le=64, description="number of object modes K, at most 64")
    tilt: tuple[float, float] = Field((0.0, 0.0), description="start specimen tilt (θy, θx) in mrad")
    per_position_tilt: bool = Field(False, description="one tilt per position instead of a global one")
    obj_preblur: float = Field(0.0, ge=0, description="Gaussian σ (object pixels) by which the forward model sees "
                               "the object's amplitude and phase blurred (PtyRAD's obj_preblur_std; 0: off)")
    learning_rates: dict[str, ParamSchedule | float | None] = Field(
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


class ModelConfig(ModelSettings):
    """The parameter file's ``model`` section: the settings and the files the model starts from."""

    initial_phase: InitialPhase | None = Field(None, description="start the object phase from an image")
    random_phase: RandomPhase | None = Field(None, description="add seeded uniform noise to the start phase")
    initial_probe: InitialProbe | None = Field(None, description="start the probe from a file")


class ModelOptions(ExperimentOptions, ModelSettings):
    """What a :class:`~phasestem.recon.model.Ptychography` is built from: the settings, and ``initial_phase`` (array
    or .npy/.npz/.h5 path, rad, dataset frame, at ``initial_phase_sampling`` Å or the detector's pixel; key
    ``initial_phase_key`` in a file) divided evenly over the slices, ``random_phase`` (rad) uniform noise in
    ±random_phase added to the start phase (seed ``random_seed``), ``probe_support_radius`` (window px): the probe
    is zero outside a circle about the window centre."""

    initial_phase: Any = None
    initial_phase_key: str | None = None
    initial_phase_sampling: tuple[float, float] | None = None
    random_phase: float | None = None
    random_seed: int = 0
    probe_support_radius: float | None = None

    @classmethod
    def from_config(cls, model: ModelConfig, optics, probe=None, initial_phase=None,
                    detector_shifts=None) -> ModelOptions:
        """The parameter file's ``model`` section whole with ``optics.aperture_edge``, the input files already read
        (``probe`` (M, ny, nx) of ``model.initial_probe``, ``initial_phase`` (H, W) rad of ``model.initial_phase``)
        and the dataset's ``detector_shifts``."""
        ip, rp = model.initial_phase, model.random_phase
        return cls(**{k: getattr(model, k) for k in ModelSettings.model_fields}, probe=probe,
                   aperture_edge=optics.aperture_edge, detector_shifts=detector_shifts, initial_phase=initial_phase,
                   initial_phase_sampling=None if ip is None else ip.sampling,
                   random_phase=None if rp is None else rp.scale, random_seed=0 if rp is None else rp.seed)
