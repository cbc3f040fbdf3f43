"""The restorer (issue 48): a network that restores AD's phase on AD's own grid, and its offset-free loss.

Input (B, C, H, W): channel 0 AD's phase (rad), then the extra channels the config names (``amplitude``: AD's
object amplitude; ``illumination``: Σ_j |P(r − r_j)|² ÷ its maximum; :mod:`phasestem.recon.channels`). Output
(B, 1, H, W): the restored phase (rad) = the input phase + the body's correction. The body's last layer starts
at zero, so an untrained restorer returns its input phase exactly. Any H, W: the body sees the input padded by
reflection to a multiple of 8 and the correction is cropped back. The body sees the phase with its mean over
the image removed (a constant phase is not measured; the loss ignores it too).

Bodies (``arch``, the table :data:`BODIES`): ``unet``, a small residual U-Net (the baseline: two poolings,
``width``, 2·width, 4·width channels), and ``phaseformer``, :class:`~phasestem.learn.nets.phaseformer.Phaseformer`
(SPEC §5, seed 002) in the restorer role (its 1× output; ``residual`` off inside, the residual taken here).

:func:`offset_free_loss`: Charbonnier √(d² + ε²) of d = (prediction − truth) − mean over the scanned field of
(prediction − truth), averaged over the field (a (B, 1, H, W) mask): phase offsets are unobservable.
:func:`invented_mass`: the same d's positive part where the truth is empty (at or below its field median, between
and instead of atoms): phase the restoration adds where the specimen has none, the cost of an invented column.
"""
from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from ...base.configfile import StrictModel
from ...base.errors import ShapeError
from .phaseformer import Phaseformer, PhaseformerConfig, PhaseformerModelConfig
from .pixel_error import offset_free_difference

CHANNELS = ("amplitude", "illumination")

__all__ = ["RestorerConfig", "Restorer", "UNetBody", "BODIES", "offset_free_difference", "offset_free_loss",
           "invented_mass", "CHANNELS"]


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1), nn.GELU(), nn.Conv2d(c_out, c_out, 3, padding=1),
                         nn.GELU())


class UNetBody(nn.Module):
    """A small U-Net (C → 1 channels, sides multiple of 4) whose last 1×1 convolution starts at zero."""

    def __init__(self, in_channels: int, width: int = 16):
        super().__init__()
        w = int(width)
        self.enc1, self.enc2, self.mid = _block(in_channels, w), _block(w, 2 * w), _block(2 * w, 4 * w)
        self.up2, self.dec2 = nn.ConvTranspose2d(4 * w, 2 * w, 2, stride=2), _block(4 * w, 2 * w)
        self.up1, self.dec1 = nn.ConvTranspose2d(2 * w, w, 2, stride=2), _block(2 * w, w)
        self.out = nn.Conv2d(w, 1, 1)
        nn.init.zeros_(self.out.weight)
        nn.init.zeros_(self.out.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(F.max_pool2d(e1, 2))
        m = self.mid(F.max_pool2d(e2, 2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], 1))
        return self.out(self.dec1(torch.cat([self.up1(d2), e1], 1)))


