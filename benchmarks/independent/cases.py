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
    """Simulate one of ``CASES``; returns the arrays and scalars of a case file."""
    return simulate_case(CASES[name], geom, seed)


def scan_tilts(spec: dict, pos: np.ndarray) -> np.ndarray | None:
    """Per-position mistilt (N, 2) mrad: ``tilt`` at the field's centre + ``tilt_grad`` (2 × 2, mrad) @ u,
    u = (position − centre) / half-span ∈ [−1, 1]² (y, x); None without ``tilt``."""
    if "tilt" not in spec:
        return None
    centre = (pos.max(0) + pos.min(0)) / 2
    half = np.maximum((pos.max(0) - pos.min(0)) / 2, 1e-12)
    grad = np.asarray(spec.get("tilt_grad", np.zeros((2, 2))), dtype=float)
    return np.asarray(spec["tilt"], dtype=float)[None] + ((pos - centre) / half) @ grad.T


def simulate_case(spec: dict, geom: dict, seed: int = 0) -> dict:
    """Simulate one case from a specimen/experiment ``spec`` and a geometry ``geom`` (see ``CASES``).

    ``spec``: n_slices, dz (Å), max_phase (rad per slice), density (atoms / Å² per slice), dose (0:
    noise-free), source (FWHM Å, 0: coherent), iters; optional width (atom σ, Å), margin (extra px
    round the scan), columns (True: every slice holds the same atoms, i.e. atom columns through the
    specimen), n_modes (probe modes the reconstruction is given), tilt / tilt_grad (mrad, see
    ``scan_tilts``), pos_error (per-axis σ of random position errors, Å) and drift (y, x) Å (a linear
    drift over the scan, 0 at the first position). With position errors the patterns are simulated
    at the true positions (``true_positions``, Å, dataset frame) and the reconstruction is given the
    nominal raster (``scan_step``); the truth is the specimen itself, so a distorted reconstruction
    scores lower. ``keep_slices``: also store the phase slices (``slice_phases``, object frame,
    nominal first probe centre at pixel (``margin_px``, ``margin_px``)) for ``check_cases.py``.
    """
    rng = np.random.default_rng(seed)
    n, samp = geom["window"], geom["sampling"]
    sy, sx = geom["scan"]
    margin_px = n // 2 + spec.get("margin", 8)
    span = ((sy - 1) * geom["step"] / samp, (sx - 1) * geom["step"] / samp)
    shape = (int(np.ceil(span[0])) + 2 * margin_px, int(np.ceil(span[1])) + 2 * margin_px)
    area = shape[0] * shape[1] * samp**2
    S = spec["n_slices"]
    width = spec.get("width", 0.4)
    if spec.get("columns"):  # a crystal-like specimen: the same atoms in every slice (atom columns)
        phases = np.repeat(atom_phase(shape, samp, rng, int(spec["density"] * area), spec["max_phase"], width)[None],
                           S, 0)
    else:
        phases = np.stack([atom_phase(shape, samp, rng, int(spec["density"] * area), spec["max_phase"], width)
                           for _ in range(S)])
    origin = (margin_px * samp, margin_px * samp)
    nominal = raster((sy, sx), geom["step"], origin)
    pos = nominal
    extra: dict = {}
    if spec.get("pos_error") or spec.get("drift") is not None:
        t = np.arange(len(nominal))[:, None] / max(len(nominal) - 1, 1)
        drift = t * np.asarray(spec.get("drift", (0.0, 0.0)), dtype=float)[None]
        jitter = rng.normal(0.0, spec.get("pos_error", 0.0), nominal.shape)
        pos = nominal + drift + jitter
        extra.update(true_positions=(pos - np.asarray(origin)).astype(np.float64), pos_error=spec.get("pos_error", 0.0),
                     drift=np.asarray(spec.get("drift", (0.0, 0.0)), dtype=float))
    tilt = scan_tilts(spec, nominal)
    if tilt is not None:
        extra["tilt_mrad"] = tilt
    pats = simulate_patterns(phases, samp, pos, n, geom["energy"], geom["semiangle"], geom["defocus"],
                             dz=spec["dz"], source_size=spec["source"], dose=spec["dose"] or None, rng=rng,
                             tilt=tilt)
    truth = phases.sum(0)[margin_px:, margin_px:]
    if spec.get("keep_slices"):
        extra.update(slice_phases=phases.astype(np.float32), margin_px=margin_px)
    return dict(patterns=pats.reshape(sy, sx, n, n), truth_phase=truth.astype(np.float32),
                energy=geom["energy"], semiangle=geom["semiangle"], c10=geom["defocus"], sampling=samp,
                scan_step=geom["step"], n_slices=S, dz=spec["dz"], n_modes=spec.get("n_modes", 1),
                iters=spec["iters"], batch=geom["batch"], dose=float(spec["dose"]),
                loss="poisson" if spec["dose"] else "gaussian", source_size=spec["source"], **extra)


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
