"""Direct (non-iterative) phase retrieval from a calibrated 4D-STEM scan: DPC/iDPC, tilt-corrected
bright field (parallax) and single side-band (SSB) ptychography. Each returns a phase image in the
dataset frame (pixel (0, 0) at 0 Å) that can start the AD object (``reconstruct --init``).
"""
from __future__ import annotations
