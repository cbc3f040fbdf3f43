"""Where the learned route meets the reconstruction: the one module of :mod:`phasestem.learn` that imports
:mod:`phasestem.recon` (the rest of learn never does; ``tests/test_architecture.py`` checks it).

:func:`ad_phase`: a fast AD ptychography of a scan on a truth grid, the ``ad`` input source of
``phasestem make-pairs`` (:mod:`phasestem.learn.pair_sources`).

:func:`restorer_prior`: a trained restorer as a learned prior inside AD (a
:class:`phasestem.recon.prior.RefreshedPrior` whose callable runs the network on the model's channels).

:func:`prior_hook`: ``phasestem reconstruct --prior MODEL``'s hook (the model read now, its geometry checked
against the data once the reconstruction's model is built, then :func:`restorer_prior` attached).
:func:`restore_results`: ``phasestem restore``: a restorer applied to a finished run's ``results.h5``;
:func:`run_files`: the files of that run, which ``restore`` never writes over; :func:`guard_run`: that
run's model and patterns rebuilt for ``restore``'s data guard (:mod:`phasestem.learn.data_guard`).

:func:`ad_recipe_snapshots`: AD with the recorded recipe of ``make-pairs --inputs-from ad``
(:func:`ad_recipe`: ``phasestem reconstruct``'s parameter-file defaults, probe refined), its phase, amplitude,
illumination and field on AD's own grid after chosen epochs (:mod:`phasestem.learn.ad_pairs`).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from ..physics.resample import BAND_LIMITED, resample_image
from ..recon import Ptychography

__all__ = ["ad_phase", "ad_recipe", "ad_recipe_model", "ad_recipe_snapshots", "restorer_prior", "prior_hook",
           "restore_results", "run_files", "guard_run", "fitted_guard_run"]


def ad_phase(dataset, truth_shape: tuple[int, int], truth_sampling: tuple[float, float], epochs: int = 4,
             batch_size: int = 32, device: str = "cpu") -> np.ndarray:
    """A fast AD reconstruction of ``dataset`` (``epochs`` of the ``lsq`` solver, flat start, 1 slice, nominal
    probe fixed) on the truth grid (pixel (0, 0) at 0 Å, ``truth_shape`` pixels of ``truth_sampling`` Å; 0
    outside the reconstructed field)."""
    torch.manual_seed(0)
    model = Ptychography.from_dataset(dataset, learning_rates={"probe": 0.0}, on_band_limit="ignore").to(device)
    for _ in model.LSQ_optimize(epochs, dataset, batch_size=batch_size, seed=0, progress=False):
        pass
    ph = torch.as_tensor(model.phase_in_dataset_frame())
    ph = resample_image(ph, tuple(model.sampling), tuple(truth_sampling), order=BAND_LIMITED).numpy()
    out = np.zeros(truth_shape, np.float32)
    h, w = min(truth_shape[0], ph.shape[0]), min(truth_shape[1], ph.shape[1])
    out[:h, :w] = ph[:h, :w]
    return out


def ad_recipe(n_epochs: int | None = None, device: str = "cpu", model: dict | None = None):
    """The recorded AD recipe: ``phasestem reconstruct``'s parameter-file defaults (``lsq``, ``lr_decay`` auto, the
    nominal probe refined, batch 32, one slice, flat start, ``model.upsampling`` auto) with ``n_epochs`` (None: the
    default), no progress bar and the given ``model`` settings, if any. Returns the validated
    :class:`~phasestem.recon.settings.ReconstructParams`."""
    from ..recon.params import parse_params

    run: dict = {"progress": False, "device": device}
    if n_epochs is not None:
        run["n_epochs"] = int(n_epochs)
    given = {"data": {"file": "in-memory.h5"}, "run": run} | ({"model": dict(model)} if model else {})
    return parse_params(given, "make-pairs AD recipe")


def ad_recipe_model(dataset, n_epochs: int | None = None, device: str = "cpu", model: dict | None = None):
    """(the :func:`ad_recipe`, its model of ``dataset`` on ``device``, seeded as every recipe run is): what AD
    with the recipe starts from; run it with ``optimize_with_options(model, dataset, params.run.n_epochs,
    **run_sections(params))``. ``model``: the recipe's model section changed (e.g. ``{"upsampling": 1}``)."""
    from ..recon.params import build_model

    params = ad_recipe(n_epochs, device, model)
    torch.manual_seed(0)
    return params, build_model(params, dataset).to(device)


