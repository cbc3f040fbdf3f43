"""Row-chunked reading of a dataset's patterns (lazy files are never loaded whole)."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .badpixels import fill_bad_pixels


def row_chunks(dataset, plan=None, max_patterns: int = 1024) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield (rows, patterns) with patterns (r, Sx, H, W) float64, bad pixels filled by ``plan``."""
    sy, sx = dataset.scan_shape
    step = max(1, max_patterns // max(1, sx))
    for r0 in range(0, sy, step):
        rows = slice(r0, min(sy, r0 + step))
        block = np.asarray(dataset.patterns[rows], dtype=np.float64)
        if plan:
            fill_bad_pixels(block, plan)
        yield rows, block


def summed_pattern(dataset, plan=None) -> np.ndarray:
    """Sum of all patterns (H, W), float64."""
    acc = np.zeros(dataset.pattern_shape)
    for _, block in row_chunks(dataset, plan):
        acc += block.sum((0, 1))
    return acc
