"""What ``phasestem calibrate`` writes: corrected patterns, an editable params YAML and a JSON record."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from ..base.safety import atomic_file
from ..io._common import STORED_DTYPE_KEY
from ..io.counts import holds_whole_counts
from .correct import corrected_chunks, whole_pixel_shifts
from .pipeline import Calibration

CORRECTED = "calibrated.npy"
DETECTOR_SHIFTS = "detector_shifts.npy"


def write_corrected(dataset, calib: Calibration, path: str | Path, subpixel: bool = False) -> Path:
    """Patterns (Sy, Sx, H, W) with bad pixels filled and the descan removed, in the file's detector axes (the
    transpose is left to ``data.transpose``); written chunk by chunk. Float32, except that counted patterns
    (``calib.counts``) stored as whole counts and moved by whole pixels stay whole counts: bad pixels filled with
    whole counts, and the file's own integer type kept where it has one (uint16 stays uint16).

    By default each pattern moves by whole pixels only, so the counts are not resampled (a sub-pixel
    interpolation blurs the disk edge by an amount that follows the descan's fractional part across the scan,
    a pattern the object then takes up as a phase: ``benchmarks/real_data``). The rest, within ±½ px, is what
    :func:`descan_rest` returns, for ``data.detector_shifts``. ``subpixel=True`` resamples the whole move."""
    path = Path(path)
    whole = calib.counts is not None and calib.counts.counted and not subpixel and holds_whole_counts(dataset)
    dtype = np.float32
    if whole and np.issubdtype(stored := np.dtype(dataset.metadata.get(STORED_DTYPE_KEY, "float32")), np.integer):
        dtype = stored
    with atomic_file(path) as tmp:
        out = np.lib.format.open_memmap(tmp, mode="w+", dtype=dtype,
                                        shape=(*dataset.scan_shape, *dataset.pattern_shape))
        for rows, block in corrected_chunks(dataset, calib.plan, calib.centres(), subpixel=subpixel, whole=whole):
            out[rows] = np.rint(block) if whole else block  # whole-pixel moves: exact, rint only drops float dust
        out.flush()
        del out
    return path


def descan_rest(calib: Calibration) -> np.ndarray:
    """(Sy, Sx, 2) px, file axes: where each disk centre sits relative to the central pixel after the whole-pixel
    moves of :func:`write_corrected` (|rest| ≤ ½ px)."""
    return whole_pixel_shifts(calib.centres(), calib.pattern_shape)[1].astype(np.float32)


def yaml_text(calib: Calibration, params: dict[str, Any], original: str | Path) -> str:
    """The params YAML with a header of comments recording what is not in the schema."""
    bp = calib.bad_pixels
    d = calib.disk.to_dict()
    lines = [
        f"# phasestem calibrate {original}",
        f"# {calib.summary()}",
        f"# data.file holds the patterns of {Path(original).name} with {bp.count} bad pixels filled from their "
        "neighbours and the descan removed " + ("to the nearest whole pixel (the rest: data.detector_shifts):"
                                                if params["data"].get("detector_shifts") else "by resampling:"),
        f"#   hot (row, col): {bp.hot}",
        f"#   dead (row, col): {bp.dead}",
        f"#   descan plane (px, file axes): centre = {np.round(calib.disk.plane[0], 3).tolist()} + iy·"
        f"{np.round(calib.disk.plane[1], 4).tolist()} + ix·{np.round(calib.disk.plane[2], 4).tolist()}; "
        f"residual rms {d['residual_rms_px']:.3f} px, max {d['residual_max_px']:.3f} px",
    ]
    if calib.counts is not None:
        lines.append(f"# data.counts {str(calib.counts.counted).lower()}: {Path(original).name}: {calib.counts.reason}")
    lines += [f"# note: {n}" for n in calib.notes]
    return "\n".join(lines) + "\n" + yaml.safe_dump(params, sort_keys=False)


def write_outputs(dataset, calib: Calibration, out_dir: str | Path, original: str | Path,
                  figures: bool = True, resample_descan: bool = False) -> dict[str, Path]:
    """Write ``calibrated.npy``, ``detector_shifts.npy``, ``params.yaml``, ``calibration.json`` and the fit figures
    into ``out_dir``. ``resample_descan``: resample the counts for the whole descan (no detector_shifts.npy)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"patterns": write_corrected(dataset, calib, out / CORRECTED, subpixel=resample_descan)}
    if not resample_descan:
        files["detector_shifts"] = out / DETECTOR_SHIFTS
        with atomic_file(files["detector_shifts"]) as tmp, open(tmp, "wb") as fh:  # a file object: no suffix added
            np.save(fh, descan_rest(calib))
    params = calib.params_dict(CORRECTED, None if resample_descan else DETECTOR_SHIFTS)
    files["params"] = out / "params.yaml"
    files["record"] = out / "calibration.json"
    for name, text in (("params", yaml_text(calib, params, original)),
                       ("record", json.dumps(calib.to_dict(), indent=2))):
        with atomic_file(files[name]) as tmp:
            tmp.write_text(text)
    if figures:
        from .figures import write_figures

        files.update(write_figures(calib, out))
    return files
