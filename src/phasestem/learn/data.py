"""Data for the learned route (SPEC §3): block geometry, lazy HDF5 datasets, augmentation, preprocessing.

Geometry (seed 000 defaults: 50 × 50 scan, 2 Å step, 256² phase over 100 Å)
------------------------------------------------------------------------------
* Blocks of ``block × block`` patterns with ``stride`` on the scan grid: start indices
  0, 9, 18, 27, 36 per axis → 25 blocks per sample, row-major.
* Bright centre of a block (phase pixels, per axis):
  ``round((origin + step·start + step·(block − 1)/2) · px_per_Å)`` — with the seed's numbers
  ``round((2·start + 13) · 2.56)``: 0 → 33, 9 → 79, 18 → 125, 27 → 172, 36 → 218.
* Patch target: the central ``patch × patch`` (76 × 76) crop of
  ``np.roll(phase, probe_gpts // 2 − centre, axis=(0, 1))``, computed as a periodic index crop
  ``phase[(centre + (N − patch)//2 − probe_gpts//2 + a) mod N]`` (:func:`patch_indices`).
  The 76 px are the area the probe illuminates over one block
  (:func:`phasestem.simulate.probe_extent.illuminated_extent` computes it from the probe).

Files
-----
Our generator's files (root attr ``format = "phasestem-seed000"``; geometry from attrs) and the
user's original files (only ``dp_set_{i}`` and ``phase_{i}``, the latter abTEM's projected
potential in V·Å, no attrs; geometry from :class:`OriginalLayout`). ``target="phase"`` trains on
σ·V_proj in rad (σ from the file's energy, or the user-given energy for original files);
``target="potential"`` on V·Å. :attr:`SampleIndex.target_description` says which was used.

Augmentation
------------
The symmetry group of the square (transpose, flip y, flip x; 8 elements) applied to the *sample*:
a real-space flip y → −y of the specimen about the origin of the periodic cell is the same
flip of every pattern about zero frequency (ky → −ky, pixel ``(2·(H//2) − i) mod H``) together
with the scan flip ``i → (−i − 2·origin/step) mod S`` — exact for a probe whose aberrations are
round (C10, C30, C50 …) and a scan that spans the periodic cell (S·step = cell), which our
simulator guarantees. A transpose swaps (y, x) of scan, patterns and phase. Blocks and targets
are then cut from the transformed sample with the usual geometry, so a block may wrap across
the cell edge (its probe positions are still contiguous on the periodic specimen).

Workers
-------
Datasets hold file *paths*; each process opens its own ``h5py.File`` handles on first use
(re-opened after a fork), so any number of DataLoader workers is safe. Only the needed scan
rectangle(s) of ``dp_set_{i}`` are read.
"""
from __future__ import annotations

import glob
import json
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from ..detector import PixelatedDetector
from ..errors import ConfigError, InputFileError, ShapeError
from ..io import seed as seedfile
from ..optics import ABERRATION_ORDERS, interaction_constant
from ..safety import check_bad_pixel_mode, first_nonfinite, mask_nonfinite
from ..scan import GridScan

log = logging.getLogger("phasestem.learn")

SEED_FORMAT = seedfile.FORMAT


