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

Relative data paths are resolved against the config file's folder when they do not exist as given.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from ..errors import ConfigError
from .autoencoder import (
    DEFAULT_DIV_EPS,
    DEFAULT_LAMBDA_ACT,
    DEFAULT_LAMBDA_DIV,
    DEFAULT_LAMBDA_SIM,
    DEFAULT_MARGIN,
)
from .losses import COMPONENTS
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


class AutoencoderModelConfig(_Strict):
    """Autoencoder architecture (defaults = SPEC §4, 3,914,404 parameters)."""

    latent_dim: int = Field(32, ge=1, description="latent dimension")
    channels: int = Field(128, ge=4, description="ResNet-block channels (128 in the SPEC model)")
    decoder_blocks: int = Field(3, ge=1, le=4, description="decoder up-blocks ×4 each (3: 4 → 256 px)")
    out_shape: tuple[int, int] | None = Field(None, description="reconstruction size (None: the input size)")
    final_relu: bool = Field(False, description="the seed's ReLU after the encoder's 1-channel conv_final "
                             "(off: on 1×1 maps it can zero the whole latent)")


class AutoencoderLossConfig(_Strict):
    """Weights of MSE + λ_act·L1(z) + λ_sim·contrastive + λ_div·divergence (see learn.autoencoder)."""

    lambda_act: float = Field(DEFAULT_LAMBDA_ACT, ge=0, description="weight of the latent L1 term")
    lambda_sim: float = Field(DEFAULT_LAMBDA_SIM, ge=0, description="weight of the contrastive term")
    lambda_div: float = Field(DEFAULT_LAMBDA_DIV, ge=0, description="weight of the divergence term")
    margin: float = Field(DEFAULT_MARGIN, ge=-1, le=1, description="cosine margin of the contrastive term "
                          "(1.0 makes it identically zero)")
    div_eps: float = Field(DEFAULT_DIV_EPS, gt=0, description="ε of mean(1/(var+ε)); 1e-8 (seed) gives ~1e7")


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


class PhaseformerModelConfig(_Strict):
    """Phaseformer architecture (defaults = the published model, ≈ 1.8 M parameters)."""

    dim: int = Field(16, ge=2, description="channels of level 1 (levels: dim, 2·dim, 4·dim, 8·dim)")
    blocks: tuple[int, int, int, int] = Field((2, 3, 3, 4), description="transformer blocks per level")
    heads: tuple[int, int, int, int] = Field((1, 2, 4, 8), description="attention heads per level")
    refinement_blocks: int = Field(4, ge=0, description="refinement blocks at full resolution")
    ffn_expansion: float = Field(2.66, gt=0, description="GDFN hidden-channel expansion")
    phase_attention: bool = Field(True, description="phase-only transform on the attention queries/keys")
    phase_skips: bool = Field(True, description="phase-only transform + ECA on the encoder skips")
    residual: bool = Field(True, description="predict a correction added to the (up-sampled) input")


class PhaseformerLossConfig(_Strict):
    """Per-branch learnable soft-max mix of the components; learnable 2-way branch weight."""

    components: list[Literal["charbonnier", "perceptual", "gradient", "ms_ssim"]] = Field(
        list(COMPONENTS), description="loss components per branch")
    perceptual_weights: str | None = Field(None, description="LOCAL torchvision VGG16 weights (.pth/.safetensors); "
                                           "None: the perceptual term is off (logged); never downloaded")
    perceptual_max_size: int = Field(256, ge=16, description="down-sample larger images before the VGG features")
    charbonnier_eps: float = Field(1e-3, gt=0, description="ε of mean √(d² + ε²)")


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
