"""py4DSTEM / EMD files (EMD 1.0 as written by py4DSTEM ≥ 0.13 through ``emdfile``, and the
older py4DSTEM 0.12 ``4DSTEM_experiment/data/datacubes/<name>`` layout). Read lazily.

Finding the datacube: ``patterns_key`` (an HDF5 path to a 4-axis dataset, or to a group holding
``data``) when given; otherwise the first EMD array group (attribute ``emd_group_type`` = 1 or
``'array'``) whose ``data`` has 4 axes, preferring ``python_class == 'DataCube'``; otherwise
the first 4-axis dataset in the file. Axes are (Ry, Rx, Qy, Qx) as py4DSTEM stores them
(real-space rows/cols, then detector rows/cols).

Calibrations (used when present, overridden by options):

* py4DSTEM calibration metadata (any group named ``calibration`` under the file root):
  ``R_pixel_size`` + ``R_pixel_units`` ('A' or 'nm') → scan step; ``Q_pixel_size`` +
  ``Q_pixel_units`` ('mrad' → angular sampling; 'A^-1' → ``λ·dk``, needs the energy);
  ``energy`` / ``beam_energy`` / ``accelerating_voltage`` (eV) and ``convergence_semiangle_mrad``.
* otherwise the EMD ``dim1``…``dim4`` (or ``dim0``…``dim3``) axis vectors with ``units``
  attributes: the step of the real-space dims gives the scan step, of the detector dims the
  angular sampling.
Pixel units ('pixels') are ignored.
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from ..base.errors import InputFileError
from ..dataset import FourDSTEM
from ..physics.optics import wavelength
from ._common import dataset_from_reader, decode, missing_key
from .hdf5 import open_file

_LENGTH = {"a": 1.0, "å": 1.0, "angstrom": 1.0, "nm": 10.0, "pm": 0.01, "um": 1e4, "µm": 1e4}
_ENERGY_NAMES = ("energy", "beam_energy", "accelerating_voltage", "voltage")


def _is_array_group(g) -> bool:
    t = g.attrs.get("emd_group_type")
    t = decode(t) if t is not None else None
    return t in (1, "1", "array") and "data" in g


def _find_datacube(f: h5py.File) -> h5py.Dataset | None:
    cands: list[tuple[int, h5py.Dataset]] = []
    loose: list[h5py.Dataset] = []

    def visit(name, obj):
        if isinstance(obj, h5py.Group) and _is_array_group(obj) and obj["data"].ndim == 4:
            cls = decode(obj.attrs.get("python_class", b"")) or ""
            cands.append((0 if "DataCube" in str(cls) else 1, obj["data"]))
        elif isinstance(obj, h5py.Dataset) and obj.ndim == 4:
            loose.append(obj)

    f.visititems(visit)
    if cands:
        return sorted(cands, key=lambda c: c[0])[0][1]
    return loose[0] if loose else None


def _calibration(f: h5py.File) -> dict:
    out: dict = {}

    def visit(name, obj):
        if isinstance(obj, h5py.Group) and name.split("/")[-1].lower() == "calibration":
            for k, v in obj.attrs.items():
                out.setdefault(k, decode(v))
            for k, v in obj.items():
                if isinstance(v, h5py.Dataset) and v.size <= 16:
                    out.setdefault(k, decode(v[()]))

    f.visititems(visit)
    return out


def _dim_step(ds: h5py.Dataset) -> tuple[float, str] | None:
    vec = np.asarray(ds[()], dtype=np.float64).ravel()
    units = str(decode(ds.attrs.get("units", b"")) or "").strip().lower()
    if vec.size < 2 or not units or units.startswith("pix"):
        return None
    return float(vec[1] - vec[0]), units


def read(path: str | Path, patterns_key: str | None = None, allow_external_links: bool = False,
         **options) -> FourDSTEM:
    """Read the 4D datacube of a py4DSTEM/EMD file lazily → :class:`FourDSTEM` (the file's structure checked first:
    :func:`phasestem.io.hdf5.open_file`)."""
    path = Path(path)
    f = open_file(path, "EMD/HDF5 file", allow_external_links)
    keys: list[str] = []
    f.visit(keys.append)
    if patterns_key is not None:
        if patterns_key not in f:
            raise missing_key(path, patterns_key, keys)
        obj = f[patterns_key]
        data = obj["data"] if isinstance(obj, h5py.Group) and "data" in obj else obj
        if not isinstance(data, h5py.Dataset):
            raise InputFileError(f"{path}: '{patterns_key}' is a group without a 'data' dataset")
    else:
        data = _find_datacube(f)
        if data is None:
            raise InputFileError(f"{path}: no 4-axis datacube found; keys present: {', '.join(sorted(keys)[:40])}")
    if data.ndim != 4:
        raise InputFileError(f"{path}: '{data.name}' must have 4 axes (Ry, Rx, Qy, Qx), got shape {data.shape}")

    found: dict = {}
    meta = {"format": "emd", "patterns_key": data.name}
    cal = _calibration(f)
    for name in _ENERGY_NAMES:
        if cal.get(name) not in (None, ""):
            try:
                found["energy"] = float(cal[name])
                break
            except (TypeError, ValueError):
                pass
    if cal.get("convergence_semiangle_mrad") is not None:
        found["semiangle"] = float(cal["convergence_semiangle_mrad"])
    energy = options.get("energy") or found.get("energy")

    r_units = str(cal.get("R_pixel_units", "")).strip().lower()
    if cal.get("R_pixel_size") is not None and r_units in _LENGTH:
        found["scan_step"] = float(cal["R_pixel_size"]) * _LENGTH[r_units]
    q_units = str(cal.get("Q_pixel_units", "")).strip().lower()
    if cal.get("Q_pixel_size") is not None:
        dq = float(cal["Q_pixel_size"])
        if q_units == "mrad":
            found["angular_sampling"] = dq
        elif q_units in ("a^-1", "1/a", "å^-1") and energy:
            found["angular_sampling"] = wavelength(float(energy)) * dq * 1e3

    parent = data.parent
    names = next((ns for ns in (("dim1", "dim2", "dim3", "dim4"), ("dim0", "dim1", "dim2", "dim3"))
                  if all(n in parent for n in ns)), None)
    if names is not None:
        dims = [parent[n] for n in names]
        steps = [_dim_step(d) for d in dims]
        if "scan_step" not in found and steps[0] and steps[1] and steps[0][1] in _LENGTH and steps[1][1] in _LENGTH:
            found["scan_step"] = (steps[0][0] * _LENGTH[steps[0][1]], steps[1][0] * _LENGTH[steps[1][1]])
        if "angular_sampling" not in found and steps[2] and steps[3]:
            if steps[2][1] == "mrad" and steps[3][1] == "mrad":
                found["angular_sampling"] = (steps[2][0], steps[3][0])
            elif energy and steps[2][1] in ("a^-1", "1/a") and steps[3][1] in ("a^-1", "1/a"):
                lam = wavelength(float(energy))
                found["angular_sampling"] = (lam * steps[2][0] * 1e3, lam * steps[3][0] * 1e3)
    meta["calibration"] = {k: (v if np.ndim(v) == 0 else np.asarray(v).tolist()) for k, v in cal.items()}
    return dataset_from_reader(data, path, file_values=found, metadata=meta, **options)
