"""The ``optics`` section of a reconstruction's parameter file: beam and probe."""
from __future__ import annotations

from typing import Annotated

from pydantic import AfterValidator, Field, field_validator

from ...base.configfile import FiniteModel, number_pair
from ...physics.experiment import ApertureEdge
from ...physics.optics import checked_aberrations


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
    aperture_edge: ApertureEdge = Field(
        "soft", description="edge of the nominal probe's aperture: soft (one-pixel roll-off), hard, or measured "
        "(amplitude from the mean measured pattern)")

    @field_validator("angular_sampling", "sampling", mode="before")
    @classmethod
    def _two(cls, v, info):
        return number_pair(v, info.field_name, positive=True)
