"""The one trainer for every phasestem network (patch, stitching, End2End, autoencoder, Phaseformer).

Usage
-----
::

    from phasestem.learn.trainer import Trainer, TrainerConfig

    def loss_fn(model, batch) -> dict[str, torch.Tensor]:
        pred = model(batch["x"])
        mse = (pred - batch["y"]).square().mean()
        return {"loss": mse, "mse": mse}          # "loss" is optimised; every key is logged

    def metrics_fn(model, batch) -> dict[str, float]:  # validation only, model in eval mode, no grad
        return {"psnr": float(psnr(model(batch["x"]), batch["y"]))}

    trainer = Trainer(model, loss_fn, train_loader, val_loader, metrics_fn=metrics_fn,
                      config=TrainerConfig(epochs=20, lr=3e-4, monitor="val/psnr", monitor_mode="max"),
                      out_dir="runs/patch", meta={"model": {...}, "preprocess": {...}})
    summary = trainer.fit()                 # or trainer.fit(resume=True) / fit(resume="runs/patch/last")

Contract
--------
* ``loss_fn(model, batch) -> dict`` of scalar tensors; must contain ``"loss"`` (what is back-
  propagated). It is called under autocast in train and validation. Batches are moved to the
  trainer's device first (dicts, lists and tuples of tensors are handled recursively).
* ``metrics_fn(model, batch) -> dict`` of floats/0-d tensors, called on validation batches only;
  values are averaged over batches weighted by batch size (``len`` of the first tensor).
* Loaders are ordinary :class:`torch.utils.data.DataLoader` objects. For reproducible resume give
  a shuffling loader a ``generator=torch.Generator()``: the trainer re-seeds it each epoch with
  ``seed + epoch`` (and calls ``sampler.set_epoch`` where present).
* ``callbacks``: objects with any of ``on_fit_start(trainer)``, ``on_epoch_start(trainer, epoch)``,
  ``on_step_end(trainer, logs)``, ``on_epoch_end(trainer, epoch, logs)`` (e.g. freezing schedules).
* ``meta``: a JSON-serialisable dict (model config, preprocessing, target kind …) stored inside
  every saved model file (safetensors metadata key ``"phasestem"``) and as ``meta.json``, so a
  model can be rebuilt and applied from its file alone (:func:`load_weights`).

What it does
------------
AMP (``amp = "bf16" | "fp16" | "auto"``; fp16 with a gradient scaler), gradient clipping (global
norm) and accumulation, AdamW/Adam/SGD with no weight decay on 1-D parameters and optional per-
prefix learning-rate scales, schedules (linear warm-up + cosine to ``min_lr_ratio``, constant, or
one-cycle) stepped per optimizer step, checkpoints, resume that reproduces the next step bit-for-
bit on the same machine (model, optimizer, scheduler, scaler and all RNG states; mid-epoch
checkpoints replay the sampler and skip the batches already seen), best-model selection on
``monitor``, early stopping, a tqdm bar (loss / running average / lr), CSV logs (and TensorBoard
when installed), and data-parallel training through HF Accelerate when launched with
``accelerate launch --multi_gpu`` or ``torchrun`` (or ``accelerate="on"``): each process trains on its
shard of the loader, steps and the schedule count per process, only the first process writes files,
and ``find_unused_parameters=True`` lets parameters that are frozen for a while go without gradients.

Output folder (``out_dir``)::

    last/   model.safetensors (or model.pt), trainer_state.pt, meta.json, checkpoint.json  ← resume from here
    best/   model.safetensors, meta.json                                   ← best on ``monitor``
    epochs.csv, steps.csv, summary.json, tb/ (TensorBoard, if installed)

Reliability
-----------
* **Atomic checkpoints.** ``last/`` and ``best/`` are each written whole under ``<name>.tmp/`` and
  renamed into place; the previous folder is kept until the new one is complete (as ``<name>.prev/``
  for the instant between the two renames, which resume also finds). ``checkpoint.json`` holds the
  step and the sha256 of every file; resume verifies it and refuses a torn or corrupted checkpoint
  (:class:`CheckpointError`) as well as one whose network or data geometry differ from the run's.
* **Finiteness.** The loss (every micro-batch), the gradients (before each optimizer step, unless an
  fp16 scaler is skipping Inf steps by design) and the weights (after each step) are checked; on
  NaN/Inf training stops with :class:`TrainingDivergedError` naming epoch and step, and nothing
  non-finite is ever saved as ``last`` or ``best``: the last good checkpoint stays.
* **Resume semantics.** Weights, optimizer moments, step counters, RNG states and the loader
  position come from the checkpoint; learning rates, weight decay, betas, momentum and the
  schedule come from *this* run's config (YAML, ``--lr``, ``--set``), and each changed setting is
  logged as ``old → new``. ``steps.csv`` rows past the checkpoint's step are dropped.
* **Reproducibility.** Callers seed (:func:`seed_everything`) before building the network, and the
  trainer re-seeds before training, so the same seed, data, config and machine give bit-identical
  losses and weights on the CPU. What may still vary: other machines or library versions (different
  kernels and thread counts), and on GPUs cuDNN's algorithm choice (``benchmark``) and kernels that
  accumulate with atomics (scatter/index_add, some convolution backward passes), whose floating-
  point sums depend on scheduling. For GPU determinism call
  ``torch.use_deterministic_algorithms(True)`` with ``CUBLAS_WORKSPACE_CONFIG=:4096:8`` (slower).
"""
from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import math
import os
import pickle
import random
import shutil
import time
import warnings
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from ..errors import ConfigError, InputFileError, PhasestemError
from ..schedules import lr_lambda

log = logging.getLogger("phasestem.learn")

