"""Training runs of the autoencoder and Phaseformer on the shared :class:`~phasestem.learn.trainer.Trainer`.

``train_autoencoder(cfg)`` / ``train_phaseformer(cfg)`` build data, model and loss from a run config
(:mod:`.restore_config`), write ``config.yaml`` into the run folder and call ``Trainer.fit``. Model
files carry ``meta`` (``network``, ``model`` settings, preprocessing) so :mod:`.restore_apply` can
rebuild the network from its file alone. Phaseformer is trained as :class:`PhaseformerTrainable`
(network ``net`` + loss ``criterion``) so the learnable loss weights are optimiser parameters and are
saved/resumed with the model; they are logged as ``train/wL/…``, ``train/wH/…``, ``train/w_branch/…``.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
import torch.nn.functional as F
import yaml
from torch import nn

from .. import metrics
from ..errors import ConfigError, ShapeError
from ..io import seed as seedfile
from .meta import make_meta
from .nets.autoencoder import Autoencoder, count_parameters, scale_patterns
from .nets.phaseformer import Phaseformer, PhaseformerConfig, PhaseformerLoss
from .pairs import paired_dataset
from .restore_config import AutoencoderRunConfig, PhaseformerRunConfig
from .trainer import Trainer, seed_everything

log = logging.getLogger("phasestem.learn.restore")

__all__ = ["load_patterns", "PatternSet", "train_autoencoder", "build_autoencoder_trainer", "PhaseformerTrainable",
           "build_phaseformer_trainer", "train_phaseformer", "write_config"]


# ------------------------------------------------------------------------------------- autoencoder data
def _bin(p: np.ndarray, f: int) -> np.ndarray:
    if f == 1:
        return p
    h, w = (p.shape[-2] // f) * f, (p.shape[-1] // f) * f
    p = p[..., :h, :w]
    return p.reshape(*p.shape[:-2], h // f, f, w // f, f).mean(axis=(-3, -1))


def _scans(path: str, patterns_key: str | None):
    """Yield (name, (Sy, Sx, H, W) or (N, H, W) array-like) for each scan in a file."""
    if path.lower().endswith((".h5", ".hdf5", ".hdf")) and patterns_key is None:
        with h5py.File(path, "r") as f:
            keys = [seedfile.patterns_key(i) for i in seedfile.sample_ids(f.keys())]
            if keys:
                for k in keys:
                    yield f"{path}:{k}", f[k][()]
                return
    from .. import io

    ds = io.load(path, **({"patterns_key": patterns_key} if patterns_key else {}))
    yield path, np.asarray(ds.patterns)


def load_patterns(files: list[str], patterns_key: str | None = None, per_scan: int | None = 512, bin: int = 1,
                  seed: int = 0) -> np.ndarray:
    """Random subsets of patterns from every scan of ``files`` → float32 (N, H, W) in memory."""
    from .data import expand_paths

    rng = np.random.default_rng(seed)
    out, shape = [], None
    for path in expand_paths(files):
        for name, scan in _scans(path, patterns_key):
            arr = np.asarray(scan, dtype=np.float32)
            if arr.ndim not in (3, 4):
                raise ShapeError(f"{name}: patterns must be (Sy, Sx, H, W) or (N, H, W), got {arr.shape}")
            arr = arr.reshape(-1, *arr.shape[-2:])
            if per_scan is not None and per_scan < len(arr):
                arr = arr[np.sort(rng.choice(len(arr), per_scan, replace=False))]
            arr = _bin(arr, bin)
            if shape is not None and arr.shape[1:] != shape:
                raise ShapeError(f"{name}: pattern shape {arr.shape[1:]} differs from {shape} of earlier files")
            shape = arr.shape[1:]
            out.append(arr)
    pats = np.concatenate(out)
    if min(pats.shape[1:]) < 32 or max(pats.shape[1:]) > 512:
        raise ShapeError(f"autoencoder patterns must be 32…512 px per side, got {pats.shape[1:]} (adjust data.bin)")
    return pats


class PatternSet(torch.utils.data.Dataset):
    """In-memory patterns (N, H, W) scaled to [0, 1]; item ``{"x": (1, H, W)}``."""

    def __init__(self, patterns: np.ndarray, scaling: str = "log", floor: float = 1e-3):
        self.x = scale_patterns(torch.from_numpy(np.ascontiguousarray(patterns)), scaling, floor)[:, None]

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        return {"x": self.x[int(i)]}


def _split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    n_val = int(round(val_fraction * n))
    if n - n_val < 1:
        raise ConfigError(f"the split leaves no training items ({n} items, val_fraction {val_fraction})")
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def write_config(cfg: Any, out_dir: str | Path) -> Path:
    """Copy of the run config (YAML) into the run folder, atomically."""
    path = Path(out_dir) / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    os.replace(tmp, path)
    return path


def autoencoder_meta(cfg: AutoencoderRunConfig, pattern_shape: tuple[int, int]) -> dict[str, Any]:
    d = cfg.data
    return make_meta("autoencoder", cfg.model.model_dump(mode="json"),
                     {"preprocess": {"scaling": d.scaling, "log_floor": d.log_floor, "bin": d.bin},
                      "pattern_shape": list(pattern_shape)}, cfg.loss.model_dump(mode="json"))


def autoencoder_from_config(kind: str, config: dict[str, Any]) -> Autoencoder:
    """Registry entry: an autoencoder with random weights from its settings."""
    return build_autoencoder(config)


def phaseformer_from_config(kind: str, config: dict[str, Any]) -> Phaseformer:
    """Registry entry: a Phaseformer with random weights from its settings."""
    return Phaseformer(PhaseformerConfig.from_dict(config))


def build_autoencoder(model_cfg: dict[str, Any]) -> Autoencoder:
    out = model_cfg.get("out_shape")
    return Autoencoder(model_cfg.get("latent_dim", 32), tuple(out) if out else None,
                       channels=model_cfg.get("channels", 128), decoder_blocks=model_cfg.get("decoder_blocks", 3),
                       final_relu=model_cfg.get("final_relu", False))


def build_autoencoder_trainer(cfg: AutoencoderRunConfig, patterns: np.ndarray | None = None,
                              out_dir: str | Path | None = None) -> Trainer:
    """The trainer for one autoencoder run (``patterns`` (N, H, W) raw, else read from ``cfg.data``)."""
    d = cfg.data
    seed_everything(cfg.trainer.seed)  # before the network is built: same seed → same initial weights
    if patterns is None:
        patterns = load_patterns(d.files, d.patterns_key, d.patterns_per_scan, d.bin, d.seed)
    full = PatternSet(patterns, d.scaling, d.log_floor)
    tr, va = _split(len(full), d.val_fraction, d.seed)
    gen = torch.Generator()
    train_loader = torch.utils.data.DataLoader(torch.utils.data.Subset(full, tr.tolist()), batch_size=d.batch_size,
                                               shuffle=True, drop_last=len(tr) > d.batch_size,
                                               num_workers=d.num_workers, generator=gen)
    val_loader = None
    if len(va):
        val_loader = torch.utils.data.DataLoader(torch.utils.data.Subset(full, va.tolist()),
                                                 batch_size=d.batch_size, num_workers=d.num_workers)
    model = build_autoencoder(cfg.model.model_dump())
    lw = cfg.loss.model_dump()

    def loss_fn(m: nn.Module, batch) -> dict[str, torch.Tensor]:
        x = batch["x"]
        x_hat, z = m(x, return_latent=True)  # through the (possibly data-parallel) wrapper
        return _unwrap(m).compute_loss(x, x_hat.float(), z.float(), **lw)

    def metrics_fn(m: nn.Module, batch) -> dict[str, float]:
        x = batch["x"]
        x_hat = m(x).float()
        if x_hat.shape[-2:] != x.shape[-2:]:
            x_hat = F.interpolate(x_hat, size=tuple(x.shape[-2:]), mode="bilinear", align_corners=False)
        return {"psnr": float(metrics.psnr(x_hat, x, data_range=1.0)),
                "ssim": float(metrics.ssim(x_hat, x, data_range=1.0)),
                "mse": float(metrics.mse(x_hat, x))}

    log.info("autoencoder: %d parameters, %d training / %d validation patterns of %s px", count_parameters(model),
             len(tr), len(va), tuple(patterns.shape[1:]))
    return Trainer(model, loss_fn, train_loader, val_loader, metrics_fn=metrics_fn, config=cfg.trainer,
                   out_dir=out_dir if out_dir is not None else cfg.out_dir,
                   meta=autoencoder_meta(cfg, tuple(patterns.shape[1:])))


def train_autoencoder(cfg: AutoencoderRunConfig) -> dict[str, Any]:
    """Run one autoencoder training (config copy → run folder); returns the trainer's summary."""
    from .registry import train_run

    return train_run(cfg)


