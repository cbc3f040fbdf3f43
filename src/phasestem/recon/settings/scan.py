"""The ``scan`` section of a reconstruction's parameter file: the scan geometry."""
from __future__ import annotations

from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator

from ...base.configfile import ConfigPath, FiniteModel, number_pair


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
        return number_pair(v, "step", positive=True)
