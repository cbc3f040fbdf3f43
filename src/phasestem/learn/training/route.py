"""Runs of the scan → phase route (patch, stitch, end2end): configs, datasets, networks and the trainer joined
(``build_run(cfg)``, ``train_run(cfg)``), and ``load_model(path)`` for these three kinds.

Every saved model carries ``meta`` = ``{"model": {"kind", "config"}, "data": {"geometry",
"preprocess", "target", "target_description", "pattern_shape", …}}`` so that prediction can
rebuild the network and apply the same preprocessing from the model file alone.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from ...base.errors import ConfigError
from ..config import TrainRunConfig
from ..data import PatchDataset, SampleDataset, SampleIndex, StitchDataset
from ..meta import make_meta, normalize_meta, require_kind
from ..nets.end2end import End2End, FreezePatchNet, loss_fn_from_config
from ..nets.patch import PatchRecoveryConfig, PatchRecoveryNet, patch_loss_fn
from ..nets.stitch import PhaseStitchingConfig, PhaseStitchingNet, stitch_loss_fn
from ..trainer.loop import Trainer, seed_everything

log = logging.getLogger("phasestem.learn")

#: the networks of the seed's route, trained by :func:`build_run` from a :class:`TrainRunConfig`
KINDS = ("patch", "stitch", "end2end")


def build_index(cfg: TrainRunConfig) -> dict[str, SampleIndex]:
    """Sample index of the configured files, split into train / val / test."""
    d = cfg.data
    index = SampleIndex.from_paths(d.files, target=d.target, block=d.block, stride=d.stride, patch=d.patch,
                                   original=d.original, layout=d.layout)
    if d.max_samples is not None:
        index = index.subset(range(min(d.max_samples, len(index))))
    return index.split(d.val_fraction, d.test_fraction, d.split_seed)


def _patch_config(cfg: TrainRunConfig, geometry) -> PatchRecoveryConfig:
    base = cfg.model.model_dump(exclude_unset=True) if cfg.model is not None else {"size": "base"}
    return PatchRecoveryConfig(**{**base, "block": geometry.block, "patch": geometry.patch})


#: settings whose meaning for saved weights changed after models were written: network → (run-config field, setting,
#: that field's config class)
_CONVENTIONS = {"patch": ("model", "coords", PatchRecoveryConfig), "stitch": ("stitch_model", "centres",
                                                                            PhaseStitchingConfig)}


def resumed_conventions(cfg: TrainRunConfig) -> dict[str, str]:
    """The conventions (``{"patch": coords, "stitch": centres}``) of the networks in the checkpoint a ``resume``
    run continues, for each network whose run config does not set its own.

    A run folder started before ``coords`` / ``centres`` existed has a ``config.yaml`` without them (the defaults
    would now be ``patch_frame`` / ``exact``) and a checkpoint whose metadata reads as ``block_centre`` /
    ``rounded``: resuming must keep training the saved weights on the inputs they were trained on. Empty when
    not resuming or when there is no checkpoint yet; a setting the config gives itself is left to the resume
    check (a disagreement is refused there); an end2end run built from patch/stitch checkpoints follows their own
    metadata."""
    from ..trainer.checkpoint import checkpoint_folder, read_meta

    if not cfg.resume or cfg.patch_checkpoint:
        return {}
    nets = ("patch", "stitch") if cfg.stage == "end2end" else (cfg.stage,)
    nets = tuple(n for n in nets if _CONVENTIONS[n][1] not in _model_fields(cfg, n))
    folder = checkpoint_folder(Path(cfg.out_dir) / "last")
    if not nets or folder is None:
        return {}
    config = (read_meta(folder).get("model") or {}).get("config") or {}
    found = {}
    for net in nets:
        sub = (config.get(net) or {}) if cfg.stage == "end2end" else config
        value = sub.get(_CONVENTIONS[net][1])
        if isinstance(value, str):
            found[net] = value
    return found


def _model_fields(cfg: TrainRunConfig, net: str) -> set[str]:
    model = getattr(cfg, _CONVENTIONS[net][0])
    return set() if model is None else set(model.model_fields_set)


def _follow_checkpoint_conventions(cfg: TrainRunConfig) -> None:
    """On resume, set ``cfg.model.coords`` / ``cfg.stitch_model.centres`` from the checkpoint (see
    :func:`resumed_conventions`), so that the networks and the ``config.yaml`` written into the run folder both say
    what the saved weights were trained on."""
    for net, value in resumed_conventions(cfg).items():
        field, key, config_cls = _CONVENTIONS[net]
        current = getattr(cfg, field)
        base = current.model_dump(exclude_unset=True) if current is not None else {"size": "base"}
        setattr(cfg, field, config_cls(**{**base, key: value}))
        log.info("resume: the checkpoint's %s net uses %s: %s (config.yaml does not say); kept", net, key, value)


def _stitch_config(cfg: TrainRunConfig, geometry) -> PhaseStitchingConfig:
    if geometry.phase_shape[0] != geometry.phase_shape[1]:
        raise ConfigError(f"PhaseStitchingNet needs a square phase image, got {geometry.phase_shape}")
    base = cfg.stitch_model.model_dump(exclude_unset=True) if cfg.stitch_model is not None else {"size": "base"}
    return PhaseStitchingConfig(**{**base, "image_size": geometry.phase_shape[0], "patch": geometry.patch})


def model_meta(model: nn.Module, index: SampleIndex, cfg: TrainRunConfig) -> dict[str, Any]:
    config = model.config if isinstance(model, End2End) else model.config.model_dump(mode="json")
    return make_meta(model.kind, config, {
        "geometry": index.geometry.to_dict(), "preprocess": cfg.data.preprocess.model_dump(),
        "target": index.target, "target_description": index.target_description,
        "pattern_shape": list(index.pattern_shape), "optics": _training_optics(index), "files": cfg.data.files,
        "split_seed": cfg.data.split_seed, "val_fraction": cfg.data.val_fraction,
        "test_fraction": cfg.data.test_fraction, "max_samples": cfg.data.max_samples})


def _training_optics(index: SampleIndex) -> dict[str, Any] | None:
    """The optics and scan step every training file records alike (:meth:`FileInfo.optics`), or None (a file of the
    original layout, or files that differ): what :func:`phasestem.learn.apply.phase.check_training_optics` compares
    new data with."""
    records = [fi.optics() for fi in index.files]
    return records[0] if records[0] is not None and all(r == records[0] for r in records[1:]) else None


def build_model(meta: dict[str, Any], source: str | Path = "model meta") -> nn.Module:
    """A network (random weights) from the ``meta`` stored with its weights (``source`` names it in errors)."""
    meta = normalize_meta(meta)
    kind = require_kind(meta, source, KINDS)
    return network_from_config(kind, meta["model"]["config"])


def network_from_config(kind: str, config: dict[str, Any]) -> nn.Module:
    """A patch / stitch / end2end network with random weights from its settings (no pretrained weights)."""
    if kind == "patch":
        return PatchRecoveryNet({**config, "cnn_pretrained": None, "vit_pretrained": None})
    if kind == "stitch":
        return PhaseStitchingNet({**config, "vit_pretrained": None})
    if kind == "end2end":
        config = {**config, "patch": {**config["patch"], "cnn_pretrained": None, "vit_pretrained": None},
                  "stitch": {**config["stitch"], "vit_pretrained": None}}
        return End2End.from_config(config)
    raise ConfigError(f"unknown network kind {kind!r} (expected patch, stitch or end2end)")


def load_model(path: str | Path, map_location: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild and load a trained patch / stitch / end2end network from its weights file or run folder."""
    from ..registry import load_model as load_any

    return load_any(path, KINDS, map_location)


