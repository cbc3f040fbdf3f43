"""Patterns corrected with a calibration: bad pixels filled, descan removed, detector transposed."""
from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from .reading import CHUNK_PIXELS, row_chunks


def _keys_weights(u):
    """Weights (N, 4) of Keys' cubic convolution (a = −0.5) at taps −1, 0, 1, 2 for fractions ``u`` (N,) in [0, 1)."""
    import torch

    d = torch.stack([1 + u, u, 1 - u, 2 - u], -1)  # distance of each tap
    a = -0.5
    near = (a + 2) * d**3 - (a + 3) * d**2 + 1
    far = a * d**3 - 5 * a * d**2 + 8 * a * d - 4 * a
    return torch.where(d <= 1, near, far)


def _shift_matrices(s, n: int):
    """(N, n, n) matrices that shift a length-``n`` axis by s (N,) px (content to larger indices), periodic."""
    import torch

    t = -s
    j = torch.floor(t)
    w = _keys_weights(t - j).to(torch.float32)  # (N, 4)
    idx = (torch.arange(n)[None, :, None] + j.long()[:, None, None] + torch.arange(-1, 3)[None, None, :]) % n
    out = torch.zeros(len(s), n, n)
    return out.scatter_add_(2, idx, w[:, None, :].expand(-1, n, -1).contiguous())


def shift_images(block: np.ndarray, shifts: np.ndarray) -> np.ndarray:
    """Shift real images (..., H, W) by ``shifts`` (..., 2) px (content to larger indices), sub-pixel, periodic.

    Keys' cubic convolution, separable (4 taps per axis): local, so the noise and the hard edge of the
    bright-field disk stay where they are. A Fourier shift of the intensities would ring: a pattern is
    not band-limited on its own grid (|FFT|² of a window has twice its support), and the ringing of the
    disk edge and of every Poisson count spreads over the whole frame (benchmarks/real_data, 32 × 32 scan:
    --auto phase r 0.75 with Fourier shifts, 0.955 with this kernel, 0.976 with no descan to remove; wider
    kernels, Lanczos-3 or a cubic B-spline, 0.94). Negative overshoot is clipped to 0 (counts); whole-pixel
    shifts are exact.
    """
    import torch

    H, W = block.shape[-2:]
    x = torch.from_numpy(np.array(block, dtype=np.float32, order="C")).reshape(-1, H, W)  # a writable copy
    s = torch.as_tensor(np.asarray(shifts), dtype=torch.float64).reshape(-1, 2)
    out = _shift_matrices(s[:, 0], H) @ x @ _shift_matrices(s[:, 1], W).transpose(1, 2)
    return out.clamp_(min=0.0).reshape(block.shape).numpy()


def whole_pixel_shifts(centres: np.ndarray, pattern_shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Split the move of each disk centre ``centres`` (..., 2) px to the central pixel (H//2, W//2) into whole
    pixels and a rest: returns ``(shift, rest)``, ``shift`` (..., 2) integer px that bring each centre nearest to
    the central pixel, and ``rest`` (..., 2) in [−½, ½] px, where the centre then sits relative to it."""
    target = np.array([pattern_shape[0] // 2, pattern_shape[1] // 2], dtype=np.float64)
    shift = np.round(target - np.asarray(centres, dtype=np.float64))
    return shift, np.asarray(centres, dtype=np.float64) + shift - target


def corrected_chunks(dataset, plan, centres: np.ndarray, transpose: bool = False, subpixel: bool = True,
                     max_pixels: int = CHUNK_PIXELS, whole: bool = False) -> Iterator[tuple[slice, np.ndarray]]:
    """Yield (rows, patterns) with bad pixels filled, each pattern's disk centre ``centres`` (Sy, Sx, 2) px
    moved to (H//2, W//2), and the detector axes swapped when ``transpose`` (phasestem's frame).

    ``subpixel=False`` moves each pattern by whole pixels only (:func:`whole_pixel_shifts`): the counts are
    kept exactly and the rest of the descan is left for the model (``data.detector_shifts``); ``whole``: bad pixels
    are filled with whole counts (:func:`~phasestem.calibrate.badpixels.fill_bad_pixels`)."""
    H, W = dataset.pattern_shape
    centres = np.asarray(centres, dtype=np.float64)
    moves = np.array([H // 2, W // 2]) - centres if subpixel else whole_pixel_shifts(centres, (H, W))[0]
    for rows, block in row_chunks(dataset, plan, max_pixels, whole):
        out = shift_images(block, moves[rows])
        yield rows, (np.swapaxes(out, -1, -2) if transpose else out)


class ResampledPatterns:
    """Patterns (Sy, Sx, H, W) with each one moved by ``moves`` (Sy, Sx, 2) px (Keys' cubic, :func:`shift_images`)
    when read, a few scan rows at a time: for the direct methods (DPC, tcBF, SSB), which need every disk on the
    central pixel, on data whose sub-pixel descan was left to the model (``data.detector_shifts``)."""

    def __init__(self, patterns, moves: np.ndarray):
        self.patterns = patterns
        self.moves = np.asarray(moves, dtype=np.float64)
        if self.moves.shape != (*patterns.shape[:2], 2):
            raise ValueError(f"moves must be (Sy, Sx, 2) = {(*patterns.shape[:2], 2)}, got {self.moves.shape}")
        self.shape = tuple(patterns.shape)
        self.dtype = np.dtype(np.float32)
        self.ndim = 4

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        lead = key[:2] if isinstance(key, tuple) else key
        if isinstance(key, tuple) and (len(key) > 2 or any(k is Ellipsis for k in key)):
            raise IndexError("ResampledPatterns reads scan rows/positions only: index the first two axes")
        return shift_images(np.asarray(self.patterns[key], dtype=np.float32), self.moves[lead])

    def __array__(self, dtype=None, copy=None):
        out = self[...]
        return out if dtype is None else out.astype(dtype)
