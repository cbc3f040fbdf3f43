"""Phaseformer: a small Restormer for phase images with ECA and a phase-only feature transform (SPEC §5).

Layout (defaults = the published Phaseformer: channels 16/32/64/128, blocks 2/3/3/4, heads 1/2/4/8,
4 refinement blocks, GDFN expansion 2.66; ≈ 1.8 M parameters)::

    x (B,1,H,W) → 3×3 conv → [enc1: 2 blocks, 16 ch] → down → [enc2: 3, 32] → down → [enc3: 3, 64]
      → down → [latent: 4, 128] → up → cat(skip3) → 1×1 → [dec3: 3, 64] → up → cat(skip2) → 1×1
      → [dec2: 3, 32] → up → cat(skip1) → [dec1: 2, 32] → [refine: 4, 32]
      ├→ 3×3 conv → + x                                 = out_L (B,1,H,W)
      └→ 3×3 conv → PixelShuffle(2) → 3×3 conv → + up₂(x) = out_H (B,1,2H,2W)

* Transformer block: x + MDTA(LN(x)), then x + GDFN(LN(x)); LN over channels with bias.
* MDTA: 1×1 + depthwise 3×3 qkv; q, k ← phase-only transform, L2-normalised over pixels; per-head
  channel attention softmax(q·kᵀ·τ) v with a learnable temperature τ per head; 1×1 projection.
* GDFN: 1×1 to 2·hidden, depthwise 3×3, GELU(x₁)·x₂, 1×1 back (hidden = 2.66·C).
* Down: 3×3 conv C→C/2 + PixelUnshuffle(2); up: 3×3 conv C→2C + PixelShuffle(2).
* Skips: skip = e + ECA(P(e)), where P(e) = Re(IFFT2(exp(i·angle(FFT2 e)))) per channel (ortho FFT,
  so P(e) has unit RMS) and ECA = global average pool → 1-D conv over channels (adaptive odd kernel
  k = |log₂C/2 + 1/2|) → sigmoid → channel gate. The original features are kept next to the
  phase-only ones because P alone discards all amplitude information.
* The FFTs run in float32 even under autocast. ``H`` and ``W`` must be multiples of 8.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ...base.configfile import ConfigPath, StrictModel
from ...base.errors import ConfigError, ShapeError
from ..losses import COMPONENTS, CharbonnierLoss, GradientLoss, MSSSIMLoss, PerceptualLoss, WeightedLoss, as_b1hw

log = logging.getLogger("phasestem.learn.losses")

__all__ = ["Phaseformer", "PhaseformerConfig", "phase_only", "ECA", "MDTA", "GDFN", "TransformerBlock",
           "PhaseformerLoss", "PhaseformerModelConfig", "PhaseformerLossConfig"]


class PhaseformerModelConfig(StrictModel):
    """Phaseformer architecture (defaults = the published model, ≈ 1.8 M parameters)."""

    dim: int = Field(16, ge=2, description="channels of level 1 (levels: dim, 2·dim, 4·dim, 8·dim)")
    blocks: tuple[int, int, int, int] = Field((2, 3, 3, 4), description="transformer blocks per level")
    heads: tuple[int, int, int, int] = Field((1, 2, 4, 8), description="attention heads per level")
    refinement_blocks: int = Field(4, ge=0, description="refinement blocks at full resolution")
    ffn_expansion: float = Field(2.66, gt=0, description="GDFN hidden-channel expansion")
    phase_attention: bool = Field(True, description="phase-only transform on the attention queries/keys")
    phase_skips: bool = Field(True, description="phase-only transform + ECA on the encoder skips")
    residual: bool = Field(True, description="predict a correction added to the (up-sampled) input")


class PhaseformerConfig(PhaseformerModelConfig):
    """The architecture and its channels (the data's, not the run config's): what every checkpoint stores."""

    in_channels: int = Field(1, ge=1, description="input channels")
    out_channels: int = Field(1, ge=1, description="output channels")


def phase_only(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """Re(IFFT2(FFT2(x)/|FFT2(x)|)) over the last two axes (ortho FFT, float32); same shape as x."""
    dtype = x.dtype
    with torch.autocast(device_type=x.device.type, enabled=False):
        f = torch.fft.fft2(x.float(), norm="ortho")
        out = torch.fft.ifft2(f / (f.abs() + eps), norm="ortho").real
    return out.to(dtype)


class LayerNorm2d(nn.Module):
    """LayerNorm over the channel axis of (B, C, H, W), with weight and bias."""

    def __init__(self, channels: int):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mu = x.mean(1, keepdim=True)
        var = (x - mu).pow(2).mean(1, keepdim=True)
        return (x - mu) / torch.sqrt(var + 1e-5) * self.weight[:, None, None] + self.bias[:, None, None]


class ECA(nn.Module):
    """Efficient channel attention: GAP → 1-D conv over channels (odd kernel from C) → sigmoid gate."""

    def __init__(self, channels: int, gamma: float = 2.0, b: float = 1.0):
        super().__init__()
        k = int(abs(math.log2(channels) / gamma + b / gamma))
        k = k if k % 2 else k + 1
        self.conv = nn.Conv1d(1, 1, k, padding=k // 2, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.conv(x.mean(dim=(-2, -1))[:, None, :])  # (B, 1, C)
        return x * torch.sigmoid(w)[:, 0, :, None, None]


class MDTA(nn.Module):
    """Multi-Dconv head transposed (channel) attention with optional phase-only q/k."""

    def __init__(self, dim: int, heads: int, phase: bool = True):
        super().__init__()
        if dim % heads:
            raise ValueError(f"MDTA: {dim} channels not divisible by {heads} heads")
        self.heads, self.phase = heads, phase
        self.temperature = nn.Parameter(torch.ones(heads, 1, 1))
        self.qkv = nn.Conv2d(dim, dim * 3, 1)
        self.qkv_dw = nn.Conv2d(dim * 3, dim * 3, 3, padding=1, groups=dim * 3)
        self.project = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        q, k, v = self.qkv_dw(self.qkv(x)).chunk(3, dim=1)
        if self.phase:
            q, k = phase_only(q), phase_only(k)
        q, k, v = (t.reshape(b, self.heads, c // self.heads, h * w) for t in (q, k, v))
        q, k = F.normalize(q, dim=-1), F.normalize(k, dim=-1)
        attn = (q @ k.transpose(-2, -1) * self.temperature).softmax(dim=-1)
        return self.project((attn @ v).reshape(b, c, h, w))


class GDFN(nn.Module):
    """Gated-Dconv feed-forward network: 1×1 → depthwise 3×3 → GELU(x₁)·x₂ → 1×1."""

    def __init__(self, dim: int, expansion: float = 2.66):
        super().__init__()
        hidden = int(dim * expansion)
        self.project_in = nn.Conv2d(dim, hidden * 2, 1)
        self.dw = nn.Conv2d(hidden * 2, hidden * 2, 3, padding=1, groups=hidden * 2)
        self.project_out = nn.Conv2d(hidden, dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x1, x2 = self.dw(self.project_in(x)).chunk(2, dim=1)
        return self.project_out(F.gelu(x1) * x2)


class TransformerBlock(nn.Module):
    """Restormer block: x + MDTA(LN(x)); x + GDFN(LN(x))."""

    def __init__(self, dim: int, heads: int, expansion: float = 2.66, phase: bool = True):
        super().__init__()
        self.norm1, self.attn = LayerNorm2d(dim), MDTA(dim, heads, phase)
        self.norm2, self.ffn = LayerNorm2d(dim), GDFN(dim, expansion)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.ffn(self.norm2(x))


def _stage(n: int, dim: int, heads: int, cfg: PhaseformerConfig) -> nn.Sequential:
    return nn.Sequential(*(TransformerBlock(dim, heads, cfg.ffn_expansion, cfg.phase_attention) for _ in range(n)))


class Downsample(nn.Sequential):
    def __init__(self, dim: int):
        super().__init__(nn.Conv2d(dim, dim // 2, 3, padding=1, bias=False), nn.PixelUnshuffle(2))


class Upsample(nn.Sequential):
    def __init__(self, dim: int):
        super().__init__(nn.Conv2d(dim, dim * 2, 3, padding=1, bias=False), nn.PixelShuffle(2))


class PhaseSkip(nn.Module):
    """Encoder skip: e + ECA(phase_only(e)) (or e unchanged when disabled)."""

    def __init__(self, dim: int, enabled: bool = True):
        super().__init__()
        self.eca = ECA(dim) if enabled else None

    def forward(self, e: torch.Tensor) -> torch.Tensor:
        return e if self.eca is None else e + self.eca(phase_only(e))


class Phaseformer(nn.Module):
    """Restore a coarse phase image: (B, 1, H, W) → (out_L (B, 1, H, W), out_H (B, 1, 2H, 2W)).

    ``H`` and ``W`` must be multiples of 8. With ``residual`` the network predicts a correction added
    to the input (out_H: to the bilinearly up-sampled input); the output heads start at zero, so the
    untrained model is exactly the identity (and bilinear ×2).
    """

    def __init__(self, config: PhaseformerConfig | None = None, **overrides):
        super().__init__()
        cfg = config or PhaseformerConfig()
        if overrides:
            cfg = PhaseformerConfig.model_validate({**cfg.model_dump(), **overrides})
        self.config = cfg
        d, nb, nh = cfg.dim, cfg.blocks, cfg.heads
        self.embed = nn.Conv2d(cfg.in_channels, d, 3, padding=1, bias=False)
        self.enc1 = _stage(nb[0], d, nh[0], cfg)
        self.down1 = Downsample(d)
        self.enc2 = _stage(nb[1], 2 * d, nh[1], cfg)
        self.down2 = Downsample(2 * d)
        self.enc3 = _stage(nb[2], 4 * d, nh[2], cfg)
        self.down3 = Downsample(4 * d)
        self.latent = _stage(nb[3], 8 * d, nh[3], cfg)
        self.skip1, self.skip2, self.skip3 = (PhaseSkip(c, cfg.phase_skips) for c in (d, 2 * d, 4 * d))
        self.up3 = Upsample(8 * d)
        self.reduce3 = nn.Conv2d(8 * d, 4 * d, 1, bias=False)
        self.dec3 = _stage(nb[2], 4 * d, nh[2], cfg)
        self.up2 = Upsample(4 * d)
        self.reduce2 = nn.Conv2d(4 * d, 2 * d, 1, bias=False)
        self.dec2 = _stage(nb[1], 2 * d, nh[1], cfg)
        self.up1 = Upsample(2 * d)
        self.dec1 = _stage(nb[0], 2 * d, nh[0], cfg)
        self.refine = _stage(cfg.refinement_blocks, 2 * d, nh[0], cfg)
        self.out_low = nn.Conv2d(2 * d, cfg.out_channels, 3, padding=1)
        self.high = nn.Sequential(nn.Conv2d(2 * d, 8 * d, 3, padding=1), nn.PixelShuffle(2), nn.GELU())
        self.out_high = nn.Conv2d(2 * d, cfg.out_channels, 3, padding=1)
        if cfg.residual:  # zero-initialised heads: the untrained network returns its (up-sampled) input
            for head in (self.out_low, self.out_high):
                nn.init.zeros_(head.weight)
                nn.init.zeros_(head.bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if x.ndim == 3:
            x = x[:, None]
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ShapeError(f"Phaseformer input must be (B, {self.config.in_channels}, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        if h % 8 or w % 8:
            raise ShapeError(f"Phaseformer input sides must be multiples of 8, got {h}×{w} (pad or crop first)")
        e1 = self.enc1(self.embed(x))
        e2 = self.enc2(self.down1(e1))
        e3 = self.enc3(self.down2(e2))
        z = self.latent(self.down3(e3))
        d3 = self.dec3(self.reduce3(torch.cat([self.up3(z), self.skip3(e3)], 1)))
        d2 = self.dec2(self.reduce2(torch.cat([self.up2(d3), self.skip2(e2)], 1)))
        d1 = self.refine(self.dec1(torch.cat([self.up1(d2), self.skip1(e1)], 1)))
        out_l = self.out_low(d1)
        out_h = self.out_high(self.high(d1))
        if self.config.residual and self.config.in_channels == self.config.out_channels:
            out_l = out_l + x
            out_h = out_h + F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)
        return out_l, out_h


class PhaseformerLossConfig(StrictModel):
    """Per-branch learnable soft-max mix of the components; learnable 2-way branch weight."""

    components: list[Literal["charbonnier", "perceptual", "gradient", "ms_ssim"]] = Field(
        list(COMPONENTS), description="loss components per branch")
    perceptual_weights: Annotated[str | None, ConfigPath()] = Field(
        None, description="LOCAL torchvision VGG16 weights (.pth/.safetensors); None: the perceptual term is off "
        "(logged); never downloaded")
    perceptual_max_size: int = Field(256, ge=16, description="down-sample larger images before the VGG features")
    charbonnier_eps: float = Field(1e-3, gt=0, description="ε of mean √(d² + ε²)")


class PhaseformerLoss(nn.Module):
    """Two-branch Phaseformer loss (SPEC §5).

    Per branch (out_L against the target, out_H against the target up-sampled ×2, bilinear):
    ``WeightedLoss4(charbonnier, perceptual, gradient, 1 − MS-SSIM)`` with its own learnable weights;
    then ``WeightedLoss2(branch_L, branch_H)``. ``components`` may drop terms (e.g. without
    ``perceptual`` on a CPU). Without ``perceptual_weights`` (a local VGG16 file) the perceptual term
    is switched off and a warning says so: random VGG features carry no perceptual prior.
    ``forward`` returns a dict: ``loss`` plus every component per branch (``L/charbonnier`` …), the
    branch losses and the current soft-max weights (``wL/…``, ``wH/…``, ``w_branch/L``, ``w_branch/H``)
    so the trainer logs them.
    """

    def __init__(self, components: Sequence[str] = COMPONENTS, perceptual_weights: str | Path | None = None,
                 charbonnier_eps: float = 1e-3, perceptual_max_size: int = 256, data_range: float | None = None):
        super().__init__()
        unknown = [c for c in components if c not in COMPONENTS]
        if unknown or not components:
            raise ConfigError(f"loss components must be a non-empty subset of {COMPONENTS}, got {list(components)}")
        if "perceptual" in components and perceptual_weights is None:
            if tuple(components) == ("perceptual",):
                raise ConfigError("loss.components: only 'perceptual', but no local VGG16 weights are given "
                                  "(loss.perceptual_weights: a torchvision vgg16 .pth/.safetensors file)")
            components = tuple(c for c in components if c != "perceptual")
            log.warning("Phaseformer loss: the perceptual term is OFF (no local VGG16 weights in "
                        "loss.perceptual_weights; nothing is downloaded); training with %s", ", ".join(components))
        self.components = tuple(components)
        self.terms = nn.ModuleDict()
        for c in self.components:
            if c == "charbonnier":
                self.terms[c] = CharbonnierLoss(charbonnier_eps)
            elif c == "perceptual":
                self.terms[c] = PerceptualLoss(perceptual_weights, max_size=perceptual_max_size)
            elif c == "gradient":
                self.terms[c] = GradientLoss()
            else:
                self.terms[c] = MSSSIMLoss(data_range=data_range)
        self.weight_l = WeightedLoss(len(self.components), self.components)
        self.weight_h = WeightedLoss(len(self.components), self.components)
        self.weight_branch = WeightedLoss(2, ("L", "H"))

    def branch(self, pred: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Unweighted components of one branch."""
        return {c: self.terms[c](pred, target) for c in self.components}

    def forward(self, out_l: torch.Tensor, out_h: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        target = as_b1hw(target)
        target_h = F.interpolate(target, scale_factor=2, mode="bilinear", align_corners=False)
        parts_l, parts_h = self.branch(out_l, target), self.branch(out_h, target_h)
        loss_l = self.weight_l(*parts_l.values())
        loss_h = self.weight_h(*parts_h.values())
        out = {"loss": self.weight_branch(loss_l, loss_h), "loss_L": loss_l.detach(), "loss_H": loss_h.detach()}
        for name, v in parts_l.items():
            out[f"L/{name}"] = v.detach()
        for name, v in parts_h.items():
            out[f"H/{name}"] = v.detach()
        for tag, wl in (("wL", self.weight_l), ("wH", self.weight_h), ("w_branch", self.weight_branch)):
            for name, w in zip(wl.names, wl.weights().detach(), strict=True):
                out[f"{tag}/{name}"] = w
        return out
