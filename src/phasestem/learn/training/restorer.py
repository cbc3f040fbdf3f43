"""Training runs of the restorer (:mod:`phasestem.learn.nets.restorer`) on the shared trainer.

``build_restorer_trainer(cfg)``: items of the pairs files of AD epochs (:class:`~phasestem.learn.data.restorer_pairs.
RestorePairs`, dihedral augmentation), the network, the offset-free loss over the scanned field. Validation logs
``e_phi`` (E_φ over the field, offsets removed: √(Σ d'² / Σ φ_true²)) and ``e_phi_identity`` (the same of AD's
phase as it is: what an untrained restorer gives). The model file's ``meta["data"]`` keeps the geometry of the
training pairs (``optics``: energy, semi-angle, detector pixel, aberrations, scan step and AD's pixel
``sampling``), which :mod:`phasestem.learn.apply.restorer` checks before a model is applied.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ...base.errors import ConfigError
from ..backbones import count_parameters
from ..config import RestorerRunConfig
from ..data.restorer_pairs import RestorePairs, pairs_optics
from ..meta import make_meta
from ..nets.restorer import Restorer, RestorerConfig, invented_mass, offset_free_difference, offset_free_loss
from ..trainer.loop import Trainer, seed_everything
from . import split_indices

log = logging.getLogger("phasestem.learn")

__all__ = ["restorer_from_config", "build_restorer_trainer", "field_error"]


def restorer_from_config(kind: str, config: dict[str, Any]) -> Restorer:
    """Registry entry: a restorer with random weights (an identity: its last layer is zero)."""
    return Restorer(RestorerConfig.model_validate(config))


def field_error(pred: torch.Tensor, target: torch.Tensor, field: torch.Tensor) -> torch.Tensor:
    """E_φ per image over the field, offsets removed: (B,)."""
    d, m, _ = offset_free_difference(pred, target, field)
    return torch.sqrt((d * d * m).sum(dim=(-2, -1, -3)) / (target * target * m).sum(
        dim=(-2, -1, -3)).clamp_min(1e-30))


def _loss_fn(eps: float, invented_weight: float = 0.0):
    """The training loss: the offset-free Charbonnier term, plus ``invented_weight`` × the invented mass (logged
    as its own term when on)."""
    def loss_fn(m: nn.Module, batch) -> dict[str, torch.Tensor]:
        pred, target, field = m(batch["input"]), batch["target"], batch["field"]
        fit = offset_free_loss(pred, target, field, eps)
        if not invented_weight:
            return {"loss": fit}
        invented = invented_mass(pred, target, field)
        return {"loss": fit + invented_weight * invented, "fit": fit.detach(), "invented": invented.detach()}
    return loss_fn


def _metrics_fn(m: nn.Module, batch) -> dict[str, float]:
    x, y, f = batch["input"], batch["target"], batch["field"]
    return {"e_phi": float(field_error(m(x), y, f).mean()), "e_phi_identity": float(field_error(x[:, :1], y, f).mean())}


def _start_from(net: Restorer, path: str, optics: dict[str, Any]) -> None:
    """``net`` given the weights of the restorer ``path`` (a model file or run folder) of the same body and inputs,
    trained at the geometry ``optics`` of this run's pairs (fine-tuning); anything else is one line."""
    from ..apply.phase import check_training_optics
    from ..trainer.checkpoint import load_weights

    state, meta = load_weights(path)
    theirs = RestorerConfig.model_validate(((meta.get("model") or {}).get("config")) or {})
    if meta.get("model", {}).get("kind") != "restorer" or theirs != net.config:
        raise ConfigError(f"model.init: {path} is not a restorer of this config's body and inputs "
                          f"({net.config.model_dump(mode='json')})")
    check_training_optics(meta, optics, f"model.init {path}")
    net.load_state_dict(state)
    log.info("restorer: starting from the weights of %s", path)


def build_restorer_trainer(cfg: RestorerRunConfig, out_dir: str | Path | None = None) -> Trainer:
    """The trainer of one restorer run (data, network, loss from ``cfg``)."""
    d, mc = cfg.data, cfg.model
    seed_everything(cfg.trainer.seed)
    optics = [pairs_optics(p) for p in d.train]
    if any(o != optics[0] for o in optics[1:]):
        raise ConfigError("data.train: the pairs files record different geometries (one restorer per geometry)")
    channels = tuple(mc.extra_channels)
    train_ds = RestorePairs(d.train, channels, d.epochs, d.crop, d.augment, d.seed)
    if d.test:
        val_ds = RestorePairs(d.test, channels, d.epochs, None, False, d.seed + 1)
    elif d.val_fraction > 0:
        tr, va = split_indices(len(train_ds), d.val_fraction, d.seed)
        val_ds = torch.utils.data.Subset(RestorePairs(d.train, channels, d.epochs, None, False), va.tolist())
        train_ds = torch.utils.data.Subset(train_ds, tr.tolist())
    else:
        val_ds = None
    train_loader = torch.utils.data.DataLoader(train_ds, batch_size=d.batch_size, shuffle=True,
                                               num_workers=d.num_workers, generator=torch.Generator(),
                                               drop_last=len(train_ds) > d.batch_size)
    val_loader = None if val_ds is None or len(val_ds) == 0 else torch.utils.data.DataLoader(
        val_ds, batch_size=d.batch_size, num_workers=d.num_workers)
    net = Restorer(RestorerConfig.model_validate(mc.model_dump(exclude={"init"})))
    if mc.init:
        _start_from(net, mc.init, optics[0])
    meta = make_meta("restorer", net.config, {"optics": optics[0], "epochs": d.epochs,
                                                        "pairs": [str(p) for p in d.train]},
                     cfg.loss.model_dump(mode="json"))
    log.info("restorer (%s): %d parameters; %d training items, %d test items", mc.arch, count_parameters(net),
             len(train_ds), 0 if val_ds is None else len(val_ds))
    loss = _loss_fn(cfg.loss.charbonnier_eps, cfg.loss.invented_mass)
    return Trainer(net, loss, train_loader, val_loader, metrics_fn=_metrics_fn,
                   config=cfg.trainer, out_dir=out_dir if out_dir is not None else cfg.out_dir, meta=meta)
