"""Dectris Arina / Eiger HDF5 master files (h5py), read lazily.

A master file ``NAME_master.h5`` links its frames: ``/entry/data/data_000001``, ``data_000002`` … are
external links to ``NAME_data_00000k.h5:/entry/data/data`` (k-th block of (n_k, H, W) frames). The
blocks are concatenated in link order as one dask array (each block read only when asked for) and
reshaped to the scan.

Metadata read from ``/entry/instrument`` when present (the user's options win):

* ``beam/incident_wavelength`` (Å) → ``energy`` (eV, relativistic; kept only between 1 keV and 10 MeV);
* ``detector/x_pixel_size``, ``y_pixel_size`` (m) and ``detector/detector_distance`` (m) →
  ``angular_sampling`` (mrad) = pixel / distance;
* ``detector/detectorSpecific/nimages`` and ``ntrigger`` → scan shape (ntrigger rows × nimages
  columns) when both exceed 1 (one trigger per scan line);
* ``detector/detectorSpecific/pixel_mask`` (non-zero = bad) and ``detector/beam_center_y/x`` (px) →
  ``metadata['detector']``, a :class:`phasestem.detector.PixelatedDetector` as a dict.

Data files must sit in the master's folder (or under ``PHASESTEM_READ_ROOT``; ``allow_external_links=True`` for
others): :mod:`phasestem.base.hdf5_links` checks every link, and the data files' own structure, before a frame is read.

The scan step is never in a master file: give ``scan_step``. ``metadata['missing_from_file']`` lists what
the file did not hold. Options: ``scan_shape``, ``scan_order`` and the common calibrations.
"""
from __future__ import annotations

import logging
from pathlib import Path

import h5py
import numpy as np

from ..base.errors import InputFileError
from ..base.extras import install_hint
from ..base.hdf5_links import check_followed
from ..dataset import FourDSTEM
from ..detector import PixelatedDetector
from ..physics.optics import energy_from_wavelength
from ._common import dataset_from_reader, decode
from .hdf5 import check_written, open_file
from .rosetta import resolve_scan_shape

log = logging.getLogger("phasestem.io")

def _scalar(group: h5py.Group, key: str):
    if key not in group:
        return None
    try:
        value = decode(group[key][()])
    except (KeyError, OSError, TypeError):
        return None
    if isinstance(value, np.ndarray):
        return value if value.size != 1 else value.reshape(()).item()
    return value


def _blocks(f: h5py.File, path: Path, allow_external_links: bool = False) -> list[h5py.Dataset]:
    if "entry/data" not in f:
        raise InputFileError(f"{path}: not a Dectris master file: no /entry/data group")
    group = f["entry/data"]
    names = sorted(k for k in group.keys() if k.startswith("data_"))
    if not names:
        raise InputFileError(f"{path}: /entry/data has no data_000001 … links to data files")
    blocks = []
    for name in names:
        link = group.get(name, getlink=True)
        try:
            ds = group[name]
        except (KeyError, OSError):
            target = f"{link.filename}:{link.path}" if isinstance(link, h5py.ExternalLink) else name
            raise InputFileError(f"{path}: /entry/data/{name} links to {target}, which cannot be opened "
                                 f"(the data file must sit beside the master file)") from None
        check_followed(ds, f"{path}: /entry/data/{name}", path, allow_external_links)
        if not isinstance(ds, h5py.Dataset) or ds.ndim != 3:
            raise InputFileError(f"{path}: /entry/data/{name} is not a (frames, H, W) dataset")
        check_written(ds, f"{path}: /entry/data/{name} ({ds.file.filename}:{ds.name})")
        blocks.append(ds)
    try:  # Dectris data files are usually bitshuffle/LZ4-compressed: those filters come with hdf5plugin
        import hdf5plugin  # noqa: F401
    except ImportError:
        pass
    try:
        blocks[0][:1]
    except (OSError, ValueError) as exc:
        raise InputFileError(f"{path}: cannot decode the frames of {blocks[0].file.filename} ({exc}); a "
                             f"compression filter is missing: {install_hint('hdf5plugin')}") from None
    if len({b.shape[1:] for b in blocks}) != 1:
        raise InputFileError(f"{path}: the linked data files hold frames of different shapes "
                             f"{sorted({b.shape[1:] for b in blocks})}")
    return blocks


