"""The one rule for "are these patterns detector counts?" (issue 64), below calibration and reconstruction alike.

Counts (Poisson statistics: the counted data term, error bars, the low-dose rules) when, in this order:

1. the parameter file says so (``data.counts: true`` or ``false``; ``phasestem calibrate`` and ``--auto`` write it,
   with the dose, since their corrected patterns need not carry the file's record);
2. the file records a dose above 0 e⁻/Å² (a recorded dose ≤ 0 means noise-free data: the rules below still apply);
3. the file stores the patterns as integers (the stored type, also where a reader hands them on as float32);
4. the first scan row's first :data:`SAMPLE` patterns hold whole numbers only, at least one of them ≥ 1 (float
   files written by converters and simulators of counted data).

:func:`counts_decision` applies it; a run applies it once and writes the answer and its reason into its settings
table and ``results.h5`` (:meth:`CountsDecision.remember` keeps it in the dataset's metadata so that every later
reader of the same run — the data term, the error bars — gets the same answer without reading patterns again).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ._common import STORED_DTYPE_KEY, patterns_dtype

#: patterns (of the first scan row) read to decide whether float data are counts
SAMPLE = 64

#: metadata keys: the decision (bool) and its reason (str); ``data.counts`` of a parameter file sets the first
COUNTS_KEY, REASON_KEY = "counts", "counts_reason"


@dataclass(frozen=True)
class CountsDecision:
    """Whether a dataset's patterns are detector counts, and why (one clause for the run log)."""

    counted: bool
    reason: str

    def remember(self, dataset) -> CountsDecision:
        """Keep the decision in ``dataset.metadata``, so that later calls of :func:`counts_decision` return it."""
        dataset.metadata[COUNTS_KEY] = self.counted
        dataset.metadata[REASON_KEY] = self.reason
        return self

    def line(self) -> str:
        """``counts: yes (the patterns are stored as integers (uint16))`` for the run log."""
        return f"counts: {'yes' if self.counted else 'no'} ({self.reason})"


def _stored_dtype(dataset) -> np.dtype:
    stored = dataset.metadata.get(STORED_DTYPE_KEY)
    return np.dtype(stored) if stored is not None else patterns_dtype(dataset.patterns)


def _whole_numbers(dataset) -> int:
    """How many of the first row's first :data:`SAMPLE` patterns were read when they hold whole numbers only, at
    least one ≥ 1; 0 otherwise."""
    first = dataset.patterns[0, :SAMPLE]
    first = np.asarray(first.detach().cpu() if hasattr(first, "detach") else first, dtype=np.float64)
    if first.size and np.isfinite(first).all() and first.max() >= 1 and np.array_equal(first, np.rint(first)):
        return int(first.shape[0])
    return 0


def holds_whole_counts(dataset) -> bool:
    """Whether ``dataset``'s patterns are whole numbers as stored (integer storage, or whole-number floats by the
    sample of :func:`counts_decision`): what a correction must keep whole. Counts by a recorded dose alone may be
    normalised intensities."""
    return bool(np.issubdtype(_stored_dtype(dataset), np.integer) or _whole_numbers(dataset))


def counts_per_pattern(dataset, summed: float) -> float:
    """How many electrons one of ``dataset``'s patterns stands for, ``summed`` being their mean total: that total
    for whole counts; the recorded dose × the scan step's area (:func:`phasestem.physics.noise.electrons_per_pattern`)
    for patterns that are not whole counts but whose file records a dose (normalised intensities of a counted
    acquisition, whose total says nothing of the noise). The Poisson noise model, its error bars and the low-dose
    rules take this number."""
    from ..physics.noise import electrons_per_pattern as from_dose

    dose = dataset.metadata.get("dose")
    if dose is None or not float(dose) > 0 or holds_whole_counts(dataset):
        return float(summed)
    return from_dose(float(dose), dataset.scan_step)


def counts_decision(dataset) -> CountsDecision:
    """The rule of this module for ``dataset`` (a :class:`phasestem.dataset.FourDSTEM`)."""
    given = dataset.metadata.get(COUNTS_KEY)
    if isinstance(given, bool | np.bool_):
        return CountsDecision(bool(given), dataset.metadata.get(REASON_KEY) or "data.counts in the parameter file")
    dose = dataset.metadata.get("dose")
    if dose is not None and float(dose) > 0:
        return CountsDecision(True, f"the file records a dose of {float(dose):.4g} e⁻/Å²")
    dtype = _stored_dtype(dataset)
    if np.issubdtype(dtype, np.integer):
        return CountsDecision(True, f"the patterns are stored as integers ({dtype})")
    n = _whole_numbers(dataset)
    if n:
        return CountsDecision(True, f"the first {n} patterns hold whole numbers only")
    dose_text = "a dose ≤ 0 recorded (noise-free)" if dose is not None else "no dose recorded"
    return CountsDecision(False, f"{dose_text}, stored as {dtype}, values not whole counts")
