"""YAML configs of ``phasestem train autoencoder|phaseformer CONFIG.yaml`` and ``phasestem make-pairs``.

Autoencoder example (tiny, CPU)::

    network: autoencoder
    out_dir: runs/autoencoder_tiny
    data: {files: [data/simulation_data1.h5], patterns_per_scan: 256, batch_size: 16}
    model: {latent_dim: 32}
    trainer: {epochs: 5, lr: 1e-3, monitor: val/psnr, monitor_mode: max}

Phaseformer example::

    network: phaseformer
    out_dir: runs/phaseformer
    data: {train: [data/simulation_data1.h5, pairs/exp_pairs.h5], test: [], crop: 128, batch_size: 4}
    loss: {components: [charbonnier, perceptual, gradient, ms_ssim], perceptual_weights: null}
    trainer: {epochs: 50, lr: 1e-3, warmup_fraction: 0.05, monitor: val/psnr, monitor_mode: max}

Relative data paths are resolved against the config file's folder when they do not exist as given. The
networks' own settings and loss settings (``model:``, ``loss:``) are defined with the networks
(:mod:`.nets.autoencoder`, :mod:`.nets.phaseformer`) and exported here too.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..errors import ConfigError
from .nets.autoencoder import AutoencoderLossConfig, AutoencoderModelConfig
from .nets.phaseformer import PhaseformerLossConfig, PhaseformerModelConfig
from .pairs import Degrade
from .trainer import TrainerConfig


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ------------------------------------------------------------------------------------- autoencoder
class AutoencoderDataConfig(_Strict):
    """Diffraction patterns used to train the autoencoder."""

    files: list[str] = Field(..., description="4D-STEM files: simulation HDF5 (every dp_set_{i}) or any file "
                             "phasestem.io.load reads; folders/globs of *.h5 allowed")
    patterns_key: str | None = Field(None, description="dataset holding the patterns (non-simulation HDF5/npz)")
    patterns_per_scan: int | None = Field(512, ge=1, description="random patterns kept per scan, in memory "
                                          "(None: all)")
    bin: int = Field(1, ge=1, description="bin patterns by this factor (side must stay ≥ 32 px)")
    scaling: Literal["log", "max"] = Field("log", description="per-pattern scaling to [0, 1]: log1p or x/max")
    log_floor: float = Field(1e-3, gt=0, lt=1, description="'log' scaling: lowest intensity kept, fraction of peak")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="fraction of patterns held out for validation")
    batch_size: int = Field(32, ge=2, description="patterns per batch (≥ 2: batch statistics in the loss)")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")
    seed: int = Field(0, description="seed of the pattern subset and the split")


class AutoencoderRunConfig(_Strict):
    """One autoencoder training run."""

    network: Literal["autoencoder"] = Field("autoencoder", description="which network this file trains")
    out_dir: str = Field("runs/autoencoder", description="run folder (checkpoints, logs, copy of this config)")
    data: AutoencoderDataConfig = Field(..., description="training patterns")
    model: AutoencoderModelConfig = Field(default_factory=AutoencoderModelConfig, description="architecture")
    loss: AutoencoderLossConfig = Field(default_factory=AutoencoderLossConfig, description="loss weights")
    trainer: TrainerConfig = Field(default_factory=lambda: TrainerConfig(monitor="val/psnr", monitor_mode="max"),
                                   description="optimisation and checkpoints (the shared trainer)")
    resume: bool = Field(False, description="continue from out_dir/last when it exists")

    def resolve_paths(self, base: Path) -> AutoencoderRunConfig:
        """Relative data paths that do not exist as given are taken from ``base`` (the config's folder)."""
        self.data.files = _resolve(self.data.files, Path(base))
        return self


# ------------------------------------------------------------------------------------- phaseformer
class PhaseformerDataConfig(_Strict):
    """Paired coarse-input → phase data (several sources at once)."""

    train: list[str] = Field(..., description="sources: folders with input/ + gt/ (or train/ test/), pairs HDF5 "
                             "(input, gt) or simulation HDF5 (phase_{i}, pairs made on the fly)")
    test: list[str] = Field(default_factory=list, description="test sources (empty: hold out val_fraction of train)")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="held-out fraction when no test sources are given")
    crop: int | None = Field(128, ge=8, multiple_of=8, description="random training crop side (px); None = whole")
    test_crop: int | None = Field(None, ge=8, multiple_of=8, description="central test crop (None: whole image)")
    augment: bool = Field(True, description="random flips/transposes (and fresh degradations) for training")
    degradation: Degrade = Field(default_factory=Degrade, description="coarse inputs made from simulated phases")
    batch_size: int = Field(4, ge=1, description="pairs per training batch")
    val_batch_size: int | None = Field(None, ge=1, description="test batch size (default: batch_size)")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")
    seed: int = Field(0, description="seed of the split and of the fixed test degradations")


