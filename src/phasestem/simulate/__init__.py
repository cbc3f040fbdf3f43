"""Simulation of 4D-STEM data on the shared physics core, and the seed-000 training-data writer."""
from __future__ import annotations

from .config import SimulationConfig, load_config
from .scan import DetectorGeometry, scan_positions, simulate_patterns, simulate_sample
from .writer import simulate_dataset

__all__ = [
    "DetectorGeometry", "SimulationConfig", "load_config", "scan_positions", "simulate_dataset",
    "simulate_patterns", "simulate_sample",
]
