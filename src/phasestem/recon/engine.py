"""The epoch generator behind ``Ptychography.Adam_optimize`` / ``SGD_optimize`` / ``LBFGS_optimize``.

:func:`optimize` yields the mean total loss of each epoch (a float), so the caller may look
at, change or stop the reconstruction between epochs. Per epoch: the scan is split into
mini-batches (``batch_mode='random'`` permutation, or ``'compact'``: spatially compact groups
by recursive bisection of the positions); for each batch the model intensities are compared
with the measured patterns, the loss is back-propagated and the optimiser steps. After the
epoch the scheduled constraints run, the loss history grows, and optionally a checkpoint
and a figure are written.

A run that diverges stops with :class:`DivergenceError`: a non-finite loss
(:class:`NonFiniteLossError`), an epoch loss above ``divergence_factor`` × the best loss so far
(the first mini-batch's loss counts as the starting point), or non-physical object values
(|phase| or amplitude above :data:`PHYSICAL_LIMIT`). The model is first restored to its state
after the last good epoch, and that state is checkpointed when a path is set.

Under ``torch.distributed`` (see :mod:`phasestem.recon.distributed`) the scan is split into one
spatially compact block of positions per rank; every rank takes the part of each mini-batch that
lies in its block and the gradients are summed across ranks, so all ranks take identical
optimiser steps. With ``batch_mode='compact'`` each mini-batch is then made of one compact group
from every rank's block. L-BFGS is refused there (each line search would see only its share of
the loss).
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, InputFileError, PhasestemError
from ..runtime import retain_freed_memory
from ..schedules import lr_lambda
from ..torch_files import first_line, state_dict_mismatch, torch_load
from .constraints import Constraints, apply_constraints
from .losses import LossConfig, total_loss
from .precondition import PRECONDITIONED, ScanCurvature, precondition_gradients, resolve_batches
from .run_state import RunState

log = logging.getLogger("phasestem.recon")


#: largest |object phase| (rad, per slice) or object amplitude a run may reach before it counts as diverged
PHYSICAL_LIMIT = 1e3


class DivergenceError(PhasestemError, FloatingPointError):
    """The reconstruction diverged; the model holds the last good state."""


class NonFiniteLossError(DivergenceError):
    """The loss became NaN or Inf; the model holds the last good state."""


def divergence_reason(model, mean_loss: float, best: float, start: float, factor: float) -> str | None:
    """Why the epoch just run counts as diverged (None if it does not): a non-finite loss, a loss above both
    ``factor`` × ``best`` and the starting loss ``start`` (near-exact fits of noise-free data may fluctuate by
    large factors far below the start), or non-finite / non-physical object values."""
    if not math.isfinite(mean_loss):
        return f"the loss became {mean_loss}"
    if factor > 0 and math.isfinite(best) and mean_loss > factor * best and mean_loss > start:
        return (f"the loss rose to {mean_loss:.4g}, more than {factor:g} × its best {best:.4g} and above its "
                f"start {start:.4g}")
    with torch.no_grad():
        for name in ("obj_phase", "obj_amplitude", "probe"):
            p = getattr(model, name)
            if not bool(torch.isfinite(p).all()):
                return f"{name} holds NaN/Inf"
        peak = max(float(model.obj_phase.abs().max()), float(model.obj_amplitude.abs().max()))
    if peak > PHYSICAL_LIMIT:
        return f"the object reached non-physical values (|phase| or amplitude {peak:.3g} > {PHYSICAL_LIMIT:g})"
    return None


# ---- data -------------------------------------------------------------------------------
class PreparedData:
    """Measured patterns in the engine's internal form (unshifted, normalised, on the device).

    ``meas`` (N, ny, nx) = patterns / ``counts`` (the mean total count per pattern);
    ``meas_p`` = (meas + ε)^p for the Gaussian term; ``pacbed_p`` the mean pattern^p (summed in float64, as the
    streamed form sums it).
    """

    def __init__(self, dataset, device, power: float = 0.5, eps: float = 1e-8):
        from .streaming import pacbed_power

        pats = dataset.get_patterns()  # (N, H, W) float32, fftshift-ed
        if tuple(pats.shape[-2:]) != tuple(dataset.pattern_shape):
            raise PhasestemError("dataset patterns do not match its pattern_shape")
        self.counts = float(pats.sum((-2, -1)).mean())
        if not math.isfinite(self.counts) or self.counts <= 0:
            raise PhasestemError(f"measured patterns have a mean total intensity of {self.counts}: nothing to fit")
        # one new array per result, the arithmetic in place: the whole-data temporaries of `pats / counts`,
        # `+ eps` and `.pow` took the --auto run of a 4 GiB scan from 12.6 to 16.4 GiB while they lived
        meas = torch.fft.ifftshift(pats, dim=(-2, -1)).contiguous().div_(self.counts)
        self.meas = meas.to(device)
        self.power = power
        self.meas_p = self.meas.clamp_min(0).add_(eps).pow_(power)
        step = max(1, 2**26 // max(1, pats[0].numel()))  # float64 partial sums of ≤ 512 MiB
        total = sum(pats[a : a + step].sum(0, dtype=torch.float64).numpy() for a in range(0, len(pats), step))
        self.pacbed_p = pacbed_power(total, len(pats), self.counts, power, device)
        self.n = self.meas.shape[0]

    def schedule(self, batches) -> None:
        """The coming batches' order (used by :class:`~phasestem.recon.streaming.StreamedData` to read ahead)."""

    def batch(self, index, need_meas: bool = True):
        """(meas or None, meas_p) rows ``index`` on the device."""
        index = torch.as_tensor(index).to(self.meas.device)
        return (self.meas[index] if need_meas else None), self.meas_p[index]


