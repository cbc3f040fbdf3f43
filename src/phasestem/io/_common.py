"""Shared helpers of the format readers: lazy scan views and ``dataset_from_reader``.

``dataset_from_reader(patterns, path, **options)`` turns whatever a reader found — flat
(N, H, W) or gridded (Sy, Sx, H, W) patterns, lazy or not — plus the user's options into a
:class:`~phasestem.dataset.FourDSTEM`. Options given by the user override values read from the
file (passed as ``file_values``); the dataset's metadata says which value came from where and which given
values differ from the file's (``calibration_sources``, ``calibration_conflicts``).

Common reader options (all formats)
-----------------------------------
energy : beam energy (eV).
scan_step : scan step (Å), a number or (dy, dx).
scan_shape : (Sy, Sx) to reshape flat (N, H, W) patterns; N must equal Sy·Sx.
scan_order : 'C' (x fastest, row-major; default) or 'F' (y fastest, MATLAB column-major) for flat data.
angular_sampling : detector pixel (mrad), a number or (dky, dkx).
sampling : real-space pixel (Å) instead of ``angular_sampling``.
semiangle : probe semi-angle (mrad).
aberrations : dict of aberrations (:class:`phasestem.physics.optics.Aberrations` keys/aliases).
scan_origin : (y0, x0) Å of the first scan position.
positions : explicit (N, 2) probe positions (Å).
"""
from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..base.configfile import number_pair
from ..base.errors import ConfigError, InputFileError, MissingCalibrationError, ShapeError
from ..base.provenance import same_value
from ..base.safety import check_bad_pixel_mode, check_finite, mask_nonfinite
from ..dataset import FourDSTEM
from ..physics.optics import Aberrations, angular_sampling_for
from ..scan import GridScan

log = logging.getLogger("phasestem.io")

#: an energy or scan step the file does not hold and nobody gave, where they are not required (NaN: every
#: quantity computed from it is NaN, never a plausible wrong number)
UNKNOWN = float("nan")

COMMON_OPTIONS = ("energy", "scan_step", "scan_shape", "scan_order", "angular_sampling", "sampling", "semiangle",
                  "aberrations", "scan_origin", "positions")

#: metadata key of the patterns' type as stored in the file (a reader may hand them on as float32): io.counts reads it
STORED_DTYPE_KEY = "stored_dtype"


def scan_shape_hint(n: int) -> str:
    """How to give the scan shape of ``n`` flat patterns, as typed where the user gives it (an error's tail)."""
    return (f"give the scan shape, Sy·Sx = {n} (--scan-shape Sy Sx on the command line, "
            "data.reader_options.scan_shape: [Sy, Sx] in a parameter file, scan_shape=(Sy, Sx) in Python)")


#: raw-dump layouts of known detectors (``phasestem.io.raw``: ``detector=``; the EMPAD .xml reader)
PRESETS = {"empad": {"shape": (128, 128), "dtype": "<f4", "footer_rows": 2}}


def missing_key(path: str | Path, key: str, present) -> InputFileError:
    """The error for a key that is not in a file, listing the keys that are."""
    keys = sorted(present)
    shown = ", ".join(keys[:40]) + (" …" if len(keys) > 40 else "")
    return InputFileError(f"{path}: no key '{key}'; keys present: {shown or '(none)'}")


