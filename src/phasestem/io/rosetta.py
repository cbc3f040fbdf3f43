"""Detector and vendor formats through RosettaSciIO (``rsciio``, HyperSpy's readers), read lazily.

=========================  ====================  =============================================
extension                  rsciio plugin         what the file carries (read when present)
=========================  ====================  =============================================
.mib (+ .hdr beside it)    quantumdetector       Merlin/Medipix frames; scan shape from the .hdr
.dm3 .dm4                  digitalmicrograph     Gatan; beam energy, camera length, axis scales
.xml (+ its .raw)          empad                 EMPAD 128 × 128 (+2 rows) float32; scan shape, step
.blo                       blockfile             NanoMegas/ASTAR; scan step, beam energy
.hspy                      hspy                  HyperSpy HDF5; every axis scale and metadata
.zspy                      zspy                  HyperSpy zarr (needs ``zarr<3``)
.mrc                       mrc                   MRC stacks (DE movies with their metadata)
.tvips                     tvips                 TVIPS streams (``reader_options``: scan_shape …)
=========================  ====================  =============================================

``read(path, plugin=None, reader_options=None, **options)``: ``plugin`` overrides the extension;
``reader_options`` go to the rsciio reader as they are. The data stay a dask array (memory-mapped
chunks): nothing is read until patterns are asked for.

Calibrations taken from the file (the user's options win): the navigation axes' scale → ``scan_step``
in Å (nm, µm, pm, m, Å); the beam energy (keV in HyperSpy metadata) → ``energy`` eV; the signal
axes' scale → ``angular_sampling`` mrad (from rad/mrad, or from 1/nm, 1/Å, 1/m via the wavelength).
A signal axis in length units (a position on the camera) is not converted: the camera length is
recorded in ``metadata['camera_length_mm']`` and the angular sampling must be given. What the file
did not hold is listed in ``metadata['missing_from_file']`` (and logged).

Declared sizes: before the rsciio reader maps anything, the extent of the data the file declares (the EMPAD
.xml's scan over its .raw, a blockfile header, the tags of a DigitalMicrograph file) is checked against the
file's real size, so a header declaring terabytes over a few MB is refused in one line naming both instead
of building a dask graph of millions of chunks; for every plugin, the last value of the lazy array is read
once, so a truncated file is refused at once, naming the file.

Scan shape: a 4D file gives it; a stack of frames (N, H, W) is reshaped with ``scan_shape`` (or the
file's own metadata: the .mib .hdr "Frames per Trigger", the EMPAD .xml). A ``scan_shape`` that
disagrees with the file raises :class:`ShapeError` naming the file and both shapes.
"""
from __future__ import annotations

import importlib
import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from ..base.configfile import get_dotted
from ..base.errors import ConfigError, InputFileError, ShapeError
from ..base.extras import EXTRAS, install_hint
from ..base.safety import check_readable, gb
from ..dataset import FourDSTEM
from ..physics.optics import wavelength
from ._common import PRESETS, check_not_empty, dataset_from_reader, scan_shape_hint
from .hdf5 import open_file

log = logging.getLogger("phasestem.io")

#: extension → rsciio plugin module
PLUGINS = {
    ".mib": "quantumdetector", ".dm3": "digitalmicrograph", ".dm4": "digitalmicrograph", ".xml": "empad",
    ".blo": "blockfile", ".hspy": "hspy", ".zspy": "zspy", ".mrc": "mrc", ".tvips": "tvips",
}
#: what a file of each plugin starts with (for a clear error on a misnamed file)
_MAGIC = {
    "quantumdetector": (b"MQ1,", "a Merlin MIB header ('MQ1,…')"),
    "blockfile": (b"IMGBLO", "a blockfile header ('IMGBLO')"),
    "hspy": (b"\x89HDF\r\n\x1a\n", "an HDF5 signature"),
}
#: length units → Å
_LENGTH = {"m": 1e10, "cm": 1e8, "mm": 1e7, "um": 1e4, "µm": 1e4, "μm": 1e4, "nm": 10.0, "pm": 0.01,
           "A": 1.0, "Å": 1.0, "\u212b": 1.0, "angstrom": 1.0, "ang": 1.0}