# =============================================================================================
# geometry
# =============================================================================================
@dataclass(frozen=True)
class BlockGeometry:
    """Blocks of a scan and the phase pixels they map to.

    ``scan_step``/``scan_origin`` in Å, ``phase_sampling`` in Å/px, ``probe_gpts`` the grid of
    the seed's ``np.roll`` (defaults to ``phase_shape``).
    """

    scan_shape: tuple[int, int] = (50, 50)
    scan_step: tuple[float, float] = (2.0, 2.0)
    scan_origin: tuple[float, float] = (0.0, 0.0)
    phase_shape: tuple[int, int] = (256, 256)
    phase_sampling: tuple[float, float] = (100 / 256, 100 / 256)
    block: int = 14
    stride: int = 9
    patch: int = 76
    probe_gpts: tuple[int, int] | None = None

    def __post_init__(self):
        for ax in (0, 1):
            if self.scan_shape[ax] < self.block:
                raise ShapeError(f"scan shape {self.scan_shape} is smaller than the block size {self.block}")
        if self.patch > min(self.phase_shape):
            raise ShapeError(f"patch {self.patch} px is larger than the phase image {self.phase_shape}")

    @property
    def gpts(self) -> tuple[int, int]:
        return tuple(self.probe_gpts) if self.probe_gpts is not None else tuple(self.phase_shape)

    @property
    def pixels_per_angstrom(self) -> tuple[float, float]:
        return (1.0 / self.phase_sampling[0], 1.0 / self.phase_sampling[1])

    def start_indices(self, axis: int = 0) -> list[int]:
        """Scan start indices of the blocks along ``axis`` (0, 9, 18, 27, 36 for the seed)."""
        return list(range(0, self.scan_shape[axis] - self.block + 1, self.stride))

    def blocks(self) -> list[tuple[int, int]]:
        """(start_y, start_x) of every block, row-major."""
        return [(y, x) for y in self.start_indices(0) for x in self.start_indices(1)]

    @property
    def n_blocks(self) -> int:
        return len(self.start_indices(0)) * len(self.start_indices(1))

    def block_centre_angstrom(self, start: int, axis: int) -> float:
        """Centre (Å) of the block starting at scan index ``start`` along ``axis``."""
        step = self.scan_step[axis]
        return self.scan_origin[axis] + step * start + step * (self.block - 1) / 2

    def bright_centre(self, start: int, axis: int = 0) -> int:
        """Bright centre (phase pixel) of a block: ``round((start_position + 13) · 2.56)`` for the seed."""
        return int(round(self.block_centre_angstrom(start, axis) * self.pixels_per_angstrom[axis]))

    def centres(self) -> np.ndarray:
        """(n_blocks, 2) int64 bright centres, row-major like :meth:`blocks`."""
        return np.array([(self.bright_centre(y, 0), self.bright_centre(x, 1)) for y, x in self.blocks()], np.int64)

    def block_coords(self) -> np.ndarray:
        """(block², 2) float32 scan positions (Å) of a block's patterns relative to the block centre: the
        block's :class:`~phasestem.scan.GridScan` with its centre at 0 Å."""
        origin = tuple(-(self.block - 1) / 2 * s for s in self.scan_step)
        return GridScan((self.block, self.block), self.scan_step, origin=origin).positions().astype(np.float32)

    def patch_indices(self, centre: int, axis: int = 0) -> np.ndarray:
        """Phase pixel indices (patch,) of the target crop around ``centre`` (periodic)."""
        N, G = self.phase_shape[axis], self.gpts[axis]
        return (centre + (N - self.patch) // 2 - G // 2 + np.arange(self.patch)) % N

    def to_dict(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v) for k, v in self.__dict__.items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> BlockGeometry:
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items()})


def extract_patches(phase: torch.Tensor | np.ndarray, geometry: BlockGeometry,
                    centres: np.ndarray | None = None) -> torch.Tensor:
    """Patch targets (..., n_blocks, patch, patch) cut periodically from ``phase`` (..., Ny, Nx)."""
    phase = torch.as_tensor(phase)
    centres = geometry.centres() if centres is None else np.asarray(centres)
    iy = torch.as_tensor(np.stack([geometry.patch_indices(c, 0) for c in centres[:, 0]]))  # (n, p)
    ix = torch.as_tensor(np.stack([geometry.patch_indices(c, 1) for c in centres[:, 1]]))
    return phase[..., iy[:, :, None], ix[:, None, :]]


def place_indices(centres: torch.Tensor, geometry: BlockGeometry) -> tuple[torch.Tensor, torch.Tensor]:
    """Periodic row/col indices (B, n, patch) of patches with bright ``centres`` (B, n, 2) on the phase grid."""
    N = torch.tensor(geometry.phase_shape, device=centres.device)
    G = torch.tensor(geometry.gpts, device=centres.device)
    off = (N - geometry.patch) // 2 - G // 2
    a = torch.arange(geometry.patch, device=centres.device)
    iy = (centres[..., 0:1].long() + off[0] + a) % N[0]
    ix = (centres[..., 1:2].long() + off[1] + a) % N[1]
    return iy, ix


