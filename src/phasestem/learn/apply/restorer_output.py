"""What ``phasestem restore`` leaves beside its output file ``OUT.h5``, and the lines it prints.

* :func:`write_restored`: ``OUT.h5`` with the restored phase, the run's phase, the field and the σ change, the data
  guard's map and sites (:func:`write_guard`), and where the crop sits in the run's object (:func:`crop_placement`);
* :func:`companion_paths`: the figure ``OUT.png`` and the log ``OUT.log`` (appended, one block per restore);
* :func:`refuse_unsafe_output`: what ``OUT.h5`` and its companions may never be: another suffix than HDF5's, one of
  the inputs (the results file, the files of its run, the model or any file of its run folder: links resolved), or
  an existing file that is not a previous restoration's (one is replaced only with ``--replace``);
* :func:`change_line`: the share of the field changed by more than the threshold σ with the share pure noise
  gives (:func:`phasestem.metrics.chance_beyond`), or :func:`no_sigma_reason` when the run has no σ map.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from ...base.errors import ConfigError

__all__ = ["companion_paths", "crop_placement", "write_restored", "write_guard", "placement_line", "change_line",
           "no_sigma_reason", "figure_title", "refuse_unsafe_output", "is_restoration", "RESTORED_FORMAT"]

#: the ``format`` attribute of a file ``restore`` wrote: the only kind of file it replaces (with ``--replace``)
RESTORED_FORMAT = "phasestem-restored"
#: the suffixes of the file ``restore`` writes (HDF5)
OUTPUT_SUFFIXES = (".h5", ".hdf5")
#: what the first line of a restore's log holds (:mod:`phasestem.cli.restore`)
_LOG_MARK = " INFO phasestem restore "


def companion_paths(out_file: str | Path) -> tuple[Path, Path]:
    """(figure ``OUT.png``, log ``OUT.log``) beside the output file; refused in one line unless the output file
    ends in .h5 or .hdf5 (the file is HDF5, and a figure or log suffix would make it its own companion)."""
    out = Path(out_file)
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise ConfigError(f"--out-file {out}: restore writes HDF5; expected a name ending in .h5 or .hdf5 (e.g. "
                          f"{out.with_suffix('.h5').name}; OUT.png and OUT.log are written beside OUT.h5)")
    return out.with_suffix(".png"), out.with_suffix(".log")


def is_restoration(path: str | Path) -> bool:
    """True when ``path`` is an HDF5 file ``restore`` wrote (attrs format == :data:`RESTORED_FORMAT`)."""
    import h5py

    if not os.path.isfile(path):  # a folder, a pipe, a link to nothing
        return False
    try:
        with h5py.File(path, "r") as f:
            return f.attrs.get("format") == RESTORED_FORMAT
    except (OSError, ValueError):  # not HDF5, a folder, unreadable
        return False


def _is_restore_log(path: Path) -> bool:
    """True when ``path`` is a log an earlier ``restore`` began (its first line is a restore's)."""
    if not path.is_file():
        return False
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            return _LOG_MARK in fh.readline(4096)
    except OSError:
        return False


def _model_files(model: str) -> list[Path]:
    """The files a ``--model`` value reads: the weights file, every file of a run folder, or a shipped name's
    weights."""
    from ..pretrained import model_dir, registry

    path = Path(model)
    if path.is_dir():
        return [path, *(p for p in path.rglob("*") if p.is_file())]
    if os.path.lexists(path):
        return [path]
    entry = registry().get(str(model))
    return [model_dir() / str(entry["file"])] if entry and entry.get("file") else []


def refuse_unsafe_output(out_file: str | Path, results: str | Path, model: str, replace: bool = False) -> None:
    """Refuse, in one line naming ``--out-file``, an output ``restore`` must not write: a suffix other than .h5 /
    .hdf5 (:func:`companion_paths`); ``OUT.h5``, ``OUT.png`` or ``OUT.log`` being one of its inputs (the results
    file, the other files of its run, the model's files: links and relative paths resolved); an existing ``OUT.h5``
    that is not a previous restoration (:func:`is_restoration`), or is one without ``replace``; an existing
    ``OUT.png`` not beside a previous restoration; an existing ``OUT.log`` that is not a restore's log."""
    from ...base.safety import refuse_output_over_inputs
    from ..hybrid import run_files

    out = Path(out_file)
    figure, log = companion_paths(out)
    refuse_output_over_inputs([out, figure, log], [results, *run_files(results), *_model_files(model)],
                              field="--out-file")
    previous = os.path.lexists(out) and is_restoration(out)
    if os.path.lexists(out) and not previous:
        raise ConfigError(f"--out-file {out}: exists and is not a restoration (HDF5 with attrs format "
                          f"{RESTORED_FORMAT!r}); expected a new name: restore replaces only its own earlier output")
    if previous and not replace:
        raise ConfigError(f"--out-file {out}: holds a previous restoration; expected a new name, or --replace to "
                          f"replace it (and {figure.name}; {log.name} is appended to)")
    if os.path.lexists(figure) and not previous:
        raise ConfigError(f"--out-file {out}: its figure {figure} exists and is not a restoration's (no restoration "
                          f"{out.name} beside it); expected a name whose .png is free")
    if os.path.lexists(log) and not _is_restore_log(log):
        raise ConfigError(f"--out-file {out}: its log {log} exists and is not a restore's log; expected a name whose "
                          ".log is free or an earlier restore's")


def crop_placement(origin_px: tuple[int, int], shape: tuple[int, int]) -> dict[str, np.ndarray]:
    """Where an output of ``shape`` (h, w) sits in the run's object: ``crop_offset`` (row, col) object pixels of
    its pixel (0, 0) (the run's origin, ``origin_px``: output pixel (i, j) is object pixel (i + row, j + col)),
    ``crop_shape`` (h, w) and ``object_shape`` (h + row, w + col), int64."""
    offset = np.asarray([int(o) for o in origin_px], np.int64)
    size = np.asarray(shape[:2], np.int64)
    return {"crop_offset": offset, "crop_shape": size, "object_shape": size + offset}


def write_restored(path: str | Path, phase: np.ndarray, info: dict[str, Any], model: str, results: str,
                   replace: bool = False, guard=None, verdict=None) -> dict:
    """Write ``OUT.h5`` (atomically, built in memory: a full disk is one line and the old file is kept):
    ``phase``, ``input``, ``field``, ``change_sigma`` when ``info`` has it, the data guard's tables when ``guard``
    (a :class:`phasestem.learn.data_guard.DataGuardResult`; :func:`write_guard`), the site table of ``verdict`` (a
    :class:`phasestem.learn.verdict.Verdict`; :func:`write_verdict`), and the attributes sampling (Å),
    model, results, units, format and :func:`crop_placement`. ``replace`` False: a file that is at ``path`` by then
    is kept (FileExistsError). Returns the placement."""
    from ...base.safety import atomic_hdf5

    placement = crop_placement(info["origin_px"], phase.shape)
    with atomic_hdf5(Path(path), field="--out-file", replace=replace) as f:
        f["phase"], f["input"], f["field"] = phase, info["input"], info["field"]
        if info.get("change_sigma") is not None:
            f["change_sigma"] = np.asarray(info["change_sigma"], np.float32)
        if guard is not None:
            write_guard(f, guard)
        if verdict is not None:
            write_verdict(f, verdict)
        f.attrs.update({"sampling": np.asarray(info["sampling"]), "model": str(model), "results": str(results),
                        "units": "rad", "format": RESTORED_FORMAT, **placement})
    return placement


#: the columns of ``flagged_sites`` and ``tested_sites``: dataset pixel (row, col), the site's z against its opposite
#: state (``statistic``), its z against AD's disk (``change_z``) and which state was the opposite (0: AD's disk, 1: the
#: disk emptied; :mod:`phasestem.learn.data_guard`)
SITE_TABLE = np.dtype([("row", np.int32), ("col", np.int32), ("statistic", np.float32), ("change_z", np.float32),
                       ("opposite", np.int8)])


def write_guard(f, guard) -> None:
    """The data guard's record in the open ``OUT.h5`` ``f``: ``data_support`` (H, W) float32 (σ-like, NaN outside
    the field), ``tested_sites`` and ``flagged_sites`` (tables of :data:`SITE_TABLE`), their attributes the
    threshold, the share chance flags and the noise model."""
    def table(mask: np.ndarray) -> np.ndarray:
        rows = np.zeros(int(mask.sum()), SITE_TABLE)
        rows["row"], rows["col"] = guard.sites[mask, 0], guard.sites[mask, 1]
        rows["statistic"], rows["change_z"] = guard.statistic[mask], guard.change_z[mask]
        rows["opposite"] = guard.opposite[mask]
        return rows

    f["data_support"] = np.asarray(guard.support, np.float32)
    f["data_support"].attrs.update({"units": "sign·sqrt(excess misfit), sigma-like", "noise": guard.noise})
    every = np.ones(len(guard.sites), bool)
    for name, mask in (("tested_sites", every), ("flagged_sites", np.asarray(guard.flagged, bool))):
        f[name] = table(mask)
        f[name].attrs.update({"threshold": guard.threshold, "chance": guard.chance, "noise": guard.noise,
                              "tested": len(guard.sites), "positions": guard.positions})


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
    from ...metrics import chance_beyond

    if info.get("change_sigma") is None:
        return f"restorer {model}: no σ map, the change is not judged against the data's noise"
    level = float(info["significant"])
    return (f"restorer {model}: {100 * float(info['unsupported']):.2f} % of the scanned field changed by more than "
            f"{level:g} σ of the data ({100 * chance_beyond(level):.2f} % would be chance)")


def change_line(info: dict[str, Any], results: str | Path, out_file, no_sigma: str | None = None) -> str:
    """The printed line judging the restorer's change against the data's σ: the share of the field beyond
    ``info['significant']`` σ beside the share pure noise gives; or why it cannot be judged (``no_sigma``: the
    :func:`no_sigma_reason` already read, else read now)."""
    from ...metrics import chance_beyond

    if info.get("change_sigma") is None:
        reason = no_sigma or no_sigma_reason(results)
        return f"no σ map in {results}: {reason}; the change is not judged against the data's noise"
    share, level = float(info["unsupported"]), float(info["significant"])
    chance = chance_beyond(level)
    verdict = ("features there are the network's, not the data's" if share > chance else "within the noise")
    return (f"the restorer changed {100 * share:.2f} % of the scanned field by more than {level:g} σ of the data "
            f"({100 * chance:.2f} % would be chance; change_sigma in {out_file}): {verdict}")


def write_verdict(f, verdict) -> None:
    """The verdict in the open ``OUT.h5`` ``f``: ``verdict_sites`` (:data:`phasestem.learn.verdict.SITE_TABLE`: pixel
    (row, col) of ``phase``, AD's and the restored height in column scales, score, p-value, supported), its
    attributes the false-discovery rate and the calibration (specimens, empty sites, dose, CPU seconds, the share of
    true columns supported, folder); ``verdict_absent`` (K, 2): AD's columns the restoration does not show."""
    from ..verdict import site_table

    f["verdict_sites"] = site_table(verdict)
    f["verdict_sites"].attrs.update({"fdr": verdict.alpha, "unsupported": verdict.unsupported,
                                     **{f"calibration_{k}": v for k, v in verdict.calibration.items()}})
    f["verdict_absent"] = np.asarray(verdict.absent, np.float32).reshape(-1, 2)
