"""Readers and writers: one module per format, each returning/consuming :class:`FourDSTEM`.

``load(path, format=None, **options)`` picks the reader from the extension (or ``format``):

=========================  ================  ==========================================
extension                  module            reader options
=========================  ================  ==========================================
.h5 .hdf5 .hdf             ``hdf5``          patterns_key, energy, scan_step, … (any layout)
.npy .npz                  ``numpy``         patterns_key (npz), energy, scan_step, …
.cxi                       ``cxi``           position_sign, recentre (CDTools / CXI 1.x layout)
.mat                       ``mat``           patterns_key, layout, keys, scan_order (v5, v7.3; PtychoShelves)
.emd (py4DSTEM)            ``emd``           patterns_key (EMD 1.0 / py4DSTEM; pass format="emd" for .h5)
.raw .bin .dat             ``raw``           shape, dtype, offset, frame_header/footer, detector="empad"
=========================  ================  ==========================================

Every module exposes ``read(path, **options) -> FourDSTEM``; writers are ``write(path, dataset)``.
All readers also take the calibrations of :func:`phasestem.io._common.build_dataset` (energy, scan_step,
scan_shape, scan_order, angular_sampling or sampling, semiangle, aberrations, scan_origin, positions).
"""
from __future__ import annotations

import importlib
from pathlib import Path

from ..dataset import FourDSTEM
from ..errors import ConfigError, InputFileError

_BY_EXTENSION = {
    ".h5": "hdf5", ".hdf5": "hdf5", ".hdf": "hdf5",
    ".npy": "numpy", ".npz": "numpy",
    ".cxi": "cxi",
    ".mat": "mat",
    ".emd": "emd",
    ".raw": "raw", ".bin": "raw", ".dat": "raw",
}
FORMATS = sorted(set(_BY_EXTENSION.values()))


def reader_module(path: str | Path, format: str | None = None):
    """The reader module for ``path`` (by ``format`` or the file extension)."""
    name = format or _BY_EXTENSION.get(Path(path).suffix.lower())
    if name is None:
        raise ConfigError(
            f"{path}: cannot tell the file format from the extension '{Path(path).suffix}'; "
            f"give format= one of {FORMATS}"
        )
    if name not in FORMATS:
        raise ConfigError(f"unknown format '{name}': expected one of {FORMATS}")
    return importlib.import_module(f"{__name__}.{name}")


def load(path: str | Path, format: str | None = None, **options) -> FourDSTEM:
    """Load a 4D-STEM file into a :class:`FourDSTEM` (lazily where the format allows)."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"{path}: no such file")
    return reader_module(path, format).read(path, **options)