def ad_recipe_snapshots(dataset, snapshots: tuple[int, ...] = (2, 4, 8), n_epochs: int | None = None,
                        device: str = "cpu", model: dict | None = None) -> tuple[dict[int, dict[str, np.ndarray]],
                                                                                 object]:
    """AD of ``dataset`` with :func:`ad_recipe` (``model``: its model section changed, e.g. ``{"upsampling": 1}``);
    after each epoch in ``snapshots`` (those ≤ the run's epochs) and after the last, the
    :func:`phasestem.recon.channels.restorer_channels` of the model (phase, amplitude, illumination, field; (H, W)
    float32 on AD's grid) and ``seconds``, the optimisation's wall seconds to that epoch (the snapshots not counted).
    Returns ({epoch: channels}, the model)."""
    from ..recon.channels import restorer_channels
    from ..recon.engine import optimize_with_options
    from ..recon.params import run_sections

    params, fitted = ad_recipe_model(dataset, n_epochs, device, model)
    total = params.run.n_epochs
    wanted = sorted({int(e) for e in snapshots if 0 < int(e) <= total} | {total})
    out: dict[int, dict[str, np.ndarray]] = {}
    seconds, t0 = 0.0, time.perf_counter()
    for _ in optimize_with_options(fitted, dataset, total, **run_sections(params)):
        seconds += time.perf_counter() - t0  # the optimisation's wall seconds, the snapshots not counted
        if fitted.epoch in wanted:
            out[int(fitted.epoch)] = {**restorer_channels(fitted, dataset), "seconds": np.float64(seconds)}
        t0 = time.perf_counter()
    return out, fitted


def restorer_prior(net, dataset, every: int = 2, weight: float | None = None, start: int = 2,
                   name: str = "a restorer", decay: float | None = None, patience: int | None = None, twin=None,
                   after_min: str | None = None):
    """A :class:`~phasestem.recon.prior.RefreshedPrior` whose target is ``net``'s restoration of the model's
    phase (channels of :func:`phasestem.recon.channels.restorer_channels`) inside the scanned field and the phase
    itself outside it (no pull where the restorer was never trained), pulled with ``weight`` (None:
    :data:`~phasestem.recon.prior_stop.DEFAULT_WEIGHT`); ``name`` goes to the run's log; ``decay``
    and ``patience`` (None: :mod:`phasestem.recon.prior_stop`'s defaults, no decay with a ``twin``): the weight's
    factor per refresh and the rises of the data term that stop the pull; ``twin``: a
    :class:`~phasestem.recon.twin.TwinRun` of the run's recipe whose phase the network restores (the phase it
    was trained on; None: the steered phase itself); ``after_min``: with held-out counts, 'freeze' keeps the target
    of the refresh whose twin predicted them best once a later one predicts them worse, 'none' goes on refreshing
    (None: :data:`~phasestem.recon.prior.DEFAULT_AFTER_MIN`; :class:`~phasestem.recon.prior.RefreshedPrior`). An
    engine callback: ``model.LSQ_optimize(…, prior=…)`` or ``callbacks=[…]``."""
    from ..recon.channels import restorer_channels
    from ..recon.prior import DEFAULT_AFTER_MIN, RefreshedPrior
    from ..recon.prior_stop import DEFAULT_PATIENCE, DEFAULT_WEIGHT
    from .apply.phase import check_finite_phase, check_finite_prediction
    from .apply.restorer import restore_channels

    def target(model) -> np.ndarray:  # the restoration inside the scanned field, the phase itself outside it
        channels = restorer_channels(model, dataset)  # (the restorer is trained over the field only)
        check_finite_phase(channels["phase"], f"{name}: the reconstruction after epoch {model.epoch}")
        restored = restore_channels(net, channels)
        check_finite_prediction(restored, name, f"the reconstruction after epoch {model.epoch}")
        return np.where(channels["field"] > 0, restored, channels["phase"])

    return RefreshedPrior(target, every=every, weight=DEFAULT_WEIGHT if weight is None else weight, start=start,
                          name=name, decay=decay, patience=DEFAULT_PATIENCE if patience is None else patience,
                          twin=twin, after_min=DEFAULT_AFTER_MIN if after_min is None else after_min)


