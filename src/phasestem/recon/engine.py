"""The epoch loop behind ``Ptychography.LSQ_optimize`` / ``Adam_optimize`` / ``SGD_optimize`` / ``LBFGS_optimize``
and ``phasestem reconstruct``.

:func:`optimize` takes the validated settings (:class:`~phasestem.recon.params.RunConfig`, the
:class:`~phasestem.recon.losses.LossConfig`, the :class:`~phasestem.recon.constraints.Constraints`) and a list of
callbacks (:mod:`phasestem.recon.callbacks`), and yields the mean total loss of each epoch (a float), so the
caller may look at, change or stop the reconstruction between epochs. Per epoch: the scan is split into
mini-batches (:mod:`phasestem.recon.batches`); for each batch the model intensities are compared with the measured
patterns (:mod:`phasestem.recon.prepared`), the loss is back-propagated and the optimiser steps
(:mod:`phasestem.recon.optimizers`). After the epoch the scheduled constraints run and the loss history grows.
Everything else is a callback: the divergence check (:class:`~phasestem.recon.callbacks.DivergenceGuard`, always
first), the log line and the progress bar (always), checkpoints and resuming, figures and the run log (given by
the caller). :func:`optimize_with_options` is the keyword front-end of the model's ``*_optimize`` methods.

A run that diverges stops with :class:`DivergenceError` (:class:`NonFiniteLossError` for a NaN/Inf loss), the
model restored to its state after the best epoch.

Under ``torch.distributed`` (see :mod:`phasestem.recon.distributed`) the scan is split into one spatially compact
block of positions per rank; every rank takes the part of each mini-batch that lies in its block and the
gradients are summed across ranks, so all ranks take identical optimiser steps. With ``batch_mode='compact'``
each mini-batch is then made of one compact group from every rank's block. L-BFGS is refused there (each line
search would see only its share of the loss).
"""
from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from copy import deepcopy
from dataclasses import replace
from pathlib import Path

import torch

from ..base.configfile import validate
from ..base.errors import PhasestemError
from ..base.runtime import flush_denormals, rank_and_world, retain_freed_memory
from ..io.counts import counts_decision, counts_per_pattern
from .aperture_rule import resolve_probe_aperture
from .batches import compact_groups, make_batches, shard_owners  # noqa: F401  (compact_groups: engine API)
from .callbacks import (  # noqa: F401  (the errors and PHYSICAL_LIMIT: the engine's API)
    PHYSICAL_LIMIT,
    Callback,
    Checkpoints,
    DivergenceError,
    DivergenceGuard,
    EpochLog,
    Figures,
    LogFile,
    NonFiniteLossError,
    ProgressBar,
    refined,
    refined_parameters,
)
from .checkpoint import load_checkpoint, reuse_optimizer_state, save_checkpoint  # noqa: F401  (engine API)
from .constraints import Constraints, apply_constraints
from .count_split import HeldCountsStop, check_split
from .data_losses import losses_for_data
from .decay_rule import crystal_decay, resolve_lr_decay
from .decided import resolve_decided
from .dose_regularisation import resolve_obj_blur
from .holdout import HeldOutStop, holdout_fraction, split_positions
from .object_band import resolve_obj_band
from .optimizers import build_optimizer, decay_factor, refuse_lbfgs
from .precondition import ScanCurvature, resolve_batches
from .prepared import PreparedData, prepared_data  # noqa: F401  (PreparedData: engine API)
from .run_state import RunState, snapshot
from .schedule import LOW_DOSE_COUNTS, TILT_NOT_MEASURED, phase_only
from .settings.losses import LossConfig
from .settings.run import RunConfig
from .step import BatchStep, resolve_compile

log = logging.getLogger("phasestem.recon")

#: settings of the keyword front-end that differ from a parameter file's ``run`` defaults (a model's
#: ``*_optimize`` call keeps its learning rates constant unless told otherwise)
KEYWORD_DEFAULTS = {"lr_decay": "none"}


