"""The numeric input files of ``phasestem reconstruct`` besides the patterns, read and range-checked once.

``data.detector_shifts``, ``scan.positions_file``, ``model.initial_phase``, ``model.initial_probe`` and
``data.ground_truth_key`` are arrays in ``.npy``, ``.npz`` or HDF5 files. :func:`read_array` reads them without
unpickling and refuses what would otherwise be cast or propagated silently: an unreadable or empty file, a
non-numeric or boolean array, a complex array where a real one is meant (numpy would drop the imaginary part
with a ``ComplexWarning``), an empty array, NaN or Inf. The ``check_*`` functions refuse shapes and values
outside the physical range (a shift off the detector, a phase image outside the scanned field, a probe with
no or overflowing intensity). Every refusal is one :class:`~phasestem.base.errors.PhasestemError` line naming the
file; :func:`field` prefixes the YAML field it came from.
"""
from __future__ import annotations

import contextlib
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..base.errors import InputFileError, PhasestemError, ShapeError
from ..io.arrays import load_array

#: the largest |phase| (rad) an initial phase image may hold: the engine's limit of a physical object
#: (:data:`phasestem.recon.engine.PHYSICAL_LIMIT`), beyond which a run stops at once
PHASE_LIMIT = 1e3

#: total probe intensity Σ|ψ|² a probe file may hold: float32 squares overflow above ~3e38
PROBE_POWER_RANGE = (1e-30, 1e37)


@contextlib.contextmanager
def field(name: str) -> Iterator[None]:
    """Re-raise a :class:`PhasestemError` raised inside as the same class, prefixed ``name: ``."""
    try:
        yield
    except PhasestemError as exc:
        raise type(exc)(f"{name}: {exc}") from None


def _load(path: Path, key: str | None, what: str, default_h5_key: str | None,
          allow_external_links: bool = False) -> np.ndarray:
    """The array as stored, through :func:`phasestem.io.arrays.load_array` (declared sizes checked against the
    file, memory bounded, nothing unpickled)."""
    return load_array(path, key, what, default_h5_key, allow_external_links)


def read_array(path: str | Path, key: str | None = None, what: str = "array", *,
               default_h5_key: str | None = None, complex_ok: bool = False,
               allow_external_links: bool = False) -> np.ndarray:
    """One finite, non-empty numeric array from ``.npy``, ``.npz`` (``key``, or its only array) or HDF5 (``key``,
    else ``default_h5_key``), as stored (no cast). ``complex_ok``: complex values are allowed (a probe);
    otherwise the array must be real (integers or floats). ``allow_external_links``: an HDF5 file's links and
    sources may leave its folder (the user's opt-in, :mod:`phasestem.base.hdf5_links`)."""
    path = Path(path)
    if not path.exists():
        raise InputFileError(f"{path} not found ({what})")
    if path.is_dir():
        raise InputFileError(f"{path}: {what} must be a file, got a folder")
    try:
        arr = np.asarray(_load(path, key, what, default_h5_key, allow_external_links))
    except PhasestemError:
        raise
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise InputFileError(f"{path} ({what}): not a readable {path.suffix or 'array'} file ({reason})") from None
    kinds = "iufc" if complex_ok else "iuf"
    if arr.dtype.kind not in kinds:
        expected = "real or complex numbers" if complex_ok else "real numbers (integers or floats)"
        found = "complex values (the imaginary part would be dropped)" if arr.dtype.kind == "c" else \
            f"values of dtype {arr.dtype}"
        raise InputFileError(f"{path} ({what}): {found}; expected {expected}")
    if arr.size == 0:
        raise ShapeError(f"{path} ({what}): empty array (shape {arr.shape})")
    bad = ~np.isfinite(arr)
    if bad.any():
        first = tuple(int(i) for i in np.argwhere(bad)[0])
        raise ShapeError(f"{path} ({what}): {int(bad.sum())} of {arr.size} values are NaN or Inf (the first at index "
                         f"{first}); expected finite numbers")
    return arr


def check_shifts_on_detector(shifts: np.ndarray, path: str | Path, pattern_shape: tuple[int, int]) -> None:
    """Refuse detector shifts (N, 2) px (the patterns' frame) that put a disk centre off the detector: each
    |shift| must be at most half the detector's extent along its axis."""
    half = np.asarray(pattern_shape, dtype=np.float64) / 2
    off = (np.abs(shifts) > half).any(-1)
    if off.any():
        j = int(np.argmax(off))
        raise ShapeError(f"{path}: the shift ({shifts[j, 0]:.3g}, {shifts[j, 1]:.3g}) px of pattern {j} (and "
                         f"{int(off.sum()) - 1} more) puts the disk centre off the {pattern_shape[0]} × "
                         f"{pattern_shape[1]} px detector: shifts are detector pixels from the central pixel, at most "
                         f"{half[0]:g} × {half[1]:g} px")


