"""PatchRecoveryNet (the user's ``patchRecovery.py``): one block of patterns → one phase patch.

Shapes: patterns (B, T, H, W) with T = block² (196), coords (B, T, 2) in Å relative to the pixel frame of
the target patch (0 Å = its bright-centre pixel, :meth:`BlockGeometry.frame_coords`) → phase patch
(B, patch, patch) (76 × 76) in rad.

1. a CNN trunk (ResNet34 … tiny) embeds every pattern (one channel) into a vector;
2. the scan coordinates enter as Fourier features of the *physical* offsets (Å), so blocks at
   any position and other scan steps are described correctly (the user's first attempt ignored
   them); they are taken in the target patch's pixel frame, so the ±0.5 px rounding of each
   block's bright centre (up to 0.92 px between the seed's blocks) reaches the network (models
   saved before, ``coords: block_centre``, re-centre them on the block, as they were trained);
   optionally the pretrained ViT's learned 14 × 14 grid embedding is added as well;
3. the ViT blocks mix the T tokens; 4. a CNN decoder maps the token grid to the patch.
"""
from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from ...base.configfile import ConfigPath, StrictModel
from ...metrics import psnr
from ..backbones import create_cnn, create_vit
from .pixel_error import pixel_error, without_offset

PATCH_SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"cnn": "resnet_micro", "vit": "vit_micro", "decoder_channels": [32, 16, 16], "cnn_norm": "batch"},
    "small": {"cnn": "resnet_tiny", "vit": "vit_tiny_d2", "decoder_channels": [64, 32, 16], "cnn_norm": "batch"},
    "medium": {"cnn": "resnet18", "vit": "vit_small", "decoder_channels": [128, 64, 32]},
    "base": {"cnn": "resnet34", "vit": "vit_base", "decoder_channels": [256, 128, 64]},
}


class PatchRecoveryConfig(StrictModel):
    """PatchRecoveryNet architecture; ``size`` fills every field not given explicitly."""

    size: Literal["tiny", "small", "medium", "base"] = Field("base", description="preset: tiny (CPU) … base (ViT-B)")
    cnn: str = Field("resnet34", description="pattern encoder preset (backbones.CNN_PRESETS) or timm name")
    vit: str = Field("vit_base", description="token mixer preset (backbones.VIT_PRESETS) or timm name")
    cnn_pretrained: Annotated[str | None, ConfigPath(keep=("auto",))] = Field(
        None, description="CNN weights: null, a file path, or 'auto' (local cache)")
    vit_pretrained: Annotated[str | None, ConfigPath(keep=("auto",))] = Field(
        None, description="ViT weights: null, a file path, or 'auto' (local cache)")
    first_conv: Literal["sum", "mean"] = Field("sum", description="how RGB first-conv weights become one channel")
    allow_download: bool = Field(False, description="let 'auto' download when HF_HUB_OFFLINE is unset")
    cnn_norm: Literal["running", "batch"] = Field(
        "running", description="CNN BatchNorm statistics at evaluation: 'running' (the usual running averages) or "
        "'batch' (always the statistics of the patterns in the forward pass — every block brings 196, so they are "
        "stable, and evaluation matches training even while the weights still move fast)"
    )
    block: int = Field(14, ge=1, description="patterns per block side (tokens = block²)")
    patch: int = Field(76, ge=4, description="output patch side in phase pixels")
    pos_frequencies: int = Field(16, ge=1, description="Fourier frequencies per axis for the scan coordinates")
    pos_wavelengths: tuple[float, float] = Field(
        (1.0, 64.0), description="shortest and longest wavelength (Å) of the coordinate Fourier features"
    )
    coords: Literal["patch_frame", "block_centre", "none"] = Field(
        "patch_frame", description="what the pattern coordinates are relative to: 'patch_frame' (the target patch's "
        "pixel frame, so the sub-pixel rounding of each block's bright centre is seen), 'block_centre' (the block's "
        "centre, the same for every block: models saved before the patch frame, whose metadata lack this key), "
        "'none' (coordinates zeroed: an ablation)"
    )
    grid_pos_embed: bool = Field(True, description="also add the ViT's (resampled) learned grid position embedding")
    decoder_channels: list[int] = Field([256, 128, 64], description="decoder widths; each after the first doubles "
                                        "the resolution")
    dropout: float = Field(0.0, ge=0, le=1, description="dropout on the tokens")

    @model_validator(mode="before")
    @classmethod
    def _fill_from_size(cls, data: Any) -> Any:
        if isinstance(data, dict):
            size = data.get("size", "base")
            return {**PATCH_SIZES.get(size, {}), **data}
        return data


def use_batch_statistics(module: nn.Module) -> None:
    """Make every BatchNorm in ``module`` normalise with the current batch's statistics, also in eval mode."""
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.track_running_stats = False
            m.running_mean = m.running_var = m.num_batches_tracked = None


class FourierPositions(nn.Module):
    """Fourier features of positions (…, 2) in Å → (…, dim): sin/cos at geometric wavelengths, then an MLP."""

    def __init__(self, dim: int, n_freq: int = 16, wavelengths: tuple[float, float] = (1.0, 64.0)):
        super().__init__()
        lo, hi = wavelengths
        freqs = 1.0 / torch.logspace(math.log10(hi), math.log10(lo), n_freq)
        self.register_buffer("freqs", freqs * 2 * math.pi, persistent=False)
        self.mlp = nn.Sequential(nn.Linear(4 * n_freq, dim), nn.GELU(), nn.Linear(dim, dim))

    def forward(self, pos: torch.Tensor) -> torch.Tensor:
        arg = pos[..., None] * self.freqs  # (..., 2, F)
        feats = torch.cat([arg.sin(), arg.cos()], -1).flatten(-2)
        return self.mlp(feats)


