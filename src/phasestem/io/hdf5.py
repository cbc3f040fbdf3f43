"""HDF5 of any layout (keys named by the user), the seed-000 layout, and phasestem's own 4D-STEM file.

``read(path, patterns_key=None, ...)`` finds the patterns:
* phasestem's own file (attr ``format="phasestem-4dstem"``): everything from the file;
* a seed-000 file (ours, or the user's original generator's ``dp_set_{i}``/``phase_{i}``): sample
  ``sample`` (default: the first) with its ground truth;
* any other file: ``patterns_key``, or the only 3-D/4-D dataset in it.
Calibrations given as options override those found in the file (the dataset's metadata says which, and
which of them differ: :func:`phasestem.io._common.build_dataset`).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import h5py
import numpy as np

from ..dataset import FourDSTEM
from ..errors import InputFileError
from ..optics import wavelength
from ..safety import atomic_file, available_memory
from . import seed
from ._common import build_dataset as common_build_dataset
from ._common import check_real

log = logging.getLogger("phasestem.io")

OWN_FORMAT = "phasestem-4dstem"
#: an HDF5 array is read into memory (``lazy=None``) only if its float32 copy is below this share of the
#: memory still available; larger ones stay on disk and are read pattern block by pattern block
EAGER_MEMORY_FRACTION = 0.25


def build_dataset(patterns, source: str, truth=None, lazy=None, metadata=None, file_values=None, defaults=None,
                  **options) -> FourDSTEM:
    """Shared tail of the hdf5/numpy readers: :func:`phasestem.io._common.build_dataset` plus ground truth.

    With ``lazy=None`` an on-disk array is read into memory when its float32 copy fits in
    :data:`EAGER_MEMORY_FRACTION` of the available memory (straight into one float32 buffer: never two
    copies), and kept on disk otherwise.
    """
    check_real(patterns, source)
    if not _is_lazy(patterns, lazy) and not isinstance(patterns, np.ndarray):
        patterns = read_float32(patterns)
    ds = common_build_dataset(patterns, source, file_values=file_values, metadata=metadata, defaults=defaults,
                              **options)
    ds.truth = truth
    return ds


def read_float32(dset) -> np.ndarray:
    """The whole of an h5py dataset as float32, converted by HDF5 while reading (one buffer, no copy)."""
    out = np.empty(dset.shape, dtype=np.float32)
    if out.size:
        dset.read_direct(out)
    return out


def _is_lazy(arr, lazy) -> bool:
    if isinstance(arr, np.ndarray):
        return False
    if lazy is None:
        return int(np.prod(arr.shape)) * 4 > EAGER_MEMORY_FRACTION * available_memory()
    return bool(lazy)


def _datasets(f: h5py.File) -> dict[str, h5py.Dataset]:
    found = {}
    f.visititems(lambda name, obj: found.__setitem__(name, obj) if isinstance(obj, h5py.Dataset) else None)
    return found


def _attr(attrs, key, default=None):
    if key not in attrs:
        return default
    v = attrs[key]
    return v.decode() if isinstance(v, bytes) else v


def read(path: str | Path, patterns_key: str | None = None, sample: int | None = None, lazy: bool | None = None,
         phase_key: str | None = None, positions_key: str | None = None, potential_energy: float | None = None,
         **options) -> FourDSTEM:
    """Read a 4D-STEM HDF5 file (see the module docstring). ``options`` = calibrations for build_dataset."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"{path}: no such file")
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise InputFileError(f"{path}: not a readable HDF5 file ({exc})") from exc
    fmt = _attr(f.attrs, "format")
    if fmt == OWN_FORMAT:
        return _read_own(f, path, lazy, **options)
    seed_keys = seed.sample_ids(f.keys())
    if patterns_key is None and seed_keys:
        return _read_seed(f, path, seed_keys, sample, lazy, potential_energy, **options)
    dsets = _datasets(f)
    if patterns_key is None:
        cands = [k for k, d in dsets.items() if d.ndim in (3, 4)]
        if len(cands) != 1:
            f.close()
            raise InputFileError(
                f"{path}: give patterns_key: " + (f"several 3-D/4-D datasets {cands}" if cands else
                                                  f"no 3-D/4-D dataset among {sorted(dsets)}")
            )
        patterns_key = cands[0]
    if patterns_key not in f:
        keys = sorted(dsets)
        f.close()
        raise InputFileError(f"{path}: no dataset '{patterns_key}' (patterns_key); datasets present: {keys}")
    truth = None
    if phase_key is not None:
        if phase_key not in f:
            raise InputFileError(f"{path}: no dataset '{phase_key}' (phase_key); datasets present: {sorted(dsets)}")
        truth = {"phase": np.asarray(f[phase_key][...], dtype=np.float32)}
    positions = None
    if positions_key is not None:
        if positions_key not in f:
            raise InputFileError(f"{path}: no dataset '{positions_key}' (positions_key); datasets: {sorted(dsets)}")
        positions = np.asarray(f[positions_key][...], dtype=np.float64).reshape(-1, 2)
    return build_dataset(f[patterns_key], f"{path}:{patterns_key}", truth=truth, lazy=lazy,
                         metadata={"file": str(path), "patterns_key": patterns_key},
                         file_values={**stored_calibrations(f.attrs), "positions": positions}, **options)


#: calibrations a generic file may carry as root attributes (HDF5) or as small arrays (.npz) under these names
ROOT_CALIBRATIONS = ("energy", "scan_step", "angular_sampling", "sampling", "semiangle")


