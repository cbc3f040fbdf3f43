"""Small simulated ptychography datasets made with the physics core (for tests, demos, benchmarks).

:func:`synthetic_scan` builds a phase object, a nominal probe and a raster scan and computes their patterns
with a :class:`phasestem.physics.experiment.Experiment` once; it returns a :class:`FourDSTEM` whose ``truth``
holds the phase (rad, dataset frame, summed over slices), the per-slice phases and the true
positions.
"""
from __future__ import annotations

import numpy as np
import torch

from ..dataset import FourDSTEM
from ..physics import optics
from ..physics.experiment import Experiment
from ..physics.noise import poisson_counts
from ..physics.operator import transmission_function
from ..physics.optics import angular_sampling_for
from ..physics.specimen import synthetic_phase
from ..scan import GridScan


def synthetic_scan(
    window: tuple[int, int] = (32, 32),
    sampling: float = 0.4,
    scan_shape: tuple[int, int] = (8, 8),
    scan_step: float = 1.0,
    energy: float = 300e3,
    semiangle: float = 15.0,
    c10: float = 50.0,
    n_slices: int = 1,
    slice_thickness: float = 10.0,
    max_phase: float = 0.5,
    tilt: tuple[float, float] = (0.0, 0.0),
    source_size: float | None = None,
    n_modes: int = 6,
    position_noise: float = 0.0,
    dose: float | None = None,
    seed: int = 0,
    phase_slices: np.ndarray | None = None,
) -> FourDSTEM:
    """Simulated 4D-STEM scan (noise-free unless ``dose`` electrons/pattern is given).

    The probe has aberration ``c10`` = C10 Å (> 0: crossover before the specimen); ``source_size``
    (Å FWHM) makes it partially coherent (``n_modes`` modes). ``position_noise`` (Å, std) perturbs
    the true positions; the dataset keeps the nominal grid and ``truth['positions']`` the true ones.
    ``truth['object_phase']`` (S, Ny, Nx) is the whole simulated object, whose pixel
    ``truth['object_origin']`` (Å) is the dataset's 0 Å. Per-slice phases are
    independent synthetic 'atom' images with maximum ``max_phase`` (or ``phase_slices``
    (S, Ny, Nx) when given).
    """
    rng = np.random.default_rng(seed)
    samp = (sampling, sampling)
    half = (window[0] // 2, window[1] // 2)
    margin = 4
    origin_px = np.array([half[0] + margin, half[1] + margin])
    extent_px = (int(round((scan_shape[0] - 1) * scan_step / sampling)) + window[0] + 2 * margin + 2,
                 int(round((scan_shape[1] - 1) * scan_step / sampling)) + window[1] + 2 * margin + 2)
    if phase_slices is None:
        phase_slices = np.stack([synthetic_phase(extent_px, rng, "atoms", max_phase) for _ in range(n_slices)])
    phase_slices = np.asarray(phase_slices, dtype=np.float32)
    obj = transmission_function(torch.as_tensor(phase_slices))[None]  # (1, S, Ny, Nx)
    probe = optics.make_probe(window, samp, energy, semiangle, {"C10": c10})
    occ = None
    if source_size:
        probe, occ = optics.partial_coherence_modes(probe, samp, source_size, n_modes)
    nominal = GridScan(scan_shape, scan_step).positions()
    true_pos = nominal + rng.normal(0, position_noise, nominal.shape) if position_noise else nominal.copy()
    pos_obj = torch.as_tensor(true_pos + origin_px * sampling, dtype=torch.float32)
    exp = Experiment(probe, pos_obj, extent_px, samp, energy, origin=tuple(origin_px * sampling))
    with torch.no_grad():
        pats = exp.patterns(obj, dz=slice_thickness, tilt=torch.tensor(tilt, dtype=torch.float32))
    pats = pats.numpy().astype(np.float64)
    if dose:
        pats = poisson_counts(pats, dose, rng, np.float64)
    pats = pats.reshape(*scan_shape, *window).astype(np.float32)
    oy, ox = origin_px
    phase_ds = phase_slices[:, oy:, ox:]  # dataset frame: pixel (0,0) at 0 Å
    return FourDSTEM(
        patterns=pats, energy=energy, scan_step=(scan_step, scan_step),
        angular_sampling=angular_sampling_for(energy, samp, window), semiangle=semiangle,
        aberrations={"C10": c10},
        metadata={"source": "phasestem.recon.synthetic", "occupancies": None if occ is None else occ.tolist()},
        truth={"phase": phase_ds.sum(0), "phase_slices": phase_ds, "sampling": samp, "positions": true_pos,
               "slice_thickness": slice_thickness, "tilt": tuple(tilt), "probe": probe.numpy(),
               "object_phase": phase_slices, "object_origin": (float(oy * sampling), float(ox * sampling))},
    )


def write_npz(path, **options) -> FourDSTEM:
    """Simulate with :func:`synthetic_scan` (``options``) and write ``path`` (.npz: patterns, phase)
    as read by ``phasestem.io.load(path, patterns_key="patterns")``; returns the dataset."""
    from ..base.safety import atomic_file

    ds = synthetic_scan(**options)
    with atomic_file(path, field="path") as tmp, open(tmp, "wb") as fh:  # a file object: savez adds no suffix
        np.savez(fh, patterns=np.asarray(ds.patterns, dtype=np.float32), phase=ds.truth["phase"],
                 positions=ds.truth["positions"])
    return ds


if __name__ == "__main__":  # python -m phasestem.recon.synthetic OUT.npz
    import sys

    write_npz(sys.argv[1] if len(sys.argv) > 1 else "data/recon_tiny.npz")
