"""Issue 4 benchmark: time to predict a phase with a trained network vs the AD engine's time to reach the
same phase error on the same sample.

    python benchmarks/bench_learned_vs_ad.py --model RUNS/end2end --sample heldout.h5
                                             [--epochs 60] [--device cpu|cuda] [--threads 2]

``--model``: a trained End2End run folder or weights file (or ``--model PATCH --stitch-model STITCH``) as
written by ``phasestem train``; ``--sample``: a simulated file with its truth phase (``phasestem simulate``), sample
``--index``. The script

1. predicts the phase (``phasestem.learn.apply.phase``) — timed after one warm-up call, on ``--device``;
2. runs AD ptychography (``phasestem.recon``, 1 slice, 1 probe mode, probe fixed to the nominal one,
   batch 32; ``--solver lsq``, the engine's default solver, or ``adam``) from a flat object on the same
   patterns, measuring E_φ against the truth on the truth grid after every epoch (the same protocol as
   ``phasestem demo``), once per object-phase learning rate of ``--lr`` (for ``lsq`` a fraction of the
   Gauss–Newton step, default 0.7; for ``adam`` rad per step, default 0.01; AD's best setting is what the
   prediction has to beat);
3. prints E_φ of the prediction, for each learning rate the AD epoch and seconds at which AD first reaches
   it (or its best E_φ when it never does), and the ratio for the fastest learning rate (AD seconds ÷
   prediction seconds; target ≥ 20). When no learning rate reaches the prediction's error, the ratio is
   reported as a lower bound: the longest AD run's seconds ÷ prediction seconds.

E_φ = sqrt(Σ|φ−φ_true−c|² / Σ|φ_true|²) over the scanned field of view (``phasestem.metrics.phase_error``).
With ``phasestem demo``'s outputs: ``--model demo_output/runs/end2end --sample
demo_output/data/heldout/heldout1.h5``.
"""
from __future__ import annotations

import argparse
import json
import time

import numpy as np
import torch


