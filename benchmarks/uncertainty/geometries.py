"""Issue 65: does the phase's σ hold on every geometry? The σ a run reports by default (the Fisher map scaled by the
run's own bootstrap, ``phasestem.recon.sigma_bootstrap``) against the spread of the phase over independent noise
realisations, on data phasestem did not make, at the epoch the run returns by default.

    python benchmarks/uncertainty/geometries.py [--out runs/uncertainty_geometries] [--cases ...] [--realisations 6]
        [--device cuda]
    OUT=DIR bash benchmarks/uncertainty/gpu_geometries.sh     # every case at once on one GPU, merged into DIR

Cases (``CASES``; the development half chose the σ map's shape exponent, the validation half is reported): the
independent NumPy multislice of ``benchmarks/independent`` and abTEM 1.0, focused and defocused probes (0–300 Å),
15–30 mrad, steps 0.4–2 Å, 1–4 slices, 10³–10⁵ e⁻/pattern; each noise-free case simulated once, then
``--realisations`` Poisson draws, each reconstructed by phasestem's defaults (flat start, nominal probe refined, the
counted-data loss the data choose, lsq, ``run.lr_decay`` auto, ``run.n_epochs`` 20, batch 32, 2 threads).
``issue65`` is the issue's own case (32 × 32 scan at 1 Å, 20 mrad, 100 Å defocus, 10⁴ e⁻, the Poisson term alone,
four realisations, 10, 20 (the default) and 40 epochs).

Per case, over the constrained pixels of the first realisation's run (``uncertainty.constrained``, dataset frame,
σ of that run): the median over pixels of the spread (standard deviation over realisations, each one's constant
removed) / σ, divided by the median a calibrated σ gives for that many realisations (0.67 for two, 0.93 for six:
the sample standard deviation of few draws is skewed), and the root-mean-square of the ratio; for every pair of
realisations the share of pixels with |φ_a − φ_b| / (√2 σ) ≤ 2 (minimum and mean); the same for the unscaled
Fisher σ; κ and the seconds σ took beside
the run's. Writes ``OUT/results.json`` and ``OUT/result.md``; simulations and phases are cached in OUT.
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

BASE = dict(scan=(24, 24), step=1.0, window=128, sampling=0.2, energy=300e3, semiangle=20.0, defocus=100.0, batch=32)
SPEC = dict(n_slices=1, dz=10.0, max_phase=0.5, iters=20, dose=0, source=0.0, density=0.6)
#: the torch device of every reconstruction (``--device``)
DEVICE = "cpu"
CASES = {
    # development half
    "dev_20mrad_df100_1A_1e4": dict(half="development", dose=1e4),
    "dev_30mrad_focus_0.4A_1e5": dict(half="development", dose=1e5,
                                      geom=dict(semiangle=30.0, defocus=0.0, step=0.4, scan=(28, 28))),
    "dev_15mrad_df300_2A_1e3": dict(half="development", dose=1e3,
                                    geom=dict(semiangle=15.0, defocus=300.0, step=2.0, scan=(16, 16))),
    "dev_25mrad_df50_1A_3slices_1e4": dict(half="development", dose=1e4, geom=dict(semiangle=25.0, defocus=50.0),
                                           spec=dict(n_slices=3, density=0.3)),
    "dev_25mrad_focus_0.6A_3slices_1e3": dict(half="development", dose=1e3,
                                              geom=dict(semiangle=25.0, defocus=0.0, step=0.6, scan=(20, 20)),
                                              spec=dict(n_slices=3, dz=8.0, density=0.2)),
    # validation half
    "val_abtem_SrTiO3_20mrad_df100_1e4": dict(half="validation", dose=1e4, abtem=dict(
        reps=(7, 7, 1), grid=256, n_pat=128, scan=(24, 24), step_px=5, vacancies=[((3, 3), 0)], c10=100.0,
        recon_slices=1, n_configs=4, dose=0, specimen="SrTiO3 [001] 7x7x1, one Sr vacancy")),
    "val_20mrad_df200_1.5A_1e5": dict(half="validation", dose=1e5, geom=dict(defocus=200.0, step=1.5, scan=(20, 20))),
    "val_30mrad_focus_0.5A_4slices_1e3": dict(half="validation", dose=1e3,
                                              geom=dict(semiangle=30.0, defocus=0.0, step=0.5, scan=(24, 24)),
                                              spec=dict(n_slices=4, dz=8.0, density=0.2)),
    "val_15mrad_df100_1A_2slices_1e4": dict(half="validation", dose=1e4, geom=dict(semiangle=15.0),
                                            spec=dict(n_slices=2, density=0.3)),
    # the issue's case
    "issue65": dict(half="issue's case", dose=1e4, geom=dict(scan=(32, 32)), spec=dict(max_phase=0.6),
                    loss="poisson", epochs=(10, 20, 40), realisations=4),
}


def clean_case(name: str, out: Path) -> dict:
    """The noise-free case (cached as OUT/clean_NAME.npz)."""
    path = out / f"clean_{name}.npz"
    if not path.exists():
        t0 = time.perf_counter()
        c = CASES[name]
        if "abtem" in c:
            from cases_abtem import make_abtem_case

            case = make_abtem_case(layout=c["abtem"])
        else:
            case = simulate_case({**SPEC, **c.get("spec", {})}, {**BASE, **c.get("geom", {})}, seed=11)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, **case)
        os.replace(tmp, path)
        print(f"[{name}] simulated in {time.perf_counter() - t0:.0f} s", flush=True)
    with np.load(path) as z:
        return {k: z[k] for k in z.files}


def dataset_of(case: dict, patterns: np.ndarray):
    from phasestem.dataset import FourDSTEM
    from phasestem.physics.optics import angular_sampling_for

    H, W = patterns.shape[-2:]
    return FourDSTEM(patterns=patterns, energy=float(case["energy"]), scan_step=(float(case["scan_step"]),) * 2,
                     angular_sampling=angular_sampling_for(float(case["energy"]), float(case["sampling"]), (H, W)),
                     semiangle=float(case["semiangle"]), aberrations={"C10": float(case["c10"])})


def recipe(case: dict, epochs: int, loss: str | None):
    """phasestem's defaults as a function of a dataset (flat start; the data's loss unless ``loss`` names one; a
    parameter file's ``run.lr_decay: auto``, which the keyword front-end leaves at none)."""
    from phasestem.recon import Ptychography
    from phasestem.recon.settings.losses import LossConfig
    from phasestem.recon.sigma_bootstrap import block_batch_size

    losses = None if loss is None else LossConfig(gaussian=0.0, **{loss: 1.0})

    def run(ds, position_share: float = 1.0):  # the σ bootstrap's blocks run in proportionally smaller batches
        model = Ptychography.from_dataset(ds, n_slices=int(case["n_slices"]),
                                          slice_thickness=float(case["dz"])).to(DEVICE)
        for _ in model.LSQ_optimize(epochs, ds, batch_size=block_batch_size(32, position_share), losses=losses,
                                    lr_decay="auto", progress=False):
            pass
        return model
    return run