def stored_calibrations(attrs) -> dict:
    """Calibrations stored under :data:`ROOT_CALIBRATIONS` names (energy in eV, steps in Å, mrad) in a mapping
    (the root attributes of a generic HDF5 file, the arrays of an .npz): one or two finite numbers each."""
    out = {}
    for key in ROOT_CALIBRATIONS:
        v = _attr(attrs, key)
        if v is None:
            continue
        arr = np.asarray(v, dtype=np.float64).ravel()
        if arr.size in (1, 2) and np.isfinite(arr).all():
            out[key] = float(arr[0]) if arr.size == 1 else (float(arr[0]), float(arr[1]))
    return out


def _read_seed(f, path, samples, sample, lazy, potential_energy, **options) -> FourDSTEM:
    sample = samples[0] if sample is None else int(sample)
    key = seed.patterns_key(sample)
    if key not in f:
        raise InputFileError(f"{path}: no sample {sample} ('{key}'); samples {samples[0]}…{samples[-1]} are here")
    ours = seed.is_own(f.attrs)
    meta = {"file": str(path), "patterns_key": key, "sample": sample}
    held, assumed = {}, {}
    if ours:
        energy = float(f.attrs["energy"])
        held = dict(energy=energy, scan_step=tuple(f.attrs["scan_step"]),
                    angular_sampling=tuple(f.attrs["angular_sampling"]), semiangle=float(f.attrs["semiangle"]),
                    aberrations=seed.aberrations(f.attrs),
                    scan_origin=tuple(f.attrs["scan_origin"]))
        phase = seed.read_phase(f, seed.phase_key(sample))
        meta["phase_target"] = "phase_rad (stored)"
        sampling = tuple(f.attrs["phase_sampling"])
    else:  # the user's original generator: phase_{i} holds abTEM's projected potential (V·Å)
        energy = float(options.get("energy") or potential_energy or seed.ORIGINAL_ENERGY)
        H = f[key].shape[-2]
        lam = wavelength(energy)
        cell = seed.ORIGINAL_EXTENT
        assumed = dict(energy=energy, scan_step=(seed.ORIGINAL_SCAN_STEP,) * 2,
                       angular_sampling=(lam / cell * 1e3 * 256 / H,) * 2)
        phase = None
        if seed.phase_key(sample) in f:
            phase = seed.read_phase(f, seed.phase_key(sample), energy)
        meta["phase_target"] = f"sigma({energy:g} eV) x projected potential (original generator file)"
        sampling = None if phase is None else seed.phase_sampling(f.attrs, phase.shape)
        log.warning("%s: original-generator file without calibrations: assuming %g keV, 2 Å step, patterns over the "
                    "full angular range of a 100 Å cell; pass energy/scan_step/angular_sampling to override",
                    path, energy / 1e3)
    truth = None if phase is None else {"phase": phase, "sampling": sampling}
    return build_dataset(f[key], f"{path}:{key}", truth=truth, lazy=lazy, metadata=meta, file_values=held,
                         defaults=assumed, **options)


def _read_own(f, path, lazy, **options) -> FourDSTEM:
    a = f.attrs
    held = dict(energy=float(a["energy"]), scan_step=tuple(a["scan_step"]),
                angular_sampling=tuple(a["angular_sampling"]) if "angular_sampling" in a else None,
                semiangle=float(a["semiangle"]) if "semiangle" in a else None,
                aberrations=json.loads(_attr(a, "aberrations", "{}")),
                scan_origin=tuple(a["scan_origin"]) if "scan_origin" in a else None,
                positions=np.asarray(f["positions"][...]) if "positions" in f else None)
    truth = None
    if "truth/phase" in f:
        truth = {"phase": np.asarray(f["truth/phase"][...]), "sampling": tuple(f["truth"].attrs["sampling"])}
    return build_dataset(f["patterns"], f"{path}:patterns", truth=truth, lazy=lazy, metadata={"file": str(path)},
                         file_values=held, **options)


def write(path: str | Path, dataset: FourDSTEM, compression: int = 4) -> Path:
    """Write ``dataset`` as phasestem's own HDF5 (atomically: temporary name, then rename)."""
    path = Path(path)
    H, W = dataset.pattern_shape
    with atomic_file(path, "path") as tmp, h5py.File(tmp, "w") as f:
        f.attrs["format"] = OWN_FORMAT
        f.attrs["energy"] = dataset.energy
        f.attrs["scan_step"] = dataset.scan_step
        f.attrs["scan_origin"] = dataset.scan_origin
        if dataset.angular_sampling is not None:
            f.attrs["angular_sampling"] = dataset.angular_sampling
        if dataset.semiangle is not None:
            f.attrs["semiangle"] = dataset.semiangle
        f.attrs["aberrations"] = json.dumps(dataset.aberrations)
        d = f.create_dataset("patterns", shape=(*dataset.scan_shape, H, W), dtype=np.float32,
                             chunks=(1, min(8, dataset.scan_shape[1]), H, W), compression="gzip",
                             compression_opts=compression, shuffle=True)
        for r in range(dataset.scan_shape[0]):
            d[r] = np.asarray(dataset.patterns[r], dtype=np.float32)
        if dataset.positions is not None:
            f["positions"] = dataset.positions
        if dataset.truth and "phase" in dataset.truth:
            g = f.create_group("truth")
            g["phase"] = np.asarray(dataset.truth["phase"])
            g.attrs["sampling"] = dataset.truth.get("sampling", dataset.sampling)
    return path
