"""Lazy HDF5 datasets of blocks, patch sets and whole samples (one ``h5py.File`` per process)."""
from __future__ import annotations

import logging
import os

import h5py
import numpy as np
import torch

from ...base.errors import InputFileError
from ...base.safety import check_bad_pixel_mode, first_nonfinite, mask_nonfinite
from ...io import seed as seedfile
from ...io.hdf5 import open_file, reading
from .augment import Symmetry, check_augmentable, scan_source_indices, transform_patterns, transform_phase
from .files import FileInfo, SampleIndex
from .geometry import extract_patches
from .preprocess import Preprocess

log = logging.getLogger("phasestem.learn")


class _Handles:
    """Per-process cache of open h5py files (re-opened after fork; dropped when pickled)."""

    def __init__(self):
        self._pid = None
        self._files: dict[str, h5py.File] = {}

    def get(self, path: str) -> h5py.File:
        if self._pid != os.getpid():
            self._files, self._pid = {}, os.getpid()
        f = self._files.get(path)
        if f is None:
            f = self._files[path] = open_file(path, "training file")
        return f

    def __getstate__(self):
        return {}

    def __setstate__(self, state):
        self._pid, self._files = None, {}


def _runs(sorted_unique: np.ndarray) -> list[tuple[int, int, int]]:
    """Contiguous runs (start value, stop value, start position) of a sorted unique index array."""
    out, start = [], 0
    for k in range(1, len(sorted_unique) + 1):
        if k == len(sorted_unique) or sorted_unique[k] != sorted_unique[k - 1] + 1:
            out.append((int(sorted_unique[start]), int(sorted_unique[k - 1]) + 1, start))
            start = k
    return out


