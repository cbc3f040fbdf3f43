"""Calibration of 4D-STEM data from the data: bright-field disk (angular sampling, descan), bad
pixels, scan–detector rotation and transpose (CoM curl), defocus and astigmatism (tcBF parallax).

    from phasestem.calibrate import calibrate, calibrate_file
    calib = calibrate(dataset, semiangle=21.4)          # a FourDSTEM with energy and scan step
    calib, files = calibrate_file("scan.npy", "calib", energy=300e3, scan_step=0.4, semiangle=21.4)
"""
from __future__ import annotations

from ..base.lazy import lazy_exports

#: public name -> "module:attribute", imported on first use (PEP 562): the command line imports this package
#: to register its sub-commands without torch
API = {
    "Calibration": "phasestem.calibrate.pipeline:Calibration",
    "NoContrastError": "phasestem.calibrate.rotation:NoContrastError",
    "NoDiskError": "phasestem.calibrate.disk:NoDiskError",
    "calibrate": "phasestem.calibrate.pipeline:calibrate",
    "calibrate_file": "phasestem.calibrate.files:calibrate_file",
    "load_for_calibration": "phasestem.calibrate.files:load_for_calibration",
}

__all__ = sorted(API)


__getattr__, __dir__ = lazy_exports(API, __name__)