class LazyView:
    """A lazy (Sy, Sx, H, W) view of a source array-like (h5py dataset, memmap, ndarray).

    The source is flat (N, H, W) (``scan_shape`` given) or already (Sy, Sx, H, W).
    ``axes`` permutes the source first (a tuple of source axes giving (N, H, W) or
    (Sy, Sx, H, W) order, e.g. ``(2, 1, 0)`` for a MATLAB (H, W, N) array read by h5py as
    (N, W, H)); ``scan_order='F'`` numbers flat patterns with y fastest. Only the requested
    patterns are read.
    """

    def __init__(self, source, scan_shape: tuple[int, int] | None = None, axes: tuple[int, ...] | None = None,
                 scan_order: str = "C"):
        self.source = source
        self.axes = tuple(axes) if axes is not None else tuple(range(len(source.shape)))
        shp = tuple(int(source.shape[a]) for a in self.axes)
        self.flat = scan_shape is not None
        if self.flat:
            if len(shp) != 3:
                raise ShapeError(f"flat patterns must have 3 axes (N, H, W), got {shp}")
            self.shape = (int(scan_shape[0]), int(scan_shape[1]), shp[1], shp[2])
        else:
            if len(shp) != 4:
                raise ShapeError(f"patterns must have 4 axes (Sy, Sx, H, W), got {shp}")
            self.shape = shp
        self.scan_order = scan_order
        self.dtype = np.dtype(getattr(source, "dtype", np.float32))
        self.ndim = 4

    def __len__(self) -> int:
        return self.shape[0]

    def _source_index(self, iy: np.ndarray, ix: np.ndarray):
        if self.flat:
            sy, sx = self.shape[:2]
            return (iy * sx + ix,) if self.scan_order == "C" else (iy + ix * sy,)
        return (iy, ix)

    def _read(self, iy: np.ndarray, ix: np.ndarray) -> np.ndarray:
        """Patterns at scan indices (iy, ix) (1-D, equal length) → (len, H, W), one read each."""
        H, W = self.shape[2:]
        out = np.empty((len(iy), H, W), dtype=self.dtype)
        scan_axes = self.axes[:-2]
        swap = self.axes[-2] > self.axes[-1]  # the two detector axes come out as (W, H)
        for j, idx in enumerate(zip(*self._source_index(iy, ix), strict=True)):
            key: list[Any] = [slice(None)] * len(self.source.shape)
            for a, v in zip(scan_axes, idx, strict=True):
                key[a] = int(v)
            block = np.asarray(self.source[tuple(key)])
            out[j] = block.T if swap else block
        return out

    def _canonical(self) -> np.ndarray:
        """The whole source in (Sy, Sx, H, W) order (one read)."""
        arr = np.asarray(self.source[()]).transpose(self.axes)
        if self.flat:
            sy, sx = self.shape[:2]
            if self.scan_order == "C":
                arr = arr.reshape(sy, sx, *arr.shape[1:])
            else:  # y fastest: flat n = iy + ix · Sy
                arr = arr.reshape(sx, sy, *arr.shape[1:]).swapaxes(0, 1)
        return arr

    def __getitem__(self, key) -> np.ndarray:
        if not isinstance(key, tuple):
            key = (key,)
        if any(k is Ellipsis for k in key):
            i = next(i for i, k in enumerate(key) if k is Ellipsis)
            key = key[:i] + (slice(None),) * (4 - len(key) + 1) + key[i + 1 :]
        key = key + (slice(None),) * (4 - len(key))
        full = slice(None)
        if key[0] == full and key[1] == full:
            return self._canonical()[(Ellipsis, key[2], key[3])]
        sy, sx = self.shape[:2]
        ky = np.arange(sy)[key[0]]
        kx = np.arange(sx)[key[1]]
        gy, gx = np.meshgrid(np.atleast_1d(ky), np.atleast_1d(kx), indexing="ij")
        if self.flat and self.scan_order == "C" and self.axes == (0, 1, 2):
            block = self._read_fast(gy.ravel(), gx.ravel())
        else:
            block = self._read(gy.ravel(), gx.ravel())
        block = block.reshape(*gy.shape, *self.shape[2:])
        if np.ndim(ky) == 0:
            block = block[0]
            if np.ndim(kx) == 0:
                block = block[0]
        elif np.ndim(kx) == 0:
            block = block[:, 0]
        return block[(Ellipsis, key[2], key[3])]

    def _read_fast(self, iy: np.ndarray, ix: np.ndarray) -> np.ndarray:
        """Row-major flat source: read one contiguous range (h5py needs increasing indices)."""
        flat = iy * self.shape[1] + ix
        lo, hi = int(flat.min()), int(flat.max()) + 1
        block = np.asarray(self.source[lo:hi])
        return block[flat - lo]

    def __array__(self, dtype=None, copy=None):
        arr = self[...]
        return arr.astype(dtype) if dtype is not None else arr


