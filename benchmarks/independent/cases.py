"""The independent reference cases (NumPy multislice of ``numpy_multislice.py``; nothing from phasestem).

    python benchmarks/independent/cases.py OUT_DIR [--cases thin thick noisy coherent] [--quick]

Each case is written as ``case_NAME.npz`` in the layout of ``benchmarks/recon_peers/common.py``
(patterns (Sy, Sx, H, W) with zero frequency at (H//2, W//2); ``truth_phase`` summed over slices in
the dataset frame, pixel (0, 0) at the first probe centre; scalars energy, semiangle, c10 (= +Δf,
crossover before the entrance surface), sampling, scan_step, n_slices, dz, n_modes, iters, batch)
plus ``dose`` (0: noise-free) and ``loss`` ('gaussian' or 'poisson', what a user would pick).

Geometry (as ``recon_peers``): 32 × 32 raster at 1 Å, 128² windows of 0.2 Å pixels, 300 keV,
20 mrad hard-edged aperture, Δf = 100 Å, batch 32.

  thin      1 slice, weak atoms (≤ 0.5 rad), noise-free                      20 iterations
  thick     8 × 10 Å slices, strong phase (≤ 0.5 rad per slice), noise-free  5 iterations
  noisy     as thick, 1e6 e⁻ per pattern (Poisson)                           20 iterations
  coherent  as thin, source of 0.6 Å FWHM (partially coherent), 1e6 e⁻       20 iterations
"""
from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
from numpy_multislice import atom_phase, raster, simulate_patterns

GEOM = dict(scan=(32, 32), step=1.0, window=128, sampling=0.2, energy=300e3, semiangle=20.0, defocus=100.0,
            batch=32)
QUICK = dict(scan=(10, 10), step=1.0, window=64, sampling=0.2, energy=300e3, semiangle=20.0, defocus=100.0,
             batch=16)
CASES = {
    "thin": dict(n_slices=1, dz=10.0, max_phase=0.5, iters=20, dose=0, source=0.0, density=0.6),
    "thick": dict(n_slices=8, dz=10.0, max_phase=0.5, iters=5, dose=0, source=0.0, density=0.15),
    "noisy": dict(n_slices=8, dz=10.0, max_phase=0.5, iters=20, dose=1e6, source=0.0, density=0.15),
    "coherent": dict(n_slices=1, dz=10.0, max_phase=0.5, iters=20, dose=1e6, source=0.6, density=0.6),
}


def make_case(name: str, geom: dict, seed: int = 0) -> dict:
    """Simulate one case; returns the arrays and scalars of a case file."""
    spec = CASES[name]
    rng = np.random.default_rng(seed)
    n, samp = geom["window"], geom["sampling"]
    sy, sx = geom["scan"]
    margin_px = n // 2 + 8
    span = ((sy - 1) * geom["step"] / samp, (sx - 1) * geom["step"] / samp)
    shape = (int(np.ceil(span[0])) + 2 * margin_px, int(np.ceil(span[1])) + 2 * margin_px)
    area = shape[0] * shape[1] * samp**2
    S = spec["n_slices"]
    phases = np.stack([atom_phase(shape, samp, rng, int(spec["density"] * area), spec["max_phase"])
                       for _ in range(S)])
    origin = (margin_px * samp, margin_px * samp)
    pos = raster((sy, sx), geom["step"], origin)
    pats = simulate_patterns(phases, samp, pos, n, geom["energy"], geom["semiangle"], geom["defocus"],
                             dz=spec["dz"], source_size=spec["source"], dose=spec["dose"] or None, rng=rng)
    truth = phases.sum(0)[margin_px:, margin_px:]
    return dict(patterns=pats.reshape(sy, sx, n, n), truth_phase=truth.astype(np.float32),
                energy=geom["energy"], semiangle=geom["semiangle"], c10=geom["defocus"], sampling=samp,
                scan_step=geom["step"], n_slices=S, dz=spec["dz"], n_modes=1, iters=spec["iters"],
                batch=geom["batch"], dose=float(spec["dose"]), loss="poisson" if spec["dose"] else "gaussian",
                source_size=spec["source"])


def write_case(name: str, geom: dict, path: Path, seed: int = 0) -> None:
    """Write ``make_case`` atomically to ``path`` (.npz)."""
    case = make_case(name, geom, seed)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **case)
    os.replace(tmp, path)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out", type=Path)
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.cases:
        t0 = time.perf_counter()
        write_case(name, QUICK if args.quick else GEOM, args.out / f"case_{name}.npz", args.seed)
        print(f"{name}: {time.perf_counter() - t0:.1f} s -> {args.out / f'case_{name}.npz'}", flush=True)


if __name__ == "__main__":
    main()
