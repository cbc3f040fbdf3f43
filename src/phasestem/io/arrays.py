"""Small arrays from user files (``.npy``, ``.npz``, HDF5): the file-reading half of positions, detector shifts,
phase and probe images (:func:`phasestem.recon.inputs.read_array` checks their dtype, values and shapes).

:func:`load_array` reads one array into memory after the checks every reader makes: the sizes a ``.npy``
header or an ``.npz`` member declares must be held by the file (:mod:`phasestem.io.numpy`), an HDF5 dataset
must have been written (:func:`phasestem.io.hdf5.check_written`) and be a dataset, not a group, and the array
must fit in :data:`MEMORY_FRACTION` of the memory available. Nothing is unpickled. Every failure is one
:class:`~phasestem.base.errors.InputFileError` line naming the file.
"""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from ..base.errors import InputFileError
from ..base.safety import available_memory, check_readable, gb
from .hdf5 import check_written, open_file, reading
from .numpy import load_npy, npz_members, read_member

#: an array read whole may take at most this share of the memory available
MEMORY_FRACTION = 0.25


def _check_size(nbytes: int, source: str) -> None:
    have = available_memory()
    if nbytes > MEMORY_FRACTION * have:
        raise InputFileError(f"{source}: holds {gb(nbytes)}, more than {MEMORY_FRACTION:.0%} of the {gb(have)} of "
                             "memory available; expected a small array")


def load_array(path: str | Path, key: str | None = None, what: str = "array file",
               default_h5_key: str | None = None, allow_external_links: bool = False) -> np.ndarray:
    """One array, in memory and writable, from ``.npy``, ``.npz`` (``key``, or its only array) or HDF5 (``key``,
    else ``default_h5_key``), told apart by the extension, else by the content (``.npy`` unless the file starts
    like a zip or an HDF5 file). ``what`` says what was expected, in messages; ``allow_external_links``: an HDF5
    file's links and sources may leave its folder (:func:`phasestem.io.hdf5.open_file`)."""
    path = check_readable(path, what)
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".npz", ".h5", ".hdf5", ".hdf"):
        with open(path, "rb") as fh:
            head = fh.read(8)
        suffix = ".npz" if head[:4] == b"PK\x03\x04" else ".h5" if head == b"\x89HDF\r\n\x1a\n" else ".npy"
    if suffix == ".npy":
        arr = load_npy(path)
        _check_size(arr.nbytes, str(path))
    elif suffix == ".npz":
        try:
            with zipfile.ZipFile(path) as zf:
                members = npz_members(zf, path)
                names = list(members)
                k = key or (names[0] if len(names) == 1 else None)
                if k not in members:
                    raise InputFileError(f"{path}: key {key!r} not found; the file holds {names}")
                _check_size(members[k].nbytes, f"{path}:{k}")
                arr = read_member(zf, path, members[k])
        except zipfile.BadZipFile as exc:
            raise InputFileError(f"{path}: not a readable .npz file ({exc})") from None
    else:
        with open_file(path, what, allow_external_links) as f, reading(path, what):
            k = key if key is not None else (default_h5_key if default_h5_key in f else None)
            if k is None or k not in f:
                raise InputFileError(f"{path}: key {key!r} not found; the file holds {sorted(f.keys())}")
            check_written(f[k], f"{path}:{k}")
            _check_size(f[k].size * f[k].dtype.itemsize, f"{path}:{k}")
            arr = f[k][()]
    return np.array(arr)  # in memory, writable, detached from the file
