"""AD with the restorer as a learned prior (issue 48, item 3) on abTEM held-out files: the prior's period k
(``every``), weight λ and first epoch chosen on the development half, then run once on the validation half.

    python benchmarks/learned/restorer_prior.py --model RUN_OR_NAME --dev OUT/heldout/dev.h5 \
        --val OUT/heldout/val.h5 --electrons none 1e4 --out OUT/prior.json

Each sample (and counted copy, drawn as ``make-pairs --inputs-from ad`` draws it, so the same data as the pairs
files) is reconstructed with ``phasestem reconstruct``'s defaults (:func:`phasestem.learn.hybrid.ad_recipe`, the
same recipe as the pairs) and the prior attached (:func:`phasestem.learn.hybrid.restorer_prior`); scored at the
run's last epoch (a fixed epoch, never the truth-picked best): E_φ over the scanned field after alignment
(``train_restorer.aligned_error``) of AD + prior's phase (``prior``) and of its restoration (``prior_restored``),
and the wall seconds of the whole run (the restorer's refreshes included). The candidate with the lowest mean
``prior`` E_φ over the development half (every dose) is the one run on the validation half.
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

#: (every, weight, start) candidates of the development half (each costs a run per sample and dose: few)
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
              device: str = "cpu") -> dict:
    """AD + prior of one dataset, scored at its last epoch (module docstring)."""
    from phasestem.learn.ad_pairs import truth_on_ad_grid
    from phasestem.learn.hybrid import ad_recipe_model, restorer_prior
    from phasestem.learn.restore import restore_channels
    from phasestem.recon.channels import restorer_channels
    from phasestem.recon.engine import optimize_with_options
    from phasestem.recon.params import optimizer_options

    params, model = ad_recipe_model(ds, None, device)
    prior = restorer_prior(net, ds, every=every, weight=weight, start=start)
    t = time.perf_counter()
    for _ in optimize_with_options(model, ds, params.run.n_epochs, prior=prior, **optimizer_options(params)):
        pass
    seconds = time.perf_counter() - t
    ch = restorer_channels(model, ds)
    gt = truth_on_ad_grid(truth, truth_sampling, tuple(float(s) for s in model.sampling), ch["phase"].shape)
    restored = restore_channels(net, ch)
    return {"prior": aligned_error(ch["phase"], gt, ch["field"]),
            "prior_restored": aligned_error(restored, gt, ch["field"]), "seconds": seconds,
            "epochs": int(params.run.n_epochs)}


def study(model: str, dev: Path, val: Path, electrons: list[float | None], device: str = "cpu",
          candidates=CANDIDATES, out: Path | None = None) -> dict:
    """Every candidate on the development half, the chosen one on the validation half (resumes from ``out``)."""
    from phasestem.learn.restore import load_restorer

    net, _ = load_restorer(model, device=device)
    result = json.loads(out.read_text()) if out is not None and out.exists() else {"dev": {}, "val": {}}
    result["model"] = str(model)
    for every, weight, start in candidates:
        key = f"every={every} weight={weight:g} start={start}"
        rows = result["dev"].setdefault(key, {})
        for name, ds, truth, ts in samples(dev, electrons):
            if name not in rows:
                rows[name] = run_prior(net, ds, truth, ts, every, weight, start, device)
                print(key, name, rows[name], flush=True)
                if out is not None:
                    write_json(out, result)
    means = {k: float(np.mean([r["prior"] for r in rows.values()])) for k, rows in result["dev"].items()}
    chosen = min(means, key=means.get)
    every, weight, start = (float(v.split("=")[1]) for v in chosen.split())
    result["chosen"], result["dev_means"] = chosen, means
    rows = result["val"].setdefault(chosen, {})
    for name, ds, truth, ts in samples(val, electrons):
        if name not in rows:
            rows[name] = run_prior(net, ds, truth, ts, int(every), weight, int(start), device)
            print("val", chosen, name, rows[name], flush=True)
            if out is not None:
                write_json(out, result)
    return result


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True, help="restorer: a run folder, a model file or a shipped name")
    p.add_argument("--dev", type=Path, required=True)
    p.add_argument("--val", type=Path, required=True)
    p.add_argument("--electrons", nargs="+", type=parse_electrons, default=[None, 1e4])
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", type=Path, required=True)
    args = p.parse_args(argv)
    write_json(args.out, study(args.model, args.dev, args.val, args.electrons, args.device, out=args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