def normalised_calibrations(values: Mapping[str, Any] | None, path: str | Path) -> dict[str, Any]:
    """``values`` without its None entries: pairs as (y, x) floats, energy and semi-angle as floats, the scan shape as
    ints, aberrations under their canonical names (:class:`phasestem.physics.optics.Aberrations`), positions (N, 2)."""
    out: dict[str, Any] = {}
    for key, v in (values or {}).items():
        if v is None:
            continue
        if key in ("scan_step", "angular_sampling", "sampling", "scan_origin"):
            out[key] = number_pair(v, f"{path}: {key}")
        elif key in ("energy", "semiangle", "dose"):
            out[key] = float(v)
        elif key == "scan_shape":
            out[key] = (int(v[0]), int(v[1]))
        elif key == "aberrations":
            try:
                out[key] = Aberrations.from_dict(v).to_dict()
            except ValueError as err:
                raise ConfigError(f"{path}: aberrations: {err}") from None
        elif key == "positions":
            out[key] = np.asarray(v, dtype=np.float64).reshape(-1, 2)
        else:
            out[key] = v
    return out


def _pixel_mrad(vals: Mapping[str, Any], energy: float, shape: tuple[int, int]) -> tuple[float, float] | None:
    """The detector pixel (mrad) of one set of calibrations: its angular_sampling, else its real-space sampling."""
    if "angular_sampling" in vals:
        return vals["angular_sampling"]
    if "sampling" in vals:
        return angular_sampling_for(energy, vals["sampling"], shape)
    return None


