"""HDF5 of any layout (keys named by the user), the seed-000 layout, and phasestem's own 4D-STEM file.

``read(path, patterns_key=None, ...)`` finds the patterns:
* phasestem's own file (attr ``format="phasestem-4dstem"``): everything from the file;
* a seed-000 file (ours, or the user's original generator's ``dp_set_{i}``/``phase_{i}``): sample
  ``sample`` (default: the first) with its ground truth;
* any other file: ``patterns_key``, or the only 3-D/4-D dataset in it.
Calibrations given as options override those found in the file (the dataset's metadata says which, and
which of them differ: :func:`phasestem.io._common.dataset_from_reader`).

Every patterns dataset must have been written: a dataset whose chunks (or contiguous storage) were never, or
only partly, allocated is refused naming the file, the dataset and how much is missing, before anything is
read (its missing parts would read as the fill value, and screening them would read the whole declared
size). :func:`open_file` and :func:`reading` are the one way the other modules open user HDF5 files: any
failure is one :class:`~phasestem.base.errors.InputFileError` line naming the file. :func:`open_file` first checks
the file's structure (:mod:`phasestem.base.hdf5_links`): external links, external storage and virtual datasets whose
targets leave the allowed folder (``PHASESTEM_READ_ROOT``, else the file's own), virtual sources that are missing
and datasets declaring far more than they hold are refused, naming the dataset, before anything is read;
``allow_external_links=True`` (a reader option) follows targets outside the file's folder.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import h5py
import numpy as np

from ..base.configfile import loads_json
from ..base.errors import InputFileError, PhasestemError
from ..base.hdf5_links import check_file, check_written
from ..base.safety import atomic_file, available_memory, check_readable
from ..dataset import FourDSTEM
from ..physics.optics import wavelength
from . import seed
from ._common import STORED_DTYPE_KEY, check_real, dataset_from_reader, patterns_dtype

log = logging.getLogger("phasestem.io")

OWN_FORMAT = "phasestem-4dstem"
#: an HDF5 array is read into memory (``lazy=None``) only if its float32 copy is below this share of the
#: memory still available; larger ones stay on disk and are read pattern block by pattern block
EAGER_MEMORY_FRACTION = 0.25
#: compressed data expanding more than this many times (beyond 64 MiB) are never read whole into memory: an HDF5
#: dataset of that kind stays on disk (read as needed), a compressed .npz member is refused (it cannot be)
MAX_EXPANSION = 200
EXPANSION_FREE_BYTES = 64 * 1024**2


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0]}" if lines else type(exc).__name__


def open_file(path: str | Path, what: str = "HDF5 file", allow_external_links: bool = False) -> h5py.File:
    """``h5py.File(path, 'r')`` after :func:`phasestem.base.hdf5_links.check_file` (links, external storage and virtual
    sources inside the allowed folder, declared sizes held; ``allow_external_links``: the user's opt-in); a missing,
    looped, unreadable, non-HDF5 or refused path is one :class:`InputFileError` naming it and saying what was
    expected (``what``)."""
    path = check_readable(path, what)
    try:
        f = h5py.File(path, "r")
    except OSError as exc:
        raise InputFileError(f"{path}: not a readable {what} ({_first_line(exc)})") from exc
    try:
        with reading(path, what):
            check_file(f, path, allow_external_links)
    except BaseException:
        f.close()
        raise
    return f


@contextmanager
def reading(path: str | Path, what: str = "HDF5 file") -> Iterator[None]:
    """Errors of h5py (and of indexing what it returns: a group where a dataset was expected) while reading
    ``path`` become one :class:`InputFileError` line naming it; phasestem's own errors pass unchanged."""
    try:
        yield
    except PhasestemError:
        raise
    except (OSError, KeyError, TypeError, AttributeError, ValueError) as exc:
        raise InputFileError(f"{path}: not a readable {what}, damaged or of another layout? "
                             f"({_first_line(exc)})") from exc


def dataset_with_truth(patterns, source: str, truth=None, lazy=None, metadata=None, file_values=None, defaults=None,
                  **options) -> FourDSTEM:
    """Shared tail of the hdf5/numpy readers: :func:`phasestem.io._common.dataset_from_reader` plus ground truth.

    With ``lazy=None`` an on-disk array is read into memory when its float32 copy fits in
    :data:`EAGER_MEMORY_FRACTION` of the available memory (straight into one float32 buffer: never two
    copies) and it does not expand more than :data:`MAX_EXPANSION` times its stored size (a few MB of
    compressed zeros declaring GBs), and kept on disk otherwise.
    """
    check_real(patterns, source)
    metadata = {STORED_DTYPE_KEY: str(patterns_dtype(patterns)), **(metadata or {})}  # before any float32 copy
    if not _is_lazy(patterns, lazy) and not isinstance(patterns, np.ndarray):
        patterns = read_float32(patterns)
    ds = dataset_from_reader(patterns, source, file_values=file_values, metadata=metadata, defaults=defaults,
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
        size = int(np.prod(arr.shape)) * 4
        return size > EAGER_MEMORY_FRACTION * available_memory() or _expands(arr)
    return bool(lazy)


def _expands(dset) -> bool:
    """Whether an h5py dataset's data expand more than :data:`MAX_EXPANSION` times beyond its stored size."""
    if not isinstance(dset, h5py.Dataset) or dset.chunks is None:
        return False
    nbytes = dset.size * dset.dtype.itemsize
    return nbytes > EXPANSION_FREE_BYTES and nbytes > MAX_EXPANSION * max(dset.id.get_storage_size(), 1)


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
         allow_external_links: bool = False, **options) -> FourDSTEM:
    """Read a 4D-STEM HDF5 file (see the module docstring). ``options`` = calibrations for dataset_with_truth."""
    path = Path(path)
    f = open_file(path, allow_external_links=allow_external_links)
    fmt = _attr(f.attrs, "format")
    if fmt == OWN_FORMAT:
        return _read_own(f, path, lazy, **options)
    seed_keys = seed.sample_ids(f.keys())
    if seed_keys and (patterns_key is None or _seed_sample(patterns_key) in seed_keys):
        if patterns_key is not None:  # dp_set_{i} named: the same reader, every calibration the file holds
            if sample is not None and int(sample) != _seed_sample(patterns_key):
                f.close()
                raise InputFileError(f"{path}: patterns_key '{patterns_key}' and sample {sample} name two samples; "
                                     "give one")
            sample = _seed_sample(patterns_key)
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
    check_written(f[patterns_key], f"{path}:{patterns_key}")
    truth = None
    if phase_key is not None:
        if phase_key not in f:
            raise InputFileError(f"{path}: no dataset '{phase_key}' (phase_key); datasets present: {sorted(dsets)}")
        check_written(f[phase_key], f"{path}:{phase_key}")
        truth = {"phase": np.asarray(f[phase_key][...], dtype=np.float32)}
    positions = None
    if positions_key is not None:
        if positions_key not in f:
            raise InputFileError(f"{path}: no dataset '{positions_key}' (positions_key); datasets: {sorted(dsets)}")
        check_written(f[positions_key], f"{path}:{positions_key}")
        positions = np.asarray(f[positions_key][...], dtype=np.float64).reshape(-1, 2)
    return dataset_with_truth(f[patterns_key], f"{path}:{patterns_key}", truth=truth, lazy=lazy,
                              metadata={"file": str(path), "patterns_key": patterns_key},
                              file_values={**stored_calibrations(f.attrs, path), "positions": positions}, **options)


def _seed_sample(key: str | None) -> int | None:
    """The sample number of a ``dp_set_{i}`` key (None for any other name)."""
    parsed = seed.parse_key(str(key).strip("/")) if key is not None else None
    return parsed[1] if parsed and parsed[0] == "dp_set" else None


#: calibrations a generic file may carry as root attributes (HDF5) or as small arrays (.npz) under these names
ROOT_CALIBRATIONS = ("energy", "scan_step", "angular_sampling", "sampling", "semiangle", "scan_origin", "dose")


def stored_calibrations(attrs, path: str | Path = "") -> dict:
    """Calibrations stored under :data:`ROOT_CALIBRATIONS` names (energy in eV, steps and origin in Å, mrad, dose
    in e⁻/Å²) in a mapping (the root attributes of a generic HDF5 file, the arrays of an .npz): one or two finite
    numbers each; ``aberrations`` as JSON text (Å, errors name ``path``)."""
    out = {}
    for key in ROOT_CALIBRATIONS:
        v = _attr(attrs, key)
        if v is None:
            continue
        try:
            arr = np.asarray(v, dtype=np.float64).ravel()
        except (TypeError, ValueError):
            continue
        if arr.size in (1, 2) and np.isfinite(arr).all():
            out[key] = float(arr[0]) if arr.size == 1 else (float(arr[0]), float(arr[1]))
    if "aberrations" in attrs:
        text = _attr(attrs, "aberrations")
        text = text.item() if isinstance(text, np.ndarray) and text.size == 1 else text
        text = text.decode() if isinstance(text, bytes) else text
        if isinstance(text, str):
            out["aberrations"] = loads_json(text, f"{path}: attribute 'aberrations'" if path
                                            else "attribute 'aberrations'")
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
                    aberrations=seed.aberrations(f.attrs, path),
                    scan_origin=tuple(f.attrs["scan_origin"]), dose=_attr(f.attrs, "dose"))
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
    check_written(f[key], f"{path}:{key}")
    return dataset_with_truth(f[key], f"{path}:{key}", truth=truth, lazy=lazy, metadata=meta, file_values=held,
                              defaults=assumed, **options)


