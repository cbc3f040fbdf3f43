"""``phasestem restore --verdict``: the restoration's columns judged against a calibration made at the run's own
geometry and dose (:mod:`phasestem.trust.calibration`, :func:`phasestem.learn.verdict.verdict`)."""
from __future__ import annotations

import logging

import numpy as np

from ..base.errors import ConfigError
from ..learn.verdict import Verdict, verdict
from .calibration import CELL, SAMPLES, calibrate, power

__all__ = ["judge"]

log = logging.getLogger("phasestem.learn")


def judge(phase: np.ndarray, info: dict, model, electrons: float | None, alpha: float = 0.05, folder=None,
          samples: int = SAMPLES, device: str = "cpu", progress: bool = True, cell: float = CELL) -> Verdict:
    """The :class:`~phasestem.learn.verdict.Verdict` of the restored ``phase`` (``info``: what
    :func:`phasestem.learn.hybrid.restore_results` returns: ``input``, ``field``, ``sampling``, ``geometry``) of
    the restorer ``model``, calibrated at the run's geometry and ``electrons`` per pattern (None: noise-free) with
    ``samples`` simulated specimens on a cell of at least ``cell`` Å (cached in ``folder``, default
    :func:`~phasestem.trust.calibration.cache_folder`). A run without a geometry record is refused in one line."""
    geometry = info.get("geometry")
    if not geometry:
        raise ConfigError("--verdict: the results file records no geometry (an older run), so the verdict cannot be "
                          "calibrated at its optics; run reconstruct again or leave --verdict out")
    if not 0 < alpha < 1:
        raise ConfigError(f"--fdr must be in (0, 1), got {alpha}")
    cal = calibrate(geometry, model, electrons, folder, samples, device, progress, cell)
    if cal["null_sites"] + 1 < 1 / alpha:
        log.warning("verdict: %d empty calibration sites cannot give a p-value below %.3f: raise "
                    "--calibration-samples for a verdict at %.0f %% FDR", cal["null_sites"],
                    1 / (cal["null_sites"] + 1), 100 * alpha)
    record = {k: cal[k] for k in ("samples", "null_sites", "dose", "cpu_seconds", "folder")}
    record["power"] = power(cal, alpha)
    out = verdict(info["input"], phase, info["field"], tuple(info["sampling"]), cal["null"], alpha, record)
    log.info("verdict: calibration %s, %.0f CPU seconds (%s)", cal["dose"], cal["cpu_seconds"], cal["folder"])
    return out
