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
.mib (+ .hdr)              ``rosetta``       Merlin/Medipix via rsciio; scan shape from the .hdr
.dm3 .dm4                  ``rosetta``       Gatan DigitalMicrograph via rsciio
.xml (+ .raw)              ``rosetta``       EMPAD via rsciio (a .raw named by an EMPAD .xml beside it too)
.blo .hspy .zspy .mrc      ``rosetta``       blockfile, HyperSpy HDF5/zarr, MRC, TVIPS via rsciio
.tvips                                       (``plugin=``, ``reader_options=`` for the rsciio reader)
NAME_master.h5             ``dectris``       Dectris Arina/Eiger master + linked data files (h5py)
=========================  ================  ==========================================

The ``rosetta`` and ``dectris`` readers read lazily (dask / h5py) and take the scan step, beam energy and
detector pixel from the file when present; ``metadata['missing_from_file']`` lists what was not there.

Every module exposes ``read(path, **options) -> FourDSTEM``; writers are ``write(path, dataset)``.
All readers also take the calibrations of :func:`phasestem.io._common.dataset_from_reader` (energy, scan_step,
scan_shape, scan_order, angular_sampling or sampling, semiangle, aberrations, scan_origin, positions).
"""
from __future__ import annotations

import importlib
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

from ..base.errors import ConfigError, InputFileError, PhasestemError
from ..base.safety import available_memory, check_readable, gb

if TYPE_CHECKING:  # a name only: importing the table below stays light (no torch) for the CLI and serve
    from ..dataset import FourDSTEM

#: THE table of data-file extensions: extension → reader module (``phasestem serve``'s files page and the
#: ``inspect``/``calibrate`` help derive from it); plus Dectris ``NAME_master.h5`` (:data:`MASTER_SUFFIX`)
EXTENSIONS = {
    ".h5": "hdf5", ".hdf5": "hdf5", ".hdf": "hdf5",
    ".npy": "numpy", ".npz": "numpy",
    ".cxi": "cxi",
    ".mat": "mat",
    ".emd": "emd",
    ".raw": "raw", ".bin": "raw", ".dat": "raw",
    ".mib": "rosetta", ".dm3": "rosetta", ".dm4": "rosetta", ".xml": "rosetta", ".blo": "rosetta",
    ".hspy": "rosetta", ".zspy": "rosetta", ".mrc": "rosetta", ".tvips": "rosetta",
}
#: files read beside the named one: extension → the companion's extension
COMPANIONS = {".mib": ".hdr", ".xml": ".raw"}
MASTER_SUFFIX = "_master.h5"
FORMATS = sorted(set(EXTENSIONS.values()) | {"dectris"})
#: the readers that may open HDF5 files: they take ``allow_external_links`` (:mod:`phasestem.base.hdf5_links`)
HDF5_READERS = ("hdf5", "emd", "cxi", "mat", "rosetta", "dectris")


def formats_line() -> str:
    """Every readable file in one line, for help texts: ``.h5, .hdf5, …, .mib (+ .hdr), …, Dectris *_master.h5``."""
    names = [ext + (f" (+ {COMPANIONS[ext]})" if ext in COMPANIONS else "") for ext in EXTENSIONS]
    return ", ".join(names) + f", Dectris *{MASTER_SUFFIX}"


def reader_module(path: str | Path, format: str | None = None):
    """The reader module for ``path`` (by ``format`` or the file extension)."""
    master = Path(path).name.lower().endswith(MASTER_SUFFIX)  # Dectris Arina/Eiger
    name = format or ("dectris" if master else EXTENSIONS.get(Path(path).suffix.lower()))
    if name is None:
        raise ConfigError(
            f"{path}: cannot tell the file format from the extension '{Path(path).suffix}'; "
            f"give format= one of {FORMATS}"
        )
    if name not in FORMATS:
        raise ConfigError(f"unknown format '{name}': expected one of {FORMATS}")
    return importlib.import_module(f"{__name__}.{name}")


def load(path: str | Path, format: str | None = None, bad_pixels: str = "refuse", screen: str = "auto",
         allow_external_links: bool = False, **options) -> FourDSTEM:
    """Load a 4D-STEM file into a :class:`FourDSTEM` (lazily where the format allows).

    Pattern values are checked to be finite: NaN/Inf are refused naming the file, dataset and first
    bad index (``bad_pixels='refuse'``) or replaced by the median of their finite neighbours
    (``bad_pixels='mask'``; the count is in ``metadata['bad_pixels_masked']``). ``screen='auto'`` checks every
    value of data up to 1 GiB (float32) and an evenly spread 64 MiB sample of larger data (bounded time);
    ``screen='full'`` checks every value (see :func:`phasestem.io._common.screen_patterns`). Sizes a file
    declares (headers, shapes) are checked against its real size before anything is mapped or read. Any
    failure of a reader, or of reading the data while screening them, is raised as a :mod:`phasestem.base.errors`
    class whose one-line message names the file.
    ``require_calibration=False`` (an option of every reader) accepts a file without energy or scan step (a first
    look: ``phasestem inspect``); they are then NaN and ``metadata['uncalibrated']`` names them.
    An HDF5 file whose external links, external storage or virtual sources reach outside its folder (or outside
    ``PHASESTEM_READ_ROOT`` when set) is refused naming the dataset, unless ``allow_external_links`` (never honoured
    under ``PHASESTEM_READ_ROOT``); so is one whose virtual sources are missing or whose datasets declare far more
    than they hold (:mod:`phasestem.base.hdf5_links`).
    """
    from ._common import screen_patterns

    path = Path(path)
    check_input_file(path)
    module = reader_module(path, format)
    if module.__name__.rsplit(".", 1)[-1] in HDF5_READERS:
        options["allow_external_links"] = allow_external_links
    try:
        ds = module.read(path, **options)
        return screen_patterns(ds, bad_pixels, screen)
    except PhasestemError as exc:
        if str(path) in str(exc):
            raise
        raise type(exc)(f"{path}: {exc}") from None
    except TypeError as exc:
        if "unexpected keyword" not in str(exc):
            raise
        raise ConfigError(f"{path}: unknown reader option ({exc})") from None
    except MemoryError:
        raise InputFileError(f"{path}: reading it needs more memory than is available "
                             f"({gb(available_memory())} free); expected data that fit, or a format read lazily "
                             "(HDF5, .npy, uncompressed .npz)") from None
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        kind = module.__name__.rsplit(".", 1)[-1]
        detail = " ".join(f"{type(exc).__name__}: {exc}".split())[:300]
        raise InputFileError(f"{path}: not a readable {kind} file, truncated or damaged? ({detail})") from None


#: formats stored as a folder (zarr stores)
_FOLDER_FORMATS = (".zspy", ".zarr")


def check_input_file(path: str | Path) -> Path:
    """``path`` if it is a non-empty file; else :class:`InputFileError` saying what it is instead (missing, a
    loop of symbolic links, a link to nothing, a folder, empty, unreadable)."""
    path = check_readable(path, "4D-STEM file", folder_ok=True)
    if path.is_dir() and path.suffix.lower() not in _FOLDER_FORMATS:
        raise InputFileError(f"{path}: is a folder; expected a 4D-STEM file")
    if path.is_dir():
        return path
    if path.stat().st_size == 0:
        raise InputFileError(f"{path}: is empty (0 bytes); expected a 4D-STEM file")
    return path
