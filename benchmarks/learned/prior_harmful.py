"""The learned prior's convergence rules (issue 68, item 4; :mod:`phasestem.recon.prior_stop`) against stand-in
targets, on scans of the independent NumPy multislice (``benchmarks/independent/numpy_multislice.py``):

    python benchmarks/learned/prior_harmful.py [--dose 1e4|none] [--seeds 3 7] [--decay 0.9] [--old]

Each target is a callable in place of the restorer (``RefreshedPrior``, λ 0.5, every 2 epochs, from epoch 2,
``reconstruct``'s 20 epochs): ``truth`` (the simulated phase: a good target), ``disk`` (the model's phase with an
invented 1 rad disk of 5 px radius), ``neg`` (the negated phase), ``late`` (the truth until epoch 10, then the truth
with the invented disk: a prior that helps, then hurts, as issue 68 measured for ``restore-seed``). Printed per
target: E_φ of the state the run returns (``final``), the lowest E_φ of any state of the run (after each epoch's
data steps and after its pull: ``best``, truth-picked, for the report only), their ratio, and E_φ after the last
epoch run, before the end's rewind (``last``; with ``--old``, runs without decay and stop: what the run returned
before issue 68). The truth scores the states; the engine never sees it (but as the image of the ``truth`` and
``late`` targets).

Geometry: 14 × 14 positions 0.75 Å apart, 32² windows of 0.25 Å pixels, 300 keV, 20 mrad, Δf 60 Å, one slice of
Gaussian atoms (0.15 per Å²), Poisson noise at ``--dose`` e⁻ per pattern.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "independent"))
from numpy_multislice import atom_phase, raster, simulate_patterns  # noqa: E402

from phasestem.dataset import FourDSTEM  # noqa: E402
from phasestem.learn.hybrid import ad_recipe  # noqa: E402
from phasestem.metrics import phase_error  # noqa: E402
from phasestem.physics.optics import angular_sampling_for  # noqa: E402
from phasestem.recon.callbacks import Callback  # noqa: E402
from phasestem.recon.engine import DivergenceError, optimize_with_options  # noqa: E402
from phasestem.recon.params import build_model, run_sections  # noqa: E402
from phasestem.recon.prior import RefreshedPrior  # noqa: E402

WINDOW, SAMPLING, SCAN, STEP, DEFOCUS, ENERGY, SEMIANGLE = 32, 0.25, (14, 14), 0.75, 60.0, 300e3, 20.0


def scan(seed: int, dose: float | None) -> tuple[FourDSTEM, np.ndarray]:
    """(dataset, truth phase over the scanned field, pixel (0, 0) at the first position)."""
    rng = np.random.default_rng(seed)
    pad = WINDOW // 2 + 4
    shape = tuple(int((s - 1) * STEP / SAMPLING) + 2 * pad for s in SCAN)
    phase = atom_phase(shape, SAMPLING, rng, int(0.15 * shape[0] * shape[1] * SAMPLING**2), 0.5)
    pats = simulate_patterns(phase[None], SAMPLING, raster(SCAN, STEP, (pad * SAMPLING,) * 2), WINDOW, ENERGY,
                             SEMIANGLE, DEFOCUS, dose=dose, rng=rng)
    fov = tuple(int((s - 1) * STEP / SAMPLING) + 1 for s in SCAN)
    ds = FourDSTEM(patterns=pats.reshape(*SCAN, WINDOW, WINDOW), energy=ENERGY, scan_step=(STEP, STEP),
                   angular_sampling=angular_sampling_for(ENERGY, SAMPLING, (WINDOW, WINDOW)), semiangle=SEMIANGLE,
                   aberrations={"C10": DEFOCUS})
    return ds, phase[pad:pad + fov[0], pad:pad + fov[1]]


def targets(truth: np.ndarray) -> dict:
    """The stand-in restorers (module docstring)."""
    yy, xx = np.mgrid[:truth.shape[0], :truth.shape[1]]
    disk = (yy - truth.shape[0] / 2) ** 2 + (xx - truth.shape[1] / 2) ** 2 < 5**2

    def with_disk(phase):
        out = np.array(phase, np.float32, copy=True)
        out[:disk.shape[0], :disk.shape[1]][disk[:out.shape[0], :out.shape[1]]] = 1.0
        return out

    return {"truth": lambda m: truth, "disk": lambda m: with_disk(m.phase_in_dataset_frame()),
            "neg": lambda m: -m.phase_in_dataset_frame(),
            "late": lambda m: truth if m.epoch < 10 else with_disk(truth)}


class Scores(Callback):
    """E_φ after each epoch's data steps (on_record, before the prior's pull: put it before the prior) and after
    the epoch (on_epoch_end)."""

    def __init__(self, truth):
        self.truth, self.states = truth, []

    def error(self, model) -> float:
        return phase_error(model.phase_in_dataset_frame(self.truth.shape), self.truth, align=False, crop=2)

    def on_record(self, loop):
        self.states.append(self.error(loop.model))

    def on_epoch_end(self, loop):
        self.states.append(self.error(loop.model))


def run(ds, truth, target, epochs: int = 20, **schedule) -> dict:
    """One run of ``reconstruct``'s recipe with the target as prior (None: plain AD)."""
    params = ad_recipe(epochs)
    torch.manual_seed(0)
    model = build_model(params, ds)
    scores = Scores(truth)
    callbacks = [scores] + ([] if target is None else
                            [RefreshedPrior(target, every=2, weight=0.5, start=2, **schedule)])
    try:
        for _ in optimize_with_options(model, ds, epochs, callbacks=callbacks, **run_sections(params)):
            pass
    except DivergenceError as err:
        print(f"  diverged: {str(err)[:100]}")
    final = scores.error(model)
    return {"final": final, "epoch": model.epoch, "best": min(scores.states), "last": scores.states[-1],
            "ratio": final / min(scores.states), "returned": getattr(model, "prior_returned", None)}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dose", default="1e4", help="e⁻ per pattern, or none (noise-free)")
    p.add_argument("--seeds", type=int, nargs="+", default=[3, 7])
    p.add_argument("--decay", type=float, default=None, help="the prior's decay (default: the engine's)")
    p.add_argument("--old", action="store_true", help="also runs without decay and stop")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    dose = None if args.dose == "none" else float(args.dose)
    schedule = {} if args.decay is None else {"decay": args.decay}
    for seed in args.seeds:
        ds, truth = scan(seed, dose)
        rows = {"plain AD": run(ds, truth, None)}
        for name, fn in targets(truth).items():
            rows[name] = run(ds, truth, fn, **schedule)
            if args.old:
                rows[f"{name} (no decay, no stop)"] = run(ds, truth, fn, decay=1.0, patience=0)
        for name, r in rows.items():
            print(f"seed {seed} dose {args.dose} {name:26s} final {r['final']:.4f} (epoch {r['epoch']:2d}) best "
                  f"{r['best']:.4f} ratio {r['ratio']:.3f} last-as-before {r['last']:.4f}")


if __name__ == "__main__":
    main()