class PhaseformerRunConfig(_Strict):
    """One Phaseformer training run."""

    network: Literal["phaseformer"] = Field("phaseformer", description="which network this file trains")
    out_dir: str = Field("runs/phaseformer", description="run folder (checkpoints, logs, copy of this config)")
    data: PhaseformerDataConfig = Field(..., description="paired data")
    model: PhaseformerModelConfig = Field(default_factory=PhaseformerModelConfig, description="architecture")
    loss: PhaseformerLossConfig = Field(default_factory=PhaseformerLossConfig, description="loss")
    trainer: TrainerConfig = Field(default_factory=lambda: TrainerConfig(monitor="val/psnr", monitor_mode="max"),
                                   description="optimisation and checkpoints (the shared trainer)")
    resume: bool = Field(False, description="continue from out_dir/last when it exists")

    def resolve_paths(self, base: Path) -> PhaseformerRunConfig:
        """Relative data (and VGG weights) paths that do not exist as given are taken from ``base``."""
        base = Path(base)
        self.data.train = _resolve(self.data.train, base)
        self.data.test = _resolve(self.data.test, base)
        if self.loss.perceptual_weights is not None:
            self.loss.perceptual_weights = _resolve([self.loss.perceptual_weights], base)[0]
        return self


class MakePairsConfig(_Strict):
    """``phasestem make-pairs``: coarse → true phase pairs from simulation files."""

    files: list[str] = Field(..., description="simulation HDF5 files (phase_{i} datasets)")
    out: str = Field("pairs.h5", description="output pairs file (input, gt)")
    copies: int = Field(1, ge=1, description="degraded versions per phase image")
    degradation: Degrade = Field(default_factory=Degrade, description="how inputs are made (inputs_from degrade)")
    seed: int = Field(0, description="random seed")
    inputs_from: str = Field("degrade", description="where inputs come from: 'degrade' (synthetic degradations of "
                             "the true phase), 'stitch:<model>' (a trained end2end model's prediction from the "
                             "sample's patterns) or 'ad' (a fast lsq AD reconstruction of the patterns)")
    stitch_model: str | None = Field(None, description="stitching model when inputs_from is 'stitch:<patch model>'")
    ad_epochs: int = Field(4, ge=1, description="lsq epochs of the AD inputs (inputs_from ad)")
    device: str = Field("cpu", description="torch device of the stitch / AD inputs")


_RUNS = {"autoencoder": AutoencoderRunConfig, "phaseformer": PhaseformerRunConfig}


def _resolve(paths: list[str], base: Path) -> list[str]:
    return [p if Path(p).is_absolute() or Path(p).exists() or any(c in p for c in "*?[") and Path(p).parent.exists()
            else str(base / p) for p in paths]


def load_run_config(path: str | Path, network: str, overrides: dict[str, Any] | None = None
                    ) -> AutoencoderRunConfig | PhaseformerRunConfig:
    """Read and validate a training YAML for ``network`` ('autoencoder' or 'phaseformer')."""
    if network not in _RUNS:
        raise ConfigError(f"expected network 'autoencoder' or 'phaseformer', got {network!r}")
    from .registry import load_run_config as load

    return load(path, network, overrides)
