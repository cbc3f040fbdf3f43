"""Guards shared by every command that reads user files or writes results.

* :func:`refuse_output_over_inputs`: an output path never resolves to an input file (symlinks,
  hard links and relative paths included).
* :func:`atomic_file`: write under a per-process temporary name in the same folder (:func:`temporary_name`),
  rename on success, remove the temporary file on any failure; an existing folder is refused as a file output.
  :func:`remove_stale_temporaries` deletes what killed writers of a locked folder left behind. A write that finds
  no room (:data:`NO_ROOM`) is one :class:`~phasestem.base.errors.DiskFullError` line and the old file stays;
  :func:`atomic_hdf5` builds an HDF5 file in memory first, :func:`check_room` refuses before a write that cannot
  stop cleanly.
* :func:`check_result_name` / :func:`figure_beside`: a result file never has a figure suffix, and the figure
  written next to it never has the result's path.
* :func:`check_finite` / :func:`mask_nonfinite`: refuse NaN/Inf values with the source and the first
  bad index, or replace them by the median of their finite neighbours and say how many.
* :func:`available_memory`: what the machine can still hold (to decide eager vs lazy reads); :func:`gb`
  writes a size for messages.
* :func:`check_readable`: why a path cannot be opened, in one line (missing, a loop of symbolic links, a link
  to nothing, a folder, no permission).
"""
from __future__ import annotations

import errno
import glob
import os
import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from .errors import ConfigError, DiskFullError, InputFileError

BAD_PIXEL_MODES = ("refuse", "mask")
#: files inside an input *folder* (a model run folder) that a command may read: an output must not be one of them
_FOLDER_INPUT_SUFFIXES = (".safetensors", ".pt", ".pth", ".ckpt", ".json", ".yaml", ".yml")

PathLike = str | os.PathLike


def _same(a: Path, b: Path) -> bool:
    """True if ``a`` and ``b`` name the same file (after links and relative parts are resolved)."""
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _input_files(inputs: Iterable[PathLike | None]) -> list[Path]:
    """Input paths; an input folder (a model run folder) contributes the model/config files inside it."""
    files: list[Path] = []
    for item in inputs:
        if item is None:
            continue
        p = Path(item)
        files.append(p)
        if p.is_dir():
            for depth in ("*", "*/*", "*/*/*"):
                files.extend(q for q in p.glob(depth) if q.suffix.lower() in _FOLDER_INPUT_SUFFIXES and q.is_file())
    return files


def refuse_output_over_inputs(out: PathLike | Sequence[PathLike], inputs: Iterable[PathLike | None],
                              field: str = "--out", written: Sequence[str] = ()) -> None:
    """Raise :class:`ConfigError` if an output would overwrite an input.

    ``out`` is one output path or several (e.g. an HDF5 file and the PNG next to it); for an output
    *folder* give the names the command writes inside it as ``written``. ``inputs`` are the files
    (or model folders) the command reads; ``None`` entries are skipped.
    """
    outs = [Path(out)] if isinstance(out, str | os.PathLike) else [Path(o) for o in out]
    targets = outs + [o / name for o in outs for name in written]
    files = _input_files(inputs)
    for target in targets:
        for inp in files:
            if written and target in outs and inp.is_dir():
                continue  # an output folder may be an input folder: only the files it writes matter
            if _same(target, inp):
                what = "input folder" if inp.is_dir() else "input file"
                raise ConfigError(f"{field} {outs[0]}: would overwrite the {what} {inp}"
                                  + (f" (as {target})" if target not in outs else "")
                                  + "; choose another output path")


#: suffixes of figure files: a result file may not have one (its figure would be written over it)
FIGURE_SUFFIXES = (".png", ".jpg", ".jpeg", ".pdf", ".svg", ".svgz", ".eps", ".ps", ".tif", ".tiff", ".webp",
                   ".gif", ".bmp")
_TEMPORARY = re.compile(r"\.(\d+)\.tmp$")


