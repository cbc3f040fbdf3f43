"""YAML configs of the learned route: ``phasestem train patch|stitch|end2end CONFIG.yaml``.

One file describes a run completely (data, model, loss, trainer, output folder); the run folder
receives a copy (``config.yaml``) so it can be repeated. Example (tiny, CPU)::

    stage: patch
    out_dir: runs/patch_tiny
    data: {files: [data/simulation_data1.h5], block: 14, stride: 9, patch: 76, batch_size: 8,
           preprocess: {bin: 2, normalize: pattern, scale: sqrt}}
    model: {size: tiny}
    trainer: {epochs: 5, lr: 1e-3}
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import AliasChoices, BaseModel, ConfigDict, Field

from ..configfile import read_yaml_mapping
from ..errors import ConfigError
from .data import OriginalLayout, Preprocess
from .nets.patch import PatchRecoveryConfig
from .nets.stitch import PhaseStitchingConfig
from .trainer import TrainerConfig


class DataConfig(BaseModel):
    """Training files, geometry, split, augmentation, preprocessing and loaders."""

    model_config = ConfigDict(extra="forbid")

    files: list[str] = Field(..., description="HDF5 files, folders or glob patterns (seed-000 layout)")
    layout: Literal["auto", "phasestem", "original"] = Field(
        "auto", description="'auto' = ours when the file says format=phasestem-seed000, else the user's original"
    )
    original: OriginalLayout = Field(default_factory=OriginalLayout, description="geometry of original-layout files")
    target: Literal["phase", "potential"] = Field("phase", description="train on the phase (rad) or potential (V·Å)")
    block: int = Field(14, ge=1, description="patterns per block side")
    stride: int = Field(9, ge=1, description="block stride on the scan grid")
    patch: int = Field(76, ge=4, description="target patch side (phase pixels)")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="fraction of samples for validation")
    test_fraction: float = Field(0.1, ge=0, lt=1, description="fraction of samples held out for evaluate")
    split_seed: int = Field(0, description="seed of the train/val/test split (same seed → same split)")
    max_samples: int | None = Field(None, ge=1, description="use only the first N samples (quick runs)")
    augment: bool = Field(True, description="random exact symmetries (flips/transposes) of the training samples")
    preprocess: Preprocess = Field(default_factory=Preprocess, description="pattern preprocessing (kept in the model)")
    batch_size: int = Field(8, ge=1, description="items per training batch (blocks for patch, samples otherwise)")
    val_batch_size: int | None = Field(None, ge=1, description="validation batch size (default: batch_size)")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")
    stitch_noise: float = Field(0.0, ge=0, description="stitch stage: Gaussian noise (rad) added to GT patches")


class LossConfig(BaseModel):
    """Loss terms."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["mse", "l1"] = Field("mse", description="pixel loss")
    patch_weight: float = Field(0.5, ge=0, description="end2end: weight of the patch-level term")
    image_weight: float = Field(1.0, ge=0, description="end2end: weight of the full-image term")
    consistency_weight: float = Field(
        0.0, ge=0, description="end2end: weight of the measurement-consistency term (physics-informed fine-tuning): "
        "the data residual of the predicted phase pushed through the forward model with the nominal probe, against "
        "the sample's own patterns (phasestem.learn.consistency; needs the files' optics attributes); 0: off")


class TrainRunConfig(BaseModel):
    """One training run of one stage."""

    model_config = ConfigDict(extra="forbid")

    network: Literal["patch", "stitch", "end2end"] = Field(
        ..., validation_alias=AliasChoices("network", "stage"),
        description="which network to train (older files say 'stage:', also accepted)")
    out_dir: str = Field("runs/learn", description="run folder (checkpoints, logs, copy of this config)")
    data: DataConfig = Field(..., description="data settings")
    model: PatchRecoveryConfig | None = Field(None, description="patch stage (and end2end without checkpoints)")
    stitch_model: PhaseStitchingConfig | None = Field(None, description="stitch stage (and end2end without "
                                                      "checkpoints); image_size/patch come from the data")
    patch_checkpoint: str | None = Field(None, description="end2end: trained PatchRecoveryNet (file or run folder)")
    stitch_checkpoint: str | None = Field(None, description="end2end: trained PhaseStitchingNet (file or run folder)")
    freeze_patch_epochs: int = Field(0, ge=0, description="end2end: keep the patch net frozen for the first K epochs")
    patch_chunk: int | None = Field(None, ge=1, description="end2end: blocks per patch-net pass (memory)")
    grad_checkpoint: bool = Field(False, description="end2end: recompute patch-net activations in the backward pass "
                                  "(much less memory, ~30 % more time)")
    loss: LossConfig = Field(default_factory=LossConfig, description="loss settings")
    trainer: TrainerConfig = Field(default_factory=TrainerConfig, description="optimisation and checkpoints")
    resume: bool = Field(False, description="continue from out_dir/last when it exists")

    @property
    def stage(self) -> str:
        """The network's name under its older key."""
        return self.network

    def resolve_paths(self, base: Path) -> TrainRunConfig:
        """Relative data files that do not exist from the working directory are taken from ``base``."""
        self.data.files = [_resolve_relative(f, Path(base)) for f in self.data.files]
        return self


def load_yaml(path: str | Path) -> dict[str, Any]:
    return read_yaml_mapping(path)


def load_train_config(path: str | Path, stage: str | None = None, overrides: dict[str, Any] | None = None
                      ) -> TrainRunConfig:
    """Read and validate a patch / stitch / end2end training YAML; ``stage`` (the command's network) must agree
    with the file's ``network:`` (or ``stage:``); without it the file decides."""
    if stage is None:
        data = load_yaml(path)
        stage = data.get("network", data.get("stage"))
        if stage not in ("patch", "stitch", "end2end"):
            raise ConfigError(f"{path}: 'network:' must be patch, stitch or end2end, got {stage!r}")
    from .registry import load_run_config

    return load_run_config(path, stage, overrides)


def _resolve_relative(pattern: str, base: Path) -> str:
    """A relative path/glob is taken from the working directory when it matches there, else from the config's."""
    import glob

    if Path(pattern).is_absolute() or glob.glob(pattern):
        return pattern
    alt = str(base / pattern)
    return alt if glob.glob(alt) else pattern


def dump_config(cfg: BaseModel, path: str | Path) -> Path:
    """Write a config as YAML (atomically)."""
    import os

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    os.replace(tmp, path)
    return path
