"""The data term a run gets from its data when it names none (issue 52): detector counts get
:data:`~phasestem.recon.losses.COUNTED_WEIGHTS` (the amplitude and Poisson terms, half each), anything else the
default Gaussian term. A term named anywhere (parameter file, ``LossConfig(...)``, calibration) is never changed.

The patterns are counts when the file records a dose (> 0 e⁻/Å²), when they are stored as integers, or when the
first scan row's first :data:`SAMPLE` patterns hold whole numbers only (float files written by converters and
simulators of counted data), at least one of them ≥ 1. On independent NumPy-multislice scans at 1e3–1e5 e⁻/pattern
and 4–8 slices (``benchmarks/independent/counted_default.py``, both halves) the counted term ends 0.010–0.253 in r
above the Gaussian term after 20 epochs.
"""
from __future__ import annotations

import numpy as np

from ..io._common import patterns_dtype
from .losses import COUNTED_WEIGHTS, LossConfig

#: patterns (of the first scan row) read to decide whether the data are counts
SAMPLE = 64


def counted_reason(dataset) -> str | None:
    """Why ``dataset``'s patterns are detector counts (one clause for the run log), or None when they are not."""
    dose = dataset.metadata.get("dose")
    if dose is not None and float(dose) > 0:
        return f"the file records a dose of {float(dose):.4g} e⁻/Å²"
    dtype = patterns_dtype(dataset.patterns)
    if np.issubdtype(dtype, np.integer):
        return f"the patterns are stored as integers ({dtype})"
    first = dataset.patterns[0, :SAMPLE]
    first = np.asarray(first.detach().cpu() if hasattr(first, "detach") else first, dtype=np.float64)
    if first.size and np.isfinite(first).all() and first.max() >= 1 and np.array_equal(first, np.rint(first)):
        return f"the first {first.shape[0]} patterns hold whole numbers only (counts)"
    return None


def losses_for_data(losses: LossConfig | None, dataset) -> tuple[LossConfig, str | None]:
    """(the loss to run, why the data chose it or None): ``losses`` unchanged when it names a term or the data are
    not counts; otherwise :data:`COUNTED_WEIGHTS` with ``losses``' power and floor."""
    losses = losses or LossConfig()
    if losses.named:
        return losses, None
    why = counted_reason(dataset)
    if why is None:
        return losses, None
    return LossConfig(**COUNTED_WEIGHTS, power=losses.power, eps=losses.eps), why
