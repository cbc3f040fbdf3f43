"""Restore jobs (``phasestem restore``: :mod:`phasestem.cli.restore`): their arguments checked
(:func:`check_restore`) and what the run page shows of a finished one (:func:`restore_view`): the lines it printed
(the placement, σ, data-guard and verdict lines, from ``restored.log``), its figure and, with ``--verdict``, the
summary of ``restored.h5``'s ``verdict_sites``.

The view is read in a reader process (:mod:`.reader_main`, task ``restored``), never in the server: each file is
opened without following a link the job left (``O_NOFOLLOW``, a regular file only), the log from its last
:data:`LOG_BYTES`, the HDF5 file through the checks of :mod:`phasestem.base.hdf5_links`, the site table only where it
is one of at most :data:`MAX_SITES` rows, of which only the ``supported`` column is read.
"""
from __future__ import annotations

import math
import os
import re
import stat
from pathlib import Path
from typing import Any

from .security import Refused, confine, public_message

#: what a restore job writes in its run folder: the restoration (its figure and log beside it), the verdict's
#: calibration folder
RESTORED, CALIBRATION = "restored.h5", "calibration"
FIGURE, LOG = Path(RESTORED).with_suffix(".png").name, Path(RESTORED).with_suffix(".log").name
#: the verdict's options, taken only with ``--verdict``; the most specimens a restore job may simulate for it, and
#: its widest cell (Å): each specimen is minutes of CPU, and more for a wider cell
VERDICT_OPTIONS = ("--fdr", "--calibration-samples", "--calibration-cell")
MAX_SAMPLES, MAX_CELL = 64, 200.0
#: bytes read from the end of the log; the most rows of a site table read
LOG_BYTES, MAX_SITES = 1 << 16, 1_000_000
#: a log line's time and level (:data:`phasestem.base.runtime.LOG_FORMAT`)
_STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d+ [A-Z]+ ")
#: the table's numbers shown (the verdict's FDR and calibration, with its dose in words: :func:`phasestem.learn.apply.
#: restorer_output.write_verdict`)
ATTRS = ("fdr", "calibration_samples", "calibration_null_sites", "calibration_cpu_seconds", "calibration_power")


def restorer_names() -> list[str]:
    """The restorers phasestem ships (the package's registry, which a job reads: it keeps no
    ``PHASESTEM_MODEL_DIR``); none where the registry cannot be read."""
    from ..base.errors import PhasestemError
    from ..learn.pretrained import package_dir, registry

    try:
        entries = registry(package_dir())
    except PhasestemError:
        return []
    return sorted(k for k, v in entries.items() if str(v.get("summary", "")).startswith("restorer"))


def check_restore(root: Path, ns, args: list[str]) -> bool:
    """A restore job's arguments ``args`` as the command's own parser read them (``ns``): ``--model`` a shipped
    restorer (:func:`restorer_names`) or a weights file or run folder inside the root, ``--data`` a file inside the
    root, and the verdict's options (:data:`VERDICT_OPTIONS`) only with ``--verdict``: ``--fdr`` in (0, 1),
    ``--calibration-samples`` 1 to :data:`MAX_SAMPLES`, ``--calibration-cell`` Å above 0 and at most
    :data:`MAX_CELL`. Returns whether the job gives a verdict."""
    names = restorer_names()
    if ns.model not in names:
        try:  # a path leading out of the root was refused with the arguments (403)
            if confine(root, ns.model, must_exist=True) == Path(root).resolve():
                raise Refused("the root itself")
        except Refused:
            raise Refused(f"--model {ns.model[:60]!r}: neither a shipped restorer ({', '.join(names) or 'none'}) nor "
                          "a weights file or run folder under the workspace root", 400) from None
    if ns.data is not None and not confine(root, ns.data, must_exist=True).is_file():
        raise Refused(f"--data {str(ns.data)[:60]!r}: not a file (the run's patterns)", 400)
    given = sorted({a.split("=", 1)[0] for a in args} & set(VERDICT_OPTIONS))
    if given and not ns.verdict:
        raise Refused(f"{' and '.join(given)}: options of the verdict; give them with --verdict", 400)
    if not (math.isfinite(ns.fdr) and 0 < ns.fdr < 1):
        raise Refused(f"--fdr {ns.fdr}: the verdict's false-discovery rate, expected more than 0 and less than 1 "
                      "(0.05: 5 %)", 400)
    if not 1 <= ns.calibration_samples <= MAX_SAMPLES:
        raise Refused(f"--calibration-samples {ns.calibration_samples}: expected 1 to {MAX_SAMPLES} specimens", 400)
    if not (math.isfinite(ns.calibration_cell) and 0 < ns.calibration_cell <= MAX_CELL):
        raise Refused(f"--calibration-cell {ns.calibration_cell}: expected Å, more than 0 and at most {MAX_CELL:g}",
                      400)
    return ns.verdict