# ------------------------------------------------------------------------------------- phaseformer
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


def _unwrap(m: nn.Module) -> nn.Module:
    """The model inside a DataParallel / DistributedDataParallel wrapper (or ``m`` itself)."""
    return getattr(m, "module", m)


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
        tr, va = _split(len(train_ds), d.val_fraction, d.seed)
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
    net = Phaseformer(PhaseformerConfig.from_dict(cfg.model.model_dump()))
    lc = cfg.loss
    criterion = PhaseformerLoss(lc.components, lc.perceptual_weights, lc.charbonnier_eps, lc.perceptual_max_size)
    model = PhaseformerTrainable(net, criterion)
    meta = make_meta("phaseformer", net.config.to_dict(), {}, lc.model_dump(mode="json"),
                     perceptual_source=getattr(criterion.terms["perceptual"], "source", None)
                     if "perceptual" in criterion.terms else None)
    log.info("phaseformer: %d parameters; %d training pairs, %d test pairs", count_parameters(net), len(train_ds),
             0 if val_ds is None else len(val_ds))
    return Trainer(model, phaseformer_loss_fn, train_loader, val_loader, metrics_fn=phaseformer_metrics_fn,
                   config=cfg.trainer, out_dir=out_dir if out_dir is not None else cfg.out_dir, meta=meta)


def train_phaseformer(cfg: PhaseformerRunConfig) -> dict[str, Any]:
    """Run one Phaseformer training (config copy → run folder); returns the trainer's summary."""
    from .registry import train_run

    return train_run(cfg)