MANIFEST = "checkpoint.json"  # step, epoch and the sha256 of every file of a checkpoint folder
# meta entries a resumed run must share with its checkpoint (network and data geometry), dotted keys
RESUME_MUST_MATCH = ("model", "network", "data.geometry", "data.target", "data.pattern_shape", "data.preprocess",
                     "pattern_shape", "preprocess")


class CheckpointError(InputFileError):
    """A checkpoint is torn, corrupted or does not fit the run that resumes from it."""


class TrainingDivergedError(PhasestemError, FloatingPointError):
    """The loss, the gradients or the weights became NaN/Inf; the last good checkpoint is kept."""

LossFn = Callable[[torch.nn.Module, Any], Mapping[str, torch.Tensor]]
MetricsFn = Callable[[torch.nn.Module, Any], Mapping[str, Any]]


class TrainerConfig(BaseModel):
    """Optimisation, schedule, precision, checkpointing and logging settings of one training run."""

    model_config = ConfigDict(extra="forbid")

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
def _atomic_path(path: Path) -> Path:
    return path.with_name(path.name + ".tmp")


def save_weights(
    state_dict: Mapping[str, torch.Tensor], path: str | Path, meta: Mapping[str, Any] | None = None
) -> Path:
    """Write a state_dict atomically as safetensors (``.safetensors``) or torch (``.pt``), with ``meta``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    meta_json = json.dumps(meta or {}, default=str)
    tmp = _atomic_path(path)
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file(tensors, str(tmp), metadata={"phasestem": meta_json})
    else:
        torch.save({"state_dict": tensors, "meta": meta_json}, tmp)
    os.replace(tmp, path)
    return path


def load_weights(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    """Read ``(state_dict, meta)`` from a file written by :func:`save_weights` (or a plain state_dict file).

    ``path`` may also be a run folder (``best/`` then ``last/`` are tried) or a checkpoint folder.
    An empty, truncated or foreign file raises :class:`~phasestem.errors.InputFileError` naming it.
    """
    path = resolve_weights_path(path)
    if path.suffix == ".safetensors":
        return read_safetensors(path, map_location)
    obj = torch_load(path, map_location, "PyTorch weights file")
    meta: Any = "{}"
    if isinstance(obj, dict) and "state_dict" in obj:
        obj, meta = obj["state_dict"], obj.get("meta", "{}")
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise InputFileError(f"{path}: expected a state_dict (names → tensors), found {type(obj).__name__}")
    return dict(obj), _parse_meta(meta, path)


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return lines[0] if lines else type(exc).__name__


def _parse_meta(meta: Any, path: Path) -> dict:
    """The ``phasestem`` metadata of a file as a dict in the current schema (older layouts converted)."""
    from .meta import normalize_meta

    if isinstance(meta, Mapping):
        return normalize_meta(dict(meta))
    try:
        out = json.loads(meta)
    except (TypeError, json.JSONDecodeError) as exc:
        raise InputFileError(f"{path}: its 'phasestem' metadata is not valid JSON ({_first_line(exc)})") from exc
    if not isinstance(out, dict):
        raise InputFileError(f"{path}: its 'phasestem' metadata is not a JSON object")
    return normalize_meta(out)


def _require_nonempty(path: Path, what: str) -> None:
    if not path.is_file():
        raise InputFileError(f"{path}: file not found (expected a {what})")
    if path.stat().st_size == 0:
        raise InputFileError(f"{path}: empty file (expected a {what})")


def read_safetensors(path: str | Path, map_location: str | torch.device = "cpu"
                     ) -> tuple[dict[str, torch.Tensor], dict]:
    """``(tensors, phasestem meta)`` of a safetensors file; an empty/truncated one raises InputFileError."""
    from safetensors import safe_open

    path = Path(path)
    _require_nonempty(path, "safetensors weights file")
    try:
        with safe_open(str(path), framework="pt", device=str(map_location)) as f:
            raw = (f.metadata() or {}).get("phasestem", "{}")
            tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except Exception as exc:  # safetensors raises its own SafetensorError (and OSError)
        raise InputFileError(f"{path}: not a readable safetensors file, truncated or corrupted? "
                             f"({_first_line(exc)})") from exc
    return tensors, _parse_meta(raw, path)


def torch_load(path: str | Path, map_location: str | torch.device = "cpu", what: str = "PyTorch file") -> Any:
    """``torch.load(path, weights_only=True)`` (tensors and plain containers only, never code) with one-line errors."""
    path = Path(path)
    _require_nonempty(path, what)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # "pickle protocol 4" notes of the safe unpickler
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise InputFileError(f"{path}: not a {what}: not a torch file, or it holds Python objects other than "
                             "tensors (phasestem loads tensors only and never unpickles code)") from exc
    except Exception as exc:
        raise InputFileError(f"{path}: not a readable {what}, truncated or corrupted? "
                             f"({type(exc).__name__}: {_first_line(exc)})") from exc


def resolve_weights_path(path: str | Path) -> Path:
    """A model file from a file, a checkpoint folder (``model.*``) or a run folder (``best/``, ``last/``)."""
    path = Path(path)
    if path.is_file():
        return path
    if path.is_dir():
        for sub in ("", "best", "last"):
            for name in ("model.safetensors", "model.pt"):
                cand = path / sub / name
                if cand.is_file():
                    return cand
    raise InputFileError(
        f"{path}: no model weights found (expected a .safetensors/.pt file, or a folder holding "
        "model.safetensors, best/model.safetensors or last/model.safetensors)"
    )


# ---------------------------------------------------------------------------------------------
# small helpers
# ---------------------------------------------------------------------------------------------
def seed_everything(seed: int) -> None:
    """Seed python ``random``, numpy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _rng_state() -> dict[str, Any]:
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


