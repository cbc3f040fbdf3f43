"""What a reconstruction carries from epoch to epoch besides the model and the optimiser.

:func:`phasestem.recon.engine.optimize` keeps, within one call, the learning-rate decay's window, the
divergence check's references (the starting loss, the best loss and the state of the best epoch) and the
names of the parameters its optimiser holds. A checkpoint stores them (its ``"run"`` entry, tensors and plain
numbers only) so that a run killed and resumed takes exactly the steps the uninterrupted run would have.

Not stored, because nothing of it survives an epoch boundary: the mini-batch order (a generator seeded with
``seed`` and the epoch number, drawn anew each epoch), the ``lsq`` solver's whole-scan curvature
(:class:`~phasestem.recon.precondition.ScanCurvature`, recomputed from the model at the start of every epoch)
and the epoch's snapshot.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

#: the layout of the checkpoint's ``"run"`` entry
FORMAT = 1
#: the loss-history column that marks (and sizes) an epoch of a coarse start (:mod:`phasestem.recon.coarse`): the
#: crop's width in detector pixels
COARSE_HISTORY_KEY = "coarse_window"


def snapshot(state_dict: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """A detached copy of a model's (or a kept) state dict: what a best or held-out epoch keeps."""
    return {k: v.detach().clone() for k, v in state_dict.items()}


def _pack(kept: tuple[int, dict] | None, model, out: dict, name: str) -> None:
    """Store a kept (epoch, state) as ``NAME_epoch`` (−1: none) and ``NAME_params`` (only when it is not the model's
    current epoch, whose state the checkpoint holds anyway)."""
    out[f"{name}_epoch"] = -1 if kept is None else int(kept[0])
    if kept is not None and kept[0] != model.epoch:
        out[f"{name}_params"] = snapshot(kept[1])


def _unpack(entry: dict, model, name: str) -> tuple[int, dict] | None:
    """The (epoch, state) :func:`_pack` stored, for ``model`` restored from the same checkpoint."""
    epoch = int(entry.get(f"{name}_epoch", -1))
    if epoch < 0:
        return None
    params = entry.get(f"{name}_params")
    return epoch, (params if params is not None else snapshot(model.state_dict()))


@dataclass
class RunState:
    """``decay_start``: the first epoch (1-based) of the learning-rate decay's window (it ends with the call's
    last epoch); ``start_loss``: the run's first mini-batch loss before any step (None until known);
    ``best_loss``: the lowest of it and of every epoch's loss; ``best``: (epoch, state_dict) of the last epoch
    that reached ``best_loss`` (None: none yet in this run), which a divergence restores; ``optimizer_names``:
    the parameters, in order, that the saved optimiser state refers to; ``lr_backoff``: the factor every
    learning rate carries after the step-size back-offs so far (``backoffs`` of them; see
    :class:`~phasestem.recon.callbacks.DivergenceGuard`); ``holdout_best_loss``, ``holdout_best`` (epoch,
    state_dict) and ``holdout_waited``: the held-out stop's lowest loss, its state and the epochs since
    (:mod:`phasestem.recon.holdout`); ``optimizer``: a checkpoint's optimiser state, for the first optimiser the
    call builds; ``count_split``: the fingerprint of the run's count split (:mod:`phasestem.recon.count_split`;
    None: none)."""

    decay_start: int
    start_loss: float | None = None
    best_loss: float = math.inf
    best: tuple[int, dict[str, torch.Tensor]] | None = None
    optimizer_names: list[str] = field(default_factory=list)
    lr_backoff: float = 1.0
    backoffs: int = 0
    holdout_best_loss: float = math.inf
    holdout_best: tuple[int, dict[str, torch.Tensor]] | None = None
    holdout_waited: int = 0
    optimizer: dict | None = None
    count_split: list | None = None

    @classmethod
    def new(cls, model) -> RunState:
        """The state of a call that starts on ``model`` without a checkpoint's: the decay starts with the next
        epoch, and the references come from the model's loss history (a model optimised before)."""
        # a coarse start's epochs (phasestem.recon.coarse) fit other patterns: their losses are no reference here
        finite = [h["loss"] for h in model.loss_history if math.isfinite(h["loss"]) and COARSE_HISTORY_KEY not in h]
        return cls(decay_start=model.epoch + 1, start_loss=finite[0] if finite else None,
                   best_loss=min(finite, default=math.inf))

    def to_checkpoint(self, model) -> dict:
        """The checkpoint's ``"run"`` entry after the model's current epoch. The best state is stored only when
        it is not the model's own current state."""
        out = {"format": FORMAT, "decay_start": int(self.decay_start),
               "start_loss": None if self.start_loss is None else float(self.start_loss),
               "best_loss": float(self.best_loss), "optimizer_names": list(self.optimizer_names),
               "lr_backoff": float(self.lr_backoff), "backoffs": int(self.backoffs),
               "holdout_best_loss": float(self.holdout_best_loss), "holdout_waited": int(self.holdout_waited),
               "count_split": None if self.count_split is None else list(self.count_split)}
        _pack(self.best, model, out, "best")
        _pack(self.holdout_best, model, out, "holdout_best")
        return out

    @classmethod
    def from_checkpoint(cls, entry: dict | None, model, optimizer: dict | None = None) -> RunState:
        """The state stored by :meth:`to_checkpoint`, for ``model`` already restored from the same checkpoint, with
        its ``optimizer`` state. A checkpoint without it (written before it existed) continues a decay that started
        at epoch 1."""
        if not entry:
            state = cls.new(model)
            state.decay_start, state.optimizer = 1, optimizer
            return state
        start = entry.get("start_loss")
        return cls(decay_start=int(entry["decay_start"]), start_loss=None if start is None else float(start),
                   best_loss=float(entry["best_loss"]), best=_unpack(entry, model, "best"),
                   optimizer_names=[str(n) for n in entry.get("optimizer_names", [])],
                   lr_backoff=float(entry.get("lr_backoff", 1.0)), backoffs=int(entry.get("backoffs", 0)),
                   holdout_best_loss=float(entry.get("holdout_best_loss", math.inf)),
                   holdout_best=_unpack(entry, model, "holdout_best"),
                   holdout_waited=int(entry.get("holdout_waited", 0)), optimizer=optimizer,
                   count_split=_split(entry.get("count_split")))


def _split(value) -> list | None:
    """A checkpoint's count-split fingerprint as [q, seed, held total] (None: none)."""
    return None if value is None else [float(value[0]), int(value[1]), float(value[2])]
