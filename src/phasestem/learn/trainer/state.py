"""What the trainer writes into its run folder, and resume from it (mixed into :class:`~.trainer.Trainer`).

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

import csv
import functools
import json
import logging
import math
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ...base.configfile import get_dotted, loads_json
from ...base.lock import hold_output
from ...base.torch_files import first_line
from ..pretrained import sha256_file
from .checkpoint import (
    MANIFEST,
    MISSING,
    RESUME_MUST_MATCH,
    CheckpointError,
    check_state,
    commit_folder,
    first_difference,
    jsonable,
    load_weights,
    resolve_weights_path,
    save_weights,
    short,
    state_dict_mismatch,
    step_of,
    torch_load,
    verify_checkpoint,
    write_csv,
    write_json,
)
from .config import TrainingDivergedError, rng_state

log = logging.getLogger("phasestem.learn")


def holding_out_dir(fit):
    """Decorator of :meth:`Trainer.fit`: the run folder ``out_dir`` (when there is one) is held for the whole fit
    (:func:`phasestem.base.lock.hold_output`; FolderBusyError when another run holds it), so that the checkpoint writes
    may remove what killed runs left there (:func:`.checkpoint.commit_folder`)."""
    @functools.wraps(fit)
    def held(self, *args, **kwargs):
        if self.out_dir is None:
            return fit(self, *args, **kwargs)
        with hold_output(self.out_dir, "phasestem train"):
            return fit(self, *args, **kwargs)
    return held


class RunFolderMixin:
    """Logs, ``best/`` and ``last/``, and resume of :class:`~.trainer.Trainer` (uses its attributes)."""

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
            write_csv(self.out_dir / "epochs.csv", self.history)
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
        write_json(folder / "meta.json", self.meta)
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
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(), "rng": rng_state(),
            "config": self.config.model_dump_json(),
        }
        torch.save(state, folder / "trainer_state.pt")
        names.append("trainer_state.pt")
        manifest = {"format": 1, "global_step": self.global_step, "epoch": self.epoch,
                    "batch_in_epoch": self.batch_in_epoch, "files": {n: sha256_file(folder / n) for n in names}}
        write_json(folder / MANIFEST, manifest)
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
        check_state(state_path, state)
        if manifest is not None and int(state.get("global_step", -1)) != int(manifest["global_step"]):
            raise CheckpointError(f"{folder}: torn checkpoint: trainer_state.pt is at step {state.get('global_step')}, "
                                  f"{MANIFEST} says step {manifest['global_step']}")
        self._load_model_state(folder, weights)
        self._load_optimizer_state(folder, state)
        self.epoch, self.batch_in_epoch = int(state["epoch"]), int(state["batch_in_epoch"])
        self.global_step = int(state["global_step"])
        self.best, self.best_epoch, self.bad_epochs = state["best"], state["best_epoch"], int(state["bad_epochs"])
        self.history = loads_json(state["history"], f"{state_path}: history")
        self._resume_rng = state["rng"]
        self._last_good = (folder, self.global_step)
        if self.batch_in_epoch >= len(self.train_loader):  # type: ignore[arg-type]
            self.epoch, self.batch_in_epoch = self.epoch + 1, 0
        self._truncate_steps_csv()
        log.info("resumed from %s at epoch %d, batch %d, step %d", folder, self.epoch + 1, self.batch_in_epoch,
                 self.global_step)

    def _check_resume_meta(self, folder: Path, meta: Mapping[str, Any]) -> None:
        for key in RESUME_MUST_MATCH:
            old, new = get_dotted(meta, key, MISSING), get_dotted(self.meta, key, MISSING)
            if old is not MISSING and new is not MISSING and jsonable(old) != jsonable(new):
                key, old, new = first_difference(key, jsonable(old), jsonable(new))
                raise CheckpointError(
                    f"{folder}: checkpoint was trained with a different {key} ({short(old)}; this run: "
                    f"{short(new)}); resume with the config it was trained with, or use a new out_dir")

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
                                  f"({first_line(exc)}); keep trainer.optimizer and trainer.lr_scale as they "
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
        old = loads_json(old_json, f"{folder}: trainer_state.pt config")
        new = self.config.model_dump(mode="json")
        changed = [f"trainer.{k}: {short(old.get(k))} → {short(v)}" for k, v in new.items()
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
            rows = [r for r in reader if step_of(r) <= self.global_step]
        write_csv(path, rows, fields)

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
