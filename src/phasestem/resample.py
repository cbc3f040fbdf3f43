"""Bilinear resampling of images and patterns: the one place phasestem interpolates a 2-D grid onto another.

Two mappings, both bilinear over the last two axes:

* :func:`resize` / :func:`resample_image` keep the **field of view**: the H × W pixel areas of the input are
  spread over the h × w of the output (``align_corners=False``: pixel edges, not centres, line up);
* :func:`sample_on_grid` samples an image whose pixel (0, 0) sits at 0 Å at the points ``j·target`` Å of
  a new grid (phasestem's frame convention; beyond the last pixel the edge value is repeated).

Torch tensors stay tensors (differentiable, on their device); NumPy arrays come back as float32 arrays.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F


def resize(x: np.ndarray | torch.Tensor, shape: tuple[int, int]) -> np.ndarray | torch.Tensor:
    """(…, H, W) → (…, h, w) = ``shape``, bilinear over the same field of view; the input itself when the size
    does not change. Values are interpolated, not summed: scale by (H·W)/(h·w) to keep totals."""
    shape = (int(shape[0]), int(shape[1]))
    if tuple(x.shape[-2:]) == shape:
        return x
    t = x if torch.is_tensor(x) else torch.as_tensor(np.asarray(x, dtype=np.float32))
    lead = t.shape[:-2]
    out = F.interpolate(t.reshape(-1, 1, *t.shape[-2:]), size=shape, mode="bilinear", align_corners=False)
    out = out.reshape(*lead, *shape)
    return out if torch.is_tensor(x) else out.numpy()


def resample_image(img: torch.Tensor, sampling: tuple[float, float], target: tuple[float, float]) -> torch.Tensor:
    """A 2-D image on pixels of ``sampling`` Å → the same field of view on pixels of ``target`` Å (bilinear;
    differentiable). Unchanged when the grid size would not change."""
    new = tuple(max(1, round(n * s / t)) for n, s, t in zip(img.shape[-2:], sampling, target, strict=True))
    return resize(img, new)


def sample_on_grid(image: np.ndarray, sampling: tuple[float, float], target_sampling: tuple[float, float],
                   shape: tuple[int, int], start: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
    """``image`` (H, W) with pixel (0, 0) at 0 Å and pixels of ``sampling`` Å, sampled bilinearly at the points
    (start_y + i·dy', start_x + j·dx') Å of a ``shape`` grid of ``target_sampling`` Å (edge values beyond the
    image; zeros beyond it when the samplings are equal and ``start`` is 0, where the image is copied). Returns
    float32 (h, w)."""
    same = all(abs(a - b) < 1e-9 for a, b in zip(sampling, target_sampling, strict=True))
    if same and not any(start):
        out = np.zeros(shape, np.float32)
        h, w = min(shape[0], image.shape[0]), min(shape[1], image.shape[1])
        out[:h, :w] = image[:h, :w]
        return out
    yy = (start[0] + np.arange(shape[0]) * target_sampling[0]) / sampling[0]
    xx = (start[1] + np.arange(shape[1]) * target_sampling[1]) / sampling[1]
    y0 = np.clip(np.floor(yy).astype(int), 0, image.shape[0] - 2)
    x0 = np.clip(np.floor(xx).astype(int), 0, image.shape[1] - 2)
    fy = np.clip(yy - y0, 0, 1)[:, None]
    fx = np.clip(xx - x0, 0, 1)[None, :]
    a, b = image[np.ix_(y0, x0)], image[np.ix_(y0, x0 + 1)]
    c, d = image[np.ix_(y0 + 1, x0)], image[np.ix_(y0 + 1, x0 + 1)]
    return ((1 - fy) * ((1 - fx) * a + fx * b) + fy * ((1 - fx) * c + fx * d)).astype(np.float32)