class Loop:
    """What the callbacks see of a running :func:`optimize` call."""

    def __init__(self, model, dataset, n_epochs: int, run: RunConfig, losses: LossConfig, constraints: Constraints,
                 rank: int, world: int):
        self.model, self.dataset, self.n_epochs = model, dataset, n_epochs
        self.run, self.losses, self.constraints = run, losses, constraints
        self.rank, self.world = rank, world
        self.data = None  # PreparedData / StreamedData
        self.counted: bool | None = None  # whether the data are counts (io.counts.counts_decision; None: not decided)
        self.state: RunState | None = None  # a checkpoint's (optimize(state=), Checkpoints(resume=True)) or new
        self.optimizer = None
        self.epoch = model.epoch
        self.mean_loss = math.nan
        self.snapshot: dict[str, torch.Tensor] = {}
        self.record: dict = {}
        self.terms: dict[str, torch.Tensor] = {}
        self.applied: list[str] = []
        self.callbacks: list[Callback] = []  # the engine's own, then the caller's
        self.stop = False  # set by a callback (the held-out stop): no further epoch
        self.unit = "epoch"  # what the run log calls a pass (a live stream's: "live update")
        # what the call decides once, before its first epoch (engine._prepare), and the optimizer's parameters
        self.batch_size, self.fixed = 0, frozenset()  # fixed: parameters held in this call (a low dose's amplitude)
        self.train = self.held = None  # the fitted and the held-out positions (run.holdout; held None: none)
        self.heldout_counts = None  # the counts held out of the fit (recon.count_split.HeldCounts; None: none)
        self.fit_positions: torch.Tensor | None = None  # this epoch's positions, set by a callback (None: train)
        self.lr_decay, self.decay_span, self.crystal_check = "none", None, False
        self.last_epoch = model.epoch + n_epochs  # where the decay reaches lr_final
        self.owner = self.mine = None  # the ranks' compact blocks and this rank's (several processes)
        self.step = self.precondition_batches = None
        self.optimizer_names: list[str] = []


def optimize(model, dataset, n_epochs: int, run: RunConfig | None = None, losses: LossConfig | None = None,
             constraints: Constraints | None = None, callbacks: Sequence[Callback] = (), *,
             lbfgs_options: dict | None = None, distributed: bool = True, state: RunState | None = None,
             heldout_counts=None) -> Iterator[float]:
    """Run ``n_epochs`` more epochs of ``model`` on ``dataset``; yield each epoch's mean total loss (float).

    ``run``: the solver and its settings (optimizer, batch_size, batch_mode, lr_scale, momentum, seed, progress,
    precondition_reg, precondition_batches, divergence_factor, lr_decay, lr_final, data_in_memory,
    memory_budget_gb, compile (eager, compiled or a CUDA graph: :mod:`phasestem.recon.step`); the parameter file's
    ``run`` section, :class:`RunConfig`); ``losses`` and ``constraints``
    as validated (``losses`` naming no term: the data choose it, :func:`~phasestem.recon.data_losses.losses_for_data`,
    logged). ``lr_decay`` 'cosine': every learning rate falls from 1× to ``lr_final``× over this call's epochs;
    'auto': chosen from the data term and the mean pattern (:func:`~phasestem.recon.decay_rule.resolve_lr_decay`,
    logged); a call that continues a checkpoint continues its decay, so a resumed run takes the uninterrupted run's
    steps.
    ``callbacks`` run after the engine's own (:mod:`phasestem.recon.callbacks`); a :class:`Checkpoints` among them
    also receives the divergence's last good state. ``lbfgs_options`` update torch's L-BFGS settings.
    ``distributed``: in an initialised process group, share the work with the other ranks (False: this rank
    alone runs the whole call, e.g. a check on rank 0 only). ``state``: the run state to continue
    (:func:`~phasestem.recon.checkpoint.load_checkpoint`'s; None: new for this call). ``heldout_counts``: the
    counts held out of ``dataset``'s (:func:`~phasestem.recon.count_split.split_counts`, ``run.holdout_counts``):
    their Poisson deviance after each epoch decides where the run ends (one process).
    """
    run = run or RunConfig()
    decision = counts_decision(dataset)  # once per call: the data term and obj_blur's rule read it
    losses, why = losses_for_data(losses, dataset, decision)
    if why:
        log.info("losses: %s (chosen from the data: %s; no term named)", losses.describe(), why)
    constraints = constraints or Constraints()
    rank, world = rank_and_world() if distributed else (0, 1)
    refuse_lbfgs(run.optimizer, world)
    model.solver = run.optimizer  # the last solver that ran (repr)
    path = next((c.path for c in callbacks if isinstance(c, Checkpoints)), None)
    loop = Loop(model, dataset, n_epochs, run, losses, constraints, rank, world)
    loop.counted, loop.state, loop.heldout_counts = decision.counted, state, heldout_counts
    loop.callbacks = [DivergenceGuard(path), EpochLog(), ProgressBar(), *callbacks]
    yield from _epochs(loop, lbfgs_options or {})


