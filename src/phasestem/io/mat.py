"""MATLAB ``.mat`` files: v5 (``scipy.io.loadmat``) and v7.3 (HDF5, read lazily with h5py).

PtychoShelves / fold_slice conventions
--------------------------------------
Shapes below are MATLAB's ``size(dp)``. MATLAB is column-major: ``scipy.io.loadmat`` returns
arrays with MATLAB's shape, while h5py sees a v7.3 array with its axes **reversed**
(``size`` (H, W, N) → h5py shape (N, W, H)); this reader undoes that, so ``layout`` always
describes MATLAB's ``size``.

``layout`` names each MATLAB axis: ``H`` (detector rows, ky), ``W`` (detector columns, kx),
``N`` (flat scan index), ``Y`` / ``X`` (scan rows / columns). Defaults:

* 3 axes → ``"HWN"``: ``dp(:, :, n)`` is pattern n, as PtychoShelves stores ``/dp``. The flat
  index follows MATLAB's column-major ``reshape(dp, H, W, [])`` of a (H, W, Sy, Sx) array, i.e.
  **y fastest** (``scan_order='F'``); pass ``scan_order='C'`` for x-fastest data.
* 4 axes → ``"HWYX"``: ``dp(:, :, iy, ix)``, fold_slice's ``[ndpy, ndpx, npy, npx] = size(dp)``.

Other layouts: ``"NHW"``, ``"YXHW"`` (e.g. a NumPy (Sy, Sx, H, W) array saved with
``scipy.io.savemat``), ``"XYHW"``, ``"HWXY"`` … Detector transposes beyond that (fold_slice's
``permute(dp, [2 1 3])``) are done with :meth:`FourDSTEM.transformed`.

Metadata read when present (names configurable with ``keys={...}``): ``voltage`` (kV → energy),
``alpha`` (semi-angle, mrad), ``scan_step_size`` (Å), ``dk`` (Å⁻¹ per detector pixel →
angular sampling ``λ·dk``), ``rbf`` (bright-field disk radius in px → ``alpha / rbf`` mrad/px
when ``dk`` is absent). fold_slice's ``defocus`` is recorded in ``metadata`` only — its sign
convention is not applied; give ``aberrations`` explicitly.

Options: ``patterns_key`` (default: the first of dp, cbed, data, dps, patterns, dp_set present),
``layout``, ``keys``, plus the common options (:mod:`phasestem.io._common`).
"""
from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

from ..base.errors import ConfigError, InputFileError
from ..dataset import FourDSTEM
from ._common import LazyView, dataset_from_reader, missing_key
from .hdf5 import open_file

PATTERN_KEYS = ("dp", "cbed", "data", "dps", "patterns", "dp_set")
DEFAULT_KEYS = {"voltage": "voltage", "alpha": "alpha", "scan_step_size": "scan_step_size", "dk": "dk",
                "rbf": "rbf", "defocus": "defocus"}


def _is_v73(path: Path) -> bool:
    return h5py.is_hdf5(path)


