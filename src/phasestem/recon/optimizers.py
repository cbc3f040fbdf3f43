"""The solvers of the engine (lsq, adam, sgd, lbfgs), the learning-rate decay and the gradient sum over ranks.

SGD, Adam and :class:`RowAdam` are written here rather than taken from :mod:`torch.optim`: the first use of any
``torch.optim.Optimizer`` method imports ``torch._dynamo`` (torch wraps them in ``_disable_dynamo``), 1.9 s of every
reconstruction's first epoch on a 2-core CPU. They take the same steps as torch's (checked in the tests) and keep
torch's ``state_dict`` layout, so the checkpoints of earlier versions (torch's optimisers) go on with them. L-BFGS
stays torch's.
"""
from __future__ import annotations

import torch

from ..base.errors import ConfigError, PhasestemError
from ..base.schedules import lr_lambda
from .precondition import PRECONDITIONED

#: optimiser state entries of the parameter's own shape
_LIKE_PARAMETER = ("exp_avg", "exp_avg_sq", "momentum_buffer")


class Stepper:
    """What the engine uses of an optimiser (``param_groups``, ``state``, ``zero_grad``, ``step``, ``state_dict``,
    ``load_state_dict``), without :mod:`torch.optim`. ``groups``, as torch takes them: tensors (one group), or dicts
    with ``params`` (a list of tensors) and any of the ``defaults`` to override (``lr``, …, and the engine's
    ``name``)."""

    def __init__(self, groups: list[dict] | list[torch.Tensor], defaults: dict):
        groups = list(groups)
        if groups and isinstance(groups[0], torch.Tensor):
            groups = [{"params": groups}]
        self.defaults = dict(defaults)
        self.param_groups = [{**self.defaults, **g, "params": list(g["params"])} for g in groups]
        self.state: dict[torch.Tensor, dict] = {}

    def _params(self) -> list[torch.Tensor]:
        return [p for g in self.param_groups for p in g["params"]]

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self._params():
            if p.grad is None:
                continue
            if set_to_none:
                p.grad = None
            else:
                p.grad.detach_().zero_()

    def step(self, closure=None) -> None:
        with torch.no_grad():
            for group in self.param_groups:
                for p in group["params"]:
                    if p.grad is not None:
                        self._update(p, p.grad, group, self.state.setdefault(p, {}))

    def _update(self, p: torch.Tensor, grad: torch.Tensor, group: dict, state: dict) -> None:
        raise NotImplementedError

    def state_dict(self) -> dict:
        """torch's layout: ``state`` keyed by the parameter's index over all groups, ``param_groups`` with the
        indices in ``params``."""
        index = {id(p): i for i, p in enumerate(self._params())}
        groups = [{**{k: v for k, v in g.items() if k != "params"}, "params": [index[id(p)] for p in g["params"]]}
                  for g in self.param_groups]
        state = {index[id(p)]: dict(st) for p, st in self.state.items() if st}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict) -> None:
        """Take a state of :meth:`state_dict`'s (or torch's) layout; ValueError when it holds other groups or
        parameters of other shapes."""
        groups = state_dict["param_groups"]
        if len(groups) != len(self.param_groups) or any(
                len(g["params"]) != len(own["params"]) for g, own in zip(groups, self.param_groups, strict=True)):
            raise ValueError("the saved optimizer state holds other parameter groups than this optimizer")
        by_index = {}
        for g, own in zip(groups, self.param_groups, strict=True):
            by_index.update(zip(g["params"], own["params"], strict=True))
            own.update({k: v for k, v in g.items() if k not in ("params", "name")})
        new: dict[torch.Tensor, dict] = {}
        for i, st in state_dict["state"].items():
            p = by_index[int(i)]
            moved = {}
            for k, v in st.items():
                if isinstance(v, torch.Tensor) and k != "step":  # torch keeps the step count where it was
                    if k in _LIKE_PARAMETER and v.shape != p.shape:
                        raise ValueError(f"the saved optimizer state's {k} has shape {tuple(v.shape)}, the "
                                         f"parameter {tuple(p.shape)}")
                    v = v.to(device=p.device, dtype=p.dtype if v.is_floating_point() else v.dtype)
                moved[k] = v
            new[p] = moved
        self.state = new