def _epochs(loop: Loop, lbfgs_options: dict) -> Iterator[float]:
    """The call's epochs: the callbacks' start, a coarse start, what the data decide (:func:`_prepare`), then one
    :func:`_advance` per epoch until ``loop.n_epochs`` ran, a callback stopped the run, or a counted run's decay
    ended (:func:`~phasestem.recon.decay_rule.resolve_lr_decay`); the parameters the engine switched off are
    switched on again however the call ends."""
    model, callbacks = loop.model, loop.callbacks
    named = dict(model.named_parameters())
    disabled: set[str] = set()  # parameters the engine switched off (not frozen by the user)
    flush_denormals(True)  # off again when the outermost call ends (a coarse start's call nests in this one)
    retain_freed_memory()  # reuse freed batch buffers instead of page-faulting fresh ones every step
    try:
        for cb in callbacks:
            cb.on_start(loop)
        yield from _coarse_start(loop)  # run.coarse_start: a fresh run's first epochs on the detector's centre
        _prepare(loop)
        for _ in range(loop.n_epochs):
            if loop.decay_span and model.epoch + 1 - loop.state.decay_start >= loop.decay_span:
                log.info("run ends after epoch %d of %d: its learning-rate decay (run.lr_decay auto, counted data) "
                         "ended there and later epochs would fit the noise; run.lr_decay: cosine decays over all "
                         "the epochs asked for", model.epoch, loop.last_epoch)
                break
            yield _advance(loop, named, disabled, lbfgs_options)
            if loop.stop:
                break
        for cb in callbacks:
            cb.on_end(loop)
    finally:
        flush_denormals(False)
        for name in disabled:
            named[name].requires_grad_(True)
        for cb in callbacks:
            cb.on_close(loop)


