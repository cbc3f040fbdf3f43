"""Issue 65: what the default σ costs beside the run, on a 128 × 128 scan.

    python benchmarks/uncertainty/cost.py [--scan 128] [--epochs 20] [--out runs/uncertainty_cost.json]
        [--cache runs/uncertainty_cost]

One Poisson realisation (10⁴ e⁻/pattern) of the independent NumPy multislice (``benchmarks/independent``: 1 slice,
300 keV, 20 mrad, 100 Å defocus, 1 Å step, 128² patterns of 0.2 Å), reconstructed by phasestem's defaults (lsq,
the data's loss, probe refined, ``--epochs``), then ``run_uncertainty`` with the run's recipe (the Fisher map and
the bootstrap's κ). Prints and writes the run's seconds, σ's seconds and their ratio, with the load average.
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
sys.path.insert(0, str(HERE))

from cases import simulate_case  # noqa: E402
from geometries import BASE, SPEC, dataset_of, recipe  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--scan", type=int, default=128)
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("runs/uncertainty_cost.json"))
    ap.add_argument("--cache", type=Path, default=Path("runs/uncertainty_cost"),
                    help="folder of the simulated counts, reused by later calls")
    args = ap.parse_args()
    import torch

    from phasestem.base.safety import atomic_file
    from phasestem.recon.uncertainty import run_uncertainty

    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    cached = args.cache / f"counts_{args.scan}.npz"
    if cached.exists():  # the counts of an earlier call (the simulation takes ~10 minutes on two cores at 128²)
        with np.load(cached) as z:
            case = {k: z[k] for k in z.files if k != "counts"}
            patterns = z["counts"].astype(np.float32)
    else:
        case = simulate_case(SPEC, {**BASE, "scan": (args.scan, args.scan)}, seed=11)
        clean = np.asarray(case.pop("patterns"), dtype=np.float64)
        clean /= clean.sum((-2, -1), keepdims=True).mean()
        counts = np.random.default_rng(0).poisson(clean * 1e4)
        del clean
        with atomic_file(cached, field="--cache") as tmp, open(tmp, "wb") as f:
            np.savez(f, counts=counts.astype(np.uint16), **case)
        patterns = counts.astype(np.float32)
        del counts
        print(f"simulated {args.scan}² positions in {time.perf_counter() - t0:.0f} s", flush=True)
    ds = dataset_of(case, patterns)
    run = recipe(case, args.epochs, None)
    t0 = time.perf_counter()
    model = run(ds)
    run_s = time.perf_counter() - t0
    line = run_uncertainty(model, ds, "auto", rerun=run)
    sigma_s = model.uncertainty.seconds
    result = {"scan": args.scan, "epochs": args.epochs, "run_s": run_s, "sigma_s": sigma_s,
              "ratio": sigma_s / run_s, "kappa": model.uncertainty.scale, "line": line,
              "load_average": os.getloadavg(), "threads": args.threads}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(f"run {run_s:.1f} s, σ {sigma_s:.1f} s ({100 * sigma_s / run_s:.1f} % of the run); κ "
          f"{model.uncertainty.scale:.3g}; load average {os.getloadavg()}")


if __name__ == "__main__":
    main()
