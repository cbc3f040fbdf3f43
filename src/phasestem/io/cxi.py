"""CXI files (CXI 1.x as written and read by CDTools): read and write.

Layout (HDF5; SI units, as the CXI standard):

* ``entry_1/data_1/data`` (or ``entry_1/instrument_1/detector_1/data``): patterns (N, H, W),
  zero frequency at the centre (H//2, W//2), as our patterns.
* ``entry_1/data_1/translation`` (or ``entry_1/sample_1/geometry_1/translation``): (N, 3)
  (x, y, z) in metres — translations of the **sample**.
* ``entry_1/instrument_1/source_1/wavelength`` (m) and/or ``energy`` (J).
* ``entry_1/instrument_1/detector_1/distance`` (m), ``x_pixel_size`` / ``y_pixel_size`` (m) or
  ``basis_vectors`` ((2, 3) or (3, 2), m).
* optional ``entry_1/phasestem`` group written by :func:`write`: ``scan_shape``, ``scan_step``,
  ``semiangle``, ``aberrations`` (JSON) — everything CXI has no place for.

Conversions and sign conventions
--------------------------------
* Energy: the wavelength wins when both are present and is turned into the electron kinetic energy
  relativistically. A lone ``source_1/energy`` is taken as the electron kinetic energy in J
  (not a photon energy as in X-ray CXI files; CDTools' ``hc/E`` would give a wrong wavelength for
  electrons — :func:`write` therefore always stores the wavelength too).
* Detector pixel → angle: ``angular_sampling = pixel_size / distance`` (rad, small-angle) in mrad.
  Basis-vector signs (detector orientation) are not applied to the patterns: if the camera is
  mounted differently, use :meth:`FourDSTEM.transformed`.
* Positions: CXI translations move the sample; the probe moves the other way, so (as CDTools
  does) probe positions are ``position_sign · translation`` with ``position_sign = −1`` by
  default: ``y = −t_y``, ``x = −t_x``, in Å. With ``recentre=True`` (default) they are then
  shifted so the smallest y and x are 0 Å (object-pixel origin); the shift is recorded in
  ``metadata['cxi_position_offset']``. :func:`write` stores ``translation = −position``, so a
  round trip returns the same positions.
* A regular raster of translations gives ``scan_shape`` and ``scan_step`` directly; otherwise
  give ``scan_shape`` (positions are then kept explicit).

Reader options: ``position_sign`` (−1 or +1), ``recentre`` (bool), plus the common options of
:mod:`phasestem.io._common`. Patterns are read lazily (the file stays open read-only).
"""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from ..base.configfile import loads_json
from ..base.errors import ConfigError, InputFileError
from ..base.safety import atomic_file
from ..dataset import FourDSTEM
from ..physics.optics import energy_from_wavelength, wavelength
from ..scan import GridScan
from ._common import dataset_from_reader, decode, missing_key
from .hdf5 import open_file

_E = 1.602176634e-19
_DATA_KEYS = ("entry_1/data_1/data", "entry_1/instrument_1/detector_1/data")
_TRANSLATION_KEYS = ("entry_1/data_1/translation", "entry_1/sample_1/geometry_1/translation",
                     "entry_1/instrument_1/detector_1/translation")


def _all_keys(f: h5py.File) -> list[str]:
    keys: list[str] = []
    f.visit(keys.append)
    return keys


def _first(f: h5py.File, keys) -> str | None:
    return next((k for k in keys if k in f), None)