def _prepare(loop: Loop) -> None:
    """The data prepared and everything the call decides from them, each logged, into ``loop``: counts, the 'auto'
    constraints, the decay, the held-out positions, a low dose's phase-only fit, the batch step; the run state new
    unless the call continues one (a checkpoint's)."""
    model, run, losses = loop.model, loop.run, loop.losses
    data = loop.data = prepared_data(model, loop.dataset, losses.power, losses.eps, run.data_in_memory,
                                     run.memory_budget_gb)
    n = data.n
    counts = counts_per_pattern(loop.dataset, data.counts)  # a dosed file of intensities: its dose's count
    if counts != data.counts:
        log.info("counts per pattern: %.4g from the recorded dose (the patterns are intensities, mean total "
                 "%.4g)", counts, data.counts)
    model.counts_per_pattern = counts  # the noise model's counts (recon.uncertainty)
    model.data_total = float(data.counts)  # the patterns' mean total, data units (the σ bootstrap's scale)
    # probe_aperture 'auto': decided once per call from the data (the same data decide it again on resume)
    loop.constraints = resolve_probe_aperture(model, data.mean_pattern, loop.constraints)
    # obj_blur 'auto': the dose
    loop.constraints = resolve_obj_blur(model, loop.dataset, counts, loop.constraints, loop.counted)
    loop.constraints = resolve_obj_band(model, loop.constraints)  # obj_band 'auto': the object's grid
    loop.lr_decay, loop.decay_span, why = resolve_lr_decay(run.lr_decay, losses, data.mean_pattern,
                                                           model.history.decided)
    loop.crystal_check = run.lr_decay == "auto" and loop.lr_decay == "none"  # a strong scatterer: unless a crystal
    if why:
        log.info("run.lr_decay auto: %s", why)
        model.history.notes["run.lr_decay"] = why  # a run setting: its row in results.h5 (recon.report)
    bs = loop.batch_size = n if not run.batch_size else min(int(run.batch_size), n)
    split = loop.heldout_counts  # a share of every pattern's counts held out instead of positions
    fraction = 0.0 if split is not None else holdout_fraction(run.holdout, losses, counts, n, loop.world)
    loop.train, loop.held = split_positions(n, fraction, run.seed)
    held = loop.held
    if held is not None:  # positions kept out of the fit: their loss decides where the run ends
        loop.callbacks.insert(1, HeldOutStop(held, bs))
        log.info("held out of the fit: %d of %d positions (run.holdout %s)", len(held), n, run.holdout)
    if phase_only(losses.weight("poisson") > 0, counts, model.schedules["obj_amplitude"]):
        loop.fixed = frozenset({"obj_amplitude"})
        log.info("low dose (%.4g counts per pattern ≤ %g, counted data): the object amplitude is held at its "
                 "start (phase only); give model.learning_rates.obj_amplitude to refine it", counts,
                 LOW_DOSE_COUNTS)
    refining = refined(model, run.optimizer, loop.fixed)
    log.info("%s", refined_parameters(refining, run.optimizer, run.lr_scale))
    if "tilt" in refining:
        log.info("%s", TILT_NOT_MEASURED)
    # decay window, divergence references and best state: carried on from a checkpoint, else new for this call
    resumed = loop.state is not None
    loop.state = loop.state or RunState.new(model)
    if split is not None:  # before the log and the prior (index 1), as the held-out positions' stop
        check_split(split, n, loop.world, run.holdout, loop.state, resumed)
        if any(getattr(cb, "uses_held_counts", False) for cb in loop.callbacks):  # a learned prior's twin judged
            log.info("%s: they judge the learned prior's target; the run's epoch is chosen by the prior's rules",
                     split.what())
        else:
            loop.callbacks.insert(1, HeldCountsStop(split, bs))
            log.info("%s: the run returns the epoch where their Poisson deviance is lowest and stops after %d "
                     "epochs without a new lowest (run.holdout_patience)", split.what(), run.holdout_patience)
    loop.last_epoch = model.epoch + loop.n_epochs  # after a coarse start's epochs
    if loop.world > 1:  # every rank evaluates the positions of its own compact block
        loop.owner = shard_owners(model.initial_positions.detach().cpu().numpy(), loop.world)
        loop.mine = torch.as_tensor(loop.owner == loop.rank)
    mode, why = resolve_compile(run.compile, model.device, run.optimizer, loop.world, isinstance(data, PreparedData))
    if run.compile == "auto" and model.device.type == "cuda":
        log.info("run.compile auto: the batch step runs %s (%s)", "as a CUDA graph" if mode == "cuda_graph"
                 else "eagerly", why)
    loop.step = BatchStep(model, losses, run.optimizer, run.precondition_reg, loop.world, mode,
                          fallback=run.compile == "auto")
    loop.precondition_batches = resolve_batches(run.precondition_batches, losses)


