"""The data term a run gets from its data when it names none (issue 52): detector counts get
:data:`~phasestem.recon.losses.COUNTED_WEIGHTS` (the amplitude and Poisson terms, half each), anything else the
default Gaussian term. A term named anywhere (parameter file, ``LossConfig(...)``) is never changed.

Whether the patterns are counts is the one rule of :mod:`phasestem.io.counts` (``data.counts`` of the parameter file,
a recorded dose, integer storage or whole numbers). On independent NumPy-multislice scans at 1e3–1e5 e⁻/pattern and
4–8 slices (``benchmarks/independent/counted_default.py``, both halves) the counted term ends 0.010–0.253 in r above
the Gaussian term after 20 epochs.
"""
from __future__ import annotations

from ..io.counts import CountsDecision, counts_decision
from .losses import COUNTED_WEIGHTS
from .settings.losses import LossConfig


def losses_for_data(losses: LossConfig | None, dataset,
                    decision: CountsDecision | None = None) -> tuple[LossConfig, str | None]:
    """(the loss to run, why the data chose it or None): ``losses`` unchanged when it names a term or the data are
    not counts; otherwise :data:`COUNTED_WEIGHTS` with ``losses``' power and floor. ``decision``: the run's
    :func:`~phasestem.io.counts.counts_decision`, when it has made it already."""
    losses = losses or LossConfig()
    if losses.named:
        return losses, None
    decision = decision or counts_decision(dataset)
    if not decision.counted:
        return losses, None
    return LossConfig(**COUNTED_WEIGHTS, power=losses.power), decision.reason