def _read_own(f, path, lazy, **options) -> FourDSTEM:
    a = f.attrs
    held = dict(energy=float(a["energy"]), scan_step=tuple(a["scan_step"]),
                angular_sampling=tuple(a["angular_sampling"]) if "angular_sampling" in a else None,
                semiangle=float(a["semiangle"]) if "semiangle" in a else None,
                aberrations=loads_json(_attr(a, "aberrations", "{}"), f"{path}: attribute 'aberrations'"),
                scan_origin=tuple(a["scan_origin"]) if "scan_origin" in a else None,
                positions=np.asarray(f["positions"][...]) if "positions" in f else None)
    truth = None
    if "truth/phase" in f:
        truth = {"phase": np.asarray(f["truth/phase"][...]), "sampling": tuple(f["truth"].attrs["sampling"])}
    check_written(f["patterns"], f"{path}:patterns")
    return dataset_with_truth(f["patterns"], f"{path}:patterns", truth=truth, lazy=lazy, metadata={"file": str(path)},
                              file_values=held, **options)


def write_calibrations(f: h5py.File, dataset: FourDSTEM) -> None:
    """The root attributes of phasestem's own 4D-STEM file: its format and ``dataset``'s calibrations (also the
    layout of a live recording, :mod:`phasestem.live.recording`)."""
    f.attrs["format"] = OWN_FORMAT
    f.attrs["energy"] = dataset.energy
    f.attrs["scan_step"] = dataset.scan_step
    f.attrs["scan_origin"] = dataset.scan_origin
    if dataset.angular_sampling is not None:
        f.attrs["angular_sampling"] = dataset.angular_sampling
    if dataset.semiangle is not None:
        f.attrs["semiangle"] = dataset.semiangle
    f.attrs["aberrations"] = json.dumps(dataset.aberrations)


def write(path: str | Path, dataset: FourDSTEM, compression: int = 4) -> Path:
    """Write ``dataset`` as phasestem's own HDF5 (atomically: temporary name, then rename)."""
    path = Path(path)
    H, W = dataset.pattern_shape
    with atomic_file(path, "path") as tmp, h5py.File(tmp, "w") as f:
        write_calibrations(f, dataset)
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