def _open(path: Path):
    """``path`` opened for reading when it is a regular file, never through a link; None otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    fh = os.fdopen(fd, "rb")
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        fh.close()
        return None
    return fh


def printed_lines(path: Path) -> list[str]:
    """The lines the last restore printed: its log from the last placement line (``restored phase …``) on, without
    the log's time and level."""
    fh = _open(path)
    if fh is None:
        return []
    with fh:
        fh.seek(max(0, os.fstat(fh.fileno()).st_size - LOG_BYTES))
        lines = [_STAMP.sub("", line) for line in fh.read(LOG_BYTES).decode("utf-8", "replace").splitlines()]
    starts = [i for i, line in enumerate(lines) if line.startswith("restored phase ")]
    return lines[starts[-1]:] if starts else []


def _number(value) -> Any:
    """A numeric attribute (one value) as a number, else None."""
    import numpy as np

    value = np.asarray(value)
    return value.item() if value.size == 1 and value.dtype.kind in "biuf" else None


def verdict_summary(path: Path) -> dict[str, Any] | None:
    """``restored.h5``'s verdict: the restored columns (``sites``), those not supported, the table's :data:`ATTRS`,
    and in words ``summary``, ``calibration`` and ``advice`` (what to do). None without a verdict."""
    import h5py
    import numpy as np

    from ..base.errors import InputFileError
    from ..base.hdf5_links import check_file, check_written

    fh = _open(path)
    if fh is None:
        return None
    with fh, h5py.File(fh, "r") as f:
        check_file(f, path)
        if "verdict_sites" not in f:
            return None
        table = f["verdict_sites"]
        check_written(table, f"{RESTORED}:verdict_sites")
        if table.ndim != 1 or table.shape[0] > MAX_SITES or "supported" not in (table.dtype.names or ()):
            raise InputFileError(f"{RESTORED}:verdict_sites: not a verdict's table of at most {MAX_SITES:,} sites")
        supported = np.asarray(table.fields("supported")[()]).astype(bool)
        out = {k: _number(table.attrs[k]) if k in table.attrs else None for k in ATTRS}
        dose = table.attrs.get("calibration_dose", "")
    out["calibration_dose"] = (dose.decode("utf-8", "replace") if isinstance(dose, bytes) else str(dose))[:200]
    sites, unsupported = int(supported.size), int((~supported).sum())
    fdr, null, power = out["fdr"] or math.nan, out["calibration_null_sites"], out["calibration_power"]
    advice = ("Read the columns marked in red from AD's phase (the run's results.h5), not from the restoration: the "
              "data do not support them." if unsupported else "Every restored column is supported by the data at "
              "this false-discovery rate.")
    if null is not None and null >= 0 and fdr > 0 and null + 1 < 1 / fdr:
        advice += (f" {null:.0f} empty calibration sites cannot give a p-value below {1 / (null + 1):.2g}: queue "
                   f"the restore again with more calibration specimens for a verdict at {fdr:.0%} FDR.")
    return {**out, "sites": sites, "unsupported": unsupported, "advice": advice,
            "summary": f"{unsupported} of {sites} restored columns are not supported by the data at {fdr:.0%} FDR",
            "calibration": f"calibrated on {out['calibration_samples'] or 0:.0f} simulated specimens "
                           f"({null or 0:.0f} empty sites, {out['calibration_dose']}) in "
                           f"{out['calibration_cpu_seconds'] or 0:.0f} CPU seconds; "
                           + (f"{power:.0%} of their true columns were supported" if power is not None else "")}


def restore_view(root: Path, run: Path) -> dict[str, Any]:
    """The run page's restoration of the run folder ``run`` (inside ``root``): ``lines`` (:func:`printed_lines`,
    absolute paths as the pages show them), ``figure`` (its path under the root, None without one), ``verdict``
    (:func:`verdict_summary`)."""
    rel = run.relative_to(root).as_posix()
    figure = _open(run / FIGURE)
    if figure is not None:
        figure.close()
    return {"lines": [public_message(line, root) for line in printed_lines(run / LOG)],
            "figure": f"{rel}/{FIGURE}" if figure is not None else None,
            "verdict": verdict_summary(run / RESTORED)}
