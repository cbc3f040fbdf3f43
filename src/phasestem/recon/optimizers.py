"""The solvers of the engine (lsq, adam, sgd, lbfgs), the learning-rate decay and the gradient sum over ranks."""
from __future__ import annotations

import torch

from ..errors import ConfigError, PhasestemError
from ..schedules import lr_lambda
from .precondition import PRECONDITIONED


class Composite:
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


def clear_moments(opt) -> None:
    """Forget the optimiser's per-parameter state (Adam's moments, SGD's momentum), of either part of ``lsq``."""
    for part in getattr(opt, "parts", [opt]):
        part.state.clear()


def build_optimizer(kind: str, model, names: list[str], lr_scale: float, momentum: float, lbfgs_options: dict):
    """The ``kind`` solver (lsq, adam, sgd, lbfgs) over the parameters ``names``, one group per parameter at its
    schedule's learning rate × ``lr_scale``."""
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
        return Composite(parts)
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


def rank_and_world() -> tuple[int, int]:
    """(rank, world size) of an initialised process group; (0, 1) without one."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def refuse_lbfgs(optimizer: str, world: int) -> None:
    """L-BFGS needs the whole loss in every line search; with several processes each sees only its share."""
    if optimizer == "lbfgs" and world > 1:
        raise ConfigError(f"run.optimizer: lbfgs cannot run in {world} processes (each line search would see only "
                          "its process's share of the loss); use lsq, adam or sgd, or run.n_processes: 1")


def all_reduce_grads(opt) -> None:
    """Sum gradients over ranks (a missing gradient of an active parameter counts as zero)."""
    for group in opt.param_groups:
        for p in group["params"]:
            if not p.requires_grad:  # outside its schedule this epoch: no gradient, no step
                continue
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            torch.distributed.all_reduce(p.grad)
