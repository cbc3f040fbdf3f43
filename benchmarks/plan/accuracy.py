"""Issue 30 acceptance: does ``phasestem plan`` predict what ``--auto`` reaches on data it did not make?

    python benchmarks/plan/accuracy.py [--cases thin_high thick_high thin_low] [--workdir runs/plan_accuracy]
                                       [--scan 32] [--reuse | --rescore]

For each case, two things run on the same settings (300 keV, 20 mrad, C10 = +60 Å over-focus, 0.5 Å step,
64² patterns of λ/15.62 Å = 1.26 mrad):

* the **full acquisition**, simulated by **abTEM** (not phasestem): SrTiO3 [001], a periodic box of 4 × 4 unit
  cells (15.62 Å, 96² grid; abTEM's 'cutoff' detector keeps the central 64²), two frozen-phonon configurations
  (0.08 Å), slices of half a unit cell, a ``--scan`` × ``--scan`` raster (wrapping round the periodic box), Poisson
  counts at the case's dose; then ``phasestem reconstruct scan.npy --auto`` (the Python call, with the energy,
  semi-angle, step, the sign of the defocus and ``--edge-threshold 0.25`` for abTEM's soft aperture edge) scored
  against abTEM's σ·V_proj averaged over the reconstruction pixel as the plan's truth is (:func:`pixel_averaged`);
* the **plan**: ``phasestem.plan`` of the same settings with ``specimen: {kind: typical, thickness: t}`` (a
  perovskite crystal of that thickness, phasestem's simulator, its small default field).

Both are scored by one function (:func:`phasestem.plan.expected.score`: E_φ and the FRC resolution, 1/7 crossed
for two rings, over the scanned field, the truth mapped through the positions). The table gives the plan's
numbers, the full run's, and whether each is within 20 %. Results: ``WORKDIR/results.json``.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

ENERGY, SEMIANGLE, C10, STEP = 300e3, 20.0, 60.0, 0.5
CELL, REPEAT, GPTS = 3.905, 4, 96  # the box is REPEAT × REPEAT cells; 'cutoff' gives 64² patterns
PIXEL = CELL * REPEAT / 64  # Å, the reconstruction pixel λ / (64 · λ/box)
#: name → (unit cells thick, dose e⁻/Å²)
#: abTEM's probe has a soft amplitude edge (amplitude 1/2, intensity 1/4 at the semi-angle): a user calibrates its
#: patterns with --edge-threshold 0.25 (at 0.5 the angular sampling reads 1.9 % high, tests/test_calibrate.py)
ABTEM_EDGE = 0.25
#: (the first three are issue 30's acceptance settings; mid_medium a fourth, added after the fixes, run once)
CASES = {"thin_high": (2, 4e5), "thick_high": (8, 4e5), "thin_low": (2, 4e3), "mid_medium": (4, 4e4)}


def simulate_abtem(cells: int, dose: float, scan: int, seed: int = 0) -> dict:
    """abTEM patterns (scan, scan, 64, 64) as Poisson counts, the truth phase and the positions (abTEM's first
    axis is phasestem's y, as in tests/abtem_scan.py)."""
    import abtem
    import ase

    from phasestem.optics import interaction_constant

    abtem.config.set({"progress_bar": False, "fftw.planning_effort": "FFTW_ESTIMATE", "device": "cpu"})
    unit = ase.Atoms("SrTiO3", scaled_positions=[(0, 0, 0), (0.5, 0.5, 0.5), (0.5, 0.5, 0), (0.5, 0, 0.5),
                                                  (0, 0.5, 0.5)], cell=[CELL] * 3, pbc=True)
    atoms = unit * (REPEAT, REPEAT, cells)
    fp = abtem.FrozenPhonons(atoms, num_configs=2, sigmas=0.08, seed=seed)
    pot = abtem.Potential(fp, gpts=GPTS, slice_thickness=CELL / 2, projection="infinite")
    iy, ix = np.meshgrid(np.arange(scan), np.arange(scan), indexing="ij")
    pos = np.stack([iy.ravel(), ix.ravel()], -1) * STEP + 2.0
    probe = abtem.Probe(energy=ENERGY, semiangle_cutoff=SEMIANGLE, defocus=-C10)
    meas = probe.scan(pot, scan=abtem.CustomScan(pos), detectors=abtem.PixelatedDetector(max_angle="cutoff"))
    pats = np.asarray(meas.compute().array, dtype=np.float64)
    pats = pats.reshape(-1, *pats.shape[-2:]) if pats.ndim == 3 else pats.reshape(-1, scan * scan,
                                                                                   *pats.shape[-2:]).mean(0)
    proj = np.asarray(pot.build().project().compute().array, dtype=np.float64)
    proj = proj.reshape(-1, GPTS, GPTS).mean(0)
    rng = np.random.default_rng(seed)
    electrons = dose * STEP * STEP
    counts = rng.poisson(pats / pats.sum((-2, -1), keepdims=True).mean() * electrons).astype(np.int32)
    return {"patterns": counts.reshape(scan, scan, *counts.shape[-2:]), "truth": proj * interaction_constant(ENERGY),
            "truth_sampling": CELL * REPEAT / GPTS, "positions": pos, "dk": float(meas.sampling[0])}


def pixel_averaged(truth: np.ndarray, truth_sampling: float, pixel: float) -> np.ndarray:
    """abTEM's σ·V_proj (periodic box) as the plan states its truth: the projected potential sampled at half the
    reconstruction pixel ``pixel`` Å and binned 2 × 2 onto it (:mod:`phasestem.plan.expected`), i.e. filtered by
    cos(π q p / 2) per axis (two samples p/2 apart, averaged). Scored against the sharply band-limited potential
    instead, the same thin_high reconstruction gives E_φ 0.128 instead of 0.090: the two truths differ that much
    near Nyquist."""
    q = np.fft.fftfreq(truth.shape[0], truth_sampling)[:, None], np.fft.fftfreq(truth.shape[1], truth_sampling)
    kernel = np.cos(np.pi * q[0] * pixel / 2) * np.cos(np.pi * q[1] * pixel / 2)
    return np.fft.ifft2(np.fft.fft2(truth) * kernel).real


def score_full(folder: Path, sim: dict, pixel: float) -> dict:
    from phasestem.plan.expected import score

    truth = pixel_averaged(sim["truth"], sim["truth_sampling"], pixel)
    return score(folder / "full" / "results.h5", truth, sim["truth_sampling"], sim["positions"], periodic=True)


def plan_settings(cells: int, dose: float, scan: int, angular_sampling: float) -> dict:
    return {"optics": {"energy": ENERGY, "semiangle": SEMIANGLE, "aberrations": {"C10": C10}},
            "scan": {"step": STEP, "shape": [scan, scan]},
            "detector": {"shape": 64, "angular_sampling": angular_sampling},
            "dose": {"electrons_per_area": dose},
            "specimen": {"kind": "typical", "thickness": cells * CELL}}


def run_case(name: str, work: Path, scan: int) -> dict:
    import phasestem
    from phasestem.optics import wavelength
    from phasestem.plan.config import plan_config
    from phasestem.plan.expected import reconstruct_auto

    cells, dose = CASES[name]
    folder = work / name
    folder.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    sim = simulate_abtem(cells, dose, scan)
    np.save(folder / "scan.npy", sim["patterns"])
    t_sim = time.perf_counter() - t0
    angular = wavelength(ENERGY) / (CELL * REPEAT) * 1e3  # mrad per pixel: λ / box
    cfg = plan_config(plan_settings(cells, dose, scan, angular))
    t0 = time.perf_counter()
    _, calibration = reconstruct_auto(folder / "scan.npy", folder / "full", cfg, edge_threshold=ABTEM_EDGE)
    full = score_full(folder, sim, PIXEL)
    t_full = time.perf_counter() - t0
    t0 = time.perf_counter()
    rep = phasestem.plan(cfg, out=folder / "plan")
    t_plan = time.perf_counter() - t0
    e = rep.expected
    row = {"case": name, "thickness": cells * CELL, "dose": dose, "full_scan": scan, "plan_field": list(e.scan_shape),
           "plan_phase_error": e.phase_error, "full_phase_error": full["phase_error"],
           "plan_frc": e.frc_resolution, "full_frc": full["frc_resolution"],
           "abtem_s": t_sim, "full_auto_s": t_full, "plan_s": t_plan, "load": os.getloadavg()[0],
           "full_undetermined": dict(calibration.undetermined), "plan_undetermined": e.extra.get("undetermined", {}),
           "plan_notes": e.extra.get("notes", [])}
    row["phase_error_ratio"] = row["plan_phase_error"] / row["full_phase_error"]
    row["frc_ratio"] = row["plan_frc"] / row["full_frc"]
    print(json.dumps(row), flush=True)
    return row


def table(rows: list[dict]) -> str:
    lines = ["| case | thickness (Å) | dose (e⁻/Å²) | E_φ plan | E_φ --auto (full) | ratio | FRC plan (Å) | "
             "FRC --auto (Å) | ratio | both within 20 % |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        ok = abs(r["phase_error_ratio"] - 1) <= 0.2 and abs(r["frc_ratio"] - 1) <= 0.2
        lines.append(f"| {r['case']} | {r['thickness']:.1f} | {r['dose']:.0e} | {r['plan_phase_error']:.3f} | "
                     f"{r['full_phase_error']:.3f} | {r['phase_error_ratio']:.2f} | {r['plan_frc']:.3f} | "
                     f"{r['full_frc']:.3f} | {r['frc_ratio']:.2f} | {'yes' if ok else 'no'} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--workdir", type=Path, default=Path("runs/plan_accuracy"))
    ap.add_argument("--scan", type=int, default=32, help="positions per side of the full acquisition")
    ap.add_argument("--reuse", action="store_true", help="print the table of the stored results")
    ap.add_argument("--rescore", action="store_true", help="score the stored full runs again (abTEM's truth is "
                    "simulated again), keep the plan's numbers")
    args = ap.parse_args()
    store = args.workdir / "results.json"
    rows = json.loads(store.read_text()) if store.exists() else []
    if args.rescore:  # the full runs' stored results against the truth of this script's definition
        for r in rows:
            full = score_full(args.workdir / r["case"], simulate_abtem(*CASES[r["case"]], r["full_scan"]), PIXEL)
            r.update(full_phase_error=full["phase_error"], full_frc=full["frc_resolution"])
            r["phase_error_ratio"] = r["plan_phase_error"] / r["full_phase_error"]
            r["frc_ratio"] = r["plan_frc"] / r["full_frc"]
        store.write_text(json.dumps(rows, indent=1))
    elif not args.reuse:
        for name in args.cases:
            rows = [r for r in rows if r["case"] != name] + [run_case(name, args.workdir, args.scan)]
            store.write_text(json.dumps(rows, indent=1))
    print(table(rows))


if __name__ == "__main__":
    main()