#: reciprocal length units → 1/Å
_RECIPROCAL = {"1/m": 1e-10, "1/nm": 0.1, "1/A": 1.0, "1/Å": 1.0, "1/\u212b": 1.0, "1/angstrom": 1.0,
               "nm^-1": 0.1, "A^-1": 1.0, "Å^-1": 1.0, "m^-1": 1e-10}
_ANGLE = {"rad": 1e3, "mrad": 1.0, "urad": 1e-3, "µrad": 1e-3}


def _units(u) -> str:
    return "" if u is None else str(u).strip().replace(" ", "")


def length_to_angstrom(scale: float, units) -> float | None:
    """A length ``scale`` in ``units`` → Å (None for unknown or missing units)."""
    f = _LENGTH.get(_units(units))
    return None if f is None else float(scale) * f


def to_mrad(scale: float, units, energy: float | None) -> float | None:
    """A detector pixel in angle (rad, mrad) or reciprocal-length units → mrad (None if not convertible)."""
    u = _units(units)
    if u in _ANGLE:
        return float(scale) * _ANGLE[u]
    if u in _RECIPROCAL and energy:
        return float(scale) * _RECIPROCAL[u] * wavelength(energy) * 1e3  # θ = λ k (small angles)
    return None


def _set(tree: dict, dotted: str, value) -> None:
    parts = dotted.split(".")
    for part in parts[:-1]:
        tree = tree.setdefault(part, {})
    tree.setdefault(parts[-1], value)


def _mapped_metadata(signal: Mapping) -> dict:
    """The signal's metadata with the plugin's ``mapping`` (original → HyperSpy keys) applied."""
    md = _plain(signal.get("metadata") or {})
    om = signal.get("original_metadata") or {}
    for src, target in (signal.get("mapping") or {}).items():
        dest, func = target if isinstance(target, tuple | list) else (target, None)
        value = get_dotted(om, src)
        if value is None:
            continue
        try:
            _set(md, dest, func(value) if func is not None else value)
        except (TypeError, ValueError, KeyError):
            continue
    return md


def _plain(tree) -> Any:
    if isinstance(tree, Mapping):
        return {k: _plain(v) for k, v in tree.items()}
    return tree


def _positive(value) -> float | None:
    try:
        v = float(value)
    except (TypeError, ValueError):
        return None
    return v if math.isfinite(v) and v > 0 else None


def _check_magic(path: Path, plugin: str) -> None:
    if plugin not in _MAGIC:
        return
    magic, what = _MAGIC[plugin]
    with open(path, "rb") as f:
        head = f.read(len(magic))
    if head != magic:
        raise InputFileError(f"{path}: not a {plugin} file: expected {what} at the start, found {head!r}")


def _reader(plugin: str, path: Path):
    try:
        return importlib.import_module(f"rsciio.{plugin}").file_reader
    except ImportError as exc:
        missing = (getattr(exc, "name", None) or "").split(".")[0]
        hint = install_hint(missing) if missing in EXTRAS else f"pip install 'rosettasciio[{plugin}]'"
        raise InputFileError(f"{path}: the rsciio '{plugin}' reader cannot be imported ({exc}); {hint}") from None