# =============================================================================================
# preprocessing
# =============================================================================================
class Preprocess(BaseModel):
    """Pattern preprocessing; stored in every checkpoint and reapplied by ``phasestem predict``."""

    model_config = ConfigDict(extra="forbid")

    crop: int | None = Field(None, ge=1, description="keep the central crop × crop detector pixels first (None: all)")
    bin: int = Field(1, ge=1, description="sum bin × bin detector pixels (zero frequency stays in bin H//2)")
    normalize: Literal["none", "pattern", "block"] = Field(
        "pattern", description="dose normalisation: divide each pattern ('pattern') or the block ('block') by its "
        "total counts, scaled so the mean pixel is 1"
    )
    scale: Literal["none", "sqrt", "log"] = Field("sqrt", description="intensity scaling after normalisation")
    log_floor: float = Field(1e-2, gt=0, description="log scaling: log1p(I / log_floor)")

    def detector(self, shape: tuple[int, int]) -> PixelatedDetector:
        """The crop and binning of (H, W) patterns as a :class:`~phasestem.detector.PixelatedDetector`."""
        h, w = shape
        crop = None if self.crop is None else (min(h, self.crop), min(w, self.crop))
        return PixelatedDetector((h, w), crop=crop, binning=self.bin)

    def output_shape(self, shape: tuple[int, int]) -> tuple[int, int]:
        return self.detector(shape).output_shape

    def __call__(self, patterns: torch.Tensor) -> torch.Tensor:
        """Apply to (..., H, W) intensities (counts or fractions) → (..., H', W') float32.

        For ``normalize="block"`` the leading axis −3 is the block (…, block², H, W).
        """
        x = torch.as_tensor(patterns).float()
        x = self.detector(tuple(x.shape[-2:])).reduce(x)
        n_pix = x.shape[-1] * x.shape[-2]
        if self.normalize == "pattern":
            x = x / x.sum((-2, -1), keepdim=True).clamp_min(1e-12) * n_pix
        elif self.normalize == "block":
            dims = (-3, -2, -1) if x.dim() >= 3 else (-2, -1)
            x = x / x.mean(dims, keepdim=True).clamp_min(1e-12)
        x = x.clamp_min(0)
        if self.scale == "sqrt":
            x = x.sqrt()
        elif self.scale == "log":
            x = torch.log1p(x / self.log_floor)
        return x


# =============================================================================================
# augmentation (symmetry group of the square, applied to a whole sample)
# =============================================================================================
@dataclass(frozen=True)
class Symmetry:
    """One element of the square's symmetry group: transpose first, then flips (about the origin)."""

    transpose: bool = False
    flip_y: bool = False
    flip_x: bool = False

    @classmethod
    def all(cls) -> list[Symmetry]:
        return [cls(t, fy, fx) for t in (False, True) for fy in (False, True) for fx in (False, True)]

    @property
    def is_identity(self) -> bool:
        return not (self.transpose or self.flip_y or self.flip_x)

    def flips(self) -> tuple[bool, bool]:
        return self.flip_y, self.flip_x


def flip_index(n: int, shift: int = 0) -> np.ndarray:
    """Index map of i → (−i − shift) mod n (a flip about the periodic origin)."""
    return (-np.arange(n) - shift) % n


