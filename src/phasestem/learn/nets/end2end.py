"""End2End (the user's ``End2End.py``): PatchRecoveryNet → PhaseStitchingNet, trained jointly.

Shapes: patterns (B, n, T, H, W), coords (B, n, T, 2) Å, centres (B, n, 2) → ``{"patches":
(B, n, p, p), "phase": (B, N, N)}``. Loss = ``patch_weight``·L(patches, GT patches) +
``image_weight``·L(phase, GT phase) [+ ``consistency_weight``·data residual of the predicted phase against the
block patterns, :mod:`phasestem.learn.consistency`]; gradients of the image term reach both networks through
the stitching canvas. :class:`FreezePatchNet` keeps the patch network frozen for the first K
epochs (the stitching net first adapts to predicted patches).
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import torch
import torch.utils.checkpoint
from torch import nn

from ...base.errors import ConfigError
from ...metrics import psnr
from ..trainer.loop import load_weights
from .patch import PatchRecoveryConfig, PatchRecoveryNet
from .pixel_error import pixel_error, without_offset
from .stitch import PhaseStitchingConfig, PhaseStitchingNet


class End2End(nn.Module):
    """The chained model.

    ``patch_chunk`` blocks pass the patch net at once; with ``grad_checkpoint`` each chunk's activations
    are recomputed in the backward pass instead of stored (full size: 25 × 196 patterns per sample).
    """

    kind = "end2end"

    def __init__(self, patch_net: PatchRecoveryNet, stitch_net: PhaseStitchingNet, patch_chunk: int | None = None,
                 grad_checkpoint: bool = False):
        super().__init__()
        if patch_net.config.patch != stitch_net.config.patch:
            raise ConfigError(f"patch sizes differ: PatchRecoveryNet {patch_net.config.patch} px, "
                              f"PhaseStitchingNet {stitch_net.config.patch} px")
        self.patch_net = patch_net
        self.stitch_net = stitch_net
        self.patch_chunk = patch_chunk
        self.grad_checkpoint = grad_checkpoint

    @property
    def config(self) -> dict[str, Any]:
        return {"patch": self.patch_net.config.model_dump(), "stitch": self.stitch_net.config.model_dump(),
                "patch_chunk": self.patch_chunk}

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> End2End:
        return cls(PatchRecoveryNet(PatchRecoveryConfig(**config["patch"])),
                   PhaseStitchingNet(PhaseStitchingConfig(**config["stitch"])), config.get("patch_chunk"))

    @classmethod
    def from_checkpoints(cls, patch_checkpoint: str | Path, stitch_checkpoint: str | Path,
                         patch_chunk: int | None = None) -> End2End:
        """Chain two trained models from their weight files / run folders (configs read from their meta)."""
        nets = []
        for path, net_cls, cfg_cls, kind in ((patch_checkpoint, PatchRecoveryNet, PatchRecoveryConfig, "patch"),
                                             (stitch_checkpoint, PhaseStitchingNet, PhaseStitchingConfig, "stitch")):
            state, meta = load_weights(path)
            model_meta = meta.get("model") if isinstance(meta.get("model"), dict) else {}
            if model_meta.get("kind") != kind or not isinstance(model_meta.get("config"), dict):
                found = model_meta.get("kind") or meta.get("network")
                raise ConfigError(f"{path}: expected a '{kind}' checkpoint written by phasestem train, found "
                                  f"{f'kind {found!r}' if found else 'no network kind in its metadata'}")
            try:
                cfg = cfg_cls(**{**model_meta["config"], "cnn_pretrained": None, "vit_pretrained": None}
                              if kind == "patch" else {**model_meta["config"], "vit_pretrained": None})
                net = net_cls(cfg)
                net.load_state_dict(state)
            except (ValueError, TypeError, RuntimeError) as exc:
                detail = " ".join(str(exc).split())[:300]
                raise ConfigError(f"{path}: the {kind} model cannot be rebuilt from its file ({detail})") from exc
            nets.append(net)
        return cls(nets[0], nets[1], patch_chunk)

    def set_patch_frozen(self, frozen: bool) -> None:
        """Stop (or restart) gradient updates of the patch network; BatchNorm statistics freeze too."""
        for p in self.patch_net.parameters():
            p.requires_grad_(not frozen)
        self._patch_frozen = frozen
        self.patch_net.train(self.training and not frozen)

    def train(self, mode: bool = True):
        super().train(mode)
        if getattr(self, "_patch_frozen", False):
            self.patch_net.train(False)
        return self

    def forward(self, patterns: torch.Tensor, coords: torch.Tensor, centres: torch.Tensor) -> dict[str, torch.Tensor]:
        B, n, T, H, W = patterns.shape
        flat_p = patterns.reshape(B * n, T, H, W)
        flat_c = coords.reshape(B * n, T, 2)
        chunk = self.patch_chunk or B * n
        use_ckpt = self.grad_checkpoint and self.training and torch.is_grad_enabled()
        parts = []
        for i in range(0, B * n, chunk):
            args = (flat_p[i:i + chunk], flat_c[i:i + chunk])
            if use_ckpt:
                parts.append(torch.utils.checkpoint.checkpoint(self.patch_net, *args, use_reentrant=False))
            else:
                parts.append(self.patch_net(*args))
        patches = torch.cat(parts)
        patches = patches.reshape(B, n, *patches.shape[-2:])
        return {"patches": patches, "phase": self.stitch_net(patches, centres)}


def end2end_loss_fn(patch_weight: float = 0.5, image_weight: float = 1.0, kind: Literal["mse", "l1"] = "mse",
                    consistency_weight: float = 0.0, measurement=None, offset_free: bool = False):
    """``loss_fn(model, batch)`` for SampleDataset batches: weighted patch + full-image terms, plus
    ``consistency_weight`` × the data residual of the predicted phase against the batch's own patterns
    (:func:`phasestem.learn.consistency.consistency_loss`; ``measurement`` is the
    :class:`~phasestem.learn.consistency.MeasurementModel` of the training data, see
    :func:`measurement_for_training`). The residual is reported as ``consistency`` whenever ``measurement`` is
    given. ``offset_free``: the patch and image terms remove each image's mean error first, and so do the reported
    MSE and PSNR (the monitor that picks the best model)."""
    if patch_weight < 0 or image_weight < 0 or patch_weight + image_weight == 0:
        raise ConfigError(f"loss weights must be ≥ 0 and not both 0 (patch {patch_weight}, image {image_weight})")
    if consistency_weight < 0:
        raise ConfigError(f"loss.consistency_weight must be ≥ 0, got {consistency_weight}")
    if consistency_weight > 0 and measurement is None:
        raise ConfigError("loss.consistency_weight > 0 needs the measurement model of the training data")

    def err(a, b):
        return pixel_error(a, b, kind, offset_free)

    def loss_fn(model, batch):
        out = model(batch["patterns"], batch["coords"], batch["centres"])
        lp = err(out["patches"], batch["patches"])
        li = err(out["phase"], batch["phase"])
        shown = without_offset(out["phase"].detach().float(), batch["phase"], offset_free)  # what the loss judges
        mse = (shown - batch["phase"]).square().mean()
        loss = patch_weight * lp + image_weight * li
        terms = {}
        if measurement is not None:
            from ..consistency import consistency_loss

            if consistency_weight > 0:
                lc = consistency_loss(out["phase"], batch, measurement)
                loss = loss + consistency_weight * lc
            else:  # reported only
                with torch.no_grad():
                    lc = consistency_loss(out["phase"].detach(), batch, measurement)
            terms["consistency"] = lc.detach()
        return {"loss": loss, "patch": lp.detach(), "image": li.detach(), "mse": mse.detach(),
                "psnr": psnr(shown, batch["phase"]), **terms}

    return loss_fn


def measurement_for_training(index, preprocess):
    """The :class:`~phasestem.learn.consistency.MeasurementModel` of a training index's samples (optics from its
    first file; the files of one index share one simulation setup), comparing with patterns preprocessed by
    ``preprocess``; a projected-potential target is converted to phase with the file's σ."""
    from ..consistency import MeasurementModel

    fi = index.files[0]
    scale = fi.sigma if index.target == "potential" else 1.0
    return MeasurementModel.from_file(fi.path, index.geometry, fi.pattern_shape, preprocess,
                                      phase_scale=scale).with_blocks(index.geometry)


def loss_fn_from_config(loss_config, train_index, preprocess):
    """The End2End ``loss_fn`` a run's ``loss`` settings describe (the measurement model is built only when
    ``loss.consistency_weight`` > 0)."""
    weight = float(getattr(loss_config, "consistency_weight", 0.0))
    measurement = measurement_for_training(train_index, preprocess) if weight > 0 else None
    return end2end_loss_fn(loss_config.patch_weight, loss_config.image_weight, loss_config.kind, weight,
                           measurement, loss_config.offset_free)


class FreezePatchNet:
    """Trainer callback: the patch network of an :class:`End2End` stays frozen for the first ``epochs`` epochs."""

    def __init__(self, epochs: int):
        self.epochs = int(epochs)

    def on_epoch_start(self, trainer, epoch: int) -> None:
        model = trainer.unwrapped_model
        model.set_patch_frozen(epoch < self.epochs)
