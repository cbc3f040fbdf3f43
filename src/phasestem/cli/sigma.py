"""CLI: ``phasestem calibrate-sigma RUN``, the check of a run's σ on its own data
(:mod:`phasestem.recon.sigma_check`)."""
from __future__ import annotations

import argparse
from pathlib import Path

from ..base.cliargs import add_device

__all__ = ["register", "summary_lines"]

EPILOG = """examples:
  phasestem calibrate-sigma runs/scan1                      # 4 realisations of the run's epochs
  phasestem calibrate-sigma runs/scan1/results.h5 --realisations 8 --epochs 10 --out-file sigma8.json
  phasestem calibrate-sigma runs/scan1 --probe-positions fixed   # the object's share alone

Writes RUN/calibrate_sigma.json (or --out-file) and prints three lines: κ = median spread / σ (κ > 1.25: σ is too
small, multiply it by κ; κ < 0.8: too large), the spread itself in rad, and the verdict with the time per
realisation. Each realisation costs about one run of --epochs epochs."""


def register(subparsers, train_subparsers) -> None:
    p = subparsers.add_parser(
        "calibrate-sigma", help="check a finished run's phase σ on its own data (a parametric bootstrap)",
        description="Draw K noise realisations from the fitted model of a finished phasestem reconstruct run "
                    "(Poisson counts at the run's counts per pattern, or the Gaussian noise of run.noise_sigma), "
                    "reconstruct each with the run's own parameter file, and compare the phase's spread over them "
                    "with σ on the pixels the run constrains: κ = median spread / σ. Run it before trusting the "
                    "significance view (uncertainty.png) on new data. The realisations are reconstructed in a "
                    "temporary folder beside the report, removed afterwards.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("run", type=Path, metavar="RUN", help="the run's output folder, or its results.h5")
    p.add_argument("--realisations", type=int, default=4, metavar="K",
                   help="noise realisations to reconstruct (at least 2; default 4)")
    p.add_argument("--epochs", type=int, default=None, metavar="N",
                   help="epochs per realisation (default: the run's run.n_epochs)")
    p.add_argument("--probe-positions", choices=["refine", "fixed"], default="refine",
                   help="refine (default): as the run did, so the spread includes their share; fixed: held at the "
                        "run's fitted values (the object's share alone)")
    p.add_argument("--seed", type=int, default=0, help="realisation k draws its noise with seed SEED + k (default 0)")
    p.add_argument("--out-file", type=Path, default=None, metavar="FILE",
                   help="the report (JSON; default RUN/calibrate_sigma.json)")
    add_device(p, what="default: the run's run.device")
    p.set_defaults(func=_calibrate_sigma)


def summary_lines(report: dict) -> list[str]:
    """Three lines of a :func:`~phasestem.recon.sigma_check.calibrate_sigma` report: κ with its p10–p90 and the
    pairs within ±2 σ√2; the spread itself, σ and what the realisations refined; the verdict, cost and report."""
    from ..recon.sigma_check import moved_words

    r, s = report["spread_over_sigma"], report["spread_rad"]
    share = ("their share is in the spread" if report["probe_positions"] == "refine"
             else "held at the run's values: the object's share alone")
    return [
        f"κ = median spread / σ = {report['kappa']:.3g} (p10–p90 {r['p10']:.3g}–{r['p90']:.3g}) over "
        f"{report['constrained_pixels']} constrained pixels, {report['realisations']} realisations × "
        f"{report['epochs']} epochs; |φ_a − φ_b| / (√2 σ) ≤ 2 on {report['pairs_within_2sigma']:.0%} of the pairs' "
        "pixels (about 95 % when σ is right)",
        f"spread itself: median {s['median']:.4g} rad (p10–p90 {s['p10']:.4g}–{s['p90']:.4g}), σ median "
        f"{report['sigma_median_rad']:.4g} rad; refined in the realisations: {moved_words(report['refined'])} "
        f"(--probe-positions {report['probe_positions']}: {share})",
        f"{report['verdict']}; {report['seconds_per_realisation_mean']:.1f} s per realisation; report "
        f"{report['report']}",
    ]


def _calibrate_sigma(args) -> int:
    from ..recon.sigma_check import calibrate_sigma

    report = calibrate_sigma(args.run, realisations=args.realisations, epochs=args.epochs, out_file=args.out_file,
                             probe_positions=args.probe_positions, seed=args.seed, device=args.device,
                             say=lambda line: print(line, flush=True))
    for line in summary_lines(report):
        print(line)
    return 0
