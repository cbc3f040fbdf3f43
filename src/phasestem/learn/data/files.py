"""Training files (seed-000 layout, :mod:`phasestem.io.seed`): their samples and geometry, and the sample index."""
from __future__ import annotations

import glob
import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import h5py
import numpy as np
from pydantic import Field

from ...base.configfile import StrictModel
from ...base.errors import ConfigError, InputFileError, ShapeError
from ...io import seed as seedfile
from ...io.hdf5 import check_written, open_file, reading
from .geometry import BlockGeometry

log = logging.getLogger("phasestem.learn")



# =============================================================================================
# files
# =============================================================================================
class OriginalLayout(StrictModel):
    """Geometry of the user's original files (no attributes stored in them)."""

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
    semiangle: float | None = None  #: probe semi-angle (mrad), when the file records it
    angular_sampling: tuple[float, float] | None = None  #: detector pixel (mrad), when the file records it

    def optics(self) -> dict[str, Any] | None:
        """What the file records of its optics and scan (energy eV, semi-angle and detector pixel mrad,
        aberrations Å, scan step Å), the record a trained model keeps (``meta["data"]["optics"]``); None for files
        of the original layout, which record none of it."""
        if self.layout != "phasestem":
            return None
        return {"energy": self.energy, "semiangle": self.semiangle, "aberrations": dict(self.aberrations),
                "angular_sampling": None if self.angular_sampling is None else list(self.angular_sampling),
                "scan_step": list(self.geometry.scan_step)}


def _sample_ids(f: h5py.File) -> list[int]:
    return seedfile.sample_ids(f.keys())


def inspect_file(path: str | Path, block: int = 14, stride: int = 9, patch: int = 76,
                 original: OriginalLayout | None = None, layout: str = "auto") -> FileInfo:
    """Read the sample list and geometry of one training file (ours or the user's original layout)."""
    path = str(path)
    if not os.path.isfile(path) and not os.path.islink(path):  # a link: open_file says why it leads nowhere
        raise InputFileError(f"{path}: no such training file")
    with open_file(path, "training file (seed-000 HDF5)") as f, reading(path, "training file (seed-000 HDF5)"):
        ids = _sample_ids(f)
        if not ids:
            raise InputFileError(f"{path}: no 'dp_set_{{i}}' datasets (expected the seed-000 training layout)")
        missing = [i for i in ids if seedfile.phase_key(i) not in f]
        if missing:
            raise InputFileError(f"{path}: '{seedfile.phase_key(missing[0])}' missing for "
                                 f"'{seedfile.patterns_key(missing[0])}'")
        for i in (ids[0], ids[-1]):  # the samples are read later: groups or unwritten data are refused now
            check_written(f[seedfile.patterns_key(i)], f"{path}:{seedfile.patterns_key(i)}")
            check_written(f[seedfile.phase_key(i)], f"{path}:{seedfile.phase_key(i)}")
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
                aberrations = seedfile.aberrations(a, path)
                semiangle = float(a["semiangle"]) if "semiangle" in a else None
                angular = tuple(float(v) for v in a["angular_sampling"]) if "angular_sampling" in a else None
            except KeyError as exc:
                raise InputFileError(f"{path}: root attribute {exc} missing (format {seedfile.FORMAT})") from exc
        else:
            o = original or OriginalLayout()
            s = o.extent / phase_shape[0], o.extent / phase_shape[1]
            geometry = BlockGeometry(scan_shape=tuple(int(v) for v in dp.shape[:2]), scan_step=(o.scan_step,) * 2,
                                     phase_shape=phase_shape, phase_sampling=s, block=block, stride=stride, patch=patch)
            energy, sigma, aberrations = o.energy, seedfile.sigma(o.energy), {}
            semiangle, angular = None, None
        return FileInfo(path, kind, ids, geometry, tuple(int(v) for v in dp.shape[2:]), energy, sigma, aberrations,
                        semiangle, angular)


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
    entries: list[tuple[int, int]] | None = None  # (file number, sample id); None: every sample of the files

    def __post_init__(self):
        if self.entries is None:  # an empty list is an empty subset (a split of 0 samples), not "all"
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

    def split_positions(self, val_fraction: float, test_fraction: float, seed: int = 0) -> dict[str, list[int]]:
        """Positions in :attr:`entries` of the deterministic random split into train / val / test."""
        n = len(self)
        perm = np.random.default_rng(seed).permutation(n)
        n_test = int(round(test_fraction * n))
        n_val = int(round(val_fraction * n))
        if n - n_test - n_val < 1:
            raise ConfigError(f"split leaves no training samples ({n} samples, val {n_val}, test {n_test})")
        return {"test": sorted(perm[:n_test].tolist()), "val": sorted(perm[n_test:n_test + n_val].tolist()),
                "train": sorted(perm[n_test + n_val:].tolist())}

    def split(self, val_fraction: float, test_fraction: float, seed: int = 0) -> dict[str, SampleIndex]:
        """Deterministic random split of samples into train / val / test (:meth:`split_positions`)."""
        return {name: self.subset(p) for name, p in self.split_positions(val_fraction, test_fraction, seed).items()}


def recorded_index(meta: dict) -> SampleIndex:
    """The samples a model was trained from, as its ``meta["data"]`` records them: its files with their block
    geometry, cut to ``max_samples``; :meth:`SampleIndex.split` with the recorded fractions and seed then gives
    its train / val / test sets (``phasestem evaluate``, ``predict --sample``'s note). The files' errors as
    :meth:`SampleIndex.from_paths` raises them."""
    d, g = meta["data"], meta["data"]["geometry"]
    stored = SampleIndex.from_paths(d["files"], target=d.get("target", "phase"), block=g["block"], stride=g["stride"],
                                    patch=g["patch"])
    if d.get("max_samples"):
        stored = stored.subset(range(min(d["max_samples"], len(stored))))
    return stored


def with_geometry(index: SampleIndex, **changes) -> SampleIndex:
    """A copy of ``index`` whose files use a modified geometry (e.g. another ``patch`` size)."""
    files = [replace(fi, geometry=replace(fi.geometry, **changes)) for fi in index.files]
    return SampleIndex(files, index.target, list(index.entries))
