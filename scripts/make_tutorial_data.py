"""Write the scan of the tutorial notebooks (``notebooks/data/abtem_srtio3.h5``) with abTEM.

Run once, with abTEM installed (``pip install "phasestem[abtem]"``), from the repository root::

    python scripts/make_tutorial_data.py

The scan is ``tests/abtem_scan.py``'s: SrTiO3 [001] simulated by abTEM (nothing of phasestem's physics), 16 × 16
positions 0.45 Å apart, 300 keV, 21.4 mrad, C10 = −90 Å, 64² patterns, then corrupted as a detector does
(scan rotated 23.7°, detector axes transposed, a descan drift, 4 hot and 4 dead pixels, Poisson counts at
3·10⁴ e⁻ per pattern). The file holds what a detector would (the counts, ``/patterns``, uint16; no calibration)
and, under ``/truth``, what the tutorial compares with: abTEM's phase σ·V_proj of the periodic cell (rad), its
pixel, the true probe positions (Å, specimen frame) and the corruptions as attributes.
"""
from __future__ import annotations

import sys
from pathlib import Path

import h5py
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "notebooks" / "data" / "abtem_srtio3.h5"


def main(out: Path = OUT) -> Path:
    sys.path.insert(0, str(ROOT / "tests"))
    import abtem_scan

    sim = abtem_scan.simulate_clean(detector_shifts=abtem_scan.descan_shifts()[:, ::-1])  # stored → specimen frame
    counts = abtem_scan.corrupt(sim["patterns"])
    if counts.min() < 0 or counts.max() > np.iinfo(np.uint16).max:
        raise SystemExit(f"counts {counts.min()}..{counts.max()} do not fit uint16")
    from phasestem.physics.optics import wavelength

    truth = abtem_scan.TRUTH
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    with h5py.File(tmp, "w") as f:
        f.attrs["description"] = ("SrTiO3 [001], 16 x 16 scan simulated by abTEM and corrupted as a detector does "
                                  "(scripts/make_tutorial_data.py); counts only, no calibration stored")
        f.create_dataset("patterns", data=counts.astype(np.uint16), chunks=(1, *counts.shape[1:]),
                         compression="gzip", compression_opts=9, shuffle=True)
        g = f.create_group("truth")
        g.create_dataset("phase", data=sim["phase"].astype(np.float32))
        g["phase"].attrs.update({"units": "rad", "sampling_A": sim["phase_sampling"], "periodic": True,
                                 "what": "abTEM's sigma * projected potential of the periodic cell"})
        g.create_dataset("positions", data=sim["positions"])
        g["positions"].attrs.update({"units": "Angstrom", "frame": "specimen (the phase's pixels), row-major"})
        g.attrs.update({"energy_eV": abtem_scan.ENERGY, "semiangle_mrad": abtem_scan.SEMIANGLE,
                        "scan_step_A": abtem_scan.STEP, "dose_per_pattern": abtem_scan.DOSE,
                        "rotation_deg": truth["rotation"], "transpose": truth["transpose"], "C10_A": truth["C10"],
                        "angular_sampling_mrad": sim["dk"] * wavelength(abtem_scan.ENERGY) * 1e3,
                        "descan_offset_px": truth["descan_offset"], "descan_drift_px": truth["descan_drift"],
                        "hot_pixels": np.asarray(abtem_scan.HOT), "dead_pixels": np.asarray(abtem_scan.DEAD)})
    tmp.replace(out)
    return out


if __name__ == "__main__":
    path = main()
    print(f"{path.relative_to(ROOT)}: {path.stat().st_size / 1e6:.2f} MB")
