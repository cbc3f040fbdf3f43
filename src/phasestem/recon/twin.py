"""A plain-AD twin of a run, advanced epoch by epoch beside it.

A learned prior's network was trained on AD's own epochs (:mod:`phasestem.learn.ad_pairs`); the phase of a run its
pull steers is not one of them, and restoring it again restores what the network already added (on abTEM held-out
crystals the restoration of a steered phase overshoots the columns' height twice over and the run's error grows as
the pull goes on: ``benchmarks/learned/README.md``). :class:`TwinRun` holds the same recipe run from the same start
without the pull, so the network is only ever given what it was trained on: AD's phase after the same epoch.
"""
from __future__ import annotations

import logging
from collections.abc import Iterator

__all__ = ["TwinRun"]


class TwinRun:
    """``model`` advanced by ``epochs`` (the generator of :func:`phasestem.recon.engine.optimize` on it: plain AD of the
    run's recipe), one epoch per step, quietly (its log lines would repeat the run's). :meth:`advance_to` runs it to an
    epoch; :meth:`close` ends it (its generator's clean-up runs now, not when it is collected)."""

    def __init__(self, model, epochs: Iterator[float]):
        self.model, self._epochs, self.done = model, epochs, False

    def advance_to(self, epoch: int):
        """The twin's model after ``epoch`` (or after its last epoch when its run ends first)."""
        previous = logging.root.manager.disable
        logging.disable(logging.WARNING)  # the run already says what the same recipe decides and logs
        try:
            while not self.done and self.model.epoch < int(epoch):
                try:
                    next(self._epochs)
                except StopIteration:
                    self.done = True
        finally:
            logging.disable(previous)
        return self.model

    def close(self) -> None:
        """End the twin's run (idempotent)."""
        if not self.done:
            self._epochs.close()
            self.done = True
