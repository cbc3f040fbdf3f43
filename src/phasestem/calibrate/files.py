"""Calibrate a file: read it, calibrate it, write the results (the work behind ``phasestem calibrate``)."""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from .pipeline import Calibration, calibrate

log = logging.getLogger("phasestem.calibrate")


#: reader calibration → the command-line flag that gives it
FLAGS = {"energy": "--energy", "scan_step": "--scan-step"}


#: what each calibration is and the flag that gives it, for the one line that lists what is missing
MISSING = {"energy": "the beam energy (--energy EV)", "scan_step": "the scan step (--scan-step Å)",
           "semiangle": "the probe semi-angle (--semiangle MRAD, or the detector pixel: --angular-sampling MRAD)"}


def check_complete(path: str | Path, energy=None, scan_step=None, semiangle=None, angular_sampling=None,
                   reader_options: dict[str, Any] | None = None, format: str | None = None) -> None:
    """Refuse, in one line naming the file and every one of them, calibrations that neither the file nor the flags
    give (energy, scan step, semi-angle or detector pixel), before anything slow: the file's header is read
    lazily, no pattern is read. A file that cannot be read this way is left to :func:`load_for_calibration` to say
    so."""
    from ..base.errors import MissingCalibrationError, PhasestemError
    from ..io import reader_module

    if energy is not None and scan_step is not None and (semiangle is not None or angular_sampling is not None):
        return  # every one given: nothing to look up (the file is opened once, by load_for_calibration)
    opts = {k: v for k, v in (reader_options or {}).items() if k not in ("bad_pixels", "screen")}
    try:
        first = reader_module(path, format).read(Path(path), require_calibration=False, **opts)
    except (PhasestemError, OSError, ValueError, KeyError, TypeError, EOFError):
        return  # io.load says what is wrong with the file, in its own words
    uncalibrated = first.metadata.get("uncalibrated", [])
    missing = [MISSING[name] for name, flag in (("energy", energy), ("scan_step", scan_step))
               if flag is None and name in uncalibrated]
    if semiangle is None and angular_sampling is None and first.semiangle is None and first.angular_sampling is None:
        missing.append(MISSING["semiangle"])
    if missing:
        raise MissingCalibrationError(f"{path}: not in the file and not given: {'; '.join(missing)}")


def load_for_calibration(path: str | Path, energy: float | None = None,
                         scan_step: float | tuple[float, float] | None = None,
                         reader_options: dict[str, Any] | None = None, format: str | None = None):
    """The file as a lazy :class:`phasestem.dataset.FourDSTEM`. ``energy`` (eV) and ``scan_step`` (Å) win over the
    file's, with a warning naming both values where they differ; None: the file's (one line when it has none)."""
    from .. import io
    from ..base.provenance import conflict_messages

    opts = dict(reader_options or {})
    if energy is not None:
        opts["energy"] = float(energy)
    if scan_step is not None:
        opts["scan_step"] = tuple(scan_step) if isinstance(scan_step, list | tuple) else (float(scan_step),) * 2
    dataset = io.load(path, format=format, **opts)
    for message in conflict_messages(dataset.metadata, FLAGS, "flag", " (omit {field} to use the file's)"):
        log.warning(message)
    return dataset