def dataset_from_reader(patterns, path: str | Path, file_values: Mapping[str, Any] | None = None,
                  metadata: Mapping[str, Any] | None = None, defaults: Mapping[str, Any] | None = None,
                  require_calibration: bool = True, **options) -> FourDSTEM:
    """A :class:`FourDSTEM` from patterns (N, H, W) or (Sy, Sx, H, W) and reader options.

    ``file_values`` holds what the reader found in the file (same names as the options), ``defaults`` what a
    reader assumes when neither the file nor the options say (e.g. the seed-000 generator's 2 Å step). Explicit
    ``options`` win over the file, the file over ``defaults``; aberrations merge key by key.

    The metadata records ``calibration_from_file`` (what the file held), ``calibration_given`` (the options),
    ``calibration_sources`` (name → ``given``, ``file`` or ``default``; aberrations as ``aberrations.C10`` …) and
    ``calibration_conflicts``: the names whose given value differs from the file's by more than
    :data:`phasestem.base.provenance.SAME_VALUE_RTOL` (``sampling`` when a real-space pixel was given); the caller
    warns (:func:`phasestem.base.provenance.conflict_messages`). A flat pattern count that does not match
    ``scan_shape`` raises :class:`ShapeError` naming the file and both numbers; a missing energy or scan step
    raises :class:`MissingCalibrationError` naming the option, unless ``require_calibration=False`` (a first look
    that needs neither, ``phasestem inspect``): then they are NaN and ``metadata['uncalibrated']`` names them.
    """
    check_real(patterns, source_name(path, metadata))
    unknown = set(options) - set(COMMON_OPTIONS)
    if unknown:
        raise ConfigError(f"{path}: unknown reader option(s) {sorted(unknown)}; expected one of {list(COMMON_OPTIONS)}")
    layers = {"given": normalised_calibrations(options, path), "file": normalised_calibrations(file_values, path),
              "default": normalised_calibrations(defaults, path)}
    sources: dict[str, str] = {}

    def pick(name: str):
        for source, vals in layers.items():
            if name in vals:
                sources[name] = source
                return vals[name]
        return None

    shape = tuple(int(s) for s in patterns.shape)
    check_not_empty(shape, path)
    scan_order = str(pick("scan_order") or "C").upper()
    sources.pop("scan_order", None)
    if scan_order not in ("C", "F"):
        raise ConfigError(f"{path}: scan_order must be 'C' (x fastest) or 'F' (y fastest), got {scan_order!r}")

    scan_shape = pick("scan_shape")
    if len(shape) == 3:
        n = shape[0]
        if scan_shape is None:
            side = int(round(math.sqrt(n)))
            if side * side != n:
                raise ShapeError(f"{path}: {n} patterns do not form a square scan; {scan_shape_hint(n)}")
            scan_shape, sources["scan_shape"] = (side, side), "default"
        if scan_shape[0] * scan_shape[1] != n:
            raise ShapeError(
                f"{path}: the file holds {n} patterns but scan_shape {scan_shape[0]}×{scan_shape[1]} needs "
                f"{scan_shape[0] * scan_shape[1]}"
            )
        if isinstance(patterns, np.ndarray) and scan_order == "C":
            patterns4 = patterns.reshape(*scan_shape, *shape[1:])  # a view (memmap stays lazy)
        else:
            patterns4 = LazyView(patterns, scan_shape=scan_shape, scan_order=scan_order)
    elif len(shape) == 4:
        if scan_shape is not None and scan_shape != shape[:2]:
            raise ShapeError(
                f"{path}: the file holds a {shape[0]}×{shape[1]} scan ({shape[0] * shape[1]} patterns) but "
                f"scan_shape {scan_shape} needs {scan_shape[0] * scan_shape[1]}"
            )
        patterns4 = patterns
        layers["file"].setdefault("scan_shape", shape[:2])  # the array's own shape
        sources["scan_shape"] = "file"
    else:
        raise ShapeError(f"{path}: patterns must have 3 (N, H, W) or 4 (Sy, Sx, H, W) axes, got shape {shape}")

    uncalibrated = []
    if not require_calibration:  # NaN, never a plausible wrong number
        given_anywhere = {name for vals in layers.values() for name in vals}
        for name, unknown in (("energy", UNKNOWN), ("scan_step", (UNKNOWN, UNKNOWN))):
            if name not in given_anywhere and not (name == "scan_step" and "positions" in given_anywhere):
                layers["default"][name] = unknown
                uncalibrated.append(name)
    energy = pick("energy")
    if energy is None:
        raise MissingCalibrationError(
            f"{path}: the beam energy is not in the file; give it in eV (--energy on the command line, "
            "optics.energy in a parameter file, energy= in Python)", "energy")

    positions = pick("positions")
    if positions is not None and scan_order == "F" and len(shape) == 3:  # file order (y fastest) → row-major
        sy, sx = patterns4.shape[:2]
        positions = positions.reshape(sx, sy, 2).transpose(1, 0, 2).reshape(-1, 2)
    scan_step = pick("scan_step")
    if scan_step is None:
        if positions is None:
            raise MissingCalibrationError(
                f"{path}: the scan step is not in the file; give it in Å (--scan-step on the command line, "
                "scan.step in a parameter file, scan_step= in Python)", "scan_step")
        grid = GridScan.raster_from_positions(positions)
        scan_step = grid.step if grid is not None else (0.0, 0.0)
        sources["scan_step"] = sources["positions"]

    H, W = patterns4.shape[-2:]
    ang = None
    for source, vals in layers.items():  # a given real-space sampling beats the file's detector pixel
        ang = _pixel_mrad(vals, energy, (H, W))
        if ang is not None:
            sources["angular_sampling"] = source
            break
    semiangle = pick("semiangle")
    dose = pick("dose")  # a file's record only (e⁻/Å²; ≤ 0: noise-free), not an option
    scan_origin = pick("scan_origin") or (0.0, 0.0)
    sources.setdefault("scan_origin", "default")
    ab: dict[str, float] = {}
    for source in ("default", "file", "given"):
        for key, value in layers[source].get("aberrations", {}).items():
            ab[key] = value
            sources[f"aberrations.{key}"] = source

    held, given = dict(layers["file"]), dict(layers["given"])
    held.pop("positions", None)
    given.pop("positions", None)
    for vals in (held, given):  # the detector pixel both ways: mrad, and the real-space pixel (Å) it gives
        px = _pixel_mrad(vals, energy, (H, W))
        if px is not None:
            vals.setdefault("angular_sampling", px)
            vals.setdefault("sampling", angular_sampling_for(energy, px, (H, W)))  # λ/(N·x) both ways
    conflicts = []
    for name in ("energy", "scan_step", "scan_origin", "semiangle", "angular_sampling"):
        if name in given and name in held and not same_value(given[name], held[name]):
            conflicts.append(name)
    if conflicts[-1:] == ["angular_sampling"] and "angular_sampling" not in layers["given"]:
        conflicts[-1] = "sampling"  # given as a real-space pixel: say it in Å
    for key, value in given.get("aberrations", {}).items():
        if key in held.get("aberrations", {}) and not same_value(value, held["aberrations"][key]):
            conflicts.append(f"aberrations.{key}")
    meta = {"source": str(path), STORED_DTYPE_KEY: str(patterns_dtype(patterns4))}  # io.counts: counts by storage
    meta.update(dict(metadata or {}))
    meta.update(calibration_from_file=held, calibration_given=given, calibration_sources=sources,
                calibration_conflicts=conflicts)
    if uncalibrated:
        meta["uncalibrated"] = uncalibrated
    if dose is not None:
        meta["dose"] = dose
    return FourDSTEM(
        patterns=patterns4,
        energy=energy,
        scan_step=scan_step,
        angular_sampling=ang,
        semiangle=semiangle,
        aberrations=ab,
        scan_origin=scan_origin,
        positions=positions,
        metadata=meta,
    )


