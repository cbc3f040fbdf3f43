"""Pixel errors of predicted phase images, one definition for every network's loss: the difference with or without
its offset. A phase image is known only up to a constant (ptychography cannot see it), so a loss on the raw phase
spends capacity on each sample's offset; ``offset_free`` removes it per image before the error is taken."""
from __future__ import annotations

from typing import Literal

import torch

__all__ = ["offset_free_difference", "pixel_error", "without_offset"]


def offset_free_difference(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(d, m, n): d = pred − target with its mean over the field ``mask`` (…, H, W; None: everywhere) removed per
    image, the mask in d's dtype, and the field's pixel count per image (keepdim, ≥ 1)."""
    d = pred - target
    m = torch.ones_like(d) if mask is None else mask.to(d)
    n = m.sum(dim=(-2, -1), keepdim=True).clamp_min(1.0)
    return d - (d * m).sum(dim=(-2, -1), keepdim=True) / n, m, n


def pixel_error(pred: torch.Tensor, target: torch.Tensor, kind: Literal["mse", "l1"] = "mse",
                offset_free: bool = False) -> torch.Tensor:
    """Mean squared (``mse``) or absolute (``l1``) error of images (…, H, W) in float32; ``offset_free``: of the
    difference with each image's mean removed (rad² or rad)."""
    d = offset_free_difference(pred.float(), target.float())[0] if offset_free else pred.float() - target.float()
    return d.square().mean() if kind == "mse" else d.abs().mean()


def without_offset(pred: torch.Tensor, target: torch.Tensor, offset_free: bool = True) -> torch.Tensor:
    """``pred`` (…, H, W) less each image's mean difference from ``target`` (``offset_free``; else ``pred``): what
    the metrics of an offset-free run compare, so that its PSNR and best model do not judge the offset the loss
    leaves free."""
    if not offset_free:
        return pred
    return pred - (pred.float() - target.float()).mean(dim=(-2, -1), keepdim=True).to(pred.dtype)
