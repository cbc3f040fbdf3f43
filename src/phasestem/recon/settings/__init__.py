"""The settings of ``phasestem reconstruct``: its parameter file, one module per section (``data``, ``optics``,
``scan``, ``model``, ``losses``, ``constraints``, ``run``, ``tune``), each field declared once and taken by the code
as validated. Loading, dumping and building from it: :mod:`phasestem.recon.params`."""
from __future__ import annotations

from pydantic import Field

from ...base.configfile import FiniteModel
from .constraints import Constraints
from .data import DataConfig
from .losses import LossConfig
from .model import ModelConfig
from .optics import OpticsConfig
from .run import RunConfig
from .scan import ScanConfig
from .tune import TuneConfig


class ReconstructParams(FiniteModel):
    """A complete reconstruction parameter file."""

    data: DataConfig = Field(description="data source")
    optics: OpticsConfig = Field(default_factory=OpticsConfig, description="beam and probe (left out: every "
                                 "value from the data file)")
    scan: ScanConfig = Field(default_factory=ScanConfig, description="scan geometry (left out: every value from "
                             "the data file)")
    model: ModelConfig = Field(default_factory=ModelConfig, description="reconstruction model")
    losses: LossConfig = Field(default_factory=LossConfig, description="loss weights")
    constraints: Constraints = Field(default_factory=Constraints, description="scheduled constraints")
    run: RunConfig = Field(default_factory=RunConfig, description="run settings")
    tune: TuneConfig | None = Field(None, description="hyper-parameter search (phasestem tune)")
