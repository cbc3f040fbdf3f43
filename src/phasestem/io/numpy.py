"""NumPy ``.npy`` (one array; memory-mapped, so lazy) and ``.npz`` (named arrays) files."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..dataset import FourDSTEM
from ..errors import InputFileError
from ..safety import atomic_file
from .hdf5 import build_dataset, stored_calibrations


def read(path: str | Path, patterns_key: str | None = None, positions_key: str | None = None,
         phase_key: str | None = None, **options) -> FourDSTEM:
    """Read patterns (Sy, Sx, H, W) or (N, H, W) from .npy or from key ``patterns_key`` of an .npz.

    An .npz's small arrays named ``energy`` (eV), ``scan_step`` (Å), ``angular_sampling`` (mrad), ``sampling`` (Å)
    or ``semiangle`` (mrad) are the file's calibrations (what :func:`write` stores).

    ``options`` are the calibrations of :func:`phasestem.io.hdf5.build_dataset` (energy, scan_step, …).
    """
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"{path}: no such file")
    positions = truth = None
    held: dict = {}
    if path.suffix.lower() == ".npy":
        arr = np.load(path, mmap_mode="r", allow_pickle=False)
        key = "array"
    else:
        with np.load(path, allow_pickle=False) as z:
            keys = list(z.files)
            key = patterns_key
            if key is None:
                cands = [k for k in keys if z[k].ndim in (3, 4)]
                if len(cands) != 1:
                    raise InputFileError(f"{path}: give patterns_key: 3-D/4-D arrays are {cands} among {keys}")
                key = cands[0]
            for k, role in ((key, "patterns_key"), (positions_key, "positions_key"), (phase_key, "phase_key")):
                if k is not None and k not in keys:
                    raise InputFileError(f"{path}: no array '{k}' ({role}); arrays present: {keys}")
            arr = z[key]
            held = stored_calibrations(z)  # e.g. energy, scan_step, angular_sampling written by write()
            if positions_key:
                positions = np.asarray(z[positions_key], dtype=np.float64).reshape(-1, 2)
            if phase_key:
                truth = {"phase": np.asarray(z[phase_key], dtype=np.float32)}
    return build_dataset(arr, f"{path}:{key}", truth=truth, file_values={**held, "positions": positions},
                         metadata={"file": str(path), "patterns_key": key}, **options)


def write(path: str | Path, dataset: FourDSTEM) -> Path:
    """Write patterns and calibrations to an .npz (temporary name, then rename; nothing left on failure)."""
    path = Path(path)
    extra = {}
    if dataset.positions is not None:
        extra["positions"] = dataset.positions
    if dataset.angular_sampling is not None:
        extra["angular_sampling"] = np.asarray(dataset.angular_sampling)
    with atomic_file(path, "path") as tmp, open(tmp, "wb") as fh:  # a file object: savez adds no suffix
        np.savez(fh, patterns=np.asarray(dataset.patterns[...], dtype=np.float32), energy=dataset.energy,
                 scan_step=np.asarray(dataset.scan_step), **extra)
    return path
