"""NumPy ``.npy`` (one array) and ``.npz`` (named arrays) files, memory-mapped where they can be (lazy).

Sizes are checked from the headers before any data are mapped or decompressed:

* ``.npy``: the shape × dtype of its header must fit in the file after the header (a truncated file is
  refused naming both sizes); the array is then memory-mapped.
* ``.npz``: each member's ``.npy`` header must declare exactly the bytes the zip directory lists for it.
  A stored (uncompressed, ``np.savez``) member is memory-mapped in place (read-only), like a ``.npy``. A compressed
  (``np.savez_compressed``) member must be decompressed into memory: it is refused when it would expand more
  than :data:`~phasestem.io.hdf5.MAX_EXPANSION` times beyond 64 MiB (a zip bomb: 2 MB of zeros that expand to
  3.9 GB) or when it would take more than :data:`~phasestem.io.hdf5.EAGER_MEMORY_FRACTION` of the memory
  available; save such data uncompressed (``np.savez``) or as HDF5.
"""
from __future__ import annotations

import json
import math
import struct
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from ..base.errors import InputFileError
from ..base.safety import atomic_file, available_memory, check_readable, gb
from ..dataset import FourDSTEM
from .hdf5 import (
    EAGER_MEMORY_FRACTION,
    EXPANSION_FREE_BYTES,
    MAX_EXPANSION,
    ROOT_CALIBRATIONS,
    dataset_with_truth,
    stored_calibrations,
)

_PIECE = 16 * 1024**2


def npy_header(fp: IO[bytes], source: str) -> tuple[tuple[int, ...], bool, np.dtype, int]:
    """(shape, fortran order, dtype, header bytes) of the ``.npy`` stream ``fp`` at its start (only the header
    is read); :class:`InputFileError` naming ``source`` for anything that is not a numeric ``.npy`` header."""
    try:
        version = np.lib.format.read_magic(fp)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(fp)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(fp)
        else:
            raise ValueError(f"unsupported .npy format version {version}")
    except (ValueError, EOFError, OSError, SyntaxError) as exc:
        raise InputFileError(f"{source}: not a readable .npy file ({' '.join(str(exc).split())[:200]})") from None
    if dtype.hasobject:
        raise InputFileError(f"{source}: holds Python objects ({dtype}); expected numbers (pickled objects are "
                             "never loaded)")
    return tuple(int(s) for s in shape), bool(fortran), dtype, int(fp.tell())


def _nbytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    return math.prod(shape) * dtype.itemsize


def _describe(shape: tuple[int, ...], dtype: np.dtype) -> str:
    return f"{'×'.join(map(str, shape)) or 'scalar'} {dtype.name} ({gb(_nbytes(shape, dtype))})"


def load_npy(path: Path, source: str | None = None) -> np.memmap | np.ndarray:
    """A ``.npy`` file memory-mapped (read-only), after checking that the file holds what its header declares."""
    source = source or str(path)
    with open(path, "rb") as fp:
        shape, fortran, dtype, head = npy_header(fp, source)
    have = path.stat().st_size - head
    need = _nbytes(shape, dtype)
    if have < need:
        raise InputFileError(f"{source}: its header declares {_describe(shape, dtype)} but the file holds {gb(have)} "
                         "after it: truncated?")
    if need == 0:
        return np.zeros(shape, dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=head, shape=shape, order="F" if fortran else "C")


@dataclass(frozen=True)
class Member:
    """One array of an ``.npz``: its zip entry and its ``.npy`` header."""

    name: str
    info: zipfile.ZipInfo
    shape: tuple[int, ...]
    fortran: bool
    dtype: np.dtype
    header: int  # bytes of the .npy header inside the member

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def nbytes(self) -> int:
        return _nbytes(self.shape, self.dtype)


def npz_members(zf: zipfile.ZipFile, path: Path) -> dict[str, Member]:
    """The arrays of an ``.npz`` by name (``x`` for ``x.npy``), each checked before any data are decompressed:
    its ``.npy`` header must declare exactly the bytes the zip directory lists for the member."""
    out = {}
    for info in zf.infolist():
        if not info.filename.endswith(".npy"):
            continue
        name = info.filename[:-4]
        source = f"{path}:{name}"
        if info.flag_bits & 0x1:
            raise InputFileError(f"{source}: is encrypted; expected a plain .npz")
        with zf.open(info) as fp:
            shape, fortran, dtype, head = npy_header(fp, source)
        listed = info.file_size - head
        if listed != _nbytes(shape, dtype):
            raise InputFileError(f"{source}: its header declares {_describe(shape, dtype)} but the archive lists "
                             f"{gb(max(listed, 0))} of data for it: a damaged or crafted file")
        out[name] = Member(name, info, shape, fortran, dtype, head)
    return out


def _stored_offset(path: Path, m: Member) -> int:
    """Byte offset in ``path`` of the data of the stored (uncompressed) member ``m``, from its local header."""
    with open(path, "rb") as fh:
        fh.seek(m.info.header_offset)
        local = fh.read(zipfile.sizeFileHeader)
    if len(local) != zipfile.sizeFileHeader or local[:4] != zipfile.stringFileHeader:
        raise InputFileError(f"{path}:{m.name}: damaged .npz (no local header at byte {m.info.header_offset})")
    name_len, extra_len = struct.unpack("<HH", local[26:30])
    return m.info.header_offset + zipfile.sizeFileHeader + name_len + extra_len + m.header


