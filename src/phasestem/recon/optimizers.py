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


#: parameters with one row per scan position: stepped by :class:`RowAdam`
PER_POSITION = ("positions",)


class RowAdam(torch.optim.Optimizer):
    """Adam for a parameter with one row per scan position (N, …): a row moves, and its moments and step count
    advance, only in the steps where it has a gradient (its position is in the mini-batch). Plain Adam's momentum
    carries every row along on every mini-batch of the epoch, whether or not its pattern was seen."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8):
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            b1, b2 = group["betas"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                g = p.grad
                rows = g.reshape(g.shape[0], -1).ne(0).any(1)
                if not bool(rows.any()):
                    continue
                state = self.state[p]
                if not state:
                    state["exp_avg"], state["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
                    state["steps"] = torch.zeros(p.shape[0], dtype=p.dtype, device=p.device)
                m, v, t = state["exp_avg"], state["exp_avg_sq"], state["steps"]
                t[rows] += 1
                m[rows] = b1 * m[rows] + (1 - b1) * g[rows]
                v[rows] = b2 * v[rows] + (1 - b2) * g[rows] ** 2
                shape = (-1,) + (1,) * (p.dim() - 1)
                m_hat = m[rows] / (1 - b1 ** t[rows]).view(shape)
                v_hat = v[rows] / (1 - b2 ** t[rows]).view(shape)
                p[rows] -= group["lr"] * m_hat / (v_hat.sqrt() + group["eps"])
        return None


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

    rows = [n for n in names if n in PER_POSITION]
    if kind in ("adam", "lsq"):  # per-position parameters: a position moves when its pattern is in the batch
        scaled = [n for n in names if n in PRECONDITIONED] if kind == "lsq" else []
        rest = [n for n in names if n not in scaled and n not in rows]
        parts = [torch.optim.SGD(groups(scaled), momentum=0.0)] if scaled else []
        if rest:
            parts.append(torch.optim.Adam(groups(rest)))
        if rows:
            parts.append(RowAdam(groups(rows)))
        return parts[0] if kind == "adam" and len(parts) == 1 else Composite(parts)
    if kind == "sgd":
        return torch.optim.SGD(groups(names), momentum=momentum)
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
