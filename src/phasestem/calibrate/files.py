"""Calibrate a file: read it, calibrate it, write the results (the work behind ``phasestem calibrate``)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError
from .pipeline import Calibration, calibrate


def load_for_calibration(path: str | Path, energy: float, scan_step: float | tuple[float, float],
                         reader_options: dict[str, Any] | None = None, format: str | None = None):
    """The file as a lazy :class:`phasestem.dataset.FourDSTEM` with the energy and scan step set."""
    from .. import io

    if energy is None or scan_step is None:
        raise ConfigError("calibrate: --energy (eV) and --scan-step (Å) are needed")
    step = tuple(scan_step) if isinstance(scan_step, list | tuple) else (float(scan_step), float(scan_step))
    return io.load(path, format=format, energy=float(energy), scan_step=step, **(reader_options or {}))


#: data term written for detector counts (integer data): the Poisson term is right for the noise, the amplitude
#: term keeps the fit of the dark field robust to model mismatch (``benchmarks/independent``). On 64 × 64
#: positions of the Merlin benchmark (1e5 e⁻, 10 lsq epochs from the same SSB start): phase r 0.9810 with the
#: amplitude term alone, 0.9831 with both; on the abTEM scan of tests/test_auto.py --auto r 0.950 → 0.969.
COUNTED_LOSSES = {"gaussian": 0.5, "poisson": 0.5}


def calibrate_file(path: str | Path, out_dir: str | Path, energy: float, scan_step, semiangle: float | None = None,
                   angular_sampling: float | None = None, reader_options: dict[str, Any] | None = None,
                   format: str | None = None, figures: bool = True, extra_params: dict[str, Any] | None = None,
                   resample_descan: bool = False, **options) -> tuple[Calibration, dict[str, Path]]:
    """Calibrate ``path`` and write ``calibrated.npy``, ``params.yaml``, ``calibration.json`` and figures.

    ``options`` go to :func:`phasestem.calibrate.pipeline.calibrate` (transpose, parallax,
    c10_range, edge_threshold); ``extra_params`` adds sections (model, run, …) to the YAML (integer data get
    the counted-data term :data:`COUNTED_LOSSES` unless it names ``losses``);
    ``resample_descan``: see :func:`phasestem.calibrate.output.write_outputs`. ``out_dir`` is held for the whole
    call (:func:`phasestem.lock.hold_output`; FolderBusyError when another run holds it).
    """
    from ..lock import hold_output
    from .output import write_outputs

    with hold_output(out_dir, "phasestem calibrate"):  # held from before the data are read
        dataset = load_for_calibration(path, energy, scan_step, reader_options, format)
        calib = calibrate(dataset, semiangle=semiangle, angular_sampling=angular_sampling, **options)
        if np.issubdtype(np.dtype(dataset.patterns.dtype), np.integer) and "losses" not in (extra_params or {}):
            extra_params = {**(extra_params or {}), "losses": dict(COUNTED_LOSSES)}
        calib.source = str(path)
        files = write_outputs(dataset, calib, out_dir, path, figures=figures, extra=extra_params,
                              resample_descan=resample_descan)
        return calib, files