def check_not_empty(shape: tuple[int, ...], path: str | Path) -> None:
    """Refuse patterns with no pixel or no pattern (a 0 × 0 frame, an empty scan) naming the file."""
    if len(shape) >= 2 and min(shape[-2:]) <= 0:
        raise ShapeError(f"{path}: holds frames of {shape[-2]}×{shape[-1]} pixels; expected at least 1×1")
    if len(shape) > 2 and min(shape[:-2]) <= 0:
        raise ShapeError(f"{path}: holds no patterns (array of shape {shape}); expected at least one")


def source_name(path: str | Path, metadata: Mapping[str, Any] | None = None) -> str:
    """``file:dataset`` for messages (the dataset from ``metadata['patterns_key']`` when not in ``path``)."""
    key = (metadata or {}).get("patterns_key")
    name = str(path)
    return f"{name}:{key}" if key and not name.endswith(str(key)) else name


def patterns_dtype(patterns) -> np.dtype:
    """The NumPy dtype of an array-like (NumPy, h5py, dask, memmap, torch); float32 when it has none."""
    dt = getattr(patterns, "dtype", np.float32)
    if hasattr(dt, "is_complex"):  # a torch dtype
        return np.dtype(np.complex64 if dt.is_complex else np.float32 if dt.is_floating_point else np.int64)
    return np.dtype(dt)


def check_real(patterns, source: str) -> None:
    """Refuse complex or non-numeric patterns (they would be cast to real silently) naming ``source``."""
    dt = patterns_dtype(patterns)
    if dt.kind == "c":
        raise InputFileError(f"{source}: complex patterns ({dt}); expected real intensities — store |ψ|² "
                             "(or the part you mean) as a real array")
    if dt.kind not in "biuf":
        raise InputFileError(f"{source}: patterns of dtype {dt}; expected real numbers (integers or floats)")