def run_case(name: str, case: dict, epochs: int, realisations: int, out: Path, phases_from: Path | None = None
             ) -> dict:
    """The phases of ``realisations`` Poisson draws and the first run's σ maps (cached). ``phases_from``: a folder
    holding this case's phases file of an earlier run (e.g. on a GPU, ``gpu_geometries.sh``): its realisations are
    kept and only the first is reconstructed again here, for its σ (a new σ of the same estimator)."""
    import torch

    from phasestem.recon.uncertainty import run_uncertainty

    path = out / f"phases_{name}_{epochs}.npz"
    if path.exists():
        with np.load(path) as z:
            return {k: z[k] for k in z.files}
    c = CASES[name]
    clean = np.asarray(case["patterns"], dtype=np.float64)
    clean = clean / clean.sum((-2, -1), keepdims=True).mean()
    shape = np.asarray(case["truth_phase"]).shape
    run = recipe(case, epochs, c.get("loss"))
    phases, arrays = [], {}
    earlier = None
    if phases_from is not None:
        found = sorted(Path(phases_from).glob(f"**/phases_{name}_{epochs}.npz"))
        if found:
            with np.load(found[0]) as z:
                earlier = z["phases"]
            realisations = 1
    for k in range(realisations):
        ds = dataset_of(case, np.random.default_rng(1000 + k).poisson(clean * c["dose"]).astype(np.float32))
        t0 = time.perf_counter()
        model = run(ds)
        run_s = time.perf_counter() - t0
        phases.append(model.phase_in_dataset_frame(shape))
        if k == 0:
            line = run_uncertainty(model, ds, "auto", rerun=run)
            u = model.uncertainty
            frame = model.experiment.in_dataset_frame
            arrays = dict(sigma=frame(torch.as_tensor(u.sigma_sum), shape).numpy(),
                          fisher_sigma=frame(torch.as_tensor(u.fisher_sigma_sum), shape).numpy(),
                          lit=frame(torch.as_tensor(u.constrained.astype(np.float32)), shape).numpy() > 0,
                          kappa=np.float64(u.scale), exponent=np.float64(u.shape_exponent),
                          sigma_s=np.float64(u.seconds), run_s=np.float64(run_s),
                          line=np.array(line))
            print(f"[{name} {epochs}] {line}", flush=True)
        print(f"[{name} {epochs}] realisation {k + 1}/{realisations}: {run_s:.1f} s", flush=True)
    arrays["phases"] = np.array(phases) if earlier is None else earlier
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return arrays


def median_std_of_normal(n: int) -> float:
    """The median of the sample standard deviation (ddof 1) of ``n`` draws of a unit normal: 0.674 for 2, 0.888 for
    4, 0.933 for 6 (√(χ²₀.₅(n − 1) / (n − 1)))."""
    from scipy.stats import chi2

    return float(np.sqrt(chi2.ppf(0.5, n - 1) / (n - 1)))


