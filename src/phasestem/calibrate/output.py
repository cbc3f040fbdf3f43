"""What ``phasestem calibrate`` writes: corrected patterns, an editable params YAML and a JSON record."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .correct import corrected_chunks
from .pipeline import Calibration

CORRECTED = "calibrated.npy"


def write_corrected(dataset, calib: Calibration, path: str | Path) -> Path:
    """Patterns (Sy, Sx, H, W) float32 with bad pixels filled and the descan removed, in the file's
    detector axes (the transpose is left to ``data.transpose``); written chunk by chunk."""
    path = Path(path)
    out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(*dataset.scan_shape,
                                                                              *dataset.pattern_shape))
    for rows, block in corrected_chunks(dataset, calib.plan, calib.centres()):
        out[rows] = block
    out.flush()
    del out
    return path


def params_dict(calib: Calibration, data_file: str | Path, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """A ``phasestem reconstruct`` parameter mapping with the calibrated values."""
    from ..scan import GridScan

    dk = round(calib.angular_sampling, 6)
    rotation = round(calib.rotation, 3)
    pos = GridScan(calib.scan_shape, calib.scan_step, rotation=rotation).positions()
    origin = [float(np.ceil(-v * 1e4) / 1e4) for v in pos.min(0)]  # rounded up: positions ≥ 0 Å
    params: dict[str, Any] = {
        "data": {"file": str(data_file), "transpose": calib.transpose},
        "optics": {"energy": calib.energy, "semiangle": round(calib.semiangle, 4),
                   "aberrations": {k: round(v, 3) for k, v in calib.aberrations.items()},
                   "angular_sampling": [dk, dk]},
        "scan": {"shape": list(calib.scan_shape), "step": list(calib.scan_step),
                 "rotation": rotation, "origin": origin},
        # the descan/centre fit leaves a few hundredths of a pixel, which the object would otherwise take up
        # as a phase ramp (recon.constraints.transfer_phase_ramp; benchmarks/real_data: r 0.36 → 0.89)
        "constraints": {"obj_ramp": {"enabled": True}},
    }
    for key, val in (extra or {}).items():
        params.setdefault(key, {}).update(val)
    return params


def yaml_text(calib: Calibration, params: dict[str, Any], original: str | Path) -> str:
    """The params YAML with a header of comments recording what is not in the schema."""
    bp = calib.bad_pixels
    d = calib.disk.to_dict()
    lines = [
        f"# phasestem calibrate {original}",
        f"# {calib.summary()}",
        f"# data.file holds the patterns of {Path(original).name} with {bp.count} bad pixels filled from their "
        "neighbours and the descan removed:",
        f"#   hot (row, col): {bp.hot}",
        f"#   dead (row, col): {bp.dead}",
        f"#   descan plane (px, file axes): centre = {np.round(calib.disk.plane[0], 3).tolist()} + iy·"
        f"{np.round(calib.disk.plane[1], 4).tolist()} + ix·{np.round(calib.disk.plane[2], 4).tolist()}; "
        f"residual rms {d['residual_rms_px']:.3f} px, max {d['residual_max_px']:.3f} px",
    ]
    lines += [f"# note: {n}" for n in calib.notes]
    return "\n".join(lines) + "\n" + yaml.safe_dump(params, sort_keys=False)


def write_outputs(dataset, calib: Calibration, out_dir: str | Path, original: str | Path,
                  figures: bool = True, extra: dict[str, Any] | None = None) -> dict[str, Path]:
    """Write ``calibrated.npy``, ``params.yaml``, ``calibration.json`` and the fit figures into ``out_dir``."""
    from ..recon.params import parse_params

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"patterns": write_corrected(dataset, calib, out / CORRECTED)}
    params = params_dict(calib, CORRECTED, extra)
    parse_params(params, "calibrated params", out)  # the YAML must load as written
    files["params"] = out / "params.yaml"
    files["params"].write_text(yaml_text(calib, params, original))
    files["record"] = out / "calibration.json"
    files["record"].write_text(json.dumps(calib.to_dict(), indent=2))
    if figures:
        from .figures import write_figures

        files.update(write_figures(calib, out))
    return files
