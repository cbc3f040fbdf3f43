"""Training runs of Phaseformer on the shared :class:`~phasestem.learn.trainer.Trainer`.

``build_phaseformer_trainer(cfg)`` builds the paired data (:mod:`phasestem.learn.pairs`), network and loss from a
:class:`~phasestem.learn.config.PhaseformerRunConfig`; ``train_phaseformer(cfg)`` writes ``config.yaml`` into the
run folder and calls ``Trainer.fit``. Phaseformer is trained as :class:`PhaseformerTrainable` (network ``net`` +
loss ``criterion``) so the learnable loss weights are optimiser parameters and are saved/resumed with the model;
they are logged as ``train/wL/…``, ``train/wH/…``, ``train/w_branch/…``. Model files carry ``meta`` so
:mod:`phasestem.learn.apply.refine` can rebuild the network from its file alone.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from ... import metrics
from ..backbones import count_parameters
from ..config import PhaseformerRunConfig
from ..meta import make_meta
from ..nets.phaseformer import Phaseformer, PhaseformerConfig, PhaseformerLoss
from ..pairs import paired_dataset
from ..trainer.loop import Trainer, seed_everything
from . import split_indices

log = logging.getLogger("phasestem.learn")

__all__ = ["PhaseformerTrainable", "build_phaseformer_trainer", "train_phaseformer"]


def phaseformer_from_config(kind: str, config: dict[str, Any]) -> Phaseformer:
    """Registry entry: a Phaseformer with random weights from its settings."""
    return Phaseformer(PhaseformerConfig.model_validate(config))


class PhaseformerTrainable(nn.Module):
    """Network + loss in one module, so the learnable loss weights are trained, saved and resumed.

    ``forward(x)`` returns the network's (out_L, out_H); ``forward(x, target)`` the loss dict of
    :class:`PhaseformerLoss` (one call through a data-parallel wrapper computes both). Weights are
    stored as ``net.*`` / ``criterion.*``.
    """

    def __init__(self, net: Phaseformer, criterion: PhaseformerLoss):
        super().__init__()
        self.net, self.criterion = net, criterion

    def forward(self, x: torch.Tensor, target: torch.Tensor | None = None):
        out_l, out_h = self.net(x)
        if target is None:
            return out_l, out_h
        return self.criterion(out_l, out_h, target)


def phaseformer_loss_fn(m: nn.Module, batch) -> dict[str, torch.Tensor]:
    return m(batch["input"], batch["target"])


def phaseformer_metrics_fn(m: nn.Module, batch) -> dict[str, float]:
    """PSNR/SSIM of out_L, PSNR of out_H against the ×2 target, and the identity PSNR (input as is)."""
    x, y = batch["input"], batch["target"]
    out_l, out_h = m(x)
    y_h = F.interpolate(y, scale_factor=2, mode="bilinear", align_corners=False)
    return {"psnr": float(metrics.psnr(out_l.float(), y)), "ssim": float(metrics.ssim(out_l.float(), y)),
            "psnr_H": float(metrics.psnr(out_h.float(), y_h)), "psnr_identity": float(metrics.psnr(x, y))}


def build_phaseformer_trainer(cfg: PhaseformerRunConfig, out_dir: str | Path | None = None) -> Trainer:
    """The trainer for one Phaseformer run (data sources, model, loss, loaders from ``cfg``)."""
    d = cfg.data
    seed_everything(cfg.trainer.seed)  # before the network is built: same seed → same initial weights
    train_ds = paired_dataset(d.train, "train", d.crop, d.augment, d.degradation, fixed=False, seed=d.seed)
    if d.test:
        val_ds = paired_dataset(d.test, "test", d.test_crop, False, d.degradation, fixed=True, seed=d.seed + 1)
    elif d.val_fraction > 0:
        tr, va = split_indices(len(train_ds), d.val_fraction, d.seed)
        fixed_ds = paired_dataset(d.train, "train", d.test_crop, False, d.degradation, fixed=True, seed=d.seed + 1)
        val_ds = torch.utils.data.Subset(fixed_ds, va.tolist())
        train_ds = torch.utils.data.Subset(train_ds, tr.tolist())
    else:
        val_ds = None
    gen = torch.Generator()
    train_loader = torch.utils.data.DataLoader(train_ds, batch_size=d.batch_size, shuffle=True,
                                               num_workers=d.num_workers, generator=gen,
                                               drop_last=len(train_ds) > d.batch_size)
    val_loader = None if val_ds is None or len(val_ds) == 0 else torch.utils.data.DataLoader(
        val_ds, batch_size=d.val_batch_size or d.batch_size, num_workers=d.num_workers)
    net = Phaseformer(PhaseformerConfig.model_validate(cfg.model.model_dump()))
    lc = cfg.loss
    criterion = PhaseformerLoss(lc.components, lc.perceptual_weights, lc.charbonnier_eps, lc.perceptual_max_size)
    model = PhaseformerTrainable(net, criterion)
    meta = make_meta("phaseformer", net.config, {}, lc.model_dump(mode="json"),
                     perceptual_source=getattr(criterion.terms["perceptual"], "source", None)
                     if "perceptual" in criterion.terms else None)
    log.info("phaseformer: %d parameters; %d training pairs, %d test pairs", count_parameters(net), len(train_ds),
             0 if val_ds is None else len(val_ds))
    return Trainer(model, phaseformer_loss_fn, train_loader, val_loader, metrics_fn=phaseformer_metrics_fn,
                   config=cfg.trainer, out_dir=out_dir if out_dir is not None else cfg.out_dir, meta=meta)


def train_phaseformer(cfg: PhaseformerRunConfig) -> dict[str, Any]:
    """Run one Phaseformer training (config copy → run folder); returns the trainer's summary."""
    from ..registry import train_run

    return train_run(cfg)
