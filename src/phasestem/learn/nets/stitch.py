"""PhaseStitchingNet (the user's ``PhaseStiching.py``): phase patches + bright centres → full phase image.

Shapes: patches (B, n, p, p) (25 × 76 × 76), centres (B, n, 2) exact bright centres in phase pixels (before
rounding; :meth:`BlockGeometry.exact_centres`) → (B, N, N) (256²).

The patches are first placed on the periodic N × N canvas at their rounded bright centres (the exact
inverse of the training crops, wrapping across the cell edge), giving three channels: the plain
overlap average, a tapered (Hann-weighted) average and the coverage. With ``centres: exact`` two more
channels hold, per canvas pixel, the mean sub-pixel offset (px, |·| ≤ ½) of the covering patches' block
centres from their rounded centres: where within its pixel frame each patch's illumination sat, which the
rounding of ``bright_center`` otherwise hides (models saved before read as ``rounded``: three channels). A
ViT over 16-px canvas patches (its position grid resampled to N/16) adds global context, and a CNN decoder with
*circular* padding, fed the canvas as a skip connection, predicts a correction added to the
tapered average. The last layer starts at zero, so an untrained net already stitches ground-
truth patches exactly; training teaches it to reconcile imperfect predicted patches.
"""
from __future__ import annotations

import math
from typing import Annotated, Any, Literal

import torch
from pydantic import Field, model_validator
from torch import nn

from ...base.configfile import ConfigPath, StrictModel
from ...metrics import psnr
from ..backbones import create_vit
from ..data import BlockGeometry, place_indices
from .patch import GridDecoder
from .pixel_error import pixel_error, without_offset

STITCH_SIZES: dict[str, dict[str, Any]] = {
    "tiny": {"vit": "vit_micro", "decoder_channels": [32, 16, 16, 8, 8]},
    "small": {"vit": "vit_tiny_d2", "decoder_channels": [64, 32, 16, 16, 8]},
    "medium": {"vit": "vit_small", "decoder_channels": [128, 64, 32, 16, 16]},
    "base": {"vit": "vit_base", "decoder_channels": [256, 128, 64, 32, 16]},
}


class PhaseStitchingConfig(StrictModel):
    """PhaseStitchingNet architecture; ``size`` fills every field not given explicitly."""

    size: Literal["tiny", "small", "medium", "base"] = Field("base", description="preset: tiny (CPU) … base (ViT-B)")
    vit: str = Field("vit_base", description="ViT preset (backbones.VIT_PRESETS) or timm name")
    vit_pretrained: Annotated[str | None, ConfigPath(keep=("auto",))] = Field(
        None, description="ViT weights: null, a file path, or 'auto' (local cache)")
    allow_download: bool = Field(False, description="let 'auto' download when HF_HUB_OFFLINE is unset")
    image_size: int = Field(256, ge=8, description="output image side N in pixels")
    patch: int = Field(76, ge=4, description="input patch side in pixels")
    vit_patch: int = Field(16, ge=1, description="canvas pixels per ViT token side")
    decoder_channels: list[int] = Field([256, 128, 64, 32, 16], description="decoder widths; each after the first "
                                        "doubles the resolution")
    residual: bool = Field(True, description="predict a correction to the tapered overlap average")
    centres: Literal["exact", "rounded"] = Field(
        "exact", description="exact: the canvas also carries each patch's sub-pixel block-centre offset (2 more "
        "input channels); rounded: placement only (models saved before this setting existed)")

    @property
    def canvas_channels(self) -> int:
        """Input channels of the ViT and the decoder's skip connection."""
        return 5 if self.centres == "exact" else 3

    @model_validator(mode="before")
    @classmethod
    def _fill_from_size(cls, data: Any) -> Any:
        if isinstance(data, dict):
            return {**STITCH_SIZES.get(data.get("size", "base"), {}), **data}
        return data


def hann_taper(p: int) -> torch.Tensor:
    """(p, p) separable taper in (0, 1], highest in the middle, never zero at the edges."""
    w = torch.sin(math.pi * (torch.arange(p) + 0.5) / p)
    return w[:, None] * w[None, :]