def read_member(zf: zipfile.ZipFile, path: Path, m: Member) -> np.ndarray:
    """The array of member ``m``: memory-mapped when stored; decompressed into memory, within the ratio and
    memory limits of the module docstring, when compressed."""
    source = f"{path}:{m.name}"
    if m.nbytes == 0:
        return np.zeros(m.shape, m.dtype)
    if m.info.compress_type == zipfile.ZIP_STORED:
        start = _stored_offset(path, m)
        if start + m.nbytes > path.stat().st_size:
            raise InputFileError(f"{source}: declares {_describe(m.shape, m.dtype)} from byte {start} but the file "
                             f"holds {gb(path.stat().st_size)}: truncated?")
        return np.memmap(path, dtype=m.dtype, mode="r", offset=start, shape=m.shape,
                         order="F" if m.fortran else "C")
    ratio = m.info.file_size / max(m.info.compress_size, 1)
    if m.info.file_size > EXPANSION_FREE_BYTES and ratio > MAX_EXPANSION:
        raise InputFileError(f"{source}: {gb(m.info.compress_size)} compressed that would expand {ratio:,.0f}× to "
                             f"{_describe(m.shape, m.dtype)}; more than {MAX_EXPANSION}× is refused (a zip bomb?). "
                             "Save real data uncompressed (np.savez: read lazily) or as HDF5")
    have = available_memory()
    if m.info.file_size > EAGER_MEMORY_FRACTION * have:
        raise InputFileError(f"{source}: is compressed, so it must be decompressed into memory: "
                             f"{_describe(m.shape, m.dtype)}, more than {EAGER_MEMORY_FRACTION:.0%} of the "
                             f"{gb(have)} available. Save it uncompressed (np.savez: read lazily) or as HDF5")
    buf = np.empty(m.nbytes, np.uint8)  # filled piece by piece: one copy of the array in memory
    done = 0
    with zf.open(m.info) as fp:
        fp.read(m.header)
        while done < m.nbytes:
            piece = fp.read(min(_PIECE, m.nbytes - done))
            if not piece:
                raise InputFileError(f"{source}: holds {gb(done)} of the {gb(m.nbytes)} its header declares: "
                                     "truncated?")
            buf[done:done + len(piece)] = np.frombuffer(piece, np.uint8)
            done += len(piece)
    arr = buf.view(m.dtype)
    return arr.reshape(m.shape[::-1]).T if m.fortran else arr.reshape(m.shape)


def read(path: str | Path, patterns_key: str | None = None, positions_key: str | None = None,
         phase_key: str | None = None, **options) -> FourDSTEM:
    """Read patterns (Sy, Sx, H, W) or (N, H, W) from .npy or from key ``patterns_key`` of an .npz.

    An .npz's small arrays named ``energy`` (eV), ``scan_step`` (Å), ``angular_sampling`` (mrad), ``sampling`` (Å)
    or ``semiangle`` (mrad) are the file's calibrations (what :func:`write` stores).

    ``options`` are the calibrations of :func:`phasestem.io.hdf5.dataset_with_truth` (energy, scan_step, …).
    """
    path = check_readable(path, "NumPy file")
    positions = truth = None
    held: dict = {}
    if path.suffix.lower() == ".npy":
        arr = load_npy(path)
        key = "array"
    else:
        with zipfile.ZipFile(path) as zf:
            members = npz_members(zf, path)
            keys = list(members)
            key = patterns_key
            if key is None:
                cands = [k for k, m in members.items() if m.ndim in (3, 4)]
                if len(cands) != 1:
                    raise InputFileError(f"{path}: give patterns_key: 3-D/4-D arrays are {cands} among {keys}")
                key = cands[0]
            for k, role in ((key, "patterns_key"), (positions_key, "positions_key"), (phase_key, "phase_key")):
                if k is not None and k not in keys:
                    raise InputFileError(f"{path}: no array '{k}' ({role}); arrays present: {keys}")
            arr = read_member(zf, path, members[key])
            small = {k: read_member(zf, path, members[k]) for k in (*ROOT_CALIBRATIONS, "aberrations")
                     if k in members and members[k].nbytes <= (4096 if k == "aberrations" else 64)}
            held = stored_calibrations(small, path)  # e.g. energy, scan_step, angular_sampling written by write()
            if positions_key:
                positions = np.asarray(read_member(zf, path, members[positions_key]), dtype=np.float64).reshape(-1, 2)
            if phase_key:
                truth = {"phase": np.asarray(read_member(zf, path, members[phase_key]), dtype=np.float32)}
    return dataset_with_truth(arr, f"{path}:{key}", truth=truth, file_values={**held, "positions": positions},
                              metadata={"file": str(path), "patterns_key": key}, **options)


def write(path: str | Path, dataset: FourDSTEM) -> Path:
    """Write patterns and calibrations to an .npz (temporary name, then rename; nothing left on failure)."""
    path = Path(path)
    extra = {}
    if dataset.positions is not None:
        extra["positions"] = dataset.positions
    if dataset.angular_sampling is not None:
        extra["angular_sampling"] = np.asarray(dataset.angular_sampling)
    if dataset.semiangle is not None:
        extra["semiangle"] = np.float64(dataset.semiangle)
    if dataset.aberrations:
        extra["aberrations"] = np.asarray(json.dumps(dataset.aberrations, sort_keys=True))
    extra["scan_origin"] = np.asarray(dataset.scan_origin, dtype=np.float64)
    with atomic_file(path, "path") as tmp, open(tmp, "wb") as fh:  # a file object: savez adds no suffix
        np.savez(fh, patterns=np.asarray(dataset.patterns[...], dtype=np.float32), energy=dataset.energy,
                 scan_step=np.asarray(dataset.scan_step), **extra)
    return path
