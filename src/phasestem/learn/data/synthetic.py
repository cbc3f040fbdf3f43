"""Synthetic seed-000 files for tests and demos: random phase objects through the one forward model."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import h5py
import numpy as np
import torch

from ...base.safety import atomic_file
from ...io import seed as seedfile
from ...physics.optics import interaction_constant
from ...scan import GridScan

log = logging.getLogger("phasestem.learn")


# =============================================================================================
# a small, learnable synthetic training set (tests, notebook, demos)
# =============================================================================================
def blob_phase(n_px: int, sampling: float, rng: np.random.Generator, n_blobs: int = 12,
                    sigma: tuple[float, float] = (1.0, 2.0), amplitude: tuple[float, float] = (0.2, 0.6)) -> np.ndarray:
    """Periodic phase (n_px, n_px) rad: a sum of Gaussian blobs (σ in Å) at random positions."""
    y = np.arange(n_px) * sampling
    L = n_px * sampling
    out = np.zeros((n_px, n_px))
    for _ in range(n_blobs):
        cy, cx = rng.uniform(0, L, 2)
        s = rng.uniform(*sigma)
        a = rng.uniform(*amplitude)
        dy = (y - cy + L / 2) % L - L / 2
        dx = (y - cx + L / 2) % L - L / 2
        out += a * np.exp(-(dy[:, None] ** 2 + dx[None, :] ** 2) / (2 * s**2))
    return out.astype(np.float32)


def write_synthetic_file(path: str | Path, n_samples: int, first_sample: int = 0, seed: int = 0,
                         extent: float = 32.0, phase_px: int = 64, scan: int = 16, window: int = 16,
                         energy: float = 300e3, semiangle: float = 12.0, c10: float = 100.0,
                         dose: float | None = None, n_blobs: int = 12) -> Path:
    """A small seed-000-layout file of weak phase objects, simulated by a periodic-cell ``Experiment``.

    The object is a single slice ``exp(i·phase)`` on a ``phase_px``² grid over ``extent`` Å (pixel =
    ``extent/phase_px``); a ``scan``² raster spans the cell; patterns are ``window``² (one object
    pixel per real-space pixel), fftshift-ed, summing to 1 (or Poisson counts with ``dose`` e⁻/pattern).
    ``c10`` is C10 in Å (> 0: over-focus), which spreads the probe over about one scan step.
    """
    from ...physics.experiment import Experiment
    from ...physics.noise import poisson_counts
    from ...physics.operator import transmission_function
    from ...physics.optics import angular_sampling_for as ang_for
    from ...physics.optics import make_probe

    path = Path(path)
    rng = np.random.default_rng(seed + 7919 * first_sample)
    ps = extent / phase_px
    step = extent / scan
    probe = make_probe((window, window), (ps, ps), energy, semiangle, {"C10": c10})
    pos = torch.tensor(GridScan((scan, scan), step).positions(), dtype=torch.float32)
    exp = Experiment(probe, pos, (phase_px, phase_px), (ps, ps), energy)  # the cell is the object: periodic
    sigma = interaction_constant(energy)
    with atomic_file(path, "path") as tmp, h5py.File(tmp, "w") as f:
        for i in range(first_sample, first_sample + n_samples):
            phase = blob_phase(phase_px, ps, rng, n_blobs=n_blobs)
            obj = transmission_function(torch.from_numpy(phase))[None, None]
            with torch.no_grad():
                pats = exp.patterns(obj).reshape(scan, scan, window, window).numpy()
            if dose is not None:
                pats = poisson_counts(pats, dose, rng)
            f.create_dataset(seedfile.patterns_key(i), data=pats.astype(np.float32), chunks=(min(5, scan), min(5, scan),
                                                                                   window, window))
            f.create_dataset(seedfile.phase_key(i), data=phase)
            f.create_dataset(seedfile.potential_key(i), data=(phase / sigma).astype(np.float32))
        a = f.attrs
        a["format"], a["phase_convention"], a["energy"], a["semiangle"] = (seedfile.FORMAT, seedfile.PHASE_CONVENTION,
                                                                              energy, semiangle)
        a["aberrations"] = json.dumps({"C10": c10})
        a["scan_shape"], a["scan_step"], a["scan_origin"] = np.array([scan, scan]), np.array([step, step]), np.zeros(2)
        a["extent"], a["phase_shape"] = np.array([extent, extent]), np.array([phase_px, phase_px])
        a["phase_sampling"], a["pattern_shape"] = np.array([ps, ps]), np.array([window, window])
        a["angular_sampling"] = np.asarray(ang_for(energy, ps, (window, window)))
        a["sigma"], a["samples_per_file"], a["first_sample"] = sigma, n_samples, first_sample
        a["dose"] = -1.0 if dose is None else float(dose)
    return path