def place_patches(patches: torch.Tensor, centres: torch.Tensor, geometry: BlockGeometry,
                  weights: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Scatter-add ``patches`` (B, n, p, p) at bright ``centres`` (B, n, 2) on the periodic (Ny, Nx) grid.

    Returns (Σ w·patch, Σ w), both (B, Ny, Nx); ``weights`` (p, p) default 1.
    """
    B, n, p, _ = patches.shape
    Ny, Nx = geometry.phase_shape
    iy, ix = place_indices(centres, geometry)  # (B, n, p)
    flat = (iy[..., :, None] * Nx + ix[..., None, :]).reshape(B, -1)  # (B, n·p·p)
    w = torch.ones(p, p, device=patches.device, dtype=patches.dtype) if weights is None else weights.to(patches)
    wv = w.expand(B, n, p, p).reshape(B, -1)
    num = torch.zeros(B, Ny * Nx, device=patches.device, dtype=patches.dtype)
    den = torch.zeros_like(num)
    num = num.scatter_add(1, flat, (patches * w).reshape(B, -1))
    den = den.scatter_add(1, flat, wv)
    return num.reshape(B, Ny, Nx), den.reshape(B, Ny, Nx)


class PhaseStitchingNet(nn.Module):
    """Patches (B, n, p, p) + exact bright centres (B, n, 2) px → phase image (B, N, N)."""

    kind = "stitch"

    def __init__(self, config: PhaseStitchingConfig | dict | None = None):
        super().__init__()
        cfg = config if isinstance(config, PhaseStitchingConfig) else PhaseStitchingConfig(**(config or {}))
        self.config = cfg
        N = cfg.image_size
        if N % cfg.vit_patch:
            raise ValueError(f"image_size {N} must be a multiple of vit_patch {cfg.vit_patch}")
        self.geometry = BlockGeometry(scan_shape=(1, 1), block=1, phase_shape=(N, N), patch=cfg.patch)
        self.register_buffer("taper", hann_taper(cfg.patch), persistent=False)
        self.vit = create_vit(cfg.vit, img_size=N, patch_size=cfg.vit_patch, in_chans=cfg.canvas_channels,
                              pretrained=cfg.vit_pretrained, allow_download=cfg.allow_download)
        self.grid = N // cfg.vit_patch
        self.decoder = GridDecoder(self.vit.embed_dim, list(cfg.decoder_channels), N, padding_mode="circular",
                                   extra_in=cfg.canvas_channels)
        nn.init.zeros_(self.decoder.head.weight)
        nn.init.zeros_(self.decoder.head.bias)

    def canvas(self, patches: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        """(B, C, N, N): plain average, tapered average, coverage / max coverage [, mean sub-pixel offset
        (dy, dx) px of the covering patches' centres]. ``centres`` (B, n, 2) exact (float) or rounded (int)."""
        pixels = centres.round() if centres.is_floating_point() else centres
        num, den = place_patches(patches, pixels, self.geometry)
        numt, dent = place_patches(patches, pixels, self.geometry, self.taper)
        avg = num / den.clamp_min(1e-6)
        tap = numt / dent.clamp_min(1e-6)
        cov = den / den.amax((-2, -1), keepdim=True).clamp_min(1e-6)
        channels = [avg, tap, cov]
        if self.config.centres == "exact":
            offsets = (centres - pixels).to(patches.dtype)  # (B, n, 2), |·| ≤ ½ px; 0 for integer centres
            p = patches.shape[-1]
            for axis in (0, 1):
                spread = offsets[..., axis, None, None].expand(*offsets.shape[:2], p, p)
                channels.append(place_patches(spread, pixels, self.geometry)[0] / den.clamp_min(1e-6))
        return torch.stack(channels, 1)

    def forward(self, patches: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
        canvas = self.canvas(patches.float(), centres)
        tokens = self.vit.forward_features(canvas)[:, getattr(self.vit, "num_prefix_tokens", 1):]
        grid = tokens.transpose(1, 2).reshape(tokens.shape[0], -1, self.grid, self.grid)
        out = self.decoder(grid, extra=canvas)
        return canvas[:, 1] + out if self.config.residual else out


def stitch_loss_fn(kind: Literal["mse", "l1"] = "mse", noise: float = 0.0, offset_free: bool = False):
    """``loss_fn(model, batch)`` for StitchDataset batches; ``noise`` (rad) perturbs the input patches
    so the net learns to reconcile imperfect patches, as it will see in End2End. Validation sees the same
    level of noise, drawn from a fixed seed: clean patches would reward a net that merely copies them, and
    best-model selection would keep that one. ``offset_free``: each image's mean error is removed first, from the
    loss and the reported MSE and PSNR."""

    def loss_fn(model, batch):
        patches = batch["patches"]
        if noise > 0:
            gen = None if model.training else torch.Generator(patches.device).manual_seed(0)
            patches = patches + noise * torch.randn(patches.shape, generator=gen, device=patches.device,
                                                    dtype=patches.dtype)
        pred = model(patches, batch["centres"]).float()
        shown = without_offset(pred.detach(), batch["phase"], offset_free)  # metrics judge what the loss does
        return {"loss": pixel_error(pred, batch["phase"], kind, offset_free),
                "mse": (shown - batch["phase"]).square().mean(), "psnr": psnr(shown, batch["phase"])}

    return loss_fn