def _advance(loop: Loop, named: dict[str, torch.Tensor], disabled: set[str], lbfgs_options: dict) -> float:
    """One epoch: the parameters its schedules switch on (the others switched off into ``disabled``), the optimizer
    (re)built when they change, the learning rates of the decay, the batches, the constraints, the record and the
    callbacks. Returns the epoch's mean loss."""
    model, run, callbacks, state = loop.model, loop.run, loop.callbacks, loop.state
    epoch = loop.epoch = model.epoch + 1
    t0 = time.perf_counter()
    active = []
    for name, p in named.items():
        if not p.requires_grad:
            continue  # frozen by the user
        sched = model.schedules.get(name)
        if sched is not None and sched.active(epoch) and name not in loop.fixed:
            active.append(name)
        else:
            p.requires_grad_(False)
            disabled.add(name)
    if not active:
        raise PhasestemError("no parameter is being optimised (all frozen or outside their schedules)")
    # Adam/SGD hold every parameter that may be optimised, so moments survive schedule switches
    # (a parameter outside its epochs has no gradient and is skipped); L-BFGS holds the active ones.
    wanted = active if run.optimizer == "lbfgs" else [
        k for k in named
        if (k in active or k in disabled) and model.schedules[k].resolved_lr(k, run.optimizer) > 0]
    if loop.optimizer is None or wanted != loop.optimizer_names:
        loop.optimizer = build_optimizer(run.optimizer, model, wanted, run.lr_scale, run.momentum, lbfgs_options)
        loop.optimizer_names = list(wanted)
        if state.optimizer is not None:
            reuse_optimizer_state(loop.optimizer, state.optimizer, state.optimizer_names, loop.optimizer_names)
            state.optimizer = None
        state.optimizer_names = list(loop.optimizer_names)
    opt = loop.optimizer
    if loop.crystal_check and epoch >= 2:
        loop.lr_decay = crystal_decay(model, epoch)
    if run.optimizer != "lbfgs":  # learning rates may have been changed between epochs
        decay = decay_factor(loop.lr_decay, epoch - state.decay_start, loop.last_epoch - state.decay_start + 1,
                             run.lr_final, loop.decay_span)
        for group in opt.param_groups:
            group["lr"] = (model.schedules[group["name"]].resolved_lr(group["name"], run.optimizer)
                           * run.lr_scale * decay * state.lr_backoff)
    loop.snapshot = snapshot(model.state_dict())
    loop.fit_positions = None  # a callback sets it for this epoch
    for cb in callbacks:
        cb.on_epoch_start(loop)
    fit = loop.fit_positions if loop.fit_positions is not None else None if loop.held is None else loop.train
    mean_loss, first_loss, sums, n_batches = _epoch(loop, loop.step, opt, loop.data, loop.batch_size, loop.owner,
                                                    loop.mine, loop.precondition_batches, fit)
    loop.mean_loss = mean_loss
    if state.start_loss is None:  # the first mini-batch's loss (before any step) is where a new run starts
        state.start_loss = float(first_loss) if math.isfinite(float(first_loss)) else math.inf
        state.best_loss = min(state.best_loss, state.start_loss)
    for cb in callbacks:
        cb.after_loss(loop)
    for name in disabled:  # between epochs the user sees (and may change) their own settings
        named[name].requires_grad_(True)
    disabled.clear()
    loop.constraints = resolve_decided(model, loop.constraints, epoch)  # 'auto': decided once, logged
    loop.applied = apply_constraints(model, loop.constraints, epoch)
    record = loop.record = {"epoch": epoch, "loss": mean_loss, "seconds": time.perf_counter() - t0}
    record.update({k: float(v) / n_batches for k, v in sums.items()})
    loop.terms = sums
    model.history.record(record, model.slice_thickness, model.tilt)  # losses and geometry (before the checkpoint)
    for cb in callbacks:
        cb.on_record(loop)
    for cb in callbacks:
        cb.on_epoch_end(loop)
    return mean_loss


