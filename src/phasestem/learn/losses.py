"""Losses of the restoration networks (SPEC §5): Charbonnier, Laplacian gradient, perceptual, 1 − MS-SSIM,
learnable soft-max weights; the two-branch Phaseformer loss built from them is
:class:`phasestem.learn.nets.phaseformer.PhaseformerLoss` (with its network). Every piece is an
``nn.Module`` so learnable weights are ordinary parameters (they must reach the optimiser: train the
:class:`PhaseformerLoss` together with the network, e.g. as a sub-module of the trained module).

Images are (B, 1, H, W) (or (B, H, W)); losses are computed in float32 even under autocast.

Corrections of the published training script (SPEC §5): Charbonnier is mean √(d² + ε²) with
ε = 1e-3 (not SmoothL1); the structural term is 1 − MS-SSIM (not + MS-SSIM); the MS-SSIM window is
chosen for the image size (:func:`phasestem.metrics.ms_ssim_window`: 5 px at 76², 11 px at 256²);
the perceptual network never downloads (see :class:`PerceptualLoss`).
"""
from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .. import metrics
from ..base.errors import ConfigError, InputFileError
from ..base.extras import require

log = logging.getLogger("phasestem.learn.losses")

__all__ = [
    "charbonnier", "CharbonnierLoss", "laplacian", "GradientLoss", "MSSSIMLoss", "PerceptualLoss",
    "WeightedLoss", "COMPONENTS",
]

COMPONENTS = ("charbonnier", "perceptual", "gradient", "ms_ssim")
_LAPLACIAN = torch.tensor([[0.0, 1.0, 0.0], [1.0, -4.0, 1.0], [0.0, 1.0, 0.0]])
# VGG16 ``features`` up to relu3_3 (torchvision layer indices are kept so its state_dict loads)
_VGG_CFG = (64, 64, "M", 128, 128, "M", 256, 256, 256)
_IMAGENET_MEAN = (0.485, 0.456, 0.406)
_IMAGENET_STD = (0.229, 0.224, 0.225)


def as_b1hw(x: torch.Tensor) -> torch.Tensor:
    """Images (B, H, W) or (B, 1, H, W) as (B, 1, H, W) in floating point."""
    x = x[:, None] if x.ndim == 3 else x
    return x.float()


