"""Simulation of 4D-STEM data on the shared physics core, and the seed-000 training-data writer."""
from __future__ import annotations

from ..base.lazy import lazy_exports

#: public name -> "module:attribute", imported on first use (PEP 562): the command line imports this package
#: to register its sub-commands without torch
API = {
    "DetectorGeometry": "phasestem.simulate.scan:DetectorGeometry",
    "SimulationConfig": "phasestem.simulate.config:SimulationConfig",
    "load_config": "phasestem.simulate.config:load_config",
    "simulate_dataset": "phasestem.simulate.writer:simulate_dataset",
    "simulate_patterns": "phasestem.simulate.scan:simulate_patterns",
    "simulate_sample": "phasestem.simulate.scan:simulate_sample",
}

__all__ = sorted(API)


__getattr__, __dir__ = lazy_exports(API, __name__)
