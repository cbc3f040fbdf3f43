"""Where each setting of a run came from, and the warning when a given value differs from the data file's.

Sources (:data:`SOURCES`): ``file`` (the data file held it), ``YAML`` (the parameter file), ``flag`` (a command-line
option), ``calibration`` (fitted by ``phasestem calibrate``), ``default`` (nobody gave it). The readers of
:mod:`phasestem.io` record in a dataset's metadata what the file held (``calibration_from_file``), where each value
came from (``calibration_sources``: ``given``, ``file`` or ``default``) and which given values differ from the
file's (``calibration_conflicts``); :func:`conflict_messages` turns the last into one line each, naming the field
and both values.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

SOURCES = ("file", "YAML", "flag", "calibration", "default")
#: relative difference below which a given calibration counts as the file's own value (no conflict)
SAME_VALUE_RTOL = 1e-4

#: unit of each calibration a reader returns (reader option names)
UNITS = {"scan_shape": "", "scan_step": "Å", "scan_origin": "Å", "energy": "eV", "semiangle": "mrad",
         "angular_sampling": "mrad/px", "sampling": "Å", "dose": "e⁻/Å²"}


@dataclass
class Setting:
    """One resolved setting: ``field`` (e.g. ``scan.step``), its ``value`` (number, pair or text) in ``unit``, its
    ``source`` (one of :data:`SOURCES`), what the data file held (``file``; None: nothing) and a ``note``."""

    field: str
    value: Any
    unit: str
    source: str
    file: Any = None
    note: str = ""

    def line(self, width: int = 28) -> str:
        """``field  value unit  source (note; file: …)`` for the run log."""
        extra = [self.note] if self.note else []
        if self.file is not None and self.source != "file":
            same = not isinstance(self.value, str) and same_value(self.value, self.file)
            extra.append("the file's too" if same else f"file: {format_value(self.file, self.unit)}")
        tail = f" ({'; '.join(extra)})" if extra else ""
        return f"{self.field.ljust(width)} {format_value(self.value, self.unit).ljust(22)} {self.source}{tail}"


def same_value(a, b) -> bool:
    """Whether two calibrations (numbers or pairs) agree within :data:`SAME_VALUE_RTOL`."""
    a, b = np.atleast_1d(np.asarray(a, dtype=np.float64)), np.atleast_1d(np.asarray(b, dtype=np.float64))
    return a.shape == b.shape and bool(np.allclose(a, b, rtol=SAME_VALUE_RTOL, atol=1e-12))


def unit_of(name: str) -> str:
    """Unit of a calibration name (aberrations: Å, their azimuths ``phiNM``: rad)."""
    if name.startswith("aberrations."):
        return "rad" if name.split(".", 1)[1].startswith("phi") else "Å"
    return UNITS.get(name, "")


def format_value(value: Any, unit: str = "") -> str:
    """A value as the user writes it: ``3.2 Å`` for an equal pair, ``(3.2, 3.1) Å``, ``8 × 8`` for a scan shape."""
    if isinstance(value, str):
        return value
    arr = np.atleast_1d(np.asarray(value))
    if arr.dtype.kind in "iu" and arr.size == 2 and not unit:
        text = f"{arr[0]} × {arr[1]}"
    elif arr.size == 2 and arr[0] == arr[1]:
        text = f"{float(arr[0]):.6g}"
    elif arr.size == 1:
        text = f"{float(arr[0]):.6g}"
    else:
        text = "(" + ", ".join(f"{float(v):.6g}" for v in arr.ravel()) + ")"
    return f"{text} {unit}".strip()


def conflict_messages(metadata: Mapping[str, Any], fields: Mapping[str, str], labels: Mapping[str, str] | str,
                      hint: str = "") -> list[str]:
    """One line per given value that differs from the data file's (``metadata['calibration_conflicts']``).

    ``fields`` maps a calibration name (``energy``, ``scan_step``, ``aberrations.C10`` …) to the user's name for it
    (``optics.energy``, ``--energy``); names without one are skipped. ``labels``: the source of the given values
    (``YAML``, ``flag``), one for all or per user field name. ``hint`` may use ``{field}``."""
    held = metadata.get("calibration_from_file", {})
    given = metadata.get("calibration_given", {})
    where = metadata.get("file", metadata.get("source", "the data file"))
    out = []
    for name in metadata.get("calibration_conflicts", ()):
        field = fields.get(name) or (fields.get("aberrations") and f"{fields['aberrations']}.{name.split('.', 1)[1]}")
        if not field:
            continue
        label = labels if isinstance(labels, str) else labels.get(field, "YAML")
        file_value, given_value = _lookup(held, name), _lookup(given, name)
        unit = unit_of(name)
        out.append(f"{field}: the {label} gives {format_value(given_value, unit)} but {where} holds "
                   f"{format_value(file_value, unit)}; using the {label}'s value" + hint.format(field=field))
    return out


def dose_setting(metadata: Mapping[str, Any], field: str = "dose") -> Setting | None:
    """The dose a data file records (``metadata['dose']``, e⁻/Å²; ≤ 0: noise-free) as a row, None when it records
    none. Nothing reads it back: the row says what the data are."""
    dose = metadata.get("dose")
    if dose is None:
        return None
    return Setting(field, "noise-free" if dose <= 0 else float(dose), "" if dose <= 0 else "e⁻/Å²", "file")


def aberration_settings(aberrations: Mapping[str, float], source, held: Mapping[str, Any],
                        prefix: str = "aberrations", none_source: str = "default") -> list[Setting]:
    """One row per aberration (``prefix.C10`` …; ``source(name)`` gives each one's source), or one row ``prefix
    none`` (source ``none_source``) when there are none, so that the table always says what the probe carried."""
    if not aberrations:
        return [Setting(prefix, "none", "", none_source)]
    return [Setting(f"{prefix}.{key}", value, unit_of(f"aberrations.{key}"), source(f"aberrations.{key}"),
                    held.get(key)) for key, value in sorted(aberrations.items())]


#: the calibrations of a loaded dataset, in the order of its settings table (reader option names)
DATASET_FIELDS = ("scan_shape", "scan_step", "scan_origin", "energy", "semiangle", "angular_sampling")


def dataset_settings(dataset, given: str = "given") -> list[Setting]:
    """Every calibration a loaded :class:`~phasestem.dataset.FourDSTEM` carries (scan shape, step and origin,
    energy, semi-angle, detector pixel, each aberration, the recorded dose) with its source: ``file``, ``default``
    or ``given`` (an option of the reader; say which with ``given``, e.g. ``flag``)."""
    meta = dataset.metadata
    where, held = meta.get("calibration_sources", {}), meta.get("calibration_from_file", {})

    def source(name: str) -> str:
        found = where.get(name, "default")
        return given if found == "given" else found

    rows = [Setting(name, getattr(dataset, name), unit_of(name), source(name), held.get(name))
            for name in DATASET_FIELDS if getattr(dataset, name) is not None]
    rows += aberration_settings(dataset.aberrations, source, held.get("aberrations", {}),
                                none_source="file" if "aberrations" in held else "default")
    dose = dose_setting(meta)
    return rows + ([dose] if dose is not None else [])


def settings_table(rows: list[Setting], indent: str = "  ") -> str:
    """The rows as the run log shows them, one line each."""
    return "\n".join(indent + row.line() for row in rows)


def _lookup(values: Mapping[str, Any], name: str):
    if name.startswith("aberrations."):
        return values.get("aberrations", {}).get(name.split(".", 1)[1])
    return values.get(name)
