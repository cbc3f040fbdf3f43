"""AD with the restorer as a learned prior (issue 48, item 3) on abTEM held-out files: the prior's period k
(``every``), weight λ and first epoch chosen on the development half, then run once on the validation half.

    python benchmarks/learned/restorer_prior.py --model RUN_OR_NAME --dev OUT/heldout/dev.h5 \
        --val OUT/heldout/val.h5 --electrons none 1e4 --out OUT/prior.json

Each sample (and counted copy, drawn as ``make-pairs --inputs-from ad`` draws it, so the same data as the pairs
files) is reconstructed with ``phasestem reconstruct``'s defaults (:func:`phasestem.learn.hybrid.ad_recipe`, the
same recipe as the pairs) and the prior attached (:func:`phasestem.learn.hybrid.restorer_prior`, restoring a
plain-AD twin's phase as ``reconstruct --prior`` does; ``--no-twin``: the steered phase); scored on the state the run
returns (never the truth-picked best): E_φ over the scanned field after alignment (``train_restorer.aligned_error``)
of AD + prior's phase (``prior``) and of its restoration (``prior_restored``), the wall seconds of the whole run (the
twin's epochs and the restorer's refreshes included), and every epoch's E_φ (``curve``, scored outside the timed
run; ``final_over_best``: the returned state's E_φ ÷ the best epoch's). The candidate with the lowest mean ``prior``
E_φ over the development half (every dose) is the one run on the validation half; ``--defaults-only`` runs
``reconstruct --prior``'s defaults on both halves (issue 68's acceptance run).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from layouts import write_json  # noqa: E402
from train_restorer import aligned_error, parse_electrons  # noqa: E402

#: (every, weight, start) candidates of the development half (each costs a run per sample and dose: few); the first
#: is ``reconstruct --prior``'s defaults (its decay and patience are the defaults of :mod:`phasestem.recon.prior_stop`)
CANDIDATES = [(2, 0.5, 2), (2, 2.0, 2)]


def samples(path: Path, electrons: list[float | None]):
    """(row name, dataset, truth (H, W), truth sampling) of every sample and dose of ``path``, the counted copies
    drawn with the seeds of :func:`phasestem.learn.ad_pairs.make_ad_pairs` (its default seed 0)."""
    from phasestem.learn.ad_pairs import counted
    from phasestem.learn.pairs import simulation_samples

    for j, p, i, clean, truth in simulation_samples([str(path)], progress=False):
        for k, dose in enumerate(electrons):
            ds = counted(clean, dose, np.random.default_rng((0, j, int(i), k)))
            ts = tuple(float(s) for s in ds.truth.get("sampling", ds.sampling))
            yield f"{Path(p).stem}:{i}|{'none' if dose is None else format(dose, '.0e')}", ds, truth, ts


def run_prior(net, ds, truth: np.ndarray, truth_sampling, every: int, weight: float, start: int,
              device: str = "cpu", curve_every: int = 1, twin: bool = True, holdout_counts: float = 0.0,
              after_min: str | None = None) -> dict:
    """AD + prior of one dataset, scored on the state the run returns (``prior``; ``returned_epoch``, and why,
    where the prior rewound it) and, every ``curve_every`` epochs (0: never), on each epoch's phase (``curve``;
    ``best_epoch_error``, ``final_over_best``: the returned state's E_φ over the best epoch's; the scoring is
    outside ``seconds``). ``twin``: the network restores a plain-AD twin's phase, as ``reconstruct --prior`` does
    (:class:`phasestem.recon.twin.TwinRun`; False: the steered phase itself, as before issue 68).
    ``holdout_counts`` q > 0: counted data split as ``run.holdout_counts`` splits them
    (:func:`phasestem.recon.count_split.split_counts`, seed 0): the run, its twin and its prior see the fitted part,
    the held part's deviance after each epoch (``heldout_curve``) chooses the epoch the run returns."""
    from phasestem.learn.ad_pairs import truth_on_ad_grid
    from phasestem.learn.apply.restorer import restore_channels
    from phasestem.learn.hybrid import ad_recipe_model, restorer_prior
    from phasestem.recon.channels import restorer_channels
    from phasestem.recon.engine import optimize_with_options
    from phasestem.recon.params import run_sections
    from phasestem.recon.twin import TwinRun

    held = None
    if holdout_counts:
        from phasestem.io.counts import counts_decision
        from phasestem.recon.count_split import split_counts

        decision = counts_decision(ds)  # not remembered on ds: its noise-free original shares the metadata's copy
        if decision.counted:
            ds, held = split_counts(ds, holdout_counts, 0, decision, float("inf"))
            decision.remember(ds)
    params, model = ad_recipe_model(ds, None, device)
    shadow = None
    if twin:
        _, plain = ad_recipe_model(ds, None, device)
        shadow = TwinRun(plain, optimize_with_options(plain, ds, params.run.n_epochs, **run_sections(params)))
    prior = restorer_prior(net, ds, every=every, weight=weight, start=start, twin=shadow, after_min=after_min)
    sampling = tuple(float(s) for s in model.sampling)
    curve, gt, seconds, t = {}, None, 0.0, time.perf_counter()
    heldout_curve = {}
    for _ in optimize_with_options(model, ds, params.run.n_epochs, prior=prior, heldout_counts=held,
                                   **run_sections(params)):
        seconds += time.perf_counter() - t
        last = model.loss_history[-1] if model.loss_history else {}
        for key in ("heldout", "prior_target_heldout"):  # the run's held counts, or its prior's twin's at a refresh
            if key in last:
                heldout_curve.setdefault(key, {})[str(int(model.epoch))] = float(last[key])
        if curve_every and (model.epoch % curve_every == 0):  # scored outside the timed run
            ch = restorer_channels(model, ds)
            gt = truth_on_ad_grid(truth, truth_sampling, sampling, ch["phase"].shape) if gt is None else gt
            curve[str(int(model.epoch))] = aligned_error(ch["phase"], gt, ch["field"])
        t = time.perf_counter()
    ch = restorer_channels(model, ds)  # the state the run returns (the prior may have rewound it)
    gt = truth_on_ad_grid(truth, truth_sampling, sampling, ch["phase"].shape) if gt is None else gt
    restored = restore_channels(net, ch)
    final = aligned_error(ch["phase"], gt, ch["field"])
    out = {"prior": final, "prior_restored": aligned_error(restored, gt, ch["field"]), "seconds": seconds,
           "epochs": int(params.run.n_epochs), "returned_epoch": int(model.epoch),
           "returned_why": str(getattr(model, "prior_returned", "") or "")}
    if held is not None:
        out |= {"holdout_counts": holdout_counts, "heldout_curve": heldout_curve, "after_min": after_min,
                "heldout_why": str(getattr(model, "heldout_returned", "") or ""), "target_frozen_at": prior.frozen_at}
    if curve:
        best = min(curve.values())
        out |= {"curve": curve, "best_epoch_error": best, "final_over_best": final / best}
    return out