class _PhaseformerBody(nn.Module):
    """Phaseformer's 1× output as a correction (its out_low head zero-initialised)."""

    def __init__(self, in_channels: int, settings: PhaseformerModelConfig):
        super().__init__()
        cfg = PhaseformerConfig(**{**dict(settings), "in_channels": in_channels, "out_channels": 1, "residual": False})
        self.net = Phaseformer(cfg)
        nn.init.zeros_(self.net.out_low.weight)
        nn.init.zeros_(self.net.out_low.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[0]


#: the restorer's bodies by ``arch``: (input channels, :class:`RestorerConfig`) → a module (B, C, H, W) → (B, 1, H, W)
#: whose output starts at zero; the one place a new body is added (the run config's ``model.arch`` reads it)
BODIES = {
    "unet": lambda channels, cfg: UNetBody(channels, cfg.width),
    "phaseformer": lambda channels, cfg: _PhaseformerBody(channels, cfg.phaseformer),
}


class RestorerConfig(StrictModel):
    """Restorer settings (stored with every model file as ``model_dump(mode="json")``; the run config's ``model``
    section adds ``init``): body, its width, the extra input channels."""

    arch: Literal[tuple(BODIES)] = Field(  # type: ignore[valid-type]  (the table's names)
        "unet", description="body (learn.nets.restorer.BODIES): unet, a small residual U-Net (baseline), or "
        "phaseformer, Phaseformer (seed 002)")
    extra_channels: tuple[Literal[CHANNELS], ...] = Field(CHANNELS, description="inputs beside AD's phase")  # type: ignore[valid-type]
    width: int = Field(16, ge=2, description="U-Net channels of level 1 (levels: width, 2·width, 4·width)")
    phaseformer: PhaseformerModelConfig = Field(
        default_factory=lambda: PhaseformerModelConfig(dim=8, blocks=(1, 1, 1, 1), heads=(1, 1, 2, 2),
                                                       refinement_blocks=1),
        description="the Phaseformer body's settings when arch is phaseformer (its residual is off: the restorer "
        "adds AD's phase itself)")

    @property
    def in_channels(self) -> int:
        return 1 + len(self.extra_channels)


class Restorer(nn.Module):
    """AD's phase (+ extra channels) → restored phase on the same grid (module docstring)."""

    def __init__(self, config: RestorerConfig | None = None):
        super().__init__()
        self.config = config or RestorerConfig()
        c = self.config.in_channels
        self.body = BODIES[self.config.arch](c, self.config)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ShapeError(f"restorer input must be (B, {self.config.in_channels}, H, W) (phase, "
                             f"{', '.join(self.config.extra_channels) or 'no extra channels'}), got {tuple(x.shape)}")
        phase = x[:, :1]
        body_in = torch.cat([phase - phase.mean(dim=(-2, -1), keepdim=True), x[:, 1:]], 1)
        h, w = x.shape[-2:]
        ph, pw = (-h) % 8, (-w) % 8
        if ph or pw:
            mode = "reflect" if h > ph and w > pw else "replicate"
            body_in = F.pad(body_in, (0, pw, 0, ph), mode=mode)
        return phase + self.body(body_in)[..., :h, :w]


def offset_free_loss(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
                     eps: float = 1e-3) -> torch.Tensor:
    """Mean Charbonnier √(d² + ε²) over the field ``mask`` (B, 1, H, W; None: everywhere) of d = (pred − target)
    with its mean over the field removed per image (rad)."""
    d, m, n = offset_free_difference(pred, target, mask)
    return ((torch.sqrt(d * d + eps * eps) * m).sum(dim=(-2, -1)) / n[..., 0, 0]).mean()


def empty_mask(target: torch.Tensor, mask: torch.Tensor | None = None, quantile: float = 0.5) -> torch.Tensor:
    """1 where ``target`` (B, 1, H, W, rad) is at or below its ``quantile`` over the field ``mask`` per image (no atom
    there: vacuum, the space between columns, a vacancy), else 0; (B, 1, H, W) in the target's dtype."""
    m = torch.ones_like(target, dtype=torch.bool) if mask is None else mask > 0
    level = torch.stack([torch.quantile(t[f].float(), quantile) if bool(f.any()) else t.new_tensor(float("inf"))
                         for t, f in zip(target, m, strict=True)]).to(target.dtype)
    return ((target <= level.view(-1, 1, 1, 1)) & m).to(target.dtype)


def invented_mass(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None,
                  quantile: float = 0.5) -> torch.Tensor:
    """Mean over the field of max(d, 0) on the truth's empty pixels (:func:`empty_mask`), d the offset-free
    difference (rad): a restoration that adds phase where the specimen has none (a filled vacancy, a column on an
    amorphous film) pays it; one that restores real columns does not."""
    d, m, n = offset_free_difference(pred, target, mask)
    empty = empty_mask(target, mask, quantile)
    return ((torch.relu(d) * empty * m).sum(dim=(-2, -1)) / n[..., 0, 0]).mean()
