"""YAML run configs of the learned route: ``phasestem train <network> CONFIG.yaml`` and ``phasestem make-pairs``.

One file describes a run completely (data, model, loss, trainer, output folder); the run folder
receives a copy (``config.yaml``) so it can be repeated. :class:`TrainRunConfig` is the run of patch,
stitch or end2end, :class:`AutoencoderRunConfig` and :class:`PhaseformerRunConfig` those of the other two
networks, :class:`RestorerRunConfig` the restorer's, :class:`MakePairsConfig` the settings of
``phasestem make-pairs``. Patch example (tiny, CPU)::

    stage: patch
    out_dir: runs/patch_tiny
    data: {files: [data/simulation_data1.h5], block: 14, stride: 9, patch: 76, batch_size: 8,
           preprocess: {bin: 2, normalize: pattern, scale: sqrt}}
    model: {size: tiny}
    trainer: {epochs: 5, lr: 1e-3}

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

Relative paths in a config file (data files and globs, ``out_dir``, checkpoints, weights) are taken relative to
that file's folder (:mod:`phasestem.base.configfile`); paths given on the command line, to the working directory. The
networks' own settings and loss settings (``model:``, ``loss:``) are defined with the networks
(:mod:`.nets`) and exported here too.
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, Field

from ..base.configfile import ConfigPath, StrictModel, read_yaml_mapping
from ..base.errors import ConfigError
from .data import OriginalLayout, Preprocess
from .nets.autoencoder import AutoencoderLossConfig, AutoencoderModelConfig
from .nets.patch import PatchRecoveryConfig
from .nets.phaseformer import PhaseformerLossConfig, PhaseformerModelConfig
from .nets.restorer import RestorerConfig
from .nets.stitch import PhaseStitchingConfig
from .pairs import Degrade
from .trainer.loop import TrainerConfig


class TrainDataConfig(StrictModel):
    """Training files, geometry, split, augmentation, preprocessing and loaders."""

    files: Annotated[list[str], ConfigPath()] = Field(
        ..., description="HDF5 files, folders or glob patterns (seed-000 layout)")
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


class TrainLossConfig(StrictModel):
    """Loss terms."""

    kind: Literal["mse", "l1"] = Field("mse", description="pixel loss")
    patch_weight: float = Field(0.5, ge=0, description="end2end: weight of the patch-level term")
    image_weight: float = Field(1.0, ge=0, description="end2end: weight of the full-image term")
    offset_free: bool = Field(False, description="remove each patch's / image's mean error before the pixel loss "
                              "(the phase's offset is invisible to ptychography; the seed trains on it)")
    consistency_weight: float = Field(
        0.0, ge=0, description="end2end: weight of the measurement-consistency term (physics-informed fine-tuning): "
        "the data residual of the predicted phase pushed through the forward model with the nominal probe, against "
        "the sample's own patterns (phasestem.learn.consistency; needs the files' optics attributes); 0: off")


def trainer_field(**monitor: str) -> Any:
    """A run file's ``trainer`` section (the shared trainer), watching the network's ``monitor`` (``monitor_mode``)."""
    return Field(default_factory=lambda: TrainerConfig(**monitor), description="optimisation and checkpoints (the "
                 "shared trainer)")


class TrainingRun(StrictModel):
    """What every network's run file has beside its own sections."""

    resume: bool = Field(False, description="continue from out_dir/last when it exists")


