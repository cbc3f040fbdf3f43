"""Patterns corrected with a calibration: bad pixels filled, descan removed, detector transposed."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .reading import CHUNK_PIXELS, row_chunks


def shift_images(block: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Shift real images (..., H, W) by ``shifts`` (..., 2) px (content to larger indices), sub-pixel, periodic.

    Fourier interpolation; negative ringing is clipped to 0 (counts).
    """
    import torch

    H, W = block.shape[-2:]
    ky = torch.fft.fftfreq(H)[:, None]
    kx = torch.fft.rfftfreq(W)[None, :]
    s = torch.as_tensor(np.asarray(shifts), dtype=torch.float32)
    angle = -2 * np.pi * (ky * s[..., 0, None, None] + kx * s[..., 1, None, None])
    ramp = torch.complex(torch.cos(angle), torch.sin(angle))
    out = torch.fft.irfft2(torch.fft.rfft2(torch.as_tensor(block, dtype=torch.float32)) * ramp, s=(H, W))
    return out.clamp_(min=0.0).numpy()


def corrected_chunks(dataset, plan, centres: np.ndarray, transpose: bool = False,
                     max_pixels: int = CHUNK_PIXELS) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield (rows, patterns) with bad pixels filled, each pattern's disk centre ``centres`` (Sy, Sx, 2) px
    moved to (H//2, W//2), and the detector axes swapped when ``transpose`` (phasestem's frame)."""
    H, W = dataset.pattern_shape
    target = np.array([H // 2, W // 2], dtype=np.float64)
    for rows, block in row_chunks(dataset, plan, max_pixels):
        out = shift_images(block, target - centres[rows])
        yield rows, (np.swapaxes(out, -1, -2) if transpose else out)