def prior_hook(model_path, every: int = 2, weight: float | None = None, start: int = 2, decay: float | None = None,
               patience: int | None = None):
    """``hook(model, dataset, twin)`` for :func:`phasestem.recon.run.run_reconstruction`'s ``callback_hooks``: the
    restorer ``model_path`` (read now: a corrupted file is refused before the run) checked against the run's optics
    (:func:`phasestem.learn.apply.restorer.check_geometry`, as ``restore`` checks them), then returned as the run's
    :func:`restorer_prior` (``decay``, ``patience``: its pull's schedule, checked now), on the run model's device."""
    from ..recon.prior_stop import DEFAULT_PATIENCE, check_schedule, default_decay
    from ..recon.results import optics_record
    from .apply.restorer import check_geometry, load_restorer

    patience = DEFAULT_PATIENCE if patience is None else patience
    check_schedule(default_decay(decay, twin=True), patience)  # one line before the model is read
    net, meta = load_restorer(model_path, device="cpu")

    def hook(model, dataset, twin=None):
        geometry = getattr(model, "optics_record", None) or optics_record(dataset, model.sampling)
        check_geometry(meta, geometry, str(model_path), "the data")
        return restorer_prior(net.to(model.device), dataset, every=every, weight=weight, start=start,
                              name=f"restorer {model_path}", decay=decay, patience=patience,
                              twin=None if twin is None else twin())

    return hook


def restore_results(results_path, model_path, device: str = "cpu", trust: bool = False) -> tuple[np.ndarray, dict]:
    """A restorer applied to a finished run: (restored phase (H, W) float32 rad in the dataset frame at the run's
    pixel, {"sampling", "energy", "field", "input", "sigma"; "change_sigma": (restored − input) / σ
    (:func:`phasestem.recon.uncertainty.change_in_sigma`) and "unsupported": the share of the field beyond
    "significant" σ, when the run has a σ map, else None}). The model is refused in one line for a run of other
    optics (:func:`phasestem.learn.apply.restorer.check_geometry`; a file without the record unless ``trust``), and a
    non-finite phase in or out is one line naming the file."""
    from ..recon.channels import channels_from_results
    from ..recon.uncertainty import SIGNIFICANT, change_in_sigma, unsupported_fraction
    from .apply.phase import check_finite_phase, check_finite_prediction
    from .apply.restorer import check_geometry, load_restorer, restore_channels

    channels, info = channels_from_results(results_path)
    check_finite_phase(channels["phase"], f"{results_path}:object/phase_sum")
    net, meta = load_restorer(model_path, device=device)
    known = {"energy": info["energy"], "sampling": list(info["sampling"])}  # what every results.h5 holds
    check_geometry(meta, info.get("geometry"), str(model_path), str(results_path), trust, known)
    restored = restore_channels(net, channels)
    check_finite_prediction(restored, model_path, results_path)
    out = {**info, "field": channels["field"], "input": channels["phase"], "change_sigma": None,
           "significant": SIGNIFICANT, "unsupported": None}
    if info.get("sigma") is not None:  # the change in units of the data's σ (issue 53)
        out["change_sigma"] = change_in_sigma(channels["phase"], restored, info["sigma"], channels["field"])
        out["unsupported"] = unsupported_fraction(out["change_sigma"], SIGNIFICANT)
    return restored, out


def run_files(results_path) -> list[Path]:
    """The files ``phasestem reconstruct`` writes into the run folder of ``results_path``
    (:data:`phasestem.recon.run.RUN_FILES`)."""
    from ..recon.run import RUN_FILES

    folder = Path(results_path).parent
    return [folder / name for name in RUN_FILES]


