"""A reconstruction described by a parameter file, start to end: ``phasestem reconstruct PARAMS.yaml`` without
the command line (:func:`run_reconstruction`): the output folder held, the run log and configuration written,
the dataset and model built, the optics check, the epochs (:func:`phasestem.recon.engine.optimize` with the
checkpoint, figure and log callbacks) and the results, figures and ``results.emd`` written. One process, the
processes of ``run.n_processes`` or those of ``torchrun``."""
from __future__ import annotations

import logging
import sys
from pathlib import Path

from ..base.lock import hold_output
from ..base.safety import atomic_file, refuse_output_over_inputs, remove_stale_temporaries
from .distributed import rank_device
from .params import ReconstructParams, build_dataset, build_model, dump_params, run_sections

log = logging.getLogger("phasestem.recon")


#: files a reconstruction writes into its output folder (none may be an input)
RUN_FILES = ("config.yaml", "checkpoint.pt", "results.h5", "results.emd", "reconstruction.png", "compare.png",
             "uncertainty.png", "reconstruct.log", "live.npz")
#: how a reconstruction names itself in its output folder's lock
RECON_COMMAND = "phasestem reconstruct"


def _keep_configured_schedules(model, wanted: dict) -> None:
    """After a resume, the learning rates and epochs of this run's parameter file win over the checkpoint's."""
    for name, sched in wanted.items():
        old = model.schedules[name]
        if old != sched:
            log.info("learning rate of %s: checkpoint %s -> parameter file %s", name,
                     _describe(old), _describe(sched))
        model.schedules[name] = sched


def _describe(s) -> str:
    lr = "solver default" if s.lr is None else f"{s.lr:g}"
    return f"{lr} (epochs {s.start}-{'end' if s.end is None else s.end})"


def _check_optics(params: ReconstructParams, dataset, opts: dict) -> None:
    """Warn (log and stderr) when the flipped defocus sign fits the centre of the scan far better."""
    from .optics_check import check_defocus_sign

    quick = {k: v for k, v in opts.items() if k not in ("progress",)}
    quick["distributed"] = False  # rank 0 alone runs the check
    device = rank_device(params.run.device)
    result = check_defocus_sign(dataset, lambda ds: build_model(params, ds).to(device), **quick)
    if result is None:
        return
    log.info("optics check: data error %.4g with C10 = %g Å, %.4g with C10 = %g Å", result.loss_given, result.c10,
             result.loss_flipped, -result.c10)
    if result.flipped_fits_better:
        log.warning(result.message())
        print(f"phasestem reconstruct: warning: {result.message()}", file=sys.stderr)


def _setup_reports(params: ReconstructParams, dataset, model, out: Path):
    """(the ground-truth phase, None without data.ground_truth_key; the per-epoch report of loss_ptyrad and
    ground-truth metrics, an engine callback, or None)."""
    from .report import EpochReport, load_ground_truth

    truth = None
    if params.data.ground_truth_key is not None:
        truth = load_ground_truth(params.data.file, params.data.ground_truth_key, model, params.optics.energy,
                                  out / "reconstruct.log", params.data.allow_external_links)
    report = None
    if params.run.ptyrad_loss or truth is not None:
        report = EpochReport(dataset, truth, params.run.ptyrad_loss, params.losses.power, params.run.batch_size)
    return truth, report