class TrainRunConfig(TrainingRun):
    """One training run of one stage."""

    network: Literal["patch", "stitch", "end2end"] = Field(
        ..., validation_alias=AliasChoices("network", "stage"),
        description="which network to train (older files say 'stage:', also accepted)")
    out_dir: Annotated[str, ConfigPath()] = Field("runs/learn",
                                                  description="run folder (checkpoints, logs, copy of this config)")
    data: TrainDataConfig = Field(..., description="data settings")
    model: PatchRecoveryConfig | None = Field(None, description="patch stage (and end2end without checkpoints)")
    stitch_model: PhaseStitchingConfig | None = Field(None, description="stitch stage (and end2end without "
                                                      "checkpoints); image_size/patch come from the data")
    patch_checkpoint: Annotated[str | None, ConfigPath()] = Field(
        None, description="end2end: trained PatchRecoveryNet (file or run folder)")
    stitch_checkpoint: Annotated[str | None, ConfigPath()] = Field(
        None, description="end2end: trained PhaseStitchingNet (file or run folder)")
    freeze_patch_epochs: int = Field(0, ge=0, description="end2end: keep the patch net frozen for the first K epochs")
    patch_chunk: int | None = Field(None, ge=1, description="end2end: blocks per patch-net pass (memory)")
    grad_checkpoint: bool = Field(False, description="end2end: recompute patch-net activations in the backward pass "
                                  "(much less memory, ~30 % more time)")
    loss: TrainLossConfig = Field(default_factory=TrainLossConfig, description="loss settings")
    trainer: TrainerConfig = trainer_field()

    @property
    def stage(self) -> str:
        """The network's name under its older key."""
        return self.network


# ------------------------------------------------------------------------------------- autoencoder
class AutoencoderDataConfig(StrictModel):
    """Diffraction patterns used to train the autoencoder."""

    files: Annotated[list[str], ConfigPath()] = Field(
        ..., description="4D-STEM files: simulation HDF5 (every dp_set_{i}) or any file phasestem.io.load reads; "
        "folders/globs of *.h5 allowed")
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


class AutoencoderRunConfig(TrainingRun):
    """One autoencoder training run."""

    network: Literal["autoencoder"] = Field("autoencoder", description="which network this file trains")
    out_dir: Annotated[str, ConfigPath()] = Field(
        "runs/autoencoder", description="run folder (checkpoints, logs, copy of this config)")
    data: AutoencoderDataConfig = Field(..., description="training patterns")
    model: AutoencoderModelConfig = Field(default_factory=AutoencoderModelConfig, description="architecture")
    loss: AutoencoderLossConfig = Field(default_factory=AutoencoderLossConfig, description="loss weights")
    trainer: TrainerConfig = trainer_field(monitor="val/psnr", monitor_mode="max")


# ------------------------------------------------------------------------------------- phaseformer
class PhaseformerDataConfig(StrictModel):
    """Paired coarse-input → phase data (several sources at once)."""

    train: Annotated[list[str], ConfigPath()] = Field(
        ..., description="sources: folders with input/ + gt/ (or train/ test/), pairs HDF5 (input, gt) or simulation "
        "HDF5 (phase_{i}, pairs made on the fly)")
    test: Annotated[list[str], ConfigPath()] = Field(
        default_factory=list, description="test sources (empty: hold out val_fraction of train)")
    val_fraction: float = Field(0.1, ge=0, lt=1, description="held-out fraction when no test sources are given")
    crop: int | None = Field(128, ge=8, multiple_of=8, description="random training crop side (px); None = whole")
    test_crop: int | None = Field(None, ge=8, multiple_of=8, description="central test crop (None: whole image)")
    augment: bool = Field(True, description="random flips/transposes (and fresh degradations) for training")
    degradation: Degrade = Field(default_factory=Degrade, description="coarse inputs made from simulated phases")
    batch_size: int = Field(4, ge=1, description="pairs per training batch")
    val_batch_size: int | None = Field(None, ge=1, description="test batch size (default: batch_size)")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")
    seed: int = Field(0, description="seed of the split and of the fixed test degradations")


class PhaseformerRunConfig(TrainingRun):
    """One Phaseformer training run."""

    network: Literal["phaseformer"] = Field("phaseformer", description="which network this file trains")
    out_dir: Annotated[str, ConfigPath()] = Field(
        "runs/phaseformer", description="run folder (checkpoints, logs, copy of this config)")
    data: PhaseformerDataConfig = Field(..., description="paired data")
    model: PhaseformerModelConfig = Field(default_factory=PhaseformerModelConfig, description="architecture")
    loss: PhaseformerLossConfig = Field(default_factory=PhaseformerLossConfig, description="loss")
    trainer: TrainerConfig = trainer_field(monitor="val/psnr", monitor_mode="max")


