"""HDF5 structure checks: a file a reader opens reads nothing outside the folder it may read, and holds what it
declares.

An HDF5 file can point outside itself in three ways, each followed by HDF5 without asking: an *external link*
(``h5py.ExternalLink``, reached directly or through soft links), a dataset with *external storage* (the raw bytes
of another file: ``dset.external``) and a *virtual dataset* (``dset.is_virtual``: slices of datasets of other
files). HDF5 looks for their target files in several places: an absolute name as written, then its base name as a
relative one; a relative name in the folders of ``HDF5_EXT_PREFIX`` / ``HDF5_VDS_PREFIX`` / ``HDF5_EXTFILE_PREFIX``,
beside the file and in the working folder. Every one of those places where a file exists must lie inside the
**allowed folder** (symbolic links resolved): ``PHASESTEM_READ_ROOT`` when set (``phasestem serve`` sets it for
itself and for its jobs), else the folder of the file opened. ``allow_external_links=True`` (the command line's
``--allow-external-links``) lifts that rule for a file the user trusts; it is never honoured while
``PHASESTEM_READ_ROOT`` is set.

Whatever the folder, a dataset must hold what it declares before anything is read: a virtual dataset whose source
file or dataset is missing (it would read as its fill value), or whose source is smaller than the slice it maps,
is refused; so are external storage over files shorter than the dataset (the rest would read as zeros), a virtual
dataset declaring far more than its sources map, and a dataset declaring far more than it stores (:func:`far_beyond`:
a 5 kB file declaring 1 TiB) that was not written whole (:func:`check_written`, which the readers also apply to the
patterns they read: any chunk missing there is refused).

:func:`check_file` walks a whole file, and every file its links and virtual sources lead to, before a reader
reads anything: :func:`phasestem.io.hdf5.open_file` (the one way the data readers open user HDF5 files) calls it,
and so does the materials reader of ``physics.specimen``, below the data layer.
Every refusal is one :class:`~phasestem.base.errors.InputFileError` line naming the file and the dataset or link
(``FILE:name``).
"""
from __future__ import annotations

import math
import os
from pathlib import Path

import h5py
import numpy as np

from .errors import InputFileError
from .safety import gb

#: the environment variable naming the one folder every file read may come from (set by ``phasestem serve``)
READ_ROOT_VARIABLE = "PHASESTEM_READ_ROOT"
#: files one check may open through links and virtual sources (a Dectris master links one file per 1000 frames)
MAX_FILES = 1024
#: links and sources followed from file to file at most this deep
MAX_DEPTH = 8
#: a dataset declaring more than this many bytes and more than :data:`FAR_BEYOND_RATIO` times what its storage or
#: its sources hold is refused (compressed detector data stay far below that ratio)
FAR_BEYOND_BYTES = 2**30
FAR_BEYOND_RATIO = 10_000
#: the environment variable HDF5 searches first for each kind of target
_PREFIX_VARIABLES = {"link": "HDF5_EXT_PREFIX", "source": "HDF5_VDS_PREFIX", "storage": "HDF5_EXTFILE_PREFIX"}


def read_root(path: str | Path) -> Path:
    """The folder a reader of ``path`` may read from: ``PHASESTEM_READ_ROOT`` when set, else ``path``'s folder
    (symbolic links resolved)."""
    root = os.environ.get(READ_ROOT_VARIABLE) or os.path.dirname(os.path.abspath(path))
    return Path(os.path.realpath(root))


def outside_allowed(allow_external_links: bool) -> bool:
    """Whether targets outside the allowed folder may be read: the user's opt-in, unless ``PHASESTEM_READ_ROOT``
    is set (then never)."""
    return bool(allow_external_links) and not os.environ.get(READ_ROOT_VARIABLE)


def far_beyond(declared: int, held: int) -> bool:
    """Whether ``declared`` bytes are far beyond the ``held`` bytes that back them."""
    return declared > FAR_BEYOND_BYTES and declared > FAR_BEYOND_RATIO * max(held, 1)


