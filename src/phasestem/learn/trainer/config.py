"""The trainer's settings (:class:`TrainerConfig`) and the small helpers it runs on: seeding and RNG state, devices,
batches, averaging, optimizer and schedule construction."""
from __future__ import annotations

import json
import logging
import math
import os
import random
from collections.abc import Callable, Mapping
from typing import Any, Literal

import numpy as np
import torch
from pydantic import Field

from ...base.configfile import StrictModel, loads_json
from ...base.errors import ConfigError, PhasestemError
from ...base.runtime import resolve_device  # noqa: F401  (re-exported: learn.trainer)
from ...base.schedules import lr_lambda

log = logging.getLogger("phasestem.learn")

class TrainingDivergedError(PhasestemError, FloatingPointError):
    """The loss, the gradients or the weights became NaN/Inf; the last good checkpoint is kept."""

LossFn = Callable[[torch.nn.Module, Any], Mapping[str, torch.Tensor]]
MetricsFn = Callable[[torch.nn.Module, Any], Mapping[str, Any]]


class TrainerConfig(StrictModel):
    """Optimisation, schedule, precision, checkpointing and logging settings of one training run."""

    epochs: int = Field(10, ge=1, description="number of passes over the training loader")
    max_steps: int | None = Field(None, ge=1, description="stop after this many optimizer steps (None: no cap)")
    lr: float = Field(1e-3, gt=0, description="peak learning rate")
    weight_decay: float = Field(0.01, ge=0, description="decoupled weight decay (not applied to 1-D parameters)")
    optimizer: Literal["adamw", "adam", "sgd"] = Field("adamw", description="optimizer")
    betas: tuple[float, float] = Field((0.9, 0.999), description="Adam(W) betas")
    momentum: float = Field(0.9, ge=0, description="SGD momentum")
    lr_scale: dict[str, float] = Field(
        default_factory=dict,
        description="learning-rate multipliers by parameter-name prefix, e.g. {'cnn': 0.1} for a pretrained trunk",
    )
    schedule: Literal["cosine", "constant", "onecycle"] = Field(
        "cosine", description="learning-rate schedule over optimizer steps (warm-up first for cosine/constant)"
    )
    warmup_steps: int | None = Field(None, ge=0, description="linear warm-up steps (overrides warmup_fraction)")
    warmup_fraction: float = Field(0.05, ge=0, le=1, description="warm-up length as a fraction of all steps")
    min_lr_ratio: float = Field(0.01, ge=0, le=1, description="final lr of the cosine schedule / peak lr")
    grad_clip: float | None = Field(1.0, gt=0, description="clip the global gradient norm to this (None: off)")
    grad_accum: int = Field(1, ge=1, description="micro-batches accumulated per optimizer step")
    amp: Literal["off", "bf16", "fp16", "auto"] = Field(
        "off", description="mixed precision; 'auto' = bf16 on a GPU that supports it, else off"
    )
    device: str = Field("auto", description="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1' …")
    seed: int = Field(0, description="seed of torch, numpy, random and the loader shuffling")
    checkpoint_every_epochs: int = Field(1, ge=0, description="write last/ every N epochs (0: only at the end)")
    checkpoint_every_steps: int = Field(0, ge=0, description="also write last/ every N optimizer steps (0: off)")
    save_format: Literal["safetensors", "pt"] = Field("safetensors", description="model weight file format")
    monitor: str = Field("val/loss", description="logged value that selects the best model, e.g. 'val/psnr'")
    monitor_mode: Literal["min", "max"] = Field("min", description="whether smaller or larger monitor is better")
    early_stop_patience: int = Field(0, ge=0, description="stop after N epochs without improvement (0: off)")
    early_stop_min_delta: float = Field(0.0, ge=0, description="smallest change that counts as improvement")
    val_every_epochs: int = Field(1, ge=1, description="validate every N epochs")
    max_val_batches: int | None = Field(None, ge=1, description="validate on at most this many batches")
    log_every_steps: int = Field(10, ge=1, description="write a steps.csv row every N optimizer steps")
    tensorboard: bool = Field(True, description="also log to TensorBoard when it is installed")
    progress: bool = Field(True, description="show a tqdm progress bar")
    accelerate: Literal["auto", "on", "off"] = Field(
        "auto", description="HF Accelerate data parallelism: 'auto' = when launched by `accelerate launch`"
    )


