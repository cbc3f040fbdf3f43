"""The run config of ``phasestem train restorer`` (:mod:`phasestem.learn.nets.restorer`)."""
from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

from ..base.configfile import ConfigPath, StrictModel
from .trainer_config import TrainerConfig

__all__ = ["RestorerDataConfig", "RestorerModelConfig", "RestorerLossConfig", "RestorerRunConfig"]


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


class RestorerModelConfig(StrictModel):
    """The restorer's body and inputs."""

    arch: Literal["unet", "phaseformer"] = Field("unet", description="body: a small residual U-Net (baseline) or "
                                                 "Phaseformer (seed 002)")
    extra_channels: list[Literal["amplitude", "illumination"]] = Field(
        ["amplitude", "illumination"], description="inputs beside AD's phase")
    width: int = Field(16, ge=2, description="U-Net channels of level 1 (levels: width, 2·width, 4·width)")
    phaseformer: dict = Field(
        default_factory=lambda: {"dim": 8, "blocks": [1, 1, 1, 1], "heads": [1, 1, 2, 2], "refinement_blocks": 1},
        description="Phaseformer settings (dim, blocks, heads, refinement_blocks, …) when arch is phaseformer")
    init: Annotated[str | None, ConfigPath()] = Field(
        None, description="start from this restorer's weights (a model file or run folder: fine-tuning on new "
                          "specimens); its body, width and inputs must be this config's")


class RestorerLossConfig(StrictModel):
    """Offset-free Charbonnier loss over the scanned field, plus the invented mass's cost."""

    charbonnier_eps: float = Field(1e-3, gt=0, description="ε of √(d² + ε²) (rad)")
    invented_mass: float = Field(0.0, ge=0, description="weight of the invented mass (phase added where the truth "
                                 "is empty: at or below its field median; nets.restorer.invented_mass) beside the "
                                 "Charbonnier term; 0: off")


class RestorerRunConfig(StrictModel):
    """One restorer training run."""

    network: Literal["restorer"] = Field("restorer", description="which network this file trains")
    out_dir: Annotated[str, ConfigPath()] = Field("runs/restorer", description="run folder")
    data: RestorerDataConfig = Field(..., description="pairs of AD epochs")
    model: RestorerModelConfig = Field(default_factory=RestorerModelConfig, description="architecture")
    loss: RestorerLossConfig = Field(default_factory=RestorerLossConfig, description="loss")
    trainer: TrainerConfig = Field(default_factory=lambda: TrainerConfig(monitor="val/e_phi", monitor_mode="min"),
                                   description="optimisation and checkpoints (the shared trainer)")
    resume: bool = Field(False, description="continue from out_dir/last when it exists")
