"""The restorer's training items, read from pairs files of AD epochs (:mod:`phasestem.learn.ad_pairs`).

:class:`RestorePairs`: one item per (sample, stored epoch) of the chosen ``epochs`` (a restorer learns to restore
a short run and a finished one alike): ``{"input": (C, H, W), "target": (1, H, W), "field": (1, H, W)}`` float32,
C = 1 + the extra channels (AD's phase first). ``augment``: one of the 8 symmetries of the square (dihedral group:
rotations by 90° and a transpose), drawn per read, applied alike to every array. ``crop``: a random (training) or
central square of that side (px), for memory; None keeps the whole image.
"""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np
import torch

from ...base.errors import ConfigError, ShapeError
from ..ad_pairs import stored_epochs

__all__ = ["RestorePairs", "dihedral", "pairs_optics"]


def dihedral(x: torch.Tensor, k: int) -> torch.Tensor:
    """The k-th (0 … 7) symmetry of the square on the last two axes: rotation by k mod 4 quarter turns, then a
    transpose when k ≥ 4."""
    x = torch.rot90(x, int(k) % 4, dims=(-2, -1))
    return x.transpose(-2, -1) if int(k) >= 4 else x


def pairs_optics(path: str | Path) -> dict | None:
    """The geometry a pairs file of AD epochs records (``optics`` attribute), or None."""
    with h5py.File(path, "r") as f:
        raw = f.attrs.get("optics")
    return json.loads(raw) if raw else None


class RestorePairs(torch.utils.data.Dataset):
    """Items of the pairs files ``paths`` (module docstring); ``epochs``: the stored epochs to use (None: all;
    ``'last'``: the run's end only)."""

    def __init__(self, paths: list[str | Path], channels: tuple[str, ...] = ("amplitude", "illumination"),
                 epochs: list[int] | str | None = None, crop: int | None = None, augment: bool = False,
                 seed: int = 0):
        self.paths, self.channels = [str(p) for p in paths], tuple(channels)
        self.crop, self.augment, self.seed, self.reads = crop, augment, int(seed), 0
        self.items: list[tuple[int, int, int]] = []  # (file, sample, epoch)
        for j, path in enumerate(self.paths):
            have = stored_epochs(path)
            use = have if epochs is None else [have[-1]] if epochs == "last" else [int(e) for e in epochs]
            missing = [e for e in use if e not in have]
            if missing:
                raise ConfigError(f"{path}: holds AD epochs {have}, not {missing}")
            with h5py.File(path, "r") as f:
                n, h, w = f["gt"].shape
            if crop is not None and crop > min(h, w):
                raise ShapeError(f"{path}: crop {crop} px is larger than its {h}×{w} images")
            self.items += [(j, i, e) for i in range(n) for e in use]
        self._files: dict[int, h5py.File] = {}

    def __len__(self) -> int:
        return len(self.items)

    def __getstate__(self):
        return {**self.__dict__, "_files": {}}

    def _h5(self, j: int) -> h5py.File:
        if j not in self._files:
            self._files[j] = h5py.File(self.paths[j], "r")
        return self._files[j]

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        j, i, e = self.items[int(item)]
        f = self._h5(j)
        arrays = [f[f"epoch_{e}/phase"][i]] + [f[f"epoch_{e}/{c}"][i] for c in self.channels]
        x = torch.as_tensor(np.stack(arrays).astype(np.float32))
        y = torch.as_tensor(np.asarray(f["gt"][i], np.float32))[None]
        m = torch.as_tensor(np.asarray(f["field"][i], np.float32))[None]
        rng = np.random.default_rng((self.seed, int(item), self.reads if self.augment else 0))
        self.reads += 1
        if self.crop is not None:
            c, (h, w) = self.crop, x.shape[-2:]
            y0, x0 = ((int(rng.integers(0, h - c + 1)), int(rng.integers(0, w - c + 1))) if self.augment
                      else ((h - c) // 2, (w - c) // 2))
            x, y, m = (t[..., y0:y0 + c, x0:x0 + c] for t in (x, y, m))
        if self.augment:
            square = x.shape[-1] == x.shape[-2]  # a non-square image keeps its shape (batches): 0° and 180°
            k = int(rng.integers(0, 8)) if square else 2 * int(rng.integers(0, 2))
            x, y, m = dihedral(x, k), dihedral(y, k), dihedral(m, k)
        return {"input": x.contiguous(), "target": y.contiguous(), "field": m.contiguous()}
