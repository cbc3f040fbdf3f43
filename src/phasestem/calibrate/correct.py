"""Patterns corrected with a calibration: bad pixels filled, descan removed, detector transposed."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .reading import row_chunks


def shift_images(block: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Shift real images (..., H, W) by ``shifts`` (..., 2) px (content to larger indices), sub-pixel, periodic.

    Fourier interpolation; negative ringing is clipped to 0 (counts).
    """
    H, W = block.shape[-2:]
    ky = np.fft.fftfreq(H)[:, None]
    kx = np.fft.rfftfreq(W)[None, :]
    ramp = np.exp(-2j * np.pi * (ky * shifts[..., 0, None, None] + kx * shifts[..., 1, None, None]))
    out = np.fft.irfft2(np.fft.rfft2(block) * ramp, s=(H, W))
    return np.clip(out, 0.0, None)


def corrected_chunks(dataset, plan, centres: np.ndarray, transpose: bool = False,
                     max_patterns: int = 1024) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield (rows, patterns) with bad pixels filled, each pattern's disk centre ``centres`` (Sy, Sx, 2) px
    moved to (H//2, W//2), and the detector axes swapped when ``transpose`` (phasestem's frame)."""
    H, W = dataset.pattern_shape
    target = np.array([H // 2, W // 2], dtype=np.float64)
    for rows, block in row_chunks(dataset, plan, max_patterns):
        out = shift_images(block, target - centres[rows])
        yield rows, (np.swapaxes(out, -1, -2) if transpose else out)