def _loaders(train_ds, val_ds, cfg: TrainRunConfig):
    d = cfg.data
    kw = {"num_workers": d.num_workers, "persistent_workers": d.num_workers > 0}
    train = DataLoader(train_ds, batch_size=d.batch_size, shuffle=True, drop_last=len(train_ds) > d.batch_size,
                       generator=torch.Generator(), **kw)
    val = DataLoader(val_ds, batch_size=d.val_batch_size or d.batch_size, **kw) if len(val_ds) else None
    return train, val


def build_run(cfg: TrainRunConfig) -> Trainer:
    """Datasets, model, loss, metrics and trainer of one run (not started).

    torch, numpy and ``random`` are seeded with ``trainer.seed`` before anything random is built, so
    the same config gives the same initial weights (and, on one machine, the same training).
    """
    seed_everything(cfg.trainer.seed)
    _follow_checkpoint_conventions(cfg)
    splits = build_index(cfg)
    train_idx, val_idx = splits["train"], splits["val"]
    g = train_idx.geometry
    pre = cfg.data.preprocess
    callbacks: list[Any] = []
    if cfg.stage == "patch":
        model: nn.Module = PatchRecoveryNet(_patch_config(cfg, g))
        train_ds, val_ds = PatchDataset(train_idx, pre, cfg.data.augment), PatchDataset(val_idx, pre)
        loss_fn = patch_loss_fn(cfg.loss.kind, cfg.loss.offset_free)
    elif cfg.stage == "stitch":
        model = PhaseStitchingNet(_stitch_config(cfg, g))
        train_ds, val_ds = StitchDataset(train_idx, pre, cfg.data.augment), StitchDataset(val_idx, pre)
        loss_fn = stitch_loss_fn(cfg.loss.kind, cfg.data.stitch_noise, cfg.loss.offset_free)
    else:
        if cfg.patch_checkpoint and cfg.stitch_checkpoint:
            model = End2End.from_checkpoints(cfg.patch_checkpoint, cfg.stitch_checkpoint, cfg.patch_chunk)
            model.grad_checkpoint = cfg.grad_checkpoint
        elif cfg.patch_checkpoint or cfg.stitch_checkpoint:
            raise ConfigError("end2end: give both patch_checkpoint and stitch_checkpoint, or neither (then the "
                              "networks start from model / stitch_model)")
        else:
            model = End2End(PatchRecoveryNet(_patch_config(cfg, g)), PhaseStitchingNet(_stitch_config(cfg, g)),
                            cfg.patch_chunk, cfg.grad_checkpoint)
        if model.patch_net.config.block != g.block or model.patch_net.config.patch != g.patch:
            raise ConfigError(f"patch checkpoint was trained for block {model.patch_net.config.block}, patch "
                              f"{model.patch_net.config.patch}; the data use block {g.block}, patch {g.patch}")
        train_ds, val_ds = SampleDataset(train_idx, pre, cfg.data.augment), SampleDataset(val_idx, pre)
        loss_fn = loss_fn_from_config(cfg.loss, train_idx, pre)
        if cfg.freeze_patch_epochs:
            callbacks.append(FreezePatchNet(cfg.freeze_patch_epochs))
    train, val = _loaders(train_ds, val_ds, cfg)
    meta = model_meta(model, train_idx, cfg)
    log.info("%s: %d train / %d val items; target %s", cfg.stage, len(train_ds), len(val_ds),
             train_idx.target_description)
    # every loss_fn also reports "psnr" (of the patch or the image), so validation needs no second pass;
    # a frozen patch net gets no gradients, which data-parallel training must be told about
    freezes = any(isinstance(cb, FreezePatchNet) for cb in callbacks)
    return Trainer(model, loss_fn, train, val, config=cfg.trainer, out_dir=cfg.out_dir, meta=meta,
                   callbacks=callbacks, find_unused_parameters=freezes)


def train_run(cfg: TrainRunConfig) -> dict[str, Any]:
    """Train one stage as configured (:func:`phasestem.learn.registry.train_run`)."""
    from ..registry import train_run as run

    return run(cfg)
