"""Training runs of the diffraction-pattern autoencoder on the shared :class:`~phasestem.learn.trainer.Trainer`.

``build_autoencoder_trainer(cfg)`` builds data (random patterns of every scan of the configured files, in
memory, scaled to [0, 1]), network and loss from an :class:`~phasestem.learn.config.AutoencoderRunConfig`;
``train_autoencoder(cfg)`` writes ``config.yaml`` into the run folder and calls ``Trainer.fit``. Model files
carry ``meta`` (``network``, ``model`` settings, preprocessing) so :mod:`phasestem.learn.apply.latent` can
rebuild the network from its file alone.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ... import metrics
from ...base.errors import ShapeError
from ...io import seed as seedfile
from ...io.hdf5 import check_written, open_file, reading
from ...physics.resample import resize
from ..backbones import count_parameters
from ..config import AutoencoderRunConfig
from ..meta import make_meta
from ..nets.autoencoder import Autoencoder, scale_patterns
from ..trainer.loop import Trainer, seed_everything
from . import split_indices

log = logging.getLogger("phasestem.learn")

__all__ = ["load_patterns", "PatternSet", "build_autoencoder", "build_autoencoder_trainer", "train_autoencoder"]


# ------------------------------------------------------------------------------------- data
def bin_patterns(p: np.ndarray, f: int) -> np.ndarray:
    """Patterns (..., H, W) averaged over ``f`` × ``f`` pixel bins (edge pixels that fill no bin dropped)."""
    if f == 1:
        return p
    h, w = (p.shape[-2] // f) * f, (p.shape[-1] // f) * f
    p = p[..., :h, :w]
    return p.reshape(*p.shape[:-2], h // f, f, w // f, f).mean(axis=(-3, -1))


def _scans(path: str, patterns_key: str | None):
    """Yield (name, (Sy, Sx, H, W) or (N, H, W) array-like) for each scan in a file."""
    if path.lower().endswith((".h5", ".hdf5", ".hdf")) and patterns_key is None:
        with open_file(path, "4D-STEM training file") as f, reading(path, "4D-STEM training file"):
            keys = [seedfile.patterns_key(i) for i in seedfile.sample_ids(f.keys())]
            for k in keys:
                check_written(f[k], f"{path}:{k}")
            if keys:
                for k in keys:
                    yield f"{path}:{k}", f[k][()]
                return
    from ... import io

    ds = io.load(path, **({"patterns_key": patterns_key} if patterns_key else {}))
    yield path, np.asarray(ds.patterns)


def load_patterns(files: list[str], patterns_key: str | None = None, per_scan: int | None = 512, bin: int = 1,
                  seed: int = 0) -> np.ndarray:
    """Random subsets of patterns from every scan of ``files`` → float32 (N, H, W) in memory."""
    from ..data import expand_paths

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
            arr = bin_patterns(arr, bin)
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


def autoencoder_meta(cfg: AutoencoderRunConfig, pattern_shape: tuple[int, int]) -> dict[str, Any]:
    d = cfg.data
    return make_meta("autoencoder", cfg.model,
                     {"preprocess": {"scaling": d.scaling, "log_floor": d.log_floor, "bin": d.bin},
                      "pattern_shape": list(pattern_shape)}, cfg.loss.model_dump(mode="json"))


def autoencoder_from_config(kind: str, config: dict[str, Any]) -> Autoencoder:
    """Registry entry: an autoencoder with random weights from its settings."""
    return build_autoencoder(config)


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
    tr, va = split_indices(len(full), d.val_fraction, d.seed)
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
            x_hat = resize(x_hat, tuple(x.shape[-2:]))
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
    from ..registry import train_run

    return train_run(cfg)



def _unwrap(m: nn.Module) -> nn.Module:
    """The model inside a DataParallel / DistributedDataParallel wrapper (or ``m`` itself)."""
    return getattr(m, "module", m)