def run_reconstruction(params: ReconstructParams, resume: bool = False, sources: dict[str, str] | None = None,
                       dataset=None, start_phase=None, callback_hooks=(), snapshot_extra=None):
    """Run a reconstruction described by ``params``; returns the model (None in the parent of
    ``run.n_processes`` > 1 spawned processes). ``sources`` labels values of the parameter file by field in the
    run log and results.h5 (default ``YAML``; see :func:`phasestem.recon.params.build_dataset`).

    ``dataset`` (what :func:`~phasestem.recon.params.build_dataset` returns for ``params``) and ``start_phase``
    (the image of ``model.initial_phase``) hand what the caller already holds to a run in this one process
    (``--auto``): the data file and the start image are then not read again. Processes of their own build them.
    ``callback_hooks``: functions ``hook(model, dataset, twin)`` → an engine callback
    (:mod:`phasestem.recon.callbacks`), called once the model is built (and resumed), before the epochs, e.g. the
    learned prior of ``reconstruct --prior``; ``twin()`` gives a :class:`~phasestem.recon.twin.TwinRun`, plain AD of
    the same recipe beside the run (:func:`_twin`); not with ``run.n_processes`` > 1. ``snapshot_extra(model)``:
    arrays added to every ``OUT/live.npz`` snapshot (a live run's stream, :mod:`phasestem.live.session`).

    Under ``torchrun`` (RANK, WORLD_SIZE, LOCAL_RANK in the environment) this process joins the process group
    itself (nccl on CUDA, gloo on CPU) and ``run.n_processes`` is ignored; ``run.n_processes`` > 1 otherwise
    starts that many local processes (the single-node shortcut).

    ``run.out_dir`` is held for the whole run (:func:`phasestem.base.lock.hold_output`, FolderBusyError when another
    run holds it): by this process alone, by the parent of ``run.n_processes`` processes, by rank 0 of a process
    group (every rank learns a refusal)."""
    from .distributed import backend_for, init_from_environment, is_initialized, launch, torchrun_world
    from .engine import refuse_lbfgs

    world = torchrun_world() if torchrun_world() > 1 else params.run.n_processes
    refuse_lbfgs(params.run.optimizer, world)  # before any process starts
    if torchrun_world() > 1 or is_initialized():
        if params.run.n_processes > 1:
            log.warning("run.n_processes = %d ignored: the processes were started by torchrun (%d)",
                        params.run.n_processes, torchrun_world())
        own_group = init_from_environment(params.run.device)
        try:
            with hold_output(params.run.out_dir, RECON_COMMAND):
                return _reconstruct_rank(params, resume, sources, callback_hooks=callback_hooks)
        finally:
            if own_group:
                import torch.distributed as dist

                dist.destroy_process_group()
    if params.run.holdout_counts:  # before any process starts
        from .count_split import refuse_processes

        refuse_processes(world)
    with hold_output(params.run.out_dir, RECON_COMMAND):
        if params.run.n_processes > 1:  # the spawned ranks write into the folder this process holds
            if callback_hooks:
                from ..base.errors import ConfigError

                raise ConfigError("run.n_processes > 1 cannot take a learned prior (--prior): use one process or "
                                  "torchrun")
            launch(params.run.n_processes, _reconstruct_rank, params.model_dump(mode="json"), resume, sources,
                   backend=backend_for(params.run.device))
            return None
        return _reconstruct_rank(params, resume, sources, dataset, start_phase, callback_hooks, snapshot_extra)


def _recipe_epochs(params: ReconstructParams, losses, start_phase, device, dataset, n_epochs: int,
                   batch_size: int | None = None, **run_settings):
    """(a fresh model of ``params`` on ``dataset`` from the run's start, the generator of its ``n_epochs`` epochs): the
    run's recipe (solver, data terms, constraints) on this process alone, without progress bar, checkpoints or
    files; ``batch_size``: another batch size (None: the run's); ``run_settings``: other fields of ``run``."""
    from .engine import optimize

    model = build_model(params, dataset, start_phase).to(device)
    run = params.run.model_copy(update={"progress": False} | ({} if batch_size is None else
                                                             {"batch_size": batch_size}) | run_settings)
    return model, optimize(model, dataset, n_epochs, run, losses, params.constraints, distributed=False)


def _recipe(params: ReconstructParams, losses, start_phase, device, n_epochs: int, dataset=None):
    """The run's recipe as a function of a dataset (the σ bootstrap's reruns, :mod:`phasestem.recon.sigma_bootstrap`):
    :func:`_recipe_epochs` run to its end, each object pixel moved as far per epoch as in the run
    (:func:`~phasestem.recon.sigma_bootstrap.block_schedule`), ``on_epoch(model)`` after each epoch. Its ``epochs``
    are the run's ``n_epochs``; ``decays`` says whether the run's steps decay over all of them (``run.lr_decay``
    cosine, or auto's on the run's ``dataset``): the bootstrap may then compress the decay into fewer epochs."""
    from .decay_rule import resolve_lr_decay
    from .precondition import resolve_batches
    from .sigma_bootstrap import block_schedule

    lsq_share = resolve_batches(params.run.precondition_batches, losses) if params.run.optimizer == "lsq" else None
    kind, span = "none", None
    if dataset is not None:  # the mean pattern only where auto's rule reads it (no Poisson term)
        auto_reads = params.run.lr_decay == "auto" and not losses.weight("poisson") > 0
        kind, span, _ = resolve_lr_decay(params.run.lr_decay, losses, dataset.mean_pattern() if auto_reads else None)

    def rerun(sub, position_share: float = 1.0, epochs: int | None = None, on_epoch=None):
        """``sub`` reconstructed by the recipe for ``epochs`` (the run's), in the block's batches."""
        total = max(sub.n_patterns, round(sub.n_patterns / position_share))
        batch, share = block_schedule(params.run.batch_size, lsq_share, sub.n_patterns, total)
        model, steps = _recipe_epochs(params, losses, start_phase, device, sub, epochs or n_epochs, batch,
                                      **({} if share == lsq_share else {"precondition_batches": share}))
        for _ in steps:
            if on_epoch is not None:
                on_epoch(model)
        return model
    rerun.epochs = n_epochs
    rerun.decays = kind == "cosine" and (span is None or span >= n_epochs)
    return rerun


