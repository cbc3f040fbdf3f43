"""AD's best on the restorer's held-out halves (issue 48: "AD's best, truth-picked, any setting"): a sweep of AD
settings on every sample and dose, E_φ (``train_restorer.aligned_error``, the restorer's own metric on AD's grid)
every ``--every`` epochs and the optimisation's wall seconds to it (the scoring not counted).

    python benchmarks/learned/ad_best.py --files OUT/heldout/dev.h5 OUT/heldout/val.h5 --out OUT/ad_best.json

Settings (:data:`SETTINGS`, beside the defaults' long run of ``make-pairs --ad-epochs 100``; those ``heldout.py``
sweeps at a 2 Å step, 100 epochs): ``lsq`` at 0.7 of its default object step; on counted data also with the mixed
data term (½ Gaussian + ½ Poisson). The counted copies are drawn as
``make-pairs --inputs-from ad`` draws them (``restorer_prior.samples``), so the data are the pairs files'.
``restorer_report.py --ad-best`` takes the lowest E_φ of any setting and epoch as AD's best. ``default`` is the
recipe unchanged (its 20th epoch is the table's "AD, defaults" row).

``--upsampling`` sets the recipe's ``model.upsampling`` (issue 69: ``auto`` reconstructs the seed geometry on
0.156 Å pixels, ``1`` on the detector's 0.3125 Å). On a finer grid E_φ is also scored on the detector's grid
(``curve_coarse``, ``best_coarse``: the phase sampled band-limited onto pixels u × larger, the truth likewise), so
the two grids compare at one resolution. ``--shard I/N`` runs every N-th run from the I-th of those not yet in
``--out`` (parallel processes on one machine, each from a copy of one file), ``--merge`` joins the shards' files.

    python benchmarks/learned/ad_best.py --files dev.h5 val.h5 --upsampling 1 --shard 0/4 --out u1_0.json
    python benchmarks/learned/ad_best.py --merge u1_*.json --out ad_best_u1.json
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

#: name → (lsq object step (None: the recipe's), data term); "mixed" runs on counted data only
SETTINGS = {"default": (None, "gaussian"), "lsq0.7": (0.7, "gaussian"), "lsq0.7-mixed": (0.7, "mixed")}


def coarse_score(phase: np.ndarray, sampling: tuple[float, float], factor: int, ds, truth: np.ndarray,
                 truth_sampling) -> float:
    """E_φ (aligned) of ``phase`` on pixels ``sampling`` (Å) once sampled band-limited onto pixels ``factor`` ×
    larger, against the truth on that grid, over that grid's scanned field."""
    from phasestem.learn.ad_pairs import truth_on_ad_grid
    from phasestem.physics.resample import BAND_LIMITED, sample_on_grid
    from phasestem.recon.channels import field_mask

    coarse = tuple(s * factor for s in sampling)
    shape = tuple(max(1, round(n / factor)) for n in phase.shape)
    moved = np.asarray(sample_on_grid(np.asarray(phase, np.float32), sampling, coarse, shape, order=BAND_LIMITED),
                       np.float32)
    field = field_mask(np.asarray(ds.positions_angstrom()), coarse, shape)
    return aligned_error(moved, truth_on_ad_grid(truth, truth_sampling, coarse, shape), field)


def sweep_one(ds, truth: np.ndarray, truth_sampling, step: float | None, loss: str, epochs: int, every: int,
              device: str = "cpu", upsampling: int | str = "auto") -> dict:
    """One AD run of ``phasestem reconstruct``'s defaults with the object step, data term and
    ``model.upsampling`` changed: E_φ every ``every`` epochs and at the end, with the seconds to it (and on the
    detector's grid where the run's grid is finer)."""
    from phasestem.learn.ad_pairs import truth_on_ad_grid
    from phasestem.learn.hybrid import ad_recipe_model
    from phasestem.recon.channels import restorer_channels
    from phasestem.recon.engine import optimize_with_options
    from phasestem.recon.params import run_sections
    from phasestem.recon.settings.losses import LossConfig

    params, model = ad_recipe_model(ds, epochs, device, {"upsampling": upsampling})
    factor = int(round(max(ds.sampling) / max(float(s) for s in model.sampling)))
    opts = run_sections(params)
    if loss == "mixed":
        opts["losses"] = LossConfig(gaussian=0.5, poisson=0.5)
    if step is not None:
        model.set_learning_rates(obj_phase=step)
    curve, coarse, seconds, t = {}, {}, 0.0, time.perf_counter()
    gt = None
    sampling = tuple(float(s) for s in model.sampling)
    for _ in optimize_with_options(model, ds, epochs, **opts):
        seconds += time.perf_counter() - t
        if model.epoch % every == 0 or model.epoch == epochs:
            ch = restorer_channels(model, ds)
            if gt is None:
                gt = truth_on_ad_grid(truth, truth_sampling, sampling, ch["phase"].shape)
            curve[int(model.epoch)] = (aligned_error(ch["phase"], gt, ch["field"]), seconds)
            if factor > 1:
                coarse[int(model.epoch)] = coarse_score(ch["phase"], sampling, factor, ds, truth, truth_sampling)
        t = time.perf_counter()
    best_epoch = min(curve, key=lambda e: curve[e][0])
    out = {"curve": {str(e): v for e, v in curve.items()}, "best": curve[best_epoch][0],
           "best_epoch": best_epoch, "best_seconds": curve[best_epoch][1], "upsampling": factor,
           "pixel": max(sampling), "device": str(device)}
    if coarse:
        e = min(coarse, key=coarse.get)
        out |= {"curve_coarse": {str(k): v for k, v in coarse.items()}, "best_coarse": coarse[e],
                "best_coarse_epoch": e}
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--files", nargs="+", type=Path, help="held-out simulation files (dev.h5 val.h5)")
    p.add_argument("--electrons", nargs="+", type=parse_electrons, default=[None, 1e4])
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--every", type=int, default=5)
    p.add_argument("--device", default="cpu")
    p.add_argument("--upsampling", default="auto", help="the recipe's model.upsampling: auto (default) or 1 … 4")
    p.add_argument("--settings", nargs="+", choices=list(SETTINGS), default=list(SETTINGS))
    p.add_argument("--shard", default="0/1", help="I/N: every N-th run from the I-th")
    p.add_argument("--merge", nargs="+", type=Path, help="join these shards' files into --out, nothing run")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    result = json.loads(args.out.read_text()) if args.out.exists() else {}
    if args.merge:
        for f in args.merge:
            result |= json.loads(f.read_text())
        write_json(args.out, dict(sorted(result.items())))
        print(f"{args.out}: {len(result)} runs")
        return 0
    if not args.files:
        p.error("--files (or --merge) is required")
    upsampling = args.upsampling if args.upsampling == "auto" else int(args.upsampling)
    index, count = (int(v) for v in args.shard.split("/"))
    n = -1
    for path in args.files:
        for name, ds, truth, ts in samples(path, args.electrons):
            counted = not name.endswith("|none")
            for setting in args.settings:
                step, loss = SETTINGS[setting]
                key = f"{name}|{setting}"
                if loss == "mixed" and not counted or key in result:
                    continue
                n += 1  # shards split the runs not yet in --out (each shard starts from the same file)
                if n % count != index:
                    continue
                result[key] = sweep_one(ds, truth, ts, step, loss, args.epochs, args.every, args.device, upsampling)
                print(key, {k: v for k, v in result[key].items() if not k.startswith("curve")}, flush=True)
                write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