def study(model: str, dev: Path, val: Path, electrons: list[float | None], device: str = "cpu",
          candidates=CANDIDATES, out: Path | None = None, twin: bool = True, holdout_counts: float = 0.0,
          after_min: str | None = None) -> dict:
    """Every candidate on the development half, the chosen one on the validation half (resumes from ``out``)."""
    from phasestem.learn.apply.restorer import load_restorer

    net, _ = load_restorer(model, device=device)
    result = json.loads(out.read_text()) if out is not None and out.exists() else {"dev": {}, "val": {}}
    result["model"] = str(model)
    for every, weight, start in candidates:
        key = f"every={every} weight={weight:g} start={start}"
        rows = result["dev"].setdefault(key, {})
        for name, ds, truth, ts in samples(dev, electrons) if dev is not None else ():
            if name not in rows:
                rows[name] = run_prior(net, ds, truth, ts, every, weight, start, device, twin=twin,
                                       holdout_counts=holdout_counts, after_min=after_min)
                print(key, name, rows[name], flush=True)
                if out is not None:
                    write_json(out, result)
    means = {k: float(np.mean([r["prior"] for r in rows.values()])) for k, rows in result["dev"].items() if rows}
    chosen = min(means, key=means.get) if means else f"every={candidates[0][0]} weight={candidates[0][1]:g} " \
        f"start={candidates[0][2]}"
    every, weight, start = (float(v.split("=")[1]) for v in chosen.split())
    result["chosen"], result["dev_means"] = chosen, means
    rows = result["val"].setdefault(chosen, {})
    for name, ds, truth, ts in samples(val, electrons):
        if name not in rows:
            rows[name] = run_prior(net, ds, truth, ts, int(every), weight, int(start), device, twin=twin,
                                   holdout_counts=holdout_counts, after_min=after_min)
            print("val", chosen, name, rows[name], flush=True)
            if out is not None:
                write_json(out, result)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="restorer: a run folder, a model file or a shipped name")
    p.add_argument("--dev", type=Path, help="the development half (none: the first candidate runs on the validation "
                   "half alone)")
    p.add_argument("--val", type=Path, required=True)
    p.add_argument("--electrons", nargs="+", type=parse_electrons, default=[None, 1e4])
    p.add_argument("--device", default="cpu")
    p.add_argument("--defaults-only", action="store_true",
                   help="run reconstruct --prior's defaults only (the acceptance run: no choice on the "
                        "development half)")
    p.add_argument("--no-twin", action="store_true",
                   help="restore the steered phase itself (the prior before issue 68's twin), not a plain-AD twin's")
    p.add_argument("--holdout-counts", type=float, default=0.0,
                   help="share of every counted pattern's counts held out of the fit (run.holdout_counts; 0: off)")
    p.add_argument("--after-min", choices=["freeze", "none"], default=None,
                   help="with --holdout-counts: the prior's target once its twin's held-count deviance passes its "
                   "minimum (default: the library's, recon.prior.DEFAULT_AFTER_MIN)")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    write_json(args.out, study(args.model, args.dev, args.val, args.electrons, args.device,
                                   candidates=CANDIDATES[:1] if args.defaults_only else CANDIDATES, out=args.out,
                                   twin=not args.no_twin, holdout_counts=args.holdout_counts,
                                   after_min=args.after_min))
    return 0


if __name__ == "__main__":
    sys.exit(main())
