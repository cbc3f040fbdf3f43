"""Scans from the independent NumPy multislice (``benchmarks/independent/numpy_multislice.py``, nothing of
phasestem's simulator) for the reconstruction tests: random Gaussian atoms in each slice, the patterns simulated
where the probe was, the dataset on the nominal raster."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks" / "independent"))
from numpy_multislice import atom_phase, raster, simulate_patterns  # noqa: E402

from phasestem.dataset import FourDSTEM  # noqa: E402
from phasestem.physics.optics import angular_sampling_for  # noqa: E402


def pearson(a, b) -> float:
    a, b = a - a.mean(), b - b.mean()
    return float((a * b).sum() / np.sqrt((a * a).sum() * (b * b).sum()))


def lattice_phase(shape: tuple[int, int], sampling: float, spacing: float, max_phase: float = 0.5,
                  width: float = 0.15) -> np.ndarray:
    """A crystal's phase (rad) on ``shape`` pixels of ``sampling`` Å: Gaussian columns (σ ``width`` Å) on a square
    lattice ``spacing`` Å apart, the corner columns ``max_phase`` and the centred ones half of it."""
    y = np.arange(shape[0])[:, None] * sampling
    x = np.arange(shape[1])[None, :] * sampling
    out = np.zeros(shape)
    for (oy, ox), a in (((0.0, 0.0), 1.0), ((spacing / 2, spacing / 2), 0.5)):
        dy = (y - oy + spacing / 2) % spacing - spacing / 2
        dx = (x - ox + spacing / 2) % spacing - spacing / 2
        out += a * np.exp(-(dy**2 + dx**2) / (2 * width**2))
    return out * max_phase


def numpy_scan(seed: int, window: int, sampling: float, scan: tuple[int, int], step: float, defocus: float,
               atoms_per_area: float, margin: int = 4, n_slices: int = 1, position_error: float = 0.0,
               energy: float = 300e3, semiangle: float = 20.0, lattice: float | None = None, **simulate_options):
    """A scan of ``scan`` positions ``step`` Å apart over atoms of ``atoms_per_area`` per Å² per slice (0.5 rad),
    or with ``lattice`` (Å) over a crystal's columns that far apart (:func:`lattice_phase`, each slice alike),
    the object ``window // 2 + margin`` px wider than the scan on each side; ``position_error`` (Å σ) moves the
    probe off the raster; ``simulate_options`` (dose, dz, tilt, …) go to the simulator, with the seed's generator.
    Returns the dataset (C10 = ``defocus``), the truth (phase summed over slices, over the scanned field, pixel
    (0, 0) at the first position) and the position errors (N, 2) Å."""
    rng = np.random.default_rng(seed)
    pad = window // 2 + margin
    shape = tuple(int((s - 1) * step / sampling) + 2 * pad for s in scan)
    count = int(atoms_per_area * shape[0] * shape[1] * sampling**2)
    phases = np.stack([atom_phase(shape, sampling, rng, count, 0.5) if lattice is None else
                       lattice_phase(shape, sampling, lattice) for _ in range(n_slices)])
    nominal = raster(scan, step, (pad * sampling, pad * sampling))
    errors = rng.normal(0, position_error, nominal.shape) if position_error else np.zeros_like(nominal)
    if "dose" in simulate_options:
        simulate_options["rng"] = rng
    pats = simulate_patterns(phases, sampling, nominal + errors, window, energy, semiangle, defocus,
                             **simulate_options)
    fov = tuple(int((s - 1) * step / sampling) + 1 for s in scan)
    truth = phases.sum(0)[pad:pad + fov[0], pad:pad + fov[1]]
    ds = FourDSTEM(patterns=pats.reshape(*scan, window, window), energy=energy, scan_step=(step, step),
                   angular_sampling=angular_sampling_for(energy, sampling, (window, window)), semiangle=semiangle,
                   aberrations={"C10": defocus})
    return ds, truth, errors


def tiny_params(data_file, step: float, out_dir, **run):
    """``configs/reconstruct_tiny.yaml`` on ``data_file`` (scan step ``step`` Å), naming no loss term and no learning
    rate, without the optics check, checkpoints or progress bar, writing to ``out_dir``; ``run`` sets more of its
    ``run`` section. Returns the validated parameters."""
    import yaml

    from phasestem.recon.params import parse_params

    cfg = yaml.safe_load((Path(__file__).resolve().parents[1] / "configs" / "reconstruct_tiny.yaml").read_text())
    cfg.pop("tune")
    cfg["data"] = {"file": str(data_file)}
    cfg["scan"] = {"step": step}
    cfg["losses"] = {}
    cfg["model"].pop("learning_rates", None)
    cfg["run"].update(progress=False, check_optics=False, checkpoint_every=0, out_dir=str(out_dir))
    cfg["run"].update(run)
    return parse_params(cfg)