def _twin(params: ReconstructParams, losses, start_phase, device, dataset):
    """:func:`_recipe_epochs` to ``run.n_epochs`` as a :class:`~phasestem.recon.twin.TwinRun` that a learned prior
    advances beside the run (plain AD of the same recipe from the same start)."""
    from .twin import TwinRun

    return TwinRun(*_recipe_epochs(params, losses, start_phase, device, dataset, params.run.n_epochs))


def _reconstruct_rank(params, resume: bool, sources: dict[str, str] | None = None, dataset=None, start_phase=None,
                      callback_hooks=(), snapshot_extra=None):
    """One process's run (:func:`_run_rank`) on the CPU threads ``run.cpu_threads`` decides
    (:func:`phasestem.base.threads.cpu_threads`; torch's count restored after; a GPU run left as it is)."""
    from ..base.threads import cpu_threads

    if isinstance(params, dict):
        params = ReconstructParams.model_validate(params)
    device = rank_device(params.run.device)  # a device that is not there: one line before anything is written
    with cpu_threads(params.run.cpu_threads, device) as threads:
        return _run_rank(params, device, resume, sources, dataset, start_phase, callback_hooks, snapshot_extra,
                         threads)


def _run_rank(params: ReconstructParams, device: str, resume: bool, sources: dict[str, str] | None = None,
              dataset=None, start_phase=None, callback_hooks=(), snapshot_extra=None, threads=None):
    import contextlib

    import matplotlib.pyplot as plt

    from ..base.runtime import rank_and_world
    from ..io.counts import counts_decision
    from .callbacks import Checkpoints, Figures, LiveSnapshots, LogFile
    from .checkpoint import load_checkpoint
    from .count_split import run_split, split_line, split_setting
    from .data_losses import losses_for_data
    from .distributed import is_main_process
    from .engine import optimize
    from .report import (
        auto_settings,
        counts_setting,
        log_settings,
        log_system_info,
        logging_to,
        loss_settings,
        losses_line,
    )
    from .schedule import LOW_DOSE_COUNTS

    main = is_main_process()  # only rank 0 writes files
    out = Path(params.run.out_dir)
    refuse_output_over_inputs(out, [params.data.file, params.data.detector_shifts,
                                    params.scan.positions_file,
                                    None if params.model.initial_phase is None else params.model.initial_phase.file,
                                    None if params.model.initial_probe is None else params.model.initial_probe.file],
                              field="run.out_dir", written=RUN_FILES)
    config_text = dump_params(params)
    if main:  # the folder is held (run_reconstruction): what killed runs left mid-write is ours to remove
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out, RUN_FILES)
        with atomic_file(out / "config.yaml", field="run.out_dir") as tmp:
            tmp.write_text(config_text)
    log_path = out / "reconstruct.log"
    if main:
        log_system_info(log_path, device)
        if threads is not None:  # the thread count of the run and why (phasestem.base.threads)
            with logging_to(log_path):
                log.info("%s", threads.line)
    if dataset is None:
        with logging_to(log_path) if main else contextlib.nullcontext():  # conflict warnings in the log too
            dataset = build_dataset(params, sources, warn=main)
    counted = counts_decision(dataset).remember(dataset)  # once a run: the data term, σ and the log agree
    dataset, held = run_split(params.run, dataset, counted)  # from here on the run sees the fit's counts
    from_data = losses_for_data(params.losses, dataset, counted)  # a run naming no term: its data decide
    settings = dataset.metadata.get("settings", []) + [counts_setting(counted, params, sources)] + \
        loss_settings(params, sources, from_data) + ([] if held is None else [split_setting(held, sources)])
    if main:
        log_settings(settings, losses_line(params, sources, from_data), dataset, log_path)
        print(losses_line(params, sources, from_data))
        if held is not None:
            with logging_to(log_path):
                log.info("%s", split_line(held, LOW_DOSE_COUNTS))
    model = build_model(params, dataset, start_phase).to(device)
    ckpt, state = out / "checkpoint.pt", None
    if resume:
        wanted = {k: s.model_copy() for k, s in model.schedules.items()}
        state = load_checkpoint(ckpt, model)
        with logging_to(log_path) if main else contextlib.nullcontext():  # the run log says where it continued
            log.info("resumed from %s after epoch %d", ckpt, model.epoch)
        _keep_configured_schedules(model, wanted)
    callbacks = [hook(model, dataset, lambda: _twin(params, from_data[0], start_phase, device, dataset))
                 for hook in callback_hooks]
    remaining = params.run.n_epochs - model.epoch
    if main and not resume and params.run.check_optics and params.model.initial_phase is None:
        _check_optics(params, dataset, run_sections(params))
    if rank_and_world()[1] > 1:
        log.info("rank %d of %d on %s", *rank_and_world(), model.device)
    truth, report = _setup_reports(params, dataset, model, out) if main else (None, None)
    if report is not None:
        callbacks.append(report)
    if main:  # OUT/live.npz after every epoch: the live page of phasestem serve
        from .live import LIVE_FILE
        callbacks.append(LiveSnapshots(out / LIVE_FILE, params.run.n_epochs, extra=snapshot_extra))
    callbacks += [Checkpoints(ckpt, params.run.checkpoint_every), LogFile(log_path)]
    if params.run.figures_every:
        callbacks.append(Figures(out, params.run.figures_every))
    for _ in optimize(model, dataset, max(0, remaining), params.run, from_data[0], params.constraints, callbacks,
                      state=state, heldout_counts=held):
        pass
    if main:
        from .uncertainty import run_uncertainty

        with logging_to(log_path):
            rerun = _recipe(params, from_data[0], start_phase, device, model.epoch, dataset)
            log.info("%s", run_uncertainty(model, dataset, params.run.uncertainty, params.run.noise_sigma, rerun))
            from .prior import prior_disagreement

            if (line := prior_disagreement(callbacks, model)) is not None:
                log.info("%s", line)
        if model.uncertainty is not None:  # the live page's last snapshot gets the σ map
            from .live import LIVE_FILE, write_snapshot

            try:
                write_snapshot(out / LIVE_FILE, model, params.run.n_epochs,
                               extra=None if snapshot_extra is None else snapshot_extra(model))
            except OSError as exc:  # as after every epoch: the results matter, the live page can do without
                log.warning("live snapshot with the σ map not written (%s)", exc)
        metrics = None
        if truth is not None:
            from .report import final_metrics

            metrics = final_metrics(model, truth, params.data.ground_truth_key, out / "reconstruct.log")
        path = model.save_results(out / "results.h5", config_text=config_text, metrics=metrics,
                                  provenance=settings + auto_settings(model, params, sources))
        model.save_results(out / "results.emd")  # the object and probe for py4DSTEM and HyperSpy users
        plt.close(model.inspect(dataset, path=out / "reconstruction.png", truth=truth, metrics=metrics))
        plt.close(model.compare(dataset, path=out / "compare.png", truth=truth, metrics=metrics))
        if model.uncertainty is not None:
            from .figures import plot_uncertainty

            plt.close(plot_uncertainty(model, out / "uncertainty.png"))
        last = model.loss_history[-1]["loss"] if model.loss_history else float("nan")
        print(f"reconstruction: {model.epoch} epochs, final loss {last:.6g}; results in {path}")
        if metrics is not None:
            print("against the ground truth: PSNR {psnr:.3g} dB, SSIM {ssim:.3g}, E_phi {phase_error:.3g}, "
                  "FRC resolution {frc_resolution:.3g} Å".format(**metrics))
    return model
