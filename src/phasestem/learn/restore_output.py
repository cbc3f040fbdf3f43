"""What ``phasestem restore`` leaves beside its output file ``OUT.h5``, and the lines it prints.

* :func:`write_restored`: ``OUT.h5`` with the restored phase, the run's phase, the field and the σ change, and
  where the crop sits in the run's object (:func:`crop_placement`);
* :func:`companion_paths`: the figure ``OUT.png`` and the log ``OUT.log`` (appended, one block per restore);
* :func:`change_line`: the share of the field changed by more than the threshold σ with the share pure noise
  gives (:func:`phasestem.metrics.chance_beyond`), or :func:`no_sigma_reason` when the run has no σ map.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..base.errors import ConfigError

__all__ = ["companion_paths", "crop_placement", "write_restored", "placement_line", "change_line",
           "no_sigma_reason", "figure_title"]


def companion_paths(out_file: str | Path) -> tuple[Path, Path]:
    """(figure ``OUT.png``, log ``OUT.log``) beside the output file; refused in one line when either is the output
    file itself."""
    out = Path(out_file)
    figure, log = out.with_suffix(".png"), out.with_suffix(".log")
    if out in (figure, log):
        raise ConfigError(f"--out-file {out}: give an HDF5 name (OUT.h5): OUT.png and OUT.log are written beside it")
    return figure, log


def crop_placement(origin_px: tuple[int, int], shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """Where an output of ``shape`` (h, w) sits in the run's object: ``crop_offset`` (row, col) object pixels of
    its pixel (0, 0) (the run's origin, ``origin_px``: output pixel (i, j) is object pixel (i + row, j + col)),
    ``crop_shape`` (h, w) and ``object_shape`` (h + row, w + col), int64."""
    offset = np.asarray([int(o) for o in origin_px], np.int64)
    size = np.asarray(shape[:2], np.int64)
    return {"crop_offset": offset, "crop_shape": size, "object_shape": size + offset}


def write_restored(path: str | Path, phase: np.ndarray, info: dict[str, Any], model: str, results: str) -> dict:
    """Write ``OUT.h5`` (atomically): ``phase``, ``input``, ``field``, ``change_sigma`` when ``info`` has it, and the
    attributes sampling (Å), model, results, units, format and :func:`crop_placement`. Returns the placement."""
    import h5py

    from ..base.safety import atomic_file

    placement = crop_placement(info["origin_px"], phase.shape)
    with atomic_file(Path(path)) as tmp, h5py.File(tmp, "w") as f:
        f["phase"], f["input"], f["field"] = phase, info["input"], info["field"]
        if info.get("change_sigma") is not None:
            f["change_sigma"] = np.asarray(info["change_sigma"], np.float32)
        f.attrs.update({"sampling": np.asarray(info["sampling"]), "model": str(model), "results": str(results),
                        "units": "rad", "format": "phasestem-restored", **placement})
    return placement


def placement_line(placement: dict[str, np.ndarray], sampling: tuple[float, float], out_file) -> str:
    """The printed line of the output's size and where it sits in the run's object."""
    (h, w), (ny, nx), (row, col) = placement["crop_shape"], placement["object_shape"], placement["crop_offset"]
    return (f"restored phase {h}×{w} px at {sampling[0]:.4g} Å → {out_file}: the run's object ({ny}×{nx} px) from "
            f"row {row}, col {col} (attrs crop_offset, crop_shape)")


def no_sigma_reason(results: str | Path) -> str:
    """Why the run at ``results`` has no σ map: ``run.uncertainty: off`` when its recorded parameters say so, else
    the run log beside it (the results file records no reason)."""
    import h5py
    import yaml

    with h5py.File(results, "r") as f:
        config = f.attrs.get("config")
    try:
        recorded = yaml.safe_load(config) if isinstance(config, str) else None
    except yaml.YAMLError:
        recorded = None
    run = recorded.get("run") if isinstance(recorded, dict) else None
    if isinstance(run, dict) and str(run.get("uncertainty", "")).lower() in ("off", "false"):  # YAML 1.1: off → False
        return "the run was made with run.uncertainty: off"
    return f"the run computed no σ (its log says why: {Path(results).parent / 'reconstruct.log'})"


def figure_title(info: dict[str, Any], model: str) -> str:
    """The figure's title: the model, and the share of the field beyond the threshold σ beside chance's."""
    from ..metrics import chance_beyond

    if info.get("change_sigma") is None:
        return f"restorer {model}: no σ map, the change is not judged against the data's noise"
    level = float(info["significant"])
    return (f"restorer {model}: {100 * float(info['unsupported']):.2f} % of the scanned field changed by more than "
            f"{level:g} σ of the data ({100 * chance_beyond(level):.2f} % would be chance)")


def change_line(info: dict[str, Any], results: str | Path, out_file) -> str:
    """The printed line judging the restorer's change against the data's σ: the share of the field beyond
    ``info['significant']`` σ beside the share pure noise gives; or why it cannot be judged."""
    from ..metrics import chance_beyond

    if info.get("change_sigma") is None:
        return f"no σ map in {results}: {no_sigma_reason(results)}; the change is not judged against the data's noise"
    share, level = float(info["unsupported"]), float(info["significant"])
    chance = chance_beyond(level)
    verdict = ("features there are the network's, not the data's" if share > chance else "within the noise")
    return (f"the restorer changed {100 * share:.2f} % of the scanned field by more than {level:g} σ of the data "
            f"({100 * chance:.2f} % would be chance; change_sigma in {out_file}): {verdict}")
