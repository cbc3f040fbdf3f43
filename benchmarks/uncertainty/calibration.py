"""Issue 53: are the phase's error bars right? The predicted σ (``phasestem.recon.uncertainty``) against the spread of
the phase over independent noise realisations of one specimen, on data phasestem did not make.

    python benchmarks/uncertainty/calibration.py [--out runs/uncertainty] [--cases numpy_thin abtem_thin numpy_slices]
        [--doses 1e3 1e4 1e5] [--realisations 8] [--epochs 20]

Cases (noise-free patterns simulated once, then ``--realisations`` Poisson draws at each dose, each reconstructed by
phasestem from a flat start with the nominal probe, exact positions, no loss term named, i.e. the counted-data
default, 20 lsq epochs, 2 threads):

  numpy_thin    development: independent NumPy multislice (``benchmarks/independent``), 1 slice of weak random
                atoms (≤ 0.5 rad), 24 × 24 scan at 1 Å, 128² patterns of 0.2 Å, 300 keV, 20 mrad, focus 100 Å before
                the specimen
  abtem_thin    validation: abTEM 1.0, SrTiO3 [001] 7 × 7 × 1 cells (3.9 Å), one Sr vacancy, 4 frozen phonons, 24 × 24
                scan at 1.07 Å, reconstructed with 1 slice
  numpy_slices  reported, not tuned on: as numpy_thin with 3 slices of 10 Å, reconstructed with 3 slices

Per case and dose, over the constrained pixels of the scanned field (``uncertainty.constrained``): the median over
pixels of (spread of the phase over realisations, each realisation's constant removed) / (predicted σ of the first
realisation's run), its 10th and 90th percentiles, and for every pair of realisations the share of pixels with
|φ_a − φ_b| / (√2 σ) ≤ 2 (minimum and mean over the 28 pairs); and the seconds σ took beside an epoch's. Writes
``OUT/results.json`` and ``OUT/result.md``; the simulations and the phases are cached in OUT.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "independent"))

from cases import simulate_case  # noqa: E402

GEOM = dict(scan=(24, 24), step=1.0, window=128, sampling=0.2, energy=300e3, semiangle=20.0, defocus=100.0, batch=32)
NUMPY = {"numpy_thin": dict(n_slices=1, dz=10.0, max_phase=0.5, iters=20, dose=0, source=0.0, density=0.6),
         "numpy_slices": dict(n_slices=3, dz=10.0, max_phase=0.5, iters=20, dose=0, source=0.0, density=0.3)}
ABTEM = dict(reps=(7, 7, 1), grid=256, n_pat=128, scan=(24, 24), step_px=5, vacancies=[((3, 3), 0)], c10=100.0,
             recon_slices=1, n_configs=4, dose=0, specimen="SrTiO3 [001] 7x7x1, one Sr vacancy")
HALF = {"numpy_thin": "development", "abtem_thin": "validation", "numpy_slices": "reported (multislice)"}


def clean_case(name: str, out: Path) -> dict:
    """The noise-free case (cached as OUT/clean_NAME.npz)."""
    path = out / f"clean_{name}.npz"
    if not path.exists():
        t0 = time.perf_counter()
        if name == "abtem_thin":
            from cases_abtem import make_abtem_case

            case = make_abtem_case(layout=ABTEM)
        else:
            case = simulate_case(NUMPY[name], GEOM, seed=11)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, **case)
        os.replace(tmp, path)
        print(f"[{name}] simulated in {time.perf_counter() - t0:.0f} s", flush=True)
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def reconstruct(case: dict, patterns: np.ndarray, epochs: int):
    """phasestem from a flat start (no loss term named: the data's); returns the model."""
    from phasestem.dataset import FourDSTEM
    from phasestem.physics.optics import angular_sampling_for
    from phasestem.recon import Ptychography

    H, W = patterns.shape[-2:]
    ds = FourDSTEM(patterns=patterns, energy=float(case["energy"]), scan_step=(float(case["scan_step"]),) * 2,
                   angular_sampling=angular_sampling_for(float(case["energy"]), float(case["sampling"]), (H, W)),
                   semiangle=float(case["semiangle"]), aberrations={"C10": float(case["c10"])})
    S = int(case["n_slices"])
    model = Ptychography.from_dataset(ds, n_slices=S, slice_thickness=float(case["dz"]))
    model.set_learning_rates(positions=0.0)
    for _ in model.LSQ_optimize(epochs, ds, batch_size=32, progress=False):
        pass
    return model


def run_dose(name: str, case: dict, dose: float, realisations: int, epochs: int, out: Path) -> dict:
    import torch

    from phasestem.recon.uncertainty import phase_uncertainty

    path = out / f"phases_{name}_{dose:g}.npz"
    if path.exists():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    clean = np.asarray(case["patterns"], dtype=np.float64)
    shape = np.asarray(case["truth_phase"]).shape
    phases, sigma, lit, sigma_s, epoch_s = [], None, None, [], []
    for k in range(realisations):
        counts = np.random.default_rng(1000 + k).poisson(clean * dose).astype(np.float32)
        model = reconstruct(case, counts, epochs)
        phases.append(model.phase_in_dataset_frame(shape))
        epoch_s.append(float(np.mean([h["seconds"] for h in model.loss_history])))
        u = phase_uncertainty(model, model.counts_per_pattern)
        sigma_s.append(u.seconds)
        if sigma is None:
            frame = model.experiment.in_dataset_frame
            sigma = frame(torch.as_tensor(u.sigma_sum), shape).numpy()
            lit = frame(torch.as_tensor(u.constrained.astype(np.float32)), shape).numpy() > 0
        print(f"[{name} {dose:g}] realisation {k + 1}/{realisations}: {epoch_s[-1]:.2f} s per epoch, σ in "
              f"{sigma_s[-1]:.3f} s", flush=True)
    arrays = dict(phases=np.array(phases), sigma=sigma, lit=lit, sigma_seconds=np.array(sigma_s),
                  epoch_seconds=np.array(epoch_s))
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return arrays


def score(arrays: dict) -> dict:
    """The calibration figures of one case and dose (module docstring)."""
    p = arrays["phases"].astype(np.float64)
    p = p - p.mean((1, 2), keepdims=True)
    sigma, lit = arrays["sigma"], arrays["lit"].astype(bool) & np.isfinite(arrays["sigma"])
    ratio = (p.std(0, ddof=1) / sigma)[lit]
    shares = [float(((np.abs(p[a] - p[b]) / (np.sqrt(2) * sigma))[lit] <= 2).mean())
              for a in range(len(p)) for b in range(a + 1, len(p))]
    return {"median_ratio": float(np.median(ratio)), "p10": float(np.percentile(ratio, 10)),
            "p90": float(np.percentile(ratio, 90)), "pairs_within_2_min": min(shares),
            "pairs_within_2_mean": float(np.mean(shares)), "median_sigma": float(np.median(sigma[lit])),
            "pixels": int(lit.sum()), "realisations": len(p),
            "sigma_s": float(np.mean(arrays["sigma_seconds"])), "epoch_s": float(np.mean(arrays["epoch_seconds"]))}


def table(results: dict) -> str:
    rows = ["| case | half | dose (e⁻/pattern) | median spread / σ (p10–p90) | pairs within ±2 σ√2 (min / mean) | "
            "median σ (rad) | σ time / epoch |", "|---|---|---|---|---|---|---|"]
    for name, doses in results.items():
        for dose, r in doses.items():
            ok = 0.75 <= r["median_ratio"] <= 1.25 and r["pairs_within_2_min"] >= 0.9
            rows.append(f"| {name} | {HALF[name]} | {float(dose):.0e} | {r['median_ratio']:.3f} ({r['p10']:.2f}–"
                        f"{r['p90']:.2f}){'' if ok else ' ✗'} | {r['pairs_within_2_min']:.3f} / "
                        f"{r['pairs_within_2_mean']:.3f} | {r['median_sigma']:.4f} | "
                        f"{r['sigma_s']:.3f} s / {r['epoch_s']:.2f} s ({100 * r['sigma_s'] / r['epoch_s']:.1f} %) |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/uncertainty"))
    ap.add_argument("--cases", nargs="+", default=["numpy_thin", "abtem_thin", "numpy_slices"],
                    choices=list(HALF))
    ap.add_argument("--doses", nargs="+", type=float, default=[1e3, 1e4, 1e5])
    ap.add_argument("--realisations", type=int, default=8)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    import torch

    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for name in args.cases:
        case = clean_case(name, args.out)
        for dose in args.doses:
            arrays = run_dose(name, case, dose, args.realisations, args.epochs, args.out)
            results.setdefault(name, {})[f"{dose:g}"] = score(arrays)
            results_path.write_text(json.dumps(results, indent=1))
    text = table(results)
    (args.out / "result.md").write_text(text + f"\n\nload average at the end: {os.getloadavg()}\n")
    print(text)


if __name__ == "__main__":
    main()