# ---------------------------------------------------------------------------------------------
# weights files
# ---------------------------------------------------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    """The random generators' states (torch, NumPy, Python; CUDA where there is one), for a checkpoint."""
    np_state = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy_keys": torch.from_numpy(np_state[1].astype(np.int64)),
        "numpy_meta": [int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": json.dumps(random.getstate()),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Set the random generators to a :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    pos, has_gauss, cached = state["numpy_meta"]
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    py = loads_json(state["python"], "trainer state: python RNG state")
    random.setstate((py[0], tuple(py[1]), py[2]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def move_to(batch: Any, device: torch.device) -> Any:
    """Move tensors in (nested) dicts / lists / tuples to ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=True)
    if isinstance(batch, Mapping):
        return {k: move_to(v, device) for k, v in batch.items()}
    if isinstance(batch, list | tuple):
        return type(batch)(move_to(v, device) for v in batch)
    return batch


def batch_size_of(batch: Any) -> int:
    """The number of samples in a batch (a tensor, or a tuple/mapping of them)."""
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    if isinstance(batch, Mapping):
        for v in batch.values():
            return batch_size_of(v)
    if isinstance(batch, list | tuple) and batch:
        return batch_size_of(batch[0])
    return 1


def as_float(v: Any) -> float:
    """A tensor's or number's value as a Python float."""
    return float(v.detach().float().cpu()) if isinstance(v, torch.Tensor) else float(v)


def launched_by_accelerate() -> bool:
    """Whether this process was started by Accelerate or torchrun (several processes)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 or any(k.startswith("ACCELERATE_") for k in os.environ)


class Averager:
    """Running means of an epoch's scalars by name."""

    def __init__(self):
        self.sums: dict[str, float] = {}
        self.counts: dict[str, float] = {}

    def add(self, values: Mapping[str, Any], weight: float = 1.0) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + as_float(v) * weight
            self.counts[k] = self.counts.get(k, 0.0) + weight

    def means(self, prefix: str = "") -> dict[str, float]:
        return {prefix + k: self.sums[k] / max(self.counts[k], 1e-12) for k in self.sums}


def amp_dtype(amp: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``TrainerConfig.amp`` on ``device`` (None: full precision)."""
    if amp == "auto":
        if device.type == "cuda" and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return None
    return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]


def build_optimizer(model: torch.nn.Module, cfg: TrainerConfig) -> torch.optim.Optimizer:
    """AdamW / Adam / SGD; no weight decay on 1-D parameters; ``lr_scale`` per name prefix."""
    groups: dict[tuple[float, bool], list[torch.nn.Parameter]] = {}
    for name, p in model.named_parameters():
        scale = 1.0
        for prefix, s in cfg.lr_scale.items():
            if name.startswith(prefix):
                scale = s
        decay = p.dim() > 1
        groups.setdefault((scale, decay), []).append(p)
    param_groups = [
        {"params": ps, "lr": cfg.lr * scale, "weight_decay": cfg.weight_decay if decay else 0.0}
        for (scale, decay), ps in groups.items()
    ]
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(param_groups, lr=cfg.lr, betas=cfg.betas)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(param_groups, lr=cfg.lr, betas=cfg.betas)
    return torch.optim.SGD(param_groups, lr=cfg.lr, momentum=cfg.momentum)


def steps_per_epoch(train_loader: Any, grad_accum: int) -> int:
    """Optimizer steps per epoch of a map-style loader (of this process's shard)."""
    try:
        n = len(train_loader)
    except TypeError as exc:
        raise ConfigError("train_loader must have a length (a map-style DataLoader)") from exc
    if n == 0:
        raise ConfigError("train_loader is empty: no training samples (check the data files and the split)")
    return math.ceil(n / grad_accum)


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainerConfig, total_steps: int):
    """Warm-up + cosine / constant (LambdaLR) or one-cycle, stepped per optimizer step."""
    total = max(1, total_steps)
    if cfg.schedule == "onecycle":
        pct = cfg.warmup_steps / total if cfg.warmup_steps is not None else max(cfg.warmup_fraction, 1e-3)
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer, max_lr=[g["lr"] for g in optimizer.param_groups], total_steps=total + 1,
            pct_start=min(max(pct, 1e-3), 0.99), final_div_factor=1.0 / max(cfg.min_lr_ratio, 1e-6) / 25.0,
        )
    warm = cfg.warmup_steps if cfg.warmup_steps is not None else int(round(cfg.warmup_fraction * total))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_lambda(s, total, warm, cfg.schedule, cfg.min_lr_ratio)
    )


def seed_loader(loader: Any, seed: int, epoch: int) -> None:
    """Re-seed a loader's generator (and ``set_epoch`` its sampler) so epoch ``epoch`` shuffles reproducibly."""
    gen = getattr(loader, "generator", None)
    if isinstance(gen, torch.Generator):
        gen.manual_seed(seed * 1_000_003 + epoch)
    sampler = getattr(loader, "sampler", None)
    if hasattr(sampler, "set_epoch"):
        sampler.set_epoch(epoch)
    if hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