def guard_run(results_path, data_file=None, device: str = "cpu"):
    """A finished run rebuilt for ``restore``'s data guard (:class:`phasestem.learn.data_guard.GuardRun`): the run's
    model (:func:`phasestem.recon.params.build_model` of the parameters ``results.h5`` records, attrs ``config``)
    holding its final object, probe, positions, tilt, slice thickness and object-mode weights, and its patterns
    read from ``data_file`` (None: the recorded ``data.file``) and transformed as the run read them (crop, bin, …),
    with the run's counts rule (:mod:`phasestem.io.counts`) and the run's count split (``run.holdout_counts``: the
    part it fitted). A file that is not there, a run without the record or
    whose arrays do not fit the rebuilt model is one line."""
    import os

    import yaml

    from ..base.errors import InputFileError
    from ..recon.params import build_dataset, build_model, parse_params
    from ..recon.results import keep_recorded_upsampling, load_fitted_state, load_results

    r = load_results(results_path)
    config = r["attrs"].get("config")
    if not isinstance(config, str):
        raise InputFileError(f"{results_path}: records no parameters (attrs config), so its model and patterns "
                             "cannot be rebuilt for the data guard")
    try:
        recorded = yaml.safe_load(config)
    except yaml.YAMLError:
        recorded = None
    if not isinstance(recorded, dict) or not isinstance(recorded.get("data"), dict):
        raise InputFileError(f"{results_path}: attrs config is not a parameter file with a data section; its model "
                             "and patterns cannot be rebuilt for the data guard")
    recorded.setdefault("model", {}).update(initial_phase=None, initial_probe=None)  # the results hold both
    source = Path(data_file) if data_file is not None else Path(str(recorded["data"].get("file")))
    where = "--data" if data_file is not None else f"{results_path}: attrs config data.file"
    if not (source.is_file() and os.access(source, os.R_OK)):
        raise InputFileError(f"{source}: the run's data file ({where}) is not readable; give --data FILE with the "
                             "run's patterns, or --no-data-guard")
    recorded["data"]["file"] = str(source)
    params = parse_params(recorded, f"{results_path}: attrs config")
    keep_recorded_upsampling(params, r)
    dataset = build_dataset(params, warn=False)
    if params.run.holdout_counts:  # the run fitted a share of the counts: the guard sees the same (the same split)
        from ..io.counts import counts_decision
        from ..recon.count_split import run_split

        dataset, _ = run_split(params.run, dataset, counts_decision(dataset).remember(dataset))
    model = build_model(params, dataset).to(device)
    load_fitted_state(model, r, Path(results_path))
    return fitted_guard_run(model, dataset, str(source))


def fitted_guard_run(model, dataset, source: str):
    """The :class:`phasestem.learn.data_guard.GuardRun` of a fitted ``model`` (its object, probe, positions as they
    are now) and the ``dataset`` it was fitted to (patterns as the run read them; ``source`` names them in the guard's
    lines), with the run's counts rule (:mod:`phasestem.io.counts`): what :func:`guard_run` rebuilds from a results
    file, or a run still in memory (a benchmark's)."""
    from ..io.counts import counts_decision, counts_per_pattern
    from .data_guard import GuardRun

    decision = counts_decision(dataset)
    patterns = torch.fft.ifftshift(dataset.get_patterns(), dim=(-2, -1))
    total = float(patterns.sum((-2, -1)).mean())
    patterns = patterns / total
    original = model.obj_phase.detach().clone()

    def forward(change, index):
        with torch.no_grad():
            if change is not None:
                model.obj_phase.add_(change.to(original) / model.n_slices)
            try:
                return model.forward(index.to(model.device)).cpu()
            finally:
                model.obj_phase.copy_(original)

    probe = model.get_probe().detach().cpu()
    sampling = tuple(float(s) for s in model.sampling)
    origin = np.asarray(model.origin, np.float64)
    return GuardRun(forward, lambda index: patterns[index.cpu()],
                    counts_per_pattern(dataset, total) if decision.counted else None, decision.line(),
                    model.positions.detach().cpu().numpy().astype(np.float64) / np.asarray(sampling),
                    (probe.abs() ** 2).sum(0).numpy(), tuple(model.object_shape),
                    (round(origin[0] / sampling[0]), round(origin[1] / sampling[1])), sampling, source)