def _coarse_start(loop: Loop) -> Iterator[float]:
    """The coarse start of ``run.coarse_start`` (:mod:`phasestem.recon.coarse`): its epochs in a call of their own on
    the coarse model and the cropped patterns (no checkpoints: a run killed there starts again), their losses
    yielded as the run's first epochs, the state carried into the full model after each, and ``loop.n_epochs``
    reduced by them. A coarse start that diverges is dropped with a warning and the model put back as it was: the
    run starts on the full detector (the coarse losses already yielded stay yielded). ``auto``'s first epoch is
    judged by :func:`~phasestem.recon.coarse.coarse_verdict` before it is yielded: kept, kept with the slices'
    shear moved into the tilt, or dropped the same way (logged)."""
    model, run = loop.model, loop.run
    if run.coarse_start == 0:  # off: nothing to decide
        return
    from .coarse import coarse_model, coarse_plan, coarse_verdict, straighten, take_coarse
    from .streaming import budget_bytes

    epochs, window, why = coarse_plan(run.coarse_start, model, loop.dataset, run.optimizer,
                                      lambda: budget_bytes(run.memory_budget_gb), run_epochs=loop.n_epochs)
    if model.epoch == 0:
        model.history.coarse_note = why
        log.info("coarse start: %s", why)
    if epochs <= 0:
        return
    coarse = coarse_model(model, window)
    start = snapshot(model.state_dict()), deepcopy(model.history)

    def drop() -> None:  # the model as it was before the coarse start (what the coarse start did noted)
        model.load_state_dict(start[0])
        model.history = replace(start[1], coarse_note=model.history.coarse_note)

    bars = [cb for cb in loop.callbacks if isinstance(cb, ProgressBar)]
    inner = run.model_copy(update={"coarse_start": 0, "holdout": 0.0, "progress": False})
    judge = run.coarse_start == "auto"  # its first epoch is yielded only once coarse_verdict has kept it
    done = 0
    coarse_epochs = optimize(coarse, loop.dataset.cropped(window), epochs, inner, loop.losses, loop.constraints,
                             distributed=loop.world > 1)
    try:
        for loss in coarse_epochs:
            take_coarse(model, coarse)
            if judge:
                judge = False
                verdict, why = coarse_verdict(model)
                if verdict == "straighten":
                    why = f"{why}; {straighten(coarse, loop.constraints, why)}"
                    take_coarse(model, coarse)
                kept = verdict != "drop"
                log.info("coarse start (auto): %s: %s", "kept" if kept else
                         "not kept, the run starts on the full detector", why)
                model.history.coarse_note = f"{'kept' if kept else 'not kept'}: {why}"
                if not kept:
                    coarse_epochs.close()
                    drop()
                    return
            done += 1
            for bar in bars:
                bar.advance(loss)
            yield loss
    except DivergenceError as err:
        log.warning("coarse start dropped (%s): the run starts on the full detector", err)
        drop()
        model.history.coarse_note = f"dropped: {err}"
        return
    loop.n_epochs -= done
    loop.epoch = model.epoch


def _epoch(loop: Loop, step: BatchStep, opt, data, bs: int, owner, mine, precondition_batches, train=None):
    """One pass over the mini-batches of the positions ``train`` (None: all): (mean loss, first batch's loss, summed
    terms, number of batches).

    The batch indices go to the device once per epoch and every batch's loss stays there (summed on the device):
    the steps themselves never wait for the host (see :mod:`phasestem.recon.step`)."""
    model, run, losses, world = loop.model, loop.run, loop.losses, loop.world
    scan_curv = ScanCurvature(model, precondition_batches) if run.optimizer == "lsq" and precondition_batches \
        else None
    step.begin_epoch(opt, scan_curv)
    gen = torch.Generator().manual_seed(run.seed * 100003 + loop.epoch)
    positions = model.positions.detach().cpu().numpy() if run.batch_mode == "compact" else None
    if train is None:
        batches = make_batches(data.n, bs, run.batch_mode, gen, positions, owner)
    else:  # one process (run.holdout, a live scan): batches of the fitted positions only
        sub = None if positions is None else positions[train.numpy()]
        batches = [train[b] for b in make_batches(len(train), bs, run.batch_mode, gen, sub)]
    sums: dict[str, torch.Tensor] = {}
    total_acc = torch.zeros((), device=model.device)
    first_loss = None
    shares = [idx[mine[idx]] if world > 1 else idx for idx in batches]
    data.schedule(shares)  # streamed data read the next batch while this one is computed
    on_device = isinstance(data, PreparedData)
    for idx, share, idx_d, share_d in zip(batches, shares, _to_device(batches, model.device),
                                          _to_device(shares, model.device), strict=True):
        n_total = len(idx)
        # the Gaussian term needs D^p only
        meas, meas_p = data.batch(share_d if on_device else share, need_meas=losses.weight("poisson") > 0) \
            if len(share) else (None, None)
        if run.optimizer == "lbfgs":
            def closure(share_d=share_d, idx_d=idx_d, n_total=n_total, meas=meas, meas_p=meas_p):
                loss, parts = step.gradients(data, share_d, idx_d, n_total, meas, meas_p)
                closure.last = (loss, parts)
                return loss

            opt.step(closure)
            loss_b, parts = closure.last
        else:
            loss_b, parts = step(data, share_d, idx_d, n_total, meas, meas_p)
        if first_loss is None:
            first_loss = loss_b.clone()
        total_acc += loss_b
        for k, v in parts.items():
            sums[k] = sums.get(k, 0) + v
    if world > 1:
        # the same terms on every rank, also on one whose shares were all empty
        names = losses.active()
        packed = torch.stack([total_acc, first_loss] + [torch.as_tensor(sums.get(k, 0.0), device=model.device,
                                                                         dtype=total_acc.dtype) for k in names])
        torch.distributed.all_reduce(packed)
        total_acc, first_loss = packed[0], packed[1]
        sums = {k: packed[i + 2] for i, k in enumerate(names)}
    return float(total_acc) / len(batches), first_loss, sums, len(batches)


