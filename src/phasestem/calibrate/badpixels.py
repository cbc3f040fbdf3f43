"""Hot and dead detector pixels from the summed pattern, and filling them from their neighbours.

Counts are assumed (Poisson statistics on the pattern summed over the scan). A pixel is *hot*
when its summed count exceeds ``hot_factor`` × the second-largest of its 8 neighbours by more
than ``sigma`` Poisson standard deviations (the second-largest, so that a pair of hot pixels
does not hide each other and the edge of the bright-field disk is not flagged). A pixel is
*dead* when it counted nothing over the whole scan while every neighbour but the weakest (the
second-smallest of the 8, as for hot pixels) counted at least ``dead_min`` (a Poisson pixel with that
mean reads zero with probability e^−dead_min): a pixel on the edge of a region that is dark in the data
itself (the corner of a simulation's band limit, the shadow of a beam stop) has dark neighbours too and
is not flagged; two dead pixels side by side still are.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class BadPixels:
    """Bad-pixel mask of a detector, (H, W) bool, True = bad; ``hot``/``dead`` list (row, col)."""

    mask: np.ndarray
    hot: list[tuple[int, int]]
    dead: list[tuple[int, int]]

    @property
    def count(self) -> int:
        return int(self.mask.sum())

    def to_dict(self) -> dict:
        return {"hot": [list(p) for p in self.hot], "dead": [list(p) for p in self.dead]}


def _neighbours(img: np.ndarray) -> np.ndarray:
    """The 8 neighbours of every pixel, (8, H, W), edges reflected."""
    pad = np.pad(img, 1, mode="reflect")
    H, W = img.shape
    return np.stack([pad[1 + dy : 1 + dy + H, 1 + dx : 1 + dx + W]
                     for dy in (-1, 0, 1) for dx in (-1, 0, 1) if (dy, dx) != (0, 0)])


def find_bad_pixels(total: np.ndarray, hot_factor: float = 3.0, sigma: float = 10.0,
                    dead_min: float = 20.0) -> BadPixels:
    """Hot and dead pixels of a detector from ``total`` (H, W): counts summed over all patterns."""
    total = np.asarray(total, dtype=np.float64)
    nb = np.sort(_neighbours(total), axis=0)
    second = nb[-2]
    hot = (total > hot_factor * second) & (total - second > sigma * np.sqrt(np.maximum(second, 1.0)))
    dead = (total <= 0) & (nb[1] >= dead_min)
    as_list = lambda m: [(int(y), int(x)) for y, x in zip(*np.nonzero(m), strict=True)]  # noqa: E731
    return BadPixels(mask=hot | dead, hot=as_list(hot), dead=as_list(dead))


def fill_plan(mask: np.ndarray) -> list[tuple[int, int, np.ndarray, np.ndarray]]:
    """For every bad pixel (y, x), the rows and columns of its good 3×3 neighbours."""
    H, W = mask.shape
    plan = []
    for y, x in zip(*np.nonzero(mask), strict=True):
        ys, xs = [], []
        for r in (1, 2):  # widen to 5×5 when all 3×3 neighbours are bad
            for dy in range(-r, r + 1):
                for dx in range(-r, r + 1):
                    yy, xx = y + dy, x + dx
                    if 0 <= yy < H and 0 <= xx < W and not mask[yy, xx]:
                        ys.append(yy)
                        xs.append(xx)
            if ys:
                break
        plan.append((int(y), int(x), np.asarray(ys, dtype=int), np.asarray(xs, dtype=int)))
    return plan


def fill_bad_pixels(patterns: np.ndarray, plan, whole: bool = False) -> np.ndarray:
    """Replace bad pixels of (..., H, W) float patterns in place by the mean of their good neighbours (``whole``:
    rounded to a whole count, so that counted patterns stay counts)."""
    for y, x, ys, xs in plan:
        mean = patterns[..., ys, xs].mean(-1) if len(ys) else 0.0
        patterns[..., y, x] = np.rint(mean) if whole else mean
    return patterns