def ad_solver_run(dataset, rc, truth: np.ndarray, truth_sampling, fov, solver: str, device: str) -> dict:
    """AD from a flat object with ``solver`` (probe fixed); E_φ on the truth grid and optimisation seconds after every
    epoch (the protocol of ``phasestem.cli.demo.ad_run``, which is Adam only)."""
    from phasestem.metrics import phase_error
    from phasestem.physics.resample import sample_on_grid
    from phasestem.recon import Ptychography

    torch.manual_seed(0)
    model = Ptychography.from_dataset(
        dataset, learning_rates={"obj_phase": rc.lr_phase, "obj_amplitude": rc.lr_amplitude, "probe": 0.0},
        on_band_limit="ignore").to(device)
    sync = torch.cuda.synchronize if model.device.type == "cuda" else (lambda: None)

    def err() -> float:
        rec = sample_on_grid(model.phase_in_dataset_frame(), model.sampling, truth_sampling, truth.shape)
        return float(phase_error(rec[fov], truth[fov]))

    run = model.LSQ_optimize if solver == "lsq" else model.Adam_optimize
    errors, seconds, t = [err()], [0.0], 0.0
    t0 = time.perf_counter()
    for _ in run(rc.n_epochs, dataset, batch_size=rc.batch_size, seed=0, progress=False):
        sync()
        t += time.perf_counter() - t0
        errors.append(err())
        seconds.append(t)
        t0 = time.perf_counter()
    return {"errors": errors, "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="trained end2end (or patch) model file")
    ap.add_argument("--stitch-model", default=None, help="stitching model when --model is a patch model")
    ap.add_argument("--sample", required=True, help="simulated HDF5 file holding the truth phase")
    ap.add_argument("--index", type=int, default=0, help="sample index in the file")
    ap.add_argument("--epochs", type=int, default=60, help="most AD epochs to run")
    ap.add_argument("--solver", choices=["lsq", "adam"], default="lsq", help="AD solver (lsq: the engine's default)")
    ap.add_argument("--lr", type=float, nargs="+", default=None,
                    help="AD learning rate(s) of the object phase; one AD run each (default: the solver's default "
                         "for lsq, 0.01 for adam)")
    ap.add_argument("--device", default="cpu", help="device of the network (AD runs on the same device)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3, help="timed predictions (the median is reported)")
    ap.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    from phasestem import io
    from phasestem.cli.demo import DemoRecon, field_of_view, iterations_to_reach
    from phasestem.learn.apply.phase import load_predictor, predict_phase
    from phasestem.metrics import phase_error

    ds = io.load(args.sample, sample=args.index)
    if "phase" not in ds.truth:
        raise SystemExit(f"{args.sample}: sample {args.index} has no truth phase; use a simulated file")
    truth = np.asarray(ds.truth["phase"], np.float32)
    ts = tuple(float(s) for s in ds.truth.get("sampling", ds.sampling))
    fov = field_of_view(ds, ts, truth.shape)

    model, meta = load_predictor(args.model, args.stitch_model, device=args.device)
    sync = torch.cuda.synchronize if args.device.startswith("cuda") else (lambda: None)
    with torch.inference_mode():
        pred = predict_phase(model, meta, ds)  # warm-up
        times = []
        for _ in range(args.repeats):
            sync()
            t0 = time.perf_counter()
            pred = predict_phase(model, meta, ds)
            sync()
            times.append(time.perf_counter() - t0)
    t_pred = float(np.median(times))
    e_pred = float(phase_error(pred[fov], truth[fov]))
    print(f"prediction: E_phi {e_pred:.3f} in {t_pred:.3f} s (median of {args.repeats}, {args.device})", flush=True)

    lrs = args.lr or ([0.7] if args.solver == "lsq" else [0.01])
    ad_solver_run(ds, DemoRecon(n_epochs=1, batch_size=32), truth, ts, fov, args.solver, args.device)  # warm-up
    runs = []
    for lr in lrs:
        rc = DemoRecon(n_epochs=args.epochs, batch_size=32, lr_phase=lr, lr_amplitude=lr / 2 if args.solver == "adam"
                       else 0.1)
        ad = ad_solver_run(ds, rc, truth, ts, fov, args.solver, args.device)
        n = iterations_to_reach(ad["errors"], e_pred)
        runs.append({"lr": lr, "epochs_to_reach": n, "seconds_to_reach": float(ad["seconds"][n]) if n is not None
                     else None, "best_error": float(min(ad["errors"])), "errors": ad["errors"],
                     "seconds": ad["seconds"]})
    reached = [r for r in runs if r["epochs_to_reach"] is not None]
    if reached:
        best = min(reached, key=lambda r: r["seconds_to_reach"])
        ratio, lower_bound = best["seconds_to_reach"] / t_pred, False
    else:
        best = max(runs, key=lambda r: r["seconds"][-1])
        ratio, lower_bound = best["seconds"][-1] / t_pred, True
    print()
    print("| route | E_φ | seconds | AD epochs | AD seconds ÷ prediction seconds |")
    print("|---|---|---|---|---|")
    print(f"| learned prediction | {e_pred:.3f} | {t_pred:.3f} | | |")
    for r in runs:
        if r["epochs_to_reach"] is None:
            print(f"| AD {args.solver}, lr {r['lr']:g}: never reaches it | {r['best_error']:.3f} (best) | "
                  f"> {r['seconds'][-1]:.1f} | > {args.epochs} | > {r['seconds'][-1] / t_pred:.1f} |")
        else:
            print(f"| AD {args.solver}, lr {r['lr']:g}, to the same E_φ | {r['errors'][r['epochs_to_reach']]:.3f} | "
                  f"{r['seconds_to_reach']:.2f} | {r['epochs_to_reach']} | {r['seconds_to_reach'] / t_pred:.1f} |")
    print(f"\nratio (fastest AD setting): {'> ' if lower_bound else ''}{ratio:.1f} (target ≥ 20)")
    for r in runs:
        print(f"AD E_φ by epoch, lr {r['lr']:g}: {' '.join(f'{e:.3f}' for e in r['errors'])}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"predict_seconds": t_pred, "predict_error": e_pred, "ratio": ratio,
                       "ratio_is_lower_bound": lower_bound, "ad_runs": runs, "device": args.device,
                       "threads": args.threads, "ad_epochs": args.epochs, "solver": args.solver}, f, indent=1)


if __name__ == "__main__":
    main()