def _rows_per_block(patterns, budget: int = 64 * 1024**2) -> int:
    """Scan rows per block so that one block of float32 patterns stays under ``budget`` bytes."""
    row = int(np.prod(patterns.shape[1:])) * 4
    return max(1, budget // max(row, 1))


def _row_blocks(patterns):
    """(first row, block as an ndarray) over the scan rows of (Sy, Sx, H, W) patterns, lazily read."""
    step = _rows_per_block(patterns)
    for r0 in range(0, int(patterns.shape[0]), step):
        yield r0, np.asarray(patterns[r0:r0 + step])


#: screening modes of :func:`screen_patterns` (``io.load(..., screen=…)``)
SCREEN_MODES = ("auto", "full")
#: ``screen='auto'`` checks every value of patterns up to this size (float32 bytes) …
SCREEN_FULL_BYTES = 1024**3
#: … and, above it, this many bytes of patterns in :data:`SCREEN_WINDOWS` runs spread evenly over the scan
SCREEN_SAMPLE_BYTES = 64 * 1024**2
SCREEN_WINDOWS = 16


def _sample_windows(patterns):
    """(row, first column, block (1, n, H, W)) of :data:`SCREEN_WINDOWS` runs of patterns along scan rows, spread
    evenly over the scan in reading order (the first and last patterns included), :data:`SCREEN_SAMPLE_BYTES` in
    all."""
    sy, sx = (int(n) for n in patterns.shape[:2])
    pattern = int(np.prod(patterns.shape[2:])) * 4
    per = int(min(sx, max(1, SCREEN_SAMPLE_BYTES // (SCREEN_WINDOWS * max(pattern, 1)))))
    seen = set()
    for start in np.linspace(0, sy * sx - 1, SCREEN_WINDOWS).astype(np.int64):
        row, c0 = divmod(int(start), sx)
        c0 = min(c0, sx - per)
        if (row, c0) not in seen:
            seen.add((row, c0))
            yield row, c0, np.asarray(patterns[row, c0:c0 + per])[None]


def screen_patterns(ds: FourDSTEM, mode: str = "refuse", screen: str = "auto") -> FourDSTEM:
    """Check that pattern values are finite, reading lazily in blocks of scan rows.

    ``mode='refuse'``: :class:`InputFileError` naming the file, dataset and first bad (iy, ix, ky, kx).
    ``mode='mask'``: NaN/Inf replaced by the median of their finite 3 × 3 neighbours (0 if none); the
    patterns are then held in memory (float32) and ``metadata['bad_pixels_masked']`` says how many.
    ``screen='auto'`` (refuse only) checks every value of patterns up to :data:`SCREEN_FULL_BYTES` (as float32)
    and a :data:`SCREEN_SAMPLE_BYTES` sample spread over the scan above that, so that opening a large file takes
    bounded time (``metadata['screened']`` says which; a NaN elsewhere is left to the stages that read the
    data); ``screen='full'`` checks every value whatever the size.
    """
    check_bad_pixel_mode(mode, "bad_pixels")
    if screen not in SCREEN_MODES:
        raise ConfigError(f"screen: expected one of {list(SCREEN_MODES)}, got {screen!r}")
    pats = ds.patterns
    if patterns_dtype(pats).kind != "f":
        return ds
    source = source_name(ds.metadata.get("file", ds.metadata.get("source", "patterns")), ds.metadata)
    hint = "use --bad-pixels mask (reconstruct: data.reader_options: {bad_pixels: mask}) to replace them by the " \
           "median of their finite neighbours"
    size = int(np.prod(pats.shape)) * 4
    if mode == "refuse" and screen == "auto" and size > SCREEN_FULL_BYTES:
        checked = 0
        for row, c0, block in _sample_windows(pats):
            check_finite(block, source, offset=(row, c0), what="pattern value", hint=hint)
            checked += block.shape[1]
        ds.metadata["screened"] = f"{checked} of {size // 4 // max(1, int(np.prod(pats.shape[2:])))} patterns"
        log.info("%s: checked %d patterns spread over the scan for NaN/Inf (the data hold %.3g GB as float32, more "
                 "than %d GiB); screen='full' (data.reader_options: {screen: full}) checks every value", source,
                 checked, size / 1e9, SCREEN_FULL_BYTES // 1024**3)
        return ds
    n_bad = 0
    for r0, block in _row_blocks(pats):
        if mode == "refuse":
            check_finite(block, source, offset=(r0,), what="pattern value", hint=hint)
        else:
            n_bad += int(block.size - np.count_nonzero(np.isfinite(block)))
    ds.metadata["screened"] = "all"
    if n_bad == 0:
        return ds
    out = np.empty(pats.shape, dtype=np.float32)
    for r0, block in _row_blocks(pats):
        out[r0:r0 + len(block)] = block
        mask_nonfinite(out[r0:r0 + len(block)])
    log.warning("%s: replaced %d non-finite pattern values by the median of their finite neighbours", source, n_bad)
    masked = ds._replace(patterns=out)
    masked.metadata["bad_pixels_masked"] = n_bad
    return masked


def decode(value) -> Any:
    """h5py attribute/dataset value → plain Python (bytes → str, 0-d → scalar)."""
    if isinstance(value, bytes):
        return value.decode()
    arr = np.asarray(value)
    if arr.dtype.kind in "SO" and arr.size == 1:
        v = arr.reshape(()).item()
        return v.decode() if isinstance(v, bytes) else v
    if arr.ndim == 0:
        return arr.item()
    return arr
