"""Is a run's σ right on its own data? A parametric bootstrap of a finished run: ``phasestem calibrate-sigma``
(issue 65; docs/benchmarks.md).

The run's fitted model (object, probe, positions, tilt, thickness from ``results.h5``) predicts every pattern; K
realisations are drawn from it with the run's noise (Poisson counts at its counts per pattern, one seed each; for data
that are not counts, Gaussian noise of ``run.noise_sigma``) and each is reconstructed by
:func:`phasestem.recon.run.run_reconstruction` with the run's own parameter file (start, solver, losses, constraints,
stopping; a direct-method start ``init_<method>.npy`` computed again from each realisation) in a temporary folder
beside the report, removed afterwards. Over the run's constrained pixels, the spread of the summed phase (each
realisation's mean removed; standard deviation with K − 1 degrees of freedom, |φ_a − φ_b| / √2 for K = 2) against the
σ the run reported (results.h5, else the fitted model's Fisher σ) gives κ = median(spread / σ). The spread includes
the noise of all the run estimates, where it stops: the object and, where the run refines them, the probe and the
positions (``probe_positions="fixed"``: the object's share alone). It leaves out the model's own error (the draws
come from the fitted model) and the bias; a learned prior (``--prior``) is not repeated (not in the parameter file).
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
import math
import os
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..base.errors import ConfigError, InputFileError

if TYPE_CHECKING:
    from ..dataset import FourDSTEM
    from ..io.counts import CountsDecision
    from .model import Ptychography
    from .params import ReconstructParams

#: κ above this: σ is too small; below :data:`TOO_LARGE`: too large (the benchmark's band, docs/benchmarks.md)
TOO_SMALL, TOO_LARGE = 1.25, 0.8
#: the report's name in the run folder when no --out-file is given
REPORT_NAME = "calibrate_sigma.json"
#: the parameter files a run folder may hold, the first found is read (config.yaml: what the run itself used)
PARAMS_FILES = ("config.yaml", "params.yaml")
#: a start image written by ``--auto`` / ``--init``, computed again from each realisation
DIRECT_START = re.compile(r"^init_(dpc|parallax|ssb)\.npy$")
#: patterns simulated per forward pass of the fitted model
SIMULATE_BATCH = 256


@dataclass
class FinishedRun:
    """A finished reconstruction as the bootstrap needs it: ``params`` as read from ``params_file``, ``dataset`` as
    the run built it, ``model`` at the state ``results`` holds (its ``epoch`` the run's last), ``counted`` whether
    the patterns are counts, ``counts`` per pattern (electrons; for Gaussian noise the data's units), ``mean_total``
    the patterns' mean total (data units), ``noise_sigma`` (data units per detector pixel; None: Poisson)."""

    results: Path
    params_file: str
    params: ReconstructParams
    dataset: FourDSTEM
    model: Ptychography
    counted: CountsDecision
    counts: float
    mean_total: float
    noise_sigma: float | None
    sigma: object = None  # the σ the run reported (results.h5 uncertainty/: sigma_sum, constrained), None: none


def locate_run(path: str | Path) -> tuple[Path, Path | None]:
    """(results.h5, the parameter file or None when only results.h5's ``config`` attribute records it) of a run
    folder or of its results.h5; one line naming what is missing otherwise."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"{path}: not found (expected a phasestem reconstruct run folder or its results.h5)")
    folder, results = (path, path / "results.h5") if path.is_dir() else (path.parent, path)
    if not results.is_file():
        raise InputFileError(f"{folder}: no results.h5 (expected the folder of a finished phasestem reconstruct run)")
    return results, next((folder / n for n in PARAMS_FILES if (folder / n).is_file()), None)


def _load_params(results: Path, params_file: Path | None, recorded: str | None):
    """The run's validated parameters: its parameter file, else the configuration results.h5 records."""
    from ..base.configfile import loads_yaml
    from .params import load_params, parse_params

    if params_file is not None:
        return load_params(params_file), str(params_file)
    source = f"{results}:config"
    if not recorded:
        raise InputFileError(f"{results.parent}: no {' or '.join(PARAMS_FILES)} beside {results.name}, and it records "
                             "no configuration: the run's settings are unknown")
    return parse_params(loads_yaml(recorded, source), source, results.parent), source


def mean_total(dataset) -> float:
    """The patterns' mean total count (data units), read one scan row at a time."""
    rows = (np.asarray(dataset.patterns[r], dtype=np.float64).sum() for r in range(dataset.scan_shape[0]))
    return float(sum(rows) / dataset.n_patterns)


def load_run(path: str | Path, device: str | None = None) -> FinishedRun:
    """The finished run at ``path`` (its folder or results.h5): parameters, dataset and the fitted model on
    ``device`` (default the run's). Refused in one line: no results.h5, no parameter file, no noise model (data that
    are not counts and no ``run.noise_sigma``)."""
    from ..io.counts import counts_decision, counts_per_pattern
    from .distributed import rank_device
    from .params import build_dataset, build_model
    from .results import keep_recorded_upsampling, load_fitted_state, load_results

    results_path, params_file = locate_run(path)
    results = load_results(results_path)
    params, source = _load_params(results_path, params_file, results["attrs"].get("config"))
    if device:
        params.run.device = device
    keep_recorded_upsampling(params, results)
    dataset = build_dataset(params, warn=False)
    counted = counts_decision(dataset).remember(dataset)
    noise_sigma = params.run.noise_sigma
    if not counted.counted and noise_sigma is None:
        raise ConfigError(f"{source}: the patterns are not counts ({counted.reason}) and run.noise_sigma is not "
                          "given: the run has no noise model, so no σ to calibrate (data.counts: true if they are "
                          "counts, else run.noise_sigma)")
    model = build_model(params, dataset).to(rank_device(params.run.device))
    load_fitted_state(model, results, results_path)
    total = mean_total(dataset)
    counts = counts_per_pattern(dataset, total) if counted.counted else total
    unc = results.get("uncertainty")
    sigma = None if not unc else SimpleNamespace(sigma_sum=np.asarray(unc["phase_sum_sigma"], np.float64),
                                                 constrained=np.asarray(unc["constrained"]) > 0)
    return FinishedRun(results_path, source, params, dataset, model, counted, counts, total, noise_sigma, sigma)


def predicted_patterns(model) -> np.ndarray:
    """The fitted model's patterns (N, H, W) float32, fftshift-ed like the data, normalised as the engine fits them
    (the data over their mean total count)."""
    n = model.positions.shape[0]
    parts = [model.simulate(torch.arange(a, min(a + SIMULATE_BATCH, n), device=model.device)).float().cpu()
             for a in range(0, n, SIMULATE_BATCH)]
    return torch.cat(parts).clamp_min(0).numpy()


def realisation(run: FinishedRun, predicted: np.ndarray, seed: int):
    """One noise realisation of ``predicted`` (:func:`predicted_patterns`) as a dataset of the run's geometry:
    Poisson counts at the run's counts per pattern in the data's units, or Gaussian noise of run.noise_sigma."""
    from ..io.counts import CountsDecision
    from .sigma_bootstrap import noise_realisation

    rng = np.random.default_rng(seed)
    ds = run.dataset
    out = np.empty(predicted.shape, dtype=np.float32)
    for a in range(0, len(predicted), SIMULATE_BATCH):  # in blocks: no float64 copy of the whole scan
        out[a:a + SIMULATE_BATCH] = noise_realisation(predicted[a:a + SIMULATE_BATCH], run.counts, run.mean_total,
                                                      run.noise_sigma, rng)
    sim = ds._replace(patterns=out.reshape(*ds.scan_shape, *ds.pattern_shape))
    reason = (f"Poisson draws of the fitted model, seed {seed} (phasestem calibrate-sigma)" if run.noise_sigma is None
              else run.counted.reason)
    CountsDecision(run.noise_sigma is None, reason).remember(sim)
    return sim


def realisation_params(run: FinishedRun, folder: Path, epochs: int):
    """The run's parameters for one realisation: its out_dir ``folder``, ``epochs`` epochs, one process, and none of
    what only records (checkpoints, figures, the optics check, the per-epoch report, σ, the progress bar)."""
    params = run.params.model_copy(deep=True)
    r = params.run
    r.out_dir, r.n_epochs, r.n_processes = folder, int(epochs), 1
    r.progress, r.check_optics, r.checkpoint_every, r.figures_every, r.ptyrad_loss = False, False, 0, 0, False
    r.uncertainty = "off"
    params.data.ground_truth_key = None
    return params


def direct_start(params, dataset, folder: Path):
    """(params, start image or None): a direct-method start of the run (``init_<method>.npy``) computed again from
    ``dataset`` into ``folder``; any other start is the run's own."""
    start = params.model.initial_phase
    match = None if start is None else DIRECT_START.match(Path(start.file).name)
    if match is None:
        return params, None
    from .auto import direct_start as compute

    return compute(params, match.group(1), folder, dataset)


def start_description(params) -> str:
    """How every realisation starts, in words."""
    start = params.model.initial_phase
    match = None if start is None else DIRECT_START.match(Path(start.file).name)
    if start is None or match is None:
        return "the run's start" + (" (no initial phase)" if start is None else f" image {start.file}, for every one")
    return f"{match.group(1)} start computed again from each realisation"


def _start_hook(fitted, fixed: bool, seen: dict):
    """``run_reconstruction``'s callback hook: notes the realisation's start probe and positions in ``seen`` and, with
    ``fixed``, holds both at the fitted model's values."""
    from .callbacks import Callback

    def hook(model, dataset, twin=None):  # (no learned prior here: the twin is not used)
        if fixed:
            with torch.no_grad():
                model.probe.copy_(fitted.probe.to(model.device))
                model.positions.copy_(fitted.positions.to(model.device))
            model.set_learning_rates(probe=0.0, positions=0.0)
        seen["probe"] = model.get_probe().detach().clone()
        seen["positions"] = model.positions.detach().clone()
        return Callback()

    return hook


@contextlib.contextmanager
def _warnings_only():
    """The ``phasestem.recon`` log passes only warnings and errors during the block (a realisation's run sets its
    level to INFO for its own log file, so a filter, not the level)."""
    logger = logging.getLogger("phasestem.recon")
    logger.addFilter(keep := lambda record: record.levelno >= logging.WARNING)
    try:
        yield
    finally:
        logger.removeFilter(keep)


def summed_phase(model) -> np.ndarray:
    """The phase summed over slices, object modes weighted by occupancy (Ny, Nx) rad, object frame: results.h5's
    ``object/phase_sum``."""
    w = model.obj_weights.detach().double().cpu()
    return (model.obj_phase.detach().double().cpu().sum(1) * (w / w.sum())[:, None, None]).sum(0).numpy()


def reconstruct(run: FinishedRun, data, folder: Path, epochs: int, fixed: bool) -> tuple[np.ndarray, dict]:
    """Reconstruct one realisation ``data`` as the run did (``fixed``: probe and positions held at the fitted values)
    in ``folder``; returns (summed phase (Ny, Nx) rad, object frame; which of probe and positions moved)."""
    from .run import run_reconstruction

    params, start = direct_start(realisation_params(run, folder, epochs), data, folder)
    seen: dict = {}
    with _warnings_only(), contextlib.redirect_stdout(io.StringIO()):  # K runs' lines would bury the progress
        model = run_reconstruction(params, dataset=data, start_phase=start,
                                   callback_hooks=(_start_hook(run.model, fixed, seen),))
    phase = summed_phase(model)
    if phase.shape != run.model.obj_phase.shape[-2:]:
        raise ConfigError(f"{run.params_file}: a realisation's object is {phase.shape}, the run's "
                          f"{tuple(run.model.obj_phase.shape[-2:])}: the parameter file does not rebuild the run")
    moved = {"probe": not torch.equal(model.get_probe().detach(), seen["probe"]),
             "positions": bool((model.positions.detach() - seen["positions"]).abs().max() > 0)}
    return phase, moved


def _percentiles(values: np.ndarray) -> dict:
    p10, p50, p90 = np.percentile(values, [10, 50, 90])
    return {"median": float(p50), "p10": float(p10), "p90": float(p90)}


def spread_statistics(phases: np.ndarray, sigma: np.ndarray, constrained: np.ndarray) -> dict:
    """The spread of ``phases`` (K, Ny, Nx) rad against ``sigma`` (Ny, Nx) rad over the ``constrained`` (Ny, Nx)
    pixels: each realisation's mean over them removed, spread = standard deviation over the realisations (K − 1
    degrees of freedom: |φ_a − φ_b| / √2 for K = 2). Returns κ (median spread / σ), the spread / σ's median, p10
    and p90, the share of all pairs' pixels with |φ_a − φ_b| / (√2 σ) ≤ 2 (and the lowest pair's), the spread itself
    (rad) and σ's median."""
    p = phases[:, constrained].astype(np.float64)
    p -= p.mean(1, keepdims=True)
    s = sigma[constrained].astype(np.float64)
    spread = p.std(0, ddof=1)
    ratio = _percentiles(spread / s)
    pairs = [np.abs(p[a] - p[b]) / (math.sqrt(2.0) * s) <= 2.0 for a in range(len(p)) for b in range(a + 1, len(p))]
    return {"kappa": ratio["median"], "spread_over_sigma": ratio,
            "pairs_within_2sigma": float(np.mean(pairs)), "pairs_within_2sigma_lowest": float(min(map(np.mean, pairs))),
            "spread_rad": _percentiles(spread), "sigma_median_rad": float(np.median(s)),
            "constrained_pixels": int(constrained.sum())}


def verdict(kappa: float) -> str:
    """What κ means for σ, in one clause."""
    if kappa > TOO_SMALL:
        return f"σ is too small on these data: multiply it by κ = {kappa:.3g} before trusting the significance view"
    if kappa < TOO_LARGE:
        return f"σ is too large on these data: multiply it by κ = {kappa:.3g} (the significance view misses features)"
    return f"σ agrees with the spread ({TOO_LARGE} ≤ κ ≤ {TOO_SMALL})"


def calibrate_sigma(path: str | Path, realisations: int = 4, epochs: int | None = None,
                    out_file: str | Path | None = None, probe_positions: str = "refine", seed: int = 0,
                    device: str | None = None, say: Callable[[str], None] = print) -> dict:
    """The bootstrap of the module docstring for the run at ``path`` (its folder or results.h5): ``realisations``
    (K ≥ 2) reconstructions of ``epochs`` epochs each (default the run's ``run.n_epochs``), realisation k drawn with
    seed ``seed + k``; ``probe_positions`` "refine" (as the run did) or "fixed" (held at the fitted values). Writes
    the report (JSON, atomically) to ``out_file`` (default RUN_FOLDER/calibrate_sigma.json), ``say`` gets one
    progress line per realisation; returns the report."""
    import shutil

    from ..base.lock import hold_output
    from ..base.safety import refuse_output_over_inputs, remove_stale_temporaries
    from .uncertainty import phase_uncertainty

    if realisations < 2:
        raise ConfigError(f"--realisations {realisations}: at least 2 are needed for a spread")
    if epochs is not None and epochs < 1:
        raise ConfigError(f"--epochs {epochs}: at least 1")
    if probe_positions not in ("refine", "fixed"):
        raise ConfigError(f"--probe-positions {probe_positions!r}: expected refine or fixed")
    if out_file is not None and Path(out_file).suffix.lower() != ".json":
        raise ConfigError(f"--out-file {out_file}: the report is JSON; give a name ending in .json")
    run = load_run(path, device)
    out = Path(out_file) if out_file is not None else run.results.parent / REPORT_NAME
    refuse_output_over_inputs(out, [run.results, run.params.data.file], field="--out-file")
    epochs = int(epochs or run.params.run.n_epochs)
    u = run.sigma or phase_uncertainty(run.model, run.counts, run.noise_sigma)  # the σ the run reported, or Fisher's
    if not u.constrained.any():
        raise ConfigError(f"{run.results}: the scan constrains no pixel of the object (σ is inf everywhere)")
    predicted = predicted_patterns(run.model)
    work_name = f"{out.stem}_realisations"
    phases, moved, seconds = [], {"probe": False, "positions": False}, []
    with hold_output(out, "phasestem calibrate-sigma", file=True):
        remove_stale_temporaries(out.parent, [work_name])  # left by a killed calibration of this report
        work = out.parent / f"{work_name}.{os.getpid()}.tmp"
        try:
            for k in range(realisations):
                t0 = time.perf_counter()
                data = realisation(run, predicted, seed + k)
                phase, moved_k = reconstruct(run, data, work / f"r{k}", epochs, probe_positions == "fixed")
                phases.append(phase)
                moved = {name: moved[name] or moved_k[name] for name in moved}
                seconds.append(time.perf_counter() - t0)
                say(f"realisation {k + 1}/{realisations} (seed {seed + k}): {epochs} epochs in {seconds[-1]:.1f} s; "
                    f"moved: {moved_words(moved_k)}")
        finally:
            shutil.rmtree(work, ignore_errors=True)
        report = _report(run, u, np.stack(phases), moved, seconds, epochs, seed, probe_positions)
        _write_json(out, report)
    report["report"] = str(out)
    return report


def moved_words(moved: dict) -> str:
    """The names of what moved in a realisation (probe, positions), in words."""
    return ", ".join(name for name, m in moved.items() if m) or "neither probe nor positions"


def _report(run: FinishedRun, u, phases: np.ndarray, moved: dict, seconds: list, epochs: int, seed: int,
            probe_positions: str) -> dict:
    """The JSON report: the settings of the bootstrap, :func:`spread_statistics`, what moved, the cost."""
    stats = spread_statistics(phases, u.sigma_sum, u.constrained)
    run_phase = summed_phase(run.model)[u.constrained]
    centred = phases[:, u.constrained] - phases[:, u.constrained].mean(1, keepdims=True)
    from_run = centred - (run_phase - run_phase.mean())
    noise = (f"Poisson, {run.counts:.4g} counts per pattern" if run.noise_sigma is None else
             f"Gaussian, σ {run.noise_sigma:.4g} per detector pixel")
    return {
        "format": "phasestem-calibrate-sigma", "results": str(run.results), "params": run.params_file,
        "run_epoch": run.model.epoch, "epochs": epochs, "realisations": len(phases),
        "seeds": [seed + k for k in range(len(phases))], "noise": noise, "counts_per_pattern": run.counts,
        "sigma": ("the run's own (results.h5 uncertainty/phase_sum_sigma)" if run.sigma is not None else
                  "phase_uncertainty of the fitted model (the run wrote none)"),
        "start": start_description(run.params), "probe_positions": probe_positions,
        "refined": {"probe": moved["probe"], "positions": moved["positions"]},
        **stats, "verdict": verdict(stats["kappa"]),
        "rms_from_run_rad": [float(np.sqrt(np.mean(d**2))) for d in from_run],
        "seconds_per_realisation": [round(s, 3) for s in seconds],
        "seconds_per_realisation_mean": float(np.mean(seconds)),
    }


def _write_json(out: Path, report: dict) -> None:
    from ..base.safety import atomic_file

    with atomic_file(out, field="--out-file") as tmp:
        tmp.write_text(json.dumps(report, indent=1, ensure_ascii=False, allow_nan=False) + "\n")

