"""CPU minutes of the verdict's calibration at a geometry no shipped model is for (issue 81: ≤ 20 CPU-minutes).

    python benchmarks/learned/verdict_calibration_time.py 1e4 OUT     # or none (noise-free)

300 keV, 20 mrad, Cs 0.1 mm, 1.5 Å step, 64² patterns of 0.8 mrad, ``model.upsampling`` 2 (``reconstruct``'s auto
there); ``restore-seed-fine`` stands in for a restorer of that geometry (only its restoration's CPU time counts)."""
from __future__ import annotations

import json
import sys
import time

from phasestem.physics.optics import wavelength
from phasestem.trust.calibration import calibrate, calibration_config

DTHETA, PIXELS = 0.8, 64


def geometry() -> dict:
    """The run record of the 20 mrad geometry (:func:`phasestem.recon.results.optics_record`'s keys)."""
    detector_pixel = wavelength(300e3) / (PIXELS * DTHETA * 1e-3)
    return {"energy": 300e3, "semiangle": 20.0, "aberrations": {"C10": 0.0, "C30": 1e6},
            "angular_sampling": [DTHETA, DTHETA], "scan_step": [1.5, 1.5],
            "sampling": [detector_pixel / 2, detector_pixel / 2], "upsampling": 2}


def main() -> int:
    electrons = None if sys.argv[1] == "none" else float(sys.argv[1])
    cfg = calibration_config(geometry())
    print(cfg.grid, cfg.scan.shape, flush=True)
    wall, cpu = time.time(), time.process_time()
    c = calibrate(geometry(), "restore-seed-fine", electrons, folder=f"{sys.argv[2]}/g20_{sys.argv[1]}",
                  progress=False)
    print(json.dumps({"wall": time.time() - wall, "cpu": time.process_time() - cpu, "recorded_cpu": c["cpu_seconds"],
                      "null_sites": c["null_sites"], "true": len(c["true"])}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