class MakePairsConfig(StrictModel):
    """``phasestem make-pairs``: coarse → true phase pairs from simulation files."""

    files: Annotated[list[str], ConfigPath()] = Field(..., description="simulation HDF5 files (phase_{i} datasets)")
    out: Annotated[str, ConfigPath()] = Field("pairs.h5", description="output pairs file (input, gt); on the command "
                                              "line --out DIR keeps its name inside DIR, --out-file FILE replaces it")
    copies: int = Field(1, ge=1, description="degraded versions per phase image")
    degradation: Degrade = Field(default_factory=Degrade, description="how inputs are made (inputs_from degrade)")
    seed: int = Field(0, description="random seed")
    inputs_from: Annotated[str, ConfigPath(prefix="stitch:")] = Field(
        "degrade", description="where inputs come from: 'degrade' (synthetic degradations of the true phase), "
        "'stitch:<model>' (a trained end2end model's prediction from the sample's patterns) or 'ad' (phasestem's AD "
        "reconstruction with reconstruct's defaults, probe refined, on AD's own grid; phase, amplitude and "
        "illumination after epochs 2, 4, 8 and at the end: the restorer's pairs)")
    stitch_model: Annotated[str | None, ConfigPath()] = Field(
        None, description="stitching model when inputs_from is 'stitch:<patch model>'")
    ad_epochs: int | None = Field(None, ge=1, description="epochs of the AD recipe (inputs_from ad; null: "
                                  "phasestem reconstruct's default, 20)")
    ad_electrons: list[float | None] = Field(
        [None], description="inputs_from ad: one copy of each sample per entry, its patterns Poisson counts of that "
        "many e⁻ per pattern (null: noise-free), drawn with seed")
    device: str = Field("cpu", description="torch device of the stitch / AD inputs")


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


# ---- phasestem train restorer (phasestem.learn.nets.restorer) ----------------------------------------------

class RestorerDataConfig(StrictModel):
    """Pairs files of AD epochs (``phasestem make-pairs --inputs-from ad``)."""

    train: Annotated[list[str], ConfigPath()] = Field(..., description="pairs files of AD epochs (one geometry)")
    test: Annotated[list[str], ConfigPath()] = Field(
        default_factory=list, description="test pairs files (empty: hold out val_fraction of train's samples)")
    val_fraction: float = Field(0.2, ge=0, lt=1, description="held-out fraction of the items when no test files")
    epochs: list[int] | Literal["last"] | None = Field(
        None, description="stored AD epochs to learn from (null: every one; 'last': the run's end only)")
    crop: int | None = Field(None, ge=8, description="random training crop side (px; null: whole images)")
    augment: bool = Field(True, description="random symmetry of the square (8 dihedral) for training")
    batch_size: int = Field(4, ge=1, description="items per training batch")
    num_workers: int = Field(0, ge=0, description="DataLoader worker processes")
    seed: int = Field(0, description="seed of the split and the augmentation")


class RestorerModelConfig(RestorerConfig):
    """The restorer's body and inputs (:class:`~phasestem.learn.nets.restorer.RestorerConfig`, what a model file
    stores) and the weights it starts from."""

    init: Annotated[str | None, ConfigPath()] = Field(
        None, description="start from this restorer's weights (a model file or run folder: fine-tuning on new "
                          "specimens); its body, width and inputs must be this config's")


class RestorerLossConfig(StrictModel):
    """Offset-free Charbonnier loss over the scanned field, plus the invented mass's cost."""

    charbonnier_eps: float = Field(1e-3, gt=0, description="ε of √(d² + ε²) (rad)")
    invented_mass: float = Field(0.0, ge=0, description="weight of the invented mass (phase added where the truth "
                                 "is empty: at or below its field median; nets.restorer.invented_mass) beside the "
                                 "Charbonnier term; 0: off")


class RestorerRunConfig(TrainingRun):
    """One restorer training run."""

    network: Literal["restorer"] = Field("restorer", description="which network this file trains")
    out_dir: Annotated[str, ConfigPath()] = Field("runs/restorer", description="run folder")
    data: RestorerDataConfig = Field(..., description="pairs of AD epochs")
    model: RestorerModelConfig = Field(default_factory=RestorerModelConfig, description="architecture")
    loss: RestorerLossConfig = Field(default_factory=RestorerLossConfig, description="loss")
    trainer: TrainerConfig = trainer_field(monitor="val/e_phi", monitor_mode="min")
