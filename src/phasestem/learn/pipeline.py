"""Glue between configs, datasets, networks and the trainer: ``train_run(cfg)``, ``load_model(path)``.

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

from .. import __version__
from ..errors import ConfigError, InputFileError
from .config import TrainRunConfig, dump_config
from .data import PatchDataset, SampleDataset, SampleIndex, StitchDataset
from .end2end import End2End, FreezePatchNet, loss_fn_from_config
from .patch_recovery import PatchRecoveryConfig, PatchRecoveryNet, patch_loss_fn
from .phase_stitching import PhaseStitchingConfig, PhaseStitchingNet, stitch_loss_fn
from .trainer import Trainer, load_weights, seed_everything, state_dict_mismatch

log = logging.getLogger("phasestem.learn")


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


def _stitch_config(cfg: TrainRunConfig, geometry) -> PhaseStitchingConfig:
    if geometry.phase_shape[0] != geometry.phase_shape[1]:
        raise ConfigError(f"PhaseStitchingNet needs a square phase image, got {geometry.phase_shape}")
    base = cfg.stitch_model.model_dump(exclude_unset=True) if cfg.stitch_model is not None else {"size": "base"}
    return PhaseStitchingConfig(**{**base, "image_size": geometry.phase_shape[0], "patch": geometry.patch})


def model_meta(model: nn.Module, index: SampleIndex, cfg: TrainRunConfig) -> dict[str, Any]:
    config = model.config if isinstance(model, End2End) else model.config.model_dump(mode="json")
    return {
        "model": {"kind": model.kind, "config": config},
        "data": {"geometry": index.geometry.to_dict(), "preprocess": cfg.data.preprocess.model_dump(),
                 "target": index.target, "target_description": index.target_description,
                 "pattern_shape": list(index.pattern_shape), "files": cfg.data.files,
                 "split_seed": cfg.data.split_seed, "val_fraction": cfg.data.val_fraction,
                 "test_fraction": cfg.data.test_fraction, "max_samples": cfg.data.max_samples},
        "phasestem_version": __version__,
    }


def build_model(meta: dict[str, Any], source: str | Path = "model meta") -> nn.Module:
    """A network (random weights) from the ``meta`` stored with its weights (``source`` names it in errors)."""
    m = meta.get("model")
    kind, config = (m.get("kind"), m.get("config")) if isinstance(m, dict) else (None, None)
    if kind is None or not isinstance(config, dict):
        other = meta.get("network")
        found = f"a '{other}' model (use the {other} commands)" if other else "no patch/stitch/end2end network"
        raise InputFileError(f"{source}: not a patch, stitch or end2end model written by phasestem train: its "
                             f"metadata names {found}")
    if kind == "patch":
        return PatchRecoveryNet({**config, "cnn_pretrained": None, "vit_pretrained": None})
    if kind == "stitch":
        return PhaseStitchingNet({**config, "vit_pretrained": None})
    if kind == "end2end":
        config = {**config, "patch": {**config["patch"], "cnn_pretrained": None, "vit_pretrained": None},
                  "stitch": {**config["stitch"], "vit_pretrained": None}}
        return End2End.from_config(config)
    raise ConfigError(f"{source}: unknown network kind {kind!r} (expected patch, stitch or end2end)")


def load_model(path: str | Path, map_location: str = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild and load a trained network from its weights file or run folder → (model in eval mode, meta)."""
    state, meta = load_weights(path, map_location)
    try:
        model = build_model(meta, path)
    except (TypeError, KeyError, ValueError) as exc:  # a config in the metadata that this version cannot build
        if isinstance(exc, InputFileError | ConfigError):
            raise
        detail = " ".join(str(exc).split())[:300]
        raise InputFileError(f"{path}: its model metadata cannot be rebuilt ({type(exc).__name__}: {detail})") from exc
    problem = state_dict_mismatch(model.state_dict(), state)
    if problem:
        raise InputFileError(f"{path}: the weights do not fit the network its metadata describes ({problem})")
    model.load_state_dict(state)
    return model.eval(), meta


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
    splits = build_index(cfg)
    train_idx, val_idx = splits["train"], splits["val"]
    g = train_idx.geometry
    pre = cfg.data.preprocess
    callbacks: list[Any] = []
    if cfg.stage == "patch":
        model: nn.Module = PatchRecoveryNet(_patch_config(cfg, g))
        train_ds, val_ds = PatchDataset(train_idx, pre, cfg.data.augment), PatchDataset(val_idx, pre)
        loss_fn = patch_loss_fn(cfg.loss.kind)
    elif cfg.stage == "stitch":
        model = PhaseStitchingNet(_stitch_config(cfg, g))
        train_ds, val_ds = StitchDataset(train_idx, pre, cfg.data.augment), StitchDataset(val_idx, pre)
        loss_fn = stitch_loss_fn(cfg.loss.kind, cfg.data.stitch_noise)
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
    """Train one stage as configured; writes ``config.yaml`` into the run folder first."""
    trainer = build_run(cfg)
    dump_config(cfg, Path(cfg.out_dir) / "config.yaml")
    return trainer.fit(resume=cfg.resume)