def temporary_name(path: PathLike) -> Path:
    """``NAME.<pid>.tmp`` beside ``path``: where this process writes ``path`` before renaming it into place (two
    processes writing one target never share a temporary)."""
    path = Path(path)
    return path.with_name(f"{path.name}.{os.getpid()}.tmp")


def unique_temporary_name(path: PathLike) -> Path:
    """``NAME.<pid>.<random>.tmp`` beside ``path``: a temporary that no other process, thread or request of this
    process shares (two uploads of one name at once each write their own)."""
    import secrets

    path = Path(path)
    return path.with_name(f"{path.name}.{os.getpid()}.{secrets.token_hex(8)}.tmp")


def remove_stale_temporaries(folder: PathLike, names: Iterable[str]) -> list[Path]:
    """Delete ``NAME.<pid>.tmp`` files and folders of ``names`` in ``folder`` left by other (killed) processes;
    returns what was removed. Call it only while holding the folder's lock (:mod:`phasestem.base.lock`): then no
    other process is writing there."""
    import shutil

    removed = []
    for name in names:
        for path in Path(folder).glob(f"{glob.escape(name)}.*.tmp"):
            m = _TEMPORARY.search(path.name)
            if m is None or path.name != f"{name}.{m.group(1)}.tmp" or int(m.group(1)) == os.getpid():
                continue
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def check_result_name(result: PathLike, field: str = "--out") -> Path:
    """``result`` (an HDF5 result file) as a Path; a figure suffix (:data:`FIGURE_SUFFIXES`) is refused
    (ConfigError): the result would be taken for a figure, and the figure written beside it would replace it."""
    result = Path(result)
    if result.suffix.lower() in FIGURE_SUFFIXES:
        raise ConfigError(f"{field} {result}: has a figure suffix, but this is the result file (HDF5); give a result "
                          f"name such as {result.with_suffix('.h5')} (a figure is written beside it as "
                          f"{result.with_suffix('.png').name})")
    return result


def figure_beside(result: PathLike, field: str = "--out", suffix: str = ".png") -> Path:
    """The figure a command writes next to its ``result`` file: ``result`` with ``suffix``, never ``result``
    itself (:func:`check_result_name`)."""
    return check_result_name(result, field).with_suffix(suffix)


@contextmanager
def atomic_file(path: PathLike, field: str = "--out",
                temporary: Callable[[Path], Path] = temporary_name, replace: bool = True) -> Iterator[Path]:
    """Yield a temporary path next to ``path`` (``temporary(path)``, by default :func:`temporary_name`); on
    success rename it to ``path``, on failure remove it: the one temp-and-rename write of the package.

    An existing folder at ``path`` is refused before anything is written (it cannot be replaced by a file).
    ``replace`` False: a file that is at ``path`` when the write ends is kept and :class:`FileExistsError` raised
    (the check and the placing are one step: a hard link, or an exclusive create where links are not had).
    """
    path = Path(path)
    if path.is_dir():
        raise ConfigError(f"{field} {path}: is a folder; give a file name (e.g. {path / ('output' + '.h5')})")
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary(path)
    try:
        yield tmp
        if replace:
            os.replace(tmp, path)
        else:
            _place_new(tmp, path)
    except OSError as exc:
        if exc.errno not in NO_ROOM or isinstance(exc, DiskFullError):
            raise
        raise DiskFullError(no_room_message(path, field, exc.errno)) from exc
    finally:
        if tmp.is_file() or tmp.is_symlink():
            tmp.unlink()


#: the errnos of a write that found no room: no space left, a disk quota, the process's file-size limit
NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


