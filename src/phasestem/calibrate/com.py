"""Centre of mass of every pattern relative to the descan plane (the DPC signal), and the dark field."""
from __future__ import annotations

import numpy as np

from .reading import row_chunks


def com_field(dataset, plane: np.ndarray, plan=None, dark_radius: float | None = None
              ) -> tuple[np.ndarray, np.ndarray | None]:
    """Centre of mass (Sy, Sx, 2) px, (y, x), of each pattern minus the descan ``plane`` (Sy, Sx, 2) px,
    and the dark-field image (Sy, Sx): counts farther than ``dark_radius`` px from the plane centre
    (None without ``dark_radius``).

    Frame: the file's detector axes (before any transpose). Bad pixels are filled by ``plan``.
    """
    H, W = dataset.pattern_shape
    ky, kx = np.arange(H, dtype=np.float64), np.arange(W, dtype=np.float64)
    out = np.zeros((*dataset.scan_shape, 2))
    dark = None if dark_radius is None else np.zeros(dataset.scan_shape)
    for rows, block in row_chunks(dataset, plan):
        tot = block.sum((-2, -1)) + 1e-30
        out[rows, :, 0] = (block.sum(-1) * ky).sum(-1) / tot
        out[rows, :, 1] = (block.sum(-2) * kx).sum(-1) / tot
        if dark is not None:
            c = plane[rows]
            r2 = (ky[:, None] - c[..., 0, None, None]) ** 2 + (kx[None, :] - c[..., 1, None, None]) ** 2
            dark[rows] = (block * (r2 > dark_radius**2)).sum((-2, -1))
    return out - plane, dark


def to_detector_frame(vectors: np.ndarray, transpose: bool) -> np.ndarray:
    """(…, 2) (y, x) vectors of the file's axes in phasestem's detector frame (after the transpose)."""
    return vectors[..., ::-1].copy() if transpose else np.asarray(vectors)