def calibrate_file(path: str | Path, out_dir: str | Path, energy: float | None = None, scan_step=None,
                   semiangle: float | None = None,
                   angular_sampling: float | None = None, reader_options: dict[str, Any] | None = None,
                   format: str | None = None, figures: bool = True, extra_params: dict[str, Any] | None = None,
                   resample_descan: bool = False, fit_detector_pixel: bool = False,
                   **options) -> tuple[Calibration, dict[str, Path]]:
    """Calibrate ``path`` and write ``calibrated.npy``, ``params.yaml``, ``calibration.json`` and figures.

    ``energy``, ``scan_step``: see :func:`load_for_calibration`; with neither ``semiangle`` nor
    ``angular_sampling`` the file's values are the truth: its detector pixel and semi-angle are kept, and the
    bright-field disk only checks them (:func:`~phasestem.calibrate.held.check_file_pixel`: a disagreement beyond
    the fit's error is a warning that asks, not a replacement); a file without a pixel gets it from its semi-angle
    and the disk; ``fit_detector_pixel`` fits the pixel to the disk and the file's semi-angle all the same.

    ``options`` go to :func:`phasestem.calibrate.pipeline.calibrate` (transpose, parallax,
    c10_range, edge_threshold); ``extra_params`` adds sections (model, run, …) to the YAML. Whether the patterns
    are counts is decided once, by :func:`phasestem.io.counts.counts_decision` on the file as read, and written into
    params.yaml with the file's dose (``data.counts``, ``data.dose``): counted patterns stay whole numbers (bad
    pixels filled with whole counts, whole-pixel descan moves) in the file's integer type, and the run reads the
    decision rather than guessing it again from the corrected patterns (a run then takes the counted data term
    and computes its error bars);
    ``resample_descan``: see :func:`phasestem.calibrate.output.write_outputs`. ``out_dir`` is held for the whole
    call (:func:`phasestem.base.lock.hold_output`; FolderBusyError when another run holds it).
    """
    from ..base.lock import hold_output
    from ..io.counts import counts_decision
    from .held import check_file_pixel, merge_held
    from .output import write_outputs

    check_complete(path, energy, scan_step, semiangle, angular_sampling, reader_options, format)  # one line, at once
    with hold_output(out_dir, "phasestem calibrate"):  # held from before the data are read
        dataset = load_for_calibration(path, energy, scan_step, reader_options, format)
        found = dataset.metadata.get("calibration_sources", {})
        sources = {"optics.energy": "flag" if found.get("energy") == "given" else "file",
                   "scan.step": "flag" if found.get("scan_step") == "given" else "file",
                   "optics.semiangle": "flag", "optics.angular_sampling": "calibration"}
        file_pixel = None if dataset.angular_sampling is None else float(np.mean(dataset.angular_sampling))
        pixel_from_file = semiangle is None and angular_sampling is None and file_pixel is not None \
            and not fit_detector_pixel
        if pixel_from_file:  # neither flag: the file's pixel (and semi-angle, below) are the truth
            angular_sampling = file_pixel
            sources.update({"optics.angular_sampling": "file", "optics.semiangle":
                            "file" if dataset.semiangle is not None else "calibration"})
        elif semiangle is None and angular_sampling is None:  # the file's semi-angle and the disk give the pixel
            semiangle = dataset.semiangle
            if semiangle is None and file_pixel is not None:
                angular_sampling = file_pixel
            sources["optics.semiangle"] = "file"
        if semiangle is None and not pixel_from_file:
            sources.update({"optics.angular_sampling": sources["optics.semiangle"], "optics.semiangle": "calibration"})
        calib = calibrate(dataset, semiangle=semiangle, angular_sampling=angular_sampling, **options)
        if pixel_from_file and dataset.semiangle is not None:
            check_file_pixel(calib, float(dataset.semiangle), file_pixel, str(path))
        sources.update({"scan.rotation": "flag" if calib.rotation_source == "given" else "calibration",
                        "scan.origin": "calibration"})
        sources.update({f"optics.aberrations.{k}": "flag" if calib.defocus_source == "given" else "calibration"
                        for k in calib.aberrations})
        merge_held(calib, dataset, sources)  # the file's values the data do not measure; a replacement warns
        calib.dose = dataset.metadata.get("dose")
        calib.counts = counts_decision(dataset)
        sources["data.counts"] = "calibration"
        calib.source = str(path)
        calib.sources = sources
        calib.extra = dict(extra_params or {})
        files = write_outputs(dataset, calib, out_dir, path, figures=figures, resample_descan=resample_descan)
        return calib, files
