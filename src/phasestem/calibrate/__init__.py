"""Calibration of 4D-STEM data from the data: bright-field disk (angular sampling, descan), bad
pixels, scan–detector rotation and transpose (CoM curl), defocus and astigmatism (tcBF parallax).

    from phasestem.calibrate import calibrate, calibrate_file
    calib = calibrate(dataset, semiangle=21.4)          # a FourDSTEM with energy and scan step
    calib, files = calibrate_file("scan.npy", "calib", energy=300e3, scan_step=0.4, semiangle=21.4)
"""
from __future__ import annotations

from .disk import NoDiskError
from .files import calibrate_file, load_for_calibration
from .pipeline import Calibration, calibrate
from .rotation import NoContrastError

__all__ = ["Calibration", "NoContrastError", "NoDiskError", "calibrate", "calibrate_file", "load_for_calibration"]
