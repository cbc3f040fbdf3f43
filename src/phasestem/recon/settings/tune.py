"""The ``tune`` section of a reconstruction's parameter file: the Optuna search of ``phasestem tune``."""
from __future__ import annotations

from pydantic import Field

from ...base.configfile import FiniteModel


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
