"""Small numeric arrays from user files (``.npy``, ``.npz``, HDF5): positions, detector shifts, phase and probe
images. One reader, so that every such file is checked the same way before use: it exists (loops of links and
links to nothing named as such), is not empty, declares no more data than it holds (the size checks of
:mod:`phasestem.io.numpy` and :mod:`phasestem.io.hdf5`), fits in memory, and holds numbers (a string-typed or
object array is refused naming the file, never cast). Range and shape checks are the caller's.
"""
from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from ..errors import InputFileError
from ..safety import a_an, available_memory, check_readable, gb
from .hdf5 import check_written, open_file, reading
from .numpy import load_npy, npz_members, read_member

#: an array read whole may take at most this share of the memory available
MEMORY_FRACTION = 0.25


def _check_size(nbytes: int, source: str) -> None:
    have = available_memory()
    if nbytes > MEMORY_FRACTION * have:
        raise InputFileError(f"{source}: holds {gb(nbytes)}, more than {MEMORY_FRACTION:.0%} of the {gb(have)} of "
                             "memory available; expected a small array")


def read_array(path: str | Path, key: str | None = None, what: str = "array file", default_h5_key: str | None = None,
               kinds: str = "biuf") -> np.ndarray:
    """One array (in memory) from ``.npy``, ``.npz`` (``key``, or its only array) or HDF5 (``key``, else
    ``default_h5_key``), told apart by the extension, else by the content. Its dtype kind must be one of
    ``kinds`` (``'biuf'``: real numbers; add ``'c'`` for complex); every failure is one
    :class:`InputFileError` line naming the file and ``what`` was expected."""
    path = Path(path)
    if not os.path.lexists(path):
        raise InputFileError(f"{path}: {what} not found")
    path = check_readable(path, what)
    if path.stat().st_size == 0:
        raise InputFileError(f"{path}: is empty (0 bytes); expected {a_an(what)}")
    suffix = path.suffix.lower()
    if suffix not in (".npy", ".npz", ".h5", ".hdf5", ".hdf"):  # by content: .npy unless zip or HDF5
        with open(path, "rb") as fh:
            head = fh.read(8)
        suffix = ".npz" if head[:4] == b"PK\x03\x04" else ".h5" if head == b"\x89HDF\r\n\x1a\n" else ".npy"
    if suffix == ".npy":
        arr = load_npy(path)
        _check_size(arr.nbytes, str(path))
        source = str(path)
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
            raise InputFileError(f"{path}: not a readable .npz ({exc}); expected {a_an(what)}") from None
        source = f"{path}:{k}"
    elif suffix in (".h5", ".hdf5", ".hdf"):
        with open_file(path, what) as f, reading(path, what):
            k = key if key is not None else (default_h5_key if default_h5_key in f else None)
            if k is None or k not in f:
                raise InputFileError(f"{path}: key {key!r} not found; the file holds {sorted(f.keys())}")
            check_written(f[k], f"{path}:{k}")
            _check_size(f[k].size * f[k].dtype.itemsize, f"{path}:{k}")
            arr = f[k][()]
        source = f"{path}:{k}"
    arr = np.asarray(arr)
    if arr.dtype.kind not in kinds:
        wanted = "real or complex numbers" if "c" in kinds else "real numbers"
        raise InputFileError(f"{source}: holds {arr.dtype} values; expected {wanted} ({what})")
    return np.array(arr)  # in memory, writable, detached from the file
