"""Geometries of the learned-route benchmarks that train at (or near) the seed geometry: the probe, the cells, the
scan and the learned block settings, and the ``phasestem simulate`` config of each.

The numbers are those of the held-out benchmark of issue 23 (item 1): the seed-geometry probe of
``benchmarks/learned_vs_ad`` (300 keV, 15 mrad, C10 = 100 Å, about 3 Å across) and 64² patterns at 0.98 mrad.

* ``seed``: the seed's layout, a 50 × 50 scan at 2 Å over a 100 Å cell (512² simulation grid, 0.195 Å), 256² phase
  (0.39 Å); blocks of 14 × 14 positions at stride 9, 76² phase patches (25 blocks).
* ``reduced``: the same step, probe, pattern size and pixels on a 50 Å cell: a 25 × 25 scan, 128² phase; 5 × 5
  blocks at stride 5, 32² patches. About 4× cheaper to simulate and 8× cheaper to train per sample.
* ``smoke``: a 6 × 6 scan of 32² patterns on a 12 Å cell, for the test suite.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

OPTICS = {"energy": 300e3, "semiangle": 15.0, "aberrations": {"C10": 100.0}}
LAYOUTS: dict[str, dict[str, Any]] = {
    "seed": {"extent": 100.0, "sim_gpts": 512, "phase_gpts": 256, "scan": 50, "pattern": 64,
             "learned": {"block": 14, "stride": 9, "patch": 76, "vit_patch": 8,
                         "preprocess": {"bin": 2, "normalize": "pattern", "scale": "sqrt"}}},
    "reduced": {"extent": 50.0, "sim_gpts": 256, "phase_gpts": 128, "scan": 25, "pattern": 64,
                "learned": {"block": 5, "stride": 5, "patch": 32, "vit_patch": 8,
                            "preprocess": {"bin": 2, "normalize": "pattern", "scale": "sqrt"}}},
    "smoke": {"extent": 12.0, "sim_gpts": 64, "phase_gpts": 32, "scan": 6, "pattern": 32,
              "learned": {"block": 3, "stride": 3, "patch": 16, "vit_patch": 8,
                          "preprocess": {"normalize": "pattern", "scale": "sqrt"}}},
}
#: random crystals of phasestem's generator: depth (Å), frozen phonons, their σ (Å), zone-axis tilt (°)
SPECIMEN = {"depth": [10.0, 20.0], "phonons": 4, "phonon_sigma": 0.1, "max_tilt": 3.0}


def sim_config(layout: str, n: int, seed: int, phonons: int | None = None, step: float = 2.0,
               prefix: str = "simulation_data", structures: list[Path] | None = None) -> dict[str, Any]:
    """A ``phasestem simulate`` config of ``layout``: ``n`` noise-free samples in one file, scan ``step`` (Å) over the
    whole cell, phasestem's random crystals (or the ``structures`` files), ``phonons`` frozen-phonon configurations
    (default :data:`SPECIMEN`'s)."""
    lay = LAYOUTS[layout]
    shape = int(round(lay["scan"] * 2.0 / step))
    spec = {"kind": "crystal", **SPECIMEN}
    if phonons is not None:
        spec["phonons"] = int(phonons)
    if structures is not None:
        spec = {**spec, "kind": "structures", "files": [str(Path(p).resolve()) for p in structures]}
    return {"optics": OPTICS, "grid": {"extent": [lay["extent"]] * 2, "sim_gpts": [lay["sim_gpts"]] * 2,
                                       "phase_gpts": [lay["phase_gpts"]] * 2},
            "scan": {"shape": [shape, shape], "step": [step, step]}, "detector": {"shape": [lay["pattern"]] * 2},
            "specimen": spec, "output": {"n_files": 1, "samples_per_file": int(n), "prefix": prefix},
            "compute": {"seed": int(seed), "batch": 64}}