class SGD(Stepper):
    """Plain gradient steps, with heavy-ball momentum when ``momentum`` > 0 (torch's SGD without dampening)."""

    def __init__(self, groups: list[dict] | list[torch.Tensor], lr: float = 1e-3, momentum: float = 0.0):
        super().__init__(groups, {"lr": lr, "momentum": momentum})

    def _update(self, p, grad, group, state) -> None:
        if group["momentum"]:
            buf = state.get("momentum_buffer")
            if buf is None:
                buf = state["momentum_buffer"] = grad.detach().clone()
            else:
                buf.mul_(group["momentum"]).add_(grad)
            grad = buf
        p.add_(grad, alpha=-group["lr"])


class Adam(Stepper):
    """Adam (Kingma & Ba), the step of ``torch.optim.Adam`` with its defaults (no weight decay, no AMSGrad)."""

    def __init__(self, groups: list[dict] | list[torch.Tensor], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        super().__init__(groups, {"lr": lr, "betas": betas, "eps": eps})

    def _update(self, p, grad, group, state) -> None:
        if not state:
            state["step"] = torch.zeros((), dtype=torch.float32)
            state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
        b1, b2 = group["betas"]
        m, v = state["exp_avg"], state["exp_avg_sq"]
        if p.is_complex():  # the real and imaginary parts as two real numbers, as torch does
            p, grad, m, v = (torch.view_as_real(x) for x in (p, grad, m, v))
        state["step"] += 1
        t = float(state["step"])
        m.lerp_(grad, 1 - b1)
        v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        denom = (v.sqrt() / (1 - b2**t) ** 0.5).add_(group["eps"])
        p.addcdiv_(m, denom, value=-(group["lr"] / (1 - b1**t)))


class Composite:
    """Two optimisers stepped as one: SGD on preconditioned object/probe gradients and Adam for the rest (``lsq``)."""

    def __init__(self, parts: list[Stepper]):
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


class RowAdam(Stepper):
    """Adam for a parameter with one row per scan position (N, …): a row moves, and its moments and step count
    advance, only in the steps where it has a gradient (its position is in the mini-batch). Plain Adam's momentum
    carries every row along on every mini-batch of the epoch, whether or not its pattern was seen."""

    def __init__(self, groups: list[dict] | list[torch.Tensor], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        super().__init__(groups, {"lr": lr, "betas": betas, "eps": eps})

    def _update(self, p, g, group, state) -> None:
        b1, b2 = group["betas"]
        rows = g.reshape(g.shape[0], -1).ne(0).any(1)
        if not bool(rows.any()):
            return
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
        parts: list[Stepper] = [SGD(groups(scaled))] if scaled else []
        if rest:
            parts.append(Adam(groups(rest)))
        if rows:
            parts.append(RowAdam(groups(rows)))
        return parts[0] if kind == "adam" and len(parts) == 1 else Composite(parts)
    if kind == "sgd":
        return SGD(groups(names), momentum=momentum)
    if kind == "lbfgs":
        opts = {"lr": 1.0, "max_iter": 4, "history_size": 10, "line_search_fn": "strong_wolfe"}
        opts.update(lbfgs_options)
        return torch.optim.LBFGS([params[n] for n in names], **opts)
    raise PhasestemError(f"optimizer must be 'lsq', 'adam', 'sgd' or 'lbfgs', got {kind!r}")


def decay_factor(kind: str, step: int, n_steps: int, final: float, span: int | None = None) -> float:
    """Learning-rate factor of epoch ``step`` (0-based) of ``n_steps``: 'none' → 1; 'cosine' → 1 … ``final`` at
    the last epoch, or at epoch ``span`` − 1 when ``span`` is shorter than the run (the training schedule's shape,
    :func:`phasestem.base.schedules.lr_lambda`), ``final`` held after it (the engine ends a run with ``lr_decay:
    auto``'s span there)."""
    if kind not in ("none", "cosine"):
        raise PhasestemError(f"run.lr_decay must be 'none' or 'cosine', got {kind!r}")
    n = min(n_steps, span) if span else n_steps
    if kind == "none" or n <= 1:
        return 1.0
    return lr_lambda(min(step, n - 1), n - 1, 0, "cosine", final)


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
