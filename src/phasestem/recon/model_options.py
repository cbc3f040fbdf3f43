"""How a :class:`~phasestem.recon.model.Ptychography` is built from a dataset, as one object.

:class:`ModelOptions` holds the object's options and, in ``experiment``, the
:class:`~phasestem.physics.experiment.ExperimentOptions` of its probe, frame and detector. The parameter file's
``model`` section passes whole (:meth:`ModelOptions.from_config`); ``Ptychography.from_dataset(dataset, n_slices=…,
…)`` takes the same fields as CDTools-style keywords (:meth:`ModelOptions.from_keywords`).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any

from ..physics.experiment import ExperimentOptions


@dataclass(frozen=True)
class ModelOptions:
    """The options of a reconstruction model beyond its experiment.

    ``n_slices`` S of ``slice_thickness`` Å (default 10 Å; 1 slice: 1 Å, irrelevant without propagation);
    ``n_object_modes`` K; the start ``tilt`` (θy, θx) mrad, one per position with ``per_position_tilt``;
    ``initial_phase`` (array or .npy/.npz/.h5 path, rad, dataset frame, at ``initial_phase_sampling`` Å or the
    detector's pixel λ/(N·Δk); ``initial_phase_key`` inside a file) starts the object phase, divided evenly over
    the slices; ``learning_rates`` ({name: lr or {"lr", "start", "end"}}); ``obj_preblur`` σ (object px; PtyRAD's
    ``obj_preblur_std``): the forward model sees the object blurred laterally, the stored object stays sharp;
    ``random_phase`` (rad) adds uniform noise in ±random_phase to the start phase, drawn with ``random_seed``;
    ``probe_support_radius`` (window px) keeps the probe zero outside a circle about the window centre.
    """

    experiment: ExperimentOptions = field(default_factory=ExperimentOptions)
    n_slices: int = 1
    slice_thickness: float | None = None
    n_object_modes: int = 1
    tilt: tuple[float, float] = (0.0, 0.0)
    per_position_tilt: bool = False
    initial_phase: Any = None
    initial_phase_key: str | None = None
    initial_phase_sampling: tuple[float, float] | None = None
    learning_rates: dict | None = None
    obj_preblur: float = 0.0
    random_phase: float | None = None
    random_seed: int = 0
    probe_support_radius: float | None = None

    @classmethod
    def names(cls) -> tuple[str, ...]:
        """Every keyword :meth:`from_keywords` takes: the fields of both option objects."""
        return tuple(f.name for f in fields(cls) if f.name != "experiment") + ExperimentOptions.names()

    @classmethod
    def from_keywords(cls, options: ModelOptions | None = None, **keywords) -> ModelOptions:
        """``options`` (default all defaults) with ``keywords`` replacing its fields, those of
        :class:`ExperimentOptions` included (``n_probe_modes=2`` sets ``experiment.n_probe_modes``)."""
        base = options or cls()
        unknown = sorted(set(keywords) - set(cls.names()))
        if unknown:
            raise TypeError(f"Ptychography.from_dataset() got an unexpected keyword argument {unknown[0]!r} "
                            f"(ModelOptions and ExperimentOptions name: {', '.join(cls.names())})")
        exp = {k: keywords.pop(k) for k in list(keywords) if k in ExperimentOptions.names()}
        return replace(base, experiment=replace(base.experiment, **exp), **keywords)

    @classmethod
    def from_config(cls, model, optics, probe=None, initial_phase=None, detector_shifts=None) -> ModelOptions:
        """The parameter file's ``model`` section whole (a :class:`~phasestem.recon.schema.ModelConfig`) with
        ``optics.aperture_edge``, the input files already read (``probe`` (M, ny, nx) of ``model.initial_probe``,
        ``initial_phase`` (H, W) rad of ``model.initial_phase``) and the dataset's ``detector_shifts``. Every
        field of the section lands somewhere: one without a place here is an error, not a silent drop."""
        section = dict(model)
        ip, rp = section.pop("initial_phase"), section.pop("random_phase")
        section.pop("initial_probe")  # read by the caller: ``probe``
        rates = {k: (v.model_dump() if hasattr(v, "model_dump") else v)
                 for k, v in section.pop("learning_rates").items()}
        exp = {k: section.pop(k) for k in list(section) if k in ExperimentOptions.names()}
        unplaced = sorted(set(section) - set(cls.names()))
        if unplaced:
            raise AssertionError(f"model.{unplaced[0]} has no place in ModelOptions")
        return cls(experiment=ExperimentOptions(**exp, probe=probe, aperture_edge=optics.aperture_edge,
                                                detector_shifts=detector_shifts),
                   initial_phase=initial_phase, initial_phase_sampling=None if ip is None else ip.sampling,
                   random_phase=None if rp is None else rp.scale, random_seed=0 if rp is None else rp.seed,
                   learning_rates=rates, **section)