def read_scan_grid(ds, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """``ds[rows][:, cols]`` for a lazy (Sy, Sx, H, W) dataset, reading only contiguous rectangles."""
    ur, uc = np.unique(rows), np.unique(cols)
    buf = np.empty((len(ur), len(uc), *ds.shape[2:]), dtype=np.float32)
    for r0, r1, pr in _runs(ur):
        for c0, c1, pc in _runs(uc):
            buf[pr:pr + r1 - r0, pc:pc + c1 - c0] = ds[r0:r1, c0:c1]
    return buf[np.searchsorted(ur, rows)][:, np.searchsorted(uc, cols)]


class _BaseDataset(torch.utils.data.Dataset):
    """Shared machinery: index, handles, target reading, random symmetry per item."""

    def __init__(self, index: SampleIndex, preprocess: Preprocess | None = None, augment: bool = False,
                 bad_pixels: str = "refuse"):
        self.index = index
        self.bad_pixels = check_bad_pixel_mode(bad_pixels, "bad_pixels")
        self.bad_pixels_masked = 0  # values replaced in this process (bad_pixels='mask')
        self.geometry = index.geometry
        self.preprocess = preprocess or Preprocess()
        self.augment = augment
        self._h5 = _Handles()
        if augment:
            for fi in index.files:
                check_augmentable(fi.geometry, fi.aberrations, fi.path)
        self._coords = torch.from_numpy(self.geometry.frame_coords())  # (n_blocks, block², 2) Å, patch frame
        self._centres = torch.from_numpy(self.geometry.exact_centres())  # (n_blocks, 2) float64 px, unrounded

    def _symmetry(self) -> Symmetry:
        if not self.augment:
            return Symmetry()
        return Symmetry.all()[int(torch.randint(8, ()).item())]

    def _file(self, entry: tuple[int, int]) -> tuple[h5py.File, FileInfo, int]:
        k, sid = entry
        fi = self.index.files[k]
        return self._h5.get(fi.path), fi, sid

    def read_target(self, entry: tuple[int, int], sym: Symmetry) -> np.ndarray:
        """Full target image (Ny, Nx) float32 (phase in rad or potential in V·Å), transformed by ``sym``."""
        f, fi, sid = self._file(entry)
        key = seedfile.target_key(sid, "potential" if fi.layout == "phasestem" and self.index.target == "potential"
                              else "phase")
        with reading(fi.path, "training file"):
            arr = np.asarray(f[key][...], dtype=np.float32)
        if fi.layout != "phasestem" and self.index.target == "phase":
            arr = arr * np.float32(fi.sigma)
        self._screen(arr, f"{fi.path}:{key}", lambda i: i)
        return transform_phase(arr, sym)

    def read_patterns(self, entry: tuple[int, int], rows: np.ndarray, cols: np.ndarray, sym: Symmetry) -> np.ndarray:
        """Raw patterns (len(rows), len(cols), H, W) of the transformed sample at scan rows × cols."""
        f, fi, sid = self._file(entry)
        r, c = scan_source_indices(rows, cols, sym, self.geometry)
        with reading(fi.path, "training file"):
            arr = read_scan_grid(f[seedfile.patterns_key(sid)], r, c)
        self._screen(arr, f"{fi.path}:{seedfile.patterns_key(sid)}", lambda i: (int(r[i[0]]), int(c[i[1]]), *i[2:]))
        if sym.transpose:
            arr = np.swapaxes(arr, 0, 1)
        return transform_patterns(arr, sym)

    def _screen(self, arr: np.ndarray, source: str, to_file_index) -> None:
        """Refuse NaN/Inf (naming ``source`` and the file index ``to_file_index(i)``) or mask them in place."""
        idx = first_nonfinite(arr)
        if idx is None:
            return
        if self.bad_pixels == "mask":
            self.bad_pixels_masked += mask_nonfinite(arr)
            return
        raise InputFileError(f"{source}: value at index {to_file_index(idx)} is {arr[idx]}; expected finite numbers "
                             "(evaluate: --bad-pixels mask replaces them by the median of their finite neighbours)")

    def _block(self, patterns: np.ndarray) -> torch.Tensor:
        b = self.geometry.block
        return self.preprocess(torch.from_numpy(np.ascontiguousarray(patterns)).reshape(b * b, *patterns.shape[2:]))


class PatchDataset(_BaseDataset):
    """One item per (sample, block): the block's patterns and its 76 × 76 target patch.

    Item: ``patterns`` (block², H', W') float32 (preprocessed), ``coords`` (block², 2) Å relative
    to the target patch's pixel frame (:meth:`BlockGeometry.frame_coords`), ``target`` (patch, patch),
    ``centre`` (2,) int64 bright centre,
    ``sample`` and ``block`` (int64 ids).
    """

    def __len__(self) -> int:
        return len(self.index) * self.geometry.n_blocks

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        s, b = divmod(int(item), self.geometry.n_blocks)
        entry = self.index.entries[s]
        sym = self._symmetry()
        y0, x0 = self.geometry.blocks()[b]
        rows, cols = np.arange(y0, y0 + self.geometry.block), np.arange(x0, x0 + self.geometry.block)
        patterns = self.read_patterns(entry, rows, cols, sym)
        phase = self.read_target(entry, sym)
        centre = self.geometry.centres()[b]
        target = extract_patches(phase, self.geometry, centre[None])[0]
        return {"patterns": self._block(patterns), "coords": self._coords[b].clone(), "target": target.float(),
                "centre": torch.from_numpy(centre), "sample": torch.tensor(entry[1]), "block": torch.tensor(b)}


class StitchDataset(_BaseDataset):
    """One item per sample: the ground-truth patches and the full target (no patterns read).

    Item: ``patches`` (n_blocks, patch, patch), ``centres`` (n_blocks, 2) float64 exact bright centres (px, before
    rounding; the patches are cropped at their rounded values), ``phase`` (Ny, Nx).
    """

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        entry = self.index.entries[int(item)]
        phase = torch.from_numpy(self.read_target(entry, self._symmetry()))
        return {"patches": extract_patches(phase, self.geometry).float(), "centres": self._centres.clone(),
                "phase": phase, "sample": torch.tensor(entry[1])}


class SampleDataset(_BaseDataset):
    """One item per sample with every block (End2End training and evaluation).

    Item: ``patterns`` (n_blocks, block², H', W'), ``coords`` (n_blocks, block², 2) Å (patch frames),
    ``centres`` (n_blocks, 2) exact bright centres (px), ``patches`` (n_blocks, patch, patch), ``phase`` (Ny, Nx).
    """

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        entry = self.index.entries[int(item)]
        sym = self._symmetry()
        g = self.geometry
        rows, cols = np.arange(g.scan_shape[0]), np.arange(g.scan_shape[1])
        scan = self.read_patterns(entry, rows, cols, sym)
        blocks = [self._block(scan[y:y + g.block, x:x + g.block]) for y, x in g.blocks()]
        phase = torch.from_numpy(self.read_target(entry, sym))
        return {"patterns": torch.stack(blocks), "coords": self._coords.clone(),
                "centres": self._centres.clone(), "patches": extract_patches(phase, g).float(), "phase": phase,
                "sample": torch.tensor(entry[1])}