def no_room_message(path: PathLike, field: str, code: int = errno.ENOSPC, needed: int | None = None) -> str:
    """The one line of a write of ``path`` that found no room (``code``: its errno; ``needed``: the bytes it would
    take, when known before), with what is free there and that the file it would have replaced is kept."""
    import shutil

    path = Path(path)
    why = {errno.EDQUOT: "the disk quota is exceeded",
           errno.EFBIG: "it would exceed this process's file-size limit (ulimit -f)"}.get(code, "no space left")
    if needed is not None and code == errno.ENOSPC:
        why = f"not enough space for about {gb(needed)}"
    try:
        free = f"{gb(shutil.disk_usage(path.parent).free)} free there"
    except OSError:
        free = "free space unknown"
    kept = f"the previous {path.name} is kept as it was" if path.exists() else "nothing was written"
    return f"{field} {path}: {why} ({free}); {kept}"


def check_room(path: PathLike, needed: int, field: str = "--out") -> None:
    """Refuse (:class:`~phasestem.base.errors.DiskFullError`) a write of about ``needed`` bytes to ``path`` before
    it starts when the file system has less free or the process's file-size limit is lower: for writers that cannot
    stop cleanly when the disk fills (HDF5 libraries written to a path)."""
    import resource
    import shutil

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    limit = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    if limit != resource.RLIM_INFINITY and needed > limit:
        raise DiskFullError(no_room_message(path, field, errno.EFBIG, needed))
    if shutil.disk_usage(path.parent).free < needed:
        raise DiskFullError(no_room_message(path, field, errno.ENOSPC, needed))


@contextmanager
def atomic_hdf5(path: PathLike, field: str = "--out", replace: bool = True) -> Iterator:
    """Yield a new HDF5 file (``h5py.File``) built in memory; on success its bytes are written to ``path`` by
    :func:`atomic_file`. The HDF5 library never writes to the disk itself, so a disk that fills mid-write is one
    :class:`~phasestem.base.errors.DiskFullError` naming ``path`` (HDF5 2.0 crashes the process there) and the
    file at ``path`` is kept. The whole file is held in memory once while it is written."""
    import io

    import h5py

    image = io.BytesIO()
    with h5py.File(image, "w") as f:
        yield f
    with atomic_file(path, field=field, replace=replace) as tmp, open(tmp, "wb") as fh:
        fh.write(image.getbuffer())


def _place_new(tmp: Path, path: Path) -> None:
    """``tmp`` becomes ``path`` only if nothing is there: FileExistsError otherwise, in one step."""
    try:
        os.link(tmp, path)  # fails with FileExistsError when path exists, atomically
        return
    except FileExistsError:
        raise
    except OSError:  # a file system without hard links: claim the name exclusively, then rename over the claim
        pass
    os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
    os.replace(tmp, path)


def available_memory() -> int:
    """Bytes this process can still be handed: what the machine has left (``MemAvailable``; psutil elsewhere; 4 GiB
    if unknown), at most what its address-space limit (``RLIMIT_AS``, ``ulimit -v``: ``phasestem serve``'s data
    readers) leaves it."""
    return min(_machine_memory(), _address_space_left())


def _machine_memory() -> int:
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover - neither source present
        return 4 * 1024**3


def mapped_bytes() -> int:
    """Bytes of address space this process maps now (``/proc/self/statm``); OSError or ValueError where unknown."""
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[0]) * os.sysconf("SC_PAGE_SIZE")


def _address_space_left() -> int:
    """Bytes of address space this process may still map under ``RLIMIT_AS`` (no limit, or unknown: unbounded)."""
    try:
        import resource

        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        if limit == resource.RLIM_INFINITY:
            return 1 << 62
        mapped = mapped_bytes()
    except (ImportError, OSError, ValueError):
        return 1 << 62
    return max(0, limit - mapped)