def _mib_scan_shape(path: Path) -> tuple[tuple[int, int] | None, int]:
    """(scan shape from the .hdr or None, frames in the .mib) without reading the frames."""
    with open(path, "rb") as f:
        head = f.read(768).decode("ascii", errors="replace").split(",")
    try:
        head_size, W, H = int(head[2]), int(head[4]), int(head[5])
        itemsize = {"U08": 1, "U16": 2, "U32": 4}[head[6].strip()]
    except (IndexError, ValueError, KeyError):
        raise InputFileError(f"{path}: the MIB header is not readable (expected 'MQ1,seq,offset,chips,W,H,"
                             f"U08|U16|U32,…')") from None
    if H <= 0 or W <= 0 or head_size <= 0:
        raise ShapeError(f"{path}: the MIB header declares frames of {H}×{W} pixels after a {head_size}-byte "
                         "header; expected at least 1×1 pixels and a header")
    frame = head_size + H * W * itemsize
    size = path.stat().st_size
    if size % frame:
        raise ShapeError(f"{path}: {size} bytes are not a whole number of {frame}-byte MIB frames "
                         f"({head_size}-byte header + {H}×{W} {head[6].strip()})")
    n = size // frame
    hdr = path.with_suffix(".hdr")
    if not hdr.exists():
        return None, n
    values = {}
    for line in hdr.read_text(errors="replace").splitlines():
        if "\t" in line:
            k, v = line.split("\t", 1)
            values[k.rstrip(":").strip()] = v.strip()
    try:
        per_trigger = int(values.get("Frames per Trigger (Number)", "0"))
        total = int(values.get("Frames in Acquisition (Number)", "0"))
    except ValueError:
        return None, n
    if per_trigger > 1 and total and total % per_trigger == 0:
        return (total // per_trigger, per_trigger), n
    return None, n


def _empad_extent(xml: Path) -> list[tuple[Path, int, str]]:
    """The .raw an EMPAD .xml names and the bytes its declared scan needs (rsciio's own parse of the .xml)."""
    from rsciio.empad._api import _parse_xml

    try:
        _, info = _parse_xml(str(xml))
    except Exception as exc:  # noqa: BLE001 - the XML library's and rsciio's errors vary
        raise InputFileError(f"{xml}: not an EMPAD .xml ({type(exc).__name__}: {exc})") from None
    name = str(info["raw_filename"])
    if not name or Path(name).name != name or name in (".", ".."):
        raise InputFileError(f"{xml}: raw_file {name!r} is not the name of a file beside the .xml")
    raw = check_readable(xml.parent / name, f"EMPAD .raw file (named by {xml.name})")
    preset = PRESETS["empad"]
    H, W = preset["shape"]
    frame = (H + preset["footer_rows"]) * W * np.dtype(preset["dtype"]).itemsize
    if "series_count" in info:
        n, what = int(info["series_count"]), f"a series of {int(info['series_count'])} frames"
    else:
        n, what = int(info["scan_y"]) * int(info["scan_x"]), f"a {int(info['scan_y'])}×{int(info['scan_x'])} scan"
    if n <= 0:
        raise ShapeError(f"{xml}: declares {what}; expected at least one frame")
    return [(raw, n * frame, f"{xml} declares {what}: {n:,} frames of {W}×{H + preset['footer_rows']} float32")]


def _blockfile_extent(path: Path) -> list[tuple[Path, int, str]]:
    """The bytes a blockfile's header declares (frames of a 6-byte header and DP_SZ² uint8 after Data_offset_2)."""
    from rsciio.blockfile._api import get_header_dtype_list

    header = np.fromfile(path, dtype=get_header_dtype_list("<"), count=1)
    if len(header) == 0:
        return []
    ny, nx, side, offset = (int(header[k][0]) for k in ("NY", "NX", "DP_SZ", "Data_offset_2"))
    return [(path, offset + ny * nx * (6 + side * side),
             f"its header declares a {ny}×{nx} scan of {side}×{side} uint8 frames from byte {offset}")]


def _dm_extent(path: Path) -> list[tuple[Path, int, str]]:
    """The bytes each image of a DigitalMicrograph file declares (its dimensions × data type, from its data
    offset), from rsciio's parse of the tags (no data read)."""
    from rsciio.digitalmicrograph._api import DigitalMicrographReader, ImageObject

    out = []
    with open(path, "rb") as f:
        dm = DigitalMicrographReader(f)
        dm.parse_file()
        for imdict in dm.get_image_dictionaries():
            image = ImageObject(imdict, f)
            data = image.imdict.ImageData.Data
            if isinstance(data, np.ndarray):  # small images are read with the tags
                continue
            shape = tuple(int(s) for s in image.shape)
            need = int(data.offset) + math.prod(shape) * np.dtype(image.dtype).itemsize
            out.append((path, need, f"its tags declare an image of {'×'.join(map(str, shape))} "
                                    f"{np.dtype(image.dtype).name} from byte {int(data.offset)}"))
    return out


#: plugin → the (file, bytes needed, what declares them) its header declares, read before rsciio maps the data
_EXTENT = {"empad": _empad_extent, "blockfile": _blockfile_extent, "digitalmicrograph": _dm_extent}


def check_declared_extent(path: Path, plugin: str) -> None:
    """Refuse a file shorter than the data its header (or companion .xml) declares, naming it and both sizes."""
    extent = _EXTENT.get(plugin)
    if extent is None:
        return
    try:
        parts = extent(path)
    except (InputFileError, ShapeError):
        raise
    except (ImportError, AttributeError) as exc:  # rsciio changed its internals: the end probe still guards
        log.debug("%s: declared size not checked (%s)", path, exc)
        return
    except Exception as exc:  # noqa: BLE001 - a header too damaged to parse
        raise InputFileError(f"{path}: not readable as {plugin} ({type(exc).__name__}: {exc})") from None
    for file, need, what in parts:
        have = file.stat().st_size
        if have < need:
            raise InputFileError(f"{file}: holds {gb(have)} but {what}, {gb(need)}: truncated, or a wrong header?")


def _probe_end(data, path: Path) -> None:
    """Read the last value of a lazy array once: a file shorter than its header says fails here, named."""
    if not data.size:
        return
    try:
        np.asarray(data[(-1,) * data.ndim])
    except Exception as exc:  # noqa: BLE001 - memmap/dask/h5py errors vary
        raise InputFileError(f"{path}: its data ({'×'.join(map(str, data.shape))} {data.dtype}) run past the end of "
                             f"the file ({gb(path.stat().st_size)}): truncated? ({type(exc).__name__}: {exc})"
                             ) from None


def _pick_signal(signals, path: Path) -> Mapping:
    ok = []
    for s in signals:
        nav = [a for a in s["axes"] if a.get("navigate")]
        sig = [a for a in s["axes"] if not a.get("navigate")]
        if len(sig) == 2 and len(nav) in (1, 2):
            ok.append(s)
    if not ok:
        shapes = [tuple(np.shape(s["data"])) for s in signals]
        raise InputFileError(f"{path}: holds no 4D-STEM data (a stack or scan of 2D frames); found arrays of "
                             f"shapes {shapes}")
    return max(ok, key=lambda s: (len(s["axes"]), int(np.prod(np.shape(s["data"])))))


def resolve_scan_shape(data, path: Path, given, from_file, order: str):
    """(Sy, Sx, H, W) dask/ndarray from 3D or 4D data, checking the user's ``scan_shape`` against the file."""
    given = None if given is None else (int(given[0]), int(given[1]))
    check_not_empty(tuple(int(s) for s in data.shape), path)
    if data.ndim == 4:
        held = tuple(int(s) for s in data.shape[:2])
        if given is not None and given != held:
            raise ShapeError(f"{path}: the file holds a {held[0]}×{held[1]} scan but scan_shape is "
                             f"{given[0]}×{given[1]}")
        return data, held, "file"
    n = int(data.shape[0])
    if given is not None and from_file is not None and tuple(from_file) != given:
        raise ShapeError(f"{path}: the file's metadata says a {from_file[0]}×{from_file[1]} scan but scan_shape "
                         f"is {given[0]}×{given[1]}")
    shape, source = (given, "option") if given is not None else (from_file, "file")
    if shape is None:
        side = int(round(math.sqrt(n)))
        square = f" (e.g. --scan-shape {side} {side})" if side * side == n else ""
        raise ShapeError(f"{path}: the file holds {n} frames and no scan shape; {scan_shape_hint(n)}{square}")
    if shape[0] * shape[1] != n:
        raise ShapeError(f"{path}: the file holds {n} frames but scan_shape {shape[0]}×{shape[1]} needs "
                         f"{shape[0] * shape[1]}")
    if order == "F":  # y fastest: frame n = iy + ix · Sy
        data = data.reshape(shape[1], shape[0], *data.shape[1:]).swapaxes(0, 1)
    else:
        data = data.reshape(*shape, *data.shape[1:])
    return data, shape, source


def read(path: str | Path, plugin: str | None = None, reader_options: Mapping[str, Any] | None = None,
         allow_external_links: bool = False, **options) -> FourDSTEM:
    """Read a detector/vendor file with rsciio, lazily → :class:`FourDSTEM` (calibrations from the file). An HDF5
    file (.hspy) has its structure checked first (:func:`phasestem.io.hdf5.open_file`), rsciio following links."""
    path = Path(path)
    plugin = plugin or PLUGINS.get(path.suffix.lower())
    if plugin is None:
        raise ConfigError(f"{path}: no rsciio reader for '{path.suffix}'; give plugin= one of "
                          f"{sorted(set(PLUGINS.values()))}")
    kwargs = dict(reader_options or {})
    _check_magic(path, plugin)
    if h5py.is_hdf5(path):
        open_file(path, f"{plugin} HDF5 file", allow_external_links).close()
    check_declared_extent(path, plugin)
    file_scan = None
    if plugin == "quantumdetector":
        file_scan, n_frames = _mib_scan_shape(path)
        kwargs.setdefault("navigation_shape", (n_frames,))  # never the reader's timestamp guess
    reader = _reader(plugin, path)
    try:
        signals = reader(str(path), lazy=True, **kwargs)
    except (InputFileError, ShapeError):
        raise
    except Exception as exc:  # the library's own errors vary by plugin; name the file and the reader
        raise InputFileError(f"{path}: not readable as {plugin} ({type(exc).__name__}: {exc})") from None
    sig = _pick_signal(signals, path)
    axes = sorted(sig["axes"], key=lambda a: a["index_in_array"])
    data = sig["data"]
    _probe_end(data, path)
    nav_idx = [i for i, a in enumerate(axes) if a.get("navigate")]
    sig_idx = [i for i, a in enumerate(axes) if not a.get("navigate")]
    if nav_idx + sig_idx != list(range(len(axes))):
        data = data.transpose(nav_idx + sig_idx)
        axes = [axes[i] for i in nav_idx + sig_idx]
    if not data.dtype.isnative:  # e.g. Merlin's big-endian pixels: swapped per chunk as read (torch needs native)
        data = data.astype(data.dtype.newbyteorder("="))
    md = _mapped_metadata(sig)
    if plugin == "empad" and data.ndim == 4:
        file_scan = tuple(int(s) for s in data.shape[:2])

    found: dict[str, Any] = {}
    energy_kev = _positive(get_dotted(md, "Acquisition_instrument.TEM.beam_energy"))
    if energy_kev is not None:
        found["energy"] = energy_kev * 1e3
    nav_axes = axes[: data.ndim - 2]
    if len(nav_axes) == 2:
        step = [length_to_angstrom(a.get("scale", 1.0), a.get("units")) for a in nav_axes]
        if all(s is not None and s > 0 for s in step):
            found["scan_step"] = (step[0], step[1])
    energy = options.get("energy") or found.get("energy")
    dk = [to_mrad(a.get("scale", 1.0), a.get("units"), energy) for a in axes[-2:]]
    if all(d is not None and d > 0 for d in dk):
        found["angular_sampling"] = (dk[0], dk[1])
    camera_length = _positive(get_dotted(md, "Acquisition_instrument.TEM.camera_length"))

    order = str(options.get("scan_order", "C")).upper()
    data, scan_shape, scan_source = resolve_scan_shape(data, path, options.get("scan_shape"), file_scan, order)
    options = {k: v for k, v in options.items() if k not in ("scan_shape", "scan_order")}
    missing = [k for k in ("energy", "scan_step", "angular_sampling") if k not in found]
    if scan_source != "file":
        missing.append("scan_shape")
    meta = {
        "format": f"rsciio:{plugin}",
        "missing_from_file": missing,
        "detector_units": [_units(a.get("units")) for a in axes[-2:]],
        "navigation_units": [_units(a.get("units")) for a in nav_axes],
    }
    if camera_length is not None:
        meta["camera_length_mm"] = camera_length
    if missing:
        given = [k for k in missing if options.get(k) is not None or k == "scan_shape"]
        log.info("%s: not in the file: %s%s", path, ", ".join(missing),
                 f" (given: {', '.join(given)})" if given else "")
    held = {**found, "scan_shape": scan_shape} if scan_source == "file" else found
    return dataset_from_reader(data, path, file_values=held, metadata=meta,
                               scan_shape=None if scan_source == "file" else scan_shape, **options)