def calibration(phases: np.ndarray, sigma: np.ndarray, lit: np.ndarray) -> dict:
    """Spread / σ (median, rms) and the pairs' |z| ≤ 2 shares over ``lit`` (module docstring). The median is of
    the per-pixel spread over the few realisations divided by :func:`median_std_of_normal`: a calibrated σ reads 1
    whatever their number (``median_ratio_raw``: undivided, 0.67 for a calibrated σ and two realisations)."""
    p = phases.astype(np.float64)
    p = p - np.array([q[lit].mean() for q in p])[:, None, None]
    ratio = p.std(0, ddof=1)[lit] / sigma[lit]
    shares = [float(((np.abs(p[a] - p[b]) / (np.sqrt(2) * sigma))[lit] <= 2).mean())
              for a in range(len(p)) for b in range(a + 1, len(p))]
    return {"median_ratio": float(np.median(ratio)) / median_std_of_normal(len(p)),
            "median_ratio_raw": float(np.median(ratio)), "rms_ratio": float(np.sqrt(np.mean(ratio**2))),
            "pairs_within_2_min": min(shares), "pairs_within_2_mean": float(np.mean(shares))}


def score(arrays: dict) -> dict:
    sigma = np.asarray(arrays["sigma"], np.float64)
    lit = np.asarray(arrays["lit"], bool) & np.isfinite(sigma)
    kappa = float(arrays["kappa"])
    fisher = np.asarray(arrays["fisher_sigma"], np.float64) if "fisher_sigma" in arrays else sigma / kappa
    return {"scaled": calibration(arrays["phases"], sigma, lit), "fisher": calibration(arrays["phases"],
            fisher, lit), "kappa": kappa, "pixels": int(lit.sum()), "realisations": len(arrays["phases"]),
            "exponent": float(arrays.get("exponent", 1.0)), "median_sigma": float(np.median(sigma[lit])),
            "sigma_s": float(arrays["sigma_s"]),
            "run_s": float(arrays["run_s"])}


def passes(r: dict) -> bool:
    s = r["scaled"]
    return 0.8 <= s["median_ratio"] <= 1.25 and s["pairs_within_2_min"] >= 0.9


def table(results: dict) -> str:
    rows = ["| case | half | epochs | spread / σ: median (rms) | pairs \\|z\\| ≤ 2 (min / mean) | Fisher σ alone: "
            "median (rms), pairs min | κ (p) | σ time / run time |", "|---|---|---|---|---|---|---|---|"]
    for name, by_epochs in results.items():
        for epochs, r in by_epochs.items():
            s, f = r["scaled"], r["fisher"]
            rows.append(f"| {name} | {CASES[name]['half']} | {epochs} | {s['median_ratio']:.2f} ({s['rms_ratio']:.2f})"
                        f"{'' if passes(r) else ' ✗'} | {s['pairs_within_2_min']:.3f} / {s['pairs_within_2_mean']:.3f}"
                        f" | {f['median_ratio']:.2f} ({f['rms_ratio']:.2f}), {f['pairs_within_2_min']:.3f} | "
                        f"{r['kappa']:.2f} ({r.get('exponent', 1.0):.2f}) | {r['sigma_s']:.1f} s / {r['run_s']:.1f} s "
                        f"({100 * r['sigma_s'] / r['run_s']:.0f} %) |")
    return "\n".join(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=Path("runs/uncertainty_geometries"))
    ap.add_argument("--cases", nargs="+", default=list(CASES), choices=list(CASES))
    ap.add_argument("--realisations", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cpu", help="torch device of the reconstructions (the σ bootstrap's too)")
    ap.add_argument("--phases-from", type=Path, default=None,
                    help="keep the realisations of an earlier run's phases files in this folder; rerun the first "
                         "only, for σ (after a change to σ alone)")
    ap.add_argument("--merge", nargs="+", type=Path, default=None,
                    help="merge these results.json files (one per case, gpu_geometries.sh) into OUT; run nothing")
    args = ap.parse_args()
    if args.merge:
        merged: dict = {}
        for path in args.merge:
            merged.update(json.loads(path.read_text()))
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(merged, indent=1))
        text = table(merged)
        (args.out / "result.md").write_text(text + "\n")
        print(text)
        return
    import torch

    global DEVICE
    DEVICE = args.device
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    results_path = args.out / "results.json"
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    for name in args.cases:
        case = clean_case(name, args.out)
        for epochs in CASES[name].get("epochs", (20,)):
            arrays = run_case(name, case, epochs, CASES[name].get("realisations", args.realisations), args.out,
                              args.phases_from)
            results.setdefault(name, {})[str(epochs)] = score(arrays)
            results_path.write_text(json.dumps(results, indent=1))
    text = table(results)
    (args.out / "result.md").write_text(text + f"\n\nload average at the end: {os.getloadavg()}\n")
    print(text)


if __name__ == "__main__":
    main()