def gb(n: float) -> str:
    """Bytes as a short human string in decimal units (bytes, kB, MB, GB, TB, PB)."""
    for unit, scale in (("PB", 1e15), ("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} bytes"


def a_an(what: str) -> str:
    """``what`` with its indefinite article (``an HDF5 file``, ``a 4D-STEM file``)."""
    return f"{'an' if what[:1].lower() in 'aeio' or what.startswith('HDF') else 'a'} {what}"


def check_readable(path: PathLike, what: str = "file", folder_ok: bool = False) -> Path:
    """``path`` if it can be opened for reading; else :class:`InputFileError` naming it and saying why (no such
    file, a loop of symbolic links, a symbolic link to a missing target, a folder, no permission) and that
    ``what`` was expected."""
    path = Path(path)
    what = a_an(what)
    try:
        os.stat(path)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputFileError(f"{path}: a loop of symbolic links (no file at its end); expected {what}") from None
        if path.is_symlink():
            raise InputFileError(f"{path}: a symbolic link to {os.readlink(path)}, which does not exist; expected "
                                 f"{what}") from None
        if exc.errno == errno.EACCES:
            raise InputFileError(f"{path}: permission denied; expected {what} that can be read") from None
        if exc.errno in (errno.ENOENT, errno.ENOTDIR):
            raise InputFileError(f"{path}: no such file; expected {what}") from None
        raise InputFileError(f"{path}: cannot be opened ({exc.strerror}); expected {what}") from None
    if os.path.isdir(path) and not folder_ok:
        raise InputFileError(f"{path}: is a folder; expected {what}")
    if not os.access(path, os.R_OK):
        raise InputFileError(f"{path}: permission denied; expected {what} that can be read")
    return path


# ------------------------------------------------------------------------------------- finiteness
def check_bad_pixel_mode(mode: str, field: str = "--bad-pixels") -> str:
    """``mode`` if it is one of :data:`BAD_PIXEL_MODES`, else a :class:`ConfigError` naming ``field``."""
    if mode not in BAD_PIXEL_MODES:
        raise ConfigError(f"{field}: expected one of {list(BAD_PIXEL_MODES)}, got {mode!r}")
    return mode


def first_nonfinite(arr: np.ndarray) -> tuple[int, ...] | None:
    """Index of the first NaN/Inf of ``arr`` (C order), or None (integer arrays are always finite)."""
    if arr.dtype.kind not in "fc":
        return None
    bad = ~np.isfinite(arr)
    if not bad.any():
        return None
    return tuple(int(i) for i in np.unravel_index(int(np.argmax(bad)), arr.shape))


def check_finite(arr: np.ndarray, source: str, offset: Sequence[int] = (), what: str = "value",
                 hint: str = "--bad-pixels mask replaces them by the median of their finite neighbours") -> None:
    """Raise :class:`InputFileError` naming ``source`` and the first NaN/Inf index (``offset`` added to the
    leading axes, for blocks of a larger array)."""
    idx = first_nonfinite(arr)
    if idx is None:
        return
    full = tuple(i + o for i, o in zip(idx, offset, strict=False)) + idx[len(offset):]
    raise InputFileError(f"{source}: {what} at index {full} is {arr[idx]}; expected finite numbers"
                         + (f" ({hint})" if hint else ""))


def mask_nonfinite(arr: np.ndarray) -> int:
    """Replace NaN/Inf of a float array in place by the median of the finite values among their 3 × 3
    neighbours in the last two axes (0 where none is finite); returns how many were replaced."""
    if arr.dtype.kind != "f":
        return 0
    bad = np.nonzero(~np.isfinite(arr))
    n = len(bad[0]) if bad else 0
    if n == 0:
        return 0
    H, W = arr.shape[-2:]
    lead, ys, xs = bad[:-2], bad[-2], bad[-1]
    neighbours = np.full((n, 9), np.nan, dtype=np.float64)
    k = 0
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            yy, xx = ys + dy, xs + dx
            ok = (yy >= 0) & (yy < H) & (xx >= 0) & (xx < W)
            vals = arr[(*(a[ok] for a in lead), yy[ok], xx[ok])].astype(np.float64)
            vals[~np.isfinite(vals)] = np.nan
            neighbours[ok, k] = vals
            k += 1
    finite = np.isfinite(neighbours).any(axis=1)
    fill = np.zeros(n, dtype=np.float64)
    if finite.any():
        fill[finite] = np.nanmedian(neighbours[finite], axis=1)
    arr[bad] = fill.astype(arr.dtype)
    return int(n)
