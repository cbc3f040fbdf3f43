"""phasestem: phase retrieval from 4D-STEM data by simulation, AD ptychography and deep networks."""
from __future__ import annotations

__version__ = "0.1.0"

__all__ = ["__version__"]