def conv_block(cin: int, cout: int, padding_mode: str = "zeros") -> nn.Sequential:
    """3×3 conv + GroupNorm + GELU (GroupNorm: same behaviour in training and evaluation, any batch size)."""
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, padding_mode=padding_mode, bias=False),
                         nn.GroupNorm(math.gcd(8, cout), cout), nn.GELU())


class GridDecoder(nn.Module):
    """Token grid (B, D, g, g) → image (B, out, out): resize to out/2^k, then k (upsample ×2, conv) stages."""

    def __init__(self, dim: int, channels: list[int], out_size: int, padding_mode: str = "zeros", extra_in: int = 0):
        super().__init__()
        self.out_size = out_size
        n_up = len(channels) - 1
        self.start = max(1, math.ceil(out_size / 2**n_up))
        self.inp = nn.Sequential(nn.Conv2d(dim, channels[0], 1), conv_block(channels[0], channels[0], padding_mode))
        self.ups = nn.ModuleList(conv_block(a, b, padding_mode) for a, b in zip(channels[:-1], channels[1:],
                                                                                  strict=True))
        self.extra_in = extra_in
        self.head = nn.Conv2d(channels[-1] + extra_in, 1, 3, padding=1, padding_mode=padding_mode)

    def forward(self, grid: torch.Tensor, extra: torch.Tensor | None = None) -> torch.Tensor:
        x = F.interpolate(grid, size=(self.start, self.start), mode="bilinear", align_corners=False)
        x = self.inp(x)
        for up in self.ups:
            x = up(F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False))
        if x.shape[-1] != self.out_size:
            x = F.interpolate(x, size=(self.out_size, self.out_size), mode="bilinear", align_corners=False)
        if extra is not None:
            x = torch.cat([x, extra], 1)
        return self.head(x)[:, 0]


class PatchRecoveryNet(nn.Module):
    """Block of patterns (B, T, H, W) + coords (B, T, 2) Å → phase patch (B, patch, patch)."""

    kind = "patch"

    def __init__(self, config: PatchRecoveryConfig | dict | None = None):
        super().__init__()
        cfg = config if isinstance(config, PatchRecoveryConfig) else PatchRecoveryConfig(**(config or {}))
        self.config = cfg
        self.cnn = create_cnn(cfg.cnn, in_chans=1, pretrained=cfg.cnn_pretrained, first_conv=cfg.first_conv,
                              allow_download=cfg.allow_download)
        if cfg.cnn_norm == "batch":
            use_batch_statistics(self.cnn)
        vit = create_vit(cfg.vit, pretrained=cfg.vit_pretrained, first_conv=cfg.first_conv,
                         allow_download=cfg.allow_download)
        dim = vit.embed_dim
        self.embed = nn.Sequential(nn.Linear(self.cnn.num_features, dim), nn.LayerNorm(dim))
        self.positions = FourierPositions(dim, cfg.pos_frequencies, cfg.pos_wavelengths)
        self.grid_pos = None
        if cfg.grid_pos_embed:
            pe = vit.pos_embed.detach()[:, getattr(vit, "num_prefix_tokens", 1):]  # (1, g², D)
            g = int(round(math.sqrt(pe.shape[1])))
            pe = pe.reshape(1, g, g, dim).permute(0, 3, 1, 2)
            pe = F.interpolate(pe, size=(cfg.block, cfg.block), mode="bicubic", align_corners=False)
            self.grid_pos = nn.Parameter(pe.flatten(2).transpose(1, 2).contiguous())
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = vit.blocks
        self.norm = vit.norm
        self.decoder = GridDecoder(dim, list(cfg.decoder_channels), cfg.patch)

    def frame(self, coords: torch.Tensor) -> torch.Tensor:
        """Coordinates (…, T, 2) Å in the patch frame (what every caller gives) → what this network was trained on
        (``config.coords``): as given, re-centred on the block (older models; exact, as the block's positions are
        symmetric about its centre), or zeros."""
        if self.config.coords == "block_centre":
            return coords - coords.mean(-2, keepdim=True)
        if self.config.coords == "none":
            return torch.zeros_like(coords)
        return coords

    def forward(self, patterns: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        B, T, H, W = patterns.shape
        b = self.config.block
        if T != b * b:
            raise ValueError(f"PatchRecoveryNet expects {b}² = {b * b} patterns per block, got {T}")
        feats = self.cnn(patterns.reshape(B * T, 1, H, W)).reshape(B, T, -1)
        tokens = self.embed(feats) + self.positions(self.frame(coords).to(feats.dtype))
        if self.grid_pos is not None:
            tokens = tokens + self.grid_pos
        tokens = self.norm(self.blocks(self.drop(tokens)))
        grid = tokens.transpose(1, 2).reshape(B, -1, b, b)
        return self.decoder(grid)


def patch_loss_fn(kind: Literal["mse", "l1"] = "mse", offset_free: bool = False):
    """``loss_fn(model, batch)`` for PatchDataset batches (``patterns``, ``coords``, ``target``); ``offset_free``:
    each patch's mean error is removed before the loss (:func:`~.pixel_error.pixel_error`) and the reported MSE and
    PSNR (:func:`~.pixel_error.without_offset`)."""

    def loss_fn(model, batch):
        pred = model(batch["patterns"], batch["coords"]).float()
        loss = pixel_error(pred, batch["target"], kind, offset_free)
        shown = without_offset(pred.detach(), batch["target"], offset_free)  # metrics judge what the loss does
        return {"loss": loss, "mse": (shown - batch["target"]).square().mean(), "psnr": psnr(shown, batch["target"])}

    return loss_fn
