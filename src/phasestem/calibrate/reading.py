"""Row-chunked reading of a dataset's patterns (lazy files are never loaded whole)."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .badpixels import fill_bad_pixels

#: pixels per chunk (float32: 64 MiB)
CHUNK_PIXELS = 2**24


def row_chunks(dataset, plan=None, max_pixels: int = CHUNK_PIXELS,
               whole: bool = False) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield (rows, patterns) with patterns (r, Sx, H, W) float32, bad pixels filled by ``plan`` (``whole``: with
    whole counts); whole scan rows, about ``max_pixels`` pixels at a time."""
    sy, sx = dataset.scan_shape
    H, W = dataset.pattern_shape
    step = max(1, max_pixels // max(1, sx * H * W))
    for r0 in range(0, sy, step):
        rows = slice(r0, min(sy, r0 + step))
        block = np.array(dataset.patterns[rows], dtype=np.float32)  # a copy: bad pixels are filled in place
        if plan:
            fill_bad_pixels(block, plan, whole)
        yield rows, block


def summed_pattern(dataset, plan=None) -> np.ndarray:
    """Sum of all patterns (H, W), float64."""
    acc = np.zeros(dataset.pattern_shape)
    for _, block in row_chunks(dataset, plan):
        acc += block.sum((0, 1), dtype=np.float64)
    return acc