def prepared_data(model, dataset, power: float, eps: float = 1e-8, data_in_memory=None,
                  memory_budget_gb: float | None = None):
    """The measured data in the engine's form, cached on the model: :class:`PreparedData` (every pattern on the
    device) or :class:`~phasestem.recon.streaming.StreamedData` (read per batch), as ``data_in_memory``
    ('auto' | True | False; None: whichever form is cached, else 'auto') and ``memory_budget_gb`` (GiB) choose
    (:func:`~phasestem.recon.streaming.choose_in_memory`)."""
    from .streaming import StreamedData, budget_bytes, choose_in_memory, normalise_mode

    key = (id(dataset), power, eps, str(model.device))
    setting = None if data_in_memory is None else (normalise_mode(data_in_memory), memory_budget_gb)
    cache = model._data_cache
    if cache is not None and cache[0] == key and (setting is None or cache[2] == setting):
        return cache[1]
    setting = setting or ("auto", memory_budget_gb)
    if cache is not None and isinstance(cache[1], StreamedData):
        cache[1].close()
    if choose_in_memory(setting[0], setting[1], dataset.n_patterns, dataset.pattern_shape, model.device):
        data = PreparedData(dataset, model.device, power, eps)
    else:
        data = StreamedData(dataset, model.device, power, eps, budget_bytes(setting[1]))
        log.info("measured patterns streamed from the data file (%d patterns, budget %.3g GiB)", data.n,
                 data.budget / 1024**3)
    if data.n != model.positions.shape[0]:
        raise PhasestemError(f"the dataset has {data.n} patterns but the model {model.positions.shape[0]} positions")
    model._data_cache = (key, data, setting)
    return data


