"""``simulation.png``: one simulated sample at a glance (specimen phase and scanned field, probe, patterns), drawn by
:func:`phasestem.plot.simulation_overview`."""
from __future__ import annotations

from pathlib import Path

import numpy as np


def write_overview(file: str | Path, png: str | Path, sample: int | None = None) -> Path:
    """Figure of ``sample`` (default: the first) of a simulated seed-layout ``file``: the specimen phase (rad, Å
    scale bar) with the scanned field outlined, the nominal probe (amplitude, phase where it is significant,
    aperture-plane phase), the mean pattern and three single patterns (log, mrad). Written to ``png``."""
    from .. import io
    from ..physics.optics import make_probe, wavelength
    from ..plot import simulation_overview

    ds = io.load(file, sample=sample)
    truth = np.asarray(ds.truth["phase"], np.float32)
    ts = tuple(float(s) for s in ds.truth.get("sampling", ds.sampling))
    probe = make_probe(ds.pattern_shape, ds.sampling, ds.energy, ds.semiangle, ds.aberrations,
                       on_band_limit="ignore")
    pos = np.asarray(ds.positions_angstrom())
    box = (*pos.min(0), *pos.max(0))
    ang = None if ds.angular_sampling is None else float(np.mean(ds.angular_sampling))
    fig = simulation_overview(truth, ts, probe, ds.sampling, wavelength(ds.energy), np.asarray(ds.patterns[...]),
                              pattern_mrad=ang, scan_box=box, title=f"{Path(file).name}: {ds.summary()}", path=png)
    import matplotlib.pyplot as plt

    plt.close(fig)
    return Path(png)
