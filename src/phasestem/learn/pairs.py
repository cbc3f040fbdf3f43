"""Paired (coarse input → true phase) image data for Phaseformer (SPEC §5).

Sources, any number at once (:func:`paired_dataset` concatenates them):

* a folder with ``input/`` and ``gt/`` sub-folders of same-named ``.npy``/``.png``/``.tif(f)``
  images (a folder holding ``train/`` and ``test/`` such folders is resolved with ``split``);
* an HDF5 pairs file with datasets ``input`` and ``gt`` of shape (N, H, W) (written by
  :func:`write_pairs` / ``phasestem make-pairs``);
* a simulation file (seed-000 layout, ``phase_{i}`` datasets; :mod:`phasestem.io.seed`): pairs are made on
  the fly by :class:`Degrade` from the true phase in rad (the original generator's ``phase_{i}``, a projected
  potential, times σ at 300 keV) (a new random degradation each time an item is read, or a
  fixed one per item when ``fixed=True``, as used for test splits).

Items are dicts ``{"input": (1, H, W), "target": (1, H, W)}`` float32 in the images' own units (rad
for phase). An input whose size differs from its target is resized to it (bilinear). ``crop``
takes a random (train) or central (``fixed``) square crop; sizes must be multiples of 8 for the
network. PNG images are read as [0, 1] (8- or 16-bit); TIFF through Pillow (single-page, float ok).
"""
from __future__ import annotations

import glob
import logging
import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import h5py
import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from ..base.configfile import StrictModel
from ..base.errors import ConfigError, InputFileError, ShapeError
from ..base.safety import atomic_file, check_finite
from ..io import seed as seedfile
from ..io.hdf5 import open_file, reading
from ..physics.resample import resize

log = logging.getLogger("phasestem.learn.pairs")

IMAGE_EXTENSIONS = (".npy", ".png", ".tif", ".tiff")
_DROP = "replace or drop this image"
PAIRS_FORMAT = "phasestem-pairs"

__all__ = ["Degrade", "degrade", "read_image", "FolderPairs", "H5Pairs", "SimulationPairs", "paired_dataset",
           "write_pairs", "simulation_phases"]


class Degrade(StrictModel):
    """How a coarse input is made from a true phase image (all ranges sampled uniformly per image)."""

    blur_sigma: tuple[float, float] = Field((0.5, 2.0), description="Gaussian blur σ range in px (0 = none)")
    bin_factors: list[int] = Field([1, 2, 4], description="average-pool factors (one drawn per image), then "
                                   "bilinear up-sampling back to the original size")
    noise: tuple[float, float] = Field((0.01, 0.05), description="additive Gaussian noise σ range as a fraction "
                                       "of the phase's standard deviation")
    offset: tuple[float, float] = Field((0.0, 0.0), description="constant phase offset range (rad)")