def _set_rng_state(state: Mapping[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    pos, has_gauss, cached = state["numpy_meta"]
    np.random.set_state(("MT19937", state["numpy_keys"].numpy().astype(np.uint32), pos, has_gauss, cached))
    py = json.loads(state["python"])
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


def _batch_size(batch: Any) -> int:
    if isinstance(batch, torch.Tensor):
        return int(batch.shape[0]) if batch.dim() else 1
    if isinstance(batch, Mapping):
        for v in batch.values():
            return _batch_size(v)
    if isinstance(batch, list | tuple) and batch:
        return _batch_size(batch[0])
    return 1


def _float(v: Any) -> float:
    return float(v.detach().float().cpu()) if isinstance(v, torch.Tensor) else float(v)


def resolve_device(name: str | torch.device) -> torch.device:
    """``"auto"``: the GPU when there is one, else the CPU; any other name as torch reads it."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _launched_by_accelerate() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1 or any(k.startswith("ACCELERATE_") for k in os.environ)


class _Averager:
    def __init__(self):
        self.sums: dict[str, float] = {}
        self.counts: dict[str, float] = {}

    def add(self, values: Mapping[str, Any], weight: float = 1.0) -> None:
        for k, v in values.items():
            self.sums[k] = self.sums.get(k, 0.0) + _float(v) * weight
            self.counts[k] = self.counts.get(k, 0.0) + weight

    def means(self, prefix: str = "") -> dict[str, float]:
        return {prefix + k: self.sums[k] / max(self.counts[k], 1e-12) for k in self.sums}


# ---------------------------------------------------------------------------------------------
# the trainer
# ---------------------------------------------------------------------------------------------
class Trainer:
    """Train ``model`` by minimising ``loss_fn(model, batch)["loss"]`` (see the module docstring)."""

    def __init__(
        self,
        model: torch.nn.Module,
        loss_fn: LossFn,
        train_loader: Iterable,
        val_loader: Iterable | None = None,
        metrics_fn: MetricsFn | None = None,
        config: TrainerConfig | Mapping[str, Any] | None = None,
        out_dir: str | Path | None = None,
        meta: Mapping[str, Any] | None = None,
        callbacks: Iterable[Any] = (),
        optimizer: torch.optim.Optimizer | None = None,
        find_unused_parameters: bool = False,
    ):
        self.config = config if isinstance(config, TrainerConfig) else TrainerConfig(**(config or {}))
        cfg = self.config
        seed_everything(cfg.seed)
        self.loss_fn = loss_fn
        self.metrics_fn = metrics_fn
        self.train_loader = train_loader
        self.val_loader = val_loader
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.meta = dict(meta or {})
        self.callbacks = list(callbacks)
        self.accelerator = None
        use_acc = cfg.accelerate == "on" or (cfg.accelerate == "auto" and _launched_by_accelerate())
        if use_acc:
            from accelerate import Accelerator
            from accelerate.utils import DistributedDataParallelKwargs

            # find_unused_parameters: parameters frozen for a while (End2End's patch net) get no gradient,
            # which plain DistributedDataParallel treats as an error
            ddp = DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)
            self.accelerator = Accelerator(cpu=cfg.device == "cpu", kwargs_handlers=[ddp])
            self.device = self.accelerator.device
        else:
            self.device = resolve_device(cfg.device)
        self.amp_dtype = self._amp_dtype()
        self.model = model.to(self.device)
        self.optimizer = optimizer or self._build_optimizer()
        if self.accelerator is not None:  # wraps the model for data parallelism and shards the loaders
            prepared = self.accelerator.prepare(self.model, self.optimizer, self.train_loader,
                                                *( [self.val_loader] if self.val_loader is not None else []))
            self.model, self.optimizer, self.train_loader = prepared[:3]
            if self.val_loader is not None:
                self.val_loader = prepared[3]
        self.steps_per_epoch = self._steps_per_epoch()  # of this process's shard
        self.total_steps = cfg.epochs * self.steps_per_epoch
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.scheduler = self._build_scheduler()
        use_scaler = self.amp_dtype == torch.float16 and self.device.type == "cuda"
        self.scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
        # progress state
        self.epoch = 0  # epoch currently running (0-based)
        self.batch_in_epoch = 0  # micro-batches consumed in the current epoch
        self.global_step = 0  # optimizer steps taken
        self.best: float | None = None
        self.best_epoch: int | None = None
        self.bad_epochs = 0
        self.history: list[dict[str, float]] = []
        self.stop_training = False
        self._resume_rng: dict | None = None
        self._last_good: tuple[Path, int] | None = None  # (folder, step) of the newest complete checkpoint
        self._tb = None

    # ---- construction helpers -----------------------------------------------------------
    def _amp_dtype(self) -> torch.dtype | None:
        amp = self.config.amp
        if amp == "auto":
            if self.device.type == "cuda" and torch.cuda.is_bf16_supported():
                return torch.bfloat16
            return None
        return {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[amp]

    def _build_optimizer(self) -> torch.optim.Optimizer:
        cfg = self.config
        groups: dict[tuple[float, bool], list[torch.nn.Parameter]] = {}
        for name, p in self.model.named_parameters():
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

    def _steps_per_epoch(self) -> int:
        try:
            n = len(self.train_loader)  # type: ignore[arg-type]
        except TypeError as exc:
            raise ConfigError("train_loader must have a length (a map-style DataLoader)") from exc
        if n == 0:
            raise ConfigError("train_loader is empty: no training samples (check the data files and the split)")
        return math.ceil(n / self.config.grad_accum)

    def _build_scheduler(self):
        cfg = self.config
        total = max(1, self.total_steps)
        if cfg.schedule == "onecycle":
            pct = cfg.warmup_steps / total if cfg.warmup_steps is not None else max(cfg.warmup_fraction, 1e-3)
            return torch.optim.lr_scheduler.OneCycleLR(
                self.optimizer, max_lr=[g["lr"] for g in self.optimizer.param_groups], total_steps=total + 1,
                pct_start=min(max(pct, 1e-3), 0.99), final_div_factor=1.0 / max(cfg.min_lr_ratio, 1e-6) / 25.0,
            )
        warm = cfg.warmup_steps if cfg.warmup_steps is not None else int(round(cfg.warmup_fraction * total))
        return torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lambda s: lr_lambda(s, total, warm, cfg.schedule, cfg.min_lr_ratio)
        )

    # ---- properties ---------------------------------------------------------------------
    @property
    def is_main(self) -> bool:
        return self.accelerator is None or self.accelerator.is_main_process

    @property
    def unwrapped_model(self) -> torch.nn.Module:
        return self.accelerator.unwrap_model(self.model) if self.accelerator is not None else self.model

    @property
    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def _autocast(self):
        if self.amp_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # ---- one step -----------------------------------------------------------------------
    def _forward(self, batch) -> dict[str, torch.Tensor]:
        with self._autocast():
            out = dict(self.loss_fn(self.model, batch))
        if "loss" not in out:
            raise ConfigError(f"loss_fn must return a dict with a 'loss' entry, got keys {sorted(out)}")
        return out

    def train_micro_batch(self, batch, sync: bool) -> dict[str, torch.Tensor]:
        """Forward/backward one micro-batch; takes an optimizer step when ``sync`` (end of accumulation)."""
        if self.accelerator is None:
            batch = move_to(batch, self.device)
        ctx = contextlib.nullcontext()
        if self.accelerator is not None and not sync:
            ctx = self.accelerator.no_sync(self.model)
        with ctx:
            out = self._forward(batch)
            loss = out["loss"]
            if not torch.isfinite(loss.detach()):
                self._diverged(f"the training loss is {float(loss):g}")
            scaled = loss / self.config.grad_accum
            if self.accelerator is not None:
                self.accelerator.backward(scaled)
            else:
                self.scaler.scale(scaled).backward()
        if sync:
            out["grad_norm"] = self._optimizer_step()
        return out

    def _optimizer_step(self) -> torch.Tensor:
        cfg = self.config
        params = [p for g in self.optimizer.param_groups for p in g["params"] if p.grad is not None]
        if self.accelerator is None:
            self.scaler.unscale_(self.optimizer)
        if cfg.grad_clip is not None and params:
            if self.accelerator is not None:
                norm = self.accelerator.clip_grad_norm_(params, cfg.grad_clip)
            else:
                norm = torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
        elif params:
            norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad) for p in params]))
        else:
            norm = torch.zeros(())
        # an fp16 gradient scaler skips steps with Inf gradients by design; otherwise they are an error
        if not self.scaler.is_enabled() and not bool(torch.isfinite(torch.as_tensor(norm)).all()):
            self.optimizer.zero_grad(set_to_none=True)
            self._diverged(f"the gradients are NaN/Inf (norm {float(norm):g}) before the optimizer step")
        if self.accelerator is None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self._check_finite_params()
        self.scheduler.step()
        self.global_step += 1
        return norm.detach() if isinstance(norm, torch.Tensor) else torch.tensor(float(norm))

    def _check_finite_params(self) -> None:
        params = [p.detach() for g in self.optimizer.param_groups for p in g["params"]]
        if params and not bool(torch.stack([torch.isfinite(p).all() for p in params]).all()):
            self._diverged("the weights became NaN/Inf in the optimizer step")

    # ---- epochs -------------------------------------------------------------------------
    def _seed_loader(self, loader, epoch: int) -> None:
        gen = getattr(loader, "generator", None)
        if isinstance(gen, torch.Generator):
            gen.manual_seed(self.config.seed * 1_000_003 + epoch)
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)

    def train_epoch(self) -> dict[str, float]:
        """One pass over the training loader (resuming mid-epoch when a checkpoint says so)."""
        cfg = self.config
        self.model.train()
        self._seed_loader(self.train_loader, self.epoch)
        skip = self.batch_in_epoch
        if skip == 0 and self._resume_rng is not None:
            _set_rng_state(self._resume_rng)
            self._resume_rng = None
        n_batches = len(self.train_loader)  # type: ignore[arg-type]
        avg = _Averager()
        bar = None
        if cfg.progress and self.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=n_batches, initial=skip, desc=f"epoch {self.epoch + 1}/{cfg.epochs}", leave=False,
                       dynamic_ncols=True)
        it = iter(self.train_loader)
        for _ in range(skip):  # replay the sampler to where the checkpoint was taken
            next(it)
        if self._resume_rng is not None:
            _set_rng_state(self._resume_rng)  # the state captured right after batch `skip`
            self._resume_rng = None
        for i, batch in enumerate(it, start=skip):
            sync = (i + 1) % cfg.grad_accum == 0 or i + 1 == n_batches
            out = self.train_micro_batch(batch, sync)
            avg.add(out, weight=_batch_size(batch))
            self.batch_in_epoch = i + 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{_float(out['loss']):.4g}", avg=f"{avg.means()['loss']:.4g}",
                                lr=f"{self.lr:.2e}")
            if sync:
                logs = {f"train/{k}": _float(v) for k, v in out.items()}
                logs.update(step=self.global_step, epoch=self.epoch + 1, lr=self.lr)
                if self.global_step % cfg.log_every_steps == 0:
                    self._log_step(logs)
                if cfg.checkpoint_every_steps and self.global_step % cfg.checkpoint_every_steps == 0:
                    self.save_checkpoint()
                for cb in self.callbacks:
                    if hasattr(cb, "on_step_end"):
                        cb.on_step_end(self, logs)
                if self.global_step >= self.total_steps:
                    self.stop_training = True
                    break
        if bar is not None:
            bar.close()
        return avg.means("train/")

    @torch.no_grad()
    def evaluate(self, loader: Iterable | None = None) -> dict[str, float]:
        """Mean of ``loss_fn`` outputs and ``metrics_fn`` values over ``loader`` (default: validation)."""
        loader = self.val_loader if loader is None else loader
        if loader is None:
            return {}
        was_training = self.model.training
        self.model.eval()
        avg = _Averager()
        for i, batch in enumerate(loader):
            if self.config.max_val_batches is not None and i >= self.config.max_val_batches:
                break
            if self.accelerator is None:
                batch = move_to(batch, self.device)
            n = _batch_size(batch)
            out = self._forward(batch)
            avg.add(out, weight=n)
            if self.metrics_fn is not None:
                with self._autocast():
                    avg.add(self.metrics_fn(self.model, batch), weight=n)
        self.model.train(was_training)
        means = avg.means("val/")
        if self.accelerator is not None and self.accelerator.num_processes > 1:
            keys = sorted(means)
            t = torch.tensor([means[k] for k in keys], device=self.device)
            t = self.accelerator.reduce(t, reduction="mean")
            means = dict(zip(keys, t.tolist(), strict=True))
        return means

    def fit(self, resume: bool | str | Path | None = None) -> dict[str, Any]:
        """Train for ``config.epochs`` (from a checkpoint when ``resume``); returns a summary dict.

        ``resume=True`` continues from ``out_dir/last`` when it exists; a path names a checkpoint
        folder. The summary holds ``best`` (monitor value), ``best_epoch``, ``epochs_run``,
        ``global_step``, ``history`` and the paths of ``best`` / ``last``.
        """
        cfg = self.config
        if resume:
            if resume is True and self.out_dir is None:
                raise ConfigError("fit(resume=True) needs out_dir (or give the checkpoint folder)")
            path = self.out_dir / "last" if resume is True else Path(str(resume))
            found = checkpoint_folder(path)
            if found is not None:
                self.load_checkpoint(found)
            elif resume is not True:
                raise CheckpointError(f"{path}: checkpoint folder not found")
        if self.global_step == 0 and self.batch_in_epoch == 0 and self._resume_rng is None:
            seed_everything(cfg.seed)  # a fresh run starts from the seed, whatever ran since construction
        if self.out_dir is not None and self.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            self._open_tensorboard()
        for cb in self.callbacks:
            if hasattr(cb, "on_fit_start"):
                cb.on_fit_start(self)
        start = time.perf_counter()
        while self.epoch < cfg.epochs and not self.stop_training:
            for cb in self.callbacks:
                if hasattr(cb, "on_epoch_start"):
                    cb.on_epoch_start(self, self.epoch)
            t0 = time.perf_counter()
            train_logs = self.train_epoch()
            logs: dict[str, float] = {"epoch": self.epoch + 1, "step": self.global_step, "lr": self.lr}
            logs.update(train_logs)
            if self.val_loader is not None and ((self.epoch + 1) % cfg.val_every_epochs == 0 or self.stop_training
                                                or self.epoch + 1 == cfg.epochs):
                logs.update(self.evaluate())
                if not math.isfinite(logs.get("val/loss", 0.0)):
                    self._diverged(f"the validation loss is {logs['val/loss']:g}", in_step=False)
            logs["time_s"] = time.perf_counter() - t0
            self._after_epoch(logs)
            for cb in self.callbacks:
                if hasattr(cb, "on_epoch_end"):
                    cb.on_epoch_end(self, self.epoch, logs)
            self.epoch += 1
            self.batch_in_epoch = 0
            last_epoch = self.epoch >= cfg.epochs or self.stop_training
            if self.out_dir is not None and (last_epoch or (cfg.checkpoint_every_epochs
                                                            and self.epoch % cfg.checkpoint_every_epochs == 0)):
                self.save_checkpoint()
        summary = {
            "best": self.best, "best_epoch": self.best_epoch, "monitor": self._monitor_key(),
            "epochs_run": self.epoch, "global_step": self.global_step, "history": self.history,
            "wall_s": time.perf_counter() - start, "main_process": self.is_main,
        }
        if self.out_dir is not None and self.is_main:
            summary.update(best_path=str(self.out_dir / "best"), last_path=str(self.out_dir / "last"))
            _write_json(self.out_dir / "summary.json", summary)
        if self._tb is not None:
            self._tb.close()
        return summary

    def _monitor_key(self) -> str:
        key = self.config.monitor
        if key.startswith("val/") and self.val_loader is None:
            return "train/" + key[4:]
        return key

    def _after_epoch(self, logs: dict[str, float]) -> None:
        cfg = self.config
        self.history.append(dict(logs))
        key = self._monitor_key()
        value = logs.get(key)
        msg = " ".join(f"{k}={v:.4g}" for k, v in logs.items() if k not in ("epoch", "step"))
        log.info("epoch %d/%d %s", int(logs["epoch"]), cfg.epochs, msg)
        if value is not None and math.isfinite(value):
            better = self.best is None or (
                value < self.best - cfg.early_stop_min_delta if cfg.monitor_mode == "min"
                else value > self.best + cfg.early_stop_min_delta
            )
            if better:
                self.best, self.best_epoch, self.bad_epochs = value, int(logs["epoch"]), 0
                if self.out_dir is not None and self.is_main:
                    self.save_model(self.out_dir / "best")
            else:
                self.bad_epochs += 1
                if cfg.early_stop_patience and self.bad_epochs >= cfg.early_stop_patience:
                    log.info("early stop: %s has not improved for %d epochs", key, self.bad_epochs)
                    self.stop_training = True
        if self.out_dir is not None and self.is_main:
            _write_csv(self.out_dir / "epochs.csv", self.history)
            if self._tb is not None:
                for k, v in logs.items():
                    if k not in ("epoch", "step"):
                        self._tb.add_scalar(k, v, int(logs["epoch"]))

    # ---- logging ------------------------------------------------------------------------
    def _open_tensorboard(self) -> None:
        if not self.config.tensorboard or self._tb is not None:
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except Exception:  # tensorboard not installed
            return
        self._tb = SummaryWriter(str(self.out_dir / "tb"))

    def _log_step(self, logs: dict[str, float]) -> None:
        if self.out_dir is None or not self.is_main:
            return
        path = self.out_dir / "steps.csv"
        new = not path.exists()
        with open(path, "a", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(logs), extrasaction="ignore")
            if new:
                writer.writeheader()
            writer.writerow(logs)
        if self._tb is not None:
            for k, v in logs.items():
                if k not in ("epoch", "step"):
                    self._tb.add_scalar("step/" + k, v, self.global_step)

    # ---- checkpoints --------------------------------------------------------------------
    def _weights_name(self) -> str:
        return "model.safetensors" if self.config.save_format == "safetensors" else "model.pt"

    def save_model(self, folder: str | Path) -> Path:
        """Write the (unwrapped) model weights + meta into ``folder``, as one unit (see :func:`commit_folder`)."""
        folder = Path(folder)
        self.check_finite_weights(f"saving {folder.name}/")
        commit_folder(folder, self._write_model)
        return folder / self._weights_name()

    def _write_model(self, folder: Path) -> list[str]:
        save_weights(self.unwrapped_model.state_dict(), folder / self._weights_name(), self.meta)
        _write_json(folder / "meta.json", self.meta)
        return [self._weights_name(), "meta.json"]

    def save_checkpoint(self, folder: str | Path | None = None) -> Path | None:
        """Write weights + optimizer/scheduler/scaler/RNG/progress state (default ``out_dir/last``).

        The folder is written whole under ``<folder>.tmp`` with a manifest (``checkpoint.json``: step,
        epoch, sha256 of every file) and then renamed into place; the previous checkpoint stays until
        the new one is complete. Non-finite weights are never saved (:class:`TrainingDivergedError`).
        """
        if folder is None:
            if self.out_dir is None:
                return None
            folder = self.out_dir / "last"
        folder = Path(folder)
        if self.accelerator is not None:
            self.accelerator.wait_for_everyone()
        if not self.is_main:
            return folder
        self.check_finite_weights(f"saving {folder.name}/")
        commit_folder(folder, self._write_checkpoint_files)
        self._last_good = (folder, self.global_step)
        return folder

    def _write_checkpoint_files(self, folder: Path) -> list[str]:
        names = self._write_model(folder)
        state = {
            "epoch": self.epoch, "batch_in_epoch": self.batch_in_epoch, "global_step": self.global_step,
            "best": self.best, "best_epoch": self.best_epoch, "bad_epochs": self.bad_epochs,
            "history": json.dumps(self.history), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "rng": _rng_state(),
            "config": self.config.model_dump_json(),
        }
        torch.save(state, folder / "trainer_state.pt")
        names.append("trainer_state.pt")
        manifest = {"format": 1, "global_step": self.global_step, "epoch": self.epoch,
                    "batch_in_epoch": self.batch_in_epoch, "files": {n: _sha256(folder / n) for n in names}}
        _write_json(folder / MANIFEST, manifest)
        return [*names, MANIFEST]

    def load_checkpoint(self, folder: str | Path) -> None:
        """Restore a checkpoint written by :meth:`save_checkpoint`; the next :meth:`fit` continues it.

        The checkpoint is verified against its manifest (a torn or corrupted one raises
        :class:`CheckpointError`) and must fit this run (network, data geometry). Settings of this
        run's config win over the checkpoint's: learning rates, weight decay, betas, momentum and
        the schedule are taken from ``config``, and every changed field is logged (old → new).
        """
        folder = Path(folder)
        state_path = folder / "trainer_state.pt"
        if not state_path.is_file():
            raise CheckpointError(f"{folder}: not a trainer checkpoint (trainer_state.pt missing)")
        manifest = verify_checkpoint(folder)
        weights, meta = load_weights(resolve_weights_path(folder), map_location="cpu")
        self._check_resume_meta(folder, meta)
        state = torch_load(state_path, "cpu", "trainer state (trainer_state.pt)")
        _check_state(state_path, state)
        if manifest is not None and int(state.get("global_step", -1)) != int(manifest["global_step"]):
            raise CheckpointError(f"{folder}: torn checkpoint: trainer_state.pt is at step {state.get('global_step')}, "
                                  f"{MANIFEST} says step {manifest['global_step']}")
        self._load_model_state(folder, weights)
        self._load_optimizer_state(folder, state)
        self.epoch, self.batch_in_epoch = int(state["epoch"]), int(state["batch_in_epoch"])
        self.global_step = int(state["global_step"])
        self.best, self.best_epoch, self.bad_epochs = state["best"], state["best_epoch"], int(state["bad_epochs"])
        self.history = json.loads(state["history"])
        self._resume_rng = state["rng"]
        self._last_good = (folder, self.global_step)
        if self.batch_in_epoch >= len(self.train_loader):  # type: ignore[arg-type]
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        self._truncate_steps_csv()
        log.info("resumed from %s at epoch %d, batch %d, step %d", folder, self.epoch + 1, self.batch_in_epoch,
                 self.global_step)

    def _check_resume_meta(self, folder: Path, meta: Mapping[str, Any]) -> None:
        for key in RESUME_MUST_MATCH:
            old, new = _dotted(meta, key), _dotted(self.meta, key)
            if old is not _MISSING and new is not _MISSING and _jsonable(old) != _jsonable(new):
                key, old, new = _first_difference(key, _jsonable(old), _jsonable(new))
                raise CheckpointError(
                    f"{folder}: checkpoint was trained with a different {key} ({_short(old)}; this run: "
                    f"{_short(new)}); resume with the config it was trained with, or use a new out_dir")

    def _load_model_state(self, folder: Path, weights: Mapping[str, torch.Tensor]) -> None:
        problem = state_dict_mismatch(self.unwrapped_model.state_dict(), weights)
        if problem:
            raise CheckpointError(f"{folder}: the checkpoint's weights do not fit this run's network ({problem}); "
                                  "resume with the config it was trained with, or use a new out_dir")
        self.unwrapped_model.load_state_dict(weights)

    def _load_optimizer_state(self, folder: Path, state: Mapping[str, Any]) -> None:
        """Optimizer moments and the step count from ``state``; rates and schedule from this run's config."""
        fresh = [{k: v for k, v in g.items() if k != "params"} for g in self.optimizer.param_groups]
        try:
            self.optimizer.load_state_dict(state["optimizer"])
            self.scaler.load_state_dict(state["scaler"])
        except (ValueError, KeyError, RuntimeError) as exc:
            raise CheckpointError(f"{folder}: the checkpoint's optimizer state does not fit this run "
                                  f"({_first_line(exc)}); keep trainer.optimizer and trainer.lr_scale as they "
                                  "were, or use a new out_dir") from exc
        for group, settings in zip(self.optimizer.param_groups, fresh, strict=True):
            group.update(settings)  # the config's lr, weight decay, betas … win over the checkpoint's
        self.scheduler.last_epoch = int(state["scheduler"]["last_epoch"])
        self.scheduler._step_count = int(state["scheduler"].get("_step_count", self.scheduler.last_epoch + 1))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)  # get_lr outside step(): intended here
            try:
                lrs = self.scheduler.get_lr()
            except ValueError:  # one-cycle past its (new, shorter) end
                lrs = [g["lr"] for g in self.optimizer.param_groups]
        for group, lr in zip(self.optimizer.param_groups, lrs, strict=True):
            group["lr"] = lr
        self.scheduler._last_lr = list(lrs)
        self._log_config_changes(folder, state.get("config"))

    def _log_config_changes(self, folder: Path, old_json: str | None) -> None:
        if not old_json:
            return
        old = json.loads(old_json)
        new = self.config.model_dump(mode="json")
        changed = [f"trainer.{k}: {_short(old.get(k))} → {_short(v)}" for k, v in new.items()
                   if k in old and old[k] != v]
        if changed:
            log.info("resume from %s with changed settings (this run's values are used): %s", folder,
                     "; ".join(changed))

    def _truncate_steps_csv(self) -> None:
        """Drop ``steps.csv`` rows past the checkpoint's step, so a resumed run does not log a step twice."""
        if self.out_dir is None or not self.is_main:
            return
        path = self.out_dir / "steps.csv"
        if not path.is_file():
            return
        with open(path, newline="") as fh:
            reader = csv.DictReader(fh)
            fields = list(reader.fieldnames or [])
            rows = [r for r in reader if _step_of(r) <= self.global_step]
        _write_csv(path, rows, fields)

    # ---- finiteness ---------------------------------------------------------------------
    def check_finite_weights(self, when: str = "") -> None:
        """Raise :class:`TrainingDivergedError` when any parameter or buffer is NaN/Inf."""
        tensors = [t for t in self.unwrapped_model.state_dict().values() if t.is_floating_point() or t.is_complex()]
        if tensors and not bool(torch.stack([torch.isfinite(t).all() for t in tensors]).all()):
            bad = next(n for n, t in self.unwrapped_model.state_dict().items()
                       if (t.is_floating_point() or t.is_complex()) and not bool(torch.isfinite(t).all()))
            self._diverged(f"weights are NaN/Inf (first: {bad})" + (f" when {when}" if when else ""), in_step=False)

    def _diverged(self, what: str, in_step: bool = True) -> None:
        cfg = self.config
        step = self.global_step + 1 if in_step else self.global_step
        if self._last_good is not None:
            kept = f"the last good checkpoint is kept in {self._last_good[0]} (step {self._last_good[1]})"
            again = "then --resume"
        else:
            kept, again = "no checkpoint was written yet", "then run again"
        if cfg.grad_clip is not None:
            clip, advice = f"grad_clip {cfg.grad_clip:g}", "lower trainer.lr or trainer.grad_clip"
        else:
            clip, advice = "no grad_clip", "lower trainer.lr or set trainer.grad_clip (e.g. 1.0)"
        raise TrainingDivergedError(
            f"training diverged at epoch {self.epoch + 1}, step {step}: {what} (lr {self.lr:g}, {clip}); "
            f"{kept}; {advice}, check the inputs, {again}")


def state_dict_mismatch(own: Mapping[str, torch.Tensor], other: Mapping[str, torch.Tensor]) -> str:
    """'' when ``other`` fits ``own`` (same names and shapes), else a short description of the first differences."""
    shapes = [f"{k}: {tuple(other[k].shape)} vs {tuple(v.shape)} here" for k, v in own.items()
              if k in other and tuple(other[k].shape) != tuple(v.shape)]
    missing = [k for k in own if k not in other]
    extra = [k for k in other if k not in own]
    parts = []
    for label, items in (("shape", shapes), ("missing", missing), ("unexpected", extra)):
        if items:
            parts.append(f"{len(items)} {label}, e.g. {items[0]}")
    return "; ".join(parts)


_MISSING = object()
_STATE_KEYS = ("epoch", "batch_in_epoch", "global_step", "best", "best_epoch", "bad_epochs", "history", "optimizer",
               "scheduler", "scaler", "rng")


def _check_state(path: Path, state: Any) -> None:
    missing = [k for k in _STATE_KEYS if not isinstance(state, Mapping) or k not in state]
    if missing or not isinstance(state["scheduler"], Mapping) or "last_epoch" not in state["scheduler"]:
        raise CheckpointError(f"{path}: not a phasestem trainer state (missing {', '.join(missing) or 'scheduler'})")


def _dotted(meta: Mapping[str, Any], key: str) -> Any:
    value: Any = meta
    for part in key.split("."):
        if not isinstance(value, Mapping) or part not in value:
            return _MISSING
        value = value[part]
    return value


def _first_difference(key: str, old: Any, new: Any) -> tuple[str, Any, Any]:
    """The first dotted key below ``key`` where two JSON values differ, with both values there."""
    if isinstance(old, dict) and isinstance(new, dict):
        for k in [*old, *(k for k in new if k not in old)]:
            a, b = old.get(k, _MISSING), new.get(k, _MISSING)
            if a != b:
                if a is _MISSING or b is _MISSING:
                    return f"{key}.{k}", "absent" if a is _MISSING else a, "absent" if b is _MISSING else b
                return _first_difference(f"{key}.{k}", a, b)
    return key, old, new


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _short(value: Any, limit: int = 120) -> str:
    text = json.dumps(_jsonable(value)) if not isinstance(value, str) else value
    return text if len(text) <= limit else text[:limit] + "…"


def _step_of(row: Mapping[str, str]) -> float:
    try:
        return float(row.get("step") or 0)
    except ValueError:
        return 0.0


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    """Flush a file (or, on POSIX, a folder's entries) to disk; best effort."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def commit_folder(folder: str | Path, write: Callable[[Path], Iterable[str]]) -> Path:
    """Replace ``folder`` by what ``write(tmp)`` puts in a fresh ``<folder>.tmp``, as one unit.

    The new folder is complete and on disk before it is renamed into place; the old one is moved
    to ``<folder>.prev`` first and removed after. A kill at any point leaves either the old or the
    new folder complete (``<folder>.prev`` when it struck between the two renames; resume finds it).
    """
    folder = Path(folder)
    tmp, prev = folder.with_name(folder.name + ".tmp"), folder.with_name(folder.name + ".prev")
    folder.parent.mkdir(parents=True, exist_ok=True)
    if tmp.exists():  # a write killed earlier: our own namespace
        shutil.rmtree(tmp)
    tmp.mkdir()
    for name in write(tmp):
        _fsync(tmp / name)
    _fsync(tmp)
    if folder.exists():
        if prev.exists():
            shutil.rmtree(prev)
        os.replace(folder, prev)
    os.replace(tmp, folder)
    _fsync(folder.parent)
    if prev.exists():
        shutil.rmtree(prev, ignore_errors=True)
    return folder


def checkpoint_folder(folder: str | Path) -> Path | None:
    """``folder``, or ``<folder>.prev`` when a kill struck between the two renames of :func:`commit_folder`."""
    folder = Path(folder)
    if folder.is_dir():
        return folder
    prev = folder.with_name(folder.name + ".prev")
    if (prev / "trainer_state.pt").is_file():
        log.warning("%s is missing; resuming from the complete previous checkpoint %s", folder, prev)
        return prev
    return None


def verify_checkpoint(folder: str | Path) -> dict | None:
    """Check every file of a checkpoint against its manifest; the manifest, or None for an older checkpoint."""
    folder = Path(folder)
    path = folder / MANIFEST
    if not path.is_file():
        log.warning("%s has no %s (written by an older phasestem): cannot verify that it is complete", folder,
                    MANIFEST)
        return None
    try:
        manifest = json.loads(path.read_text())
        files = dict(manifest["files"])
        int(manifest["global_step"])
    except (ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{folder / MANIFEST}: unreadable checkpoint manifest ({_first_line(exc)})") from exc
    for name, digest in files.items():
        if not (folder / name).is_file():
            raise CheckpointError(f"{folder}: incomplete checkpoint: {name} is missing (listed in {MANIFEST}, step "
                                  f"{manifest['global_step']}); resume from an intact copy or start a new out_dir")
        if _sha256(folder / name) != digest:
            raise CheckpointError(f"{folder}: torn or corrupted checkpoint: {name} does not match the sha256 in "
                                  f"{MANIFEST} (step {manifest['global_step']}); resume from an intact copy or "
                                  "start a new out_dir")
    return manifest


def _write_json(path: Path, obj: Any) -> None:
    tmp = _atomic_path(path)
    tmp.write_text(json.dumps(obj, indent=2, default=str))
    os.replace(tmp, path)


def _write_csv(path: Path, rows: list[dict[str, float]], fields: list[str] | None = None) -> None:
    """Write ``rows`` atomically; columns ``fields`` first (in their order), then any others the rows have."""
    keys: list[str] = list(fields or [])
    for r in rows:
        keys.extend(k for k in r if k not in keys)
    tmp = _atomic_path(path)
    with open(tmp, "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)
    os.replace(tmp, path)