def check_file(f: h5py.File, path: str | Path, allow_external_links: bool = False) -> None:
    """Refuse ``f`` (opened from ``path``) if a link, external storage or virtual source of it, or of a file they
    lead to, reaches outside the allowed folder, is missing, or holds far less than declared (module docstring)."""
    _Walk(path, allow_external_links).file(f, 0)


def check_followed(obj: h5py.HLObject, source: str, path: str | Path, allow_external_links: bool = False) -> None:
    """Refuse ``obj``, reached from ``path`` through links HDF5 followed (``source`` names it), when the file it
    was found in lies outside the allowed folder."""
    if outside_allowed(allow_external_links):
        return
    root = read_root(path)
    found = os.path.realpath(obj.file.filename)
    if not _inside(found, root):
        raise InputFileError(f"{source}: was found in {found}, outside {root}, the folder it may read; "
                             f"{_expected()}")


def check_written(dset: h5py.Dataset | h5py.Group, source: str) -> None:
    """Refuse a group where a dataset is expected, or a dataset whose declared data were never or only partly
    written (unallocated chunks or contiguous storage read as the fill value), naming ``source``, before any
    value is read. Virtual and external datasets (their data live elsewhere) are checked by :func:`check_file`."""
    if not isinstance(dset, h5py.Dataset):
        raise InputFileError(f"{source}: is a group; expected a dataset")
    if dset.size == 0 or dset.is_virtual or dset.external:
        return
    if dset.chunks is None:
        if dset.id.get_storage_size() == 0:
            raise InputFileError(f"{source}: declared as {_declared(dset)} but never written (no storage allocated); "
                                 "expected a dataset holding data")
        return
    total = math.prod(math.ceil(s / c) for s, c in zip(dset.shape, dset.chunks, strict=True))
    written = dset.id.get_num_chunks()
    if written < total:
        fill = np.asarray(dset.fillvalue).tolist()
        raise InputFileError(f"{source}: declared as {_declared(dset)} but only {written:,} of its {total:,} chunks "
                             f"were written ({gb(dset.id.get_storage_size())} stored); the rest would read as the fill "
                             f"value {fill!r}. Expected a completely written dataset (an interrupted acquisition?)")


def _inside(place: str, root: Path) -> bool:
    return Path(place).is_relative_to(root)


def _expected() -> str:
    """The tail of a refusal of a target outside the allowed folder (the opt-in only where it is honoured)."""
    tail = "expected a file whose data, links and sources all lie inside that folder"
    if os.environ.get(READ_ROOT_VARIABLE):
        return tail
    return tail + " (--allow-external-links, or allow_external_links=True in Python, follows them in a file you trust)"


def _candidates(name: str, beside: str, kind: str) -> list[str]:
    """Every place HDF5 may open the target ``name`` of a file in folder ``beside`` from (resolved)."""
    places = []
    relative = name
    if os.path.isabs(name):
        places.append(name)
        relative = os.path.basename(name)
    prefixes = [p.replace("${ORIGIN}", beside) for p in os.environ.get(_PREFIX_VARIABLES[kind], "").split(os.pathsep)]
    for folder in (*filter(None, prefixes), beside, os.getcwd()):
        places.append(os.path.join(folder, relative))
    return list(dict.fromkeys(os.path.realpath(p) for p in places))


def _declared(dset: h5py.Dataset) -> str:
    return f"{'×'.join(map(str, dset.shape))} {dset.dtype}, {gb(dset.size * dset.dtype.itemsize)}"


def _shape(f: h5py.File, name: str) -> tuple[int, ...] | None:
    """The shape of dataset ``name`` of ``f`` (None where there is none)."""
    obj = f.get(name)
    return obj.shape if isinstance(obj, h5py.Dataset) else None


def _fits(src_space, shape: tuple[int, ...], points: int) -> bool:
    """Whether a source dataset of ``shape`` holds every element its selection ``src_space`` maps (``points``)."""
    kind = src_space.get_select_type()
    if kind == h5py.h5s.SEL_NONE:
        return True
    if kind == h5py.h5s.SEL_ALL:  # the whole source dataset, whatever its extent
        return math.prod(shape) >= points
    high = src_space.get_select_bounds()[1]
    return len(shape) == len(high) and all(h > b for h, b in zip(shape, high, strict=True))


