"""AD's best on the restorer's held-out halves (issue 48: "AD's best, truth-picked, any setting"): a sweep of AD
settings on every sample and dose, E_φ (``train_restorer.aligned_error``, the restorer's own metric on AD's grid)
every ``--every`` epochs and the optimisation's wall seconds to it (the scoring not counted).

    python benchmarks/learned/ad_best.py --files OUT/heldout/dev.h5 OUT/heldout/val.h5 --out OUT/ad_best.json

Settings (:data:`SETTINGS`, beside the defaults' long run of ``make-pairs --ad-epochs 100``; those ``heldout.py``
sweeps at a 2 Å step, 100 epochs): ``lsq`` at 0.7 of its default object step; on counted data also with the mixed
data term (½ Gaussian + ½ Poisson). The counted copies are drawn as
``make-pairs --inputs-from ad`` draws them (``restorer_prior.samples``), so the data are the pairs files'.
``restorer_report.py --ad-best`` takes the lowest E_φ of any setting and epoch as AD's best.
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
from restorer_prior import samples  # noqa: E402
from train_restorer import aligned_error, parse_electrons  # noqa: E402

#: name → (lsq object step, data term); "mixed" runs on counted data only
SETTINGS = {"lsq0.7": (0.7, "gaussian"), "lsq0.7-mixed": (0.7, "mixed")}


def sweep_one(ds, truth: np.ndarray, truth_sampling, step: float | None, loss: str, epochs: int, every: int,
              device: str = "cpu") -> dict:
    """One AD run of ``phasestem reconstruct``'s defaults with the object step and data term changed: E_φ every
    ``every`` epochs and at the end, with the seconds to it."""
    from phasestem.learn.ad_pairs import truth_on_ad_grid
    from phasestem.learn.hybrid import ad_recipe_model
    from phasestem.recon.channels import restorer_channels
    from phasestem.recon.engine import optimize_with_options
    from phasestem.recon.losses import LossConfig
    from phasestem.recon.params import optimizer_options

    params, model = ad_recipe_model(ds, epochs, device)
    opts = optimizer_options(params)
    if loss == "mixed":
        opts["losses"] = LossConfig(gaussian=0.5, poisson=0.5)
    if step is not None:
        model.set_learning_rates(obj_phase=step)
    curve, seconds, t = {}, 0.0, time.perf_counter()
    gt = None
    for _ in optimize_with_options(model, ds, epochs, **opts):
        seconds += time.perf_counter() - t
        if model.epoch % every == 0 or model.epoch == epochs:
            ch = restorer_channels(model, ds)
            if gt is None:
                gt = truth_on_ad_grid(truth, truth_sampling, tuple(float(s) for s in model.sampling),
                                      ch["phase"].shape)
            curve[int(model.epoch)] = (aligned_error(ch["phase"], gt, ch["field"]), seconds)
        t = time.perf_counter()
    best_epoch = min(curve, key=lambda e: curve[e][0])
    return {"curve": {str(e): v for e, v in curve.items()}, "best": curve[best_epoch][0],
            "best_epoch": best_epoch, "best_seconds": curve[best_epoch][1]}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", nargs="+", type=Path, required=True, help="held-out simulation files (dev.h5 val.h5)")
    p.add_argument("--electrons", nargs="+", type=parse_electrons, default=[None, 1e4])
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--every", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    result = json.loads(args.out.read_text()) if args.out.exists() else {}
    for path in args.files:
        for name, ds, truth, ts in samples(path, args.electrons):
            counted = not name.endswith("|none")
            for setting, (step, loss) in SETTINGS.items():
                key = f"{name}|{setting}"
                if key in result or (loss == "mixed" and not counted):
                    continue
                result[key] = sweep_one(ds, truth, ts, step, loss, args.epochs, args.every, args.device)
                print(key, {k: v for k, v in result[key].items() if k != "curve"}, flush=True)
                write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