# ---- batches ----------------------------------------------------------------------------
def compact_groups(positions: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Split positions (N, 2) into spatially compact groups of ≤ ``batch_size`` (recursive bisection)."""
    out: list[np.ndarray] = []

    def split(idx: np.ndarray):
        if len(idx) <= batch_size:
            out.append(idx)
            return
        p = positions[idx]
        axis = int(np.argmax(p.max(0) - p.min(0)))
        order = idx[np.argsort(p[:, axis], kind="stable")]
        n_groups = math.ceil(len(idx) / batch_size)
        cut = (n_groups // 2) * batch_size
        split(order[:cut])
        split(order[cut:])

    split(np.arange(len(positions)))
    return out


def make_batches(n: int, batch_size: int, mode: str, gen: torch.Generator, positions=None,
                 owner: np.ndarray | None = None) -> list[torch.Tensor]:
    """Mini-batches of flat indices for one epoch ('random' or 'compact', order shuffled).

    ``owner`` (N,) (the rank owning each position, several ranks): a 'compact' mini-batch is one compact group of
    ≤ ⌈batch_size / ranks⌉ positions from every rank's block, so every rank has work in every step."""
    if mode == "random":
        return list(torch.randperm(n, generator=gen).split(batch_size))
    if mode == "compact" and owner is not None and int(owner.max(initial=0)) > 0:
        positions = np.asarray(positions)
        sub = max(1, math.ceil(batch_size / (int(owner.max()) + 1)))
        per_rank = []
        for r in range(int(owner.max()) + 1):
            sel = np.flatnonzero(owner == r)
            groups = [sel[g] for g in compact_groups(positions[sel], sub)] if len(sel) else []
            order = torch.randperm(len(groups), generator=gen).tolist()
            per_rank.append([groups[i] for i in order])
        n_steps = max(len(g) for g in per_rank)
        return [torch.as_tensor(np.concatenate([g[k] for g in per_rank if k < len(g)]), dtype=torch.long)
                for k in range(n_steps)]
    if mode == "compact":
        groups = compact_groups(np.asarray(positions), batch_size)
        order = torch.randperm(len(groups), generator=gen).tolist()
        return [torch.as_tensor(groups[i], dtype=torch.long) for i in order]
    raise PhasestemError(f"batch_mode must be 'random' or 'compact', got {mode!r}")


# ---- checkpoints ------------------------------------------------------------------------
def save_checkpoint(path, model, optimizer=None, extra: dict | None = None, run_state: dict | None = None) -> None:
    """Write model state (+ optimiser state, + the run's own state: :meth:`RunState.to_checkpoint`) atomically to
    ``path`` (torch format, tensors and plain containers only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = model.state_for_checkpoint()
    state["optimizer"] = None if optimizer is None else optimizer.state_dict()
    state["run"] = run_state or {}
    state["extra"] = extra or {}
    from ..safety import atomic_file

    with atomic_file(path, field="checkpoint") as tmp:  # CHECKPOINT.<pid>.tmp, removed on failure
        torch.save(state, tmp)


#: what a reconstruction checkpoint must hold (besides the optional "optimizer", "run" and "extra")
CHECKPOINT_KEYS = ("params", "epoch", "loss_history", "schedules")


def load_checkpoint(path, model) -> dict:
    """Restore ``model`` from a checkpoint written by :func:`save_checkpoint`; returns the raw state. A file that is
    not such a checkpoint, or one written for another model (shapes), raises a one-line
    :class:`~phasestem.errors.InputFileError` naming it; nothing in it is unpickled but tensors and containers."""
    path = Path(path)
    if not path.exists():
        raise PhasestemError(f"{path}: checkpoint not found (nothing to resume)")
    state = torch_load(path, model.device, "reconstruction checkpoint")
    expected = f"expected a reconstruction checkpoint (a dict of {', '.join(CHECKPOINT_KEYS)})"
    if not isinstance(state, dict):
        raise InputFileError(f"{path}: {expected}, found {type(state).__name__}")
    missing = [k for k in CHECKPOINT_KEYS if k not in state]
    params = state.get("params")
    if missing or not isinstance(params, dict) or not all(torch.is_tensor(v) for v in params.values()):
        raise InputFileError(f"{path}: {expected}; " + (f"it lacks {', '.join(missing)}" if missing else
                                                         "its params are not tensors"))
    problem = state_dict_mismatch(model.state_dict(), params)
    if problem:
        raise InputFileError(f"{path}: the checkpoint does not fit this reconstruction ({problem}); was it written "
                             "for another scan, object or probe?")
    try:
        model.load_checkpoint_state(state)
        run = RunState.from_checkpoint(state.get("run"), model)
        best_misfit = run.best is not None and state_dict_mismatch(model.state_dict(), run.best[1])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InputFileError(f"{path}: {expected}; an entry is malformed "
                             f"({type(exc).__name__}: {first_line(exc)})") from exc
    if best_misfit:
        raise InputFileError(f"{path}: {expected}; its run state's best parameters do not fit ({best_misfit})")
    model._resume_state = {"optimizer": state.get("optimizer"), "run": run}  # for the next optimize() call
    return state


# ---- optimiser --------------------------------------------------------------------------
class _Composite:
    """Two optimisers stepped as one: SGD on preconditioned object/probe gradients and Adam for the rest (``lsq``)."""

    def __init__(self, parts: list[torch.optim.Optimizer]):
        self.parts = parts

    @property
    def param_groups(self) -> list[dict]:
        return [g for opt in self.parts for g in opt.param_groups]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for opt in self.parts:
            opt.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for opt in self.parts:
            opt.step()

    def state_dict(self) -> dict:
        return {"composite": [opt.state_dict() for opt in self.parts]}

    def load_state_dict(self, state: dict) -> None:
        parts = state.get("composite") if isinstance(state, dict) else None
        if parts is None or len(parts) != len(self.parts):
            raise ValueError("the checkpoint's optimiser state is not that of the lsq solver")
        for opt, st in zip(self.parts, parts, strict=True):
            opt.load_state_dict(st)


def _build_optimizer(kind: str, model, names: list[str], lr_scale: float, momentum: float, lbfgs_options: dict):
    params = dict(model.named_parameters())

    def groups(subset):
        return [{"params": [params[n]], "lr": model.schedules[n].resolved_lr(n, kind) * lr_scale, "name": n}
                for n in subset]

    if kind == "adam":
        return torch.optim.Adam(groups(names))
    if kind == "sgd":
        return torch.optim.SGD(groups(names), momentum=momentum)
    if kind == "lsq":
        scaled = [n for n in names if n in PRECONDITIONED]
        rest = [n for n in names if n not in PRECONDITIONED]
        parts = [torch.optim.SGD(groups(scaled), momentum=0.0)] if scaled else []
        if rest:
            parts.append(torch.optim.Adam(groups(rest)))
        return _Composite(parts)
    if kind == "lbfgs":
        opts = {"lr": 1.0, "max_iter": 4, "history_size": 10, "line_search_fn": "strong_wolfe"}
        opts.update(lbfgs_options)
        return torch.optim.LBFGS([params[n] for n in names], **opts)
    raise PhasestemError(f"optimizer must be 'lsq', 'adam', 'sgd' or 'lbfgs', got {kind!r}")


def decay_factor(kind: str, step: int, n_steps: int, final: float) -> float:
    """Learning-rate factor of epoch ``step`` (0-based) of ``n_steps``: 'none' → 1; 'cosine' → 1 … ``final`` (at
    the last epoch), the training schedule's shape (:func:`phasestem.schedules.lr_lambda`)."""
    if kind not in ("none", "cosine"):
        raise PhasestemError(f"run.lr_decay must be 'none' or 'cosine', got {kind!r}")
    if kind == "none" or n_steps <= 1:
        return 1.0
    return lr_lambda(step, n_steps - 1, 0, "cosine", final)


def _dist():
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def refuse_lbfgs(optimizer: str, world: int) -> None:
    """L-BFGS needs the whole loss in every line search; with several processes each sees only its share."""
    if optimizer == "lbfgs" and world > 1:
        raise ConfigError(f"run.optimizer: lbfgs cannot run in {world} processes (each line search would see only "
                          "its process's share of the loss); use lsq, adam or sgd, or run.n_processes: 1")


def optimize(
    model,
    dataset,
    n_epochs: int,
    optimizer: str = "adam",
    batch_size: int | None = 32,
    batch_mode: str = "random",
    losses: LossConfig | None = None,
    constraints: Constraints | None = None,
    lr_scale: float = 1.0,
    momentum: float = 0.9,
    lbfgs_options: dict | None = None,
    seed: int = 0,
    checkpoint_path: str | Path | None = None,
    checkpoint_every: int = 0,
    resume: bool = False,
    out_dir: str | Path | None = None,
    figures_every: int = 0,
    progress: bool = True,
    log_file: str | Path | None = None,
    precondition_reg: float = 0.1,
    precondition_batches: int | str | None = "auto",
    divergence_factor: float = 10.0,
    lr_decay: str = "none",
    lr_final: float = 0.1,
    distributed: bool = True,
    data_in_memory: str | bool = "auto",
    memory_budget_gb: float | None = None,
):
    """Run ``n_epochs`` more epochs; yield each epoch's mean total loss (float).

    ``resume``: first restore model, optimiser and run state from ``checkpoint_path``
    (:mod:`phasestem.recon.run_state`).
    ``checkpoint_every``: write ``checkpoint_path`` every that many epochs (and at the end).
    ``figures_every``: write ``out_dir/epoch_NNNN.png`` every that many epochs.
    ``log_file`` (default ``out_dir/reconstruct.log`` when ``out_dir`` is set) receives the log.
    ``precondition_reg``: the lsq solver's relative curvature floor (:mod:`phasestem.recon.precondition`).
    ``precondition_batches`` (T): the lsq curvature of every step gets the whole scan's curvature / T added, so an
    epoch takes about T Gauss–Newton steps of the whole data whatever the batch size (None: the batch's own;
    'auto': 16 for counted data, i.e. a Poisson term in ``losses``, else None).
    ``divergence_factor``: stop when an epoch's loss exceeds this many times the best (and the start); 0: only NaN.
    ``lr_decay`` ('none' | 'cosine'): every learning rate falls from 1× to ``lr_final``× over this call's epochs;
    a call that continues a checkpoint (``resume``, or after :func:`load_checkpoint`) continues its decay, from the
    epoch where that began to this call's last epoch, so a resumed run takes the uninterrupted run's steps.
    ``distributed``: in an initialised process group, share the work with the other ranks (False: this rank
    alone runs the whole call, e.g. a check on rank 0 only).
    ``data_in_memory`` ('auto' | True | False) and ``memory_budget_gb`` (GiB): hold every measured pattern on the
    device, or stream them from the dataset's source per batch (:mod:`phasestem.recon.streaming`).
    """
    losses = losses or LossConfig()
    constraints = constraints or Constraints()
    precondition_batches = resolve_batches(precondition_batches, losses)
    rank, world = _dist() if distributed else (0, 1)
    refuse_lbfgs(optimizer, world)
    if resume:
        if checkpoint_path is None:
            raise PhasestemError("resume needs a checkpoint_path")
        load_checkpoint(checkpoint_path, model)
    data = prepared_data(model, dataset, losses.power, losses.eps, data_in_memory, memory_budget_gb)
    n = data.n
    bs = n if not batch_size else min(int(batch_size), n)
    handler = None
    if out_dir is not None or log_file is not None:
        log_path = Path(log_file) if log_file is not None else Path(out_dir) / "reconstruct.log"
        if rank == 0:  # the other ranks write nothing
            log_path.parent.mkdir(parents=True, exist_ok=True)
            handler = logging.FileHandler(log_path)
            handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
            log.addHandler(handler)
            if log.level == logging.NOTSET or log.level > logging.INFO:
                log.setLevel(logging.INFO)
    named = dict(model.named_parameters())
    disabled: set[str] = set()  # parameters the engine switched off (not frozen by the user)
    opt = None
    opt_names: list[str] = []
    resumed = getattr(model, "_resume_state", None)  # what load_checkpoint left for this call
    model._resume_state = None
    from tqdm.auto import tqdm

    # decay window, divergence references and best state: carried on from a checkpoint, else new for this call
    run = RunState.new(model) if resumed is None else resumed["run"]
    pending_state = None if resumed is None else resumed.get("optimizer")
    last_epoch = model.epoch + n_epochs  # the decay reaches lr_final there
    owner = None
    if world > 1:  # every rank evaluates the positions of its own compact block
        from .distributed import shard_owners

        owner = shard_owners(model.initial_positions.detach().cpu().numpy(), world)
        mine = torch.as_tensor(owner == rank)
    bar = tqdm(total=n_epochs, desc=f"{optimizer} epochs", disable=not progress or rank != 0, leave=False)
    torch.set_flush_denormal(True)  # tiny gradients in the padding otherwise slow Adam down on CPU
    retain_freed_memory()  # reuse freed batch buffers instead of page-faulting fresh ones every step
    try:
        for _ in range(n_epochs):
            epoch = model.epoch + 1
            t0 = time.perf_counter()
            active = []
            for name, p in named.items():
                if not p.requires_grad:
                    continue  # frozen by the user
                sched = model.schedules.get(name)
                if sched is not None and sched.active(epoch):
                    active.append(name)
                else:
                    p.requires_grad_(False)
                    disabled.add(name)
            if not active:
                raise PhasestemError("no parameter is being optimised (all frozen or outside their schedules)")
            # Adam/SGD hold every parameter that may be optimised, so moments survive schedule switches
            # (a parameter outside its epochs has no gradient and is skipped); L-BFGS holds the active ones.
            wanted = active if optimizer == "lbfgs" else [
                k for k in named if (k in active or k in disabled) and model.schedules[k].resolved_lr(k, optimizer) > 0]
            if opt is None or wanted != opt_names:
                opt = _build_optimizer(optimizer, model, wanted, lr_scale, momentum, lbfgs_options or {})
                opt_names = list(wanted)
                if pending_state is not None:
                    _reuse_optimizer_state(opt, pending_state, run.optimizer_names, opt_names)
                    pending_state = None
                run.optimizer_names = list(opt_names)
            if optimizer != "lbfgs":  # learning rates may have been changed between epochs
                decay = decay_factor(lr_decay, epoch - run.decay_start, last_epoch - run.decay_start + 1, lr_final)
                for group in opt.param_groups:
                    group["lr"] = (model.schedules[group["name"]].resolved_lr(group["name"], optimizer) * lr_scale
                                   * decay)
            snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
            scan_curv = ScanCurvature(model, precondition_batches) if optimizer == "lsq" and precondition_batches \
                else None
            gen = torch.Generator().manual_seed(seed * 100003 + epoch)
            positions = model.positions.detach().cpu().numpy() if batch_mode == "compact" else None
            batches = make_batches(n, bs, batch_mode, gen, positions, owner)
            sums: dict[str, torch.Tensor] = {}
            total_acc = torch.zeros((), device=model.device)
            first_loss = None
            shares = [idx[mine[idx]] if world > 1 else idx for idx in batches]
            data.schedule(shares)  # streamed data read the next batch while this one is computed
            for idx, share in zip(batches, shares, strict=True):
                n_total = len(idx)
                # the Gaussian term needs D^p only
                meas, meas_p = data.batch(share, need_meas=losses.poisson > 0) if len(share) else (None, None)
                share = share.to(model.device)

                def closure(share=share, n_total=n_total, opt=opt, idx=idx, meas=meas, meas_p=meas_p,
                            scan_curv=scan_curv):
                    opt.zero_grad(set_to_none=True)
                    if len(share):
                        inten = model(share)
                        phase = model.obj_phase if losses.sparsity > 0 else None
                        loss, parts = total_loss(losses, inten, meas, meas_p, data.pacbed_p, phase,
                                                 data.counts, n_total)
                        loss.backward()
                    else:
                        loss, parts = torch.zeros((), device=model.device), {}
                    if world > 1:
                        _all_reduce_grads(opt)
                    if optimizer == "lsq":
                        precondition_gradients(model, idx, n_total, losses, precondition_reg, scan_curv)
                    closure.last = (loss.detach(), parts)
                    return loss

                if optimizer == "lbfgs":
                    opt.step(closure)
                else:
                    closure()
                    opt.step()
                loss_b, parts = closure.last
                if first_loss is None:
                    first_loss = loss_b.clone()
                total_acc += loss_b
                for k, v in parts.items():
                    sums[k] = sums.get(k, 0) + v
            if world > 1:
                # the same terms on every rank, also on one whose shares were all empty
                names = sorted(k for k in ("gaussian", "poisson", "pacbed", "sparsity") if getattr(losses, k) > 0)
                packed = torch.stack([total_acc, first_loss] + [torch.as_tensor(sums.get(k, 0.0), device=model.device,
                                                                                 dtype=total_acc.dtype) for k in names])
                torch.distributed.all_reduce(packed)
                total_acc, first_loss = packed[0], packed[1]
                sums = {k: packed[i + 2] for i, k in enumerate(names)}
            mean_loss = float(total_acc) / len(batches)
            if run.start_loss is None:  # the first mini-batch's loss (before any step) is where a new run starts
                run.start_loss = float(first_loss) if math.isfinite(float(first_loss)) else math.inf
                run.best_loss = min(run.best_loss, run.start_loss)
            reason = divergence_reason(model, mean_loss, run.best_loss, run.start_loss, divergence_factor)
            if reason is not None:
                if run.best is not None and math.isfinite(mean_loss):  # back to the best epoch, not just the last
                    model.epoch, snapshot = run.best
                    model.loss_history = model.loss_history[: model.epoch]
                model.load_state_dict(snapshot)
                run.best = (model.epoch, snapshot)
                msg = (f"{reason} in epoch {epoch}; stopped and restored the state after epoch {model.epoch}. "
                       "Lower the learning rates (or run.lr_scale) or check the data and optics.")
                if checkpoint_path is not None and rank == 0:
                    save_checkpoint(checkpoint_path, model, run_state=run.to_checkpoint(model))
                    msg += f" Last good state saved to {checkpoint_path}."
                log.error(msg)
                raise (NonFiniteLossError if not math.isfinite(mean_loss) else DivergenceError)(msg)
            improved = mean_loss <= run.best_loss
            run.best_loss = min(run.best_loss, mean_loss)
            for name in disabled:  # between epochs the user sees (and may change) their own settings
                named[name].requires_grad_(True)
            disabled.clear()
            applied = apply_constraints(model, constraints, epoch)
            model.epoch = epoch
            record = {"epoch": epoch, "loss": mean_loss, "seconds": time.perf_counter() - t0}
            record.update({k: float(v) / len(batches) for k, v in sums.items()})
            model.loss_history.append(record)
            if hasattr(model, "record_epoch"):  # geometry history and per-epoch reports (before the checkpoint)
                model.record_epoch(record)
            if improved and divergence_factor > 0:
                run.best = (epoch, {k: v.detach().clone() for k, v in model.state_dict().items()})
            log.info("epoch %d loss %.6g %s%s (%.2f s)", epoch, mean_loss,
                     " ".join(f"{k}={record[k]:.4g}" for k in sorted(sums)),
                     f" constraints: {','.join(applied)}" if applied else "", record["seconds"])
            if rank == 0 and checkpoint_path is not None and checkpoint_every and epoch % checkpoint_every == 0:
                save_checkpoint(checkpoint_path, model, opt, run_state=run.to_checkpoint(model))
            if rank == 0 and out_dir is not None and figures_every and epoch % figures_every == 0:
                import matplotlib.pyplot as plt

                fig = model.inspect(dataset, path=Path(out_dir) / f"epoch_{epoch:04d}.png")
                plt.close(fig)
            bar.update(1)
            bar.set_postfix(loss=f"{mean_loss:.4g}")
            yield mean_loss
        if rank == 0 and checkpoint_path is not None and checkpoint_every:
            save_checkpoint(checkpoint_path, model, opt, run_state=run.to_checkpoint(model))
    finally:
        torch.set_flush_denormal(False)
        for name in disabled:
            named[name].requires_grad_(True)
        bar.close()
        if handler is not None:
            log.removeHandler(handler)
            handler.close()


def _reuse_optimizer_state(opt, state: dict, saved_names: list[str], names: list[str]) -> None:
    """Load a checkpoint's optimiser state into ``opt`` (holding ``names``); a state saved for other parameters
    (``saved_names``, empty for checkpoints that did not record them) or another solver is not reused (logged)."""
    if saved_names and saved_names != names:
        log.warning("optimizer state in the checkpoint not reused: it holds %s, this run optimises %s",
                    saved_names, names)
        return
    try:
        opt.load_state_dict(state)
    except (ValueError, KeyError, RuntimeError) as exc:
        log.warning("optimizer state in the checkpoint not reused: %s", exc)


def _all_reduce_grads(opt) -> None:
    """Sum gradients over ranks (a missing gradient of an active parameter counts as zero)."""
    for group in opt.param_groups:
        for p in group["params"]:
            if not p.requires_grad:  # outside its schedule this epoch: no gradient, no step
                continue
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            torch.distributed.all_reduce(p.grad)
