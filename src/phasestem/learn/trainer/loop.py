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
* ``callbacks``: objects with any of ``on_start(trainer)``, ``on_epoch_start(trainer, epoch)``, ``on_step_end(trainer,
  logs)``, ``on_epoch_end(trainer, epoch, logs)``, ``on_end(trainer, summary)``: the engine's names where they meet.
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

Run folder, checkpoints and resume: :mod:`.trainer_state`; weight files: :mod:`.checkpoint`;
configuration and helpers: :mod:`.trainer_config`.
"""
from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from ...base.errors import ConfigError
from ...base.extras import require
from ...base.schedules import lr_lambda
from .checkpoint import (
    CheckpointError,
    checkpoint_folder,
    commit_folder,
    load_weights,
    read_safetensors,
    resolve_weights_path,
    save_weights,
    state_dict_mismatch,
    torch_load,
    verify_checkpoint,
    write_json,
)
from .config import (
    Averager,
    LossFn,
    MetricsFn,
    TrainerConfig,
    TrainingDivergedError,
    amp_dtype,
    as_float,
    batch_size_of,
    build_optimizer,
    build_scheduler,
    launched_by_accelerate,
    move_to,
    resolve_device,
    restore_rng_state,
    seed_everything,
    seed_loader,
    steps_per_epoch,
)
from .state import RunFolderMixin, holding_out_dir

#: the names other modules (and users' scripts) import from here, wherever they are defined
__all__ = ["Trainer", "TrainerConfig", "TrainingDivergedError", "CheckpointError", "save_weights", "load_weights",
           "read_safetensors", "torch_load", "resolve_weights_path", "state_dict_mismatch", "commit_folder",
           "checkpoint_folder", "verify_checkpoint", "seed_everything", "move_to", "resolve_device", "lr_lambda"]

log = logging.getLogger("phasestem.learn")

class Trainer(RunFolderMixin):
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
        use_acc = cfg.accelerate == "on" or (cfg.accelerate == "auto" and launched_by_accelerate())
        if use_acc:
            acc = require("accelerate", f"train.accelerate: {cfg.accelerate}")
            # find_unused_parameters: parameters frozen for a while (End2End's patch net) get no gradient,
            # which plain DistributedDataParallel treats as an error
            ddp = acc.DistributedDataParallelKwargs(find_unused_parameters=find_unused_parameters)
            self.accelerator = acc.Accelerator(cpu=cfg.device == "cpu", kwargs_handlers=[ddp])
            self.device = self.accelerator.device
        else:
            self.device = resolve_device(cfg.device)
        self.amp_dtype = amp_dtype(cfg.amp, self.device)
        self.model = model.to(self.device)
        self.optimizer = optimizer or build_optimizer(self.model, cfg)
        if self.accelerator is not None:  # wraps the model for data parallelism and shards the loaders
            prepared = self.accelerator.prepare(self.model, self.optimizer, self.train_loader,
                                                *( [self.val_loader] if self.val_loader is not None else []))
            self.model, self.optimizer, self.train_loader = prepared[:3]
            if self.val_loader is not None:
                self.val_loader = prepared[3]
        self.steps_per_epoch = steps_per_epoch(self.train_loader, cfg.grad_accum)  # of this process's shard
        self.total_steps = cfg.epochs * self.steps_per_epoch
        if cfg.max_steps is not None:
            self.total_steps = min(self.total_steps, cfg.max_steps)
        self.scheduler = build_scheduler(self.optimizer, cfg, self.total_steps)
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
    def train_epoch(self) -> dict[str, float]:
        """One pass over the training loader (resuming mid-epoch when a checkpoint says so)."""
        cfg = self.config
        self.model.train()
        seed_loader(self.train_loader, self.config.seed, self.epoch)
        skip = self.batch_in_epoch
        if skip == 0 and self._resume_rng is not None:
            restore_rng_state(self._resume_rng)
            self._resume_rng = None
        n_batches = len(self.train_loader)  # type: ignore[arg-type]
        avg = Averager()
        bar = None
        if cfg.progress and self.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(total=n_batches, initial=skip, desc=f"epoch {self.epoch + 1}/{cfg.epochs}", leave=False,
                       dynamic_ncols=True)
        it = iter(self.train_loader)
        for _ in range(skip):  # replay the sampler to where the checkpoint was taken
            next(it)
        if self._resume_rng is not None:
            restore_rng_state(self._resume_rng)  # the state captured right after batch `skip`
            self._resume_rng = None
        for i, batch in enumerate(it, start=skip):
            sync = (i + 1) % cfg.grad_accum == 0 or i + 1 == n_batches
            out = self.train_micro_batch(batch, sync)
            avg.add(out, weight=batch_size_of(batch))
            self.batch_in_epoch = i + 1
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{as_float(out['loss']):.4g}", avg=f"{avg.means()['loss']:.4g}",
                                lr=f"{self.lr:.2e}")
            if sync:
                logs = {f"train/{k}": as_float(v) for k, v in out.items()}
                logs.update(step=self.global_step, epoch=self.epoch + 1, lr=self.lr)
                if self.global_step % cfg.log_every_steps == 0:
                    self._log_step(logs)
                if cfg.checkpoint_every_steps and self.global_step % cfg.checkpoint_every_steps == 0:
                    self.save_checkpoint()
                self._hook("on_step_end", logs)
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
        avg = Averager()
        for i, batch in enumerate(loader):
            if self.config.max_val_batches is not None and i >= self.config.max_val_batches:
                break
            if self.accelerator is None:
                batch = move_to(batch, self.device)
            n = batch_size_of(batch)
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

    def _hook(self, name: str, *args) -> None:
        """Call ``name(self, *args)`` on every callback that has it."""
        for cb in self.callbacks:
            if hasattr(cb, name):
                getattr(cb, name)(self, *args)

    @holding_out_dir
    def fit(self, resume: bool | str | Path | None = None) -> dict[str, Any]:
        """Train for ``config.epochs`` (from a checkpoint when ``resume``; ``out_dir`` held); returns a summary dict.

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
        self._hook("on_start")
        start = time.perf_counter()
        while self.epoch < cfg.epochs and not self.stop_training:
            self._hook("on_epoch_start", self.epoch)
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
            self._hook("on_epoch_end", self.epoch, logs)
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
            write_json(self.out_dir / "summary.json", summary)
        if self._tb is not None:
            self._tb.close()
        self._hook("on_end", summary)
        return summary