def read(path: str | Path, position_sign: float = -1.0, recentre: bool = True, allow_external_links: bool = False,
         **options) -> FourDSTEM:
    """Read a CXI file (lazy patterns) → :class:`FourDSTEM` (Å, mrad, eV); the file's structure is checked first
    (:func:`phasestem.io.hdf5.open_file`)."""
    path = Path(path)
    if position_sign not in (-1, 1, -1.0, 1.0):
        raise ConfigError(f"{path}: position_sign must be -1 or +1, got {position_sign!r}")
    f = open_file(path, "CXI/HDF5 file", allow_external_links)
    data_key = _first(f, _DATA_KEYS)
    if data_key is None:
        raise missing_key(path, _DATA_KEYS[0], _all_keys(f))
    patterns = f[data_key]
    found: dict = {}
    meta: dict = {"format": "cxi", "patterns_key": data_key}

    src = "entry_1/instrument_1/source_1"
    if f"{src}/wavelength" in f:
        found["energy"] = energy_from_wavelength(  # CXI stores λ in metres
            float(np.asarray(f[f"{src}/wavelength"][()]).ravel()[0]) * 1e10)
    elif f"{src}/energy" in f:
        found["energy"] = float(np.asarray(f[f"{src}/energy"][()]).ravel()[0]) / _E
    energy = options.get("energy") or found.get("energy")

    det = "entry_1/instrument_1/detector_1"
    distance = float(f[f"{det}/distance"][()]) if f"{det}/distance" in f else None
    px = None
    if f"{det}/basis_vectors" in f:
        bv = np.asarray(f[f"{det}/basis_vectors"][()], dtype=np.float64)
        bv = bv if bv.shape == (2, 3) else bv.T  # rows: step along detector rows (y), columns (x)
        px = (float(np.linalg.norm(bv[0])), float(np.linalg.norm(bv[1])))
    elif f"{det}/x_pixel_size" in f or f"{det}/y_pixel_size" in f:
        xs = float(f[f"{det}/x_pixel_size"][()]) if f"{det}/x_pixel_size" in f else None
        ys = float(f[f"{det}/y_pixel_size"][()]) if f"{det}/y_pixel_size" in f else None
        px = (ys or xs, xs or ys)
    if distance and px:
        found["angular_sampling"] = (px[0] / distance * 1e3, px[1] / distance * 1e3)
        meta.update(detector_distance_m=distance, detector_pixel_m=px)

    extra = f.get("entry_1/phasestem")
    if extra is not None:
        for name in ("scan_shape", "scan_step", "semiangle"):
            if name in extra:
                val = decode(extra[name][()])
                found[name] = tuple(np.asarray(val).tolist()) if np.ndim(val) else val
        if "aberrations" in extra:
            found["aberrations"] = loads_json(decode(extra["aberrations"][()]),
                                              f"{path}: entry_1/phasestem/aberrations")

    t_key = _first(f, _TRANSLATION_KEYS)
    if t_key is not None and options.get("positions") is None:
        t = np.asarray(f[t_key][()], dtype=np.float64)
        if t.ndim != 2 or t.shape[1] < 2 or t.shape[0] != patterns.shape[0]:
            raise InputFileError(
                f"{path}: '{t_key}' must have shape (N, 3) with N = {patterns.shape[0]} patterns, got {t.shape}"
            )
        pos = position_sign * np.stack([t[:, 1], t[:, 0]], -1) * 1e10  # (y, x) Å
        if recentre:
            offset = pos.min(0)
            pos = pos - offset
            meta["cxi_position_offset"] = offset.tolist()
        meta["positions_key"] = t_key
        grid = GridScan.raster_from_positions(pos)
        if grid is not None:
            found.setdefault("scan_shape", grid.shape)
            found.setdefault("scan_step", grid.step)
            found["scan_origin"] = grid.origin  # the first position
        else:  # not a raster: keep the positions; a (1, N) "scan" unless scan_shape is given
            found["positions"] = pos
            found["scan_shape"] = (1, len(pos))
    if energy is not None:
        meta["wavelength_A"] = wavelength(float(energy))
    return dataset_from_reader(patterns, path, file_values=found, metadata=meta, **options)


def write(path: str | Path, dataset: FourDSTEM, distance: float = 1.0) -> None:
    """Write ``dataset`` as a CDTools-style CXI file (atomically: :func:`phasestem.base.safety.atomic_file`).

    ``distance`` (m) is the nominal detector distance; the detector pixel is then
    ``angular_sampling · distance`` so that angles are preserved.
    """
    path = Path(path)
    sy, sx = dataset.scan_shape
    H, W = dataset.pattern_shape
    with atomic_file(path, "path") as tmp, h5py.File(tmp, "w") as f:
        f.attrs["default"] = "entry_1"
        f.create_dataset("cxi_version", data=160)
        e1 = f.create_group("entry_1")
        e1.create_dataset("program_name", data="phasestem")
        src = e1.create_group("instrument_1/source_1")
        lam_m = dataset.wavelength * 1e-10
        src.create_dataset("wavelength", data=lam_m)
        src.create_dataset("energy", data=dataset.energy * _E)
        src["energy"].attrs["note"] = "electron kinetic energy (J)"
        det = e1.create_group("instrument_1/detector_1")
        det.create_dataset("distance", data=float(distance))
        if dataset.angular_sampling is not None:
            dky, dkx = (a * 1e-3 * distance for a in dataset.angular_sampling)
        else:  # from the real-space pixel: dk = λ / (N · dx)
            dy, dx = dataset.sampling
            dky, dkx = lam_m / (H * dy * 1e-10) * distance, lam_m / (W * dx * 1e-10) * distance
        det.create_dataset("y_pixel_size", data=float(dky))
        det.create_dataset("x_pixel_size", data=float(dkx))
        det.create_dataset("basis_vectors", data=np.array([[0.0, -dky, 0.0], [-dkx, 0.0, 0.0]]))
        chunks = (1, H, W)
        data = det.create_dataset("data", shape=(sy * sx, H, W), dtype=np.float32, chunks=chunks,
                                  compression="gzip", compression_opts=4)
        for row in range(sy):
            data[row * sx : (row + 1) * sx] = np.asarray(dataset.patterns[row], dtype=np.float32)
        data.attrs["axes"] = "translation:y:x"
        pos = dataset.positions_angstrom()
        t = np.zeros((sy * sx, 3))
        t[:, 0] = -pos[:, 1] * 1e-10
        t[:, 1] = -pos[:, 0] * 1e-10
        geo = e1.create_group("sample_1/geometry_1")
        geo.create_dataset("translation", data=t)
        d1 = e1.create_group("data_1")
        d1["data"] = data  # hard links, as CDTools writes them
        d1["translation"] = geo["translation"]
        extra = e1.create_group("phasestem")
        extra.create_dataset("scan_shape", data=np.array([sy, sx]))
        extra.create_dataset("scan_step", data=np.array(dataset.scan_step))
        if dataset.semiangle is not None:
            extra.create_dataset("semiangle", data=float(dataset.semiangle))
        extra.create_dataset("aberrations", data=json.dumps(dataset.aberrations or {}))