def check_grid_shape(arr: np.ndarray, path: str | Path, scan_shape: tuple[int, int], what: str) -> np.ndarray:
    """(N, 2) or (Sy, Sx, 2) ``arr`` of ``scan_shape`` → (N, 2); refuse any other shape."""
    n = int(scan_shape[0]) * int(scan_shape[1])
    if arr.ndim == 3 and arr.shape[-1] == 2:
        if tuple(arr.shape[:2]) != tuple(scan_shape):
            raise ShapeError(f"{path} holds {arr.shape[0]} × {arr.shape[1]} {what} for a {scan_shape[0]} × "
                             f"{scan_shape[1]} scan")
        return arr.reshape(-1, 2)
    if arr.ndim == 2 and arr.shape[-1] == 2:
        if len(arr) != n:
            raise ShapeError(f"{path} holds {len(arr)} {what} for {n} patterns")
        return arr
    raise ShapeError(f"{path}: {what} must be (N, 2) or (Sy, Sx, 2), got shape {arr.shape}")


def check_phase_image(phase: np.ndarray, path: str | Path, sampling: tuple[float, float],
                      target: tuple[float, float], positions: np.ndarray) -> None:
    """Refuse a phase image (Ny, Nx) rad at ``sampling`` Å, pixel (0, 0) at 0 Å of the dataset frame, that is out
    of the physical range (|φ| > :data:`PHASE_LIMIT`), would be less than 2 × 2 pixels of ``target`` Å, or does not
    overlap the scanned field (the bounding box of ``positions`` (N, 2) Å)."""
    peak = float(np.abs(phase).max())
    if peak > PHASE_LIMIT:
        raise ShapeError(f"{path}: phase values up to {peak:.3g} rad; a phase image in rad stays within "
                         f"±{PHASE_LIMIT:g} (the run would stop at once)")
    size = np.asarray(phase.shape, dtype=np.float64) * np.asarray(sampling, dtype=np.float64)
    if (size / np.asarray(target) < 2).any():
        raise ShapeError(f"{path}: the {phase.shape[0]} × {phase.shape[1]} px image at {sampling[0]:.4g} × "
                         f"{sampling[1]:.4g} Å/px spans {size[0]:.3g} × {size[1]:.3g} Å, less than 2 × 2 object "
                         f"pixels of {target[0]:.4g} Å (check its sampling)")
    lo, hi = positions.min(0), positions.max(0)
    if (size <= lo).any() or (hi < 0).any():
        raise ShapeError(f"{path}: the image spans y 0–{size[0]:.4g} Å, x 0–{size[1]:.4g} Å of the dataset frame "
                         f"but the scan covers y {lo[0]:.4g}–{hi[0]:.4g} Å, x {lo[1]:.4g}–{hi[1]:.4g} Å: they do not "
                         "overlap (pixel (0, 0) of the image is at 0 Å; check its sampling and scan.origin)")


def check_probe(probe: np.ndarray, path: str | Path, window: tuple[int, int]) -> None:
    """Refuse probe modes (M, ny, nx) whose window is not ``window`` or whose total intensity is zero or beyond
    float32 (the model normalises the probe to Σ|ψ|² = 1)."""
    if tuple(probe.shape[-2:]) != tuple(window):
        raise ShapeError(f"{path}: probe window {tuple(probe.shape[-2:])} must equal the pattern shape "
                         f"{tuple(window)}")
    power = float(np.sum(np.abs(probe.astype(np.complex128)) ** 2))
    lo, hi = PROBE_POWER_RANGE
    if not lo <= power <= hi:
        raise ShapeError(f"{path}: the probe's total intensity Σ|ψ|² is {power:.3g}; expected between {lo:g} and "
                         f"{hi:g} (it is normalised to 1: any scale in that range works)")


def load_phase_image(path: str | Path, key: str | None = None, allow_external_links: bool = False) -> np.ndarray:
    """Read a 2-D phase image (rad) from ``.npy``, ``.npz`` (``key``) or HDF5 (``key``; ``allow_external_links``:
    as :func:`read_array`)."""
    arr = read_array(path, key, "initial phase image", allow_external_links=allow_external_links)
    if arr.ndim != 2:
        raise ShapeError(f"{path}: initial phase must be a 2-D image (y, x), got shape {arr.shape}")
    return arr.astype(np.float32)


def load_probe_file(path: str | Path, key: str | None = None) -> np.ndarray:
    """Read complex probe modes (M, ny, nx) from ``.npy``, ``.npz`` (``key``) or HDF5 (``key``; a phasestem
    ``results.h5`` needs none: ``probe/real_space`` is used). A 2-D array is one mode."""
    arr = read_array(path, key, "initial probe", default_h5_key="probe/real_space", complex_ok=True)
    if arr.ndim == 2:
        arr = arr[None]
    if arr.ndim != 3:
        raise ShapeError(f"{path}: initial probe must be (M, ny, nx) or (ny, nx), got shape {arr.shape}")
    return arr.astype(np.complex64)