def _gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Periodic Gaussian blur of (1, 1, H, W) by σ px (in Fourier space)."""
    if sigma <= 0:
        return x
    ky = torch.fft.fftfreq(x.shape[-2], dtype=torch.float64)[:, None]
    kx = torch.fft.fftfreq(x.shape[-1], dtype=torch.float64)[None, :]
    g = torch.exp(-2 * (np.pi * sigma) ** 2 * (ky**2 + kx**2)).to(torch.float32)
    return torch.fft.ifft2(torch.fft.fft2(x) * g).real


def degrade(phase: np.ndarray | torch.Tensor, cfg: Degrade, rng: np.random.Generator) -> torch.Tensor:
    """A coarse version of ``phase`` (H, W): blur → bin ×f → bilinear back → + noise (+ offset)."""
    x = torch.as_tensor(np.asarray(phase, dtype=np.float32))[None, None]
    h, w = x.shape[-2:]
    x = _gaussian_blur(x, float(rng.uniform(*cfg.blur_sigma)))
    f = int(rng.choice(cfg.bin_factors))
    if f > 1:
        x = F.avg_pool2d(x, f, ceil_mode=True)
        x = resize(x, (h, w))
    std = float(torch.as_tensor(np.asarray(phase, dtype=np.float32)).std())
    gen = torch.Generator().manual_seed(int(rng.integers(2**62)))
    x = x + float(rng.uniform(*cfg.noise)) * std * torch.randn(x.shape, generator=gen)
    return (x + float(rng.uniform(*cfg.offset)))[0, 0]


def read_image(path: str | Path) -> np.ndarray:
    """One 2-D image as float32: ``.npy`` as stored; PNG scaled to [0, 1]; TIFF as stored (Pillow)."""
    path = Path(path)
    ext = path.suffix.lower()
    try:
        if ext == ".npy":
            img = np.load(path, allow_pickle=False)
        else:
            from PIL import Image

            with Image.open(path) as im:
                img = np.asarray(im)
            if ext == ".png":
                img = img.astype(np.float32) / (65535.0 if img.dtype == np.uint16 else 255.0)
    except (OSError, ValueError, EOFError) as exc:
        raise InputFileError(f"{path}: cannot read image, empty or damaged? ({type(exc).__name__}: {exc})") from None
    if img.dtype.kind not in "biuf":
        raise InputFileError(f"{path}: image of dtype {img.dtype}; expected real numbers (complex is not cast)")
    if img.ndim == 3 and ext == ".png":
        img = img[..., :3].mean(-1)
    img = np.squeeze(img)
    if img.ndim != 2:
        raise ShapeError(f"{path}: expected a 2-D image, got shape {img.shape}")
    return img.astype(np.float32)


def _pair_item(inp: np.ndarray | torch.Tensor, gt: np.ndarray | torch.Tensor, crop: int | None,
               rng: np.random.Generator | None, source: str) -> dict[str, torch.Tensor]:
    x = torch.as_tensor(np.asarray(inp, dtype=np.float32))[None]
    y = torch.as_tensor(np.asarray(gt, dtype=np.float32))[None]
    if x.shape != y.shape:
        x = resize(x, tuple(y.shape[-2:]))
    if crop is not None:
        h, w = y.shape[-2:]
        if crop > min(h, w):
            raise ShapeError(f"{source}: crop {crop} px is larger than the {h}×{w} image")
        if rng is None:
            top, left = (h - crop) // 2, (w - crop) // 2
        else:
            top, left = int(rng.integers(0, h - crop + 1)), int(rng.integers(0, w - crop + 1))
        x, y = x[:, top:top + crop, left:left + crop], y[:, top:top + crop, left:left + crop]
    if rng is not None:  # random flips / transposes, identical for input and target
        k = int(rng.integers(8))
        if k & 1:
            x, y = x.flip(-1), y.flip(-1)
        if k & 2:
            x, y = x.flip(-2), y.flip(-2)
        if k & 4 and x.shape[-1] == x.shape[-2]:
            x, y = x.transpose(-1, -2), y.transpose(-1, -2)
    return {"input": x.contiguous(), "target": y.contiguous()}


class _PairsBase(torch.utils.data.Dataset):
    def __init__(self, crop: int | None, augment: bool, seed: int):
        self.crop, self.augment, self.seed = crop, augment, seed

    def _fresh_rng(self, item: int) -> np.random.Generator:
        """A new generator per read, drawn from torch's RNG (reproducible under the trainer's seeding)."""
        return np.random.default_rng([self.seed, item, int(torch.randint(0, 2**62, ()))])

    def _rng(self, item: int) -> np.random.Generator | None:
        return self._fresh_rng(item) if self.augment else None


class FolderPairs(_PairsBase):
    """``root/input/NAME`` ↔ ``root/gt/NAME`` image pairs (npy/png/tif)."""

    def __init__(self, root: str | Path, crop: int | None = None, augment: bool = False, seed: int = 0):
        super().__init__(crop, augment, seed)
        root = Path(root)
        self.root = root
        ind, gtd = root / "input", root / "gt"
        if not ind.is_dir() or not gtd.is_dir():
            raise InputFileError(f"{root}: expected sub-folders 'input/' and 'gt/'")
        names = sorted(p.name for p in ind.iterdir() if p.suffix.lower() in IMAGE_EXTENSIONS)
        if not names:
            raise InputFileError(f"{ind}: no images ({', '.join(IMAGE_EXTENSIONS)})")
        missing = [n for n in names if not (gtd / n).is_file()]
        if missing:
            raise InputFileError(f"{gtd}: no ground truth for input '{missing[0]}' (same file name expected)")
        self.names = names

    def __len__(self) -> int:
        return len(self.names)

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        n = self.names[int(item)]
        inp, gt = read_image(self.root / "input" / n), read_image(self.root / "gt" / n)
        for arr, kind in ((inp, "input"), (gt, "gt")):
            check_finite(arr, str(self.root / kind / n), what="pixel", hint=_DROP)
        return _pair_item(inp, gt, self.crop,
                          self._rng(int(item)), str(self.root / "input" / n))


class H5Pairs(_PairsBase):
    """HDF5 file with datasets ``input_key`` and ``gt_key`` of shape (N, H, W) (lazy reads)."""

    def __init__(self, path: str | Path, crop: int | None = None, augment: bool = False, seed: int = 0,
                 input_key: str = "input", gt_key: str = "gt"):
        super().__init__(crop, augment, seed)
        self.path, self.input_key, self.gt_key = str(path), input_key, gt_key
        with open_file(self.path, "pairs file") as f, reading(self.path, "pairs file"):
            for k in (input_key, gt_key):
                if k not in f:
                    raise InputFileError(f"{path}: dataset '{k}' missing (pairs files hold '{input_key}' and "
                                         f"'{gt_key}' of shape (N, H, W))")
            if f[input_key].ndim != 3 or f[gt_key].ndim != 3 or len(f[input_key]) != len(f[gt_key]):
                raise ShapeError(f"{path}: '{input_key}' {f[input_key].shape} and '{gt_key}' {f[gt_key].shape} "
                                 "must both be (N, H, W) with the same N")
            self.n = len(f[gt_key])
        self._file = None
        self._pid = None

    def __len__(self) -> int:
        return self.n

    def _h5(self) -> h5py.File:
        if self._file is None or self._pid != os.getpid():
            self._file, self._pid = h5py.File(self.path, "r"), os.getpid()
        return self._file

    def __getstate__(self):
        return {**self.__dict__, "_file": None, "_pid": None}

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        f = self._h5()
        i = int(item)
        inp, gt = f[self.input_key][i], f[self.gt_key][i]
        for arr, key in ((inp, self.input_key), (gt, self.gt_key)):
            check_finite(np.asarray(arr)[None], f"{self.path}:{key}", offset=(i,), what="pixel", hint=_DROP)
        return _pair_item(inp, gt, self.crop, self._rng(i), self.path)


def simulation_phases(path: str | Path, target: str = "phase") -> list[str]:
    """Names of the ``phase_{i}`` (or ``potential_{i}``) datasets of a simulation file, sorted by i."""
    with open_file(path, "simulation file") as f, reading(path, "simulation file"):
        return [seedfile.target_key(i, target) for i in seedfile.sample_ids(f.keys(), target)]


def simulation_samples(paths: list[str], progress: bool = True
                       ) -> Iterator[tuple[int, str, int, object, np.ndarray]]:
    """(file index, path, sample id, dataset, true phase (H, W) float32 rad) of every sample of the simulation files
    ``paths``, read one at a time; a sample without a true phase, or a non-finite one, is one line naming it."""
    from tqdm.auto import tqdm

    from .. import io

    for j, path in enumerate(paths):
        with open_file(path, "simulation file") as f:
            ids = seedfile.sample_ids(f.keys(), "phase")
        for i in tqdm(ids, desc=Path(path).name, disable=not progress, leave=False):
            ds = io.load(path, sample=int(i))
            if "phase" not in ds.truth:
                raise ConfigError(f"{path}: sample {i} has no true phase")
            truth = np.asarray(ds.truth["phase"], np.float32)
            check_finite(truth, f"{path}:phase_{i}", what="phase value", hint="")
            yield j, path, int(i), ds, truth


class SimulationPairs(_PairsBase):
    """(degrade(φ), φ) pairs from the true phases ``phase_{i}`` of simulation files.

    ``fixed=True`` draws one degradation per item (seeded by ``seed`` and the item) — for test splits;
    otherwise every read draws a new one (with random crops/flips when ``augment``).
    """

    def __init__(self, path: str | Path, degradation: Degrade | None = None, crop: int | None = None,
                 augment: bool = True, fixed: bool = False, seed: int = 0, keys: Sequence[str] | None = None):
        super().__init__(crop, augment and not fixed, seed)
        self.path = str(path)
        self.degradation = degradation or Degrade()
        self.fixed = fixed
        self.keys = list(keys) if keys is not None else simulation_phases(path)
        if not self.keys:
            raise InputFileError(f"{path}: no 'phase_{{i}}' datasets (expected a phasestem simulation file)")
        self._file, self._pid = None, None

    def __len__(self) -> int:
        return len(self.keys)

    __getstate__ = H5Pairs.__getstate__
    _h5 = H5Pairs._h5

    def __getitem__(self, item: int) -> dict[str, torch.Tensor]:
        i = int(item)
        phase = seedfile.read_phase(self._h5(), self.keys[i])  # rad
        if phase.ndim != 2:
            raise ShapeError(f"{self.path}: '{self.keys[i]}' must be 2-D, got {phase.shape}")
        check_finite(phase, f"{self.path}:{self.keys[i]}", what="phase value", hint=_DROP)
        rng = np.random.default_rng([self.seed, i]) if self.fixed else self._fresh_rng(i)
        inp = degrade(phase, self.degradation, rng)
        return _pair_item(inp, phase, self.crop, rng if self.augment else None, self.path)


def _source_kind(path: Path) -> str:
    if path.is_dir():
        return "folder"
    if path.suffix.lower() in (".h5", ".hdf5", ".hdf"):
        with open_file(path, "pairs or simulation file") as f:
            if "input" in f and "gt" in f:
                return "h5pairs"
            if any(k.startswith("phase_") for k in f.keys()):
                return "simulation"
        raise InputFileError(f"{path}: neither a pairs file ('input' + 'gt') nor a simulation file ('phase_{{i}}')")
    raise InputFileError(f"{path}: expected a folder with input/ and gt/, or an HDF5 file")


def paired_dataset(sources: Sequence[str | Path], split: str = "train", crop: int | None = None,
                   augment: bool = True, degradation: Degrade | None = None, fixed: bool = False,
                   seed: int = 0) -> torch.utils.data.Dataset:
    """One dataset over several sources (``ConcatDataset``); see the module docstring for the kinds.

    A folder containing ``split/`` (e.g. ``train/``, ``test/``) uses that sub-folder; glob patterns
    (``data/simulation_data*.h5``) are expanded.
    """
    if not sources:
        raise ConfigError("no data sources given (expected folders with input/ + gt/, or HDF5 files)")
    expanded: list[str] = []
    for s in map(str, sources):
        if any(ch in s for ch in "*?["):
            hits = sorted(glob.glob(s))
            if not hits:
                raise InputFileError(f"{s}: no files match this pattern")
            expanded.extend(hits)
        else:
            expanded.append(s)
    parts: list[torch.utils.data.Dataset] = []
    for s in expanded:
        p = Path(s)
        if not p.exists():
            raise InputFileError(f"{p}: data source not found")
        if p.is_dir() and (p / split).is_dir() and not (p / "input").is_dir():
            p = p / split
        kind = _source_kind(p)
        if kind == "folder":
            parts.append(FolderPairs(p, crop, augment and not fixed, seed))
        elif kind == "h5pairs":
            parts.append(H5Pairs(p, crop, augment and not fixed, seed))
        else:
            parts.append(SimulationPairs(p, degradation, crop, augment, fixed, seed))
        log.info("pairs source %s: %s, %d items", p, kind, len(parts[-1]))
    return parts[0] if len(parts) == 1 else torch.utils.data.ConcatDataset(parts)


def write_pairs(path: str | Path, inputs: np.ndarray, targets: np.ndarray, attrs: dict | None = None) -> Path:
    """Write (N, H, W) ``input`` and ``gt`` datasets (float32, chunked per image) atomically."""
    path = Path(path)
    inputs, targets = np.asarray(inputs, np.float32), np.asarray(targets, np.float32)
    if inputs.ndim != 3 or inputs.shape[0] != targets.shape[0] or targets.ndim != 3:
        raise ShapeError(f"pairs must be (N, H, W) each, got {inputs.shape} and {targets.shape}")
    with atomic_file(path) as tmp, h5py.File(tmp, "w") as f:
        f.create_dataset("input", data=inputs, chunks=(1, *inputs.shape[1:]))
        f.create_dataset("gt", data=targets, chunks=(1, *targets.shape[1:]))
        f.attrs["format"] = PAIRS_FORMAT
        for k, v in (attrs or {}).items():
            f.attrs[k] = v
    return path