def _to_device(batches: list[torch.Tensor], device: torch.device) -> list[torch.Tensor]:
    """The epoch's index batches on ``device`` in one copy (views of it), not one host-to-device copy per step."""
    if device.type == "cpu" or not batches:
        return batches
    return list(torch.cat(batches).to(device).split([len(b) for b in batches]))


def run_settings(n_patterns: int | None = None, **options) -> RunConfig:
    """A :class:`RunConfig` of keyword options (the engine's defaults, :data:`KEYWORD_DEFAULTS`, for those left
    out); ``batch_size`` None: all ``n_patterns`` in one batch. An unknown or invalid option is one line naming
    it."""
    values = {**KEYWORD_DEFAULTS, **options}
    if "batch_size" in values and values["batch_size"] is None:
        values["batch_size"] = max(1, n_patterns or 1)
    return validate(RunConfig, values, "optimize options")


def optimize_with_options(model, dataset, n_epochs: int, losses: LossConfig | None = None,
                          constraints: Constraints | None = None, checkpoint_path: str | Path | None = None,
                          checkpoint_every: int = 0, resume: bool = False, out_dir: str | Path | None = None,
                          figures_every: int = 0, log_file: str | Path | None = None,
                          callbacks: Sequence[Callback] = (), lbfgs_options: dict | None = None,
                          distributed: bool = True, prior=None, run: RunConfig | None = None,
                          state: RunState | None = None, heldout_counts=None, **run_options) -> Iterator[float]:
    """:func:`optimize` with keyword options, as the model's ``*_optimize`` methods take them.

    ``run``: a parameter file's ``run`` section (:func:`phasestem.recon.params.run_sections`); ``run_options``:
    fields of :class:`RunConfig` that replace its values, or without ``run`` the engine's settings
    (:func:`run_settings`; an unknown or invalid one is one line).
    ``checkpoint_path``/``checkpoint_every``/``resume``: a :class:`~phasestem.recon.callbacks.Checkpoints`
    callback. ``out_dir``/``figures_every``: ``out_dir/epoch_NNNN.png`` figures
    (:class:`~phasestem.recon.callbacks.Figures`). ``log_file`` (default ``out_dir/reconstruct.log`` when
    ``out_dir`` is set): the run log (:class:`~phasestem.recon.callbacks.LogFile`). ``prior``: a
    :class:`~phasestem.recon.prior.PhasePrior` or :class:`~phasestem.recon.prior.RefreshedPrior` (e.g.
    :func:`phasestem.learn.hybrid.restorer_prior`), one more callback of this call. ``state``,
    ``heldout_counts``: as :func:`optimize`'s."""
    if run is None:
        run = run_settings(dataset.n_patterns, **run_options)
    elif run_options:
        run = validate(RunConfig, {**run.model_dump(), **run_options}, "optimize options")
    own: list[Callback] = []
    if resume and checkpoint_path is None:
        raise PhasestemError("resume needs a checkpoint_path")
    if checkpoint_path is not None:
        own.append(Checkpoints(checkpoint_path, checkpoint_every, resume))
    if out_dir is not None or log_file is not None:
        own.append(LogFile(Path(log_file) if log_file is not None else Path(out_dir) / "reconstruct.log"))
    if out_dir is not None and figures_every:
        own.append(Figures(out_dir, figures_every))
    yield from optimize(model, dataset, n_epochs, run, losses, constraints,
                        [*([] if prior is None else [prior]), *own, *callbacks], lbfgs_options=lbfgs_options,
                        distributed=distributed, state=state, heldout_counts=heldout_counts)

