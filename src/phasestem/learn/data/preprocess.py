"""Pattern preprocessing stored with every model (binning, cropping, normalisation, scaling) and blocks of a scan."""
from __future__ import annotations

import logging
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from ...base.configfile import StrictModel
from ...base.errors import ShapeError
from ...detector import PixelatedDetector
from .geometry import BlockGeometry

log = logging.getLogger("phasestem.learn")


# =============================================================================================
# preprocessing
# =============================================================================================
class Preprocess(StrictModel):
    """Pattern preprocessing; stored in every checkpoint and reapplied by ``phasestem predict``."""

    crop: int | None = Field(None, ge=1, description="keep the central crop × crop detector pixels first (None: all)")
    bin: int = Field(1, ge=1, description="sum bin × bin detector pixels (zero frequency stays in bin H//2)")
    normalize: Literal["none", "pattern", "block"] = Field(
        "pattern", description="dose normalisation: divide each pattern ('pattern') or the block ('block') by its "
        "total counts, scaled so the mean pixel is 1"
    )
    scale: Literal["none", "sqrt", "log"] = Field("sqrt", description="intensity scaling after normalisation")
    log_floor: float = Field(1e-2, gt=0, description="log scaling: log1p(I / log_floor)")

    def detector(self, shape: tuple[int, int]) -> PixelatedDetector:
        """The crop and binning of (H, W) patterns as a :class:`~phasestem.detector.PixelatedDetector`."""
        h, w = shape
        crop = None if self.crop is None else (min(h, self.crop), min(w, self.crop))
        return PixelatedDetector((h, w), crop=crop, binning=self.bin)

    def output_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        return self.detector(shape).output_shape

    def __call__(self, patterns: torch.Tensor) -> torch.Tensor:
        """Apply to (..., H, W) intensities (counts or fractions) → (..., H', W') float32.

        For ``normalize="block"`` the leading axis −3 is the block (…, block², H, W).
        """
        x = torch.as_tensor(patterns).float()
        x = self.detector(tuple(x.shape[-2:])).reduce(x)
        n_pix = x.shape[-1] * x.shape[-2]
        if self.normalize == "pattern":
            x = x / x.sum((-2, -1), keepdim=True).clamp_min(1e-12) * n_pix
        elif self.normalize == "block":
            dims = (-3, -2, -1) if x.dim() >= 3 else (-2, -1)
            x = x / x.mean(dims, keepdim=True).clamp_min(1e-12)
        x = x.clamp_min(0)
        if self.scale == "sqrt":
            x = x.sqrt()
        elif self.scale == "log":
            x = torch.log1p(x / self.log_floor)
        return x


def blocks_from_scan(patterns: torch.Tensor | np.ndarray, geometry: BlockGeometry, preprocess: Preprocess
                     ) -> torch.Tensor:
    """Every block of one in-memory scan (Sy, Sx, H, W) → (n_blocks, block², H', W') preprocessed."""
    g = geometry
    scan = torch.as_tensor(np.asarray(patterns) if not isinstance(patterns, torch.Tensor) else patterns)
    if tuple(scan.shape[:2]) != tuple(g.scan_shape):
        raise ShapeError(f"scan shape {tuple(scan.shape[:2])} does not match the geometry {g.scan_shape}")
    if preprocess.normalize != "block":  # per-pattern preprocessing: once per pattern, not once per block
        scan = preprocess(scan.float())
        return torch.stack([scan[y:y + g.block, x:x + g.block].reshape(g.block**2, *scan.shape[2:])
                            for y, x in g.blocks()])
    out = [preprocess(scan[y:y + g.block, x:x + g.block].reshape(g.block**2, *scan.shape[2:]).float())
           for y, x in g.blocks()]
    return torch.stack(out)