def read(path: str | Path, allow_external_links: bool = False, **options) -> FourDSTEM:
    """Open a Dectris master file → :class:`FourDSTEM` over its linked frames (lazy). Data files outside the
    allowed folder (:mod:`phasestem.base.hdf5_links`: the master's own, or ``PHASESTEM_READ_ROOT``) are refused unless
    ``allow_external_links``."""
    import dask.array as da

    path = Path(path)
    f = open_file(path, "Dectris HDF5 master file", allow_external_links)  # kept open: the dask graph reads from it
    blocks = _blocks(f, path, allow_external_links)
    H, W = blocks[0].shape[1:]
    frames = da.concatenate([da.from_array(b, chunks=(max(1, min(b.shape[0], 64)), H, W)) for b in blocks])

    det = f["entry/instrument/detector"] if "entry/instrument/detector" in f else None
    spec = det["detectorSpecific"] if det is not None and "detectorSpecific" in det else None
    found: dict = {}
    lam = _scalar(f["entry/instrument/beam"], "incident_wavelength") if "entry/instrument/beam" in f else None
    if lam is not None and float(lam) > 0:
        e = energy_from_wavelength(float(lam))
        if 1e3 <= e <= 1e7:
            found["energy"] = e
        else:
            log.warning("%s: incident_wavelength %g Å gives %.4g eV, not an electron beam; ignored", path, lam, e)
    if det is not None:
        dist = _scalar(det, "detector_distance")
        px = (_scalar(det, "y_pixel_size"), _scalar(det, "x_pixel_size"))
        if px[0] is None:
            px = (px[1], px[1])
        if dist and float(dist) > 0 and px[1] and float(px[1]) > 0:
            found["angular_sampling"] = (float(px[0]) / float(dist) * 1e3, float(px[1]) / float(dist) * 1e3)
    file_scan = None
    if spec is not None:
        nimages, ntrigger = _scalar(spec, "nimages"), _scalar(spec, "ntrigger")
        if nimages and ntrigger and int(nimages) > 1 and int(ntrigger) > 1:
            file_scan = (int(ntrigger), int(nimages))

    order = str(options.get("scan_order", "C")).upper()
    patterns, scan_shape, source = resolve_scan_shape(frames, path, options.get("scan_shape"), file_scan, order)
    options = {k: v for k, v in options.items() if k not in ("scan_shape", "scan_order")}

    mask = _scalar(spec, "pixel_mask") if spec is not None else None
    centre = (_scalar(det, "beam_center_y"), _scalar(det, "beam_center_x")) if det is not None else (None, None)
    detector = PixelatedDetector(
        shape=(H, W),
        angular_sampling=found.get("angular_sampling"),
        centre=None if None in centre else (float(centre[0]), float(centre[1])),
        bad_pixels=np.asarray(mask) != 0 if isinstance(mask, np.ndarray) and mask.shape == (H, W) else None,
    )
    missing = [k for k in ("energy", "scan_step", "angular_sampling") if k not in found]
    if source != "file":
        missing.append("scan_shape")
    meta = {
        "format": "dectris",
        "data_files": [b.file.filename for b in blocks],
        "missing_from_file": missing,
        "detector": detector.to_dict(),
    }
    if missing:
        given = [k for k in missing if options.get(k) is not None or k == "scan_shape"]
        log.info("%s: not in the file: %s%s", path, ", ".join(missing),
                 f" (given: {', '.join(given)})" if given else "")
    held = {**found, "scan_shape": scan_shape} if source == "file" else found
    ds = dataset_from_reader(patterns, path, file_values=held, metadata=meta,
                             scan_shape=None if source == "file" else scan_shape, **options)
    return ds if detector.bad_pixels is None else ds._replace(bad_pixels=detector.bad_pixels)  # the mask follows
