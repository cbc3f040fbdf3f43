"""Reconstruction checkpoints: the model's state, the optimiser's and the run's own
(:class:`~phasestem.recon.run_state.RunState`), written atomically and read back without unpickling anything but
tensors and plain containers."""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from ..base.errors import InputFileError, PhasestemError
from ..base.safety import atomic_file
from ..base.torch_files import first_line, state_dict_mismatch, torch_load, torch_save
from .run_state import RunState

log = logging.getLogger("phasestem.recon")


def save_checkpoint(path, model, optimizer=None, extra: dict | None = None, run_state: dict | None = None) -> None:
    """Write model state (+ optimiser state, + the run's own state: :meth:`RunState.to_checkpoint`) atomically to
    ``path`` (torch format, tensors and plain containers only)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    state = model.state_for_checkpoint()
    state["optimizer"] = None if optimizer is None else optimizer.state_dict()
    state["run"] = run_state or {}
    state["extra"] = extra or {}
    with atomic_file(path, field="checkpoint") as tmp:  # CHECKPOINT.<pid>.tmp, removed on failure (a full disk too)
        torch_save(state, tmp)


#: what a reconstruction checkpoint must hold (besides the optional "optimizer", "run" and "extra")
CHECKPOINT_KEYS = ("params", "epoch", "loss_history", "schedules")


def load_checkpoint(path, model) -> RunState:
    """Restore ``model`` from a checkpoint written by :func:`save_checkpoint`; returns the run's state with the
    optimiser's, which ``optimize(..., state=)`` continues from (a call without it starts a new run state on the
    restored model). A file that is not such a checkpoint, or one written for another model (shapes), raises a
    one-line :class:`~phasestem.base.errors.InputFileError` naming it; nothing in it is unpickled but tensors and
    containers."""
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
        run = RunState.from_checkpoint(state.get("run"), model, state.get("optimizer"))
        best_misfit = run.best is not None and state_dict_mismatch(model.state_dict(), run.best[1])
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise InputFileError(f"{path}: {expected}; an entry is malformed "
                             f"({type(exc).__name__}: {first_line(exc)})") from exc
    if best_misfit:
        raise InputFileError(f"{path}: {expected}; its run state's best parameters do not fit ({best_misfit})")
    return run


def reuse_optimizer_state(opt, state: dict, saved_names: list[str], names: list[str]) -> None:
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
