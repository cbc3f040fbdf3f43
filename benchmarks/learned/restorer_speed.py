"""Quiet timings for issue 48's "≥ 10× sooner": in one process, on a machine doing nothing else, AD's wall seconds
per epoch (``phasestem reconstruct``'s defaults, the recipe of the pairs) and the restorer's seconds on that run's
channels, per held-out sample and dose; ``restorer_report.py --speed`` then prices every AD run at these per-epoch
seconds (the swept settings too: the mixed data term costs more per epoch, so AD's time to its best is, if
anything, under-stated) and the learned route at AD's epochs to its fixed epoch plus the restorer.

    python benchmarks/learned/restorer_speed.py --model MODEL --files OUT/heldout/val.h5 --out OUT/speed.json

Seconds per epoch: the median over epochs 2…``--epochs`` (the first builds caches); the restorer's: the median of 3
after a warm-up. The load average is recorded beside them.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from layouts import write_json  # noqa: E402
from restorer_prior import samples  # noqa: E402
from train_restorer import parse_electrons  # noqa: E402


def time_one(net, ds, epochs: int = 6, device: str = "cpu") -> dict:
    """AD's seconds per epoch and the restorer's seconds on this run's channels (module docstring)."""
    import torch

    from phasestem.learn.apply.restorer import restore_channels
    from phasestem.learn.hybrid import ad_recipe_model
    from phasestem.recon.channels import restorer_channels
    from phasestem.recon.engine import optimize_with_options
    from phasestem.recon.params import run_sections

    params, model = ad_recipe_model(ds, epochs, device)
    per_epoch, t = [], time.perf_counter()
    for _ in optimize_with_options(model, ds, epochs, **run_sections(params)):
        per_epoch.append(time.perf_counter() - t)
        t = time.perf_counter()
    channels = restorer_channels(model, ds)
    restore_channels(net, channels)  # warm-up
    restore = []
    for _ in range(3):
        t = time.perf_counter()
        restore_channels(net, channels)
        restore.append(time.perf_counter() - t)
    return {"seconds_per_epoch": float(np.median(per_epoch[1:])), "restore_seconds": float(np.median(restore)),
            "load_average": os.getloadavg()[0], "threads": torch.get_num_threads()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--files", nargs="+", type=Path, required=True)
    p.add_argument("--electrons", nargs="+", type=parse_electrons, default=[None, 1e4])
    p.add_argument("--epochs", type=int, default=6)
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    from phasestem.learn.apply.restorer import load_restorer

    net, _ = load_restorer(args.model, device=args.device)
    result = {}
    for path in args.files:
        for name, ds, _, _ in samples(path, args.electrons):
            result[name] = time_one(net, ds, args.epochs, args.device)
            print(name, result[name], flush=True)
            write_json(args.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