def charbonnier(pred: torch.Tensor, target: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """mean √((pred − target)² + ε²) (units of the image)."""
    d = pred.float() - target.float()
    return torch.sqrt(d * d + eps * eps).mean()


class CharbonnierLoss(nn.Module):
    """Charbonnier (smooth L1-like) loss, mean √(d² + ε²), ε = 1e-3 by default."""

    def __init__(self, eps: float = 1e-3):
        super().__init__()
        self.eps = eps

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return charbonnier(pred, target, self.eps)


def laplacian(x: torch.Tensor) -> torch.Tensor:
    """5-point Laplacian [[0,1,0],[1,−4,1],[0,1,0]] of (B, 1, H, W) → (B, 1, H−2, W−2) (valid, no padding)."""
    x = as_b1hw(x)
    k = _LAPLACIAN.to(x.device, x.dtype)[None, None]
    with torch.autocast(device_type=x.device.type, enabled=False):
        return F.conv2d(x, k)


class GradientLoss(nn.Module):
    """mean |∇²pred − ∇²target| over interior pixels (5-point Laplacian, no padding)."""

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return (laplacian(pred) - laplacian(target)).abs().mean()


class MSSSIMLoss(nn.Module):
    """1 − MS-SSIM(pred, target) via :func:`phasestem.metrics.ms_ssim` (window suited to the size).

    ``data_range=None``: each target's max − min. Images with a side ≤ 32 px (too small for 5
    scales) use 1 − SSIM instead. Values are clamped to [0, 2].
    """

    def __init__(self, data_range: float | None = None, win_size: int | None = None):
        super().__init__()
        self.data_range, self.win_size = data_range, win_size

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p, t = as_b1hw(pred), as_b1hw(target)
        if min(p.shape[-2:]) > 32:
            s = metrics.ms_ssim(p, t, data_range=self.data_range, win_size=self.win_size)
        else:
            s = metrics.ssim(p, t, data_range=self.data_range, win_size=self.win_size)
        return (1.0 - s).clamp(0.0, 2.0)


def _vgg_features() -> nn.Sequential:
    layers: list[nn.Module] = []
    c = 3
    for v in _VGG_CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            layers += [nn.Conv2d(c, int(v), 3, padding=1), nn.ReLU(inplace=False)]
            c = int(v)
    return nn.Sequential(*layers)


def _load_state(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise InputFileError(f"{path}: perceptual-loss weights file not found")
    if path.suffix == ".safetensors":
        load_file = require("safetensors.torch", f"reading {path.name}").load_file
        state = load_file(str(path))
    else:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "state_dict" in state:
            state = state["state_dict"]
    out = {}
    for k, v in state.items():
        k = k[len("features."):] if k.startswith("features.") else k
        if k.split(".")[0].isdigit():
            out[k] = v
    return out


class PerceptualLoss(nn.Module):
    """L1 distance of VGG16 features (relu1_2, relu2_2, relu3_3), averaged over the layers.

    Weights come from a LOCAL file only (``weights``: torchvision's ``vgg16`` state_dict as ``.pth``/
    ``.pt`` — read with ``weights_only=True`` — or ``.safetensors``; keys ``features.N.*`` or ``N.*``).
    Nothing is ever downloaded. Without a file the documented fallback is used and logged: the same
    layers with fixed random weights (seeded, Kaiming-uniform, frozen), a multi-scale random-feature
    distance that still compares local structure but carries no ImageNet prior.

    Images are scaled by each target's min/range, repeated to 3 channels and ImageNet-normalised;
    images larger than ``max_size`` px are area-down-sampled first (CPU cost). The network is frozen
    and not saved in ``state_dict`` (it is rebuilt from its file).
    """

    def __init__(self, weights: str | Path | None = None, max_size: int = 256, seed: int = 0,
                 layers: Sequence[int] = (3, 8, 15)):
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            net = _vgg_features()
        self.source = "random (fallback)"
        if weights is not None:
            state = _load_state(Path(weights))
            missing, unexpected = net.load_state_dict(state, strict=False)
            if missing:
                raise InputFileError(f"{weights}: not VGG16 features weights (missing {missing[:3]} …)")
            self.source = str(weights)
        else:
            log.warning("perceptual loss: no local VGG16 weights given; using fixed random VGG16 features "
                        "(seed %d) as the documented fallback", seed)
        net.requires_grad_(False).eval()
        self.layers = tuple(int(i) for i in layers)
        if max(self.layers) >= len(net):
            raise ConfigError(f"perceptual layers {self.layers} exceed the {len(net)} VGG16 layers kept")
        self._net = [net[: max(self.layers) + 1]]  # a list: not a sub-module, so not in state_dict / optimiser
        self.max_size = max_size
        self.register_buffer("mean", torch.tensor(_IMAGENET_MEAN)[None, :, None, None], persistent=False)
        self.register_buffer("std", torch.tensor(_IMAGENET_STD)[None, :, None, None], persistent=False)

    def _features(self, x: torch.Tensor) -> list[torch.Tensor]:
        net = self._net[0]
        if next(net.parameters()).device != x.device:
            net.to(x.device)
        feats = []
        for i, layer in enumerate(net):
            x = layer(x)
            if i in self.layers:
                feats.append(x)
        return feats

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        p, t = as_b1hw(pred), as_b1hw(target)
        lo = t.detach().amin(dim=(-2, -1), keepdim=True)
        rng = (t.detach().amax(dim=(-2, -1), keepdim=True) - lo).clamp_min(1e-6)
        p, t = (p - lo) / rng, (t - lo) / rng
        if max(p.shape[-2:]) > self.max_size:
            size = [max(1, round(s * self.max_size / max(p.shape[-2:]))) for s in p.shape[-2:]]
            p, t = F.interpolate(p, size=size, mode="area"), F.interpolate(t, size=size, mode="area")
        p = (p.expand(-1, 3, -1, -1) - self.mean) / self.std
        t = (t.expand(-1, 3, -1, -1) - self.mean) / self.std
        with torch.autocast(device_type=p.device.type, enabled=False):
            fp, ft = self._features(p), self._features(t)
        return torch.stack([(a - b).abs().mean() for a, b in zip(fp, ft, strict=True)]).mean()


class WeightedLoss(nn.Module):
    """Σᵢ softmax(w)ᵢ·Lᵢ with learnable logits w (n,), initialised equal (weights 1/n).

    The logits are 1-D parameters (no weight decay in the shared trainer). Note that minimising
    over w moves weight towards the currently smallest loss; give them a small learning-rate scale
    (``trainer.lr_scale: {criterion: 0.1}``) if they drift too fast.
    """

    def __init__(self, n: int, names: Sequence[str] | None = None):
        super().__init__()
        if n < 1:
            raise ConfigError(f"WeightedLoss needs at least one loss, got {n}")
        self.names = tuple(names) if names is not None else tuple(f"w{i}" for i in range(n))
        if len(self.names) != n:
            raise ConfigError(f"WeightedLoss: {n} losses but {len(self.names)} names")
        self.logits = nn.Parameter(torch.zeros(n))

    def weights(self) -> torch.Tensor:
        """Current soft-max weights (n,), summing to 1."""
        return self.logits.softmax(0)

    def forward(self, *losses: torch.Tensor) -> torch.Tensor:
        if len(losses) != self.logits.numel():
            raise ValueError(f"WeightedLoss expects {self.logits.numel()} losses, got {len(losses)}")
        return (self.weights() * torch.stack([loss.float() for loss in losses])).sum()
