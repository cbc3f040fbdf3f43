"""Learning-rate schedules of the reconstruction's parameters: names, defaults, and what ``None`` means per solver."""
from __future__ import annotations

from pydantic import Field

from ..base.configfile import FiniteModel

PARAM_NAMES = ("obj_amplitude", "obj_phase", "probe", "positions", "tilt", "slice_thickness", "obj_weights")

#: default learning rates and start epochs; None = the solver's default (:data:`SOLVER_DEFAULTS`)
DEFAULT_SCHEDULES = {
    "obj_amplitude": (None, 1),
    "obj_phase": (None, 1),
    "probe": (None, 1),
    "positions": (0.0, 1),  # off by default: set_learning_rates(positions={"lr": 0.03, "start": 3}), Å per step a
    # position takes when its pattern is in the mini-batch (optimizers.RowAdam: about once an epoch)
    "tilt": (None, 1),  # the solver's default where the specimen is thick enough (:func:`tilt_matters`), else 0
    "slice_thickness": (0.0, 1),
    "obj_weights": (0.0, 1),
}


#: what a learning rate of ``None`` means for each solver: Adam/SGD in parameter units per update,
#: ``lsq`` as a fraction of the Gauss–Newton step (dimensionless)
SOLVER_DEFAULTS = {
    "adam": {"obj_amplitude": 3e-3, "obj_phase": 3e-3, "probe": 3e-3, "tilt": 0.1},
    "sgd": {"obj_amplitude": 3e-3, "obj_phase": 3e-3, "probe": 3e-3},
    "lbfgs": {"obj_amplitude": 1.0, "obj_phase": 1.0, "probe": 1.0},
    "lsq": {"obj_amplitude": 0.1, "obj_phase": 0.7, "probe": 0.2,  # amplitude: see recon.precondition
            "tilt": 0.1},  # mrad per Adam step (lsq steps tilt, … with Adam, positions with RowAdam)
}


#: a specimen tilt is refined by default when 1 mrad of it moves the beam by at least this many object pixels on its
#: way through the specimen (Δz·S·1e-3 ≥ this × pixel): from 10 nm at 0.2 Å pixels
TILT_SHIFT_PX = 0.5


def tilt_matters(n_slices: int, slice_thickness: float, pixel: float) -> bool:
    """Whether a mistilt of a few mrad is visible in the data of this model: more than one slice and a specimen
    (``n_slices`` × ``slice_thickness`` Å) through which 1 mrad moves the beam by ≥ :data:`TILT_SHIFT_PX`
    × ``pixel`` Å. Chosen on the development cases of ``benchmarks/independent`` (dev_tilt 18 nm: r 0.71 → 0.95 at
    20 epochs; dev_thick 24 nm untilted: 0.9648 → 0.9642; dev_strong 8 nm: below the threshold)."""
    return n_slices > 1 and n_slices * slice_thickness * 1e-3 >= TILT_SHIFT_PX * pixel


#: the run log's line where a run refines the specimen tilt: what the data can and cannot say of it
TILT_NOT_MEASURED = ("the specimen tilt is refined, but the patterns alone do not fix it: a tilt gives the patterns of "
                     "untilted slices shifted by their depth × tan θ (benchmarks/independent/README.md, 'Mistilt is a "
                     "choice the data leave open'). It is a measurement where constraints.obj_shear ties it to a "
                     "crystal's columns; model.learning_rates.tilt: 0 freezes it")

#: counted data of at most this many counts per pattern is "low dose": the object amplitude is held at 1 by default
#: (:func:`phase_only`) and ``run.holdout: auto`` holds positions out (:mod:`phasestem.recon.holdout`)
LOW_DOSE_COUNTS = 3e4


def phase_only(counted: bool, counts: float, amplitude_schedule) -> bool:
    """Whether a run holds the object amplitude at its start (1): counted data (a Poisson term) of at most
    :data:`LOW_DOSE_COUNTS` per pattern, with the amplitude's learning rate left at the solver's default (None); a
    rate the user sets is kept. The amplitude is weakly determined and takes up Poisson noise that leaks into the
    phase. Chosen on the development half of ``benchmarks/independent`` (r at 20 iterations: dev_dose1e3 0.7651 →
    0.8156, dev_dose1e4 0.9559 → 0.9645); on the validation half val_dose1e3 0.8071 → 0.8517, val_dose1e4 0.9633 →
    0.9699."""
    return counted and counts <= LOW_DOSE_COUNTS and amplitude_schedule.lr is None


class ParamSchedule(FiniteModel):
    """Learning rate and active epoch range of one parameter: a model's schedule and an entry of the parameter
    file's ``model.learning_rates``. A learning rate of 0 freezes the parameter (as ``requires_grad = False``
    does); ``None`` takes the solver's default (:data:`SOLVER_DEFAULTS`)."""

    lr: float | None = Field(None, ge=0, description="learning rate: Adam/SGD units per update; for lsq (object, "
                             "probe) a fraction of the Gauss–Newton step; 0 freezes the parameter; null: the "
                             "solver's default")
    start: int = Field(1, ge=1, description="first epoch (1-based) in which the parameter is optimised")
    end: int | None = Field(None, description="last epoch (null: to the end)")

    def active(self, epoch: int) -> bool:
        return (self.lr is None or self.lr > 0) and epoch >= self.start and (self.end is None or epoch <= self.end)

    def resolved_lr(self, name: str, optimizer: str) -> float:
        """The learning rate this schedule means for ``optimizer``."""
        if self.lr is not None:
            return float(self.lr)
        return SOLVER_DEFAULTS.get(optimizer, SOLVER_DEFAULTS["adam"]).get(name, 0.0)


def default_schedules(n_slices: int, slice_thickness: float, pixel: float) -> dict[str, ParamSchedule]:
    """A new model's schedules (:data:`DEFAULT_SCHEDULES`); the tilt frozen where :func:`tilt_matters` says a tilt
    would only move what the data cannot see."""
    schedules = {name: ParamSchedule(lr=lr, start=start) for name, (lr, start) in DEFAULT_SCHEDULES.items()}
    if not tilt_matters(n_slices, slice_thickness, pixel):
        schedules["tilt"].lr = 0.0
    return schedules