def detector_flip_index(n: int) -> np.ndarray:
    """Index map k → −k of an fftshift-ed axis of length n (centre n//2)."""
    return (2 * (n // 2) - np.arange(n)) % n


def transform_phase(phase: np.ndarray, sym: Symmetry) -> np.ndarray:
    """Apply ``sym`` to a phase image (Ny, Nx) whose pixel 0 sits at 0 Å (periodic)."""
    if sym.transpose:
        phase = phase.T
    if sym.flip_y:
        phase = phase[flip_index(phase.shape[0])]
    if sym.flip_x:
        phase = phase[:, flip_index(phase.shape[1])]
    return np.ascontiguousarray(phase)


def transform_patterns(patterns: np.ndarray, sym: Symmetry) -> np.ndarray:
    """Apply ``sym`` to the detector axes of (..., H, W) fftshift-ed patterns."""
    if sym.transpose:
        patterns = np.swapaxes(patterns, -1, -2)
    if sym.flip_y:
        patterns = patterns[..., detector_flip_index(patterns.shape[-2]), :]
    if sym.flip_x:
        patterns = patterns[..., detector_flip_index(patterns.shape[-1])]
    return np.ascontiguousarray(patterns)


def scan_source_indices(rows: np.ndarray, cols: np.ndarray, sym: Symmetry, geometry: BlockGeometry
                        ) -> tuple[np.ndarray, np.ndarray]:
    """Original scan indices (rows', cols') that the transformed sample's ``rows`` × ``cols`` come from.

    The transformed scan at (i, j) is the original at (rows'[i], cols'[j]) — read original[rows', cols']
    and then swap the two scan axes when ``sym.transpose``.
    """
    shifts = [int(round(2 * o / s)) for o, s in zip(geometry.scan_origin, geometry.scan_step, strict=True)]
    r = flip_index(geometry.scan_shape[0], shifts[0])[rows] if sym.flip_y else np.asarray(rows)
    c = flip_index(geometry.scan_shape[1], shifts[1])[cols] if sym.flip_x else np.asarray(cols)
    return (c, r) if sym.transpose else (r, c)


def check_augmentable(geometry: BlockGeometry, aberrations: dict[str, float] | None, source: str) -> None:
    """Raise :class:`ConfigError` when flips/transposes would not be exact symmetries of the data."""
    problems = []
    for ax in (0, 1):
        scan_len = geometry.scan_shape[ax] * geometry.scan_step[ax]
        cell = geometry.phase_shape[ax] * geometry.phase_sampling[ax]
        if abs(scan_len - cell) > 1e-3 * cell:
            problems.append(f"the scan spans {scan_len:g} Å but the periodic cell is {cell:g} Å on axis {ax}")
        m = 2 * geometry.scan_origin[ax] / geometry.scan_step[ax]
        if abs(m - round(m)) > 1e-6:
            problems.append(f"scan origin {geometry.scan_origin[ax]:g} Å is not a multiple of half the step")
    if geometry.scan_shape[0] != geometry.scan_shape[1] or geometry.phase_shape[0] != geometry.phase_shape[1] or \
            abs(geometry.scan_step[0] - geometry.scan_step[1]) > 1e-9:
        problems.append("the scan or phase grid is not square (transposes need a square geometry)")
    for key, val in (aberrations or {}).items():
        order = ABERRATION_ORDERS.get(key)
        if order is not None and order[1] != 0 and abs(val) > 0:
            problems.append(f"aberration {key} = {val:g} Å breaks the probe's mirror symmetry")
    if problems:
        raise ConfigError(f"{source}: augment=true needs exact symmetries, but " + "; ".join(problems)
                          + ". Set data.augment: false.")


# =============================================================================================
# files
# =============================================================================================
class OriginalLayout(BaseModel):
    """Geometry of the user's original files (no attributes stored in them)."""

    model_config = ConfigDict(extra="forbid")

    energy: float = Field(300e3, gt=0, description="beam energy (eV) used for σ when converting potential → phase")
    scan_step: float = Field(2.0, gt=0, description="scan step in Å")
    extent: float = Field(100.0, gt=0, description="side of the periodic cell (and of the phase image) in Å")


@dataclass
class FileInfo:
    """One HDF5 file: its samples and geometry."""

    path: str
    layout: Literal["phasestem", "original"]
    samples: list[int]
    geometry: BlockGeometry
    pattern_shape: tuple[int, int]
    energy: float
    sigma: float
    aberrations: dict[str, float] = field(default_factory=dict)


def _sample_ids(f: h5py.File) -> list[int]:
    return seedfile.sample_ids(f.keys())


def inspect_file(path: str | Path, block: int = 14, stride: int = 9, patch: int = 76,
                 original: OriginalLayout | None = None, layout: str = "auto") -> FileInfo:
    """Read the sample list and geometry of one training file (ours or the user's original layout)."""
    path = str(path)
    if not os.path.isfile(path):
        raise InputFileError(f"{path}: no such training file")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise InputFileError(f"{path}: not a readable HDF5 file ({exc})") from exc
    with f:
        ids = _sample_ids(f)
        if not ids:
            raise InputFileError(f"{path}: no 'dp_set_{{i}}' datasets (expected the seed-000 training layout)")
        missing = [i for i in ids if seedfile.phase_key(i) not in f]
        if missing:
            raise InputFileError(f"{path}: '{seedfile.phase_key(missing[0])}' missing for "
                                 f"'{seedfile.patterns_key(missing[0])}'")
        dp = f[seedfile.patterns_key(ids[0])]
        for name in (seedfile.patterns_key(ids[0]), seedfile.phase_key(ids[0])):
            if f[name].dtype.kind not in "biuf":
                raise InputFileError(f"{path}: '{name}' holds {f[name].dtype} values; expected real numbers "
                                     "(complex data would be cast to real silently)")
        if dp.ndim != 4:
            raise ShapeError(f"{path}: 'dp_set_{ids[0]}' must be (Sy, Sx, H, W), got shape {dp.shape}")
        phase_shape = tuple(int(n) for n in f[seedfile.phase_key(ids[0])].shape)
        kind = layout if layout != "auto" else ("phasestem" if seedfile.is_own(f.attrs) else "original")
        if kind == "phasestem":
            a = f.attrs
            try:
                phase_sampling = tuple(float(v) for v in a["phase_sampling"])
                geometry = BlockGeometry(
                    scan_shape=tuple(int(v) for v in dp.shape[:2]), scan_step=tuple(float(v) for v in a["scan_step"]),
                    scan_origin=tuple(float(v) for v in a["scan_origin"]), phase_shape=phase_shape,
                    phase_sampling=phase_sampling, block=block, stride=stride, patch=patch)
                energy = float(a["energy"])
                sigma = seedfile.file_sigma(a, energy)
                ab = a.get("aberrations", "{}")
                aberrations = json.loads(ab.decode() if isinstance(ab, bytes) else ab)
            except KeyError as exc:
                raise InputFileError(f"{path}: root attribute {exc} missing (format {SEED_FORMAT})") from exc
        else:
            o = original or OriginalLayout()
            s = o.extent / phase_shape[0], o.extent / phase_shape[1]
            geometry = BlockGeometry(scan_shape=tuple(int(v) for v in dp.shape[:2]), scan_step=(o.scan_step,) * 2,
                                     phase_shape=phase_shape, phase_sampling=s, block=block, stride=stride, patch=patch)
            energy, sigma, aberrations = o.energy, seedfile.phase_scale(False, o.energy), {}
        return FileInfo(path, kind, ids, geometry, tuple(int(v) for v in dp.shape[2:]), energy, sigma, aberrations)


def expand_paths(patterns: Sequence[str | Path]) -> list[str]:
    """Files from paths, folders (``*.h5`` inside) and glob patterns, sorted naturally."""
    out: list[str] = []
    for p in patterns:
        p = str(p)
        if os.path.isdir(p):
            out.extend(sorted(glob.glob(os.path.join(p, "*.h5"))))
        elif any(ch in p for ch in "*?["):
            out.extend(sorted(glob.glob(p)))
        else:
            out.append(p)
    if not out:
        raise InputFileError(f"no training files match {list(map(str, patterns))}")

    def key(s: str):
        digits = "".join(ch for ch in Path(s).stem if ch.isdigit())
        return (str(Path(s).parent), int(digits) if digits else -1, s)

    return sorted(dict.fromkeys(out), key=key)


@dataclass
class SampleIndex:
    """All samples of a set of files: (file, sample id) pairs plus shared geometry and target kind."""

    files: list[FileInfo]
    target: Literal["phase", "potential"] = "phase"
    entries: list[tuple[int, int]] = field(default_factory=list)  # (file number, sample id)

    def __post_init__(self):
        if not self.entries:
            self.entries = [(k, i) for k, fi in enumerate(self.files) for i in fi.samples]
        g0, p0 = self.files[0].geometry, self.files[0].pattern_shape
        for fi in self.files[1:]:
            if fi.geometry != g0 or fi.pattern_shape != p0:
                raise ShapeError(f"{fi.path}: geometry/pattern shape differ from {self.files[0].path}; "
                                 "train on files from one simulation setup")

    @classmethod
    def from_paths(cls, paths: Sequence[str | Path], target: str = "phase", **kw) -> SampleIndex:
        if target not in ("phase", "potential"):
            raise ConfigError(f"data.target must be 'phase' or 'potential', got {target!r}")
        return cls([inspect_file(p, **kw) for p in expand_paths(paths)], target)  # type: ignore[arg-type]

    @property
    def geometry(self) -> BlockGeometry:
        return self.files[0].geometry

    @property
    def pattern_shape(self) -> tuple[int, int]:
        return self.files[0].pattern_shape

    @property
    def target_description(self) -> str:
        fi = self.files[0]
        if self.target == "potential":
            return "projected potential (V·Å)"
        if fi.layout == "original":
            return f"phase (rad) = σ·V_proj, σ = {fi.sigma:.6g} rad/(V·Å) at {fi.energy / 1e3:g} keV (given)"
        return f"phase (rad) = σ·V_proj from the file, {fi.energy / 1e3:g} keV"

    def __len__(self) -> int:
        return len(self.entries)

    def subset(self, positions: Sequence[int]) -> SampleIndex:
        return SampleIndex(self.files, self.target, [self.entries[p] for p in positions])

    def split(self, val_fraction: float, test_fraction: float, seed: int = 0) -> dict[str, SampleIndex]:
        """Deterministic random split of samples into train / val / test."""
        n = len(self)
        perm = np.random.default_rng(seed).permutation(n)
        n_test = int(round(test_fraction * n))
        n_val = int(round(val_fraction * n))
        if n - n_test - n_val < 1:
            raise ConfigError(f"split leaves no training samples ({n} samples, val {n_val}, test {n_test})")
        return {
            "test": self.subset(sorted(perm[:n_test].tolist())),
            "val": self.subset(sorted(perm[n_test:n_test + n_val].tolist())),
            "train": self.subset(sorted(perm[n_test + n_val:].tolist())),
        }


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
            f = self._files[path] = h5py.File(path, "r")
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
        self._coords = torch.from_numpy(self.geometry.block_coords())
        self._centres = torch.from_numpy(self.geometry.centres())

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
        arr = np.asarray(f[key][...], dtype=np.float32)
        if fi.layout != "phasestem" and self.index.target == "phase":
            arr = arr * np.float32(fi.sigma)
        self._screen(arr, f"{fi.path}:{key}", lambda i: i)
        return transform_phase(arr, sym)

    def read_patterns(self, entry: tuple[int, int], rows: np.ndarray, cols: np.ndarray, sym: Symmetry) -> np.ndarray:
        """Raw patterns (len(rows), len(cols), H, W) of the transformed sample at scan rows × cols."""
        f, fi, sid = self._file(entry)
        r, c = scan_source_indices(rows, cols, sym, self.geometry)
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
    to the block centre, ``target`` (patch, patch), ``centre`` (2,) int64 bright centre,
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
        return {"patterns": self._block(patterns), "coords": self._coords.clone(), "target": target.float(),
                "centre": torch.from_numpy(centre), "sample": torch.tensor(entry[1]), "block": torch.tensor(b)}


class StitchDataset(_BaseDataset):
    """One item per sample: the ground-truth patches and the full target (no patterns read).

    Item: ``patches`` (n_blocks, patch, patch), ``centres`` (n_blocks, 2) int64, ``phase`` (Ny, Nx).
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

    Item: ``patterns`` (n_blocks, block², H', W'), ``coords`` (n_blocks, block², 2) Å,
    ``centres`` (n_blocks, 2), ``patches`` (n_blocks, patch, patch), ``phase`` (Ny, Nx).
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
        return {"patterns": torch.stack(blocks), "coords": self._coords.expand(g.n_blocks, -1, -1).clone(),
                "centres": self._centres.clone(), "patches": extract_patches(phase, g).float(), "phase": phase,
                "sample": torch.tensor(entry[1])}


def blocks_from_scan(patterns: torch.Tensor | np.ndarray, geometry: BlockGeometry, preprocess: Preprocess
                     ) -> torch.Tensor:
    """Every block of one in-memory scan (Sy, Sx, H, W) → (n_blocks, block², H', W') preprocessed."""
    g = geometry
    scan = torch.as_tensor(np.asarray(patterns) if not isinstance(patterns, torch.Tensor) else patterns)
    if tuple(scan.shape[:2]) != tuple(g.scan_shape):
        raise ShapeError(f"scan shape {tuple(scan.shape[:2])} does not match the geometry {g.scan_shape}")
    if preprocess.normalize != "block":  # per-pattern preprocessing: once per pattern, not once per block
        scan = preprocess(scan.float())
        return torch.stack([scan[y:y + g.block, x:x + g.block].reshape(g.block**2, *scan.shape[2:])
                            for y, x in g.blocks()])
    out = [preprocess(scan[y:y + g.block, x:x + g.block].reshape(g.block**2, *scan.shape[2:]).float())
           for y, x in g.blocks()]
    return torch.stack(out)


def with_geometry(index: SampleIndex, **changes) -> SampleIndex:
    """A copy of ``index`` whose files use a modified geometry (e.g. another ``patch`` size)."""
    files = [replace(fi, geometry=replace(fi.geometry, **changes)) for fi in index.files]
    return SampleIndex(files, index.target, list(index.entries))


def check_coverage(geometry: BlockGeometry) -> float:
    """Fraction of phase pixels covered by at least one patch (1.0 for the seed geometry)."""
    cover = np.zeros(geometry.phase_shape, bool)
    for cy, cx in geometry.centres():
        cover[np.ix_(geometry.patch_indices(cy, 0), geometry.patch_indices(cx, 1))] = True
    return float(cover.mean())


# =============================================================================================
# a small, learnable synthetic training set (tests, notebook, demos)
# =============================================================================================
def synthetic_phase(n_px: int, sampling: float, rng: np.random.Generator, n_blobs: int = 12,
                    sigma: tuple[float, float] = (1.0, 2.0), amplitude: tuple[float, float] = (0.2, 0.6)) -> np.ndarray:
    """Periodic phase (n_px, n_px) rad: a sum of Gaussian blobs (σ in Å) at random positions."""
    y = np.arange(n_px) * sampling
    L = n_px * sampling
    out = np.zeros((n_px, n_px))
    for _ in range(n_blobs):
        cy, cx = rng.uniform(0, L, 2)
        s = rng.uniform(*sigma)
        a = rng.uniform(*amplitude)
        dy = (y - cy + L / 2) % L - L / 2
        dx = (y - cx + L / 2) % L - L / 2
        out += a * np.exp(-(dy[:, None] ** 2 + dx[None, :] ** 2) / (2 * s**2))
    return out.astype(np.float32)


def write_synthetic_file(path: str | Path, n_samples: int, first_sample: int = 0, seed: int = 0,
                         extent: float = 32.0, phase_px: int = 64, scan: int = 16, window: int = 16,
                         energy: float = 300e3, semiangle: float = 12.0, c10: float = 100.0,
                         dose: float | None = None, n_blobs: int = 12) -> Path:
    """Write a small seed-000-layout file of weak phase objects simulated with :class:`ForwardModel`.

    The object is a single slice ``exp(i·phase)`` on a ``phase_px``² grid over ``extent`` Å (pixel =
    ``extent/phase_px``); a ``scan``² raster spans the cell; patterns are ``window``² (one object
    pixel per real-space pixel), fftshift-ed, summing to 1 (or Poisson counts with ``dose`` e⁻/pattern).
    ``c10`` is C10 in Å (> 0: over-focus), which spreads the probe over about one scan step.
    """
    from ..dataset import angular_sampling_for as ang_for
    from ..noise import poisson_counts
    from ..optics import make_probe
    from ..physics import ForwardModel, transmission_function

    path = Path(path)
    rng = np.random.default_rng(seed + 7919 * first_sample)
    ps = extent / phase_px
    step = extent / scan
    probe = make_probe((window, window), (ps, ps), energy, semiangle, {"C10": c10})
    fm = ForwardModel((window, window), (ps, ps), energy)
    pos = torch.tensor(GridScan((scan, scan), step).positions(), dtype=torch.float32)
    sigma = interaction_constant(energy)
    tmp = path.with_name(path.name + ".tmp")
    with h5py.File(tmp, "w") as f:
        for i in range(first_sample, first_sample + n_samples):
            phase = synthetic_phase(phase_px, ps, rng, n_blobs=n_blobs)
            obj = transmission_function(torch.from_numpy(phase))[None, None]
            with torch.no_grad():
                pats = fm(obj, probe, pos).reshape(scan, scan, window, window).numpy()
            if dose is not None:
                pats = poisson_counts(pats, dose, rng)
            f.create_dataset(seedfile.patterns_key(i), data=pats.astype(np.float32), chunks=(min(5, scan), min(5, scan),
                                                                                   window, window))
            f.create_dataset(seedfile.phase_key(i), data=phase)
            f.create_dataset(seedfile.potential_key(i), data=(phase / sigma).astype(np.float32))
        a = f.attrs
        a["format"], a["phase_convention"], a["energy"], a["semiangle"] = (SEED_FORMAT, seedfile.PHASE_CONVENTION,
                                                                              energy, semiangle)
        a["aberrations"] = json.dumps({"C10": c10})
        a["scan_shape"], a["scan_step"], a["scan_origin"] = np.array([scan, scan]), np.array([step, step]), np.zeros(2)
        a["extent"], a["phase_shape"] = np.array([extent, extent]), np.array([phase_px, phase_px])
        a["phase_sampling"], a["pattern_shape"] = np.array([ps, ps]), np.array([window, window])
        a["angular_sampling"] = np.asarray(ang_for(energy, ps, (window, window)))
        a["sigma"], a["samples_per_file"], a["first_sample"] = sigma, n_samples, first_sample
        a["dose"] = -1.0 if dose is None else float(dose)
    os.replace(tmp, path)
    return path