def _external_links(f: h5py.File) -> list[tuple[str, str, str]]:
    """(link name, target file, target path) of every external link in ``f`` (in every group reached by hard
    links; soft links lead to paths of the file, whose links are among these)."""
    names: list[bytes] = []
    f.id.links.visit(lambda name, info: names.append(name) if info.type == h5py.h5l.TYPE_EXTERNAL else None,
                     info=True)
    return [(os.fsdecode(n), *(os.fsdecode(v) for v in f.id.links.get_val(n))) for n in names]


def _dataset_names(f: h5py.File) -> list[bytes]:
    """The name of every dataset of ``f`` reached by hard links (links out of the file are not followed)."""
    names: list[bytes] = []
    h5py.h5o.visit(f.id, lambda name, info: names.append(name) if info.type == h5py.h5o.TYPE_DATASET else None,
                   info=True)
    return names


class _Walk:
    """One check of a file and of every file it leads to (each opened once)."""

    def __init__(self, path: str | Path, allow_external_links: bool):
        self.path = Path(path)
        self.root = None if outside_allowed(allow_external_links) else read_root(path)
        self.seen: set[str] = set()

    def file(self, f: h5py.File, depth: int) -> None:
        real = os.path.realpath(f.filename)
        if real in self.seen:
            return
        if len(self.seen) >= MAX_FILES:
            raise InputFileError(f"{self.path}: its links and virtual sources lead to more than {MAX_FILES} files; "
                                 "expected fewer")
        self.seen.add(real)
        for name, target_file, target_path in _external_links(f):
            self.external_link(f, name, target_file, target_path, depth)
        for name in _dataset_names(f):
            self.dataset(f, name, depth)

    def where(self, f: h5py.File, name: str) -> str:
        """``FILE:name`` (the file opened; a linked one after it)."""
        name = name.lstrip("/")
        if os.path.realpath(f.filename) == os.path.realpath(self.path):
            return f"{self.path}:{name}"
        return f"{self.path}: {f.filename}:{name}"

    def target(self, f: h5py.File, where: str, name: str, kind: str, what: str, required: bool) -> str | None:
        """The file HDF5 opens for ``name`` (None where it exists nowhere and is not ``required``); refused when
        a place it may be found in lies outside the allowed folder, or is not a regular file."""
        beside = os.path.dirname(os.path.abspath(f.filename))
        found = [p for p in _candidates(name, beside, kind) if os.path.exists(p)]
        outside = [p for p in found if self.root is not None and not _inside(p, self.root)]
        if outside:
            at = "" if outside[0] == os.path.normpath(name) else f", found at {outside[0]}"
            raise InputFileError(f"{where}: {what}{at}, outside {self.root}, the folder it may read; {_expected()}")
        odd = [p for p in found if not os.path.isfile(p)]
        if odd:
            raise InputFileError(f"{where}: {what}, found at {odd[0]}, which is not a regular file; expected an "
                                 "HDF5 or data file")
        if not found and required:
            raise InputFileError(f"{where}: {what}, which does not exist (looked beside the file and in the working "
                                 "folder); expected every file it reads to be present")
        return found[0] if found else None

    def linked(self, target: str, depth: int) -> None:
        """Check the file ``target`` a link or a source leads to (one that is not HDF5 fails where it is read)."""
        if depth + 1 > MAX_DEPTH:
            raise InputFileError(f"{self.path}: links and virtual sources lead more than {MAX_DEPTH} files deep "
                                 f"(to {target}); expected fewer")
        if os.path.realpath(target) in self.seen:
            return
        try:
            g = h5py.File(target, "r")
        except OSError:
            return
        with g:
            self.file(g, depth + 1)

    def external_link(self, f: h5py.File, name: str, target_file: str, target_path: str, depth: int) -> None:
        what = f"an external link to {target_file}:{target_path}"
        target = self.target(f, self.where(f, name), target_file, "link", what, required=False)
        if target is not None:  # a dangling link reads nothing: the reader says so if it follows it
            self.linked(target, depth)

    def dataset(self, f: h5py.File, name: bytes, depth: int) -> None:
        """Check one dataset (opened at the low level: the layout is read first, a high-level object made only for
        the few datasets that need one)."""
        dsid = h5py.h5d.open(f.id, name)
        plist = dsid.get_create_plist()
        external, virtual = plist.get_external_count() > 0, plist.get_layout() == h5py.h5d.VIRTUAL
        declared = dsid.get_space().get_simple_extent_npoints() * dsid.get_type().get_size()
        if not (external or virtual or declared > FAR_BEYOND_BYTES):
            return
        dset = h5py.Dataset(dsid)
        where = self.where(f, dset.name)
        if external:
            self.external_storage(f, dset, where)
        elif virtual:
            self.virtual(f, dset, where, depth)
        else:
            self.stored(dset, where)

    def external_storage(self, f: h5py.File, dset: h5py.Dataset, where: str) -> None:
        held = 0
        for name, offset, size in dset.external:
            name = os.fsdecode(name)
            target = self.target(f, where, name, "storage", f"its data are stored in the external file {name}",
                                 required=True)
            held += min(int(size), max(0, os.path.getsize(target) - int(offset)))
        if held < dset.size * dset.dtype.itemsize:
            raise InputFileError(f"{where}: declared as {_declared(dset)} but its external files hold only "
                                 f"{gb(held)}; the rest would read as zeros. Expected external files holding all "
                                 "of it")

    def virtual(self, f: h5py.File, dset: h5py.Dataset, where: str, depth: int) -> None:
        fill = np.asarray(dset.fillvalue).tolist()
        mapped = 0
        for vmap in dset.virtual_sources():
            label = f"{vmap.file_name}:{vmap.dset_name}"
            shape = self.source(f, vmap.file_name, vmap.dset_name, label, where, fill, depth)
            try:
                points = int(vmap.vspace.get_select_npoints())
                fits = _fits(vmap.src_space, shape, points)
            except (ValueError, RuntimeError, OSError):
                raise InputFileError(f"{where}: a virtual dataset whose mapping of {label} has no fixed extent; "
                                     "expected a virtual dataset of fixed size") from None
            if not fits:
                raise InputFileError(f"{where}: a virtual dataset over {label}, which holds only "
                                     f"{'×'.join(map(str, shape))}, less than its mapping reads; the rest would read "
                                     f"as the fill value {fill!r}. Expected sources as large as their slices")
            mapped += points
        itemsize = dset.dtype.itemsize
        if far_beyond(dset.size * itemsize, mapped * itemsize):
            raise InputFileError(f"{where}: a virtual dataset declared as {_declared(dset)} whose sources map only "
                                 f"{gb(mapped * itemsize)}; the rest would read as the fill value {fill!r}. Expected "
                                 "a virtual dataset its sources fill")

    def source(self, f: h5py.File, file_name: str, dset_name: str, label: str, where: str, fill,
               depth: int) -> tuple[int, ...]:
        """The shape of one source of a virtual dataset, checked to lie inside the folder and to be present."""
        if file_name == ".":
            shape = _shape(f, dset_name)
        else:
            target = self.target(f, where, file_name, "source", f"a virtual dataset over {label}", required=False)
            shape = None if target is None else self.source_shape(target, dset_name, depth)
        if shape is None:
            raise InputFileError(f"{where}: a virtual dataset over {label}, which does not exist; it would read as "
                                 f"the fill value {fill!r}. Expected a virtual dataset whose sources are present")
        return shape

    def source_shape(self, target: str, dset_name: str, depth: int) -> tuple[int, ...] | None:
        """The shape of dataset ``dset_name`` of the source file ``target``, itself checked (None: no such dataset,
        or not an HDF5 file)."""
        self.linked(target, depth)
        try:
            with h5py.File(target, "r") as g:
                return _shape(g, dset_name)
        except OSError:
            return None

    def stored(self, dset: h5py.Dataset, where: str) -> None:
        """A dataset of its own storage declaring far more than is stored must have been written whole."""
        declared = dset.size * dset.dtype.itemsize
        if far_beyond(declared, dset.id.get_storage_size()):
            check_written(dset, where)  # well compressed data pass; unwritten chunks are refused, saying how many
