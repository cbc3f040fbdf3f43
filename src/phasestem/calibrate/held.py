"""What the data file holds against what the calibration measured: one rule for both.

Every value the file holds is kept unless the calibration (or a flag) measures or gives another; a replacement is
one warning line naming the field and both values. :func:`merge_held` applies the rule to a
:class:`~phasestem.calibrate.pipeline.Calibration` in place: aberrations the data do not measure (C30 of a
seed-000 file, a C10 the parallax could not fit) are the file's; a detector pixel (mrad) or semi-angle that
differs from the file's is warned about.
"""
from __future__ import annotations

import logging
from typing import Any

import numpy as np

from ..base.provenance import format_value, same_value

log = logging.getLogger("phasestem.calibrate")

#: px: how well the bright-field disk's edge radius is known (half the 0.5 px over which its radial profile is
#: averaged, :func:`phasestem.calibrate.disk.edge_radius`): the fit's own error, against which a file's detector
#: pixel is checked
DISK_RADIUS_ERROR_PX = 0.25


def check_file_pixel(calib, file_semiangle: float, file_pixel: float, where: str) -> str:
    """Keep a file's detector pixel and semi-angle (``calib`` was calibrated at ``file_pixel``) and check them
    against the bright-field disk: the pixel the disk radius and ``file_semiangle`` imply, with its error from
    :data:`DISK_RADIUS_ERROR_PX`. Within the error: a note; beyond it: a warning that asks (the file's values are
    kept; ``--fit-detector-pixel`` takes the fit). Returns the line (also in ``calib.notes``)."""
    radius = calib.disk.radius
    fitted = file_semiangle / radius
    error = fitted * DISK_RADIUS_ERROR_PX / radius
    calib.semiangle = float(file_semiangle)
    text = (f"the bright-field disk (radius {radius:.2f} px) and the file's semi-angle {file_semiangle:.4g} mrad give "
            f"a detector pixel of {fitted:.6g} ± {error:.2g} mrad/px; {where} holds {file_pixel:.6g}")
    if abs(fitted - file_pixel) <= error:
        line = f"{text}: they agree within the fit's error; the file's pixel is used"
        calib.notes.append(line)
        log.info(line)
        return line
    line = (f"{text}, {abs(fitted - file_pixel) / error:.1f}× the fit's error apart: kept the file's values; is its "
            "detector pixel or semi-angle right? (--fit-detector-pixel takes the fit, --angular-sampling or "
            "--semiangle gives a value)")
    calib.notes.append(line)
    log.warning(line)
    return line


def merge_held(calib, dataset, sources: dict[str, str]) -> list[str]:
    """Take the file's aberrations where the calibration has none of its own and warn where it (or ``--c10``)
    replaces one; warn where the calibrated (or flagged) detector pixel or semi-angle replaces the file's.
    ``sources`` (field → ``flag``, ``file`` or ``calibration``) says who gave each value; it is updated
    (``optics.aberrations.C30`` → ``file``) as is ``calib.aberrations``. Returns the warning lines (also logged)."""
    meta = dataset.metadata
    where = meta.get("file", meta.get("source", "the data file"))
    held = meta.get("calibration_from_file", {})
    found = meta.get("calibration_sources", {})
    by = "flag" if calib.defocus_source == "given" else "calibration"
    messages = []
    for key, value in sorted(dataset.aberrations.items()):
        field = f"optics.aberrations.{key}"
        if key not in calib.aberrations:
            calib.aberrations[key] = float(value)
            sources[field] = "flag" if found.get(f"aberrations.{key}") == "given" else "file"
            if calib.undetermined.pop(key, None):  # not left at its default after all
                calib.notes = [n for n in calib.notes if not n.startswith(f"{key} undetermined")]
                calib.notes.append(f"{key} = {value:g} Å from {where} (the data do not measure it here)")
        elif not same_value(calib.aberrations[key], value):
            messages.append(_replaced(field, by, calib.aberrations[key], value, "Å", where, ""))
    for name, value, unit, flag in (("angular_sampling", calib.angular_sampling, "mrad/px", "--angular-sampling"),
                                    ("semiangle", calib.semiangle, "mrad", "--semiangle")):
        field, file_value = f"optics.{name}", held.get(name)
        by_whom = sources.get(field)
        if file_value is None or by_whom not in ("flag", "calibration") or same_value(value, np.mean(file_value)):
            continue
        hint = (f" (omit {flag} to use the file's)" if by_whom == "flag" else
                f" (the file's: {flag} {np.mean(file_value):.6g})")
        messages.append(_replaced(field, by_whom, value, file_value, unit, where, hint))
    for message in messages:
        log.warning(message)
    return messages


def _replaced(field: str, by: str, value: Any, held: Any, unit: str, where, hint: str) -> str:
    return (f"{field}: the {by} gives {format_value(value, unit)} but {where} holds {format_value(held, unit)}; "
            f"using the {by}'s value{hint}")