def _scalar(value) -> float | None:
    try:
        arr = np.asarray(value, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        return None
    return float(arr[0]) if arr.size >= 1 else None


def _layout_axes(layout: str, ndim: int, path: Path) -> tuple[str, tuple[int, ...], bool]:
    """MATLAB layout → (canonical order 'NHW'/'YXHW', axes permutation of the MATLAB array, flat)."""
    layout = layout.upper()
    flat = ndim == 3
    target = "NHW" if flat else "YXHW"
    if len(layout) != ndim or sorted(layout) != sorted(target):
        raise ConfigError(
            f"{path}: layout '{layout}' does not fit a {ndim}-axis array; use a permutation of '{target}' "
            f"(H, W detector rows/cols; {'N flat scan index' if flat else 'Y, X scan rows/cols'})"
        )
    return target, tuple(layout.index(c) for c in target), flat


def read(path: str | Path, patterns_key: str | None = None, layout: str | None = None,
         keys: dict[str, str] | None = None, allow_external_links: bool = False, **options) -> FourDSTEM:
    """Read a .mat file (v5 eagerly, v7.3 lazily, its HDF5 structure checked first:
    :func:`phasestem.io.hdf5.open_file`) → :class:`FourDSTEM`."""
    path = Path(path)
    names = dict(DEFAULT_KEYS)
    if keys:
        unknown = set(keys) - set(DEFAULT_KEYS)
        if unknown:
            raise ConfigError(f"{path}: unknown entries {sorted(unknown)} in keys=; expected {sorted(DEFAULT_KEYS)}")
        names.update(keys)
    v73 = _is_v73(path)
    if v73:
        f = open_file(path, "MATLAB v7.3 file", allow_external_links)
        present = [k for k in f.keys() if not k.startswith("#")]
        getter = f
    else:
        import scipy.io

        try:
            getter = scipy.io.loadmat(path)
        except (ValueError, NotImplementedError, OSError) as err:
            raise InputFileError(f"{path}: not a readable MATLAB .mat file ({err})") from None
        present = [k for k in getter if not k.startswith("__")]
    if patterns_key is None:
        patterns_key = next((k for k in PATTERN_KEYS if k in present), None)
        if patterns_key is None:
            raise missing_key(path, "/".join(PATTERN_KEYS), present)
    elif patterns_key not in present:
        raise missing_key(path, patterns_key, present)

    raw = getter[patterns_key]
    ndim = len(raw.shape)
    if ndim not in (3, 4):
        raise InputFileError(f"{path}: '{patterns_key}' must have 3 or 4 axes, got shape {tuple(raw.shape)}")
    layout = layout or ("HWN" if ndim == 3 else "HWYX")
    target, perm, flat = _layout_axes(layout, ndim, path)
    # axes of the array as stored in Python: reversed for v7.3
    if v73:
        perm = tuple(ndim - 1 - a for a in perm)
        matlab_shape = tuple(reversed(raw.shape))
    else:
        matlab_shape = tuple(raw.shape)
    if flat:
        opts = dict(options)
        opts.setdefault("scan_order", "F")
        n = matlab_shape[layout.upper().index("N")]
        scan_shape = opts.get("scan_shape")
        if scan_shape is None:
            side = int(round(np.sqrt(n)))
            scan_shape = (side, side) if side * side == n else None
        if scan_shape is not None and int(scan_shape[0]) * int(scan_shape[1]) == n:
            patterns = LazyView(raw, scan_shape=tuple(int(s) for s in scan_shape), axes=perm,
                                scan_order=str(opts["scan_order"]).upper())
        else:  # let dataset_from_reader report the mismatch with the file's pattern count
            patterns = _Shape3(n, matlab_shape, layout)
        opts.pop("scan_order")
        options = opts
    else:
        patterns = LazyView(raw, axes=perm)

    found: dict = {}
    meta: dict = {"format": "mat-v7.3" if v73 else "mat-v5", "patterns_key": patterns_key, "layout": layout.upper(),
                  "matlab_shape": matlab_shape}

    def value(name):
        key = names[name]
        return _scalar(getter[key][()] if v73 else getter[key]) if key in present else None

    voltage = value("voltage")
    if voltage is not None:
        found["energy"] = voltage * 1e3
    alpha = value("alpha")
    if alpha is not None:
        found["semiangle"] = alpha
    step = value("scan_step_size")
    if step is not None:
        found["scan_step"] = step
    defocus = value("defocus")
    if defocus is not None:
        meta["fold_slice_defocus"] = defocus
    energy = options.get("energy") or found.get("energy")
    dk, rbf = value("dk"), value("rbf")
    if dk is not None and energy:
        from ..physics.optics import wavelength

        found["angular_sampling"] = wavelength(float(energy)) * dk * 1e3
    elif rbf and (options.get("semiangle") or alpha):
        found["angular_sampling"] = float(options.get("semiangle") or alpha) / rbf
    return dataset_from_reader(patterns, path, file_values=found, metadata=meta, **options)


class _Shape3:
    """Stands in for flat patterns whose count does not fit the scan (only ``.shape`` is used)."""

    def __init__(self, n: int, matlab_shape, layout: str):
        lay = layout.upper()
        self.shape = (n, matlab_shape[lay.index("H")], matlab_shape[lay.index("W")])
