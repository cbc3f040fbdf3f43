"""phasestem: phase retrieval from 4D-STEM data by simulation, AD ptychography and deep networks.

The public names are importable from here and load their module on first use (PEP 562), so ``import phasestem``
stays light (no torch)::

    import phasestem
    ds = phasestem.load("scan.h5")                           # phasestem.io.load -> FourDSTEM
    model = phasestem.Ptychography.from_dataset(ds)          # AD ptychography (phasestem.recon)

The learned route's names are in :mod:`phasestem.learn` (``phasestem.learn.Autoencoder``, …). Module paths of
earlier releases still import, with a DeprecationWarning naming the new one (:mod:`phasestem._moved`).
"""
from __future__ import annotations

from . import _moved
from .base.lazy import lazy_exports
from .base.version import __version__

#: public name -> "module:attribute" (the one table of the top-level API; README "Python API")
API = {
    "load": "phasestem.io:load",
    "FourDSTEM": "phasestem.dataset:FourDSTEM",
    "inspect": "phasestem.calibrate.overview:inspect",
    "PhasestemError": "phasestem.base.errors:PhasestemError",
    "Ptychography": "phasestem.recon.model:Ptychography",
    "load_params": "phasestem.recon.params:load_params",
    "run_reconstruction": "phasestem.recon.run:run_reconstruction",
    "load_results": "phasestem.recon.results:load_results",
    "phase_uncertainty": "phasestem.recon.uncertainty:phase_uncertainty",
    "calibrate_file": "phasestem.calibrate.files:calibrate_file",
    "Calibration": "phasestem.calibrate.pipeline:Calibration",
    "SimulationConfig": "phasestem.simulate.config:SimulationConfig",
    "load_simulation_config": "phasestem.simulate.config:load_config",
    "simulate_dataset": "phasestem.simulate.writer:simulate_dataset",
    "dpc_phase": "phasestem.direct.dpc:dpc_phase",
    "parallax_phase": "phasestem.direct.parallax:parallax_phase",
    "ssb_phase": "phasestem.direct.ssb:ssb_phase",
    "figures_of_merit": "phasestem.metrics:figures_of_merit",
    "phase_error": "phasestem.metrics:phase_error",
    "plan": "phasestem.plan:plan",
}

__all__ = ["__version__", *API]

_moved.install()


__getattr__, __dir__ = lazy_exports(API, __name__)
